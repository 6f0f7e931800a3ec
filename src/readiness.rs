//! Readiness: would a failover work now? Each backend checks its part without changing
//! anything ([`crate::world::World::readiness`]); this module runs the check once at start,
//! then every `readiness.interval`, and on `POST /api/v1/services/{name}/check`, and records
//! the answer in status, metrics and (when it changes) an event.

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::{Problem, CHECKS};
use crate::metrics::{CheckLabels, Metrics, ServiceLabels};
use crate::reconcile::{Context, ServiceRuntime};
use crate::status::{Readiness, StatusBoard};
use crate::store::Store;

/// Runs the readiness check of `svc` now and records it: status, metrics, and an event (kind
/// `readiness`) when the set of problems differs from the last check's. Never fails: what
/// cannot be asked is itself a problem.
pub async fn check(
    svc: &ServiceRuntime,
    status: &StatusBoard,
    metrics: &Metrics,
    store: &Store,
) -> Readiness {
    let problems = svc.world.readiness(&svc.name, &svc.config).await;
    let r = Readiness {
        ready: problems.is_empty(),
        checked_at: Utc::now(),
        problems,
    };
    let before = status.set_readiness(&svc.name, r.clone());
    record_metrics(metrics, &svc.name, &r.problems);
    if before.map(|b| b.problems) != Some(r.problems.clone()) {
        let message = summary(&r);
        if r.ready {
            info!(service = %svc.name, "readiness: {message}");
        } else {
            warn!(service = %svc.name, "readiness: {message}");
        }
        if let Err(e) = store.event(&svc.name, "readiness", message, vec![]).await {
            warn!(service = %svc.name, error = %e, "could not record the readiness event");
        }
    }
    r
}

/// Checks `svc` once now, then every `readiness.interval`, until `stop`. An interval of 0
/// turns the schedule off, the check at start included (`POST .../check` still runs it).
pub async fn run(svc: ServiceRuntime, ctx: Context, stop: CancellationToken) {
    let interval = svc.config.readiness.interval;
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = check(&svc, &ctx.status, &ctx.metrics, &ctx.store) => {}
            () = stop.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => return,
        }
    }
}

fn record_metrics(metrics: &Metrics, service: &str, problems: &[Problem]) {
    let m = &metrics.readiness;
    let labels = ServiceLabels {
        service: service.to_string(),
    };
    m.standby_ready
        .get_or_create(&labels)
        .set(i64::from(problems.is_empty()));
    for check in CHECKS {
        let n = problems.iter().filter(|p| p.check == *check).count();
        m.problems
            .get_or_create(&CheckLabels {
                service: service.to_string(),
                check: (*check).to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// `ready` or `not ready: <check> <target>: <message>; ...`, for the event and the log.
pub fn summary(r: &Readiness) -> String {
    if r.ready {
        return "ready: a failover would work as far as can be checked without acting".into();
    }
    let problems: Vec<String> = r
        .problems
        .iter()
        .map(|p| format!("{} {}: {}", p.check, p.target, p.message))
        .collect();
    format!("not ready: {}", problems.join("; "))
}
