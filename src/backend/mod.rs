//! Backends: the only code that talks to the outside world to change it. One folder each: its
//! config section and checks (`config.rs`), and `observe`, the actions the planner's steps need
//! and a health check (`ping`).
//!
//! They share one error type whose `is_retryable` tells the reconciler whether backing off and
//! trying again can help (an unreachable engine) or only a human can (a server missing from
//! HAProxy's config).

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// The message without the target, for a caller that names the target itself (a
    /// readiness [`Problem`] has its own `target`; printing both said it twice).
    pub fn detail(&self) -> String {
        match self {
            BackendError::Unreachable { message, .. } => format!("unreachable: {message}"),
            BackendError::Rejected { message, .. } => message.clone(),
            BackendError::Timeout { .. } => self.to_string(),
        }
    }

    /// Whether the same call could succeed later without a human changing something.
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::Unreachable { .. } | BackendError::Timeout { .. } => true,
            BackendError::Rejected { retryable, .. } => *retryable,
        }
    }
}

/// One reason a failover would not work now, found by a readiness check (which changes
/// nothing). Shown in status and `POST /api/v1/services/{name}/check`, counted per `check` in
/// `failover_responder_readiness_problems`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Which check found it: `docker_engine`, `docker_image`, `docker_container`,
    /// `docker_port`, `haproxy_runtime_api`, `haproxy_level`, `haproxy_backend`,
    /// `haproxy_server`, `haproxy_slots`, `ec2_api`, `ec2_instance`, `ec2_permission`.
    pub check: String,
    /// What it is about: `docker <host>`, a container, `haproxy <runtime api>`, an instance.
    pub target: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

/// Every `check` a [`Problem`] can name, for the per-check metric (0 where none).
pub const CHECKS: &[&str] = &[
    "docker_engine",
    "docker_image",
    "docker_container",
    "docker_port",
    "haproxy_runtime_api",
    "haproxy_level",
    "haproxy_backend",
    "haproxy_server",
    "haproxy_slots",
    "haproxy_onprem_check",
    "ec2_api",
    "ec2_instance",
    "ec2_permission",
];

impl Problem {
    pub fn new(check: &str, target: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            check: check.to_string(),
            target: target.into(),
            message: message.into(),
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

#[cfg(test)]
mod detail_tests {
    use super::BackendError;
    use std::time::Duration;

    /// A readiness problem names its target itself: the detail must not say it again.
    #[test]
    fn detail_leaves_the_target_out() {
        let target = "haproxy unix:/run/haproxy/admin.sock".to_string();
        let unreachable = BackendError::Unreachable {
            target: target.clone(),
            message: "No such file or directory (os error 2)".into(),
        };
        assert_eq!(
            unreachable.detail(),
            "unreachable: No such file or directory (os error 2)"
        );
        assert!(unreachable.to_string().starts_with(&target));
        let rejected = BackendError::Rejected {
            target: target.clone(),
            message: "No such server.".into(),
            retryable: false,
        };
        assert_eq!(rejected.detail(), "No such server.");
        let timeout = BackendError::Timeout {
            what: "show servers state".into(),
            after: Duration::from_secs(2),
        };
        assert_eq!(timeout.detail(), "show servers state: timed out after 2s");
    }
}
