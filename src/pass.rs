//! One reconcile pass's deciding, pure: the persisted state, the alerts firing now, what was
//! observed and the time in; the desired mode, the burst count, the next state to persist and
//! the plan out. No I/O and one clock reading (passed in), so the reconciler, the plan preview
//! (`POST /api/v1/plan`) and `--dry-run` share one decision and cannot drift apart, and every
//! case is a table test. Its two halves, [`decide`] (the mode) and [`finish`] (what observing
//! feeds: units running, the burst count, the plan), let the reconciler record a mode change
//! before it observes.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::alert::Labels;
use crate::burst::{self, Scale, UnitKind, BURST_KEY};
use crate::config::{BurstConfig, ServiceConfig};
use crate::desired::{self, Current, Damping, Decision, Effective, FiringAlert, Mode, Rules};
use crate::fastpath;
use crate::matcher::matches_all;
use crate::plan::{self, ContainerState, InstanceObs, InstanceState, Observed, Plan, UnitObs};
use crate::store::ServiceState;

/// What a pass drives towards (its goal): the mode, and the burst count if the service bursts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Goal {
    pub mode: Mode,
    pub burst: Option<u32>,
}

/// The alerts' decision, after overrides and damping, and the burst count.
#[derive(Debug, Clone)]
pub struct Desired {
    pub decision: Decision,
    pub effective: Effective,
    pub scale: Option<Scale>,
}

impl Desired {
    /// What steps are planned towards. Paused: what following the alerts would do (shown,
    /// never executed).
    pub fn goal(&self) -> Goal {
        Goal {
            mode: if self.effective.paused {
                self.decision.mode
            } else {
                self.effective.mode
            },
            burst: self.scale.as_ref().map(|s| s.state.target),
        }
    }
}

/// What the responder observes of on-prem itself, beside the alerts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals {
    /// Since when the on-prem probe has answered continuously.
    pub onprem_healthy_since: Option<DateTime<Utc>>,
    /// What HAProxy's own checks say of on-prem (the fast path's poller; default without one).
    pub fast_path: fastpath::View,
}

/// Everything a pass decides from.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The persisted state before this pass.
    pub state: &'a ServiceState,
    /// Every alert firing now (those of other services are ignored by the matchers).
    pub firing: &'a [FiringAlert],
    pub observed: &'a Observed,
    /// Burst units, when the service bursts.
    pub units: &'a [UnitObs],
    pub signals: Signals,
    pub now: DateTime<Utc>,
}

/// What one pass decided.
#[derive(Debug, Clone)]
pub struct Pass {
    pub desired: Desired,
    /// The mode change this pass makes: (from, to).
    pub transition: Option<(Mode, Mode)>,
    /// The state to persist (mode, transitions, burst count, usage); persisted before any
    /// step runs.
    pub next_state: ServiceState,
    /// The mode's steps first, then the burst units' (from `burst_from`).
    pub plan: Plan,
    pub burst_from: usize,
    /// The burst units as planned (an instance unit the pool lacks is explained as unknown).
    pub units: Vec<UnitObs>,
    /// When holding or the burst count will change by itself: look again then.
    pub recheck_after: Option<Duration>,
}

/// The desired mode and burst count for `state` with these alerts at `now`.
pub fn desired(
    config: &ServiceConfig,
    state: &ServiceState,
    firing: &[FiringAlert],
    signals: Signals,
    now: DateTime<Utc>,
) -> Desired {
    let d = decide(config, state, firing, signals, now);
    let scale = config.burst.as_ref().map(|b| {
        let guard = burst::guard(&config.cost, b.ec2.is_some(), &state.usage, now);
        burst::next(b.into(), load(b, firing), &state.burst, guard, now)
    });
    Desired {
        decision: d.decision,
        effective: d.effective,
        scale,
    }
}

/// The mode part of a pass: the alerts' decision after overrides and damping, and the state
/// with the mode moved. Decided (and recorded) before the world is observed, so a slow backend
/// never delays recording a failover nor the hold-down that starts with it.
#[derive(Debug, Clone)]
pub struct Decided {
    pub decision: Decision,
    pub effective: Effective,
    /// The mode change: (from, to).
    pub transition: Option<(Mode, Mode)>,
    /// `state` with the mode, since and transitions moved, and the fast path's episode.
    pub next_state: ServiceState,
    /// What this pass did to the fast path's episode.
    pub fast_path: Option<fastpath::Change>,
    /// When the fast path's confirmation window ends: look again then.
    pub recheck_after: Option<Duration>,
}

/// Decides the mode for `state` with these alerts and signals at `now`: the alerts' decision,
/// the fast path applied to it, then overrides and damping.
pub fn decide(
    config: &ServiceConfig,
    state: &ServiceState,
    firing: &[FiringAlert],
    signals: Signals,
    now: DateTime<Utc>,
) -> Decided {
    let fast = fastpath::apply(
        config.fast_path.as_ref(),
        state.mode,
        state.fast_path.as_ref(),
        desired::decide(rules(config), firing),
        &signals.fast_path,
        now,
    );
    let decision = fast.decision;
    let onprem_healthy_since = signals.onprem_healthy_since;
    let effective = desired::effective(
        &decision,
        Current {
            mode: state.mode,
            since: state.since,
            transitions: &state.transitions,
            override_: state.override_,
            onprem_healthy_since,
        },
        damping(config),
        now,
    );
    // An override keeping the service on-prem (paused there, `ctl failback`) wins over the
    // fast path as over the alert: no episode is opened or kept then, so lifting the override
    // later does not fail over on a DOWN long gone.
    let (episode, change) = if effective.mode == Mode::Cloud {
        (fast.episode, fast.change)
    } else if matches!(fast.change, Some(fastpath::Change::Unconfirmed)) {
        (None, fast.change)
    } else if state.fast_path.is_some() && fast.episode.is_some() {
        (None, Some(fastpath::Change::Overridden))
    } else {
        (None, None)
    };
    let mut next = state.clone();
    next.fast_path = episode;
    let transition = (effective.mode != next.mode).then_some((next.mode, effective.mode));
    if transition.is_some() {
        next.mode = effective.mode;
        next.since = now;
        let hour_ago = now - chrono::Duration::hours(1);
        next.transitions.retain(|t| *t > hour_ago);
        next.transitions.push(now);
    }
    Decided {
        decision,
        effective,
        transition,
        next_state: next,
        fast_path: change,
        recheck_after: fast.recheck_after,
    }
}

/// One whole pass on a snapshot: [`decide`], then [`finish`] with what was observed. The plan
/// preview runs this; the reconciler runs the two halves with the observation between them.
pub fn pass(config: &ServiceConfig, input: Input<'_>) -> Pass {
    let decided = decide(config, input.state, input.firing, input.signals, input.now);
    finish(config, decided, &input)
}

/// The rest of a pass once the world is observed: the units running (for the cost guard), the
/// burst count, and the plan. `input.state` is not read: `decided` carries the state.
pub fn finish(config: &ServiceConfig, decided: Decided, input: &Input<'_>) -> Pass {
    let now = input.now;
    let mut next = decided.next_state;
    // The units running now feed the cost guard the burst count is decided under.
    next.usage
        .observe(&running_units(input.observed, input.units), now);
    let scale = config.burst.as_ref().map(|b| {
        let guard = burst::guard(&config.cost, b.ec2.is_some(), &next.usage, now);
        burst::next(b.into(), load(b, input.firing), &next.burst, guard, now)
    });
    if let Some(sc) = &scale {
        next.burst = sc.state.clone();
    }
    let desired = Desired {
        decision: decided.decision,
        effective: decided.effective,
        scale,
    };
    let goal = desired.goal();
    let mut plan = plan::plan(goal.mode, input.observed, config.standby);
    let burst_from = plan.steps.len();
    let mut units = input.units.to_vec();
    if let (Some(b), Some(n)) = (&config.burst, goal.burst) {
        explain_missing_instances(b, n, &mut units);
        plan.extend(plan::plan_burst(n, &units, b.haproxy.weight));
    }
    let recheck_after = [
        desired.effective.recheck_after,
        desired.scale.as_ref().and_then(|s| s.recheck_after),
        decided.recheck_after,
    ]
    .into_iter()
    .flatten()
    .min();
    Pass {
        desired,
        transition: decided.transition,
        next_state: next,
        plan,
        burst_from,
        units,
        recheck_after,
    }
}

/// The service's failover and failback matchers.
pub fn rules(config: &ServiceConfig) -> Rules<'_> {
    Rules {
        failover_on: &config.failover_matchers,
        failback_on: &config.failback_matchers,
    }
}

/// The damping rules from the config.
pub fn damping(config: &ServiceConfig) -> Damping {
    Damping {
        hold_down: config.hold_down,
        healthy_for: config
            .onprem_health_url
            .as_ref()
            .map(|_| config.healthy_for),
        max_transitions_per_hour: config.max_transitions_per_hour,
    }
}

/// Whether an alert with these labels is the burst's overload alert.
pub fn overload_alert(b: &BurstConfig, labels: &Labels) -> bool {
    matches_all(&b.matchers, labels)
}

/// Whether an alert with these labels is the burst's underload alert (`scale_in_on`).
pub fn underload_alert(b: &BurstConfig, labels: &Labels) -> bool {
    b.scale_in_matchers
        .as_ref()
        .is_some_and(|m| matches_all(m, labels))
}

/// What the firing alerts say about load now.
pub fn load(b: &BurstConfig, firing: &[FiringAlert]) -> burst::Load {
    burst::Load {
        overloaded: firing.iter().any(|a| overload_alert(b, &a.labels)),
        underloaded: b
            .scale_in_matchers
            .as_ref()
            .map(|_| firing.iter().any(|a| underload_alert(b, &a.labels))),
    }
}

/// Every cloud unit running now, named for the usage record (burst ones prefixed).
fn running_units(observed: &Observed, units: &[UnitObs]) -> Vec<(String, UnitKind)> {
    let mut out = Vec::new();
    let mut add = |prefix: &str, o: &Observed| {
        for i in &o.instances {
            if matches!(i.state, InstanceState::Running | InstanceState::Pending) {
                out.push((format!("{prefix}instance {}", i.id), UnitKind::Instance));
            }
        }
        for c in &o.containers {
            if matches!(c.state, ContainerState::Running { .. }) {
                out.push((format!("{prefix}container {}", c.name), UnitKind::Container));
            }
        }
    };
    add("", observed);
    for u in units {
        add(BURST_KEY, &u.observed);
    }
    out
}

/// The reason an instance unit the pool lacks is shown with (an EC2 error is shown otherwise).
const POOL_SHORT: &str = "the pool has only ";

/// An instance unit the pool has no instance for cannot come up: say so, rather than wait
/// for an address that will never be known. Idempotent: units already explained (the status
/// board keeps them so, and the plan preview plans on them again) are explained anew.
fn explain_missing_instances(b: &BurstConfig, wanted: u32, units: &mut [UnitObs]) {
    if b.ec2.is_none() {
        return;
    }
    for u in units.iter_mut() {
        u.observed.instances.retain(|i| {
            !matches!(&i.state, InstanceState::Unknown { reason } if reason.starts_with(POOL_SHORT))
        });
    }
    let pool = units
        .iter()
        .filter(|u| !u.observed.instances.is_empty())
        .count();
    for u in units.iter_mut() {
        if u.index <= wanted && u.observed.instances.is_empty() {
            u.observed.instances.push(InstanceObs {
                id: format!("for burst unit {}", u.index),
                state: InstanceState::Unknown {
                    reason: format!("{POOL_SHORT}{pool} instance(s)"),
                },
                private_ip: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Format};
    use crate::desired::Override;
    use crate::plan::{ServerObs, ServerRef, ServerState, Step};
    use chrono::TimeZone;

    fn config(extra: &str) -> ServiceConfig {
        let yaml = format!(
            r#"
auth: {{insecure_no_auth: true}}
services:
  api:
    failover_on: ['alertname="down"']
    failback_on: ['alertname="up"']
    hold_down: 10m
    haproxy: {{runtime_api: ['/s'], backend: be, cloud_servers: [cloud1]}}
{extra}
"#
        );
        let c = Config::from_str(&yaml, Format::Yaml).unwrap_or_else(|e| panic!("{e}"));
        c.services.get("api").cloned().expect("service api")
    }

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0)
            .single()
            .expect("time")
    }

    fn alert(name: &str, at: DateTime<Utc>) -> FiringAlert {
        FiringAlert {
            fingerprint: name.into(),
            labels: [("alertname".to_string(), name.to_string())].into(),
            starts_at: at,
        }
    }

    fn closed_server() -> Observed {
        Observed {
            servers: vec![ServerObs {
                target: ServerRef {
                    api: "/s".into(),
                    backend: "be".into(),
                    server: "cloud1".into(),
                },
                state: ServerState::Maint,
                addr: None,
                weight: None,
                op_state: None,
                blocked: None,
                refuses_changes: false,
            }],
            ..Observed::default()
        }
    }

    fn run(
        cfg: &ServiceConfig,
        state: &ServiceState,
        firing: &[FiringAlert],
        now: DateTime<Utc>,
    ) -> Pass {
        pass(
            cfg,
            Input {
                state,
                firing,
                observed: &closed_server(),
                units: &[],
                signals: Signals::default(),
                now,
            },
        )
    }

    #[test]
    fn one_clock_reading_moves_the_state_and_plans() {
        let cfg = config("");
        let state = ServiceState::new(t(0));
        // (firing, override, want mode, want a transition, want steps, why)
        type Case<'a> = (&'a [&'a str], Option<Override>, Mode, bool, bool, &'a str);
        let cases: &[Case<'_>] = &[
            (
                &[],
                None,
                Mode::Onprem,
                false,
                false,
                "nothing firing: at rest",
            ),
            (
                &["down"],
                None,
                Mode::Cloud,
                true,
                true,
                "failover alert: cloud at once",
            ),
            (
                &["other"],
                None,
                Mode::Onprem,
                false,
                false,
                "another alert: not ours",
            ),
            (
                &["down"],
                Some(Override::Paused),
                Mode::Onprem,
                false,
                true,
                "paused: planned (shown), the mode held",
            ),
            (
                &["down"],
                Some(Override::Failback),
                Mode::Onprem,
                false,
                false,
                "forced failback wins over the alert",
            ),
        ];
        for (firing, ov, mode, moved, steps, why) in cases {
            let now = t(100);
            let firing: Vec<FiringAlert> = firing.iter().map(|n| alert(n, t(50))).collect();
            let st = ServiceState {
                override_: *ov,
                ..state.clone()
            };
            let p = run(&cfg, &st, &firing, now);
            assert_eq!(p.next_state.mode, *mode, "{why}");
            assert_eq!(p.transition.is_some(), *moved, "{why}");
            assert_eq!(!p.plan.steps.is_empty(), *steps, "{why}: {:?}", p.plan);
            if *moved {
                assert_eq!(p.next_state.since, now, "{why}");
                assert_eq!(p.next_state.transitions, vec![now], "{why}");
            } else {
                let moved = |s: &ServiceState| (s.mode, s.since, s.transitions.clone());
                assert_eq!(moved(&p.next_state), moved(&st), "{why}: the mode stays");
            }
        }
    }

    #[test]
    fn failback_waits_for_the_hold_down_and_says_when_to_look_again() {
        let cfg = config("");
        let mut state = ServiceState::new(t(0));
        state.mode = Mode::Cloud;
        // In cloud since t(0); the alert resolved; hold-down is 10 minutes.
        let p = run(&cfg, &state, &[], t(60));
        assert_eq!(p.next_state.mode, Mode::Cloud);
        assert!(p.desired.effective.held.is_some());
        assert_eq!(p.recheck_after, Some(Duration::from_secs(540)));
        let p = run(&cfg, &state, &[], t(600));
        assert_eq!(p.transition, Some((Mode::Cloud, Mode::Onprem)));
    }

    #[test]
    fn an_overload_sets_the_burst_count_and_plans_after_the_mode() {
        let cfg = config(
            "    docker: {host: 'unix:///nonexistent.sock', containers: [{name: c, image: img}]}\n    burst:\n      on: ['alertname=\"overloaded\"']\n      min: 2\n      max: 4\n      address: '127.0.0.1:{port}'\n      port_base: 9000\n      haproxy: {server_prefix: b}\n      container: {name: u, image: img, ports: ['127.0.0.1:{port}:80']}\n",
        );
        let state = ServiceState::new(t(0));
        let firing = [alert("overloaded", t(50))];
        let p = run(&cfg, &state, &firing, t(100));
        assert_eq!(p.desired.goal().burst, Some(2));
        assert_eq!(p.next_state.burst.target, 2);
        assert_eq!(
            p.next_state.mode,
            Mode::Onprem,
            "bursting is not failing over"
        );
        // No units observed yet: nothing to plan for them, and nothing before burst_from.
        assert_eq!(p.burst_from, 0);
        let quiet = run(&cfg, &state, &[], t(100));
        assert_eq!(quiet.desired.goal().burst, Some(0));
        assert!(quiet
            .plan
            .steps
            .iter()
            .all(|s| !matches!(s, Step::StartContainer { .. })));
    }

    /// The fast path through whole passes: it fails over with the alerts quiet, persists its
    /// episode, keeps the pass coming back when the confirmation window ends, and its
    /// unconfirmed failback still waits for the hold-down.
    #[test]
    fn a_fast_path_episode_through_passes() {
        let cfg =
            config("    fast_path: {onprem_servers: [onprem], down_for: 1s, confirm_within: 5m}\n");
        let down = Signals {
            fast_path: fastpath::View {
                down_since: Some(t(0)),
                up: false,
            },
            ..Signals::default()
        };
        let up = Signals {
            fast_path: fastpath::View {
                down_since: None,
                up: true,
            },
            ..Signals::default()
        };
        let at = |state: &ServiceState, signals: Signals, now: DateTime<Utc>| {
            pass(
                &cfg,
                Input {
                    state,
                    firing: &[],
                    observed: &closed_server(),
                    units: &[],
                    signals,
                    now,
                },
            )
        };
        let p = at(&ServiceState::new(t(-100)), down, t(1));
        assert_eq!(p.transition, Some((Mode::Onprem, Mode::Cloud)));
        assert_eq!(p.desired.decision.failover_alerts, Vec::<String>::new());
        assert_eq!(
            p.next_state.fast_path.as_ref().map(|e| e.triggered_at),
            Some(t(1))
        );
        assert!(!p.plan.steps.is_empty(), "failover steps planned");
        // UP again at once: the window holds the cloud, and says when to look again.
        let p = at(&p.next_state, up, t(10));
        assert_eq!(p.next_state.mode, Mode::Cloud);
        assert_eq!(p.recheck_after, Some(Duration::from_secs(291)));
        // Past the window: unconfirmed, the alerts' on-prem... held by the 10m hold-down.
        let p = at(&p.next_state, up, t(302));
        assert_eq!(p.next_state.mode, Mode::Cloud);
        assert_eq!(p.next_state.fast_path, None, "the episode is closed");
        assert!(
            p.desired
                .effective
                .held
                .as_deref()
                .is_some_and(|h| h.contains("hold")),
            "{:?}",
            p.desired.effective
        );
        // After the hold-down: back on-prem.
        let p = at(&p.next_state, up, t(602));
        assert_eq!(p.transition, Some((Mode::Cloud, Mode::Onprem)));

        // Paused on-prem: HAProxy's DOWN opens no episode, so resuming later (on-prem UP by
        // then) does not fail over.
        let paused = ServiceState {
            override_: Some(Override::Paused),
            ..ServiceState::new(t(-100))
        };
        let p = at(&paused, down, t(1));
        assert_eq!(p.next_state.mode, Mode::Onprem);
        assert_eq!((p.next_state.fast_path.clone(), p.transition), (None, None));
        let resumed = ServiceState {
            override_: None,
            ..p.next_state
        };
        assert_eq!(at(&resumed, up, t(5)).next_state.mode, Mode::Onprem);
        // `ctl failback` during an episode closes it (no unconfirmed count either).
        let p = at(&ServiceState::new(t(-100)), down, t(1));
        let forced = ServiceState {
            override_: Some(Override::Failback),
            ..p.next_state
        };
        let p = at(&forced, down, t(2));
        assert_eq!(p.next_state.mode, Mode::Onprem);
        assert_eq!(p.next_state.fast_path, None);
        // Said once (an event), not counted as unconfirmed.
        let d = decide(&cfg, &forced, &[], down, t(2));
        assert_eq!(d.fast_path, Some(fastpath::Change::Overridden));
        assert_eq!(decide(&cfg, &d.next_state, &[], down, t(3)).fast_path, None);
    }
}
