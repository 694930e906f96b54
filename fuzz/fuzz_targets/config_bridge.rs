//! Loads a bridge's configuration from arbitrary TOML text, as the bridge does at start and at
//! `--check`: defaults, then the text, then validation (the contracts, read from files, are
//! loaded after it). Any text gives a config or a list of problems, never a panic or a hang.

#![no_main]

use fractal::config::from_toml;
use fractal_bridge::BridgeConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match from_toml::<BridgeConfig>(text) {
        Ok(config) => {
            for route in &config.routes {
                let _ = route.subjects();
            }
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
