//! The status page in a real headless browser (Debian's chromium and chromium-driver, driven
//! by selenium from the venv scripts/install-deps.sh makes): tests/ui/status_page.py drives
//! the page against a responder on a real HAProxy and Docker engine; this test starts them
//! and checks the world and the API afterwards. `FR_SCREENSHOT=assets/status-page.png`
//! saves the screenshot the README shows.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use failover_responder::desired::{Mode, Override};

fn selenium_python() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/failover-responder/venv-ui/bin/python")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_follows_a_failover_and_pauses_with_the_token() {
    let python = selenium_python();
    // FR_CHROMIUM / FR_CHROMEDRIVER: another Chromium build (a CI runner's Chrome).
    let browser = std::env::var("FR_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let driver =
        std::env::var("FR_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    if !require(
        "chromium and chromedriver (Debian packages chromium, chromium-driver)",
        std::path::Path::new(&browser).exists() && std::path::Path::new(&driver).exists(),
    ) || !require(
        "selenium in ~/.cache/failover-responder/venv-ui (scripts/install-deps.sh)",
        python.exists(),
    ) {
        return;
    }
    let Some(w) = World::start("ui").await else {
        return;
    };
    let config = w
        .configure()
        .storage(&w.dir.path().join("data"))
        .hold_down("0s")
        .load(w.dir.path());
    let r = Responder::start_with(config).await;
    r.passes(1).await;

    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/alertmanager-0.25/onprem_down-firing.json");
    let mut cmd = tokio::process::Command::new(&python);
    cmd.env("FR_CHROMIUM", &browser)
        .env("FR_CHROMEDRIVER", &driver)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ui/status_page.py"))
        .arg(&r.url)
        .arg(TOKEN)
        .arg(&fixture);
    if let Some(shot) = std::env::var_os("FR_SCREENSHOT") {
        cmd.arg(shot);
    }
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("the browser test finished within 3 minutes")
        .expect("run status_page.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status_page.py failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("status page figures: {}", stdout.trim());

    // What the page showed is what happened: the world is in cloud, and the pause the page
    // sent is the service's override.
    w.settled(&r, Mode::Cloud, Duration::from_secs(30)).await;
    let v = r.service_view("onprem-api").await;
    assert_eq!(v.state.and_then(|s| s.override_), Some(Override::Paused));
    // The timeline's source: the most recent events, oldest first, ending with the pause.
    let tail = r.events("tail=2").await;
    assert_eq!(tail.len(), 2, "{tail:?}");
    assert!(tail[0]["id"].as_u64() < tail[1]["id"].as_u64(), "{tail:?}");
    let all = r.events("limit=10000").await;
    assert_eq!(all.last(), tail.last());
    let (code, _) = r.get("/api/v1/events?tail=2&since=1").await;
    assert_eq!(code, 400);
    // The page and its parts carry a policy that forbids inline script and framing.
    let page = r
        .client
        .get(format!("{}/", r.url))
        .send()
        .await
        .expect("page");
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    r.shutdown().await;
}
