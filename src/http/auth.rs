//! Webhook credentials: bearer token or basic auth, compared in constant time, with a
//! per-address limit on failed attempts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::HttpRequest;
use arc_swap::ArcSwap;
use base64::Engine;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::{AuthConfig, Credentials};

/// What the webhook and the control API accept: `auth:` as it is now (a config reload swaps
/// it; the next request sees the new one). Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    config: Arc<ArcSwap<AuthConfig>>,
    limiter: Limiter,
}

/// Failed attempts per client address in the current minute. Bounded: past `MAX_CLIENTS`
/// addresses, finished windows are dropped first.
#[derive(Clone, Default)]
struct Limiter {
    failures: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
}

const WINDOW: Duration = Duration::from_secs(60);
const MAX_CLIENTS: usize = 10_000;

impl Limiter {
    /// Err(seconds to wait) when the address is over its limit of `max` failures a minute.
    fn check(&self, ip: Option<IpAddr>, max: u32) -> Result<(), u64> {
        let (Some(ip), true) = (ip, max > 0) else {
            return Ok(());
        };
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&ip) {
            Some((start, n)) if *n >= max && start.elapsed() < WINDOW => {
                Err((WINDOW - start.elapsed()).as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    fn fail(&self, ip: Option<IpAddr>, max: u32) {
        let (Some(ip), true) = (ip, max > 0) else {
            return;
        };
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CLIENTS && !map.contains_key(&ip) {
            map.retain(|_, (start, _)| start.elapsed() < WINDOW);
            if map.len() >= MAX_CLIENTS {
                // Still full of live windows (a spread-out flood): forget the lot rather than
                // grow without bound; the limit is a brake, not a ban list.
                map.clear();
            }
        }
        let entry = map.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

impl Auth {
    /// Checks requests against whatever `config` holds at the time. The failed attempts
    /// counted stay across a reload: it must not be a way to reset the brake.
    pub fn new(config: Arc<ArcSwap<AuthConfig>>) -> Self {
        Auth {
            config,
            limiter: Limiter::default(),
        }
    }

    /// Ok when the request carries accepted credentials (or auth is off). Failed attempts are
    /// counted per client address; past the limit they get 429 with Retry-After instead of 401.
    /// Valid credentials are always accepted: a misbehaving client sharing Alertmanager's
    /// address (NAT, the same host) must never lock Alertmanager out of a failover. Guessing is
    /// defeated by the token's length; the limit keeps failed floods cheap and quiet.
    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let config = self.config.load();
        let result = verify(&config, req);
        if result.is_err() {
            let ip = req.peer_addr().map(|a| a.ip());
            let max = config.max_failures_per_minute;
            self.limiter
                .check(ip, max)
                .map_err(|retry_after| ApiError::TooManyRequests { retry_after })?;
            self.limiter.fail(ip, max);
        }
        result
    }
}

fn challenge(c: &Credentials) -> &'static str {
    if c.bearer_token.is_none() && c.basic.is_some() {
        "Basic realm=\"failover-responder\""
    } else {
        "Bearer realm=\"failover-responder\""
    }
}

/// Ok when the request carries credentials `a` accepts (or `a` has none and says
/// `insecure_no_auth`).
fn verify(a: &AuthConfig, req: &HttpRequest) -> Result<(), ApiError> {
    let c = &a.credentials;
    if c.bearer_token.is_none() && c.basic.is_none() && a.insecure_no_auth {
        return Ok(());
    }
    let unauthorized = ApiError::Unauthorized {
        challenge: challenge(c),
    };
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(unauthorized);
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    let ok = if scheme.eq_ignore_ascii_case("bearer") {
        c.bearer_token
            .as_ref()
            .is_some_and(|t| ct_eq(rest.as_bytes(), t.expose().as_bytes()))
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .unwrap_or_default();
        match (&c.basic, decoded.iter().position(|b| *b == b':')) {
            (Some((user, pass)), Some(i)) => {
                // Evaluate both halves so timing does not tell which one was wrong.
                let u = ct_eq(&decoded[..i], user.as_bytes());
                let p = ct_eq(&decoded[i + 1..], pass.expose().as_bytes());
                u & p
            }
            _ => false,
        }
    } else {
        false
    };
    if ok {
        Ok(())
    } else {
        Err(unauthorized)
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}
