//! Burst unit templates: unit `i`'s slot name, container and address, with `{index}`, `{port}`
//! (`port_base + i - 1`) and `{private_ip}` filled in. Pure; a leaf, so the config checks them
//! at load and the reconciler renders them the same way.

use crate::backend::docker::config::ContainerConfig;
use crate::plan::Endpoint;

/// Slot `i` of a `server-template <prefix> 1-<max>`: `<prefix><i>`.
pub fn slot_name(prefix: &str, index: u32) -> String {
    format!("{prefix}{index}")
}

fn fill(text: &str, index: u32, port: u32) -> String {
    text.replace("{index}", &index.to_string())
        .replace("{port}", &port.to_string())
}

/// Unit `index`'s container: `<name>-<index>`, with `{port}` and `{index}` filled in.
pub fn render_container(c: &ContainerConfig, index: u32, port_base: u16) -> ContainerConfig {
    let port = u32::from(port_base) + index.saturating_sub(1);
    ContainerConfig {
        name: format!("{}-{index}", c.name),
        image: c.image.clone(),
        ports: c.ports.iter().map(|p| fill(p, index, port)).collect(),
        env: c.env.iter().map(|e| fill(e, index, port)).collect(),
        command: c
            .command
            .as_ref()
            .map(|v| v.iter().map(|a| fill(a, index, port)).collect()),
        health_url: c.health_url.as_ref().map(|u| fill(u, index, port)),
        recreate: c.recreate,
    }
}

/// Unit `index`'s address for HAProxy. `private_ip` is the instance's, for EC2 units. Errors
/// (naming the text): an address that needs the IP before it is known, no `:port`, a port
/// that is not 1-65535, a host with characters no IP or DNS name has.
pub fn render_address(
    template: &str,
    index: u32,
    port_base: u16,
    private_ip: Option<&str>,
) -> Result<Endpoint, String> {
    let port = u32::from(port_base) + index.saturating_sub(1);
    let mut text = fill(template, index, port);
    if text.contains("{private_ip}") {
        let ip = private_ip.ok_or("the instance has no private IP yet")?;
        text = text.replace("{private_ip}", ip);
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{text:?}: {port:?} is not a port"))?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !host_ok {
        return Err(format!("{text:?}: {host:?} is not a host"));
    }
    Ok(Endpoint {
        host: host.trim_matches(['[', ']']).to_string(),
        port,
    })
}
