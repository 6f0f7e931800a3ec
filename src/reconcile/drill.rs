//! Drills: rehearse a failover while on-prem keeps serving. The real failover steps run (start,
//! wait healthy, open the cloud servers: as `backup` servers they take no traffic while
//! on-prem is up), HAProxy's own health check must then report every cloud server UP, and the
//! service fails back in the normal order (drain, maint, stop). The report says each step's
//! duration and `time_to_ready`: what a failover would have taken.
//!
//! A drill runs in the service's reconciler task, between passes, so nothing else acts on the
//! service meanwhile; a real failover alert during it wins at once: the drill ends where it
//! stands and the next pass fails over from there.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::{self as reconcile, Context, ServiceRuntime};
use crate::cluster::Cluster;
use crate::desired::Mode;
use crate::metrics::ServiceLabels;
use crate::pass::{self, Goal};
use crate::plan::{self, OpState, Step};
use crate::store::{DrillReport, DrillStep, ServiceState, Store};
use crate::world::StepDone;

/// Why a drill may not run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The service is busy with the real thing (in cloud, an alert firing, paused, not the
    /// leader): try again later.
    Busy(String),
    /// The drill itself would take live traffic (a cloud server that is not `backup`).
    Unsafe(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Busy(why) | Refusal::Unsafe(why) => f.write_str(why),
        }
    }
}

/// Why a drill may not start, from the persisted state, the alerts' decision, the cloud
/// servers that are not `backup` servers, and why this node may not act (a follower). Pure.
pub fn refusal(
    state: &ServiceState,
    desired: &pass::Desired,
    not_backup: &[String],
    fenced: Option<String>,
) -> Option<Refusal> {
    let busy = |why: String| Some(Refusal::Busy(why));
    if state.mode != Mode::Onprem {
        return busy("the service is not in on-prem mode".into());
    }
    if desired.effective.mode != Mode::Onprem {
        return busy(format!(
            "the service is to fail over: {}",
            desired.decision.reason
        ));
    }
    if !desired.decision.failover_alerts.is_empty() {
        return busy(format!(
            "a failover alert is firing: {}",
            desired.decision.failover_alerts.join(", ")
        ));
    }
    if desired.effective.paused || state.override_.is_some() {
        return busy("an override is set (resume first)".into());
    }
    if let Some(why) = fenced {
        return busy(format!("this node may not act: {why}"));
    }
    if !not_backup.is_empty() {
        return Some(Refusal::Unsafe(format!(
            "opening it would take live traffic: {}; declare the cloud servers `backup` in haproxy.cfg",
            not_backup.join("; ")
        )));
    }
    None
}

/// Checks whether a drill may start on `svc` now (asks HAProxy for the `backup` flags), from
/// the store and this node's place in the cluster.
pub async fn check(
    svc: &ServiceRuntime,
    store: &Store,
    cluster: Option<&Cluster>,
) -> Option<Refusal> {
    let state = store
        .service(&svc.name)
        .unwrap_or_else(|| ServiceState::new(Utc::now()));
    let desired = pass::desired(
        &svc.config,
        &state,
        &store.firing(),
        svc.signals(),
        Utc::now(),
    );
    let not_backup = svc.world.not_backup(&svc.config).await;
    refusal(
        &state,
        &desired,
        &not_backup,
        cluster.and_then(Cluster::why_not),
    )
}

/// Runs a drill on `svc` and records it (state, status, metrics, events). A refused drill is
/// recorded when it was `asked` for, or is unsafe (a config problem); a scheduled drill on a
/// busy service waits for a quiet pass, said at debug.
pub async fn run(svc: &ServiceRuntime, ctx: &Context, asked: bool) -> DrillReport {
    let t0 = Instant::now();
    let mut report = DrillReport {
        started_at: Utc::now(),
        finished_at: None,
        ok: None,
        time_to_ready_seconds: None,
        steps: Vec::new(),
        message: "running".into(),
    };
    if let Some(r) = check(svc, &ctx.store, ctx.cluster.as_ref()).await {
        report.ok = Some(false);
        report.finished_at = Some(Utc::now());
        report.message = format!("refused: {r}");
        if asked || matches!(r, Refusal::Unsafe(_)) {
            record(svc, ctx, &report).await;
        } else {
            tracing::debug!(service = %svc.name, "scheduled drill not started: {r}");
        }
        return report;
    }
    ctx.status.set_drill(&svc.name, Some(report.clone()));
    event(
        svc,
        ctx,
        "started: the failover steps run while on-prem serves".into(),
    )
    .await;
    // While on-prem serves, the goal stays on-prem (with the burst count it has now): a
    // failover alert, an override or a burst step changes it, which ends the drill.
    let goal = Goal {
        mode: Mode::Onprem,
        burst: reconcile::desired_now(svc, ctx).goal().burst,
    };
    let outcome = match converge(svc, ctx, Mode::Cloud, goal, &mut report).await {
        Err(why) => Err(why),
        Ok(()) => match all_up(svc, ctx, goal).await {
            Ok(()) => {
                report.time_to_ready_seconds = Some(t0.elapsed().as_secs_f64());
                Ok(())
            }
            Err(why) => Err(why),
        },
    };
    // Back in the normal order, unless a real failover took over: then the next pass goes on
    // from where the drill stands.
    let interrupted = superseded(svc, ctx, goal);
    let back = if interrupted {
        Err("interrupted: the service must fail over for real; the next pass does it from where the drill stands".to_string())
    } else {
        converge(svc, ctx, Mode::Onprem, goal, &mut report).await
    };
    report.ok = Some(outcome.is_ok() && back.is_ok());
    report.finished_at = Some(Utc::now());
    report.message = match (outcome, back) {
        (Ok(()), Ok(())) => format!(
            "ok: every cloud server UP by HAProxy's check {:.2} s after the start; failed back",
            report.time_to_ready_seconds.unwrap_or_default()
        ),
        (Err(why), Ok(())) => format!("{why}; failed back"),
        (Ok(()), Err(why)) => format!("ready, then failing back: {why}"),
        (Err(a), Err(b)) => format!("{a}; then {b}"),
    };
    record(svc, ctx, &report).await;
    report
}

/// Whether the drill must stop: the service's goal is no longer on-prem (a failover alert, an
/// override).
fn superseded(svc: &ServiceRuntime, ctx: &Context, goal: Goal) -> bool {
    let d = reconcile::desired_now(svc, ctx);
    d.effective.mode != goal.mode || d.effective.paused
}

/// How many plans a drill runs towards one mode: a cold standby takes two (its instances
/// first; their Docker engine can only be observed once they run).
const MAX_PLANS: usize = 4;

/// Observes, plans towards `mode` and runs the plan, again until the world is there (as the
/// reconciler's passes would). Errors: a step failed or was interrupted, or the world is
/// still not there after [`MAX_PLANS`] plans.
async fn converge(
    svc: &ServiceRuntime,
    ctx: &Context,
    mode: Mode,
    goal: Goal,
    report: &mut DrillReport,
) -> Result<(), String> {
    for _ in 0..MAX_PLANS {
        let (observed, _) = svc.world.observe(&svc.name, &svc.config).await;
        let p = plan::plan(mode, &observed, svc.config.standby);
        if p.steps.is_empty() {
            return if p.converged() {
                Ok(())
            } else {
                Err(format!(
                    "cannot reach {} mode: {}",
                    mode.as_str(),
                    p.blocked
                        .iter()
                        .chain(&p.waiting)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                ))
            };
        }
        steps(svc, ctx, &p.steps, goal, report).await?;
    }
    Err(format!(
        "not in {} mode after {MAX_PLANS} plans",
        mode.as_str()
    ))
}

/// Runs `list` as the reconciler runs a plan (each step recorded before it runs, raced
/// against the lease in a cluster), stopping at the first that fails or when a real failover
/// must take over. Errors: why it stopped.
async fn steps(
    svc: &ServiceRuntime,
    ctx: &Context,
    list: &[Step],
    goal: Goal,
    report: &mut DrillReport,
) -> Result<(), String> {
    for step in list {
        if superseded(svc, ctx, goal) {
            return Err(format!(
                "interrupted before {step}: the service must fail over for real"
            ));
        }
        let mut state = reconcile::state_of(svc, ctx);
        state.step_in_flight = Some(step.to_string());
        if let Some(why) = reconcile::persist_state(svc, ctx, state).await {
            return Err(format!("not running {step}: {why}"));
        }
        let started = Instant::now();
        let result = reconcile::run_one(svc, ctx, step, false, goal).await;
        let elapsed = started.elapsed();
        let (outcome, error) = reconcile::outcome_of(&result);
        reconcile::record_step_outcome(svc, ctx, step, outcome, elapsed, error.clone()).await;
        report.steps.push(DrillStep {
            step: step.to_string(),
            outcome: outcome.to_string(),
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            error: error.clone(),
        });
        ctx.status.set_drill(&svc.name, Some(report.clone()));
        match result {
            Some(Ok(StepDone::Done | StepDone::DrainTimedOut)) => {}
            Some(Ok(StepDone::Superseded)) => {
                return Err(format!(
                    "interrupted during {step}: the service must fail over for real"
                ))
            }
            None => return Err(format!("{step}: abandoned, the lease could lapse")),
            Some(Err(e)) => return Err(format!("{step} failed: {e}")),
        }
    }
    let mut state = reconcile::state_of(svc, ctx);
    state.step_in_flight = None;
    match reconcile::persist_state(svc, ctx, state).await {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Polls until HAProxy's own health check reports every cloud server UP on every HAProxy
/// (`show stat` status `UP`: checked since it was opened, not assumed), for at most
/// `timeouts.verify`. Errors: which servers were not UP.
async fn all_up(svc: &ServiceRuntime, ctx: &Context, goal: Goal) -> Result<(), String> {
    let limit = svc.config.timeouts.verify;
    let deadline = Instant::now() + limit;
    loop {
        let checked = svc.world.checked(&svc.config).await;
        let not_up: Vec<String> = checked
            .iter()
            .filter(|(_, op)| *op != Some(OpState::Up))
            .map(|(t, _)| format!("{}/{} on {}", t.backend, t.server, t.api))
            .collect();
        if not_up.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not UP by HAProxy's own check within {}: {}: a failover would open servers that take no traffic",
                humantime::format_duration(limit),
                not_up.join(", ")
            ));
        }
        if superseded(svc, ctx, goal) {
            return Err("interrupted while waiting for HAProxy's check".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keeps the report: in the service's state (so a restart and the cluster know it), status,
/// metrics, an event and a log line.
async fn record(svc: &ServiceRuntime, ctx: &Context, report: &DrillReport) {
    let mut state = reconcile::state_of(svc, ctx);
    state.last_drill = Some(report.clone());
    if let Some(why) = reconcile::persist_state(svc, ctx, state).await {
        warn!(service = %svc.name, "drill report not kept in the shared state: {why}");
    }
    ctx.status.set_drill(&svc.name, Some(report.clone()));
    record_metrics(ctx, &svc.name, report);
    if report.ok == Some(true) {
        info!(service = %svc.name, "drill: {}", report.message);
    } else {
        warn!(service = %svc.name, "drill: {}", report.message);
    }
    event(svc, ctx, report.message.clone()).await;
}

/// The drill metrics from a report (also at start, from the persisted last drill).
pub fn record_metrics(ctx: &Context, service: &str, report: &DrillReport) {
    let labels = ServiceLabels {
        service: service.to_string(),
    };
    let m = &ctx.metrics.readiness;
    if let (Some(true), Some(at)) = (report.ok, report.finished_at) {
        m.drill_last_success
            .get_or_create(&labels)
            .set(at.timestamp());
    }
    if let Some(t) = report.time_to_ready_seconds {
        m.drill_time_to_ready.get_or_create(&labels).set(t);
    }
}

async fn event(svc: &ServiceRuntime, ctx: &Context, message: String) {
    if let Err(e) = ctx.store.event(&svc.name, "drill", message, vec![]).await {
        warn!(service = %svc.name, error = %e, "could not record the drill event");
    }
}

/// Whether a scheduled drill is due: `every` since the last one started, or since `since`
/// (the responder's start) when there has been none.
pub fn due(
    every: Option<Duration>,
    last: Option<&DrillReport>,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    let Some(every) = every else {
        return false;
    };
    let from = last.map_or(since, |l| l.started_at);
    (now - from).to_std().is_ok_and(|d| d >= every)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{Decision, Effective};

    fn desired(mode: Mode, alerts: &[&str], paused: bool) -> pass::Desired {
        pass::Desired {
            decision: Decision {
                mode,
                reason: String::new(),
                failover_alerts: alerts.iter().map(|a| a.to_string()).collect(),
                failback_alerts: Vec::new(),
            },
            effective: Effective {
                mode,
                held: None,
                paused,
                capped: false,
                recheck_after: None,
            },
            scale: None,
        }
    }

    #[test]
    fn refused_unless_on_prem_quiet_acting_and_every_cloud_server_is_backup() {
        let now = Utc::now();
        let onprem = ServiceState::new(now);
        let cloud = ServiceState {
            mode: Mode::Cloud,
            ..ServiceState::new(now)
        };
        let quiet = desired(Mode::Onprem, &[], false);
        assert_eq!(refusal(&onprem, &quiet, &[], None), None);
        let busy = |r: Option<Refusal>| matches!(r, Some(Refusal::Busy(_)));
        assert!(busy(refusal(&cloud, &quiet, &[], None)));
        let firing = desired(Mode::Onprem, &["onprem_down"], false);
        assert!(busy(refusal(&onprem, &firing, &[], None)));
        assert!(busy(refusal(
            &onprem,
            &desired(Mode::Onprem, &[], true),
            &[],
            None
        )));
        assert!(busy(refusal(&onprem, &quiet, &[], Some("follower".into()))));
        let unsafe_ = refusal(
            &onprem,
            &quiet,
            &["api/cloud1 on a is not a backup server".into()],
            None,
        );
        assert!(
            matches!(&unsafe_, Some(Refusal::Unsafe(m)) if m.contains("live traffic") && m.contains("api/cloud1")),
            "{unsafe_:?}"
        );
    }

    #[test]
    fn a_scheduled_drill_is_due_every_period_from_the_last_start() {
        let t = Utc::now();
        let at = |h: i64| t + chrono::Duration::hours(h);
        let week = Some(Duration::from_secs(168 * 3600));
        assert!(!due(None, None, t, at(10_000)), "not scheduled");
        assert!(!due(week, None, t, at(167)));
        assert!(due(week, None, t, at(168)), "a week after start");
        let last = DrillReport {
            started_at: at(200),
            finished_at: Some(at(200)),
            ok: Some(true),
            time_to_ready_seconds: Some(1.0),
            steps: Vec::new(),
            message: String::new(),
        };
        assert!(!due(week, Some(&last), t, at(367)));
        assert!(due(week, Some(&last), t, at(368)));
    }
}
