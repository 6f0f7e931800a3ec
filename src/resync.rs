//! Resync from Alertmanager: on start and every `resync_interval`, read the active alerts from
//! Alertmanager's API and make them the firing set.
//!
//! Webhooks are at-least-once but can be lost (a resolved notification sent while the responder
//! was down is retried only for a while) and truncated (`max_alerts`). Alertmanager's own view
//! repairs both. When Alertmanager cannot be asked, the last known set is kept and the failure
//! shows in status and metrics.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alert::Labels;
use crate::config::AlertmanagerConfig;
use crate::metrics::{Metrics, ResultLabels};
use crate::reconcile::Services;
use crate::status::StatusBoard;
use crate::store::{Store, StoreError, StoredAlert};

/// One alert as `GET /api/v2/alerts` returns it (only the fields used).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiAlert {
    labels: Labels,
    starts_at: DateTime<Utc>,
    fingerprint: String,
    #[serde(default)]
    receivers: Vec<Receiver>,
    #[serde(default)]
    status: ApiStatus,
}

/// `status` of an alert in Alertmanager's API v2: `state` is `active`, `suppressed` (silenced
/// or inhibited) or `unprocessed`.
#[derive(Debug, Default, Deserialize)]
struct ApiStatus {
    #[serde(default)]
    state: String,
}

#[derive(Debug, Deserialize)]
struct Receiver {
    name: String,
}

/// Why a resync did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error("alertmanager {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("alertmanager {url}: unexpected answer: {message}")]
    BadAnswer { url: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything the resync task needs.
#[derive(Clone)]
pub struct Resync {
    pub config: AlertmanagerConfig,
    pub store: Store,
    /// Where the outcome of each resync is shown.
    pub status: StatusBoard,
    pub metrics: Arc<Metrics>,
    pub services: Services,
    client: reqwest::Client,
}

impl Resync {
    pub fn new(
        config: AlertmanagerConfig,
        store: Store,
        status: StatusBoard,
        metrics: Arc<Metrics>,
        services: Services,
    ) -> Self {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .unwrap_or_default();
        Resync {
            config,
            store,
            status,
            metrics,
            services,
            client,
        }
    }

    /// Resyncs now and then every interval, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            // Raced against the token: a resync a reload replaced must not write an older
            // snapshot after its successor.
            tokio::select! {
                _ = self.once() => {}
                () = shutdown.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.resync_interval) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One resync; records its outcome in status and metrics. Returns whether the firing set
    /// changed.
    pub async fn once(&self) -> Result<bool, ResyncError> {
        let started = Utc::now();
        let result = self.fetch_and_replace(started).await;
        let mut st = self.status.resync();
        st.last_attempt = Some(started);
        let label = match &result {
            Ok(_) => {
                st.last_success = Some(started);
                st.last_error = None;
                self.metrics.alertmanager_up.set(1);
                "success"
            }
            Err(e) => {
                warn!(error = %e, "resync from Alertmanager failed; keeping the last known alerts");
                st.last_error = Some(e.to_string());
                self.metrics.alertmanager_up.set(0);
                "failure"
            }
        };
        self.metrics
            .resyncs
            .get_or_create(&ResultLabels {
                result: label.to_string(),
            })
            .inc();
        if let Ok((changed, count, muted)) = &result {
            st.alerts = *count;
            st.muted = *muted;
            if *changed {
                info!(alerts = count, "resync changed the firing alerts");
                for s in self.services.current().iter() {
                    s.wake.notify_one();
                }
            }
        }
        self.status.set_resync(st);
        result.map(|(changed, _, _)| changed)
    }

    async fn fetch_and_replace(
        &self,
        fetched_at: DateTime<Utc>,
    ) -> Result<(bool, usize, usize), ResyncError> {
        let base = self.config.url.trim_end_matches('/');
        let url = format!("{base}/api/v2/alerts");
        // Every active alert, whatever its receiver: the receiver only decides which ones are
        // taken as firing. One routed elsewhere is left alone, so a misspelt receiver can keep
        // resync from adding alerts but never makes it drop one a webhook delivered.
        // Silenced and inhibited alerts count too: a silence or an inhibit rule mutes
        // notifications, not the outage (read as resolved, a silence would fail back while
        // on-prem is down). Stopping the automation is what `pause` is for. Unprocessed alerts
        // (just received, not yet routed) are active as well. All four are Alertmanager's
        // defaults; they are spelt out so that nobody "tidies" them into a filter.
        let query = [
            ("active", "true"),
            ("silenced", "true"),
            ("inhibited", "true"),
            ("unprocessed", "true"),
        ];
        let unreachable = |e: reqwest::Error| ResyncError::Unreachable {
            url: url.clone(),
            message: e.to_string(),
        };
        let resp = self
            .client
            .get(&url)
            .query(&query)
            .send()
            .await
            .map_err(unreachable)?;
        if !resp.status().is_success() {
            return Err(ResyncError::BadAnswer {
                url: url.clone(),
                message: format!("HTTP {}", resp.status()),
            });
        }
        let body = resp.bytes().await.map_err(unreachable)?;
        let alerts: Vec<ApiAlert> =
            serde_json::from_slice(&body).map_err(|e| ResyncError::BadAnswer {
                url: url.clone(),
                message: e.to_string(),
            })?;
        let services = self.services.current();
        let relevant: Vec<ApiAlert> = alerts
            .into_iter()
            .filter(|a| services.iter().any(|s| s.concerns(&a.labels)))
            .collect();
        let still_active = relevant.iter().map(|a| a.fingerprint.clone()).collect();
        let ours = |a: &ApiAlert| {
            self.config
                .receiver
                .as_ref()
                .is_none_or(|r| a.receivers.iter().any(|x| &x.name == r))
        };
        let relevant: Vec<ApiAlert> = relevant.into_iter().filter(|a| ours(a)).collect();
        let muted = relevant
            .iter()
            .filter(|a| a.status.state == "suppressed")
            .count();
        let relevant: Vec<StoredAlert> = relevant
            .into_iter()
            .map(|a| StoredAlert {
                fingerprint: a.fingerprint,
                labels: a.labels,
                starts_at: a.starts_at,
                received_at: fetched_at,
                source: "resync".into(),
            })
            .collect();
        let count = relevant.len();
        let services = services.iter().map(|s| s.name.clone()).collect();
        let message = format!("firing alerts replaced from Alertmanager ({count} relevant active)");
        let changed = self
            .store
            .replace_firing(relevant, still_active, fetched_at, services, message)
            .await?;
        Ok((changed, count, muted))
    }
}
