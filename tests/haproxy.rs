//! HAProxy as it behaves in the field: states the Runtime API cannot change. A server HAProxy
//! holds in maintenance because its name does not resolve (RMAINT), and a socket at level
//! `operator`, which answers `show` commands but refuses every `set server`. Both must show as
//! what blocks the failover (status, one event, a metric), never as steps that "succeed"
//! in a loop. Real HAProxy, real Docker engine, the responder in-process.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Rewrites the world's haproxy.cfg with `edit` and restarts HAProxy on it.
async fn reconfigure(world: &mut World, edit: impl Fn(&str) -> String) {
    let cfg = std::fs::read_to_string(&world.haproxy.config).expect("read haproxy.cfg");
    let new = edit(&cfg);
    assert_ne!(new, cfg, "the edit changed nothing");
    std::fs::write(&world.haproxy.config, new).expect("write haproxy.cfg");
    world.haproxy.restart().await;
}

/// cloud1 on a name that never resolves (`.invalid` is reserved for that), as in the report.
fn unresolvable(cfg: &str, cloud_port: u16) -> String {
    cfg.replace(
        &format!("server cloud1 127.0.0.1:{cloud_port} check backup disabled"),
        "server cloud1 cloud-standby.invalid:8081 check backup disabled init-addr none",
    )
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["kind"] == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_in_dns_maintenance_blocks_the_failover_once_and_loudly() {
    let Some(mut world) = World::start("rmaint").await else {
        return;
    };
    let port = world.cloud_port;
    reconfigure(&mut world, |c| unresolvable(c, port)).await;
    assert_eq!(
        world.haproxy.admin_flags("cloud1").await & 0x20,
        0x20,
        "RMAINT set"
    );
    let cfg = world.configure().hold_down("0s").yaml();
    let r = Responder::start(&cfg, world.dir.path()).await;

    let now = chrono::Utc::now();
    assert_eq!(r.post_alerts(&down_body(now, None)).await.status(), 202);
    // The container comes up; the server cannot open: the status says why.
    let svc = eventually("blocked in status", Duration::from_secs(60), || async {
        let svc = r.service_view("onprem-api").await;
        (!svc.status.blocked.is_empty()).then_some(svc)
    })
    .await;
    let why = svc.status.blocked.join("; ");
    assert!(why.contains("cloud1") && why.contains("RMAINT"), "{why}");
    assert!(
        why.contains("DNS name"),
        "the message says what to do: {why}"
    );
    assert!(!svc.status.converged, "{svc:#?}");
    assert_eq!(
        metric(
            &r.metrics().await,
            "failover_responder_blocked{service=\"onprem-api\"}"
        ),
        1.0
    );

    // Several passes later: one event, no "ready" step run (each would "succeed" with no
    // effect, which is what flooded the history), the server still in RMAINT.
    r.passes(4).await;
    let events = r.events("limit=1000").await;
    assert_eq!(count(&events, "blocked"), 1, "{events:#?}");
    let ready_steps = events
        .iter()
        .filter(|e| e["kind"] == "step" && e["message"].as_str().unwrap_or("").contains("ready"))
        .count();
    assert_eq!(ready_steps, 0, "{events:#?}");
    assert!(events.len() < 30, "event history flooded: {}", events.len());
    assert_eq!(world.haproxy.admin_flags("cloud1").await & 0x20, 0x20);

    // The operator fixes haproxy.cfg (a real address) and reloads: the failover completes.
    reconfigure(&mut world, |c| {
        c.replace(
            "server cloud1 cloud-standby.invalid:8081 check backup disabled init-addr none",
            &format!("server cloud1 127.0.0.1:{port} check backup disabled"),
        )
    })
    .await;
    // The failover completes once unblocked.
    world
        .settled(&r, Mode::Cloud, Duration::from_secs(60))
        .await;
    let events = r.events("limit=1000").await;
    assert_eq!(count(&events, "unblocked"), 1, "{events:#?}");
    assert_eq!(
        metric(
            &r.metrics().await,
            "failover_responder_blocked{service=\"onprem-api\"}"
        ),
        0.0
    );
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_at_level_operator_shows_as_refusing_not_up_and_fine() {
    let Some(mut world) = World::start("operator").await else {
        return;
    };
    reconfigure(&mut world, |c| c.replace("level admin", "level operator")).await;
    assert_eq!(world.haproxy.cmd("show cli level").await.trim(), "operator");
    let cfg = world.configure().hold_down("0s").yaml();
    let r = Responder::start(&cfg, world.dir.path()).await;

    assert_eq!(
        r.post_alerts(&down_body(chrono::Utc::now(), None))
            .await
            .status(),
        202
    );
    let why = eventually("blocked in status", Duration::from_secs(60), || async {
        let blocked = r.service_view("onprem-api").await.status.blocked;
        (!blocked.is_empty()).then(|| blocked.join("; "))
    })
    .await;
    assert!(
        why.contains("level operator") && why.contains("level admin"),
        "{why}"
    );
    let m = r.metrics().await;
    assert_eq!(
        metric(&m, "failover_responder_blocked{service=\"onprem-api\"}"),
        1.0
    );
    r.passes(3).await;
    let events = r.events("limit=1000").await;
    assert_eq!(count(&events, "blocked"), 1, "{events:#?}");
    // Never opened: a refused `set server` is not a success.
    assert!(!world.cloud_open().await);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_change_haproxy_accepts_without_effect_is_an_error() {
    // The backend's own check, beneath the planner: `set server ... state ready` on an RMAINT
    // server gets HAProxy's empty "OK" answer, and the server stays in maintenance.
    let Some(mut world) = World::start("verify").await else {
        return;
    };
    let port = world.cloud_port;
    reconfigure(&mut world, |c| unresolvable(c, port)).await;
    let label = format!("unix:{}", world.haproxy.socket.display());
    let api = failover_responder::backend::haproxy::RuntimeApi::new(&label, Duration::from_secs(2))
        .expect("runtime api");
    let err = api
        .set_state("api", "cloud1", failover_responder::plan::AdminState::Ready)
        .await
        .expect_err("no effect must not be a success");
    let msg = err.to_string();
    assert!(
        msg.contains("did not take effect") && msg.contains("RMAINT"),
        "{msg}"
    );
    assert!(!err.is_retryable(), "a retry cannot lift RMAINT: {msg}");
    // A change that does take effect is still a success.
    assert_eq!(
        world.haproxy.admin_flags("burst1").await & 0x01,
        0x01,
        "burst1 starts in maint"
    );
    api.set_state("api", "burst1", failover_responder::plan::AdminState::Ready)
        .await
        .expect("open burst1");
    assert_eq!(world.haproxy.admin_flags("burst1").await & 0x3b, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_whether_every_haproxy_and_docker_answer() {
    let Some(mut world) = World::start("ready").await else {
        return;
    };
    let r = Responder::start(&world.configure().yaml(), world.dir.path()).await;
    let ready = || r.get("/-/ready");
    eventually(
        "ready with HAProxy and Docker up",
        Duration::from_secs(30),
        || async { (ready().await.0 == 200).then_some(()) },
    )
    .await;
    // HAProxy goes away: not ready, and the body says which Runtime API.
    world.haproxy.proc.kill();
    let sock = world.haproxy.socket.display().to_string();
    let body = eventually(
        "not ready without HAProxy",
        Duration::from_secs(30),
        || async {
            let (code, body) = ready().await;
            (code == 503).then_some(body)
        },
    )
    .await;
    assert!(body.contains(&sock), "{body}");
    // Webhooks are still taken while not ready.
    assert_eq!(
        r.post_alerts(&down_body(chrono::Utc::now(), None))
            .await
            .status(),
        202
    );
    world.haproxy.restart().await;
    eventually("ready again", Duration::from_secs(30), || async {
        (ready().await.0 == 200).then_some(())
    })
    .await;
    r.shutdown().await;
}
