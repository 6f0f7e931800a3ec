//! The EC2 backend against moto's server (PyPI `moto[server]`, started here on loopback, one
//! fresh server per test): start and stop by id and by tag, the running waiter, errors from the
//! API; and a cold standby (instance stopped, container absent) failing over and back through
//! the real HAProxy and Docker engine.
#![cfg(feature = "ec2")]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use common::*;
use failover_responder::backend::ec2::Ec2Backend;
use failover_responder::backend::BackendError;
use failover_responder::config::{Ec2Config, TagFilter};
use failover_responder::plan::InstanceState;

fn moto_bin() -> PathBuf {
    let venv = std::env::var("MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/failover-responder/venv-moto")
        });
    venv.join("bin/moto_server")
}

struct Moto {
    _proc: Proc,
    url: String,
}

async fn moto() -> Option<Moto> {
    let bin = moto_bin();
    if !require(
        "moto's server (scripts/install-deps.sh installs moto[server])",
        bin.exists(),
    ) {
        return None;
    }
    // Static test credentials: the SDK's chain finds them first and never asks anything else.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let port = free_port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn moto_server");
    let url = format!("http://127.0.0.1:{port}");
    let probe = format!("{url}/moto-api/");
    eventually("moto answers", Duration::from_secs(30), || {
        let probe = probe.clone();
        async move {
            reqwest::get(&probe)
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    Some(Moto {
        _proc: Proc {
            child,
            name: "moto".into(),
        },
        url,
    })
}

async fn sdk(url: &str) -> aws_sdk_ec2::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(url)
        .load()
        .await;
    aws_sdk_ec2::Client::new(&conf)
}

/// Launches `n` instances with a tag, then stops them: a cold standby.
async fn launch(url: &str, n: i32, tag: (&str, &str)) -> Vec<String> {
    let c = sdk(url).await;
    let out = c
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(n)
        .max_count(n)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key(tag.0).value(tag.1).build())
                .build(),
        )
        .send()
        .await
        .expect("run instances in moto");
    let ids: Vec<String> = out
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(String::from))
        .collect();
    c.stop_instances()
        .set_instance_ids(Some(ids.clone()))
        .send()
        .await
        .expect("stop");
    ids
}

fn cfg(url: &str, ids: Vec<String>, tag: Option<(&str, &str)>) -> Ec2Config {
    Ec2Config {
        region: Some("us-east-1".into()),
        endpoint_url: Some(url.into()),
        instance_ids: ids,
        tag: tag.map(|(k, v)| TagFilter {
            key: k.into(),
            value: v.into(),
        }),
        running_timeout: Duration::from_secs(60),
    }
}

fn states(obs: &[failover_responder::plan::InstanceObs]) -> Vec<InstanceState> {
    obs.iter().map(|i| i.state.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_stop_by_id_and_by_tag() {
    let Some(m) = moto().await else { return };
    let ours = launch(&m.url, 2, ("failover-responder", "onprem-api")).await;
    let others = launch(&m.url, 1, ("failover-responder", "something-else")).await;

    let by_id = Ec2Backend::new(cfg(&m.url, ours.clone(), None));
    assert_eq!(
        states(&by_id.observe().await.expect("observe")),
        vec![InstanceState::Stopped; 2]
    );
    let t = Instant::now();
    by_id.start(&ours).await.expect("start");
    by_id.wait_running(&ours).await.expect("waiter");
    println!(
        "moto: start + running waiter for 2 instances: {:?}",
        t.elapsed()
    );
    assert_eq!(
        states(&by_id.observe().await.expect("observe")),
        vec![InstanceState::Running; 2]
    );

    let by_tag = Ec2Backend::new(cfg(
        &m.url,
        vec![],
        Some(("failover-responder", "onprem-api")),
    ));
    let seen = by_tag.observe().await.expect("observe by tag");
    let mut seen_ids: Vec<String> = seen.iter().map(|i| i.id.clone()).collect();
    seen_ids.sort();
    let mut want = ours.clone();
    want.sort();
    assert_eq!(seen_ids, want, "only the tagged instances");
    by_tag.stop(&seen_ids).await.expect("stop");
    let after = by_tag.observe().await.expect("observe");
    assert!(
        after
            .iter()
            .all(|i| matches!(i.state, InstanceState::Stopped | InstanceState::Stopping)),
        "{after:?}"
    );
    // The other tag's instance was never touched.
    let other = Ec2Backend::new(cfg(&m.url, others, None));
    assert_eq!(
        states(&other.observe().await.expect("observe")),
        vec![InstanceState::Stopped]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_classified() {
    let Some(m) = moto().await else { return };
    let unknown = Ec2Backend::new(cfg(&m.url, vec!["i-0123456789abcdef0".into()], None));
    let err = unknown.observe().await.expect_err("unknown id");
    assert!(
        matches!(
            err,
            BackendError::Rejected {
                retryable: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("InvalidInstanceID"), "{err}");
    let err = unknown
        .start(&["i-0123456789abcdef0".into()])
        .await
        .expect_err("unknown id");
    assert!(!err.is_retryable(), "{err}");
    // Nothing listening: unreachable, and worth retrying.
    let nowhere = Ec2Backend::new(cfg(
        &format!("http://127.0.0.1:{}", free_port()),
        vec!["i-0123456789abcdef0".into()],
        None,
    ));
    let err = nowhere.observe().await.expect_err("no endpoint");
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_standby_fails_over_and_back() {
    let Some(m) = moto().await else { return };
    let Some(w) = World::start("cold").await else {
        return;
    };
    let ids = launch(&m.url, 1, ("failover-responder", "onprem-api")).await;
    let service = format!(
        "    hold_down: 0s\n    ec2: {{region: us-east-1, endpoint_url: '{}', instance_ids: [{}], running_timeout: 60s}}",
        m.url, ids[0]
    );
    let r = Responder::start(&w.config("", &service), w.dir.path()).await;
    let ec2 = Ec2Backend::new(cfg(&m.url, ids.clone(), None));
    let instance = || async { states(&ec2.observe().await.expect("observe")) };

    let t = Instant::now();
    let down = chrono::Utc::now();
    assert_eq!(
        r.post_alerts(&down_body(down, None))
            .await
            .status()
            .as_u16(),
        202
    );
    eventually("cold failover", Duration::from_secs(60), || async {
        (w.is("cloud").await && instance().await == vec![InstanceState::Running]).then_some(())
    })
    .await;
    println!(
        "cold tier (moto instance + container start): webhook -> server ready in {:?}",
        t.elapsed()
    );
    let st = r.status().await;
    let actions: Vec<String> = st["services"]["onprem-api"]["last_steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["action"].as_str().map(String::from))
        .collect();
    assert_eq!(
        actions,
        [
            "start_instances",
            "wait_instances_running",
            "wait_docker_ready",
            "start_container",
            "wait_healthy",
            "server_ready"
        ],
        "instance first, then the container, then HAProxy"
    );

    let t = Instant::now();
    let resolved = down_body(down, Some(down + chrono::Duration::seconds(1)));
    assert_eq!(r.post_alerts(&resolved).await.status().as_u16(), 202);
    eventually("cold failback", Duration::from_secs(60), || async {
        let i = instance().await;
        (w.is("onprem").await
            && i.iter()
                .all(|s| matches!(s, InstanceState::Stopped | InstanceState::Stopping)))
        .then_some(())
    })
    .await;
    println!(
        "cold tier failback (drain, maint, stop container, stop instance) in {:?}",
        t.elapsed()
    );
    let st = r.status().await;
    let last: Vec<&str> = st["services"]["onprem-api"]["last_steps"]
        .as_array()
        .expect("steps")
        .iter()
        .rev()
        .take(2)
        .filter_map(|s| s["action"].as_str())
        .collect();
    assert_eq!(
        last,
        ["stop_instances", "stop_container"],
        "the instance stops last"
    );
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pilot_light_keeps_the_instance_running() {
    let Some(m) = moto().await else { return };
    let Some(w) = World::start("pilot").await else {
        return;
    };
    let ids = launch(&m.url, 1, ("failover-responder", "onprem-api")).await;
    let service = format!(
        "    hold_down: 0s\n    standby: pilot_light\n    ec2: {{region: us-east-1, endpoint_url: '{}', instance_ids: [{}]}}",
        m.url, ids[0]
    );
    let r = Responder::start(&w.config("", &service), w.dir.path()).await;
    let ec2 = Ec2Backend::new(cfg(&m.url, ids.clone(), None));
    let instance = || async { states(&ec2.observe().await.expect("observe")) };
    // At rest: the stopped instance is started, no container runs, the server is closed.
    eventually("pilot light at rest", Duration::from_secs(30), || async {
        (instance().await == vec![InstanceState::Running] && w.is("onprem").await).then_some(())
    })
    .await;
    let down = chrono::Utc::now();
    let t = Instant::now();
    assert_eq!(
        r.post_alerts(&down_body(down, None))
            .await
            .status()
            .as_u16(),
        202
    );
    eventually("pilot light failover", Duration::from_secs(30), || async {
        w.is("cloud").await.then_some(())
    })
    .await;
    println!(
        "pilot_light tier: webhook -> server ready in {:?}",
        t.elapsed()
    );
    assert_eq!(
        r.post_alerts(&down_body(down, Some(down + chrono::Duration::seconds(1))))
            .await
            .status()
            .as_u16(),
        202
    );
    eventually("pilot light failback", Duration::from_secs(30), || async {
        w.is("onprem").await.then_some(())
    })
    .await;
    assert_eq!(
        instance().await,
        vec![InstanceState::Running],
        "the instance stays up"
    );
    r.shutdown().await;
}
