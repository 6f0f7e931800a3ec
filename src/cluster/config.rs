//! `cluster:` in the config: this responder's name, the leader lease and the etcd it lives in.
//! Absent: the responder is standalone and acts alone, as without any of this.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Two or more responders sharing one leader lease in etcd.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterConfig {
    /// Unique per responder (`site-a`); shown in status, events and logs, and stored as the
    /// leader key's value.
    pub name: String,
    /// How long leadership lasts without a renewal. The leader renews every third of it and
    /// stops acting a safety margin before it ends.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Key prefix of everything this cluster keeps in etcd.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    pub etcd: EtcdConfig,
}

/// How to reach etcd.
#[derive(Debug, Clone, Deserialize)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, `http://host:2379`.
    pub endpoints: Vec<String>,
    /// etcd user (with `password_file`), when etcd has authentication on.
    pub username: Option<String>,
    /// File holding that user's password (read when connecting; never logged).
    pub password_file: Option<PathBuf>,
    /// How long one etcd call may take before etcd counts as unreachable.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_prefix() -> String {
    "/failover-responder/".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

impl ClusterConfig {
    /// Checks `cluster:`, one message per problem, with its key path.
    pub fn validate(&self, errors: &mut Vec<String>) {
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            errors.push(format!(
                "cluster.name: {:?} is not a node name ([a-zA-Z0-9_.-]+)",
                self.name
            ));
        }
        // etcd grants leases in whole seconds; under 2 s the renewal cadence (a third) and the
        // safety margin leave nothing to act in.
        if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl.subsec_nanos() != 0 {
            errors.push("cluster.lease_ttl: must be whole seconds, at least 2s".into());
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') {
            errors.push(format!(
                "cluster.prefix: {:?} must start and end with /",
                self.prefix
            ));
        }
        if self.etcd.endpoints.is_empty() {
            errors.push("cluster.etcd.endpoints: at least one".into());
        }
        for (i, e) in self.etcd.endpoints.iter().enumerate() {
            match reqwest::Url::parse(e) {
                Ok(u) if u.scheme() == "http" && u.host().is_some() => {}
                Ok(u) if u.scheme() == "https" => errors.push(format!(
                    "cluster.etcd.endpoints[{i}]: {e:?}: TLS to etcd is not supported yet; use http:// on a private network"
                )),
                _ => errors.push(format!(
                    "cluster.etcd.endpoints[{i}]: {e:?} is not an http://host:port URL"
                )),
            }
        }
        if self.etcd.username.is_some() != self.etcd.password_file.is_some() {
            errors.push("cluster.etcd: set username and password_file together".into());
        }
        // A leader acts until 3/4 of the TTL after its last renewal; a call allowed longer than
        // a quarter of it leaves one slow answer able to fence a healthy leader.
        if self.etcd.timeout.is_zero() || self.etcd.timeout > self.lease_ttl / 4 {
            errors.push(format!(
                "cluster.etcd.timeout: must be greater than 0 and at most lease_ttl / 4 ({})",
                humantime::format_duration(self.lease_ttl / 4)
            ));
        }
    }
}
