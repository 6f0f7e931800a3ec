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

use failover_responder::config::Config;
pub use failover_responder::desired::Mode;
pub use failover_responder::http::api::{ServiceView, StatusDoc};
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

/// What one look of [`eventually`] found: done, with a value, or not yet, with what it saw.
pub trait Look {
    type Done;
    /// `Err` carries what the look saw ("" when it has nothing to say), for the timeout panic.
    fn done(self) -> Result<Self::Done, String>;
}

impl<T> Look for Option<T> {
    type Done = T;
    fn done(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T, E: std::fmt::Debug> Look for Result<T, E> {
    type Done = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|seen| format!("{seen:#?}"))
    }
}

/// A look's outcome: `Ok(seen)` when `done`, else `Err(seen)` (shown if the wait times out).
pub fn done_if<T>(done: bool, seen: T) -> Result<T, T> {
    if done {
        Ok(seen)
    } else {
        Err(seen)
    }
}

/// The one wait of the tests: looks with `f` every 50 ms until it is done (`Some`, or `Ok`),
/// and returns its value; after `timeout` panics with `what` and the last `Err` it saw.
pub async fn eventually<L, F, Fut>(what: &str, timeout: Duration, mut f: F) -> L::Done
where
    L: Look,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = L>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match f().await.done() {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if Instant::now() > deadline {
            let seen = if seen.is_empty() {
                seen
            } else {
                format!("\nlast seen: {seen}")
            };
            panic!("timed out after {timeout:?} waiting for: {what}{seen}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `kill <sig> <pid>` (sig as `-HUP`), asserting it was delivered.
pub fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success());
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
/// until the responder points one at a unit and opens it), an admin socket, and HAProxy's
/// built-in Prometheus exporter on `exporter_port` (`/metrics`).
pub struct Haproxy {
    pub proc: Proc,
    pub socket: PathBuf,
    /// A second Runtime API at `level operator` (it may not `set server`).
    pub operator_socket: PathBuf,
    pub frontend_port: u16,
    pub exporter_port: u16,
    pub config: PathBuf,
}

impl Haproxy {
    pub async fn start(dir: &Path, onprem_port: u16, cloud_port: u16) -> Haproxy {
        let socket = dir.join("admin.sock");
        let operator_socket = dir.join("operator.sock");
        let frontend_port = free_port();
        let exporter_port = free_port();
        let config = dir.join("haproxy.cfg");
        let cfg = format!(
            "global\n  stats socket {sock} mode 600 level admin\n  \
             stats socket {op} mode 600 level operator\n  stats timeout 10s\n\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n  \
             retries 1\n  option redispatch\n\n\
             frontend fe\n  bind 127.0.0.1:{frontend_port}\n  default_backend api\n\n\
             frontend prometheus\n  bind 127.0.0.1:{exporter_port}\n  \
             http-request use-service prometheus-exporter if {{ path /metrics }}\n\n\
             backend api\n  option httpchk GET /health\n  default-server inter 200ms fall 2 rise 1\n  \
             server onprem 127.0.0.1:{onprem_port} check\n  \
             server cloud1 127.0.0.1:{cloud_port} check backup disabled\n  \
             server-template burst 1-4 127.0.0.1:9 check disabled\n",
            sock = socket.display(),
            op = operator_socket.display()
        );
        std::fs::write(&config, cfg).expect("write haproxy.cfg");
        let child = spawn_haproxy(&config);
        let h = Haproxy {
            proc: Proc {
                child,
                name: "haproxy".into(),
            },
            socket,
            operator_socket,
            frontend_port,
            exporter_port,
            config,
        };
        h.wait_answering().await;
        h
    }

    /// Restarts HAProxy from its config: all runtime state is lost.
    pub async fn restart(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.operator_socket);
        let child = spawn_haproxy(&self.config);
        self.proc.child = child;
        self.wait_answering().await;
    }

    /// Reloads HAProxy seamlessly, as `systemctl reload` does: a new process from the config
    /// takes over the sockets (`-sf <old pid>`) while the old one finishes what it holds.
    /// Returns once the new process answers on the admin socket, with the old process, which
    /// lives on as long as a connection holds it (killed when dropped).
    #[must_use = "dropping the old process kills it, unlike a real reload"]
    pub async fn reload(&mut self) -> Proc {
        let old = self.proc.child.id();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&self.config)
            .arg("-sf")
            .arg(old.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let pid = format!("Pid: {}", child.id());
        let old = std::mem::replace(
            &mut self.proc,
            Proc {
                child,
                name: "haproxy".into(),
            },
        );
        let sock = self.socket.clone();
        eventually(
            "the reloaded haproxy answers",
            Duration::from_secs(10),
            || {
                let (sock, pid) = (sock.clone(), pid.clone());
                async move {
                    runtime_cmd(&sock, "show info")
                        .await
                        .ok()
                        .filter(|o| o.lines().any(|l| l == pid))
                }
            },
        )
        .await;
        old
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
        self.servers(&["srv_name", column])
            .await
            .into_iter()
            .find(|row| row[0] == server)
            .map(|mut row| row.remove(1))
            .unwrap_or_else(|| panic!("server {server} not in backend api"))
    }

    /// The `columns` of every server of backend `api` (`show servers state api`), in order.
    pub async fn servers(&self, columns: &[&str]) -> Vec<Vec<String>> {
        let out = self.cmd("show servers state api").await;
        let header: Vec<&str> = out
            .lines()
            .find_map(|l| l.strip_prefix("# "))
            .expect("header")
            .split_whitespace()
            .collect();
        let cols: Vec<usize> = columns
            .iter()
            .map(|c| {
                header
                    .iter()
                    .position(|h| h == c)
                    .unwrap_or_else(|| panic!("no column {c} in:\n{out}"))
            })
            .collect();
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() == header.len())
            .map(|f| cols.iter().map(|&i| f[i].to_string()).collect())
            .collect()
    }

    /// `set server api/<server> addr 127.0.0.1 port <port>`: where HAProxy sends the server's
    /// traffic and its health check. HAProxy's answer.
    pub async fn set_addr(&self, server: &str, port: u16) -> String {
        self.cmd(&format!(
            "set server api/{server} addr 127.0.0.1 port {port}"
        ))
        .await
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
        Self::start_with(load_config(config_yaml, dir)).await
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
        // Until it answers, or stops on its own: then say why instead of timing out.
        let ready = format!("{url}/-/healthy");
        eventually(
            "the responder answers /-/healthy",
            Duration::from_secs(15),
            || async { (task.is_finished() || get_text(&ready).await.is_some()).then_some(()) },
        )
        .await;
        if task.is_finished() {
            panic!("the responder exited at start: {:?}", task.await);
        }
        Responder {
            url,
            stop: Some(tx),
            task: Some(task),
            client: reqwest::Client::new(),
            _storage: storage,
        }
    }

    /// `POST {path}` with no body, with `token` as bearer credentials if given: the status and
    /// the JSON answer (Null when it is not JSON).
    pub async fn post(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut req = self.client.post(format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("post");
        let code = resp.status().as_u16();
        (code, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Posts the fixture `name` (tests/fixtures) to the webhook: the HTTP status.
    pub async fn post_fixture(&self, name: &str) -> u16 {
        self.post_alerts(&fixture(name)).await.status().as_u16()
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

    /// `POST /api/v1/plan` with a webhook body (asserting a 200): the preview for service
    /// onprem-api, as JSON (the lib has no type for the preview).
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
        let mut preview: serde_json::Value = resp.json().await.expect("plan json");
        preview["services"]["onprem-api"].take()
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
    pub async fn status_doc(&self) -> StatusDoc {
        serde_json::from_value(self.status().await).expect("status deserializes into StatusDoc")
    }

    /// One service's part of the typed status.
    pub async fn service_view(&self, name: &str) -> ServiceView {
        service_of(self.status_doc().await, name)
    }

    /// `GET /api/v1/status` as raw JSON (benches/reaction.rs reads it so); tests read it typed.
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

    /// The messages of service onprem-api's events of `kind`, oldest first.
    pub async fn event_messages(&self, kind: &str) -> Vec<String> {
        self.events("service=onprem-api")
            .await
            .iter()
            .filter(|e| e["kind"] == kind)
            .filter_map(|e| e["message"].as_str().map(String::from))
            .collect()
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
        // A Proc at once: killed if it never answers.
        let mut proc = Proc {
            child: cmd.spawn().expect("spawn responder"),
            name: "responder".into(),
        };
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("{url}/-/healthy");
        let log = storage.with_extension("log");
        eventually(
            "the responder answers /-/healthy",
            Duration::from_secs(15),
            || {
                let exited = proc.child.try_wait().ok().flatten();
                let (ready, log) = (&ready, &log);
                async move {
                    if let Some(status) = exited {
                        panic!(
                            "responder exited at start: {status}; log: {}",
                            log.display()
                        );
                    }
                    get_text(ready).await
                }
            },
        )
        .await;
        ResponderProc { proc, url }
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        self.proc.kill();
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

    /// `GET /api/v1/status`, typed; None while it does not answer.
    pub async fn status_doc(&self) -> Option<StatusDoc> {
        let resp = reqwest::get(format!("{}/api/v1/status", self.url))
            .await
            .ok()?;
        Some(
            resp.json()
                .await
                .expect("status deserializes into StatusDoc"),
        )
    }

    /// One service's part of the typed status (it must answer).
    pub async fn service_view(&self, name: &str) -> ServiceView {
        service_of(self.status_doc().await.expect("status"), name)
    }
}

/// Service `name` of a status document.
fn service_of(mut doc: StatusDoc, name: &str) -> ServiceView {
    doc.services
        .remove(name)
        .unwrap_or_else(|| panic!("no service {name} in the status: {doc:#?}"))
}

/// Shorthands for what the tests read of a service's status.
pub trait ViewExt {
    /// The mode it is driven towards, as persisted; None until the first pass persisted one.
    fn mode(&self) -> Option<Mode>;
    /// The mode the alerts (and any override) want now; None before the first pass.
    fn desired_mode(&self) -> Option<Mode>;
    /// The actions of its last steps, oldest first.
    fn actions(&self) -> Vec<String>;
}

impl ViewExt for ServiceView {
    fn mode(&self) -> Option<Mode> {
        self.state.as_ref().map(|s| s.mode)
    }
    fn desired_mode(&self) -> Option<Mode> {
        self.status.desired.as_ref().map(|d| d.mode)
    }
    fn actions(&self) -> Vec<String> {
        self.status
            .last_steps
            .iter()
            .map(|s| s.action.clone())
            .collect()
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

/// Prometheus and Alertmanager, both present, or a loud skip (a failure under CI).
pub fn require_alert_stack() -> bool {
    require(
        "prometheus (Debian package prometheus)",
        have_binary("prometheus"),
    ) && require(
        "prometheus-alertmanager (Debian package prometheus-alertmanager)",
        have_binary("prometheus-alertmanager"),
    )
}

/// A real Prometheus and Alertmanager on loopback, as the demo runs them: Prometheus scrapes
/// the on-prem API every second with `rule_files` and alerts the Alertmanager, which posts to
/// the responder's webhook with its bearer token (group_wait 0s).
pub struct AlertStack {
    _alertmanager: Proc,
    _prometheus: Proc,
    pub prometheus_port: u16,
    pub alertmanager_port: u16,
}

impl AlertStack {
    /// Starts both in `dir` (with the on-prem API's metrics page, served by [`start_httpd`] from
    /// there) and waits until they are ready. `responder_port` need not answer
    /// yet (Alertmanager retries).
    pub async fn start(
        dir: &Path,
        onprem_port: u16,
        responder_port: u16,
        token: &Path,
        rule_files: &str,
    ) -> AlertStack {
        Self::start_scraping(dir, onprem_port, responder_port, token, rule_files, "").await
    }

    /// [`AlertStack::start`] with more `scrape_configs` entries (YAML list items, indented by
    /// two spaces), as the bursting rules need: HAProxy's exporter and the responder.
    pub async fn start_scraping(
        dir: &Path,
        onprem_port: u16,
        responder_port: u16,
        token: &Path,
        rule_files: &str,
        scrape: &str,
    ) -> AlertStack {
        let (am_port, prom_port) = (free_port(), free_port());
        // What Prometheus scrapes: the on-prem API's /metrics (start_httpd serves www-<port>).
        std::fs::write(
            dir.join(format!("www-{onprem_port}/metrics")),
            "onprem_api_info 1\n",
        )
        .expect("metrics page");
        std::fs::write(
            dir.join("am.yml"),
            format!(
                "route: {{receiver: responder, group_by: [alertname, service], group_wait: 0s, group_interval: 1s, repeat_interval: 1m}}\n\
                 receivers:\n  - name: responder\n    webhook_configs:\n      - url: http://127.0.0.1:{responder_port}/api/v1/alerts\n        send_resolved: true\n        \
                 http_config: {{authorization: {{type: Bearer, credentials_file: {}}}}}\n",
                token.display()
            ),
        )
        .expect("am.yml");
        let alertmanager = spawn_quiet(
            "prometheus-alertmanager",
            &[
                format!("--config.file={}/am.yml", dir.display()),
                format!("--storage.path={}/am", dir.display()),
                format!("--web.listen-address=127.0.0.1:{am_port}"),
                "--cluster.listen-address=".into(),
            ],
        );
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 900ms}}\n\
                 rule_files: ['{rule_files}']\n\
                 alerting: {{alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{am_port}']}}]}}]}}\n\
                 scrape_configs:\n  - job_name: onprem-api\n    \
                 static_configs: [{{targets: ['127.0.0.1:{onprem_port}'], labels: {{service: onprem-api}}}}]\n{scrape}"
            ),
        )
        .expect("prometheus.yml");
        let prometheus = spawn_quiet(
            "prometheus",
            &[
                format!("--config.file={}/prometheus.yml", dir.display()),
                format!("--storage.tsdb.path={}/prom", dir.display()),
                format!("--web.listen-address=127.0.0.1:{prom_port}"),
            ],
        );
        for (what, port) in [("alertmanager", am_port), ("prometheus", prom_port)] {
            let url = format!("http://127.0.0.1:{port}/-/ready");
            eventually(&format!("{what} ready"), Duration::from_secs(30), || {
                get_text(&url)
            })
            .await;
        }
        AlertStack {
            _alertmanager: alertmanager,
            _prometheus: prometheus,
            prometheus_port: prom_port,
            alertmanager_port: am_port,
        }
    }

    /// The value of an instant query's first sample, if any.
    pub async fn query(&self, expr: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.prometheus_port);
        let v: serde_json::Value = reqwest::Client::new()
            .get(&url)
            .query(&[("query", expr)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until Prometheus has scraped the on-prem API up, so that an outage is a real
    /// transition for the rules (no series at all is deliberately not "down").
    pub async fn onprem_up_seen(&self) {
        let q = format!(
            "http://127.0.0.1:{}/api/v1/query?query=up%7Bjob%3D%22onprem-api%22%7D",
            self.prometheus_port
        );
        eventually(
            "prometheus sees on-prem up",
            Duration::from_secs(30),
            || async {
                let v: serde_json::Value = reqwest::get(&q).await.ok()?.json().await.ok()?;
                (v["data"]["result"][0]["value"][1] == "1").then_some(())
            },
        )
        .await;
    }
}

/// Spawns `cmd` with its output discarded, killed on drop.
pub fn spawn_quiet(cmd: &str, args: &[String]) -> Proc {
    let child = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    Proc {
        child,
        name: cmd.into(),
    }
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

    /// The config of service onprem-api on this world: its container behind cloud1.
    pub fn configure(&self) -> ConfigBuilder {
        ConfigBuilder::new(&self.token)
            .reconcile("1s", "200ms", "2s")
            .docker_host(&format!("unix://{DOCKER_SOCK}"))
            .container(&self.container, IMAGE)
            .published(self.cloud_port)
            .haproxy(&self.haproxy.socket)
            .timeouts("30s", "2s", "1s")
    }

    /// [`Self::configure`] as YAML, with `top` and `service` added: YAML lines at the top level
    /// and inside the service (indented by 4). For benches/reaction.rs; tests use the builder.
    pub fn config(&self, top: &str, service: &str) -> String {
        let service: Vec<&str> = service
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .collect();
        self.configure().top(top).key(&service.join("\n")).yaml()
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

    /// Waits until `r` has service onprem-api in `mode` and converged, and the world is in
    /// `mode` too ([`Self::is`]); returns the service's status.
    pub async fn settled(&self, r: &Responder, mode: Mode, timeout: Duration) -> ServiceView {
        eventually(&format!("settled in {mode:?}"), timeout, || async {
            let svc = r.service_view("onprem-api").await;
            let done = svc.mode() == Some(mode) && svc.status.converged;
            done_if(done && self.is(mode.as_str()).await, svc)
        })
        .await
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

/// The responder config the tests share, written out as YAML: auth by the bearer token file,
/// and service onprem-api failing over on `onprem_down` and back on `onprem_recovered`. Each part
/// the tests vary is a method; service methods apply to the last service ([`Self::service`] adds
/// one, on the same alerts), container methods to its last container. A key set again replaces
/// its earlier value. [`World::configure`] starts one on the world's Docker engine and HAProxy.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    /// Keys under `auth:`, then top-level keys: each `key: value`, the value on one line or
    /// as an indented block below it.
    auth: Vec<String>,
    top: Vec<String>,
    services: Vec<ServiceYaml>,
}

#[derive(Debug, Clone)]
struct ServiceYaml {
    name: String,
    docker_host: Option<String>,
    /// Each container's keys, name first.
    containers: Vec<Vec<String>>,
    keys: Vec<String>,
}

/// Sets `line` (`key: value`) in `keys`, in place of that key's earlier value.
fn set_key(keys: &mut Vec<String>, line: String) {
    let key = |l: &str| l.split(':').next().unwrap_or_default().to_string();
    let name = key(&line);
    keys.retain(|k| key(k) != name);
    keys.push(line);
}

/// `text` with every line indented by `by` spaces.
fn indented(text: &str, by: usize) -> String {
    text.lines().map(|l| format!("{:by$}{l}\n", "")).collect()
}

impl ConfigBuilder {
    pub fn new(token: &Path) -> Self {
        ConfigBuilder {
            auth: vec![format!("bearer_token_file: {}", token.display())],
            top: Vec::new(),
            services: Vec::new(),
        }
        .service("onprem-api")
    }

    /// Another key under `auth:` (basic_auth, max_failures_per_minute).
    pub fn auth(mut self, line: &str) -> Self {
        set_key(&mut self.auth, line.into());
        self
    }

    /// A top-level key (webhook, tls...).
    pub fn top(mut self, line: &str) -> Self {
        set_key(&mut self.top, line.into());
        self
    }

    pub fn storage(self, path: &Path) -> Self {
        self.top(&format!("storage: {{path: {}}}", path.display()))
    }

    pub fn reconcile(self, interval: &str, retry_initial: &str, retry_max: &str) -> Self {
        self.top(&format!(
            "reconcile: {{interval: {interval}, retry_initial: {retry_initial}, retry_max: {retry_max}}}"
        ))
    }

    /// Resync from the Alertmanager on `port`; `keys` adds to its flow map.
    pub fn alertmanager(self, port: u16, keys: &str) -> Self {
        self.top(&format!(
            "alertmanager: {{url: 'http://127.0.0.1:{port}', {keys}}}"
        ))
    }

    /// Another service, on the same alerts; the methods below then apply to it.
    pub fn service(mut self, name: &str) -> Self {
        self.services.push(ServiceYaml {
            name: name.into(),
            docker_host: None,
            containers: Vec::new(),
            keys: Vec::new(),
        });
        self
    }

    fn last(&mut self) -> &mut ServiceYaml {
        self.services.last_mut().expect("a service")
    }

    /// A key of the service (`standby: warm`, `ec2: {...}`, a block on several lines).
    pub fn key(mut self, line: &str) -> Self {
        set_key(&mut self.last().keys, line.into());
        self
    }

    pub fn hold_down(self, d: &str) -> Self {
        self.key(&format!("hold_down: {d}"))
    }

    pub fn timeouts(self, healthy: &str, drain: &str, stop: &str) -> Self {
        self.key(&format!(
            "timeouts: {{healthy: {healthy}, drain: {drain}, stop: {stop}}}"
        ))
    }

    /// The service's HAProxy: cloud1 of backend `api` behind the admin socket `socket`.
    pub fn haproxy(self, socket: &Path) -> Self {
        self.key(&format!(
            "haproxy: {{runtime_api: ['unix:{}'], backend: api, cloud_servers: [cloud1]}}",
            socket.display()
        ))
    }

    /// `docker.host` (written out with the containers).
    pub fn docker_host(mut self, host: &str) -> Self {
        self.last().docker_host = Some(host.into());
        self
    }

    pub fn container(mut self, name: &str, image: &str) -> Self {
        let keys = vec![format!("name: {name}"), format!("image: {image}")];
        self.last().containers.push(keys);
        self
    }

    /// A key of the last container (`recreate: always`, another `image:` or `health_url:`).
    pub fn container_key(mut self, line: &str) -> Self {
        let c = self.last().containers.last_mut().expect("a container");
        set_key(c, line.into());
        self
    }

    /// The last container's 8080 published on 127.0.0.1:`port`, its health checked there.
    pub fn published(self, port: u16) -> Self {
        self.container_key(&format!("ports: ['127.0.0.1:{port}:8080']"))
            .container_key(&format!("health_url: http://127.0.0.1:{port}/health"))
    }

    /// A `burst:` block on `onprem_overloaded`: from 1 unit up to `max`, one at a time, at
    /// `timing` (scale_up_every, cooldown, scale_in_every), slot `i` pointing at port
    /// `port_base + i - 1`; `keys` adds its `haproxy:` and its unit (`container:` or `ec2:`).
    pub fn burst(self, max: u32, timing: [&str; 3], port_base: u16, keys: &str) -> Self {
        let [up, cooldown, down] = timing;
        self.key(&format!(
            "burst:\n  on: ['alertname=\"onprem_overloaded\"', 'service=\"onprem-api\"']\n  \
             min: 1\n  max: {max}\n  step: 1\n  \
             scale_up_every: {up}\n  cooldown: {cooldown}\n  scale_in_every: {down}\n  \
             address: '127.0.0.1:{{port}}'\n  port_base: {port_base}\n{}",
            indented(keys, 2)
        ))
    }

    pub fn yaml(&self) -> String {
        let mut y = format!("auth:\n{}", indented(&self.auth.join("\n"), 2));
        y += &indented(&self.top.join("\n"), 0);
        y += "services:\n";
        for s in &self.services {
            y += &format!(
                "  {}:\n    failover_on: ['alertname=\"onprem_down\"', 'service=\"onprem-api\"']\n    \
                 failback_on: ['alertname=\"onprem_recovered\"', 'service=\"onprem-api\"']\n",
                s.name
            );
            if !s.containers.is_empty() {
                y += "    docker:\n";
                if let Some(host) = &s.docker_host {
                    y += &format!("      host: {host}\n");
                }
                y += "      containers:\n";
                for c in &s.containers {
                    y += &format!("        - {}", indented(&c.join("\n"), 10).trim_start());
                }
            }
            y += &indented(&s.keys.join("\n"), 4);
        }
        y
    }

    /// Writes the YAML to `dir`/responder.yaml and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        write_config(&self.yaml(), dir)
    }

    /// The config as the binary loads it (secret files read), from `dir`/responder.yaml.
    pub fn load(&self, dir: &Path) -> Config {
        load_config(&self.yaml(), dir)
    }
}

fn write_config(yaml: &str, dir: &Path) -> PathBuf {
    let p = dir.join("responder.yaml");
    std::fs::write(&p, yaml).expect("write config");
    p
}

/// `yaml` written to `dir`/responder.yaml and loaded as the binary loads it.
fn load_config(yaml: &str, dir: &Path) -> Config {
    Config::load_with_env(&write_config(yaml, dir), Default::default())
        .unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"))
}

/// etcd members on loopback (Debian's etcd-server), each with its own data dir under `dir`;
/// `start` returns once every member says it is healthy.
pub struct Etcd {
    members: Vec<Option<Proc>>,
    pub client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
    dir: std::path::PathBuf,
    /// Set: clients reach etcd over TLS only, with a certificate this PKI signed.
    pub tls: Option<EtcdPki>,
}

/// A CA, etcd's server certificate for 127.0.0.1 and a client certificate, all signed by that
/// CA (rcgen), as PEM files in one folder.
pub struct EtcdPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdPki {
    pub fn generate(dir: &Path) -> EtcdPki {
        use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
        std::fs::create_dir_all(dir).expect("pki dir");
        let write = |name: &str, pem: String| {
            let p = dir.join(name);
            std::fs::write(&p, pem).expect("write pem");
            p
        };
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("leaf key");
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.extended_key_usages = vec![usage];
            let cert = params
                .signed_by(&key, &ca_cert, &ca_key)
                .expect("leaf cert");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            vec!["responder".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        EtcdPki {
            ca: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server-key.pem", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client-key.pem", client_key),
        }
    }
}

impl Etcd {
    pub async fn start(dir: &Path, n: usize) -> Etcd {
        Self::start_with(dir, n, None).await
    }

    /// `n` members that serve clients over TLS only and require a client certificate signed
    /// by `pki`'s CA (`--client-cert-auth`).
    pub async fn start_tls(dir: &Path, n: usize, pki: EtcdPki) -> Etcd {
        Self::start_with(dir, n, Some(pki)).await
    }

    async fn start_with(dir: &Path, n: usize, tls: Option<EtcdPki>) -> Etcd {
        let mut e = Etcd {
            members: Vec::new(),
            client_ports: (0..n).map(|_| free_port()).collect(),
            peer_ports: (0..n).map(|_| free_port()).collect(),
            dir: dir.join("etcd"),
            tls,
        };
        for i in 0..n {
            let p = e.spawn(i);
            e.members.push(Some(p));
        }
        for i in 0..n {
            e.wait_healthy(i).await;
        }
        e
    }

    fn spawn(&self, i: usize) -> Proc {
        let cluster: Vec<String> = self
            .peer_ports
            .iter()
            .enumerate()
            .map(|(j, p)| format!("e{j}=http://127.0.0.1:{p}"))
            .collect();
        let (client, peer) = (self.client_ports[i], self.peer_ports[i]);
        let scheme = self.scheme();
        let log =
            std::fs::File::create(self.dir.with_extension(format!("{i}.log"))).expect("etcd log");
        let mut etcd = Command::new("etcd");
        if let Some(pki) = &self.tls {
            etcd.arg("--cert-file")
                .arg(&pki.server_cert)
                .arg("--key-file")
                .arg(&pki.server_key)
                .arg("--trusted-ca-file")
                .arg(&pki.ca)
                .arg("--client-cert-auth");
        }
        let child = etcd
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("e{i}")))
            .args([
                "--listen-client-urls",
                &format!("{scheme}://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("{scheme}://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "fr-test"])
            // Quick elections, yet steady on a loaded 2-core machine.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        Proc {
            child,
            name: format!("etcd e{i}"),
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    async fn wait_healthy(&self, i: usize) {
        let url = format!(
            "{}://127.0.0.1:{}/health",
            self.scheme(),
            self.client_ports[i]
        );
        let mut client = reqwest::Client::builder().timeout(Duration::from_secs(2));
        if let Some(pki) = &self.tls {
            let read = |p: &PathBuf| std::fs::read(p).expect("read pem");
            let mut identity = read(&pki.client_cert);
            identity.extend(read(&pki.client_key));
            client = client
                .add_root_certificate(
                    reqwest::Certificate::from_pem(&read(&pki.ca)).expect("ca pem"),
                )
                .identity(reqwest::Identity::from_pem(&identity).expect("client identity"));
        }
        let client = client.build().expect("health client");
        eventually(
            &format!("etcd e{i} healthy"),
            Duration::from_secs(20),
            || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let body = client.get(&url).send().await.ok()?.text().await.ok()?;
                    body.contains("\"true\"").then_some(())
                }
            },
        )
        .await;
    }

    pub fn stop(&mut self, i: usize) {
        self.members[i] = None;
    }

    pub fn restart(&mut self, i: usize) {
        self.members[i] = Some(self.spawn(i));
    }

    pub fn endpoints(&self) -> String {
        let urls: Vec<String> = self
            .client_ports
            .iter()
            .map(|p| format!("'{}://127.0.0.1:{p}'", self.scheme()))
            .collect();
        format!("[{}]", urls.join(", "))
    }
}

/// The crash points of a failover and of a failback, in the order the steps run (the
/// `FAILOVER_RESPONDER_CRASH_BEFORE` values the crash tests use).
pub const FAILOVER_STEPS: [&str; 3] = ["start_container", "wait_healthy", "server_ready"];
pub const FAILBACK_STEPS: [&str; 4] = [
    "server_drain",
    "wait_drained",
    "server_maint",
    "stop_container",
];

/// The `p` quantile (0..=1) of `sorted`, nearest rank, for the benchmarks' figures. `sorted`
/// must not be empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Steady requests to one URL, one every `every`, each answer's body kept ("" for a request
/// that failed): what users of the service saw while something happened.
pub struct Traffic {
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    pub fn start(url: String, every: Duration) -> Traffic {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let kept = log.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("client");
            loop {
                let body = match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
                    _ => String::new(),
                };
                kept.lock()
                    .expect("traffic log")
                    .push(body.trim().to_string());
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(every) => {}
                }
            }
        });
        Traffic { log, stop, task }
    }

    /// How many answers (or failures) so far.
    pub fn answers(&self) -> usize {
        self.log.lock().expect("traffic log").len()
    }

    /// Stops and returns every answer's body, in order.
    pub async fn stop(self) -> Vec<String> {
        self.stop.send_replace(true);
        let _ = self.task.await;
        let log = self.log.lock().expect("traffic log");
        log.clone()
    }
}

/// The Docker engine's events from `since` (Unix s) until now: each action (`create`,
/// `start`, `die`, `pull`...) with its actor's attributes (name, labels, image).
pub async fn docker_events(
    docker: &bollard::Docker,
    since: i64,
) -> Vec<(String, std::collections::HashMap<String, String>)> {
    use futures_util::StreamExt;
    let until = chrono::Utc::now().timestamp() + 1;
    let opts = bollard::query_parameters::EventsOptions {
        since: Some(since.to_string()),
        until: Some(until.to_string()),
        ..Default::default()
    };
    let mut stream = docker.events(Some(opts));
    let mut out = Vec::new();
    while let Some(Ok(e)) = stream.next().await {
        let actor = e.actor.and_then(|a| a.attributes).unwrap_or_default();
        out.push((e.action.unwrap_or_default(), actor));
    }
    out
}
