//! The contracts the bridge knows: every message compiled from `proto/` at build time.

use std::sync::LazyLock;

use fractal_protowire::{MAX_DEPTH, Reader, WireError, WireType};
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(include_bytes!(concat!(env!("OUT_DIR"), "/contracts.bin")).as_ref())
        .unwrap_or_else(|e| panic!("the embedded contracts are invalid: {e}"))
});

/// The message named `name` (`food.ordering.v1.OrderPlaced`), if it is a known contract.
pub fn find(name: &str) -> Option<MessageDescriptor> {
    POOL.get_message_by_name(name)
}

/// Message names close to `name`, to suggest when it is unknown.
pub fn similar(name: &str) -> Vec<String> {
    let wanted = name.rsplit('.').next().unwrap_or(name).to_ascii_lowercase();
    POOL.all_messages()
        .map(|m| m.full_name().to_owned())
        .filter(|full| {
            let short = full.rsplit('.').next().unwrap_or(full).to_ascii_lowercase();
            short.contains(&wanted) || wanted.contains(&short)
        })
        .take(5)
        .collect()
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
        assert!(find("fractal.platform.v1.Envelope").is_some());
        assert!(find("fractal.platform.v1.Nope").is_none());
        assert!(
            similar("fractal.platform.v1.Envelop")
                .contains(&"fractal.platform.v1.Envelope".to_string())
        );
    }

    #[test]
    fn payloads_are_checked() {
        let header = find("fractal.platform.v1.Header").expect("known");
        let good = prost::Message::encode_to_vec(&fractal::proto::Header {
            name: "a".into(),
            value: "b".into(),
        });
        assert!(check(&header, &good).is_ok());
        // Field 1 with wire type 7 does not exist in protobuf.
        assert!(check(&header, &[0x0f, 0x01, 0x02]).is_err());
        // A map field (`tags`, 6) as a varint: prost-reflect reads it as length-delimited, but
        // prost-generated readers, every consumer among them, reject it, and so does the walk.
        let envelope = find("fractal.platform.v1.Envelope").expect("known");
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
        for contract in POOL.all_messages().filter(|m| !m.is_map_entry()) {
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
