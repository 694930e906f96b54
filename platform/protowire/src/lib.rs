//! Reading the protobuf wire format in place, without decoding into owned messages: for the hot
//! paths that only need to look at a few fields (an envelope's type) or to check that bytes
//! are well formed (a bridge's contract check).

/// How a field's value is laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    /// A varint.
    Varint,
    /// Eight bytes.
    SixtyFourBit,
    /// A varint length, then that many bytes.
    LengthDelimited,
    /// A group's start (proto2).
    StartGroup,
    /// A group's end (proto2).
    EndGroup,
    /// Four bytes.
    ThirtyTwoBit,
}

/// Why bytes are not well-formed protobuf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes end inside a value.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// A varint runs over ten bytes.
    #[error("invalid varint at byte {0}")]
    Varint(usize),
    /// A field key with wire type 6 or 7, or field number 0.
    #[error("invalid field key at byte {0}")]
    Key(usize),
    /// A field is laid out other than its declared type allows.
    #[error("field {field} has wire type {actual:?}, expected {expected}")]
    WrongType {
        /// The field number.
        field: u32,
        /// What the bytes have.
        actual: WireType,
        /// What the field's type allows.
        expected: &'static str,
    },
    /// A string field is not UTF-8.
    #[error("field {0} is not valid UTF-8")]
    Utf8(u32),
    /// A group's end without its start, or with another field number.
    #[error("unexpected group end at byte {0}")]
    GroupEnd(usize),
    /// Messages nested deeper than [`MAX_DEPTH`].
    #[error("messages nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// How deep messages may nest, as in prost.
pub const MAX_DEPTH: u32 = 100;

/// A cursor over encoded protobuf bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Reads `bytes` from the start.
    #[inline]
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    /// Whether every byte has been read.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// The next field's number and wire type.
    #[inline]
    pub fn key(&mut self) -> Result<(u32, WireType), WireError> {
        let start = self.at;
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(WireError::Key(start));
        }
        let wire_type = match key & 7 {
            0 => WireType::Varint,
            1 => WireType::SixtyFourBit,
            2 => WireType::LengthDelimited,
            3 => WireType::StartGroup,
            4 => WireType::EndGroup,
            5 => WireType::ThirtyTwoBit,
            _ => return Err(WireError::Key(start)),
        };
        let field = (key >> 3) as u32;
        if field == 0 {
            return Err(WireError::Key(start));
        }
        Ok((field, wire_type))
    }

    /// A varint.
    #[inline]
    pub fn varint(&mut self) -> Result<u64, WireError> {
        let start = self.at;
        let mut value = 0u64;
        for shift in 0..10 {
            let byte = *self
                .bytes
                .get(self.at)
                .ok_or(WireError::Truncated(self.at))?;
            self.at += 1;
            // The tenth byte holds the 64th bit only.
            if shift == 9 && byte > 1 {
                return Err(WireError::Varint(start));
            }
            value |= u64::from(byte & 0x7f) << (shift * 7);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError::Varint(start))
    }

    /// The next `n` bytes.
    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(WireError::Truncated(self.bytes.len()))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    /// A length-delimited value.
    #[inline]
    pub fn delimited(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.varint()?;
        self.take(usize::try_from(len).map_err(|_| WireError::Truncated(self.bytes.len()))?)
    }

    /// A length-delimited value that must be UTF-8, as field `field`.
    #[inline]
    pub fn string(&mut self, field: u32) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.delimited()?).map_err(|_| WireError::Utf8(field))
    }

    /// Skips the value of field `field`, whatever it holds.
    #[inline]
    pub fn skip(&mut self, field: u32, wire_type: WireType, depth: u32) -> Result<(), WireError> {
        match wire_type {
            WireType::Varint => self.varint().map(drop),
            WireType::SixtyFourBit => self.take(8).map(drop),
            WireType::ThirtyTwoBit => self.take(4).map(drop),
            WireType::LengthDelimited => self.delimited().map(drop),
            WireType::StartGroup => {
                if depth >= MAX_DEPTH {
                    return Err(WireError::TooDeep);
                }
                loop {
                    let at = self.at;
                    match self.key()? {
                        (inner, WireType::EndGroup) if inner == field => return Ok(()),
                        (_, WireType::EndGroup) => return Err(WireError::GroupEnd(at)),
                        (inner, inner_type) => self.skip(inner, inner_type, depth + 1)?,
                    }
                }
            }
            WireType::EndGroup => Err(WireError::GroupEnd(self.at)),
        }
    }

    /// Expects field `field` to have `wire_type`, as its declared type `expected` allows.
    #[inline]
    pub fn expect(
        field: u32,
        actual: WireType,
        wire_type: WireType,
        expected: &'static str,
    ) -> Result<(), WireError> {
        if actual == wire_type {
            Ok(())
        } else {
            Err(WireError::WrongType {
                field,
                actual,
                expected,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost::Message as _;

    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Header {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        value: String,
    }

    /// The shape of the platform's envelope: a string, a message, a map and bytes.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Envelope {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(message, optional, tag = "3")]
        time: Option<prost_types::Timestamp>,
        #[prost(map = "string, string", tag = "6")]
        tags: HashMap<String, String>,
        #[prost(bytes = "vec", tag = "8")]
        payload: Vec<u8>,
    }

    #[test]
    fn reads_what_prost_writes() {
        let header = Header {
            name: "a name".into(),
            value: "é".repeat(100),
        };
        let bytes = header.encode_to_vec();
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.key(), Ok((1, WireType::LengthDelimited)));
        assert_eq!(reader.string(1), Ok("a name"));
        assert_eq!(reader.key(), Ok((2, WireType::LengthDelimited)));
        assert_eq!(reader.string(2).map(str::len), Ok(200));
        assert!(reader.is_empty());
    }

    #[test]
    fn skips_every_wire_type() {
        let envelope = Envelope {
            id: "x".into(),
            time: Some(std::time::SystemTime::UNIX_EPOCH.into()),
            tags: [("k".to_owned(), "v".to_owned())].into(),
            payload: vec![1, 2, 3],
        };
        let mut bytes = envelope.encode_to_vec();
        // Field 9, fixed64; field 10, fixed32; field 11, varint; field 12, a group holding a varint.
        bytes.extend([
            0x49, 1, 2, 3, 4, 5, 6, 7, 8, 0x55, 1, 2, 3, 4, 0x58, 0x96, 0x01,
        ]);
        bytes.extend([0x63, 0x08, 0x01, 0x64]);
        let mut reader = Reader::new(&bytes);
        let mut fields = Vec::new();
        while !reader.is_empty() {
            let (field, wire_type) = reader.key().expect("a key");
            reader.skip(field, wire_type, 0).expect("skips");
            fields.push(field);
        }
        assert_eq!(fields, [1, 3, 6, 8, 9, 10, 11, 12]);
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        for bytes in [
            &[0x0a, 0x05, b'a'][..],                   // length past the end
            &[0x0a][..],                               // no length
            &[0xff; 11][..],                           // varint too long
            &[0x0e, 0x00][..],                         // wire type 6
            &[0x00, 0x00][..],                         // field 0
            &[0x0c][..],                               // group end without start
            &[0x0b, 0x14][..],                         // group 1 closed as group 2
            &[0x0b][..],                               // group never closed
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f][..], // huge length
        ] {
            let mut reader = Reader::new(bytes);
            let result = reader
                .key()
                .and_then(|(field, wire_type)| reader.skip(field, wire_type, 0));
            assert!(result.is_err(), "{bytes:?} was accepted");
        }
        let deep: Vec<u8> = std::iter::repeat_n(0x0b, 200).collect();
        let mut reader = Reader::new(&deep);
        let (field, wire_type) = reader.key().expect("a key");
        assert_eq!(reader.skip(field, wire_type, 0), Err(WireError::TooDeep));
    }
}
