//! HTTPS and mTLS on the listener, and certificate reload without dropping connections
//! (`POST /-/reload` and SIGHUP). Certificates are made by the test (rcgen); loopback only.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::*;
use failover_responder::config::Config;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("ca cert");
    Ca { cert, key }
}

/// A leaf signed by `ca`: (certificate PEM, key PEM).
fn leaf(ca: &Ca, client: bool) -> (String, String) {
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("params");
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("sign");
    (cert.pem(), key.serialize_pem())
}

fn client(trust: &Ca, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(trust.cert.pem().as_bytes()).expect("root"),
        )
        .pool_idle_timeout(Duration::from_secs(60))
        .timeout(Duration::from_secs(5));
    if let Some((cert, key)) = identity {
        b = b.identity(
            reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).expect("identity"),
        );
    }
    b.build().expect("client")
}

fn write_server(dir: &Path, pair: &(String, String)) {
    std::fs::write(dir.join("server.crt"), &pair.0).expect("crt");
    std::fs::write(dir.join("server.key"), &pair.1).expect("key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_only_admits_clients_signed_by_the_ca_and_reloads_without_dropping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (server_ca, client_ca, stranger_ca) = (ca("server CA"), ca("client CA"), ca("stranger CA"));
    write_server(d, &leaf(&server_ca, false));
    std::fs::write(d.join("clients.crt"), client_ca.cert.pem()).expect("client ca");
    let alertmanager_id = leaf(&client_ca, true);
    let stranger_id = leaf(&stranger_ca, true);
    let token = token_file(d);
    let config = ConfigBuilder::new(&token)
        .storage(&d.join("data"))
        .top(&format!(
            "tls: {{cert_file: {d}/server.crt, key_file: {d}/server.key, client_ca_file: {d}/clients.crt}}",
            d = d.display()
        ))
        .haproxy(&d.join("none.sock"))
        .load(d);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().expect("addr").port()
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(failover_responder::app::run(listener, config, async {
        let _ = rx.await;
    }));

    let am = client(&server_ca, Some(&alertmanager_id));
    eventually("https answers", Duration::from_secs(10), || async {
        am.get(format!("{base}/-/healthy"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    let resp = am
        .post(format!("{base}/api/v1/alerts"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(fixture("onprem_down-firing.json"))
        .send()
        .await
        .expect("webhook over mTLS");
    assert_eq!(resp.status().as_u16(), 202);

    // No client certificate, one from another CA, or plain HTTP: not let in.
    assert!(client(&server_ca, None)
        .get(format!("{base}/-/healthy"))
        .send()
        .await
        .is_err());
    assert!(client(&server_ca, Some(&stranger_id))
        .get(format!("{base}/-/healthy"))
        .send()
        .await
        .is_err());
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let http = plain
        .get(base.replace("https", "http") + "/-/healthy")
        .send()
        .await;
    assert!(
        http.map(|r| !r.status().is_success()).unwrap_or(true),
        "plain HTTP was served"
    );

    // Reload: a certificate from a new CA replaces the old one for new handshakes, while the
    // open connection keeps working (a new handshake on it would fail: it trusts the old CA).
    let new_ca = ca("new server CA");
    write_server(d, &leaf(&new_ca, false));
    let resp = am
        .post(format!("{base}/-/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("reload");
    assert_eq!(resp.status().as_u16(), 200);
    let again = am
        .get(format!("{base}/-/healthy"))
        .send()
        .await
        .expect("the open connection survives");
    assert!(again.status().is_success());
    let fresh_new = client(&new_ca, Some(&alertmanager_id));
    assert!(fresh_new
        .get(format!("{base}/-/healthy"))
        .send()
        .await
        .expect("new cert")
        .status()
        .is_success());
    assert!(client(&server_ca, Some(&alertmanager_id))
        .get(format!("{base}/-/healthy"))
        .send()
        .await
        .is_err());

    // A broken reload keeps the current certificate and says which file is wrong.
    std::fs::write(d.join("server.crt"), "not a certificate").expect("break");
    let resp = fresh_new
        .post(format!("{base}/-/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("reload");
    assert_eq!(resp.status().as_u16(), 400);
    let msg: serde_json::Value = resp.json().await.expect("json");
    assert!(
        msg["error"]
            .as_str()
            .unwrap_or_default()
            .contains("tls.cert_file"),
        "{msg}"
    );
    assert!(client(&new_ca, Some(&alertmanager_id))
        .get(format!("{base}/-/healthy"))
        .send()
        .await
        .is_ok());

    // SIGHUP reloads too.
    let newest_ca = ca("newest server CA");
    write_server(d, &leaf(&newest_ca, false));
    signal(std::process::id(), "-HUP");
    let newest = client(&newest_ca, Some(&alertmanager_id));
    eventually(
        "SIGHUP reloaded the certificate",
        Duration::from_secs(10),
        || async {
            newest
                .get(format!("{base}/-/healthy"))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        },
    )
    .await;

    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

#[test]
fn unreadable_tls_files_are_refused_at_load_with_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let token = token_file(d);
    std::fs::write(
        d.join("c.yaml"),
        format!(
            "auth: {{bearer_token_file: {}}}\ntls: {{cert_file: {d}/missing.crt, key_file: {d}/missing.key}}\n\
             services:\n  a:\n    failover_on: ['a=\"b\"']\n    haproxy: {{runtime_api: ['/s'], backend: b, cloud_servers: [c]}}\n",
            token.display(),
            d = d.display()
        ),
    )
    .expect("config");
    let err = Config::load_with_env(&d.join("c.yaml"), Default::default())
        .expect_err("refused")
        .to_string();
    assert!(err.contains("tls.cert_file"), "{err}");
}
