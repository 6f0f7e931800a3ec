//! Read-only API: `GET /api/v1/status`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::matcher::matches_all;

/// Per service: desired mode and why, observed state of each target, the firing alerts behind
/// it, the last steps with time and outcome. Plus the last notifications received.
pub async fn status(state: web::Data<AppState>) -> HttpResponse {
    let statuses = state.store.service_status();
    let firing = state.store.firing_detail();
    let mut services = serde_json::Map::new();
    for svc in state.services.iter() {
        let alerts: Vec<_> = firing
            .iter()
            .filter(|a| {
                matches_all(&svc.config.failover_matchers, &a.labels)
                    || matches_all(&svc.config.failback_matchers, &a.labels)
            })
            .collect();
        let st = statuses.get(&svc.name).cloned().unwrap_or_default();
        let mut v = serde_json::to_value(&st).unwrap_or_else(|_| json!({}));
        if let Some(obj) = v.as_object_mut() {
            obj.insert("firing_alerts".into(), json!(alerts));
        }
        services.insert(svc.name.clone(), v);
    }
    HttpResponse::Ok().json(json!({
        "services": services,
        "notifications": state.store.notifications(),
    }))
}
