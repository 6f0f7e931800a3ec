//! The fast path's figures on the real stack (HAProxy `inter 200ms fall 2`, Docker, Prometheus
//! scraping every 1 s with the repository's rules, Alertmanager `group_wait: 0s`):
//!
//! - on-prem killed -> first answer from the cloud at the frontend, cold container, 10 runs
//!   with the fast path and 10 through the alert alone, alternating in one run;
//! - what polling costs: CPU of the responder and of HAProxy over an idle window, with the
//!   fast path polling every 200 ms and without it.
//!
//! Prints figures; asserts nothing about them. Run with `cargo bench --bench fastpath`
//! (scripts/bench.sh runs it).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;

const RUNS: usize = 10;
const FAST_PATH: &str =
    "fast_path: {onprem_servers: [onprem], down_for: 0s, poll: 200ms, confirm_within: 5m}";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !require_world() || !require_alert_stack() {
        println!("SKIPPED: the fast path bench needs haproxy, busybox-static, Docker, prometheus and prometheus-alertmanager (scripts/install-deps.sh)");
        return;
    }
    let Some(mut w) = World::start("benchfast").await else {
        return;
    };
    let dir = w.dir.path().to_path_buf();
    let port = free_port();
    let rules = format!("{}/prometheus/rules/onprem.yml", env!("CARGO_MANIFEST_DIR"));
    let stack = AlertStack::start(&dir, w.haproxy_onprem_port(), port, &w.token, &rules).await;
    // Prometheus has scraped on-prem up, so each outage is a real transition for the rule.
    stack.onprem_up_seen().await;
    let mut with = Vec::new();
    let mut without = Vec::new();
    for i in 0..RUNS * 2 {
        let fast = i % 2 == 0;
        let r = responder(&w, &stack, port, fast).await;
        // At rest: on-prem serving, no alert left from the last run (onprem_down keeps firing
        // for 15 s after a recovery), the container absent (a cold start).
        eventually("at rest", Duration::from_secs(120), || async {
            let svc = r.service_view("onprem-api").await;
            let quiet = !svc
                .firing_alerts
                .iter()
                .any(|a| a.labels.get("alertname").map(String::as_str) == Some("onprem_down"));
            (quiet && svc.status.converged && w.is("onprem").await).then_some(())
        })
        .await;
        drop(ContainerGuard(w.container.clone()));
        w.onprem.kill();
        let start = Instant::now();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .expect("client");
        loop {
            let answer = client.get(w.haproxy.frontend()).send().await;
            if let Ok(a) = answer {
                if a.text().await.is_ok_and(|b| b.trim() == "cloud") {
                    break;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(120), "no failover");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = start.elapsed();
        let reason = r
            .service_view("onprem-api")
            .await
            .status
            .desired
            .map(|d| d.reason)
            .unwrap_or_default();
        println!(
            "run {:2} {:>12}: {took:?} ({reason})",
            i + 1,
            if fast { "fast path" } else { "alert only" }
        );
        if fast { &mut with } else { &mut without }.push(took);
        // The alert follows (and confirms a fast-path episode) before on-prem returns, as in
        // a real outage; its failback is the alert's.
        let alerts = format!("http://127.0.0.1:{}/api/v1/alerts", stack.prometheus_port);
        eventually(
            "onprem_down reaches the responder",
            Duration::from_secs(60),
            || async {
                let svc = r.service_view("onprem-api").await;
                let firing = svc
                    .firing_alerts
                    .iter()
                    .any(|a| a.labels.get("alertname").map(String::as_str) == Some("onprem_down"));
                // On a timeout, what Prometheus says of its alerts shows where it stopped.
                let said = get_text(&alerts).await.unwrap_or_default();
                done_if(firing, said)
            },
        )
        .await;
        w.restart_onprem();
        w.settled(&r, Mode::Onprem, Duration::from_secs(120)).await;
        r.shutdown().await;
    }
    report("with the fast path", with);
    report("alert only", without);
    cpu_cost(&w, &stack, port).await;
}

/// A responder on `port` (Alertmanager's webhook target), with or without the fast path.
async fn responder(w: &World, stack: &AlertStack, port: u16, fast: bool) -> Responder {
    let mut c = w
        .configure()
        .alertmanager(stack.alertmanager_port, "resync_interval: 5s")
        .hold_down("0s")
        .key("max_transitions_per_hour: 0");
    if fast {
        c = c.key(FAST_PATH);
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the webhook port");
    Responder::start_on(c.load(w.dir.path()), listener).await
}

fn report(what: &str, mut runs: Vec<Duration>) {
    runs.sort();
    println!(
        "fastpath kill -> first answer from the cloud, {what}: median {:?}  min {:?}  max {:?}  ({} runs, cold container)",
        percentile(&runs, 0.5),
        runs[0],
        runs[runs.len() - 1],
        runs.len()
    );
}

/// CPU seconds used by process `pid` so far (utime + stime, clock ticks of 1/100 s).
fn cpu(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU of this process (the responder runs in it) and of HAProxy over 30 s at rest, without
/// and with the fast path polling.
async fn cpu_cost(w: &World, stack: &AlertStack, port: u16) {
    let haproxy = w.haproxy.proc.child.id().to_string();
    const WINDOW: Duration = Duration::from_secs(30);
    for fast in [false, true] {
        let r = responder(w, stack, port, fast).await;
        w.settled(&r, Mode::Onprem, Duration::from_secs(60)).await;
        let polls =
            || async { r.status().await["services"]["onprem-api"]["fast_path"]["polls"].as_u64() };
        let (me0, hp0, polls0) = (cpu("self"), cpu(&haproxy), polls().await);
        tokio::time::sleep(WINDOW).await;
        let (me, hp) = (cpu("self") - me0, cpu(&haproxy) - hp0);
        let polls = polls().await.zip(polls0).map(|(a, b)| a - b);
        println!(
            "fastpath cpu at rest, {}: responder {:.2} % of a core, HAProxy {:.2} % ({} polls in {WINDOW:?})",
            if fast { "fast path polling every 200ms" } else { "no fast path" },
            me / WINDOW.as_secs_f64() * 100.0,
            hp / WINDOW.as_secs_f64() * 100.0,
            polls.map_or("no".into(), |p| p.to_string())
        );
        r.shutdown().await;
    }
}
