//! A real Alertmanager (Debian's prometheus-alertmanager, started here on loopback): its webhook
//! drives the responder, and when the resolved notification is lost (the responder is down
//! while it is sent, and comes back elsewhere) the resync from Alertmanager's API fails back
//! anyway. An unreachable Alertmanager leaves the last known alerts in place.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use failover_responder::alert::AlertStatus;
use failover_responder::config::Config;
use serde_json::{json, Value};

fn have_am() -> bool {
    require(
        "prometheus-alertmanager (Debian package prometheus-alertmanager)",
        have_binary("prometheus-alertmanager"),
    )
}

/// Starts Alertmanager on `port`, sending to the responder at `webhook_port`.
async fn start_am(dir: &Path, port: u16, webhook_port: u16, token: &Path) -> Proc {
    let cfg = dir.join(format!("am-{port}.yml"));
    std::fs::write(
        &cfg,
        format!(
            "inhibit_rules:\n  - source_matchers: ['alertname=\"maintenance_window\"']\n    target_matchers: ['alertname=\"onprem_down\"']\n    equal: [service]\n\
             route:\n  receiver: responder\n  group_by: [alertname, service]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: responder\n    webhook_configs:\n      - url: http://127.0.0.1:{webhook_port}/api/v1/alerts\n        send_resolved: true\n        \
             http_config:\n          authorization: {{type: Bearer, credentials_file: {}}}\n",
            token.display()
        ),
    )
    .expect("am config");
    let child = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.path={}",
            dir.join(format!("am-data-{port}")).display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // No HA gossip: it would listen on every interface.
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn alertmanager");
    let ready = format!("http://127.0.0.1:{port}/-/ready");
    eventually("alertmanager ready", Duration::from_secs(20), || {
        get_text(&ready)
    })
    .await;
    Proc {
        child,
        name: "alertmanager".into(),
    }
}

/// A real Alertmanager sending to a listener bound for the responder: the test's folder, the
/// bearer token file, Alertmanager, its port and that listener. None (skipped) without it.
async fn am_stack() -> Option<(
    tempfile::TempDir,
    std::path::PathBuf,
    Proc,
    u16,
    TcpListener,
)> {
    if !have_am() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let webhook_port = listener.local_addr().expect("addr").port();
    let am_port = free_port();
    let am = start_am(dir.path(), am_port, webhook_port, &token).await;
    Some((dir, token, am, am_port, listener))
}

/// Posts onprem_down to Alertmanager's API, firing for an hour or resolved now.
async fn am_alert(port: u16, starts: chrono::DateTime<chrono::Utc>, resolved: bool) {
    let ends = if resolved {
        chrono::Utc::now()
    } else {
        chrono::Utc::now() + chrono::Duration::hours(1)
    };
    let body = json!([{
        "labels": {"alertname": "onprem_down", "service": "onprem-api", "instance": "127.0.0.1:5000"},
        "annotations": {"summary": "test"},
        "startsAt": starts.to_rfc3339(),
        "endsAt": ends.to_rfc3339(),
    }]);
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/v2/alerts"))
        .json(&body)
        .send()
        .await
        .expect("post to alertmanager");
    assert!(
        resp.status().is_success(),
        "alertmanager refused the alert: {}",
        resp.status()
    );
}

/// Responder config: backends unreachable on purpose (this test is about the alert path; the
/// mode the responder drives towards is what is checked), resync from `am_port`.
fn config(dir: &Path, am_port: u16, token: &Path) -> Config {
    config_for(dir, am_port, token, "responder")
}

/// As [`config`], resyncing only alerts routed to `receiver`.
fn config_for(dir: &Path, am_port: u16, token: &Path, receiver: &str) -> Config {
    responder_config(dir, token)
        .alertmanager(
            am_port,
            &format!("resync_interval: 500ms, timeout: 1s, receiver: {receiver}"),
        )
        .load(dir)
}

/// As [`config`], without `alertmanager.url`: only webhooks tell the responder anything.
fn config_without_resync(dir: &Path, token: &Path) -> Config {
    responder_config(dir, token).load(dir)
}

fn responder_config(dir: &Path, token: &Path) -> ConfigBuilder {
    ConfigBuilder::new(token)
        .storage(&dir.join("data"))
        .reconcile("500ms", "100ms", "500ms")
        .hold_down("0s")
        .haproxy(&dir.join("no-haproxy.sock"))
}

/// Alertmanager's view of onprem_down: `(state, silencedBy, inhibitedBy)` of the first match.
async fn am_state(port: u16) -> Option<(String, usize, usize)> {
    let alerts: Value = reqwest::get(format!(
        "http://127.0.0.1:{port}/api/v2/alerts?filter=alertname%3D%22onprem_down%22"
    ))
    .await
    .ok()?
    .json()
    .await
    .ok()?;
    let a = alerts.as_array()?.first()?;
    let len = |k: &str| a["status"][k].as_array().map_or(0, Vec::len);
    Some((
        a["status"]["state"].as_str()?.to_string(),
        len("silencedBy"),
        len("inhibitedBy"),
    ))
}

/// Waits for `n` more successful resyncs.
async fn resyncs(r: &Responder, n: usize) {
    for _ in 0..n {
        let last_success = || async { r.status_doc().await.alertmanager_resync.last_success };
        let before = last_success().await;
        eventually("one more resync", Duration::from_secs(10), || async {
            let now = last_success().await;
            (now.is_some() && now != before).then_some(())
        })
        .await;
    }
}

/// The mode of onprem-api; on-prem until a pass persisted one.
fn mode(st: &StatusDoc) -> Mode {
    st.services["onprem-api"].mode().unwrap_or(Mode::Onprem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_resolved_notification_is_repaired_by_resync() {
    let Some((dir, token, _am, am_port, listener)) = am_stack().await else {
        return;
    };

    let r = Responder::start_on(config(dir.path(), am_port, &token), listener).await;
    let starts = chrono::Utc::now();
    let t = Instant::now();
    am_alert(am_port, starts, false).await;
    let st = eventually(
        "the webhook from Alertmanager fails over",
        Duration::from_secs(20),
        || async {
            let st = r.status_doc().await;
            done_if(mode(&st) == Mode::Cloud && !st.notifications.is_empty(), st)
        },
    )
    .await;
    println!(
        "alert posted to Alertmanager -> responder in cloud mode: {:?}",
        t.elapsed()
    );
    assert_eq!(st.notifications[0].status, AlertStatus::Firing);

    // The responder goes down; the alert resolves while it is away.
    r.shutdown().await;
    am_alert(am_port, starts, true).await;
    eventually(
        "alertmanager resolved the alert",
        Duration::from_secs(10),
        || async {
            let active: Value = reqwest::get(format!(
                "http://127.0.0.1:{am_port}/api/v2/alerts?active=true"
            ))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
            active
                .as_array()
                .is_some_and(|a| a.is_empty())
                .then_some(())
        },
    )
    .await;

    // It comes back on another port, so Alertmanager's retries of the resolved notification
    // can never reach it: only the resync can tell it.
    let t = Instant::now();
    let r = Responder::start_with(config(dir.path(), am_port, &token)).await;
    let st = eventually("resync fails back", Duration::from_secs(20), || async {
        let st = r.status_doc().await;
        done_if(mode(&st) == Mode::Onprem, st)
    })
    .await;
    println!(
        "restarted responder failed back through resync in {:?}",
        t.elapsed()
    );
    assert_eq!(
        st.notifications.len(),
        0,
        "no notification reached it: {st:#?}"
    );
    assert!(st.alertmanager_resync.last_success.is_some(), "{st:#?}");
    let events = r.events("service=onprem-api").await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    let resync_at = kinds
        .iter()
        .rposition(|k| *k == "resync")
        .expect("a resync event");
    let decision_at = kinds
        .iter()
        .rposition(|k| *k == "decision")
        .expect("a decision");
    assert!(
        resync_at < decision_at,
        "the failback follows the resync: {kinds:?}"
    );
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_alertmanager_keeps_the_last_known_alerts() {
    if !have_am() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let am_port = free_port();
    let r = Responder::start_with(config(dir.path(), am_port, &token)).await;
    assert_eq!(
        r.post_alerts(&down_body(chrono::Utc::now(), None))
            .await
            .status()
            .as_u16(),
        202
    );
    let st = eventually(
        "a failed resync is shown",
        Duration::from_secs(10),
        || async {
            let st = r.status_doc().await;
            let failed = st.alertmanager_resync.last_error.is_some();
            done_if(mode(&st) == Mode::Cloud && failed, st)
        },
    )
    .await;
    let error = st.alertmanager_resync.last_error.as_deref();
    assert!(error.unwrap_or_default().contains("127.0.0.1"), "{st:#?}");
    let m = r.metrics().await;
    assert_eq!(metric(&m, "failover_responder_alertmanager_up"), 0.0, "{m}");
    assert!(
        metric(&m, r#"failover_responder_resyncs_total{result="failure"}"#) >= 1.0,
        "{m}"
    );
    // A few more failed resyncs later, the alert learnt by webhook is still there.
    let failures = metric(&m, r#"failover_responder_resyncs_total{result="failure"}"#);
    eventually("more failed resyncs", Duration::from_secs(10), || async {
        (metric(
            &r.metrics().await,
            r#"failover_responder_resyncs_total{result="failure"}"#,
        ) >= failures + 2.0)
            .then_some(())
    })
    .await;
    let st = r.status_doc().await;
    assert_eq!(st.services["onprem-api"].firing_alerts.len(), 1);
    assert_eq!(mode(&st), Mode::Cloud);

    // Alertmanager appears (without the alert): the next resync succeeds and fails back.
    let _am = start_am(dir.path(), am_port, free_port(), &token).await;
    eventually(
        "resync succeeds and fails back",
        Duration::from_secs(20),
        || async {
            let st = r.status_doc().await;
            (mode(&st) == Mode::Onprem
                && metric(&r.metrics().await, "failover_responder_alertmanager_up") == 1.0)
                .then_some(())
        },
    )
    .await;
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_receiver_never_drops_a_delivered_alert() {
    let Some((dir, token, _am, am_port, listener)) = am_stack().await else {
        return;
    };
    // Alertmanager routes to "responder"; the config says "responderr".
    let r = Responder::start_on(
        config_for(dir.path(), am_port, &token, "responderr"),
        listener,
    )
    .await;
    am_alert(am_port, chrono::Utc::now(), false).await;
    eventually(
        "the webhook fails over",
        Duration::from_secs(20),
        || async { (mode(&r.status_doc().await) == Mode::Cloud).then_some(()) },
    )
    .await;
    // Several resyncs later the alert, still active in Alertmanager, is still firing here.
    let m = r.metrics().await;
    let ok = metric(&m, r#"failover_responder_resyncs_total{result="success"}"#);
    eventually("three more resyncs", Duration::from_secs(10), || async {
        (metric(
            &r.metrics().await,
            r#"failover_responder_resyncs_total{result="success"}"#,
        ) >= ok + 3.0)
            .then_some(())
    })
    .await;
    let st = r.status_doc().await;
    assert_eq!(mode(&st), Mode::Cloud, "{st:#?}");
    assert_eq!(st.services["onprem-api"].firing_alerts.len(), 1);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refire_with_the_same_starts_at_fails_over_again() {
    // Field report: Alertmanager resolves an alert whose endsAt passed while Prometheus could
    // not reach it; Prometheus re-sends it with its original startsAt and Alertmanager notifies
    // it firing again. Without alertmanager.url only that webhook can bring the cloud back.
    let Some((dir, token, _am, am_port, listener)) = am_stack().await else {
        return;
    };
    let r = Responder::start_on(config_without_resync(dir.path(), &token), listener).await;
    let in_mode = |want: Mode| {
        let r = &r;
        move || async move {
            let st = r.status_doc().await;
            done_if(mode(&st) == want, st)
        }
    };

    let starts = chrono::Utc::now() - chrono::Duration::minutes(10);
    am_alert(am_port, starts, false).await;
    eventually("fails over", Duration::from_secs(20), in_mode(Mode::Cloud)).await;
    am_alert(am_port, starts, true).await;
    eventually(
        "fails back on the resolution",
        Duration::from_secs(20),
        in_mode(Mode::Onprem),
    )
    .await;
    // The same alert, the same startsAt, firing again.
    am_alert(am_port, starts, false).await;
    let st = eventually(
        "fails over again",
        Duration::from_secs(20),
        in_mode(Mode::Cloud),
    )
    .await;
    assert_eq!(st.services["onprem-api"].firing_alerts.len(), 1, "{st:#?}");
    let statuses: Vec<AlertStatus> = st.notifications.iter().map(|n| n.status).collect();
    assert!(
        statuses
            .iter()
            .filter(|s| **s == AlertStatus::Firing)
            .count()
            >= 2,
        "Alertmanager notified the re-fire: {statuses:?}"
    );
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_or_an_inhibition_mutes_notifications_not_the_outage() {
    let Some((dir, token, _am, am_port, listener)) = am_stack().await else {
        return;
    };
    let r = Responder::start_on(config(dir.path(), am_port, &token), listener).await;
    let client = reqwest::Client::new();

    am_alert(am_port, chrono::Utc::now(), false).await;
    eventually("fails over", Duration::from_secs(20), || async {
        (mode(&r.status_doc().await) == Mode::Cloud).then_some(())
    })
    .await;

    // An operator silences it (as `amtool silence add alertname=onprem_down` does).
    let now = chrono::Utc::now();
    let silence: Value = client
        .post(format!("http://127.0.0.1:{am_port}/api/v2/silences"))
        .json(&json!({
            "matchers": [{"name": "alertname", "value": "onprem_down", "isRegex": false, "isEqual": true}],
            "startsAt": now.to_rfc3339(),
            "endsAt": (now + chrono::Duration::hours(1)).to_rfc3339(),
            "createdBy": "test", "comment": "silence the pager, not the failover"
        }))
        .send()
        .await
        .expect("post silence")
        .json()
        .await
        .expect("silence id");
    let silence_id = silence["silenceID"]
        .as_str()
        .expect("silenceID")
        .to_string();
    eventually(
        "Alertmanager silences it",
        Duration::from_secs(10),
        || async {
            am_state(am_port)
                .await
                .filter(|(s, silenced, _)| s == "suppressed" && *silenced == 1)
        },
    )
    .await;
    resyncs(&r, 3).await;
    let st = r.status_doc().await;
    assert_eq!(mode(&st), Mode::Cloud, "silenced is not resolved: {st:#?}");
    assert_eq!(st.alertmanager_resync.alerts, 1, "{st:#?}");
    assert_eq!(st.alertmanager_resync.muted, 1, "{st:#?}");

    // The silence expires; an inhibit rule mutes it instead.
    let del = client
        .delete(format!(
            "http://127.0.0.1:{am_port}/api/v2/silence/{silence_id}"
        ))
        .send()
        .await
        .expect("expire silence");
    assert!(del.status().is_success(), "{}", del.status());
    let body = json!([{
        "labels": {"alertname": "maintenance_window", "service": "onprem-api"},
        "startsAt": chrono::Utc::now().to_rfc3339(),
        "endsAt": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
    }]);
    let resp = client
        .post(format!("http://127.0.0.1:{am_port}/api/v2/alerts"))
        .json(&body)
        .send()
        .await
        .expect("post inhibitor");
    assert!(resp.status().is_success());
    eventually(
        "Alertmanager inhibits it",
        Duration::from_secs(10),
        || async {
            am_state(am_port).await.filter(|(s, silenced, inhibited)| {
                s == "suppressed" && *silenced == 0 && *inhibited == 1
            })
        },
    )
    .await;
    resyncs(&r, 3).await;
    let st = r.status_doc().await;
    assert_eq!(mode(&st), Mode::Cloud, "inhibited is not resolved: {st:#?}");
    assert_eq!(st.alertmanager_resync.muted, 1, "{st:#?}");
    r.shutdown().await;
}
