//! EC2 backend: its config (always compiled) and its client (aws-sdk-ec2, cargo feature `ec2`,
//! the heaviest dependency, so it can be left out while iterating). Without the feature the
//! same `Ec2Backend` exists and refuses every call, so no other module needs a `cfg` (config
//! validation already refuses an `ec2:` section in such a build, saying why).

pub mod config;
mod readiness;
pub use readiness::readiness;

use crate::backend::BackendError;
use crate::plan::{InstanceObs, InstanceState};
use config::Ec2Config;

/// The instances of one pool (failover or burst), sorted by id. An id the config names and EC2
/// did not return is unknown, not absent. Errors: EC2 could not be asked (see
/// [`unknown_pool`]).
pub async fn observe_pool(
    ec2: &Ec2Backend,
    cfg: &Ec2Config,
) -> Result<Vec<InstanceObs>, BackendError> {
    let mut found = ec2.observe().await?;
    for id in &cfg.instance_ids {
        if !found.iter().any(|i| &i.id == id) {
            found.push(InstanceObs {
                id: id.clone(),
                state: InstanceState::Unknown {
                    reason: "not returned by DescribeInstances".into(),
                },
                private_ip: None,
            });
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// A pool EC2 could not be asked about: every configured instance unknown, or (selected by
/// tag) one entry naming the tag.
pub fn unknown_pool(cfg: &Ec2Config, e: &BackendError) -> Vec<InstanceObs> {
    let ids = if cfg.instance_ids.is_empty() {
        vec![cfg
            .tag
            .as_ref()
            .map_or("ec2".into(), |t| format!("tag:{}={}", t.key, t.value))]
    } else {
        cfg.instance_ids.clone()
    };
    ids.into_iter()
        .map(|id| InstanceObs {
            id,
            state: InstanceState::Unknown {
                reason: e.to_string(),
            },
            private_ip: None,
        })
        .collect()
}

#[cfg(feature = "ec2")]
mod client;
#[cfg(feature = "ec2")]
pub use client::*;

#[cfg(not(feature = "ec2"))]
mod disabled {
    use super::config::Ec2Config;
    use crate::backend::BackendError;
    use crate::plan::InstanceObs;

    /// Stands in for the client in a build without the `ec2` feature.
    #[derive(Clone)]
    pub struct Ec2Backend;

    fn refused() -> BackendError {
        BackendError::Rejected {
            target: "ec2".into(),
            message: "this build has no EC2 support (cargo feature ec2)".into(),
            retryable: false,
        }
    }

    impl Ec2Backend {
        pub fn new(_cfg: Ec2Config) -> Self {
            Ec2Backend
        }
        pub async fn observe(&self) -> Result<Vec<InstanceObs>, BackendError> {
            Err(refused())
        }
        pub async fn start(&self, _ids: &[String]) -> Result<(), BackendError> {
            Err(refused())
        }
        pub async fn wait_running(&self, _ids: &[String]) -> Result<(), BackendError> {
            Err(refused())
        }
        pub async fn stop(&self, _ids: &[String]) -> Result<(), BackendError> {
            Err(refused())
        }
        pub async fn dry_run(&self, _ids: &[String]) -> [(&'static str, Option<String>); 2] {
            let why = Some(refused().to_string());
            [("StartInstances", why.clone()), ("StopInstances", why)]
        }
    }
}
#[cfg(not(feature = "ec2"))]
pub use disabled::Ec2Backend;
