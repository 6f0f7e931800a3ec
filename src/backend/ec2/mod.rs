//! EC2 backend: its config (always compiled) and its client (aws-sdk-ec2, cargo feature `ec2`,
//! the heaviest dependency, so it can be left out while iterating). Without the feature the
//! same `Ec2Backend` exists and refuses every call, so no other module needs a `cfg` (config
//! validation already refuses an `ec2:` section in such a build, saying why).

pub mod config;

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
    }
}
#[cfg(not(feature = "ec2"))]
pub use disabled::Ec2Backend;
