//! Operational endpoints: metrics, the health/readiness probes, the config reload.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::plan::{ContainerState, InstanceState, ServerState};
use crate::status::ServiceStatus;
use crate::supervisor::ReloadError;

/// OpenMetrics to a scraper that asks for it (Prometheus does), else the Prometheus text
/// format 0.0.4 (`curl`, `promtool check metrics`).
pub async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let accept = req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut resp = HttpResponse::Ok();
    resp.insert_header((actix_web::http::header::VARY, "Accept"));
    if wants_openmetrics(accept) {
        resp.content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(state.metrics.encode())
    } else {
        resp.content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(state.metrics.encode_classic())
    }
}

/// Whether an `Accept` header prefers OpenMetrics to the 0.0.4 text: its highest quality
/// (q) is above 0 and not below that of `text/plain` (or of `*/*` when text/plain is not
/// named). Prometheus sends OpenMetrics first at q=1.
fn wants_openmetrics(accept: &str) -> bool {
    let quality = |wanted: &str| -> Option<f32> {
        accept
            .split(',')
            .filter_map(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next()?;
                (media.eq_ignore_ascii_case(wanted)).then(|| {
                    parts
                        .find_map(|p| p.strip_prefix("q="))
                        .and_then(|q| q.parse::<f32>().ok())
                        .unwrap_or(1.0)
                })
            })
            .reduce(f32::max)
    };
    let om = quality("application/openmetrics-text").unwrap_or(0.0);
    let text = quality("text/plain")
        .or_else(|| quality("*/*"))
        .unwrap_or(0.0);
    om > 0.0 && om >= text
}

/// The process is alive and serving HTTP.
pub async fn healthy() -> HttpResponse {
    HttpResponse::Ok().body("Healthy\n")
}

/// Whether the responder can act: 503 until every service's reconciler has finished its first
/// pass (the store is open before the listener accepts), then 503 while a backend could not be
/// asked at the last pass, naming each; 200 otherwise. Reads the reconcilers' last observation
/// (taken every `reconcile.interval`), so a probe never calls Docker, HAProxy or EC2 itself.
/// Webhooks are taken either way: `/-/healthy` is the liveness check.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let board = state.status.service_status();
    match readiness(
        state.services.current().iter().map(|s| s.name.as_str()),
        &board,
    ) {
        Ok(()) => HttpResponse::Ok().body("Ready\n"),
        Err(why) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain; charset=utf-8")
            .body(format!("Not ready:\n{}\n", why.join("\n"))),
    }
}

/// What keeps the responder from acting, one line each; pure.
pub fn readiness<'a>(
    services: impl Iterator<Item = &'a str>,
    board: &BTreeMap<String, ServiceStatus>,
) -> Result<(), Vec<String>> {
    let mut why = Vec::new();
    for name in services {
        let Some(st) = board.get(name).filter(|s| s.last_reconcile_at.is_some()) else {
            why.push(format!("{name}: first reconcile pass not finished"));
            continue;
        };
        let o = &st.observed;
        let unknown = o
            .containers
            .iter()
            .filter_map(|c| match &c.state {
                ContainerState::Unknown { reason } => Some(reason),
                _ => None,
            })
            .chain(o.servers.iter().filter_map(|s| match &s.state {
                ServerState::Unknown { reason } => Some(reason),
                _ => None,
            }))
            .chain(o.instances.iter().filter_map(|i| match &i.state {
                InstanceState::Unknown { reason } => Some(reason),
                _ => None,
            }));
        // One line per distinct reason: every server behind one unreachable HAProxy says the
        // same thing.
        let mut seen = std::collections::BTreeSet::new();
        for reason in unknown {
            if seen.insert(reason) {
                why.push(format!("{name}: {reason}"));
            }
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

/// Reloads the config file, as SIGHUP does ([`crate::supervisor::Supervisor::reload`]).
/// Needs credentials. 200 with what changed per service; 400 listing every problem of a file
/// that does not load; 409 listing what needs a restart; 503 while shutting down. Nothing
/// changes on an error.
pub async fn reload(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.auth.check(&req)?;
    match state.supervisor.reload().await {
        Ok(report) => Ok(HttpResponse::Ok().json(json!({ "reloaded": true, "report": report }))),
        Err(e) => {
            let status = match e {
                ReloadError::Invalid(_) => StatusCode::BAD_REQUEST,
                ReloadError::NeedsRestart(_) => StatusCode::CONFLICT,
                ReloadError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            };
            Ok(HttpResponse::build(status).json(json!({
                "reloaded": false,
                "error": format!("reload failed, the running configuration stays: {e}"),
                "problems": e.problems(),
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ContainerObs, Observed};

    #[test]
    fn openmetrics_only_when_preferred() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        // (Accept header, OpenMetrics wanted)
        let cases = [
            (prometheus, true),
            ("", false),
            ("*/*", false),
            ("text/plain", false),
            ("application/openmetrics-text", true),
            ("application/openmetrics-text;q=0", false),
            ("text/plain;q=1, application/openmetrics-text;q=0.5", false),
            ("application/openmetrics-text;q=0.5, */*;q=0.1", true),
        ];
        for (accept, want) in cases {
            assert_eq!(wants_openmetrics(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn ready_once_every_service_passed_and_every_backend_answered() {
        let seen = |containers: Vec<ContainerObs>| ServiceStatus {
            last_reconcile_at: Some(chrono::Utc::now()),
            observed: Observed {
                containers,
                ..Observed::default()
            },
            ..ServiceStatus::default()
        };
        let c = |state: ContainerState| ContainerObs {
            name: "c".into(),
            state,
        };
        let down = ContainerState::Unknown {
            reason: "docker unix:///none.sock: unreachable".into(),
        };
        // (services with their status, if any; the answer)
        type Case<'a> = (&'a [(&'a str, Option<ServiceStatus>)], Result<(), &'a str>);
        let cases: &[Case<'_>] = &[
            (&[("a", None)], Err("a: first reconcile pass not finished")),
            (
                &[("a", Some(ServiceStatus::default()))],
                Err("a: first reconcile pass not finished"),
            ),
            (
                &[("a", Some(seen(vec![c(ContainerState::Stopped)])))],
                Ok(()),
            ),
            (
                &[("a", Some(seen(vec![c(down.clone()), c(down.clone())])))],
                Err("a: docker unix:///none.sock: unreachable"),
            ),
            (
                &[("a", Some(seen(vec![]))), ("b", None)],
                Err("b: first reconcile pass not finished"),
            ),
        ];
        for (services, want) in cases {
            let board: BTreeMap<String, ServiceStatus> = services
                .iter()
                .filter_map(|(n, s)| s.clone().map(|s| (n.to_string(), s)))
                .collect();
            let got = readiness(services.iter().map(|(n, _)| *n), &board);
            match want {
                Ok(()) => assert_eq!(got, Ok(()), "{services:?}"),
                // One line per distinct reason.
                Err(line) => assert_eq!(got, Err(vec![line.to_string()]), "{services:?}"),
            }
        }
    }
}
