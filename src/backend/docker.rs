//! Docker Engine backend (bollard): observe, create/start and stop the cloud containers.
//!
//! The API version is negotiated on first use and the connection is retried on every call
//! until it works, so the responder starts (and takes webhooks) while the engine is down.
//! Containers are created only from the config; they carry labels that say who manages them.

use std::collections::HashMap;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HealthStatusEnum, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, StartContainerOptions,
    StopContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use super::BackendError;
use crate::config::ContainerConfig;
use crate::plan::{ContainerState, Health};

/// Label put on every container the responder creates.
pub const MANAGED_LABEL: &str = "io.failover-responder.service";

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

    /// Observes one container, including its health. Never fails: an engine that cannot be
    /// asked yields `Unknown` with the reason.
    pub async fn observe(&self, c: &ContainerConfig) -> ContainerState {
        match self.inspect(c).await {
            Ok(state) => state,
            Err(e) => ContainerState::Unknown {
                reason: e.to_string(),
            },
        }
    }

    async fn inspect(&self, c: &ContainerConfig) -> Result<ContainerState, BackendError> {
        let d = self.client().await?;
        let info = match d
            .inspect_container(&c.name, None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => info,
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(ContainerState::Absent),
            Err(e) => return Err(self.classify("inspect", e)),
        };
        let state = info.state.unwrap_or_default();
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

    /// Creates the container from its config when absent (pulling the image if the engine
    /// lacks it), then starts it. Starting a running container is a no-op.
    pub async fn start(&self, service: &str, c: &ContainerConfig) -> Result<(), BackendError> {
        let d = self.client().await?;
        if let ContainerState::Absent = self.inspect(c).await? {
            self.create(d, service, c).await?;
        }
        match d
            .start_container(&c.name, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            // 304: already started.
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.classify("start", e)),
        }
    }

    async fn create(
        &self,
        d: &Docker,
        service: &str,
        c: &ContainerConfig,
    ) -> Result<(), BackendError> {
        let body = container_body(service, c);
        let opts = CreateContainerOptions {
            name: Some(c.name.clone()),
            ..Default::default()
        };
        match d.create_container(Some(opts.clone()), body.clone()).await {
            Ok(_) => Ok(()),
            // Created by a concurrent call: fine, it is the same spec.
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                self.pull(d, &c.image).await?;
                d.create_container(Some(opts), body)
                    .await
                    .map(|_| ())
                    .map_err(|e| self.classify("create", e))
            }
            Err(e) => Err(self.classify("create", e)),
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

    /// Stops the container with `grace` before SIGKILL. Absent or stopped is success.
    pub async fn stop(&self, c: &ContainerConfig, grace: Duration) -> Result<(), BackendError> {
        let d = self.client().await?;
        let opts = StopContainerOptions {
            t: Some(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)),
            signal: None,
        };
        match d.stop_container(&c.name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(e) => Err(self.classify("stop", e)),
        }
    }
}

/// The create body for a container spec. Pure, so it is tested without an engine.
pub fn container_body(service: &str, c: &ContainerConfig) -> ContainerCreateBody {
    let mut exposed: HashMap<String, HashMap<(), ()>> = HashMap::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    // Config validation already refused bad specs; skip rather than panic if one slips by.
    for p in c.ports.iter().filter_map(|p| parse_port(p).ok()) {
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
        labels: Some(HashMap::from([(
            MANAGED_LABEL.to_string(),
            service.to_string(),
        )])),
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
        };
        let b = container_body("onprem-api", &c);
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
    }
}
