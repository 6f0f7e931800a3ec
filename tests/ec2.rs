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
use failover_responder::backend::ec2::{self, Ec2Backend};
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
    eventually("moto answers", Duration::from_secs(30), || get_text(&probe)).await;
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
    let config = w.configure().hold_down("0s").key(&format!(
        "ec2: {{region: us-east-1, endpoint_url: '{}', instance_ids: [{}], running_timeout: 60s}}",
        m.url, ids[0]
    ));
    let r = Responder::start(&config.yaml(), w.dir.path()).await;
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
    assert_eq!(
        r.service_view("onprem-api").await.actions(),
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
    let actions = r.service_view("onprem-api").await.actions();
    let last: Vec<&str> = actions.iter().rev().take(2).map(String::as_str).collect();
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
    let config = w
        .configure()
        .hold_down("0s")
        .key("standby: pilot_light")
        .key(&format!(
            "ec2: {{region: us-east-1, endpoint_url: '{}', instance_ids: [{}]}}",
            m.url, ids[0]
        ));
    let r = Responder::start(&config.yaml(), w.dir.path()).await;
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

/// A proxy in front of moto that answers the first `throttle` requests (all of them when
/// `usize::MAX`) with EC2's throttling error, as AWS does under a request storm, and forwards
/// the rest. Counts both.
struct ThrottleProxy {
    url: String,
    throttled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    forwarded: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ThrottleProxy {
    async fn start(upstream: &str, throttle: usize) -> ThrottleProxy {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let throttled = Arc::new(AtomicUsize::new(0));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let (t, f) = (throttled.clone(), forwarded.clone());
        let upstream = upstream.to_string();
        let seen = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while let Ok((conn, _)) = listener.accept().await {
                let (t, f, seen, client, upstream) = (
                    t.clone(),
                    f.clone(),
                    seen.clone(),
                    client.clone(),
                    upstream.clone(),
                );
                tokio::spawn(async move {
                    let _ = proxy_one(conn, throttle, &seen, &t, &f, &client, &upstream).await;
                });
            }
        });
        ThrottleProxy {
            url,
            throttled,
            forwarded,
        }
    }

    fn counts(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering;
        (
            self.throttled.load(Ordering::SeqCst),
            self.forwarded.load(Ordering::SeqCst),
        )
    }
}

/// Reads one HTTP/1.1 request, answers it (throttled or forwarded), closes the connection.
async fn proxy_one(
    mut conn: tokio::net::TcpStream,
    throttle: usize,
    seen: &std::sync::atomic::AtomicUsize,
    throttled: &std::sync::atomic::AtomicUsize,
    forwarded: &std::sync::atomic::AtomicUsize,
    client: &reqwest::Client,
    upstream: &str,
) -> std::io::Result<()> {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("POST").to_string(),
        parts.next().unwrap_or("/").to_string(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..].to_vec();
    let (status, ctype, answer) = if seen.fetch_add(1, Ordering::SeqCst) < throttle {
        throttled.fetch_add(1, Ordering::SeqCst);
        (
            "503 Service Unavailable".to_string(),
            "text/xml".to_string(),
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>throttle-proxy</RequestID></Response>".to_vec(),
        )
    } else {
        forwarded.fetch_add(1, Ordering::SeqCst);
        let mut req = client.request(
            method.parse().unwrap_or(reqwest::Method::POST),
            format!("{upstream}{path}"),
        );
        for (k, v) in &headers {
            if !["host", "content-length", "connection"].contains(&k.to_ascii_lowercase().as_str())
            {
                req = req.header(k, v);
            }
        }
        let resp = req.body(body).send().await.map_err(std::io::Error::other)?;
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("text/xml")
            .to_string();
        let bytes = resp.bytes().await.map_err(std::io::Error::other)?;
        (
            format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
            ctype,
            bytes.to_vec(),
        )
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        answer.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(&answer).await?;
    conn.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_answered_with_retries() {
    let Some(m) = moto().await else { return };
    let ids = launch(&m.url, 1, ("failover-responder", "throttled")).await;

    // Two throttled answers, then moto: the SDK's own retries get the start through.
    let proxy = ThrottleProxy::start(&m.url, 2).await;
    let ec2 = Ec2Backend::new(cfg(&proxy.url, ids.clone(), None));
    let t = Instant::now();
    ec2.start(&ids).await.expect("start through throttling");
    let (throttled, forwarded) = proxy.counts();
    println!(
        "throttling: start succeeded after {throttled} throttled answers in {:?}",
        t.elapsed()
    );
    assert_eq!(throttled, 2);
    assert!(forwarded >= 1);
    let direct = Ec2Backend::new(cfg(&m.url, ids.clone(), None));
    assert!(matches!(
        direct.observe().await.expect("observe")[0].state,
        InstanceState::Pending | InstanceState::Running
    ));

    // Throttled on every attempt: the SDK gives up after its retries, and the error says
    // throttling and that backing off and retrying can help.
    let always = ThrottleProxy::start(&m.url, usize::MAX).await;
    let ec2 = Ec2Backend::new(cfg(&always.url, ids.clone(), None));
    let err = ec2.stop(&ids).await.expect_err("throttled throughout");
    let (throttled, forwarded) = always.counts();
    assert!(throttled >= 2, "the SDK retried: {throttled} attempts");
    assert_eq!(forwarded, 0);
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("RequestLimitExceeded"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_instance_units_grow_within_the_cost_guard_and_stop_after() {
    let Some(m) = moto().await else { return };
    let Some(w) = World::start("burst-ec2").await else {
        return;
    };
    let mut pool = launch(&m.url, 3, ("failover-responder-burst", "onprem-api")).await;
    pool.sort();
    let port_base = free_port_range(3);
    // Units are instances; HAProxy's slots point at loopback ports (never at moto's invented
    // private addresses), and max_instances allows two of the three.
    let unit = format!(
        "haproxy: {{server_prefix: burst}}\n\
         ec2: {{region: us-east-1, endpoint_url: '{}', tag: {{key: failover-responder-burst, value: onprem-api}}}}",
        m.url
    );
    let config = w
        .configure()
        .hold_down("0s")
        .key("cost: {instance_hourly_price: 0.1, max_instances: 2}")
        .burst(3, ["500ms", "1s", "500ms"], port_base, &unit);
    let r = Responder::start(&config.yaml(), w.dir.path()).await;
    let ec2 = Ec2Backend::new(cfg(&m.url, pool.clone(), None));
    let running = || async {
        ec2.observe()
            .await
            .expect("observe")
            .iter()
            .filter(|i| i.state == InstanceState::Running)
            .map(|i| i.id.clone())
            .collect::<Vec<_>>()
    };
    let haproxy = &w.haproxy;
    let slot_open =
        |i: u32| async move { haproxy.admin_flags(&format!("burst{i}")).await & 0x3b == 0 };

    let fired = chrono::Utc::now();
    let t = Instant::now();
    let body = alert_body("onprem_overloaded", "00000000000000bb", fired, None);
    assert_eq!(r.post_alerts(&body).await.status().as_u16(), 202);
    eventually(
        "capped at two instances",
        Duration::from_secs(60),
        || async {
            let svc = r.service_view("onprem-api").await;
            let capped = svc.status.burst.is_some_and(|b| b.capped.is_some());
            (capped && slot_open(1).await && slot_open(2).await).then_some(())
        },
    )
    .await;
    println!(
        "burst (moto instances): two units open, guard holding, in {:?}",
        t.elapsed()
    );
    assert_eq!(
        running().await,
        pool[..2].to_vec(),
        "the first two of the pool, by id"
    );
    assert!(!slot_open(3).await, "no third unit past max_instances");
    let svc = r.service_view("onprem-api").await;
    let burst = svc.status.burst.as_ref().expect("burst status");
    assert!(
        burst
            .capped
            .as_deref()
            .unwrap_or_default()
            .contains("at most 2"),
        "{svc:#?}"
    );
    assert_eq!(burst.target, 2);
    assert_eq!(svc.status.cost.instances_running, 2);
    assert_eq!(svc.status.cost.estimated_cost_per_hour, 0.2);
    let first_unit = burst
        .units
        .first()
        .and_then(|u| u.observed.instances.first());
    assert!(
        first_unit.is_some_and(|i| i.private_ip.is_some()),
        "the unit's private address is known: {svc:#?}"
    );
    let guard_events = r
        .events("service=onprem-api")
        .await
        .iter()
        .filter(|e| e["kind"] == "cost_guard")
        .count();
    assert_eq!(guard_events, 1, "said once, not on every pass");
    let m_text = r.metrics().await;
    assert_eq!(
        metric(
            &m_text,
            "failover_responder_burst_capped{service=\"onprem-api\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m_text,
            "failover_responder_cloud_units_running{service=\"onprem-api\",kind=\"instance\"}"
        ),
        2.0
    );

    let body = alert_body(
        "onprem_overloaded",
        "00000000000000bb",
        fired,
        Some(chrono::Utc::now()),
    );
    assert_eq!(r.post_alerts(&body).await.status().as_u16(), 202);
    eventually(
        "instances stopped after cooldown",
        Duration::from_secs(60),
        || async {
            (running().await.is_empty() && !slot_open(1).await && !slot_open(2).await).then_some(())
        },
    )
    .await;
    println!(
        "burst (moto instances): back to zero {:?} after the overload began",
        t.elapsed()
    );
    r.shutdown().await;
}

/// The readiness problems of the pool `cfg` configures, as the responder finds them.
async fn readiness_of(cfg: &Ec2Config) -> Vec<failover_responder::backend::Problem> {
    let backend = Ec2Backend::new(cfg.clone());
    let pool = ec2::observe_pool(&backend, cfg).await;
    ec2::readiness(&backend, cfg, pool).await
}

/// An EC2 endpoint in front of moto that answers `StartInstances` with `DryRun` as EC2 does
/// for credentials without `ec2:StartInstances` (403, `UnauthorizedOperation` in EC2's XML),
/// and forwards everything else to moto.
async fn denying_proxy(moto: &str) -> String {
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    async fn forward(req: HttpRequest, body: web::Bytes, moto: web::Data<String>) -> HttpResponse {
        let form = String::from_utf8_lossy(&body);
        if form.contains("Action=StartInstances") && form.contains("DryRun=true") {
            return HttpResponse::Forbidden().content_type("text/xml").body(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
                 <Code>UnauthorizedOperation</Code><Message>You are not authorized to \
                 perform this operation.</Message></Error></Errors>\
                 <RequestID>fr-test</RequestID></Response>",
            );
        }
        let mut out = reqwest::Client::new().post(format!("{}{}", moto.as_str(), req.uri()));
        for (k, v) in req.headers() {
            if k != "host" && k != "content-length" {
                out = out.header(k.as_str(), v.as_bytes());
            }
        }
        match out.body(body.to_vec()).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let bytes = r.bytes().await.unwrap_or_default();
                HttpResponse::build(
                    actix_web::http::StatusCode::from_u16(status)
                        .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY),
                )
                .content_type("text/xml")
                .body(bytes)
            }
            Err(e) => HttpResponse::BadGateway().body(e.to_string()),
        }
    }
    let moto = web::Data::new(moto.to_string());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(moto.clone())
            .default_service(web::to(forward))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .expect("bind proxy");
    let port = server.addrs()[0].port();
    tokio::spawn(server.run());
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_unknown_and_terminated_instances_and_a_denied_start() {
    let Some(m) = moto().await else { return };
    let ids = launch(&m.url, 2, ("failover-responder", "onprem-api")).await;
    let c = sdk(&m.url).await;
    let before = states(
        &Ec2Backend::new(cfg(&m.url, ids.clone(), None))
            .observe()
            .await
            .expect("observe"),
    );

    // Stopped instances the credentials may start and stop: ready (moto answers the DryRun
    // with DryRunOperation, as EC2 does).
    let ok = cfg(&m.url, ids.clone(), None);
    let problems = readiness_of(&ok).await;
    assert_eq!(problems, Vec::new());

    // An id EC2 does not know.
    let unknown = cfg(&m.url, vec!["i-0123456789abcdef0".into()], None);
    let problems = readiness_of(&unknown).await;
    assert!(
        problems.len() == 1
            && problems[0].check == "ec2_instance"
            && problems[0].message.contains("i-0123456789abcdef0"),
        "{problems:?}"
    );

    // A tag no instance carries.
    let untagged = cfg(&m.url, vec![], Some(("failover-responder", "nobody")));
    let problems = readiness_of(&untagged).await;
    assert!(
        problems.len() == 1 && problems[0].check == "ec2_instance",
        "{problems:?}"
    );

    // Credentials without ec2:StartInstances: named, with the action and the ids.
    let proxy = denying_proxy(&m.url).await;
    let denied = cfg(&proxy, ids.clone(), None);
    let problems = readiness_of(&denied).await;
    assert!(
        problems.len() == 1
            && problems[0].check == "ec2_permission"
            && problems[0].message.contains("ec2:StartInstances")
            && problems[0].message.contains("UnauthorizedOperation")
            && problems[0].target == {
                let mut sorted = ids.clone();
                sorted.sort();
                sorted.join(",")
            },
        "{problems:?}"
    );

    // Nothing was started or stopped by any check.
    let after = states(
        &Ec2Backend::new(ok.clone())
            .observe()
            .await
            .expect("observe"),
    );
    assert_eq!(before, after);
    assert_eq!(after, vec![InstanceState::Stopped; 2]);

    // One instance terminated: it can never start again.
    c.terminate_instances()
        .instance_ids(ids[0].clone())
        .send()
        .await
        .expect("terminate");
    let problems = readiness_of(&ok).await;
    assert!(
        problems.len() == 1 && problems[0].check == "ec2_instance" && problems[0].target == ids[0],
        "{problems:?}"
    );
}

/// A drill of a cold standby: the instance is started, the container started on it and opened,
/// HAProxy's check sees it UP, and everything goes back: server in maint, container and instance
/// stopped (moto's instance, the real HAProxy and Docker engine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_of_a_cold_standby_starts_and_stops_its_instance() {
    let Some(m) = moto().await else { return };
    let Some(w) = World::start("cold-drill").await else {
        return;
    };
    let ids = launch(&m.url, 1, ("failover-responder", "onprem-api")).await;
    let config = w.configure().key(&format!(
        "ec2: {{region: us-east-1, endpoint_url: '{}', instance_ids: [{}], running_timeout: 60s}}",
        m.url, ids[0]
    ));
    let r = Responder::start(&config.yaml(), w.dir.path()).await;
    let ec2 = Ec2Backend::new(cfg(&m.url, ids.clone(), None));

    let resp = r
        .client
        .post(format!("{}/api/v1/services/onprem-api/drill", r.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("drill");
    assert_eq!(resp.status().as_u16(), 202);
    let d = eventually("the drill's report", Duration::from_secs(90), || async {
        r.service_view("onprem-api")
            .await
            .status
            .last_drill
            .filter(|d| d.finished_at.is_some())
    })
    .await;
    assert_eq!(d.ok, Some(true), "{d:?}");
    let actions: Vec<&str> = d
        .steps
        .iter()
        .map(|s| s.step.split_whitespace().next().unwrap_or_default())
        .collect();
    assert_eq!(
        actions,
        [
            "start-instances",
            "wait-running",
            "wait-docker",
            "start",
            "wait-healthy",
            "ready",
            "drain",
            "wait-drained",
            "maint",
            "stop",
            "stop-instances"
        ],
        "{d:?}"
    );
    println!(
        "cold drill: time to ready {:.2} s",
        d.time_to_ready_seconds.unwrap_or_default()
    );
    assert!(w.is("onprem").await);
    let after = states(&ec2.observe().await.expect("observe"));
    assert!(
        after
            .iter()
            .all(|s| matches!(s, InstanceState::Stopped | InstanceState::Stopping)),
        "{after:?}"
    );
}
