//! What the fuzz targets share with the seed generator: how the `envelope` target lays out an
//! event message in its input bytes.

/// An event message as the `envelope` target reads it:
///
/// ```text
/// [flags] subject "\n" (name ": " value "\n")* "\0" body
/// ```
///
/// The text before the first NUL is read as UTF-8, lossily. Without a NUL the body is empty.
#[derive(Debug)]
pub struct Message<'a> {
    /// See [`Message::CONSISTENT`], [`Message::EXTERNAL`] and [`Message::HEADERLESS`].
    pub flags: u8,
    /// The subject the message was read from.
    pub subject: String,
    /// Its headers, in order.
    pub headers: Vec<(String, String)>,
    /// Its body, the encoded envelope.
    pub body: &'a [u8],
}

impl<'a> Message<'a> {
    /// The subject, `Nats-Msg-Id` and `Fractal-Type` are those a publisher would set for the
    /// body, when it decodes: the reader's checks past them are reached.
    pub const CONSISTENT: u8 = 1;
    /// With [`Message::CONSISTENT`]: the subject is an external event's.
    pub const EXTERNAL: u8 = 2;
    /// The message has no headers at all.
    pub const HEADERLESS: u8 = 4;

    /// Reads a message from fuzz input.
    pub fn parse(data: &'a [u8]) -> Self {
        let Some((&flags, rest)) = data.split_first() else {
            return Message {
                flags: 0,
                subject: String::new(),
                headers: Vec::new(),
                body: &[],
            };
        };
        let (text, body) = match rest.iter().position(|&b| b == 0) {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &[][..]),
        };
        let text = String::from_utf8_lossy(text);
        let mut lines = text.split('\n');
        let subject = lines.next().unwrap_or_default().to_owned();
        let headers = lines
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                (name.to_owned(), value.trim_start().to_owned())
            })
            .collect();
        Message {
            flags,
            subject,
            headers,
            body,
        }
    }

    /// The input bytes that [`Message::parse`] reads back as this message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![self.flags];
        bytes.extend_from_slice(self.subject.as_bytes());
        for (name, value) in &self.headers {
            bytes.push(b'\n');
            bytes.extend_from_slice(format!("{name}: {value}").as_bytes());
        }
        bytes.push(0);
        bytes.extend_from_slice(self.body);
        bytes
    }

    /// Whether the flag `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}
