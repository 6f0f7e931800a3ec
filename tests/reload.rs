//! Config reload (`POST /-/reload`, SIGHUP) against real HAProxy and Docker: a service added,
//! one changed in the middle of a failover step (the step finishes, the new config takes over
//! after it), one removed (its container left running); auth and the body limit swapped; a
//! file that does not load, or that only a restart could apply, changes nothing.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

async fn reload(r: &Responder, token: Option<&str>) -> (u16, Value) {
    r.post("/-/reload", token).await
}

/// The messages of the `reload` events that `GET /api/v1/events?{query}` answers.
async fn reload_events(r: &Responder, query: &str) -> Vec<String> {
    r.events(query)
        .await
        .iter()
        .filter(|e| e["kind"] == "reload")
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect()
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn service_names(r: &Responder) -> Vec<String> {
    r.status_doc().await.services.into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_hands_over_and_removes_services_and_a_bad_file_changes_nothing() {
    let Some(w) = World::start("reload").await else {
        return;
    };
    let dir = w.dir.path();
    // The cloud container's health answers only once the test starts this server: the
    // failover's health wait is a step in flight for as long as the test wants.
    let health_port = free_port();
    let base = w
        .configure()
        .storage(&dir.join("data"))
        .hold_down("0s")
        .container_key(&format!("health_url: http://127.0.0.1:{health_port}/"));
    let other = format!("{}-other", w.container);
    let _other_guard = ContainerGuard(other.clone());
    // A second service of its own container, on the same alerts, no HAProxy.
    let add_other = |b: ConfigBuilder| {
        b.service("other")
            .docker_host(&format!("unix://{DOCKER_SOCK}"))
            .container(&other, IMAGE)
            .timeouts("30s", "1s", "1s")
    };
    let with_other = add_other(base.clone());
    let r = Responder::start_with(base.load(dir)).await;
    r.passes(1).await;
    let m = r.metrics().await;
    assert_eq!(
        metric(&m, "failover_responder_config_last_reload_successful"),
        1.0
    );
    let started_at = metric(
        &m,
        "failover_responder_config_last_reload_success_timestamp_seconds",
    );
    assert!(started_at > 1.7e9, "{started_at}");

    // Credentials first: a reload is a change.
    with_other.write(dir);
    assert_eq!(reload(&r, None).await.0, 401);
    assert_eq!(service_names(&r).await, vec!["onprem-api"]);

    // Added: reconciled from now on.
    let asked = std::time::Instant::now();
    let (code, body) = reload(&r, Some(TOKEN)).await;
    eprintln!(
        "reload adding a service: {} ms inside, {:?} for the HTTP round trip",
        body["report"]["took_ms"],
        asked.elapsed()
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(names(&body["report"]["added"]), vec!["other"], "{body}");
    assert_eq!(
        names(&body["report"]["unchanged"]),
        vec!["onprem-api"],
        "{body}"
    );
    eventually(
        "service other reconciled",
        Duration::from_secs(20),
        || async {
            r.service_view("other")
                .await
                .status
                .last_reconcile_at
                .map(|_| ())
        },
    )
    .await;

    // A file that does not load: every problem with its key path, 400, nothing changes (not
    // even the valid part of it: a new token).
    let new_token = dir.join("token2");
    std::fs::write(&new_token, "a-different-token-of-sufficient-length\n").expect("token");
    with_other
        .clone()
        .auth(&format!("bearer_token_file: {}", new_token.display()))
        .key("hold_dwn: 1s")
        .timeouts("0s", "1s", "1s")
        .write(dir);
    let (code, body) = reload(&r, Some(TOKEN)).await;
    assert_eq!(code, 400, "{body}");
    let problems = names(&body["problems"]).join("\n");
    assert!(problems.contains("services.other.hold_dwn"), "{problems}");
    assert!(
        problems.contains("services.other.timeouts.healthy"),
        "{problems}"
    );
    let m = r.metrics().await;
    assert_eq!(
        metric(&m, "failover_responder_config_last_reload_successful"),
        0.0
    );
    assert_eq!(service_names(&r).await, vec!["onprem-api", "other"]);
    // The timeline says so too, naming the keys only (the events are readable by anyone).
    let failed = reload_events(&r, "tail=5").await;
    assert!(
        failed
            .iter()
            .any(|m| m.starts_with("reload failed") && m.contains("services.other.hold_dwn")),
        "{failed:?}"
    );
    // And the status document: refused, when, which keys; the running config's load time kept.
    let config = &r.status().await["config"];
    assert_eq!(config["last_reload_successful"], false, "{config}");
    assert!(config["last_failed_reload_at"].is_string(), "{config}");
    let keys = names(&config["last_failed_reload_keys"]);
    assert!(
        keys.contains(&"services.other.hold_dwn".to_string()),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k.contains("token2")), "{keys:?}");
    assert!(config["last_reload_success_at"].is_string(), "{config}");
    // `ctl status`, where an operator looks after `systemctl reload` (which cannot say it
    // failed), says so above the table.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_failover-responder"))
        .args(["ctl", "--url", &r.url, "status"])
        .output()
        .expect("ctl status");
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("config: reload REFUSED at ")
            && first.contains("services.other.hold_dwn"),
        "{text}"
    );
    assert_eq!(
        r.post("/api/v1/services/onprem-api/resume", Some(TOKEN))
            .await
            .0,
        200
    );

    // What only a restart can apply: 409, each key named, nothing changes.
    let moved = with_other
        .clone()
        .top("listen_address: 127.0.0.1:1")
        .top(&format!(
            "storage: {{path: {}}}",
            dir.join("elsewhere").display()
        ));
    moved.write(dir);
    let (code, body) = reload(&r, Some(TOKEN)).await;
    assert_eq!(code, 409, "{body}");
    let problems = names(&body["problems"]).join("\n");
    assert!(problems.contains("listen_address"), "{problems}");
    assert!(problems.contains("storage"), "{problems}");

    // Changed in the middle of a step: the failover's health wait is in flight when the
    // reload hands onprem-api over; the step is not cut short (no "resume" of an abandoned
    // step), and the failover completes.
    with_other.write(dir);
    assert_eq!(reload(&r, Some(TOKEN)).await.0, 200);
    assert_eq!(r.post_fixture("onprem_down-firing.json").await, 202);
    eventually(
        "the health wait in flight",
        Duration::from_secs(30),
        || async {
            r.service_view("onprem-api")
                .await
                .state
                .and_then(|s| s.step_in_flight)
                .filter(|s| s.starts_with("wait-healthy"))
        },
    )
    .await;
    add_other(base.clone().key("drill: {every: 24h}")).write(dir);
    let (code, body) = reload(&r, Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        names(&body["report"]["changed"]),
        vec!["onprem-api"],
        "{body}"
    );
    let drill_interval = r#"failover_responder_drill_interval_seconds{service="onprem-api"}"#;
    assert_eq!(metric(&r.metrics().await, drill_interval), 0.0);
    let _health = start_httpd(dir, health_port, "ok");
    w.settled(
        &r,
        failover_responder::desired::Mode::Cloud,
        Duration::from_secs(60),
    )
    .await;
    let steps = r.event_messages("step").await;
    assert!(
        steps
            .iter()
            .any(|m| m.starts_with("wait-healthy") && m.ends_with("success")),
        "{steps:?}"
    );
    assert!(r.event_messages("resume").await.is_empty());
    // The new config runs once the step is over: its reconciler publishes its drill interval.
    eventually(
        "the new config in force",
        Duration::from_secs(10),
        || async { (metric(&r.metrics().await, drill_interval) == 86400.0).then_some(()) },
    )
    .await;
    let reloads = r.event_messages("reload").await;
    assert!(
        reloads.iter().any(|m| m.contains("configuration changed")),
        "{reloads:?}"
    );

    // Removed while in cloud: no longer reconciled, its container left running. onprem-api
    // fails back on the same alert; had `other` still been reconciled it would have stopped
    // its container in the same passes.
    eventually("other in cloud", Duration::from_secs(30), || async {
        (container_running(&w.docker, &other).await == Some(true)).then_some(())
    })
    .await;
    base.clone().key("drill: {every: 24h}").write(dir);
    let (code, body) = reload(&r, Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(names(&body["report"]["removed"]), vec!["other"], "{body}");
    assert_eq!(service_names(&r).await, vec!["onprem-api"]);
    assert_eq!(r.post_fixture("onprem_recovered-firing.json").await, 202);
    w.settled(
        &r,
        failover_responder::desired::Mode::Onprem,
        Duration::from_secs(60),
    )
    .await;
    r.passes(2).await;
    assert_eq!(container_running(&w.docker, &other).await, Some(true));
    // Its gauges are gone rather than frozen (a frozen last_reconcile would page).
    eventually(
        "other's series dropped",
        Duration::from_secs(10),
        || async {
            let m = r.metrics().await;
            (!m.contains(r#"last_reconcile_timestamp_seconds{service="other"}"#)).then_some(())
        },
    )
    .await;
    let m = r.metrics().await;
    assert!(!m.contains(r#"desired_mode{service="other""#), "{m}");
    assert!(!m.contains(r#"converged{service="other""#), "{m}");
    assert!(!m.contains(r#"readiness_problems{service="other""#), "{m}");
    let gone = reload_events(&r, "service=other").await;
    assert!(gone.iter().any(|m| m.contains("left as it is")), "{gone:?}");

    // Auth: the new token in, the old one out, at once.
    base.clone()
        .key("drill: {every: 24h}")
        .auth(&format!("bearer_token_file: {}", new_token.display()))
        .write(dir);
    assert_eq!(reload(&r, Some(TOKEN)).await.0, 200);
    assert_eq!(reload(&r, Some(TOKEN)).await.0, 401);

    // SIGHUP reloads too: a smaller body limit applies to the next webhook.
    base.clone()
        .key("drill: {every: 24h}")
        .auth(&format!("bearer_token_file: {}", new_token.display()))
        .top("webhook: {max_body_bytes: 1024}")
        .write(dir);
    signal(std::process::id(), "-HUP");
    let big = vec![b' '; 4096];
    eventually(
        "SIGHUP applied the body limit",
        Duration::from_secs(10),
        || async {
            let code = r
                .client
                .post(format!("{}/api/v1/alerts", r.url))
                .bearer_auth("a-different-token-of-sufficient-length")
                .header("content-type", "application/json")
                .body(big.clone())
                .send()
                .await
                .ok()?
                .status()
                .as_u16();
            (code == 413).then_some(())
        },
    )
    .await;
    let m = r.metrics().await;
    assert_eq!(
        metric(&m, "failover_responder_config_last_reload_successful"),
        1.0
    );
    assert!(
        metric(
            &m,
            "failover_responder_config_last_reload_success_timestamp_seconds"
        ) >= started_at
    );
    r.shutdown().await;
}

/// The next notification on `sock` within `within`, as its `KEY=value` lines.
async fn next_notification(
    sock: &tokio::net::UnixDatagram,
    within: Duration,
) -> Option<Vec<String>> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(within, sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(String::from)
            .collect(),
    )
}

/// Reads notifications until one holds `line`; panics after `within`.
async fn expect_notification(
    sock: &tokio::net::UnixDatagram,
    line: &str,
    within: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_notification(sock, left).await {
            Some(msg) if msg.iter().any(|l| l == line) => return msg,
            Some(_) => {}
            None => panic!("no {line} within {within:?}"),
        }
    }
}

/// systemd's notify protocol, spoken to a socket the test binds as systemd would
/// (`$NOTIFY_SOCKET`, `$WATCHDOG_USEC`): READY=1 once serving; RELOADING=1 with
/// MONOTONIC_USEC then READY=1 around a SIGHUP reload (which does not end the process);
/// WATCHDOG=1 while the reconciler is alive and none once its pass hangs past
/// `reconcile.stuck_after` (a Docker engine that accepts and never answers); STOPPING=1 on
/// SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_reloading_watchdog_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let notify = tokio::net::UnixDatagram::bind(d.join("notify.sock")).expect("notify socket");
    // A Docker engine that accepts connections and never answers: a pass observing it hangs
    // (for bollard's 120 s timeout).
    let hang = std::os::unix::net::UnixListener::bind(d.join("hang.sock")).expect("hang socket");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hang.incoming().flatten() {
            held.push(c);
        }
    });
    let token = token_file(d);
    let config = |docker: &str| {
        ConfigBuilder::new(&token)
            .top("reconcile: {interval: 500ms, retry_initial: 200ms, retry_max: 500ms, stuck_after: 1s}")
            .timeouts("300ms", "0s", "300ms")
            .docker_host(&format!("unix://{}", d.join(docker).display()))
            .container("fr-test-never-started", IMAGE)
            .write(d)
    };
    // First an engine that refuses at once: every pass ends quickly.
    let path = config("absent.sock");
    let notify_path = d.join("notify.sock").display().to_string();
    let r = ResponderProc::start(
        &path,
        &d.join("data"),
        &[("NOTIFY_SOCKET", &notify_path), ("WATCHDOG_USEC", "400000")],
    )
    .await;
    let pid = r.proc.child.id();
    let ready = expect_notification(&notify, "READY=1", Duration::from_secs(10)).await;
    assert!(ready.iter().any(|l| l.starts_with("STATUS=")), "{ready:?}");
    for _ in 0..3 {
        expect_notification(&notify, "WATCHDOG=1", Duration::from_secs(2)).await;
    }

    // SIGHUP: a reload onto the engine that hangs.
    config("hang.sock");
    signal(pid, "-HUP");
    let reloading = expect_notification(&notify, "RELOADING=1", Duration::from_secs(10)).await;
    assert!(
        reloading.iter().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    expect_notification(&notify, "READY=1", Duration::from_secs(10)).await;

    // The new reconciler's pass hangs: past stuck_after the pings stop. Wait for a silence
    // of five ping intervals, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watchdog kept being fed while a pass hung"
        );
        match next_notification(&notify, Duration::from_secs(1)).await {
            None => break,
            Some(_) => continue,
        }
    }
    let log = std::fs::read_to_string(d.join("data.log")).expect("log");
    assert!(
        log.contains("no longer feeding the systemd watchdog"),
        "{log}"
    );
    assert!(log.contains("reconcile.stuck_after"), "{log}");
    assert_eq!(r.proc.child.id(), pid);

    signal(pid, "-TERM");
    expect_notification(&notify, "STOPPING=1", Duration::from_secs(10)).await;
    let mut r = r;
    let status = r.proc.child.wait().expect("wait");
    assert!(status.success(), "{status}");
}
