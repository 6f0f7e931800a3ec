//! Takeover time of a responder cluster: kill -9 of the leader -> the follower leads, and ->
//! the follower's first step has started the cloud container, as p50/p99 over 10 runs with
//! `lease_ttl: 2s` (goal: <= lease_ttl + 1 s). Three etcd members, real HAProxy and Docker, two
//! responder processes, all on loopback. Each run: the failover alert reaches the follower only
//! (so the leader has nothing to do and the follower plans without acting), then the leader is
//! killed. Prints figures; asserts nothing. Run with `cargo bench --bench takeover`
//! (scripts/bench.sh runs it).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

const RUNS: usize = 10;

async fn node(w: &World, etcd: &Etcd, name: &str, run: usize) -> ResponderProc {
    let top = format!(
        "cluster:\n  name: {name}\n  lease_ttl: 2s\n  prefix: /bench-{run}/\n  etcd: {{endpoints: {}, timeout: 500ms}}\n",
        etcd.endpoints()
    );
    let config = w.dir.path().join(format!("{name}-{run}.yaml"));
    let yaml = w.configure().top(&top).hold_down("0s").yaml();
    std::fs::write(&config, yaml).expect("config");
    let storage = w.dir.path().join(format!("state-{name}-{run}"));
    ResponderProc::start(&config, &storage, &[]).await
}

async fn role(n: &ResponderProc) -> Option<String> {
    let text = get_text(&format!("{}/api/v1/status", n.url)).await?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["cluster"]["role"].as_str().map(String::from)
}

async fn wait_role(n: &ResponderProc, want: &str) {
    eventually(want, Duration::from_secs(20), || async {
        role(n).await.filter(|r| r == want).map(|_| ())
    })
    .await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !require_world() || !have_binary("etcd") {
        println!("SKIPPED: takeover bench needs etcd, haproxy, busybox-static and Docker (scripts/install-deps.sh)");
        return;
    }
    let Some(w) = World::start("takeover").await else {
        return;
    };
    let etcd = Etcd::start(w.dir.path(), 3).await;
    let (mut leads, mut acts) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        // On-prem, container absent, cloud server in maint.
        drop(ContainerGuard(w.container.clone()));
        w.haproxy.cmd("set server api/cloud1 state maint").await;
        eventually("container gone", Duration::from_secs(20), || async {
            w.container_running().await.is_none().then_some(())
        })
        .await;
        let mut a = node(&w, &etcd, "site-a", run).await;
        wait_role(&a, "leader").await;
        let b = node(&w, &etcd, "site-b", run).await;
        wait_role(&b, "follower").await;
        let body = down_body(chrono::Utc::now(), None);
        assert_eq!(b.post_alerts(&body).await, Some(202));
        let killed = Instant::now();
        let killed_wall = chrono::Utc::now();
        a.kill9();
        wait_role(&b, "leader").await;
        leads.push(killed.elapsed());
        let started = eventually(
            "the follower starts the container",
            Duration::from_secs(30),
            || async {
                let info = w
                    .docker
                    .inspect_container(
                        &w.container,
                        None::<bollard::query_parameters::InspectContainerOptions>,
                    )
                    .await
                    .ok()?;
                let at = info.state?.started_at?;
                chrono::DateTime::parse_from_rfc3339(&at).ok()
            },
        )
        .await;
        let took = (started.with_timezone(&chrono::Utc) - killed_wall)
            .to_std()
            .unwrap_or_default();
        acts.push(took);
        println!(
            "run {run}: leader after {:?}, container started after {took:?}",
            leads[run]
        );
    }
    leads.sort();
    acts.sort();
    println!(
        "takeover (lease_ttl 2s, {RUNS} runs): kill -9 -> follower leads p50 {:?} p99 {:?}; -> its first step started the container p50 {:?} p99 {:?}",
        percentile(&leads, 0.5),
        percentile(&leads, 0.99),
        percentile(&acts, 0.5),
        percentile(&acts, 0.99),
    );
}
