//! `ec2:` in a service's config: the instances by id or tag, and their checks. Pure, and
//! compiled without the `ec2` feature too, so such a build can say why it refuses the section.

use std::time::Duration;

use serde::Deserialize;

/// `ec2:` in a service's config.
#[derive(Debug, Clone, Deserialize)]
pub struct Ec2Config {
    /// AWS region; the standard chain's region when absent.
    pub region: Option<String>,
    /// Another endpoint than AWS's (VPC endpoint, a local test server).
    pub endpoint_url: Option<String>,
    /// The instances, by id ...
    #[serde(default)]
    pub instance_ids: Vec<String>,
    /// ... or every instance carrying this tag.
    pub tag: Option<TagFilter>,
    /// How long an instance may take to reach `running`.
    #[serde(default = "default_running_timeout", with = "humantime_serde")]
    pub running_timeout: Duration,
}

fn default_running_timeout() -> Duration {
    Duration::from_secs(300)
}

/// A tag key and value.
#[derive(Debug, Clone, Deserialize)]
pub struct TagFilter {
    pub key: String,
    pub value: String,
}

impl Ec2Config {
    /// Semantic checks, one message per problem, with the key path.
    pub fn validate(&self, p: &str, errors: &mut Vec<String>) {
        if !cfg!(feature = "ec2") {
            errors.push(format!(
                "{p}: this build has no EC2 support (cargo feature ec2)"
            ));
        }
        match (self.instance_ids.is_empty(), &self.tag) {
            (true, None) => errors.push(format!("{p}: set instance_ids or tag")),
            (false, Some(_)) => errors.push(format!("{p}: set instance_ids or tag, not both")),
            _ => {}
        }
        for (i, id) in self.instance_ids.iter().enumerate() {
            let ok = id
                .strip_prefix("i-")
                .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()));
            if !ok {
                errors.push(format!(
                    "{p}.instance_ids[{i}]: {id:?} is not an instance id (i-...)"
                ));
            }
        }
        if let Some(t) = &self.tag {
            if t.key.is_empty() {
                errors.push(format!("{p}.tag.key: must not be empty"));
            }
        }
        if self.running_timeout.is_zero() {
            errors.push(format!("{p}.running_timeout: must be greater than 0"));
        }
    }
}
