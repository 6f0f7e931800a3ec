//! Containers found under a configured name that are not what the config would create, against
//! the real Docker engine and a real HAProxy: one made by someone else from another image (the
//! field report: it was started and opened), with `recreate: never` (the default) and
//! `recreate: always`; and the responder's own container after the config's image changed, or
//! after the image's tag was rebuilt.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{CreateContainerOptions, InspectContainerOptions};
use chrono::Utc;
use common::*;
use failover_responder::backend::docker::{MANAGED_LABEL, SPEC_LABEL};
use failover_responder::config::{Config, Format, Recreate};
use failover_responder::plan::ContainerState;

/// Another image than the configured one: serves "other".
const OTHER_IMAGE: &str = "fr-test-other:latest";
/// The image a changed config names: serves "cloud-v2".
const V2_IMAGE: &str = "fr-test-api-v2:latest";
const SERVICE: &str = "onprem-api";

/// What a test needs to know of a container.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: String,
    image: String,
    /// The ID of the image it runs.
    image_id: String,
    labels: HashMap<String, String>,
    running: bool,
    /// `0001-01-01T00:00:00Z` until it was first started.
    started_at: String,
}

impl Seen {
    fn ours(&self) -> bool {
        self.labels.get(MANAGED_LABEL).map(String::as_str) == Some(SERVICE)
            && self.labels.contains_key(SPEC_LABEL)
    }
}

async fn seen(d: &bollard::Docker, name: &str) -> Option<Seen> {
    let i = d
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
        .ok()?;
    let config = i.config.unwrap_or_default();
    let state = i.state.unwrap_or_default();
    Some(Seen {
        id: i.id.unwrap_or_default(),
        image: config.image.unwrap_or_default(),
        image_id: i.image.unwrap_or_default(),
        labels: config.labels.unwrap_or_default(),
        running: state.running.unwrap_or(false),
        started_at: state.started_at.unwrap_or_default(),
    })
}

/// Creates a stopped container named `name` from `image` without any label, publishing the
/// world's cloud port as the responder's would: if it were ever started, HAProxy's cloud
/// server would reach it.
async fn create_foreign(w: &World, image: &str) -> Seen {
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        host_config: Some(HostConfig {
            port_bindings: Some(HashMap::from([(
                "8080/tcp".to_string(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(w.cloud_port.to_string()),
                }]),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptions {
        name: Some(w.container.clone()),
        ..Default::default()
    };
    w.docker
        .create_container(Some(opts), body)
        .await
        .expect("create the foreign container");
    let s = seen(&w.docker, &w.container)
        .await
        .expect("foreign container");
    assert!(!s.running && !s.labels.contains_key(MANAGED_LABEL), "{s:?}");
    s
}

/// The world's config with `keys` added to its container (`key: value` lines) and its image
/// replaced by `image`.
fn config(w: &World, image: &str, keys: &[&str]) -> ConfigBuilder {
    let b = w
        .configure()
        .hold_down("0s")
        .container_key(&format!("image: {image}"));
    keys.iter().fold(b, |b, k| b.container_key(k))
}

/// The state of the service's (only) container.
fn container(svc: &ServiceView) -> &ContainerState {
    &svc.status.observed.containers[0].state
}

/// Polls the service's status until `done` says so, checking `safe` on every poll.
async fn watch<F, Fut>(
    r: &Responder,
    what: &str,
    done: impl Fn(&ServiceView) -> bool,
    safe: F,
) -> ServiceView
where
    F: Fn(ServiceView) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    eventually(what, Duration::from_secs(60), || async {
        let svc = r.service_view(SERVICE).await;
        safe(svc.clone()).await;
        done_if(done(&svc), svc)
    })
    .await
}

/// The safety invariant of these tests: whenever cloud1 is open, what it sends traffic to is
/// the responder's own running container of `image`.
async fn open_only_in_front_of_ours(w: &World, image: &str, svc: &ServiceView) {
    if w.cloud_open().await {
        let now = seen(&w.docker, &w.container).await;
        assert!(
            now.as_ref()
                .is_some_and(|s| s.ours() && s.image == image && s.running),
            "cloud1 open in front of {now:?}:\n{svc:#?}"
        );
    }
}

fn converged_in(mode: Mode) -> impl Fn(&ServiceView) -> bool {
    move |svc| svc.desired_mode() == Some(mode) && svc.status.converged
}

/// A first failover and failback on alerts alone, each watched until converged.
async fn fail_over_and_back(r: &Responder) {
    let no_safe = |_: ServiceView| async {};
    let t0 = Utc::now();
    assert_eq!(
        r.post_alerts(&down_body(t0, None)).await.status().as_u16(),
        202
    );
    watch(r, "first failover", converged_in(Mode::Cloud), no_safe).await;
    assert_eq!(
        r.post_alerts(&down_body(t0, Some(Utc::now())))
            .await
            .status()
            .as_u16(),
        202
    );
    watch(r, "failback", converged_in(Mode::Onprem), no_safe).await;
}

/// With on-prem stopped, waits until the frontend answers `body` (from the cloud container).
async fn frontend_answers(w: &mut World, body: &str) {
    w.onprem.kill();
    let url = w.haproxy.frontend();
    eventually(
        &format!("the frontend answers {body:?}"),
        Duration::from_secs(30),
        || async { (get_text(&url).await.as_deref() == Some(body)).then_some(()) },
    )
    .await;
}

/// The field report: a stopped container with the configured name, from another image and
/// without the responder's label. With `recreate: never` (the default) a failover refuses it:
/// the service shows as blocked, naming the container, both images and the fix; the cloud
/// server is never opened (checked on every poll); the container is never started or removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_container_with_recreate_never_blocks_failover() {
    let Some(w) = World::start("foreign-never").await else {
        return;
    };
    ensure_image(OTHER_IMAGE, "other");
    let foreign = create_foreign(&w, OTHER_IMAGE).await;
    let r = Responder::start(&config(&w, IMAGE, &[]).yaml(), w.dir.path()).await;
    let safe = |svc: ServiceView| {
        let w = &w;
        let foreign = &foreign;
        async move {
            assert!(
                !w.cloud_open().await,
                "cloud1 opened in front of a foreign container:\n{svc:#?}"
            );
            let now = seen(&w.docker, &w.container).await;
            assert_eq!(
                now.as_ref(),
                Some(foreign),
                "the foreign container was touched"
            );
        }
    };
    let blocked_names_it = |svc: &ServiceView| {
        svc.status.blocked.iter().any(|m| {
            m.contains(&w.container)
                && m.contains(OTHER_IMAGE)
                && m.contains(IMAGE)
                && m.contains("not created by the responder")
                && m.contains("recreate: always")
        })
    };

    // Already at rest on-prem the conflict is said, before a failover needs the container.
    let svc = watch(
        &r,
        "on-prem status names the conflict",
        |svc| svc.desired_mode() == Some(Mode::Onprem) && blocked_names_it(svc),
        safe,
    )
    .await;
    assert!(!svc.status.converged);

    assert_eq!(
        r.post_alerts(&down_body(Utc::now(), None))
            .await
            .status()
            .as_u16(),
        202
    );
    let svc = watch(
        &r,
        "cloud status blocked, naming the conflict",
        |svc| svc.desired_mode() == Some(Mode::Cloud) && blocked_names_it(svc),
        safe,
    )
    .await;
    println!("blocked: {:?}", svc.status.blocked);
    let c = container(&svc);
    assert!(
        matches!(
            c,
            ContainerState::Mismatch {
                ours: false,
                may_recreate: false,
                ..
            }
        ),
        "{c:?}"
    );

    // Several more passes: still nothing started, removed or opened; no step was even tried.
    for _ in 0..3 {
        let before = r.service_view(SERVICE).await.status.last_reconcile_at;
        watch(
            &r,
            "another pass",
            |svc| svc.status.last_reconcile_at != before && blocked_names_it(svc),
            safe,
        )
        .await;
    }
    let svc = r.service_view(SERVICE).await;
    assert!(!svc.status.converged);
    assert!(svc.actions().is_empty(), "steps were run: {svc:#?}");
    assert_eq!(
        get_text(&w.haproxy.frontend()).await.as_deref(),
        Some("onprem")
    );
    r.shutdown().await;
}

/// The same container with `recreate: always`: removed and created from the config (the
/// responder's labels, the configured image), and only then opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_container_with_recreate_always_is_replaced_before_opening() {
    let Some(mut w) = World::start("foreign-always").await else {
        return;
    };
    ensure_image(OTHER_IMAGE, "other");
    let foreign = create_foreign(&w, OTHER_IMAGE).await;
    let r = Responder::start(
        &config(&w, IMAGE, &["recreate: always"]).yaml(),
        w.dir.path(),
    )
    .await;
    // Whenever cloud1 is open, what it sends traffic to is the configured container.
    let safe = |svc: ServiceView| {
        let w = &w;
        async move { open_only_in_front_of_ours(w, IMAGE, &svc).await }
    };
    // On-prem, a container the next failover may replace blocks nothing: left alone.
    watch(&r, "converged on-prem", converged_in(Mode::Onprem), safe).await;
    assert_eq!(seen(&w.docker, &w.container).await.as_ref(), Some(&foreign));

    assert_eq!(
        r.post_alerts(&down_body(Utc::now(), None))
            .await
            .status()
            .as_u16(),
        202
    );
    let svc = watch(&r, "converged in cloud", converged_in(Mode::Cloud), safe).await;
    let now = seen(&w.docker, &w.container).await.expect("container");
    assert_ne!(now.id, foreign.id, "the foreign container was reused");
    assert!(now.ours() && now.image == IMAGE && now.running, "{now:?}");
    assert_eq!(
        svc.actions(),
        ["recreate_container", "wait_healthy", "server_ready"],
        "{svc:#?}"
    );
    let gone = w
        .docker
        .inspect_container(&foreign.id, None::<InspectContainerOptions>)
        .await;
    assert!(gone.is_err(), "the foreign container is still there");
    frontend_answers(&mut w, "cloud").await;
    r.shutdown().await;
}

/// The responder's own container, created from the config, then the config's image changes
/// (a new responder with the new config): the next failover recreates it from the new image
/// instead of starting the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_container_is_recreated_when_the_configured_image_changes() {
    let Some(mut w) = World::start("image-changed").await else {
        return;
    };
    ensure_image(V2_IMAGE, "cloud-v2");
    let r = Responder::start(&config(&w, IMAGE, &[]).yaml(), w.dir.path()).await;
    fail_over_and_back(&r).await;
    let old = seen(&w.docker, &w.container).await.expect("container");
    assert!(old.ours() && old.image == IMAGE && !old.running, "{old:?}");
    r.shutdown().await;

    let r = Responder::start(&config(&w, V2_IMAGE, &[]).yaml(), w.dir.path()).await;
    let safe = |svc: ServiceView| {
        let w = &w;
        async move { open_only_in_front_of_ours(w, V2_IMAGE, &svc).await }
    };
    // At rest it shows as ours but stale; nothing to do until the failover.
    let svc = watch(
        &r,
        "on-prem with the new config",
        converged_in(Mode::Onprem),
        safe,
    )
    .await;
    let c = container(&svc);
    assert!(
        matches!(c, ContainerState::Mismatch { ours: true, reason, .. } if reason.contains(V2_IMAGE)),
        "{c:?}"
    );
    assert_eq!(
        r.post_alerts(&down_body(Utc::now(), None))
            .await
            .status()
            .as_u16(),
        202
    );
    let svc = watch(
        &r,
        "failover with the new image",
        converged_in(Mode::Cloud),
        safe,
    )
    .await;
    assert_eq!(
        svc.actions(),
        ["recreate_container", "wait_healthy", "server_ready"],
        "{svc:#?}"
    );
    let now = seen(&w.docker, &w.container).await.expect("container");
    assert!(now.id != old.id && now.image == V2_IMAGE, "{now:?}");
    frontend_answers(&mut w, "cloud-v2").await;
    r.shutdown().await;
}

/// Removes images when dropped (after the container using them).
struct ImageGuard {
    container: String,
    images: Vec<String>,
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        drop(ContainerGuard(self.container.clone()));
        for image in &self.images {
            let _ = std::process::Command::new("curl")
                .args([
                    "-fsS",
                    "-X",
                    "DELETE",
                    "--unix-socket",
                    DOCKER_SOCK,
                    &format!("http://localhost/images/{image}?force=1"),
                ])
                .output();
        }
    }
}

/// The config is unchanged but the image's tag was rebuilt (a new build of `:latest`): the
/// container still runs the old build, so the next failover recreates it from the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_container_is_recreated_when_the_tag_names_a_new_build() {
    let Some(mut w) = World::start("tag-moved").await else {
        return;
    };
    let image = format!("fr-test-moving-{}:latest", std::process::id());
    let mut images = ImageGuard {
        container: w.container.clone(),
        images: vec![image.clone()],
    };
    ensure_image(&image, "build-1");
    let r = Responder::start(&config(&w, &image, &[]).yaml(), w.dir.path()).await;
    fail_over_and_back(&r).await;
    let old = seen(&w.docker, &w.container).await.expect("container");
    // The first build is only the old container's once the tag moves: removed by ID.
    images.images.push(old.image_id.clone());

    // Rebuild the same tag with another body: a new image ID under the same reference.
    let out = std::process::Command::new("bash")
        .arg(format!(
            "{}/scripts/build-image.sh",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args([image.as_str(), "build-2"])
        .env("FORCE", "1")
        .output()
        .expect("build-image.sh");
    assert!(out.status.success(), "{out:?}");
    let no_safe = |_: ServiceView| async {};
    watch(
        &r,
        "the container shows as built from an older image",
        |svc| {
            matches!(container(svc), ContainerState::Mismatch { reason, .. }
                if reason.contains("tag names another image"))
        },
        no_safe,
    )
    .await;

    let t1 = Utc::now();
    assert_eq!(
        r.post_alerts(&down_body(t1, None)).await.status().as_u16(),
        202
    );
    let svc = watch(&r, "failover", converged_in(Mode::Cloud), no_safe).await;
    assert!(
        svc.actions().contains(&"recreate_container".to_string()),
        "{svc:#?}"
    );
    let now = seen(&w.docker, &w.container).await.expect("container");
    assert_ne!(now.id, old.id, "the old build was started again");
    frontend_answers(&mut w, "build-2").await;
    r.shutdown().await;
}

/// `recreate` is `never` unless set; a value other than `never` or `always` is refused with
/// its key.
#[test]
fn recreate_key_defaults_to_never() {
    let yaml = |extra: &str| {
        format!(
            "auth: {{insecure_no_auth: true}}\nservices:\n  a:\n    failover_on: ['a=\"b\"']\n    \
             docker: {{containers: [{{name: c, image: i{extra}}}]}}\n"
        )
    };
    let recreate = |cfg: Config| {
        cfg.services["a"]
            .docker
            .as_ref()
            .map(|d| d.containers[0].recreate)
    };
    let cfg = Config::from_str(&yaml(""), Format::Yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recreate(cfg), Some(Recreate::Never));
    let cfg = Config::from_str(&yaml(", recreate: always"), Format::Yaml)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recreate(cfg), Some(Recreate::Always));
    let err = Config::from_str(&yaml(", recreate: sometimes"), Format::Yaml)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("recreate") && err.contains("sometimes"),
        "{err}"
    );
}

/// A container that never answers its health URL: the wait times out and says what Docker last
/// reported of it (`running (starting)`), not only that it timed out; nothing is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_wait_that_times_out_says_what_docker_last_reported() {
    let Some(w) = World::start("health-timeout").await else {
        return;
    };
    let silent = free_port();
    let cfg = config(&w, IMAGE, &[])
        .container_key(&format!("health_url: http://127.0.0.1:{silent}/health"))
        .timeouts("2s", "2s", "1s")
        .yaml();
    assert!(
        cfg.contains(&silent.to_string()) && cfg.contains("healthy: 2s"),
        "{cfg}"
    );
    let r = Responder::start(&cfg, w.dir.path()).await;
    assert_eq!(
        r.post_alerts(&down_body(Utc::now(), None))
            .await
            .status()
            .as_u16(),
        202
    );
    let error = eventually(
        "the health wait times out",
        Duration::from_secs(30),
        || async {
            assert!(
                !w.cloud_open().await,
                "cloud1 opened in front of an unhealthy container"
            );
            r.service_view(SERVICE).await.status.last_error
        },
    )
    .await;
    assert!(
        error.contains("to be healthy (Docker last said") && error.contains("running (starting)"),
        "{error}"
    );
    r.shutdown().await;
}
