//! `fractal contracts list` and `show`: the external event types of a system, each with its
//! message (fields and their comments), who produces and consumes it, the bridge routes that
//! carry it and the versions of its message, read from the topology and the `.proto` files.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};
use prost_types::FileDescriptorProto;

use crate::graph::{Flow, flows, join};
use crate::topology::Topology;

/// Every event type a bridge route carries, by name, with who produces, consumes and
/// carries it.
pub(crate) fn entries(topology: &Topology) -> BTreeMap<String, Flow> {
    let mut flows = flows(topology);
    flows.retain(|_, flow| !flow.contract.is_empty());
    flows
}

/// The catalogue as a table: one line per external event type.
pub(crate) fn list(entries: &BTreeMap<String, Flow>) -> String {
    let mut rows = vec![vec![
        "TYPE".to_owned(),
        "MESSAGE".to_owned(),
        "PRODUCED BY".to_owned(),
        "CONSUMED BY".to_owned(),
        "ROUTES".to_owned(),
    ]];
    for (event_type, entry) in entries {
        rows.push(vec![
            event_type.clone(),
            join(&entry.contract),
            join(&entry.producers),
            join(&entry.consumers),
            entry.routes.len().to_string(),
        ]);
    }
    crate::table::table(&rows)
}

/// One event type in full: its message's fields with their comments, who produces and
/// consumes it, the routes carrying it and the versions of its message in `pool`.
pub(crate) fn show(event_type: &str, entry: &Flow, pool: &DescriptorPool) -> String {
    let mut out = format!("{event_type}\n");
    let _ = writeln!(out, "  produced by {}", join(&entry.producers));
    let _ = writeln!(out, "  consumed by {}", join(&entry.consumers));
    let _ = writeln!(out, "  carried by  {}", join(&entry.routes));
    for contract in &entry.contract {
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
