//! The Alertmanager webhook: authenticate, check the content type, read a capped body, parse,
//! record, wake, answer 202. Any refusal changes nothing.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use tracing::{info, info_span, Instrument};

use super::error::ApiError;
use super::AppState;
use crate::alert::parse_notification;

pub async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let result = handle(&req, payload, &state).await;
    state.metrics.notification(match &result {
        Ok(_) => "accepted",
        Err(e) => e.result_label(),
    });
    result
}

async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(req, payload, state).await?;
    let n = parse_notification(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;

    let span = info_span!("notification", group_key = %n.group_key, status = ?n.status);
    let alerts = n.alerts.len();
    let truncated = n.truncated_alerts;
    // 2xx only once it is on disk; a storage failure is a 500 so Alertmanager retries.
    let (outcome, concerned) = state
        .ingest(n, body.freeze())
        .instrument(span.clone())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    span.in_scope(|| {
        info!(
            seq = outcome.seq,
            alerts,
            relevant = outcome.relevant,
            truncated,
            changed = outcome.changed,
            services = ?concerned,
            "notification recorded"
        )
    });
    Ok(HttpResponse::Accepted().json(Accepted {
        status: "accepted",
        seq: outcome.seq,
        alerts,
        relevant_alerts: outcome.relevant,
        changed: outcome.changed,
        services: concerned,
    }))
}

/// The 202 answer (a struct rather than `json!`: no map built per notification).
#[derive(serde::Serialize)]
struct Accepted {
    status: &'static str,
    seq: u64,
    alerts: usize,
    relevant_alerts: usize,
    changed: bool,
    services: Vec<String>,
}

/// Authenticates, checks the content type, reads the capped body and parses it. Shared by the
/// webhook and the plan preview.
pub async fn read_notification(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<crate::alert::Notification, ApiError> {
    let body = read_body(req, payload, state).await?;
    parse_notification(&body).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Authenticates, checks the content type and reads the body up to `webhook.max_body_bytes`
/// as it is now.
async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<web::BytesMut, ApiError> {
    // Credentials first: an unauthenticated client learns nothing else about the endpoint.
    state.auth.check(req)?;
    check_json(req)?;
    let limit = state
        .max_body_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    read_capped(req, payload, limit).await
}

fn check_json(req: &HttpRequest) -> Result<(), ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string())
        .unwrap_or_default();
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" {
        Ok(())
    } else if ct.is_empty() {
        Err(ApiError::UnsupportedMediaType("<none>".into()))
    } else {
        Err(ApiError::UnsupportedMediaType(ct))
    }
}

/// Reads the body, refusing as soon as it passes `limit` (a declared Content-Length over the
/// limit is refused before reading anything).
async fn read_capped(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(4096).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
