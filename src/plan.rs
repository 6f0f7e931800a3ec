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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

/// Health of a running container: Docker's HEALTHCHECK status, else the configured
/// `health_url`, else "running" counts as healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Starting,
    Unhealthy,
}

/// A cloud server's admin state in one HAProxy, from `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerObs {
    pub name: String,
    #[serde(flatten)]
    pub state: ContainerState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerObs {
    #[serde(flatten)]
    pub target: ServerRef,
    #[serde(flatten)]
    pub state: ServerState,
    /// `ip:port` HAProxy sends the server's traffic to (observed for burst slots only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// The server's user weight (observed for burst slots only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// An instance's state as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceObs {
    pub id: String,
    #[serde(flatten)]
    pub state: InstanceState,
    /// Where a burst unit on this instance is reached (`{private_ip}` in `burst.address`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
}

/// Everything observed about one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Observed {
    pub containers: Vec<ContainerObs>,
    pub servers: Vec<ServerObs>,
    /// EC2 instances carrying the containers (empty without `ec2`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceObs>,
}

/// One action. Waits are steps too: they have deadlines and can fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Step {
    /// Create the container from its config if absent, then start it.
    StartContainer {
        container: String,
    },
    /// Poll until every listed container is healthy, up to `timeouts.healthy`.
    WaitHealthy {
        containers: Vec<String>,
    },
    SetServer {
        #[serde(flatten)]
        target: ServerRef,
        state: AdminState,
    },
    /// Poll until the servers have no sessions, up to `timeouts.drain`.
    WaitDrained {
        servers: Vec<ServerRef>,
    },
    /// Stop with `timeouts.stop` grace.
    StopContainer {
        container: String,
    },
    StartInstances {
        ids: Vec<String>,
    },
    /// EC2 waiter until every instance is running, up to `ec2.running_timeout`.
    WaitInstancesRunning {
        ids: Vec<String>,
    },
    /// Poll the Docker engine until it answers, up to `timeouts.healthy`.
    WaitDockerReady,
    StopInstances {
        ids: Vec<String>,
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
}

impl Step {
    /// Short name for metrics and logs.
    pub fn action(&self) -> &'static str {
        match self {
            Step::StartContainer { .. } => "start_container",
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
}

impl Plan {
    /// Nothing to do and nothing unknown: the world is as desired.
    pub fn converged(&self) -> bool {
        self.steps.is_empty() && self.waiting.is_empty()
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
    if !instances_up(o, &mut p) || !containers_up(o, &mut p) {
        return p;
    }
    open_servers(o, None, &mut p);
    p
}

/// Where a burst slot should point and with what weight, set before it is opened.
#[derive(Debug, Clone, Copy)]
struct Slot<'a> {
    addr: &'a str,
    weight: u32,
}

/// Plans every server open (after pointing a burst slot at its unit).
fn open_servers(o: &Observed, slot: Option<Slot<'_>>, p: &mut Plan) {
    for s in &o.servers {
        let known = matches!(
            s.state,
            ServerState::Ready | ServerState::Drain | ServerState::Maint
        );
        if let (Some(want), true) = (slot, known) {
            if s.addr.as_deref() != Some(want.addr) {
                if let Some((addr, port)) = want
                    .addr
                    .rsplit_once(':')
                    .and_then(|(a, port)| Some((a, port.parse::<u16>().ok()?)))
                {
                    p.steps.push(Step::SetServerAddr {
                        target: s.target.clone(),
                        addr: addr.to_string(),
                        port,
                    });
                }
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

/// Plans the containers running and healthy. Returns false when a container cannot be asked:
/// its health is unknown, so nothing may be opened in front of it.
fn containers_up(o: &Observed, p: &mut Plan) -> bool {
    let unknown: Vec<String> = o
        .containers
        .iter()
        .filter_map(|c| match &c.state {
            ContainerState::Unknown { reason } => Some(format!("container {}: {reason}", c.name)),
            _ => None,
        })
        .collect();
    if !unknown.is_empty() {
        p.waiting.extend(unknown);
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
    let mut open = Vec::new();
    let mut any_unknown_server = false;
    for s in &o.servers {
        match &s.state {
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
                any_unknown_server = true;
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
    if standby == Standby::Warm {
        // Resting warm: the capacity stays up and healthy behind closed servers.
        if instances_up(o, &mut p) {
            containers_up(o, &mut p);
        }
        return p;
    }
    for c in &o.containers {
        match &c.state {
            ContainerState::Running { .. } if any_unknown_server => {
                p.waiting.push(format!(
                    "container {}: kept running until every HAProxy confirms its servers are closed",
                    c.name
                ));
            }
            ContainerState::Running { .. } => p.steps.push(Step::StopContainer {
                container: c.name.clone(),
            }),
            ContainerState::Absent | ContainerState::Stopped => {}
            ContainerState::Unknown { reason } => {
                p.waiting.push(format!("container {}: {reason}", c.name))
            }
        }
    }
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
        p.steps.extend(up.steps);
        p.waiting.extend(up.waiting);
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
        if any_unknown_server {
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

/// One burst unit as observed: its container or instance, and its slot on every HAProxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitObs {
    /// 1-based: unit `i` uses slot `<prefix><i>`.
    pub index: u32,
    #[serde(flatten)]
    pub observed: Observed,
    /// `ip:port` its slot should point at; None while not known (an instance with no IP yet).
    pub address: Option<String>,
}

/// Plans units `1..=target` up and open, and every unit above `target` drained, closed and
/// stopped, with the same safe orders as failover and failback. Unit plans are merged phase by
/// phase (all starts, one wait, all opens), so growing by `step` units costs one wait, not
/// `step` of them.
pub fn plan_burst(target: u32, units: &[UnitObs], weight: u32) -> Plan {
    let mut parts = Vec::new();
    for u in units {
        let mut p = Plan::default();
        if u.index <= target {
            if instances_up(&u.observed, &mut p) && containers_up(&u.observed, &mut p) {
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
        Step::StartContainer { .. } => 3,
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
    for p in parts {
        steps.extend(p.steps);
        waiting.extend(p.waiting);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                    addr: addr.map(String::from),
                    weight: Some(if addr.is_some() { 100 } else { 1 }),
                }],
                instances: vec![],
            },
            address: Some(format!("127.0.0.1:{}", 18099 + index)),
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
