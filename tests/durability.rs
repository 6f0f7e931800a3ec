//! Never wrong after a crash: the responder binary is killed (a crash point aborts it as
//! kill -9 would, at each step of failover and failback, and then at random times), restarted on
//! the same storage, and must converge to the right state, never leaving the cloud server open
//! in front of a stopped container: the invariant is checked on every look at the world, while
//! the responder works up to the crash and while the restarted one converges, not only at the
//! crash instant. Real HAProxy and Docker; loopback only.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Polls until the world is fully in `mode`, checking the safety invariant on every look.
/// Returns how long it took and how many looks checked it.
async fn converge(w: &World, mode: &str, when: &str) -> (Duration, u32) {
    let t = Instant::now();
    let looks = std::sync::atomic::AtomicU32::new(0);
    eventually(
        &format!("world converged to {mode} ({when})"),
        Duration::from_secs(40),
        || async {
            looks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            w.assert_safe(&format!("{when}, converging to {mode}"))
                .await;
            w.is(mode).await.then_some(())
        },
    )
    .await;
    (t.elapsed(), looks.into_inner())
}

/// Waits until the responder exits by itself (its crash point fired), checking the safety
/// invariant on every look while it works towards the crash.
async fn wait_crash(w: &World, r: &mut ResponderProc, action: &str) -> std::process::ExitStatus {
    let when = format!("working towards the crash before {action}");
    eventually(
        &format!("{action}: the responder reaches its crash point"),
        Duration::from_secs(30),
        || {
            let exited = r.proc.child.try_wait().expect("try_wait responder");
            let when = &when;
            async move {
                if exited.is_none() {
                    w.assert_safe(when).await;
                }
                exited
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_step_then_restart_converges() {
    let Some(w) = World::start("crash").await else {
        return;
    };
    let cfg = w
        .configure()
        .hold_down("0s")
        .key("max_transitions_per_hour: 0")
        .write(w.dir.path());
    let storage = w.dir.path().join("data");
    let t0 = chrono::Utc::now();

    // The alert incarnation firing now, if any (one fingerprint, a new start per incarnation).
    let mut firing: Option<chrono::DateTime<chrono::Utc>> = None;
    let resolved =
        |s: chrono::DateTime<chrono::Utc>| down_body(s, Some(s + chrono::Duration::seconds(5)));
    for (round, action) in FAILOVER_STEPS
        .iter()
        .chain(FAILBACK_STEPS.iter())
        .enumerate()
    {
        let failover = FAILOVER_STEPS.contains(action);
        let starts = t0 + chrono::Duration::seconds(round as i64 * 10);
        // Settle in the mode the step leaves, with a clean process.
        let mut r = ResponderProc::start(&cfg, &storage, &[]).await;
        match (failover, firing) {
            (true, Some(prev)) => {
                assert_eq!(r.post_alerts(&resolved(prev)).await, Some(202));
                firing = None;
            }
            (false, None) => {
                assert_eq!(r.post_alerts(&down_body(starts, None)).await, Some(202));
                firing = Some(starts);
            }
            _ => {}
        }
        converge(
            &w,
            if failover { "onprem" } else { "cloud" },
            &format!("settling before the crash before {action}"),
        )
        .await;
        r.kill9();

        // Crash right before `action`.
        let mut r = ResponderProc::start(
            &cfg,
            &storage,
            &[("FAILOVER_RESPONDER_CRASH_BEFORE", action)],
        )
        .await;
        let body = match firing {
            None => {
                firing = Some(starts);
                down_body(starts, None)
            }
            Some(prev) => {
                firing = None;
                resolved(prev)
            }
        };
        assert_eq!(
            r.post_alerts(&body).await,
            Some(202),
            "{action}: accepted before the crash"
        );
        let status = wait_crash(&w, &mut r, action).await;
        assert!(!status.success(), "{action}: the crash point did not fire");
        w.assert_safe(&format!("after a crash before {action}"))
            .await;

        // Restart on the same storage: it must remember the alert and finish the job.
        let t = Instant::now();
        let r = ResponderProc::start(&cfg, &storage, &[]).await;
        let want = if failover { "cloud" } else { "onprem" };
        let (_, looks) = converge(
            &w,
            want,
            &format!("restarted after a crash before {action}"),
        )
        .await;
        let took = t.elapsed();
        let svc = r.service_view("onprem-api").await;
        assert_eq!(
            svc.mode().map(Mode::as_str),
            Some(want),
            "{action}: {svc:#?}"
        );
        let in_flight = svc.state.as_ref().and_then(|s| s.step_in_flight.as_ref());
        assert!(
            in_flight.is_none() || !svc.status.converged,
            "{action}: {svc:#?}"
        );
        println!("crash before {action:<16} -> restarted and converged to {want} in {took:?} (safe on all {looks} looks)");
        drop(r);
    }
    // The restarts said what they resumed.
    let r = ResponderProc::start(&cfg, &storage, &[]).await;
    let events: serde_json::Value =
        reqwest::get(format!("{}/api/v1/events?service=onprem-api", r.url))
            .await
            .expect("events")
            .json()
            .await
            .expect("json");
    let resumes = events["events"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["kind"] == "resume").count())
        .unwrap_or(0);
    assert!(resumes >= 7, "one resume event per crash, got {resumes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_never_leave_the_world_wrong() {
    let Some(w) = World::start("randomkill").await else {
        return;
    };
    let cfg = w
        .configure()
        .hold_down("0s")
        .key("max_transitions_per_hour: 0")
        .write(w.dir.path());
    let storage = w.dir.path().join("data");
    // A small LCG: deterministic from the printed seed, so a failure can be replayed.
    let seed = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| chrono::Utc::now().timestamp_subsec_nanos() as u64);
    println!("random kills: seed {seed} (set KILL_SEED to replay)");
    let mut x = seed;
    let mut next = |n: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    let t0 = chrono::Utc::now();
    let mut want = "onprem";
    let kills = 6;
    for i in 0..kills {
        let starts = t0 + chrono::Duration::seconds(i * 10);
        let r = ResponderProc::start(&cfg, &storage, &[]).await;
        // Alternate: fail over, fail back, ...
        let body = if i % 2 == 0 {
            want = "cloud";
            down_body(starts, None)
        } else {
            want = "onprem";
            let prev = t0 + chrono::Duration::seconds((i - 1) * 10);
            down_body(prev, Some(prev + chrono::Duration::seconds(5)))
        };
        assert_eq!(r.post_alerts(&body).await, Some(202));
        let delay = next(1500);
        // The kill comes `delay` ms after the post; until then the responder works, watched.
        let posted = Instant::now();
        let kill_at = posted + Duration::from_millis(delay);
        while Instant::now() < kill_at {
            w.assert_safe(&format!(
                "{:?} after posting, before kill {i}",
                posted.elapsed()
            ))
            .await;
            tokio::time::sleep(
                kill_at
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50)),
            )
            .await;
        }
        let mut r = r;
        r.kill9();
        w.assert_safe(&format!("kill {i} after {delay} ms")).await;
        println!("kill {i}: {delay} ms after posting ({want})");
    }
    let t = Instant::now();
    let _r = ResponderProc::start(&cfg, &storage, &[]).await;
    let (took, looks) = converge(&w, want, &format!("restarted after {kills} random kills")).await;
    println!(
        "after {kills} random kills: converged to {want} in {took:?} ({:?} with start; safe on all {looks} looks)",
        t.elapsed()
    );
}
