//! The matcher parser must never panic; a parsed matcher must evaluate without panicking and
//! its Display form must parse back to the same operator and name.
#![no_main]

use std::collections::BTreeMap;

use failover_responder::matcher::Matcher;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    // First line: the matcher; the rest: label values to match against.
    let (spec, rest) = s.split_once('\n').unwrap_or((s, ""));
    if let Ok(m) = Matcher::parse(spec) {
        let labels: BTreeMap<String, String> = rest
            .lines()
            .map(|v| (m.name.clone(), v.to_string()))
            .take(1)
            .collect();
        let _ = m.matches(&labels);
        let _ = m.matches(&BTreeMap::new());
        if m.value.chars().all(|c| !c.is_control() || c == '\n') {
            if let Ok(again) = Matcher::parse(&m.to_string()) {
                assert_eq!((again.name.as_str(), again.op), (m.name.as_str(), m.op));
            }
        }
    }
});
