//! The whole core loop against real parts: Debian's HAProxy (started here with its own config),
//! the real Docker engine with a locally built busybox image, and the responder in-process.
//! Every address is on 127.0.0.1.

mod common;

use std::time::{Duration, Instant};

use common::*;

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
    let cfg = world.configure().hold_down("0s").yaml();
    let responder = Responder::start(&cfg, world.dir.path()).await;
    Some(Stack { world, responder })
}

/// Waits until onprem-api is converged with `mode` desired; returns its status.
async fn converged(r: &Responder, mode: Mode) -> ServiceView {
    eventually(
        &format!("converged in {mode:?} mode"),
        Duration::from_secs(60),
        || async {
            let svc = r.service_view("onprem-api").await;
            done_if(
                svc.desired_mode() == Some(mode) && svc.status.converged,
                svc,
            )
        },
    )
    .await
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
    converged(r, Mode::Onprem).await;
    assert_eq!(
        container_running(&s.docker, &s.container).await,
        None,
        "no container before failover"
    );

    // onprem_down fires.
    let t0 = Instant::now();
    let resp = r.post_alerts(&fixture("onprem_down-firing.json")).await;
    assert_eq!(resp.status().as_u16(), 202);
    let svc = converged(r, Mode::Cloud).await;
    let failover_time = t0.elapsed();
    assert_eq!(container_running(&s.docker, &s.container).await, Some(true));
    assert_eq!(
        s.haproxy.admin_flags("cloud1").await & 0x3b,
        0,
        "cloud1 ready in HAProxy (no maint or drain flag)"
    );
    assert_eq!(
        svc.actions(),
        ["start_container", "wait_healthy", "server_ready"],
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
    let before = r.service_view("onprem-api").await.actions().len();
    assert_eq!(r.post_fixture("onprem_down-firing.json").await, 202);
    r.passes(2).await;
    let svc = r.service_view("onprem-api").await;
    assert_eq!(
        svc.actions().len(),
        before,
        "a duplicate notification caused steps: {svc:#?}"
    );
    assert!(svc.status.converged);

    // Resolved: drain, maint, stop, in that order.
    let resp = r.post_alerts(&fixture("onprem_down-resolved.json")).await;
    assert_eq!(resp.status().as_u16(), 202);
    let svc = converged(r, Mode::Onprem).await;
    assert_eq!(
        svc.actions()[before..],
        [
            "server_drain",
            "wait_drained",
            "server_maint",
            "stop_container"
        ],
        "{svc:#?}"
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
    assert_eq!(r.post_fixture("onprem_down-firing.json").await, 202);
    converged(r, Mode::Cloud).await;

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
    // The deadline only bounds a hung test: how fast is a figure (printed; about one period,
    // 1 s, plus the start itself on an idle machine), not an assertion that load could break.
    eventually(
        "the container is started again",
        Duration::from_secs(30),
        || {
            let (d, name) = (d.clone(), name.clone());
            async move { (container_running(&d, &name).await == Some(true)).then_some(()) }
        },
    )
    .await;
    println!("stopped container restarted after {:?}", t.elapsed());
    // By the responder: its second successful start (the failover's was the first).
    let m = r.metrics().await;
    assert!(m.contains(r#"failover_responder_steps_total{service="onprem-api",action="start_container",outcome="success"} 2"#), "{m}");
    converged(r, Mode::Cloud).await;

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
    assert_eq!(r.post_fixture("onprem_down-firing.json").await, 202);
    converged(r, Mode::Cloud).await;
    // The resolved notification is lost; onprem_recovered fires later (startsAt 05:38:23 > 05:38:00).
    assert_eq!(r.post_fixture("onprem_recovered-firing.json").await, 202);
    let svc = converged(r, Mode::Onprem).await;
    let reason = svc.status.desired.map(|d| d.reason).unwrap_or_default();
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
    let cfg = ConfigBuilder::new(&token)
        .reconcile("1s", "200ms", "800ms")
        .container(&good, IMAGE)
        .published(good_port)
        .haproxy(&h_good.socket)
        .timeouts("20s", "1s", "1s")
        .service("broken")
        .container(&bad, IMAGE)
        .published(bad_port)
        .container_key(&format!(
            "health_url: http://127.0.0.1:{}/health",
            free_port()
        ))
        .haproxy(&h_bad.socket)
        .timeouts("500ms", "1s", "1s")
        .yaml();
    let r = Responder::start(&cfg, dir_good.path()).await;
    assert_eq!(r.post_fixture("onprem_down-firing.json").await, 202);

    // The healthy service converges while the broken one keeps failing.
    converged(&r, Mode::Cloud).await;
    assert_eq!(h_good.admin_flags("cloud1").await & 0x3b, 0);
    let broken = eventually(
        "broken shows repeated failures",
        Duration::from_secs(20),
        || async {
            let broken = r.service_view("broken").await;
            (broken.status.consecutive_failures >= 3).then_some(broken)
        },
    )
    .await;
    let err = broken.status.last_error.unwrap_or_default();
    assert!(
        err.contains("healthy") && err.contains("timed out"),
        "{err}"
    );
    assert!(!broken.status.converged);
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
