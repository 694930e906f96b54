//! Writes valid inputs for every fuzz target into `<corpus>/<target>/seed-*`, from which the
//! fuzzer starts: event messages as a publisher sends them, a payload of each contract compiled
//! from the repository's `proto/`, and its own config files. Run by `scripts/fuzz`.
//!
//! Usage: `cargo run --example seeds -- <corpus folder>`

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fractal::proto::Envelope;
use fractal::wire;
use fractal_fuzz::Message;
use prost::Message as _;
use prost_reflect::{DynamicMessage, Kind, MapKey, MessageDescriptor, Value};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let corpus = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: seeds <corpus folder>")?,
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut written = 0;
    for (name, bytes) in envelopes() {
        written += write(&corpus.join("envelope"), &name, &bytes)?;
    }
    for (name, bytes) in contracts() {
        written += write(&corpus.join("contract"), &name, &bytes)?;
    }
    let service_configs = [
        "subsystems/*/config",
        "platform/fractal/service.example.toml",
    ];
    let bridge_configs = [
        "subsystems/system/bridges",
        "subsystems/system/bridges-direct",
        "bridge/bridge.example.toml",
    ];
    for (target, sources) in [
        ("config_service", &service_configs[..]),
        ("config_bridge", &bridge_configs[..]),
    ] {
        for file in toml_files(&repo, sources)? {
            let name = file
                .strip_prefix(&repo)?
                .to_string_lossy()
                .replace(['/', '\\'], "_");
            written += write(&corpus.join(target), &name, &std::fs::read(&file)?)?;
        }
    }
    println!("Wrote {written} seeds under {}.", corpus.display());
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<usize> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    Ok(1)
}

/// The `.toml` files named by `sources`: files, folders, or folders under a `*`.
fn toml_files(repo: &Path, sources: &[&str]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for source in sources {
        let mut dirs = vec![repo.to_path_buf()];
        for part in source.split('/') {
            let mut next = Vec::new();
            for dir in dirs {
                if part == "*" {
                    for entry in std::fs::read_dir(&dir)? {
                        next.push(entry?.path());
                    }
                } else {
                    next.push(dir.join(part));
                }
            }
            dirs = next;
        }
        for path in dirs {
            if path.is_file() {
                files.push(path);
            } else if path.is_dir() {
                for entry in std::fs::read_dir(&path)? {
                    let file = entry?.path();
                    if file.extension().is_some_and(|e| e == "toml") {
                        files.push(file);
                    }
                }
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Event messages as hubs hold them: one just published, one relayed and replayed, and the
/// same bodies with the subject and headers left to the fuzz target.
fn envelopes() -> Vec<(String, Vec<u8>)> {
    let payload = fractal::proto::Header {
        name: "order".into(),
        value: "o-1".into(),
    };
    let envelope = Envelope {
        id: "01JZ8Q4V6YB1T5E4M0W3R2K9XN".into(),
        r#type: "order.placed".into(),
        time: Some((SystemTime::UNIX_EPOCH + Duration::from_millis(1_751_000_000_123)).into()),
        partition_key: "o-1".into(),
        source: "ordering/checkout".into(),
        tags: [("channel".to_owned(), "app".to_owned())].into(),
        payload_type: "fractal.platform.v1.Header".into(),
        payload: payload.encode_to_vec().into(),
    };
    let body = envelope.encode_to_vec();
    let published = Message {
        flags: 0,
        subject: wire::event_subject(wire::Scope::External, &envelope.r#type),
        headers: [
            (wire::MSG_ID, envelope.id.as_str()),
            (wire::TYPE, &envelope.r#type),
            (wire::KEY, &envelope.partition_key),
            (wire::ORIGIN, "ordering"),
            (wire::PATH, "ordering"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .into(),
        body: &body,
    };
    let mut replayed = Message {
        subject: published.subject.clone(),
        headers: published.headers.clone(),
        ..published
    };
    replayed.headers[4].1 = "ordering,system".into();
    for (name, value) in [(wire::RESUBMIT_FOR, "kitchen"), (wire::REPLAY, "r-1")] {
        replayed.headers.push((name.to_owned(), value.to_owned()));
    }
    let consistent = Message {
        flags: Message::CONSISTENT,
        subject: String::new(),
        headers: Vec::new(),
        body: &body,
    };
    vec![
        ("published".into(), published.to_bytes()),
        ("replayed".into(), replayed.to_bytes()),
        ("consistent".into(), consistent.to_bytes()),
    ]
}

/// A payload of each contract, every field set, prefixed with the byte that picks the contract
/// in the `contract` target.
fn contracts() -> Vec<(String, Vec<u8>)> {
    let proto = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let Ok(loaded) = fractal_bridge::Contracts::load(&proto) else {
        return Vec::new();
    };
    let mut all: Vec<_> = loaded.pool().all_messages().collect();
    all.sort_by(|a, b| a.full_name().cmp(b.full_name()));
    all.iter()
        .enumerate()
        .filter(|(pick, contract)| *pick < 256 && !contract.is_map_entry())
        .map(|(pick, contract)| {
            let mut bytes = vec![pick as u8];
            bytes.extend(message(contract, 3).encode_to_vec());
            (contract.full_name().to_owned(), bytes)
        })
        .collect()
}

/// A message of `descriptor` with every field set, nesting at most `depth` deep.
fn message(descriptor: &MessageDescriptor, depth: u32) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    if depth == 0 {
        return message;
    }
    for field in descriptor.fields() {
        let kind = field.kind();
        let value = if field.is_map() {
            let Some(entry) = kind.as_message() else {
                continue;
            };
            let key = match value(&entry.map_entry_key_field().kind(), depth - 1) {
                Value::String(s) => MapKey::String(s),
                Value::I32(n) => MapKey::I32(n),
                Value::I64(n) => MapKey::I64(n),
                Value::U32(n) => MapKey::U32(n),
                Value::U64(n) => MapKey::U64(n),
                Value::Bool(b) => MapKey::Bool(b),
                _ => continue,
            };
            let value = value(&entry.map_entry_value_field().kind(), depth - 1);
            Value::Map([(key, value)].into())
        } else if field.is_list() {
            Value::List(vec![value(&kind, depth - 1), value(&kind, depth - 1)])
        } else {
            value(&kind, depth - 1)
        };
        message.set_field(&field, value);
    }
    message
}

fn value(kind: &Kind, depth: u32) -> Value {
    match kind {
        Kind::Double => Value::F64(1.5),
        Kind::Float => Value::F32(-2.5),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(-7),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(1_751_000_000),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(300),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(70_000),
        Kind::Bool => Value::Bool(true),
        Kind::String => Value::String("o-1".into()),
        Kind::Bytes => Value::Bytes(vec![0, 0xff].into()),
        Kind::Enum(e) => Value::EnumNumber(e.values().last().map_or(0, |v| v.number())),
        Kind::Message(m) => Value::Message(message(m, depth)),
    }
}
