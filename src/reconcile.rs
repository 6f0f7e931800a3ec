//! The reconcile loop: one task per service. Each pass derives the desired mode from the firing
//! alerts, observes Docker and every HAProxy, plans the missing steps and runs them in order.
//!
//! Woken by notifications and by a timer, so drift (a container stopped by hand, a server put
//! in maint, a restarted HAProxy) is repaired and a lost notification does not leave the world
//! wrong. A failed step is retried with exponential backoff; one failing service never blocks
//! another, because each has its own task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::backend::docker::DockerBackend;
use crate::backend::haproxy::RuntimeApi;
use crate::backend::BackendError;
use crate::config::{ReconcileConfig, ServiceConfig};
use crate::desired::{self, Decision, Mode, Rules};
use crate::metrics::{ActionLabels, Metrics, ModeLabels, ServiceLabels, StepLabels, TargetLabels};
use crate::plan::{
    self, ContainerObs, ContainerState, Health, Observed, ServerObs, ServerRef, ServerState, Step,
};
use crate::store::{StepRecord, Store};

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
    /// Notified by the webhook when a notification concerns this service.
    pub wake: Arc<Notify>,
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
        ServiceRuntime {
            name: name.to_string(),
            config,
            docker,
            haproxy,
            wake: Arc::new(Notify::new()),
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
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
#[error("step {step:?} failed: {source}")]
pub struct StepFailed {
    pub step: String,
    #[source]
    pub source: BackendError,
}

/// Runs one service's loop until `shutdown` is cancelled.
pub async fn run_service(svc: ServiceRuntime, ctx: Context, shutdown: CancellationToken) {
    let mut failures: u32 = 0;
    let mut busy: u32 = 0;
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
            Err(e) => {
                failures = failures.saturating_add(1);
                warn!(service = %svc.name, error = %e, failures, "reconcile pass failed");
                backoff(&ctx.settings, failures, e.source.is_retryable())
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

/// The desired mode from the alerts firing now.
fn decide(svc: &ServiceRuntime, ctx: &Context) -> Decision {
    desired::decide(svc.rules(), &ctx.store.firing())
}

/// One pass: decide, observe, plan, execute.
pub async fn reconcile_once(
    svc: &ServiceRuntime,
    ctx: &Context,
) -> Result<PassOutcome, StepFailed> {
    let decision = decide(svc, ctx);
    let observed = observe(svc, ctx).await;
    let plan = plan::plan(decision.mode, &observed);
    record_pass(svc, ctx, &decision, &observed, &plan);

    if plan.steps.is_empty() {
        return Ok(if plan.converged() {
            PassOutcome::Converged
        } else {
            PassOutcome::Waiting
        });
    }
    info!(
        service = %svc.name,
        mode = decision.mode.as_str(),
        reason = %decision.reason,
        steps = %plan.steps.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        "executing plan"
    );
    ctx.store.event(
        &svc.name,
        "plan",
        format!(
            "mode {} ({}); alerts {:?}; steps: {}",
            decision.mode.as_str(),
            decision.reason,
            decision.failover_alerts,
            plan.steps
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    );
    for step in &plan.steps {
        // The world may have moved on while earlier steps ran (a recovery during a slow start).
        if decide(svc, ctx).mode != decision.mode {
            ctx.store.event(
                &svc.name,
                "superseded",
                format!("desired mode changed before {step}"),
            );
            return Ok(PassOutcome::Superseded);
        }
        let span = info_span!("step", service = %svc.name, action = step.action(), target = %step);
        let started = Instant::now();
        let result = execute(svc, ctx, decision.mode, step)
            .instrument(span)
            .await;
        let elapsed = started.elapsed();
        let (outcome, error) = match &result {
            Ok(StepDone::Done) => ("success", None),
            Ok(StepDone::DrainTimedOut) => ("drain_timeout", None),
            Ok(StepDone::Superseded) => ("superseded", None),
            Err(e) => ("failure", Some(e.to_string())),
        };
        record_step(svc, ctx, step, outcome, elapsed, error);
        match result {
            Ok(StepDone::Done | StepDone::DrainTimedOut) => {}
            Ok(StepDone::Superseded) => return Ok(PassOutcome::Superseded),
            Err(source) => {
                return Err(StepFailed {
                    step: step.to_string(),
                    source,
                })
            }
        }
    }
    Ok(PassOutcome::Progress)
}

fn record_pass(
    svc: &ServiceRuntime,
    ctx: &Context,
    decision: &Decision,
    observed: &Observed,
    plan: &plan::Plan,
) {
    ctx.store
        .set_observation(&svc.name, decision, observed, plan);
    let service = svc.name.clone();
    for mode in [Mode::Onprem, Mode::Cloud] {
        ctx.metrics
            .desired_mode
            .get_or_create(&ModeLabels {
                service: service.clone(),
                mode: mode.as_str().to_string(),
            })
            .set(i64::from(decision.mode == mode));
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

fn record_step(
    svc: &ServiceRuntime,
    ctx: &Context,
    step: &Step,
    outcome: &'static str,
    elapsed: Duration,
    error: Option<String>,
) {
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
    ctx.store.event(
        &svc.name,
        "step",
        match &error {
            Some(e) => format!("{step}: {outcome}: {e}"),
            None => format!("{step}: {outcome}"),
        },
    );
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
    let (containers, servers) = tokio::join!(containers, servers);
    Observed {
        containers,
        servers,
    }
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
                if decide(svc, ctx).mode != mode {
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
                if decide(svc, ctx).mode != mode {
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
