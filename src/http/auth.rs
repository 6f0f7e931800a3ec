//! Webhook credentials: bearer token or basic auth, compared in constant time.

use actix_web::http::header;
use actix_web::HttpRequest;
use base64::Engine;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::{AuthConfig, Credentials};

/// What the webhook accepts. `None` credentials only when the config says `insecure_no_auth`.
#[derive(Clone)]
pub struct Auth {
    credentials: Credentials,
    insecure_no_auth: bool,
}

impl Auth {
    pub fn from_config(a: &AuthConfig) -> Self {
        Auth {
            credentials: a.credentials.clone(),
            insecure_no_auth: a.insecure_no_auth,
        }
    }

    fn challenge(&self) -> &'static str {
        if self.credentials.bearer_token.is_none() && self.credentials.basic.is_some() {
            "Basic realm=\"failover-responder\""
        } else {
            "Bearer realm=\"failover-responder\""
        }
    }

    /// Ok when the request carries accepted credentials (or auth is off).
    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let c = &self.credentials;
        if c.bearer_token.is_none() && c.basic.is_none() && self.insecure_no_auth {
            return Ok(());
        }
        let unauthorized = ApiError::Unauthorized {
            challenge: self.challenge(),
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
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}
