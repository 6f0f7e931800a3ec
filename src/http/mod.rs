//! HTTP surface: thin handlers that validate, record, wake and answer. No handler talks to
//! Docker, HAProxy or EC2; that is the reconciler's job.
//!
//! - `POST /api/v1/alerts` (and `/failover`, the older Flask design's path): the webhook.
//! - `GET /api/v1/status`: desired mode, observed state, alerts and last steps per service.
//! - `GET /metrics`, `GET /-/healthy`, `GET /-/ready`.

use std::sync::Arc;

use actix_web::web;
use chrono::Utc;

use crate::alert::{Labels, Notification};
use crate::matcher::matches_all;
use crate::metrics::Metrics;
use crate::reconcile::ServiceRuntime;
use crate::store::{RecordOutcome, Store};

pub mod api;
pub mod auth;
pub mod error;
pub mod ops;
pub mod webhook;

/// State shared by all handlers. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub services: Arc<Vec<ServiceRuntime>>,
    pub auth: auth::Auth,
    pub max_body_bytes: usize,
}

impl AppState {
    /// True when an alert with these labels concerns some service (matches its failover_on or
    /// failback_on). Others are acknowledged and dropped: they can never move anything.
    pub fn is_relevant(&self, labels: &Labels) -> bool {
        self.services.iter().any(|s| concerns(s, labels))
    }

    /// Records a notification and wakes the services it concerns. Returns the names woken.
    pub fn ingest(&self, n: &Notification) -> (RecordOutcome, Vec<String>) {
        let outcome = self.store.record(n, |l| self.is_relevant(l), Utc::now());
        let mut woken = Vec::new();
        for s in self.services.iter() {
            if n.alerts.iter().any(|a| concerns(s, &a.labels)) {
                s.wake.notify_one();
                woken.push(s.name.clone());
            }
        }
        (outcome, woken)
    }
}

fn concerns(s: &ServiceRuntime, labels: &Labels) -> bool {
    matches_all(&s.config.failover_matchers, labels)
        || matches_all(&s.config.failback_matchers, labels)
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/alerts", web::post().to(webhook::receive))
        .route("/failover", web::post().to(webhook::receive))
        .route("/api/v1/status", web::get().to(api::status))
        .route("/metrics", web::get().to(ops::metrics))
        .route("/-/healthy", web::get().to(ops::healthy))
        .route("/-/ready", web::get().to(ops::ready));
}
