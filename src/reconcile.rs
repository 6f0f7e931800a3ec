//! The reconcile loop: one task per service. Each pass derives the desired mode from the firing
//! alerts, observes Docker and every HAProxy, plans the missing steps and runs them in order.
//!
//! Woken by notifications and by a timer, so drift (a container stopped by hand, a server put
//! in maint, a restarted HAProxy) is repaired and a lost notification does not leave the world
//! wrong. A failed step is retried with exponential backoff; one failing service never blocks
//! another, because each has its own task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::backend::docker::DockerBackend;
use crate::backend::haproxy::RuntimeApi;
use crate::backend::BackendError;
use crate::config::{ReconcileConfig, ServiceConfig};
use crate::desired::{self, Current, Damping, Decision, Effective, Mode, Rules};
use crate::metrics::{ActionLabels, Metrics, ModeLabels, ServiceLabels, StepLabels, TargetLabels};
use crate::plan::{
    self, ContainerObs, ContainerState, Health, InstanceObs, InstanceState, Observed, ServerObs,
    ServerRef, ServerState, Step,
};
use crate::store::ServiceState;
use crate::store::{StepRecord, Store};

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
    #[cfg(feature = "ec2")]
    pub ec2: Option<crate::backend::ec2::Ec2Backend>,
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
        #[cfg(feature = "ec2")]
        let ec2 = config.ec2.clone().map(crate::backend::ec2::Ec2Backend::new);
        ServiceRuntime {
            name: name.to_string(),
            config,
            docker,
            haproxy,
            #[cfg(feature = "ec2")]
            ec2,
            wake: Arc::new(Notify::new()),
            onprem_healthy_since: Arc::default(),
            probe: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Whether an alert with these labels concerns this service (matches its failover_on or
    /// failback_on). Others can never move it.
    pub fn concerns(&self, labels: &crate::alert::Labels) -> bool {
        crate::matcher::matches_all(&self.config.failover_matchers, labels)
            || crate::matcher::matches_all(&self.config.failback_matchers, labels)
    }

    /// The damping rules from the config.
    pub fn damping(&self) -> Damping {
        Damping {
            hold_down: self.config.hold_down,
            healthy_for: self
                .config
                .onprem_health_url
                .as_ref()
                .map(|_| self.config.healthy_for),
            max_transitions_per_hour: self.config.max_transitions_per_hour,
        }
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

    fn rules(&self) -> Rules<'_> {
        Rules {
            failover_on: &self.config.failover_matchers,
            failback_on: &self.config.failback_matchers,
        }
    }
}

/// Handles shared by every service's task.
#[derive(Clone)]
pub struct Context {
    pub store: Store,
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
        ctx.store.set_failures(&svc.name, failures);
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

/// The alerts' decision and the effective mode after overrides and damping.
fn desired_now(svc: &ServiceRuntime, ctx: &Context, state: &ServiceState) -> (Decision, Effective) {
    let decision = desired::decide(svc.rules(), &ctx.store.firing());
    let eff = desired::effective(
        &decision,
        Current {
            mode: state.mode,
            since: state.since,
            transitions: &state.transitions,
            override_: state.override_,
            onprem_healthy_since: svc.healthy_since(),
        },
        svc.damping(),
        Utc::now(),
    );
    (decision, eff)
}

/// Whether a wait or the next step should stop because the target mode has changed.
fn superseded(svc: &ServiceRuntime, ctx: &Context, mode: Mode) -> bool {
    let state = state_of(svc, ctx);
    let (_, eff) = desired_now(svc, ctx, &state);
    eff.mode != mode || eff.paused
}

/// One pass: decide, record the decision, observe, plan, execute.
pub async fn reconcile_once(svc: &ServiceRuntime, ctx: &Context) -> Result<PassOutcome, PassError> {
    let mut state = state_of(svc, ctx);
    if state.mode == Mode::Cloud {
        svc.probe_onprem().await;
    }
    let (decision, eff) = desired_now(svc, ctx, &state);
    let labels = ServiceLabels {
        service: svc.name.clone(),
    };
    let was_capped = ctx.metrics.transitions_capped.get_or_create(&labels).get() != 0;
    ctx.metrics
        .transitions_capped
        .get_or_create(&labels)
        .set(i64::from(eff.capped));
    // Say it once when the cap starts holding the service in cloud, not on every pass.
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
    if eff.mode != state.mode {
        let now = Utc::now();
        let from = state.mode;
        state.mode = eff.mode;
        state.since = now;
        let hour_ago = now - chrono::Duration::hours(1);
        state.transitions.retain(|t| *t > hour_ago);
        state.transitions.push(now);
        ctx.store.set_service(&svc.name, state.clone()).await?;
        let alerts = match eff.mode {
            Mode::Cloud => decision.failover_alerts.clone(),
            Mode::Onprem => decision.failback_alerts.clone(),
        };
        let why = eff.held.clone().unwrap_or_else(|| decision.reason.clone());
        info!(service = %svc.name, from = from.as_str(), to = eff.mode.as_str(), reason = %why, "mode change");
        ctx.store
            .event(
                &svc.name,
                "decision",
                format!("{} -> {}: {why}", from.as_str(), eff.mode.as_str()),
                alerts,
            )
            .await?;
        ctx.metrics
            .transitions
            .get_or_create(&ModeLabels {
                service: svc.name.clone(),
                mode: eff.mode.as_str().to_string(),
            })
            .inc();
    }

    let observed = observe(svc, ctx).await;
    // Paused: show what following the alerts would do, and do none of it.
    let plan = plan::plan(
        if eff.paused { decision.mode } else { eff.mode },
        &observed,
        svc.config.standby,
    );
    record_pass(svc, ctx, &decision, &eff, &observed, &plan);

    if plan.steps.is_empty() {
        if state.step_in_flight.is_some() {
            state.step_in_flight = None;
            ctx.store.set_service(&svc.name, state).await?;
        }
        return Ok(match (plan.converged(), eff.recheck_after) {
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
    info!(service = %svc.name, mode = eff.mode.as_str(), reason = %decision.reason, steps = %steps_text, "executing plan");
    ctx.store
        .event(
            &svc.name,
            "plan",
            format!(
                "mode {} ({}); steps: {steps_text}",
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
        .await?;
    let crash_before = std::env::var(CRASH_ENV).ok();
    for step in &plan.steps {
        // The world may have moved on while earlier steps ran (a recovery during a slow start,
        // an override).
        if superseded(svc, ctx, eff.mode) {
            ctx.store
                .event(
                    &svc.name,
                    "superseded",
                    format!("desired mode changed before {step}"),
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
        let result = execute(svc, ctx, eff.mode, step).instrument(span).await;
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

fn record_pass(
    svc: &ServiceRuntime,
    ctx: &Context,
    decision: &Decision,
    eff: &Effective,
    observed: &Observed,
    plan: &plan::Plan,
) {
    ctx.store
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
    let sl = ServiceLabels {
        service: service.clone(),
    };
    ctx.metrics
        .converged
        .get_or_create(&sl)
        .set(i64::from(plan.converged()));
    ctx.metrics
        .failover_alerts
        .get_or_create(&sl)
        .set(i64::try_from(decision.failover_alerts.len()).unwrap_or(i64::MAX));
    ctx.metrics
        .last_reconcile
        .get_or_create(&sl)
        .set(Utc::now().timestamp());
    for c in &observed.containers {
        let up = !matches!(c.state, ContainerState::Unknown { .. });
        let target = svc.docker.as_ref().map_or("", |d| d.host()).to_string();
        ctx.metrics
            .backend_up
            .get_or_create(&TargetLabels {
                service: service.clone(),
                backend: "docker".into(),
                target,
            })
            .set(i64::from(up));
    }
    for s in &observed.servers {
        let up = !matches!(s.state, ServerState::Unknown { .. });
        ctx.metrics
            .backend_up
            .get_or_create(&TargetLabels {
                service: service.clone(),
                backend: "haproxy".into(),
                target: s.target.api.clone(),
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
    ctx.store.record_step(
        &svc.name,
        StepRecord {
            at: Utc::now(),
            step: step.to_string(),
            action: step.action(),
            outcome,
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
                    state: d.observe(c).await,
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
                let state = match &answer {
                    Ok(states) => states.get(server).cloned().unwrap_or(ServerState::Missing),
                    Err(e) => ServerState::Unknown {
                        reason: e.to_string(),
                    },
                };
                out.push(ServerObs {
                    target: ServerRef {
                        api: api.label.clone(),
                        backend: h.backend.clone(),
                        server: server.clone(),
                    },
                    state,
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

#[cfg(feature = "ec2")]
async fn observe_instances(svc: &ServiceRuntime) -> Vec<InstanceObs> {
    let (Some(ec2), Some(cfg)) = (&svc.ec2, &svc.config.ec2) else {
        return Vec::new();
    };
    match ec2.observe().await {
        Ok(mut found) => {
            // By id, an id EC2 did not return is unknown, not absent.
            for id in &cfg.instance_ids {
                if !found.iter().any(|i| &i.id == id) {
                    found.push(InstanceObs {
                        id: id.clone(),
                        state: InstanceState::Unknown {
                            reason: "not returned by DescribeInstances".into(),
                        },
                    });
                }
            }
            found
        }
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
                })
                .collect()
        }
    }
}

#[cfg(not(feature = "ec2"))]
async fn observe_instances(_svc: &ServiceRuntime) -> Vec<InstanceObs> {
    Vec::new()
}

#[cfg(feature = "ec2")]
fn ec2_of(svc: &ServiceRuntime) -> Result<&crate::backend::ec2::Ec2Backend, BackendError> {
    svc.ec2.as_ref().ok_or_else(|| BackendError::Rejected {
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
    mode: Mode,
    step: &Step,
) -> Result<StepDone, BackendError> {
    let timeouts = &svc.config.timeouts;
    match step {
        Step::StartContainer { container } => {
            let (d, c) = container_of(svc, container)?;
            d.start(&svc.name, c).await?;
            Ok(StepDone::Done)
        }
        Step::StopContainer { container } => {
            let (d, c) = container_of(svc, container)?;
            d.stop(c, timeouts.stop).await?;
            Ok(StepDone::Done)
        }
        Step::SetServer { target, state } => {
            let api = api_of(svc, &target.api)?;
            api.set_state(&target.backend, &target.server, *state)
                .await?;
            Ok(StepDone::Done)
        }
        Step::WaitHealthy { containers } => {
            let deadline = Instant::now() + timeouts.healthy;
            loop {
                let mut all = true;
                for name in containers {
                    let (d, c) = container_of(svc, name)?;
                    match d.observe(c).await {
                        ContainerState::Running {
                            health: Health::Healthy,
                        } => {}
                        // Stopped while we waited (crashed on start): fail, so backoff applies
                        // and the next pass starts it again.
                        ContainerState::Stopped | ContainerState::Absent => {
                            return Err(BackendError::Rejected {
                                target: format!("container {name}"),
                                message: "exited before becoming healthy".into(),
                                retryable: true,
                            })
                        }
                        _ => all = false,
                    }
                }
                if all {
                    return Ok(StepDone::Done);
                }
                if superseded(svc, ctx, mode) {
                    return Ok(StepDone::Superseded);
                }
                if Instant::now() >= deadline {
                    return Err(BackendError::Timeout {
                        what: format!("waiting for {} to be healthy", containers.join(",")),
                        after: timeouts.healthy,
                    });
                }
                tokio::time::sleep(POLL).await;
            }
        }
        #[cfg(feature = "ec2")]
        Step::StartInstances { ids } => {
            ec2_of(svc)?.start(ids).await?;
            Ok(StepDone::Done)
        }
        #[cfg(feature = "ec2")]
        Step::WaitInstancesRunning { ids } => {
            ec2_of(svc)?.wait_running(ids).await?;
            Ok(StepDone::Done)
        }
        #[cfg(feature = "ec2")]
        Step::StopInstances { ids } => {
            ec2_of(svc)?.stop(ids).await?;
            Ok(StepDone::Done)
        }
        #[cfg(not(feature = "ec2"))]
        Step::StartInstances { .. }
        | Step::WaitInstancesRunning { .. }
        | Step::StopInstances { .. } => Err(BackendError::Rejected {
            target: "ec2".into(),
            message: "this build has no EC2 support (cargo feature ec2)".into(),
            retryable: false,
        }),
        Step::WaitDockerReady => {
            let Some(d) = &svc.docker else {
                return Ok(StepDone::Done);
            };
            let deadline = Instant::now() + timeouts.healthy;
            loop {
                if d.ping().await.is_ok() {
                    return Ok(StepDone::Done);
                }
                if superseded(svc, ctx, mode) {
                    return Ok(StepDone::Superseded);
                }
                if Instant::now() >= deadline {
                    return Err(BackendError::Timeout {
                        what: format!("docker {} answering", d.host()),
                        after: timeouts.healthy,
                    });
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Step::WaitDrained { servers } => {
            let deadline = Instant::now() + timeouts.drain;
            loop {
                let mut left = 0;
                for s in servers {
                    left += api_of(svc, &s.api)?.sessions(&s.backend, &s.server).await?;
                }
                if left == 0 {
                    return Ok(StepDone::Done);
                }
                if superseded(svc, ctx, mode) {
                    return Ok(StepDone::Superseded);
                }
                if Instant::now() >= deadline {
                    warn!(service = %svc.name, sessions = left, "drain timeout passed; closing anyway");
                    return Ok(StepDone::DrainTimedOut);
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

fn container_of<'a>(
    svc: &'a ServiceRuntime,
    name: &str,
) -> Result<(&'a DockerBackend, &'a crate::config::ContainerConfig), BackendError> {
    let found = svc
        .docker
        .as_ref()
        .zip(svc.config.docker.as_ref())
        .and_then(|(d, cfg)| {
            cfg.containers
                .iter()
                .find(|c| c.name == name)
                .map(|c| (d, c))
        });
    found.ok_or_else(|| BackendError::Rejected {
        target: format!("container {name}"),
        message: "not in this service's config".into(),
        retryable: false,
    })
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
