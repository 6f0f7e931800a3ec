//! Firing alerts -> the mode a service should be in. Pure: no I/O, no clock (time is passed in).
//!
//! Two layers. [`decide`] reads only the alerts: alerts are edges, the mode is a level, so the
//! decision is recomputed from the alerts firing now and replays, duplicates and reordering
//! cannot flip it. [`effective`] then applies what the operator and the damping rules say: a
//! manual override, `hold_down`, the on-prem probe's `healthy_for` and
//! `max_transitions_per_hour`. Failing over is never delayed (the cloud is the safe side);
//! only failing back is.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::alert::Labels;
use crate::matcher::{matches_all, Matcher};

/// Where a service's traffic should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// A manual override, set through the control API and kept across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Override {
    /// Observe and record, change nothing.
    Paused,
    /// Stay in cloud whatever the alerts say.
    Failover,
    /// Stay on-prem whatever the alerts say.
    Failback,
}

/// Per-service flap damping, from the config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Damping {
    /// Minimum time in cloud before failing back.
    pub hold_down: Duration,
    /// When an on-prem probe is configured: how long it must have answered continuously.
    pub healthy_for: Option<Duration>,
    /// Mode changes allowed per hour before staying in cloud; 0 means no cap.
    pub max_transitions_per_hour: u32,
}

/// Where the service is now, as the responder remembers it.
#[derive(Debug, Clone, Copy)]
pub struct Current<'a> {
    pub mode: Mode,
    pub since: DateTime<Utc>,
    /// Mode changes, newest last; only those in the last hour count.
    pub transitions: &'a [DateTime<Utc>],
    pub override_: Option<Override>,
    /// Since when the on-prem probe has answered without a failure (None: failing or unknown).
    pub onprem_healthy_since: Option<DateTime<Utc>>,
}

/// The mode to drive towards, and why it differs from the alerts' decision if it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Effective {
    pub mode: Mode,
    /// Why the mode is not what the alerts say (or why nothing is executed).
    pub held: Option<String>,
    /// Paused: observe and record, execute nothing.
    pub paused: bool,
    /// `max_transitions_per_hour` is what keeps the service in cloud.
    pub capped: bool,
    /// When holding will end by itself (hold-down or probe window), look again then.
    #[serde(skip)]
    pub recheck_after: Option<Duration>,
}

/// Applies overrides and damping to the alerts' decision.
pub fn effective(
    decision: &Decision,
    cur: Current<'_>,
    damping: Damping,
    now: DateTime<Utc>,
) -> Effective {
    if let Some(o) = overridden(&cur) {
        return o;
    }
    if decision.mode == cur.mode || decision.mode == Mode::Cloud {
        return follow(decision.mode);
    }
    // The alerts say on-prem while we are in cloud: fail back only when it is safe and calm.
    failback_held(&cur, damping, now).unwrap_or_else(|| follow(decision.mode))
}

/// `mode`, as the alerts say.
fn follow(mode: Mode) -> Effective {
    Effective {
        mode,
        held: None,
        paused: false,
        capped: false,
        recheck_after: None,
    }
}

/// `mode`, held there for `why`.
fn held(mode: Mode, why: String) -> Effective {
    Effective {
        held: Some(why),
        ..follow(mode)
    }
}

/// What an operator's override sets, if one is in force.
fn overridden(cur: &Current<'_>) -> Option<Effective> {
    match cur.override_ {
        Some(Override::Failover) => Some(held(Mode::Cloud, "manual override: failover".into())),
        Some(Override::Failback) => Some(held(Mode::Onprem, "manual override: failback".into())),
        Some(Override::Paused) => Some(Effective {
            paused: true,
            ..held(
                cur.mode,
                "paused: observing only, no step is executed".into(),
            )
        }),
        None => None,
    }
}

/// Why a failback the alerts ask for waits, if it does: the hold-down since failover, the
/// on-prem probe's healthy window, the cap on transitions per hour (in that order).
fn failback_held(cur: &Current<'_>, damping: Damping, now: DateTime<Utc>) -> Option<Effective> {
    let in_cloud = (now - cur.since).to_std().unwrap_or_default();
    if in_cloud < damping.hold_down {
        let until = cur.since + chrono::Duration::from_std(damping.hold_down).unwrap_or_default();
        return Some(Effective {
            recheck_after: Some(damping.hold_down - in_cloud),
            ..held(
                Mode::Cloud,
                format!(
                    "hold_down: in cloud since {}, failback not before {}",
                    cur.since.to_rfc3339(),
                    until.to_rfc3339()
                ),
            )
        });
    }
    if let Some(need) = damping.healthy_for {
        let healthy = cur
            .onprem_healthy_since
            .map(|t| (now - t).to_std().unwrap_or_default());
        match healthy {
            Some(h) if h >= need => {}
            Some(h) => {
                return Some(Effective {
                    recheck_after: Some(need - h),
                    ..held(
                        Mode::Cloud,
                        format!(
                            "on-prem probe healthy for {} of the {} required",
                            humantime::format_duration(Duration::from_secs(h.as_secs())),
                            humantime::format_duration(need)
                        ),
                    )
                })
            }
            None => {
                return Some(held(
                    Mode::Cloud,
                    "on-prem probe is not answering yet".into(),
                ))
            }
        }
    }
    let hour_ago = now - chrono::Duration::hours(1);
    let recent = cur.transitions.iter().filter(|t| **t > hour_ago).count();
    let max = damping.max_transitions_per_hour as usize;
    (max > 0 && recent >= max).then(|| Effective {
        capped: true,
        ..held(
            Mode::Cloud,
            format!("max_transitions_per_hour ({max}) reached: staying in cloud until the last hour has fewer changes"),
        )
    })
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

    fn decision(mode: Mode) -> Decision {
        Decision {
            mode,
            reason: String::new(),
            failover_alerts: vec![],
            failback_alerts: vec![],
        }
    }

    #[test]
    fn effective_table() {
        let t0 = Utc
            .with_ymd_and_hms(2026, 11, 22, 6, 0, 0)
            .single()
            .expect("time");
        let secs = |s: i64| t0 + chrono::Duration::seconds(s);
        let damping = Damping {
            hold_down: Duration::from_secs(60),
            healthy_for: Some(Duration::from_secs(30)),
            max_transitions_per_hour: 4,
        };
        let two = [secs(-100), secs(-50)];
        let four = [secs(-400), secs(-300), secs(-200), secs(-100)];
        let old = [secs(-7200), secs(-7100), secs(-7000), secs(-6900)];
        // (name, alerts say, current mode, since, transitions, override, probe healthy since, now)
        type Row<'a> = (
            &'a str,
            Mode,
            Mode,
            DateTime<Utc>,
            &'a [DateTime<Utc>],
            Option<Override>,
            Option<DateTime<Utc>>,
            DateTime<Utc>,
            Mode,
            bool,
        );
        let rows: &[Row] = &[
            (
                "follow: steady on-prem",
                Mode::Onprem,
                Mode::Onprem,
                secs(-10),
                &[],
                None,
                None,
                t0,
                Mode::Onprem,
                false,
            ),
            (
                "failover is never delayed",
                Mode::Cloud,
                Mode::Onprem,
                secs(-1),
                &four,
                None,
                None,
                t0,
                Mode::Cloud,
                false,
            ),
            (
                "hold-down keeps cloud",
                Mode::Onprem,
                Mode::Cloud,
                secs(-30),
                &two,
                None,
                Some(secs(-3000)),
                t0,
                Mode::Cloud,
                true,
            ),
            (
                "probe not answering keeps cloud",
                Mode::Onprem,
                Mode::Cloud,
                secs(-300),
                &two,
                None,
                None,
                t0,
                Mode::Cloud,
                true,
            ),
            (
                "probe healthy too briefly keeps cloud",
                Mode::Onprem,
                Mode::Cloud,
                secs(-300),
                &two,
                None,
                Some(secs(-10)),
                t0,
                Mode::Cloud,
                true,
            ),
            (
                "all clear fails back",
                Mode::Onprem,
                Mode::Cloud,
                secs(-300),
                &two,
                None,
                Some(secs(-31)),
                t0,
                Mode::Onprem,
                false,
            ),
            (
                "cap reached keeps cloud",
                Mode::Onprem,
                Mode::Cloud,
                secs(-300),
                &four,
                None,
                Some(secs(-100)),
                t0,
                Mode::Cloud,
                true,
            ),
            (
                "old transitions do not count",
                Mode::Onprem,
                Mode::Cloud,
                secs(-300),
                &old,
                None,
                Some(secs(-100)),
                t0,
                Mode::Onprem,
                false,
            ),
            (
                "override failover",
                Mode::Onprem,
                Mode::Onprem,
                secs(-300),
                &[],
                Some(Override::Failover),
                None,
                t0,
                Mode::Cloud,
                true,
            ),
            (
                "override failback beats alerts and damping",
                Mode::Cloud,
                Mode::Cloud,
                secs(-1),
                &four,
                Some(Override::Failback),
                None,
                t0,
                Mode::Onprem,
                true,
            ),
            (
                "paused keeps the current mode",
                Mode::Cloud,
                Mode::Onprem,
                secs(-1),
                &[],
                Some(Override::Paused),
                None,
                t0,
                Mode::Onprem,
                true,
            ),
        ];
        for (name, says, mode, since, transitions, override_, healthy, now, want, held) in rows {
            let cur = Current {
                mode: *mode,
                since: *since,
                transitions,
                override_: *override_,
                onprem_healthy_since: *healthy,
            };
            let e = effective(&decision(*says), cur, damping, *now);
            assert_eq!((e.mode, e.held.is_some()), (*want, *held), "{name}: {e:?}");
        }
        // Only the cap row says capped; hold-down says when to look again.
        let cur = Current {
            mode: Mode::Cloud,
            since: secs(-300),
            transitions: &four,
            override_: None,
            onprem_healthy_since: Some(secs(-100)),
        };
        assert!(effective(&decision(Mode::Onprem), cur, damping, t0).capped);
        let cur = Current {
            mode: Mode::Cloud,
            since: secs(-45),
            transitions: &two,
            override_: None,
            onprem_healthy_since: None,
        };
        let e = effective(&decision(Mode::Onprem), cur, damping, t0);
        assert_eq!(e.recheck_after, Some(Duration::from_secs(15)));
        // Without damping configured, failback follows the alerts at once.
        let e = effective(&decision(Mode::Onprem), cur, Damping::default(), t0);
        assert_eq!(e.mode, Mode::Onprem);
    }
}
