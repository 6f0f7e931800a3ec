//! Readiness of the HAProxy side of a failover, checked on every Runtime API without changing
//! anything (`show cli level`, `show servers state`): reachable, at level `admin`, the backend
//! and every cloud server there and openable, every on-prem server the fast path watches there
//! and health-checked, and enough `server-template` slots for `burst.max`.

use super::{blocker, level_blocker, parse_servers_state, RuntimeApi, ServerInfo};
use crate::backend::Problem;
use std::collections::BTreeMap;

/// The burst slots a service needs: `<prefix>1` .. `<prefix><max>` in `backend`.
#[derive(Debug, Clone, Copy)]
pub struct Slots<'a> {
    pub backend: &'a str,
    pub prefix: &'a str,
    pub max: u32,
}

/// The servers of a service's backend: the cloud ones it opens, the on-prem ones the fast path
/// watches (empty without one).
#[derive(Debug, Clone, Copy)]
pub struct Servers<'a> {
    pub backend: &'a str,
    pub cloud: &'a [String],
    pub onprem: &'a [String],
}

/// What would keep a failover (and bursting, with `slots`; the fast path, with on-prem
/// servers) from working through any of `apis`; empty when nothing would. Asks every Runtime
/// API concurrently.
pub async fn readiness(
    apis: &[RuntimeApi],
    servers: Servers<'_>,
    slots: Option<Slots<'_>>,
) -> Vec<Problem> {
    let each = apis.iter().map(|api| api_readiness(api, servers, slots));
    futures_util::future::join_all(each)
        .await
        .into_iter()
        .flatten()
        .collect()
}

async fn api_readiness(
    api: &RuntimeApi,
    servers: Servers<'_>,
    slots: Option<Slots<'_>>,
) -> Vec<Problem> {
    let backend = servers.backend;
    let target = format!("haproxy {}", api.label);
    let problem = |check: &str, message: String| Problem::new(check, &target, message);
    match api.cli_level().await {
        Err(e) => {
            return vec![problem(
                "haproxy_runtime_api",
                format!(
                    "{}: check that HAProxy runs and that its stats socket is at this address",
                    e.detail()
                ),
            )]
        }
        Ok(Some(level)) => {
            if let Some(why) = level_blocker(&api.label, &level) {
                return vec![problem("haproxy_level", why)];
            }
        }
        // HAProxy before 2.0 cannot say; its refusals show as step errors.
        Ok(None) => {}
    }
    let mut problems = Vec::new();
    match backend_servers(api, backend).await {
        Err(message) => problems.push(problem("haproxy_backend", message)),
        Ok(states) => {
            for s in servers.cloud {
                match states.get(s) {
                    None => problems.push(problem(
                        "haproxy_server",
                        format!("server {backend}/{s} does not exist: add `server {s} <cloud address> check backup` to backend {backend} in haproxy.cfg"),
                    )),
                    Some(info) => {
                        if let Some(why) = blocker(info.admin_flags) {
                            problems.push(problem(
                                "haproxy_server",
                                format!("server {backend}/{s} is {why}"),
                            ));
                        }
                    }
                }
            }
        }
    }
    if !servers.onprem.is_empty() {
        problems.extend(onprem_checked(api, backend, servers.onprem).await);
    }
    if let Some(sl) = slots {
        match backend_servers(api, sl.backend).await {
            Err(message) => problems.push(problem("haproxy_backend", message)),
            Ok(states) => {
                let have = (1..=sl.max)
                    .filter(|i| states.contains_key(&crate::template::slot_name(sl.prefix, *i)))
                    .count();
                if have < sl.max as usize {
                    problems.push(problem(
                        "haproxy_slots",
                        format!(
                            "backend {} has {have} of the {} slots burst.max needs ({p}1..{p}{}): declare `server-template {p} 1-{} <address> check disabled` there",
                            sl.backend, sl.max, sl.max, sl.max, p = sl.prefix
                        ),
                    ));
                }
            }
        }
    }
    problems
}

/// The fast path sees on-prem DOWN only through HAProxy's checks of these servers: each must
/// exist, have a `check` and not be left in maintenance. (A missing backend or an unreachable
/// HAProxy is said once, by the caller.)
async fn onprem_checked(api: &RuntimeApi, backend: &str, onprem: &[String]) -> Vec<Problem> {
    let target = format!("haproxy {}", api.label);
    let Ok(status) = api.stat_column(backend, onprem, "status").await else {
        return Vec::new();
    };
    onprem
        .iter()
        .filter_map(|s| {
            let message = match status.get(s).map(String::as_str) {
                None => format!("server {backend}/{s} (fast_path.onprem_servers) does not exist: name the on-prem servers of backend {backend} in haproxy.cfg"),
                Some("no check") => format!("server {backend}/{s} (fast_path.onprem_servers) has no health check, so the fast path can never see it DOWN: add `check` to its line in haproxy.cfg"),
                Some(m) if m.starts_with("MAINT") => format!("server {backend}/{s} (fast_path.onprem_servers) is in maintenance ({m}), so the fast path cannot see it DOWN: `set server {backend}/{s} state ready` when the work is done"),
                Some(_) => return None,
            };
            Some(Problem::new("haproxy_onprem_check", &target, message))
        })
        .collect()
}

/// The servers of `backend` on `api`. Errors: the backend does not exist, or the answer
/// could not be read; the message says which and what to do.
async fn backend_servers(
    api: &RuntimeApi,
    backend: &str,
) -> Result<BTreeMap<String, ServerInfo>, String> {
    let out = api
        .command(&format!("show servers state {backend}"))
        .await
        .map_err(|e| e.to_string())?;
    let first = out.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if first.contains("Can't find backend") || first.contains("No such backend") {
        return Err(format!(
            "backend {backend} does not exist: add it to haproxy.cfg, or fix haproxy.backend"
        ));
    }
    parse_servers_state(&out, backend)
}
