//! Cloud bursting and the cost guard. Pure: no I/O, no clock (time is passed in).
//!
//! Bursting is a desired *count* per service, next to its mode: while an overload alert fires
//! the count grows by `step` every `scale_up_every` from `min` to `max`; once the alert has been
//! quiet for `cooldown`, it shrinks by `step` every `scale_in_every` down to zero. Units `1..=n`
//! should be up and open, units above `n` drained, closed and stopped; the planner compares
//! that with what it observes, exactly as it does for the mode.
//!
//! No thrash under a flapping alert: growth is paced by `scale_up_every`, and every firing
//! sighting restarts the cooldown, so the count cannot go down and up again within a cooldown.
//!
//! No oscillation under steady load, with an underload alert (`burst.scale_in_on`): units that
//! take their share of the load are what quiets the overload alert, so its silence alone would
//! remove them and bring it back. With an underload alert the count shrinks only while that
//! alert fires, and holds while neither fires (the band between the two thresholds).
//!
//! The cost guard caps growth only (failover capacity is never held back for money): by the
//! instances the service may run at once, and by the instance-hours it has used today (UTC).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::config::BurstConfig;
pub use crate::template::{render_address, render_container, slot_name};

/// The burst count as the responder remembers it (persisted with the service's state).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BurstState {
    /// Units that should be up and open.
    pub target: u32,
    /// When `target` last changed.
    pub changed_at: Option<DateTime<Utc>>,
    /// The last time the overload alert was known to fire (starts the cooldown): while it
    /// fires, every pass; when a pass first finds it gone, that pass's time, since it may have
    /// fired until just before.
    pub last_firing_at: Option<DateTime<Utc>>,
    /// Whether the last pass saw the overload alert firing.
    #[serde(default)]
    pub firing: bool,
    /// When `target` last grew: with an underload alert, growth is paced from it, so a scale-in
    /// does not delay the next growth (absent in states written before it existed: `changed_at`).
    #[serde(default)]
    pub grown_at: Option<DateTime<Utc>>,
}

/// What limits growth besides `max`, worked out from the cost guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// Units the cost guard allows at once (`u32::MAX` when unguarded).
    pub max_units: u32,
    /// Today's instance-hour budget is used up: no more growth.
    pub budget_spent: bool,
}

impl Guard {
    pub const NONE: Guard = Guard {
        max_units: u32::MAX,
        budget_spent: false,
    };
}

/// The next burst count and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Scale {
    pub state: BurstState,
    /// Set when the count changed: a sentence for the event log.
    pub reason: Option<String>,
    /// Set while the cost guard stops growth the alert asks for.
    pub capped: Option<String>,
    /// Set while units stay because the underload alert does not fire.
    pub held: Option<String>,
    /// When the count may change by itself (next scale step or cooldown end).
    pub recheck_after: Option<Duration>,
}

/// The timing and bounds of one service's burst.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub min: u32,
    pub max: u32,
    pub step: u32,
    pub scale_up_every: Duration,
    pub cooldown: Duration,
    pub scale_in_every: Duration,
}

impl From<&BurstConfig> for Rules {
    fn from(b: &BurstConfig) -> Self {
        Rules {
            min: b.min,
            max: b.max,
            step: b.step.max(1),
            scale_up_every: b.scale_up_every,
            cooldown: b.cooldown,
            scale_in_every: b.scale_in_every(),
        }
    }
}

fn since(now: DateTime<Utc>, t: Option<DateTime<Utc>>) -> Duration {
    t.map_or(Duration::MAX, |t| {
        (now - t).to_std().unwrap_or(Duration::ZERO)
    })
}

/// What the alerts say about load now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// An overload alert (`burst.on`) fires.
    pub overloaded: bool,
    /// Whether an underload alert (`burst.scale_in_on`) fires; `None` when the service has no
    /// underload alert, so the overload's silence alone lets units go.
    pub underloaded: Option<bool>,
}

/// A change of the count worked out in one direction.
struct Move {
    to: u32,
    reason: Option<String>,
    capped: Option<String>,
    held: Option<String>,
    recheck: Option<Duration>,
}

/// Works out the count from the alerts firing now. Growth is never delayed past its pace;
/// shrinking waits for a quiet cooldown and, with an underload alert, for that alert.
pub fn next(
    rules: Rules,
    load: Load,
    prev: &BurstState,
    guard: Guard,
    now: DateTime<Utc>,
) -> Scale {
    let mut s = prev.clone();
    let max = rules.max.min(guard.max_units);
    if load.overloaded || prev.firing {
        s.last_firing_at = Some(now);
    }
    s.firing = load.overloaded;
    let m = if s.target > max {
        // A lowered max or a tighter guard is a hard cap: shrink at once.
        Move {
            to: max,
            reason: Some(format!("{} -> {max}: above the allowed maximum", s.target)),
            capped: None,
            held: None,
            recheck: None,
        }
    } else if load.overloaded {
        grow(rules, &s, guard, max, load.underloaded.is_some(), now)
    } else {
        shrink(rules, &s, load.underloaded, now)
    };
    if m.reason.is_some() {
        if m.to > s.target {
            s.grown_at = Some(now);
        }
        s.target = m.to;
        s.changed_at = Some(now);
    }
    Scale {
        state: s,
        reason: m.reason,
        capped: m.capped,
        held: m.held,
        recheck_after: m.recheck,
    }
}

/// While the overload alert fires: `min` at once, then `step` per `scale_up_every`, within `max`
/// and the cost guard. With an underload alert (`banded`), paced from the last growth: a
/// scale-in means the load was low, so an overload after it is news and is answered at once.
/// Without one, paced from the last change as before (there, a scale-in is the cooldown's
/// guess, and growing right back would make a steady load cycle faster).
fn grow(
    rules: Rules,
    s: &BurstState,
    guard: Guard,
    max: u32,
    banded: bool,
    now: DateTime<Utc>,
) -> Move {
    // States written before `grown_at` existed pace from their last change.
    let paced_from = if banded {
        s.grown_at.or(s.changed_at)
    } else {
        s.changed_at
    };
    let since_growth = since(now, paced_from);
    let wanted = if s.target < rules.min {
        rules.min
    } else if s.target < rules.max && since_growth >= rules.scale_up_every {
        s.target.saturating_add(rules.step).min(rules.max)
    } else {
        s.target
    };
    let allowed = if guard.budget_spent {
        s.target
    } else {
        wanted.min(max)
    };
    let capped = (allowed < wanted).then(|| {
        if guard.budget_spent {
            format!(
                "cost guard: today's instance-hour budget is used up; staying at {} unit(s)",
                s.target
            )
        } else {
            format!("cost guard: at most {max} unit(s) allowed now; overload asks for {wanted}")
        }
    });
    let reason = (allowed > s.target).then(|| {
        if s.target < rules.min.min(max) {
            format!("{} -> {allowed}: overload alert firing", s.target)
        } else {
            format!(
                "{} -> {allowed}: overload alert still firing after {}",
                s.target,
                humantime::format_duration(rules.scale_up_every)
            )
        }
    });
    let waited = if reason.is_some() {
        Duration::ZERO
    } else {
        since_growth
    };
    let recheck =
        (allowed < max && !guard.budget_spent).then(|| rules.scale_up_every.saturating_sub(waited));
    Move {
        to: allowed,
        reason,
        capped,
        held: None,
        recheck,
    }
}

/// While the overload alert is quiet: `step` per `scale_in_every` once it has been quiet for
/// `cooldown`, and, when the service has an underload alert, only while that alert fires
/// (between the two thresholds the count holds: units taking their share of the load are what
/// keeps the overload quiet, so its silence alone is no reason to remove them).
fn shrink(rules: Rules, s: &BurstState, underloaded: Option<bool>, now: DateTime<Utc>) -> Move {
    let mut m = Move {
        to: s.target,
        reason: None,
        capped: None,
        held: None,
        recheck: None,
    };
    if s.target == 0 {
        return m;
    }
    let quiet = since(now, s.last_firing_at);
    let quiet_for = humantime::format_duration(Duration::from_secs(
        quiet.as_secs().min(u64::from(u32::MAX)),
    ));
    if underloaded == Some(false) {
        // The webhook of the underload alert wakes the service: nothing to look at before.
        m.held = Some(format!(
            "holding {} unit(s): overload alert quiet for {quiet_for}, underload alert not firing",
            s.target
        ));
        return m;
    }
    let since_change = since(now, s.changed_at);
    if quiet >= rules.cooldown && since_change >= rules.scale_in_every {
        m.to = s.target.saturating_sub(rules.step);
        let why = if underloaded == Some(true) {
            "underload alert firing, overload alert quiet for"
        } else {
            "overload alert quiet for"
        };
        m.reason = Some(format!("{} -> {}: {why} {quiet_for}", s.target, m.to));
    }
    if m.to > 0 {
        let waited = if m.reason.is_some() {
            Duration::ZERO
        } else {
            since_change
        };
        m.recheck = Some(
            rules
                .cooldown
                .saturating_sub(quiet)
                .max(rules.scale_in_every.saturating_sub(waited)),
        );
    }
    m
}

/// Usage keys of burst units start with this, so the guard can tell them from failover units.
pub const BURST_KEY: &str = "burst ";

/// The cost guard's limits now. `instance_units`: the burst units are EC2 instances, so
/// `max_instances` bounds them (after the failover instances already running).
pub fn guard(
    cost: &crate::config::CostConfig,
    instance_units: bool,
    usage: &Usage,
    now: DateTime<Utc>,
) -> Guard {
    let max_units = match (cost.max_instances, instance_units) {
        (Some(max), true) => {
            let failover = usage
                .running
                .iter()
                .filter(|(k, r)| r.kind == UnitKind::Instance && !k.starts_with(BURST_KEY))
                .count();
            max.saturating_sub(u32::try_from(failover).unwrap_or(u32::MAX))
        }
        _ => u32::MAX,
    };
    Guard {
        max_units,
        budget_spent: cost
            .max_instance_hours_per_day
            .is_some_and(|m| usage.instance_hours_today(now) >= m),
    }
}

/// What a running unit is, for the estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    Instance,
    Container,
}

/// A unit that is running now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub kind: UnitKind,
    pub since: DateTime<Utc>,
}

/// Running units and today's instance-hours (persisted with the service's state).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// The UTC day `closed_instance_hours` counts.
    pub day: Option<NaiveDate>,
    /// Instance-hours of runs that ended today.
    pub closed_instance_hours: f64,
    /// Units running now, by name (`instance i-...`, `container api-burst-2`).
    pub running: BTreeMap<String, Running>,
}

impl Usage {
    /// Takes in the units observed running now; returns whether anything changed (so it is
    /// persisted only then).
    pub fn observe(&mut self, running_now: &[(String, UnitKind)], now: DateTime<Utc>) -> bool {
        let mut changed = false;
        let today = now.date_naive();
        if self.day != Some(today) {
            // Runs that went on over midnight count from midnight on the new day.
            self.day = Some(today);
            self.closed_instance_hours = 0.0;
            changed = true;
        }
        let ended: Vec<String> = self
            .running
            .keys()
            .filter(|k| !running_now.iter().any(|(n, _)| n == *k))
            .cloned()
            .collect();
        for name in ended {
            if let Some(r) = self.running.remove(&name) {
                if r.kind == UnitKind::Instance {
                    self.closed_instance_hours += hours_today(r.since, now);
                }
                changed = true;
            }
        }
        for (name, kind) in running_now {
            if !self.running.contains_key(name) {
                self.running.insert(
                    name.clone(),
                    Running {
                        kind: *kind,
                        since: now,
                    },
                );
                changed = true;
            }
        }
        changed
    }

    /// Instance-hours used today (UTC), running ones included.
    pub fn instance_hours_today(&self, now: DateTime<Utc>) -> f64 {
        let open: f64 = self
            .running
            .values()
            .filter(|r| r.kind == UnitKind::Instance)
            .map(|r| hours_today(r.since, now))
            .sum();
        let closed = if self.day == Some(now.date_naive()) {
            self.closed_instance_hours
        } else {
            0.0
        };
        closed + open
    }

    /// What the running units cost per hour at the configured prices.
    pub fn hourly_estimate(&self, instance_price: f64, container_price: f64) -> f64 {
        self.running
            .values()
            .map(|r| match r.kind {
                UnitKind::Instance => instance_price,
                UnitKind::Container => container_price,
            })
            // Not `sum()`: it starts at -0.0, which the status would show as "-0.0".
            .fold(0.0, |total, price| total + price)
    }

    /// Instances running now.
    pub fn instances(&self) -> u32 {
        let n = self
            .running
            .values()
            .filter(|r| r.kind == UnitKind::Instance)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// Hours between `since` (or today's midnight, if later) and `now`.
fn hours_today(since: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    let midnight = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(since, |m| m.and_utc());
    let from = since.max(midnight);
    ((now - from).num_milliseconds().max(0) as f64) / 3_600_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ContainerConfig;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    /// Without an underload alert.
    const OVER: Load = Load {
        overloaded: true,
        underloaded: None,
    };
    const QUIET: Load = Load {
        overloaded: false,
        underloaded: None,
    };

    fn rules() -> Rules {
        Rules {
            min: 2,
            max: 6,
            step: 2,
            scale_up_every: Duration::from_secs(60),
            cooldown: Duration::from_secs(300),
            scale_in_every: Duration::from_secs(60),
        }
    }

    /// Runs `next` once per second from 0 to `until`, with `firing(s)` saying whether the
    /// alert fires at second s; returns the count at each second where it changed.
    fn simulate(firing: impl Fn(i64) -> bool, until: i64, guard: Guard) -> Vec<(i64, u32)> {
        let mut st = BurstState::default();
        let mut changes = Vec::new();
        for s in 0..=until {
            let load = Load {
                overloaded: firing(s),
                underloaded: None,
            };
            let out = next(rules(), load, &st, guard, t(s));
            if out.state.target != st.target {
                assert!(out.reason.is_some(), "a change always says why");
                changes.push((s, out.state.target));
            }
            st = out.state;
        }
        changes
    }

    #[test]
    fn grows_in_steps_to_max_then_shrinks_after_cooldown() {
        // Fires for 200 s, then quiet.
        let changes = simulate(|s| s < 200, 800, Guard::NONE);
        assert_eq!(
            changes,
            vec![
                (0, 2),   // min at once
                (60, 4),  // one step per scale_up_every
                (120, 6), // max
                (500, 4), // first seen gone at 200, quiet for 300 s
                (560, 2),
                (620, 0),
            ]
        );
    }

    #[test]
    fn flapping_alert_never_shrinks_within_cooldown() {
        // Fires 10 s, quiet 20 s, over and over for 20 minutes.
        let changes = simulate(|s| s < 1200 && s % 30 < 10, 1200, Guard::NONE);
        let mut last = 0;
        for (_, n) in &changes {
            assert!(*n >= last, "flapping shrank capacity: {changes:?}");
            last = *n;
        }
        assert_eq!(changes, vec![(0, 2), (60, 4), (120, 6)]);
    }

    #[test]
    fn cooldown_counts_from_the_first_pass_that_finds_the_alert_gone() {
        // Seen firing at 0 (target 2), no pass until 100, when it is gone: it may have fired
        // until 99, so the cooldown runs from 100.
        let a = next(rules(), OVER, &BurstState::default(), Guard::NONE, t(0));
        let b = next(rules(), QUIET, &a.state, Guard::NONE, t(100));
        assert_eq!(b.state.last_firing_at, Some(t(100)));
        assert_eq!(b.recheck_after, Some(Duration::from_secs(300)));
        let c = next(rules(), QUIET, &b.state, Guard::NONE, t(399));
        assert_eq!(c.state.target, 2, "still in cooldown");
        let d = next(rules(), QUIET, &c.state, Guard::NONE, t(400));
        assert_eq!(d.state.target, 0);
    }

    #[test]
    fn recheck_points_at_the_next_possible_change() {
        let st = BurstState::default();
        let a = next(rules(), OVER, &st, Guard::NONE, t(0));
        assert_eq!(a.recheck_after, Some(Duration::from_secs(60)));
        let b = next(rules(), OVER, &a.state, Guard::NONE, t(20));
        assert_eq!(b.recheck_after, Some(Duration::from_secs(40)));
        let c = next(rules(), QUIET, &b.state, Guard::NONE, t(30));
        // First pass that finds it gone: the whole cooldown is ahead.
        assert_eq!(c.recheck_after, Some(Duration::from_secs(300)));
        let idle = next(rules(), QUIET, &BurstState::default(), Guard::NONE, t(0));
        assert_eq!(idle.recheck_after, None);
        assert_eq!(
            idle.state,
            BurstState::default(),
            "nothing to remember while idle"
        );
    }

    #[test]
    fn guard_caps_growth_and_says_so() {
        let guard = Guard {
            max_units: 3,
            budget_spent: false,
        };
        let changes = simulate(|s| s < 200, 300, guard);
        assert_eq!(changes, vec![(0, 2), (60, 3)]);
        let st = BurstState {
            target: 3,
            changed_at: Some(t(0)),
            last_firing_at: Some(t(0)),
            firing: true,
            grown_at: Some(t(0)),
        };
        let out = next(rules(), OVER, &st, guard, t(100));
        assert_eq!(out.state.target, 3);
        assert!(out.capped.unwrap().contains("at most 3"));
        // Budget spent: not even min.
        let spent = Guard {
            max_units: u32::MAX,
            budget_spent: true,
        };
        let out = next(rules(), OVER, &BurstState::default(), spent, t(0));
        assert_eq!(out.state.target, 0);
        assert!(out.capped.unwrap().contains("budget"));
    }

    /// What fires at second s: (overload, underload).
    type Alerts = fn(i64) -> (bool, bool);

    /// Like `simulate`, with an underload alert; also returns, for every second, whether the
    /// status would say the count is held.
    fn simulate_band(alerts: Alerts, until: i64) -> (Vec<(i64, u32)>, Vec<i64>) {
        let mut st = BurstState::default();
        let (mut changes, mut held) = (Vec::new(), Vec::new());
        for s in 0..=until {
            let (over, under) = alerts(s);
            let load = Load {
                overloaded: over,
                underloaded: Some(under),
            };
            let out = next(rules(), load, &st, Guard::NONE, t(s));
            if out.state.target != st.target {
                assert!(out.reason.is_some(), "a change always says why");
                changes.push((s, out.state.target));
            }
            if out.held.is_some() {
                held.push(s);
            }
            st = out.state;
        }
        (changes, held)
    }

    #[test]
    fn with_an_underload_alert_the_count_holds_between_the_thresholds() {
        // Overload 0..100; then neither alert (the units carry their share) until 1000;
        // underload 1000..1050; neither again; overload again at 1100..1200; then underload.
        let alerts: Alerts = |s| match s {
            0..=99 => (true, false),
            100..=999 => (false, false),
            1000..=1049 => (false, true),
            1050..=1099 => (false, false),
            1100..=1199 => (true, false),
            _ => (false, true),
        };
        let (changes, held) = simulate_band(alerts, 2000);
        assert_eq!(
            changes,
            vec![
                (0, 2),    // min at once
                (60, 4),   // one step per scale_up_every
                (1000, 2), // underload fires, the cooldown (from 100) long over
                // 1060 would be the next scale-in, but underload stopped at 1050: held.
                (1100, 4), // overload again: growth at once, not scale_up_every after 1000
                (1160, 6),
                (1500, 4), // cooldown from 1200 (the first pass that finds overload gone)
                (1560, 2),
                (1620, 0),
            ]
        );
        // Held from the first quiet pass to underload, and again after it stopped.
        assert_eq!(held.first(), Some(&100));
        assert!(held.contains(&999) && !held.contains(&1000));
        assert!(held.contains(&1060) && held.contains(&1099));
        assert!(!held.iter().any(|s| (1100..1200).contains(s) || *s >= 1200));
    }

    #[test]
    fn without_an_underload_alert_steady_load_oscillates() {
        // What the underload alert is for. A steady load that needs 4 units: with fewer,
        // on-prem's own overload alert fires; with 4 it resolves (the units carry their share)
        // and nothing says the load is low.
        let count_over_an_hour = |underloaded: Option<bool>| {
            let mut st = BurstState::default();
            let mut changes = Vec::new();
            for s in 0..=3600 {
                let load = Load {
                    overloaded: st.target < 4,
                    underloaded,
                };
                let out = next(rules(), load, &st, Guard::NONE, t(s));
                if out.state.target != st.target {
                    changes.push((s, out.state.target));
                }
                st = out.state;
            }
            changes
        };
        // Without it: the units leave after every cooldown (from 61, the first quiet pass) and
        // come back one scale_up_every later.
        let alone = count_over_an_hour(None);
        assert_eq!(&alone[..4], &[(0, 2), (60, 4), (361, 2), (421, 4)]);
        assert!(
            alone.len() >= 18,
            "about one cycle every 6 minutes: {alone:?}"
        );
        // With it (never firing: the load is not low): 4 units for the whole hour.
        assert_eq!(count_over_an_hour(Some(false)), vec![(0, 2), (60, 4)]);
    }

    #[test]
    fn growth_after_a_scale_in_waits_only_without_an_underload_alert() {
        // Shrunk at 400 (last growth at 0); the overload returns at 410.
        let st = BurstState {
            target: 2,
            changed_at: Some(t(400)),
            last_firing_at: Some(t(0)),
            firing: false,
            grown_at: Some(t(0)),
        };
        let banded = Load {
            overloaded: true,
            underloaded: Some(false),
        };
        assert_eq!(
            next(rules(), banded, &st, Guard::NONE, t(410)).state.target,
            4
        );
        // Without one, as before: scale_up_every after the last change.
        assert_eq!(
            next(rules(), OVER, &st, Guard::NONE, t(410)).state.target,
            2
        );
        assert_eq!(
            next(rules(), OVER, &st, Guard::NONE, t(460)).state.target,
            4
        );
        // A state persisted before grown_at existed paces from its last change.
        let old = BurstState {
            grown_at: None,
            ..st
        };
        assert_eq!(
            next(rules(), banded, &old, Guard::NONE, t(410))
                .state
                .target,
            2
        );
    }

    #[test]
    fn underload_during_the_cooldown_waits_for_it() {
        let over = Load {
            overloaded: true,
            underloaded: Some(false),
        };
        let under = Load {
            overloaded: false,
            underloaded: Some(true),
        };
        let a = next(rules(), over, &BurstState::default(), Guard::NONE, t(0));
        let b = next(rules(), under, &a.state, Guard::NONE, t(10));
        assert_eq!(b.state.target, 2, "cooldown runs from 10");
        assert_eq!(b.held, None, "not held: waiting for the cooldown");
        assert_eq!(b.recheck_after, Some(Duration::from_secs(300)));
        let c = next(rules(), under, &b.state, Guard::NONE, t(310));
        assert_eq!(c.state.target, 0);
        assert!(c.reason.unwrap().contains("underload alert firing"));
        // Held: nothing to recheck, the underload alert's webhook wakes the service.
        let quiet = Load {
            overloaded: false,
            underloaded: Some(false),
        };
        let d = next(rules(), quiet, &b.state, Guard::NONE, t(400));
        assert_eq!((d.state.target, d.recheck_after), (2, None));
        assert!(d.held.unwrap().contains("holding 2 unit(s)"));
    }

    #[test]
    fn lowered_cap_shrinks_at_once() {
        let st = BurstState {
            target: 6,
            changed_at: Some(t(0)),
            last_firing_at: Some(t(0)),
            firing: true,
            grown_at: Some(t(0)),
        };
        let guard = Guard {
            max_units: 4,
            budget_spent: false,
        };
        assert_eq!(next(rules(), OVER, &st, guard, t(1)).state.target, 4);
    }

    #[test]
    fn renders_units() {
        let c = ContainerConfig {
            name: "api-burst".into(),
            image: "img".into(),
            ports: vec!["127.0.0.1:{port}:80".into()],
            env: vec!["UNIT={index}".into()],
            command: Some(vec!["serve".into(), "--port={port}".into()]),
            health_url: Some("http://127.0.0.1:{port}/".into()),
            recreate: Default::default(),
        };
        let r = render_container(&c, 3, 18100);
        assert_eq!(r.name, "api-burst-3");
        assert_eq!(r.ports, vec!["127.0.0.1:18102:80"]);
        assert_eq!(r.env, vec!["UNIT=3"]);
        assert_eq!(r.command.unwrap()[1], "--port=18102");
        assert_eq!(r.health_url.unwrap(), "http://127.0.0.1:18102/");
        assert_eq!(
            render_address("127.0.0.1:{port}", 2, 18100, None).map(|e| (e.host, e.port)),
            Ok(("127.0.0.1".into(), 18101))
        );
        assert_eq!(
            render_address("{private_ip}:8080", 1, 0, Some("10.0.0.7")).map(|e| e.to_string()),
            Ok("10.0.0.7:8080".into())
        );
        assert!(render_address("{private_ip}:8080", 1, 0, None).is_err());
        assert!(render_address("127.0.0.1", 1, 0, None).is_err());
        assert!(render_address("bad host:80", 1, 0, None).is_err());
        assert!(render_address("h:{port}", 1, 0, None).is_err(), "port 0");
    }

    #[test]
    fn usage_counts_instance_hours_today() {
        let mut u = Usage::default();
        let day_start = DateTime::from_timestamp(1_800_057_600, 0).unwrap(); // a UTC midnight
        assert_eq!(day_start.time(), chrono::NaiveTime::MIN);
        let at = |min: i64| day_start + chrono::Duration::minutes(min);
        let run = vec![
            ("instance i-1".to_string(), UnitKind::Instance),
            ("container c-1".to_string(), UnitKind::Container),
        ];
        assert!(u.observe(&run, at(60)));
        assert!(!u.observe(&run, at(90)), "nothing new");
        assert!((u.instance_hours_today(at(150)) - 1.5).abs() < 1e-9);
        assert!((u.hourly_estimate(0.1, 0.01) - 0.11).abs() < 1e-9);
        assert_eq!(u.instances(), 1);
        // The instance stops at 3 h; its 2 h stay counted.
        assert!(u.observe(&run[1..], at(180)));
        assert!((u.instance_hours_today(at(600)) - 2.0).abs() < 1e-9);
        // Next day starts from zero.
        let tomorrow = day_start + chrono::Duration::hours(25);
        assert_eq!(u.instance_hours_today(tomorrow), 0.0);
        // A run across midnight counts from midnight.
        let mut v = Usage::default();
        v.observe(&run[..1], day_start - chrono::Duration::hours(2));
        assert!((v.instance_hours_today(at(30)) - 0.5).abs() < 1e-9);
    }
}
