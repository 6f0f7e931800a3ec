//! Read-only API: `GET /api/v1/status` and `GET /api/v1/events`.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::AppState;

/// Per service: the mode it is driven towards and since when, any override, the alerts'
/// decision and why the mode may be held against it, the observed state of each target, the
/// firing alerts behind it, pending and last steps. Plus the last notifications and resync.
pub async fn status(state: web::Data<AppState>) -> HttpResponse {
    let statuses = state.store.service_status();
    let firing = state.store.firing_detail();
    let mut services = serde_json::Map::new();
    for svc in state.services.iter() {
        let alerts: Vec<_> = firing.iter().filter(|a| svc.concerns(&a.labels)).collect();
        let st = statuses.get(&svc.name).cloned().unwrap_or_default();
        let mut v = serde_json::to_value(&st).unwrap_or_else(|_| json!({}));
        if let Some(obj) = v.as_object_mut() {
            obj.insert("firing_alerts".into(), json!(alerts));
            obj.insert("state".into(), json!(state.store.service(&svc.name)));
        }
        services.insert(svc.name.clone(), v);
    }
    HttpResponse::Ok().json(json!({
        "services": services,
        "notifications": state.store.recent_notifications(),
        "journal_entries": state.store.journal_len(),
        "alertmanager_resync": state.store.resync(),
    }))
}

#[derive(Deserialize)]
pub struct EventsQuery {
    service: Option<String>,
    /// An event id (events after it) or an RFC 3339 time (events at or after it).
    since: Option<String>,
    limit: Option<usize>,
}

/// Every decision and step, with the alert fingerprints and reason behind it, in order.
pub async fn events(
    state: web::Data<AppState>,
    q: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    if let Some(s) = &q.service {
        if state.service(s).is_none() {
            return Err(ApiError::NotFound(format!("no service named {s:?}")));
        }
    }
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
    let events = state
        .store
        .events(q.service.as_deref(), since_id, since_time, limit)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({ "events": events })))
}
