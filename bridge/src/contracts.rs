//! The contracts a bridge or a tool knows: the platform's own messages, built in, and the
//! descriptors it is given at run time, as a descriptor set file or a folder of `.proto` files.
//! Nothing of any system's contracts is compiled into the program.

use std::path::{Path, PathBuf};

use fractal_protowire::{MAX_DEPTH, Reader, WireError, WireType};
use prost::Message as _;
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};
use prost_types::FileDescriptorSet;

/// The messages a program knows by name.
#[derive(Debug, Clone)]
pub struct Contracts {
    pool: DescriptorPool,
    source: Option<PathBuf>,
}

/// Why contracts cannot be loaded, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ContractsError {
    /// Neither a file nor a folder is there.
    #[error("{}: no such descriptor set file or folder of .proto files", path.display())]
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// The file or folder cannot be read.
    #[error("{}: cannot read: {error}", path.display())]
    Unreadable {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not a `FileDescriptorSet`.
    #[error(
        "{}: not a descriptor set (a FileDescriptorSet, as `fractal contracts build`, \
         `protoc --descriptor_set_out` or `buf build -o` write): {error}",
        path.display()
    )]
    NotADescriptorSet {
        /// The file.
        path: PathBuf,
        /// Why it does not decode.
        error: prost::DecodeError,
    },
    /// The descriptors do not stand on their own: a dependency is missing or a name clashes.
    #[error("{}: the descriptors are incomplete or inconsistent: {error}", path.display())]
    Inconsistent {
        /// The file or folder.
        path: PathBuf,
        /// What is missing or clashes.
        error: prost_reflect::DescriptorError,
    },
    /// A `.proto` file does not compile.
    #[error("{}: {message}", path.display())]
    Compile {
        /// The folder.
        path: PathBuf,
        /// The compiler's message, with the file, line and column.
        message: String,
    },
    /// The folder holds no `.proto` file.
    #[error("{}: no .proto files in the folder", path.display())]
    Empty {
        /// The folder.
        path: PathBuf,
    },
}

impl Contracts {
    /// The platform's own messages (`fractal.platform.v1`) only.
    pub fn builtin() -> Contracts {
        let pool = DescriptorPool::from_file_descriptor_set(platform_files())
            .unwrap_or_else(|e| panic!("the platform's descriptor set is incomplete: {e}"));
        Contracts { pool, source: None }
    }

    /// The contracts at `path`: a descriptor set file (`FileDescriptorSet`) or a folder whose
    /// `.proto` files are compiled now, the folder being the include path. The platform's own
    /// messages are added where the descriptors do not have them.
    pub fn load(path: &Path) -> Result<Contracts, ContractsError> {
        let set = if path.is_dir() {
            compile_folder(path)?
        } else if path.exists() {
            let bytes = std::fs::read(path).map_err(|error| ContractsError::Unreadable {
                path: path.to_owned(),
                error,
            })?;
            FileDescriptorSet::decode(bytes.as_slice()).map_err(|error| {
                ContractsError::NotADescriptorSet {
                    path: path.to_owned(),
                    error,
                }
            })?
        } else {
            return Err(ContractsError::Missing {
                path: path.to_owned(),
            });
        };
        // The platform's files the set does not have join it, so that its files may import
        // them (and the well-known types) without carrying them.
        let mut set = set;
        let builtin = platform_files();
        let named: std::collections::HashSet<Option<String>> =
            set.file.iter().map(|f| f.name.clone()).collect();
        let missing: Vec<_> = builtin
            .file
            .into_iter()
            .filter(|f| !named.contains(&f.name))
            .collect();
        set.file.splice(0..0, missing);
        let pool = DescriptorPool::from_file_descriptor_set(set).map_err(|error| {
            ContractsError::Inconsistent {
                path: path.to_owned(),
                error,
            }
        })?;
        Ok(Contracts {
            pool,
            source: Some(path.to_owned()),
        })
    }

    /// Where the contracts were loaded from; `None` for the built-in ones alone.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// All the descriptors.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// The message named `name` (`food.ordering.v1.OrderPlaced`), if it is a known contract.
    pub fn find(&self, name: &str) -> Option<MessageDescriptor> {
        self.pool.get_message_by_name(name)
    }

    /// Message names close to `name` (by their last part: one contains the other, or they
    /// differ by at most two letters), the closest first, to suggest when it is unknown.
    pub fn similar(&self, name: &str) -> Vec<String> {
        let short = |full: &str| full.rsplit('.').next().unwrap_or(full).to_ascii_lowercase();
        let wanted = short(name);
        let mut close: Vec<(usize, usize, String)> = self
            .pool
            .all_messages()
            .filter_map(|m| {
                let candidate = short(m.full_name());
                let distance = strsim::levenshtein(&candidate, &wanted);
                let related = candidate.contains(&wanted) || wanted.contains(&candidate);
                (related || distance <= 2).then(|| {
                    let whole = strsim::levenshtein(m.full_name(), name);
                    (distance, whole, m.full_name().to_owned())
                })
            })
            .collect();
        close.sort();
        close.into_iter().take(5).map(|(_, _, name)| name).collect()
    }

    /// Why `name` is not a known contract, with the closest names.
    pub fn unknown(&self, name: &str) -> String {
        let similar = self.similar(name);
        let from = match &self.source {
            Some(path) => format!("the contracts loaded from {}", path.display()),
            None => String::from("the platform's messages (no contracts are configured)"),
        };
        if similar.is_empty() {
            format!("unknown contract `{name}`: it is not among {from}")
        } else {
            format!(
                "unknown contract `{name}`: did you mean {}?",
                similar.join(", ")
            )
        }
    }
}

/// The platform's own files (`fractal/platform/v1`, and the well-known types they import).
fn platform_files() -> FileDescriptorSet {
    FileDescriptorSet::decode(fractal::proto::DESCRIPTOR_SET)
        .unwrap_or_else(|e| panic!("the platform's descriptor set is invalid: {e}"))
}

/// Compiles every `.proto` file under `folder`, with `folder` as the include path (and the
/// well-known types built in), into one descriptor set with imports and comments.
pub fn compile_folder(folder: &Path) -> Result<FileDescriptorSet, ContractsError> {
    fn protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                protos(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "proto") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    protos(folder, &mut files).map_err(|error| ContractsError::Unreadable {
        path: folder.to_owned(),
        error,
    })?;
    if files.is_empty() {
        return Err(ContractsError::Empty {
            path: folder.to_owned(),
        });
    }
    files.sort();
    protox::compile(&files, [folder]).map_err(|e| ContractsError::Compile {
        path: folder.to_owned(),
        message: compile_error(&e),
    })
}

/// protox's error with the file, line and column it is at.
fn compile_error(error: &protox::Error) -> String {
    use miette::Diagnostic as _;
    let span = error.labels().and_then(|mut labels| labels.next());
    let place = span.zip(error.source_code()).and_then(|(label, source)| {
        let contents = source.read_span(label.inner(), 0, 0).ok()?;
        let file = contents
            .name()
            .map(str::to_owned)
            .or(error.file().map(str::to_owned))?;
        Some(format!(
            "{file}:{}:{}",
            contents.line() + 1,
            contents.column() + 1
        ))
    });
    match (place, error.file()) {
        (Some(place), _) => format!("{place}: {error}"),
        (None, Some(file)) => format!("{file}: {error}"),
        (None, None) => error.to_string(),
    }
}

/// Checks that `payload` decodes as `contract`: every field the contract declares has the wire
/// type of its declared type, every string is UTF-8 and every nested message is well formed in
/// turn. Fields the contract does not declare are allowed, as protobuf keeps them for readers of
/// a newer version. The bytes are walked in place; nothing is decoded into memory.
pub fn check(contract: &MessageDescriptor, payload: &[u8]) -> Result<(), String> {
    walk(contract, payload, 0)
        .map_err(|e| format!("payload does not decode as `{}`: {e}", contract.full_name()))
}

/// Why a payload does not fit its contract, and in which field.
#[derive(Debug)]
struct Misfit {
    path: Vec<String>,
    error: WireError,
}

impl std::fmt::Display for Misfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.error)
        } else {
            let path: Vec<&str> = self.path.iter().rev().map(String::as_str).collect();
            write!(f, "in field `{}`: {}", path.join("."), self.error)
        }
    }
}

impl From<WireError> for Misfit {
    fn from(error: WireError) -> Self {
        Misfit {
            path: Vec::new(),
            error,
        }
    }
}

fn walk(message: &MessageDescriptor, bytes: &[u8], depth: u32) -> Result<(), Misfit> {
    if depth >= MAX_DEPTH {
        return Err(WireError::TooDeep.into());
    }
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        let (number, wire_type) = reader.key()?;
        let Some(field) = message.get_field(number) else {
            reader.skip(number, wire_type, depth)?;
            continue;
        };
        let kind = field.kind();
        let declared = wire_type_of(&kind);
        let checked = match (&kind, wire_type) {
            // A map entry is length-delimited: prost-generated readers (every consumer)
            // reject any other wire type, although prost-reflect reads one as if it were.
            (Kind::Message(entry), WireType::LengthDelimited) if field.is_map() => reader
                .delimited()
                .map_err(Misfit::from)
                .and_then(|bytes| walk(entry, bytes, depth + 1)),
            (Kind::Message(_), actual) if field.is_map() => Err(WireError::WrongType {
                field: number,
                actual,
                expected: MAP_ENTRY,
            }
            .into()),
            (Kind::Message(inner), WireType::LengthDelimited) => reader
                .delimited()
                .map_err(Misfit::from)
                .and_then(|bytes| walk(inner, bytes, depth + 1)),
            (Kind::Message(_), WireType::StartGroup) if field.is_group() => {
                reader.skip(number, wire_type, depth).map_err(Misfit::from)
            }
            (Kind::String, WireType::LengthDelimited) => {
                reader.string(number).map(drop).map_err(Misfit::from)
            }
            // A repeated number, packed.
            (_, WireType::LengthDelimited)
                if field.is_list() && declared != WireType::LengthDelimited =>
            {
                reader
                    .delimited()
                    .and_then(|packed| packed_numbers(packed, declared))
                    .map_err(Misfit::from)
            }
            (_, actual) if actual == declared => {
                reader.skip(number, actual, depth).map_err(Misfit::from)
            }
            (_, actual) => Err(WireError::WrongType {
                field: number,
                actual,
                expected: kind_name(&kind),
            }
            .into()),
        };
        checked.map_err(|mut misfit| {
            misfit.path.push(field.name().to_owned());
            misfit
        })?;
    }
    Ok(())
}

fn packed_numbers(bytes: &[u8], each: WireType) -> Result<(), WireError> {
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        match each {
            WireType::SixtyFourBit => reader.take(8).map(drop)?,
            WireType::ThirtyTwoBit => reader.take(4).map(drop)?,
            _ => reader.varint().map(drop)?,
        }
    }
    Ok(())
}

fn wire_type_of(kind: &Kind) -> WireType {
    match kind {
        Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => WireType::SixtyFourBit,
        Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => WireType::ThirtyTwoBit,
        Kind::String | Kind::Bytes | Kind::Message(_) => WireType::LengthDelimited,
        Kind::Int32
        | Kind::Int64
        | Kind::Uint32
        | Kind::Uint64
        | Kind::Sint32
        | Kind::Sint64
        | Kind::Bool
        | Kind::Enum(_) => WireType::Varint,
    }
}

/// What a map field's wrong wire type is reported as expecting.
pub const MAP_ENTRY: &str = "map entry";

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Message(_) => "message",
        Kind::Enum(_) => "enum",
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_reflect::{DynamicMessage, MapKey, Value};

    use super::*;

    #[test]
    fn platform_messages_are_known() {
        let contracts = Contracts::builtin();
        assert!(contracts.find("fractal.platform.v1.Envelope").is_some());
        assert!(contracts.find("fractal.platform.v1.Nope").is_none());
        assert!(
            contracts
                .similar("fractal.platform.v1.Envelop")
                .contains(&"fractal.platform.v1.Envelope".to_string())
        );
    }

    #[test]
    fn payloads_are_checked() {
        let contracts = Contracts::builtin();
        let header = contracts.find("fractal.platform.v1.Header").expect("known");
        let good = prost::Message::encode_to_vec(&fractal::proto::Header {
            name: "a".into(),
            value: "b".into(),
        });
        assert!(check(&header, &good).is_ok());
        // Field 1 with wire type 7 does not exist in protobuf.
        assert!(check(&header, &[0x0f, 0x01, 0x02]).is_err());
        // A map field (`tags`, 6) as a varint: prost-reflect reads it as length-delimited, but
        // prost-generated readers, every consumer among them, reject it, and so does the walk.
        let envelope = contracts
            .find("fractal.platform.v1.Envelope")
            .expect("known");
        assert!(DynamicMessage::decode(envelope.clone(), [0x30, 0x00].as_slice()).is_ok());
        assert!(fractal::proto::Envelope::decode([0x30, 0x00].as_slice()).is_err());
        let error = check(&envelope, &[0x30, 0x00]).expect_err("a varint is not a map entry");
        assert!(error.contains(MAP_ENTRY), "{error}");
        // Field 1 (`name`, a string) as a varint: the error names the field.
        let error = check(&header, &[0x08, 0x01]).expect_err("a varint is not a string");
        assert!(
            error.contains("field 1 has wire type Varint, expected string"),
            "{error}"
        );
    }

    /// A value for `kind`, made up from `rng`, nesting messages at most `depth` deep.
    fn value(kind: &Kind, rng: &mut impl rand::Rng, depth: u32) -> Value {
        match kind {
            Kind::Double => Value::F64(rng.random()),
            Kind::Float => Value::F32(rng.random()),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(rng.random()),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(rng.random()),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(rng.random()),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(rng.random()),
            Kind::Bool => Value::Bool(rng.random()),
            Kind::String => Value::String("ñ".repeat(rng.random_range(0..4))),
            Kind::Bytes => Value::Bytes(vec![0xff; rng.random_range(0..4)].into()),
            Kind::Enum(e) => Value::EnumNumber(e.values().last().map_or(0, |v| v.number())),
            Kind::Message(m) => Value::Message(message(m, rng, depth)),
        }
    }

    fn message(
        descriptor: &MessageDescriptor,
        rng: &mut impl rand::Rng,
        depth: u32,
    ) -> DynamicMessage {
        let mut message = DynamicMessage::new(descriptor.clone());
        if depth == 0 {
            return message;
        }
        for field in descriptor.fields() {
            let kind = field.kind();
            let v = if field.is_map() {
                let entry = kind.as_message().expect("a map entry").clone();
                let (k, v) = (entry.map_entry_key_field(), entry.map_entry_value_field());
                let key = match value(&k.kind(), rng, depth - 1) {
                    Value::String(s) => MapKey::String(s),
                    Value::I32(n) => MapKey::I32(n),
                    Value::I64(n) => MapKey::I64(n),
                    Value::U32(n) => MapKey::U32(n),
                    Value::U64(n) => MapKey::U64(n),
                    Value::Bool(b) => MapKey::Bool(b),
                    other => panic!("not a map key: {other:?}"),
                };
                Value::Map([(key, value(&v.kind(), rng, depth - 1))].into())
            } else if field.is_list() {
                Value::List((0..2).map(|_| value(&kind, rng, depth - 1)).collect())
            } else {
                value(&kind, rng, depth - 1)
            };
            message.set_field(&field, v);
        }
        message
    }

    /// The walk accepts exactly what a full decode accepts: valid encodings of every known
    /// contract, and the same verdict on each of thousands of corruptions of them.
    #[test]
    fn agrees_with_a_full_decode() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut corrupted = 0;
        let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
        let contracts = Contracts::load(&proto).expect("the repository's contracts compile");
        for contract in contracts
            .pool()
            .all_messages()
            .filter(|m| !m.is_map_entry())
        {
            let valid = message(&contract, &mut rng, 3).encode_to_vec();
            assert_eq!(check(&contract, &valid), Ok(()), "{}", contract.full_name());
            for _ in 0..200 {
                let mut bytes = valid.clone();
                match rng.random_range(0..3) {
                    0 if !bytes.is_empty() => {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] = rng.random();
                    }
                    1 => bytes.truncate(rng.random_range(0..=bytes.len())),
                    _ => {
                        let at = rng.random_range(0..=bytes.len());
                        bytes.insert(at, rng.random());
                    }
                }
                let full = DynamicMessage::decode(contract.clone(), bytes.as_slice());
                let walked = check(&contract, &bytes);
                // The walk is as strict as prost-reflect, and stricter on a map entry's wire
                // type, where it follows prost-generated readers.
                let stricter =
                    full.is_ok() && walked.as_ref().is_err_and(|e| e.contains(MAP_ENTRY));
                assert!(
                    walked.is_ok() == full.is_ok() || stricter,
                    "{}: {bytes:02x?}: walk {walked:?}, decode {full:?}",
                    contract.full_name()
                );
                corrupted += usize::from(full.is_err());
            }
        }
        assert!(
            corrupted > 1000,
            "only {corrupted} corruptions were invalid"
        );
    }
}
