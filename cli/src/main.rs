use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use memobuild_cli::config::{default_state_dir, ServerConfig};
use memobuild_cli::server::{self, Listeners};

/// MemoBuild: container image builds and a Remote Execution API cluster.
#[derive(Parser)]
#[command(name = "memobuild", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// All-in-one node on embedded defaults: CAS, action cache, ByteStream.
    Server(ServerArgs),
    /// The CAS role of a cluster (the same services as `server`).
    Cas(ServerArgs),
}

#[derive(Args)]
struct ServerArgs {
    /// TOML configuration; flags given here override it.
    #[arg(long, env = "MEMOBUILD_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC address to listen on [default: 127.0.0.1:8980].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// HTTP address for /metrics and /healthz.
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    /// Where embedded state lives when no --config is given
    /// [default: $XDG_STATE_HOME/memobuild].
    #[arg(long, env = "MEMOBUILD_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

impl ServerArgs {
    fn config(&self) -> anyhow::Result<ServerConfig> {
        let mut config = match (&self.config, &self.state_dir) {
            (Some(path), None) => ServerConfig::load(path)?,
            (Some(_), Some(_)) => {
                anyhow::bail!("--config and --state-dir cannot be combined: the config file names every path")
            }
            (None, dir) => ServerConfig::embedded(&dir.clone().unwrap_or_else(default_state_dir)),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if self.admin_listen.is_some() {
            config.admin_listen = self.admin_listen;
        }
        Ok(config)
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MEMOBUILD_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => serve(args.config()?).await,
        Command::Cas(args) => serve(args.config()?.cache_only()).await,
    }
}

async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config).await?;
    server::run(config, listeners, shutdown_signal()).await.context("memobuild server")
}
