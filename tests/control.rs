//! Manual control, the event history, the plan preview, dry run and the `ctl` CLI, against real
//! HAProxy and Docker.

mod common;

use std::time::Duration;

use common::*;
use failover_responder::config::Config;
use failover_responder::desired::Override;

fn config(w: &World, storage: &std::path::Path) -> Config {
    w.configure()
        .storage(storage)
        .hold_down("0s")
        .load(w.dir.path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_pause_force_and_persist() {
    let Some(w) = World::start("override").await else {
        return;
    };
    let storage = w.dir.path().join("data");
    let r = Responder::start_with(config(&w, &storage)).await;

    // Refusals first: they change nothing.
    assert_eq!(
        r.post("/api/v1/services/onprem-api/pause", None).await.0,
        401
    );
    assert_eq!(
        r.post("/api/v1/services/onprem-api/pause", Some("wrong"))
            .await
            .0,
        401
    );
    let (code, body) = r.post("/api/v1/services/nope/pause", Some(TOKEN)).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = r
        .post("/api/v1/services/onprem-api/explode", Some(TOKEN))
        .await;
    assert_eq!(code, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("explode"),
        "{body}"
    );

    // Paused: the alert is recorded, nothing moves.
    assert_eq!(
        r.post("/api/v1/services/onprem-api/pause", Some(TOKEN))
            .await
            .0,
        200
    );
    assert_eq!(r.post_fixture("onprem_down-firing.json").await, 202);
    r.passes(2).await;
    let s = r.service_view("onprem-api").await;
    assert_eq!(s.mode(), Some(Mode::Onprem), "{s:#?}");
    assert!(
        s.status
            .held
            .as_deref()
            .unwrap_or_default()
            .contains("paused"),
        "{s:#?}"
    );
    assert!(
        !s.status.pending_steps.is_empty(),
        "the plan is shown: {s:#?}"
    );
    assert_eq!(
        w.container_running().await,
        None,
        "paused: no container started"
    );
    assert!(!w.cloud_open().await);

    // Resume: follows the firing alert.
    assert_eq!(
        r.post("/api/v1/services/onprem-api/resume", Some(TOKEN))
            .await
            .0,
        200
    );
    w.settled(&r, Mode::Cloud, Duration::from_secs(30)).await;
    // Forced failback while the alert still fires.
    assert_eq!(
        r.post("/api/v1/services/onprem-api/failback", Some(TOKEN))
            .await
            .0,
        200
    );
    w.settled(&r, Mode::Onprem, Duration::from_secs(30)).await;
    // Forced failover with no alert at all.
    assert_eq!(r.post_fixture("onprem_down-resolved.json").await, 202);
    assert_eq!(
        r.post("/api/v1/services/onprem-api/failover", Some(TOKEN))
            .await
            .0,
        200
    );
    w.settled(&r, Mode::Cloud, Duration::from_secs(30)).await;

    // The override survives a restart.
    r.shutdown().await;
    let r = Responder::start_with(config(&w, &storage)).await;
    let state = r.service_view("onprem-api").await.state;
    assert_eq!(state.and_then(|s| s.override_), Some(Override::Failover));

    // ctl: resume through the CLI; with nothing firing it goes back on-prem.
    let bin = env!("CARGO_BIN_EXE_failover-responder");
    let out = std::process::Command::new(bin)
        .args(["ctl", "--url", &r.url, "--token-file"])
        .arg(&w.token)
        .args(["resume", "onprem-api"])
        .output()
        .expect("ctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "onprem-api: no override, following the alerts"
    );
    w.settled(&r, Mode::Onprem, Duration::from_secs(30)).await;
    let out = std::process::Command::new(bin)
        .args(["ctl", "--url", &r.url, "status"])
        .output()
        .expect("ctl");
    // A table, without colour when not on a terminal.
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("SERVICE") && lines[0].contains("BURST"),
        "{text}"
    );
    let row: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("onprem-api "))
        .unwrap_or_else(|| panic!("no row for onprem-api: {text}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[..3], ["onprem-api", "onprem", "converged"], "{text}");
    assert!(!text.contains('\x1b'), "colour codes in a pipe: {text:?}");
    // --output json: the API's status as is.
    let out = std::process::Command::new(bin)
        .args(["ctl", "--url", &r.url, "--output", "json", "status"])
        .output()
        .expect("ctl");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ctl --output json");
    assert_eq!(doc["services"]["onprem-api"]["state"]["mode"], "onprem");
    assert_eq!(doc["services"]["onprem-api"]["converged"], true);
    let out = std::process::Command::new(bin)
        .args(["ctl", "--url", &r.url, "pause", "onprem-api"])
        .env_remove("FAILOVER_RESPONDER_TOKEN")
        .output()
        .expect("ctl");
    assert!(!out.status.success(), "no token must fail");

    // Every decision is in the history, in order, with the alerts behind it.
    let events = r.events("service=onprem-api").await;
    let ids: Vec<u64> = events.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert!(ids.windows(2).all(|p| p[0] < p[1]), "in order: {ids:?}");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    for k in ["override", "decision", "plan", "step"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let first_failover = events
        .iter()
        .find(|e| {
            e["kind"] == "decision"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("onprem -> cloud"))
        })
        .expect("a failover decision");
    assert_eq!(
        first_failover["alerts"][0], "375a75b901a7e795",
        "{first_failover}"
    );
    // since= filters; bad since is a 400; unknown service a 404.
    let mid = ids[ids.len() / 2];
    let later = r.events(&format!("since={mid}")).await;
    assert!(later.iter().all(|e| e["id"].as_u64() > Some(mid)));
    for (q, code) in [("since=yesterday", 400), ("service=nope", 404)] {
        assert_eq!(r.get(&format!("/api/v1/events?{q}")).await.0, code, "{q}");
    }
    // A query that does not parse answers in the API's JSON shape, naming the query.
    let (code, body) = r.get("/api/v1/events?tail=abc").await;
    assert_eq!(code, 400, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON error body");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("tail=abc"), "{body}");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_preview_and_dry_run_change_nothing() {
    let Some(w) = World::start("dryrun").await else {
        return;
    };
    let storage = w.dir.path().join("data");
    let r = Responder::start_with(config(&w, &storage)).await;
    r.passes(2).await;

    // Preview: what a firing onprem_down would do, nothing recorded.
    let p = r.plan_preview(&fixture("onprem_down-firing.json")).await;
    assert_eq!(p["mode"], "cloud", "{p}");
    let steps: Vec<&str> = p["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert!(
        steps[0].starts_with("start ") && steps[2] == "ready api/cloud1",
        "{steps:?}"
    );
    let st = r.status_doc().await;
    assert_eq!(st.journal_entries, 0);
    assert_eq!(st.services["onprem-api"].firing_alerts.len(), 0);
    // Without credentials: refused.
    let resp = r
        .client
        .post(format!("{}/api/v1/plan", r.url))
        .header("content-type", "application/json")
        .body(fixture("onprem_down-firing.json"))
        .send()
        .await
        .expect("plan");
    assert_eq!(resp.status().as_u16(), 401);
    r.shutdown().await;

    // Dry run: the alert is recorded and the decision made, no step is executed.
    let mut cfg = config(&w, &storage);
    cfg.dry_run = true;
    let r = Responder::start_with(cfg).await;
    assert_eq!(r.post_fixture("onprem_down-firing.json").await, 202);
    eventually("dry run decided cloud", Duration::from_secs(10), || async {
        let s = r.service_view("onprem-api").await;
        (s.mode() == Some(Mode::Cloud) && !s.status.pending_steps.is_empty()).then_some(())
    })
    .await;
    r.passes(2).await;
    assert_eq!(
        w.container_running().await,
        None,
        "dry run started a container"
    );
    assert!(!w.cloud_open().await, "dry run opened the server");
    let m = r.metrics().await;
    // The failure counters exist from the start, at 0; no step counted anything.
    let counted: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("failover_responder_steps_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(counted.is_empty(), "no step ran: {counted:?}");
    assert!(m.contains(r#"failover_responder_steps_total{service="onprem-api",action="start_container",outcome="failure"} 0"#), "{m}");
    r.shutdown().await;
}
