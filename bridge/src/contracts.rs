//! The contracts the bridge knows: every message compiled from `proto/` at build time.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

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

/// Checks that `payload` decodes as `contract`.
pub fn check(contract: &MessageDescriptor, payload: &[u8]) -> Result<(), String> {
    DynamicMessage::decode(contract.clone(), payload)
        .map(|_| ())
        .map_err(|e| format!("payload does not decode as `{}`: {e}", contract.full_name()))
}

#[cfg(test)]
mod tests {
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
    }
}
