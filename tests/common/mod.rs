//! Shared test harness: real components on loopback, started and stopped by the tests.
//!
//! A component that is missing makes its test skip loudly outside CI and fail when `CI` is set
//! to any non-empty value (run `scripts/install-deps.sh` to install them). A skipped test still
//! counts as passed for libtest, so it prints a `SKIPPED: ` marker line that `scripts/test.sh`
//! counts (see [`skip`]). Everything binds 127.0.0.1 only.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use failover_responder::config::{Config, Format};
use tokio::sync::oneshot;

pub const TOKEN: &str = "s3cret-token";
pub const DOCKER_SOCK: &str = "/var/run/docker.sock";

/// Whether this is a CI run: `CI` set to anything but the empty string (CI=true, CI=1, CI=yes).
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Returns true when `available`; otherwise marks the test skipped (see [`skip`]) and returns
/// false, for the caller to return at once. Under CI it panics instead: nothing may skip there.
pub fn require(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if under_ci() {
        panic!("{what} is required under CI but is missing; run scripts/install-deps.sh");
    }
    skip(&format!(
        "{what} is missing; run scripts/install-deps.sh (under CI this test fails)"
    ));
    false
}

/// Marks the running test as skipped: one line `SKIPPED: <test binary>::<test>: <why>` written
/// straight to the process's stderr. libtest captures `print!`/`eprint!` (and shows them only for
/// a failing test) but not writes to `std::io::stderr()` itself, so the line always reaches
/// `cargo test`'s output; the leading newline puts it at the start of a line even when it lands
/// after libtest's `test NAME ... ` (one test thread). libtest names each test's thread after
/// the test, and `#[tokio::test]` runs the body on that thread. `scripts/test.sh` counts these
/// lines (once per test) and reports them as skipped, not passed.
pub fn skip(why: &str) {
    use std::io::Write;
    let current = std::thread::current();
    let test = current.name().unwrap_or("unknown");
    let line = format!("\nSKIPPED: {}::{test}: {why}\n", env!("CARGO_CRATE_NAME"));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub fn have_binary(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn have_docker() -> bool {
    Path::new(DOCKER_SOCK).exists()
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/alertmanager-0.25/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

pub fn fixture_names() -> Vec<String> {
    let dir = format!(
        "{}/tests/fixtures/alertmanager-0.25",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

/// `n` consecutive free loopback ports; returns the first.
pub fn free_port_range(n: u16) -> u16 {
    for _ in 0..100 {
        let base = free_port();
        if base.checked_add(n).is_none() {
            continue;
        }
        let all_free =
            (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}

/// A port free right now on 127.0.0.1 (for components that must bind it themselves).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Polls `f` every 100 ms until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A busybox httpd on 127.0.0.1 serving `body` at / and "ok" at /health: the on-prem API.
pub fn start_httpd(dir: &Path, port: u16, body: &str) -> Proc {
    let www = dir.join(format!("www-{port}"));
    std::fs::create_dir_all(&www).expect("mkdir www");
    std::fs::write(www.join("index.html"), format!("{body}\n")).expect("index");
    std::fs::write(www.join("health"), "ok\n").expect("health");
    let child = Command::new("/bin/busybox")
        .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
        .arg(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn busybox httpd");
    Proc {
        child,
        name: format!("httpd:{port}"),
    }
}

/// A real HAProxy with a frontend, an on-prem server, a `backup` cloud server that starts
/// in maint (`disabled`), four burst slots from a `server-template` (normal servers, in maint
/// until the responder points one at a unit and opens it), and an admin socket.
pub struct Haproxy {
    pub proc: Proc,
    pub socket: PathBuf,
    pub frontend_port: u16,
    pub config: PathBuf,
}

impl Haproxy {
    pub async fn start(dir: &Path, onprem_port: u16, cloud_port: u16) -> Haproxy {
        let socket = dir.join("admin.sock");
        let frontend_port = free_port();
        let config = dir.join("haproxy.cfg");
        let cfg = format!(
            "global\n  stats socket {sock} mode 600 level admin\n  stats timeout 10s\n\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n  \
             retries 1\n  option redispatch\n\n\
             frontend fe\n  bind 127.0.0.1:{frontend_port}\n  default_backend api\n\n\
             backend api\n  option httpchk GET /health\n  default-server inter 200ms fall 2 rise 1\n  \
             server onprem 127.0.0.1:{onprem_port} check\n  \
             server cloud1 127.0.0.1:{cloud_port} check backup disabled\n  \
             server-template burst 1-4 127.0.0.1:9 check disabled\n",
            sock = socket.display()
        );
        std::fs::write(&config, cfg).expect("write haproxy.cfg");
        let child = spawn_haproxy(&config);
        let h = Haproxy {
            proc: Proc {
                child,
                name: "haproxy".into(),
            },
            socket,
            frontend_port,
            config,
        };
        h.wait_answering().await;
        h
    }

    /// Restarts HAProxy from its config: all runtime state is lost.
    pub async fn restart(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_file(&self.socket);
        let child = spawn_haproxy(&self.config);
        self.proc.child = child;
        self.wait_answering().await;
    }

    /// Waits until the admin socket answers `show info`.
    async fn wait_answering(&self) {
        let sock = self.socket.clone();
        eventually(
            "haproxy admin socket answers",
            Duration::from_secs(10),
            || {
                let sock = sock.clone();
                async move {
                    runtime_cmd(&sock, "show info")
                        .await
                        .ok()
                        .filter(|o| o.contains("Name: HAProxy"))
                }
            },
        )
        .await;
    }

    pub async fn cmd(&self, cmd: &str) -> String {
        runtime_cmd(&self.socket, cmd)
            .await
            .unwrap_or_else(|e| panic!("haproxy {cmd}: {e}"))
    }

    /// The `srv_admin_state` flags of a server, straight from `show servers state`.
    pub async fn admin_flags(&self, server: &str) -> u32 {
        self.server_field(server, "srv_admin_state")
            .await
            .parse()
            .unwrap_or_else(|e| panic!("{server} admin state: {e}"))
    }

    /// One column of a server's line in `show servers state api` (srv_addr, srv_port,
    /// srv_uweight, ...).
    pub async fn server_field(&self, server: &str, column: &str) -> String {
        let out = self.cmd("show servers state api").await;
        let header: Vec<&str> = out
            .lines()
            .find_map(|l| l.strip_prefix("# "))
            .expect("header")
            .split_whitespace()
            .collect();
        let name_col = header
            .iter()
            .position(|c| *c == "srv_name")
            .expect("srv_name");
        let col = header
            .iter()
            .position(|c| *c == column)
            .unwrap_or_else(|| panic!("no column {column} in:\n{out}"));
        out.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(name_col) == Some(&server))
            .and_then(|f| f.get(col).map(|v| v.to_string()))
            .unwrap_or_else(|| panic!("server {server} not in:\n{out}"))
    }

    pub fn frontend(&self) -> String {
        format!("http://127.0.0.1:{}/", self.frontend_port)
    }
}

/// HAProxy in the foreground (-db) with `config`.
fn spawn_haproxy(config: &Path) -> Child {
    Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn haproxy")
}

/// One Runtime API command over the unix socket, written independently of the backend under
/// test so the tests check HAProxy itself.
pub async fn runtime_cmd(sock: &Path, cmd: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(sock).await?;
    s.write_all(format!("{cmd}\n").as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// Builds the test image once (the script is idempotent and takes a lock).
pub fn ensure_image(reference: &str, body: &str) {
    let script = format!("{}/scripts/build-image.sh", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(&script)
        .args([reference, body])
        .output()
        .expect("run build-image.sh");
    assert!(
        out.status.success(),
        "build-image.sh failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Connects to the local engine with a negotiated API version.
pub async fn docker() -> bollard::Docker {
    bollard::Docker::connect_with_unix(DOCKER_SOCK, 60, bollard::API_DEFAULT_VERSION)
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("docker version negotiation")
}

/// Running state of a container, None when absent.
pub async fn container_running(d: &bollard::Docker, name: &str) -> Option<bool> {
    d.inspect_container(
        name,
        None::<bollard::query_parameters::InspectContainerOptions>,
    )
    .await
    .ok()
    .map(|i| i.state.and_then(|s| s.running).unwrap_or(false))
}

/// Removes a container when dropped, whatever the test's outcome.
pub struct ContainerGuard(pub String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let name = self.0.clone();
        // Drop cannot await; a short-lived runtime on another thread does the removal.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let d = docker().await;
                let opts = bollard::query_parameters::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                let _ = d.remove_container(&name, Some(opts)).await;
            });
        })
        .join();
    }
}

/// The responder running in-process on 127.0.0.1:0.
pub struct Responder {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), failover_responder::app::AppError>>>,
    pub client: reqwest::Client,
    /// Storage of its own unless the config names one.
    _storage: Option<tempfile::TempDir>,
}

impl Responder {
    pub async fn start(config_yaml: &str, dir: &Path) -> Responder {
        let path = dir.join("responder.yaml");
        std::fs::write(&path, config_yaml).expect("write config");
        let config = Config::load_with_env(&path, Default::default())
            .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        Self::start_with(config).await
    }

    pub async fn start_with(config: Config) -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        Self::start_on(config, listener).await
    }

    /// Starts on a given listener (tests that need a known port, e.g. for Alertmanager).
    pub async fn start_on(mut config: Config, listener: TcpListener) -> Responder {
        // Never the default `data/` in the working tree: each responder gets its own storage.
        let storage = (config.storage.path == Path::new("data")).then(|| {
            let d = tempfile::tempdir().expect("storage tempdir");
            config.storage.path = d.path().to_path_buf();
            d
        });
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(failover_responder::app::run(listener, config, async {
            let _ = rx.await;
        }));
        let r = Responder {
            url,
            stop: Some(tx),
            task: Some(task),
            client: reqwest::Client::new(),
            _storage: storage,
        };
        let ready = format!("{}/-/healthy", r.url);
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut r = r;
        loop {
            if r.client
                .get(&ready)
                .send()
                .await
                .is_ok_and(|resp| resp.status().is_success())
            {
                break;
            }
            // It stopped on its own: say why instead of timing out.
            if r.task.as_ref().is_some_and(|t| t.is_finished()) {
                let why = match r.task.take() {
                    Some(t) => format!("{:?}", t.await),
                    None => "unknown".into(),
                };
                panic!("the responder exited at start: {why}");
            }
            assert!(Instant::now() < deadline, "responder not ready after 15 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        r
    }

    pub async fn post_alerts(&self, body: &[u8]) -> reqwest::Response {
        self.client
            .post(format!("{}/api/v1/alerts", self.url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .expect("post alerts")
    }

    /// `POST /api/v1/plan` with a webhook body: the preview's JSON (asserting a 200).
    pub async fn plan_preview(&self, body: &[u8]) -> serde_json::Value {
        let resp = self
            .client
            .post(format!("{}/api/v1/plan", self.url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .expect("plan");
        assert_eq!(resp.status(), 200, "plan preview");
        resp.json().await.expect("plan json")
    }

    /// `GET <path>` (e.g. `/-/ready`): the status code and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    }

    /// `GET /api/v1/status`, typed.
    pub async fn status_doc(&self) -> failover_responder::http::api::StatusDoc {
        serde_json::from_value(self.status().await).expect("status deserializes into StatusDoc")
    }

    /// One service's part of the typed status.
    pub async fn service_view(&self, name: &str) -> failover_responder::http::api::ServiceView {
        let mut doc = self.status_doc().await;
        doc.services
            .remove(name)
            .unwrap_or_else(|| panic!("no service {name} in the status"))
    }

    pub async fn status(&self) -> serde_json::Value {
        self.client
            .get(format!("{}/api/v1/status", self.url))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("status json")
    }

    /// `GET /api/v1/events?{query}`, the events array.
    pub async fn events(&self, query: &str) -> Vec<serde_json::Value> {
        let v: serde_json::Value = self
            .client
            .get(format!("{}/api/v1/events?{query}", self.url))
            .send()
            .await
            .expect("events")
            .json()
            .await
            .expect("events json");
        v["events"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `n` more reconcile passes of service onprem-api have finished. The first
    /// may have started before this call; with `n >= 2` at least one whole pass ran after it.
    pub async fn passes(&self, n: usize) {
        for _ in 0..n {
            let before = self
                .service_view("onprem-api")
                .await
                .status
                .last_reconcile_at;
            eventually(
                "another reconcile pass",
                Duration::from_secs(30),
                || async {
                    let now = self
                        .service_view("onprem-api")
                        .await
                        .status
                        .last_reconcile_at;
                    (now != before).then_some(())
                },
            )
            .await;
        }
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The responder binary as a child process, for tests that kill -9 it.
pub struct ResponderProc {
    pub proc: Proc,
    pub url: String,
}

impl ResponderProc {
    /// Starts `failover-responder serve` with `config` on a fresh loopback port; `env` adds
    /// variables (e.g. a crash point). Waits until it answers /-/healthy.
    pub async fn start(config: &Path, storage: &Path, env: &[(&str, &str)]) -> ResponderProc {
        let port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(storage.with_extension("log"))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_failover-responder"));
        cmd.args(["serve", "--config.file"])
            .arg(config)
            .arg("--storage.path")
            .arg(storage)
            .args(["--web.listen-address", &format!("127.0.0.1:{port}")])
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn responder");
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("{url}/-/healthy");
        let mut p = ResponderProc {
            proc: Proc {
                child,
                name: "responder".into(),
            },
            url,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return p;
            }
            if let Ok(Some(status)) = p.proc.child.try_wait() {
                panic!(
                    "responder exited at start: {status}; log: {}",
                    storage.with_extension("log").display()
                );
            }
            assert!(Instant::now() < deadline, "responder not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        self.proc.kill();
    }

    /// Waits for the process to exit by itself (a crash point); returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "responder did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn post_alerts(&self, body: &[u8]) -> Option<u16> {
        reqwest::Client::new()
            .post(format!("{}/api/v1/alerts", self.url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    pub async fn status(&self) -> Option<serde_json::Value> {
        reqwest::get(format!("{}/api/v1/status", self.url))
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
}

/// A notification body for service onprem-api: `onprem_down` with the given start, firing
/// (`ends` None) or resolved.
pub fn down_body(
    starts: chrono::DateTime<chrono::Utc>,
    ends: Option<chrono::DateTime<chrono::Utc>>,
) -> Vec<u8> {
    alert_body("onprem_down", "0123456789abcdef", starts, ends)
}

/// A notification body with one alert `alertname` for service onprem-api, firing (`ends`
/// None) or resolved.
pub fn alert_body(
    alertname: &str,
    fingerprint: &str,
    starts: chrono::DateTime<chrono::Utc>,
    ends: Option<chrono::DateTime<chrono::Utc>>,
) -> Vec<u8> {
    let status = if ends.is_some() { "resolved" } else { "firing" };
    let ends = ends.map_or("0001-01-01T00:00:00Z".to_string(), |e| e.to_rfc3339());
    serde_json::json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{alertname}\", service=\"onprem-api\"}}"),
        "status": status, "receiver": "responder", "truncatedAlerts": 0,
        "groupLabels": {"alertname": alertname, "service": "onprem-api"},
        "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
        "alerts": [{
            "status": status,
            "labels": {"alertname": alertname, "service": "onprem-api", "instance": "127.0.0.1:5000"},
            "annotations": {}, "startsAt": starts.to_rfc3339(), "endsAt": ends,
            "generatorURL": "", "fingerprint": fingerprint
        }]
    })
    .to_string()
    .into_bytes()
}

/// The body of a 2xx answer from `url`, trimmed; None for anything else.
pub async fn get_text(url: &str) -> Option<String> {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let r = c.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok().map(|t| t.trim().to_string())
}

/// Value of one metric line (exact label set), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Every real component present, or a loud skip (a failure under CI).
pub fn require_world() -> bool {
    require("haproxy (Debian package haproxy)", have_binary("haproxy"))
        && require(
            "/bin/busybox (Debian package busybox-static)",
            Path::new("/bin/busybox").exists(),
        )
        && require("curl (Debian package curl)", have_binary("curl"))
        && require("the Docker engine at /var/run/docker.sock", have_docker())
}

pub const IMAGE: &str = "fr-test-api:latest";

/// The real world of one test: an on-prem busybox API, a real HAProxy in front of it with a
/// `backup disabled` cloud server, the Docker engine, and a container name of its own.
pub struct World {
    pub dir: tempfile::TempDir,
    pub onprem: Proc,
    onprem_port: u16,
    pub haproxy: Haproxy,
    pub docker: bollard::Docker,
    pub container: String,
    pub cloud_port: u16,
    pub token: PathBuf,
    _guard: ContainerGuard,
}

impl World {
    /// None (after a loud skip) when a component is missing.
    pub async fn start(test: &str) -> Option<World> {
        if !require_world() {
            return None;
        }
        ensure_image(IMAGE, "cloud");
        let dir = tempfile::tempdir().expect("tempdir");
        let onprem_port = free_port();
        let cloud_port = free_port();
        let onprem = start_httpd(dir.path(), onprem_port, "onprem");
        let haproxy = Haproxy::start(dir.path(), onprem_port, cloud_port).await;
        let container = format!("fr-test-{test}-{}", std::process::id());
        // A leftover from an aborted run would make the test meaningless.
        drop(ContainerGuard(container.clone()));
        let token = token_file(dir.path());
        Some(World {
            onprem,
            onprem_port,
            haproxy,
            docker: docker().await,
            container: container.clone(),
            cloud_port,
            token,
            dir,
            _guard: ContainerGuard(container),
        })
    }

    /// Responder config for service onprem-api on this world. `top` and `service` are extra
    /// YAML lines at the top level and inside the service (indented by 4).
    pub fn config(&self, top: &str, service: &str) -> String {
        format!(
            r#"
auth: {{bearer_token_file: {token}}}
reconcile: {{interval: 1s, retry_initial: 200ms, retry_max: 2s}}
{top}
services:
  onprem-api:
    failover_on: ['alertname="onprem_down"', 'service="onprem-api"']
    failback_on: ['alertname="onprem_recovered"', 'service="onprem-api"']
    docker:
      host: unix://{DOCKER_SOCK}
      containers:
        - name: {container}
          image: {IMAGE}
          ports: ['127.0.0.1:{port}:8080']
          health_url: http://127.0.0.1:{port}/health
    haproxy:
      runtime_api: ['unix:{sock}']
      backend: api
      cloud_servers: [cloud1]
    timeouts: {{healthy: 30s, drain: 2s, stop: 1s}}
{service}
"#,
            token = self.token.display(),
            container = self.container,
            port = self.cloud_port,
            sock = self.haproxy.socket.display(),
        )
    }

    /// Writes a config file and returns its path.
    pub fn config_file(&self, top: &str, service: &str) -> PathBuf {
        let p = self.dir.path().join("responder.yaml");
        std::fs::write(&p, self.config(top, service)).expect("write config");
        p
    }

    /// The port of the on-prem API behind HAProxy.
    pub fn haproxy_onprem_port(&self) -> u16 {
        self.onprem_port
    }

    /// Starts the on-prem API again after `onprem.kill()`.
    pub fn restart_onprem(&mut self) {
        self.onprem = start_httpd(self.dir.path(), self.onprem_port, "onprem");
    }

    /// Cloud server ready in HAProxy (no maint or drain flag).
    pub async fn cloud_open(&self) -> bool {
        self.haproxy.admin_flags("cloud1").await & 0x3b == 0
    }

    pub async fn container_running(&self) -> Option<bool> {
        container_running(&self.docker, &self.container).await
    }

    /// The world is fully in `mode`: cloud = container running and server open;
    /// onprem = server in maint and container not running.
    pub async fn is(&self, mode: &str) -> bool {
        let open = self.cloud_open().await;
        let running = self.container_running().await == Some(true);
        match mode {
            "cloud" => open && running,
            _ => !open && !running,
        }
    }

    /// The safety invariant: never a server open in front of a stopped container. Cheap enough
    /// to call on every poll while the responder works.
    ///
    /// The two looks are not atomic: a failback may close the server and stop the container
    /// between them (maint, then stop, is the right order). So "open, then not running" is a
    /// violation only if the server is still open on a third look; a real one (the server left
    /// open after the container stopped) lasts until the responder repairs it, far longer.
    pub async fn assert_safe(&self, when: &str) {
        if !self.cloud_open().await {
            return;
        }
        let running = self.container_running().await;
        if running == Some(true) {
            return;
        }
        assert!(
            !self.cloud_open().await,
            "{when}: cloud1 open in front of a container that is not running ({running:?})"
        );
    }
}

/// Writes the bearer token file the test configs point at.
pub fn token_file(dir: &Path) -> PathBuf {
    let p = dir.join("token");
    std::fs::write(&p, format!("{TOKEN}\n")).expect("write token");
    p
}

/// Parses a config string, for tests that need a `Config` without files.
pub fn parse_config(yaml: &str) -> Config {
    Config::from_str(yaml, Format::Yaml).unwrap_or_else(|e| panic!("{e}"))
}
