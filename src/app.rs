//! Wiring: builds the store, metrics, backends and one reconciler task per service, and serves
//! HTTP on an already-bound listener until `shutdown` resolves. Tests bind `127.0.0.1:0` and
//! pass the listener in, so they never race for a port.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::http::{auth::Auth, routes, AppState};
use crate::metrics::Metrics;
use crate::reconcile::{run_service, Context, ServiceRuntime};
use crate::resync::Resync;
use crate::status::StatusBoard;
use crate::store::{Store, StoreError};

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
/// observes the world and carries on from there).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
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
    let services = Arc::new(services);
    let mut tasks = spawn_tasks(&config, &ctx, &services, &stop);
    let state = AppState {
        store: store.clone(),
        status,
        metrics,
        services,
        cluster,
        auth: Auth::from_config(&config.auth),
        tls: config.tls_loaded.clone(),
        max_body_bytes: config.webhook.max_body_bytes,
    };
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let server = http_server(listener, &config, state, &mut tasks, &stop)?;
    let handle = server.handle();
    info!(%addr, tls = config.tls_loaded.is_some(), "listening");

    let server = tokio::spawn(server);
    shutdown.await;
    info!("shutting down");
    handle.stop(true).await;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let served = match server.await {
        Ok(r) => r.map_err(AppError::Io),
        Err(e) => Err(AppError::Io(std::io::Error::other(e))),
    };
    // Everything else holding the store is gone now: let the writer finish and let go of the
    // database before returning.
    drop(ctx);
    store.close(std::time::Duration::from_secs(5)).await;
    served
}

/// The HTTP server on `listener`, started but not yet polled: the routes, the connection
/// limits, TLS when configured (its SIGHUP reload task goes onto `tasks`). Errors: the TLS
/// material or the listener cannot be used.
fn http_server(
    listener: TcpListener,
    config: &Config,
    state: AppState,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    stop: &CancellationToken,
) -> Result<actix_web::dev::Server, AppError> {
    let limits = config.server.clone();
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
    let server = match &config.tls_loaded {
        Some(tls) => {
            let sc = tls
                .server_config()
                .map_err(|e| AppError::Io(std::io::Error::other(e)))?;
            tasks.push(tokio::spawn(reload_on_sighup(tls.clone(), stop.clone())));
            server.listen_rustls_0_23(listener, sc)?
        }
        None => server.listen(listener)?,
    }
    .run();
    Ok(server)
}

/// Starts what runs beside the HTTP server until `stop`: one reconciler per service, the
/// readiness check of each, the cluster's campaign (and the wake-up of the reconcilers when it
/// wins), the resync from Alertmanager.
fn spawn_tasks(
    config: &Config,
    ctx: &Context,
    services: &Arc<Vec<ServiceRuntime>>,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for svc in services.iter() {
        tasks.push(tokio::spawn(run_service(
            svc.clone(),
            ctx.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(crate::readiness::run(
            svc.clone(),
            ctx.clone(),
            stop.clone(),
        )));
        if let (Some(watch), Some(f), Some(h)) =
            (&svc.fast_path, &svc.config.fast_path, &svc.config.haproxy)
        {
            // The series exist from the start (0), so rules see a service that never triggered.
            let l = crate::metrics::ServiceLabels {
                service: svc.name.clone(),
            };
            let _ = ctx.metrics.fast_path.triggers.get_or_create(&l);
            let _ = ctx.metrics.fast_path.unconfirmed.get_or_create(&l);
            let _ = ctx.metrics.fast_path.overdue.get_or_create(&l);
            tasks.push(tokio::spawn(crate::fastpath::watch::run(
                svc.name.clone(),
                f.clone(),
                svc.world.haproxy().to_vec(),
                h.backend.clone(),
                watch.clone(),
                svc.wake.clone(),
                stop.clone(),
            )));
        }
    }
    if let Some(c) = &ctx.cluster {
        info!(
            node = c.name(),
            "cluster: campaigning for the leader lease in etcd; acting only while leader"
        );
        tasks.push(tokio::spawn(c.clone().run(stop.clone())));
        tasks.push(tokio::spawn(wake_on_leadership(
            c.clone(),
            services.clone(),
            stop.clone(),
        )));
    }
    if let Some(am) = &config.alertmanager {
        let resync = Resync::new(
            am.clone(),
            ctx.store.clone(),
            ctx.status.clone(),
            ctx.metrics.clone(),
            services.clone(),
        );
        tasks.push(tokio::spawn(resync.run(stop.clone())));
    } else {
        tracing::warn!("alertmanager.url is not set: a lost or stale notification is repaired only by the next one (see the incarnation rules in the README)");
    }
    tasks
}

/// Wakes every service's reconciler when this node becomes leader: a takeover acts at once,
/// not at the next timer.
async fn wake_on_leadership(
    cluster: Cluster,
    services: Arc<Vec<ServiceRuntime>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cluster.gained() => services.iter().for_each(|s| s.wake.notify_one()),
            () = stop.cancelled() => return,
        }
    }
}

/// Reloads the TLS material on SIGHUP until `stop`.
async fn reload_on_sighup(tls: crate::tls::Tls, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; use POST /-/reload to reload certificates");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => match tls.reload() {
                Ok(()) => info!("SIGHUP: TLS certificates reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the previous certificates"),
            },
            () = stop.cancelled() => return,
        }
    }
}
