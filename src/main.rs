//! The `failover-responder` binary: `serve` and `check-config`. anyhow lives only here.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use failover_responder::config::Config;

/// mimalloc instead of glibc malloc: malloc, free and malloc_consolidate were about 16 % of
/// the CPU at 64 connections (perf), and mimalloc's per-thread free lists make ingest about
/// a fifth faster here (figures in the README). v3 returns memory to the OS per page, so idle
/// RSS stays as low as with glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "failover-responder",
    version,
    about = "Alert-driven failover: Alertmanager webhooks in, Docker and HAProxy reconciled out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the webhook and run the reconcilers.
    Serve {
        /// Configuration file (YAML, or TOML by extension).
        #[arg(long = "config.file", value_name = "PATH")]
        config_file: PathBuf,
        /// Overrides listen_address from the config.
        #[arg(long = "web.listen-address", value_name = "HOST:PORT")]
        listen_address: Option<SocketAddr>,
        /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it per module.
        #[arg(long = "log.level", default_value = "info")]
        log_level: String,
        #[arg(long = "log.format", value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Directory of the durable state; overrides storage.path (default data/).
        #[arg(long = "storage.path", value_name = "DIR")]
        storage_path: Option<PathBuf>,
        /// Plan and record, execute nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
    },
    /// Talk to a running responder: status, pause/resume/failover/failback a service, check
    /// whether its failover would work now, or drill it (both exit 1 when not ok).
    Ctl {
        /// The responder's base URL.
        #[arg(long, default_value = "http://127.0.0.1:9095")]
        url: String,
        /// File holding the bearer token; else FAILOVER_RESPONDER_TOKEN is used.
        #[arg(long = "token-file", value_name = "PATH")]
        token_file: Option<PathBuf>,
        /// `table` for people (colour on a terminal), `json` for scripts: the API's answer as is.
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
        #[arg(value_enum)]
        action: CtlAction,
        /// The service (every action but status needs one).
        service: Option<String>,
    },
    /// Validate a configuration and exit: 0 with a summary, 1 listing every problem.
    CheckConfig {
        #[arg(long = "config.file", value_name = "PATH")]
        config_file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum CtlAction {
    Status,
    Pause,
    Resume,
    Failover,
    Failback,
    /// Run the service's readiness check now; exit 1 when it found problems.
    Check,
    /// Rehearse a failover while on-prem serves, wait for the report; exit 1 unless ok.
    Drill,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config_file } => check_config(&config_file),
        Command::Ctl {
            url,
            token_file,
            output,
            action,
            service,
        } => match ctl(
            &url,
            token_file.as_deref(),
            output,
            action,
            service.as_deref(),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("failover-responder ctl: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config_file,
            listen_address,
            log_level,
            log_format,
            storage_path,
            dry_run,
        } => {
            init_tracing(&log_level, log_format);
            match serve(&config_file, listen_address, storage_path, dry_run) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("failover-responder: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            println!("{}: OK, {} service(s)", path.display(), cfg.services.len());
            if let Some(c) = &cfg.cluster {
                let transport = match &c.etcd.tls {
                    Some(t) if t.cert_file.is_some() => "over TLS with a client certificate",
                    Some(_) => "over TLS",
                    None => "over plain http",
                };
                let user = c
                    .etcd
                    .username
                    .as_ref()
                    .map_or(String::new(), |u| format!(", as etcd user {u}"));
                println!(
                    "  cluster: node {}, lease {}, {} etcd endpoint(s) under {}, {transport}{user}",
                    c.name,
                    humantime::format_duration(c.lease_ttl),
                    c.etcd.endpoints.len(),
                    c.prefix
                );
            }
            for (name, s) in &cfg.services {
                let containers = s.docker.as_ref().map_or(0, |d| d.containers.len());
                let (apis, servers) = s
                    .haproxy
                    .as_ref()
                    .map_or((0, 0), |h| (h.runtime_api.len(), h.cloud_servers.len()));
                println!(
                    "  {name}: {} failover matcher(s), {} failback matcher(s), {containers} container(s), {servers} cloud server(s) on {apis} HAProxy",
                    s.failover_matchers.len(),
                    s.failback_matchers.len()
                );
                if let Some(f) = &s.fast_path {
                    println!(
                        "    fast path: {} DOWN for {} on every HAProxy (polled every {}); the alert must confirm within {}",
                        f.onprem_servers.join(", "),
                        humantime::format_duration(f.down_for),
                        humantime::format_duration(f.poll),
                        humantime::format_duration(f.confirm_within)
                    );
                }
                if let Some(b) = &s.burst {
                    let scale_in = match &b.scale_in_on {
                        Some(m) => format!(
                            "while the underload alert fires ({}) and the overload has been quiet for {}; the count holds between the two",
                            m.join(", "),
                            humantime::format_duration(b.cooldown)
                        ),
                        None => format!(
                            "once the overload alert has been quiet for {} (no underload alert: set scale_in_on to hold between thresholds)",
                            humantime::format_duration(b.cooldown)
                        ),
                    };
                    println!(
                        "    burst: {}..{} unit(s), +{} every {} while {} fires; scale-in {scale_in}",
                        b.min,
                        b.max,
                        b.step,
                        humantime::format_duration(b.scale_up_every),
                        b.on.join(", ")
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: {errors}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only on a terminal: redirected to a file or the journal, escape codes are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn serve(
    path: &std::path::Path,
    listen: Option<SocketAddr>,
    storage: Option<PathBuf>,
    dry_run: bool,
) -> anyhow::Result<()> {
    // First of all: from here a SIGHUP is a reload (once the responder runs) or nothing (while
    // it starts), never the end of the process. tokio keeps the handler for the process's life.
    let _early_hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")?;
    let config = Config::load(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .with_cli(failover_responder::config::CliOverrides {
            listen_address: listen,
            storage_path: storage,
            dry_run,
        });
    let addr = config.effective_listen_address();
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    failover_responder::app::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn ctl(
    url: &str,
    token_file: Option<&std::path::Path>,
    output: Output,
    action: CtlAction,
    service: Option<&str>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let base = url.trim_end_matches('/');
    if action == CtlAction::Status {
        let st: serde_json::Value = client
            .get(format!("{base}/api/v1/status"))
            .send()
            .await
            .with_context(|| format!("GET {base}/api/v1/status"))?
            .error_for_status()?
            .json()
            .await?;
        match output {
            // A closed pipe (`| head`) ends the output, not the process with a panic.
            Output::Json => {
                let _ = writeln!(std::io::stdout(), "{st:#}");
            }
            Output::Table => print_status(&st, service),
        }
        return Ok(());
    }
    let service = service.context("this action needs a SERVICE")?;
    let token = match token_file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading token file {}", p.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        None => std::env::var("FAILOVER_RESPONDER_TOKEN").map_err(|_| {
            anyhow::anyhow!("no --token-file and FAILOVER_RESPONDER_TOKEN is not set")
        })?,
    };
    let verb = match action {
        CtlAction::Check => "check",
        CtlAction::Drill => "drill",
        CtlAction::Pause => "pause",
        CtlAction::Resume => "resume",
        CtlAction::Failover => "failover",
        CtlAction::Failback => "failback",
        CtlAction::Status => "status",
    };
    let resp = client
        .post(format!("{base}/api/v1/services/{service}/{verb}"))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("POST {base}/api/v1/services/{service}/{verb}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "{status}: {}",
            body["error"].as_str().unwrap_or("no message")
        );
    }
    if output == Output::Json && action != CtlAction::Drill {
        let _ = writeln!(std::io::stdout(), "{body:#}");
        if action == CtlAction::Check && body["ready"] != true {
            anyhow::bail!("{service}: not ready");
        }
        return Ok(());
    }
    if action == CtlAction::Check {
        return print_readiness(service, &body);
    }
    if action == CtlAction::Drill {
        let since = body["requested_at"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        return follow_drill(&client, base, service, &since).await;
    }
    match body["override"].as_str() {
        Some(o) => println!("{service}: override {o}"),
        None => println!("{service}: no override, following the alerts"),
    }
    Ok(())
}

/// Polls the status until the drill asked for at `since` (RFC 3339) has finished, printing
/// each step as it completes, then the verdict. Errors: the drill did not end ok.
async fn follow_drill(
    client: &reqwest::Client,
    base: &str,
    service: &str,
    since: &str,
) -> anyhow::Result<()> {
    let since = chrono::DateTime::parse_from_rfc3339(since).context("the drill's start time")?;
    let mut printed = 0;
    // A cold standby's instances may take minutes; give up well after any timeout.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30 * 60);
    loop {
        let st: serde_json::Value = client
            .get(format!("{base}/api/v1/status"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let d = &st["services"][service]["last_drill"];
        let started = d["started_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        // The drill's clock reading is taken after the request's: one second of slack.
        if started.is_some_and(|t| t >= since - chrono::Duration::seconds(1)) {
            let steps = d["steps"].as_array().cloned().unwrap_or_default();
            for s in steps.iter().skip(printed) {
                println!(
                    "  {:<40} {:<10} {:>7} ms",
                    s["step"].as_str().unwrap_or("?"),
                    s["outcome"].as_str().unwrap_or("?"),
                    s["duration_ms"].as_u64().unwrap_or_default()
                );
            }
            printed = steps.len();
            if !d["finished_at"].is_null() {
                println!("{service}: drill {}", d["message"].as_str().unwrap_or(""));
                if d["ok"] == true {
                    return Ok(());
                }
                anyhow::bail!("{service}: the drill did not end ok");
            }
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{service}: no drill report after 30 minutes; see GET /api/v1/status");
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `SERVICE: ready`, or one line per problem and an error (exit 1).
fn print_readiness(service: &str, r: &serde_json::Value) -> anyhow::Result<()> {
    let problems = r["problems"].as_array().cloned().unwrap_or_default();
    if r["ready"] == true {
        println!(
            "{service}: ready (a failover would work as far as can be checked without acting)"
        );
        return Ok(());
    }
    println!("{service}: NOT READY");
    for p in &problems {
        println!(
            "  {} {}: {}",
            p["check"].as_str().unwrap_or("?"),
            p["target"].as_str().unwrap_or("?"),
            p["message"].as_str().unwrap_or("")
        );
    }
    anyhow::bail!("{service}: {} readiness problem(s)", problems.len())
}

/// In a cluster, one line for this node (role, leader, etcd); then a table, one row per
/// service: mode, converged, standby readiness, burst units, and notes (override, why held, last
/// error, verification, fast path, last drill). Colour only on a terminal (anstream strips it
/// otherwise, and honours NO_COLOR).
fn print_status(st: &serde_json::Value, only: Option<&str>) {
    use anstyle::{AnsiColor, Style};
    let Some(services) = st["services"].as_object() else {
        println!("{st:#}");
        return;
    };
    let c = &st["cluster"];
    if let (Some(name), Some(role)) = (c["name"].as_str(), c["role"].as_str()) {
        let leader = c["leader"].as_str().unwrap_or("unknown");
        let etcd = if c["etcd_up"] == true { "up" } else { "DOWN" };
        let mut line = format!("cluster: {name} is {role} (leader: {leader}; etcd {etcd})");
        if let Some(r) = c["reason"].as_str() {
            line.push_str(&format!(": {r}"));
        }
        let _ = writeln!(std::io::stdout(), "{line}");
    }
    let bad = Style::new().fg_color(Some(AnsiColor::Red.into())).bold();
    let cfg = &st["config"];
    if cfg["last_reload_successful"] == false {
        // The operator's next look after `systemctl reload` (which cannot say it failed).
        let keys: Vec<&str> = cfg["last_failed_reload_keys"]
            .as_array()
            .map(|a| a.iter().filter_map(|k| k.as_str()).collect())
            .unwrap_or_default();
        let _ = writeln!(
            anstream::stdout(),
            "{bad}config: reload REFUSED at {} (problems at: {}); still running the config loaded at {}{bad:#}",
            cfg["last_failed_reload_at"].as_str().unwrap_or("?"),
            keys.join(", "),
            cfg["last_reload_success_at"].as_str().unwrap_or("?"),
        );
    }
    let warn = Style::new().fg_color(Some(AnsiColor::Yellow.into()));
    let good = Style::new().fg_color(Some(AnsiColor::Green.into()));
    let rows: Vec<StatusRow> = services
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o == *name))
        .map(|(name, s)| StatusRow::of(name, s))
        .collect();
    let header = StatusRow {
        cells: ["SERVICE", "MODE", "STATE", "STANDBY", "BURST"].map(|h| (h.to_string(), None)),
        notes: vec!["NOTES".into()],
    };
    let widths: Vec<usize> = (0..5)
        .map(|i| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r.cells[i].0.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for ((text, tone), width) in row.cells.iter().zip(&widths) {
            // Pad first, then colour: escape codes must not count towards the width.
            let padded = format!("{text:<width$}  ");
            let style = match tone {
                Some(Tone::Bad) => bad,
                Some(Tone::Warn) => warn,
                Some(Tone::Good) => good,
                None => Style::new(),
            };
            line.push_str(&format!("{style}{padded}{style:#}"));
        }
        line.push_str(&row.notes.join("; "));
        if writeln!(anstream::stdout(), "{}", line.trim_end()).is_err() {
            return; // the reader went away (`| head`)
        }
    }
}

/// How a cell of `ctl status` reads at a glance.
#[derive(Clone, Copy)]
enum Tone {
    Bad,
    Warn,
    Good,
}

/// One row of `ctl status`: five cells (text and tone) and the notes.
struct StatusRow {
    cells: [(String, Option<Tone>); 5],
    notes: Vec<String>,
}

impl StatusRow {
    fn of(name: &str, s: &serde_json::Value) -> StatusRow {
        let mode = s["state"]["mode"].as_str().unwrap_or("onprem");
        let mode_tone = (mode != "onprem").then_some(Tone::Warn);
        let (state, state_tone) = if s["converged"] == true {
            ("converged", Tone::Good)
        } else {
            ("converging", Tone::Warn)
        };
        let (standby, standby_tone) = match s["readiness"]["problems"].as_array().map(Vec::len) {
            Some(0) => ("ready".to_string(), Some(Tone::Good)),
            Some(n) => (format!("NOT READY ({n})"), Some(Tone::Bad)),
            None => ("-".to_string(), None),
        };
        let burst = match (s["burst"]["open"].as_u64(), s["burst"]["target"].as_u64()) {
            (Some(open), Some(wanted)) => format!("{open} open, {wanted} wanted"),
            _ => "-".to_string(),
        };
        StatusRow {
            cells: [
                (name.to_string(), None),
                (mode.to_string(), mode_tone),
                (state.to_string(), Some(state_tone)),
                (standby, standby_tone),
                (burst, None),
            ],
            notes: status_notes(name, s),
        }
    }
}

/// The notes column of a service's row: what is unusual about it now.
fn status_notes(name: &str, s: &serde_json::Value) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(o) = s["state"]["override"].as_str() {
        notes.push(format!("override {o}"));
    }
    if let Some(h) = s["held"].as_str() {
        notes.push(format!("held: {h}"));
    }
    if let Some(e) = s["last_error"].as_str() {
        notes.push(format!("last error: {e}"));
    }
    if s["readiness"]["problems"]
        .as_array()
        .is_some_and(|p| !p.is_empty())
    {
        notes.push(format!("see: ctl check {name}"));
    }
    match s["verification"]["verified"].as_bool() {
        Some(true) => notes.push("failover verified".into()),
        Some(false) => notes.push("failover NOT VERIFIED (see status verification)".into()),
        None => {}
    }
    match s["fast_path"]["verdict"].as_str() {
        Some("down") => notes.push("HAProxy sees on-prem DOWN".into()),
        Some("unclear") => notes.push("HAProxy's view of on-prem unclear".into()),
        _ => {}
    }
    if s["state"]["fast_path"].is_object() {
        notes.push("in cloud on the fast path (no alert yet)".into());
    }
    if s["burst"]["overloaded"] == true {
        notes.push("overload firing".into());
    } else if s["burst"]["underloaded"] == true {
        notes.push("underload firing".into());
    } else if s["burst"]["held"].is_string() {
        notes.push("burst holding: underload alert not firing".into());
    }
    if let Some(ok) = s["last_drill"]["ok"].as_bool() {
        let at = s["last_drill"]["started_at"].as_str().unwrap_or("?");
        let verdict = if ok { "ok" } else { "FAILED" };
        notes.push(format!("last drill {verdict} ({at})"));
    }
    notes
}

/// SIGINT or SIGTERM (systemd's stop).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)] // a test: a failure is a panic
mod man_pages {
    use clap::CommandFactory;

    /// `failover-responder.1` and one page per subcommand, as clap_mangen renders them.
    fn render() -> Vec<(String, Vec<u8>)> {
        // Without the implicit `help` subcommand (no page of its own to point to); each page
        // carries the version in its footer.
        let cli = super::Cli::command().disable_help_subcommand(true);
        let mut pages = Vec::new();
        // The page's name (failover-responder-serve) and how the synopsis calls it
        // (failover-responder serve).
        let mut page = |name: String, call: String, cmd: clap::Command| {
            let mut out = Vec::new();
            // The footer shows the command's name: the page's, not `serve`. (`name` wants a
            // 'static str; leaking four short strings in a test is fine.)
            let name_static: &'static str = Box::leak(name.clone().into_boxed_str());
            clap_mangen::Man::new(cmd.name(name_static).bin_name(call))
                .render(&mut out)
                .expect("rendering into a Vec cannot fail");
            pages.push((format!("{name}.1"), out));
        };
        for sub in cli.get_subcommands() {
            let name = sub.get_name();
            page(
                format!("failover-responder-{name}"),
                format!("failover-responder {name}"),
                sub.clone().version(env!("CARGO_PKG_VERSION")),
            );
        }
        page(
            "failover-responder".into(),
            "failover-responder".into(),
            cli,
        );
        pages
    }

    /// The Debian package installs deploy/debian/man/ (`man failover-responder-serve`); they must
    /// say what the binary says. FR_UPDATE_MAN=1 rewrites them instead of failing.
    #[test]
    fn man_pages_match_the_cli() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/debian/man");
        let update = std::env::var_os("FR_UPDATE_MAN").is_some();
        let pages = render();
        // A page with no subcommand behind it any more would still ship (the package takes
        // deploy/debian/man/*.1).
        let mut stale: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|f| f.ends_with(".1") && !pages.iter().any(|(p, _)| p == f))
                    .collect()
            })
            .unwrap_or_default();
        if update {
            for f in stale.drain(..) {
                std::fs::remove_file(dir.join(f)).expect("removing a stale man page");
            }
        }
        for (file, want) in pages {
            let path = dir.join(&file);
            if update {
                std::fs::create_dir_all(&dir).expect("creating deploy/debian/man");
                std::fs::write(&path, &want).expect("writing a man page");
            } else if std::fs::read(&path).ok().as_deref() != Some(want.as_slice()) {
                stale.push(file);
            }
        }
        assert!(
            stale.is_empty(),
            "stale man pages {stale:?}: run FR_UPDATE_MAN=1 cargo test --bin failover-responder man_pages"
        );
    }
}
