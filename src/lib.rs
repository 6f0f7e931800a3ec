//! failover-responder: Alertmanager webhooks in, cloud capacity and HAProxy servers reconciled out.
//!
//! Alerts are edges; the world is a level. The webhook ([`http`]) only authenticates, parses
//! ([`alert`]), records ([`store`]; what the firing set becomes is [`firing`]'s to say, pure,
//! judging late and repeated copies by the [`incarnation`] rules) and wakes the reconciler.
//! The reconciler ([`reconcile`]), one task per service, runs one pass at a time: it decides
//! the desired mode from the alerts firing now ([`desired`], pure, using Alertmanager
//! [`matcher`]s from the [`config`]), records it, observes the real state through the
//! service's [`world`] (its [`backend`]s: Docker Engine API, HAProxy Runtime API, EC2), plans
//! the missing steps in a safe order ([`plan`], pure) and runs each through the world on the
//! backend it belongs to; [`pass`] is that deciding as one pure function, which the plan
//! preview runs too. It runs again on a timer, so drift is repaired and a lost notification
//! does not leave the world wrong; what each pass saw and did is shown on the [`status`]
//! board (memory only). Beside the mode, a service may burst: an overload alert sets a desired
//! number of extra cloud units ([`burst`], pure, with the cost guard; [`template`] renders each
//! unit), planned and observed the same way. [`app`] wires it together.

// Input and the outside world must never be able to panic the responder.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod alert;
pub mod app;
pub mod backend;
pub mod burst;
pub mod cluster;
pub mod config;
pub mod desired;
pub mod fastpath;
pub mod firing;
pub mod http;
pub mod incarnation;
pub mod matcher;
pub mod metrics;
pub mod pass;
pub mod plan;
pub mod readiness;
pub mod reconcile;
pub mod resync;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod template;
pub mod tls;
pub mod verify;
pub mod world;
