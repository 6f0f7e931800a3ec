//! Two or more responders, one actor: leadership on an etcd lease.
//!
//! Every responder of a cluster takes every webhook, keeps its firing set and runs the same
//! pass; only the one holding the leader key executes steps. The key is etcd's election on a
//! lease of `lease_ttl` ([`etcd`]), renewed every third of it.
//!
//! **Fencing.** A leader acts only while it is certain that its lease still holds: until
//! [`acting_deadline`], counted from when its last successful renewal was *sent* (etcd counts
//! the TTL from when it received it, which is later) minus a safety margin. The reconciler asks
//! [`Cluster::may_act`] before every step, and races each step against [`Cluster::lost`], so a
//! step in flight when the deadline passes is abandoned at its next await point. A call already
//! sent (a Docker start, an HAProxy command) still completes on the far side: every step is
//! idempotent and the next leader observes the world before it acts, so such a call is seen,
//! not repeated blindly. A leader that cannot renew (etcd unreachable, no quorum) thus stops
//! acting before its lease can expire and another node can win, and says so in status,
//! metrics and the log; it then campaigns again as a follower. With etcd down nobody acts:
//! never two actors. A leader also checks on every renewal that the election's key is still
//! its own.

pub mod config;
mod etcd;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

pub use config::{ClusterConfig, EtcdConfig, EtcdTls};

/// This node's part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// No `cluster:` in the config: acts alone.
    Standalone,
    /// Holds the leader key: executes steps while its lease is certain to hold.
    Leader,
    /// Observes and plans, executes nothing; campaigns to take over.
    Follower,
}

/// The cluster as `GET /api/v1/status` shows it (`cluster`). Standalone: the role alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub role: Role,
    /// The leading node's name, as etcd last said (None: unknown or no leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// When this node last became leader (None while it is not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_since: Option<DateTime<Utc>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub lease_ttl: Option<Duration>,
    /// Whether etcd answered this node's last call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_up: Option<bool>,
    /// Why this node does not act, when it does not: another node leads, etcd cannot be
    /// reached, the lease could not be renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ClusterStatus {
    /// A responder without `cluster:`.
    pub fn standalone() -> ClusterStatus {
        ClusterStatus {
            name: None,
            role: Role::Standalone,
            leader: None,
            leader_since: None,
            lease_ttl: None,
            etcd_up: None,
            reason: None,
        }
    }
}

/// A service's state as the cluster shares it in etcd: the leader's last `state` (JSON of the
/// store's service state) and the operators' `override` (JSON), each None until written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shared {
    pub state: Option<Vec<u8>>,
    pub override_: Option<Vec<u8>>,
}

/// The cluster's series: `failover_responder_cluster_leader` (1 while this node may act),
/// `..._cluster_leader_changes_total` (times this node gained or lost leadership) and
/// `..._cluster_etcd_up` (1 when etcd answered the last call). Registered only with `cluster:`,
/// so a standalone responder exports none (and pages for none).
#[derive(Clone, Default)]
pub struct ClusterMetrics {
    pub leader: Gauge,
    pub leader_changes: Counter,
    pub etcd_up: Gauge,
}

/// The safety margin a leader keeps before its lease could expire: a quarter of the TTL (at
/// least 500 ms, since the TTL is at least 2 s). It covers a clock running slower here than on
/// the etcd members and the await a step in flight needs to notice.
pub fn margin(ttl: Duration) -> Duration {
    ttl / 4
}

/// Until when a leader whose last successful renewal was sent at `renewed` may act.
pub fn acting_deadline(renewed: Instant, ttl: Duration) -> Instant {
    renewed + ttl.saturating_sub(margin(ttl))
}

/// One node's membership: its view of the leadership, shared by the campaign task that keeps
/// it and the reconcilers and handlers that read it. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    config: Arc<ClusterConfig>,
    view: Arc<Mutex<View>>,
    metrics: ClusterMetrics,
    /// Notified when this node becomes leader, so the reconcilers look at once.
    gained: Arc<tokio::sync::Notify>,
    /// Notified when this node stops leading before its deadline (the key is another's, the
    /// session ended), so a step in flight is abandoned at once, not at the old deadline.
    ended: Arc<tokio::sync::Notify>,
}

/// What this node knows now.
#[derive(Clone)]
struct View {
    role: Role,
    leader: Option<String>,
    leader_since: Option<DateTime<Utc>>,
    /// While leader: until when it may act ([`acting_deadline`]).
    deadline: Option<Instant>,
    etcd_up: bool,
    reason: Option<String>,
    /// The current session's client (None between sessions), for the shared state.
    client: Option<etcd_client::Client>,
    /// While leader: the election key whose creation revision guards every shared write.
    key: Option<etcd_client::LeaderKey>,
    /// The lease of the session that ended, revoked by the next one (best effort) so its
    /// election key does not hold leadership for a whole TTL after an error.
    stale_lease: Option<i64>,
}

impl Cluster {
    /// A follower that has not reached etcd yet; [`Cluster::run`] campaigns.
    pub fn new(config: ClusterConfig, metrics: ClusterMetrics) -> Cluster {
        Cluster {
            config: Arc::new(config),
            view: Arc::new(Mutex::new(View {
                role: Role::Follower,
                leader: None,
                leader_since: None,
                deadline: None,
                etcd_up: false,
                reason: Some("not connected to etcd yet".into()),
                client: None,
                key: None,
                stale_lease: None,
            })),
            metrics,
            gained: Arc::default(),
            ended: Arc::default(),
        }
    }

    /// This node's name (`cluster.name`).
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether this node may execute a step now: it leads, and its lease is certain to hold
    /// (the fencing check; cheap, no I/O).
    pub fn may_act(&self) -> bool {
        let v = self.lock();
        v.role == Role::Leader && v.deadline.is_some_and(|d| Instant::now() < d)
    }

    /// Resolves once this node may no longer act (at once when it may not now): at its
    /// deadline, or as soon as it stops leading. A step raced against it is abandoned at its
    /// next await point.
    pub async fn lost(&self) {
        loop {
            // Registered before the check, so a `follow` in between is not missed.
            let ended = self.ended.notified();
            let deadline = {
                let v = self.lock();
                match (v.role, v.deadline) {
                    (Role::Leader, Some(d)) => d,
                    _ => return,
                }
            };
            if Instant::now() >= deadline {
                return;
            }
            // The deadline may have moved on (a renewal) by the time this wakes: look again.
            tokio::select! {
                () = tokio::time::sleep_until(deadline.into()) => {}
                () = ended => {}
            }
        }
    }

    /// Resolves when this node next becomes leader.
    pub async fn gained(&self) {
        self.gained.notified().await;
    }

    /// Why this node may not act now (None when it may).
    pub fn why_not(&self) -> Option<String> {
        if self.may_act() {
            return None;
        }
        let v = self.lock();
        Some(match (&v.reason, &v.leader) {
            (Some(r), _) => r.clone(),
            (None, Some(l)) if v.role != Role::Leader => format!("follower: {l} leads"),
            (None, _) => "the leader lease is not certain to hold".into(),
        })
    }

    pub fn status(&self) -> ClusterStatus {
        let v = self.lock();
        let leading = v.role == Role::Leader && v.deadline.is_some_and(|d| Instant::now() < d);
        ClusterStatus {
            name: Some(self.config.name.clone()),
            // A leader past its deadline no longer acts: it shows as a follower until the
            // campaign task has given the lease up.
            role: if leading {
                Role::Leader
            } else {
                Role::Follower
            },
            leader: v.leader.clone(),
            leader_since: v.leader_since,
            lease_ttl: Some(self.config.lease_ttl),
            etcd_up: Some(v.etcd_up),
            reason: if leading { None } else { v.reason.clone() },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that etcd answered (or not), with the reason when not.
    fn set_etcd(&self, up: bool, reason: Option<String>) {
        self.metrics.etcd_up.set(i64::from(up));
        let mut v = self.lock();
        v.etcd_up = up;
        if !up {
            v.reason = reason;
        } else if v.role == Role::Leader {
            v.reason = None;
        }
    }

    /// Became leader with `key`: may act until `deadline`.
    fn lead(&self, deadline: Instant, key: etcd_client::LeaderKey) {
        let mut v = self.lock();
        v.key = Some(key);
        if v.role != Role::Leader {
            self.metrics.leader_changes.inc();
            v.leader_since = Some(Utc::now());
            self.gained.notify_one();
        }
        v.role = Role::Leader;
        v.leader = Some(self.config.name.clone());
        v.deadline = Some(deadline);
        v.etcd_up = true;
        v.reason = None;
        self.metrics.leader.set(1);
    }

    /// A renewal succeeded: the deadline moves on.
    fn renewed(&self, deadline: Instant) {
        let mut v = self.lock();
        if v.role == Role::Leader {
            v.deadline = Some(deadline);
        }
    }

    /// Not (or no longer) leader, for `reason`; `leader` is who leads, when known.
    fn follow(&self, leader: Option<String>, reason: String) {
        let mut v = self.lock();
        if v.role == Role::Leader {
            self.metrics.leader_changes.inc();
            v.leader_since = None;
            self.ended.notify_waiters();
        }
        v.role = Role::Follower;
        v.leader = leader;
        v.deadline = None;
        v.key = None;
        v.reason = Some(reason);
        self.metrics.leader.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        let cfg: ClusterConfig = serde_json::from_value(serde_json::json!({
            "name": "site-a",
            "lease_ttl": "4s",
            "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
        }))
        .unwrap();
        Cluster::new(cfg, ClusterMetrics::default())
    }

    #[test]
    fn the_deadline_keeps_a_margin_before_the_lease_can_expire() {
        let t = Instant::now();
        for secs in [2, 4, 10, 60] {
            let ttl = Duration::from_secs(secs);
            let d = acting_deadline(t, ttl);
            assert!(d < t + ttl, "{secs}s: acts until the lease could expire");
            assert!(d - t >= ttl / 2, "{secs}s: most of the lease is usable");
            assert!(t + ttl - d >= Duration::from_millis(500), "{secs}s: margin");
        }
    }

    #[test]
    fn acts_only_as_leader_before_the_deadline() {
        let c = cluster();
        assert!(!c.may_act(), "a new node is a follower");
        assert!(c.why_not().unwrap().contains("etcd"));
        c.lead(
            Instant::now() + Duration::from_secs(60),
            etcd_client::LeaderKey::new(),
        );
        assert!(c.may_act());
        assert_eq!(c.status().role, Role::Leader);
        assert_eq!(c.metrics.leader.get(), 1);
        // The deadline passes without a renewal: fenced, though the task has not noticed yet.
        c.renewed(Instant::now() - Duration::from_millis(1));
        assert!(!c.may_act());
        assert_eq!(c.status().role, Role::Follower);
        c.follow(Some("site-b".into()), "lease lost".into());
        assert_eq!(c.why_not().as_deref(), Some("lease lost"));
        assert_eq!(c.metrics.leader_changes.get(), 2, "gained, then lost");
        assert_eq!(c.metrics.leader.get(), 0);
        // A renewal that arrives after losing leadership does not make it act again.
        c.renewed(Instant::now() + Duration::from_secs(60));
        assert!(!c.may_act());
    }

    #[test]
    fn config_checks_name_every_problem() {
        let cfg: ClusterConfig = serde_json::from_value(serde_json::json!({
            "name": "bad name",
            "lease_ttl": "1500ms",
            "prefix": "x",
            "etcd": {"endpoints": ["https://e:2379", "nope"], "username": "u"},
        }))
        .unwrap();
        let mut errors = Vec::new();
        cfg.validate(&mut errors);
        for want in [
            "cluster.name",
            "cluster.lease_ttl",
            "cluster.prefix",
            "endpoints[0]",
            "endpoints[1]",
            "password_file",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "{want} not in {errors:?}"
            );
        }
    }

    #[test]
    fn tls_to_etcd_needs_https_a_readable_ca_and_a_key_with_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["etcd".into()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let not_pem = dir.path().join("junk.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let cfg = |endpoint: &str, tls: serde_json::Value| -> ClusterConfig {
            serde_json::from_value(serde_json::json!({
                "name": "a", "lease_ttl": "10s",
                "etcd": {"endpoints": [endpoint], "tls": tls},
            }))
            .unwrap()
        };
        let problems = |c: &ClusterConfig| {
            let mut errors = Vec::new();
            c.validate(&mut errors);
            errors.extend(c.check_files());
            errors
        };
        let good = cfg("https://127.0.0.1:2379", serde_json::json!({"ca_file": ca}));
        assert_eq!(problems(&good), Vec::<String>::new());
        let http = cfg("http://127.0.0.1:2379", serde_json::json!({"ca_file": ca}));
        assert!(problems(&http)[0].contains("is http:// while cluster.etcd.tls is set"));
        let half = cfg(
            "https://127.0.0.1:2379",
            serde_json::json!({"ca_file": ca, "cert_file": ca}),
        );
        assert_eq!(
            problems(&half),
            ["cluster.etcd.tls.key_file: missing: cert_file needs its private key"]
        );
        // A private key that is not the certificate's: refused at load, not at the handshake.
        let other_key = dir.path().join("other-key.pem");
        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
        std::fs::write(&other_key, other.key_pair.serialize_pem()).unwrap();
        let mismatched = cfg(
            "https://127.0.0.1:2379",
            serde_json::json!({"ca_file": ca, "cert_file": ca, "key_file": other_key}),
        );
        let p = problems(&mismatched);
        assert!(p.len() == 1 && p[0].contains("does not fit"), "{p:?}");
        let own_key = dir.path().join("own-key.pem");
        std::fs::write(&own_key, cert.key_pair.serialize_pem()).unwrap();
        let matched = cfg(
            "https://127.0.0.1:2379",
            serde_json::json!({"ca_file": ca, "cert_file": ca, "key_file": own_key}),
        );
        assert_eq!(problems(&matched), Vec::<String>::new());
        let junk = cfg(
            "https://127.0.0.1:2379",
            serde_json::json!({"ca_file": not_pem}),
        );
        let p = problems(&junk);
        assert!(
            p.len() == 1
                && p[0].starts_with("cluster.etcd.tls.ca_file ")
                && p[0].contains("junk.pem"),
            "{p:?}"
        );
        let missing = cfg(
            "https://127.0.0.1:2379",
            serde_json::json!({"ca_file": dir.path().join("nope.pem")}),
        );
        assert!(problems(&missing)[0].contains("nope.pem"));
        // The key file's content never shows in a message, only its path.
        let bad_key = dir.path().join("key.pem");
        std::fs::write(&bad_key, "SECRET-NOT-A-KEY").unwrap();
        let with_key = cfg(
            "https://127.0.0.1:2379",
            serde_json::json!({"ca_file": ca, "cert_file": ca, "key_file": bad_key}),
        );
        let p = problems(&with_key);
        assert!(
            p.len() == 1 && p[0].contains("no PEM private key") && !p[0].contains("SECRET"),
            "{p:?}"
        );
    }
}
