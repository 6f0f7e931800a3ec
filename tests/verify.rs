//! Verification after a real failover, against the real HAProxy and Docker engine: HAProxy's
//! own health check must report the opened cloud server UP within `timeouts.verify`, else the
//! status, the metric and an event say the failover is not verified (and the server stays
//! open: on-prem is down).

mod common;

use std::time::Duration;

use common::*;
use failover_responder::verify::Verification;

const VERIFIED: &str = "failover_responder_failover_verified{service=\"onprem-api\"}";

/// The service's `verification` in status (None while on-prem).
async fn verification(r: &Responder) -> Option<Verification> {
    r.service_view("onprem-api").await.status.verification
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_server_haproxy_never_sees_up_leaves_the_failover_not_verified() {
    let Some(w) = World::start("verify").await else {
        return;
    };
    let cfg = w
        .configure()
        .hold_down("0s")
        .key("timeouts: {healthy: 30s, drain: 2s, stop: 1s, verify: 2s}")
        .load(w.dir.path());
    let r = Responder::start_with(cfg).await;

    // A failover HAProxy confirms: its check sees cloud1 UP, the failover is verified.
    let started = chrono::Utc::now();
    assert_eq!(r.post_alerts(&down_body(started, None)).await.status(), 202);
    let v = eventually("verified", Duration::from_secs(30), || async {
        verification(&r).await.filter(|v| v.verified == Some(true))
    })
    .await;
    assert!(w.is("cloud").await, "{v:?}");
    assert_eq!(metric(&r.metrics().await, VERIFIED), 1.0);

    // Back on-prem: nothing to verify.
    let resolved = down_body(started, Some(chrono::Utc::now()));
    assert_eq!(r.post_alerts(&resolved).await.status(), 202);
    eventually("on-prem", Duration::from_secs(30), || async {
        (w.is("onprem").await && verification(&r).await.is_none()).then_some(())
    })
    .await;

    // cloud1's health check now goes to a closed port: HAProxy will never see it UP.
    let closed = free_port();
    let out = w.haproxy.set_addr("cloud1", closed).await;
    assert!(out.contains("changed"), "{out}");
    let again = chrono::Utc::now();
    assert_eq!(r.post_alerts(&down_body(again, None)).await.status(), 202);
    // Never verified on the way: right after `state ready` HAProxy assumes the server UP
    // (`UP 1/3`) until its checks fail; that is not a check that passed.
    let v = eventually("not verified", Duration::from_secs(30), || async {
        let v = verification(&r).await;
        assert_ne!(
            v.as_ref().and_then(|v| v.verified),
            Some(true),
            "verified a server whose check cannot pass: {v:?}"
        );
        v.filter(|v| v.verified == Some(false))
    })
    .await;
    assert!(
        v.message.contains("api/cloud1") && v.message.contains("down") && v.message.contains("2s"),
        "{v:?}"
    );
    // Opened by this failover, not left over from the first.
    assert!(v.opened_at >= again, "{v:?}");
    assert_eq!(metric(&r.metrics().await, VERIFIED), 0.0);
    let events = r.events("kind=verify").await;
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("failover NOT verified")),
        "{events:?}"
    );
    // The server stays open (on-prem is down anyway) and the container runs.
    assert!(w.cloud_open().await);
    assert_eq!(w.container_running().await, Some(true));
}
