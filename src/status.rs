//! The status board: what each service's reconciler last decided, saw and did, and how the
//! last Alertmanager resync went, for `GET /api/v1/status`, `/-/ready` and the plan preview.
//! Memory only: a restart starts it empty and the first pass fills it again (what must survive
//! a restart is in the store). [`StatusBoard`] is cheap to clone; every clone shows the same
//! board.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::desired::Decision;
use crate::plan::{Observed, Plan};

/// How many step records each service's status keeps.
const MAX_STEPS: usize = 50;

/// One step the reconciler ran, with its outcome (status only, not persisted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub at: DateTime<Utc>,
    pub step: String,
    pub action: String,
    pub outcome: String,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the status API shows about one service beyond its persisted state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub desired: Option<Decision>,
    pub observed: Observed,
    pub converged: bool,
    /// What keeps it from converging without a step (unreachable backends...).
    pub waiting: Vec<String>,
    /// What only a human can fix before the plan can go on; each names its target and the fix.
    pub blocked: Vec<String>,
    /// Why the mode is held against what the alerts say (hold-down, probe, cap, override).
    pub held: Option<String>,
    /// Steps still to run in the current plan.
    pub pending_steps: Vec<String>,
    pub last_reconcile_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub last_steps: VecDeque<StepRecord>,
    /// Bursting: the count, what each unit looks like, and what holds growth back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<BurstStatus>,
    /// Cloud units running now, since when, and what they cost.
    pub cost: CostStatus,
    /// The last readiness check: would a failover work now? None before the first.
    pub readiness: Option<Readiness>,
    /// The drill running now, or the last one (see `reconcile::drill`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_drill: Option<crate::store::DrillReport>,
    /// In cloud: whether HAProxy's own check sees the opened cloud servers UP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<crate::verify::Verification>,
}

/// One readiness check's answer (see `readiness`), as status and the check endpoint show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// No problem found: as far as can be checked without acting, a failover would work.
    pub ready: bool,
    pub checked_at: DateTime<Utc>,
    pub problems: Vec<crate::backend::Problem>,
}

/// The burst part of a service's status.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BurstStatus {
    /// Units that should be up and open now.
    pub target: u32,
    pub min: u32,
    pub max: u32,
    /// Whether the overload alert fires now.
    pub overloaded: bool,
    /// Whether the underload alert (`scale_in_on`) fires now; absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub underloaded: Option<bool>,
    /// Why units stay although the overload alert is quiet (the underload alert does not
    /// fire), while they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// Slots open (ready) on every HAProxy.
    pub open: u32,
    /// Why the cost guard holds growth back, while it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capped: Option<String>,
    pub units: Vec<crate::plan::UnitObs>,
}

/// The cost part of a service's status.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CostStatus {
    /// Running units by name, with since when.
    pub running: BTreeMap<String, crate::burst::Running>,
    pub instances_running: u32,
    pub instance_hours_today: f64,
    /// Estimate at the configured prices.
    pub estimated_cost_per_hour: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_instance_hours_per_day: Option<f64>,
}

/// Result of the last Alertmanager resync.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResyncStatus {
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub alerts: usize,
    /// Of `alerts`, how many Alertmanager silences or inhibits: counted as firing all the same
    /// (a silence mutes notifications, not the outage).
    pub muted: usize,
}

/// The status of every service (by name) and of the resync. Cheap to clone.
#[derive(Clone, Default)]
pub struct StatusBoard {
    inner: Arc<RwLock<Board>>,
}

#[derive(Default)]
struct Board {
    services: BTreeMap<String, ServiceStatus>,
    resync: ResyncStatus,
}

impl StatusBoard {
    fn read(&self) -> RwLockReadGuard<'_, Board> {
        // No code holding the lock can panic halfway through an update; keep serving regardless.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Board> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Updates one service's volatile status after a reconcile pass.
    pub fn set_observation(
        &self,
        service: &str,
        decision: &Decision,
        held: Option<String>,
        observed: &Observed,
        plan: &Plan,
    ) {
        let mut g = self.write();
        let s = g.services.entry(service.to_string()).or_default();
        s.desired = Some(decision.clone());
        s.held = held;
        s.observed = observed.clone();
        s.converged = plan.converged();
        s.waiting = plan.waiting.clone();
        s.blocked = plan.blocked.clone();
        s.pending_steps = plan.steps.iter().map(ToString::to_string).collect();
        s.last_reconcile_at = Some(Utc::now());
    }

    /// What blocked the service's plan at its last pass.
    pub fn blocked(&self, service: &str) -> Vec<String> {
        self.get(service, |s| s.blocked.clone()).unwrap_or_default()
    }

    /// Records the burst and cost part of a service's status (memory only).
    pub fn set_burst_status(&self, service: &str, burst: Option<BurstStatus>, cost: CostStatus) {
        self.update(service, |s| {
            s.burst = burst;
            s.cost = cost;
        });
    }

    /// Changes one service's status in place (created empty the first time).
    fn update<T>(&self, service: &str, f: impl FnOnce(&mut ServiceStatus) -> T) -> T {
        f(self
            .write()
            .services
            .entry(service.to_string())
            .or_default())
    }

    /// One part of one service's status, read without copying the board (None before its
    /// first pass).
    pub fn get<T>(&self, service: &str, f: impl FnOnce(&ServiceStatus) -> T) -> Option<T> {
        self.read().services.get(service).map(f)
    }

    /// Records the verification of a service's failover (None: not in cloud).
    pub fn set_verification(&self, service: &str, v: Option<crate::verify::Verification>) {
        self.update(service, |s| s.verification = v);
    }

    /// Records the drill running now, or the last one.
    /// Drops a service a reload removed (after its last pass).
    pub fn forget(&self, service: &str) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .services
            .remove(service);
    }

    pub fn set_drill(&self, service: &str, d: Option<crate::store::DrillReport>) {
        self.update(service, |s| s.last_drill = d);
    }

    /// Records a service's last readiness check; returns the one before it.
    pub fn set_readiness(&self, service: &str, r: Readiness) -> Option<Readiness> {
        self.update(service, |s| s.readiness.replace(r))
    }

    /// Records a step outcome in the status; a failure also sets `last_error`.
    pub fn record_step(&self, service: &str, record: StepRecord) {
        self.update(service, |s| {
            if let Some(e) = &record.error {
                s.last_error = Some(format!("{}: {e}", record.step));
            }
            s.last_steps.push_back(record);
            while s.last_steps.len() > MAX_STEPS {
                s.last_steps.pop_front();
            }
        });
    }

    /// Marks a service not converged until its next pass has looked: called when its mode
    /// changes, so the status never pairs the new mode with the old pass's "converged".
    pub fn mark_unconverged(&self, service: &str) {
        self.update(service, |s| s.converged = false);
    }

    /// Sets the failure count after a pass (0 clears `last_error`).
    pub fn set_failures(&self, service: &str, failures: u32) {
        self.update(service, |s| {
            s.consecutive_failures = failures;
            if failures == 0 {
                s.last_error = None;
            }
        });
    }

    /// Every service's status, by name; a service absent has had no pass yet.
    pub fn service_status(&self) -> BTreeMap<String, ServiceStatus> {
        self.read().services.clone()
    }

    /// Records the outcome of the last resync.
    pub fn set_resync(&self, r: ResyncStatus) {
        self.write().resync = r;
    }

    /// The outcome of the last resync (all empty before the first).
    pub fn resync(&self) -> ResyncStatus {
        self.read().resync.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: usize, error: Option<&str>) -> StepRecord {
        StepRecord {
            at: Utc::now(),
            step: format!("step {n}"),
            action: "a".into(),
            outcome: if error.is_some() { "failed" } else { "done" }.into(),
            duration_ms: 1,
            error: error.map(String::from),
        }
    }

    #[test]
    fn clones_show_one_board() {
        let board = StatusBoard::default();
        let reconciler = board.clone();
        reconciler.record_step("svc", step(0, Some("refused")));
        reconciler.set_failures("svc", 2);
        let seen = board.service_status();
        assert_eq!(seen["svc"].consecutive_failures, 2);
        assert_eq!(seen["svc"].last_error.as_deref(), Some("step 0: refused"));
        // A pass that went through clears the error.
        reconciler.set_failures("svc", 0);
        assert_eq!(board.service_status()["svc"].last_error, None);
        // The resync's outcome too.
        reconciler.set_resync(ResyncStatus {
            alerts: 3,
            ..ResyncStatus::default()
        });
        assert_eq!(board.resync().alerts, 3);
    }

    #[test]
    fn the_newest_steps_are_kept() {
        let board = StatusBoard::default();
        for n in 0..MAX_STEPS + 5 {
            board.record_step("svc", step(n, None));
        }
        let steps = &board.service_status()["svc"].last_steps;
        assert_eq!(steps.len(), MAX_STEPS);
        assert_eq!(steps.front().map(|s| s.step.as_str()), Some("step 5"));
    }
}
