//! EC2 backend (aws-sdk-ec2): observe, start and stop the instances that carry a service's cloud
//! capacity, so a cold standby costs nothing until it is needed.
//!
//! Instances are chosen by id or by a tag filter, only from the config. Credentials and region
//! come from the standard AWS chain (the instance profile on EC2); `endpoint_url` points the
//! client elsewhere (a VPC endpoint, or moto in the tests). The SDK retries throttling and
//! transient errors itself (standard retry mode); what still fails is classified here.

use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, InstanceStateName};
use aws_sdk_ec2::Client;
use tokio::sync::OnceCell;

use super::config::Ec2Config;
use crate::backend::BackendError;
use crate::plan::{InstanceObs, InstanceState};

/// One service's EC2 client. Cheap to clone; the SDK client is made on first use.
#[derive(Clone)]
pub struct Ec2Backend {
    cfg: Ec2Config,
    client: std::sync::Arc<OnceCell<Client>>,
}

impl Ec2Backend {
    pub fn new(cfg: Ec2Config) -> Self {
        Ec2Backend {
            cfg,
            client: std::sync::Arc::new(OnceCell::new()),
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
                if let Some(r) = &self.cfg.region {
                    loader = loader.region(aws_config::Region::new(r.clone()));
                }
                if let Some(u) = &self.cfg.endpoint_url {
                    loader = loader.endpoint_url(u.clone());
                }
                Client::new(&loader.load().await)
            })
            .await
    }

    fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        what: &str,
        e: SdkError<E>,
    ) -> BackendError {
        let target = "ec2".to_string();
        match &e {
            SdkError::ServiceError(se) => {
                let code = se.err().code().unwrap_or("unknown").to_string();
                let msg = se.err().message().unwrap_or("").to_string();
                // Throttling survived the SDK's own retries: back off and retry. Unknown or
                // malformed ids and permission errors need a human.
                let retryable = matches!(
                    code.as_str(),
                    "RequestLimitExceeded"
                        | "Throttling"
                        | "ThrottlingException"
                        | "IncorrectInstanceState"
                        | "InternalError"
                        | "ServiceUnavailable"
                        | "Unavailable"
                );
                BackendError::Rejected {
                    target,
                    message: format!("{what}: {code}: {msg}"),
                    retryable,
                }
            }
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => BackendError::Unreachable {
                target,
                message: format!("{what}: {}", aws_sdk_ec2::error::DisplayErrorContext(&e)),
            },
            _ => BackendError::Rejected {
                target,
                message: format!("{what}: {}", aws_sdk_ec2::error::DisplayErrorContext(&e)),
                retryable: true,
            },
        }
    }

    /// The configured instances and their states. By id: every id appears (an id EC2 does not
    /// know is an error, not silence). By tag: whatever carries the tag now.
    pub async fn observe(&self) -> Result<Vec<InstanceObs>, BackendError> {
        let c = self.client().await;
        let mut req = c.describe_instances();
        if self.cfg.instance_ids.is_empty() {
            if let Some(t) = &self.cfg.tag {
                req = req.filters(
                    Filter::builder()
                        .name(format!("tag:{}", t.key))
                        .values(t.value.clone())
                        .build(),
                );
            }
        } else {
            req = req.set_instance_ids(Some(self.cfg.instance_ids.clone()));
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.classify("describe instances", e))?;
        let mut found: Vec<InstanceObs> = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| {
                let id = i.instance_id()?.to_string();
                let state = match i.state().and_then(|s| s.name()) {
                    Some(InstanceStateName::Pending) => InstanceState::Pending,
                    Some(InstanceStateName::Running) => InstanceState::Running,
                    Some(InstanceStateName::Stopping) => InstanceState::Stopping,
                    Some(InstanceStateName::Stopped) => InstanceState::Stopped,
                    Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated) => {
                        InstanceState::Gone
                    }
                    other => InstanceState::Unknown {
                        reason: format!("unexpected state {other:?}"),
                    },
                };
                Some(InstanceObs {
                    id,
                    state,
                    private_ip: i.private_ip_address().map(String::from),
                })
            })
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    /// Starts the instances (starting a running one is a no-op for EC2).
    pub async fn start(&self, ids: &[String]) -> Result<(), BackendError> {
        self.client()
            .await
            .start_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.classify("start instances", e))
    }

    /// Waits until every instance is running, up to `running_timeout`.
    pub async fn wait_running(&self, ids: &[String]) -> Result<(), BackendError> {
        self.client()
            .await
            .wait_until_instance_running()
            .set_instance_ids(Some(ids.to_vec()))
            .wait(self.cfg.running_timeout)
            .await
            .map(|_| ())
            .map_err(|e| BackendError::Timeout {
                what: format!("ec2 instances {} running ({e})", ids.join(",")),
                after: self.cfg.running_timeout,
            })
    }

    /// Asks EC2, with `DryRun` (nothing starts or stops), whether these credentials may
    /// `StartInstances` and `StopInstances` on `ids`: per action, None when EC2 answers
    /// `DryRunOperation` (it would have succeeded), else its error code and message
    /// (`UnauthorizedOperation: ...`, or why EC2 could not be asked).
    pub async fn dry_run(&self, ids: &[String]) -> [(&'static str, Option<String>); 2] {
        let c = self.client().await;
        let verdict = |r: Result<(), BackendError>| match r {
            Ok(()) => Some("answered without DryRunOperation".to_string()),
            Err(BackendError::Rejected { message, .. }) if message.contains("DryRunOperation") => {
                None
            }
            Err(e) => Some(e.to_string()),
        };
        let start = c
            .start_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .dry_run(true)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.classify("StartInstances (dry run)", e));
        let stop = c
            .stop_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .dry_run(true)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.classify("StopInstances (dry run)", e));
        [
            ("StartInstances", verdict(start)),
            ("StopInstances", verdict(stop)),
        ]
    }

    /// Stops the instances.
    pub async fn stop(&self, ids: &[String]) -> Result<(), BackendError> {
        self.client()
            .await
            .stop_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.classify("stop instances", e))
    }
}
