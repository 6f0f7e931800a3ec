//! Readiness checks against the real Docker engine and HAProxy: each problem produced for real
//! and named by its check, gone again at the next check once fixed, and nothing changed by any
//! check (the engine's events and HAProxy's server state compared before and after).

mod common;

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, StartContainerOptions,
};
use common::*;

/// `POST /api/v1/services/onprem-api/check`: (HTTP status, body).
async fn check(r: &Responder) -> (u16, serde_json::Value) {
    let resp = r
        .client
        .post(format!("{}/api/v1/services/onprem-api/check", r.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("check");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// The checks and targets of the problems in a check's answer.
fn problems(body: &serde_json::Value) -> Vec<(String, String, String)> {
    body["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (s("check"), s("target"), s("message"))
        })
        .collect()
}

/// The single problem of `body`, which must be of `check` on `target`; its message.
fn only(body: &serde_json::Value, check: &str, target: &str) -> String {
    let p = problems(body);
    assert_eq!(body["ready"], false, "{body}");
    assert!(
        p.len() == 1 && p[0].0 == check && p[0].1 == target,
        "want one {check} on {target}: {p:?}"
    );
    p[0].2.clone()
}

/// A container from the test image, without the responder's labels, publishing 8080 on
/// 127.0.0.1:`port`; started when `start`.
async fn create(w: &World, name: &str, port: u16, start: bool) -> ContainerGuard {
    let body = ContainerCreateBody {
        image: Some(IMAGE.to_string()),
        host_config: Some(HostConfig {
            port_bindings: Some(HashMap::from([(
                "8080/tcp".to_string(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(port.to_string()),
                }]),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptions {
        name: Some(name.to_string()),
        ..Default::default()
    };
    w.docker
        .create_container(Some(opts), body)
        .await
        .expect("create container");
    if start {
        w.docker
            .start_container(name, None::<StartContainerOptions>)
            .await
            .expect("start container");
    }
    ContainerGuard(name.to_string())
}

async fn remove(w: &World, name: &str) {
    let opts = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    w.docker
        .remove_container(name, Some(opts))
        .await
        .expect("remove container");
}

/// The engine's events about a container the responder made for this test (named after the
/// world's, with the responder's label), and any image pull, since `since` (Unix s): what a
/// readiness check must never cause.
async fn responder_events(w: &World, since: i64) -> Vec<String> {
    docker_events(&w.docker, since)
        .await
        .into_iter()
        .filter(|(action, actor)| {
            let this_test = actor
                .get("name")
                .is_some_and(|n| n.starts_with(&w.container));
            (this_test && actor.contains_key("io.failover-responder.service")) || action == "pull"
        })
        .map(|(action, actor)| format!("{action} {actor:?}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_docker_and_haproxy_problem_is_found_named_and_cleared_and_nothing_changes() {
    let Some(w) = World::start("readiness").await else {
        return;
    };
    let since = chrono::Utc::now().timestamp() - 1;
    let servers_before = admin_states(&w).await;
    let dir = w.dir.path();
    let start = |b: ConfigBuilder| async move { Responder::start_with(b.load(dir)).await };
    let target = format!("container {}", w.container);

    // As the world is set up: ready, and so said by status and the metrics.
    let r = start(w.configure()).await;
    let (status, body) = check(&r).await;
    assert_eq!(
        (status, &body["ready"]),
        (200, &serde_json::json!(true)),
        "{body}"
    );
    assert_eq!(problems(&body), Vec::new());
    let seen = r.service_view("onprem-api").await.status.readiness;
    assert!(seen.as_ref().is_some_and(|s| s.ready), "{seen:?}");
    let m = r.metrics().await;
    assert_eq!(
        metric(
            &m,
            "failover_responder_standby_ready{service=\"onprem-api\"}"
        ),
        1.0
    );
    // Without credentials: refused, as every POST is.
    let anon = r
        .client
        .post(format!("{}/api/v1/services/onprem-api/check", r.url))
        .send()
        .await
        .expect("anonymous check");
    assert_eq!(anon.status().as_u16(), 401);

    // A port held by another container: named, with the holder; gone once it is removed.
    let blocker = format!("{}-blocker", w.container);
    let guard = create(&w, &blocker, w.cloud_port, true).await;
    let msg = only(&check(&r).await.1, "docker_port", &target);
    assert!(
        msg.contains(&blocker) && msg.contains(&w.cloud_port.to_string()),
        "{msg}"
    );
    let m = r.metrics().await;
    assert_eq!(
        metric(
            &m,
            "failover_responder_standby_ready{service=\"onprem-api\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(
            &m,
            "failover_responder_readiness_problems{service=\"onprem-api\",check=\"docker_port\"}"
        ),
        1.0
    );
    remove(&w, &blocker).await;
    drop(guard);
    assert_eq!(
        check(&r).await.1["ready"],
        true,
        "fixed: ready at the next check"
    );

    // A container not ours under the configured name (recreate: never, the default).
    let guard = create(&w, &w.container, free_port(), false).await;
    let msg = only(&check(&r).await.1, "docker_container", &target);
    assert!(msg.contains("not created by the responder"), "{msg}");
    remove(&w, &w.container).await;
    drop(guard);
    assert_eq!(check(&r).await.1["ready"], true);
    r.shutdown().await;

    // The image is not on the engine.
    let r = start(w.configure().container_key("image: fr-test-absent:never")).await;
    let msg = only(&check(&r).await.1, "docker_image", &target);
    assert!(msg.contains("fr-test-absent:never"), "{msg}");
    r.shutdown().await;

    // HAProxy: a Runtime API at level operator; a cloud server and a backend that do not
    // exist; fewer server-template slots than burst.max.
    let sock = |p: &std::path::Path| format!("unix:{}", p.display());
    let haproxy = |api: &str, backend: &str, server: &str| {
        format!(
            "haproxy: {{runtime_api: ['{api}'], backend: {backend}, cloud_servers: [{server}]}}"
        )
    };
    let admin = sock(&w.haproxy.socket);
    let cases = [
        (
            haproxy(&sock(&w.haproxy.operator_socket), "api", "cloud1"),
            "haproxy_level",
            "level operator",
        ),
        (haproxy(&admin, "api", "cloud9"), "haproxy_server", "cloud9"),
        (haproxy(&admin, "nope", "cloud1"), "haproxy_backend", "nope"),
    ];
    for (key, want, names) in cases {
        let api = if want == "haproxy_level" {
            sock(&w.haproxy.operator_socket)
        } else {
            admin.clone()
        };
        let r = start(w.configure().key(&key)).await;
        let msg = only(&check(&r).await.1, want, &format!("haproxy {api}"));
        assert!(msg.contains(names), "{want}: {msg}");
        r.shutdown().await;
    }
    let units = free_port_range(6);
    let r = start(w.configure().burst(
        6,
        ["1s", "1s", "1s"],
        units,
        &format!(
            "haproxy: {{server_prefix: burst}}\ncontainer: {{name: '{}-b', image: {IMAGE}, ports: ['127.0.0.1:{{port}}:8080']}}",
            w.container
        ),
    ))
    .await;
    let msg = only(
        &check(&r).await.1,
        "haproxy_slots",
        &format!("haproxy {admin}"),
    );
    assert!(msg.contains("4 of the 6"), "{msg}");
    r.shutdown().await;

    // Nothing was changed by any check: no event about the service's container, no pull,
    // HAProxy's servers exactly as before.
    assert_eq!(responder_events(&w, since).await, Vec::<String>::new());
    assert_eq!(servers_before, admin_states(&w).await);
}

/// Every server of backend `api` with its admin state, address, port and weight: what a
/// Runtime API command could change.
async fn admin_states(w: &World) -> Vec<Vec<String>> {
    let cols = [
        "srv_name",
        "srv_admin_state",
        "srv_addr",
        "srv_port",
        "srv_uweight",
    ];
    w.haproxy.servers(&cols).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_needs_each_onprem_server_in_the_backend_and_health_checked() {
    let Some(mut w) = World::start("rdyfast").await else {
        return;
    };
    let config = w
        .configure()
        .key("fast_path: {onprem_servers: [onprem, onprem2]}")
        .load(w.dir.path());
    let r = Responder::start_with(config).await;
    let target = format!("haproxy unix:{}", w.haproxy.socket.display());
    let (code, body) = check(&r).await;
    assert_eq!(code, 200);
    let message = only(&body, "haproxy_onprem_check", &target);
    assert!(
        message.contains("server api/onprem2 (fast_path.onprem_servers) does not exist"),
        "{message}"
    );

    // An operator's maintenance left on it: the fast path is blind while it lasts.
    w.haproxy.cmd("set server api/onprem state maint").await;
    let (_, body) = check(&r).await;
    let found = problems(&body);
    assert!(
        found.len() == 2
            && found.iter().any(|(_, _, m)| m.contains(
                "server api/onprem (fast_path.onprem_servers) is in maintenance (MAINT)"
            )),
        "{found:?}"
    );
    w.haproxy.cmd("set server api/onprem state ready").await;

    // The on-prem server loses its `check`: HAProxy could never see it DOWN.
    let cfg = std::fs::read_to_string(&w.haproxy.config).expect("haproxy.cfg");
    let port = w.haproxy_onprem_port();
    let unchecked = cfg.replace(
        &format!("server onprem 127.0.0.1:{port} check"),
        &format!("server onprem 127.0.0.1:{port}"),
    );
    assert_ne!(cfg, unchecked, "the on-prem server line was not found");
    std::fs::write(&w.haproxy.config, unchecked).expect("write haproxy.cfg");
    w.haproxy.restart().await;
    let (_, body) = check(&r).await;
    let found = problems(&body);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found.iter().any(|(c, t, m)| c == "haproxy_onprem_check"
            && *t == target
            && m.contains("server api/onprem (fast_path.onprem_servers) has no health check")),
        "{found:?}"
    );
    assert_eq!(
        metric(
            &r.metrics().await,
            "failover_responder_readiness_problems{service=\"onprem-api\",check=\"haproxy_onprem_check\"}"
        ),
        2.0
    );
    r.shutdown().await;
}
