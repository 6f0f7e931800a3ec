//! `docker:` in a service's config: the engine and its containers, and their checks (key paths
//! as the config names them). Pure: read at load, never at alert time.

use serde::Deserialize;

use super::parse_port;

/// The Docker engine and containers of a service.
#[derive(Debug, Clone, Deserialize)]
pub struct DockerConfig {
    /// `unix:///var/run/docker.sock`, `tcp://host:2375` or `http://host:2375`.
    #[serde(default = "default_docker_host")]
    pub host: String,
    pub containers: Vec<ContainerConfig>,
}

/// One container, created from this spec when absent. Only the config names containers:
/// alert labels never choose what runs.
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerConfig {
    pub name: String,
    pub image: String,
    /// Docker-style port publications: `[ip:]host_port:container_port[/tcp|/udp]`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// `KEY=VALUE` environment entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Overrides the image's command.
    pub command: Option<Vec<String>>,
    /// Polled until it answers 2xx when the image has no Docker HEALTHCHECK.
    pub health_url: Option<String>,
    /// What to do with a container of this name the responder did not create (no
    /// `io.failover-responder.service` label for this service): `never` (default) refuses to use
    /// it, `always` removes it and creates this spec. A container the responder created from an
    /// older spec (image, command, env or ports changed since) is recreated either way.
    #[serde(default)]
    pub recreate: Recreate,
}

/// `recreate:` on a container: whether the responder may remove a container of the configured
/// name that it did not create, to create the configured one in its place.
///
/// The default is `never`: such a container is someone else's (a hand-made test, another
/// deployment, an older install), and removing it can destroy their work and data, so the
/// responder refuses loudly, names the container and the fix, and never opens a server in
/// front of it. `always` is for hosts where that name belongs to the responder alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recreate {
    #[default]
    Never,
    Always,
}

fn default_docker_host() -> String {
    "unix:///var/run/docker.sock".into()
}

/// Checks `docker:` (key path `p`), one message per problem.
pub fn validate(d: &DockerConfig, p: &str, errors: &mut Vec<String>) {
    if !(d.host.starts_with("unix://")
        || d.host.starts_with("tcp://")
        || d.host.starts_with("http://"))
    {
        errors.push(format!(
            "{p}.host: {:?} is not unix://PATH, tcp://HOST:PORT or http://HOST:PORT",
            d.host
        ));
    }
    if d.containers.is_empty() {
        errors.push(format!("{p}.containers: at least one container is needed"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in d.containers.iter().enumerate() {
        let cp = format!("{p}.containers[{i}]");
        if !seen.insert(c.name.clone()) {
            errors.push(format!("{cp}.name: duplicate container {:?}", c.name));
        }
        validate_container(c, &cp, errors);
    }
}

/// One container spec: name, image, ports, env, health URL.
pub fn validate_container(c: &ContainerConfig, cp: &str, errors: &mut Vec<String>) {
    let valid_name = !c.name.is_empty()
        && c.name
            .chars()
            .next()
            .is_some_and(|ch| ch.is_ascii_alphanumeric())
        && c.name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'));
    if !valid_name {
        errors.push(format!(
            "{cp}.name: {:?} is not a valid container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)",
            c.name
        ));
    }
    if c.image.trim().is_empty() {
        errors.push(format!("{cp}.image: must not be empty"));
    }
    for (j, port) in c.ports.iter().enumerate() {
        if let Err(e) = parse_port(port) {
            errors.push(format!("{cp}.ports[{j}]: {e}"));
        }
    }
    for (j, e) in c.env.iter().enumerate() {
        if !e.contains('=') || e.starts_with('=') {
            errors.push(format!("{cp}.env[{j}]: want KEY=VALUE"));
        }
    }
    if let Some(url) = &c.health_url {
        crate::backend::validate_http_url(url, &format!("{cp}.health_url"), errors);
    }
}
