//! HTTP surface: thin handlers that validate, record, wake and answer. No handler talks to
//! Docker, HAProxy or EC2; that is the reconciler's job.
//!
//! - `POST /api/v1/alerts` (and `/failover`, the older Flask design's path): the webhook.
//! - `GET /api/v1/status`, `GET /api/v1/events`: what the responder sees, decided and did.
//! - `POST /api/v1/services/{name}/{pause|resume|failover|failback}`: manual control.
//! - `POST /api/v1/plan`: the steps a webhook body would cause, changing nothing.
//! - `GET /`: the status page (`ui.rs`), drawn from the two read-only endpoints above.
//! - `GET /metrics`, `GET /-/healthy` (alive), `GET /-/ready` (can act: 503 with the reasons).
//!
//! Everything that changes state or reveals a plan needs the webhook's credentials; status,
//! events and metrics are read-only and open, like Prometheus' and Alertmanager's own.

use std::sync::Arc;

use actix_web::web;

use crate::alert::Notification;
use crate::metrics::Metrics;
use crate::reconcile::ServiceRuntime;
use crate::reconcile::Services;
use crate::status::StatusBoard;
use crate::store::{RecordOutcome, Store, StoreError};
use crate::supervisor::Supervisor;

pub mod api;
pub mod auth;
pub mod control;
pub mod error;
pub mod ops;
pub mod ui;
pub mod webhook;

/// State shared by all handlers. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// What the reconcilers and the resync last saw and did; memory only.
    pub status: StatusBoard,
    pub metrics: Arc<Metrics>,
    /// The services reconciled now; a reload swaps them.
    pub services: Services,
    /// Reloads the config (`POST /-/reload`, as SIGHUP does).
    pub supervisor: Supervisor,
    /// This node's membership of a responder cluster; None when standalone.
    pub cluster: Option<crate::cluster::Cluster>,
    /// Reloadable in place: a config reload updates every clone.
    pub auth: auth::Auth,
    /// `webhook.max_body_bytes`; a config reload changes it.
    pub max_body_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

impl AppState {
    /// Journals a notification, applies it, and wakes the services it concerns. Returns the
    /// outcome and the names woken; fails only when it could not be recorded.
    pub async fn ingest(
        &self,
        n: Notification,
        raw: web::Bytes,
    ) -> Result<(RecordOutcome, Vec<String>), StoreError> {
        let services = self.services.current();
        let relevant: Vec<bool> = n
            .alerts
            .iter()
            .map(|a| services.iter().any(|s| s.concerns(&a.labels)))
            .collect();
        let n = Arc::new(n);
        let outcome = self.store.record(n.clone(), raw, relevant).await?;
        self.metrics
            .journal_entries
            .set(i64::try_from(self.store.journal_len()).unwrap_or(i64::MAX));
        // The decision reads only the firing set: a notification that did not change it (a
        // repeat, an HA twin, a storm of duplicates) has nothing to tell the reconciler, and
        // waking it anyway would spend an alert storm's CPU on passes that change nothing.
        let mut concerned = Vec::new();
        for s in services.iter() {
            if n.alerts.iter().any(|a| s.concerns(&a.labels)) {
                if outcome.changed {
                    s.wake.notify_one();
                }
                concerned.push(s.name.clone());
            }
        }
        Ok((outcome, concerned))
    }

    /// The service of that name now (a clone: cheap, and unaffected by a reload meanwhile).
    pub fn service(&self, name: &str) -> Option<ServiceRuntime> {
        self.services.get(name)
    }
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // A query string that does not parse (`?tail=abc`) answers 400 in the API's JSON shape,
    // naming the query, not actix's plain-text default.
    let query = web::QueryConfig::default().error_handler(|err, req| {
        let query = req.query_string().to_owned();
        error::ApiError::BadRequest(format!("query string {query:?}: {err}")).into()
    });
    cfg.app_data(query)
        .route("/", web::get().to(ui::index))
        .route("/ui/app.js", web::get().to(ui::script))
        .route("/ui/app.css", web::get().to(ui::style))
        .route("/api/v1/alerts", web::post().to(webhook::receive))
        .route("/failover", web::post().to(webhook::receive))
        .route("/api/v1/status", web::get().to(api::status))
        .route("/api/v1/events", web::get().to(api::events))
        .route("/api/v1/plan", web::post().to(control::plan))
        .route(
            "/api/v1/services/{name}/check",
            web::post().to(control::check),
        )
        .route(
            "/api/v1/services/{name}/drill",
            web::post().to(control::drill),
        )
        .route(
            "/api/v1/services/{name}/{action}",
            web::post().to(control::set_override),
        )
        .route("/metrics", web::get().to(ops::metrics))
        .route("/-/healthy", web::get().to(ops::healthy))
        .route("/-/ready", web::get().to(ops::ready))
        .route("/-/reload", web::post().to(ops::reload));
}
