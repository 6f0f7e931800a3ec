//! Docker Engine backend (bollard): observe, create/start and stop the cloud containers.
//!
//! The API version is negotiated on first use and the connection is retried on every call
//! until it works, so the responder starts (and takes webhooks) while the engine is down.
//! Containers are created only from the config; they carry labels that say who manages them
//! ([`MANAGED_LABEL`]) and from which spec ([`SPEC_LABEL`]). A container found under a
//! configured name is used only when both say it is what the config would create now; anything
//! else is a [`ContainerState::Mismatch`]: recreated when it is ours (an older spec) or the
//! config says `recreate: always`, refused otherwise, and never started as it is.

use std::collections::HashMap;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HealthStatusEnum, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, RemoveContainerOptions,
    StartContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::OnceCell;
use tracing::warn;

use super::BackendError;
pub mod config;
mod readiness;

use self::config::{ContainerConfig, Recreate};
use crate::plan::{ContainerState, Health};

/// Label put on every container the responder creates: the service it belongs to.
pub const MANAGED_LABEL: &str = "io.failover-responder.service";

/// Label put on every container the responder creates: [`spec_digest`] of its config.
pub const SPEC_LABEL: &str = "io.failover-responder.spec";

/// A short digest of what a container is created from: the image reference, the command, the
/// env and the port publications (normalised, so `8080` and `8080/tcp` are the same). Not the
/// name, the health URL or `recreate`: changing those does not change the container.
///
/// FNV-1a 64, like Alertmanager's fingerprints (`alert::fingerprint`): stable across runs,
/// builds and machines, which std's randomly seeded hasher is not. It detects change, it is
/// not a security measure: whoever can create containers can write any label.
pub fn spec_digest(c: &ContainerSpec) -> String {
    const OFFSET: u64 = 14_695_981_039_346_656_037;
    const PRIME: u64 = 1_099_511_628_211;
    let mut h = OFFSET;
    // Every field ends with 0xff (never in UTF-8) and every list starts with its length, so
    // moving text between fields or entries changes the digest.
    let mut add = |bytes: &[u8]| {
        for b in bytes.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    add(b"v1");
    add(c.image.as_bytes());
    match &c.command {
        None => add(b"-"),
        Some(cmd) => {
            add(cmd.len().to_string().as_bytes());
            cmd.iter().for_each(|a| add(a.as_bytes()));
        }
    }
    add(c.env.len().to_string().as_bytes());
    c.env.iter().for_each(|e| add(e.as_bytes()));
    add(c.ports.len().to_string().as_bytes());
    for p in &c.ports {
        add(format!(
            "{}|{}|{}/{}",
            p.host_ip.as_deref().unwrap_or_default(),
            p.host_port.map(|h| h.to_string()).unwrap_or_default(),
            p.container_port,
            p.proto
        )
        .as_bytes());
    }
    format!("{h:016x}")
}

/// Why the container found under a configured name is not the one the config would create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Created by the responder for this service, from an older spec.
    pub ours: bool,
    /// What differs, naming the image found and the one configured.
    pub reason: String,
}

impl Mismatch {
    /// Whether it may be removed and created from the config: ours, or `recreate: always`.
    pub fn may_recreate(&self, c: &ContainerSpec) -> bool {
        self.ours || c.recreate == Recreate::Always
    }
}

/// What an inspect says about where a container came from, for [`compare`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    pub labels: Option<&'a HashMap<String, String>>,
    /// The image reference it was created from (`Config.Image`).
    pub image: Option<&'a str>,
    /// The ID of the image it runs (`Image`).
    pub image_id: Option<&'a str>,
}

/// An image ID for messages: the first 12 hex digits, as `docker ps` shows them.
fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.get(..12).unwrap_or(hex)
}

/// Compares a container found under `c.name` with its config; None when it is the container
/// the config would create now. `want_id` is the ID `c.image` names on the engine now (None
/// when the engine has no such image: then only the reference is compared).
///
/// - No [`MANAGED_LABEL`], or another service's: not ours, whatever its image.
/// - Ours with another [`SPEC_LABEL`]: the config changed since it was created (image
///   reference, command, env, ports). A reference counts even when it names the same image
///   ID (`docker tag`): the config is what the operator changes and reads, and a recreate costs
///   seconds. Ours without the label (created before it existed): its image reference is
///   compared.
/// - Ours with the same spec, but running another image ID than the reference names now (the
///   tag was rebuilt or pulled since): stale too, or a failover would serve the old build.
pub fn compare(
    service: &str,
    c: &ContainerSpec,
    found: &Origin<'_>,
    want_id: Option<&str>,
) -> Option<Mismatch> {
    let images = format!(
        "it runs image {} ({}), the config says {} ({})",
        found.image.unwrap_or("unknown"),
        found.image_id.map_or("unknown ID", short_id),
        c.image,
        want_id.map_or("not on this engine", short_id),
    );
    let label = |key: &str| found.labels.and_then(|l| l.get(key)).map(String::as_str);
    let foreign = |why: String| {
        Some(Mismatch {
            ours: false,
            reason: format!("{why}; {images}"),
        })
    };
    let stale = |why: &str| {
        Some(Mismatch {
            ours: true,
            reason: format!("created by the responder from an older spec ({why}); {images}"),
        })
    };
    match label(MANAGED_LABEL) {
        None => {
            return foreign(format!(
                "not created by the responder (no {MANAGED_LABEL}={service} label)"
            ))
        }
        Some(other) if other != service => {
            return foreign(format!(
                "created by the responder for service {other:?}, not {service:?}"
            ))
        }
        Some(_) => {}
    }
    let same_image = found.image == Some(c.image.as_str());
    match label(SPEC_LABEL) {
        Some(spec) if spec != spec_digest(c) && !same_image => return stale("the image changed"),
        Some(spec) if spec != spec_digest(c) => return stale("the command, env or ports changed"),
        None if !same_image => return stale("the image changed"),
        _ => {}
    }
    match (found.image_id, want_id) {
        (Some(have), Some(want)) if have != want => {
            stale("the image's tag names another image now")
        }
        _ => None,
    }
}

/// A container found under a configured name.
struct Found {
    /// Its ID: every action after the look acts on this one, never on whatever has the name.
    id: String,
    state: bollard::models::ContainerState,
    mismatch: Option<Mismatch>,
}

/// A parsed `[ip:]host_port:container_port[/proto]` publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub host_ip: Option<String>,
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub proto: String,
}

/// Parses a Docker-style port publication.
pub fn parse_port(spec: &str) -> Result<PortSpec, String> {
    let (addr, proto) = match spec.rsplit_once('/') {
        Some((a, p @ ("tcp" | "udp" | "sctp"))) => (a, p.to_string()),
        Some((_, p)) => return Err(format!("{spec:?}: unknown protocol {p:?}")),
        None => (spec, "tcp".to_string()),
    };
    let port = |s: &str| -> Result<u16, String> {
        s.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{spec:?}: {s:?} is not a port number (1-65535)"))
    };
    // An IPv6 host address is bracketed: [::1]:8081:8080.
    let (host_ip, rest) = if let Some(r) = addr.strip_prefix('[') {
        let (ip, rest) = r
            .split_once("]:")
            .ok_or_else(|| format!("{spec:?}: unterminated [ipv6] address"))?;
        (Some(ip.to_string()), rest.to_string())
    } else {
        let parts: Vec<&str> = addr.split(':').collect();
        match parts.len() {
            1 | 2 => (None, addr.to_string()),
            3 => (
                Some(parts[0].to_string()),
                format!("{}:{}", parts[1], parts[2]),
            ),
            _ => return Err(format!("{spec:?}: want [ip:]host_port:container_port")),
        }
    };
    if let Some(ip) = &host_ip {
        ip.parse::<std::net::IpAddr>()
            .map_err(|_| format!("{spec:?}: {ip:?} is not an IP address"))?;
    }
    let (host_port, container_port) = match rest.split_once(':') {
        Some(("", c)) => (None, port(c)?),
        Some((h, c)) => (Some(port(h)?), port(c)?),
        None => (None, port(&rest)?),
    };
    Ok(PortSpec {
        host_ip,
        host_port,
        container_port,
        proto,
    })
}

/// A container as the responder creates it: its config with the port publications parsed.
/// Built once when the responder starts ([`ContainerSpec::new`], from a config whose every
/// publication was checked at load); every Docker call takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub ports: Vec<PortSpec>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub command: Option<Vec<String>>,
    pub health_url: Option<String>,
    pub recreate: Recreate,
}

impl ContainerSpec {
    /// Errors: the first port publication that does not parse, naming it (the config check
    /// names every one with its key path first).
    pub fn new(c: &ContainerConfig) -> Result<ContainerSpec, String> {
        let ports = c
            .ports
            .iter()
            .map(|p| parse_port(p))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("container {}: {e}", c.name))?;
        Ok(ContainerSpec {
            name: c.name.clone(),
            image: c.image.clone(),
            ports,
            env: c.env.clone(),
            command: c.command.clone(),
            health_url: c.health_url.clone(),
            recreate: c.recreate,
        })
    }
}

/// One Docker engine. Cheap to clone; the negotiated client is shared.
#[derive(Clone)]
pub struct DockerBackend {
    host: String,
    client: std::sync::Arc<OnceCell<Docker>>,
    http: reqwest::Client,
}

impl DockerBackend {
    /// Does no I/O: the engine is contacted on first use.
    pub fn new(host: &str) -> Self {
        DockerBackend {
            host: host.to_string(),
            client: std::sync::Arc::new(OnceCell::new()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    async fn client(&self) -> Result<&Docker, BackendError> {
        self.client
            .get_or_try_init(|| async {
                // Per-request timeout in seconds; the longest call is a stop with its grace period.
                const TIMEOUT: u64 = 120;
                let docker = if self.host.starts_with("unix://") {
                    Docker::connect_with_unix(&self.host, TIMEOUT, bollard::API_DEFAULT_VERSION)
                } else {
                    Docker::connect_with_http(&self.host, TIMEOUT, bollard::API_DEFAULT_VERSION)
                }
                .map_err(|e| self.unreachable(e))?;
                // Older engines (this project is tested against 20.10, API 1.41) refuse newer
                // API versions, so ask the engine which one it speaks.
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| self.unreachable(e))
            })
            .await
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> BackendError {
        BackendError::Unreachable {
            target: format!("docker {}", self.host),
            message: e.to_string(),
        }
    }

    fn classify(&self, what: &str, e: DockerError) -> BackendError {
        match e {
            DockerError::DockerResponseServerError {
                status_code,
                message,
            } => BackendError::Rejected {
                target: format!("docker {}", self.host),
                message: format!("{what}: {message} (HTTP {status_code})"),
                // 4xx other than conflicts will not fix themselves; 5xx may.
                retryable: status_code >= 500 || status_code == 409,
            },
            other => self.unreachable(format!("{what}: {other}")),
        }
    }

    /// Whether the engine answers.
    pub async fn ping(&self) -> Result<(), BackendError> {
        let d = self.client().await?;
        d.ping().await.map(|_| ()).map_err(|e| self.unreachable(e))
    }

    /// Observes one of `service`'s containers, including its health, and whether it is the
    /// container its config would create ([`compare`]). Never fails: an engine that cannot be
    /// asked yields `Unknown` with the reason.
    pub async fn observe(&self, service: &str, c: &ContainerSpec) -> ContainerState {
        match self.inspect(service, c).await {
            Ok(state) => state,
            Err(e) => ContainerState::Unknown {
                reason: e.to_string(),
            },
        }
    }

    /// Looks up the container named `c.name` and compares it with `c`; None when absent.
    async fn find(
        &self,
        d: &Docker,
        service: &str,
        c: &ContainerSpec,
    ) -> Result<Option<Found>, BackendError> {
        let info = match d
            .inspect_container(&c.name, None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => info,
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(self.classify("inspect", e)),
        };
        let want_id = match d.inspect_image(&c.image).await {
            Ok(image) => image.id,
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => None,
            Err(e) => return Err(self.classify(&format!("inspect image {}", c.image), e)),
        };
        let config = info.config.as_ref();
        let origin = Origin {
            labels: config.and_then(|k| k.labels.as_ref()),
            image: config.and_then(|k| k.image.as_deref()),
            image_id: info.image.as_deref(),
        };
        let mismatch = compare(service, c, &origin, want_id.as_deref());
        Ok(Some(Found {
            // Inspect always has the ID; were it missing, the name is the next best handle.
            id: info.id.clone().unwrap_or_else(|| c.name.clone()),
            state: info.state.unwrap_or_default(),
            mismatch,
        }))
    }

    async fn inspect(
        &self,
        service: &str,
        c: &ContainerSpec,
    ) -> Result<ContainerState, BackendError> {
        let d = self.client().await?;
        let Some(found) = self.find(d, service, c).await? else {
            return Ok(ContainerState::Absent);
        };
        let state = found.state;
        if let Some(m) = found.mismatch {
            return Ok(ContainerState::Mismatch {
                may_recreate: m.may_recreate(c),
                reason: m.reason,
                ours: m.ours,
                running: state.running.unwrap_or(false),
            });
        }
        if !state.running.unwrap_or(false) {
            return Ok(ContainerState::Stopped);
        }
        if state.paused.unwrap_or(false) || state.restarting.unwrap_or(false) {
            // Running but not serving: never counted as healthy.
            return Ok(ContainerState::Running {
                health: Health::Unhealthy,
            });
        }
        let docker_health = state.health.and_then(|h| h.status);
        let health = match docker_health {
            Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
            Some(HealthStatusEnum::STARTING) => Health::Starting,
            Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
            // No HEALTHCHECK in the image: probe health_url, else running is healthy.
            _ => match &c.health_url {
                Some(url) => self.probe(url).await,
                None => Health::Healthy,
            },
        };
        Ok(ContainerState::Running { health })
    }

    async fn probe(&self, url: &str) -> Health {
        match self.http.get(url).send().await {
            Ok(r) if r.status().is_success() => Health::Healthy,
            Ok(_) => Health::Unhealthy,
            // Not listening yet: the usual state right after start.
            Err(_) => Health::Starting,
        }
    }

    /// Makes `service`'s container `c` run as configured. Absent: created from the config
    /// (pulling the image if the engine lacks it). Found but not as configured ([`compare`]):
    /// removed and created anew when it may be (ours from an older spec, or `recreate:
    /// always`), else refused with an error that names it, the images and the fix. Then it
    /// starts the container it checked or created, by ID, so one swapped in under the same name
    /// meanwhile is never started. Starting a running container is a no-op.
    ///
    /// `replace_running`: a running container not as configured may be removed only when the
    /// planner said so (it checked that no server may send it traffic); one that started
    /// running since the planner looked is left for the next pass to plan for.
    pub async fn start(
        &self,
        service: &str,
        c: &ContainerSpec,
        replace_running: bool,
    ) -> Result<(), BackendError> {
        let d = self.client().await?;
        let id = match self.find(d, service, c).await? {
            None => self.create(d, service, c).await?,
            Some(Found {
                id, mismatch: None, ..
            }) => id,
            Some(Found {
                id,
                mismatch: Some(m),
                state,
            }) => {
                if !m.may_recreate(c) {
                    return Err(refusal(c, &m));
                }
                if state.running.unwrap_or(false) && !replace_running {
                    return Err(BackendError::Rejected {
                        target: format!("container {}", c.name),
                        message: format!(
                            "found running but not as configured ({}); not removed by a plain start",
                            m.reason
                        ),
                        retryable: true,
                    });
                }
                // The image first: one that cannot be pulled must not cost the old container.
                if d.inspect_image(&c.image).await.is_err() {
                    self.pull(d, &c.image).await?;
                }
                warn!(container = %c.name, reason = %m.reason, "removing it to create it from the config");
                self.remove(d, &id).await?;
                self.create(d, service, c).await?
            }
        };
        match d.start_container(&id, None::<StartContainerOptions>).await {
            Ok(()) => Ok(()),
            // 304: already started.
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.classify("start", e)),
        }
    }

    /// Creates the container from its config; returns its ID.
    async fn create(
        &self,
        d: &Docker,
        service: &str,
        c: &ContainerSpec,
    ) -> Result<String, BackendError> {
        let body = container_body(service, c);
        let opts = CreateContainerOptions {
            name: Some(c.name.clone()),
            ..Default::default()
        };
        match d.create_container(Some(opts.clone()), body.clone()).await {
            Ok(created) => Ok(created.id),
            // The name was taken since it was looked up: by a concurrent create of the same
            // spec (use it), or by something else (never use it; the next pass plans for it).
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => match self.find(d, service, c).await? {
                Some(Found {
                    id, mismatch: None, ..
                }) => Ok(id),
                Some(Found {
                    mismatch: Some(m), ..
                }) => Err(BackendError::Rejected {
                    target: format!("container {}", c.name),
                    message: format!(
                        "another container took the name while creating it: {}",
                        m.reason
                    ),
                    retryable: true,
                }),
                None => Err(BackendError::Rejected {
                    target: format!("container {}", c.name),
                    message: "the name was taken and freed again while creating it".into(),
                    retryable: true,
                }),
            },
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                self.pull(d, &c.image).await?;
                d.create_container(Some(opts), body)
                    .await
                    .map(|created| created.id)
                    .map_err(|e| self.classify("create", e))
            }
            Err(e) => Err(self.classify("create", e)),
        }
    }

    /// Removes the container with this ID, killing it if it runs. Its volumes are kept: data
    /// is never deleted here. Already gone is success.
    async fn remove(&self, d: &Docker, id: &str) -> Result<(), BackendError> {
        let opts = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match d.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.classify("remove", e)),
        }
    }

    async fn pull(&self, d: &Docker, image: &str) -> Result<(), BackendError> {
        let opts = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut stream = d.create_image(Some(opts), None, None);
        while let Some(item) = stream.next().await {
            item.map_err(|e| self.classify(&format!("pull {image}"), e))?;
        }
        Ok(())
    }

    /// Stops `service`'s container `c` with `grace` before SIGKILL. Absent or stopped is
    /// success. One the responder did not create for `service` is never stopped: an error
    /// says so (ours from an older spec is stopped like any of ours).
    pub async fn stop(
        &self,
        service: &str,
        c: &ContainerSpec,
        grace: Duration,
    ) -> Result<(), BackendError> {
        let d = self.client().await?;
        let Some(found) = self.find(d, service, c).await? else {
            return Ok(());
        };
        if let Some(m) = found.mismatch.as_ref().filter(|m| !m.ours) {
            return Err(BackendError::Rejected {
                target: format!("container {}", c.name),
                message: format!(
                    "{}: not stopped, the responder stops only containers it created",
                    m.reason
                ),
                retryable: true,
            });
        }
        let opts = StopContainerOptions {
            t: Some(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)),
            signal: None,
        };
        match d.stop_container(&found.id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(e) => Err(self.classify("stop", e)),
        }
    }
}

/// The error for a container that is not as configured and may not be removed.
fn refusal(c: &ContainerSpec, m: &Mismatch) -> BackendError {
    BackendError::Rejected {
        target: format!("container {}", c.name),
        message: format!(
            "{}; refusing to start it or open anything in front of it (recreate: never). Fix: \
             set `recreate: always` on container {} in the config to have it replaced, or \
             remove or rename it (docker rm -f {})",
            m.reason, c.name, c.name
        ),
        retryable: false,
    }
}

/// The create body for a container spec. Pure, so it is tested without an engine.
pub fn container_body(service: &str, c: &ContainerSpec) -> ContainerCreateBody {
    let mut exposed: HashMap<String, HashMap<(), ()>> = HashMap::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &c.ports {
        let key = format!("{}/{}", p.container_port, p.proto);
        exposed.insert(key.clone(), HashMap::new());
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: p.host_port.map(|h| h.to_string()),
            });
    }
    ContainerCreateBody {
        image: Some(c.image.clone()),
        env: (!c.env.is_empty()).then(|| c.env.clone()),
        cmd: c.command.clone(),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        labels: Some(HashMap::from([
            (MANAGED_LABEL.to_string(), service.to_string()),
            (SPEC_LABEL.to_string(), spec_digest(c)),
        ])),
        host_config: Some(HostConfig {
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(c: &ContainerConfig) -> ContainerSpec {
        ContainerSpec::new(c).unwrap_or_else(|e| panic!("{e}"))
    }

    fn digest(c: &ContainerConfig) -> String {
        spec_digest(&typed(c))
    }

    #[test]
    fn port_specs() {
        type Want<'a> = (&'a str, Option<&'a str>, Option<u16>, u16, &'a str);
        let ok: &[Want] = &[
            ("8080", None, None, 8080, "tcp"),
            ("8081:8080", None, Some(8081), 8080, "tcp"),
            (
                "127.0.0.1:8081:8080",
                Some("127.0.0.1"),
                Some(8081),
                8080,
                "tcp",
            ),
            ("127.0.0.1::8080", Some("127.0.0.1"), None, 8080, "tcp"),
            ("[::1]:8081:8080/udp", Some("::1"), Some(8081), 8080, "udp"),
        ];
        for (s, ip, hp, cp, proto) in ok {
            let p = parse_port(s).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                (
                    p.host_ip.as_deref(),
                    p.host_port,
                    p.container_port,
                    p.proto.as_str()
                ),
                (*ip, *hp, *cp, *proto),
                "{s}"
            );
        }
        for bad in [
            "",
            "x",
            "99999:80",
            "0:80",
            "1.2.3:80:80",
            "a:b:c:d",
            "80/http",
            "[::1:80:80",
        ] {
            assert!(parse_port(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn create_body_from_config() {
        let c = ContainerConfig {
            name: "cloud-api".into(),
            image: "onprem-api:latest".into(),
            ports: vec!["127.0.0.1:8081:8080".into()],
            env: vec!["A=1".into()],
            command: None,
            health_url: None,
            recreate: Recreate::Never,
        };
        let b = container_body("onprem-api", &typed(&c));
        assert_eq!(b.image.as_deref(), Some("onprem-api:latest"));
        let bindings = b
            .host_config
            .and_then(|h| h.port_bindings)
            .expect("port bindings");
        let pb = bindings["8080/tcp"].as_ref().expect("binding list");
        assert_eq!(pb[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(pb[0].host_port.as_deref(), Some("8081"));
        assert_eq!(
            b.labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_LABEL))
                .map(String::as_str),
            Some("onprem-api")
        );
        assert_eq!(
            b.labels
                .as_ref()
                .and_then(|l| l.get(SPEC_LABEL))
                .map(String::as_str),
            Some(digest(&c).as_str())
        );
    }

    fn spec(image: &str) -> ContainerConfig {
        ContainerConfig {
            name: "cloud-api".into(),
            image: image.into(),
            ports: vec!["127.0.0.1:8081:8080".into()],
            env: vec!["A=1".into()],
            command: Some(vec!["serve".into()]),
            health_url: Some("http://127.0.0.1:8081/health".into()),
            recreate: Recreate::Never,
        }
    }

    #[test]
    fn spec_digest_is_stable_and_covers_what_creates_the_container() {
        let base = spec("api:1");
        // Fixed across runs and builds: a change here would recreate every container once.
        assert_eq!(digest(&base), digest(&base.clone()));
        assert_eq!(digest(&base).len(), 16);
        let golden = digest(&base);
        assert_eq!(golden, "3fb93c8bfa2ee80c", "the digest changed: {golden}");
        let changed: Vec<(&str, ContainerConfig)> = vec![
            ("image", spec("api:2")),
            (
                "env",
                ContainerConfig {
                    env: vec!["A=2".into()],
                    ..base.clone()
                },
            ),
            (
                "env order",
                ContainerConfig {
                    env: vec![],
                    ..base.clone()
                },
            ),
            (
                "ports",
                ContainerConfig {
                    ports: vec!["127.0.0.1:8082:8080".into()],
                    ..base.clone()
                },
            ),
            (
                "command",
                ContainerConfig {
                    command: None,
                    ..base.clone()
                },
            ),
            (
                "command split",
                ContainerConfig {
                    command: Some(vec!["ser".into(), "ve".into()]),
                    ..base.clone()
                },
            ),
            // Text moved between fields is a change too.
            (
                "field boundary",
                ContainerConfig {
                    env: vec![],
                    command: Some(vec!["serve".into(), "A=1".into()]),
                    ..base.clone()
                },
            ),
        ];
        for (what, c) in &changed {
            assert_ne!(digest(c), golden, "{what} not covered");
        }
        let same: Vec<(&str, ContainerConfig)> = vec![
            (
                "name",
                ContainerConfig {
                    name: "other".into(),
                    ..base.clone()
                },
            ),
            (
                "health_url",
                ContainerConfig {
                    health_url: None,
                    ..base.clone()
                },
            ),
            (
                "recreate",
                ContainerConfig {
                    recreate: Recreate::Always,
                    ..base.clone()
                },
            ),
            (
                "default protocol",
                ContainerConfig {
                    ports: vec!["127.0.0.1:8081:8080/tcp".into()],
                    ..base.clone()
                },
            ),
        ];
        for (what, c) in &same {
            assert_eq!(digest(c), golden, "{what} changed the digest");
        }
    }

    /// Every kind of container found under a configured name, against the config.
    #[test]
    fn compare_what_is_found_with_the_config() {
        let c = spec("api:1");
        let ours = |spec: Option<String>| {
            let mut l = HashMap::from([(MANAGED_LABEL.to_string(), "svc".to_string())]);
            if let Some(s) = spec {
                l.insert(SPEC_LABEL.to_string(), s);
            }
            l
        };
        let current = ours(Some(digest(&c)));
        let older = ours(Some(digest(&ContainerConfig {
            env: vec![],
            ..c.clone()
        })));
        let old_image = ours(Some(digest(&spec("api:0"))));
        let legacy = ours(None);
        let other_service = HashMap::from([(MANAGED_LABEL.to_string(), "other".to_string())]);
        let none = HashMap::new();
        let (id1, id2) = ("sha256:1111111111111111aaaa", "sha256:2222222222222222bbbb");
        // (what, labels, image found, its id, id of the configured reference, want)
        // want: None = as configured, Some((ours, words in the reason))
        type Row<'a> = (
            &'a str,
            &'a HashMap<String, String>,
            &'a str,
            &'a str,
            Option<&'a str>,
            Option<(bool, &'a [&'a str])>,
        );
        let table: &[Row] = &[
            ("ours, current", &current, "api:1", id1, Some(id1), None),
            (
                "ours, image not on the engine",
                &current,
                "api:1",
                id1,
                None,
                None,
            ),
            ("legacy, same image", &legacy, "api:1", id1, Some(id1), None),
            (
                "ours, env changed",
                &older,
                "api:1",
                id1,
                Some(id1),
                Some((true, &["older spec", "command, env or ports"])),
            ),
            (
                "ours, image changed in the config",
                &old_image,
                "api:0",
                id2,
                Some(id1),
                Some((
                    true,
                    &[
                        "older spec",
                        "image changed",
                        "api:0 (222222222222)",
                        "api:1 (111111111111)",
                    ],
                )),
            ),
            (
                // `docker tag api:1 api:0`: same ID, another reference: the config changed.
                "ours, image renamed, same ID",
                &old_image,
                "api:0",
                id1,
                Some(id1),
                Some((true, &["image changed"])),
            ),
            (
                "legacy, other image",
                &legacy,
                "api:0",
                id2,
                Some(id1),
                Some((true, &["image changed"])),
            ),
            (
                "ours, tag rebuilt since",
                &current,
                "api:1",
                id2,
                Some(id1),
                Some((true, &["tag names another image"])),
            ),
            (
                "no label",
                &none,
                "api:1",
                id1,
                Some(id1),
                Some((
                    false,
                    &[
                        "not created by the responder",
                        "io.failover-responder.service=svc",
                    ],
                )),
            ),
            (
                "no label, other image",
                &none,
                "other:1",
                id2,
                Some(id1),
                Some((false, &["not created by the responder", "other:1", "api:1"])),
            ),
            (
                "another service's",
                &other_service,
                "api:1",
                id1,
                Some(id1),
                Some((false, &["for service \"other\""])),
            ),
        ];
        for (what, labels, image, id, want_id, want) in table {
            let found = Origin {
                labels: Some(labels),
                image: Some(image),
                image_id: Some(id),
            };
            let got = compare("svc", &typed(&c), &found, *want_id);
            match (want, &got) {
                (None, None) => {}
                (Some((ours, words)), Some(m)) => {
                    assert_eq!(m.ours, *ours, "{what}: {m:?}");
                    for w in *words {
                        assert!(m.reason.contains(w), "{what}: {w:?} not in {:?}", m.reason);
                    }
                    assert!(m.reason.contains(image), "{what}: found image not named");
                    assert_eq!(m.may_recreate(&typed(&c)), *ours, "{what}");
                    let always = ContainerConfig {
                        recreate: Recreate::Always,
                        ..c.clone()
                    };
                    assert!(m.may_recreate(&typed(&always)), "{what}");
                }
                _ => panic!("{what}: want {want:?}, got {got:?}"),
            }
        }
        // Engine data with nothing in it: not ours, and no panic.
        let m = compare("svc", &typed(&c), &Origin::default(), None).expect("mismatch");
        assert!(!m.ours && m.reason.contains("unknown"), "{m:?}");
        assert_eq!(short_id("sha256:abc"), "abc");
        assert_eq!(short_id(""), "");
    }
}
