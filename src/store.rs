//! The responder's memory: the firing alerts, recent notifications, each service's status and an
//! event history. A cheap-to-clone handle (`Arc` inside) shared by the HTTP handlers and the
//! reconcilers.
//!
//! Kept in memory in this version; every collection is bounded so an alert storm cannot grow it
//! without limit. The interface is what a durable store must offer too: `record` is the one
//! write path for notifications and returns only once the notification is recorded.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::alert::{Labels, Notification};
use crate::desired::{Decision, FiringAlert};
use crate::plan::{Observed, Plan};

/// How many resolved-alert tombstones are kept to refuse stale, re-delivered "firing" copies.
const MAX_TOMBSTONES: usize = 10_000;
/// How many notifications the status keeps.
const MAX_NOTIFICATIONS: usize = 100;
/// How many events are kept.
const MAX_EVENTS: usize = 1_000;
/// How many step records each service keeps.
const MAX_STEPS: usize = 50;

/// Shared handle to the store.
#[derive(Clone, Default)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    firing: BTreeMap<String, StoredAlert>,
    /// fingerprint -> startsAt of the resolved incarnation. A firing copy of that same
    /// incarnation arriving late (a retried or HA-duplicated notification) must not revive it.
    tombstones: BTreeMap<String, DateTime<Utc>>,
    notifications: VecDeque<NotificationRecord>,
    services: BTreeMap<String, ServiceStatus>,
    events: VecDeque<Event>,
    next_event_id: u64,
}

/// A firing alert and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct StoredAlert {
    pub fingerprint: String,
    pub labels: Labels,
    pub starts_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub group_key: String,
}

/// Summary of one accepted notification.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationRecord {
    pub received_at: DateTime<Utc>,
    pub group_key: String,
    pub status: crate::alert::AlertStatus,
    pub alerts: usize,
    pub truncated_alerts: u64,
    /// Whether it changed the firing set (a duplicate does not).
    pub changed: bool,
}

/// What recording a notification did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordOutcome {
    /// The firing set changed.
    pub changed: bool,
    /// Alerts that concern a configured service.
    pub relevant: usize,
}

/// One step the reconciler ran, with its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub at: DateTime<Utc>,
    pub step: String,
    pub action: &'static str,
    pub outcome: &'static str,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything the status API shows about one service.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServiceStatus {
    pub desired: Option<Decision>,
    pub observed: Observed,
    pub converged: bool,
    /// What keeps it from converging without a step (unreachable backends...).
    pub waiting: Vec<String>,
    /// Steps still to run in the current plan.
    pub pending_steps: Vec<String>,
    pub last_reconcile_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub last_steps: VecDeque<StepRecord>,
}

/// A decision or step, for the event history.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: u64,
    pub at: DateTime<Utc>,
    pub service: String,
    pub kind: String,
    pub message: String,
}

impl Store {
    pub fn new() -> Self {
        Store::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // more than stopping the responder would, so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a notification: firing alerts join the firing set, resolved ones leave it.
    /// Only alerts for which `relevant` is true are kept.
    pub fn record(
        &self,
        n: &Notification,
        relevant: impl Fn(&Labels) -> bool,
        now: DateTime<Utc>,
    ) -> RecordOutcome {
        let mut g = self.lock();
        let inner = &mut *g;
        let mut changed = false;
        let mut count = 0;
        for a in n.alerts.iter().filter(|a| relevant(&a.labels)) {
            count += 1;
            if a.is_firing_at(now) {
                let stale = inner
                    .tombstones
                    .get(&a.fingerprint)
                    .is_some_and(|resolved_start| a.starts_at <= *resolved_start);
                if stale {
                    continue;
                }
                let entry = StoredAlert {
                    fingerprint: a.fingerprint.clone(),
                    labels: a.labels.clone(),
                    starts_at: a.starts_at,
                    received_at: now,
                    group_key: n.group_key.clone(),
                };
                let prev = inner.firing.insert(a.fingerprint.clone(), entry);
                changed |= prev.is_none_or(|p| p.starts_at != a.starts_at || p.labels != a.labels);
            } else {
                changed |= inner.firing.remove(&a.fingerprint).is_some();
                let t = inner
                    .tombstones
                    .entry(a.fingerprint.clone())
                    .or_insert(a.starts_at);
                *t = (*t).max(a.starts_at);
                if inner.tombstones.len() > MAX_TOMBSTONES {
                    // Drop the oldest incarnation; it is long past any retry.
                    if let Some(oldest) = inner
                        .tombstones
                        .iter()
                        .min_by_key(|(_, t)| **t)
                        .map(|(k, _)| k.clone())
                    {
                        inner.tombstones.remove(&oldest);
                    }
                }
            }
        }
        inner.notifications.push_back(NotificationRecord {
            received_at: now,
            group_key: n.group_key.clone(),
            status: n.status,
            alerts: n.alerts.len(),
            truncated_alerts: n.truncated_alerts,
            changed,
        });
        while inner.notifications.len() > MAX_NOTIFICATIONS {
            inner.notifications.pop_front();
        }
        RecordOutcome {
            changed,
            relevant: count,
        }
    }

    /// The alerts firing now, as the planner reads them.
    pub fn firing(&self) -> Vec<FiringAlert> {
        self.lock()
            .firing
            .values()
            .map(|a| FiringAlert {
                fingerprint: a.fingerprint.clone(),
                labels: a.labels.clone(),
                starts_at: a.starts_at,
            })
            .collect()
    }

    /// The firing alerts with their provenance.
    pub fn firing_detail(&self) -> Vec<StoredAlert> {
        self.lock().firing.values().cloned().collect()
    }

    pub fn notifications(&self) -> Vec<NotificationRecord> {
        self.lock().notifications.iter().cloned().collect()
    }

    /// Updates one service's status after a reconcile pass.
    pub fn set_observation(
        &self,
        service: &str,
        decision: &Decision,
        observed: &Observed,
        plan: &Plan,
    ) {
        let mut g = self.lock();
        let s = g.services.entry(service.to_string()).or_default();
        s.desired = Some(decision.clone());
        s.observed = observed.clone();
        s.converged = plan.converged();
        s.waiting = plan.waiting.clone();
        s.pending_steps = plan.steps.iter().map(ToString::to_string).collect();
        s.last_reconcile_at = Some(Utc::now());
    }

    /// Records a step outcome; a failure also sets `last_error`.
    pub fn record_step(&self, service: &str, record: StepRecord) {
        let mut g = self.lock();
        let s = g.services.entry(service.to_string()).or_default();
        if let Some(e) = &record.error {
            s.last_error = Some(format!("{}: {e}", record.step));
        }
        s.last_steps.push_back(record);
        while s.last_steps.len() > MAX_STEPS {
            s.last_steps.pop_front();
        }
    }

    /// Sets the failure count after a pass (0 clears `last_error`).
    pub fn set_failures(&self, service: &str, failures: u32) {
        let mut g = self.lock();
        let s = g.services.entry(service.to_string()).or_default();
        s.consecutive_failures = failures;
        if failures == 0 {
            s.last_error = None;
        }
    }

    pub fn service_status(&self) -> BTreeMap<String, ServiceStatus> {
        self.lock().services.clone()
    }

    /// Appends to the event history.
    pub fn event(&self, service: &str, kind: &str, message: String) {
        let mut g = self.lock();
        g.next_event_id += 1;
        let id = g.next_event_id;
        g.events.push_back(Event {
            id,
            at: Utc::now(),
            service: service.to_string(),
            kind: kind.to_string(),
            message,
        });
        while g.events.len() > MAX_EVENTS {
            g.events.pop_front();
        }
    }

    pub fn events(&self) -> Vec<Event> {
        self.lock().events.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::parse_notification;

    fn fixture(name: &str) -> Notification {
        let path = format!(
            "{}/../shared/fixtures/alertmanager-0.25/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        parse_notification(&body).expect("fixture parses")
    }

    #[test]
    fn firing_then_resolved_then_stale_firing() {
        let store = Store::new();
        let now = Utc::now();
        let all = |_: &Labels| true;
        let firing = fixture("onprem_down-firing.json");
        let resolved = fixture("onprem_down-resolved.json");

        let o = store.record(&firing, all, now);
        assert_eq!(
            o,
            RecordOutcome {
                changed: true,
                relevant: 1
            }
        );
        assert_eq!(store.firing().len(), 1);
        // A duplicate changes nothing.
        assert!(!store.record(&firing, all, now).changed);

        assert!(store.record(&resolved, all, now).changed);
        assert!(store.firing().is_empty());
        // The firing copy of the resolved incarnation, delivered late, stays dead.
        assert!(!store.record(&firing, all, now).changed);
        assert!(store.firing().is_empty());
        assert_eq!(store.notifications().len(), 4);
    }

    #[test]
    fn irrelevant_alerts_are_not_kept() {
        let store = Store::new();
        let o = store.record(
            &fixture("onprem_overloaded-truncated.json"),
            |_| false,
            Utc::now(),
        );
        assert_eq!(
            o,
            RecordOutcome {
                changed: false,
                relevant: 0
            }
        );
        assert!(store.firing().is_empty());
    }

    #[test]
    fn truncated_notification_keeps_what_it_got() {
        let store = Store::new();
        store.record(
            &fixture("onprem_overloaded-truncated.json"),
            |_| true,
            Utc::now(),
        );
        assert_eq!(store.firing().len(), 3);
    }
}
