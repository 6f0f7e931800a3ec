//! One service's backends as the reconciler sees them: built once from its config, observed all
//! at once ([`World::observe`]), and each planned step sent to the backend it belongs to
//! ([`World::run`]). The one module that names every backend: the reconciler and the planner
//! only see observations and steps. Adding a backend is its folder under `backend/` plus its
//! lines here (README, "Layout").

use std::time::{Duration, Instant};

use tracing::warn;

use crate::backend::docker::{ContainerSpec, DockerBackend};
use crate::backend::ec2::{self, Ec2Backend};
use crate::backend::haproxy::{self, RuntimeApi};
use crate::backend::{BackendError, Problem};
use crate::burst;
use crate::config::ServiceConfig;
use crate::plan::{ContainerObs, ContainerState, Health, InstanceObs, InstanceState, Observed};
use crate::plan::{OpState, ServerRef, Step, UnitObs};

/// How often waits re-check the world.
const POLL: Duration = Duration::from_millis(200);

/// The clients of one service's backends. Cheap to clone.
#[derive(Clone)]
pub struct World {
    docker: Option<DockerBackend>,
    /// The failover containers, typed once from the config.
    containers: Vec<ContainerSpec>,
    /// Burst unit `i`'s container at `i - 1`, rendered from the template once.
    units: Vec<ContainerSpec>,
    haproxy: Vec<RuntimeApi>,
    ec2: Option<Ec2Backend>,
    /// The instance pool of EC2 burst units.
    burst_ec2: Option<Ec2Backend>,
}

/// How a step ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDone {
    Done,
    /// The drain deadline passed with sessions left; closing anyway, as configured.
    DrainTimedOut,
    /// The desired state changed during a wait.
    Superseded,
}

/// Whether the desired state has moved on: waits stop early when it answers true.
pub type Superseded<'a> = &'a (dyn Fn() -> bool + Send + Sync);

impl World {
    /// The clients and container specs for `config`, built once when the responder starts.
    /// Errors: a Runtime API address or a port publication that does not parse (the config
    /// check refuses both at load, every burst unit included, with their key paths; so this
    /// names a bug: nothing is skipped silently).
    pub fn new(config: &ServiceConfig) -> Result<World, String> {
        let mut haproxy = Vec::new();
        if let Some(h) = &config.haproxy {
            for a in &h.runtime_api {
                haproxy.push(RuntimeApi::new(a, h.command_timeout)?);
            }
        }
        let containers = config
            .docker
            .iter()
            .flat_map(|d| &d.containers)
            .map(ContainerSpec::new)
            .collect::<Result<_, _>>()?;
        let units = match &config.burst {
            Some(b) => b
                .container
                .iter()
                .flat_map(|c| (1..=b.max).map(|i| burst::render_container(c, i, b.port_base)))
                .map(|c| ContainerSpec::new(&c))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(World {
            docker: config.docker.as_ref().map(|d| DockerBackend::new(&d.host)),
            containers,
            units,
            haproxy,
            ec2: config.ec2.clone().map(Ec2Backend::new),
            burst_ec2: config
                .burst
                .as_ref()
                .and_then(|b| b.ec2.clone())
                .map(Ec2Backend::new),
        })
    }

    /// The Runtime APIs of every HAProxy, in config order.
    pub fn haproxy(&self) -> &[RuntimeApi] {
        &self.haproxy
    }

    /// Observes everything `config` names, concurrently: the failover capacity (containers,
    /// instances, cloud servers on every HAProxy) and every burst unit `1..=burst.max`. Never
    /// fails: what cannot be asked is observed as unknown, with the reason.
    pub async fn observe(&self, service: &str, config: &ServiceConfig) -> (Observed, Vec<UnitObs>) {
        let (mut observed, mut units, levels) = tokio::join!(
            self.observe_failover(service, config),
            self.observe_units(service, config),
            haproxy::level_blockers(&self.haproxy),
        );
        haproxy::apply_levels(&levels, &mut observed);
        for u in &mut units {
            haproxy::apply_levels(&levels, &mut u.observed);
        }
        (observed, units)
    }

    /// What would keep a failover (and bursting) from working now, on every backend (HAProxy
    /// beside the cloud side), changing nothing (each backend's `readiness`); empty when
    /// nothing would. The containers of a cold standby are not checked while none of its instances
    /// runs: their engine runs on those instances.
    pub async fn readiness(&self, service: &str, config: &ServiceConfig) -> Vec<Problem> {
        // EC2 first: a failover pool observed once tells both its own problems and whether
        // the Docker engine on it can be asked.
        let cloud = async {
            let mut problems = Vec::new();
            let mut engine_reachable = true;
            if let (Some(e), Some(cfg)) = (&self.ec2, &config.ec2) {
                let pool = ec2::observe_pool(e, cfg).await;
                engine_reachable = pool
                    .as_ref()
                    .is_ok_and(|p| p.iter().any(|i| i.state == InstanceState::Running));
                problems.extend(ec2::readiness(e, cfg, pool).await);
            }
            let burst = config.burst.as_ref().and_then(|b| b.ec2.as_ref());
            if let (Some(e), Some(cfg)) = (&self.burst_ec2, burst) {
                let pool = ec2::observe_pool(e, cfg).await;
                problems.extend(ec2::readiness(e, cfg, pool).await);
            }
            if let (Some(d), true) = (&self.docker, engine_reachable) {
                let specs: Vec<ContainerSpec> =
                    self.containers.iter().chain(&self.units).cloned().collect();
                problems.extend(d.readiness(service, &specs).await);
            }
            problems
        };
        let haproxy = async {
            let Some(h) = &config.haproxy else {
                return Vec::new();
            };
            let backend = burst_backend(config);
            let slots = config.burst.as_ref().map(|b| haproxy::Slots {
                backend: &backend,
                prefix: &b.haproxy.server_prefix,
                max: b.max,
            });
            let onprem = config
                .fast_path
                .as_ref()
                .map_or(&[][..], |f| f.onprem_servers.as_slice());
            let servers = haproxy::Servers {
                backend: &h.backend,
                cloud: &h.cloud_servers,
                onprem,
            };
            haproxy::readiness(&self.haproxy, servers, slots).await
        };
        let (mut problems, h) = tokio::join!(cloud, haproxy);
        problems.extend(h);
        problems
    }

    /// HAProxy's own verdict on every cloud server, on every HAProxy (the `status` column of
    /// `show stat`, [`OpState::from_stat_status`]): Up only for `UP`, checked since it last
    /// changed, not the `UP 1/3` HAProxy assumes right after maintenance, when `srv_op_state`
    /// already says 2 even for a server whose check can only fail. None: that HAProxy could
    /// not be asked, or does not have the server. For verifying a failover and a drill.
    pub async fn checked(&self, config: &ServiceConfig) -> Vec<(ServerRef, Option<OpState>)> {
        self.cloud_stat(config, "status")
            .await
            .into_iter()
            .map(|(t, v)| (t, v.ok().flatten().map(|s| OpState::from_stat_status(&s))))
            .collect()
    }

    /// The cloud servers that are not `backup` servers on some HAProxy (or that HAProxy could
    /// not say), each with why: opening such a server while on-prem serves would give it live
    /// traffic, so a drill is refused. Empty when every one is a backup server.
    pub async fn not_backup(&self, config: &ServiceConfig) -> Vec<String> {
        let mut out = Vec::new();
        for (t, bck) in self.cloud_stat(config, "bck").await {
            let at = format!("{}/{} on {}", t.backend, t.server, t.api);
            match bck.as_ref().map(Option::as_deref) {
                Ok(Some("1")) => {}
                Ok(Some(_)) => out.push(format!("{at} is not a backup server")),
                Ok(None) => out.push(format!("{at} does not exist")),
                Err(e) => out.push(format!("{at}: HAProxy could not say: {e}")),
            }
        }
        out
    }

    /// `column` of `show stat` for every cloud server on every HAProxy, asked concurrently:
    /// its value (None: not in the backend), or why that HAProxy could not be asked.
    async fn cloud_stat(
        &self,
        config: &ServiceConfig,
        column: &str,
    ) -> Vec<(ServerRef, Result<Option<String>, String>)> {
        let Some(h) = &config.haproxy else {
            return Vec::new();
        };
        let answers = futures_util::future::join_all(
            self.haproxy
                .iter()
                .map(|api| api.stat_column(&h.backend, &h.cloud_servers, column)),
        )
        .await;
        let mut out = Vec::new();
        for (api, answer) in self.haproxy.iter().zip(answers) {
            for server in &h.cloud_servers {
                let target = ServerRef {
                    api: api.label.clone(),
                    backend: h.backend.clone(),
                    server: server.clone(),
                };
                let value = match &answer {
                    Ok(m) => Ok(m.get(server).cloned()),
                    Err(e) => Err(e.to_string()),
                };
                out.push((target, value));
            }
        }
        out
    }

    /// Every `(backend, target)` pair [`Self::answered`] can name: to drop their series when a
    /// reload removes the service.
    pub fn targets(&self) -> Vec<(&'static str, String)> {
        let docker = self.docker.iter().map(|d| ("docker", d.host().to_string()));
        let haproxy = self.haproxy.iter().map(|a| ("haproxy", a.label.clone()));
        docker.chain(haproxy).collect()
    }

    /// Whether each backend observed answered: `(backend, target, up)` per observation, for
    /// the `backend_up` metric.
    pub fn answered(&self, observed: &Observed) -> Vec<(&'static str, String, bool)> {
        let docker = self.docker.as_ref().map_or("", |d| d.host());
        let containers = observed.containers.iter().map(|c| {
            let up = !matches!(c.state, ContainerState::Unknown { .. });
            ("docker", docker.to_string(), up)
        });
        let servers = observed.servers.iter().map(|s| {
            let up = !matches!(s.state, crate::plan::ServerState::Unknown { .. });
            ("haproxy", s.target.api.clone(), up)
        });
        containers.chain(servers).collect()
    }

    async fn observe_failover(&self, service: &str, config: &ServiceConfig) -> Observed {
        let containers = async {
            let mut out = Vec::new();
            if let Some(d) = &self.docker {
                for c in &self.containers {
                    let state = d.observe(service, c).await;
                    out.push(ContainerObs {
                        name: c.name.clone(),
                        state,
                    });
                }
            }
            out
        };
        let servers = async {
            let Some(h) = &config.haproxy else {
                return Vec::new();
            };
            let answers = haproxy::observe_all(&self.haproxy, &h.backend, &h.cloud_servers).await;
            let mut out = Vec::new();
            for (api, answer) in self.haproxy.iter().zip(&answers) {
                for server in &h.cloud_servers {
                    out.push(haproxy::server_obs(api, &h.backend, server, answer, false));
                }
            }
            out
        };
        let instances = async {
            match (&self.ec2, &config.ec2) {
                (Some(e), Some(cfg)) => ec2::observe_pool(e, cfg)
                    .await
                    .unwrap_or_else(|err| ec2::unknown_pool(cfg, &err)),
                _ => Vec::new(),
            }
        };
        let (mut containers, servers, instances) = tokio::join!(containers, servers, instances);
        // Containers live on the instances: with none running, they are not running either, and
        // their engine is not there to ask.
        if !instances.is_empty() && !instances.iter().any(|i| i.state == InstanceState::Running) {
            for c in &mut containers {
                if matches!(c.state, ContainerState::Unknown { .. }) {
                    c.state = ContainerState::Stopped;
                }
            }
        }
        Observed {
            containers,
            servers,
            instances,
        }
    }

    /// Every burst unit `1..=max`: its container or instance and its slot on every HAProxy (one
    /// `show servers state` per HAProxy for all slots).
    async fn observe_units(&self, service: &str, config: &ServiceConfig) -> Vec<UnitObs> {
        let Some(b) = &config.burst else {
            return Vec::new();
        };
        let backend = burst_backend(config);
        let slots: Vec<String> = (1..=b.max)
            .map(|i| burst::slot_name(&b.haproxy.server_prefix, i))
            .collect();
        let pool = async {
            match (&self.burst_ec2, &b.ec2) {
                (Some(e), Some(cfg)) => ec2::observe_pool(e, cfg).await,
                _ => Ok(Vec::new()),
            }
        };
        let (answers, pool) =
            tokio::join!(haproxy::observe_all(&self.haproxy, &backend, &slots), pool);
        let mut units = Vec::new();
        for (n, slot) in (1..=b.max).zip(&slots) {
            let mut containers = Vec::new();
            let unit = usize::try_from(n - 1).ok().and_then(|i| self.units.get(i));
            if let (Some(spec), Some(d)) = (unit, &self.docker) {
                let state = d.observe(service, spec).await;
                containers.push(ContainerObs {
                    name: spec.name.clone(),
                    state,
                });
            }
            let servers = self
                .haproxy
                .iter()
                .zip(&answers)
                .map(|(api, answer)| haproxy::server_obs(api, &backend, slot, answer, true))
                .collect();
            let instances: Vec<InstanceObs> = match &pool {
                Ok(list) => list
                    .get(usize::try_from(n - 1).unwrap_or(usize::MAX))
                    .cloned()
                    .into_iter()
                    .collect(),
                // EC2 cannot be asked: every unit's instance is unknown.
                Err(e) => vec![InstanceObs {
                    id: format!("for burst unit {n}"),
                    state: InstanceState::Unknown {
                        reason: e.to_string(),
                    },
                    private_ip: None,
                }],
            };
            let ip = instances.first().and_then(|i| i.private_ip.as_deref());
            // Every unit's address is checked at load with a stand-in IP: only an instance's
            // IP not known yet fails here (the plan says the unit waits for it).
            let address = burst::render_address(&b.address, n, b.port_base, ip).ok();
            units.push(UnitObs {
                index: n,
                observed: Observed {
                    containers,
                    servers,
                    instances,
                },
                address,
            });
        }
        units
    }

    /// Runs one step on the backend it belongs to. `burst`: the step acts on burst units (its
    /// EC2 steps go to the burst pool). Waits poll every 200 ms up to their `timeouts` entry
    /// and end early when `superseded` answers true. Errors: what the backend refused or could
    /// not be asked, a wait's timeout (naming what it still waited for), or a step naming
    /// something not in this service's config.
    pub async fn run(
        &self,
        service: &str,
        config: &ServiceConfig,
        step: &Step,
        burst: bool,
        superseded: Superseded<'_>,
    ) -> Result<StepDone, BackendError> {
        let timeouts = &config.timeouts;
        match step {
            // Docker. `start` checks again what it finds: it recreates only what may go, and starts
            // only the container it checked or created.
            Step::StartContainer { container } => {
                let (d, c) = self.container(container)?;
                d.start(service, c, false).await?;
            }
            Step::RecreateContainer { container } => {
                let (d, c) = self.container(container)?;
                d.start(service, c, true).await?;
            }
            Step::StopContainer { container } => {
                let (d, c) = self.container(container)?;
                d.stop(service, c, timeouts.stop).await?;
            }
            Step::WaitHealthy { containers } => {
                return self
                    .wait_healthy(service, config, containers, superseded)
                    .await
            }
            Step::WaitDockerReady => return self.wait_docker(config, superseded).await,
            // HAProxy.
            Step::SetServer { target: t, state } => {
                self.api(t)?
                    .set_state(&t.backend, &t.server, *state)
                    .await?;
            }
            Step::SetServerAddr {
                target: t,
                addr,
                port,
            } => {
                self.api(t)?
                    .set_addr(&t.backend, &t.server, addr, *port)
                    .await?;
            }
            Step::SetWeight { target: t, weight } => {
                self.api(t)?
                    .set_weight(&t.backend, &t.server, *weight)
                    .await?;
            }
            Step::WaitDrained { servers } => {
                return self
                    .wait_drained(service, config, servers, superseded)
                    .await
            }
            // EC2.
            Step::StartInstances { ids } => self.pool(burst)?.start(ids).await?,
            Step::WaitInstancesRunning { ids } => self.pool(burst)?.wait_running(ids).await?,
            Step::StopInstances { ids } => self.pool(burst)?.stop(ids).await?,
        }
        Ok(StepDone::Done)
    }

    /// Polls until every container is healthy; fails at once when one exits or turns out not
    /// to be as configured, and says on timeout what Docker last reported of each.
    async fn wait_healthy(
        &self,
        service: &str,
        config: &ServiceConfig,
        containers: &[String],
        superseded: Superseded<'_>,
    ) -> Result<StepDone, BackendError> {
        let limit = config.timeouts.healthy;
        let polled = poll_until(limit, superseded, || async {
            // What Docker says of each container still not healthy, for the timeout's
            // message ("starting" and "unhealthy" call for different fixes).
            let mut pending = Vec::new();
            for name in containers {
                let (d, c) = self.container(name)?;
                let exited = |message: String| BackendError::Rejected {
                    target: format!("container {name}"),
                    message,
                    retryable: true,
                };
                match d.observe(service, c).await {
                    ContainerState::Running {
                        health: Health::Healthy,
                    } => {}
                    // Stopped while we waited (crashed on start): fail, so backoff applies
                    // and the next pass starts it again.
                    ContainerState::Stopped | ContainerState::Absent => {
                        return Err(exited("exited before becoming healthy".into()))
                    }
                    // Replaced under its name while we waited: never waited into "healthy";
                    // the next pass plans for what is there now.
                    ContainerState::Mismatch { reason, .. } => {
                        return Err(exited(format!("not as configured: {reason}")))
                    }
                    other => pending.push(format!("{name}: {}", other.describe())),
                }
            }
            Ok(pending)
        })
        .await?;
        polled.or_else(|last| {
            Err(BackendError::Timeout {
                what: format!(
                    "waiting for {} to be healthy (Docker last said {})",
                    containers.join(","),
                    last.join(", ")
                ),
                after: limit,
            })
        })
    }

    /// Polls the Docker engine (on an instance just started) until it answers.
    async fn wait_docker(
        &self,
        config: &ServiceConfig,
        superseded: Superseded<'_>,
    ) -> Result<StepDone, BackendError> {
        let Some(d) = &self.docker else {
            return Ok(StepDone::Done);
        };
        let limit = config.timeouts.healthy;
        let polled = poll_until(limit, superseded, || async {
            Ok(match d.ping().await {
                Ok(()) => vec![],
                Err(e) => vec![e.to_string()],
            })
        })
        .await?;
        polled.or_else(|last| {
            Err(BackendError::Timeout {
                what: format!("docker {} answering ({})", d.host(), last.join(", ")),
                after: limit,
            })
        })
    }

    /// Polls until the servers have no sessions; past `timeouts.drain` they are closed anyway
    /// (said in the log and in the step's outcome).
    async fn wait_drained(
        &self,
        service: &str,
        config: &ServiceConfig,
        servers: &[ServerRef],
        superseded: Superseded<'_>,
    ) -> Result<StepDone, BackendError> {
        let polled = poll_until(config.timeouts.drain, superseded, || async {
            let mut pending = Vec::new();
            for s in servers {
                let n = self.api(s)?.sessions(&s.backend, &s.server).await?;
                if n > 0 {
                    pending.push(format!("{s}: {n} session(s)"));
                }
            }
            Ok(pending)
        })
        .await?;
        polled.or_else(|left| {
            warn!(service, servers = %left.join(", "), "drain timeout passed; closing anyway");
            Ok(StepDone::DrainTimedOut)
        })
    }

    /// A container this service manages: a failover container or a burst unit's.
    fn container(&self, name: &str) -> Result<(&DockerBackend, &ContainerSpec), BackendError> {
        let missing = || BackendError::Rejected {
            target: format!("container {name}"),
            message: "not in this service's config".into(),
            retryable: false,
        };
        let d = self.docker.as_ref().ok_or_else(missing)?;
        let spec = self
            .containers
            .iter()
            .chain(&self.units)
            .find(|c| c.name == name);
        Ok((d, spec.ok_or_else(missing)?))
    }

    /// The Runtime API a server is reached through.
    fn api(&self, server: &ServerRef) -> Result<&RuntimeApi, BackendError> {
        self.haproxy
            .iter()
            .find(|a| a.label == server.api)
            .ok_or_else(|| BackendError::Rejected {
                target: format!("haproxy {}", server.api),
                message: "not in this service's config".into(),
                retryable: false,
            })
    }

    /// The EC2 pool a step acts on: the burst pool for burst steps, else the failover one.
    fn pool(&self, burst: bool) -> Result<&Ec2Backend, BackendError> {
        let pool = if burst { &self.burst_ec2 } else { &self.ec2 };
        pool.as_ref().ok_or_else(|| BackendError::Rejected {
            target: "ec2".into(),
            message: "no ec2 in this service's config".into(),
            retryable: false,
        })
    }
}

/// The HAProxy backend holding the burst slots: `burst.haproxy.backend`, else the failover one.
fn burst_backend(config: &ServiceConfig) -> String {
    let from_burst = config
        .burst
        .as_ref()
        .and_then(|b| b.haproxy.backend.clone());
    from_burst
        .or_else(|| config.haproxy.as_ref().map(|h| h.backend.clone()))
        .unwrap_or_default()
}

/// How a wait ended.
enum Polled {
    Done,
    Superseded,
    /// With what was still pending at the last look.
    TimedOut(Vec<String>),
}

impl Polled {
    /// The step's outcome: done or superseded as polled; `timed_out` decides the rest.
    fn or_else(
        self,
        timed_out: impl FnOnce(Vec<String>) -> Result<StepDone, BackendError>,
    ) -> Result<StepDone, BackendError> {
        match self {
            Polled::Done => Ok(StepDone::Done),
            Polled::Superseded => Ok(StepDone::Superseded),
            Polled::TimedOut(pending) => timed_out(pending),
        }
    }
}

/// Calls `check` every [`POLL`] until nothing is pending, `superseded` answers true, or `limit`
/// passes. The one wait behind every waiting step; a check's error ends it with that error.
async fn poll_until<F, Fut>(
    limit: Duration,
    superseded: Superseded<'_>,
    mut check: F,
) -> Result<Polled, BackendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<String>, BackendError>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let pending = check().await?;
        if pending.is_empty() {
            return Ok(Polled::Done);
        }
        if superseded() {
            return Ok(Polled::Superseded);
        }
        if Instant::now() >= deadline {
            return Ok(Polled::TimedOut(pending));
        }
        tokio::time::sleep(POLL).await;
    }
}
