//! The webhook body parser must never panic, whatever arrives; what it accepts must survive a
//! round trip through serde and have a fingerprint on every alert.
#![no_main]

use failover_responder::alert::parse_notification;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = parse_notification(data) {
        assert_eq!(n.version, "4");
        assert!(n.alerts.iter().all(|a| !a.fingerprint.is_empty() && !a.labels.is_empty()));
        let again = serde_json::to_vec(&n).expect("an accepted notification serializes");
        parse_notification(&again).expect("and parses again");
    }
});
