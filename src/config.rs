//! Typed configuration: YAML or TOML file, `FAILOVER_RESPONDER__<SECTION>__<KEY>` environment
//! overrides, secrets read from files.
//!
//! Strict on purpose: a responder that silently ignores a misspelt key fails over the wrong
//! thing at the worst moment. [`Config::from_str`] parses and validates without I/O (apart from
//! nothing); [`Config::load`] reads the file and the environment and then the secret files.
//! Every problem is reported with the key's path, all of them at once where serde allows
//! (unknown keys and semantic checks are collected; a type error stops parsing at that key).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::matcher::Matcher;

// The backends own their config types and checks; they are re-exported here so a config is
// read as one document.
pub use crate::backend::docker::config::{ContainerConfig, DockerConfig, Recreate};
pub use crate::backend::ec2::config::{Ec2Config, TagFilter};
pub use crate::backend::haproxy::config::HaproxyConfig;

/// Environment variables with this prefix override file keys: `FAILOVER_RESPONDER__LISTEN_ADDRESS`,
/// `FAILOVER_RESPONDER__AUTH__BEARER_TOKEN_FILE`, ...
pub const ENV_PREFIX: &str = "FAILOVER_RESPONDER";

/// The whole configuration, validated.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Where the webhook, API and metrics listen. `--web.listen-address` overrides it.
    #[serde(default = "default_listen")]
    pub listen_address: SocketAddr,
    /// Who may post notifications and use the control API.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Limits on incoming webhook requests.
    #[serde(default)]
    pub webhook: WebhookConfig,
    /// Connection limits and timeouts of the listener (slowloris, floods).
    #[serde(default)]
    pub server: ServerLimits,
    /// Serve HTTPS (and require client certificates when `client_ca_file` is set).
    pub tls: Option<crate::tls::TlsConfig>,
    /// The loaded TLS material, filled by [`Config::load`].
    #[serde(skip)]
    pub tls_loaded: Option<crate::tls::Tls>,
    /// Reconcile loop timing shared by all services.
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    /// Where and how long state is kept. `--storage.path` overrides `path`.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Resync of the firing alerts from Alertmanager's API, repairing lost and truncated
    /// notifications. Off when absent.
    pub alertmanager: Option<AlertmanagerConfig>,
    /// Two or more responders sharing one leader lease in etcd; absent: standalone.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// The services this responder fails over, by name (used in URLs, metrics and logs).
    pub services: BTreeMap<String, ServiceConfig>,
    /// Plan and record, execute nothing (`--dry-run`; not a config key).
    #[serde(skip)]
    pub dry_run: bool,
    /// The file this was loaded from ([`Config::load`]); a reload reads it again. None: built
    /// from text.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The command-line flags that override keys, kept so a reload applies them again.
    #[serde(skip)]
    pub cli: CliOverrides,
    /// The merged config (file and environment) as plain data, before defaults: a reload
    /// compares it per section to tell what changed.
    #[serde(skip)]
    pub raw: RawConfig,
}

/// The merged config as plain data. Its `Debug` shows nothing: it holds inline secrets
/// (`auth.bearer_token`, a password from the environment).
#[derive(Clone, Default, PartialEq)]
pub struct RawConfig(pub serde_json::Value);

impl fmt::Debug for RawConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawConfig(..)")
    }
}

/// Command-line flags that take the place of config keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CliOverrides {
    /// `--web.listen-address`, instead of `listen_address`.
    pub listen_address: Option<SocketAddr>,
    /// `--storage.path`, instead of `storage.path`.
    pub storage_path: Option<PathBuf>,
    /// `--dry-run`.
    pub dry_run: bool,
}

impl Config {
    /// Applies the command-line overrides and keeps them for a reload.
    pub fn with_cli(mut self, cli: CliOverrides) -> Config {
        if let Some(dir) = &cli.storage_path {
            self.storage.path = dir.clone();
        }
        self.dry_run = cli.dry_run;
        self.cli = cli;
        self
    }

    /// Where the listener is bound: the flag, else `listen_address`.
    pub fn effective_listen_address(&self) -> SocketAddr {
        self.cli.listen_address.unwrap_or(self.listen_address)
    }

    /// The raw text-level config of one top-level section (`reconcile`, `alertmanager`, ...)
    /// or of `services.<name>`; Null when absent.
    pub fn raw_section(&self, path: &[&str]) -> serde_json::Value {
        let mut v = &self.raw.0;
        for key in path {
            match v.get(key) {
                Some(next) => v = next,
                None => return serde_json::Value::Null,
            }
        }
        v.clone()
    }
}

/// Credentials accepted on the webhook. At least one must be configured unless
/// `insecure_no_auth` is set, because an open webhook lets anyone move production traffic.
#[derive(Clone, Default, Deserialize)]
pub struct AuthConfig {
    /// File holding the bearer token (Alertmanager `http_config.authorization.credentials_file`).
    pub bearer_token_file: Option<PathBuf>,
    /// The bearer token itself; prefer the file, this exists for environment overrides.
    pub bearer_token: Option<Secret>,
    /// HTTP basic auth (Alertmanager `http_config.basic_auth`).
    pub basic_auth: Option<BasicAuthConfig>,
    /// Accept unauthenticated notifications. For loopback demos only.
    #[serde(default)]
    pub insecure_no_auth: bool,
    /// Failed authentications one client address may make per minute; past it, 429 until the
    /// minute is over (slows down guessing; 0 disables).
    #[serde(default = "default_max_failures")]
    pub max_failures_per_minute: u32,
    /// Resolved credentials, filled by [`Config::load`] from the fields above.
    #[serde(skip)]
    pub credentials: Credentials,
}

fn default_max_failures() -> u32 {
    20
}

/// Listener limits. Alertmanager keeps few connections and sends small bodies; anything far
/// from that is refused early instead of tying up the responder.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerLimits {
    /// Time a client has to send the request head (slowloris guard).
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Time to finish a connection shutdown.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub disconnect_timeout: Duration,
    /// Idle keep-alive connections are closed after this.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Concurrent connections per worker; more wait in the accept backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTP worker threads (default: one per core but one, at least one). The store's single
    /// writer does the fsyncs every 202 waits for; on this project's 2-core reference machine
    /// one worker beside it acknowledged more notifications per second than two fighting it
    /// for the cores (README, benchmarks).
    #[serde(default = "default_workers")]
    pub workers: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            request_timeout: default_request_timeout(),
            disconnect_timeout: default_request_timeout(),
            keep_alive: default_keep_alive(),
            max_connections: default_max_connections(),
            workers: default_workers(),
        }
    }
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_max_connections() -> usize {
    1024
}
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .max(1)
}

/// Basic auth user and password (from a file or inline).
#[derive(Clone, Deserialize)]
pub struct BasicAuthConfig {
    pub username: String,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
}

/// The credentials the webhook accepts, read from their files.
#[derive(Clone, Default)]
pub struct Credentials {
    pub bearer_token: Option<Secret>,
    pub basic: Option<(String, Secret)>,
}

/// A secret string. Its `Debug` and `Display` never show the value, so it cannot leak into
/// logs or error messages by accident.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The value, for the one place that compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("bearer_token_file", &self.bearer_token_file)
            .field("bearer_token", &self.bearer_token)
            .field("basic_auth", &self.basic_auth.as_ref().map(|b| &b.username))
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("max_failures_per_minute", &self.max_failures_per_minute)
            .finish()
    }
}

/// Webhook request limits.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookConfig {
    /// Largest accepted body. Alertmanager bodies are a few KiB; `max_alerts` keeps them small.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            max_body_bytes: default_max_body(),
        }
    }
}

/// Reconcile loop timing.
#[derive(Debug, Clone, Deserialize)]
pub struct ReconcileConfig {
    /// How often each service is observed and repaired even without a notification, so drift
    /// and lost notifications are fixed.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// First wait after a failed step; doubles on each further failure.
    #[serde(default = "default_retry_initial", with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest wait between retries of a failing step.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// A pass running longer than this counts as stuck: the systemd watchdog is no longer fed
    /// (with `WatchdogSec=` in the unit), so systemd restarts the responder. Longer than any
    /// step may wait (`timeouts`, an EC2 start).
    #[serde(default = "default_stuck_after", with = "humantime_serde")]
    pub stuck_after: Duration,
}

fn default_stuck_after() -> Duration {
    Duration::from_secs(15 * 60)
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            interval: default_interval(),
            retry_initial: default_retry_initial(),
            retry_max: default_retry_max(),
            stuck_after: default_stuck_after(),
        }
    }
}

/// Durable state.
#[derive(Debug, Clone, Deserialize)]
pub struct StorageConfig {
    /// Directory of the embedded database (created if missing).
    #[serde(default = "default_storage_path")]
    pub path: PathBuf,
    /// Most notifications kept in the journal.
    #[serde(default = "default_journal_entries")]
    pub journal_max_entries: u64,
    /// Journal entries older than this are dropped.
    #[serde(default = "default_journal_age", with = "humantime_serde")]
    pub journal_max_age: Duration,
    /// Most events kept in the history.
    #[serde(default = "default_events_entries")]
    pub events_max_entries: u64,
    /// Events older than this are dropped.
    #[serde(default = "default_events_age", with = "humantime_serde")]
    pub events_max_age: Duration,
}

/// Retention of the journal and the event history, from `storage`.
#[derive(Debug, Clone)]
pub struct Retention {
    pub journal_max_entries: u64,
    pub journal_max_age: Duration,
    pub events_max_entries: u64,
    pub events_max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        StorageConfig::default().retention()
    }
}

impl StorageConfig {
    pub fn retention(&self) -> Retention {
        Retention {
            journal_max_entries: self.journal_max_entries,
            journal_max_age: self.journal_max_age,
            events_max_entries: self.events_max_entries,
            events_max_age: self.events_max_age,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: default_storage_path(),
            journal_max_entries: default_journal_entries(),
            journal_max_age: default_journal_age(),
            events_max_entries: default_events_entries(),
            events_max_age: default_events_age(),
        }
    }
}

fn default_journal_entries() -> u64 {
    100_000
}
fn default_journal_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_events_entries() -> u64 {
    100_000
}
fn default_events_age() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

fn default_storage_path() -> PathBuf {
    PathBuf::from("data")
}

/// Alertmanager's API, read to resync the firing alerts.
#[derive(Debug, Clone, Deserialize)]
pub struct AlertmanagerConfig {
    /// Base URL, e.g. `http://alertmanager:9093`.
    pub url: String,
    /// How often to resync (and once at start).
    #[serde(default = "default_resync", with = "humantime_serde")]
    pub resync_interval: Duration,
    /// Only alerts routed to this receiver (the responder's), when set.
    pub receiver: Option<String>,
    /// Deadline of one API call.
    #[serde(default = "default_am_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_resync() -> Duration {
    Duration::from_secs(30)
}

fn default_am_timeout() -> Duration {
    Duration::from_secs(2)
}

/// One service: which alerts move it, and the cloud capacity and HAProxy servers behind it.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceConfig {
    /// Fail over while a firing alert matches all of these (Alertmanager matcher syntax).
    pub failover_on: Vec<String>,
    /// Fail back when an alert matching all of these fires after the failover alert started.
    #[serde(default)]
    pub failback_on: Vec<String>,
    /// Cloud containers started on failover, stopped on failback.
    pub docker: Option<DockerConfig>,
    /// HAProxy servers opened on failover, drained and closed on failback.
    pub haproxy: Option<HaproxyConfig>,
    /// EC2 instances carrying the cloud capacity: started before the containers on failover,
    /// stopped after them on failback (a cold standby).
    pub ec2: Option<Ec2Config>,
    /// What stays up while on-prem serves: `cold` (default: instances and containers stopped),
    /// `pilot_light` (instances running), `warm` (containers running and healthy too, servers
    /// in maint).
    #[serde(default)]
    pub standby: crate::plan::Standby,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Minimum time in cloud before failing back, so a flapping site does not bounce traffic.
    #[serde(default = "default_hold_down", with = "humantime_serde")]
    pub hold_down: Duration,
    /// On-prem health URL the responder probes itself; when set, failback waits until it has
    /// answered 2xx continuously for `healthy_for`.
    pub onprem_health_url: Option<String>,
    #[serde(default = "default_healthy_for", with = "humantime_serde")]
    pub healthy_for: Duration,
    /// Mode changes allowed in any hour; past it the service stays in cloud and says so.
    /// 0 disables the cap.
    #[serde(default = "default_max_transitions")]
    pub max_transitions_per_hour: u32,
    /// Cloud bursting: extra capacity added in steps while an overload alert fires.
    pub burst: Option<BurstConfig>,
    /// Cost guard and estimate for the cloud units this service runs.
    #[serde(default)]
    pub cost: CostConfig,
    /// How often the readiness check asks whether a failover would work now.
    #[serde(default)]
    pub readiness: ReadinessConfig,
    /// Scheduled drills (`POST .../drill` runs one at any time).
    #[serde(default)]
    pub drill: DrillConfig,
    /// Fail over on HAProxy's own health checks of on-prem, before the alert (see `fastpath`).
    pub fast_path: Option<crate::fastpath::FastPathConfig>,
    /// `failover_on`, parsed.
    #[serde(skip)]
    pub failover_matchers: Vec<Matcher>,
    /// `failback_on`, parsed.
    #[serde(skip)]
    pub failback_matchers: Vec<Matcher>,
}

/// `burst:` in a service's config: while an alert matching `on` fires, units (containers on the
/// service's Docker host, or EC2 instances from a pool) are added `step` at a time, up to `max`,
/// each opened in HAProxy as a normal server in a `server-template` slot. After the alert has
/// been quiet for `cooldown` (and, with `scale_in_on`, while the underload alert fires), they
/// are removed `step` at a time: drain, maint, stop.
#[derive(Debug, Clone, Deserialize)]
pub struct BurstConfig {
    /// Burst while a firing alert matches all of these (Alertmanager matcher syntax).
    pub on: Vec<String>,
    /// The underload alert (Alertmanager matcher syntax), e.g. `alertname="onprem_underloaded"`.
    /// Set: units are removed only while it fires, and the count holds while neither alert
    /// fires. Absent: the overload alert's silence alone removes units (after `cooldown`).
    pub scale_in_on: Option<Vec<String>>,
    /// Units started as soon as the overload alert fires.
    #[serde(default = "default_burst_min")]
    pub min: u32,
    /// Most units ever running for this service's burst.
    pub max: u32,
    /// Units added (and removed) per scale step.
    #[serde(default = "default_burst_step")]
    pub step: u32,
    /// While the alert still fires, add `step` units this often.
    #[serde(default = "default_scale_up_every", with = "humantime_serde")]
    pub scale_up_every: Duration,
    /// How long the alert must have been quiet before the first unit is removed. A flapping
    /// alert restarts it, so capacity never shrinks and grows back within one cooldown.
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
    /// After the cooldown, remove `step` units this often (default: `scale_up_every`).
    #[serde(default, with = "humantime_serde")]
    pub scale_in_every: Option<Duration>,
    /// Where HAProxy sends a unit's traffic: `host:port`, with `{index}` (1..=max), `{port}`
    /// (`port_base + index - 1`) and, for EC2 units, `{private_ip}`.
    pub address: String,
    /// First host port; unit `i` gets `port_base + i - 1` as `{port}`.
    #[serde(default)]
    pub port_base: u16,
    pub haproxy: BurstHaproxy,
    /// Container units on the service's Docker host (`docker.host`): unit `i` is container
    /// `<name>-<i>`; `{port}` and `{index}` are filled in `ports`, `env` and `health_url`.
    pub container: Option<ContainerConfig>,
    /// EC2 units: unit `i` is the `i`-th instance of this pool (sorted by id), which runs the
    /// service itself (from its AMI or user data); HAProxy's own `check` guards its traffic.
    pub ec2: Option<Ec2Config>,
    /// `on`, parsed.
    #[serde(skip)]
    pub matchers: Vec<Matcher>,
    /// `scale_in_on`, parsed (`None` when absent).
    #[serde(skip)]
    pub scale_in_matchers: Option<Vec<Matcher>>,
}

impl BurstConfig {
    /// Seconds between scale-in steps.
    pub fn scale_in_every(&self) -> Duration {
        self.scale_in_every.unwrap_or(self.scale_up_every)
    }
}

/// The `server-template` slots the burst units are opened in.
#[derive(Debug, Clone, Deserialize)]
pub struct BurstHaproxy {
    /// The backend with the slots (default: the service's `haproxy.backend`).
    pub backend: Option<String>,
    /// `server-template <prefix> 1-<max> ...` names the slots `<prefix>1` .. `<prefix><max>`.
    pub server_prefix: String,
    /// HAProxy weight of each opened unit (0-256), relative to the on-prem servers'.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// `cost:` in a service's config. Failover is never held back by cost (an outage costs more);
/// the guard limits bursting.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CostConfig {
    /// Price of one running EC2 instance per hour, for the estimate in status and metrics.
    #[serde(default)]
    pub instance_hourly_price: f64,
    /// Price of one running container per hour (a share of its host), for the estimate.
    #[serde(default)]
    pub container_hourly_price: f64,
    /// Most EC2 instances this service may run at once (failover pool plus burst units):
    /// bursting never starts one past it.
    pub max_instances: Option<u32>,
    /// Once this service's instances have run this many hours today (UTC), bursting stops
    /// growing; units already serving stay until the overload ends.
    pub max_instance_hours_per_day: Option<f64>,
}

fn default_burst_min() -> u32 {
    1
}
fn default_burst_step() -> u32 {
    1
}
fn default_scale_up_every() -> Duration {
    Duration::from_secs(60)
}
fn default_cooldown() -> Duration {
    Duration::from_secs(300)
}
fn default_weight() -> u32 {
    100
}

/// `drill:` in a service's config.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DrillConfig {
    /// Run a drill this often (from the last one's start, or from the responder's start);
    /// absent: only on request.
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
}

/// `readiness:` in a service's config.
#[derive(Debug, Clone, Deserialize)]
pub struct ReadinessConfig {
    /// Between two readiness checks (also one at start); `0s` turns the schedule off (the
    /// check still runs on `POST /api/v1/services/{name}/check`).
    #[serde(default = "default_readiness_interval", with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for ReadinessConfig {
    fn default() -> Self {
        ReadinessConfig {
            interval: default_readiness_interval(),
        }
    }
}

fn default_readiness_interval() -> Duration {
    Duration::from_secs(300)
}

/// How long each phase may take.
#[derive(Debug, Clone, Deserialize)]
pub struct Timeouts {
    /// From container start to healthy.
    #[serde(default = "default_healthy", with = "humantime_serde")]
    pub healthy: Duration,
    /// How long a draining server may keep sessions before it is put in maint anyway.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain: Duration,
    /// Grace period between SIGTERM and SIGKILL when a container is stopped.
    #[serde(default = "default_stop", with = "humantime_serde")]
    pub stop: Duration,
    /// After a failover opened the cloud servers, how long HAProxy's own health check has to
    /// report every one UP before the failover counts as not verified.
    #[serde(default = "default_verify", with = "humantime_serde")]
    pub verify: Duration,
}

fn default_verify() -> Duration {
    Duration::from_secs(30)
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            healthy: default_healthy(),
            drain: default_drain(),
            stop: default_stop(),
            verify: default_verify(),
        }
    }
}

fn default_hold_down() -> Duration {
    Duration::from_secs(60)
}
fn default_healthy_for() -> Duration {
    Duration::from_secs(30)
}
fn default_max_transitions() -> u32 {
    6
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9095))
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_retry_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}
fn default_healthy() -> Duration {
    Duration::from_secs(60)
}
fn default_drain() -> Duration {
    Duration::from_secs(30)
}
fn default_stop() -> Duration {
    Duration::from_secs(10)
}

/// Every problem found in a configuration, each naming its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} configuration problem(s):", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Config file syntax.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    Yaml,
    Toml,
}

impl Format {
    /// `.toml` is TOML; everything else is read as YAML.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Format::Toml,
            _ => Format::Yaml,
        }
    }
    fn file_format(self) -> config::FileFormat {
        match self {
            Format::Yaml => config::FileFormat::Yaml,
            Format::Toml => config::FileFormat::Toml,
        }
    }
}

impl Config {
    /// Parses and validates config text. No I/O: secret files are not read (see [`Config::load`]).
    pub fn from_str(text: &str, format: Format) -> Result<Config, ConfigErrors> {
        Self::build(text, format, None)
    }

    /// Reads the file, applies `FAILOVER_RESPONDER__*` environment overrides, validates, and
    /// reads the secret files.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let env: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self::load_with_env(path, env)
    }

    /// [`Config::load`] with an explicit environment, for tests.
    pub fn load_with_env(
        path: &Path,
        env: HashMap<String, String>,
    ) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("config.file {}: {e}", path.display())]))?;
        let mut cfg = Self::build(&text, Format::from_path(path), Some(env))?;
        cfg.source = Some(path.to_path_buf());
        cfg.auth.credentials = read_credentials(&cfg.auth).map_err(ConfigErrors)?;
        if let Some(c) = &cfg.cluster {
            let errors = c.check_files();
            if !errors.is_empty() {
                return Err(ConfigErrors(errors));
            }
        }
        if let Some(t) = &cfg.tls {
            cfg.tls_loaded =
                Some(crate::tls::Tls::load(t).map_err(|e| ConfigErrors(vec![e.to_string()]))?);
        }
        Ok(cfg)
    }

    fn build(
        text: &str,
        format: Format,
        env: Option<HashMap<String, String>>,
    ) -> Result<Config, ConfigErrors> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(text, format.file_format()));
        if let Some(env) = env {
            builder = builder.add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(env.into_iter().collect())),
            );
        }
        let merged = builder
            .build()
            .map_err(|e| ConfigErrors(vec![format!("config: {e}")]))?;

        // Only for comparing two loads: a config that parses below always converts.
        let raw = merged
            .clone()
            .try_deserialize::<serde_json::Value>()
            .unwrap_or_default();
        let mut unknown = Vec::new();
        let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(unknown_key(&path));
        let de = serde_ignored::Deserializer::new(merged, &mut on_unknown);
        let parsed: Result<Config, _> = serde_path_to_error::deserialize(de);
        let mut cfg = match parsed {
            Ok(c) => c,
            Err(e) => {
                // A type error stops serde at that key, but the unknown keys it met before are
                // reported too: they are often the cause (`failover_onn:` is why `failover_on`
                // is missing), and the type error alone would hide the typo.
                let path = e.path().to_string();
                let mut errors = unknown;
                errors.push(format!("{path}: {}", e.into_inner()));
                return Err(ConfigErrors(errors));
            }
        };
        cfg.raw = RawConfig(raw);
        let mut errors = unknown;
        cfg.validate(&mut errors);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Semantic checks; compiles matchers. Pushes one message per problem.
    fn validate(&mut self, errors: &mut Vec<String>) {
        self.validate_globals(errors);
        if let Some(c) = &self.cluster {
            c.validate(errors);
        }
        for (name, svc) in &mut self.services {
            validate_service(name, svc, errors);
            // A pass may wait for health, a drain and a stop in a row: the watchdog must not
            // count that as stuck, or systemd would restart a responder doing its job.
            let t = &svc.timeouts;
            let longest = t.healthy + t.drain + t.stop;
            if self.reconcile.stuck_after <= longest {
                errors.push(format!(
                    "reconcile.stuck_after: {} is not longer than what a pass of service {name} may wait (timeouts healthy + drain + stop = {})",
                    humantime::format_duration(self.reconcile.stuck_after),
                    humantime::format_duration(longest)
                ));
            }
        }
        check_ownership(&self.services, errors);
    }

    /// Everything outside `services`.
    fn validate_globals(&self, errors: &mut Vec<String>) {
        let a = &self.auth;
        let has_basic = a.basic_auth.is_some();
        let has_bearer = a.bearer_token.is_some() || a.bearer_token_file.is_some();
        if a.bearer_token.is_some() && a.bearer_token_file.is_some() {
            errors.push("auth: set bearer_token or bearer_token_file, not both".into());
        }
        if let Some(b) = &a.basic_auth {
            if b.username.is_empty() {
                errors.push("auth.basic_auth.username: must not be empty".into());
            }
            if b.password.is_some() == b.password_file.is_some() {
                errors.push("auth.basic_auth: set exactly one of password, password_file".into());
            }
        }
        if !has_basic && !has_bearer && !a.insecure_no_auth {
            errors.push(
                "auth: no credentials configured; set bearer_token_file or basic_auth \
                 (or insecure_no_auth: true for a loopback demo)"
                    .into(),
            );
        }
        if self.server.workers == 0 || self.server.max_connections == 0 {
            errors.push("server: workers and max_connections must be greater than 0".into());
        }
        if self.server.request_timeout.is_zero() {
            errors.push("server.request_timeout: must be greater than 0".into());
        }
        if self.webhook.max_body_bytes < 1024 {
            errors.push("webhook.max_body_bytes: must be at least 1024".into());
        }
        for (key, d) in [
            ("reconcile.interval", self.reconcile.interval),
            ("reconcile.retry_initial", self.reconcile.retry_initial),
            ("reconcile.retry_max", self.reconcile.retry_max),
            ("reconcile.stuck_after", self.reconcile.stuck_after),
        ] {
            if d.is_zero() {
                errors.push(format!("{key}: must be greater than 0"));
            }
        }
        if self.services.is_empty() {
            errors.push("services: at least one service is needed".into());
        }
        if let Some(am) = &self.alertmanager {
            crate::backend::validate_http_url(&am.url, "alertmanager.url", errors);
            if am.resync_interval.is_zero() {
                errors.push("alertmanager.resync_interval: must be greater than 0".into());
            }
            if am.timeout.is_zero() {
                errors.push("alertmanager.timeout: must be greater than 0".into());
            }
        }
        if self.storage.path.as_os_str().is_empty() {
            errors.push("storage.path: must not be empty".into());
        }
    }
}

/// One service: its name, matchers, backends, timeouts, burst and cost.
fn validate_service(name: &str, svc: &mut ServiceConfig, errors: &mut Vec<String>) {
    let p = format!("services.{name}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        errors.push(format!("{p}: service names may use only [A-Za-z0-9._-]"));
    }
    svc.failover_matchers = parse_matchers(&svc.failover_on, &format!("{p}.failover_on"), errors);
    svc.failback_matchers = parse_matchers(&svc.failback_on, &format!("{p}.failback_on"), errors);
    if svc.failover_on.is_empty() {
        errors.push(format!("{p}.failover_on: at least one matcher is needed"));
    }
    if let Some(e) = &svc.ec2 {
        e.validate(&format!("{p}.ec2"), errors);
    }
    if svc.docker.is_none() && svc.haproxy.is_none() && svc.ec2.is_none() {
        errors.push(format!(
            "{p}: needs docker, haproxy or ec2, or it has nothing to do"
        ));
    }
    for (key, d) in [
        ("healthy", svc.timeouts.healthy),
        ("stop", svc.timeouts.stop),
    ] {
        // `drain: 0s` is allowed: close at once.
        if d.is_zero() {
            errors.push(format!("{p}.timeouts.{key}: must be greater than 0"));
        }
    }
    if let Some(url) = &svc.onprem_health_url {
        crate::backend::validate_http_url(url, &format!("{p}.onprem_health_url"), errors);
    }
    if let Some(d) = &svc.docker {
        crate::backend::docker::config::validate(d, &format!("{p}.docker"), errors);
    }
    if let Some(b) = &mut svc.burst {
        b.matchers = parse_matchers(&b.on, &format!("{p}.burst.on"), errors);
        b.scale_in_matchers = b
            .scale_in_on
            .as_ref()
            .map(|raw| parse_matchers(raw, &format!("{p}.burst.scale_in_on"), errors));
        validate_burst(b, svc.haproxy.as_ref(), svc.docker.as_ref(), &p, errors);
    }
    for (key, v) in [
        ("instance_hourly_price", svc.cost.instance_hourly_price),
        ("container_hourly_price", svc.cost.container_hourly_price),
        (
            "max_instance_hours_per_day",
            svc.cost.max_instance_hours_per_day.unwrap_or(0.0),
        ),
    ] {
        if !v.is_finite() || v < 0.0 {
            errors.push(format!("{p}.cost.{key}: must be a number >= 0"));
        }
    }
    if let Some(h) = &svc.haproxy {
        crate::backend::haproxy::config::validate(h, &format!("{p}.haproxy"), errors);
    }
    if let Some(f) = &svc.fast_path {
        let managed = svc.haproxy.as_ref().map(|h| {
            let slots = svc.burst.iter().flat_map(|b| {
                (1..=b.max.min(1000))
                    .map(|i| crate::template::slot_name(&b.haproxy.server_prefix, i))
            });
            h.cloud_servers
                .iter()
                .cloned()
                .chain(slots)
                .collect::<Vec<_>>()
        });
        f.validate(&format!("{p}.fast_path"), managed.as_deref(), errors);
    }
}

/// Two services driving the same container or server would fight each other forever.
fn check_ownership(services: &BTreeMap<String, ServiceConfig>, errors: &mut Vec<String>) {
    let mut container_owner: BTreeMap<String, String> = BTreeMap::new();
    let mut server_owner: BTreeMap<String, String> = BTreeMap::new();
    for (name, svc) in services {
        let p = format!("services.{name}");
        if let Some(d) = &svc.docker {
            for c in &d.containers {
                let key = format!("{}|{}", d.host, c.name);
                if let Some(other) = container_owner.insert(key, name.clone()) {
                    errors.push(format!(
                        "{p}.docker.containers: container {:?} is also managed by service {other:?}",
                        c.name
                    ));
                }
            }
        }
        let Some(h) = &svc.haproxy else { continue };
        if let Some(b) = &svc.burst {
            let prefix = &b.haproxy.server_prefix;
            let backend = b
                .haproxy
                .backend
                .clone()
                .unwrap_or_else(|| h.backend.clone());
            for api in &h.runtime_api {
                for i in 1..=b.max.min(1000) {
                    let key = format!("{api}|{backend}/{prefix}{i}");
                    if let Some(other) = server_owner.insert(key, name.clone()) {
                        errors.push(format!(
                            "{p}.burst.haproxy: slot {backend}/{prefix}{i} on {api} is also managed by service {other:?}"
                        ));
                    }
                }
            }
        }
        for api in &h.runtime_api {
            for s in &h.cloud_servers {
                let key = format!("{api}|{}/{s}", h.backend);
                if let Some(other) = server_owner.insert(key, name.clone()) {
                    errors.push(format!(
                        "{p}.haproxy: server {}/{s} on {api} is also managed by service {other:?}",
                        h.backend
                    ));
                }
            }
        }
    }
}

/// `services.a.haproxy.colud`: serde_ignored's path without its `?` marks for options.
fn key_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => {
            let parent = key_path(parent);
            if parent.is_empty() {
                key.to_string()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

/// `services.a.failover_onn: unknown key (did you mean `failover_on`?)`: the full key path,
/// and the closest key serde knows at that level when one is close enough to be the intent.
fn unknown_key(p: &serde_ignored::Path<'_>) -> String {
    let mut segs = Vec::new();
    key_segments(p, &mut segs);
    let hint = match segs.split_last() {
        Some((KeySeg::Key(key), parent)) => known_keys(parent).and_then(|k| closest_key(key, k)),
        _ => None,
    };
    match hint {
        Some(k) => format!("{}: unknown key (did you mean `{k}`?)", key_path(p)),
        None => format!("{}: unknown key", key_path(p)),
    }
}

/// One step of a key path: a map key, or an index into a list.
enum KeySeg<'a> {
    Key(&'a str),
    Index,
}

fn key_segments<'a>(p: &'a serde_ignored::Path<'a>, out: &mut Vec<KeySeg<'a>>) {
    use serde_ignored::Path;
    match p {
        Path::Root => {}
        Path::Seq { parent, .. } => {
            key_segments(parent, out);
            out.push(KeySeg::Index);
        }
        Path::Map { parent, key } => {
            key_segments(parent, out);
            out.push(KeySeg::Key(key));
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_segments(parent, out),
    }
}

/// The keys known at the level `parent` leads to. Which struct sits at which level is mapped
/// here by hand, because serde tells a deserializer a struct's field names but not where the
/// struct sits; the names themselves come from the types ([`fields_of`]), so they cannot drift
/// from them. A level missing here only loses the suggestion, never the "unknown key" report.
fn known_keys(parent: &[KeySeg<'_>]) -> Option<&'static [&'static str]> {
    use KeySeg::{Index as I, Key as K};
    let fields = match parent {
        [] => fields_of::<Config>(),
        [K("auth")] => fields_of::<AuthConfig>(),
        [K("auth"), K("basic_auth")] => fields_of::<BasicAuthConfig>(),
        [K("webhook")] => fields_of::<WebhookConfig>(),
        [K("server")] => fields_of::<ServerLimits>(),
        [K("tls")] => fields_of::<crate::tls::TlsConfig>(),
        [K("reconcile")] => fields_of::<ReconcileConfig>(),
        [K("storage")] => fields_of::<StorageConfig>(),
        [K("alertmanager")] => fields_of::<AlertmanagerConfig>(),
        [K("cluster")] => fields_of::<crate::cluster::ClusterConfig>(),
        [K("cluster"), K("etcd")] => fields_of::<crate::cluster::EtcdConfig>(),
        [K("cluster"), K("etcd"), K("tls")] => fields_of::<crate::cluster::EtcdTls>(),
        [K("services"), K(_), service @ ..] => match service {
            [] => fields_of::<ServiceConfig>(),
            [K("docker")] => fields_of::<DockerConfig>(),
            [K("docker"), K("containers"), I] | [K("burst"), K("container")] => {
                fields_of::<ContainerConfig>()
            }
            [K("haproxy")] => fields_of::<HaproxyConfig>(),
            [K("ec2")] | [K("burst"), K("ec2")] => fields_of::<Ec2Config>(),
            [K("ec2"), K("tag")] | [K("burst"), K("ec2"), K("tag")] => fields_of::<TagFilter>(),
            [K("timeouts")] => fields_of::<Timeouts>(),
            [K("cost")] => fields_of::<CostConfig>(),
            [K("readiness")] => fields_of::<ReadinessConfig>(),
            [K("drill")] => fields_of::<DrillConfig>(),
            [K("fast_path")] => fields_of::<crate::fastpath::FastPathConfig>(),
            [K("burst")] => fields_of::<BurstConfig>(),
            [K("burst"), K("haproxy")] => fields_of::<BurstHaproxy>(),
            _ => return None,
        },
        _ => return None,
    };
    Some(fields)
}

/// The field names serde's derive gives struct `T` (renames applied, skipped fields left out).
/// A derived `Deserialize` hands them to `Deserializer::deserialize_struct`, so a deserializer
/// that records that argument and then fails learns them from the type itself. That is simpler
/// than a `deny_unknown_fields` twin of every struct whose "expected one of ..." message would
/// have to be parsed, and keeps no hand-written copy of the names. A type that does not
/// deserialize as a plain struct (`flatten`, a hand-written impl) yields no names, hence no
/// suggestion; `known_keys_come_from_the_types` checks every mapped level yields some.
fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    #[derive(Debug)]
    struct Recorded;
    impl fmt::Display for Recorded {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("field names recorded")
        }
    }
    impl std::error::Error for Recorded {}
    impl de::Error for Recorded {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Recorded
        }
    }

    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = Recorded;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Recorded> {
            Err(Recorded)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Recorded> {
            *self.0 = fields;
            Err(Recorded)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    // Always Err(Recorded): the probe never produces a value, only the names.
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// The known key nearest to `key` if it is near enough to be a typo of it: optimal string
/// alignment distance (a swap of two letters is one edit), case-insensitive, at most one edit
/// for short keys and a third of the key's length for longer ones, so an unrelated key gets no
/// misleading suggestion. Ties go to the first field in declaration order.
fn closest_key(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let key = key.to_lowercase();
    let limit = (key.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| (strsim::osa_distance(&key, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn parse_matchers(raw: &[String], path: &str, errors: &mut Vec<String>) -> Vec<Matcher> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, s)| match Matcher::parse(s) {
            Ok(m) => Some(m),
            Err(e) => {
                errors.push(format!("{path}[{i}]: {e}"));
                None
            }
        })
        .collect()
}

/// The burst section: counts, timings, the slot names, and exactly one kind of unit.
fn validate_burst(
    b: &BurstConfig,
    haproxy: Option<&HaproxyConfig>,
    docker: Option<&DockerConfig>,
    svc: &str,
    errors: &mut Vec<String>,
) {
    let p = format!("{svc}.burst");
    if b.on.is_empty() {
        errors.push(format!("{p}.on: at least one matcher is needed"));
    }
    match &b.scale_in_on {
        Some(raw) if raw.is_empty() => errors.push(format!(
            "{p}.scale_in_on: at least one matcher is needed (or leave the key out)"
        )),
        // Every matcher of `on` among them: every underload alert would also be an overload.
        Some(raw) if b.on.iter().all(|m| trimmed(raw).contains(&m.trim())) => {
            errors.push(format!(
                "{p}.scale_in_on: every matcher of burst.on is among them, so the underload alert would also count as an overload; name the underload alert (e.g. alertname=\"onprem_underloaded\")"
            ))
        }
        _ => {}
    }
    if b.max == 0 || b.max > 1000 {
        errors.push(format!("{p}.max: must be between 1 and 1000"));
    }
    if b.min > b.max {
        errors.push(format!("{p}.min: {} is more than max {}", b.min, b.max));
    }
    if b.step == 0 {
        errors.push(format!("{p}.step: must be greater than 0"));
    }
    if b.scale_up_every.is_zero() || b.scale_in_every().is_zero() {
        errors.push(format!(
            "{p}: scale_up_every and scale_in_every must be greater than 0"
        ));
    }
    validate_slots(b, haproxy, &p, errors);
    validate_units(b, docker, &p, errors);
}

fn trimmed(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.trim()).collect()
}

/// `burst.haproxy`: the `server-template` slots the units are opened in.
fn validate_slots(
    b: &BurstConfig,
    haproxy: Option<&HaproxyConfig>,
    p: &str,
    errors: &mut Vec<String>,
) {
    if haproxy.is_none() {
        errors.push(format!(
            "{p}: needs the service's haproxy section (its runtime_api reaches the slots)"
        ));
    }
    let name_ok = !b.haproxy.server_prefix.is_empty()
        && b.haproxy
            .server_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        errors.push(format!(
            "{p}.haproxy.server_prefix: {:?} is not a valid HAProxy server name prefix",
            b.haproxy.server_prefix
        ));
    }
    if b.haproxy.weight > 256 {
        errors.push(format!("{p}.haproxy.weight: must be between 0 and 256"));
    }
    if b.haproxy.backend.as_ref().is_some_and(|be| be.is_empty()) {
        errors.push(format!("{p}.haproxy.backend: must not be empty"));
    }
}

/// `burst.container` or `burst.ec2`, and `burst.address`: what a unit is and where it is
/// reached, checked as unit 1 will be rendered.
fn validate_units(
    b: &BurstConfig,
    docker: Option<&DockerConfig>,
    p: &str,
    errors: &mut Vec<String>,
) {
    let before = errors.len();
    let max_port = u32::from(b.port_base) + b.max.saturating_sub(1);
    if b.address.contains("{port}") && (b.port_base == 0 || max_port > u32::from(u16::MAX)) {
        errors.push(format!(
            "{p}.port_base: address uses {{port}}: set port_base so that port_base + max - 1 <= 65535"
        ));
    }
    match (&b.container, &b.ec2) {
        (None, None) => errors.push(format!(
            "{p}: set container (container units) or ec2 (instance units)"
        )),
        (Some(_), Some(_)) => errors.push(format!("{p}: set container or ec2, not both")),
        (Some(c), None) => {
            if docker.is_none() {
                errors.push(format!(
                    "{p}.container: needs the service's docker section (the host the units run on)"
                ));
            }
            if b.address.contains("{private_ip}") {
                errors.push(format!(
                    "{p}.address: {{private_ip}} is only known for ec2 units"
                ));
            }
            // Checked as unit 1 will be rendered ({port} and {index} filled in).
            let one = crate::template::render_container(c, 1, b.port_base);
            crate::backend::docker::config::validate_container(
                &one,
                &format!("{p}.container"),
                errors,
            );
        }
        (None, Some(e)) => {
            e.validate(&format!("{p}.ec2"), errors);
            if !e.instance_ids.is_empty() && e.instance_ids.len() < b.max as usize {
                errors.push(format!(
                    "{p}.ec2.instance_ids: {} instance(s) for max {}: every unit needs one",
                    e.instance_ids.len(),
                    b.max
                ));
            }
        }
    }
    match crate::template::render_address(&b.address, 1, b.port_base, Some("10.0.0.1")) {
        Ok(_) => {}
        Err(e) => errors.push(format!("{p}.address: {e}")),
    }
    // Unit 1's problems are said once above; later units only when unit 1 is fine.
    if errors.len() == before {
        errors.extend(first_bad_unit(b, p));
    }
}

/// Units 2..=max rendered as the responder will render them ({index} and {port} can make a
/// later unit's port or address invalid where unit 1's is fine): the first unit that does
/// not render, with its problems. The responder builds every unit's spec at start, so a unit
/// that would fail there fails here, at load.
fn first_bad_unit(b: &BurstConfig, p: &str) -> Vec<String> {
    for i in 2..=b.max.min(1000) {
        let mut found = Vec::new();
        if let Some(c) = &b.container {
            let unit = crate::template::render_container(c, i, b.port_base);
            let key = format!("{p}.container (unit {i})");
            crate::backend::docker::config::validate_container(&unit, &key, &mut found);
        }
        if let Err(e) =
            crate::template::render_address(&b.address, i, b.port_base, Some("10.0.0.1"))
        {
            found.push(format!("{p}.address (unit {i}): {e}"));
        }
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}

/// Reads the secret files named in `auth`. An unreadable or empty secret file is an error
/// (naming the key and the file, never the content).
fn read_credentials(a: &AuthConfig) -> Result<Credentials, Vec<String>> {
    let mut errors = Vec::new();
    let mut read = |key: &str, path: &Path| -> Option<Secret> {
        match std::fs::read_to_string(path) {
            // Files written by editors and `echo` end in a newline that is not part of the secret.
            Ok(s) if !s.trim().is_empty() => {
                Some(Secret(s.trim_end_matches(['\n', '\r']).to_string()))
            }
            Ok(_) => {
                errors.push(format!("{key}: {} is empty", path.display()));
                None
            }
            Err(e) => {
                errors.push(format!("{key}: cannot read {}: {e}", path.display()));
                None
            }
        }
    };
    let bearer_token = match (&a.bearer_token, &a.bearer_token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => read("auth.bearer_token_file", path),
        (None, None) => None,
    };
    let basic = match &a.basic_auth {
        Some(b) => {
            let pw = match (&b.password, &b.password_file) {
                (Some(p), _) => Some(p.clone()),
                (None, Some(path)) => read("auth.basic_auth.password_file", path),
                (None, None) => None,
            };
            pw.map(|p| (b.username.clone(), p))
        }
        None => None,
    };
    if errors.is_empty() {
        Ok(Credentials {
            bearer_token,
            basic,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` is refused with every one of `wants` among the problems.
    fn assert_refused(text: &str, wants: &[&str]) {
        let errs = Config::from_str(text, Format::Yaml)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"))
            .to_string();
        for want in wants {
            assert!(
                errs.contains(want),
                "want {want:?} in:\n{errs}\nfor:\n{text}"
            );
        }
    }

    const EXAMPLE: &str = include_str!("../config/failover-responder.yaml");

    #[test]
    fn example_config_is_valid() {
        let cfg = Config::from_str(EXAMPLE, Format::Yaml).expect("example parses");
        let svc = &cfg.services["onprem-api"];
        assert_eq!(svc.failover_matchers.len(), 2);
        assert_eq!(svc.timeouts.healthy, Duration::from_secs(60));
        assert_eq!(svc.docker.as_ref().map(|d| d.containers.len()), Some(1));
    }

    #[test]
    fn issue_example_is_valid() {
        let text = r#"
listen_address: 127.0.0.1:9095
auth:
  bearer_token_file: /etc/failover-responder/token
services:
  onprem-api:
    failover_on: ['alertname="onprem_down"', 'service="onprem-api"']
    failback_on: ['alertname="onprem_recovered"', 'service="onprem-api"']
    docker:
      host: unix:///var/run/docker.sock
      containers:
        - name: cloud-api
          image: onprem-api:latest
          ports: ['127.0.0.1:8081:8080']
          health_url: http://127.0.0.1:8081/health
    haproxy:
      runtime_api: ['unix:/run/haproxy/admin.sock']
      backend: api
      cloud_servers: [cloud1]
    timeouts: {healthy: 60s, drain: 30s, stop: 10s}
"#;
        let cfg = Config::from_str(text, Format::Yaml).expect("issue example parses");
        assert_eq!(cfg.listen_address.port(), 9095);
        assert_eq!(
            cfg.services["onprem-api"].timeouts.drain,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn toml_works_too() {
        let text = r#"
[auth]
insecure_no_auth = true
[services.web]
failover_on = ['alertname="down"']
[services.web.haproxy]
runtime_api = ["tcp:127.0.0.1:9999"]
backend = "web"
cloud_servers = ["c1"]
"#;
        let cfg = Config::from_str(text, Format::Toml).expect("toml parses");
        assert!(cfg.services.contains_key("web"));
    }

    #[test]
    fn bad_configs_name_every_key() {
        // Each case: config text, and the messages that must appear (all of them).
        let cases: &[(&str, &[&str])] = &[
            (
                "services: {}\n",
                &["auth: no credentials configured", "services: at least one service"],
            ),
            (
                "auth: {insecure_no_auth: true}\nlisten_adress: 1.2.3.4:5\nservices:\n  a:\n    failover_on: ['x=\"y\"']\n    haproxy: {runtime_api: ['unix:/s'], backend: b, cloud_servers: [c], colud: 1}\n",
                &["listen_adress: unknown key", "services.a.haproxy.colud: unknown key"],
            ),
            (
                "auth: {insecure_no_auth: true}\nservices:\n  a:\n    failover_on: ['alertname=~\"(\"', 'bad,name=\"x\"']\n    failback_on: ['x']\n    docker: {host: 'ftp://x', containers: [{name: '-x', image: '', ports: ['99999:80'], health_url: 'gopher://x'}]}\n",
                &[
                    "services.a.failover_on[0]: invalid regex",
                    "services.a.failover_on[1]: invalid label name",
                    "services.a.failback_on[0]: missing operator",
                    "services.a.docker.host",
                    "services.a.docker.containers[0].name",
                    "services.a.docker.containers[0].image",
                    "services.a.docker.containers[0].ports[0]",
                    "services.a.docker.containers[0].health_url",
                ],
            ),
            (
                "auth: {insecure_no_auth: true}\nreconcile: {stuck_after: 2m}\nservices:\n  a:\n    failover_on: ['a=\"b\"']\n    haproxy: {runtime_api: ['unix:/s'], backend: b, cloud_servers: [c]}\n    timeouts: {healthy: 90s, drain: 20s, stop: 10s}\n",
                &["reconcile.stuck_after: 2m is not longer than what a pass of service a may wait (timeouts healthy + drain + stop = 2m)"],
            ),
            (
                "auth: {insecure_no_auth: true}\nservices:\n  a:\n    failover_on: []\n",
                &["services.a.failover_on: at least one", "services.a: needs docker, haproxy or ec2"],
            ),
            (
                "auth: {insecure_no_auth: true}\nservices:\n  a:\n    failover_on: ['a=\"b\"']\n    haproxy: {runtime_api: ['nope:x'], backend: b, cloud_servers: []}\n    timeouts: {healthy: 0s}\n",
                &[
                    "services.a.haproxy.runtime_api[0]",
                    "services.a.haproxy.cloud_servers: at least one",
                    "services.a.timeouts.healthy: must be greater than 0",
                ],
            ),
            (
                "auth: {insecure_no_auth: true}\nservices:\n  a:\n    failover_on: ['a=\"b\"']\n    timeouts: {healthy: soon}\n",
                &["services.a.timeouts.healthy"],
            ),
            (
                "auth: {insecure_no_auth: true}\nservices:\n  a:\n    failover_on: ['a=\"b\"']\n    haproxy: {runtime_api: ['/s'], backend: b, cloud_servers: [c]}\n  b:\n    failover_on: ['a=\"b\"']\n    haproxy: {runtime_api: ['/s'], backend: b, cloud_servers: [c]}\n",
                &["services.b.haproxy: server b/c on /s is also managed by service \"a\""],
            ),
            (
                "auth: {insecure_no_auth: true}\nservices:\n  a:\n    failover_on: ['a=\"b\"']\n    haproxy: {runtime_api: ['/s'], backend: b, cloud_servers: [c]}\n    cost: {instance_hourly_price: -1}\n    burst: {on: [], scale_in_on: [], min: 5, max: 2, step: 0, scale_up_every: 0s, address: 'x:{port}', haproxy: {server_prefix: 'bad prefix', weight: 300}, container: {name: '-u', image: i, ports: ['1:99999']}}\n",
                &[
                    "services.a.burst.on: at least one matcher",
                    "services.a.burst.scale_in_on: at least one matcher is needed (or leave the key out)",
                    "services.a.burst.min: 5 is more than max 2",
                    "services.a.burst.step: must be greater than 0",
                    "services.a.burst: scale_up_every and scale_in_every must be greater than 0",
                    "services.a.burst.haproxy.server_prefix",
                    "services.a.burst.haproxy.weight: must be between 0 and 256",
                    "services.a.burst.port_base: address uses {port}",
                    "services.a.burst.container: needs the service's docker section",
                    "services.a.burst.container.name: \"-u-1\" is not a valid container name",
                    "services.a.burst.container.ports[0]",
                    "services.a.cost.instance_hourly_price: must be a number >= 0",
                ],
            ),
            (
                "auth: {insecure_no_auth: true}\nservices:\n  a:\n    failover_on: ['a=\"b\"']\n    docker: {containers: [{name: c, image: i}]}\n    burst: {on: ['a=\"o\"'], max: 2, address: '{private_ip}:80', haproxy: {server_prefix: b}, container: {name: u, image: i}, ec2: {instance_ids: ['i-1']}, bogus: 1}\n",
                &[
                    "services.a.burst.bogus: unknown key",
                    "services.a.burst: needs the service's haproxy section",
                    "services.a.burst: set container or ec2, not both",
                ],
            ),
            (
                // Unit 1 renders fine (8001:80); unit 100 would publish port 80100.
                "auth: {insecure_no_auth: true}\nservices:\n  a:\n    failover_on: ['a=\"b\"']\n    docker: {containers: [{name: c, image: i}]}\n    haproxy: {runtime_api: ['/s'], backend: be, cloud_servers: [c]}\n    burst: {on: ['a=\"o\"'], scale_in_on: ['no operator'], max: 100, address: '127.0.0.1:{port}', port_base: 9000, haproxy: {server_prefix: b}, container: {name: u, image: i, ports: ['80{index}:80']}}\n",
                &[
                    "services.a.burst.scale_in_on[0]",
                    "services.a.burst.container (unit 100).ports[0]: \"80100:80\"",
                ],
            ),
            (
                "auth: {insecure_no_auth: true}\nservices:\n  a:\n    failover_on: ['a=\"b\"']\n    haproxy: {runtime_api: ['/s'], backend: be, cloud_servers: [c]}\n    burst: {on: ['a=\"o\"'], scale_in_on: [' a=\"o\"', 'x=\"y\"'], max: 3, address: '{private_ip}:80', haproxy: {server_prefix: b}, ec2: {instance_ids: ['i-1']}}\n  b:\n    failover_on: ['a=\"b\"']\n    haproxy: {runtime_api: ['/s'], backend: be, cloud_servers: [b2]}\n",
                &[
                    "services.a.burst.scale_in_on: every matcher of burst.on is among them",
                    "services.a.burst.ec2.instance_ids: 1 instance(s) for max 3",
                    "services.b.haproxy: server be/b2 on /s is also managed by service \"a\"",
                ],
            ),
        ];
        for (text, wants) in cases {
            assert_refused(text, wants);
        }
    }

    #[test]
    fn typos_name_the_key_and_the_closest_known_one() {
        // One case per level: config text, then the messages that must all appear. A typo in a
        // required key also makes serde stop at the missing key; both must be reported.
        let svc = "services:\n  a:\n    failover_on: ['a=\"b\"']\n    haproxy: {runtime_api: ['/s'], backend: b, cloud_servers: [c]}\n";
        let cases: &[(String, &[&str])] = &[
            // Top level, optional key.
            (
                format!("auth: {{insecure_no_auth: true}}\nlisten_adress: 1.2.3.4:5\n{svc}"),
                &["listen_adress: unknown key (did you mean `listen_address`?)"],
            ),
            // Top level, required key: the typo and the missing key.
            (
                "auth: {insecure_no_auth: true}\nservics:\n  a: {failover_on: ['a=\"b\"']}\n".to_string(),
                &[
                    "servics: unknown key (did you mean `services`?)",
                    // The root is the `config` crate's own deserializer, with its own wording.
                    "missing configuration field \"services\"",
                ],
            ),
            // Service level.
            (
                "auth: {insecure_no_auth: true}\nservices:\n  a:\n    failover_onn: ['a=\"b\"']\n    haproxy: {runtime_api: ['/s'], backend: b, cloud_servers: [c]}\n".to_string(),
                &[
                    "services.a.failover_onn: unknown key (did you mean `failover_on`?)",
                    "missing configuration field \"services.a.failover_on\"",
                ],
            ),
            // Docker container level (inside a list), a swap of two letters.
            (
                "auth: {insecure_no_auth: true}\nservices:\n  a:\n    failover_on: ['a=\"b\"']\n    docker: {containers: [{name: c, imgae: i}]}\n".to_string(),
                &[
                    "services.a.docker.containers[0].imgae: unknown key (did you mean `image`?)",
                    // (The `config` crate's own text drops the dot: `containers[0]image`.)
                    "services.a.docker.containers[0]: missing configuration field",
                ],
            ),
            // The cluster's etcd: a typo is named with its path and the key meant.
            (
                "auth: {insecure_no_auth: true}\ncluster: {name: a, etcd: {endpoint: ['http://127.0.0.1:2379']}}\nservices:\n  a:\n    failover_on: ['a=\"b\"']\n    haproxy: {runtime_api: ['/s'], backend: b, cloud_servers: [c]}\n".to_string(),
                &["cluster.etcd.endpoint: unknown key (did you mean `endpoints`?)"],
            ),
            // HAProxy level, a different case counts as a typo too.
            (
                "auth: {insecure_no_auth: true}\nservices:\n  a:\n    failover_on: ['a=\"b\"']\n    haproxy: {runtime_api: ['/s'], backend: b, cloud_servers: [c], Command_Timeout: 5s}\n".to_string(),
                &["services.a.haproxy.Command_Timeout: unknown key (did you mean `command_timeout`?)"],
            ),
        ];
        for (text, wants) in cases {
            assert_refused(text, wants);
        }
        // A key near no known one gets no guess.
        let text = format!("auth: {{insecure_no_auth: true}}\n{svc}    zzz: 1\n");
        let errs = Config::from_str(&text, Format::Yaml)
            .expect_err("unknown key refused")
            .to_string();
        assert!(errs.contains("services.a.zzz: unknown key"), "{errs}");
        assert!(!errs.contains("did you mean"), "{errs}");
    }

    #[test]
    fn known_keys_come_from_the_types() {
        use KeySeg::{Index as I, Key as K};
        // Every level mapped in known_keys, with one field it must list: a type that stops
        // deserializing as a plain struct would silently lose its suggestions otherwise.
        let levels: &[(&[KeySeg<'_>], &str)] = &[
            (&[], "services"),
            (&[K("auth")], "bearer_token_file"),
            (&[K("auth"), K("basic_auth")], "password_file"),
            (&[K("webhook")], "max_body_bytes"),
            (&[K("server")], "max_connections"),
            (&[K("tls")], "cert_file"),
            (&[K("reconcile")], "interval"),
            (&[K("storage")], "path"),
            (&[K("cluster")], "lease_ttl"),
            (&[K("cluster"), K("etcd")], "endpoints"),
            (&[K("cluster"), K("etcd"), K("tls")], "ca_file"),
            (&[K("alertmanager")], "url"),
            (&[K("services"), K("a")], "failover_on"),
            (&[K("services"), K("a"), K("docker")], "containers"),
            (
                &[K("services"), K("a"), K("docker"), K("containers"), I],
                "image",
            ),
            (&[K("services"), K("a"), K("haproxy")], "cloud_servers"),
            (&[K("services"), K("a"), K("ec2")], "instance_ids"),
            (&[K("services"), K("a"), K("ec2"), K("tag")], "key"),
            (&[K("services"), K("a"), K("timeouts")], "drain"),
            (&[K("services"), K("a"), K("cost")], "max_instances"),
            (&[K("services"), K("a"), K("burst")], "scale_up_every"),
            (
                &[K("services"), K("a"), K("burst"), K("haproxy")],
                "server_prefix",
            ),
            (
                &[K("services"), K("a"), K("burst"), K("container")],
                "health_url",
            ),
            (&[K("services"), K("a"), K("burst"), K("ec2")], "tag"),
            (
                &[K("services"), K("a"), K("burst"), K("ec2"), K("tag")],
                "value",
            ),
        ];
        for (level, field) in levels {
            let known = known_keys(level).expect("level is mapped");
            assert!(known.contains(field), "{field} not in {known:?}");
        }
        // Skipped fields are not config keys and are never suggested.
        let service = fields_of::<ServiceConfig>();
        assert!(!service.contains(&"failover_matchers"), "{service:?}");
        assert!(known_keys(&[K("nope")]).is_none());
    }

    #[test]
    fn quoted_utf8_label_names_in_yaml() {
        let text = "auth: {insecure_no_auth: true}\nservices:\n  a:\n    failover_on: ['\"service.name\"=\"onprem-api\"', 'severity=~\"crit.*\"']\n    haproxy: {runtime_api: ['/s'], backend: b, cloud_servers: [c]}\n";
        let cfg = Config::from_str(text, Format::Yaml).expect("quoted label name accepted");
        let ms = &cfg.services["a"].failover_matchers;
        assert_eq!(ms[0].name, "service.name");
        let labels: BTreeMap<String, String> =
            [("service.name", "onprem-api"), ("severity", "critical")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert!(crate::matcher::matches_all(ms, &labels));
    }

    #[test]
    fn load_reads_secrets_and_env_overrides() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret-token\n").expect("write token");
        let cfg_path = dir.path().join("c.yaml");
        let text = format!(
            "auth: {{bearer_token_file: {}}}\nservices:\n  a:\n    failover_on: ['a=\"b\"']\n    haproxy: {{runtime_api: ['/s'], backend: b, cloud_servers: [c]}}\n",
            token.display()
        );
        std::fs::write(&cfg_path, text).expect("write config");
        let env: HashMap<String, String> = [
            ("FAILOVER_RESPONDER__LISTEN_ADDRESS", "127.0.0.1:19999"),
            ("FAILOVER_RESPONDER__RECONCILE__INTERVAL", "3s"),
            ("FAILOVER_RESPONDER__WEBHOOK__MAX_BODY_BYTES", "4096"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let cfg = Config::load_with_env(&cfg_path, env).expect("loads");
        assert_eq!(cfg.listen_address.port(), 19999);
        assert_eq!(cfg.reconcile.interval, Duration::from_secs(3));
        assert_eq!(cfg.webhook.max_body_bytes, 4096);
        assert_eq!(
            cfg.auth
                .credentials
                .bearer_token
                .as_ref()
                .map(Secret::expose),
            Some("s3cret-token")
        );
        // The secret never shows in Debug output.
        assert!(!format!("{cfg:?}").contains("s3cret"));

        std::fs::remove_file(&token).expect("rm token");
        let err = Config::load_with_env(&cfg_path, HashMap::new())
            .expect_err("missing token file is refused")
            .to_string();
        assert!(err.contains("auth.bearer_token_file: cannot read"), "{err}");
    }
}
