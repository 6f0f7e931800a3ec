//! The reconcile loop: one task per service. Each pass derives the desired mode from the firing
//! alerts, observes Docker and every HAProxy, plans the missing steps and runs them in order.
//!
//! Woken by notifications and by a timer, so drift (a container stopped by hand, a server put
//! in maint, a restarted HAProxy) is repaired and a lost notification does not leave the world
//! wrong. A failed step is retried with exponential backoff; one failing service never blocks
//! another, because each has its own task.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::backend::docker::DockerBackend;
use crate::backend::haproxy::{self, RuntimeApi};
use crate::backend::BackendError;
use crate::burst::{self, UnitKind};
use crate::config::{ReconcileConfig, ServiceConfig};
use crate::desired::{FiringAlert, Mode};
use crate::metrics::{
    ActionLabels, KindLabels, Metrics, ModeLabels, ServiceLabels, ServiceMetrics, StepLabels,
    TargetLabels,
};
use crate::pass::{self, Pass, Target};
use crate::plan::{
    self, ContainerObs, ContainerState, Health, InstanceObs, InstanceState, Observed, ServerObs,
    ServerRef, ServerState, Step, UnitObs,
};
use crate::status::{BurstStatus, CostStatus, StatusBoard, StepRecord};
use crate::store::{ServiceState, Store};

/// Test-only crash points: `FAILOVER_RESPONDER_CRASH_BEFORE=<action>` aborts the process (as
/// kill -9 would) right before the first step with that action (`start_container`,
/// `server_ready`, ...). Used by the crash tests; never set it in production.
pub const CRASH_ENV: &str = "FAILOVER_RESPONDER_CRASH_BEFORE";

/// How often waits re-check the world.
const POLL: Duration = Duration::from_millis(200);
/// Passes in a row that ran steps without converging before the loop slows to the interval.
const MAX_BUSY_PASSES: u32 = 10;

/// Everything one service's task needs. Cheap to clone.
#[derive(Clone)]
pub struct ServiceRuntime {
    pub name: String,
    pub config: Arc<ServiceConfig>,
    pub docker: Option<DockerBackend>,
    pub haproxy: Vec<RuntimeApi>,
    pub ec2: Option<crate::backend::ec2::Ec2Backend>,
    /// The instance pool of EC2 burst units.
    pub burst_ec2: Option<crate::backend::ec2::Ec2Backend>,
    /// Notified by the webhook when a notification concerns this service.
    pub wake: Arc<Notify>,
    /// Since when the on-prem probe has answered without a failure.
    onprem_healthy_since: Arc<std::sync::Mutex<Option<DateTime<Utc>>>>,
    probe: reqwest::Client,
}

impl ServiceRuntime {
    pub fn new(name: &str, config: Arc<ServiceConfig>) -> Self {
        let docker = config.docker.as_ref().map(|d| DockerBackend::new(&d.host));
        let haproxy = config
            .haproxy
            .iter()
            .flat_map(|h| {
                h.runtime_api
                    .iter()
                    // Validated at config load; an invalid one is skipped, never a panic.
                    .filter_map(|a| RuntimeApi::new(a, h.command_timeout).ok())
            })
            .collect();
        let ec2 = config.ec2.clone().map(crate::backend::ec2::Ec2Backend::new);
        let burst_ec2 = config
            .burst
            .as_ref()
            .and_then(|b| b.ec2.clone())
            .map(crate::backend::ec2::Ec2Backend::new);
        ServiceRuntime {
            name: name.to_string(),
            config,
            docker,
            haproxy,
            ec2,
            burst_ec2,
            wake: Arc::new(Notify::new()),
            onprem_healthy_since: Arc::default(),
            probe: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Whether an alert with these labels concerns this service (matches its failover_on,
    /// failback_on or burst.on). Others can never move it.
    pub fn concerns(&self, labels: &crate::alert::Labels) -> bool {
        crate::matcher::matches_all(&self.config.failover_matchers, labels)
            || crate::matcher::matches_all(&self.config.failback_matchers, labels)
            || self.overload_alert(labels)
    }

    fn overload_alert(&self, labels: &crate::alert::Labels) -> bool {
        self.config
            .burst
            .as_ref()
            .is_some_and(|b| pass::overload_alert(b, labels))
    }

    /// Since when the on-prem probe has answered continuously (None: failing or not probed).
    pub fn healthy_since(&self) -> Option<DateTime<Utc>> {
        *self
            .onprem_healthy_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Probes `onprem_health_url` and updates since when it has answered.
    async fn probe_onprem(&self) {
        let Some(url) = &self.config.onprem_health_url else {
            return;
        };
        let ok = self
            .probe
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        let mut since = self
            .onprem_healthy_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match (ok, *since) {
            (true, None) => *since = Some(Utc::now()),
            (false, _) => *since = None,
            (true, Some(_)) => {}
        }
    }
}

/// Handles shared by every service's task.
#[derive(Clone)]
pub struct Context {
    pub store: Store,
    /// What the status API shows; memory only.
    pub status: StatusBoard,
    pub metrics: Arc<Metrics>,
    pub settings: ReconcileConfig,
    /// Plan and record, execute nothing.
    pub dry_run: bool,
}

/// What a pass ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum PassOutcome {
    /// The world is as desired.
    Converged,
    /// Steps ran; look again at once to confirm.
    Progress,
    /// Nothing can be done until a backend answers or a config mismatch is fixed.
    Waiting,
    /// The desired mode changed while steps ran; plan again at once.
    Superseded,
    /// Steps are due but not executed (paused or dry run); look again after `after`.
    Held { after: Duration },
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("step {step:?} failed: {source}")]
    Step {
        step: String,
        #[source]
        source: BackendError,
    },
    /// The decision or step could not be recorded; nothing is executed unrecorded.
    #[error("recording failed: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl PassError {
    fn is_retryable(&self) -> bool {
        match self {
            PassError::Step { source, .. } => source.is_retryable(),
            PassError::Store(_) => true,
        }
    }
}

/// Runs one service's loop until `shutdown` is cancelled.
pub async fn run_service(svc: ServiceRuntime, ctx: Context, shutdown: CancellationToken) {
    let mut failures: u32 = 0;
    let mut busy: u32 = 0;
    // A step still marked in flight means the last run died during it. Say so; the pass below
    // observes the world and redoes only what is missing.
    if let Some(step) = ctx.store.service(&svc.name).and_then(|s| s.step_in_flight) {
        warn!(service = %svc.name, step = %step, "the previous run stopped during a step; resuming");
        let _ = ctx
            .store
            .event(&svc.name, "resume", format!("previous run stopped during step {step:?}; observing and redoing what is missing"), vec![])
            .await;
        finish_interrupted_stop(&svc, &ctx, &step).await;
    }
    loop {
        let pass = async {
            tokio::select! {
                r = reconcile_once(&svc, &ctx) => Some(r),
                () = shutdown.cancelled() => None,
            }
        }
        .instrument(info_span!("reconcile", service = %svc.name))
        .await;
        let Some(result) = pass else { return };
        let wait = match result {
            Ok(PassOutcome::Converged) => {
                failures = 0;
                busy = 0;
                ctx.settings.interval
            }
            Ok(PassOutcome::Progress | PassOutcome::Superseded) => {
                failures = 0;
                busy += 1;
                if busy > MAX_BUSY_PASSES {
                    warn!(service = %svc.name, "steps keep running without converging; slowing down");
                    busy = 0;
                    ctx.settings.interval
                } else {
                    Duration::ZERO
                }
            }
            Ok(PassOutcome::Waiting) => {
                failures = failures.saturating_add(1);
                backoff(&ctx.settings, failures, true).min(ctx.settings.interval)
            }
            Ok(PassOutcome::Held { after }) => {
                failures = 0;
                busy = 0;
                after.min(ctx.settings.interval)
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                warn!(service = %svc.name, error = %e, failures, "reconcile pass failed");
                backoff(&ctx.settings, failures, e.is_retryable())
            }
        };
        ctx.status.set_failures(&svc.name, failures);
        ctx.metrics
            .consecutive_failures
            .get_or_create(&ServiceLabels {
                service: svc.name.clone(),
            })
            .set(i64::from(failures));
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            () = svc.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Finishes a container stop the last run died in. Docker shows a container it is stopping as
/// running (and healthy, if it serves through its grace period) until it exits, so a pass that
/// observed it now could open a server in front of it just before it dies. Stopping it again
/// waits until it has exited; the pass after that starts it anew if the alerts say cloud.
/// A stop goes after every server is closed; if one was opened while the responder was down (by
/// hand), stopping now would cut what it serves, so the pass decides instead.
async fn finish_interrupted_stop(svc: &ServiceRuntime, ctx: &Context, step: &str) {
    // The step as recorded: `Step::StopContainer`'s Display, "stop <container>".
    let Some(name) = step.strip_prefix("stop ") else {
        return;
    };
    let Ok((d, c)) = container_of(svc, name) else {
        return;
    };
    let closed = |o: &Observed| {
        o.servers
            .iter()
            .all(|s| matches!(s.state, ServerState::Maint | ServerState::Missing))
    };
    let (observed, units) = tokio::join!(observe(svc, ctx), observe_units(svc));
    let unit = units
        .iter()
        .find(|u| u.observed.containers.iter().any(|x| x.name == name));
    let servers_closed = match unit {
        Some(u) => closed(&u.observed),
        None => closed(&observed),
    };
    if !servers_closed {
        warn!(service = %svc.name, container = name, "a server in front of it is open: not finishing the interrupted stop");
        return;
    }
    match d.stop(&svc.name, &c, svc.config.timeouts.stop).await {
        Ok(()) => info!(service = %svc.name, container = name, "finished the interrupted stop"),
        // The pass repairs what is left; the error shows there too.
        Err(e) => {
            warn!(service = %svc.name, container = name, error = %e, "could not finish the interrupted stop")
        }
    }
}

/// Exponential backoff: `retry_initial * 2^(n-1)`, capped at `retry_max`; errors that a retry
/// cannot fix wait the maximum straight away.
pub fn backoff(s: &ReconcileConfig, failures: u32, retryable: bool) -> Duration {
    if !retryable {
        return s.retry_max;
    }
    let exp = failures.saturating_sub(1).min(20);
    s.retry_initial.saturating_mul(1u32 << exp).min(s.retry_max)
}

/// The persisted state of a service, or a fresh one (on-prem) the first time.
fn state_of(svc: &ServiceRuntime, ctx: &Context) -> ServiceState {
    ctx.store
        .service(&svc.name)
        .unwrap_or_else(|| ServiceState::new(Utc::now()))
}

/// Whether a wait or the next step should stop because the target has changed.
fn superseded(svc: &ServiceRuntime, ctx: &Context, target: Target) -> bool {
    let state = state_of(svc, ctx);
    let d = pass::desired(
        &svc.config,
        &state,
        &ctx.store.firing(),
        svc.healthy_since(),
        Utc::now(),
    );
    d.effective.mode != target.mode || d.effective.paused || d.target().burst != target.burst
}

/// One pass: decide the mode and record it, observe, finish the pass (pure, [`pass`]), record,
/// execute.
pub async fn reconcile_once(svc: &ServiceRuntime, ctx: &Context) -> Result<PassOutcome, PassError> {
    let state = state_of(svc, ctx);
    if state.mode == Mode::Cloud {
        svc.probe_onprem().await;
    }
    let firing = ctx.store.firing();
    // The pass's one clock reading.
    let now = Utc::now();
    let decided = pass::decide(&svc.config, &state, &firing, svc.healthy_since(), now);
    // Recorded before observing: a slow backend must not delay a failover's record (nor the
    // hold-down that counts from it).
    // This service's series, resolved once for the pass.
    let m = ctx.metrics.service(&svc.name);
    record_transition(svc, ctx, &m, &state, &decided).await?;
    let decided_state = decided.next_state.clone();
    let (mut observed, mut units, levels) =
        tokio::join!(observe(svc, ctx), observe_units(svc), level_blockers(svc));
    apply_levels(&levels, &mut observed);
    for u in &mut units {
        apply_levels(&levels, &mut u.observed);
    }
    let p = pass::finish(
        &svc.config,
        decided,
        &pass::Input {
            state: &decided_state,
            firing: &firing,
            observed: &observed,
            units: &units,
            onprem_healthy_since: svc.healthy_since(),
            now,
        },
    );
    record_scale(svc, ctx, &decided_state, &p, &firing).await?;
    let blocked_before = ctx.status.blocked(&svc.name);
    record_pass(svc, ctx, &m, &p.desired, &observed, &p.plan);
    record_burst(svc, ctx, &m, &p, &firing, now);
    record_blocked(svc, ctx, &blocked_before, &p.plan.blocked).await?;

    let plan = &p.plan;
    let eff = &p.desired.effective;
    let mut state = p.next_state.clone();
    if plan.steps.is_empty() {
        if state.step_in_flight.is_some() {
            state.step_in_flight = None;
            ctx.store.set_service(&svc.name, state).await?;
        }
        return Ok(match (plan.converged(), p.recheck_after) {
            (true, Some(after)) => PassOutcome::Held { after },
            (true, None) => PassOutcome::Converged,
            (false, _) => PassOutcome::Waiting,
        });
    }
    let steps_text = plan
        .steps
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if eff.paused || ctx.dry_run {
        let why = if eff.paused { "paused" } else { "dry run" };
        info!(service = %svc.name, mode = eff.mode.as_str(), steps = %steps_text, "{why}: not executing");
        return Ok(PassOutcome::Held {
            after: ctx.settings.interval,
        });
    }
    record_plan(svc, ctx, &p, &steps_text).await?;
    run_steps(svc, ctx, &p, state).await
}

/// Says what a pass is about to execute: the log line and the `plan` event, with the alerts
/// behind it.
async fn record_plan(
    svc: &ServiceRuntime,
    ctx: &Context,
    p: &Pass,
    steps_text: &str,
) -> Result<(), crate::store::StoreError> {
    let (decision, eff) = (&p.desired.decision, &p.desired.effective);
    let target = p.desired.target();
    let burst_text = target
        .burst
        .map(|n| format!(", burst {n} unit(s)"))
        .unwrap_or_default();
    info!(service = %svc.name, mode = eff.mode.as_str(), burst = ?target.burst, reason = %decision.reason, steps = %steps_text, "executing plan");
    ctx.store
        .event(
            &svc.name,
            "plan",
            format!(
                "mode {} ({}){burst_text}; steps: {steps_text}",
                eff.mode.as_str(),
                eff.held.as_deref().unwrap_or(&decision.reason)
            ),
            decision
                .failover_alerts
                .iter()
                .chain(&decision.failback_alerts)
                .cloned()
                .collect(),
        )
        .await
        .map(|_| ())
}

/// Runs the plan's steps in order, each recorded before it runs (so a crash is known at
/// restart) and after; stops when the target changes or a step fails.
async fn run_steps(
    svc: &ServiceRuntime,
    ctx: &Context,
    p: &Pass,
    mut state: ServiceState,
) -> Result<PassOutcome, PassError> {
    let target = p.desired.target();
    let crash_before = std::env::var(CRASH_ENV).ok();
    for (i, step) in p.plan.steps.iter().enumerate() {
        // The world may have moved on while earlier steps ran (a recovery during a slow start,
        // an override, the next burst step).
        if superseded(svc, ctx, target) {
            ctx.store
                .event(
                    &svc.name,
                    "superseded",
                    format!("desired state changed before {step}"),
                    vec![],
                )
                .await?;
            return Ok(PassOutcome::Superseded);
        }
        // Recorded before it runs, so a crash in the middle is known at restart.
        state.step_in_flight = Some(step.to_string());
        ctx.store.set_service(&svc.name, state.clone()).await?;
        if crash_before.as_deref() == Some(step.action()) {
            // Test-only: die as kill -9 would, with the step recorded and not done.
            std::process::abort();
        }
        let span = info_span!("step", service = %svc.name, action = step.action(), target = %step);
        let started = Instant::now();
        // Steps after `burst_from` act on burst units (their EC2 steps go to the burst pool).
        let result = execute(svc, ctx, target, step, i >= p.burst_from)
            .instrument(span)
            .await;
        let elapsed = started.elapsed();
        let (outcome, error) = match &result {
            Ok(StepDone::Done) => ("success", None),
            Ok(StepDone::DrainTimedOut) => ("drain_timeout", None),
            Ok(StepDone::Superseded) => ("superseded", None),
            Err(e) => ("failure", Some(e.to_string())),
        };
        record_step(svc, ctx, step, outcome, elapsed, error).await?;
        match result {
            Ok(StepDone::Done | StepDone::DrainTimedOut) => {}
            Ok(StepDone::Superseded) => return Ok(PassOutcome::Superseded),
            Err(source) => {
                return Err(PassError::Step {
                    step: step.to_string(),
                    source,
                })
            }
        }
    }
    state.step_in_flight = None;
    ctx.store.set_service(&svc.name, state).await?;
    Ok(PassOutcome::Progress)
}

/// Persists a mode change and says it, once: the event, the log line, the metric; and says once
/// when the flap cap starts holding the service in cloud.
async fn record_transition(
    svc: &ServiceRuntime,
    ctx: &Context,
    m: &ServiceMetrics,
    before: &ServiceState,
    d: &pass::Decided,
) -> Result<(), crate::store::StoreError> {
    let (decision, eff) = (&d.decision, &d.effective);
    let was_capped = m.transitions_capped.get() != 0;
    m.transitions_capped.set(i64::from(eff.capped));
    if eff.capped && !was_capped {
        warn!(service = %svc.name, held = eff.held.as_deref().unwrap_or(""), "flap cap reached: staying in cloud");
        ctx.store
            .event(
                &svc.name,
                "capped",
                eff.held.clone().unwrap_or_default(),
                decision.failback_alerts.clone(),
            )
            .await?;
    }
    let Some((from, to)) = d.transition else {
        return Ok(());
    };
    // Unconverged first, then the new mode: the status never pairs the new mode with the
    // previous pass's "converged".
    ctx.status.mark_unconverged(&svc.name);
    if d.next_state != *before {
        ctx.store
            .set_service(&svc.name, d.next_state.clone())
            .await?;
    }
    let alerts = match to {
        Mode::Cloud => decision.failover_alerts.clone(),
        Mode::Onprem => decision.failback_alerts.clone(),
    };
    let why = eff.held.clone().unwrap_or_else(|| decision.reason.clone());
    info!(service = %svc.name, from = from.as_str(), to = to.as_str(), reason = %why, "mode change");
    ctx.store
        .event(
            &svc.name,
            "decision",
            format!("{} -> {}: {why}", from.as_str(), to.as_str()),
            alerts,
        )
        .await?;
    ctx.metrics.transition(&svc.name, to);
    Ok(())
}

/// Persists what observing moved (units running, the burst count) and says once each when the
/// burst count changes and when the cost guard starts holding it.
async fn record_scale(
    svc: &ServiceRuntime,
    ctx: &Context,
    before: &ServiceState,
    p: &Pass,
    firing: &[FiringAlert],
) -> Result<(), crate::store::StoreError> {
    if p.next_state != *before {
        ctx.store
            .set_service(&svc.name, p.next_state.clone())
            .await?;
    }
    let (Some(sc), Some(b)) = (&p.desired.scale, &svc.config.burst) else {
        return Ok(());
    };
    if let Some(reason) = &sc.reason {
        let direction = if sc.state.target > before.burst.target {
            "up"
        } else {
            "down"
        };
        info!(service = %svc.name, direction, target = sc.state.target, reason = %reason, "burst scale");
        ctx.metrics.burst_scaled(&svc.name, direction);
        let fps = firing
            .iter()
            .filter(|a| pass::overload_alert(b, &a.labels))
            .map(|a| a.fingerprint.clone())
            .collect();
        ctx.store
            .event(&svc.name, "scale", format!("burst {reason}"), fps)
            .await?;
    }
    let bm = ctx.metrics.burst(&svc.name);
    let was_capped = bm.capped.get() != 0;
    bm.capped.set(i64::from(sc.capped.is_some()));
    if let (Some(why), false) = (&sc.capped, was_capped) {
        warn!(service = %svc.name, held = %why, "cost guard holds bursting");
        ctx.store
            .event(&svc.name, "cost_guard", why.clone(), vec![])
            .await?;
    }
    Ok(())
}

/// Says once when what only a human can fix starts blocking the plan (or changes), and once
/// when it clears: the backoff repeats the pass, the event history must not.
async fn record_blocked(
    svc: &ServiceRuntime,
    ctx: &Context,
    before: &[String],
    now: &[String],
) -> Result<(), crate::store::StoreError> {
    if now != before && !now.is_empty() {
        let what = now.join("; ");
        warn!(service = %svc.name, blocked = %what, "blocked: only a human can fix this");
        ctx.store.event(&svc.name, "blocked", what, vec![]).await?;
    } else if now.is_empty() && !before.is_empty() {
        info!(service = %svc.name, "no longer blocked");
        ctx.store
            .event(&svc.name, "unblocked", before.join("; "), vec![])
            .await?;
    }
    Ok(())
}

/// Burst and cost status and metrics.
fn record_burst(
    svc: &ServiceRuntime,
    ctx: &Context,
    m: &ServiceMetrics,
    p: &Pass,
    firing: &[FiringAlert],
    now: DateTime<Utc>,
) {
    let cost = &svc.config.cost;
    let usage = &p.next_state.usage;
    let estimate = usage.hourly_estimate(cost.instance_hourly_price, cost.container_hourly_price);
    let hours = usage.instance_hours_today(now);
    m.cost_per_hour.set(estimate);
    m.instance_hours_today.set(hours);
    for kind in [UnitKind::Instance, UnitKind::Container] {
        let n = usage.running.values().filter(|r| r.kind == kind).count();
        ctx.metrics
            .units_running
            .get_or_create(&KindLabels {
                service: svc.name.clone(),
                kind: match kind {
                    UnitKind::Instance => "instance",
                    UnitKind::Container => "container",
                }
                .into(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let burst = match (&svc.config.burst, &p.desired.scale) {
        (Some(b), Some(sc)) => {
            let open = p
                .units
                .iter()
                .filter(|u| {
                    !u.observed.servers.is_empty()
                        && u.observed
                            .servers
                            .iter()
                            .all(|s| s.state == ServerState::Ready)
                })
                .count();
            let open = u32::try_from(open).unwrap_or(u32::MAX);
            let bm = ctx.metrics.burst(&svc.name);
            bm.desired.set(i64::from(sc.state.target));
            bm.open.set(i64::from(open));
            Some(BurstStatus {
                target: sc.state.target,
                min: b.min,
                max: b.max,
                overloaded: pass::overloaded(b, firing),
                open,
                capped: sc.capped.clone(),
                units: p.units.clone(),
            })
        }
        _ => None,
    };
    ctx.status.set_burst_status(
        &svc.name,
        burst,
        CostStatus {
            running: usage.running.clone(),
            instances_running: usage.instances(),
            instance_hours_today: hours,
            estimated_cost_per_hour: estimate,
            max_instances: cost.max_instances,
            max_instance_hours_per_day: cost.max_instance_hours_per_day,
        },
    );
}

/// The pass's status (decision, observation, plan) and its metrics.
fn record_pass(
    svc: &ServiceRuntime,
    ctx: &Context,
    m: &ServiceMetrics,
    d: &pass::Desired,
    observed: &Observed,
    plan: &plan::Plan,
) {
    let (decision, eff) = (&d.decision, &d.effective);
    ctx.status
        .set_observation(&svc.name, decision, eff.held.clone(), observed, plan);
    let service = svc.name.clone();
    for mode in [Mode::Onprem, Mode::Cloud] {
        ctx.metrics
            .desired_mode
            .get_or_create(&ModeLabels {
                service: service.clone(),
                mode: mode.as_str().to_string(),
            })
            .set(i64::from(eff.mode == mode));
    }
    m.converged.set(i64::from(plan.converged()));
    m.blocked
        .set(i64::try_from(plan.blocked.len()).unwrap_or(i64::MAX));
    m.failover_alerts
        .set(i64::try_from(decision.failover_alerts.len()).unwrap_or(i64::MAX));
    m.last_reconcile.set(Utc::now().timestamp());
    let docker = svc.docker.as_ref().map_or("", |d| d.host());
    let up = observed
        .containers
        .iter()
        .map(|c| {
            (
                "docker",
                docker,
                !matches!(c.state, ContainerState::Unknown { .. }),
            )
        })
        .chain(observed.servers.iter().map(|s| {
            (
                "haproxy",
                s.target.api.as_str(),
                !matches!(s.state, ServerState::Unknown { .. }),
            )
        }));
    for (backend, target, up) in up {
        ctx.metrics
            .backend_up
            .get_or_create(&TargetLabels {
                service: service.clone(),
                backend: backend.into(),
                target: target.to_string(),
            })
            .set(i64::from(up));
    }
}

async fn record_step(
    svc: &ServiceRuntime,
    ctx: &Context,
    step: &Step,
    outcome: &'static str,
    elapsed: Duration,
    error: Option<String>,
) -> Result<(), crate::store::StoreError> {
    match &error {
        Some(e) => warn!(service = %svc.name, step = %step, error = %e, "step failed"),
        None => {
            info!(service = %svc.name, step = %step, outcome, ms = elapsed.as_millis() as u64, "step done")
        }
    }
    ctx.metrics
        .steps
        .get_or_create(&StepLabels {
            service: svc.name.clone(),
            action: step.action().to_string(),
            outcome: outcome.to_string(),
        })
        .inc();
    ctx.metrics
        .step_seconds
        .get_or_create(&ActionLabels {
            service: svc.name.clone(),
            action: step.action().to_string(),
        })
        .observe(elapsed.as_secs_f64());
    let message = match &error {
        Some(e) => format!("{step}: {outcome}: {e}"),
        None => format!("{step}: {outcome}"),
    };
    ctx.status.record_step(
        &svc.name,
        StepRecord {
            at: Utc::now(),
            step: step.to_string(),
            action: step.action().to_string(),
            outcome: outcome.to_string(),
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            error,
        },
    );
    ctx.store
        .event(&svc.name, "step", message, vec![])
        .await
        .map(|_| ())
}

/// Observes every container and every server on every HAProxy, concurrently.
pub async fn observe(svc: &ServiceRuntime, _ctx: &Context) -> Observed {
    let containers = async {
        let mut out = Vec::new();
        if let (Some(d), Some(cfg)) = (&svc.docker, &svc.config.docker) {
            for c in &cfg.containers {
                out.push(ContainerObs {
                    name: c.name.clone(),
                    state: d.observe(&svc.name, c).await,
                });
            }
        }
        out
    };
    let servers = async {
        let mut out = Vec::new();
        let Some(h) = &svc.config.haproxy else {
            return out;
        };
        let answers = futures_util::future::join_all(
            svc.haproxy
                .iter()
                .map(|api| api.observe(&h.backend, &h.cloud_servers)),
        )
        .await;
        for (api, answer) in svc.haproxy.iter().zip(answers) {
            for server in &h.cloud_servers {
                let (state, flags) = match &answer {
                    Ok(states) => states.get(server).map_or((ServerState::Missing, 0), |i| {
                        (i.state.clone(), i.admin_flags)
                    }),
                    Err(e) => (
                        ServerState::Unknown {
                            reason: e.to_string(),
                        },
                        0,
                    ),
                };
                out.push(ServerObs {
                    target: ServerRef {
                        api: api.label.clone(),
                        backend: h.backend.clone(),
                        server: server.clone(),
                    },
                    state,
                    addr: None,
                    weight: None,
                    blocked: haproxy::blocker(flags),
                    refuses_changes: false,
                });
            }
        }
        out
    };
    let (mut containers, servers, instances) =
        tokio::join!(containers, servers, observe_instances(svc));
    // Containers live on the instances: with none running, they are not running either, and
    // their engine is not there to ask.
    if !instances.is_empty() && !instances.iter().any(|i| i.state == InstanceState::Running) {
        for c in &mut containers {
            if matches!(c.state, ContainerState::Unknown { .. }) {
                c.state = ContainerState::Stopped;
            }
        }
    }
    Observed {
        containers,
        servers,
        instances,
    }
}

/// What each Runtime API below level `admin` refuses (by its label): it answers `show` commands,
/// so it looks up, but every `set server` is refused. Asked once a pass for the failover
/// servers and the burst slots alike.
async fn level_blockers(svc: &ServiceRuntime) -> BTreeMap<String, String> {
    let levels =
        futures_util::future::join_all(svc.haproxy.iter().map(|api| api.cli_level())).await;
    svc.haproxy
        .iter()
        .zip(levels)
        .filter_map(|(api, level)| {
            let level = level.ok().flatten()?;
            Some((
                api.label.clone(),
                haproxy::level_blocker(&api.label, &level)?,
            ))
        })
        .collect()
}

/// Marks every server behind a refusing Runtime API: a blocker for any change to it.
fn apply_levels(blockers: &BTreeMap<String, String>, o: &mut Observed) {
    for s in &mut o.servers {
        if let Some(why) = blockers.get(&s.target.api) {
            s.blocked = Some(why.clone());
            s.refuses_changes = true;
        }
    }
}

async fn observe_instances(svc: &ServiceRuntime) -> Vec<InstanceObs> {
    let (Some(ec2), Some(cfg)) = (&svc.ec2, &svc.config.ec2) else {
        return Vec::new();
    };
    match observe_pool(ec2, cfg).await {
        Ok(found) => found,
        // EC2 cannot be asked: every configured instance is unknown.
        Err(e) => {
            let ids = if cfg.instance_ids.is_empty() {
                vec![cfg
                    .tag
                    .as_ref()
                    .map_or("ec2".into(), |t| format!("tag:{}={}", t.key, t.value))]
            } else {
                cfg.instance_ids.clone()
            };
            ids.into_iter()
                .map(|id| InstanceObs {
                    id,
                    state: InstanceState::Unknown {
                        reason: e.to_string(),
                    },
                    private_ip: None,
                })
                .collect()
        }
    }
}

/// The instances of one pool (failover or burst), sorted by id. By id, an id EC2 did not return
/// is unknown, not absent.
async fn observe_pool(
    ec2: &crate::backend::ec2::Ec2Backend,
    cfg: &crate::config::Ec2Config,
) -> Result<Vec<InstanceObs>, BackendError> {
    let mut found = ec2.observe().await?;
    for id in &cfg.instance_ids {
        if !found.iter().any(|i| &i.id == id) {
            found.push(InstanceObs {
                id: id.clone(),
                state: InstanceState::Unknown {
                    reason: "not returned by DescribeInstances".into(),
                },
                private_ip: None,
            });
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// The burst pool's instances; empty when the units are containers.
async fn observe_burst_pool(svc: &ServiceRuntime) -> Result<Vec<InstanceObs>, BackendError> {
    if let (Some(ec2), Some(cfg)) = (
        &svc.burst_ec2,
        svc.config.burst.as_ref().and_then(|b| b.ec2.as_ref()),
    ) {
        return observe_pool(ec2, cfg).await;
    }
    Ok(Vec::new())
}

/// Observes every burst unit `1..=max`: its container or instance and its slot on every
/// HAProxy (one `show servers state` per HAProxy for all slots).
async fn observe_units(svc: &ServiceRuntime) -> Vec<UnitObs> {
    let Some(b) = &svc.config.burst else {
        return Vec::new();
    };
    let backend = burst_backend(svc);
    let slots: Vec<String> = (1..=b.max)
        .map(|i| burst::slot_name(&b.haproxy.server_prefix, i))
        .collect();
    let answers =
        futures_util::future::join_all(svc.haproxy.iter().map(|api| api.observe(&backend, &slots)));
    let (answers, pool) = tokio::join!(answers, observe_burst_pool(svc));
    let mut units = Vec::new();
    for (n, slot) in (1..=b.max).zip(&slots) {
        let mut containers = Vec::new();
        if let (Some(c), Some(d)) = (&b.container, &svc.docker) {
            let spec = burst::render_container(c, n, b.port_base);
            containers.push(ContainerObs {
                name: spec.name.clone(),
                state: d.observe(&svc.name, &spec).await,
            });
        }
        let servers = svc
            .haproxy
            .iter()
            .zip(&answers)
            .map(|(api, answer)| {
                let (state, addr, weight) = match answer {
                    Ok(m) => match m.get(slot) {
                        Some(i) => (i.state.clone(), i.addr.clone(), i.weight),
                        None => (ServerState::Missing, None, None),
                    },
                    Err(e) => (
                        ServerState::Unknown {
                            reason: e.to_string(),
                        },
                        None,
                        None,
                    ),
                };
                ServerObs {
                    target: ServerRef {
                        api: api.label.clone(),
                        backend: backend.clone(),
                        server: slot.clone(),
                    },
                    state,
                    addr,
                    weight,
                    // The socket's level is added with the others' (`apply_levels`); a
                    // slot is pointed at its unit with `set server addr` before it is
                    // opened, and the step checks that `state ready` took effect.
                    blocked: None,
                    refuses_changes: false,
                }
            })
            .collect();
        let instances: Vec<InstanceObs> = match &pool {
            Ok(list) => list
                .get(usize::try_from(n - 1).unwrap_or(usize::MAX))
                .cloned()
                .into_iter()
                .collect(),
            // EC2 cannot be asked: every unit's instance is unknown.
            Err(e) => vec![InstanceObs {
                id: format!("for burst unit {n}"),
                state: InstanceState::Unknown {
                    reason: e.to_string(),
                },
                private_ip: None,
            }],
        };
        let ip = instances.first().and_then(|i| i.private_ip.as_deref());
        let address = burst::render_address(&b.address, n, b.port_base, ip)
            .ok()
            .map(|(host, port)| format!("{host}:{port}"));
        units.push(UnitObs {
            index: n,
            observed: Observed {
                containers,
                servers,
                instances,
            },
            address,
        });
    }
    units
}

/// The backend holding the burst slots.
fn burst_backend(svc: &ServiceRuntime) -> String {
    let from_burst = svc
        .config
        .burst
        .as_ref()
        .and_then(|b| b.haproxy.backend.clone());
    from_burst
        .or_else(|| svc.config.haproxy.as_ref().map(|h| h.backend.clone()))
        .unwrap_or_default()
}

/// The EC2 pool a step acts on: the burst pool for burst steps, else the failover one.
fn ec2_of(
    svc: &ServiceRuntime,
    burst: bool,
) -> Result<&crate::backend::ec2::Ec2Backend, BackendError> {
    let pool = if burst { &svc.burst_ec2 } else { &svc.ec2 };
    pool.as_ref().ok_or_else(|| BackendError::Rejected {
        target: "ec2".into(),
        message: "no ec2 in this service's config".into(),
        retryable: false,
    })
}

enum StepDone {
    Done,
    /// The drain deadline passed with sessions left; closing anyway, as configured.
    DrainTimedOut,
    /// The desired mode changed during a wait.
    Superseded,
}

async fn execute(
    svc: &ServiceRuntime,
    ctx: &Context,
    target: Target,
    step: &Step,
    burst: bool,
) -> Result<StepDone, BackendError> {
    let timeouts = &svc.config.timeouts;
    match step {
        // `start` checks again what it finds: it recreates only what may go, and starts only
        // the container it checked or created.
        Step::StartContainer { container } => {
            let (d, c) = container_of(svc, container)?;
            d.start(&svc.name, &c, false).await?;
            Ok(StepDone::Done)
        }
        Step::RecreateContainer { container } => {
            let (d, c) = container_of(svc, container)?;
            d.start(&svc.name, &c, true).await?;
            Ok(StepDone::Done)
        }
        Step::StopContainer { container } => {
            let (d, c) = container_of(svc, container)?;
            d.stop(&svc.name, &c, timeouts.stop).await?;
            Ok(StepDone::Done)
        }
        Step::SetServer { target: t, state } => {
            let api = api_of(svc, &t.api)?;
            api.set_state(&t.backend, &t.server, *state).await?;
            Ok(StepDone::Done)
        }
        Step::SetServerAddr {
            target: t,
            addr,
            port,
        } => {
            let api = api_of(svc, &t.api)?;
            api.set_addr(&t.backend, &t.server, addr, *port).await?;
            Ok(StepDone::Done)
        }
        Step::SetWeight { target: t, weight } => {
            let api = api_of(svc, &t.api)?;
            api.set_weight(&t.backend, &t.server, *weight).await?;
            Ok(StepDone::Done)
        }
        Step::StartInstances { ids } => {
            ec2_of(svc, burst)?.start(ids).await?;
            Ok(StepDone::Done)
        }
        Step::WaitInstancesRunning { ids } => {
            ec2_of(svc, burst)?.wait_running(ids).await?;
            Ok(StepDone::Done)
        }
        Step::StopInstances { ids } => {
            ec2_of(svc, burst)?.stop(ids).await?;
            Ok(StepDone::Done)
        }
        Step::WaitHealthy { .. } | Step::WaitDockerReady | Step::WaitDrained { .. } => {
            wait(svc, ctx, target, step).await
        }
    }
}

/// The waiting steps, each one [`poll_until`] with what it checks and what its timeout means.
async fn wait(
    svc: &ServiceRuntime,
    ctx: &Context,
    target: Target,
    step: &Step,
) -> Result<StepDone, BackendError> {
    let timeouts = &svc.config.timeouts;
    match step {
        Step::WaitHealthy { containers } => wait_healthy(svc, ctx, target, containers).await,
        Step::WaitDockerReady => {
            let Some(d) = &svc.docker else {
                return Ok(StepDone::Done);
            };
            poll_until(svc, ctx, target, timeouts.healthy, || async {
                Ok(match d.ping().await {
                    Ok(()) => vec![],
                    Err(e) => vec![e.to_string()],
                })
            })
            .await?
            .or_else(|last| {
                Err(BackendError::Timeout {
                    what: format!("docker {} answering ({})", d.host(), last.join(", ")),
                    after: timeouts.healthy,
                })
            })
        }
        Step::WaitDrained { servers } => {
            let polled = poll_until(svc, ctx, target, timeouts.drain, || async {
                let mut pending = Vec::new();
                for s in servers {
                    let n = api_of(svc, &s.api)?.sessions(&s.backend, &s.server).await?;
                    if n > 0 {
                        pending.push(format!("{s}: {n} session(s)"));
                    }
                }
                Ok(pending)
            })
            .await?;
            polled.or_else(|left| {
                warn!(service = %svc.name, servers = %left.join(", "), "drain timeout passed; closing anyway");
                Ok(StepDone::DrainTimedOut)
            })
        }
        // `execute` sends only the waiting steps here.
        other => Err(BackendError::Rejected {
            target: "reconciler".into(),
            message: format!("{other} is not a waiting step"),
            retryable: false,
        }),
    }
}

/// Polls until every container is healthy; fails at once when one exits or turns out not to be
/// as configured, and says on timeout what Docker last reported of each.
async fn wait_healthy(
    svc: &ServiceRuntime,
    ctx: &Context,
    target: Target,
    containers: &[String],
) -> Result<StepDone, BackendError> {
    let timeouts = &svc.config.timeouts;
    let polled = poll_until(svc, ctx, target, timeouts.healthy, || async {
        // What Docker says of each container still not healthy, for the timeout's
        // message ("starting" and "unhealthy" call for different fixes).
        let mut pending = Vec::new();
        for name in containers {
            let (d, c) = container_of(svc, name)?;
            let exited = |message: String| BackendError::Rejected {
                target: format!("container {name}"),
                message,
                retryable: true,
            };
            match d.observe(&svc.name, &c).await {
                ContainerState::Running {
                    health: Health::Healthy,
                } => {}
                // Stopped while we waited (crashed on start): fail, so backoff applies
                // and the next pass starts it again.
                ContainerState::Stopped | ContainerState::Absent => {
                    return Err(exited("exited before becoming healthy".into()))
                }
                // Replaced under its name while we waited: never waited into "healthy";
                // the next pass plans for what is there now.
                ContainerState::Mismatch { reason, .. } => {
                    return Err(exited(format!("not as configured: {reason}")))
                }
                other => pending.push(format!("{name}: {}", other.describe())),
            }
        }
        Ok(pending)
    })
    .await?;
    polled.or_else(|last| {
        Err(BackendError::Timeout {
            what: format!(
                "waiting for {} to be healthy (Docker last said {})",
                containers.join(","),
                last.join(", ")
            ),
            after: timeouts.healthy,
        })
    })
}

/// How a wait ended.
enum Polled {
    Done,
    Superseded,
    /// With what was still pending at the last look.
    TimedOut(Vec<String>),
}

impl Polled {
    /// The step's outcome: done or superseded as polled; `timed_out` decides the rest.
    fn or_else(
        self,
        timed_out: impl FnOnce(Vec<String>) -> Result<StepDone, BackendError>,
    ) -> Result<StepDone, BackendError> {
        match self {
            Polled::Done => Ok(StepDone::Done),
            Polled::Superseded => Ok(StepDone::Superseded),
            Polled::TimedOut(pending) => timed_out(pending),
        }
    }
}

/// Calls `check` every [`POLL`] until nothing is pending, the target changes, or `limit`
/// passes. The one wait behind every waiting step; a check's error ends it with that error.
async fn poll_until<F, Fut>(
    svc: &ServiceRuntime,
    ctx: &Context,
    target: Target,
    limit: Duration,
    mut check: F,
) -> Result<Polled, BackendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<String>, BackendError>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let pending = check().await?;
        if pending.is_empty() {
            return Ok(Polled::Done);
        }
        if superseded(svc, ctx, target) {
            return Ok(Polled::Superseded);
        }
        if Instant::now() >= deadline {
            return Ok(Polled::TimedOut(pending));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A container this service manages: a failover container from the config, or a burst unit's
/// (`<name>-<i>`, rendered from the burst template).
fn container_of<'a>(
    svc: &'a ServiceRuntime,
    name: &str,
) -> Result<(&'a DockerBackend, crate::config::ContainerConfig), BackendError> {
    let missing = || BackendError::Rejected {
        target: format!("container {name}"),
        message: "not in this service's config".into(),
        retryable: false,
    };
    let d = svc.docker.as_ref().ok_or_else(missing)?;
    if let Some(c) = svc
        .config
        .docker
        .as_ref()
        .and_then(|cfg| cfg.containers.iter().find(|c| c.name == name))
    {
        return Ok((d, c.clone()));
    }
    let b = svc.config.burst.as_ref().ok_or_else(missing)?;
    let template = b.container.as_ref().ok_or_else(missing)?;
    let index = name
        .strip_prefix(&format!("{}-", template.name))
        .and_then(|i| i.parse::<u32>().ok())
        .filter(|i| (1..=b.max).contains(i))
        .ok_or_else(missing)?;
    Ok((d, burst::render_container(template, index, b.port_base)))
}

fn api_of<'a>(svc: &'a ServiceRuntime, label: &str) -> Result<&'a RuntimeApi, BackendError> {
    svc.haproxy
        .iter()
        .find(|a| a.label == label)
        .ok_or_else(|| BackendError::Rejected {
            target: format!("haproxy {label}"),
            message: "not in this service's config".into(),
            retryable: false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let s = ReconcileConfig {
            interval: Duration::from_secs(10),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        };
        let got: Vec<u64> = (1..=8).map(|n| backoff(&s, n, true).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(&s, 1, false), Duration::from_secs(60));
        assert_eq!(backoff(&s, u32::MAX, true), Duration::from_secs(60));
    }
}
