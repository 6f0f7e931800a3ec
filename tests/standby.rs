//! Standby tiers against real HAProxy and Docker (and moto for EC2): the resting state each tier
//! returns to, and that a warm standby fails over by opening the server alone.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn actions(st: &serde_json::Value) -> Vec<String> {
    st["services"]["onprem-api"]["last_steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["action"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_standby_rests_healthy_behind_a_closed_server() {
    let Some(w) = World::start("warm").await else {
        return;
    };
    let r = Responder::start(
        &w.config("", "    hold_down: 0s\n    standby: warm"),
        w.dir.path(),
    )
    .await;
    // At rest: the container is started and healthy, the server stays closed.
    eventually("warm at rest", Duration::from_secs(30), || async {
        let st = r.status().await;
        (st["services"]["onprem-api"]["converged"] == true
            && w.container_running().await == Some(true)
            && !w.cloud_open().await)
            .then_some(())
    })
    .await;
    let before = actions(&r.status().await).len();

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
        (r.status().await["services"]["onprem-api"]["converged"] == true).then_some(())
    })
    .await;
    let st = r.status().await;
    assert_eq!(
        actions(&st)[before..],
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
        let st = r.status().await;
        (st["services"]["onprem-api"]["state"]["mode"] == "onprem"
            && st["services"]["onprem-api"]["converged"] == true
            && !w.cloud_open().await)
            .then_some(())
    })
    .await;
    assert_eq!(
        w.container_running().await,
        Some(true),
        "warm keeps the container"
    );
    assert!(!actions(&r.status().await).contains(&"stop_container".to_string()));
    r.shutdown().await;
}
