//! Readiness of an EC2 pool, checked without changing anything: every instance exists and can
//! be started, and the credentials may start and stop them (`DryRun`, which EC2 answers with
//! `DryRunOperation` when the call would have succeeded, `UnauthorizedOperation` when not).

use super::config::Ec2Config;
#[cfg(doc)]
use super::observe_pool;
use super::Ec2Backend;
use crate::backend::{BackendError, Problem};
use crate::plan::{InstanceObs, InstanceState};

/// What would keep `ec2` (configured by `cfg`) from starting its instances now, given its
/// `pool` as [`observe_pool`] found it; empty when nothing would.
pub async fn readiness(
    ec2: &Ec2Backend,
    cfg: &Ec2Config,
    pool: Result<Vec<InstanceObs>, BackendError>,
) -> Vec<Problem> {
    let pool = match pool {
        Ok(p) => p,
        Err(e) => {
            // An unknown id fails the whole DescribeInstances; EC2's message names it.
            let check = if e.to_string().contains("InvalidInstanceID") {
                "ec2_instance"
            } else {
                "ec2_api"
            };
            return vec![Problem::new(
                check,
                "ec2",
                format!("{e}: fix ec2.instance_ids, the region, or the credentials"),
            )];
        }
    };
    let mut problems = Vec::new();
    if pool.is_empty() {
        let tag = cfg
            .tag
            .as_ref()
            .map_or(String::new(), |t| format!("{}={}", t.key, t.value));
        problems.push(Problem::new(
            "ec2_instance",
            format!("tag:{tag}"),
            format!("no instance carries tag {tag}: a failover would have nothing to start; tag the standby instances"),
        ));
    }
    for i in &pool {
        let why = match &i.state {
            InstanceState::Gone => "is terminated (or shutting down): it can never start again; replace its id in the config".to_string(),
            InstanceState::Unknown { reason } => format!("{reason}: check the id and the region"),
            _ => continue,
        };
        problems.push(Problem::new("ec2_instance", &i.id, why));
    }
    let startable: Vec<String> = pool
        .iter()
        .filter(|i| !matches!(i.state, InstanceState::Gone | InstanceState::Unknown { .. }))
        .map(|i| i.id.clone())
        .collect();
    if startable.is_empty() {
        return problems;
    }
    for (action, denied) in ec2.dry_run(&startable).await {
        if let Some(why) = denied {
            problems.push(Problem::new(
                "ec2_permission",
                startable.join(","),
                format!("ec2:{action} with DryRun: {why}: give the responder's credentials (the instance profile) ec2:{action} on these instances"),
            ));
        }
    }
    problems
}
