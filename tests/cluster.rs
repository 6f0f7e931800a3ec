//! Two responders, one actor: both take every notification, only the holder of the etcd lease
//! executes. Real etcd (three members on loopback, Debian's etcd-server), two responder
//! processes, real HAProxy and Docker.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// The `cluster:` block for node `name`; `run` keeps each run's etcd keys apart.
fn cluster_yaml(name: &str, etcd: &Etcd, run: usize) -> String {
    format!(
        "cluster:\n  name: {name}\n  lease_ttl: 2s\n  prefix: /fr-test-{run}/\n  etcd: {{endpoints: {}, timeout: 500ms}}\n",
        etcd.endpoints()
    )
}

/// Starts node `name` on `world` with its own storage; `env` adds a crash point.
async fn node(world: &World, etcd: &Etcd, name: &str, env: &[(&str, &str)]) -> ResponderProc {
    node_in(world, etcd, name, 0, env).await
}

/// [`node`] for run `run` of a test that runs the cluster several times.
async fn node_in(
    world: &World,
    etcd: &Etcd,
    name: &str,
    run: usize,
    env: &[(&str, &str)],
) -> ResponderProc {
    let top = cluster_yaml(name, etcd, run);
    start_node(world, &format!("{name}-{run}"), &top, "0s", env).await
}

/// Starts a responder on `world` with `top` (its `cluster:` block) and `hold_down`: its config
/// at `<stem>.yaml`, its storage at `state-<stem>` (and its log beside it).
async fn start_node(
    world: &World,
    stem: &str,
    top: &str,
    hold_down: &str,
    env: &[(&str, &str)],
) -> ResponderProc {
    let config = world.dir.path().join(format!("{stem}.yaml"));
    let yaml = world.configure().top(top).hold_down(hold_down).yaml();
    std::fs::write(&config, yaml).expect("config");
    let storage = world.dir.path().join(format!("state-{stem}"));
    ResponderProc::start(&config, &storage, env).await
}

async fn json(url: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&get_text(url).await?).ok()
}

/// The node's `cluster` status: (role, leader).
async fn role(n: &ResponderProc) -> Option<(String, Option<String>)> {
    let s = json(&format!("{}/api/v1/status", n.url)).await?;
    let c = &s["cluster"];
    Some((
        c["role"].as_str()?.to_string(),
        c["leader"].as_str().map(String::from),
    ))
}

async fn wait_role(n: &ResponderProc, want: &str, within: Duration) {
    eventually(&format!("{} is {want}", n.url), within, || async {
        role(n).await.filter(|(r, _)| r == want).map(|_| ())
    })
    .await;
}

/// Steps this node executed: (step text, node). The node must answer (within 10 s): a
/// request that fails under load must not read as "no steps".
async fn steps(n: &ResponderProc) -> Vec<(String, String)> {
    let url = format!("{}/api/v1/events?kind=step", n.url);
    let events = eventually(
        &format!("{} answers its events", n.url),
        Duration::from_secs(10),
        || json(&url),
    )
    .await;
    events["events"]
        .as_array()
        .or(events.as_array())
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "step")
        .map(|e| {
            let m = e["message"].as_str().unwrap_or_default().to_string();
            let node = e["node"].as_str().unwrap_or_default().to_string();
            (m, node)
        })
        .collect()
}

fn have_etcd() -> bool {
    require("etcd (Debian package etcd-server)", have_binary("etcd"))
}

/// One cluster test at a time: each runs three etcd members and two responders, and etcd's
/// elections need the CPU they are timed for.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One cluster test's stage: its turn (one at a time), the world, three etcd members.
struct Stage {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    world: World,
    etcd: Etcd,
}

/// None (after a loud skip) when a component is missing.
async fn stage(test: &str) -> Option<Stage> {
    if !have_etcd() {
        return None;
    }
    let serial = SERIAL.lock().await;
    let world = World::start(test).await?;
    let etcd = Etcd::start(world.dir.path(), 3).await;
    Some(Stage {
        _serial: serial,
        world,
        etcd,
    })
}

/// Starts site-a (with `a_env`) and waits until it leads, then site-b until it follows.
async fn pair(s: &Stage, a_env: &[(&str, &str)]) -> (ResponderProc, ResponderProc) {
    let a = node(&s.world, &s.etcd, "site-a", a_env).await;
    wait_role(&a, "leader", Duration::from_secs(10)).await;
    let b = node(&s.world, &s.etcd, "site-b", &[]).await;
    wait_role(&b, "follower", Duration::from_secs(10)).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_the_follower_takes_over_when_it_dies() {
    let Some(s) = stage("cluster-takeover").await else {
        return;
    };
    let world = &s.world;
    let (mut a, b) = pair(&s, &[]).await;
    eventually("b follows a", Duration::from_secs(10), || async {
        role(&b)
            .await
            .filter(|(r, l)| r == "follower" && l.as_deref() == Some("site-a"))
    })
    .await;

    // The first leader seeds the cluster's state from its own (nothing was recorded yet), so
    // that no node's older local history is ever decided from.
    let client = etcd_client::Client::connect(
        [format!("http://127.0.0.1:{}", s.etcd.client_ports[0])],
        None,
    )
    .await
    .expect("etcd client");
    let seeded = eventually("a seeds the state", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let got = client
                .get("/fr-test-0/services/onprem-api/state", None)
                .await
                .ok()?;
            let kv = got.kvs().first()?;
            serde_json::from_slice::<serde_json::Value>(kv.value()).ok()
        }
    })
    .await;
    assert_eq!(seeded["mode"], "onprem", "{seeded}");

    // `check-config` names the node and its etcd.
    let out = Command::new(env!("CARGO_BIN_EXE_failover-responder"))
        .args(["check-config", "--config.file"])
        .arg(world.dir.path().join("site-a-0.yaml"))
        .output()
        .expect("check-config");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text
                .contains("cluster: node site-a, lease 2s, 3 etcd endpoint(s) under /fr-test-0/, over plain http"),
        "{text}"
    );

    // `ctl status` says the role and who leads.
    let out = Command::new(env!("CARGO_BIN_EXE_failover-responder"))
        .args(["ctl", "--url", &b.url, "status"])
        .output()
        .expect("ctl status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("cluster: site-b is follower (leader: site-a; etcd up)"),
        "{text}"
    );

    // Both take the notification; only the leader acts.
    let started = chrono::Utc::now();
    for n in [&a, &b] {
        assert_eq!(n.post_alerts(&down_body(started, None)).await, Some(202));
    }
    eventually("cloud, by a", Duration::from_secs(30), || async {
        world.is("cloud").await.then_some(())
    })
    .await;
    let by_a = steps(&a).await;
    assert!(
        !by_a.is_empty() && by_a.iter().all(|(_, node)| node == "site-a"),
        "a's steps carry its name: {by_a:?}"
    );
    // b planned the same steps (its status shows them) and ran none.
    assert!(steps(&b).await.is_empty(), "the follower executed steps");

    // The leader dies: b takes over within the lease and acts on the next notification.
    a.kill9();
    wait_role(&b, "leader", Duration::from_secs(5)).await;
    let resolved = down_body(started, Some(chrono::Utc::now()));
    assert_eq!(b.post_alerts(&resolved).await, Some(202));
    eventually("on-prem again, by b", Duration::from_secs(30), || async {
        world.assert_safe("failback by b").await;
        world.is("onprem").await.then_some(())
    })
    .await;
    let by_b = steps(&b).await;
    assert!(
        by_b.iter().any(|(m, _)| m.starts_with("stop ")) && by_b.iter().all(|(_, n)| n == "site-b"),
        "b ran the failback: {by_b:?}"
    );
}

/// The leader dies (a crash point: it aborts as kill -9 would, the step recorded and not done)
/// before each step of failover and of failback in turn; the follower takes over and finishes,
/// never restarting a container the leader had started, and the safety invariant holds on
/// every look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_dies_before_any_step_is_finished_by_the_other() {
    let Some(s) = stage("cluster-crash").await else {
        return;
    };
    let world = &s.world;
    let steps_in_order = FAILOVER_STEPS.iter().chain(&FAILBACK_STEPS);
    for (run, step) in steps_in_order.enumerate() {
        let failback = FAILBACK_STEPS.contains(step);
        // On-prem, cloud server closed, container absent.
        drop(ContainerGuard(world.container.clone()));
        world.haproxy.cmd("set server api/cloud1 state maint").await;
        let crash = [("FAILOVER_RESPONDER_CRASH_BEFORE", *step)];
        let mut a = node_in(world, &s.etcd, "site-a", run, &crash).await;
        wait_role(&a, "leader", Duration::from_secs(10)).await;
        let b = node_in(world, &s.etcd, "site-b", run, &[]).await;
        wait_role(&b, "follower", Duration::from_secs(10)).await;
        let started = chrono::Utc::now();
        let down = down_body(started, None);
        for n in [&a, &b] {
            assert_eq!(n.post_alerts(&down).await, Some(202));
        }
        if failback {
            eventually("cloud, by a", Duration::from_secs(30), || async {
                world.is("cloud").await.then_some(())
            })
            .await;
            let resolved = down_body(started, Some(chrono::Utc::now()));
            for n in [&a, &b] {
                assert_eq!(n.post_alerts(&resolved).await, Some(202));
            }
        }
        eventually(
            &format!("a dies before {step}"),
            Duration::from_secs(30),
            || {
                let exited = a.proc.child.try_wait().ok().flatten().is_some();
                async move { exited.then_some(()) }
            },
        )
        .await;
        let at_death = container_started_at(world).await;
        let want = if failback { "onprem" } else { "cloud" };
        eventually(
            &format!("{want}, finished by b (a died before {step})"),
            Duration::from_secs(30),
            || async {
                world.assert_safe(step).await;
                world.is(want).await.then_some(())
            },
        )
        .await;
        if !failback && at_death.is_some() {
            assert_eq!(
                container_started_at(world).await,
                at_death,
                "{step}: b restarted the container a had started"
            );
        }
        let by_b = steps(&b).await;
        assert!(
            !by_b.is_empty() && by_b.iter().all(|(_, n)| n == "site-b"),
            "{step}: {by_b:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_quorum_nobody_acts_and_with_it_back_the_leader_does() {
    let Some(mut s) = stage("cluster-quorum").await else {
        return;
    };
    let (a, b) = pair(&s, &[]).await;
    let world = &s.world;

    s.etcd.stop(1);
    s.etcd.stop(2);
    // Within the lease, the leader fences itself and says why.
    eventually("a fenced", Duration::from_secs(5), || async {
        let s = json(&format!("{}/api/v1/status", a.url)).await?;
        let c = &s["cluster"];
        (c["role"] == "follower" && c["etcd_up"] == false && c["reason"].is_string()).then_some(())
    })
    .await;
    // The series follow once the campaign task gives the lease up (status is fenced at once).
    eventually("a's metrics say it", Duration::from_secs(5), || async {
        let m = get_text(&format!("{}/metrics", a.url)).await?;
        let leader = metric(&m, "failover_responder_cluster_leader");
        let up = metric(&m, "failover_responder_cluster_etcd_up");
        let changes = m.contains("failover_responder_cluster_leader_changes_total");
        (leader == 0.0 && up == 0.0 && changes).then_some(())
    })
    .await;

    // An override now cannot reach the cluster: 503 naming why, and nothing changes.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/services/onprem-api/pause", b.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("override");
    assert_eq!(r.status().as_u16(), 503);
    let body = r.text().await.unwrap_or_default();
    assert!(body.contains("not applied to the cluster"), "{body}");
    let st = json(&format!("{}/api/v1/status", b.url))
        .await
        .expect("status");
    assert!(
        st["services"]["onprem-api"]["state"]["override"].is_null(),
        "the refused override was applied: {st}"
    );

    // A failover alert now: both take it, neither acts.
    let body = down_body(chrono::Utc::now(), None);
    for n in [&a, &b] {
        assert_eq!(n.post_alerts(&body).await, Some(202));
    }
    // A bounded look, not a synchronisation: several reconcile periods (1 s) with nothing done.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        assert_ne!(
            world.container_running().await,
            Some(true),
            "someone acted without quorum"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(steps(&a).await.is_empty() && steps(&b).await.is_empty());

    // Quorum back: one of them leads and fails over.
    s.etcd.restart(1);
    s.etcd.restart(2);
    eventually(
        "cloud once quorum is back",
        Duration::from_secs(30),
        || async {
            world.assert_safe("quorum back").await;
            world.is("cloud").await.then_some(())
        },
    )
    .await;
    let (sa, sb) = (steps(&a).await, steps(&b).await);
    assert!(
        sa.is_empty() != sb.is_empty(),
        "exactly one node acted: a {sa:?}, b {sb:?}"
    );
}

/// When Docker last started the test's container (None: not there).
async fn container_started_at(world: &World) -> Option<String> {
    let info = world
        .docker
        .inspect_container(
            &world.container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .ok()?;
    info.state?.started_at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_and_an_override_sent_to_the_follower_are_the_clusters() {
    let Some(s) = stage("cluster-shared").await else {
        return;
    };
    let world = &s.world;
    let (mut a, b) = pair(&s, &[]).await;
    let body = down_body(chrono::Utc::now(), None);
    for n in [&a, &b] {
        assert_eq!(n.post_alerts(&body).await, Some(202));
    }
    eventually("cloud, by a", Duration::from_secs(30), || async {
        world.is("cloud").await.then_some(())
    })
    .await;
    // The follower decides from the leader's history, not its own: same mode, since and
    // transitions (what hold-down and the flap cap count).
    let state = |n: &ResponderProc| {
        let url = format!("{}/api/v1/status", n.url);
        async move {
            let s = json(&url).await?;
            Some(s["services"]["onprem-api"]["state"].clone())
        }
    };
    let shared = eventually("b holds a's state", Duration::from_secs(10), || async {
        let (sa, sb) = (state(&a).await?, state(&b).await?);
        (sa["mode"] == "cloud"
            && sa["since"] == sb["since"]
            && sa["transitions"] == sb["transitions"])
            .then_some(sa)
    })
    .await;

    // An override sent to the follower: the leader honours it.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/services/onprem-api/failback", b.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("override");
    assert_eq!(r.status().as_u16(), 200);
    eventually(
        "failed back by a on b's override",
        Duration::from_secs(30),
        || async {
            world.assert_safe("override").await;
            world.is("onprem").await.then_some(())
        },
    )
    .await;
    assert!(steps(&b).await.is_empty(), "the follower executed steps");

    // The leader dies: b takes over with the override and the history, and stays on-prem
    // though the failover alert still fires.
    a.kill9();
    wait_role(&b, "leader", Duration::from_secs(5)).await;
    let after = eventually("b's state", Duration::from_secs(10), || async {
        let s = state(&b).await?;
        (s["override"] == "failback").then_some(s)
    })
    .await;
    assert!(
        after["transitions"].as_array().map_or(0, Vec::len)
            > shared["transitions"].as_array().map_or(0, Vec::len),
        "the failback's transition carried over: {after}"
    );
    // A bounded look: several passes of the new leader, the override holding.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        assert!(world.is("onprem").await, "b ignored the cluster's override");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A TCP proxy on loopback in front of one etcd member, that the test can cut (every open
/// connection dropped, new ones refused) and restore.
struct Proxy {
    port: u16,
    open: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(to: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let (open, watch) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watch = watch.clone();
                if !*watch.borrow() {
                    continue; // cut: refused (dropped at once)
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Proxy { port, open }
    }

    fn set(&self, open: bool) {
        self.open.send_replace(open);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_stops_acting_and_rejoins_as_follower() {
    let Some(s) = stage("cluster-cut").await else {
        return;
    };
    let (world, etcd) = (&s.world, &s.etcd);
    // a reaches etcd only through the proxies; b directly.
    let mut proxies = Vec::new();
    for p in &etcd.client_ports {
        proxies.push(Proxy::start(*p).await);
    }
    let through: Vec<String> = proxies
        .iter()
        .map(|p| format!("'http://127.0.0.1:{}'", p.port))
        .collect();
    let top = cluster_yaml("site-a", etcd, 0)
        .replace(&etcd.endpoints(), &format!("[{}]", through.join(", ")));
    let a = start_node(world, "site-a", &top, "0s", &[]).await;
    wait_role(&a, "leader", Duration::from_secs(10)).await;
    let b = node(world, etcd, "site-b", &[]).await;
    wait_role(&b, "follower", Duration::from_secs(10)).await;

    // Cut: a fences itself within the lease (2 s) and says so; b takes over.
    let cut = std::time::Instant::now();
    proxies.iter().for_each(|p| p.set(false));
    wait_role(&a, "follower", Duration::from_secs(3)).await;
    let fenced_after = cut.elapsed();
    assert!(
        fenced_after < Duration::from_secs(2),
        "a acted past its lease: {fenced_after:?}"
    );
    wait_role(&b, "leader", Duration::from_secs(10)).await;
    let log = world.dir.path().join("state-site-a.log");
    eventually(
        "a logs why it does not act",
        Duration::from_secs(5),
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("not acting").then_some(())
        },
    )
    .await;

    // A failover now: b acts, a (cut off) does not.
    let started = chrono::Utc::now();
    for n in [&a, &b] {
        assert_eq!(n.post_alerts(&down_body(started, None)).await, Some(202));
    }
    eventually("cloud, by b", Duration::from_secs(30), || async {
        world.is("cloud").await.then_some(())
    })
    .await;

    // Restored: a rejoins as a follower of b and executes nothing, through a failback too.
    proxies.iter().for_each(|p| p.set(true));
    eventually("a follows b", Duration::from_secs(15), || async {
        role(&a)
            .await
            .filter(|(r, l)| r == "follower" && l.as_deref() == Some("site-b"))
    })
    .await;
    let resolved = down_body(started, Some(chrono::Utc::now()));
    for n in [&a, &b] {
        assert_eq!(n.post_alerts(&resolved).await, Some(202));
    }
    eventually("on-prem, by b", Duration::from_secs(30), || async {
        world.assert_safe("failback by b").await;
        world.is("onprem").await.then_some(())
    })
    .await;
    assert!(
        steps(&a).await.is_empty(),
        "a executed steps: {:?}",
        steps(&a).await
    );
    assert!(!steps(&b).await.is_empty());
}

/// etcd serving clients over TLS only, with client certificates required (`--client-cert-auth`):
/// a node with the cluster's CA and a client certificate leads and acts; a node that does not
/// trust etcd's certificate, and one without a client certificate, never lead, say why, and
/// execute nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_only_a_node_with_the_clusters_ca_and_a_client_certificate_leads() {
    if !have_etcd() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let Some(world) = World::start("cluster-tls").await else {
        return;
    };
    let dir = world.dir.path();
    let foreign = EtcdPki::generate(&dir.join("foreign-pki"));
    let etcd = Etcd::start_tls(dir, 1, EtcdPki::generate(&dir.join("pki"))).await;
    let pki = etcd.tls.as_ref().expect("tls etcd");
    let start = |name: &'static str, tls: String| {
        let top = format!(
            "cluster:\n  name: {name}\n  lease_ttl: 2s\n  prefix: /fr-test-tls/\n  etcd: {{endpoints: {}, timeout: 500ms, tls: {tls}}}\n",
            etcd.endpoints()
        );
        let world = &world;
        async move { start_node(world, name, &top, "0s", &[]).await }
    };
    let tls = |ca: &std::path::Path, client: bool| {
        let mut t = format!("{{ca_file: '{}'", ca.display());
        if client {
            t += &format!(
                ", cert_file: '{}', key_file: '{}'",
                pki.client_cert.display(),
                pki.client_key.display()
            );
        }
        t + "}"
    };
    let cluster = |n: &ResponderProc| {
        let url = format!("{}/api/v1/status", n.url);
        async move { Some(json(&url).await?["cluster"].clone()) }
    };
    // Nodes that cannot reach etcd as the cluster: each says why, in terms of certificates.
    let untrusting = start("untrusting", tls(&foreign.ca, true)).await;
    let anonymous = start("anonymous", tls(&pki.ca, false)).await;
    for n in [&untrusting, &anonymous] {
        let c = eventually(
            "says why it cannot reach etcd",
            Duration::from_secs(10),
            || async {
                let c = cluster(n).await?;
                (c["etcd_up"] == false && c["reason"].as_str().is_some_and(|r| r.contains("etcd")))
                    .then_some(c)
            },
        )
        .await;
        assert_eq!(c["role"], "follower", "{c}");
    }
    let why = cluster(&untrusting).await.expect("status");
    assert!(
        why["reason"]
            .as_str()
            .is_some_and(|r| r.contains("certificate")),
        "the reason names the certificate problem: {why}"
    );

    // The node with the cluster's CA and a client certificate leads, over TLS, and acts.
    let a = start("site-a", tls(&pki.ca, true)).await;
    let out = Command::new(env!("CARGO_BIN_EXE_failover-responder"))
        .args(["check-config", "--config.file"])
        .arg(dir.join("site-a.yaml"))
        .output()
        .expect("check-config");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("over TLS with a client certificate"),
        "{text}"
    );
    wait_role(&a, "leader", Duration::from_secs(10)).await;
    let down = down_body(chrono::Utc::now(), None);
    for n in [&untrusting, &anonymous, &a] {
        assert_eq!(n.post_alerts(&down).await, Some(202));
    }
    eventually("cloud, by site-a", Duration::from_secs(30), || async {
        world.is("cloud").await.then_some(())
    })
    .await;
    // Its state went to etcd over TLS: a second node with the same credentials follows it
    // and holds that state.
    let b = start("site-b", tls(&pki.ca, true)).await;
    eventually(
        "site-b follows with site-a's state",
        Duration::from_secs(10),
        || async {
            let s = json(&format!("{}/api/v1/status", b.url)).await?;
            (s["cluster"]["role"] == "follower"
                && s["cluster"]["leader"] == "site-a"
                && s["services"]["onprem-api"]["state"]["mode"] == "cloud")
                .then_some(())
        },
    )
    .await;
    for n in [&untrusting, &anonymous, &b] {
        assert!(steps(n).await.is_empty(), "{} executed steps", n.url);
    }
    for n in [&untrusting, &anonymous] {
        assert_eq!(cluster(n).await.expect("status")["etcd_up"], false);
    }
    assert!(steps(&a).await.iter().all(|(_, node)| node == "site-a"));
}

/// Hold-down counts from the failover, whoever made it: a new leader that takes over during
/// the hold-down the old leader started keeps the cloud until it ends, though the failover
/// alert has resolved, and then fails back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_down_carries_across_a_leader_change() {
    let Some(s) = stage("cluster-hold-down").await else {
        return;
    };
    let (world, etcd) = (&s.world, &s.etcd);
    let hold = Duration::from_secs(8);
    let start = |name: &'static str| async move {
        start_node(world, name, &cluster_yaml(name, etcd, 0), "8s", &[]).await
    };
    let mut a = start("site-a").await;
    wait_role(&a, "leader", Duration::from_secs(10)).await;
    let b = start("site-b").await;
    wait_role(&b, "follower", Duration::from_secs(10)).await;

    let fired = chrono::Utc::now();
    for n in [&a, &b] {
        assert_eq!(n.post_alerts(&down_body(fired, None)).await, Some(202));
    }
    eventually("cloud, by a", Duration::from_secs(30), || async {
        world.is("cloud").await.then_some(())
    })
    .await;
    let since = eventually("a's failover time", Duration::from_secs(5), || async {
        let s = json(&format!("{}/api/v1/status", a.url)).await?;
        let since = s["services"]["onprem-api"]["state"]["since"].as_str()?;
        chrono::DateTime::parse_from_rfc3339(since).ok()
    })
    .await;

    // a dies; b leads and is told the alert resolved, well inside the hold-down.
    a.kill9();
    wait_role(&b, "leader", Duration::from_secs(5)).await;
    assert_eq!(
        b.post_alerts(&down_body(fired, Some(chrono::Utc::now())))
            .await,
        Some(202)
    );
    let reason = eventually("b holds, saying why", Duration::from_secs(5), || async {
        let s = json(&format!("{}/api/v1/status", b.url)).await?;
        let r = s["services"]["onprem-api"]["held"].as_str()?;
        r.contains("hold_down").then(|| r.to_string())
    })
    .await;
    let held_until = since + chrono::Duration::from_std(hold).expect("hold");
    let not_before = reason
        .split("failback not before ")
        .nth(1)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t.trim()).ok());
    assert_eq!(
        not_before,
        Some(held_until),
        "b counts from a's failover ({since}), not from its own takeover: {reason}"
    );
    // It fails back only once a's hold-down has run out.
    eventually("on-prem again, by b", Duration::from_secs(30), || async {
        world.assert_safe("failback after hold-down").await;
        world.is("onprem").await.then_some(())
    })
    .await;
    let drained = json(&format!("{}/api/v1/events?kind=step", b.url))
        .await
        .and_then(|e| {
            e["events"].as_array()?.iter().find_map(|e| {
                let m = e["message"].as_str()?;
                m.starts_with("drain ")
                    .then(|| e["at"].as_str().map(String::from))?
            })
        })
        .expect("b's drain step");
    let drained = chrono::DateTime::parse_from_rfc3339(&drained).expect("event time");
    assert!(
        drained >= held_until,
        "b drained at {drained}, before a's hold-down ended at {held_until}"
    );
}

/// etcd with authentication on (a user whose role may use only the cluster's prefix): the node
/// with the user's password leads and fails over; one with a wrong password never leads, says
/// why, and neither the password nor the wrong one appears in status or logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_authentication_only_the_node_with_the_password_leads() {
    let Some(s) = stage("cluster-auth").await else {
        return;
    };
    let (world, etcd) = (&s.world, &s.etcd);
    let dir = world.dir.path();
    let (password, wrong) = ("s3cret-etcd-pw", "not-the-pw");
    let mut root = etcd_client::Client::connect(
        etcd.client_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>(),
        None,
    )
    .await
    .expect("etcd client");
    root.user_add("root", "root-pw", None).await.expect("root");
    root.user_grant_role("root", "root")
        .await
        .expect("root role");
    root.role_add("responder").await.expect("role");
    root.role_grant_permission(
        "responder",
        etcd_client::Permission::read_write("/fr-test-0/").with_prefix(),
    )
    .await
    .expect("permission");
    root.user_add("failover-responder", password, None)
        .await
        .expect("user");
    root.user_grant_role("failover-responder", "responder")
        .await
        .expect("grant");
    root.auth_enable().await.expect("auth enable");

    let start = |name: &'static str, pw: &str| {
        let pw_file = dir.join(format!("{name}.pw"));
        std::fs::write(&pw_file, format!("{pw}\n")).expect("password file");
        let top = cluster_yaml(name, etcd, 0).replace(
            "timeout: 500ms}",
            &format!(
                "timeout: 500ms, username: failover-responder, password_file: '{}'}}",
                pw_file.display()
            ),
        );
        async move { start_node(world, name, &top, "0s", &[]).await }
    };
    let intruder = start("intruder", wrong).await;
    let status = |n: &ResponderProc| {
        let url = format!("{}/api/v1/status", n.url);
        async move { json(&url).await }
    };
    let why = eventually("the intruder says why", Duration::from_secs(10), || async {
        let s = status(&intruder).await?;
        let r = s["cluster"]["reason"].as_str()?.to_string();
        r.contains("authentication failed").then_some(r)
    })
    .await;
    assert!(!why.contains(wrong), "{why}");

    let a = start("site-a", password).await;
    wait_role(&a, "leader", Duration::from_secs(10)).await;
    let down = down_body(chrono::Utc::now(), None);
    for n in [&intruder, &a] {
        assert_eq!(n.post_alerts(&down).await, Some(202));
    }
    eventually("cloud, by site-a", Duration::from_secs(30), || async {
        world.is("cloud").await.then_some(())
    })
    .await;
    assert!(
        steps(&intruder).await.is_empty(),
        "the intruder executed steps"
    );
    assert_eq!(
        role(&intruder).await.map(|(r, _)| r).as_deref(),
        Some("follower")
    );
    for n in ["intruder", "site-a"] {
        let log = std::fs::read_to_string(dir.join(format!("state-{n}.log"))).expect("log");
        assert!(
            log.contains("listening") && !log.contains(password) && !log.contains(wrong),
            "{n}'s log shows a password"
        );
    }
    let shown = format!("{:?}{:?}", status(&a).await, status(&intruder).await);
    assert!(!shown.contains(password) && !shown.contains(wrong));
}
