//! The config parser and validator must never panic, on YAML or TOML, and must never accept a
//! config without a service.
#![no_main]

use failover_responder::config::{Config, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    for format in [Format::Yaml, Format::Toml] {
        if let Ok(cfg) = Config::from_str(s, format) {
            assert!(!cfg.services.is_empty());
            assert!(cfg.services.values().all(|svc| !svc.failover_matchers.is_empty()));
        }
    }
});
