//! `fractal contracts check`: how the external contracts changed between two versions of the
//! descriptors, and whether readers of old or new events still read them.
//!
//! The contracts checked are the messages the topology's bridge routes carry, and every
//! message and enum they reach through their fields. Each change is breaking or compatible:
//!
//! - breaking: a message or enum removed, a field removed without reserving its number and
//!   name, a number or a name reused, a type changed to one the wire does not carry the same
//!   way, a field moved between singular, repeated and map or into or out of a oneof, an enum
//!   value removed without reserving it, renumbered or renamed;
//! - compatible: a field or enum value added, a removal with its number and name reserved, a
//!   type changed to one read the same on the wire (`int32` and `int64`, `string` to `bytes`,
//!   …). A field renamed with its number kept is breaking: JSON and the catalogue read it by
//!   name.
//!
//! A new major version of a contract is a new package (`food.contracts.v2`) beside the old
//! one: its messages are additions, and routes move to it one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context as _, bail};
use prost_reflect::{
    Cardinality, DescriptorPool, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor,
};
use serde::Serialize;

/// One change to a contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Change {
    /// Whether readers of old or new events break.
    pub(crate) breaking: bool,
    /// The `.proto` file (of the new version; of the old one for what was removed).
    pub(crate) file: String,
    /// The message or enum.
    pub(crate) message: String,
    /// The field or enum value, if the change is to one.
    pub(crate) field: Option<String>,
    /// What changed.
    pub(crate) change: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.breaking {
            "breaking"
        } else {
            "compatible"
        };
        write!(f, "{verdict}: {}: {}", self.file, self.message)?;
        if let Some(field) = &self.field {
            write!(f, " `{field}`")?;
        }
        write!(f, ": {}", self.change)
    }
}

/// Every change between `old` and `new` to the messages named in `carried` (the routes'
/// contracts) and to what they reach. A carried message missing from `old` is new.
pub(crate) fn compare(
    old: &DescriptorPool,
    new: &DescriptorPool,
    carried: &[String],
) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut messages = BTreeMap::new();
    let mut enums = BTreeMap::new();
    for name in carried.iter().collect::<BTreeSet<_>>() {
        match (old.get_message_by_name(name), new.get_message_by_name(name)) {
            (Some(message), _) => reach(&message, &mut messages, &mut enums),
            (None, Some(added)) => changes.push(Change {
                breaking: false,
                file: added.parent_file().name().to_owned(),
                message: name.clone(),
                field: None,
                change: "new contract".into(),
            }),
            (None, None) => {}
        }
    }
    for (name, before) in &messages {
        match new.get_message_by_name(name) {
            Some(after) => compare_messages(before, &after, &mut changes),
            None => changes.push(Change {
                breaking: true,
                file: before.parent_file().name().to_owned(),
                message: name.clone(),
                field: None,
                change: "message removed or renamed while a route still carries it or a \
                         contract still uses it"
                    .into(),
            }),
        }
    }
    for (name, before) in &enums {
        match new.get_enum_by_name(name) {
            Some(after) => compare_enums(before, &after, &mut changes),
            None => changes.push(Change {
                breaking: true,
                file: before.parent_file().name().to_owned(),
                message: name.clone(),
                field: None,
                change: "enum removed or renamed while a contract still uses it".into(),
            }),
        }
    }
    changes
}

/// Collects `message` and every message and enum its fields reach, by full name. The
/// well-known types (`google.protobuf.*`) do not change and are left out.
fn reach(
    message: &MessageDescriptor,
    messages: &mut BTreeMap<String, MessageDescriptor>,
    enums: &mut BTreeMap<String, EnumDescriptor>,
) {
    if message.full_name().starts_with("google.protobuf.")
        || messages.contains_key(message.full_name())
    {
        return;
    }
    messages.insert(message.full_name().to_owned(), message.clone());
    for field in message.fields() {
        match field.kind() {
            Kind::Message(nested) if nested.is_map_entry() => {
                for entry in nested.fields() {
                    match entry.kind() {
                        Kind::Message(value) => reach(&value, messages, enums),
                        Kind::Enum(value) => {
                            enums.insert(value.full_name().to_owned(), value);
                        }
                        _ => {}
                    }
                }
            }
            Kind::Message(nested) => reach(&nested, messages, enums),
            Kind::Enum(value) => {
                enums.insert(value.full_name().to_owned(), value);
            }
            _ => {}
        }
    }
}

fn compare_messages(
    before: &MessageDescriptor,
    after: &MessageDescriptor,
    changes: &mut Vec<Change>,
) {
    let file = after.parent_file().name().to_owned();
    let mut change = |breaking: bool, field: &str, what: String| {
        changes.push(Change {
            breaking,
            file: file.clone(),
            message: after.full_name().to_owned(),
            field: Some(field.to_owned()),
            change: what,
        })
    };
    for old in before.fields() {
        let by_number = after.get_field(old.number());
        let by_name = after.get_field_by_name(old.name());
        match (&by_number, &by_name) {
            (None, None) => match unreserved(message_reserves(after, old.number(), old.name())) {
                None => change(
                    false,
                    old.name(),
                    format!(
                        "field {} removed, its number and name reserved",
                        old.number()
                    ),
                ),
                Some(missing) => change(
                    true,
                    old.name(),
                    format!("field {} removed without reserving {missing}", old.number()),
                ),
            },
            (Some(new), _) if new.name() != old.name() => change(
                true,
                old.name(),
                format!(
                    "field {} renamed to `{}` (or its number reused)",
                    old.number(),
                    new.name()
                ),
            ),
            (None, Some(new)) => change(
                true,
                old.name(),
                format!(
                    "name reused: field {} now has the number {}",
                    old.number(),
                    new.number()
                ),
            ),
            (Some(new), _) => compare_fields(&old, new, &mut change),
        }
    }
    for new in after.fields() {
        if before.get_field(new.number()).is_none()
            && before.get_field_by_name(new.name()).is_none()
        {
            if message_reserves(before, new.number(), new.name()) != (false, false) {
                change(
                    true,
                    new.name(),
                    format!("field {} added on a reserved number or name", new.number()),
                );
            } else {
                change(false, new.name(), format!("field {} added", new.number()));
            }
        }
    }
}

/// Whether `message` reserves `number`, and `name` (its ranges exclude their end).
fn message_reserves(message: &MessageDescriptor, number: u32, name: &str) -> (bool, bool) {
    let proto = message.descriptor_proto();
    let number = i32::try_from(number).unwrap_or(i32::MAX);
    (
        proto
            .reserved_range
            .iter()
            .any(|r| (r.start.unwrap_or(0)..r.end.unwrap_or(0)).contains(&number)),
        proto.reserved_name.iter().any(|n| n == name),
    )
}

/// Whether `e` reserves `number`, and `name` (its ranges include their end).
fn enum_reserves(e: &EnumDescriptor, number: i32, name: &str) -> (bool, bool) {
    let proto = e.enum_descriptor_proto();
    (
        proto
            .reserved_range
            .iter()
            .any(|r| (r.start.unwrap_or(0)..=r.end.unwrap_or(0)).contains(&number)),
        proto.reserved_name.iter().any(|n| n == name),
    )
}

/// What a removal left unreserved, if anything, given whether its number and name are.
fn unreserved(reserved: (bool, bool)) -> Option<&'static str> {
    match reserved {
        (true, true) => None,
        (false, false) => Some("its number and name"),
        (false, true) => Some("its number"),
        (true, false) => Some("its name"),
    }
}

/// The shape of a field: singular, repeated or map, and its real oneof. A oneof is known by
/// its members, not its name, which neither the wire nor JSON carries.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    cardinality: &'static str,
    oneof: Option<Vec<u32>>,
    oneof_name: String,
}

impl Shape {
    fn of(field: &FieldDescriptor) -> Shape {
        let cardinality = if field.is_map() {
            "map"
        } else if field.is_list() {
            "repeated"
        } else if field.cardinality() == Cardinality::Required {
            "required"
        } else {
            "singular"
        };
        let oneof = field.containing_oneof().filter(|o| !o.is_synthetic());
        Shape {
            cardinality,
            oneof: oneof.as_ref().map(|o| {
                let mut members: Vec<u32> = o.fields().map(|f| f.number()).collect();
                members.sort_unstable();
                members
            }),
            oneof_name: oneof.map(|o| o.name().to_owned()).unwrap_or_default(),
        }
    }

    /// Whether a reader of one reads the other: the same cardinality, in no oneof or in one
    /// with the same members.
    fn reads_as(&self, other: &Shape) -> bool {
        self.cardinality == other.cardinality && self.oneof == other.oneof
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.oneof {
            Some(members) => write!(
                f,
                "{} in oneof `{}` (fields {members:?})",
                self.cardinality, self.oneof_name
            ),
            None => f.write_str(self.cardinality),
        }
    }
}

fn compare_fields(
    old: &FieldDescriptor,
    new: &FieldDescriptor,
    change: &mut impl FnMut(bool, &str, String),
) {
    let (before, after) = (Shape::of(old), Shape::of(new));
    if !before.reads_as(&after) {
        change(
            true,
            old.name(),
            format!("field {} changed from {before} to {after}", old.number()),
        );
        return;
    }
    if old.is_map()
        && let (Kind::Message(old_entry), Kind::Message(new_entry)) = (old.kind(), new.kind())
    {
        for (part, before, after) in [
            (
                "key",
                old_entry.map_entry_key_field(),
                new_entry.map_entry_key_field(),
            ),
            (
                "value",
                old_entry.map_entry_value_field(),
                new_entry.map_entry_value_field(),
            ),
        ] {
            compare_types(
                old,
                &format!("its {part} "),
                &before.kind(),
                &after.kind(),
                change,
            );
        }
        return;
    }
    compare_types(old, "", &old.kind(), &new.kind(), change);
}

/// Reports the change of `field`'s type (or of `part` of it, a map's key or value).
fn compare_types(
    field: &FieldDescriptor,
    part: &str,
    before: &Kind,
    after: &Kind,
    change: &mut impl FnMut(bool, &str, String),
) {
    let old = field;
    let (from, to) = (type_name(before), type_name(after));
    if from == to {
        return;
    }
    if matches!((before, after), (Kind::Bytes, Kind::String)) {
        change(
            true,
            old.name(),
            format!(
                "field {} changed {part}type from bytes to string, which readers reject unless every stored value is UTF-8",
                old.number()
            ),
        );
        return;
    }
    match (wire_class(before), wire_class(after)) {
        (Some(a), Some(b)) if a == b => change(
            false,
            old.name(),
            format!(
                "field {} changed {part}type from {from} to {to}, read the same on the wire",
                old.number()
            ),
        ),
        _ => change(
            true,
            old.name(),
            format!(
                "field {} changed {part}type from {from} to {to}, which the wire does not carry the same way",
                old.number()
            ),
        ),
    }
}

fn type_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Types a reader decodes from the same wire representation (protobuf's "compatible" types).
/// Messages and enums of another name are their own class: a reader would misread them.
fn wire_class(kind: &Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 | Kind::Bool => "varint",
        Kind::Sint32 | Kind::Sint64 => "zigzag",
        Kind::Fixed32 | Kind::Sfixed32 => "fixed32",
        Kind::Fixed64 | Kind::Sfixed64 => "fixed64",
        Kind::String | Kind::Bytes => "bytes",
        _ => return None,
    })
}

fn compare_enums(before: &EnumDescriptor, after: &EnumDescriptor, changes: &mut Vec<Change>) {
    let file = after.parent_file().name().to_owned();
    let mut change = |breaking: bool, value: &str, what: String| {
        changes.push(Change {
            breaking,
            file: file.clone(),
            message: after.full_name().to_owned(),
            field: Some(value.to_owned()),
            change: what,
        })
    };
    for old in before.values() {
        let by_number = after.get_value(old.number());
        let by_name = after.get_value_by_name(old.name());
        match (by_number, by_name) {
            (Some(new), _) if new.name() == old.name() => {}
            (Some(new), _) => change(
                true,
                old.name(),
                format!("value {} renamed to `{}`", old.number(), new.name()),
            ),
            (None, Some(new)) => change(
                true,
                old.name(),
                format!("value renumbered from {} to {}", old.number(), new.number()),
            ),
            (None, None) => match unreserved(enum_reserves(after, old.number(), old.name())) {
                None => change(
                    false,
                    old.name(),
                    format!(
                        "value {} removed, its number and name reserved",
                        old.number()
                    ),
                ),
                Some(missing) => change(
                    true,
                    old.name(),
                    format!("value {} removed without reserving {missing}", old.number()),
                ),
            },
        }
    }
    for new in after.values() {
        if before.get_value(new.number()).is_none()
            && before.get_value_by_name(new.name()).is_none()
        {
            if enum_reserves(before, new.number(), new.name()) != (false, false) {
                change(
                    true,
                    new.name(),
                    format!("value {} added on a reserved number or name", new.number()),
                );
            } else {
                change(false, new.name(), format!("value {} added", new.number()));
            }
        }
    }
}

/// The contracts at `path`: a descriptor set file or a folder of `.proto` files, compiled.
pub(crate) fn compile(path: &Path) -> anyhow::Result<DescriptorPool> {
    Ok(fractal_bridge::Contracts::load(path)?.pool().clone())
}

/// The descriptors to compare against: a descriptor set file (`FileDescriptorSet`, as
/// `protoc --descriptor_set_out` or `buf build -o` write it), or a git revision of the
/// repository, whose `proto` folder is compiled.
pub(crate) fn baseline(
    against: &str,
    repository: &Path,
    proto: &Path,
) -> anyhow::Result<DescriptorPool> {
    let file = Path::new(against);
    if file.is_file() {
        return compile(file);
    }
    let relative = proto.strip_prefix(repository).with_context(|| {
        format!(
            "{} is not inside the repository {}",
            proto.display(),
            repository.display()
        )
    })?;
    let dir = tempfile::tempdir()?;
    let archive = std::process::Command::new("git")
        .current_dir(repository)
        .args(["archive", "--format=tar", against, "--"])
        .arg(relative)
        .output()
        .context("cannot run git")?;
    if !archive.status.success() {
        bail!(
            "`{against}` is neither a descriptor set file nor a git revision with {}: {}",
            relative.display(),
            String::from_utf8_lossy(&archive.stderr).trim()
        );
    }
    let mut tar = std::process::Command::new("tar")
        .current_dir(dir.path())
        .args(["-xf", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("cannot run tar")?;
    if let Some(mut stdin) = tar.stdin.take() {
        std::io::Write::write_all(&mut stdin, &archive.stdout)?;
    }
    if !tar.wait()?.success() {
        bail!("cannot unpack {} at `{against}`", relative.display());
    }
    compile(&dir.path().join(relative))
        .with_context(|| format!("{} at `{against}`", relative.display()))
}

/// The external event types a topology file publishes (its services' `publishes`) at git
/// revision `against`; `None` if `against` is a descriptor set file rather than a revision.
pub(crate) fn published_at(
    against: &str,
    repository: &Path,
    topology: &Path,
) -> anyhow::Result<Option<BTreeSet<String>>> {
    if Path::new(against).is_file() {
        return Ok(None);
    }
    let relative = topology.strip_prefix(repository).with_context(|| {
        format!(
            "{} is not inside the repository {}",
            topology.display(),
            repository.display()
        )
    })?;
    // `./`: the path is from the folder git runs in, not from the repository's root.
    let at = format!("{against}:./{}", relative.display());
    let exists = std::process::Command::new("git")
        .current_dir(repository)
        .args(["cat-file", "-e", &at])
        .status()
        .context("cannot run git")?;
    if !exists.success() {
        // No topology there then: nothing was published.
        return Ok(Some(BTreeSet::new()));
    }
    let shown = std::process::Command::new("git")
        .current_dir(repository)
        .args(["show", &at])
        .output()
        .context("cannot run git")?;
    if !shown.status.success() {
        bail!(
            "cannot read {} at `{against}`: {}",
            relative.display(),
            String::from_utf8_lossy(&shown.stderr).trim()
        );
    }
    /// What is read of a topology as it was: only what its services publish, so that a key
    /// added or renamed since does not stop the comparison.
    #[derive(serde::Deserialize)]
    struct Then {
        #[serde(default)]
        services: Vec<Publishes>,
    }
    #[derive(serde::Deserialize)]
    struct Publishes {
        #[serde(default)]
        publishes: Vec<String>,
    }
    use figment::providers::Format as _;
    let text = String::from_utf8_lossy(&shown.stdout);
    let then: Then = figment::Figment::from(figment::providers::Toml::string(&text))
        .extract()
        .map_err(|e| anyhow::anyhow!("{} at `{against}`: {e}", relative.display()))?;
    Ok(Some(
        then.services
            .into_iter()
            .flat_map(|s| s.publishes)
            .collect(),
    ))
}

/// Each external event type published before (`old`) and no longer in `topology`: breaking if
/// a service still consumes it or a route still carries it (renamed or removed under its
/// readers), compatible otherwise (retired; its events stay in the lake).
pub(crate) fn compare_event_types(
    old: &BTreeSet<String>,
    topology: &crate::topology::Topology,
) -> Vec<Change> {
    let file = topology
        .path
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    // Published now, by the top's own services as `old` reads them (an included system's are
    // its own file's), or under a new name by a route's `target_type`.
    let now: BTreeSet<&str> = topology
        .services
        .iter()
        .filter(|s| s.system.is_empty())
        .flat_map(|s| s.spec.publishes.iter().map(String::as_str))
        .chain(
            topology
                .bridges
                .iter()
                .flat_map(|b| &b.config.routes)
                .filter_map(|r| r.target_type.as_deref()),
        )
        .collect();
    let mut changes = Vec::new();
    for event_type in old.iter().filter(|t| !now.contains(t.as_str())) {
        let mut readers: Vec<String> = topology
            .services
            .iter()
            .filter(|s| s.spec.consumes.contains(event_type))
            .map(|s| s.name())
            .collect();
        for bridge in &topology.bridges {
            for route in &bridge.config.routes {
                // A route naming the type; a pattern (`order.*`) reads what there is.
                if route.types.iter().any(|p| p == event_type) {
                    readers.push(format!("route {}/{}", bridge.config.name, route.name));
                }
            }
        }
        changes.push(Change {
            breaking: !readers.is_empty(),
            file: file.clone(),
            message: format!("event type {event_type}"),
            field: None,
            change: if readers.is_empty() {
                "no longer published, and nothing reads it: retired (its events stay in the lake)"
                    .into()
            } else {
                format!(
                    "no longer published (renamed or removed) while {} still read it",
                    readers.join(", ")
                )
            },
        });
    }
    changes
}

/// What the candidate descriptors make of the stored events of one type and payload version.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct LakeFinding {
    /// The event type.
    pub(crate) event_type: String,
    /// The payload's message as stored (`food.contracts.v1.Order`): its version.
    pub(crate) payload_type: String,
    /// Events read.
    pub(crate) events: u64,
    /// Events that decode, every field known.
    pub(crate) read: u64,
    /// Events whose payload message is not in the descriptors.
    pub(crate) unknown_message: u64,
    /// Events whose payload no longer decodes, with the first one's id and error.
    pub(crate) undecodable: u64,
    /// Events that decode but carry fields the descriptors no longer know (lost to readers),
    /// with their numbers.
    pub(crate) losing_fields: u64,
    pub(crate) lost_fields: BTreeSet<String>,
    /// Events that carry fields since removed with their numbers reserved: read as intended.
    pub(crate) reserved_fields: BTreeSet<String>,
    /// The first event that does not read, and why.
    pub(crate) example: Option<String>,
}

impl LakeFinding {
    /// Whether every event read as it was written.
    pub(crate) fn is_clean(&self) -> bool {
        self.read == self.events
    }
}

impl std::fmt::Display for LakeFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.is_clean() { "reads" } else { "breaking" };
        write!(
            f,
            "{verdict}: {} ({}): {} event{} read, {} decode",
            self.event_type,
            self.payload_type,
            self.events,
            if self.events == 1 { "" } else { "s" },
            self.read,
        )?;
        if self.unknown_message > 0 {
            write!(f, ", {} of a message no longer known", self.unknown_message)?;
        }
        if self.undecodable > 0 {
            write!(f, ", {} no longer decode", self.undecodable)?;
        }
        if self.losing_fields > 0 {
            let lost: Vec<&str> = self.lost_fields.iter().map(String::as_str).collect();
            write!(
                f,
                ", {} lose fields {}",
                self.losing_fields,
                lost.join(", ")
            )?;
        }
        if !self.reserved_fields.is_empty() {
            let dropped: Vec<&str> = self.reserved_fields.iter().map(String::as_str).collect();
            write!(f, " (fields {} removed and reserved)", dropped.join(", "))?;
        }
        if let Some(example) = &self.example {
            write!(f, " (first: {example})")?;
        }
        Ok(())
    }
}

/// Decodes the first `sample` external events stored on `hub` (the oldest, which readers
/// must still read) with `pool`, per event type and payload version.
pub(crate) async fn check_lake(
    hub: &fractal::Hub,
    pool: &DescriptorPool,
    sample: u64,
) -> anyhow::Result<Vec<LakeFinding>> {
    let external = fractal::wire::event_subject(fractal::Scope::External, ">");
    let mut reading =
        crate::lake::read(hub, &crate::lake::Range::default(), vec![external], None).await?;
    let mut findings: BTreeMap<(String, String), LakeFinding> = BTreeMap::new();
    let mut read = 0;
    while read < sample {
        let Some((message, sequence, _)) = reading.next().await? else {
            break;
        };
        read += 1;
        let Ok(event) = fractal::Event::decode(
            &message.subject,
            message.headers.as_ref(),
            message.payload.clone(),
        ) else {
            // Not an event at all: the platform's own check faults these; no contract reads it.
            continue;
        };
        let finding = findings
            .entry((event.event_type.clone(), event.payload_type.clone()))
            .or_insert_with(|| LakeFinding {
                event_type: event.event_type.clone(),
                payload_type: event.payload_type.clone(),
                ..Default::default()
            });
        finding.events += 1;
        let example = |why: String| format!("sequence {sequence}, id {}: {why}", event.id);
        let Some(descriptor) = pool.get_message_by_name(&event.payload_type) else {
            finding.unknown_message += 1;
            finding
                .example
                .get_or_insert_with(|| example("the message is not in the descriptors".into()));
            continue;
        };
        match prost_reflect::DynamicMessage::decode(descriptor, event.payload.clone()) {
            Err(e) => {
                finding.undecodable += 1;
                finding
                    .example
                    .get_or_insert_with(|| example(e.to_string()));
            }
            Ok(decoded) => {
                let mut lost = BTreeSet::new();
                unknown_fields(&decoded, "", &mut lost, &mut finding.reserved_fields);
                if lost.is_empty() {
                    finding.read += 1;
                } else {
                    finding.losing_fields += 1;
                    let list: Vec<&str> = lost.iter().map(String::as_str).collect();
                    finding.example.get_or_insert_with(|| {
                        example(format!("fields {} unknown", list.join(", ")))
                    });
                    finding.lost_fields.extend(lost);
                }
            }
        }
    }
    Ok(findings.into_values().collect())
}

/// The numbers of the fields of `message`, and of the messages in it, that its descriptor does
/// not know (`8`, `lines.6`): in `lost`, or in `reserved` if the descriptor reserves the number
/// (a field removed on purpose, which readers are meant to skip).
fn unknown_fields(
    message: &prost_reflect::DynamicMessage,
    path: &str,
    lost: &mut BTreeSet<String>,
    reserved: &mut BTreeSet<String>,
) {
    use prost_reflect::Value;
    let descriptor = prost_reflect::ReflectMessage::descriptor(message);
    for field in message.unknown_fields() {
        let name = format!("{path}{}", field.number());
        if message_reserves(&descriptor, field.number(), "").0 {
            reserved.insert(name);
        } else {
            lost.insert(name);
        }
    }
    for (field, value) in message.fields() {
        let path = format!("{path}{}.", field.name());
        match value {
            Value::Message(nested) => unknown_fields(nested, &path, lost, reserved),
            Value::List(items) => {
                for item in items {
                    if let Value::Message(nested) = item {
                        unknown_fields(nested, &path, lost, reserved);
                    }
                }
            }
            Value::Map(entries) => {
                for value in entries.values() {
                    if let Value::Message(nested) = value {
                        unknown_fields(nested, &path, lost, reserved);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");

    /// The real contracts with `edit` applied to `file` (under `food/contracts/v1`), compiled.
    fn mutated(file: &str, edit: impl Fn(String) -> String) -> DescriptorPool {
        let dir = tempfile::tempdir().unwrap();
        let contracts = dir.path().join("food/contracts/v1");
        std::fs::create_dir_all(&contracts).unwrap();
        for name in ["order.proto", "menu.proto"] {
            let text =
                std::fs::read_to_string(Path::new(ROOT).join("food/contracts/v1").join(name))
                    .unwrap();
            let text = if name == file {
                edit(text.clone())
            } else {
                text
            };
            std::fs::write(contracts.join(name), text).unwrap();
        }
        compile(dir.path()).unwrap_or_else(|e| panic!("the mutation does not compile: {e:#}"))
    }

    fn replace(from: &'static str, to: &'static str) -> impl Fn(String) -> String {
        move |text: String| {
            assert!(text.contains(from), "`{from}` is not in the contract");
            text.replacen(from, to, 1)
        }
    }

    fn carried() -> Vec<String> {
        [
            "food.contracts.v1.Order",
            "food.contracts.v1.Menu",
            "food.contracts.v1.MenuViewed",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn the_real_contracts_compare_equal_to_themselves() {
        let pool = compile(Path::new(ROOT)).unwrap();
        assert_eq!(compare(&pool, &pool, &carried()), []);
    }

    /// Each mutation of a real contract, whether it breaks readers, and a word the report
    /// must contain.
    #[test]
    fn mutations_of_real_contracts_are_classified() {
        type Edit = Box<dyn Fn(String) -> String>;
        let cases: Vec<(&str, &str, Edit, bool, &str)> = vec![
            (
                "field added",
                "order.proto",
                Box::new(replace(
                    "  Driver driver = 18;\n",
                    "  Driver driver = 18;\n  string note = 19;\n",
                )),
                false,
                "field 19 added",
            ),
            (
                "repeated field added",
                "menu.proto",
                Box::new(replace(
                    "  int64 price_cents = 4;\n",
                    "  int64 price_cents = 4;\n  repeated string tags = 5;\n",
                )),
                false,
                "added",
            ),
            (
                "nested message added to",
                "order.proto",
                Box::new(replace(
                    "  string postal_code = 3;\n",
                    "  string postal_code = 3;\n  string country = 4;\n",
                )),
                false,
                "field 4 added",
            ),
            (
                "enum value added",
                "order.proto",
                Box::new(replace(
                    "  ORDER_STATUS_DELIVERED = 6;\n",
                    "  ORDER_STATUS_DELIVERED = 6;\n  ORDER_STATUS_CANCELLED = 7;\n",
                )),
                false,
                "value 7 added",
            ),
            (
                "field removed, reserved",
                "order.proto",
                Box::new(replace(
                    "  string currency = 9;\n",
                    "  reserved 9;\n  reserved \"currency\";\n",
                )),
                false,
                "reserved",
            ),
            (
                "field removed",
                "order.proto",
                Box::new(replace("  string currency = 9;\n", "")),
                true,
                "without reserving its number and name",
            ),
            (
                "field removed, number reserved only",
                "order.proto",
                Box::new(replace("  string currency = 9;\n", "  reserved 9;\n")),
                true,
                "without reserving its name",
            ),
            (
                "field removed, name reserved only",
                "order.proto",
                Box::new(replace(
                    "  string currency = 9;\n",
                    "  reserved \"currency\";\n",
                )),
                true,
                "without reserving its number",
            ),
            (
                "field renumbered",
                "order.proto",
                Box::new(replace(
                    "string customer_id = 2;",
                    "string customer_id = 20;",
                )),
                true,
                "now has the number 20",
            ),
            (
                "field renamed",
                "order.proto",
                Box::new(replace(
                    "string restaurant_name = 4;",
                    "string restaurant_title = 4;",
                )),
                true,
                "renamed",
            ),
            (
                "number reused",
                "menu.proto",
                Box::new(replace(
                    "  string description = 3;\n",
                    "  reserved \"description\";\n  int64 calories = 3;\n",
                )),
                true,
                "renamed to `calories`",
            ),
            (
                "string to int64",
                "order.proto",
                Box::new(replace("string order_id = 1;", "int64 order_id = 1;")),
                true,
                "does not carry the same way",
            ),
            (
                "int64 to string",
                "order.proto",
                Box::new(replace("int64 total_cents = 8;", "string total_cents = 8;")),
                true,
                "does not carry the same way",
            ),
            (
                "int64 to int32",
                "order.proto",
                Box::new(replace(
                    "int64 subtotal_cents = 6;",
                    "int32 subtotal_cents = 6;",
                )),
                false,
                "read the same on the wire",
            ),
            (
                "uint32 to uint64",
                "order.proto",
                Box::new(replace("uint32 quantity = 3;", "uint64 quantity = 3;")),
                false,
                "read the same on the wire",
            ),
            (
                "int64 to sint64",
                "order.proto",
                Box::new(replace(
                    "int64 delivery_fee_cents = 7;",
                    "sint64 delivery_fee_cents = 7;",
                )),
                true,
                "does not carry the same way",
            ),
            (
                "int64 to fixed64",
                "menu.proto",
                Box::new(replace(
                    "int64 price_cents = 4;",
                    "fixed64 price_cents = 4;",
                )),
                true,
                "does not carry the same way",
            ),
            (
                "string to bytes",
                "menu.proto",
                Box::new(replace("string name = 2;", "bytes name = 2;")),
                false,
                "read the same on the wire",
            ),
            (
                "message to another message",
                "order.proto",
                Box::new(replace(
                    "Address delivery_address = 10;",
                    "Driver delivery_address = 10;",
                )),
                true,
                "does not carry the same way",
            ),
            (
                "enum to int32",
                "order.proto",
                Box::new(replace("OrderStatus status = 11;", "int32 status = 11;")),
                true,
                "does not carry the same way",
            ),
            (
                "singular to repeated",
                "order.proto",
                Box::new(replace(
                    "string restaurant_id = 3;",
                    "repeated string restaurant_id = 3;",
                )),
                true,
                "from singular to repeated",
            ),
            (
                "repeated to singular",
                "menu.proto",
                Box::new(replace(
                    "repeated MenuItem items = 3;",
                    "MenuItem items = 3;",
                )),
                true,
                "from repeated to singular",
            ),
            (
                "repeated to map",
                "order.proto",
                Box::new(replace(
                    "repeated OrderLine lines = 5;",
                    "map<string, OrderLine> lines = 5;",
                )),
                true,
                "to map",
            ),
            (
                "moved into a oneof",
                "order.proto",
                Box::new(replace(
                    "  Driver driver = 18;\n",
                    "  oneof courier {\n    Driver driver = 18;\n  }\n",
                )),
                true,
                "oneof `courier`",
            ),
            (
                "optional added to a field",
                "order.proto",
                Box::new(replace(
                    "string currency = 9;",
                    "optional string currency = 9;",
                )),
                false,
                "",
            ),
            (
                "enum value removed",
                "order.proto",
                Box::new(replace("  ORDER_STATUS_READY = 3;\n", "")),
                true,
                "value 3 removed without reserving",
            ),
            (
                "enum value removed, reserved",
                "order.proto",
                Box::new(replace(
                    "  ORDER_STATUS_READY = 3;\n",
                    "  reserved 3;\n  reserved \"ORDER_STATUS_READY\";\n",
                )),
                false,
                "reserved",
            ),
            (
                "enum value renumbered",
                "order.proto",
                Box::new(replace(
                    "ORDER_STATUS_PICKED_UP = 5;",
                    "ORDER_STATUS_PICKED_UP = 8;",
                )),
                true,
                "renumbered from 5 to 8",
            ),
            (
                "enum value renamed",
                "order.proto",
                Box::new(replace(
                    "ORDER_STATUS_PLACED = 1;",
                    "ORDER_STATUS_SUBMITTED = 1;",
                )),
                true,
                "renamed",
            ),
            (
                "message renamed",
                "order.proto",
                Box::new(|text: String| {
                    replace("message Driver {", "message Courier {")(replace(
                        "Driver driver = 18;",
                        "Courier driver = 18;",
                    )(text))
                }),
                true,
                "message removed or renamed",
            ),
            (
                "contract removed",
                "menu.proto",
                Box::new(replace("message MenuViewed {", "message MenuSeen {")),
                true,
                "while a route still carries it",
            ),
            (
                "added on a reserved number",
                "order.proto",
                Box::new(replace(
                    "  Driver driver = 18;\n",
                    "  Driver driver = 18;\n  reserved 30;\n",
                )),
                false,
                "",
            ),
            (
                "comment changed",
                "order.proto",
                Box::new(replace(
                    "// Set from driver_assigned on.",
                    "// Set once a driver is assigned.",
                )),
                false,
                "",
            ),
            (
                "nothing changed",
                "order.proto",
                Box::new(|text: String| text),
                false,
                "",
            ),
        ];
        assert!(cases.len() >= 25);
        let old = compile(Path::new(ROOT)).unwrap();
        for (name, file, edit, breaking, expected) in cases {
            let new = mutated(file, edit);
            let changes = compare(&old, &new, &carried());
            let report: Vec<String> = changes.iter().map(ToString::to_string).collect();
            assert_eq!(
                changes.iter().any(|c| c.breaking),
                breaking,
                "{name}: {report:#?}"
            );
            if expected.is_empty() {
                assert_eq!(report, Vec::<String>::new(), "{name}");
            } else {
                assert!(
                    report.iter().any(|line| line.contains(expected)),
                    "{name}: no change mentions `{expected}`: {report:#?}"
                );
            }
        }
    }

    /// One file of package `t.v1` with `body`, compiled.
    fn pool_of(body: &str) -> DescriptorPool {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("t")).unwrap();
        std::fs::write(
            dir.path().join("t/t.proto"),
            format!("syntax = \"proto3\";\npackage t.v1;\n{body}"),
        )
        .unwrap();
        compile(dir.path()).unwrap()
    }

    /// Rules the real contracts have no field to show: maps' key and value types, oneofs, a
    /// bytes field becoming a string, enum values on reserved numbers.
    #[test]
    fn maps_oneofs_bytes_and_reserved_enum_values() {
        let check = |before: &str, after: &str| {
            let changes = compare(&pool_of(before), &pool_of(after), &["t.v1.M".to_owned()]);
            let breaking = changes.iter().any(|c| c.breaking);
            (
                breaking,
                changes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        };
        let (breaking, report) = check(
            "message M { map<string, int64> m = 1; }",
            "message M { map<string, string> m = 1; }",
        );
        assert!(
            breaking && report.contains("changed its value type from int64 to string"),
            "{report}"
        );
        let (breaking, report) = check(
            "message M { map<string, int64> m = 1; }",
            "message M { map<string, int32> m = 1; }",
        );
        assert!(
            !breaking && report.contains("read the same on the wire"),
            "{report}"
        );
        let (breaking, report) = check(
            "message M { oneof a { string x = 1; int64 y = 2; } }",
            "message M { oneof b { string x = 1; int64 y = 2; } }",
        );
        assert!(!breaking, "a oneof renamed: {report}");
        let (breaking, report) = check(
            "message M { oneof a { string x = 1; int64 y = 2; } }",
            "message M { oneof a { string x = 1; } int64 y = 2; }",
        );
        assert!(
            breaking && report.contains("field 2 changed from singular in oneof `a`"),
            "moved out of a oneof: {report}"
        );
        let (breaking, report) = check("message M { bytes b = 1; }", "message M { string b = 1; }");
        assert!(breaking && report.contains("UTF-8"), "{report}");
        let (breaking, _) = check("message M { string b = 1; }", "message M { bytes b = 1; }");
        assert!(!breaking);
        let (breaking, report) = check(
            "enum E { E_0 = 0; reserved 2; } message M { E e = 1; }",
            "enum E { E_0 = 0; E_2 = 2; } message M { E e = 1; }",
        );
        assert!(
            breaking && report.contains("value 2 added on a reserved number"),
            "{report}"
        );
        let (breaking, report) = check(
            "enum E { E_0 = 0; E_1 = 1; } message M { E e = 1; }",
            "enum E { E_0 = 0; reserved 1; } message M { E e = 1; }",
        );
        assert!(
            breaking && report.contains("without reserving its name"),
            "{report}"
        );
    }

    #[test]
    fn a_new_major_version_is_an_addition_and_routes_may_move_to_it() {
        let old = compile(Path::new(ROOT)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for version in ["v1", "v2"] {
            let contracts = dir.path().join("food/contracts").join(version);
            std::fs::create_dir_all(&contracts).unwrap();
            for name in ["order.proto", "menu.proto"] {
                let text =
                    std::fs::read_to_string(Path::new(ROOT).join("food/contracts/v1").join(name))
                        .unwrap();
                let text = text.replace(
                    "package food.contracts.v1;",
                    &format!("package food.contracts.{version};"),
                );
                // v2 changes what v1 could not: the order id becomes a number.
                let text = if version == "v2" {
                    text.replace("string order_id = 1;", "int64 order_id = 1;")
                } else {
                    text
                };
                std::fs::write(contracts.join(name), text).unwrap();
            }
        }
        let new = compile(dir.path()).unwrap();
        let mut routes = carried();
        routes.push("food.contracts.v2.Order".into());
        let changes = compare(&old, &new, &routes);
        assert!(!changes.iter().any(|c| c.breaking), "{changes:#?}");
        assert!(
            changes
                .iter()
                .any(|c| c.message == "food.contracts.v2.Order" && c.change == "new contract"),
            "{changes:#?}"
        );
    }

    #[test]
    fn an_event_type_no_longer_published_breaks_its_readers_and_retires_without_them() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fractal.toml");
        let mut topology = crate::topology::Topology::load(&path).unwrap();
        let before: BTreeSet<String> = topology
            .services
            .iter()
            .flat_map(|s| s.spec.publishes.clone())
            .chain(["order.cancelled".to_owned()])
            .collect();
        assert!(
            compare_event_types(&before, &topology)
                .iter()
                .all(|c| !c.breaking && c.message == "event type order.cancelled")
        );
        // `order.ready` renamed by its producer while its consumers and routes stay.
        for service in &mut topology.services {
            service.spec.publishes.retain(|t| t != "order.ready");
        }
        let changes = compare_event_types(&before, &topology);
        let ready = changes
            .iter()
            .find(|c| c.message == "event type order.ready")
            .expect("reported");
        assert!(ready.breaking, "{ready}");
        for reader in [
            "ordering/gateway",
            "delivery/gateway",
            "route restaurant-to-system/",
        ] {
            assert!(ready.change.contains(reader), "{reader} in {ready}");
        }
    }
}
