//! `haproxy:` in a service's config: the Runtime APIs, the backend and its cloud servers, and
//! their checks. Pure.

use std::time::Duration;

use serde::Deserialize;

use super::RuntimeAddr;

/// The HAProxy instances and servers of a service.
#[derive(Debug, Clone, Deserialize)]
pub struct HaproxyConfig {
    /// Runtime API of every HAProxy in front of the service: `unix:/run/haproxy/admin.sock`,
    /// `/path/to.sock` or `tcp:127.0.0.1:9999`. Every one is kept in the same state.
    pub runtime_api: Vec<String>,
    /// The backend holding the cloud servers.
    pub backend: String,
    /// Servers in that backend that point at the cloud capacity.
    pub cloud_servers: Vec<String>,
    /// Deadline for one Runtime API command.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Checks `haproxy:` (key path `p`), one message per problem.
pub fn validate(h: &HaproxyConfig, p: &str, errors: &mut Vec<String>) {
    if h.runtime_api.is_empty() {
        errors.push(format!(
            "{p}.runtime_api: at least one Runtime API address is needed"
        ));
    }
    for (i, a) in h.runtime_api.iter().enumerate() {
        if let Err(e) = RuntimeAddr::parse(a) {
            errors.push(format!("{p}.runtime_api[{i}]: {e}"));
        }
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    };
    if !name_ok(&h.backend) {
        errors.push(format!(
            "{p}.backend: {:?} is not a valid HAProxy backend name",
            h.backend
        ));
    }
    if h.cloud_servers.is_empty() {
        errors.push(format!("{p}.cloud_servers: at least one server is needed"));
    }
    for (i, s) in h.cloud_servers.iter().enumerate() {
        if !name_ok(s) {
            errors.push(format!(
                "{p}.cloud_servers[{i}]: {s:?} is not a valid HAProxy server name"
            ));
        }
    }
    if h.command_timeout.is_zero() {
        errors.push(format!("{p}.command_timeout: must be greater than 0"));
    }
}
