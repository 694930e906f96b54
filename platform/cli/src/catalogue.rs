//! `fractal contracts list` and `show`: the external event types of a system, each with its
//! message (fields and their comments), who produces and consumes it, the bridge routes that
//! carry it and the versions of its message, read from the topology and the `.proto` files.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};
use prost_types::FileDescriptorProto;

use crate::topology::{Topology, matches};

/// One external event type.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    pub(crate) event_type: String,
    /// The messages routes say it carries.
    pub(crate) contracts: BTreeSet<String>,
    pub(crate) producers: BTreeSet<String>,
    pub(crate) consumers: BTreeSet<String>,
    /// `<bridge>/<route>`.
    pub(crate) routes: BTreeSet<String>,
}

/// Every event type a bridge route carries, by name.
pub(crate) fn entries(topology: &Topology) -> Vec<Entry> {
    let named: BTreeSet<&String> = topology
        .services
        .iter()
        .flat_map(|s| s.spec.publishes.iter().chain(&s.spec.consumes))
        .collect();
    let mut entries: std::collections::BTreeMap<String, Entry> = Default::default();
    for bridge in &topology.bridges {
        for route in &bridge.config.routes {
            for pattern in &route.types {
                let mut types: Vec<String> = named
                    .iter()
                    .filter(|t| matches(pattern, t))
                    .map(|t| t.to_string())
                    .collect();
                if types.is_empty() {
                    types.push(pattern.clone());
                }
                for event_type in types {
                    let entry = entries.entry(event_type.clone()).or_insert_with(|| Entry {
                        event_type,
                        ..Default::default()
                    });
                    entry.contracts.insert(route.contract.clone());
                    entry
                        .routes
                        .insert(format!("{}/{}", bridge.config.name, route.name));
                }
            }
        }
    }
    for service in &topology.services {
        for (list, producing) in [
            (&service.spec.publishes, true),
            (&service.spec.consumes, false),
        ] {
            for event_type in list {
                if let Some(entry) = entries.get_mut(event_type) {
                    let side = if producing {
                        &mut entry.producers
                    } else {
                        &mut entry.consumers
                    };
                    side.insert(service.name());
                }
            }
        }
    }
    entries.into_values().collect()
}

fn join(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "-".into()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// The catalogue as a table: one line per external event type.
pub(crate) fn list(entries: &[Entry]) -> String {
    let mut rows = vec![vec![
        "TYPE".to_owned(),
        "MESSAGE".to_owned(),
        "PRODUCED BY".to_owned(),
        "CONSUMED BY".to_owned(),
        "ROUTES".to_owned(),
    ]];
    for entry in entries {
        rows.push(vec![
            entry.event_type.clone(),
            join(&entry.contracts),
            join(&entry.producers),
            join(&entry.consumers),
            entry.routes.len().to_string(),
        ]);
    }
    crate::table::table(&rows)
}

/// One event type in full: its message's fields with their comments, who produces and
/// consumes it, the routes carrying it and the versions of its message in `pool`.
pub(crate) fn show(entry: &Entry, pool: &DescriptorPool) -> String {
    let mut out = format!("{}\n", entry.event_type);
    let _ = writeln!(out, "  produced by {}", join(&entry.producers));
    let _ = writeln!(out, "  consumed by {}", join(&entry.consumers));
    let _ = writeln!(out, "  carried by  {}", join(&entry.routes));
    for contract in &entry.contracts {
        let Some(message) = pool.get_message_by_name(contract) else {
            let _ = writeln!(out, "\n  message {contract}: not in the descriptors");
            continue;
        };
        let _ = writeln!(out, "  versions    {}", versions(&message, pool).join(", "));
        let file = message.parent_file_descriptor_proto();
        let _ = writeln!(
            out,
            "\n  message {contract} ({})",
            message.parent_file().name()
        );
        if let Some(comment) = comment(file, message.path()) {
            for line in comment.lines() {
                let _ = writeln!(out, "    // {line}");
            }
        }
        for field in message.fields() {
            let _ = write!(
                out,
                "    {} {} = {};",
                field_type(&field),
                field.name(),
                field.number()
            );
            match comment(file, field.path()) {
                Some(comment) => {
                    let _ = writeln!(out, "  // {}", comment.replace('\n', " "));
                }
                None => out.push('\n'),
            }
        }
    }
    out
}

/// The same message in every version of its package (`food.contracts.v1.Order`,
/// `food.contracts.v2.Order`): packages that differ only in a last `v<N>` token.
fn versions(message: &MessageDescriptor, pool: &DescriptorPool) -> Vec<String> {
    let package = message.package_name();
    let base = package.rsplit_once('.').map_or("", |(base, _)| base);
    let mut found: Vec<String> = pool
        .all_messages()
        .filter(|m| m.name() == message.name())
        .filter(|m| {
            let p = m.package_name();
            let (b, last) = p.rsplit_once('.').unwrap_or(("", p));
            b == base
                && last
                    .strip_prefix('v')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_alphanumeric()))
        })
        .map(|m| m.full_name().to_owned())
        .collect();
    found.sort();
    found
}

fn field_type(field: &FieldDescriptor) -> String {
    let name = |kind: &Kind| match kind {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        other => format!("{other:?}").to_lowercase(),
    };
    if field.is_map()
        && let Kind::Message(entry) = field.kind()
    {
        let (key, value) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        return format!("map<{}, {}>", name(&key.kind()), name(&value.kind()));
    }
    if field.is_list() {
        format!("repeated {}", name(&field.kind()))
    } else {
        name(&field.kind())
    }
}

/// The comment before the element at `path` in `file`, if the file was compiled with its
/// source information.
fn comment(file: &FileDescriptorProto, path: &[i32]) -> Option<String> {
    let location = file
        .source_code_info
        .as_ref()?
        .location
        .iter()
        .find(|l| l.path == path)?;
    let text = location
        .leading_comments
        .as_deref()
        .or(location.trailing_comments.as_deref())?;
    let text: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    (!text.is_empty()).then(|| text.join("\n"))
}
