//! The reconcile loop: one task per service. Each pass derives the desired mode from the firing
//! alerts, observes Docker and every HAProxy, plans the missing steps and runs them in order.
//!
//! Woken by notifications and by a timer, so drift (a container stopped by hand, a server put
//! in maint, a restarted HAProxy) is repaired and a lost notification does not leave the world
//! wrong. A failed step is retried with exponential backoff; one failing service never blocks
//! another, because each has its own task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::backend::BackendError;
use crate::burst::UnitKind;
use crate::cluster::Cluster;
use crate::config::{ReconcileConfig, ServiceConfig};
use crate::desired::{FiringAlert, Mode};
use crate::metrics::{
    ActionLabels, KindLabels, Metrics, ModeLabels, ServiceLabels, ServiceMetrics, StepLabels,
    TargetLabels,
};
use crate::pass::{self, Goal, Pass};
use crate::plan::{self, Observed, ServerState, Step};
use crate::status::{BurstStatus, CostStatus, StatusBoard, StepRecord};
use crate::store::{ServiceState, Store};
use crate::verify;

pub mod drill;
use crate::world::{StepDone, World};

/// Test-only crash points: `FAILOVER_RESPONDER_CRASH_BEFORE=<action>` aborts the process (as
/// kill -9 would) right before the first step with that action (`start_container`,
/// `server_ready`, ...). Used by the crash tests; never set it in production.
pub const CRASH_ENV: &str = "FAILOVER_RESPONDER_CRASH_BEFORE";

/// Passes in a row that ran steps without converging before the loop slows to the interval.
const MAX_BUSY_PASSES: u32 = 10;

/// Everything one service's task needs. Cheap to clone.
#[derive(Clone)]
pub struct ServiceRuntime {
    pub name: String,
    pub config: Arc<ServiceConfig>,
    /// Its backends: observed and acted on only through this.
    pub world: World,
    /// Notified by the webhook when a notification concerns this service.
    pub wake: Arc<Notify>,
    /// Since when the on-prem probe has answered without a failure.
    onprem_healthy_since: Arc<std::sync::Mutex<Option<DateTime<Utc>>>>,
    /// When the current failover first converged (every cloud server open), for its
    /// verification; None while on-prem.
    cloud_opened_at: Arc<std::sync::Mutex<Option<DateTime<Utc>>>>,
    /// A drill was asked for (`POST .../drill`); the reconciler runs it between passes.
    drill_requested: Arc<std::sync::atomic::AtomicBool>,
    /// When this runtime was made (the responder's start): scheduled drills count from it
    /// until the first.
    created: DateTime<Utc>,
    probe: reqwest::Client,
    /// What HAProxy's checks say of on-prem, when `fast_path` is configured (its poller,
    /// `fastpath::watch::run`, is started beside the reconciler).
    pub fast_path: Option<crate::fastpath::watch::Watch>,
    /// Whether its reconciler is alive, for the systemd watchdog.
    pub liveness: Arc<Liveness>,
}

/// The services reconciled now, swapped whole by a reload. Cheap to clone; readers take a
/// snapshot ([`Services::current`]) that a reload meanwhile does not change.
#[derive(Clone, Default)]
pub struct Services(Arc<ArcSwap<Vec<ServiceRuntime>>>);

impl Services {
    pub fn new(services: Vec<ServiceRuntime>) -> Self {
        Services(Arc::new(ArcSwap::from_pointee(services)))
    }

    /// Every service now, in config order.
    pub fn current(&self) -> Arc<Vec<ServiceRuntime>> {
        self.0.load_full()
    }

    /// The service of that name now.
    pub fn get(&self, name: &str) -> Option<ServiceRuntime> {
        self.0.load().iter().find(|s| s.name == name).cloned()
    }

    /// Swaps in a reloaded set (the supervisor's config reload).
    pub fn set(&self, services: Vec<ServiceRuntime>) {
        self.0.store(Arc::new(services));
    }
}

/// What the systemd watchdog asks of a reconciler: is it in a pass, since when, did it die.
#[derive(Debug, Default)]
pub struct Liveness {
    pass_started: std::sync::Mutex<Option<Instant>>,
    died: std::sync::atomic::AtomicBool,
}

impl Liveness {
    /// Why the reconciler is not alive (None: alive): it panicked, or its pass has run longer
    /// than `stuck_after`.
    pub fn problem(&self, stuck_after: Duration) -> Option<String> {
        if self.died.load(std::sync::atomic::Ordering::SeqCst) {
            return Some("its reconciler panicked".into());
        }
        let started = *self.pass_started.lock().unwrap_or_else(|e| e.into_inner());
        let running = started?.elapsed();
        (running > stuck_after).then(|| {
            format!(
                "a pass has run for {} (reconcile.stuck_after {})",
                humantime::format_duration(Duration::from_secs(running.as_secs())),
                humantime::format_duration(stuck_after)
            )
        })
    }

    fn pass(&self, running: bool) {
        *self.pass_started.lock().unwrap_or_else(|e| e.into_inner()) = running.then(Instant::now);
    }
}

/// Marks the reconciler dead when its task unwinds from a panic (dropped on the way out).
struct DeathWatch(Arc<Liveness>);

impl Drop for DeathWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.died.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl ServiceRuntime {
    /// Asks the reconciler to run a drill between passes, and wakes it.
    pub fn request_drill(&self) {
        self.drill_requested
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Takes a drill request (Some(true)), or a scheduled drill that is due (Some(false)).
    fn drill_wanted(&self, last: Option<&crate::store::DrillReport>) -> Option<bool> {
        let asked = self
            .drill_requested
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        let due = drill::due(self.config.drill.every, last, self.created, Utc::now());
        (asked || due).then_some(asked)
    }

    /// The runtime of this service under a reloaded config: new backend clients, the same
    /// wake-up, probe history, failover verification clock, pending drill and liveness, so a
    /// reload in the middle of an outage does not restart their clocks. The fast path's
    /// view starts afresh (its poller restarts with the new config). Errors: as [`Self::new`].
    pub fn successor(&self, config: Arc<ServiceConfig>) -> Result<Self, String> {
        let fresh = ServiceRuntime::new(&self.name, config)?;
        Ok(ServiceRuntime {
            wake: self.wake.clone(),
            onprem_healthy_since: self.onprem_healthy_since.clone(),
            cloud_opened_at: self.cloud_opened_at.clone(),
            drill_requested: self.drill_requested.clone(),
            created: self.created,
            liveness: self.liveness.clone(),
            ..fresh
        })
    }

    /// Errors: a backend client that cannot be built from the config (see [`World::new`]).
    pub fn new(name: &str, config: Arc<ServiceConfig>) -> Result<Self, String> {
        Ok(ServiceRuntime {
            liveness: Arc::default(),
            fast_path: config.fast_path.as_ref().map(|_| Default::default()),
            name: name.to_string(),
            world: World::new(&config).map_err(|e| format!("service {name}: {e}"))?,
            config,
            wake: Arc::new(Notify::new()),
            onprem_healthy_since: Arc::default(),
            cloud_opened_at: Arc::default(),
            drill_requested: Arc::default(),
            created: Utc::now(),
            probe: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        })
    }

    /// Whether an alert with these labels concerns this service (matches its failover_on,
    /// failback_on, burst.on or burst.scale_in_on). Others can never move it.
    pub fn concerns(&self, labels: &crate::alert::Labels) -> bool {
        crate::matcher::matches_all(&self.config.failover_matchers, labels)
            || crate::matcher::matches_all(&self.config.failback_matchers, labels)
            || self.load_alert(labels)
    }

    /// The burst's overload or underload alert.
    fn load_alert(&self, labels: &crate::alert::Labels) -> bool {
        self.config
            .burst
            .as_ref()
            .is_some_and(|b| pass::overload_alert(b, labels) || pass::underload_alert(b, labels))
    }

    /// Since when the on-prem probe has answered continuously (None: failing or not probed).
    pub fn healthy_since(&self) -> Option<DateTime<Utc>> {
        *self
            .onprem_healthy_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// What the responder observes of on-prem itself now: the probe and the fast path.
    pub fn signals(&self) -> pass::Signals {
        pass::Signals {
            onprem_healthy_since: self.healthy_since(),
            fast_path: self
                .fast_path
                .as_ref()
                .map(crate::fastpath::watch::Watch::view)
                .unwrap_or_default(),
        }
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
    /// This node's membership of a responder cluster: steps run only while it leads. None:
    /// standalone, always acts.
    pub cluster: Option<Cluster>,
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

/// Runs one service's loop until `shutdown` is cancelled (which abandons a pass in flight) or
/// `retire` is (a reload replaced or removed the service: honoured only between passes, so a
/// step is never cut short by a reload). Cancelling `shutdown` must cancel `retire` too (a
/// child token).
pub async fn run_service(
    svc: ServiceRuntime,
    ctx: Context,
    shutdown: CancellationToken,
    retire: CancellationToken,
) {
    let _death = DeathWatch(svc.liveness.clone());
    ctx.metrics.register_service(&svc.name, Step::ACTIONS);
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
    let last_drill = ctx.store.service(&svc.name).and_then(|s| s.last_drill);
    if svc.config.drill.every.is_some() {
        // Scheduled: the series exists from the start (0 until a drill succeeds), so that
        // FailoverDrillStale sees a service that never drilled.
        ctx.metrics
            .readiness
            .drill_last_success
            .get_or_create(&ServiceLabels {
                service: svc.name.clone(),
            })
            .set(0);
    }
    if let Some(d) = &last_drill {
        drill::record_metrics(&ctx, &svc.name, d);
    }
    ctx.status.set_drill(&svc.name, last_drill);
    ctx.metrics
        .readiness
        .drill_interval
        .get_or_create(&ServiceLabels {
            service: svc.name.clone(),
        })
        .set(svc.config.drill.every.map_or(0, |d| d.as_secs() as i64));
    loop {
        if retire.is_cancelled() {
            return;
        }
        let last = ctx.store.service(&svc.name).and_then(|s| s.last_drill);
        if let Some(asked) = svc.drill_wanted(last.as_ref()) {
            // Watched like a pass: a drill that hangs starves the watchdog too.
            svc.liveness.pass(true);
            tokio::select! {
                _ = drill::run(&svc, &ctx, asked) => {}
                () = shutdown.cancelled() => return,
            }
            svc.liveness.pass(false);
        }
        svc.liveness.pass(true);
        let pass = async {
            tokio::select! {
                r = reconcile_once(&svc, &ctx) => Some(r),
                () = shutdown.cancelled() => None,
            }
        }
        .instrument(info_span!("reconcile", service = %svc.name))
        .await;
        svc.liveness.pass(false);
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
            () = retire.cancelled() => return,
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
    // Only the leader acts; it finishes the stop through its passes if this node is not it.
    if fenced(ctx).is_some() {
        return;
    }
    let closed = |o: &Observed| {
        o.servers
            .iter()
            .all(|s| matches!(s.state, ServerState::Maint | ServerState::Missing))
    };
    let (observed, units) = svc.world.observe(&svc.name, &svc.config).await;
    let ours = |o: &Observed| o.containers.iter().any(|x| x.name == name);
    let servers_closed = match units.iter().find(|u| ours(&u.observed)) {
        Some(u) => closed(&u.observed),
        None if ours(&observed) => closed(&observed),
        // Not a container of this service (the config changed since): nothing to finish.
        None => return,
    };
    if !servers_closed {
        warn!(service = %svc.name, container = name, "a server in front of it is open: not finishing the interrupted stop");
        return;
    }
    let stop = Step::StopContainer {
        container: name.to_string(),
    };
    let goal = pass::Goal {
        mode: Mode::Onprem,
        burst: None,
    };
    // Raced against the lease like any step: `run_one` (no wait in a stop to supersede); and
    // recorded like one (event, metric, status).
    let started = Instant::now();
    let result = run_one(svc, ctx, &stop, false, goal).await;
    let (outcome, error) = match &result {
        Some(Ok(_)) => ("success", None),
        Some(Err(e)) => ("failure", Some(e.to_string())),
        None => ("fenced", None),
    };
    let _ = record_step(svc, ctx, &stop, outcome, started.elapsed(), error).await;
    match result {
        Some(Ok(_)) => {
            info!(service = %svc.name, container = name, "finished the interrupted stop")
        }
        // The pass repairs what is left; the error shows there too.
        Some(Err(e)) => {
            warn!(service = %svc.name, container = name, error = %e, "could not finish the interrupted stop")
        }
        None => {
            warn!(service = %svc.name, container = name, "leadership could lapse: the interrupted stop is left to the next leader")
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

/// Why this node may not execute steps now: a follower, or a leader no longer certain of its
/// lease. None: standalone, or the leader.
fn fenced(ctx: &Context) -> Option<String> {
    ctx.cluster.as_ref().and_then(Cluster::why_not)
}

/// Persists a service's state: standalone, in the local store; on a cluster's leader, there
/// and in etcd (a txn guarded by its leader key). Returns why this node must not act on it
/// (None: written): a follower writes nothing (its state is the leader's, taken at every
/// pass), and a leader whose shared write failed (not the leader any more, etcd not
/// answering) must not act either.
async fn persist(
    svc: &ServiceRuntime,
    ctx: &Context,
    state: ServiceState,
) -> Result<Option<String>, crate::store::StoreError> {
    let Some(c) = &ctx.cluster else {
        ctx.store.set_service(&svc.name, state).await?;
        return Ok(None);
    };
    if !c.may_act() {
        return Ok(Some("not the leader".into()));
    }
    ctx.store.set_service(&svc.name, state.clone()).await?;
    let written = match serde_json::to_vec(&state) {
        Ok(bytes) => c.put_state(&svc.name, bytes).await,
        Err(e) => Err(e.to_string()),
    };
    Ok(written.err().map(|e| {
        warn!(service = %svc.name, error = %e, "shared state not written: not acting");
        format!("shared state not written ({e})")
    }))
}

/// [`persist`] for the drill: None when written, else why this node must not act (a store
/// error included).
async fn persist_state(svc: &ServiceRuntime, ctx: &Context, state: ServiceState) -> Option<String> {
    match persist(svc, ctx, state).await {
        Ok(why) => why,
        Err(e) => Some(format!("state not stored: {e}")),
    }
}

/// [`record_step`] for the drill: a store error is logged, the drill goes on.
async fn record_step_outcome(
    svc: &ServiceRuntime,
    ctx: &Context,
    step: &Step,
    outcome: &'static str,
    elapsed: Duration,
    error: Option<String>,
) {
    if let Err(e) = record_step(svc, ctx, step, outcome, elapsed, error).await {
        warn!(service = %svc.name, error = %e, "could not record the step");
    }
}

/// In a cluster: takes the service's shared state (the leader's) and the cluster's override
/// from etcd into the local store, so every node decides from the same history (hold-down,
/// the flap cap, the step in flight) and honours an override sent to any node. The only
/// writer of a clustered node's override. etcd not answering: the local copy stands (this
/// node cannot act then anyway); an override never set in etcd leaves the local one.
async fn adopt_shared(svc: &ServiceRuntime, ctx: &Context) -> Result<(), crate::store::StoreError> {
    let Some(c) = &ctx.cluster else {
        return Ok(());
    };
    let Ok(shared) = c.shared(&svc.name).await else {
        return Ok(());
    };
    let local = ctx.store.service(&svc.name);
    if shared.state.is_none() && c.may_act() {
        // Nothing recorded yet (a new cluster, or one made of standalone responders): the
        // first leader's state becomes the cluster's, so that a node with an older local
        // history never decides from it after a takeover.
        if let Ok(bytes) = serde_json::to_vec(&state_of(svc, ctx)) {
            match c.put_state(&svc.name, bytes).await {
                Ok(()) => {
                    info!(service = %svc.name, "the cluster had no state for this service: wrote this node's")
                }
                Err(e) => {
                    warn!(service = %svc.name, error = %e, "could not write this node's state to the cluster")
                }
            }
        }
    }
    let state = shared.state.as_deref().and_then(|b| {
        serde_json::from_slice::<ServiceState>(b)
            .map_err(|e| warn!(service = %svc.name, error = %e, "the cluster's state does not parse; keeping this node's"))
            .ok()
    });
    if let Some(state) = state {
        let same = local.as_ref().is_some_and(|l| {
            // The override is compared on its own, below: the stored one is kept by set_service.
            ServiceState {
                override_: state.override_,
                ..l.clone()
            } == state
        });
        if !same {
            ctx.store.set_service(&svc.name, state).await?;
        }
    }
    let Some(raw) = shared.override_ else {
        return Ok(());
    };
    let Ok(wanted) = serde_json::from_slice::<Option<crate::desired::Override>>(&raw) else {
        warn!(service = %svc.name, "the cluster's override does not parse; keeping this node's");
        return Ok(());
    };
    let held = local.and_then(|l| l.override_);
    if held != wanted {
        ctx.store.set_override(&svc.name, wanted).await?;
        let message = format!("from the cluster: override {held:?} -> {wanted:?}");
        ctx.store
            .event(&svc.name, "override", message, vec![])
            .await?;
    }
    Ok(())
}

/// The persisted state of a service, or a fresh one (on-prem) the first time.
fn state_of(svc: &ServiceRuntime, ctx: &Context) -> ServiceState {
    ctx.store
        .service(&svc.name)
        .unwrap_or_else(|| ServiceState::new(Utc::now()))
}

/// What the service's pass would decide now, from its persisted state and the alerts firing.
fn desired_now(svc: &ServiceRuntime, ctx: &Context) -> pass::Desired {
    pass::desired(
        &svc.config,
        &state_of(svc, ctx),
        &ctx.store.firing(),
        svc.signals(),
        Utc::now(),
    )
}

/// Whether a wait or the next step should stop because the goal has changed.
fn superseded(svc: &ServiceRuntime, ctx: &Context, goal: Goal) -> bool {
    let d = desired_now(svc, ctx);
    d.effective.mode != goal.mode || d.effective.paused || d.goal().burst != goal.burst
}

/// One pass: decide the mode and record it, observe, finish the pass (pure, [`pass`]), record,
/// execute.
pub async fn reconcile_once(svc: &ServiceRuntime, ctx: &Context) -> Result<PassOutcome, PassError> {
    adopt_shared(svc, ctx).await?;
    let state = state_of(svc, ctx);
    // A leader that takes over a stop the last one died in finishes it first, as a restarted
    // standalone responder does (see `finish_interrupted_stop`).
    if let (Some(_), None, Some(step)) = (&ctx.cluster, fenced(ctx), &state.step_in_flight) {
        finish_interrupted_stop(svc, ctx, step).await;
    }
    if state.mode == Mode::Cloud {
        svc.probe_onprem().await;
    }
    let firing = ctx.store.firing();
    // The pass's one clock reading.
    let now = Utc::now();
    let signals = svc.signals();
    let decided = pass::decide(&svc.config, &state, &firing, signals, now);
    // Recorded before observing: a slow backend must not delay a failover's record (nor the
    // hold-down that counts from it).
    // This service's series, resolved once for the pass.
    let m = ctx.metrics.service(&svc.name);
    record_transition(svc, ctx, &m, &state, &decided).await?;
    let decided_state = decided.next_state.clone();
    let (observed, units) = svc.world.observe(&svc.name, &svc.config).await;
    let p = pass::finish(
        &svc.config,
        decided,
        &pass::Input {
            state: &decided_state,
            firing: &firing,
            observed: &observed,
            units: &units,
            signals,
            now,
        },
    );
    record_scale(svc, ctx, &decided_state, &p, &firing).await?;
    let blocked_before = ctx.status.blocked(&svc.name);
    record_pass(svc, ctx, &m, &p.desired, &observed, &p.plan);
    record_burst(svc, ctx, &m, &p, &firing, now);
    record_blocked(svc, ctx, &blocked_before, &p.plan.blocked).await?;
    let verify_after = record_verification(svc, ctx, &p, now).await?;

    let plan = &p.plan;
    let eff = &p.desired.effective;
    let mut state = p.next_state.clone();
    if plan.steps.is_empty() {
        if state.step_in_flight.is_some() {
            state.step_in_flight = None;
            persist(svc, ctx, state).await?;
        }
        let recheck = match (p.recheck_after, verify_after) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        return Ok(match (plan.converged(), recheck) {
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
    let fenced = fenced(ctx);
    if eff.paused || ctx.dry_run || fenced.is_some() {
        let why = match (eff.paused, ctx.dry_run, fenced) {
            (true, _, _) => "paused".to_string(),
            (_, true, _) => "dry run".to_string(),
            (_, _, why) => why.unwrap_or_default(),
        };
        // A follower holds every pass while a plan is pending: debug, not info, for it.
        if ctx.cluster.is_some() && !eff.paused && !ctx.dry_run {
            tracing::debug!(service = %svc.name, mode = eff.mode.as_str(), steps = %steps_text, "{why}: not executing");
        } else {
            info!(service = %svc.name, mode = eff.mode.as_str(), steps = %steps_text, "{why}: not executing");
        }
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
    let goal = p.desired.goal();
    let burst_text = goal
        .burst
        .map(|n| format!(", burst {n} unit(s)"))
        .unwrap_or_default();
    info!(service = %svc.name, mode = eff.mode.as_str(), burst = ?goal.burst, reason = %decision.reason, steps = %steps_text, "executing plan");
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
/// restart) and after; stops when the goal changes or a step fails.
async fn run_steps(
    svc: &ServiceRuntime,
    ctx: &Context,
    p: &Pass,
    mut state: ServiceState,
) -> Result<PassOutcome, PassError> {
    let goal = p.desired.goal();
    let crash_before = std::env::var(CRASH_ENV).ok();
    for (i, step) in p.plan.steps.iter().enumerate() {
        // The world may have moved on while earlier steps ran (a recovery during a slow start,
        // an override, the next burst step).
        if superseded(svc, ctx, goal) {
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
        if let Some(why) = fenced(ctx) {
            return hold_fenced(svc, ctx, &why, step).await;
        }
        // Recorded before it runs, so a crash in the middle is known at restart (and, in a
        // cluster, by the next leader): nothing is executed unrecorded.
        state.step_in_flight = Some(step.to_string());
        if let Some(why) = persist(svc, ctx, state.clone()).await? {
            return hold_fenced(svc, ctx, &why, step).await;
        }
        if crash_before.as_deref() == Some(step.action()) {
            // Test-only: die as kill -9 would, with the step recorded and not done.
            std::process::abort();
        }
        let started = Instant::now();
        // Steps after `burst_from` act on burst units (their EC2 steps go to the burst pool).
        let result = run_one(svc, ctx, step, i >= p.burst_from, goal).await;
        let elapsed = started.elapsed();
        let (outcome, error) = outcome_of(&result);
        record_step(svc, ctx, step, outcome, elapsed, error).await?;
        match result {
            Some(Ok(StepDone::Done | StepDone::DrainTimedOut)) => {}
            Some(Ok(StepDone::Superseded)) => return Ok(PassOutcome::Superseded),
            None => {
                warn!(service = %svc.name, step = %step, "leadership could lapse: abandoned the step");
                return Ok(PassOutcome::Held {
                    after: ctx.settings.interval,
                });
            }
            Some(Err(source)) => {
                return Err(PassError::Step {
                    step: step.to_string(),
                    source,
                })
            }
        }
    }
    state.step_in_flight = None;
    persist(svc, ctx, state).await?;
    Ok(PassOutcome::Progress)
}

/// A step's outcome label (for the metric, the event and status) and its error, from what
/// [`run_one`] returned.
fn outcome_of(result: &Option<Result<StepDone, BackendError>>) -> (&'static str, Option<String>) {
    match result {
        Some(Ok(StepDone::Done)) => ("success", None),
        Some(Ok(StepDone::DrainTimedOut)) => ("drain_timeout", None),
        Some(Ok(StepDone::Superseded)) => ("superseded", None),
        Some(Err(e)) => ("failure", Some(e.to_string())),
        None => ("fenced", None),
    }
}

/// Runs one step on the world. None: abandoned because this node's lease could lapse (in a
/// cluster, a step still running then is dropped at its next await point; the next leader
/// observes and finishes it).
async fn run_one(
    svc: &ServiceRuntime,
    ctx: &Context,
    step: &Step,
    burst: bool,
    goal: Goal,
) -> Option<Result<StepDone, BackendError>> {
    let span = info_span!("step", service = %svc.name, backend = step.backend(), action = step.action(), target = %step);
    let moved_on = || superseded(svc, ctx, goal);
    let run = svc
        .world
        .run(&svc.name, &svc.config, step, burst, &moved_on)
        .instrument(span);
    match &ctx.cluster {
        // Biased, the fence first: a step is never polled (never sends a request) once the
        // deadline has passed.
        Some(c) => tokio::select! {
            biased;
            () = c.lost() => None,
            r = run => Some(r),
        },
        None => Some(run.await),
    }
}

/// Says that this node does not run `step` (`why`: a follower, or a leader whose lease or
/// shared write failed) and holds the pass.
async fn hold_fenced(
    svc: &ServiceRuntime,
    ctx: &Context,
    why: &str,
    step: &Step,
) -> Result<PassOutcome, PassError> {
    let message = format!("{why}: not running {step}");
    ctx.store
        .event(&svc.name, "fenced", message, vec![])
        .await?;
    Ok(PassOutcome::Held {
        after: ctx.settings.interval,
    })
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
    // A follower's decisions are what it would do; the leader's are the cluster's record (a
    // follower would otherwise record a change every pass that the leader's state undoes).
    if fenced(ctx).is_some() {
        return Ok(());
    }
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
    // Unconverged first, then the new mode: the status never pairs the new mode with the
    // previous pass's "converged".
    if d.transition.is_some() {
        ctx.status.mark_unconverged(&svc.name);
    }
    if d.next_state != *before {
        // The mode, or the fast path's episode without a mode change. In a cluster, a shared
        // write that fails keeps this node from acting later (the step_in_flight write before
        // each step is the gate): nothing more to do here.
        persist(svc, ctx, d.next_state.clone()).await?;
    }
    record_fast_path(svc, ctx, d).await?;
    let Some((from, to)) = d.transition else {
        return Ok(());
    };
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

/// Says what the pass did to the fast path's episode: an event, a log line and a metric.
async fn record_fast_path(
    svc: &ServiceRuntime,
    ctx: &Context,
    d: &pass::Decided,
) -> Result<(), crate::store::StoreError> {
    use crate::fastpath::Change;
    let labels = ServiceLabels {
        service: svc.name.clone(),
    };
    if let Some(f) = &svc.config.fast_path {
        let overdue = d
            .next_state
            .fast_path
            .as_ref()
            .is_some_and(|e| Utc::now() >= e.deadline(f.confirm_within));
        ctx.metrics
            .fast_path
            .overdue
            .get_or_create(&labels)
            .set(i64::from(overdue));
    }
    let Some(change) = d.fast_path else {
        return Ok(());
    };
    let reason = &d.decision.reason;
    let message = match change {
        Change::Triggered => {
            ctx.metrics.fast_path.triggers.get_or_create(&labels).inc();
            warn!(service = %svc.name, reason = %reason, "fast path: failing over before the alert");
            format!(
                "triggered: {}",
                reason.strip_prefix("fast path: ").unwrap_or(reason)
            )
        }
        Change::Confirmed { after } => {
            let after = humantime::format_duration(Duration::from_secs(after.as_secs()));
            info!(service = %svc.name, after = %after, "fast path confirmed by the failover alert");
            format!("confirmed: the failover alert fired {after} after the trigger")
        }
        Change::Overridden => {
            info!(service = %svc.name, "fast path: the episode ended by the override");
            format!(
                "closed by the override ({}): no longer waiting for the failover alert",
                d.effective.held.as_deref().unwrap_or("on-prem")
            )
        }
        Change::Unconfirmed => {
            ctx.metrics
                .fast_path
                .unconfirmed
                .get_or_create(&labels)
                .inc();
            warn!(service = %svc.name, reason = %reason, held = d.effective.held.as_deref().unwrap_or(""), "fast path unconfirmed: failback allowed (damping still applies)");
            format!(
                "unconfirmed: {}",
                reason
                    .strip_prefix("fast path unconfirmed: ")
                    .unwrap_or(reason)
            )
        }
    };
    ctx.store
        .event(
            &svc.name,
            "fast_path",
            message,
            d.decision.failover_alerts.clone(),
        )
        .await
        .map(|_| ())
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
    if p.next_state != *before && persist(svc, ctx, p.next_state.clone()).await?.is_some() {
        // Not this node's to record (a follower, or a leader that lost its lease).
        return Ok(());
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
            .filter(|a| pass::overload_alert(b, &a.labels) || pass::underload_alert(b, &a.labels))
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
    m.instance_seconds_today.set(hours * 3600.0);
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
            let load = pass::load(b, firing);
            let bm = ctx.metrics.burst(&svc.name);
            bm.desired.set(i64::from(sc.state.target));
            bm.open.set(i64::from(open));
            Some(BurstStatus {
                target: sc.state.target,
                min: b.min,
                max: b.max,
                overloaded: load.overloaded,
                underloaded: load.underloaded,
                held: sc.held.clone(),
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

/// After a failover converged, whether HAProxy's own check sees the cloud servers UP within
/// `timeouts.verify` ([`verify::verdict`], asked with `show stat` while pending): status, the
/// `failover_verified` metric, and an event and a log line when the verdict is reached. The
/// servers stay open either way: on-prem is down. Returns when to look again while pending.
async fn record_verification(
    svc: &ServiceRuntime,
    ctx: &Context,
    p: &Pass,
    now: DateTime<Utc>,
) -> Result<Option<Duration>, crate::store::StoreError> {
    let in_cloud = p.desired.effective.mode == Mode::Cloud;
    let opened = {
        let mut at = svc
            .cloud_opened_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match (in_cloud, p.plan.converged()) {
            (false, _) => *at = None,
            (true, true) => *at = Some(at.unwrap_or(now)),
            (true, false) => {}
        }
        *at
    };
    // A family's series is a lock guard: set it and let go, never across an await.
    let set_metric = |v: bool| {
        ctx.metrics
            .readiness
            .failover_verified
            .get_or_create(&crate::metrics::ServiceLabels {
                service: svc.name.clone(),
            })
            .set(i64::from(v));
    };
    let Some(opened) = opened else {
        set_metric(true);
        ctx.status.set_verification(&svc.name, None);
        return Ok(None);
    };
    let limit = svc.config.timeouts.verify;
    let before = ctx
        .status
        .get(&svc.name, |s| s.verification.clone())
        .flatten()
        .filter(|v| v.opened_at == opened);
    // A verdict reached stands until the next failover: verification is of the failover, and
    // HAProxy's own metrics watch the servers after it.
    if let Some(v) = before.as_ref().filter(|v| v.verified.is_some()) {
        set_metric(v.verified != Some(false));
        return Ok(None);
    }
    let checked = svc.world.checked(&svc.config).await;
    let v = verify::verdict(&checked, opened, now, limit);
    let before = before.and_then(|v| v.verified);
    set_metric(v.verified != Some(false));
    if v.verified.is_some() && v.verified != before {
        if v.verified == Some(false) {
            warn!(service = %svc.name, "failover not verified: {}", v.message);
        } else {
            info!(service = %svc.name, "failover verified: {}", v.message);
        }
        let message = format!(
            "failover {}: {}",
            if v.verified == Some(true) {
                "verified"
            } else {
                "NOT verified"
            },
            v.message
        );
        ctx.store
            .event(&svc.name, "verify", message, vec![])
            .await?;
    }
    // Pending: look again soon, and at the limit at the latest.
    let recheck = v.verified.is_none().then(|| {
        let waited = (now - opened).to_std().unwrap_or_default();
        limit.saturating_sub(waited).min(Duration::from_secs(1))
    });
    ctx.status.set_verification(&svc.name, Some(v));
    Ok(recheck)
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
    let up = svc.world.answered(observed);
    for (backend, target, up) in up {
        ctx.metrics
            .backend_up
            .get_or_create(&TargetLabels {
                service: service.clone(),
                backend: backend.into(),
                target,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let s = ReconcileConfig {
            interval: Duration::from_secs(10),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            ..ReconcileConfig::default()
        };
        let got: Vec<u64> = (1..=8).map(|n| backoff(&s, n, true).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(&s, 1, false), Duration::from_secs(60));
        assert_eq!(backoff(&s, u32::MAX, true), Duration::from_secs(60));
    }
}
