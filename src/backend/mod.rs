//! Backends: the only code that talks to the outside world to change it. One folder each: its
//! config section and checks (`config.rs`), and `observe`, the actions the planner's steps need
//! and a health check (`ping`).
//!
//! They share one error type whose `is_retryable` tells the reconciler whether backing off and
//! trying again can help (an unreachable engine) or only a human can (a server missing from
//! HAProxy's config).

use std::time::Duration;

pub mod docker;
pub mod ec2;
pub mod haproxy;

/// A backend call that did not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// Could not connect or the connection broke: the engine or HAProxy may be restarting.
    #[error("{target}: unreachable: {message}")]
    Unreachable { target: String, message: String },
    /// The API answered with a refusal.
    #[error("{target}: {message}")]
    Rejected {
        target: String,
        message: String,
        retryable: bool,
    },
    /// A call or a wait ran past its deadline.
    #[error("{what}: timed out after {}", humantime::format_duration(*after))]
    Timeout { what: String, after: Duration },
}

impl BackendError {
    /// Whether the same call could succeed later without a human changing something.
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::Unreachable { .. } | BackendError::Timeout { .. } => true,
            BackendError::Rejected { retryable, .. } => *retryable,
        }
    }
}

/// Checks that `url` is an http(s) URL; the message names `key`. Shared by the backends' and
/// the service's health URLs.
pub fn validate_http_url(url: &str, key: &str, errors: &mut Vec<String>) {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        Ok(u) => errors.push(format!(
            "{key}: scheme {:?} is not http or https",
            u.scheme()
        )),
        Err(e) => errors.push(format!("{key}: {url:?}: {e}")),
    }
}
