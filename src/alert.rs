//! Alertmanager webhook (payload version 4) types and their parser. Pure serde, no I/O.
//!
//! Lenient for fields it does not know (newer Alertmanager versions add some, such as
//! `notification_reason`), strict for the types of the fields it reads: a wrong type is a
//! 400 naming the field's path, so a misconfigured sender is found at once instead of an
//! alert being half-understood.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Deserializer, Serialize};

/// Label or annotation set. Sorted, so fingerprints and output are stable.
pub type Labels = BTreeMap<String, String>;

/// `firing` or `resolved`; anything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// One webhook notification: a group of alerts that Alertmanager routed to us.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub version: String,
    pub group_key: String,
    /// How many alerts Alertmanager left out because of `max_alerts`. Never read as
    /// "resolved": an alert missing from a truncated notification keeps its last known status.
    #[serde(default)]
    pub truncated_alerts: u64,
    pub status: AlertStatus,
    pub receiver: String,
    #[serde(default)]
    pub group_labels: Labels,
    #[serde(default)]
    pub common_labels: Labels,
    #[serde(default)]
    pub common_annotations: Labels,
    #[serde(rename = "externalURL", default)]
    pub external_url: String,
    pub alerts: Vec<Alert>,
}

/// One alert inside a notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: AlertStatus,
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
    pub starts_at: DateTime<Utc>,
    /// Alertmanager sends `0001-01-01T00:00:00Z` for "no end yet"; that becomes `None`.
    #[serde(default, deserialize_with = "zero_time_is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(rename = "generatorURL", default)]
    pub generator_url: String,
    /// Alertmanager's fingerprint of the label set. Senders older than 0.19 omit it, so it
    /// is computed from the labels the same way when missing (see [`fingerprint`]).
    #[serde(default)]
    pub fingerprint: String,
}

/// Why a body was refused. The message names the field, never echoes secrets.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("invalid JSON at {path}: {message}")]
    Json { path: String, message: String },
    #[error("unsupported webhook version {0:?} (want \"4\")")]
    Version(String),
    #[error("alerts[{index}].labels: an alert needs at least one label")]
    NoLabels { index: usize },
}

/// Parses and validates a webhook body.
pub fn parse_notification(body: &[u8]) -> Result<Notification, ParseError> {
    // The fast path tracks no paths (it runs for every notification of an alert storm); only
    // a body that fails is parsed again to say where. from_slice also refuses anything after
    // the JSON value, so what is journaled is exactly one JSON document.
    let mut n: Notification = serde_json::from_slice(body).map_err(|fast| explain(body, &fast))?;
    if n.version != "4" {
        return Err(ParseError::Version(n.version));
    }
    for (index, alert) in n.alerts.iter_mut().enumerate() {
        if alert.labels.is_empty() {
            return Err(ParseError::NoLabels { index });
        }
        if alert.fingerprint.is_empty() {
            alert.fingerprint = fingerprint(&alert.labels);
        }
    }
    Ok(n)
}

/// The error for a body the fast parse refused, with the path of the offending field.
fn explain(body: &[u8], fast: &serde_json::Error) -> ParseError {
    let de = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, Notification>(de) {
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ParseError::Json {
                path: if path == "." { "body".into() } else { path },
                // serde_json's own message without the "at line L column C" tail: the path
                // says where.
                message: strip_position(&inner.to_string()),
            }
        }
        // The value itself is fine: what follows it is not ("trailing characters").
        Ok(_) => ParseError::Json {
            path: "body".into(),
            message: strip_position(&fast.to_string()),
        },
    }
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn zero_time_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let t: Option<DateTime<Utc>> = Option::deserialize(d)?;
    // Go's zero time.Time: year 1. Nothing real ends then.
    Ok(t.filter(|t| t.year() > 1))
}

/// Alertmanager's label-set fingerprint: FNV-1a 64 over the sorted label names and values,
/// each followed by the separator byte 0xff, printed as 16 hex digits.
pub fn fingerprint(labels: &Labels) -> String {
    const OFFSET: u64 = 14_695_981_039_346_656_037;
    const PRIME: u64 = 1_099_511_628_211;
    let mut h = OFFSET;
    let mut add = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    // BTreeMap iterates in sorted order, as Alertmanager sorts label names.
    for (name, value) in labels {
        add(name.as_bytes());
        add(&[0xff]);
        add(value.as_bytes());
        add(&[0xff]);
    }
    format!("{h:016x}")
}

impl Alert {
    /// Firing and not past its end: what counts as "firing now".
    pub fn is_firing_at(&self, now: DateTime<Utc>) -> bool {
        self.status == AlertStatus::Firing && self.ends_at.is_none_or(|end| end > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computed_fingerprint_matches_alertmanager() {
        // Fingerprint that the real Alertmanager 0.25 sent for these labels (fixture
        // onprem_down-firing.json).
        let labels: Labels = [
            ("alertname", "onprem_down"),
            ("instance", "127.0.0.1:5000"),
            ("job", "onprem-api"),
            ("service", "onprem-api"),
            ("severity", "critical"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(fingerprint(&labels), "375a75b901a7e795");
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("", "invalid JSON at body"),
            ("[]", "invalid JSON at body"),
            (r#"{"version":"4"}"#, "missing field"),
            (
                r#"{"version":"4","groupKey":"g","status":"firing","receiver":"r","alerts":[]} trailing"#,
                "invalid JSON at body: trailing characters",
            ),
            (
                r#"{"version":"4","groupKey":"g","status":"burning","receiver":"r","alerts":[]}"#,
                "invalid JSON at status",
            ),
            (
                r#"{"version":"5","groupKey":"g","status":"firing","receiver":"r","alerts":[]}"#,
                "unsupported webhook version",
            ),
            (
                r#"{"version":"4","groupKey":"g","status":"firing","receiver":"r","alerts":[{"status":"firing","labels":{"a":1},"startsAt":"2026-01-01T00:00:00Z"}]}"#,
                "invalid JSON at alerts[0].labels.a",
            ),
            (
                r#"{"version":"4","groupKey":"g","status":"firing","receiver":"r","alerts":[{"status":"firing","labels":{"a":"b"},"startsAt":"yesterday"}]}"#,
                "invalid JSON at alerts[0].startsAt",
            ),
            (
                r#"{"version":"4","groupKey":"g","status":"firing","receiver":"r","alerts":[{"status":"firing","labels":{},"startsAt":"2026-01-01T00:00:00Z"}]}"#,
                "alerts[0].labels",
            ),
        ];
        for (body, want) in cases {
            let err = parse_notification(body.as_bytes())
                .err()
                .unwrap_or_else(|| panic!("accepted {body}"))
                .to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn unknown_fields_are_ignored_and_zero_end_is_none() {
        let body = r#"{"version":"4","groupKey":"g","status":"firing","receiver":"r","notification_reason":"x","alerts":[{"status":"firing","labels":{"a":"b"},"startsAt":"2026-01-01T00:00:00Z","endsAt":"0001-01-01T00:00:00Z","new":{}}]}"#;
        let n = parse_notification(body.as_bytes()).expect("parses");
        assert_eq!(n.alerts[0].ends_at, None);
        assert_eq!(n.alerts[0].fingerprint, fingerprint(&n.alerts[0].labels));
    }
}
