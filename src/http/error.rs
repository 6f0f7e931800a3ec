//! The HTTP layer's one error type. Each variant is one status code; the message names the
//! problem for the client. Internal causes are logged, never sent.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid credentials")]
    Unauthorized { challenge: &'static str },
    #[error("request body larger than the {limit} bytes allowed (webhook.max_body_bytes)")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported content type {0:?}: send application/json")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("too many failed authentications from this address; retry in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    /// Logged with its cause; the client only learns that it should retry.
    #[error("internal error, retry later")]
    Internal(String),
    /// A dependency the request needs (the cluster's etcd) did not answer; nothing changed.
    #[error("{0}")]
    Unavailable(String),
    /// The request conflicts with the service's state now (a drill while it is in cloud).
    #[error("{0}")]
    Conflict(String),
}

impl ApiError {
    /// Label for the notifications metric.
    pub fn result_label(&self) -> &'static str {
        match self {
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::PayloadTooLarge { .. } => "too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::Internal(_) => "internal_error",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Conflict(_) => "conflict",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            tracing::error!(cause = %cause, "internal error");
        }
        let mut resp = HttpResponse::build(self.status_code());
        if let ApiError::Unauthorized { challenge } = self {
            resp.insert_header((header::WWW_AUTHENTICATE, *challenge));
        }
        if let ApiError::TooManyRequests { retry_after } = self {
            resp.insert_header((header::RETRY_AFTER, retry_after.to_string()));
        }
        resp.json(json!({ "status": "error", "error": self.to_string() }))
    }
}
