//! The webhook against the running responder (in-process on 127.0.0.1:0): every real
//! Alertmanager fixture is accepted; each bad request gets the right 4xx and changes nothing;
//! the responder starts and takes webhooks while Docker and HAProxy are unreachable.

mod common;

use std::time::Duration;

use common::*;
use failover_responder::plan::{ContainerState, ServerState};
use serde_json::Value;

/// Backends point at sockets that do not exist: unreachable on purpose.
fn config(dir: &std::path::Path) -> ConfigBuilder {
    ConfigBuilder::new(&token_file(dir))
        .top("webhook: {max_body_bytes: 4096}")
        .reconcile("200ms", "100ms", "500ms")
        .docker_host(&format!("unix://{}/no-docker.sock", dir.display()))
        .container("fr-never-created", "none:latest")
        .haproxy(&dir.join("no-haproxy.sock"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_is_accepted_and_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = Responder::start(&config(dir.path()).yaml(), dir.path()).await;
    for name in fixture_names() {
        let resp = r.post_alerts(&fixture(&name)).await;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.expect("json answer");
        assert_eq!(status, 202, "{name}: {body}");
        assert_eq!(body["status"], "accepted", "{name}");
    }
    let st = r.status_doc().await;
    assert_eq!(st.notifications.len(), fixture_names().len());
    // onprem_down fired then resolved (sorted order: firing before resolved), the recovery
    // alert fires; the overloaded alerts concern no configured matcher and are not kept.
    let firing: Vec<&str> = st.services["onprem-api"]
        .firing_alerts
        .iter()
        .filter_map(|a| a.labels.get("alertname").map(String::as_str))
        .collect();
    assert_eq!(firing, vec!["onprem_recovered"]);
    assert!(r
        .metrics()
        .await
        .contains(r#"failover_responder_notifications_total{result="accepted"} 4"#));
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = Responder::start(&config(dir.path()).yaml(), dir.path()).await;
    let url = format!("{}/api/v1/alerts", r.url);
    let good = fixture("onprem_down-firing.json");
    let good_str = String::from_utf8(good.clone()).expect("utf8");
    let mut big = good_str.clone();
    big.insert_str(1, &format!("\"pad\":\"{}\",", "x".repeat(5000)));

    struct Case {
        name: &'static str,
        auth: Option<String>,
        content_type: Option<&'static str>,
        body: String,
        status: u16,
        message: &'static str,
    }
    let bearer = Some(format!("Bearer {TOKEN}"));
    let cases = vec![
        Case {
            name: "no credentials",
            auth: None,
            content_type: Some("application/json"),
            body: good_str.clone(),
            status: 401,
            message: "credentials",
        },
        Case {
            name: "wrong token",
            auth: Some("Bearer nope".into()),
            content_type: Some("application/json"),
            body: good_str.clone(),
            status: 401,
            message: "credentials",
        },
        Case {
            name: "token prefix",
            auth: Some(format!("Bearer {}", &TOKEN[..4])),
            content_type: Some("application/json"),
            body: good_str.clone(),
            status: 401,
            message: "credentials",
        },
        Case {
            name: "basic when only bearer is configured",
            auth: Some("Basic dXNlcjpzM2NyZXQtdG9rZW4=".into()),
            content_type: Some("application/json"),
            body: good_str.clone(),
            status: 401,
            message: "credentials",
        },
        Case {
            name: "text/plain",
            auth: bearer.clone(),
            content_type: Some("text/plain"),
            body: good_str.clone(),
            status: 415,
            message: "text/plain",
        },
        Case {
            name: "no content type",
            auth: bearer.clone(),
            content_type: None,
            body: good_str.clone(),
            status: 415,
            message: "content type",
        },
        Case {
            name: "too large",
            auth: bearer.clone(),
            content_type: Some("application/json"),
            body: big,
            status: 413,
            message: "4096 bytes",
        },
        Case {
            name: "not JSON",
            auth: bearer.clone(),
            content_type: Some("application/json"),
            body: "{\"version\": ".into(),
            status: 400,
            message: "invalid JSON",
        },
        Case {
            name: "empty",
            auth: bearer.clone(),
            content_type: Some("application/json"),
            body: String::new(),
            status: 400,
            message: "invalid JSON at body",
        },
        Case {
            name: "wrong label type",
            auth: bearer.clone(),
            content_type: Some("application/json"),
            body: good_str.replace("\"severity\":\"critical\"", "\"severity\":3"),
            status: 400,
            message: "alerts[0].labels.severity",
        },
        Case {
            name: "bad status",
            auth: bearer.clone(),
            content_type: Some("application/json"),
            body: good_str.replace(
                "\"status\":\"firing\",\"alerts\"",
                "\"status\":\"burning\",\"alerts\"",
            ),
            status: 400,
            message: "status",
        },
        Case {
            name: "bad time",
            auth: bearer.clone(),
            content_type: Some("application/json"),
            body: good_str.replace("2026-11-22T05:38:00Z", "yesterday"),
            status: 400,
            message: "alerts[0].startsAt",
        },
        Case {
            name: "version 5",
            auth: bearer.clone(),
            content_type: Some("application/json"),
            body: good_str.replace("\"version\":\"4\"", "\"version\":\"5\""),
            status: 400,
            message: "unsupported webhook version",
        },
    ];
    for c in &cases {
        let mut req = r.client.post(&url).body(c.body.clone());
        if let Some(a) = &c.auth {
            req = req.header("authorization", a);
        }
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        let challenge = resp.headers().get("www-authenticate").cloned();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, c.status, "{}: {body}", c.name);
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains(c.message),
            "{}: message {msg:?} should mention {:?}",
            c.name,
            c.message
        );
        assert!(
            !msg.contains(TOKEN),
            "{}: the token leaked into the answer",
            c.name
        );
        if status == 401 {
            assert!(
                challenge.is_some_and(|h| h.to_str().is_ok_and(|v| v.starts_with("Bearer"))),
                "{}",
                c.name
            );
        }
    }
    // Nothing was recorded by any refused request.
    let st = r.status_doc().await;
    assert_eq!(st.notifications.len(), 0, "{st:#?}");
    assert_eq!(st.services["onprem-api"].firing_alerts.len(), 0);
    let metrics = r.metrics().await;
    for (result, n) in [
        ("unauthorized", 4),
        ("unsupported_media_type", 2),
        ("too_large", 1),
        ("bad_request", 6),
    ] {
        let line = format!("failover_responder_notifications_total{{result=\"{result}\"}} {n}");
        assert!(metrics.contains(&line), "want {line} in\n{metrics}");
    }
    // And the right request still works afterwards, on the older path too.
    let resp = r
        .client
        .post(format!("{}/failover", r.url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json; charset=utf-8")
        .body(good)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 202);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_is_accepted_when_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "hunter2\n").expect("pw");
    let cfg = config(dir.path()).auth(&format!(
        "basic_auth: {{username: am, password_file: {}}}",
        pw.display()
    ));
    let r = Responder::start(&cfg.yaml(), dir.path()).await;
    let url = format!("{}/api/v1/alerts", r.url);
    let body = fixture("onprem_down-firing.json");
    for (user, pass, want) in [
        ("am", "hunter2", 202),
        ("am", "hunter", 401),
        ("amx", "hunter2", 401),
    ] {
        let resp = r
            .client
            .post(&url)
            .basic_auth(user, Some(pass))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), want, "{user}:{pass}");
    }
    // The bearer token keeps working beside basic auth.
    assert_eq!(r.post_alerts(&body).await.status().as_u16(), 202);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backends_are_shown_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = Responder::start(&config(dir.path()).yaml(), dir.path()).await;
    assert_eq!(r.post_fixture("onprem_down-firing.json").await, 202);
    let svc = eventually(
        "status shows cloud with unknown backends",
        Duration::from_secs(10),
        || async {
            let svc = r.service_view("onprem-api").await;
            let server = svc.status.observed.servers.first().map(|s| &s.state);
            let unknown = matches!(server, Some(ServerState::Unknown { .. }));
            done_if(svc.desired_mode() == Some(Mode::Cloud) && unknown, svc)
        },
    )
    .await;
    assert!(
        matches!(
            svc.status.observed.containers[0].state,
            ContainerState::Unknown { .. }
        ),
        "{svc:#?}"
    );
    assert!(!svc.status.converged);
    assert!(!svc.status.waiting.is_empty());
    let m = r.metrics().await;
    assert!(
        m.contains(r#"failover_responder_backend_up{service="onprem-api",backend="haproxy""#),
        "{m}"
    );
    assert!(
        m.lines()
            .filter(|l| l.starts_with("failover_responder_backend_up{"))
            .all(|l| l.ends_with(" 0")),
        "{m}"
    );
    assert!(
        m.contains(r#"failover_responder_desired_mode{service="onprem-api",mode="cloud"} 1"#),
        "{m}"
    );
    // Alive regardless; not ready, and saying why: it cannot act on unreachable backends.
    assert_eq!(r.get("/-/healthy").await.0, 200);
    let (code, body) = r.get("/-/ready").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("onprem-api: docker unix://") && body.contains("no-haproxy.sock"),
        "{body}"
    );
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_rate_limited_per_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path()).auth("max_failures_per_minute: 3");
    let r = Responder::start(&cfg.yaml(), dir.path()).await;
    let url = format!("{}/api/v1/alerts", r.url);
    let send = |token: &'static str| {
        r.client
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(fixture("onprem_down-firing.json"))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(send("guess").await.expect("send").status().as_u16(), 401);
    }
    let resp = send("guess").await.expect("send");
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(send("guess").await.expect("send").status().as_u16(), 429);
    // The right token from the same address is never locked out (Alertmanager may share it).
    assert_eq!(send(TOKEN).await.expect("send").status().as_u16(), 202);
    let m = r.metrics().await;
    let line = |result: &str, n: u32| {
        format!("failover_responder_notifications_total{{result=\"{result}\"}} {n}")
    };
    assert!(m.contains(&line("rate_limited", 2)), "{m}");
    assert!(m.contains(&line("unauthorized", 3)), "{m}");
    assert_eq!(r.status_doc().await.journal_entries, 1);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_copies_from_an_alertmanager_pair_follow_the_incarnation_rules() {
    // Field report 1: onprem_down fires (09:00), resolves (09:00 -> 09:05), fires again
    // (09:07, same labels); then the second Alertmanager of the HA pair delivers its delayed
    // copy of the old resolution. It must change nothing. The neighbours: a late copy of the
    // 09:00 firing, and the 09:07 incarnation's own resolution, which does end it.
    let dir = tempfile::tempdir().expect("tempdir");
    let r = Responder::start(&config(dir.path()).yaml(), dir.path()).await;
    let at = |min: i64| {
        chrono::DateTime::parse_from_rfc3339("2026-12-02T09:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc)
            + chrono::Duration::minutes(min)
    };
    let post = |body: Vec<u8>| {
        let r = &r;
        async move {
            let resp = r.post_alerts(&body).await;
            assert_eq!(resp.status(), 202);
            let v: Value = resp.json().await.expect("json");
            v["changed"].as_bool().expect("changed")
        }
    };
    let firing_starts = |svc: &ServiceView| -> Vec<String> {
        svc.firing_alerts
            .iter()
            .map(|a| a.starts_at.to_rfc3339())
            .collect()
    };

    assert!(post(down_body(at(0), None)).await);
    assert!(post(down_body(at(0), Some(at(5)))).await);
    assert!(post(down_body(at(7), None)).await);
    // The plan preview tells the same story as the webhook: the late copy keeps cloud.
    let preview = r.plan_preview(&down_body(at(0), Some(at(5)))).await;
    let reason = preview["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("failover alert(s) firing since 2026-12-02T09:07"),
        "{preview:#}"
    );
    // The HA twin's delayed copy of the 09:00 resolution.
    assert!(
        !post(down_body(at(0), Some(at(5)))).await,
        "late resolution ended 09:07"
    );
    // A delayed copy of the 09:00 firing does not move the held incarnation back.
    assert!(!post(down_body(at(0), None)).await);
    let svc = r.service_view("onprem-api").await;
    let starts = firing_starts(&svc);
    assert_eq!(starts.len(), 1, "{svc:#?}");
    assert!(starts[0].starts_with("2026-12-02T09:07:00"), "{starts:?}");
    // The 09:07 incarnation's own resolution ends it.
    assert!(post(down_body(at(7), Some(at(9)))).await);
    assert!(firing_starts(&r.service_view("onprem-api").await).is_empty());
    r.shutdown().await;
}
