//! Desired mode + observed world -> the ordered steps still missing. Pure: no I/O.
//!
//! The safe orders live here and only here:
//! - to cloud: start the containers, wait until every one is healthy, then open the servers
//!   on every HAProxy. A server is never opened in front of capacity not known to be healthy.
//! - to on-prem: drain the open servers, wait for their sessions to end (or the drain timeout),
//!   put them in maint, and only then stop the containers. A container is never stopped while
//!   any HAProxy might still send it traffic, including one whose state is unknown.
//!
//! - with EC2 instances (a cold standby): start them and wait until running and until their
//!   Docker engine answers before anything else; stop them last, after the containers.
//!
//! A step that is already done is not planned, so running a plan twice is harmless.

use std::fmt;

use serde::Serialize;

use crate::desired::Mode;

/// A container as observed through the Docker Engine API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ContainerState {
    /// The engine could not be asked.
    Unknown {
        reason: String,
    },
    Absent,
    Stopped,
    Running {
        health: Health,
    },
    /// A container of the configured name that is not what the config would create: made by
    /// someone else (no label of this service's), or by the responder from an older spec (the
    /// image, command, env or ports changed in the config since, or the image's tag now names
    /// another image). Never counted healthy: nothing is opened in front of it until it has
    /// been recreated from the config.
    Mismatch {
        /// What differs, naming the image found and the one configured.
        reason: String,
        /// Created by the responder for this service (from an older spec): it may be stopped
        /// and recreated like any container of ours.
        ours: bool,
        /// Ours, or the config says `recreate: always`: it may be removed and created anew.
        may_recreate: bool,
        /// Running now: it may be serving, so it is not removed while a server may send it
        /// traffic.
        running: bool,
    },
}

impl ContainerState {
    /// A short phrase for messages: `running (starting)`, `stopped`, `unknown (<reason>)`.
    pub fn describe(&self) -> String {
        match self {
            ContainerState::Running { health } => format!("running ({})", health.as_str()),
            ContainerState::Unknown { reason } => format!("unknown ({reason})"),
            ContainerState::Absent => "absent".into(),
            ContainerState::Stopped => "stopped".into(),
            ContainerState::Mismatch {
                reason, running, ..
            } => format!(
                "{} but not as configured ({reason})",
                if *running { "running" } else { "stopped" }
            ),
        }
    }
}

/// Health of a running container: Docker's HEALTHCHECK status, else the configured
/// `health_url`, else "running" counts as healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Starting,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Starting => "starting",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// A cloud server's admin state in one HAProxy, from `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ServerState {
    /// That HAProxy's Runtime API could not be asked.
    Unknown {
        reason: String,
    },
    /// The backend or server does not exist in that HAProxy (a config mismatch).
    Missing,
    Ready,
    Drain,
    Maint,
}

/// What HAProxy's own health check makes of a server, apart from the admin state the
/// responder sets: whether HAProxy would send it traffic, and on what evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    Down,
    /// Coming up; or said UP by HAProxy before any check has passed (it assumes a server
    /// leaving maintenance UP until its checks fail `fall` times).
    Starting,
    /// UP, and its last health check passed (or it has no check).
    Up,
    Stopping,
}

// `srv_check_state` bit: a health check is configured for the server (CHK_ST_CONFIGURED).
const CHECK_CONFIGURED: u32 = 0x2;

impl OpState {
    /// From the `status` column of `show stat`, HAProxy's own summary: `UP` (checks passed,
    /// health at the top) and `no check` are Up; `UP x/y` (going down, or assumed up right
    /// after maintenance before any check) is Stopping; `DOWN x/y` (coming up) Starting;
    /// `DOWN`, `MAINT`, `DRAIN`, `NOLB` and anything else Down.
    pub fn from_stat_status(status: &str) -> OpState {
        match status.trim() {
            "UP" | "no check" => OpState::Up,
            s if s.starts_with("UP ") => OpState::Stopping,
            s if s.starts_with("DOWN ") => OpState::Starting,
            _ => OpState::Down,
        }
    }

    /// From `show servers state`: `srv_op_state` (SRV_ST_*: 0 stopped, 1 starting, 2 running,
    /// 3 stopping), and when the server has a check (`srv_check_state`), the status of its
    /// last finished check (`srv_check_status`, HCHK_STATUS_*). Running counts as [`Up`] only
    /// once a check has passed: L4OK (6), L6OK (9), L7OKD (15), L7OKCD (16), PROCOK (20).
    /// Right after maintenance that status can be the one from before it, so verification
    /// asks `show stat` instead ([`OpState::from_stat_status`]).
    ///
    /// [`Up`]: OpState::Up
    pub fn from_haproxy(
        op: u32,
        check_state: Option<u32>,
        check_status: Option<u32>,
    ) -> Option<OpState> {
        let checked = check_state.is_some_and(|s| s & CHECK_CONFIGURED != 0);
        let passed = matches!(check_status, Some(6 | 9 | 15 | 16 | 20));
        match op {
            0 => Some(OpState::Down),
            1 => Some(OpState::Starting),
            2 if checked && !passed => Some(OpState::Starting),
            2 => Some(OpState::Up),
            3 => Some(OpState::Stopping),
            _ => None,
        }
    }
}

/// Admin states the responder sets through `set server <b>/<s> state <x>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    Ready,
    Drain,
    Maint,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

/// One server in one HAProxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct ServerRef {
    /// The Runtime API address, as configured.
    pub api: String,
    pub backend: String,
    pub server: String,
}

impl fmt::Display for ServerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.backend, self.server, self.api)
    }
}

/// Where HAProxy sends a server's traffic: a host (an IP, or a name HAProxy resolves) and a
/// port. Written and read as `host:port` (the form `show servers state` and status use); kept
/// typed in between, so it is never formatted and split again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    /// `host:port`; the port after the last colon. Errors name the text.
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not host:port"))?;
        let port = port
            .parse()
            .map_err(|_| format!("{s:?}: {port:?} is not a port"))?;
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ContainerObs {
    pub name: String,
    #[serde(flatten)]
    pub state: ContainerState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ServerObs {
    #[serde(flatten)]
    pub target: ServerRef,
    #[serde(flatten)]
    pub state: ServerState,
    /// Where HAProxy sends the server's traffic (observed for burst slots only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<Endpoint>,
    /// The server's user weight (observed for burst slots only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// What HAProxy's own health check says (None: not reported, or not asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_state: Option<OpState>,
    /// Why the Runtime API cannot open this server (a socket below level admin, a maintenance
    /// `state ready` cannot lift): planned as a blocker for a human, never as a step that
    /// "succeeds" without effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    /// The Runtime API refuses every change to it (below level admin): not even closing works.
    #[serde(skip)]
    pub refuses_changes: bool,
}

/// An instance's state as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum InstanceState {
    Unknown {
        reason: String,
    },
    Pending,
    Running,
    Stopping,
    Stopped,
    /// shutting-down or terminated: cannot be started again.
    Gone,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct InstanceObs {
    pub id: String,
    #[serde(flatten)]
    pub state: InstanceState,
    /// Where a burst unit on this instance is reached (`{private_ip}` in `burst.address`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
}

/// Everything observed about one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Observed {
    pub containers: Vec<ContainerObs>,
    pub servers: Vec<ServerObs>,
    /// EC2 instances carrying the containers (empty without `ec2`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceObs>,
}

/// One action. Waits are steps too: they have deadlines and can fail. Grouped by the backend
/// that runs it ([`Step::backend`]); the order they run in is `phase`'s alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Step {
    // Docker.
    /// Create the container from its config if absent, then start it.
    StartContainer {
        container: String,
    },
    /// Remove the container found under the configured name (not what the config would
    /// create, and allowed to go: ours from an older spec, or `recreate: always`), then create
    /// the configured one and start it.
    RecreateContainer {
        container: String,
    },
    /// Poll until every listed container is healthy, up to `timeouts.healthy`.
    WaitHealthy {
        containers: Vec<String>,
    },
    /// Stop with `timeouts.stop` grace.
    StopContainer {
        container: String,
    },
    /// Poll the Docker engine until it answers, up to `timeouts.healthy`.
    WaitDockerReady,

    // HAProxy.
    SetServer {
        #[serde(flatten)]
        target: ServerRef,
        state: AdminState,
    },
    /// `set server <b>/<s> addr <ip> port <port>`: points a burst slot at its unit.
    SetServerAddr {
        #[serde(flatten)]
        target: ServerRef,
        addr: String,
        port: u16,
    },
    /// `set server <b>/<s> weight <w>`.
    SetWeight {
        #[serde(flatten)]
        target: ServerRef,
        weight: u32,
    },
    /// Poll until the servers have no sessions, up to `timeouts.drain`.
    WaitDrained {
        servers: Vec<ServerRef>,
    },

    // EC2.
    StartInstances {
        ids: Vec<String>,
    },
    /// EC2 waiter until every instance is running, up to `ec2.running_timeout`.
    WaitInstancesRunning {
        ids: Vec<String>,
    },
    StopInstances {
        ids: Vec<String>,
    },
}

impl Step {
    /// The backend that runs it: `docker`, `haproxy` or `ec2` (the names `backend_up` uses).
    pub fn backend(&self) -> &'static str {
        match self {
            Step::StartContainer { .. }
            | Step::RecreateContainer { .. }
            | Step::WaitHealthy { .. }
            | Step::StopContainer { .. }
            | Step::WaitDockerReady => "docker",
            Step::SetServer { .. }
            | Step::SetServerAddr { .. }
            | Step::SetWeight { .. }
            | Step::WaitDrained { .. } => "haproxy",
            Step::StartInstances { .. }
            | Step::WaitInstancesRunning { .. }
            | Step::StopInstances { .. } => "ec2",
        }
    }

    /// Short name for metrics and logs.
    /// Every name [`Self::action`] gives, so that each service's failure counters exist from
    /// the start (an `increase()` over a series that appears at its first failure misses it).
    pub const ACTIONS: &'static [&'static str] = &[
        "start_container",
        "recreate_container",
        "wait_healthy",
        "server_ready",
        "server_drain",
        "server_maint",
        "wait_drained",
        "stop_container",
        "start_instances",
        "wait_instances_running",
        "wait_docker_ready",
        "stop_instances",
        "server_addr",
        "server_weight",
    ];

    pub fn action(&self) -> &'static str {
        match self {
            Step::StartContainer { .. } => "start_container",
            Step::RecreateContainer { .. } => "recreate_container",
            Step::WaitHealthy { .. } => "wait_healthy",
            Step::SetServer {
                state: AdminState::Ready,
                ..
            } => "server_ready",
            Step::SetServer {
                state: AdminState::Drain,
                ..
            } => "server_drain",
            Step::SetServer {
                state: AdminState::Maint,
                ..
            } => "server_maint",
            Step::WaitDrained { .. } => "wait_drained",
            Step::StopContainer { .. } => "stop_container",
            Step::StartInstances { .. } => "start_instances",
            Step::WaitInstancesRunning { .. } => "wait_instances_running",
            Step::WaitDockerReady => "wait_docker_ready",
            Step::StopInstances { .. } => "stop_instances",
            Step::SetServerAddr { .. } => "server_addr",
            Step::SetWeight { .. } => "server_weight",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::StartContainer { container } => write!(f, "start {container}"),
            Step::RecreateContainer { container } => write!(f, "recreate {container}"),
            Step::WaitHealthy { containers } => write!(f, "wait-healthy {}", containers.join(",")),
            Step::SetServer { target, state } => {
                write!(f, "{} {}/{}", state.as_str(), target.backend, target.server)
            }
            Step::WaitDrained { servers } => {
                let names: Vec<String> = servers
                    .iter()
                    .map(|s| format!("{}/{}", s.backend, s.server))
                    .collect();
                write!(f, "wait-drained {}", names.join(","))
            }
            Step::StopContainer { container } => write!(f, "stop {container}"),
            Step::StartInstances { ids } => write!(f, "start-instances {}", ids.join(",")),
            Step::WaitInstancesRunning { ids } => write!(f, "wait-running {}", ids.join(",")),
            Step::WaitDockerReady => write!(f, "wait-docker"),
            Step::StopInstances { ids } => write!(f, "stop-instances {}", ids.join(",")),
            Step::SetServerAddr { target, addr, port } => {
                write!(f, "addr {}/{} {addr}:{port}", target.backend, target.server)
            }
            Step::SetWeight { target, weight } => {
                write!(f, "weight {}/{} {weight}", target.backend, target.server)
            }
        }
    }
}

/// The steps still missing, and what keeps the service from converging without a step
/// (an unreachable backend, a server missing from HAProxy's config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub waiting: Vec<String>,
    /// What only a human can fix before the plan can go on (each names its target and the fix).
    pub blocked: Vec<String>,
}

impl Plan {
    /// Nothing to do, nothing unknown, nothing blocked: the world is as desired.
    pub fn converged(&self) -> bool {
        self.steps.is_empty() && self.waiting.is_empty() && self.blocked.is_empty()
    }

    /// Adds `other`'s steps, waits and blockers after this plan's.
    pub fn extend(&mut self, other: Plan) {
        self.steps.extend(other.steps);
        self.waiting.extend(other.waiting);
        self.blocked.extend(other.blocked);
    }
}

/// Plans the steps that take `observed` to `mode`.
pub fn plan(mode: Mode, observed: &Observed, standby: Standby) -> Plan {
    match mode {
        Mode::Cloud => plan_cloud(observed),
        Mode::Onprem => plan_onprem(observed, standby),
    }
}

/// How much of the cloud capacity stays up while on-prem serves: the resting state that
/// failback returns to. Failover is the same for all; a warmer tier has fewer steps to take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standby {
    /// Instances stopped, containers stopped: costs nothing, slowest to fail over.
    #[default]
    Cold,
    /// Instances running, containers stopped.
    PilotLight,
    /// Instances running, containers running and healthy, servers in maint: failover only
    /// opens the servers.
    Warm,
}

fn plan_cloud(o: &Observed) -> Plan {
    let mut p = Plan::default();
    if !instances_up(o, &mut p) || !containers_up(o, may_send_traffic(o), &mut p) {
        return p;
    }
    open_servers(o, None, &mut p);
    p
}

/// Where a burst slot should point and with what weight, set before it is opened.
#[derive(Debug, Clone, Copy)]
struct Slot<'a> {
    addr: &'a Endpoint,
    weight: u32,
}

/// Plans every server open (after pointing a burst slot at its unit).
fn open_servers(o: &Observed, slot: Option<Slot<'_>>, p: &mut Plan) {
    for s in &o.servers {
        if let Some(why) = &s.blocked {
            if s.state != ServerState::Ready {
                p.blocked.push(format!("server {}: {why}", s.target));
            }
            continue;
        }
        let known = matches!(
            s.state,
            ServerState::Ready | ServerState::Drain | ServerState::Maint
        );
        if let (Some(want), true) = (slot, known) {
            if s.addr.as_ref() != Some(want.addr) {
                p.steps.push(Step::SetServerAddr {
                    target: s.target.clone(),
                    addr: want.addr.host.clone(),
                    port: want.addr.port,
                });
            }
            if s.weight != Some(want.weight) {
                p.steps.push(Step::SetWeight {
                    target: s.target.clone(),
                    weight: want.weight,
                });
            }
        }
        match &s.state {
            ServerState::Ready => {}
            ServerState::Drain | ServerState::Maint => p.steps.push(Step::SetServer {
                target: s.target.clone(),
                state: AdminState::Ready,
            }),
            ServerState::Missing => p
                .waiting
                .push(format!("server {}: not found in HAProxy", s.target)),
            ServerState::Unknown { reason } => {
                p.waiting.push(format!("server {}: {reason}", s.target))
            }
        }
    }
}

/// Plans the instances up (start, wait running, wait for their Docker engine). Returns true
/// when they are all running already, so the containers on them can be planned in this pass.
fn instances_up(o: &Observed, p: &mut Plan) -> bool {
    let mut to_start = Vec::new();
    let mut not_running = Vec::new();
    let mut blocked = false;
    for i in &o.instances {
        match &i.state {
            InstanceState::Running => {}
            InstanceState::Stopped => {
                to_start.push(i.id.clone());
                not_running.push(i.id.clone());
            }
            InstanceState::Pending => not_running.push(i.id.clone()),
            InstanceState::Stopping => {
                blocked = true;
                p.waiting
                    .push(format!("instance {}: stopping; started once stopped", i.id))
            }
            InstanceState::Gone => {
                blocked = true;
                p.waiting.push(format!("instance {}: terminated", i.id))
            }
            InstanceState::Unknown { reason } => {
                blocked = true;
                p.waiting.push(format!("instance {}: {reason}", i.id))
            }
        }
    }
    if blocked {
        return false;
    }
    if not_running.is_empty() {
        return true;
    }
    if !to_start.is_empty() {
        p.steps.push(Step::StartInstances { ids: to_start });
    }
    p.steps
        .push(Step::WaitInstancesRunning { ids: not_running });
    if !o.containers.is_empty() {
        p.steps.push(Step::WaitDockerReady);
    }
    // The containers are observed again once their host is up.
    false
}

/// Whether a server may send the containers traffic now: open, draining, or not known.
fn may_send_traffic(o: &Observed) -> bool {
    o.servers.iter().any(|s| {
        matches!(
            s.state,
            ServerState::Ready | ServerState::Drain | ServerState::Unknown { .. }
        )
    })
}

/// What only a human can fix about a container the responder may not remove.
fn foreign_blocker(name: &str, reason: &str) -> String {
    format!(
        "container {name}: {reason}; it is not removed (recreate: never) and the responder opens \
         nothing in front of it. Fix: set `recreate: always` on container {name} in the config to have \
         it replaced, or remove or rename it (docker rm -f {name})"
    )
}

/// Plans the containers running and healthy. Returns false when a container cannot be asked
/// (its health is unknown), may not be replaced (not ours, `recreate: never`) or may not be
/// replaced yet (running while a server may send it traffic): nothing may be opened in front
/// of it.
///
/// `serving`: whether a server may still send traffic once the steps planned before these
/// have run. A running container that is not as configured is removed only when none may:
/// removing it is stopping it, and a container is never stopped in front of an open server.
fn containers_up(o: &Observed, serving: bool, p: &mut Plan) -> bool {
    let mut held = false;
    for c in &o.containers {
        match &c.state {
            ContainerState::Unknown { reason } => {
                held = true;
                p.waiting.push(format!("container {}: {reason}", c.name));
            }
            ContainerState::Mismatch {
                reason,
                may_recreate: false,
                ..
            } => {
                held = true;
                p.blocked.push(foreign_blocker(&c.name, reason));
            }
            ContainerState::Mismatch {
                reason,
                running: true,
                ..
            } if serving => {
                held = true;
                p.waiting.push(format!(
                    "container {}: {reason}; kept while a server may still send it traffic: \
                     recreated once every cloud server is closed (at failback, or put them in \
                     maint to do it now)",
                    c.name
                ));
            }
            _ => {}
        }
    }
    if held {
        return false;
    }
    let mut not_healthy = Vec::new();
    for c in &o.containers {
        match c.state {
            ContainerState::Absent | ContainerState::Stopped => {
                p.steps.push(Step::StartContainer {
                    container: c.name.clone(),
                });
                not_healthy.push(c.name.clone());
            }
            ContainerState::Mismatch { .. } => {
                p.steps.push(Step::RecreateContainer {
                    container: c.name.clone(),
                });
                not_healthy.push(c.name.clone());
            }
            ContainerState::Running {
                health: Health::Starting | Health::Unhealthy,
            } => not_healthy.push(c.name.clone()),
            ContainerState::Running {
                health: Health::Healthy,
            }
            | ContainerState::Unknown { .. } => {}
        }
    }
    if !not_healthy.is_empty() {
        p.steps.push(Step::WaitHealthy {
            containers: not_healthy,
        });
    }
    true
}

fn plan_onprem(o: &Observed, standby: Standby) -> Plan {
    let mut p = Plan::default();
    // A server that may still send traffic after the steps below (unknown, or one the Runtime
    // API cannot close) keeps what is behind it up.
    let still_open = close_servers(o, &mut p);
    if standby == Standby::Warm {
        // Resting warm: the capacity stays up and healthy behind closed servers.
        if instances_up(o, &mut p) {
            containers_up(o, still_open, &mut p);
        }
        return p;
    }
    stop_containers(o, still_open, &mut p);
    if standby == Standby::PilotLight {
        // The instances stay up (started if someone stopped them); only the containers rest.
        let mut up = Plan::default();
        instances_up(
            &Observed {
                containers: vec![],
                ..o.clone()
            },
            &mut up,
        );
        p.extend(up);
        return p;
    }
    // Cold: the instances last, once no HAProxy can send them traffic.
    let to_stop: Vec<String> = o
        .instances
        .iter()
        .filter(|i| matches!(i.state, InstanceState::Running | InstanceState::Pending))
        .map(|i| i.id.clone())
        .collect();
    if !to_stop.is_empty() {
        if still_open {
            p.waiting.push(
                "instances: kept running until every HAProxy confirms its servers are closed"
                    .into(),
            );
        } else {
            p.steps.push(Step::StopInstances { ids: to_stop });
        }
    }
    for i in &o.instances {
        if let InstanceState::Unknown { reason } = &i.state {
            p.waiting.push(format!("instance {}: {reason}", i.id));
        }
    }
    p
}

/// Plans every open server drained, waited for, then put in maint. Returns true when a server
/// may still send traffic after those steps: it cannot be asked, or not be closed.
fn close_servers(o: &Observed, p: &mut Plan) -> bool {
    let mut open = Vec::new();
    let mut still_open = false;
    for s in &o.servers {
        match &s.state {
            ServerState::Ready if s.blocked.is_some() => {
                still_open = true;
                let why = s.blocked.as_deref().unwrap_or_default();
                p.blocked.push(format!("server {}: {why}", s.target));
            }
            ServerState::Drain if s.refuses_changes => {
                still_open = true;
                let why = s.blocked.as_deref().unwrap_or_default();
                p.blocked.push(format!("server {}: {why}", s.target));
            }
            ServerState::Ready => {
                p.steps.push(Step::SetServer {
                    target: s.target.clone(),
                    state: AdminState::Drain,
                });
                open.push(s.target.clone());
            }
            ServerState::Drain => open.push(s.target.clone()),
            ServerState::Maint => {}
            // Not in HAProxy means HAProxy cannot route to it: no reason to keep capacity up.
            ServerState::Missing => p
                .waiting
                .push(format!("server {}: not found in HAProxy", s.target)),
            ServerState::Unknown { reason } => {
                still_open = true;
                p.waiting.push(format!("server {}: {reason}", s.target));
            }
        }
    }
    if !open.is_empty() {
        p.steps.push(Step::WaitDrained {
            servers: open.clone(),
        });
        p.steps
            .extend(open.into_iter().map(|target| Step::SetServer {
                target,
                state: AdminState::Maint,
            }));
    }
    still_open
}

/// Plans the running containers of ours stopped, unless a server may still send them traffic.
/// One that is not ours is never stopped; one the next failover may not replace is said now.
fn stop_containers(o: &Observed, still_open: bool, p: &mut Plan) {
    for c in &o.containers {
        match &c.state {
            ContainerState::Running { .. }
            | ContainerState::Mismatch {
                ours: true,
                running: true,
                ..
            } if still_open => {
                p.waiting.push(format!(
                    "container {}: kept running until every HAProxy confirms its servers are closed",
                    c.name
                ));
            }
            // Ours from an older spec: stopped like any of ours, recreated at the next failover.
            ContainerState::Running { .. }
            | ContainerState::Mismatch {
                ours: true,
                running: true,
                ..
            } => p.steps.push(Step::StopContainer {
                container: c.name.clone(),
            }),
            ContainerState::Mismatch {
                reason,
                may_recreate: false,
                ..
            } => p.blocked.push(foreign_blocker(&c.name, reason)),
            ContainerState::Mismatch { .. } | ContainerState::Absent | ContainerState::Stopped => {}
            ContainerState::Unknown { reason } => {
                p.waiting.push(format!("container {}: {reason}", c.name))
            }
        }
    }
}

/// One burst unit as observed: its container or instance, and its slot on every HAProxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct UnitObs {
    /// 1-based: unit `i` uses slot `<prefix><i>`.
    pub index: u32,
    #[serde(flatten)]
    pub observed: Observed,
    /// Where its slot should point; None while not known (an instance with no IP yet).
    pub address: Option<Endpoint>,
}

/// Plans units `1..=wanted` up and open, and every unit above `wanted` drained, closed and
/// stopped, with the same safe orders as failover and failback. Unit plans are merged phase by
/// phase (all starts, one wait, all opens), so growing by `step` units costs one wait, not
/// `step` of them.
pub fn plan_burst(wanted: u32, units: &[UnitObs], weight: u32) -> Plan {
    let mut parts = Vec::new();
    for u in units {
        let mut p = Plan::default();
        if u.index <= wanted {
            if instances_up(&u.observed, &mut p)
                && containers_up(&u.observed, may_send_traffic(&u.observed), &mut p)
            {
                match &u.address {
                    Some(addr) => open_servers(&u.observed, Some(Slot { addr, weight }), &mut p),
                    None => p
                        .waiting
                        .push(format!("burst unit {}: address not known yet", u.index)),
                }
            }
        } else {
            // A slot the template does not have cannot carry traffic: nothing to close there.
            let mut o = u.observed.clone();
            o.servers.retain(|s| s.state != ServerState::Missing);
            p = plan_onprem(&o, Standby::Cold);
        }
        parts.push(p);
    }
    merge(parts)
}

/// The phase a step belongs to: opening phases first, closing phases after, each in its safe
/// order.
fn phase(step: &Step) -> u8 {
    match step {
        Step::StartInstances { .. } => 0,
        Step::WaitInstancesRunning { .. } => 1,
        Step::WaitDockerReady => 2,
        Step::StartContainer { .. } | Step::RecreateContainer { .. } => 3,
        Step::WaitHealthy { .. } => 4,
        Step::SetServerAddr { .. } => 5,
        Step::SetWeight { .. } => 6,
        Step::SetServer {
            state: AdminState::Ready,
            ..
        } => 7,
        Step::SetServer {
            state: AdminState::Drain,
            ..
        } => 8,
        Step::WaitDrained { .. } => 9,
        Step::SetServer {
            state: AdminState::Maint,
            ..
        } => 10,
        Step::StopContainer { .. } => 11,
        Step::StopInstances { .. } => 12,
    }
}

/// Merges independent plans: steps ordered by phase (stable, so each plan's own order holds
/// within a phase), waits and instance calls of the same phase combined into one.
fn merge(parts: Vec<Plan>) -> Plan {
    let mut steps: Vec<Step> = Vec::new();
    let mut waiting = Vec::new();
    let mut blocked = Vec::new();
    for p in parts {
        steps.extend(p.steps);
        waiting.extend(p.waiting);
        blocked.extend(p.blocked);
    }
    steps.sort_by_key(phase);
    let mut out: Vec<Step> = Vec::new();
    for step in steps {
        match (out.last_mut(), step) {
            (Some(Step::StartInstances { ids }), Step::StartInstances { ids: more })
            | (
                Some(Step::WaitInstancesRunning { ids }),
                Step::WaitInstancesRunning { ids: more },
            )
            | (Some(Step::StopInstances { ids }), Step::StopInstances { ids: more }) => {
                ids.extend(more)
            }
            (Some(Step::WaitHealthy { containers }), Step::WaitHealthy { containers: more }) => {
                containers.extend(more)
            }
            (Some(Step::WaitDrained { servers }), Step::WaitDrained { servers: more }) => {
                servers.extend(more)
            }
            (Some(Step::WaitDockerReady), Step::WaitDockerReady) => {}
            (_, step) => out.push(step),
        }
    }
    Plan {
        steps: out,
        waiting,
        blocked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_reads_and_writes_host_port() {
        let e: Endpoint = "127.0.0.1:18100".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 18100));
        assert_eq!(serde_json::to_string(&e).unwrap(), "\"127.0.0.1:18100\"");
        let back: Endpoint = serde_json::from_str("\"::1:80\"").unwrap();
        assert_eq!(
            (back.host.as_str(), back.port),
            ("::1", 80),
            "the port after the last colon"
        );
        for bad in ["noport", "h:http", "h:70000"] {
            let err = bad.parse::<Endpoint>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    fn container_states() -> Vec<(&'static str, ContainerState)> {
        vec![
            (
                "c?",
                ContainerState::Unknown {
                    reason: "down".into(),
                },
            ),
            ("absent", ContainerState::Absent),
            ("stopped", ContainerState::Stopped),
            (
                "healthy",
                ContainerState::Running {
                    health: Health::Healthy,
                },
            ),
            (
                "starting",
                ContainerState::Running {
                    health: Health::Starting,
                },
            ),
            (
                "unhealthy",
                ContainerState::Running {
                    health: Health::Unhealthy,
                },
            ),
        ]
    }

    fn server_states() -> Vec<(&'static str, ServerState)> {
        vec![
            (
                "s?",
                ServerState::Unknown {
                    reason: "down".into(),
                },
            ),
            ("missing", ServerState::Missing),
            ("ready", ServerState::Ready),
            ("drain", ServerState::Drain),
            ("maint", ServerState::Maint),
        ]
    }

    fn observed(c: &ContainerState, s: &ServerState) -> Observed {
        Observed {
            containers: vec![ContainerObs {
                name: "c".into(),
                state: c.clone(),
            }],
            servers: vec![ServerObs {
                target: ServerRef {
                    api: "/sock".into(),
                    backend: "b".into(),
                    server: "s".into(),
                },
                state: s.clone(),
                addr: None,
                weight: None,
                op_state: None,
                blocked: None,
                refuses_changes: false,
            }],
            instances: vec![],
        }
    }

    fn render(p: &Plan) -> String {
        let steps: Vec<String> = p.steps.iter().map(ToString::to_string).collect();
        format!(
            "{}{}",
            steps.join("; "),
            if p.waiting.is_empty() {
                ""
            } else {
                " (waiting)"
            }
        )
    }

    /// Every pair of (container state, server state), for both modes, with the exact plan.
    #[test]
    fn every_pair_of_states() {
        let table: &[(Mode, &str, &str, &str)] = &[
            (Mode::Cloud, "c?", "s?", " (waiting)"),
            (Mode::Cloud, "c?", "missing", " (waiting)"),
            (Mode::Cloud, "c?", "ready", " (waiting)"),
            (Mode::Cloud, "c?", "drain", " (waiting)"),
            (Mode::Cloud, "c?", "maint", " (waiting)"),
            (
                Mode::Cloud,
                "absent",
                "s?",
                "start c; wait-healthy c (waiting)",
            ),
            (
                Mode::Cloud,
                "absent",
                "missing",
                "start c; wait-healthy c (waiting)",
            ),
            (Mode::Cloud, "absent", "ready", "start c; wait-healthy c"),
            (
                Mode::Cloud,
                "absent",
                "drain",
                "start c; wait-healthy c; ready b/s",
            ),
            (
                Mode::Cloud,
                "absent",
                "maint",
                "start c; wait-healthy c; ready b/s",
            ),
            (
                Mode::Cloud,
                "stopped",
                "s?",
                "start c; wait-healthy c (waiting)",
            ),
            (
                Mode::Cloud,
                "stopped",
                "missing",
                "start c; wait-healthy c (waiting)",
            ),
            (Mode::Cloud, "stopped", "ready", "start c; wait-healthy c"),
            (
                Mode::Cloud,
                "stopped",
                "drain",
                "start c; wait-healthy c; ready b/s",
            ),
            (
                Mode::Cloud,
                "stopped",
                "maint",
                "start c; wait-healthy c; ready b/s",
            ),
            (Mode::Cloud, "healthy", "s?", " (waiting)"),
            (Mode::Cloud, "healthy", "missing", " (waiting)"),
            (Mode::Cloud, "healthy", "ready", ""),
            (Mode::Cloud, "healthy", "drain", "ready b/s"),
            (Mode::Cloud, "healthy", "maint", "ready b/s"),
            (Mode::Cloud, "starting", "s?", "wait-healthy c (waiting)"),
            (
                Mode::Cloud,
                "starting",
                "missing",
                "wait-healthy c (waiting)",
            ),
            (Mode::Cloud, "starting", "ready", "wait-healthy c"),
            (
                Mode::Cloud,
                "starting",
                "drain",
                "wait-healthy c; ready b/s",
            ),
            (
                Mode::Cloud,
                "starting",
                "maint",
                "wait-healthy c; ready b/s",
            ),
            (Mode::Cloud, "unhealthy", "s?", "wait-healthy c (waiting)"),
            (
                Mode::Cloud,
                "unhealthy",
                "missing",
                "wait-healthy c (waiting)",
            ),
            (Mode::Cloud, "unhealthy", "ready", "wait-healthy c"),
            (
                Mode::Cloud,
                "unhealthy",
                "drain",
                "wait-healthy c; ready b/s",
            ),
            (
                Mode::Cloud,
                "unhealthy",
                "maint",
                "wait-healthy c; ready b/s",
            ),
            (Mode::Onprem, "c?", "s?", " (waiting)"),
            (Mode::Onprem, "c?", "missing", " (waiting)"),
            (
                Mode::Onprem,
                "c?",
                "ready",
                "drain b/s; wait-drained b/s; maint b/s (waiting)",
            ),
            (
                Mode::Onprem,
                "c?",
                "drain",
                "wait-drained b/s; maint b/s (waiting)",
            ),
            (Mode::Onprem, "c?", "maint", " (waiting)"),
            (Mode::Onprem, "absent", "s?", " (waiting)"),
            (Mode::Onprem, "absent", "missing", " (waiting)"),
            (
                Mode::Onprem,
                "absent",
                "ready",
                "drain b/s; wait-drained b/s; maint b/s",
            ),
            (
                Mode::Onprem,
                "absent",
                "drain",
                "wait-drained b/s; maint b/s",
            ),
            (Mode::Onprem, "absent", "maint", ""),
            (Mode::Onprem, "stopped", "s?", " (waiting)"),
            (Mode::Onprem, "stopped", "missing", " (waiting)"),
            (
                Mode::Onprem,
                "stopped",
                "ready",
                "drain b/s; wait-drained b/s; maint b/s",
            ),
            (
                Mode::Onprem,
                "stopped",
                "drain",
                "wait-drained b/s; maint b/s",
            ),
            (Mode::Onprem, "stopped", "maint", ""),
            (Mode::Onprem, "healthy", "s?", " (waiting)"),
            (Mode::Onprem, "healthy", "missing", "stop c (waiting)"),
            (
                Mode::Onprem,
                "healthy",
                "ready",
                "drain b/s; wait-drained b/s; maint b/s; stop c",
            ),
            (
                Mode::Onprem,
                "healthy",
                "drain",
                "wait-drained b/s; maint b/s; stop c",
            ),
            (Mode::Onprem, "healthy", "maint", "stop c"),
            (Mode::Onprem, "starting", "s?", " (waiting)"),
            (Mode::Onprem, "starting", "missing", "stop c (waiting)"),
            (
                Mode::Onprem,
                "starting",
                "ready",
                "drain b/s; wait-drained b/s; maint b/s; stop c",
            ),
            (
                Mode::Onprem,
                "starting",
                "drain",
                "wait-drained b/s; maint b/s; stop c",
            ),
            (Mode::Onprem, "starting", "maint", "stop c"),
            (Mode::Onprem, "unhealthy", "s?", " (waiting)"),
            (Mode::Onprem, "unhealthy", "missing", "stop c (waiting)"),
            (
                Mode::Onprem,
                "unhealthy",
                "ready",
                "drain b/s; wait-drained b/s; maint b/s; stop c",
            ),
            (
                Mode::Onprem,
                "unhealthy",
                "drain",
                "wait-drained b/s; maint b/s; stop c",
            ),
            (Mode::Onprem, "unhealthy", "maint", "stop c"),
        ];
        let cs = container_states();
        let ss = server_states();
        assert_eq!(
            table.len(),
            2 * cs.len() * ss.len(),
            "the table covers every pair"
        );
        for (mode, cname, sname, want) in table {
            let c = &cs
                .iter()
                .find(|(n, _)| n == cname)
                .expect("container state")
                .1;
            let s = &ss.iter().find(|(n, _)| n == sname).expect("server state").1;
            let got = render(&plan(*mode, &observed(c, s), Standby::Cold));
            assert_eq!(got, *want, "{mode:?} container={cname} server={sname}");
        }
    }

    /// Safety properties over every pair, with two HAProxies where one may differ.
    #[test]
    fn safety_invariants_hold_for_every_combination() {
        for (_, c) in container_states() {
            for (_, s1) in server_states() {
                for (_, s2) in server_states() {
                    let mut o = observed(&c, &s1);
                    o.servers.push(ServerObs {
                        target: ServerRef {
                            api: "/sock2".into(),
                            backend: "b".into(),
                            server: "s".into(),
                        },
                        state: s2.clone(),
                        addr: None,
                        weight: None,
                        op_state: None,
                        blocked: None,
                        refuses_changes: false,
                    });
                    let cloud = plan(Mode::Cloud, &o, Standby::Cold);
                    // Never open a server before the capacity is known healthy.
                    let healthy_now = c
                        == ContainerState::Running {
                            health: Health::Healthy,
                        };
                    for (i, step) in cloud.steps.iter().enumerate() {
                        if let Step::SetServer { state, .. } = step {
                            assert_eq!(*state, AdminState::Ready);
                            let waited = cloud.steps[..i]
                                .iter()
                                .any(|s| matches!(s, Step::WaitHealthy { .. }));
                            assert!(healthy_now || waited, "{o:?}: {cloud:?}");
                        }
                        assert!(!matches!(step, Step::StopContainer { .. }));
                    }
                    let onprem = plan(Mode::Onprem, &o, Standby::Cold);
                    // Never stop capacity while a server may still be open.
                    let may_be_open = |st: &ServerState| {
                        matches!(
                            st,
                            ServerState::Ready | ServerState::Drain | ServerState::Unknown { .. }
                        )
                    };
                    for (i, step) in onprem.steps.iter().enumerate() {
                        if matches!(step, Step::StopContainer { .. }) {
                            for so in &o.servers {
                                if may_be_open(&so.state) {
                                    let closed = onprem.steps[..i].iter().any(|s| {
                                        matches!(s, Step::SetServer { target, state: AdminState::Maint } if *target == so.target)
                                    });
                                    assert!(closed, "{o:?}: {onprem:?}");
                                }
                            }
                        }
                        assert!(!matches!(step, Step::StartContainer { .. }));
                        assert!(!matches!(
                            step,
                            Step::SetServer {
                                state: AdminState::Ready,
                                ..
                            }
                        ));
                    }
                }
            }
        }
    }

    #[test]
    fn blocked_servers_get_no_step_and_name_the_fix() {
        let healthy = ContainerState::Running {
            health: Health::Healthy,
        };
        let blocked = |c: &ContainerState, st: ServerState| {
            let mut o = observed(c, &st);
            o.servers[0].blocked = Some("RMAINT: fix DNS".into());
            o
        };
        let no_server_step = |p: &Plan| {
            !p.steps
                .iter()
                .any(|s| matches!(s, Step::SetServer { .. } | Step::SetServerAddr { .. }))
        };
        // Failover: the container comes up, the server cannot open: a blocker, not a step
        // that would "succeed" with no effect on every pass.
        let p = plan(
            Mode::Cloud,
            &blocked(&healthy, ServerState::Maint),
            Standby::Cold,
        );
        assert!(no_server_step(&p), "{p:?}");
        assert_eq!(p.blocked.len(), 1, "{p:?}");
        assert!(p.blocked[0].contains("fix DNS") && !p.converged());
        let p = plan(
            Mode::Cloud,
            &blocked(&ContainerState::Stopped, ServerState::Maint),
            Standby::Cold,
        );
        assert!(
            p.steps
                .iter()
                .any(|s| matches!(s, Step::StartContainer { .. })),
            "{p:?}"
        );
        assert!(no_server_step(&p) && p.blocked.len() == 1, "{p:?}");
        // A blocked server already open needs nothing in cloud mode.
        let p = plan(
            Mode::Cloud,
            &blocked(&healthy, ServerState::Ready),
            Standby::Cold,
        );
        assert!(p.converged(), "{p:?}");
        // Failback: a server that cannot be closed stays open, so its container keeps running.
        let p = plan(
            Mode::Onprem,
            &blocked(&healthy, ServerState::Ready),
            Standby::Cold,
        );
        assert!(p.steps.is_empty(), "{p:?}");
        assert_eq!(p.blocked.len(), 1, "{p:?}");
        // Already in maint: nothing to do, nothing blocked (it is closed, as on-prem wants).
        let p = plan(
            Mode::Onprem,
            &blocked(&ContainerState::Stopped, ServerState::Maint),
            Standby::Cold,
        );
        assert!(p.converged(), "{p:?}");
        // A socket that refuses every change: a draining server cannot be closed either, and
        // its container stays up behind it.
        let mut o = observed(&healthy, &ServerState::Drain);
        o.servers[0].blocked = Some("level operator".into());
        o.servers[0].refuses_changes = true;
        let p = plan(Mode::Onprem, &o, Standby::Cold);
        assert!(p.steps.is_empty() && p.blocked.len() == 1, "{p:?}");
    }

    /// Containers found under the configured name that are not as configured: by someone
    /// else (`foreign`; `-always` when the config says `recreate: always`) or by the responder
    /// from an older spec (`stale`), stopped or `-running`.
    fn mismatch_states() -> Vec<(&'static str, ContainerState)> {
        let m = |ours: bool, may_recreate: bool, running: bool| ContainerState::Mismatch {
            reason: "it runs image other:1, the config says api:1".into(),
            ours,
            may_recreate,
            running,
        };
        vec![
            ("foreign", m(false, false, false)),
            ("foreign-running", m(false, false, true)),
            ("foreign-always", m(false, true, false)),
            ("foreign-always-running", m(false, true, true)),
            ("stale", m(true, true, false)),
            ("stale-running", m(true, true, true)),
        ]
    }

    /// Steps, then " (waiting)" and " (blocked)" when the plan has them.
    fn render_blocked(p: &Plan) -> String {
        format!(
            "{}{}",
            render(p),
            if p.blocked.is_empty() {
                ""
            } else {
                " (blocked)"
            }
        )
    }

    /// Every mismatch against every server state (in `server_states()` order: s?, missing,
    /// ready, drain, maint), in cloud and in on-prem (cold), with the exact plan.
    #[test]
    fn mismatched_containers_with_every_server_state() {
        const BLOCKED: &str = " (blocked)";
        const RECREATE: [&str; 5] = [
            "recreate c; wait-healthy c (waiting)",
            "recreate c; wait-healthy c (waiting)",
            "recreate c; wait-healthy c",
            "recreate c; wait-healthy c; ready b/s",
            "recreate c; wait-healthy c; ready b/s",
        ];
        // Running and maybe serving: kept until no server may send it traffic.
        const RECREATE_UNLESS_SERVING: [&str; 5] = [
            " (waiting)",
            "recreate c; wait-healthy c (waiting)",
            " (waiting)",
            " (waiting)",
            "recreate c; wait-healthy c; ready b/s",
        ];
        const CLOSE_ONLY: [&str; 5] = [
            " (waiting)",
            " (waiting)",
            "drain b/s; wait-drained b/s; maint b/s",
            "wait-drained b/s; maint b/s",
            "",
        ];
        const CLOSE_AND_BLOCKED: [&str; 5] = [
            " (waiting) (blocked)",
            " (waiting) (blocked)",
            "drain b/s; wait-drained b/s; maint b/s (blocked)",
            "wait-drained b/s; maint b/s (blocked)",
            " (blocked)",
        ];
        const CLOSE_THEN_STOP: [&str; 5] = [
            " (waiting)",
            "stop c (waiting)",
            "drain b/s; wait-drained b/s; maint b/s; stop c",
            "wait-drained b/s; maint b/s; stop c",
            "stop c",
        ];
        let table: &[(Mode, &str, [&str; 5])] = &[
            // Not ours and recreate: never: nothing started, nothing opened, a human told.
            (Mode::Cloud, "foreign", [BLOCKED; 5]),
            (Mode::Cloud, "foreign-running", [BLOCKED; 5]),
            (Mode::Cloud, "foreign-always", RECREATE),
            (
                Mode::Cloud,
                "foreign-always-running",
                RECREATE_UNLESS_SERVING,
            ),
            (Mode::Cloud, "stale", RECREATE),
            (Mode::Cloud, "stale-running", RECREATE_UNLESS_SERVING),
            // On-prem: never stop or remove what is not ours; say early what blocks failover.
            (Mode::Onprem, "foreign", CLOSE_AND_BLOCKED),
            (Mode::Onprem, "foreign-running", CLOSE_AND_BLOCKED),
            (Mode::Onprem, "foreign-always", CLOSE_ONLY),
            (Mode::Onprem, "foreign-always-running", CLOSE_ONLY),
            // Ours from an older spec: stopped like any of ours, recreated at failover.
            (Mode::Onprem, "stale", CLOSE_ONLY),
            (Mode::Onprem, "stale-running", CLOSE_THEN_STOP),
        ];
        let ms = mismatch_states();
        let ss = server_states();
        assert_eq!(table.len(), 2 * ms.len(), "the table covers every mismatch");
        for (mode, cname, wants) in table {
            let c = &ms.iter().find(|(n, _)| n == cname).expect("state").1;
            for ((sname, s), want) in ss.iter().zip(wants) {
                let p = plan(*mode, &observed(c, s), Standby::Cold);
                assert_eq!(
                    render_blocked(&p),
                    *want,
                    "{mode:?} container={cname} server={sname}"
                );
                if *mode == Mode::Cloud {
                    assert!(!p.converged(), "{cname} {sname}: converged in cloud");
                }
            }
        }
        // What blocks names the container, the images and both fixes.
        let p = plan(
            Mode::Cloud,
            &observed(&ms[0].1, &ServerState::Maint),
            Standby::Cold,
        );
        let b = &p.blocked[0];
        for w in [
            "container c",
            "other:1",
            "api:1",
            "recreate: always",
            "docker rm -f c",
        ] {
            assert!(b.contains(w), "{w:?} not in {b:?}");
        }
        let p = plan(
            Mode::Cloud,
            &observed(&ms[5].1, &ServerState::Ready),
            Standby::Cold,
        );
        assert!(p.waiting[0].contains("put them in maint"), "{p:?}");
        // Ours from an older spec and stopped rests converged on-prem: nothing to do until
        // the next failover recreates it.
        assert!(plan(
            Mode::Onprem,
            &observed(&ms[4].1, &ServerState::Maint),
            Standby::Cold
        )
        .converged());
    }

    #[test]
    fn mismatched_containers_per_standby_tier() {
        let ms: std::collections::HashMap<_, _> = mismatch_states().into_iter().collect();
        let cases: &[(Standby, &str, ServerState, &str)] = &[
            // Warm keeps capacity up: recreated behind closed servers, after closing them.
            (
                Standby::Warm,
                "stale-running",
                ServerState::Maint,
                "recreate c; wait-healthy c",
            ),
            (
                Standby::Warm,
                "stale-running",
                ServerState::Ready,
                "drain b/s; wait-drained b/s; maint b/s; recreate c; wait-healthy c",
            ),
            (
                Standby::Warm,
                "stale-running",
                ServerState::Unknown { reason: "x".into() },
                " (waiting)",
            ),
            (
                Standby::Warm,
                "stale",
                ServerState::Maint,
                "recreate c; wait-healthy c",
            ),
            (
                Standby::Warm,
                "foreign-always-running",
                ServerState::Maint,
                "recreate c; wait-healthy c",
            ),
            (
                Standby::Warm,
                "foreign-running",
                ServerState::Maint,
                " (blocked)",
            ),
            (Standby::Warm, "foreign", ServerState::Maint, " (blocked)"),
            // Pilot light rests with containers stopped: ours stopped, others left alone.
            (
                Standby::PilotLight,
                "stale-running",
                ServerState::Maint,
                "stop c",
            ),
            (Standby::PilotLight, "stale", ServerState::Maint, ""),
            (
                Standby::PilotLight,
                "foreign-running",
                ServerState::Maint,
                " (blocked)",
            ),
            (
                Standby::PilotLight,
                "foreign-always-running",
                ServerState::Maint,
                "",
            ),
        ];
        for (tier, cname, s, want) in cases {
            let p = plan(Mode::Onprem, &observed(&ms[cname], s), *tier);
            assert_eq!(render_blocked(&p), *want, "{tier:?} {cname} {s:?}");
        }
    }

    /// Safety with mismatched containers, over every pair of server states on two HAProxies,
    /// both modes and every tier, and as burst units up or down: a container that may not be
    /// recreated is never started, recreated or (if not ours) stopped; a running one is removed
    /// only once no server may send it traffic; nothing is opened in front of one before it was
    /// recreated and waited healthy.
    #[test]
    fn mismatch_safety_over_every_combination() {
        let may_be_open = |st: &ServerState| {
            matches!(
                st,
                ServerState::Ready | ServerState::Drain | ServerState::Unknown { .. }
            )
        };
        for (cname, c) in mismatch_states() {
            let ContainerState::Mismatch {
                ours,
                may_recreate,
                running,
                ..
            } = c
            else {
                unreachable!()
            };
            for (_, s1) in server_states() {
                for (_, s2) in server_states() {
                    let mut o = observed(&c, &s1);
                    let mut second = o.servers[0].clone();
                    second.target.api = "/sock2".into();
                    second.state = s2.clone();
                    o.servers.push(second);
                    let mut plans = vec![plan(Mode::Cloud, &o, Standby::Cold)];
                    for tier in [Standby::Cold, Standby::PilotLight, Standby::Warm] {
                        plans.push(plan(Mode::Onprem, &o, tier));
                    }
                    let unit = UnitObs {
                        index: 1,
                        observed: o.clone(),
                        address: "127.0.0.1:1".parse().ok(),
                    };
                    for target in 0..=1 {
                        plans.push(plan_burst(target, std::slice::from_ref(&unit), 100));
                    }
                    // Cloud, and the burst unit wanted up: never converged with a mismatch.
                    assert!(!plans[0].converged() && !plans[5].converged(), "{cname}");
                    for p in &plans {
                        let why = format!("{cname} {s1:?} {s2:?}: {p:?}");
                        let pos = |f: &dyn Fn(&Step) -> bool| p.steps.iter().position(f);
                        let recreate = pos(&|st| matches!(st, Step::RecreateContainer { .. }));
                        let wait = pos(&|st| matches!(st, Step::WaitHealthy { .. }));
                        assert!(
                            pos(&|st| matches!(st, Step::StartContainer { .. })).is_none(),
                            "{why}"
                        );
                        if !may_recreate {
                            assert!(recreate.is_none(), "{why}");
                            assert!(!p.blocked.is_empty(), "{why}");
                        }
                        if !ours {
                            assert!(
                                pos(&|st| matches!(st, Step::StopContainer { .. })).is_none(),
                                "{why}"
                            );
                        }
                        if let (Some(r), true) = (recreate, running) {
                            for so in &o.servers {
                                if may_be_open(&so.state) {
                                    let closed = p.steps[..r].iter().any(|st| {
                                        matches!(st, Step::SetServer { target, state: AdminState::Maint } if *target == so.target)
                                    });
                                    assert!(closed, "removed while maybe serving: {why}");
                                }
                            }
                        }
                        if let Some(ready) = pos(&|st| {
                            matches!(
                                st,
                                Step::SetServer {
                                    state: AdminState::Ready,
                                    ..
                                }
                            )
                        }) {
                            assert!(
                                recreate.is_some_and(|r| r < ready)
                                    && wait.is_some_and(|w| w < ready),
                                "opened in front of a mismatch: {why}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn converged_states() {
        let healthy = ContainerState::Running {
            health: Health::Healthy,
        };
        assert!(plan(
            Mode::Cloud,
            &observed(&healthy, &ServerState::Ready),
            Standby::Cold
        )
        .converged());
        assert!(plan(
            Mode::Onprem,
            &observed(&ContainerState::Stopped, &ServerState::Maint),
            Standby::Cold
        )
        .converged());
        assert!(plan(
            Mode::Onprem,
            &observed(&ContainerState::Absent, &ServerState::Maint),
            Standby::Cold
        )
        .converged());
        assert!(!plan(
            Mode::Onprem,
            &observed(&healthy, &ServerState::Maint),
            Standby::Cold
        )
        .converged());
        // Planning the converged world again yields nothing: idempotent.
        assert!(plan(Mode::Cloud, &Observed::default(), Standby::Cold).converged());
    }

    #[test]
    fn instances_come_first_on_failover_and_last_on_failback() {
        let inst = |state: InstanceState| InstanceObs {
            id: "i-1".into(),
            state,
            private_ip: None,
        };
        let with = |state: InstanceState, c: ContainerState, s: ServerState| {
            let mut o = observed(&c, &s);
            o.instances = vec![inst(state)];
            o
        };
        let healthy = ContainerState::Running {
            health: Health::Healthy,
        };
        let cases: &[(Mode, InstanceState, ContainerState, ServerState, &str)] = &[
            (
                Mode::Cloud,
                InstanceState::Stopped,
                ContainerState::Stopped,
                ServerState::Maint,
                "start-instances i-1; wait-running i-1; wait-docker",
            ),
            (
                Mode::Cloud,
                InstanceState::Pending,
                ContainerState::Stopped,
                ServerState::Maint,
                "wait-running i-1; wait-docker",
            ),
            (
                Mode::Cloud,
                InstanceState::Running,
                ContainerState::Stopped,
                ServerState::Maint,
                "start c; wait-healthy c; ready b/s",
            ),
            (
                Mode::Cloud,
                InstanceState::Running,
                healthy.clone(),
                ServerState::Ready,
                "",
            ),
            (
                Mode::Cloud,
                InstanceState::Stopping,
                ContainerState::Stopped,
                ServerState::Maint,
                " (waiting)",
            ),
            (
                Mode::Cloud,
                InstanceState::Gone,
                ContainerState::Stopped,
                ServerState::Maint,
                " (waiting)",
            ),
            (
                Mode::Cloud,
                InstanceState::Unknown { reason: "x".into() },
                ContainerState::Stopped,
                ServerState::Maint,
                " (waiting)",
            ),
            (
                Mode::Onprem,
                InstanceState::Running,
                healthy.clone(),
                ServerState::Ready,
                "drain b/s; wait-drained b/s; maint b/s; stop c; stop-instances i-1",
            ),
            (
                Mode::Onprem,
                InstanceState::Running,
                ContainerState::Stopped,
                ServerState::Maint,
                "stop-instances i-1",
            ),
            (
                Mode::Onprem,
                InstanceState::Running,
                healthy.clone(),
                ServerState::Unknown { reason: "x".into() },
                " (waiting)",
            ),
            (
                Mode::Onprem,
                InstanceState::Stopped,
                ContainerState::Stopped,
                ServerState::Maint,
                "",
            ),
            (
                Mode::Onprem,
                InstanceState::Stopping,
                ContainerState::Stopped,
                ServerState::Maint,
                "",
            ),
        ];
        for (mode, i, c, s, want) in cases {
            let got = render(&plan(
                *mode,
                &with(i.clone(), c.clone(), s.clone()),
                Standby::Cold,
            ));
            assert_eq!(got, *want, "{mode:?} {i:?} {c:?} {s:?}");
        }
    }

    #[test]
    fn resting_state_per_standby_tier() {
        let healthy = ContainerState::Running {
            health: Health::Healthy,
        };
        let with = |i: InstanceState, c: &ContainerState, s: &ServerState| {
            let mut o = observed(c, s);
            o.instances = vec![InstanceObs {
                id: "i-1".into(),
                state: i,
                private_ip: None,
            }];
            o
        };
        let cases: &[(Standby, InstanceState, ContainerState, ServerState, &str)] = &[
            // Warm: capacity up and healthy behind a closed server.
            (
                Standby::Warm,
                InstanceState::Running,
                healthy.clone(),
                ServerState::Ready,
                "drain b/s; wait-drained b/s; maint b/s",
            ),
            (
                Standby::Warm,
                InstanceState::Running,
                healthy.clone(),
                ServerState::Maint,
                "",
            ),
            (
                Standby::Warm,
                InstanceState::Running,
                ContainerState::Stopped,
                ServerState::Maint,
                "start c; wait-healthy c",
            ),
            (
                Standby::Warm,
                InstanceState::Stopped,
                ContainerState::Stopped,
                ServerState::Maint,
                "start-instances i-1; wait-running i-1; wait-docker",
            ),
            // Pilot light: instances up, containers stopped.
            (
                Standby::PilotLight,
                InstanceState::Running,
                healthy.clone(),
                ServerState::Ready,
                "drain b/s; wait-drained b/s; maint b/s; stop c",
            ),
            (
                Standby::PilotLight,
                InstanceState::Running,
                ContainerState::Stopped,
                ServerState::Maint,
                "",
            ),
            (
                Standby::PilotLight,
                InstanceState::Stopped,
                ContainerState::Stopped,
                ServerState::Maint,
                "start-instances i-1; wait-running i-1",
            ),
            // Cold: everything down.
            (
                Standby::Cold,
                InstanceState::Running,
                healthy.clone(),
                ServerState::Maint,
                "stop c; stop-instances i-1",
            ),
            (
                Standby::Cold,
                InstanceState::Stopped,
                ContainerState::Stopped,
                ServerState::Maint,
                "",
            ),
        ];
        for (tier, i, c, s, want) in cases {
            let got = render(&plan(Mode::Onprem, &with(i.clone(), c, s), *tier));
            assert_eq!(got, *want, "{tier:?} {i:?} {c:?} {s:?}");
        }
        // Whatever the tier, failover is the same plan.
        for tier in [Standby::Cold, Standby::PilotLight, Standby::Warm] {
            let o = with(
                InstanceState::Running,
                &ContainerState::Stopped,
                &ServerState::Maint,
            );
            assert_eq!(
                render(&plan(Mode::Cloud, &o, tier)),
                "start c; wait-healthy c; ready b/s"
            );
        }
    }

    fn unit(index: u32, c: &ContainerState, s: &ServerState, addr: Option<&str>) -> UnitObs {
        UnitObs {
            index,
            observed: Observed {
                containers: vec![ContainerObs {
                    name: format!("u-{index}"),
                    state: c.clone(),
                }],
                servers: vec![ServerObs {
                    target: ServerRef {
                        api: "/sock".into(),
                        backend: "be".into(),
                        server: format!("b{index}"),
                    },
                    state: s.clone(),
                    addr: addr.and_then(|a| a.parse().ok()),
                    weight: Some(if addr.is_some() { 100 } else { 1 }),
                    op_state: None,
                    blocked: None,
                    refuses_changes: false,
                }],
                instances: vec![],
            },
            address: format!("127.0.0.1:{}", 18099 + index).parse().ok(),
        }
    }

    #[test]
    fn burst_grows_in_one_merged_pass() {
        let units: Vec<UnitObs> = (1..=4)
            .map(|i| unit(i, &ContainerState::Absent, &ServerState::Maint, None))
            .collect();
        let p = plan_burst(2, &units, 100);
        assert_eq!(
            render(&p),
            "start u-1; start u-2; wait-healthy u-1,u-2; addr be/b1 127.0.0.1:18100; \
             addr be/b2 127.0.0.1:18101; weight be/b1 100; weight be/b2 100; ready be/b1; ready be/b2"
        );
    }

    #[test]
    fn burst_shrinks_with_drain_then_maint_then_stop() {
        let healthy = ContainerState::Running {
            health: Health::Healthy,
        };
        let units: Vec<UnitObs> = (1..=3)
            .map(|i| {
                unit(
                    i,
                    &healthy,
                    &ServerState::Ready,
                    Some(&format!("127.0.0.1:{}", 18099 + i)),
                )
            })
            .collect();
        assert!(plan_burst(3, &units, 100).converged());
        let p = plan_burst(1, &units, 100);
        assert_eq!(
            render(&p),
            "drain be/b2; drain be/b3; wait-drained be/b2,be/b3; maint be/b2; maint be/b3; stop u-2; stop u-3"
        );
    }

    #[test]
    fn burst_slots_missing_from_the_template() {
        let units = vec![
            unit(1, &ContainerState::Absent, &ServerState::Missing, None),
            unit(2, &ContainerState::Absent, &ServerState::Missing, None),
        ];
        // Down units without a slot: nothing to close, nothing to wait for.
        assert!(plan_burst(0, &units, 100).converged());
        // An up unit without a slot is started but cannot be opened: say so.
        let p = plan_burst(1, &units, 100);
        assert_eq!(render(&p), "start u-1; wait-healthy u-1 (waiting)");
        assert!(p.waiting[0].contains("not found in HAProxy"), "{p:?}");
    }

    #[test]
    fn burst_unit_without_address_is_not_opened() {
        let healthy = ContainerState::Running {
            health: Health::Healthy,
        };
        let mut u = unit(1, &healthy, &ServerState::Maint, None);
        u.address = None;
        let p = plan_burst(1, &[u], 100);
        assert!(
            p.steps.is_empty() && p.waiting[0].contains("address"),
            "{p:?}"
        );
    }

    #[test]
    fn burst_instance_units() {
        let u = |i: u32, st: InstanceState| UnitObs {
            index: i,
            observed: Observed {
                containers: vec![],
                servers: vec![],
                instances: vec![InstanceObs {
                    id: format!("i-{i}"),
                    state: st,
                    private_ip: None,
                }],
            },
            address: None,
        };
        let units = vec![
            u(1, InstanceState::Stopped),
            u(2, InstanceState::Pending),
            u(3, InstanceState::Running),
        ];
        assert_eq!(
            render(&plan_burst(2, &units, 100)),
            "start-instances i-1; wait-running i-1,i-2; stop-instances i-3"
        );
    }

    /// Two units in every pair of (container, server) states each, at every target: a slot is
    /// never opened before its container is known healthy, a container is never stopped while
    /// its slot may still be open, and opening comes before closing.
    #[test]
    fn burst_safety_over_every_pair_of_units() {
        let cs = container_states();
        let ss = server_states();
        for (_, c1) in &cs {
            for (_, s1) in &ss {
                for (_, c2) in &cs {
                    for (_, s2) in &ss {
                        for target in 0..=2 {
                            let units = vec![unit(1, c1, s1, None), unit(2, c2, s2, None)];
                            let p = plan_burst(target, &units, 100);
                            for u in &units {
                                let name = &u.observed.containers[0].name;
                                let slot = &u.observed.servers[0].target;
                                let pos = |f: &dyn Fn(&Step) -> bool| p.steps.iter().position(f);
                                let ready = pos(
                                    &|st| matches!(st, Step::SetServer { target, state: AdminState::Ready } if target == slot),
                                );
                                let healthy_wait = pos(
                                    &|st| matches!(st, Step::WaitHealthy { containers } if containers.contains(name)),
                                );
                                let started_healthy = u.observed.containers[0].state
                                    == ContainerState::Running {
                                        health: Health::Healthy,
                                    };
                                if let Some(r) = ready {
                                    assert!(u.index <= target, "{p:?}");
                                    assert!(
                                        started_healthy || healthy_wait.is_some_and(|w| w < r),
                                        "{p:?}"
                                    );
                                }
                                let stop = pos(
                                    &|st| matches!(st, Step::StopContainer { container } if container == name),
                                );
                                if let Some(stop) = stop {
                                    assert!(u.index > target, "{p:?}");
                                    let open = matches!(
                                        u.observed.servers[0].state,
                                        ServerState::Ready | ServerState::Drain
                                    );
                                    let unknown = matches!(
                                        u.observed.servers[0].state,
                                        ServerState::Unknown { .. }
                                    );
                                    assert!(!unknown, "stopped behind an unknown slot: {p:?}");
                                    if open {
                                        let maint = pos(
                                            &|st| matches!(st, Step::SetServer { target, state: AdminState::Maint } if target == slot),
                                        );
                                        assert!(maint.is_some_and(|m| m < stop), "{p:?}");
                                    }
                                }
                            }
                            let last_open = p.steps.iter().rposition(|st| phase(st) <= 7);
                            let first_close = p.steps.iter().position(|st| phase(st) >= 8);
                            if let (Some(o), Some(c)) = (last_open, first_close) {
                                assert!(o < c, "{p:?}");
                            }
                        }
                    }
                }
            }
        }
    }
}
