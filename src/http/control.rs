//! Manual control (`POST /api/v1/services/{name}/{action}`), the readiness check and drills
//! (`.../check`, `.../drill`) and the plan preview (`POST /api/v1/plan`). All need the
//! webhook's credentials.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde_json::json;
use tracing::info;

use super::error::ApiError;
use super::AppState;
use crate::desired::Override;
use crate::pass;
use crate::store::ServiceState;

/// Sets or clears a persisted override: `pause` (observe, change nothing), `failover`,
/// `failback` (hold that mode whatever the alerts say), `resume` (follow the alerts again).
pub async fn set_override(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.auth.check(&req)?;
    let (name, action) = path.into_inner();
    let Some(svc) = state.service(&name) else {
        return Err(ApiError::NotFound(format!("no service named {name:?}")));
    };
    let new = match action.as_str() {
        "pause" => Some(Override::Paused),
        "failover" => Some(Override::Failover),
        "failback" => Some(Override::Failback),
        "resume" => None,
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown action {other:?}: want pause, resume, failover or failback"
            )))
        }
    };
    let store_err = |e: crate::store::StoreError| ApiError::Internal(e.to_string());
    let old = match &state.cluster {
        // In a cluster the override is the cluster's: written to etcd only, and every node
        // (this one at the pass woken below) takes it from there; a node that cannot reach
        // etcd changes nothing and says so.
        Some(c) => {
            let old = state.store.service(&name).and_then(|s| s.override_);
            let value = serde_json::to_vec(&new).map_err(|e| ApiError::Internal(e.to_string()))?;
            c.put_override(&name, value).await.map_err(|e| {
                ApiError::Unavailable(format!("the override was not applied to the cluster: {e}"))
            })?;
            old
        }
        None => state
            .store
            .set_override(&name, new)
            .await
            .map_err(store_err)?,
    };
    state
        .store
        .event(
            &name,
            "override",
            format!(
                "{action}: override {} -> {}",
                override_name(old),
                override_name(new)
            ),
            vec![],
        )
        .await
        .map_err(store_err)?;
    info!(service = %name, action = %action, "manual override");
    svc.wake.notify_one();
    Ok(HttpResponse::Ok().json(json!({ "service": name, "override": new, "previous": old })))
}

/// Runs the service's readiness check now and answers it (`{ready, checked_at, problems}`);
/// changes nothing in the world. Also recorded as the service's readiness in status and
/// metrics. Errors: 401 without credentials, 404 for an unknown service.
pub async fn check(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let svc = authorized_service(&req, &path, &state)?;
    let r = crate::readiness::check(&svc, &state.status, &state.metrics, &state.store).await;
    Ok(HttpResponse::Ok().json(r))
}

/// Starts a drill (see `reconcile::drill`): 202 once the service's reconciler has been asked
/// to run it; its progress and report are in status (`last_drill`). Errors: 401, 404, and 409
/// with the reason when the service may not drill now (not on-prem, a failover alert firing,
/// an override, not the leader, a cloud server that is not `backup`).
pub async fn drill(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let svc = authorized_service(&req, &path, &state)?;
    let name = &svc.name;
    if let Some(r) =
        crate::reconcile::drill::check(&svc, &state.store, state.cluster.as_ref()).await
    {
        return Err(ApiError::Conflict(format!("no drill: {r}")));
    }
    svc.request_drill();
    info!(service = %name, "drill requested");
    Ok(HttpResponse::Accepted().json(json!({
        "service": name,
        "drill": "started",
        "requested_at": Utc::now(),
    })))
}

/// The service the path names, once the request's credentials are checked. Errors: 401,
/// then 404 for an unknown service.
fn authorized_service(
    req: &HttpRequest,
    name: &str,
    state: &AppState,
) -> Result<crate::reconcile::ServiceRuntime, ApiError> {
    state.auth.check(req)?;
    state
        .service(name)
        .ok_or_else(|| ApiError::NotFound(format!("no service named {name:?}")))
}

/// A webhook body in, the steps it would cause out; nothing is recorded or changed. Plans
/// against the last observed state of each service.
pub async fn plan(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let n = super::webhook::read_notification(&req, payload, &state).await?;
    let now = Utc::now();
    let firing = state.store.preview_firing(&n, now);
    let board = state.status.service_status();
    let mut out = serde_json::Map::new();
    for svc in state.services.current().iter() {
        let st = state
            .store
            .service(&svc.name)
            .unwrap_or_else(|| ServiceState::new(now));
        let seen = board.get(&svc.name);
        let observed = seen.map(|s| s.observed.clone()).unwrap_or_default();
        let units = seen
            .and_then(|s| s.burst.as_ref())
            .map(|b| b.units.clone())
            .unwrap_or_default();
        // The reconciler's own decision, on the last observation: the preview cannot drift.
        let p = pass::pass(
            &svc.config,
            pass::Input {
                state: &st,
                firing: &firing,
                observed: &observed,
                units: &units,
                signals: svc.signals(),
                now,
            },
        );
        let (decision, eff) = (&p.desired.decision, &p.desired.effective);
        out.insert(
            svc.name.clone(),
            json!({
                "mode": eff.mode,
                "reason": decision.reason,
                "held": eff.held,
                "paused": eff.paused,
                "burst": p.desired.goal().burst,
                "steps": p.plan.steps.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "waiting": p.plan.waiting,
                "blocked": p.plan.blocked,
            }),
        );
    }
    Ok(HttpResponse::Ok().json(json!({ "services": out, "changed": false })))
}

/// How an override reads in events: `none`, `paused`, `failover`, `failback`.
fn override_name(o: Option<Override>) -> &'static str {
    match o {
        None => "none",
        Some(Override::Paused) => "paused",
        Some(Override::Failover) => "failover",
        Some(Override::Failback) => "failback",
    }
}
