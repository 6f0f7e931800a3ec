//! Readiness of the Docker side of a failover, checked without changing anything: the engine
//! answers, every image is on it, no container stands in the way under a configured name, and
//! no other container holds a configured host port.

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerSummary, PortTypeEnum};
use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;

use super::{ContainerSpec, DockerBackend, PortSpec};
use crate::backend::{BackendError, Problem};

impl DockerBackend {
    /// What would keep `specs` (a service's failover containers or burst units) from starting
    /// on this engine now; empty when nothing would. Reads only: inspects, an image lookup and
    /// one list of the running containers.
    pub async fn readiness(&self, service: &str, specs: &[ContainerSpec]) -> Vec<Problem> {
        // The problem names the engine as its target; the error's own text without it.
        let engine = |e: &BackendError| {
            vec![Problem::new(
                "docker_engine",
                format!("docker {}", self.host),
                format!(
                    "{}: start the Docker engine on the cloud host, or fix docker.host",
                    e.detail()
                ),
            )]
        };
        let d = match self.client().await {
            Ok(d) => d,
            Err(e) => return engine(&e),
        };
        let running = match d
            .list_containers(Some(ListContainersOptions::default()))
            .await
        {
            Ok(r) => r,
            Err(e) => return engine(&self.unreachable(e)),
        };
        let mut problems = Vec::new();
        for c in specs {
            match self.container_readiness(d, service, c, &running).await {
                Ok(p) => problems.extend(p),
                Err(e) => return engine(&e),
            }
        }
        problems
    }

    /// One container's problems. Errors: the engine stopped answering.
    async fn container_readiness(
        &self,
        d: &Docker,
        service: &str,
        c: &ContainerSpec,
        running: &[ContainerSummary],
    ) -> Result<Vec<Problem>, crate::backend::BackendError> {
        let mut problems = Vec::new();
        let target = format!("container {}", c.name);
        match d.inspect_image(&c.image).await {
            Ok(_) => {}
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => problems.push(Problem::new(
                "docker_image",
                &target,
                format!(
                    "image {} is not on this engine: a failover would have to pull it first (slow, and impossible without its registry); pull or build it on the cloud host",
                    c.image
                ),
            )),
            Err(e) => return Err(self.classify(&format!("inspect image {}", c.image), e)),
        }
        if let Some(found) = self.find(d, service, c).await? {
            if let Some(m) = found.mismatch.filter(|m| !m.may_recreate(c)) {
                problems.push(Problem::new(
                    "docker_container",
                    &target,
                    format!(
                        "{}: a failover would refuse to use or replace it; remove it (docker rm -f {}) or set recreate: always",
                        m.reason, c.name
                    ),
                ));
            }
        }
        for p in &c.ports {
            if let Some(holder) = port_holder(p, &c.name, running) {
                let port = p.host_port.unwrap_or_default();
                problems.push(Problem::new(
                    "docker_port",
                    &target,
                    format!(
                        "host port {port}/{} is held by container {holder}: {} could not start; stop {holder} or change {}'s ports",
                        p.proto, c.name, c.name
                    ),
                ));
            }
        }
        Ok(problems)
    }
}

/// The running container other than `own` that publishes `p`'s host port (same protocol, an
/// overlapping address), by name.
fn port_holder(p: &PortSpec, own: &str, running: &[ContainerSummary]) -> Option<String> {
    let port = p.host_port?;
    let unspecified = |ip: &str| matches!(ip, "" | "0.0.0.0" | "::");
    let overlaps = |ip: Option<&str>| match (p.host_ip.as_deref(), ip) {
        (Some(a), Some(b)) => a == b || unspecified(a) || unspecified(b),
        _ => true,
    };
    running.iter().find_map(|c| {
        let name = c
            .names
            .as_ref()?
            .first()?
            .trim_start_matches('/')
            .to_string();
        let holds = c.ports.as_ref()?.iter().any(|q| {
            let proto = q.typ.map_or("tcp", |t| match t {
                PortTypeEnum::UDP => "udp",
                PortTypeEnum::SCTP => "sctp",
                _ => "tcp",
            });
            q.public_port == Some(port) && proto == p.proto && overlaps(q.ip.as_deref())
        });
        (holds && name != own).then_some(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::Port;

    fn running(name: &str, ip: &str, port: u16, typ: PortTypeEnum) -> ContainerSummary {
        ContainerSummary {
            names: Some(vec![format!("/{name}")]),
            ports: Some(vec![Port {
                ip: Some(ip.into()),
                private_port: 80,
                public_port: Some(port),
                typ: Some(typ),
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn a_port_is_held_by_another_container_on_the_same_port_protocol_and_address() {
        let spec = |s: &str| super::super::parse_port(s).unwrap();
        let others = [
            running("web", "0.0.0.0", 8080, PortTypeEnum::TCP),
            running("dns", "127.0.0.1", 5353, PortTypeEnum::UDP),
            running("api", "0.0.0.0", 9000, PortTypeEnum::TCP),
        ];
        let holder = |p: &str| port_holder(&spec(p), "api", &others);
        assert_eq!(holder("8080:80").as_deref(), Some("web"));
        assert_eq!(holder("127.0.0.1:8080:80").as_deref(), Some("web"));
        assert_eq!(holder("8080:80/udp"), None, "another protocol");
        assert_eq!(holder("5353:53/udp").as_deref(), Some("dns"));
        assert_eq!(holder("127.0.0.2:5353:53/udp"), None, "another address");
        assert_eq!(holder("9000:80"), None, "its own port");
        assert_eq!(holder("80"), None, "no host port");
    }
}
