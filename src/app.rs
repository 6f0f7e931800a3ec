//! Wiring: builds the store, metrics, backends and one reconciler task per service, and serves
//! HTTP on an already-bound listener until `shutdown` resolves. Tests bind `127.0.0.1:0` and
//! pass the listener in, so they never race for a port.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::info;

use std::sync::atomic::AtomicUsize;

use crate::cluster::Cluster;
use crate::config::{Config, ServerLimits};
use crate::http::{auth::Auth, routes, AppState};
use crate::metrics::Metrics;
use crate::reconcile::Services;
use crate::reconcile::{Context, ServiceRuntime};
use crate::status::StatusBoard;
use crate::store::{Store, StoreError};
use crate::supervisor::{Shared, Supervisor};
use crate::tls::Tls;

/// Why the responder could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    /// A backend client could not be built from the (validated) config.
    #[error("backend: {0}")]
    Backend(String),
}

/// Runs the responder until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish, and stops the reconcilers (a step in flight is abandoned; the next start
/// observes the world and carries on from there). SIGHUP reloads the config file
/// ([`Supervisor::reload`]) from the moment this is called.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    // First, so that a SIGHUP during the start is a reload, not the end of the process.
    let hup = crate::supervisor::sighup()?;
    let mut store = Store::open(&config.storage.path, config.storage.retention())?;
    info!(path = %store.path().display(), journal = store.journal_len(), firing = store.firing().len(), "storage open");
    let status = StatusBoard::default();
    let mut metrics = Metrics::new();
    let cluster = config.cluster.clone().map(|c| {
        store = store.clone().with_node(&c.name);
        Cluster::new(c, metrics.register_cluster())
    });
    let metrics = Arc::new(metrics);
    let services: Vec<ServiceRuntime> = config
        .services
        .iter()
        .map(|(name, cfg)| ServiceRuntime::new(name, Arc::new(cfg.clone())))
        .collect::<Result<_, _>>()
        .map_err(AppError::Backend)?;
    let ctx = Context {
        store: store.clone(),
        status: status.clone(),
        metrics: metrics.clone(),
        settings: config.reconcile.clone(),
        dry_run: config.dry_run,
        cluster: cluster.clone(),
    };
    if config.dry_run {
        tracing::warn!("dry run: plans are recorded, no step is executed");
    }
    let stop = CancellationToken::new();
    let shared = Shared {
        ctx,
        services: Services::new(services),
        auth: Arc::new(ArcSwap::from_pointee(config.auth.clone())),
        max_body_bytes: Arc::new(AtomicUsize::new(config.webhook.max_body_bytes)),
        tls: config.tls_loaded.clone(),
    };
    let (services, auth, max_body_bytes) = (
        shared.services.clone(),
        Auth::new(shared.auth.clone()),
        shared.max_body_bytes.clone(),
    );
    let tls = config.tls_loaded.clone();
    let limits = config.server.clone();
    let supervisor = Supervisor::start(config, shared, stop.clone());
    let state = AppState {
        store: store.clone(),
        status,
        metrics,
        services,
        cluster,
        auth,
        max_body_bytes,
        supervisor: supervisor.clone(),
    };
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let server = http_server(listener, &limits, tls.as_ref(), state)?;
    let handle = server.handle();
    info!(%addr, tls = tls.is_some(), "listening");
    let server = tokio::spawn(server);
    let side = [
        tokio::spawn(crate::supervisor::reload_on_sighup(
            supervisor.clone(),
            hup,
            stop.clone(),
        )),
        tokio::spawn(supervisor.clone().feed_watchdog(stop.clone())),
    ];
    crate::systemd::ready();

    shutdown.await;
    info!("shutting down");
    crate::systemd::stopping();
    handle.stop(true).await;
    stop.cancel();
    supervisor.join().await;
    for t in side {
        let _ = t.await;
    }
    let served = match server.await {
        Ok(r) => r.map_err(AppError::Io),
        Err(e) => Err(AppError::Io(std::io::Error::other(e))),
    };
    // Everything else holding the store is gone now: let the writer finish and let go of the
    // database before returning.
    drop(supervisor);
    store.close(std::time::Duration::from_secs(5)).await;
    served
}

/// The HTTP server on `listener`, started but not yet polled: the routes, the connection
/// limits, TLS when configured. Errors: the TLS material or the listener cannot be used.
fn http_server(
    listener: TcpListener,
    limits: &ServerLimits,
    tls: Option<&Tls>,
    state: AppState,
) -> Result<actix_web::dev::Server, AppError> {
    let limits = limits.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .configure(routes)
    })
    .workers(limits.workers)
    .max_connections(limits.max_connections)
    .client_request_timeout(limits.request_timeout)
    .client_disconnect_timeout(limits.disconnect_timeout)
    .keep_alive(limits.keep_alive)
    .disable_signals()
    .shutdown_timeout(5);
    let server = match tls {
        Some(tls) => {
            let sc = tls
                .server_config()
                .map_err(|e| AppError::Io(std::io::Error::other(e)))?;
            server.listen_rustls_0_23(listener, sc)?
        }
        None => server.listen(listener)?,
    }
    .run();
    Ok(server)
}
