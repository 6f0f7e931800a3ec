//! Verification after a real failover: the responder opened the cloud servers, but does HAProxy
//! itself send them traffic? Only its own health check says so (`show stat` status `UP`, not
//! the `UP 1/3` it assumes right after maintenance before any check has run). A server
//! opened while its check fails (a wrong address, a firewall, the service listening elsewhere)
//! takes no traffic, and the failover only looks done. Pure: the reconciler passes what it
//! observed and when the servers were opened.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::plan::{OpState, ServerRef};

/// The verdict on one failover, shown in status as `verification`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// true: every cloud server is UP by HAProxy's own check on every HAProxy. false: not
    /// within `timeouts.verify` of opening them. None: still within it.
    pub verified: Option<bool>,
    /// When the failover converged (every cloud server open).
    pub opened_at: DateTime<Utc>,
    pub message: String,
}

/// The verdict for `servers` (the failover's cloud servers on every HAProxy, each with what
/// HAProxy's check says: None when it could not be asked), opened at `opened_at`, at `now`,
/// allowing `limit` for HAProxy's check to see them UP.
pub fn verdict(
    servers: &[(ServerRef, Option<OpState>)],
    opened_at: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: Duration,
) -> Verification {
    let not_up: Vec<String> = servers
        .iter()
        .filter(|(_, op)| *op != Some(OpState::Up))
        .map(|(t, op)| {
            let state = op.map_or("not reported".to_string(), |o| {
                format!("{o:?}").to_lowercase()
            });
            format!("{}/{} on {}: {state}", t.backend, t.server, t.api)
        })
        .collect();
    let waited = (now - opened_at).to_std().unwrap_or_default();
    let (verified, message) = if not_up.is_empty() {
        (
            Some(true),
            "HAProxy's own health check reports every cloud server UP".to_string(),
        )
    } else if waited >= limit {
        (
            Some(false),
            format!(
                "not UP by HAProxy's own health check {} after opening: {}; the servers stay open (on-prem is down), but take no traffic: check each server's address and port in haproxy.cfg and that the cloud service answers its check",
                humantime::format_duration(limit),
                not_up.join(", ")
            ),
        )
    } else {
        (
            None,
            format!("waiting for HAProxy's health check: {}", not_up.join(", ")),
        )
    };
    Verification {
        verified,
        opened_at,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn server(api: &str, op: Option<OpState>) -> (ServerRef, Option<OpState>) {
        let target = ServerRef {
            api: api.into(),
            backend: "api".into(),
            server: "cloud1".into(),
        };
        (target, op)
    }

    #[test]
    fn verified_only_when_every_haproxy_sees_every_server_up_and_failed_only_past_the_limit() {
        let t = Utc::now();
        let limit = Duration::from_secs(30);
        let at = |s: i64| t + chrono::Duration::seconds(s);
        let up = [
            server("a", Some(OpState::Up)),
            server("b", Some(OpState::Up)),
        ];
        assert_eq!(verdict(&up, t, at(1), limit).verified, Some(true));
        let one_down = [
            server("a", Some(OpState::Up)),
            server("b", Some(OpState::Down)),
        ];
        let early = verdict(&one_down, t, at(29), limit);
        assert_eq!(early.verified, None, "within the limit: still waiting");
        assert!(
            early.message.contains("api/cloud1 on b: down"),
            "{}",
            early.message
        );
        let late = verdict(&one_down, t, at(30), limit);
        assert_eq!(late.verified, Some(false));
        assert!(late.message.contains("30s") && late.message.contains("on b: down"));
        // An HAProxy that does not report the state cannot verify anything.
        let unreported = [server("a", None)];
        assert_eq!(verdict(&unreported, t, at(31), limit).verified, Some(false));
    }
}
