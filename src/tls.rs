//! TLS for the listener (rustls): a server certificate, and optionally a client CA so that only
//! clients holding a certificate it signed get in (mTLS, as Alertmanager's `tls_config` sends).
//!
//! The certificate, key and client CA are read again by a config reload (SIGHUP or `POST
//! /-/reload`) and swapped in for new handshakes; connections already open keep theirs, so
//! nothing is dropped. A reload that fails (unreadable file, key not matching) keeps the old
//! material and says why.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use serde::Deserialize;

/// `tls:` in the config.
#[derive(Debug, Clone, Deserialize)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate signed by one.
    pub client_ca_file: Option<PathBuf>,
}

/// Why TLS material could not be loaded. Names the file, never shows key material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path}: {message}")]
    File {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("tls: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn file_err(key: &'static str, path: &Path, message: impl fmt::Display) -> TlsError {
    TlsError::File {
        key,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn load_key(cfg: &TlsConfig, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert_file)
        .map_err(|e| file_err("tls.cert_file", &cfg.cert_file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err("tls.cert_file", &cfg.cert_file, e))?;
    if certs.is_empty() {
        return Err(file_err(
            "tls.cert_file",
            &cfg.cert_file,
            "no certificate in it",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file)
        .map_err(|e| file_err("tls.key_file", &cfg.key_file, e))?;
    CertifiedKey::from_der(certs, key, provider)
        .map(Arc::new)
        .map_err(|e| {
            file_err(
                "tls.key_file",
                &cfg.key_file,
                format!("does not fit the certificate: {e}"),
            )
        })
}

fn load_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(path).map_err(|e| file_err("tls.client_ca_file", path, e))?
    {
        let cert = cert.map_err(|e| file_err("tls.client_ca_file", path, e))?;
        roots
            .add(cert)
            .map_err(|e| file_err("tls.client_ca_file", path, e))?;
    }
    if roots.is_empty() {
        return Err(file_err(
            "tls.client_ca_file",
            path,
            "no CA certificate in it",
        ));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| file_err("tls.client_ca_file", path, e))
}

/// The swappable certificate and client verifier. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    provider: Arc<CryptoProvider>,
    key: Arc<RwLock<Arc<CertifiedKey>>>,
    verifier: Option<Arc<RwLock<Arc<dyn ClientCertVerifier>>>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("client_certificates", &self.verifier.is_some())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads everything once; errors name the file.
    pub fn load(cfg: &TlsConfig) -> Result<Tls, TlsError> {
        let provider = provider();
        let key = load_key(cfg, &provider)?;
        let verifier = match &cfg.client_ca_file {
            Some(p) => Some(Arc::new(RwLock::new(load_verifier(p, &provider)?))),
            None => None,
        };
        Ok(Tls {
            provider,
            key: Arc::new(RwLock::new(key)),
            verifier,
        })
    }

    /// Puts `reloaded`'s certificate and client CA in force for new handshakes (material a
    /// config reload has loaded and checked). Errors: client certificates switched on or off,
    /// which a running listener cannot change (that needs a restart); nothing is swapped then.
    pub fn adopt(&self, reloaded: &Tls) -> Result<(), TlsError> {
        if self.verifier.is_some() != reloaded.verifier.is_some() {
            return Err(TlsError::Config(
                "tls.client_ca_file set or removed: needs a restart".into(),
            ));
        }
        let key = reloaded
            .key
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        *self.key.write().unwrap_or_else(|e| e.into_inner()) = key;
        if let (Some(mine), Some(new)) = (&self.verifier, &reloaded.verifier) {
            let v = new.read().unwrap_or_else(|e| e.into_inner()).clone();
            *mine.write().unwrap_or_else(|e| e.into_inner()) = v;
        }
        Ok(())
    }

    /// Whether clients must present a certificate (`tls.client_ca_file`).
    pub fn client_certificates(&self) -> bool {
        self.verifier.is_some()
    }

    /// The rustls server config using the swappable parts.
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let resolver = Arc::new(Resolver(self.key.clone()));
        let mut config = match &self.verifier {
            Some(v) => builder
                .with_client_cert_verifier(Arc::new(Reloadable(v.clone())))
                .with_cert_resolver(resolver),
            None => builder.with_no_client_auth().with_cert_resolver(resolver),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

#[derive(Debug)]
struct Resolver(Arc<RwLock<Arc<CertifiedKey>>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Delegates to the current client verifier. Sends no CA hints (they would have to outlive a
/// swap); clients send their configured certificate regardless.
struct Reloadable(Arc<RwLock<Arc<dyn ClientCertVerifier>>>);

impl fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reloadable")
    }
}

impl Reloadable {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ClientCertVerifier for Reloadable {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}
