//! Standby tiers against real HAProxy and Docker (and moto for EC2): the resting state each tier
//! returns to, and that a warm standby fails over by opening the server alone.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_standby_rests_healthy_behind_a_closed_server() {
    let Some(w) = World::start("warm").await else {
        return;
    };
    let r = Responder::start(
        &w.configure().hold_down("0s").key("standby: warm").yaml(),
        w.dir.path(),
    )
    .await;
    // At rest: the container is started and healthy, the server stays closed.
    eventually("warm at rest", Duration::from_secs(30), || async {
        (r.service_view("onprem-api").await.status.converged
            && w.container_running().await == Some(true)
            && !w.cloud_open().await)
            .then_some(())
    })
    .await;
    let before = r.service_view("onprem-api").await.actions().len();

    let down = chrono::Utc::now();
    let t = Instant::now();
    assert_eq!(
        r.post_alerts(&down_body(down, None))
            .await
            .status()
            .as_u16(),
        202
    );
    eventually("warm failover", Duration::from_secs(10), || async {
        w.cloud_open().await.then_some(())
    })
    .await;
    let took = t.elapsed();
    println!("warm standby: webhook -> server ready in {took:?}");
    eventually("converged in cloud", Duration::from_secs(10), || async {
        r.service_view("onprem-api")
            .await
            .status
            .converged
            .then_some(())
    })
    .await;
    assert_eq!(
        r.service_view("onprem-api").await.actions()[before..],
        ["server_ready".to_string()],
        "only the server is opened"
    );

    // Failback returns to the warm resting state: closed, container still running.
    assert_eq!(
        r.post_alerts(&down_body(down, Some(down + chrono::Duration::seconds(1))))
            .await
            .status()
            .as_u16(),
        202
    );
    // The persisted mode changes before the pass that closes the server has recorded its
    // plan, so "onprem and converged" alone can be a stale pair: wait for the world itself.
    eventually("warm failback", Duration::from_secs(20), || async {
        let svc = r.service_view("onprem-api").await;
        (svc.mode() == Some(Mode::Onprem) && svc.status.converged && !w.cloud_open().await)
            .then_some(())
    })
    .await;
    assert_eq!(
        w.container_running().await,
        Some(true),
        "warm keeps the container"
    );
    let actions = r.service_view("onprem-api").await.actions();
    assert!(!actions.contains(&"stop_container".to_string()));
    r.shutdown().await;
}
