//! Read-only API: `GET /api/v1/status` and `GET /api/v1/events`.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::status::{ResyncStatus, ServiceStatus};
use crate::store::{NotificationRecord, ServiceState, StoredAlert};

/// `GET /api/v1/status`: per service, what [`ServiceStatus`] holds plus the firing alerts behind
/// it and its persisted state; the last notifications; the journal's size; the last resync.
/// Deserializable, so clients (and the tests) read it typed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusDoc {
    pub services: BTreeMap<String, ServiceView>,
    pub notifications: Vec<NotificationRecord>,
    pub journal_entries: u64,
    pub alertmanager_resync: ResyncStatus,
    /// This node's part in a responder cluster (`role: standalone` without `cluster:`).
    pub cluster: crate::cluster::ClusterStatus,
    /// The config file and its last reload (good or refused, with the refused keys).
    pub config: crate::supervisor::ConfigStatus,
}

/// One service in [`StatusDoc`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    #[serde(flatten)]
    pub status: ServiceStatus,
    pub firing_alerts: Vec<StoredAlert>,
    /// The persisted state; absent until the first pass persisted one.
    pub state: Option<ServiceState>,
    /// What HAProxy's own checks say of on-prem now, when `fast_path` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<crate::fastpath::watch::FastPathStatus>,
}

/// Per service: the mode it is driven towards and since when, any override, the alerts'
/// decision and why the mode may be held against it, the observed state of each target, the
/// firing alerts behind it, pending and last steps. Plus the last notifications and resync.
pub async fn status(state: web::Data<AppState>) -> HttpResponse {
    let statuses = state.status.service_status();
    let firing = state.store.firing_detail();
    let services = state
        .services
        .current()
        .iter()
        .map(|svc| {
            let view = ServiceView {
                status: statuses.get(&svc.name).cloned().unwrap_or_default(),
                firing_alerts: firing
                    .iter()
                    .filter(|a| svc.concerns(&a.labels))
                    .cloned()
                    .collect(),
                state: state.store.service(&svc.name),
                fast_path: svc
                    .fast_path
                    .as_ref()
                    .map(crate::fastpath::watch::Watch::status),
            };
            (svc.name.clone(), view)
        })
        .collect();
    HttpResponse::Ok().json(StatusDoc {
        services,
        notifications: state.store.recent_notifications(),
        journal_entries: state.store.journal_len(),
        alertmanager_resync: state.status.resync(),
        cluster: state
            .cluster
            .as_ref()
            .map_or_else(crate::cluster::ClusterStatus::standalone, |c| c.status()),
        config: state.supervisor.config_status(),
    })
}

#[derive(Deserialize)]
pub struct EventsQuery {
    service: Option<String>,
    /// An event id (events after it) or an RFC 3339 time (events at or after it).
    since: Option<String>,
    limit: Option<usize>,
    /// The N most recent events instead (oldest first); not with `since`, and `limit` does
    /// not apply.
    tail: Option<usize>,
}

/// Every decision and step, with the alert fingerprints and reason behind it, in order. A
/// service a reload removed keeps its history here; a name with neither config nor history
/// is 404.
pub async fn events(
    state: web::Data<AppState>,
    q: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let (since_id, since_time) = match q.since.as_deref() {
        None | Some("") => (None, None),
        Some(s) => match (s.parse::<u64>(), s.parse::<DateTime<Utc>>()) {
            (Ok(id), _) => (Some(id), None),
            (_, Ok(t)) => (None, Some(t)),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "since: {s:?} is neither an event id nor an RFC 3339 time"
                )))
            }
        },
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let events = match q.tail {
        Some(_) if q.since.as_deref().is_some_and(|s| !s.is_empty()) => {
            return Err(ApiError::BadRequest(
                "tail and since cannot be combined: tail is the most recent events".into(),
            ))
        }
        Some(n) => state
            .store
            .recent_events(q.service.as_deref(), n.min(10_000)),
        None => state
            .store
            .events(q.service.as_deref(), since_id, since_time, limit),
    }
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(s) = &q.service {
        let known = state.service(s).is_some()
            || !events.is_empty()
            || state
                .store
                .events(Some(s), None, None, 1)
                .is_ok_and(|e| !e.is_empty());
        if !known {
            return Err(ApiError::NotFound(format!("no service named {s:?}")));
        }
    }
    Ok(HttpResponse::Ok().json(json!({ "events": events })))
}
