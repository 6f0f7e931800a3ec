//! The `failover-responder` binary: `serve` and `check-config`. anyhow lives only here.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use failover_responder::config::Config;

#[derive(Parser)]
#[command(
    name = "failover-responder",
    version,
    about = "Alert-driven failover: Alertmanager webhooks in, Docker and HAProxy reconciled out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the webhook and run the reconcilers.
    Serve {
        /// Configuration file (YAML, or TOML by extension).
        #[arg(long = "config.file", value_name = "PATH")]
        config_file: PathBuf,
        /// Overrides listen_address from the config.
        #[arg(long = "web.listen-address", value_name = "HOST:PORT")]
        listen_address: Option<SocketAddr>,
        /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it per module.
        #[arg(long = "log.level", default_value = "info")]
        log_level: String,
        #[arg(long = "log.format", value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a configuration and exit: 0 with a summary, 1 listing every problem.
    CheckConfig {
        #[arg(long = "config.file", value_name = "PATH")]
        config_file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config_file } => check_config(&config_file),
        Command::Serve {
            config_file,
            listen_address,
            log_level,
            log_format,
        } => {
            init_tracing(&log_level, log_format);
            match serve(&config_file, listen_address) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("failover-responder: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            println!("{}: OK, {} service(s)", path.display(), cfg.services.len());
            for (name, s) in &cfg.services {
                let containers = s.docker.as_ref().map_or(0, |d| d.containers.len());
                let (apis, servers) = s
                    .haproxy
                    .as_ref()
                    .map_or((0, 0), |h| (h.runtime_api.len(), h.cloud_servers.len()));
                println!(
                    "  {name}: {} failover matcher(s), {} failback matcher(s), {containers} container(s), {servers} cloud server(s) on {apis} HAProxy",
                    s.failover_matchers.len(),
                    s.failback_matchers.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: {errors}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn serve(path: &std::path::Path, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let addr = listen.unwrap_or(config.listen_address);
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    failover_responder::app::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// SIGINT or SIGTERM (systemd's stop).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
