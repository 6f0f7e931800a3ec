//! The binary as users run it: `check-config` exit codes and messages, and `serve` starting,
//! answering and stopping cleanly on SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use failover_responder::plan::ContainerState;

const BIN: &str = env!("CARGO_BIN_EXE_failover-responder");
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/config/failover-responder.yaml"
);

/// `check-config` on a config file holding `yaml`.
fn check_config(yaml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("responder.yaml");
    std::fs::write(&path, yaml).expect("write");
    Command::new(BIN)
        .args(["check-config", "--config.file"])
        .arg(&path)
        .output()
        .expect("run")
}

#[test]
fn check_config_accepts_the_example_with_its_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let out = Command::new(BIN)
        .args(["check-config", "--config.file", EXAMPLE])
        .env("FAILOVER_RESPONDER__AUTH__BEARER_TOKEN_FILE", &token)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK, 1 service(s)"), "{stdout}");
    assert!(
        stdout.contains("onprem-api: 2 failover matcher(s)"),
        "{stdout}"
    );
}

#[test]
fn check_config_lists_every_problem_with_its_key() {
    let out = check_config("auth: {bearer_token_file: /nonexistent/token}\nlisten_adress: x\nservices:\n  a:\n    failover_on: ['alertname=~\"(\"']\n    haproxy: {runtime_api: ['relative.sock'], backend: api, cloud_servers: [c]}\n");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "listen_adress: unknown key",
        "services.a.failover_on[0]: invalid regex",
        "services.a.haproxy.runtime_api[0]",
    ] {
        assert!(stderr.contains(want), "want {want:?} in:\n{stderr}");
    }
    // The secret file is only read once the rest is valid; its error names the key too.
    let out = check_config("auth: {bearer_token_file: /nonexistent/token}\nservices:\n  a:\n    failover_on: ['a=\"b\"']\n    haproxy: {runtime_api: ['/s'], backend: api, cloud_servers: [c]}\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("auth.bearer_token_file: cannot read /nonexistent/token"));
}

#[test]
fn check_config_names_a_typoed_key_and_suggests_the_known_one() {
    // The only problem: `failover_onn:` for `failover_on:`.
    let out = check_config("auth: {insecure_no_auth: true}\nservices:\n  a:\n    failover_onn: ['alertname=\"down\"']\n    haproxy: {runtime_api: ['/s'], backend: api, cloud_servers: [c]}\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for want in [
        "services.a.failover_onn: unknown key",
        "did you mean `failover_on`?",
        "missing configuration field \"services.a.failover_on\"",
    ] {
        assert!(stderr.contains(want), "want {want:?} in:\n{stderr}");
    }
}

#[test]
fn check_config_accepts_a_quoted_utf8_label_name() {
    // Alertmanager 0.27+ syntax for a label name with a dot (OpenTelemetry style); whether it
    // then matches `service.name: onprem-api` is checked by the matcher and config unit tests,
    // as the binary has no command that evaluates a matcher.
    let out = check_config("auth: {insecure_no_auth: true}\nservices:\n  onprem-api:\n    failover_on: ['\"service.name\"=\"onprem-api\"', 'alertname=\"down\"']\n    haproxy: {runtime_api: ['/s'], backend: api, cloud_servers: [c]}\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("onprem-api: 2 failover matcher(s)"),
        "{stdout}"
    );
}

#[test]
fn serve_refuses_an_open_webhook() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("noauth.yaml");
    std::fs::write(&path, "services:\n  a:\n    failover_on: ['a=\"b\"']\n    haproxy: {runtime_api: ['/s'], backend: api, cloud_servers: [c]}\n").expect("write");
    let out = Command::new(BIN)
        .args(["serve", "--config.file"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth: no credentials configured"));
}

#[tokio::test]
async fn serve_answers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let port = free_port();
    let child = Command::new(BIN)
        .args(["serve", "--config.file", EXAMPLE, "--web.listen-address"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--log.format", "json", "--storage.path"])
        .arg(dir.path().join("data"))
        .env("FAILOVER_RESPONDER__AUTH__BEARER_TOKEN_FILE", &token)
        .env("FAILOVER_RESPONDER__RECONCILE__INTERVAL", "1s")
        // Never touch this machine's real engine: point Docker at a socket that does not exist.
        // It must still serve.
        .env(
            "FAILOVER_RESPONDER__SERVICES__ONPREM-API__DOCKER__HOST",
            format!("unix://{}/no-docker.sock", dir.path().display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let url = format!("http://127.0.0.1:{port}/-/healthy");
    eventually("serve answers /-/healthy", Duration::from_secs(10), || {
        get_text(&url)
    })
    .await;
    // The environment override reached the nested service key: Docker shows as unreachable.
    let status_url = format!("http://127.0.0.1:{port}/api/v1/status");
    eventually(
        "docker shown unreachable at the overridden socket",
        Duration::from_secs(10),
        || async {
            let st: StatusDoc = reqwest::get(&status_url).await.ok()?.json().await.ok()?;
            let c = &st
                .services
                .get("onprem-api")?
                .status
                .observed
                .containers
                .first()?
                .state;
            matches!(c, ContainerState::Unknown { reason } if reason.contains("no-docker.sock"))
                .then_some(())
        },
    )
    .await;
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert!(out.status.success(), "exit {:?}", out.status);
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(
        logs.contains("\"message\":\"listening\""),
        "json logs: {logs}"
    );
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(!logs.contains("s3cret"), "the token leaked into the logs");
}
