//! Drills against the real HAProxy and Docker engine: the failover rehearsed while on-prem
//! serves under a steady load (no request fails, none reaches the cloud), refused when it
//! could take live traffic or the service is busy, and overtaken at once by a real failover.

mod common;

use std::time::Duration;

use common::*;
use failover_responder::store::DrillReport;

/// `POST /api/v1/services/{service}/drill` with the token (or without): (status, body).
async fn drill(r: &Responder, service: &str, token: bool) -> (u16, serde_json::Value) {
    let mut req = r
        .client
        .post(format!("{}/api/v1/services/{service}/drill", r.url));
    if token {
        req = req.bearer_auth(TOKEN);
    }
    let resp = req.send().await.expect("drill");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn last_drill(r: &Responder) -> Option<DrillReport> {
    r.service_view("onprem-api").await.status.last_drill
}

/// The drill's report once it has finished.
async fn finished(r: &Responder, within: Duration) -> DrillReport {
    eventually("the drill's report", within, || async {
        last_drill(r).await.filter(|d| d.finished_at.is_some())
    })
    .await
}

/// The engine's start and die events of `name` since `since` (Unix s).
async fn starts_and_deaths(w: &World, name: &str, since: i64) -> Vec<String> {
    docker_events(&w.docker, since)
        .await
        .into_iter()
        .filter(|(action, actor)| {
            actor.get("name").map(String::as_str) == Some(name)
                && matches!(action.as_str(), "start" | "die")
        })
        .map(|(action, _)| action)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_under_load_starts_opens_verifies_and_fails_back_without_touching_traffic() {
    let Some(w) = World::start("drill").await else {
        return;
    };
    let since = chrono::Utc::now().timestamp() - 1;
    // The service bursts too (no overload now): the drill leaves its burst count alone.
    let cfg = w.configure().burst(
        2,
        ["1s", "1s", "1s"],
        free_port_range(2),
        &format!(
            "haproxy: {{server_prefix: burst}}\ncontainer: {{name: '{}-b', image: {IMAGE}, ports: ['127.0.0.1:{{port}}:8080']}}",
            w.container
        ),
    );
    let cfg = cfg.key("timeouts: {healthy: 30s, drain: 2s, stop: 1s, verify: 3s}");
    let r = Responder::start_with(cfg.load(w.dir.path())).await;
    eventually("on-prem serves", Duration::from_secs(10), || async {
        get_text(&w.haproxy.frontend())
            .await
            .filter(|b| b.trim() == "onprem")
    })
    .await;
    let traffic = Traffic::start(w.haproxy.frontend(), Duration::from_millis(20));

    let (status, body) = drill(&r, "onprem-api", true).await;
    assert_eq!(status, 202, "{body}");
    let d = finished(&r, Duration::from_secs(60)).await;
    let answers = traffic.stop().await;

    assert_eq!(d.ok, Some(true), "{d:?}");
    let steps: Vec<&str> = d.steps.iter().map(|s| s.step.as_str()).collect();
    let container = w.container.as_str();
    assert_eq!(
        steps,
        [
            format!("start {container}").as_str(),
            format!("wait-healthy {container}").as_str(),
            "ready api/cloud1",
            "drain api/cloud1",
            "wait-drained api/cloud1",
            "maint api/cloud1",
            format!("stop {container}").as_str(),
        ],
        "{d:?}"
    );
    assert!(d.steps.iter().all(|s| s.outcome == "success"), "{d:?}");
    let ready = d.time_to_ready_seconds.expect("time to ready");
    let to_ready_steps: u64 = d.steps[..3].iter().map(|s| s.duration_ms).sum();
    assert!(
        ready * 1000.0 >= to_ready_steps as f64 && ready < 30.0,
        "time to ready {ready} s, its steps {to_ready_steps} ms"
    );

    // Users saw on-prem only, and nothing failed.
    let failed = answers.iter().filter(|b| b.is_empty()).count();
    let from_cloud = answers.iter().filter(|b| *b == "cloud").count();
    println!(
        "drill: {} requests, {failed} failed, {from_cloud} from the cloud; time to ready {ready:.2} s",
        answers.len()
    );
    assert!(answers.len() > 20, "too few requests: {}", answers.len());
    assert_eq!((failed, from_cloud), (0, 0));

    // The container started then stopped; the server is back in maint; the mode never moved.
    assert_eq!(
        starts_and_deaths(&w, container, since).await,
        ["start", "die"]
    );
    assert!(!w.cloud_open().await);
    assert_ne!(w.container_running().await, Some(true));
    let svc = r.service_view("onprem-api").await;
    assert_eq!(svc.state.as_ref().map(|s| s.mode), Some(Mode::Onprem));
    assert_eq!(
        svc.state.and_then(|s| s.last_drill).as_ref(),
        Some(&d),
        "kept in the service's state"
    );
    let m = r.metrics().await;
    let at = d.finished_at.expect("finished").timestamp() as f64;
    assert_eq!(
        metric(
            &m,
            "failover_responder_drill_last_success_timestamp_seconds{service=\"onprem-api\"}"
        ),
        at
    );
    assert_eq!(
        metric(
            &m,
            "failover_responder_drill_time_to_ready_seconds{service=\"onprem-api\"}"
        ),
        ready
    );
    let events = r.events("kind=drill").await;
    assert!(
        events
            .iter()
            .any(|e| e["message"].as_str().is_some_and(|m| m.starts_with("ok:"))),
        "{events:?}"
    );

    // cloud1's check now goes to a closed port. HAProxy still says UP right after `state
    // ready` (it assumes so until its checks fail): the drill must not take that for a pass.
    let closed = free_port();
    w.haproxy.set_addr("cloud1", closed).await;
    assert_eq!(drill(&r, "onprem-api", true).await.0, 202);
    let second = eventually(
        "the second drill's report",
        Duration::from_secs(60),
        || async {
            last_drill(&r)
                .await
                .filter(|x| x.started_at > d.started_at && x.finished_at.is_some())
        },
    )
    .await;
    assert_eq!(second.ok, Some(false), "{second:?}");
    assert!(
        second.message.contains("not UP by HAProxy's own check")
            && second.time_to_ready_seconds.is_none(),
        "{second:?}"
    );
    assert!(!w.cloud_open().await, "failed back all the same");
    assert_ne!(w.container_running().await, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_is_refused_when_it_could_take_traffic_or_the_service_is_busy() {
    let Some(w) = World::start("drill-refused").await else {
        return;
    };
    // burst1 is a normal server (server-template): opened, it would take live traffic.
    let key = format!(
        "haproxy: {{runtime_api: ['unix:{}'], backend: api, cloud_servers: [burst1]}}",
        w.haproxy.socket.display()
    );
    let r = Responder::start_with(w.configure().key(&key).load(w.dir.path())).await;
    let (status, body) = drill(&r, "onprem-api", true).await;
    assert_eq!(status, 409, "{body}");
    let why = body["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("api/burst1") && why.contains("not a backup server"),
        "{why}"
    );
    assert_eq!(drill(&r, "onprem-api", false).await.0, 401);
    assert_eq!(drill(&r, "nope", true).await.0, 404);
    assert!(
        last_drill(&r).await.is_none(),
        "a refused request starts nothing"
    );
    r.shutdown().await;

    // In cloud (a failover alert firing): refused, saying why; the failover is untouched.
    let r = Responder::start_with(w.configure().load(w.dir.path())).await;
    assert_eq!(
        r.post_alerts(&down_body(chrono::Utc::now(), None))
            .await
            .status(),
        202
    );
    eventually("cloud", Duration::from_secs(30), || async {
        w.is("cloud").await.then_some(())
    })
    .await;
    let (status, body) = drill(&r, "onprem-api", true).await;
    assert_eq!(status, 409, "{body}");
    let why = body["error"].as_str().unwrap_or_default();
    assert!(why.contains("not in on-prem mode"), "{why}");
    assert!(w.is("cloud").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_alert_during_a_drill_wins_and_fails_over_from_where_it_stands() {
    let Some(mut w) = World::start("drill-overtaken").await else {
        return;
    };
    let since = chrono::Utc::now().timestamp() - 1;
    let cfg = w
        .configure()
        .key("timeouts: {healthy: 30s, drain: 2s, stop: 1s, verify: 30s}")
        .load(w.dir.path());
    let r = Responder::start_with(cfg).await;
    // cloud1's check fails for now, so the drill waits for HAProxy to see it UP.
    let closed = free_port();
    w.haproxy.set_addr("cloud1", closed).await;
    assert_eq!(drill(&r, "onprem-api", true).await.0, 202);
    eventually(
        "the drill waits for HAProxy's check",
        Duration::from_secs(30),
        || async {
            last_drill(&r)
                .await
                .filter(|d| d.steps.iter().any(|s| s.step == "ready api/cloud1"))
        },
    )
    .await;

    // The real outage: on-prem dies and the alert fires; cloud1's check is fixed.
    w.onprem.kill();
    assert_eq!(
        r.post_alerts(&down_body(chrono::Utc::now(), None))
            .await
            .status(),
        202
    );
    w.haproxy.set_addr("cloud1", w.cloud_port).await;
    let d = finished(&r, Duration::from_secs(30)).await;
    assert_eq!(d.ok, Some(false), "{d:?}");
    assert!(d.message.contains("interrupted"), "{d:?}");
    assert!(
        !d.steps.iter().any(|s| s.step.starts_with("drain")),
        "the drill did not fail back: {d:?}"
    );
    eventually("cloud, serving", Duration::from_secs(30), || async {
        let body = get_text(&w.haproxy.frontend()).await?;
        (w.is("cloud").await && body.trim() == "cloud").then_some(())
    })
    .await;
    // The failover went on from the drill's container: started once, never restarted.
    assert_eq!(starts_and_deaths(&w, &w.container, since).await, ["start"]);
    let svc = r.service_view("onprem-api").await;
    assert_eq!(svc.state.map(|s| s.mode), Some(Mode::Cloud));
    w.restart_onprem();
}
