//! The tasks beside the HTTP server, and the config reload that swaps them.
//!
//! Per service: its reconciler, its readiness check and its fast-path poller; once: the resync
//! from Alertmanager, the cluster's campaign. A reload (SIGHUP, `POST /-/reload`) reads the
//! config file again and validates all of it before anything changes. A config that does not
//! load, or that changes what only a restart can (the listener, storage, cluster membership,
//! connection limits, client certificates on or off), changes nothing and says every reason.
//! Otherwise it applies at once:
//!
//! - auth, `webhook.max_body_bytes` and the TLS material for the next request;
//! - a service added starts being reconciled;
//! - a service changed (its section, or `reconcile:` for all) is handed over: its reconciler
//!   ends after the pass it is in (a step is never cut short) and the new one starts then;
//! - a service removed stops being reconciled; its containers, servers and instances are left
//!   as they are (said in its events and the log), as a responder that is stopped leaves them;
//! - the resync runs again at once, so a service added sees alerts already firing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::config::{AuthConfig, Config};
use crate::metrics::{Metrics, ServiceLabels};
use crate::reconcile::{run_service, Context, ServiceRuntime, Services};
use crate::resync::Resync;
use crate::tls::Tls;

/// Why a reload changed nothing. Each message starts with the key it concerns.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load: every problem, with its key path.
    #[error("{} configuration problem(s): {}", .0.len(), .0.join("; "))]
    Invalid(Vec<String>),
    /// It loads, but changes what only a restart can change.
    #[error("needs a restart: {}", .0.join("; "))]
    NeedsRestart(Vec<String>),
    /// The responder is stopping.
    #[error("the responder is shutting down")]
    ShuttingDown,
}

impl ReloadError {
    pub fn problems(&self) -> &[String] {
        match self {
            ReloadError::Invalid(p) | ReloadError::NeedsRestart(p) => p,
            ReloadError::ShuttingDown => &[],
        }
    }
}

/// What a reload did, by service name.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    /// Handed over to their new config after the pass in flight.
    pub changed: Vec<String>,
    /// No longer reconciled; their cloud capacity is left as it is.
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// From reading the file to every change applied (handovers still waiting for a pass to
    /// end are not counted), in milliseconds.
    pub took_ms: u64,
}

/// The configuration's reload history as `GET /api/v1/status` shows it (`config`); the same
/// facts as the `config_last_reload_*` metrics, readable without credentials, so the problems
/// are named by key path only (a type error quotes the value it met).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigStatus {
    /// The file the responder reads (`--config.file`); absent when built without one (tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Whether the last load (start or reload) was applied.
    pub last_reload_successful: bool,
    /// When the running configuration was loaded (start or last good reload).
    pub last_reload_success_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When a reload was last refused, and the key paths of its problems.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_reload_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_failed_reload_keys: Vec<String>,
}

/// Starts, swaps and stops the tasks; reloads the config. Cheap to clone; one reload at a
/// time.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<tokio::sync::Mutex<State>>,
    metrics: Arc<Metrics>,
    config: Arc<std::sync::Mutex<ConfigStatus>>,
}

/// The handles that live as long as the listener, whatever the config says.
pub struct Shared {
    pub ctx: Context,
    pub services: Services,
    /// `auth:` as the HTTP layer checks it on each request.
    pub auth: Arc<ArcSwap<AuthConfig>>,
    pub max_body_bytes: Arc<AtomicUsize>,
    pub tls: Option<Tls>,
}

struct State {
    running: Config,
    shared: Shared,
    /// Per service: the token that retires it, and its task.
    tasks: BTreeMap<String, (CancellationToken, JoinHandle<()>)>,
    /// Tasks a reload retired (services removed, by name; the old resync, unnamed), still
    /// finishing: a service added again under a name starts after them. Awaited at shutdown.
    retiring: Vec<(String, JoinHandle<()>)>,
    resync: Option<(CancellationToken, JoinHandle<()>)>,
    /// The cluster's campaign and the wake-up on leadership; not reloadable.
    fixed: Vec<JoinHandle<()>>,
    stop: CancellationToken,
    /// The runtime `start` ran on: every task goes there, also those a reload started from
    /// an HTTP handler (whose own runtime is the worker's, which ends with the listener).
    rt: tokio::runtime::Handle,
}

impl Supervisor {
    /// Starts every task of `config` (whose services are already in `shared.services`),
    /// until `stop`.
    pub fn start(config: Config, shared: Shared, stop: CancellationToken) -> Self {
        let rt = tokio::runtime::Handle::current();
        let metrics = shared.ctx.metrics.clone();
        let mut tasks = BTreeMap::new();
        for svc in shared.services.current().iter() {
            let retire = stop.child_token();
            let task = spawn_service(
                &rt,
                svc.clone(),
                shared.ctx.clone(),
                stop.clone(),
                retire.clone(),
                Vec::new(),
            );
            tasks.insert(svc.name.clone(), (retire, task));
        }
        let mut fixed = Vec::new();
        if let Some(c) = &shared.ctx.cluster {
            info!(
                node = c.name(),
                "cluster: campaigning for the leader lease in etcd; acting only while leader"
            );
            fixed.push(tokio::spawn(c.clone().run(stop.clone())));
            fixed.push(tokio::spawn(wake_on_leadership(
                c.clone(),
                shared.services.clone(),
                stop.clone(),
            )));
        }
        let resync = spawn_resync(&rt, &config, &shared, &stop);
        let status = ConfigStatus {
            file: config.source.as_ref().map(|p| p.display().to_string()),
            ..ConfigStatus::default()
        };
        let supervisor = Supervisor {
            inner: Arc::new(tokio::sync::Mutex::new(State {
                running: config,
                shared,
                tasks,
                retiring: Vec::new(),
                resync,
                fixed,
                stop,
                rt,
            })),
            metrics,
            config: Arc::new(std::sync::Mutex::new(status)),
        };
        supervisor.note_reload(None);
        supervisor
    }

    /// The reload history for the status document.
    pub fn config_status(&self) -> ConfigStatus {
        self.config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A load applied (`None`: start or good reload) or refused (the problems' key paths): in
    /// the status document and in the `config_last_reload_*` metrics alike.
    fn note_reload(&self, failed_keys: Option<Vec<String>>) {
        let now = chrono::Utc::now();
        self.metrics
            .config_last_reload_successful
            .set(i64::from(failed_keys.is_none()));
        if failed_keys.is_none() {
            self.metrics
                .config_last_reload_success_timestamp
                .set(now.timestamp());
        }
        let mut c = self
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.last_reload_successful = failed_keys.is_none();
        match failed_keys {
            None => c.last_reload_success_at = Some(now),
            Some(keys) => {
                c.last_failed_reload_at = Some(now);
                c.last_failed_reload_keys = keys;
            }
        }
    }

    /// Reads the config file again and applies it (see the module doc). Errors: the file does
    /// not load, or needs a restart; nothing changed then.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let started = Instant::now();
        let mut state = self.inner.lock().await;
        if state.stop.is_cancelled() {
            return Err(ReloadError::ShuttingDown);
        }
        crate::systemd::reloading();
        let result = state.reload();
        crate::systemd::ready();
        match &result {
            Ok(report) => {
                self.note_reload(None);
                let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                info!(
                    added = ?report.added, changed = ?report.changed, removed = ?report.removed,
                    took_ms, "configuration reloaded"
                );
                state.record(
                    "",
                    "reload",
                    format!(
                        "configuration reloaded in {took_ms} ms: added {:?}, changed {:?}, removed {:?} (auth, webhook, TLS and reconcile settings as in the file)",
                        report.added, report.changed, report.removed
                    ),
                );
                return Ok(ReloadReport {
                    took_ms,
                    ..report.clone()
                });
            }
            Err(ReloadError::ShuttingDown) => {}
            Err(e) => {
                warn!(error = %e, "configuration reload failed; the running configuration stays");
                // The event is readable without credentials: the keys only, not the messages
                // (a type error quotes the value it met).
                let keys: Vec<&str> = e
                    .problems()
                    .iter()
                    .map(|p| p.split(": ").next().unwrap_or_default())
                    .collect();
                self.note_reload(Some(keys.iter().map(|k| k.to_string()).collect()));
                state.record(
                    "",
                    "reload",
                    format!(
                        "reload failed, the running configuration stays; problems at: {} (the reload's answer and the log say what)",
                        keys.join(", ")
                    ),
                );
            }
        }
        result
    }

    /// Stops every task (`stop` must be cancelled first) and waits for them.
    pub async fn join(&self) {
        let mut state = self.inner.lock().await;
        let mut handles: Vec<JoinHandle<()>> = std::mem::take(&mut state.retiring)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        handles.extend(
            std::mem::take(&mut state.tasks)
                .into_values()
                .map(|(_, t)| t),
        );
        handles.extend(state.resync.take().map(|(_, t)| t));
        handles.append(&mut state.fixed);
        for h in handles {
            let _ = h.await;
        }
    }

    /// Feeds the systemd watchdog every half `WatchdogSec` while every reconciler is alive
    /// (none panicked, none in a pass longer than `reconcile.stuck_after`), until `stop`. One
    /// that is not alive withholds the ping, so systemd restarts the responder when
    /// `WatchdogSec` runs out; a blocked runtime withholds it too, as this cannot run then.
    /// Returns at once when the unit has no watchdog.
    pub async fn feed_watchdog(self, stop: CancellationToken) {
        let Some(limit) = crate::systemd::watchdog_limit() else {
            return;
        };
        let every = (limit / 2).max(std::time::Duration::from_millis(100));
        info!(watchdog = %humantime::format_duration(limit), "systemd watchdog on: fed while every reconciler is alive");
        let mut tick = tokio::time::interval(every);
        let mut withheld = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let problems = self.liveness_problems().await;
            if problems.is_empty() {
                crate::systemd::watchdog_ping();
                if withheld {
                    info!("every reconciler is alive again: feeding the systemd watchdog");
                    withheld = false;
                }
            } else if !withheld {
                tracing::error!(problems = ?problems, "a reconciler is not alive: no longer feeding the systemd watchdog, which restarts the responder");
                withheld = true;
            }
        }
    }

    /// Every reconciler's liveness problem (empty: all alive).
    pub async fn liveness_problems(&self) -> Vec<String> {
        let state = self.inner.lock().await;
        let stuck_after = state.running.reconcile.stuck_after;
        state
            .shared
            .services
            .current()
            .iter()
            .filter_map(|s| {
                s.liveness
                    .problem(stuck_after)
                    .map(|p| format!("{}: {p}", s.name))
            })
            .collect()
    }
}

impl State {
    fn reload(&mut self) -> Result<ReloadReport, ReloadError> {
        let Some(path) = self.running.source.clone() else {
            return Err(ReloadError::Invalid(vec![
                "config.file: this configuration was not loaded from a file".into(),
            ]));
        };
        let new = Config::load(&path)
            .map_err(|e| ReloadError::Invalid(e.0))?
            .with_cli(self.running.cli.clone());
        let restart = needs_restart(&self.running, &new);
        if !restart.is_empty() {
            return Err(ReloadError::NeedsRestart(restart));
        }
        let all_changed =
            self.running.raw_section(&["reconcile"]) != new.raw_section(&["reconcile"]);
        let old = self.shared.services.current();
        // Every runtime is built before anything is swapped: a backend client that cannot be
        // made fails the reload with nothing changed.
        let mut report = ReloadReport::default();
        let mut next = Vec::new();
        let mut errors = Vec::new();
        for (name, cfg) in &new.services {
            let cfg = Arc::new(cfg.clone());
            let built = match old.iter().find(|s| &s.name == name) {
                None => {
                    report.added.push(name.clone());
                    ServiceRuntime::new(name, cfg)
                }
                Some(s)
                    if all_changed
                        || self.running.raw_section(&["services", name])
                            != new.raw_section(&["services", name]) =>
                {
                    report.changed.push(name.clone());
                    s.successor(cfg)
                }
                Some(s) => {
                    report.unchanged.push(name.clone());
                    Ok(s.clone())
                }
            };
            match built {
                Ok(rt) => next.push(rt),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(ReloadError::Invalid(errors));
        }
        report.removed = old
            .iter()
            .filter(|s| !new.services.contains_key(&s.name))
            .map(|s| s.name.clone())
            .collect();
        if let (Some(mine), Some(theirs)) = (&self.shared.tls, &new.tls_loaded) {
            // Checked by needs_restart; a failure here would be a bug, and changes nothing.
            mine.adopt(theirs)
                .map_err(|e| ReloadError::NeedsRestart(vec![e.to_string()]))?;
        }

        // From here on nothing fails.
        self.shared.auth.store(Arc::new(new.auth.clone()));
        self.shared
            .max_body_bytes
            .store(new.webhook.max_body_bytes, Ordering::Relaxed);
        self.shared.ctx.settings = new.reconcile.clone();
        self.shared.services.set(next.clone());
        let old_by_name: BTreeMap<&str, &ServiceRuntime> =
            old.iter().map(|s| (s.name.as_str(), s)).collect();
        for name in &report.removed {
            if let (Some((retire, task)), Some(svc)) =
                (self.tasks.remove(name), old_by_name.get(name.as_str()))
            {
                retire.cancel();
                // Its series and status go once its last pass is over (that pass would set
                // them again); left standing still, its gauges would page.
                let metrics = self.shared.ctx.metrics.clone();
                let status = self.shared.ctx.status.clone();
                let (gone, targets) = (name.clone(), svc.world.targets());
                let forget = self.rt.spawn(async move {
                    let _ = task.await;
                    metrics.forget_service(&gone, &targets, crate::backend::CHECKS);
                    status.forget(&gone);
                });
                self.retiring.push((name.clone(), forget));
            }
            warn!(service = %name, "removed from the configuration: no longer reconciled; its containers, servers and instances are left as they are");
            self.record(name, "reload", "removed from the configuration: no longer reconciled; its cloud capacity is left as it is".into());
        }
        for svc in next.iter().filter(|s| !report.unchanged.contains(&s.name)) {
            // Whatever still runs under this name goes first: the task it replaces, or that of
            // a service of this name removed earlier and still in its pass.
            let mut before: Vec<JoinHandle<()>> = self
                .tasks
                .remove(&svc.name)
                .map(|(retire, task)| {
                    retire.cancel();
                    task
                })
                .into_iter()
                .collect();
            let (same, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retiring)
                .into_iter()
                .partition(|(n, _)| n == &svc.name);
            self.retiring = others;
            before.extend(same.into_iter().map(|(_, t)| t));
            let retire = self.stop.child_token();
            let task = spawn_service(
                &self.rt,
                svc.clone(),
                self.shared.ctx.clone(),
                self.stop.clone(),
                retire.clone(),
                before,
            );
            self.tasks.insert(svc.name.clone(), (retire, task));
            let what = if report.added.contains(&svc.name) {
                "added by a configuration reload: reconciled from now on"
            } else {
                "configuration changed by a reload: the new one applies from the next pass"
            };
            self.record(&svc.name, "reload", what.into());
        }
        if let Some((retire, task)) = self.resync.take() {
            retire.cancel();
            self.retiring.push((String::new(), task));
        }
        self.resync = spawn_resync(&self.rt, &new, &self.shared, &self.stop);
        self.retiring.retain(|(_, t)| !t.is_finished());
        self.running = new;
        Ok(report)
    }

    /// An event in the service's history; a store that cannot write it is logged, not fatal.
    fn record(&self, service: &str, kind: &'static str, message: String) {
        let store = self.shared.ctx.store.clone();
        let service = service.to_string();
        self.rt.spawn(async move {
            if let Err(e) = store.event(&service, kind, message, vec![]).await {
                warn!(service, error = %e, "could not record the reload in the events");
            }
        });
    }
}

/// What in `new` only a restart can apply, compared with `running`: one line per key, saying
/// why. Empty: the reload may proceed.
pub fn needs_restart(running: &Config, new: &Config) -> Vec<String> {
    let mut why = Vec::new();
    let (a, b) = (
        running.effective_listen_address(),
        new.effective_listen_address(),
    );
    if a != b {
        why.push(format!(
            "listen_address: {a} -> {b}: the listener is bound at start; restart to move it"
        ));
    }
    // The path in force (`--storage.path` wins over the file), the rest as written.
    let storage = |c: &Config| {
        let mut raw = c.raw_section(&["storage"]);
        if let Some(map) = raw.as_object_mut() {
            map.remove("path");
        }
        (c.storage.path.clone(), raw)
    };
    if storage(running) != storage(new) {
        why.push("storage: changed; the database is opened at start, restart to apply it".into());
    }
    for (key, reason) in [
        (
            "server",
            "connection limits are set when the listener starts",
        ),
        (
            "cluster",
            "membership of the etcd lease is set at start (and etcd's credentials read then)",
        ),
    ] {
        if running.raw_section(&[key]) != new.raw_section(&[key]) {
            why.push(format!("{key}: changed; {reason}, restart to apply it"));
        }
    }
    match (&running.tls_loaded, &new.tls_loaded) {
        (None, None) => {}
        (Some(a), Some(b)) if a.client_certificates() == b.client_certificates() => {}
        (Some(a), Some(b)) => why.push(format!(
            "tls.client_ca_file: client certificates {} -> {}: set when the listener starts; restart to apply it",
            on_off(a.client_certificates()),
            on_off(b.client_certificates())
        )),
        (a, b) => why.push(format!(
            "tls: HTTPS {} -> {}: the listener's protocol is set at start; restart to apply it",
            on_off(a.is_some()),
            on_off(b.is_some())
        )),
    }
    why
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// One service's tasks under one config: waits for `after` (the reconciler it replaces, ending
/// its pass), then runs the readiness check and the fast-path poller (both only observe, so
/// they stop at once on `retire`) beside the reconciler (which stops between passes).
fn spawn_service(
    rt: &tokio::runtime::Handle,
    svc: ServiceRuntime,
    ctx: Context,
    stop: CancellationToken,
    retire: CancellationToken,
    after: Vec<JoinHandle<()>>,
) -> JoinHandle<()> {
    let inner = rt.clone();
    rt.spawn(async move {
        let handover = !after.is_empty();
        for t in after {
            let _ = t.await;
        }
        if handover && !retire.is_cancelled() {
            info!(service = %svc.name, "handover done: the reloaded configuration is in force");
        }
        let mut side = vec![inner.spawn(crate::readiness::run(
            svc.clone(),
            ctx.clone(),
            retire.clone(),
        ))];
        if let (Some(watch), Some(f), Some(h)) =
            (&svc.fast_path, &svc.config.fast_path, &svc.config.haproxy)
        {
            // The series exist from the start (0), so rules see a service that never triggered.
            let l = ServiceLabels {
                service: svc.name.clone(),
            };
            let _ = ctx.metrics.fast_path.triggers.get_or_create(&l);
            let _ = ctx.metrics.fast_path.unconfirmed.get_or_create(&l);
            let _ = ctx.metrics.fast_path.overdue.get_or_create(&l);
            side.push(inner.spawn(crate::fastpath::watch::run(
                svc.name.clone(),
                f.clone(),
                svc.world.haproxy().to_vec(),
                h.backend.clone(),
                watch.clone(),
                svc.wake.clone(),
                retire.clone(),
            )));
        }
        // Its own task: a panic in it ends that task only (its liveness says so, which starves
        // the watchdog), and the side tasks are still stopped and awaited here.
        let _ = inner
            .spawn(run_service(svc, ctx, stop, retire.clone()))
            .await;
        retire.cancel();
        for t in side {
            let _ = t.await;
        }
    })
}

fn spawn_resync(
    rt: &tokio::runtime::Handle,
    config: &Config,
    shared: &Shared,
    stop: &CancellationToken,
) -> Option<(CancellationToken, JoinHandle<()>)> {
    let Some(am) = &config.alertmanager else {
        warn!("alertmanager.url is not set: a lost or stale notification is repaired only by the next one (see the incarnation rules in the README)");
        return None;
    };
    let resync = Resync::new(
        am.clone(),
        shared.ctx.store.clone(),
        shared.ctx.status.clone(),
        shared.ctx.metrics.clone(),
        shared.services.clone(),
    );
    let retire = stop.child_token();
    let task = rt.spawn(resync.run(retire.clone()));
    Some((retire, task))
}

/// Wakes every service's reconciler when this node becomes leader: a takeover acts at once,
/// not at the next timer.
async fn wake_on_leadership(cluster: Cluster, services: Services, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = cluster.gained() => services.current().iter().for_each(|s| s.wake.notify_one()),
            () = stop.cancelled() => return,
        }
    }
}

/// Reloads on every SIGHUP until `stop`, from `hup` ([`sighup`]).
pub async fn reload_on_sighup(
    supervisor: Supervisor,
    mut hup: tokio::signal::unix::Signal,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            // A SIGHUP racing the shutdown loses: no reload after STOPPING=1.
            biased;
            () = stop.cancelled() => return,
            _ = hup.recv() => {
                info!("SIGHUP: reloading the configuration");
                // The outcome is logged and in the metrics; nothing else to do with it here.
                let _ = supervisor.reload().await;
            }
        }
    }
}

/// Installs the SIGHUP handler. Errors: the signal cannot be listened for.
pub fn sighup() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CliOverrides, Format};

    const BASE: &str = "auth: {insecure_no_auth: true}
reconcile: {interval: 10s}
services:
  api:
    failover_on: ['alertname=\"onprem_down\"']
    haproxy: {runtime_api: ['unix:/run/haproxy/admin.sock'], backend: api, cloud_servers: [cloud1]}
";

    fn load(extra: &str, cli: &CliOverrides) -> Config {
        let text = format!("{extra}\n{BASE}");
        Config::from_str(&text, Format::Yaml)
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
            .with_cli(cli.clone())
    }

    #[test]
    fn only_what_is_set_at_start_needs_a_restart() {
        let none = CliOverrides::default();
        let flag = CliOverrides {
            listen_address: "127.0.0.1:9999".parse().ok(),
            ..CliOverrides::default()
        };
        let cluster = "cluster: {name: a, etcd: {endpoints: ['http://127.0.0.1:2379']}}";
        // (top-level lines of the running config, of the new one, the flags, the keys named)
        let cases: &[(&str, &str, &CliOverrides, &[&str])] = &[
            ("", "", &none, &[]),
            // Reloadable: they are not named.
            ("", "webhook: {max_body_bytes: 4096}", &none, &[]),
            (
                "",
                "listen_address: 127.0.0.1:9096",
                &none,
                &["listen_address"],
            ),
            // The flag wins over the file: the file's address moving changes nothing.
            ("", "listen_address: 127.0.0.1:9096", &flag, &[]),
            ("", "storage: {events_max_age: 1d}", &none, &["storage"]),
            ("", "storage: {path: /elsewhere}", &none, &["storage"]),
            ("", "server: {workers: 3}", &none, &["server"]),
            ("", cluster, &none, &["cluster"]),
            (cluster, cluster, &none, &[]),
            (
                "",
                "listen_address: 127.0.0.1:1\nserver: {workers: 3}",
                &none,
                &["listen_address", "server"],
            ),
        ];
        for (old, new, cli, want) in cases {
            let got = needs_restart(&load(old, cli), &load(new, cli));
            let keys: Vec<&str> = got
                .iter()
                .map(|l| l.split(':').next().unwrap_or_default())
                .collect();
            assert_eq!(&keys, want, "{old:?} -> {new:?}: {got:?}");
        }
    }
}
