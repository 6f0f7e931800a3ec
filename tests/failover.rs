//! The whole core loop against real parts: Debian's HAProxy (started here with its own config),
//! the real Docker engine with a locally built busybox image, and the responder in-process.
//! Every address is on 127.0.0.1.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

struct Stack {
    world: World,
    responder: Responder,
}

impl std::ops::Deref for Stack {
    type Target = World;
    fn deref(&self) -> &World {
        &self.world
    }
}

/// Starts on-prem, HAProxy and the responder; returns None (skipping) when a part is missing.
async fn stack(test: &str) -> Option<Stack> {
    let world = World::start(test).await?;
    // No flap damping here: these tests fail back at once.
    let cfg = world.config("", "    hold_down: 0s");
    let responder = Responder::start(&cfg, world.dir.path()).await;
    Some(Stack { world, responder })
}

fn steps(st: &Value) -> Vec<(String, String)> {
    st["services"]["onprem-api"]["last_steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["action"].as_str().unwrap_or_default().to_string(),
                        s["outcome"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn converged(r: &Responder, mode: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = r.status().await;
        let svc = &st["services"]["onprem-api"];
        if svc["desired"]["mode"] == mode && svc["converged"] == true {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "not converged in {mode} mode after 60 s:\n{st:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_and_failback_through_real_haproxy_and_docker() {
    let Some(mut s) = stack("core").await else {
        return;
    };
    let r = &s.responder;

    // At rest: on-prem serves, the cloud server is in maint, no container.
    assert_eq!(
        get_text(&s.haproxy.frontend()).await.as_deref(),
        Some("onprem")
    );
    assert_ne!(
        s.haproxy.admin_flags("cloud1").await & 0x01,
        0,
        "cloud1 starts in maint"
    );
    converged(r, "onprem").await;
    assert_eq!(
        container_running(&s.docker, &s.container).await,
        None,
        "no container before failover"
    );

    // onprem_down fires.
    let t0 = Instant::now();
    let resp = r.post_alerts(&fixture("onprem_down-firing.json")).await;
    assert_eq!(resp.status().as_u16(), 202);
    let st = converged(r, "cloud").await;
    let failover_time = t0.elapsed();
    assert_eq!(container_running(&s.docker, &s.container).await, Some(true));
    assert_eq!(
        s.haproxy.admin_flags("cloud1").await & 0x3b,
        0,
        "cloud1 ready in HAProxy (no maint or drain flag)"
    );
    assert_eq!(
        steps(&st)
            .iter()
            .map(|(a, _)| a.as_str())
            .collect::<Vec<_>>(),
        vec!["start_container", "wait_healthy", "server_ready"],
        "safe order: start, healthy, then open"
    );
    println!("failover: webhook -> container healthy and server ready in {failover_time:?}");

    // With on-prem stopped, the frontend is answered by the cloud container.
    s.world.onprem.kill();
    let t1 = Instant::now();
    let frontend = s.haproxy.frontend();
    eventually(
        "frontend answered by the cloud container",
        Duration::from_secs(30),
        || async { (get_text(&frontend).await.as_deref() == Some("cloud")).then_some(()) },
    )
    .await;
    println!(
        "on-prem stopped -> first answer from the cloud in {:?}",
        t1.elapsed()
    );

    // The same notification again: no extra steps.
    let before = steps(&r.status().await).len();
    assert_eq!(
        r.post_alerts(&fixture("onprem_down-firing.json"))
            .await
            .status()
            .as_u16(),
        202
    );
    r.passes(2).await;
    let st = r.status().await;
    assert_eq!(
        steps(&st).len(),
        before,
        "a duplicate notification caused steps: {st}"
    );
    assert_eq!(st["services"]["onprem-api"]["converged"], true);

    // Resolved: drain, maint, stop, in that order.
    let resp = r.post_alerts(&fixture("onprem_down-resolved.json")).await;
    assert_eq!(resp.status().as_u16(), 202);
    let st = converged(r, "onprem").await;
    let all = steps(&st);
    let tail: Vec<&str> = all[before..].iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        tail,
        vec![
            "server_drain",
            "wait_drained",
            "server_maint",
            "stop_container"
        ],
        "{st}"
    );
    assert_eq!(
        s.haproxy.admin_flags("cloud1").await & 0x01,
        0x01,
        "cloud1 forced into maint"
    );
    assert_eq!(
        container_running(&s.docker, &s.container).await,
        Some(false),
        "container stopped"
    );
    let m = r.metrics().await;
    assert!(m.contains(r#"failover_responder_steps_total{service="onprem-api",action="stop_container",outcome="success"} 1"#), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired_within_one_period() {
    let Some(mut s) = stack("drift").await else {
        return;
    };
    let r = &s.responder;
    assert_eq!(
        r.post_alerts(&fixture("onprem_down-firing.json"))
            .await
            .status()
            .as_u16(),
        202
    );
    converged(r, "cloud").await;

    // Someone stops the container behind the responder's back.
    let opts = bollard::query_parameters::StopContainerOptions {
        t: Some(0),
        signal: None,
    };
    s.docker
        .stop_container(&s.container, Some(opts))
        .await
        .expect("stop container by hand");
    let t = Instant::now();
    let d = s.docker.clone();
    let name = s.container.clone();
    eventually(
        "the container is started again",
        Duration::from_secs(10),
        || {
            let (d, name) = (d.clone(), name.clone());
            async move { (container_running(&d, &name).await == Some(true)).then_some(()) }
        },
    )
    .await;
    // interval is 1 s: one period plus the start itself.
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "repair took {:?}",
        t.elapsed()
    );
    println!("stopped container restarted after {:?}", t.elapsed());
    converged(r, "cloud").await;

    // Someone puts the cloud server in maint by hand.
    let out = s.haproxy.cmd("set server api/cloud1 state maint").await;
    assert!(out.trim().is_empty(), "{out}");
    let t = Instant::now();
    let h = &s.haproxy;
    eventually("cloud1 is ready again", Duration::from_secs(10), || async {
        (h.admin_flags("cloud1").await & 0x3b == 0).then_some(())
    })
    .await;
    println!("server put in maint reopened after {:?}", t.elapsed());

    // HAProxy restarts and forgets its runtime state: the server is reopened.
    s.world.haproxy.restart().await;
    assert_ne!(
        s.haproxy.admin_flags("cloud1").await & 0x01,
        0,
        "restarted HAProxy starts with cloud1 in maint"
    );
    let t = Instant::now();
    let h = &s.haproxy;
    eventually(
        "cloud1 ready after HAProxy restart",
        Duration::from_secs(10),
        || async { (h.admin_flags("cloud1").await & 0x3b == 0).then_some(()) },
    )
    .await;
    println!("HAProxy restart repaired after {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_alert_fails_back_without_resolved_notification() {
    let Some(s) = stack("recovered").await else {
        return;
    };
    let r = &s.responder;
    assert_eq!(
        r.post_alerts(&fixture("onprem_down-firing.json"))
            .await
            .status()
            .as_u16(),
        202
    );
    converged(r, "cloud").await;
    // The resolved notification is lost; onprem_recovered fires later (startsAt 05:38:23 > 05:38:00).
    assert_eq!(
        r.post_alerts(&fixture("onprem_recovered-firing.json"))
            .await
            .status()
            .as_u16(),
        202
    );
    let st = converged(r, "onprem").await;
    let reason = st["services"]["onprem-api"]["desired"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("failback alert"), "{reason}");
    assert_eq!(
        container_running(&s.docker, &s.container).await,
        Some(false)
    );
    assert_eq!(s.haproxy.admin_flags("cloud1").await & 0x01, 0x01);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_service_backs_off_and_the_other_goes_on() {
    if !require_world() {
        return;
    }
    ensure_image(IMAGE, "cloud");
    let d = docker().await;
    let (dir_good, dir_bad) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let (good_port, bad_port) = (free_port(), free_port());
    let h_good = Haproxy::start(dir_good.path(), free_port(), good_port).await;
    let h_bad = Haproxy::start(dir_bad.path(), free_port(), bad_port).await;
    let pid = std::process::id();
    let (good, bad) = (format!("fr-test-good-{pid}"), format!("fr-test-bad-{pid}"));
    let _guards = (ContainerGuard(good.clone()), ContainerGuard(bad.clone()));
    drop(ContainerGuard(good.clone()));
    drop(ContainerGuard(bad.clone()));
    let token = token_file(dir_good.path());
    // "broken" never becomes healthy: its health_url points at a port nothing listens on.
    let cfg = format!(
        r#"
auth: {{bearer_token_file: {token}}}
reconcile: {{interval: 1s, retry_initial: 200ms, retry_max: 800ms}}
services:
  onprem-api:
    failover_on: ['alertname="onprem_down"']
    docker:
      containers: [{{name: {good}, image: {IMAGE}, ports: ['127.0.0.1:{good_port}:8080'], health_url: 'http://127.0.0.1:{good_port}/health'}}]
    haproxy: {{runtime_api: ['unix:{good_sock}'], backend: api, cloud_servers: [cloud1]}}
    timeouts: {{healthy: 20s, drain: 1s, stop: 1s}}
  broken:
    failover_on: ['alertname="onprem_down"']
    docker:
      containers: [{{name: {bad}, image: {IMAGE}, ports: ['127.0.0.1:{bad_port}:8080'], health_url: 'http://127.0.0.1:{unused}/health'}}]
    haproxy: {{runtime_api: ['unix:{bad_sock}'], backend: api, cloud_servers: [cloud1]}}
    timeouts: {{healthy: 500ms, drain: 1s, stop: 1s}}
"#,
        token = token.display(),
        good_sock = h_good.socket.display(),
        bad_sock = h_bad.socket.display(),
        unused = free_port(),
    );
    let r = Responder::start(&cfg, dir_good.path()).await;
    assert_eq!(
        r.post_alerts(&fixture("onprem_down-firing.json"))
            .await
            .status()
            .as_u16(),
        202
    );

    // The healthy service converges while the broken one keeps failing.
    converged(&r, "cloud").await;
    assert_eq!(h_good.admin_flags("cloud1").await & 0x3b, 0);
    let st = eventually(
        "broken shows repeated failures",
        Duration::from_secs(20),
        || async {
            let st = r.status().await;
            (st["services"]["broken"]["consecutive_failures"].as_u64() >= Some(3)).then_some(st)
        },
    )
    .await;
    let broken = &st["services"]["broken"];
    let err = broken["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("healthy") && err.contains("timed out"),
        "{err}"
    );
    assert_eq!(broken["converged"], false);
    // Never opened in front of an unhealthy container.
    assert_ne!(
        h_bad.admin_flags("cloud1").await & 0x01,
        0,
        "broken's server must stay in maint"
    );
    assert_eq!(container_running(&d, &bad).await, Some(true));
    const FAILED_WAITS: &str = r#"failover_responder_steps_total{service="broken",action="wait_healthy",outcome="failure"}"#;
    let m = r.metrics().await;
    let failures = metric(&m, FAILED_WAITS) as u64;
    assert!(failures >= 3, "{m}");
    assert!(m.contains(r#"failover_responder_consecutive_failures{service="broken"}"#));
    // Backoff: with a 500 ms health timeout and 200..800 ms waits, 3 s allow at most ~3 attempts
    // more; a loop without backoff would make far more. (A rate over a window: the sleep is the
    // measurement, not a synchronisation.)
    let before = failures;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = metric(&r.metrics().await, FAILED_WAITS) as u64;
    assert!(
        after > before && after - before <= 3,
        "attempts in 3 s: {}",
        after - before
    );
    r.shutdown().await;
}
