//! The fast path: HAProxy's own health checks as a second, faster failover signal. Pure: what
//! the poller saw, the alerts' decision and the time in; the decision out.
//!
//! HAProxy knows within `inter × fall` that on-prem is down; the alert pipeline (scrape, rule
//! `for`, Alertmanager's `group_wait`) takes from seconds to minutes. So when every on-prem
//! server is DOWN by HAProxy's checks on every HAProxy for `down_for`, the service fails over
//! at once, exactly as for the alert. The alert stays the authority: when it fires, the episode
//! is confirmed and the service behaves as if the alert alone had acted. When it does not fire
//! within `confirm_within` and HAProxy sees on-prem UP again, the service fails back (with the
//! usual damping) and the episode is counted as unconfirmed. The fast path acts only on
//! positive evidence: an HAProxy that cannot be read, a server in maintenance or draining, a
//! server going up or down, none of them count as "DOWN" nor as "UP".
//!
//! The I/O half (one `show stat` per HAProxy per `poll`, on a kept-open connection, and a
//! `show info` once a second to notice a reload) is [`watch`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::desired::{Decision, Mode};

pub mod watch;

/// `fast_path:` in a service's config.
#[derive(Debug, Clone, Deserialize)]
pub struct FastPathConfig {
    /// Servers of `haproxy.backend` that serve on-prem, whose health HAProxy checks.
    pub onprem_servers: Vec<String>,
    /// How long every one of them must be DOWN on every HAProxy before failing over.
    #[serde(default, with = "humantime_serde")]
    pub down_for: Duration,
    /// How often each HAProxy is asked (`show stat`, one command on a kept-open connection).
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll: Duration,
    /// The failover alert must fire within this of the trigger; otherwise, once HAProxy sees
    /// on-prem UP, the service fails back and the episode counts as unconfirmed.
    #[serde(default = "default_confirm_within", with = "humantime_serde")]
    pub confirm_within: Duration,
}

fn default_poll() -> Duration {
    Duration::from_millis(200)
}

fn default_confirm_within() -> Duration {
    Duration::from_secs(300)
}

impl FastPathConfig {
    /// Checks the keys under `p` (`services.<name>.fast_path`); `managed` (None without
    /// `haproxy`) are the servers the responder opens and closes (cloud servers, burst slots),
    /// which cannot also be the on-prem ones.
    pub fn validate(&self, p: &str, managed: Option<&[String]>, errors: &mut Vec<String>) {
        let Some(cloud) = managed else {
            errors.push(format!(
                "{p}: needs haproxy (the fast path reads HAProxy's health checks)"
            ));
            return;
        };
        if self.onprem_servers.is_empty() {
            errors.push(format!("{p}.onprem_servers: at least one server is needed"));
        }
        for (i, s) in self.onprem_servers.iter().enumerate() {
            if self.onprem_servers[..i].contains(s) {
                errors.push(format!("{p}.onprem_servers: {s:?} is listed twice"));
            }
            if s.trim().is_empty() {
                errors.push(format!("{p}.onprem_servers: a server name is empty"));
            } else if cloud.contains(s) {
                errors.push(format!(
                    "{p}.onprem_servers: {s:?} is a server the responder opens and closes (haproxy.cloud_servers or a burst slot); the fast path watches on-prem servers"
                ));
            }
        }
        if self.poll < Duration::from_millis(10) || self.poll > Duration::from_secs(60) {
            errors.push(format!("{p}.poll: must be between 10ms and 60s"));
        }
        if self.confirm_within.is_zero() || self.confirm_within > Duration::from_secs(86400) {
            errors.push(format!("{p}.confirm_within: must be between 1s and 24h"));
        }
        if self.down_for > Duration::from_secs(3600) {
            errors.push(format!("{p}.down_for: must be at most 1h"));
        }
    }
}

/// One on-prem server's health on one HAProxy, from the `status` column of `show stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// `DOWN`, `DOWN (agent)`, `DOWN x/y` (coming up: still sent no traffic).
    Down,
    /// `UP`: its checks have passed since it last changed.
    Up,
    /// Anything else: `MAINT` (an operator's maintenance is not health), `DRAIN`, `NOLB`,
    /// `UP x/y` (going down, or assumed up right after maintenance), `no check`, absent.
    Other,
}

impl Health {
    /// From `show stat`'s `status` (None: the server is not in the backend).
    pub fn from_status(status: Option<&str>) -> Health {
        match status.map(str::trim) {
            Some(s) if s.starts_with("DOWN") => Health::Down,
            Some("UP") => Health::Up,
            _ => Health::Other,
        }
    }
}

/// What one poll of every HAProxy said: on each (in config order), each on-prem server's
/// status as HAProxy wrote it, or why it could not be read.
pub type Poll = Vec<Result<Vec<(String, Option<String>)>, String>>;

/// What every HAProxy says of on-prem as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every on-prem server DOWN on every HAProxy, each one read.
    Down,
    /// Every on-prem server UP on every HAProxy, each one read.
    Up,
    /// Anything else (mixed, in maintenance, an HAProxy not read).
    Unclear,
}

/// Joins one poll into a verdict. No HAProxy at all is unclear.
pub fn verdict(poll: &Poll) -> Verdict {
    let mut healths = Vec::new();
    for answer in poll {
        match answer {
            Ok(servers) => healths.extend(
                servers
                    .iter()
                    .map(|(_, s)| Health::from_status(s.as_deref())),
            ),
            Err(_) => return Verdict::Unclear,
        }
    }
    if healths.is_empty() {
        Verdict::Unclear
    } else if healths.iter().all(|h| *h == Health::Down) {
        Verdict::Down
    } else if healths.iter().all(|h| *h == Health::Up) {
        Verdict::Up
    } else {
        Verdict::Unclear
    }
}

/// What the poller knows, as the pass reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct View {
    /// Since when every HAProxy has said DOWN without a break (None: not now).
    pub down_since: Option<DateTime<Utc>>,
    /// Every HAProxy says UP now.
    pub up: bool,
}

impl View {
    /// The view after one more poll at `now`.
    pub fn next(self, v: Verdict, now: DateTime<Utc>) -> View {
        View {
            down_since: match v {
                Verdict::Down => self.down_since.or(Some(now)),
                _ => None,
            },
            up: v == Verdict::Up,
        }
    }

    /// Whether on-prem has been DOWN for at least `down_for` at `now`.
    pub fn down_for(&self, down_for: Duration, now: DateTime<Utc>) -> bool {
        self.down_since
            .is_some_and(|since| (now - since).to_std().unwrap_or_default() >= down_for)
    }
}

/// A failover the fast path made that the alert has not confirmed yet; persisted with the
/// service's state, so a restart does not forget that the cloud is there on its word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Episode {
    pub triggered_at: DateTime<Utc>,
    /// Since when HAProxy had seen on-prem DOWN.
    pub down_since: DateTime<Utc>,
}

impl Episode {
    /// When the failover alert's time to confirm it runs out. Past the end of time means never
    /// (validation bounds `confirm_within`; this must not panic).
    pub fn deadline(&self, confirm_within: Duration) -> DateTime<Utc> {
        chrono::Duration::from_std(confirm_within)
            .ok()
            .and_then(|d| self.triggered_at.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// What a pass did to the fast path's episode, for events and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The fast path failed the service over.
    Triggered,
    /// The failover alert fired during the episode: the alert owns the service again.
    Confirmed { after: Duration },
    /// No failover alert within `confirm_within` and on-prem UP again: failing back.
    Unconfirmed,
    /// An override keeping the service on-prem (`ctl failback`) ended the episode.
    Overridden,
}

/// The fast path applied to the alerts' decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub decision: Decision,
    /// The episode to persist (None: none open).
    pub episode: Option<Episode>,
    pub change: Option<Change>,
    /// When the episode's confirmation window ends: look again then.
    pub recheck_after: Option<Duration>,
}

/// Applies the fast path to `alerts` (the alerts' decision) for a service now in `mode`, with
/// `episode` open or not, `view` from the poller, at `now`. Without a config the alerts' word
/// stands (and an episode from an earlier config is dropped).
pub fn apply(
    cfg: Option<&FastPathConfig>,
    mode: Mode,
    episode: Option<&Episode>,
    alerts: Decision,
    view: &View,
    now: DateTime<Utc>,
) -> Applied {
    let keep = |decision: Decision, episode: Option<Episode>, change: Option<Change>| Applied {
        decision,
        episode,
        change,
        recheck_after: None,
    };
    let Some(cfg) = cfg else {
        return keep(alerts, None, None);
    };
    let down = view.down_for(cfg.down_for, now);
    if alerts.mode == Mode::Cloud {
        let change = episode.map(|e| Change::Confirmed {
            after: (now - e.triggered_at).to_std().unwrap_or_default(),
        });
        return keep(alerts, None, change);
    }
    let cloud = |reason: String| Decision {
        mode: Mode::Cloud,
        reason,
        ..alerts.clone()
    };
    let servers = cfg.onprem_servers.join(", ");
    if let Some(e) = episode {
        let deadline = e.deadline(cfg.confirm_within);
        if now < deadline {
            let reason = format!(
                "fast path: HAProxy saw {servers} DOWN at {}; waiting until {} for the failover alert",
                e.down_since.to_rfc3339(),
                deadline.to_rfc3339()
            );
            return Applied {
                recheck_after: (deadline - now).to_std().ok(),
                ..keep(cloud(reason), Some(e.clone()), None)
            };
        }
        if !view.up {
            let reason = format!(
                "fast path: no failover alert since {}, but HAProxy does not see {servers} UP: staying in cloud",
                e.triggered_at.to_rfc3339()
            );
            return keep(cloud(reason), Some(e.clone()), None);
        }
        let reason = format!(
            "fast path unconfirmed: no failover alert within {} of {}, and HAProxy sees {servers} UP",
            humantime::format_duration(cfg.confirm_within),
            e.triggered_at.to_rfc3339()
        );
        return keep(
            Decision { reason, ..alerts },
            None,
            Some(Change::Unconfirmed),
        );
    }
    match (down, view.down_since) {
        (true, Some(since)) if mode == Mode::Onprem => {
            let reason = format!(
                "fast path: HAProxy sees {servers} DOWN on every HAProxy since {}",
                since.to_rfc3339()
            );
            let e = Episode {
                triggered_at: now,
                down_since: since,
            };
            keep(cloud(reason), Some(e), Some(Change::Triggered))
        }
        // In cloud already (the alert failed over and has resolved since): HAProxy's checks
        // still fail, so the alert's recovery is not believed yet. Any DOWN now holds, not
        // only one of `down_for`: one unread poll must not let a failback through that the
        // next polls would undo. Not an episode: nothing for the alert to confirm.
        (_, Some(since)) if mode == Mode::Cloud => {
            let reason = format!(
                "{}; but HAProxy sees {servers} DOWN on every HAProxy since {}: staying in cloud",
                alerts.reason,
                since.to_rfc3339()
            );
            keep(cloud(reason), None, None)
        }
        _ => keep(alerts, None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0)
            .single()
            .expect("time")
    }

    fn cfg() -> FastPathConfig {
        FastPathConfig {
            onprem_servers: vec!["onprem".into()],
            down_for: Duration::from_secs(2),
            poll: default_poll(),
            confirm_within: Duration::from_secs(300),
        }
    }

    fn alerts(mode: Mode) -> Decision {
        Decision {
            mode,
            reason: "alerts".into(),
            failover_alerts: if mode == Mode::Cloud {
                vec!["fp".into()]
            } else {
                vec![]
            },
            failback_alerts: vec![],
        }
    }

    fn status(s: &str) -> Result<Vec<(String, Option<String>)>, String> {
        Ok(vec![("onprem".into(), Some(s.into()))])
    }

    #[test]
    fn health_from_haproxy_status() {
        for (s, want) in [
            ("DOWN", Health::Down),
            ("DOWN 1/2", Health::Down),
            ("DOWN (agent)", Health::Down),
            ("UP", Health::Up),
            ("UP 1/3", Health::Other),
            ("MAINT", Health::Other),
            ("MAINT (via)", Health::Other),
            ("MAINT (resolution)", Health::Other),
            ("DRAIN", Health::Other),
            ("NOLB", Health::Other),
            ("no check", Health::Other),
        ] {
            assert_eq!(Health::from_status(Some(s)), want, "{s}");
        }
        assert_eq!(Health::from_status(None), Health::Other);
    }

    #[test]
    fn down_only_when_every_haproxy_read_says_down() {
        assert_eq!(
            verdict(&vec![status("DOWN"), status("DOWN 1/2")]),
            Verdict::Down
        );
        assert_eq!(verdict(&vec![status("UP"), status("UP")]), Verdict::Up);
        // One HAProxy not read: neither.
        assert_eq!(
            verdict(&vec![status("DOWN"), Err("connection refused".into())]),
            Verdict::Unclear
        );
        assert_eq!(
            verdict(&vec![status("UP"), Err("timeout".into())]),
            Verdict::Unclear
        );
        // An operator's maintenance is not down.
        assert_eq!(verdict(&vec![status("MAINT")]), Verdict::Unclear);
        // Two on-prem servers: one up keeps on-prem serving.
        let two = Ok(vec![
            ("a".into(), Some("DOWN".into())),
            ("b".into(), Some("UP".into())),
        ]);
        assert_eq!(verdict(&vec![two]), Verdict::Unclear);
        // A server the backend lacks, and no HAProxy at all.
        assert_eq!(
            verdict(&vec![Ok(vec![("a".into(), None)])]),
            Verdict::Unclear
        );
        assert_eq!(verdict(&vec![]), Verdict::Unclear);
    }

    #[test]
    fn the_view_counts_down_without_a_break() {
        let v = View::default().next(Verdict::Down, t(0));
        let v = v.next(Verdict::Down, t(1));
        assert_eq!(v.down_since, Some(t(0)));
        assert!(v.down_for(Duration::from_secs(1), t(1)));
        assert!(!v.down_for(Duration::from_secs(2), t(1)));
        // One unclear poll breaks the run.
        let v = v.next(Verdict::Unclear, t(2)).next(Verdict::Down, t(3));
        assert_eq!(v.down_since, Some(t(3)));
        assert!(!v.up);
        assert!(v.next(Verdict::Up, t(4)).up);
    }

    /// One pass's inputs and what it must give: (at, mode, alerts' mode, view, want mode,
    /// want change, episode open after).
    #[test]
    fn an_episode_over_time() {
        let c = cfg();
        let down = |since: i64| View {
            down_since: Some(t(since)),
            up: false,
        };
        let up = View {
            down_since: None,
            up: true,
        };
        let unclear = View::default();
        let mut episode: Option<Episode> = None;
        let mut mode = Mode::Onprem;
        #[allow(clippy::type_complexity)]
        let steps: &[(i64, Mode, View, Mode, Option<Change>, bool)] = &[
            // Down for 1 s of the 2 s asked: nothing yet.
            (1, Mode::Onprem, down(0), Mode::Onprem, None, false),
            // Down for 2 s: fail over.
            (
                2,
                Mode::Onprem,
                down(0),
                Mode::Cloud,
                Some(Change::Triggered),
                true,
            ),
            // UP again within confirm_within: stay, waiting for the alert.
            (10, Mode::Onprem, up, Mode::Cloud, None, true),
            // Past confirm_within but HAProxy cannot be read: stay (the safe side).
            (400, Mode::Onprem, unclear, Mode::Cloud, None, true),
            // Still DOWN in HAProxy, unconfirmed: the cloud stays.
            (400, Mode::Onprem, down(390), Mode::Cloud, None, true),
            // Past confirm_within and UP: fail back, unconfirmed.
            (
                401,
                Mode::Onprem,
                up,
                Mode::Onprem,
                Some(Change::Unconfirmed),
                false,
            ),
        ];
        for (at, alert_mode, view, want, change, open) in steps.iter().cloned() {
            let a = apply(
                Some(&c),
                mode,
                episode.as_ref(),
                alerts(alert_mode),
                &view,
                t(at),
            );
            assert_eq!(a.decision.mode, want, "at {at}: {}", a.decision.reason);
            assert_eq!(a.change, change, "at {at}");
            assert_eq!(a.episode.is_some(), open, "at {at}");
            if at == 10 {
                assert_eq!(a.recheck_after, Some(Duration::from_secs(292)));
                assert!(
                    a.decision.reason.contains("waiting until"),
                    "{}",
                    a.decision.reason
                );
            }
            episode = a.episode;
            mode = a.decision.mode;
        }
    }

    #[test]
    fn the_alert_confirms_and_then_owns_the_failback() {
        let c = cfg();
        let down = View {
            down_since: Some(t(0)),
            up: false,
        };
        let a = apply(
            Some(&c),
            Mode::Onprem,
            None,
            alerts(Mode::Onprem),
            &down,
            t(2),
        );
        assert_eq!(a.change, Some(Change::Triggered));
        let e = a.episode.expect("open");
        // The alert fires 30 s later: confirmed, the episode closes.
        let a = apply(
            Some(&c),
            Mode::Cloud,
            Some(&e),
            alerts(Mode::Cloud),
            &down,
            t(32),
        );
        assert_eq!(a.decision.mode, Mode::Cloud);
        assert_eq!(
            a.change,
            Some(Change::Confirmed {
                after: Duration::from_secs(30)
            })
        );
        assert_eq!(a.episode, None);
        // The alert resolves while HAProxy still sees DOWN: cloud stays, no new episode;
        // even a DOWN shorter than down_for (after one unread poll) holds it.
        let a = apply(
            Some(&c),
            Mode::Cloud,
            None,
            alerts(Mode::Onprem),
            &down,
            t(60),
        );
        assert_eq!(a.decision.mode, Mode::Cloud);
        assert_eq!((a.change, a.episode), (None, None));
        let just_down = View {
            down_since: Some(t(60)),
            up: false,
        };
        let a = apply(
            Some(&c),
            Mode::Cloud,
            None,
            alerts(Mode::Onprem),
            &just_down,
            t(60),
        );
        assert_eq!(a.decision.mode, Mode::Cloud);
        // HAProxy sees it UP (or just not DOWN): the alerts' failback stands.
        let a = apply(
            Some(&c),
            Mode::Cloud,
            None,
            alerts(Mode::Onprem),
            &View::default(),
            t(61),
        );
        assert_eq!(a.decision.mode, Mode::Onprem);
        assert_eq!(a.decision.reason, "alerts");
    }

    #[test]
    fn a_confirmation_window_past_the_end_of_time_does_not_panic() {
        let c = FastPathConfig {
            confirm_within: Duration::from_secs(u64::MAX / 4),
            ..cfg()
        };
        let e = Episode {
            triggered_at: t(0),
            down_since: t(0),
        };
        let up = View {
            down_since: None,
            up: true,
        };
        let a = apply(
            Some(&c),
            Mode::Cloud,
            Some(&e),
            alerts(Mode::Onprem),
            &up,
            t(10),
        );
        assert_eq!(a.decision.mode, Mode::Cloud);
    }

    #[test]
    fn without_a_config_the_alerts_stand() {
        let down = View {
            down_since: Some(t(0)),
            up: false,
        };
        let e = Episode {
            triggered_at: t(0),
            down_since: t(0),
        };
        let a = apply(
            None,
            Mode::Cloud,
            Some(&e),
            alerts(Mode::Onprem),
            &down,
            t(10),
        );
        assert_eq!(a.decision.mode, Mode::Onprem);
        assert_eq!(a.episode, None);
    }

    #[test]
    fn config_problems_are_named() {
        let mut errors = Vec::new();
        let bad = FastPathConfig {
            onprem_servers: vec!["cloud1".into(), " ".into(), "a".into(), "a".into()],
            down_for: Duration::ZERO,
            poll: Duration::from_millis(1),
            confirm_within: Duration::ZERO,
        };
        bad.validate(
            "services.a.fast_path",
            Some(&["cloud1".into()]),
            &mut errors,
        );
        let all = errors.join("\n");
        for want in [
            "onprem_servers: \"cloud1\" is a server the responder opens and closes",
            "onprem_servers: a server name is empty",
            "onprem_servers: \"a\" is listed twice",
            "poll: must be between 10ms and 60s",
            "confirm_within: must be between 1s and 24h",
        ] {
            assert!(all.contains(want), "{want} in {all}");
        }
        let mut errors = Vec::new();
        cfg().validate("services.a.fast_path", None, &mut errors);
        assert_eq!(
            errors,
            ["services.a.fast_path: needs haproxy (the fast path reads HAProxy's health checks)"]
        );
    }
}
