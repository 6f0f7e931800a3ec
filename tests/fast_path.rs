//! The fast path on the real stack: HAProxy's own health checks (`inter 200ms fall 2`) fail the
//! service over before any alert can; the alert stays the authority for failback.
//!
//! - Only the fast path can act (Prometheus and Alertmanager run, with the repository's rule
//!   given a `for` far longer than the test): killing on-prem gets the frontend answered from
//!   the cloud; bringing it back fails back after `confirm_within`, with no failed request
//!   under a steady client, and the episode counts as unconfirmed. An operator's maintenance on
//!   the on-prem server triggers nothing.
//! - With the alert (posted as Alertmanager would): the fast path's failover is confirmed by
//!   it, and from then on on-prem UP in HAProxy does not fail back while the alert fires.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;

/// `fast_path:` for the tests: on-prem watched every 100 ms, unconfirmed after `confirm`.
fn fast_path(confirm: &str) -> String {
    format!("fast_path: {{onprem_servers: [onprem], down_for: 0s, poll: 100ms, confirm_within: {confirm}}}")
}

/// The fast path's view in the status, once it has polled.
async fn verdict(r: &Responder) -> (String, u64, Vec<String>) {
    let v = r.status().await;
    let f = &v["services"]["onprem-api"]["fast_path"];
    let servers = f["haproxy"][0]["servers"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|p| p[1].as_str().unwrap_or("absent").to_string())
                .collect()
        })
        .unwrap_or_default();
    (
        f["verdict"].as_str().unwrap_or_default().to_string(),
        f["polls"].as_u64().unwrap_or(0),
        servers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_haproxys_checks_fail_over_and_the_unconfirmed_episode_fails_back() {
    if !require_world() || !require_alert_stack() {
        return;
    }
    let Some(mut w) = World::start("fastpath").await else {
        return;
    };
    let dir = w.dir.path().to_path_buf();
    let onprem_port = w.haproxy_onprem_port();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let responder_port = listener.local_addr().expect("addr").port();
    // The repository's rules, with onprem_down's `for` far longer than the test: only the
    // fast path can fail over.
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/prometheus/rules/onprem.yml"
    ))
    .expect("rules");
    let slow = rules.replacen("for: 3s ", "for: 1h ", 1);
    assert_ne!(
        slow, rules,
        "onprem_down's `for: 3s` not found in the rules"
    );
    std::fs::write(dir.join("rules.yml"), slow).expect("rules.yml");
    let rule_files = format!("{}/rules.yml", dir.display());
    let stack = AlertStack::start(&dir, onprem_port, responder_port, &w.token, &rule_files).await;
    let config = w
        .configure()
        .storage(&dir.join("data"))
        .alertmanager(stack.alertmanager_port, "resync_interval: 5s")
        .hold_down("1s")
        .key(&fast_path("4s"))
        .load(&dir);
    let r = Responder::start_on(config, listener).await;
    eventually(
        "the fast path sees on-prem UP",
        Duration::from_secs(10),
        || async { (verdict(&r).await.0 == "up").then_some(()) },
    )
    .await;
    // A kept-open connection: one per HAProxy however many polls.
    let status = r.status().await;
    assert_eq!(status["services"]["onprem-api"]["fast_path"]["connects"], 1);

    // An operator's maintenance on the on-prem server is not "down".
    w.haproxy.cmd("set server api/onprem state maint").await;
    let polls = eventually(
        "the fast path sees onprem in MAINT",
        Duration::from_secs(10),
        || async {
            let (_, polls, servers) = verdict(&r).await;
            (servers == ["MAINT"]).then_some(polls)
        },
    )
    .await;
    // Ten more polls (one second) see it so, and the service stays on-prem.
    eventually("ten more polls", Duration::from_secs(10), || async {
        (verdict(&r).await.1 >= polls + 10).then_some(())
    })
    .await;
    let svc = r.service_view("onprem-api").await;
    assert_eq!(svc.desired_mode(), Some(Mode::Onprem), "{svc:?}");
    assert_eq!(
        metric(
            &r.metrics().await,
            "failover_responder_fast_path_triggers_total{service=\"onprem-api\"}"
        ),
        0.0
    );
    assert!(r.event_messages("fast_path").await.is_empty());
    w.haproxy.cmd("set server api/onprem state ready").await;
    eventually(
        "the fast path sees on-prem UP again",
        Duration::from_secs(10),
        || async { (verdict(&r).await.0 == "up").then_some(()) },
    )
    .await;

    // Outage: only HAProxy's checks can see it in time.
    let traffic = Traffic::start(w.haproxy.frontend(), Duration::from_millis(50));
    eventually("on-prem answers", Duration::from_secs(10), || async {
        get_text(&w.haproxy.frontend())
            .await
            .filter(|b| b == "onprem")
    })
    .await;
    w.onprem.kill();
    let outage = Instant::now();
    let rto = eventually(
        "the frontend is answered by the cloud",
        Duration::from_secs(60),
        || async {
            get_text(&w.haproxy.frontend())
                .await
                .filter(|b| b == "cloud")
                .map(|_| outage.elapsed())
        },
    )
    .await;
    println!("fast path: on-prem killed -> first answer from the cloud in {rto:?}");
    let svc = r.service_view("onprem-api").await;
    let reason = svc.status.desired.as_ref().map(|d| d.reason.clone());
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.starts_with("fast path")),
        "{reason:?}"
    );
    assert!(
        svc.firing_alerts.is_empty(),
        "no alert may have fired: {:?}",
        svc.firing_alerts
    );
    assert!(
        svc.state.as_ref().is_some_and(|s| s.fast_path.is_some()),
        "the episode is persisted"
    );
    let triggered = r.event_messages("fast_path").await;
    assert!(
        triggered.len() == 1 && triggered[0].starts_with("triggered: HAProxy sees onprem DOWN"),
        "{triggered:?}"
    );

    // On-prem comes back: HAProxy sees it UP, no alert ever confirmed the failover. After
    // confirm_within (4 s from the trigger) the service fails back in the normal order.
    w.restart_onprem();
    let recovery = Instant::now();
    let before = traffic.answers();
    w.settled(&r, Mode::Onprem, Duration::from_secs(60)).await;
    let failback = recovery.elapsed();
    let log = traffic.stop().await;
    let since_recovery = &log[before..];
    let failed = since_recovery.iter().filter(|b| b.is_empty()).count();
    println!(
        "fast path: failed back {failback:?} after on-prem returned; {} requests since, {failed} failed",
        since_recovery.len()
    );
    assert_eq!(failed, 0, "requests failed during the failback");
    assert_eq!(log.last().map(String::as_str), Some("onprem"));
    let all = r.event_messages("fast_path").await;
    assert!(
        all.len() == 2 && all[1].starts_with("unconfirmed: no failover alert within 4s"),
        "{all:?}"
    );
    let m = r.metrics().await;
    for (series, want) in [
        ("failover_responder_fast_path_triggers_total", 1.0),
        ("failover_responder_fast_path_unconfirmed_total", 1.0),
    ] {
        assert_eq!(
            metric(&m, &format!("{series}{{service=\"onprem-api\"}}")),
            want,
            "{series}"
        );
    }
    // Never before confirm_within from the trigger: the failback's decision is at least 4 s
    // after the failover's.
    let decisions: Vec<chrono::DateTime<chrono::Utc>> = r
        .events("service=onprem-api")
        .await
        .iter()
        .filter(|e| e["kind"] == "decision")
        .filter_map(|e| e["at"].as_str()?.parse().ok())
        .collect();
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    assert!(
        decisions[1] - decisions[0] >= chrono::Duration::seconds(4),
        "{decisions:?}"
    );
    let svc = r.service_view("onprem-api").await;
    assert!(svc.state.as_ref().is_some_and(|s| s.fast_path.is_none()));
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_confirms_the_fast_paths_failover_and_then_owns_the_failback() {
    let Some(mut w) = World::start("fastconfirm").await else {
        return;
    };
    let dir = w.dir.path().to_path_buf();
    let config = w
        .configure()
        .hold_down("1s")
        .key(&fast_path("2s"))
        .load(&dir);
    let r = Responder::start_with(config).await;
    eventually(
        "the fast path sees on-prem UP",
        Duration::from_secs(10),
        || async { (verdict(&r).await.0 == "up").then_some(()) },
    )
    .await;
    // HAProxy restarts: the kept-open connection breaks, the poller connects again.
    w.haproxy.restart().await;
    eventually(
        "a new connection after HAProxy's restart",
        Duration::from_secs(10),
        || async {
            let st = r.status().await;
            let f = &st["services"]["onprem-api"]["fast_path"];
            (f["connects"].as_u64() >= Some(2) && f["verdict"] == "up").then_some(())
        },
    )
    .await;
    // A seamless reload: the kept connection stays with the old worker, whose view is frozen
    // (UP for ever); the poller notices the worker is stopping and connects to the new one.
    // Without that, the outage below would be seen only when the connection is replaced (60 s).
    let _old_worker = w.haproxy.reload().await;
    w.onprem.kill();
    let outage = std::time::Instant::now();
    w.settled(&r, Mode::Cloud, Duration::from_secs(20)).await;
    println!(
        "fast path: on-prem killed right after a seamless reload -> settled in cloud in {:?}",
        outage.elapsed()
    );
    // Past confirm_within (2 s), no alert, on-prem still DOWN: the cloud stays, overdue.
    let overdue = "failover_responder_fast_path_overdue{service=\"onprem-api\"}";
    eventually(
        "the episode is overdue",
        Duration::from_secs(10),
        || async { (metric(&r.metrics().await, overdue) == 1.0).then_some(()) },
    )
    .await;
    assert!(w.is("cloud").await);
    // The alert fires (as Alertmanager would post it): the episode is confirmed and closed.
    let starts = chrono::Utc::now();
    assert_eq!(r.post_alerts(&down_body(starts, None)).await.status(), 202);
    eventually(
        "the alert confirms the episode",
        Duration::from_secs(10),
        || async {
            let e = r.event_messages("fast_path").await;
            e.iter().any(|m| m.starts_with("confirmed:")).then_some(())
        },
    )
    .await;
    let svc = r.service_view("onprem-api").await;
    assert!(svc.state.as_ref().is_some_and(|s| s.fast_path.is_none()));
    assert_eq!(metric(&r.metrics().await, overdue), 0.0);
    // On-prem UP in HAProxy, well past confirm_within: the firing alert keeps the cloud.
    w.restart_onprem();
    eventually(
        "the fast path sees on-prem UP",
        Duration::from_secs(10),
        || async { (verdict(&r).await.0 == "up").then_some(()) },
    )
    .await;
    let seen = verdict(&r).await.1;
    eventually("3 s of polls", Duration::from_secs(10), || async {
        (verdict(&r).await.1 >= seen + 30).then_some(())
    })
    .await;
    let svc = r.service_view("onprem-api").await;
    assert_eq!(svc.desired_mode(), Some(Mode::Cloud), "{svc:?}");
    assert!(w.is("cloud").await);
    // The alert resolves: the normal failback.
    let resolved = down_body(starts, Some(chrono::Utc::now()));
    assert_eq!(r.post_alerts(&resolved).await.status(), 202);
    w.settled(&r, Mode::Onprem, Duration::from_secs(60)).await;
    let m = r.metrics().await;
    assert_eq!(
        metric(
            &m,
            "failover_responder_fast_path_unconfirmed_total{service=\"onprem-api\"}"
        ),
        0.0
    );
    r.shutdown().await;
}
