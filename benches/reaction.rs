//! Reaction time: webhook received -> HAProxy cloud server ready, against the real HAProxy and
//! Docker engine, as p50/p99 over 20 runs: with a cold container start (the container is
//! removed between runs, so each run creates and starts it), and with a warm standby (the
//! container already running and healthy). Prints figures; asserts nothing.
//! Run with `cargo bench --bench reaction` (scripts/bench.sh runs it).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

const RUNS: usize = 20;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !require_world() {
        println!("SKIPPED: reaction bench needs haproxy, busybox-static and Docker (scripts/install-deps.sh)");
        return;
    }
    let Some(w) = World::start("bench").await else {
        return;
    };
    let r = Responder::start(
        &w.config("", "    hold_down: 0s\n    max_transitions_per_hour: 0"),
        w.dir.path(),
    )
    .await;
    let t0 = chrono::Utc::now();
    let mut cold = Vec::new();
    for i in 0..RUNS {
        let starts = t0 + chrono::Duration::seconds(i as i64 * 10);
        // Settled on-prem, container absent.
        drop(ContainerGuard(w.container.clone()));
        let start = Instant::now();
        assert_eq!(
            r.post_alerts(&down_body(starts, None))
                .await
                .status()
                .as_u16(),
            202
        );
        loop {
            if w.cloud_open().await {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no failover");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        cold.push(start.elapsed());
        assert_eq!(
            r.post_alerts(&down_body(
                starts,
                Some(starts + chrono::Duration::seconds(1))
            ))
            .await
            .status()
            .as_u16(),
            202
        );
        eventually("failed back", Duration::from_secs(30), || async {
            w.is("onprem").await.then_some(())
        })
        .await;
    }
    report("cold (create + start + healthy + ready)", cold);
    r.shutdown().await;

    // Warm: the container rests running and healthy behind a closed server.
    let r = Responder::start(
        &w.config(
            "",
            "    hold_down: 0s\n    max_transitions_per_hour: 0\n    standby: warm",
        ),
        w.dir.path(),
    )
    .await;
    let t0 = t0 + chrono::Duration::seconds(RUNS as i64 * 10 + 10);
    let mut warm = Vec::new();
    for i in 0..RUNS {
        let starts = t0 + chrono::Duration::seconds(i as i64 * 10);
        // At rest means the responder says so too: a container that runs but is not yet
        // healthy (the first run, right after start) would time a health wait, not a warm
        // failover.
        eventually("warm at rest", Duration::from_secs(30), || async {
            let st = r.status().await;
            (st["services"]["onprem-api"]["converged"] == true
                && st["services"]["onprem-api"]["desired"]["mode"] == "onprem"
                && w.container_running().await == Some(true)
                && !w.cloud_open().await)
                .then_some(())
        })
        .await;
        let start = Instant::now();
        assert_eq!(
            r.post_alerts(&down_body(starts, None))
                .await
                .status()
                .as_u16(),
            202
        );
        while !w.cloud_open().await {
            assert!(start.elapsed() < Duration::from_secs(30), "no failover");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        warm.push(start.elapsed());
        assert_eq!(
            r.post_alerts(&down_body(
                starts,
                Some(starts + chrono::Duration::seconds(1))
            ))
            .await
            .status()
            .as_u16(),
            202
        );
    }
    report("warm (server ready only)", warm);
    r.shutdown().await;
}

fn report(what: &str, mut runs: Vec<Duration>) {
    runs.sort();
    println!(
        "reaction {what}: p50 {:?}  p99 {:?}  min {:?}  max {:?}  ({} runs)",
        percentile(&runs, 0.5),
        percentile(&runs, 0.99),
        runs[0],
        runs[runs.len() - 1],
        runs.len()
    );
}
