//! Prometheus metrics, all prefixed `failover_responder_`. The alerts in `prometheus/` are
//! written against these names: renaming one breaks a user's paging.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub service: String,
    pub mode: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub service: String,
    pub action: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub service: String,
    pub action: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub service: String,
    pub backend: String,
    pub target: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub service: String,
    /// `up` or `down`.
    pub direction: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub service: String,
    /// `instance` or `container`.
    pub kind: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the responder exports.
pub struct Metrics {
    registry: Registry,
    /// Webhook requests by result (accepted, bad_request, unauthorized, ...).
    pub notifications: Family<ResultLabels, Counter>,
    /// Alerts firing now that match a service's `failover_on`.
    pub failover_alerts: Family<ServiceLabels, Gauge>,
    /// 1 for the desired mode of each service, 0 for the other.
    pub desired_mode: Family<ModeLabels, Gauge>,
    /// 1 when the observed world matches the desired mode.
    pub converged: Family<ServiceLabels, Gauge>,
    /// Steps run, by action and outcome (success, failure, superseded, drain_timeout).
    pub steps: Family<StepLabels, Counter>,
    pub step_seconds: HistogramFamily<ActionLabels>,
    /// 1 when the backend answered the last observation.
    pub backend_up: Family<TargetLabels, Gauge>,
    /// Failed reconcile passes in a row; 0 when the last pass succeeded.
    pub consecutive_failures: Family<ServiceLabels, Gauge>,
    /// Things only a human can fix that keep a service's plan from going on (a Runtime API
    /// below level admin, a maintenance `state ready` cannot lift): 0 when none.
    pub blocked: Family<ServiceLabels, Gauge>,
    /// Unix time of the last completed reconcile pass.
    pub last_reconcile: Family<ServiceLabels, Gauge>,
    /// Mode changes, by the mode entered.
    pub transitions: Family<ModeLabels, Counter>,
    /// 1 while `max_transitions_per_hour` keeps a service in cloud.
    pub transitions_capped: Family<ServiceLabels, Gauge>,
    /// 1 when the last resync from Alertmanager succeeded.
    pub alertmanager_up: Gauge,
    /// Resyncs from Alertmanager, by result.
    pub resyncs: Family<ResultLabels, Counter>,
    /// Notifications in the journal.
    pub journal_entries: Gauge,
    /// 1 when the last config reload succeeded (and at start), 0 after a failed one.
    pub config_last_reload_successful: Gauge,
    /// Unix time of the last successful config reload, or of the start.
    pub config_last_reload_success_timestamp: Gauge,
    /// Burst units that should be up and open.
    pub burst_desired: Family<ServiceLabels, Gauge>,
    /// Burst slots open on every HAProxy.
    pub burst_open: Family<ServiceLabels, Gauge>,
    /// Changes of the burst count, by direction.
    pub burst_scale: Family<DirectionLabels, Counter>,
    /// 1 while the cost guard holds bursting below what the overload asks for.
    pub burst_capped: Family<ServiceLabels, Gauge>,
    /// Cloud units running now, by kind.
    pub units_running: Family<KindLabels, Gauge>,
    /// What the running units cost per hour at the configured prices.
    pub cost_per_hour: Family<ServiceLabels, FloatGauge>,
    /// Instance-hours used today (UTC).
    /// EC2 instance time used today (UTC), in seconds (was `instance_hours_today`, in hours).
    pub instance_seconds_today: Family<ServiceLabels, FloatGauge>,
    /// Readiness checks, drills and verification.
    pub readiness: ReadinessMetrics,
    /// The fast path's failovers, and those no alert confirmed.
    pub fast_path: FastPathMetrics,
}

/// The fast path's series (see `fastpath`).
#[derive(Default)]
pub struct FastPathMetrics {
    /// Failovers the fast path made (HAProxy saw on-prem DOWN before any alert fired).
    pub triggers: Family<ServiceLabels, Counter>,
    /// Of those, failed back with no failover alert within `confirm_within`.
    pub unconfirmed: Family<ServiceLabels, Counter>,
    /// 1 while an episode is open past `confirm_within`: no alert, and HAProxy still does not
    /// see on-prem UP (the cloud stays; the two signals disagree now).
    pub overdue: Family<ServiceLabels, Gauge>,
}

impl FastPathMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = FastPathMetrics::default();
        registry.register(
            "fast_path_triggers",
            "Failovers made on HAProxy's own health checks before any failover alert fired",
            m.triggers.clone(),
        );
        registry.register(
            "fast_path_unconfirmed",
            "Fast-path failovers failed back because no failover alert fired within confirm_within",
            m.unconfirmed.clone(),
        );
        registry.register(
            "fast_path_overdue",
            "1 while a fast-path failover is past confirm_within with no failover alert and on-prem not UP in HAProxy",
            m.overdue.clone(),
        );
        m
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub service: String,
    pub check: String,
}

/// The series of the readiness checks, drills and verification: whether a failover would
/// work now, and why not.
#[derive(Default)]
pub struct ReadinessMetrics {
    /// 1 when the last readiness check found no problem.
    pub standby_ready: Family<ServiceLabels, Gauge>,
    /// Problems the last check found, per check (0 for a check that found none).
    pub problems: Family<CheckLabels, Gauge>,
    /// 0 when HAProxy's own check did not see the cloud servers UP within `timeouts.verify`
    /// of a failover; 1 otherwise (verified, waiting, or not in cloud).
    pub failover_verified: Family<ServiceLabels, Gauge>,
    /// Unix time of the last drill that ended ok.
    pub drill_last_success: Family<ServiceLabels, Gauge>,
    /// The last drill's time from start to every cloud server UP (seconds).
    pub drill_time_to_ready: Family<ServiceLabels, FloatGauge>,
    /// `drill.every` in seconds; 0 when drills are not scheduled.
    pub drill_interval: Family<ServiceLabels, Gauge>,
}

impl ReadinessMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = ReadinessMetrics::default();
        registry.register(
            "standby_ready",
            "1 when the last readiness check found nothing that would stop a failover",
            m.standby_ready.clone(),
        );
        registry.register(
            "readiness_problems",
            "Problems the last readiness check found, by check",
            m.problems.clone(),
        );
        registry.register(
            "failover_verified",
            "0 when HAProxy's own health check did not report the cloud servers UP within timeouts.verify of a failover",
            m.failover_verified.clone(),
        );
        registry.register(
            "drill_last_success_timestamp_seconds",
            "Unix time of the last drill that ended ok",
            m.drill_last_success.clone(),
        );
        registry.register(
            "drill_time_to_ready_seconds",
            "The last drill's time from its start to every cloud server UP by HAProxy's check: what a failover would have taken",
            m.drill_time_to_ready.clone(),
        );
        registry.register(
            "drill_interval_seconds",
            "drill.every of each service in seconds; 0 when drills are not scheduled",
            m.drill_interval.clone(),
        );
        m
    }
}

impl Metrics {
    /// Registers the cluster's series (see [`crate::cluster::ClusterMetrics`]); called once,
    /// only when `cluster:` is configured.
    pub fn register_cluster(&mut self) -> crate::cluster::ClusterMetrics {
        let m = crate::cluster::ClusterMetrics::default();
        self.registry.register(
            "cluster_leader",
            "1 while this responder leads its cluster and may act (its lease is certain to hold)",
            m.leader.clone(),
        );
        self.registry.register(
            "cluster_leader_changes",
            "Times this responder gained or lost leadership",
            m.leader_changes.clone(),
        );
        self.registry.register(
            "cluster_etcd_up",
            "1 when etcd answered this responder's last call",
            m.etcd_up.clone(),
        );
        m
    }
}

fn step_histogram() -> Histogram {
    // 1 ms .. ~65 s: a HAProxy command to a slow container start.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    /// Registers every metric. Long on purpose: one flat registration per metric, in the
    /// order of the struct, is what a reader checks against prometheus/rules/ and the README.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("failover_responder");
        let notifications = Family::default();
        registry.register(
            "notifications",
            "Webhook requests received, by result",
            notifications.clone(),
        );
        let failover_alerts = Family::default();
        registry.register(
            "failover_alerts_firing",
            "Firing alerts that match a service's failover_on matchers",
            failover_alerts.clone(),
        );
        let desired_mode = Family::default();
        registry.register(
            "desired_mode",
            "1 for the mode each service should be in (onprem or cloud)",
            desired_mode.clone(),
        );
        let converged = Family::default();
        registry.register(
            "converged",
            "1 when the observed state matches the desired mode",
            converged.clone(),
        );
        let steps = Family::default();
        registry.register(
            "steps",
            "Reconcile steps run, by action and outcome",
            steps.clone(),
        );
        let step_seconds: HistogramFamily<ActionLabels> =
            Family::new_with_constructor(step_histogram);
        registry.register(
            "step_duration_seconds",
            "Time taken by each reconcile step",
            step_seconds.clone(),
        );
        let backend_up = Family::default();
        registry.register(
            "backend_up",
            "1 when the backend answered the last observation",
            backend_up.clone(),
        );
        let blocked = Family::default();
        registry.register(
            "blocked",
            "What only a human can fix keeps the plan from going on (count); see status 'blocked'",
            blocked.clone(),
        );
        let consecutive_failures = Family::default();
        registry.register(
            "consecutive_failures",
            "Failed reconcile passes in a row",
            consecutive_failures.clone(),
        );
        let last_reconcile = Family::default();
        registry.register(
            "last_reconcile_timestamp_seconds",
            "Unix time of the last reconcile pass",
            last_reconcile.clone(),
        );
        let transitions = Family::default();
        registry.register(
            "transitions",
            "Mode changes, by the mode entered",
            transitions.clone(),
        );
        let transitions_capped = Family::default();
        registry.register(
            "transitions_capped",
            "1 while max_transitions_per_hour keeps a service in cloud",
            transitions_capped.clone(),
        );
        let alertmanager_up = Gauge::default();
        registry.register(
            "alertmanager_up",
            "1 when the last resync from Alertmanager's API succeeded",
            alertmanager_up.clone(),
        );
        let resyncs = Family::default();
        registry.register(
            "resyncs",
            "Resyncs from Alertmanager's API, by result",
            resyncs.clone(),
        );
        let journal_entries = Gauge::default();
        registry.register(
            "journal_entries",
            "Notifications kept in the journal",
            journal_entries.clone(),
        );
        // Named as Prometheus and Alertmanager name theirs, so the same alert rule fits all three.
        let config_last_reload_successful = Gauge::default();
        registry.register(
            "config_last_reload_successful",
            "1 when the last configuration reload succeeded (also after the start), 0 when it failed",
            config_last_reload_successful.clone(),
        );
        let config_last_reload_success_timestamp = Gauge::default();
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration reload (or of the start)",
            config_last_reload_success_timestamp.clone(),
        );
        let burst_desired = Family::default();
        registry.register(
            "burst_units_desired",
            "Burst units that should be up and open",
            burst_desired.clone(),
        );
        let burst_open = Family::default();
        registry.register(
            "burst_units_open",
            "Burst slots open (ready) on every HAProxy",
            burst_open.clone(),
        );
        let burst_scale = Family::default();
        registry.register(
            "burst_scale",
            "Changes of the burst count, by direction",
            burst_scale.clone(),
        );
        let burst_capped = Family::default();
        registry.register(
            "burst_capped",
            "1 while the cost guard holds bursting below what the overload asks for",
            burst_capped.clone(),
        );
        let units_running = Family::default();
        registry.register(
            "cloud_units_running",
            "Cloud units (instances, containers) running now",
            units_running.clone(),
        );
        let cost_per_hour = Family::default();
        registry.register(
            "estimated_cost_per_hour",
            "Running cloud units at the configured hourly prices",
            cost_per_hour.clone(),
        );
        let instance_seconds_today = Family::default();
        registry.register(
            "instance_seconds_today",
            "EC2 instance time used today (UTC), in seconds",
            instance_seconds_today.clone(),
        );
        let readiness = ReadinessMetrics::register(&mut registry);
        let fast_path = FastPathMetrics::register(&mut registry);
        Metrics {
            readiness,
            fast_path,
            registry,
            burst_desired,
            burst_open,
            burst_scale,
            burst_capped,
            units_running,
            cost_per_hour,
            instance_seconds_today,
            transitions,
            transitions_capped,
            alertmanager_up,
            resyncs,
            journal_entries,
            config_last_reload_successful,
            config_last_reload_success_timestamp,
            notifications,
            failover_alerts,
            desired_mode,
            converged,
            steps,
            step_seconds,
            backend_up,
            consecutive_failures,
            blocked,
            last_reconcile,
        }
    }

    /// Counts one webhook request.
    pub fn notification(&self, result: &str) {
        self.notifications
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Creates a service's counters at 0: its transitions into either mode and its step
    /// failures per action. A counter series that appears at its first increment is missed
    /// by `increase()` (dashboards, alert rules), so these exist before anything happens.
    pub fn register_service(&self, service: &str, actions: &[&str]) {
        for mode in ["onprem", "cloud"] {
            let _ = self.transitions.get_or_create(&ModeLabels {
                service: service.to_string(),
                mode: mode.to_string(),
            });
        }
        for action in actions {
            let _ = self.steps.get_or_create(&StepLabels {
                service: service.to_string(),
                action: action.to_string(),
                outcome: "failure".to_string(),
            });
        }
    }

    /// One service's always-present series, resolved once for a pass.
    pub fn service(&self, service: &str) -> ServiceMetrics {
        let l = ServiceLabels {
            service: service.to_string(),
        };
        ServiceMetrics {
            failover_alerts: self.failover_alerts.get_or_create(&l).clone(),
            converged: self.converged.get_or_create(&l).clone(),
            blocked: self.blocked.get_or_create(&l).clone(),
            last_reconcile: self.last_reconcile.get_or_create(&l).clone(),
            transitions_capped: self.transitions_capped.get_or_create(&l).clone(),
            cost_per_hour: self.cost_per_hour.get_or_create(&l).clone(),
            instance_seconds_today: self.instance_seconds_today.get_or_create(&l).clone(),
        }
    }

    /// A bursting service's series (created only for services that burst, so the others
    /// export none).
    pub fn burst(&self, service: &str) -> BurstMetrics {
        let l = ServiceLabels {
            service: service.to_string(),
        };
        BurstMetrics {
            desired: self.burst_desired.get_or_create(&l).clone(),
            open: self.burst_open.get_or_create(&l).clone(),
            capped: self.burst_capped.get_or_create(&l).clone(),
        }
    }

    /// Counts a mode change of `service` into `to`.
    pub fn transition(&self, service: &str, to: crate::desired::Mode) {
        self.transitions
            .get_or_create(&ModeLabels {
                service: service.to_string(),
                mode: to.as_str().to_string(),
            })
            .inc();
    }

    /// Counts a change of `service`'s burst count, `up` or `down`.
    pub fn burst_scaled(&self, service: &str, direction: &str) {
        self.burst_scale
            .get_or_create(&DirectionLabels {
                service: service.to_string(),
                direction: direction.to_string(),
            })
            .inc();
    }

    /// Prometheus text exposition.
    /// OpenMetrics 1.0 text, as prometheus-client writes it (`/metrics` answers it to a
    /// scraper that asks for `application/openmetrics-text`, as Prometheus does).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Drops the series of a service a reload removed (after its last pass), so that its
    /// gauges do not stand still and page (`FailoverReconcileStalled`, `FailoverStuck`, ...).
    /// `targets` are its `(backend, target)` pairs of `backend_up`. Counters and histograms of
    /// steps stay: they only stop growing, which no alert reads as a problem.
    pub fn forget_service(
        &self,
        service: &str,
        targets: &[(&'static str, String)],
        checks: &[&str],
    ) {
        let l = ServiceLabels {
            service: service.to_string(),
        };
        for f in [
            &self.failover_alerts,
            &self.converged,
            &self.consecutive_failures,
            &self.blocked,
            &self.last_reconcile,
            &self.transitions_capped,
            &self.burst_desired,
            &self.burst_open,
            &self.burst_capped,
            &self.fast_path.overdue,
            &self.readiness.standby_ready,
            &self.readiness.failover_verified,
            &self.readiness.drill_last_success,
            &self.readiness.drill_interval,
        ] {
            f.remove(&l);
        }
        for f in [
            &self.cost_per_hour,
            &self.instance_seconds_today,
            &self.readiness.drill_time_to_ready,
        ] {
            f.remove(&l);
        }
        for mode in ["onprem", "cloud"] {
            self.desired_mode.remove(&ModeLabels {
                service: service.to_string(),
                mode: mode.to_string(),
            });
        }
        for kind in ["instance", "container"] {
            self.units_running.remove(&KindLabels {
                service: service.to_string(),
                kind: kind.to_string(),
            });
        }
        for check in checks {
            self.readiness.problems.remove(&CheckLabels {
                service: service.to_string(),
                check: check.to_string(),
            });
        }
        for (backend, target) in targets {
            self.backend_up.remove(&TargetLabels {
                service: service.to_string(),
                backend: backend.to_string(),
                target: target.clone(),
            });
        }
    }

    /// The Prometheus text format 0.0.4 (what a plain `curl` and `promtool check metrics`
    /// read): [`Self::encode`] turned by [`classic_text`].
    pub fn encode_classic(&self) -> String {
        classic_text(&self.encode())
    }
}

/// OpenMetrics text as prometheus-client writes it, in the Prometheus text format 0.0.4. The
/// samples are the same; what differs is around them: a counter's HELP and TYPE name its
/// `_total` series (OpenMetrics names the family without it, which the 0.0.4 parser and
/// promtool's lint read as a counter without help), `info` becomes a gauge, `unknown`
/// becomes `untyped`, `# UNIT` and `# EOF` go, and HELP loses the `\"` escape 0.0.4 does not
/// have. prometheus-client writes no `_created` series, exemplars or timestamps here.
pub fn classic_text(openmetrics: &str) -> String {
    // Family name -> the suffix its samples carry: the name HELP and TYPE take in 0.0.4.
    let suffixed: std::collections::HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| match l.split_once(' ') {
            Some((name, "counter")) => Some((name, "_total")),
            Some((name, "info")) => Some((name, "_info")),
            _ => None,
        })
        .collect();
    let classic_name = |name: &str| format!("{name}{}", suffixed.get(name).unwrap_or(&""));
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        let classic = if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = classic_name(name);
            format!("# HELP {name} {}", help.replace("\\\"", "\""))
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = match kind {
                "info" => "gauge",
                "unknown" => "untyped",
                k => k,
            };
            let name = classic_name(name);
            format!("# TYPE {name} {kind}")
        } else {
            line.to_string()
        };
        out.push_str(&classic);
        out.push('\n');
    }
    out
}

/// One service's series that every pass sets: handles sharing the registered values.
#[derive(Clone)]
pub struct ServiceMetrics {
    pub failover_alerts: Gauge,
    pub converged: Gauge,
    pub blocked: Gauge,
    pub last_reconcile: Gauge,
    pub transitions_capped: Gauge,
    pub cost_per_hour: FloatGauge,
    pub instance_seconds_today: FloatGauge,
}

/// A bursting service's series.
#[derive(Clone)]
pub struct BurstMetrics {
    pub desired: Gauge,
    pub open: Gauge,
    pub capped: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::info::Info;

    #[test]
    fn classic_text_names_counters_by_their_total_series() {
        let mut r = Registry::with_prefix("fr");
        let c: Family<ResultLabels, Counter> = Family::default();
        r.register("notifications", "Notifications, by \"result\"", c.clone());
        c.get_or_create(&ResultLabels {
            result: "accepted".into(),
        })
        .inc();
        let g = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        r.register_with_unit(
            "age",
            "Age",
            prometheus_client::registry::Unit::Seconds,
            g.clone(),
        );
        r.register("build", "Build", Info::new(vec![("version", "1")]));
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, &r).expect("encode");
        let got = classic_text(&om);
        // (line wanted in the 0.0.4 text, or absent when it starts with "!")
        let cases = [
            "# HELP fr_notifications_total Notifications, by \"result\".",
            "# TYPE fr_notifications_total counter",
            "fr_notifications_total{result=\"accepted\"} 1",
            "# HELP fr_age_seconds Age.",
            "# HELP fr_build_info Build.",
            "# TYPE fr_age_seconds gauge",
            "fr_age_seconds 0",
            "# TYPE fr_build_info gauge",
            "fr_build_info{version=\"1\"} 1",
            "!# EOF",
            "!# UNIT fr_age_seconds seconds",
            "!# TYPE fr_notifications counter",
        ];
        for want in cases {
            match want.strip_prefix('!') {
                Some(absent) => assert!(!got.lines().any(|l| l == absent), "{absent} in\n{got}"),
                None => assert!(
                    got.lines().any(|l| l == want),
                    "{want} not in\n{got}\nfrom\n{om}"
                ),
            }
        }
    }
}
