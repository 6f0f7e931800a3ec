//! End to end on the demo's stack, all real and on loopback: an on-prem API behind HAProxy,
//! Prometheus probing it with the repository's rules, Alertmanager routing to the responder,
//! the responder starting a cloud container through the Docker engine. A client keeps
//! requesting the frontend. On-prem is really stopped: the frontend must be answered by the
//! cloud (the RTO is printed); on-prem is restored: traffic must go back with zero failed
//! requests during failback.

mod common;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// One request outcome: when, and the body ("" when it failed).
type Log = Arc<Mutex<Vec<(Instant, String)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_outage_fails_over_and_back_without_failed_requests() {
    if !require_world() || !require_alert_stack() {
        return;
    }
    let Some(mut w) = World::start("e2e").await else {
        return;
    };
    let dir = w.dir.path().to_path_buf();
    let onprem_port = w.haproxy_onprem_port();

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let responder_port = listener.local_addr().expect("addr").port();
    let rules = format!("{}/prometheus/rules/*.yml", env!("CARGO_MANIFEST_DIR"));
    let stack = AlertStack::start(&dir, onprem_port, responder_port, &w.token, &rules).await;
    let config = w
        .configure()
        .storage(&dir.join("data"))
        .alertmanager(stack.alertmanager_port, "resync_interval: 5s")
        .hold_down("5s")
        .key(&format!(
            "onprem_health_url: http://127.0.0.1:{onprem_port}/health"
        ))
        .key("healthy_for: 2s")
        .load(&dir);
    let r = Responder::start_on(config, listener).await;
    // Prometheus has seen on-prem up, so the outage is a real transition.
    stack.onprem_up_seen().await;

    // The steady client: a request every 50 ms.
    let log: Log = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (log, stop, url) = (log.clone(), stop.clone(), w.haproxy.frontend());
        tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("client");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = match c.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        r.text().await.unwrap_or_default().trim().to_string()
                    }
                    _ => String::new(),
                };
                log.lock().expect("log").push((Instant::now(), body));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    eventually(
        "client gets on-prem answers",
        Duration::from_secs(10),
        || async {
            (log.lock()
                .expect("log")
                .iter()
                .filter(|(_, b)| b == "onprem")
                .count()
                >= 5)
                .then_some(())
        },
    )
    .await;

    // Outage.
    w.onprem.kill();
    let outage = Instant::now();
    let rto = eventually(
        "the frontend is answered by the cloud",
        Duration::from_secs(60),
        || async {
            log.lock()
                .expect("log")
                .iter()
                .find(|(t, b)| *t > outage && b == "cloud")
                .map(|(t, _)| *t - outage)
        },
    )
    .await;
    let failed_outage = log
        .lock()
        .expect("log")
        .iter()
        .filter(|(t, b)| *t > outage && b.is_empty())
        .count();
    println!("e2e: RTO {rto:?} (outage -> first answer from the cloud), {failed_outage} failed requests before it");

    // Recovery: the same on-prem API comes back.
    w.restart_onprem();
    let recovery = Instant::now();
    // Failed back: server closed, container stopped.
    w.settled(&r, Mode::Onprem, Duration::from_secs(90)).await;
    let failback = recovery.elapsed();
    // A little more traffic after the failback completed.
    let after = log.lock().expect("log").len();
    eventually(
        "more requests after failback",
        Duration::from_secs(10),
        || async { (log.lock().expect("log").len() >= after + 10).then_some(()) },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = client.await;
    let log: Vec<(Instant, String)> = log.lock().expect("log").clone();
    let since_recovery: Vec<&(Instant, String)> =
        log.iter().filter(|(t, _)| *t > recovery).collect();
    let failed = since_recovery.iter().filter(|(_, b)| b.is_empty()).count();
    println!(
        "e2e: failback done {failback:?} after recovery; {} requests since recovery, {failed} failed; last answer {:?}",
        since_recovery.len(),
        log.last().map(|(_, b)| b.as_str())
    );
    assert_eq!(failed, 0, "requests failed during failback");
    assert_eq!(log.last().map(|(_, b)| b.as_str()), Some("onprem"));
    r.shutdown().await;
}
