//! Load: 60 s of mixed valid, duplicate and invalid notifications at a bounded rate against the
//! responder binary, with a real failover (HAProxy, Docker) in the middle. Nothing accepted is
//! lost, memory stays flat, the failover completes; the figures are printed.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const SECONDS: u64 = 60;
/// Requests per second, bounded.
const RATE: u64 = 200;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_seconds_of_mixed_load_with_a_failover_in_the_middle() {
    let Some(w) = World::start("load").await else {
        return;
    };
    let cfg = w.configure().hold_down("0s").write(w.dir.path());
    let storage = w.dir.path().join("data");
    let r = ResponderProc::start(&cfg, &storage, &[]).await;
    let pid = r.proc.child.id();
    let url = format!("{}/api/v1/alerts", r.url);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // Valid: the real fixtures for alerts no service acts on (overloaded, recovered), each a
    // new group key so each is a distinct notification; duplicates: one body repeated;
    // invalid: malformed JSON and a wrong token.
    let overloaded = String::from_utf8(fixture("onprem_overloaded-truncated.json")).expect("utf8");
    let duplicate = fixture("onprem_recovered-firing.json");
    let (accepted, refused, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let in_flight = Arc::new(tokio::sync::Semaphore::new(16));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let mut rss_samples = Vec::new();
    let mut failover_at: Option<Instant> = None;
    let mut failover_done: Option<Duration> = None;
    let mut n: u64 = 0;
    while started.elapsed() < Duration::from_secs(SECONDS) {
        tick.tick().await;
        n += 1;
        if n.is_multiple_of(RATE) {
            rss_samples.push(rss_kib(pid));
        }
        // Twice a second, see whether the failover has completed.
        if n.is_multiple_of(RATE / 2) && failover_done.is_none() {
            if let Some(t) = failover_at {
                if w.is("cloud").await {
                    failover_done = Some(t.elapsed());
                }
            }
        }
        // The failover, half way through.
        if failover_at.is_none() && started.elapsed() >= Duration::from_secs(SECONDS / 2) {
            failover_at = Some(Instant::now());
            let code = r.post_alerts(&down_body(chrono::Utc::now(), None)).await;
            assert_eq!(code, Some(202));
            accepted.fetch_add(1, Ordering::Relaxed);
        }
        let (body, token): (Vec<u8>, &str) = match n % 10 {
            0..=5 => (
                overloaded
                    .replace(
                        "onprem_overloaded\\\", service",
                        &format!("onprem_overloaded{n}\\\", service"),
                    )
                    .into_bytes(),
                TOKEN,
            ),
            6 | 7 => (duplicate.clone(), TOKEN),
            8 => (b"{\"version\": \"4\", \"alerts\": [".to_vec(), TOKEN),
            _ => (duplicate.clone(), "wrong"),
        };
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore");
        let (c, u, a, f, o) = (
            client.clone(),
            url.clone(),
            accepted.clone(),
            refused.clone(),
            other.clone(),
        );
        tokio::spawn(async move {
            let resp = c
                .post(&u)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match resp.map(|r| r.status().as_u16()) {
                Ok(202) => a.fetch_add(1, Ordering::Relaxed),
                Ok(400 | 401 | 429) => f.fetch_add(1, Ordering::Relaxed),
                _ => o.fetch_add(1, Ordering::Relaxed),
            };
            drop(permit);
        });
    }
    let _ = in_flight.acquire_many(16).await.expect("drain");
    let elapsed = started.elapsed();

    // The failover completed during the load.
    eventually("failover under load", Duration::from_secs(30), || async {
        w.is("cloud").await.then_some(())
    })
    .await;
    let failover_took = failover_done.or_else(|| failover_at.map(|t| t.elapsed()));

    let (acc, bad, errs) = (
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    let m = reqwest::get(format!("{}/metrics", r.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let journal = metric(&m, "failover_responder_journal_entries") as u64;
    let counted = metric(
        &m,
        r#"failover_responder_notifications_total{result="accepted"}"#,
    ) as u64;
    let first = rss_samples.get(5).copied().unwrap_or(0); // after warm-up
    let last = rss_kib(pid);
    let peak = rss_samples.iter().copied().max().unwrap_or(0);
    println!(
        "load: {n} requests in {elapsed:?} ({:.0}/s): {acc} accepted, {bad} refused (400/401/429), {errs} other; \
         journal {journal}; failover done within {failover_took:?} of its alert (checked every 0.5 s); RSS {} MB at 5 s, {} MB peak, {} MB at the end",
        n as f64 / elapsed.as_secs_f64(),
        first / 1024,
        peak / 1024,
        last / 1024
    );
    assert_eq!(errs, 0, "every request got an answer");
    assert_eq!(counted, acc, "every 202 counted");
    assert_eq!(
        journal, acc,
        "every accepted notification journaled (nothing lost)"
    );
    assert!(bad > 0);
    // Flat: less than 16 MiB growth after warm-up over 12,000 notifications.
    assert!(
        last < first + 16 * 1024,
        "RSS grew from {first} KiB to {last} KiB"
    );
    let svc = r.service_view("onprem-api").await;
    assert_eq!(svc.mode(), Some(Mode::Cloud));
}
