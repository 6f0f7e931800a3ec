//! Scale: 100 services, each owning one cloud server on each of 2 real HAProxy instances (a warm
//! standby: opening the servers is the whole failover). One notification whose alert every
//! service's `failover_on` matches -> every service converged in cloud, and its resolution ->
//! every service back; p50/p99 over 5 rounds, standalone and with `cluster:` (the leader alone
//! on three etcd members, so each pass also reads and writes the shared state in etcd).
//! Prints figures; asserts nothing. Run with `cargo bench --bench scale` (scripts/bench.sh
//! runs it).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SERVICES: usize = 100;
const ROUNDS: usize = 5;

/// An HAProxy with `SERVICES` cloud servers in maint; returns it and its socket path.
fn haproxy(dir: &std::path::Path, n: usize) -> (Proc, String) {
    let sock = dir.join(format!("h{n}.sock"));
    let mut cfg = format!(
        "global\n  stats socket {} mode 600 level admin\n  stats maxconn 200\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\nfrontend fe\n  bind 127.0.0.1:{}\n  default_backend api\nbackend api\n",
        sock.display(),
        free_port()
    );
    for i in 1..=SERVICES {
        cfg.push_str(&format!("  server cloud{i} 127.0.0.1:9 disabled\n"));
    }
    let path = dir.join(format!("h{n}.cfg"));
    std::fs::write(&path, cfg).expect("haproxy config");
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn haproxy");
    (
        Proc {
            child,
            name: format!("haproxy {n}"),
        },
        sock.display().to_string(),
    )
}

fn config(socks: &[String], token: &std::path::Path, cluster: &str) -> String {
    let apis: Vec<String> = socks.iter().map(|s| format!("'unix:{s}'")).collect();
    let mut y = format!(
        "auth: {{bearer_token_file: {}, max_failures_per_minute: 0}}\nreconcile: {{interval: 2s, retry_initial: 200ms, retry_max: 2s}}\n{cluster}services:\n",
        token.display()
    );
    for i in 1..=SERVICES {
        y.push_str(&format!(
            "  s{i}:\n    failover_on: ['alertname=\"scale_down\"']\n    haproxy: {{runtime_api: [{}], backend: api, cloud_servers: [cloud{i}]}}\n    hold_down: 0s\n",
            apis.join(", ")
        ));
    }
    y
}

/// How many services are converged in `mode`.
async fn converged(r: &ResponderProc, mode: &str) -> usize {
    let Some(text) = get_text(&format!("{}/api/v1/status", r.url)).await else {
        return 0;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return 0;
    };
    v["services"].as_object().map_or(0, |m| {
        m.values()
            .filter(|s| s["desired"]["mode"] == mode && s["converged"] == true)
            .count()
    })
}

async fn round(r: &ResponderProc, body: &[u8], mode: &str) -> Duration {
    let t = Instant::now();
    assert_eq!(r.post_alerts(body).await, Some(202));
    eventually(
        &format!("{SERVICES} services {mode}"),
        Duration::from_secs(60),
        || async { (converged(r, mode).await == SERVICES).then_some(()) },
    )
    .await;
    t.elapsed()
}

async fn measure(dir: &std::path::Path, yaml: &str, label: &str) {
    let path = dir.join(format!("{label}.yaml"));
    std::fs::write(&path, yaml).expect("config");
    let r = ResponderProc::start(&path, &dir.join(format!("state-{label}")), &[]).await;
    eventually("first passes", Duration::from_secs(60), || async {
        (converged(&r, "onprem").await == SERVICES).then_some(())
    })
    .await;
    let (mut over, mut back) = (Vec::new(), Vec::new());
    let t0 = chrono::Utc::now();
    for i in 0..ROUNDS {
        let starts = t0 + chrono::Duration::seconds(i as i64);
        let fire = alert_body("scale_down", "5ca1e5ca1e5ca1e5", starts, None);
        over.push(round(&r, &fire, "cloud").await);
        let ends = starts + chrono::Duration::milliseconds(500);
        let resolve = alert_body("scale_down", "5ca1e5ca1e5ca1e5", starts, Some(ends));
        back.push(round(&r, &resolve, "onprem").await);
    }
    over.sort();
    back.sort();
    println!(
        "scale ({SERVICES} services x 2 HAProxy, {label}, {ROUNDS} rounds): notification -> all converged in cloud p50 {:?} p99 {:?}; resolved -> all back p50 {:?} p99 {:?}",
        percentile(&over, 0.5),
        percentile(&over, 0.99),
        percentile(&back, 0.5),
        percentile(&back, 0.99),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !have_binary("haproxy") || !have_binary("etcd") {
        println!("SKIPPED: scale bench needs haproxy and etcd (scripts/install-deps.sh)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (_h1, s1) = haproxy(dir.path(), 1);
    let (_h2, s2) = haproxy(dir.path(), 2);
    let socks = vec![s1, s2];
    eventually("haproxy sockets", Duration::from_secs(10), || async {
        socks
            .iter()
            .all(|s| std::path::Path::new(s).exists())
            .then_some(())
    })
    .await;
    let token = token_file(dir.path());
    measure(dir.path(), &config(&socks, &token, ""), "standalone").await;
    let etcd = Etcd::start(dir.path(), 3).await;
    let cluster = format!(
        "cluster:\n  name: site-a\n  lease_ttl: 2s\n  prefix: /scale/\n  etcd: {{endpoints: {}, timeout: 500ms}}\n",
        etcd.endpoints()
    );
    measure(dir.path(), &config(&socks, &token, &cluster), "cluster").await;
}
