//! Operational endpoints: metrics and the health/readiness probes.

use actix_web::{web, HttpResponse};

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
