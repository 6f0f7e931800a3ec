//! Firing alerts -> the mode a service should be in. Pure: no I/O, no clock (time is passed in).
//!
//! Alerts are edges, the mode is a level: the decision is recomputed from the alerts firing now,
//! never from the last notification, so replays, duplicates and reordering cannot flip it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::alert::Labels;
use crate::matcher::{matches_all, Matcher};

/// Where a service's traffic should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// On-prem serves; cloud capacity closed in HAProxy and stopped.
    Onprem,
    /// On-prem is down; cloud capacity running, healthy and open in HAProxy.
    Cloud,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Onprem => "onprem",
            Mode::Cloud => "cloud",
        }
    }
}

/// An alert that is firing now, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FiringAlert {
    pub fingerprint: String,
    pub labels: Labels,
    pub starts_at: DateTime<Utc>,
}

/// The matchers of one service.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub failover_on: &'a [Matcher],
    pub failback_on: &'a [Matcher],
}

/// The desired mode and why, with the fingerprints of the alerts behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub mode: Mode,
    pub reason: String,
    /// Firing alerts matching `failover_on`.
    pub failover_alerts: Vec<String>,
    /// Firing alerts matching `failback_on`.
    pub failback_alerts: Vec<String>,
}

/// Decides the mode: cloud while a failover alert fires, unless a failback alert started after
/// the newest failover alert did (the resolved notification may never arrive, so a recovery
/// alert is believed on its own). A later failover alert wins again over an older recovery.
pub fn decide(rules: Rules<'_>, firing: &[FiringAlert]) -> Decision {
    let failover: Vec<&FiringAlert> = firing
        .iter()
        .filter(|a| matches_all(rules.failover_on, &a.labels))
        .collect();
    let failback: Vec<&FiringAlert> = firing
        .iter()
        .filter(|a| matches_all(rules.failback_on, &a.labels))
        .collect();
    let fps = |v: &[&FiringAlert]| v.iter().map(|a| a.fingerprint.clone()).collect::<Vec<_>>();
    let newest_failover = failover.iter().map(|a| a.starts_at).max();
    let newest_failback = failback.iter().map(|a| a.starts_at).max();

    let (mode, reason) = match (newest_failover, newest_failback) {
        (None, _) => (Mode::Onprem, "no failover alert is firing".to_string()),
        (Some(down), Some(up)) if up > down => (
            Mode::Onprem,
            format!(
                "failback alert started at {} after the failover alert started at {}",
                up.to_rfc3339(),
                down.to_rfc3339()
            ),
        ),
        (Some(down), _) => (
            Mode::Cloud,
            format!(
                "{} failover alert(s) firing since {}",
                failover.len(),
                down.to_rfc3339()
            ),
        ),
    };
    Decision {
        mode,
        reason,
        failover_alerts: fps(&failover),
        failback_alerts: fps(&failback),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn m(s: &str) -> Matcher {
        Matcher::parse(s).expect(s)
    }

    fn alert(fp: &str, name: &str, service: &str, minute: u32) -> FiringAlert {
        FiringAlert {
            fingerprint: fp.into(),
            labels: [("alertname", name), ("service", service)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            starts_at: Utc
                .with_ymd_and_hms(2026, 11, 22, 5, minute, 0)
                .single()
                .expect("valid time"),
        }
    }

    #[test]
    fn decision_table() {
        let on = [m(r#"alertname="onprem_down""#), m(r#"service="api""#)];
        let back = [m(r#"alertname="onprem_recovered""#), m(r#"service="api""#)];
        let rules = Rules {
            failover_on: &on,
            failback_on: &back,
        };
        let down = |min| alert("d", "onprem_down", "api", min);
        let down2 = |min| alert("d2", "onprem_down", "api", min);
        let up = |min| alert("u", "onprem_recovered", "api", min);
        let cases: Vec<(&str, Vec<FiringAlert>, Mode)> = vec![
            ("nothing firing", vec![], Mode::Onprem),
            ("down firing", vec![down(10)], Mode::Cloud),
            (
                "down for another service",
                vec![alert("x", "onprem_down", "other", 10)],
                Mode::Onprem,
            ),
            (
                "unrelated alert",
                vec![alert("x", "disk_full", "api", 10)],
                Mode::Onprem,
            ),
            ("recovered after down", vec![down(10), up(11)], Mode::Onprem),
            (
                "recovered before down (stale recovery)",
                vec![up(9), down(10)],
                Mode::Cloud,
            ),
            (
                "same start: no evidence of recovery",
                vec![down(10), up(10)],
                Mode::Cloud,
            ),
            (
                "newer down after recovery",
                vec![down(10), up(11), down2(12)],
                Mode::Cloud,
            ),
            (
                "recovery after both downs",
                vec![down(10), down2(12), up(13)],
                Mode::Onprem,
            ),
            ("recovery alone", vec![up(11)], Mode::Onprem),
        ];
        for (name, firing, want) in cases {
            assert_eq!(decide(rules, &firing).mode, want, "{name}");
        }
    }

    #[test]
    fn no_failback_rules_means_only_resolution_fails_back() {
        let on = [m(r#"alertname="onprem_down""#)];
        let rules = Rules {
            failover_on: &on,
            failback_on: &[],
        };
        let firing = vec![
            alert("d", "onprem_down", "api", 10),
            alert("u", "onprem_recovered", "api", 11),
        ];
        let d = decide(rules, &firing);
        assert_eq!(d.mode, Mode::Cloud);
        assert_eq!(d.failover_alerts, vec!["d".to_string()]);
        assert!(d.failback_alerts.is_empty());
    }
}
