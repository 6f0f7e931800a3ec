//! The fast path's poller: every `poll`, one `show stat <backend>` on each HAProxy's kept-open
//! Runtime API connection (see `backend::haproxy::Session`), joined into a [`View`] the
//! service's pass reads. It wakes the
//! reconciler when what the pass would decide can have changed (`down_for` reached, UP
//! gained or lost), so a failover starts within one poll of HAProxy's own verdict.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{verdict, FastPathConfig, Poll, Verdict, View};
use crate::backend::haproxy::{RuntimeApi, Session};

/// One HAProxy's answer in [`FastPathStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaproxyHealth {
    pub api: String,
    /// Each on-prem server's `show stat` status (`DOWN`, `UP`, `MAINT`...); absent: the
    /// backend has no such server.
    pub servers: Vec<(String, Option<String>)>,
    /// Why this HAProxy could not be read (it then counts as neither DOWN nor UP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the status API shows of the fast path: what HAProxy says of on-prem now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastPathStatus {
    /// `down` (every server DOWN on every HAProxy), `up`, or `unclear`; empty before the
    /// first poll.
    pub verdict: String,
    /// Since when that verdict holds.
    pub since: Option<DateTime<Utc>>,
    /// Since when every HAProxy has said DOWN without a break (the view's, filled in by
    /// [`Watch::status`]).
    pub down_since: Option<DateTime<Utc>>,
    pub haproxy: Vec<HaproxyHealth>,
    /// Polls made, and Runtime API connections opened for them (one per HAProxy while they
    /// stay up).
    pub polls: u64,
    pub connects: u64,
}

/// The poller's findings, shared with the service's pass and the status API. Cheap to clone.
#[derive(Clone, Default)]
pub struct Watch {
    inner: Arc<Mutex<(View, FastPathStatus)>>,
}

impl Watch {
    /// What the pass decides from.
    pub fn view(&self) -> View {
        self.lock().0
    }

    pub fn status(&self) -> FastPathStatus {
        let g = self.lock();
        FastPathStatus {
            down_since: g.0.down_since,
            ..g.1.clone()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (View, FastPathStatus)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Down => "down",
        Verdict::Up => "up",
        Verdict::Unclear => "unclear",
    }
}

/// Polls every `cfg.poll` until `shutdown`, updating `watch` and notifying `wake` when the
/// pass may decide differently. `service` names the log lines.
pub async fn run(
    service: String,
    cfg: FastPathConfig,
    apis: Vec<RuntimeApi>,
    backend: String,
    watch: Watch,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut sessions: Vec<Session> = apis.into_iter().map(Session::new).collect();
    let mut tick = tokio::time::interval(cfg.poll);
    // A slow HAProxy delays the next poll rather than bunching polls after it.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reached = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let answers = futures_util::future::join_all(
            sessions
                .iter_mut()
                .map(|s| s.statuses(&backend, &cfg.onprem_servers)),
        )
        .await;
        let poll: Poll = answers
            .into_iter()
            .map(|a| a.map_err(|e| e.to_string()))
            .collect();
        let now = Utc::now();
        let v = verdict(&poll);
        let health: Vec<HaproxyHealth> = sessions
            .iter()
            .zip(&poll)
            .map(|(s, a)| HaproxyHealth {
                api: s.label().to_string(),
                servers: a.clone().unwrap_or_default(),
                error: a.as_ref().err().cloned(),
            })
            .collect();
        let connects = sessions.iter().map(|s| s.connects).sum();
        let (before, after) = {
            let mut g = watch.lock();
            let before = g.0;
            let after = before.next(v, now);
            let st = &mut g.1;
            let name = verdict_name(v);
            if st.verdict != name || st.haproxy != health {
                log_change(&service, name, &st.haproxy, &health);
            }
            if st.verdict != name {
                st.since = Some(now);
            }
            st.verdict = name.to_string();
            st.haproxy = health;
            st.polls += 1;
            st.connects = connects;
            g.0 = after;
            (before, after)
        };
        let now_reached = after.down_for(cfg.down_for, now);
        if now_reached != reached || after.up != before.up {
            wake.notify_one();
        }
        reached = now_reached;
    }
}

/// One log line when what HAProxy says changes (never one per poll).
fn log_change(service: &str, verdict: &str, before: &[HaproxyHealth], now: &[HaproxyHealth]) {
    let said = now
        .iter()
        .map(|h| match &h.error {
            Some(e) => format!("{}: not read ({e})", h.api),
            None => {
                let servers = h
                    .servers
                    .iter()
                    .map(|(s, st)| format!("{s} {}", st.as_deref().unwrap_or("absent")))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("{}: {servers}", h.api)
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    let newly_unread = now
        .iter()
        .any(|h| h.error.is_some() && !before.iter().any(|b| b.api == h.api && b.error.is_some()));
    if newly_unread {
        warn!(service, verdict, haproxy = %said, "fast path: an HAProxy could not be read; it counts as neither DOWN nor UP");
    } else {
        info!(service, verdict, haproxy = %said, "fast path: HAProxy's view of on-prem changed");
    }
}
