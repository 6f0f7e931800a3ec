//! `cluster:` in the config: this responder's name, the leader lease and the etcd it lives in.
//! Absent: the responder is standalone and acts alone, as without any of this.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Two or more responders sharing one leader lease in etcd.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterConfig {
    /// Unique per responder (`site-a`); shown in status, events and logs, and stored as the
    /// leader key's value.
    pub name: String,
    /// How long leadership lasts without a renewal. The leader renews every third of it and
    /// stops acting a safety margin before it ends.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Key prefix of everything this cluster keeps in etcd.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    pub etcd: EtcdConfig,
}

/// How to reach etcd.
#[derive(Debug, Clone, Deserialize)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members: all `http://host:2379`, or all `https://` with `tls`.
    pub endpoints: Vec<String>,
    /// TLS to etcd (`https://` endpoints): the CA that signed etcd's server certificate, and
    /// this node's client certificate when etcd asks for one (`--client-cert-auth`).
    pub tls: Option<EtcdTls>,
    /// etcd user (with `password_file`), when etcd has authentication on.
    pub username: Option<String>,
    /// File holding that user's password (read when connecting; never logged).
    pub password_file: Option<PathBuf>,
    /// How long one etcd call may take before etcd counts as unreachable.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// `cluster.etcd.tls`. The files are read at start (so `check-config` finds a bad one) and
/// again at every new etcd session, so a renewed certificate is used without a restart.
#[derive(Debug, Clone, Deserialize)]
pub struct EtcdTls {
    /// PEM CA certificate(s) that etcd's server certificate must chain to.
    pub ca_file: PathBuf,
    /// PEM client certificate chain, leaf first (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// The name etcd's certificate must carry, when it is not the endpoints' host (for example
    /// endpoints given as IP addresses, a certificate for `etcd.internal`).
    pub server_name: Option<String>,
}

impl EtcdTls {
    /// Reads and checks the PEM files. Errors name the key and the file, never key material.
    pub fn read(&self) -> Result<etcd_client::TlsOptions, String> {
        let ca = read_pem("ca_file", &self.ca_file)?;
        pem_certs("ca_file", &self.ca_file, &ca)?;
        let mut options =
            etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca));
        if let (Some(cert_file), Some(key_file)) = (&self.cert_file, &self.key_file) {
            let cert = read_pem("cert_file", cert_file)?;
            let chain = pem_certs("cert_file", cert_file, &cert)?;
            let key = read_pem("key_file", key_file)?;
            check_key_fits(&chain, &key, key_file)?;
            options = options.identity(etcd_client::Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            options = options.domain_name(name);
        }
        Ok(options)
    }
}

fn read_pem(key: &str, path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cluster.etcd.tls.{key} {}: {e}", path.display()))
}

/// The certificates of a PEM file; an error when there is none.
fn pem_certs(
    key: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cluster.etcd.tls.{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "cluster.etcd.tls.{key} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// That `key` is a PEM private key and the one of `chain`'s first certificate: a mismatch
/// would otherwise show only as a failed handshake with etcd.
fn check_key_fits(
    chain: &[rustls::pki_types::CertificateDer<'static>],
    key: &[u8],
    path: &Path,
) -> Result<(), String> {
    use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    let at = || format!("cluster.etcd.tls.key_file {}", path.display());
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| {
        format!(
            "{}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)",
            at()
        )
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.to_vec(), key, &provider)
        .map(|_| ())
        .map_err(|e| format!("{}: does not fit cert_file's certificate: {e}", at()))
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_prefix() -> String {
    "/failover-responder/".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

impl ClusterConfig {
    /// Reads what the etcd connection will read (the password file, the TLS files), so that a
    /// missing or malformed one stops the start and `check-config` instead of showing up as
    /// "etcd unreachable" later. One message per problem.
    pub fn check_files(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(file) = &self.etcd.password_file {
            if let Err(e) = std::fs::read_to_string(file) {
                errors.push(format!(
                    "cluster.etcd.password_file {}: {e}",
                    file.display()
                ));
            }
        }
        if let Some(Err(e)) = self.etcd.tls.as_ref().map(EtcdTls::read) {
            errors.push(e);
        }
        errors
    }

    /// Checks `cluster:`, one message per problem, with its key path.
    pub fn validate(&self, errors: &mut Vec<String>) {
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            errors.push(format!(
                "cluster.name: {:?} is not a node name ([a-zA-Z0-9_.-]+)",
                self.name
            ));
        }
        // etcd grants leases in whole seconds; under 2 s the renewal cadence (a third) and the
        // safety margin leave nothing to act in.
        if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl.subsec_nanos() != 0 {
            errors.push("cluster.lease_ttl: must be whole seconds, at least 2s".into());
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') {
            errors.push(format!(
                "cluster.prefix: {:?} must start and end with /",
                self.prefix
            ));
        }
        if self.etcd.endpoints.is_empty() {
            errors.push("cluster.etcd.endpoints: at least one".into());
        }
        // One scheme for all: the client holds one channel configuration for every member.
        let want = if self.etcd.tls.is_some() {
            "https"
        } else {
            "http"
        };
        for (i, e) in self.etcd.endpoints.iter().enumerate() {
            match reqwest::Url::parse(e) {
                Ok(u) if u.scheme() == want && u.host().is_some() => {}
                Ok(u) if u.scheme() == "https" => errors.push(format!(
                    "cluster.etcd.endpoints[{i}]: {e:?} is https://: set cluster.etcd.tls.ca_file (the CA that signed etcd's server certificate)"
                )),
                Ok(u) if u.scheme() == "http" => errors.push(format!(
                    "cluster.etcd.endpoints[{i}]: {e:?} is http:// while cluster.etcd.tls is set; use https://"
                )),
                _ => errors.push(format!(
                    "cluster.etcd.endpoints[{i}]: {e:?} is not an http://host:port or https://host:port URL"
                )),
            }
        }
        if self.etcd.username.is_some() != self.etcd.password_file.is_some() {
            errors.push("cluster.etcd: set username and password_file together".into());
        }
        if let Some(t) = &self.etcd.tls {
            match (&t.cert_file, &t.key_file) {
                (Some(_), None) => errors.push(
                    "cluster.etcd.tls.key_file: missing: cert_file needs its private key".into(),
                ),
                (None, Some(_)) => errors.push(
                    "cluster.etcd.tls.cert_file: missing: key_file needs its certificate".into(),
                ),
                _ => {}
            }
            if let Some(name) = &t.server_name {
                if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                    errors.push(format!(
                        "cluster.etcd.tls.server_name: {name:?} is not a DNS name or IP address"
                    ));
                }
            }
        }
        // A leader acts until 3/4 of the TTL after its last renewal; a call allowed longer than
        // a quarter of it leaves one slow answer able to fence a healthy leader.
        if self.etcd.timeout.is_zero() || self.etcd.timeout > self.lease_ttl / 4 {
            errors.push(format!(
                "cluster.etcd.timeout: must be greater than 0 and at most lease_ttl / 4 ({})",
                humantime::format_duration(self.lease_ttl / 4)
            ));
        }
    }
}
