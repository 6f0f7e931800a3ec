//! Operational endpoints: metrics and the health/readiness probes.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::AppState;

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.encode())
}

/// The process is alive and serving HTTP.
pub async fn healthy() -> HttpResponse {
    HttpResponse::Ok().body("Healthy\n")
}

/// Ready to take notifications: the store is in memory and the reconcilers are started before
/// the listener accepts, so serving at all means ready.
pub async fn ready() -> HttpResponse {
    HttpResponse::Ok().body("Ready\n")
}

/// Reloads the TLS certificate, key and client CA (as SIGHUP does). Needs credentials. Open
/// connections keep their session; new handshakes get the new material.
pub async fn reload(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.auth.check(&req)?;
    let Some(tls) = &state.tls else {
        return Ok(HttpResponse::Ok()
            .json(json!({ "reloaded": false, "reason": "TLS is not configured" })));
    };
    tls.reload().map_err(|e| {
        ApiError::BadRequest(format!("reload failed, previous certificates kept: {e}"))
    })?;
    tracing::info!("TLS certificates reloaded");
    Ok(HttpResponse::Ok().json(json!({ "reloaded": true })))
}
