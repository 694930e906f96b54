//! Walks arbitrary payload bytes against a contract, as the bridge checks every event it
//! relays. The first input byte picks the contract among every message compiled from the
//! repository's `proto/` (sorted by name); the rest is the payload.
//!
//! Besides never panicking, the walk must give the verdict of a full decode with
//! prost-reflect: it accepts exactly what decodes, except a map entry of another wire type than
//! length-delimited, which prost-reflect reads and prost-generated readers (and the walk)
//! reject.

#![no_main]

use std::sync::LazyLock;

use fractal_bridge::contracts;
use libfuzzer_sys::fuzz_target;
use prost_reflect::{DynamicMessage, MessageDescriptor};

/// Every message of the repository's contracts, sorted by name.
static CONTRACTS: LazyLock<Vec<MessageDescriptor>> = LazyLock::new(|| {
    let proto = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let loaded = contracts::Contracts::load(&proto).expect("the repository's contracts compile");
    let mut all: Vec<_> = loaded.pool().all_messages().collect();
    all.sort_by(|a, b| a.full_name().cmp(b.full_name()));
    all
});

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let contract = &CONTRACTS[usize::from(pick) % CONTRACTS.len()];
    let walked = contracts::check(contract, payload);
    let decoded = DynamicMessage::decode(contract.clone(), payload);
    let stricter = decoded.is_ok()
        && walked
            .as_ref()
            .is_err_and(|e| e.contains(contracts::MAP_ENTRY));
    assert!(
        walked.is_ok() == decoded.is_ok() || stricter,
        "{}: walk {walked:?}, decode {decoded:?}",
        contract.full_name()
    );
});
