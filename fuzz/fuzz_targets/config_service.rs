//! Loads a service's configuration from arbitrary TOML text, as every service program does at
//! start: defaults, then the text, then validation. Any text gives a config or a list of
//! problems, never a panic or a hang.
//!
//! The text also goes through the check that tells Kubernetes' service variables from
//! configuration (`<NAME>=<value>`, split at the first `=`).

#![no_main]

use fractal::config::{from_toml, service_link};
use fractal::service::ServiceConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(error) = from_toml::<ServiceConfig>(text) {
        let _ = error.to_string();
    }
    let (name, value) = text.split_once('=').unwrap_or((text, ""));
    let _ = service_link(name, value);
});
