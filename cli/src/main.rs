use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use memobuild_cas::MetadataConfig;
use memobuild_cli::build::{self, BuildArgs, PruneArgs};
use memobuild_cli::cluster::{self, BuildsCommand};
use memobuild_cli::config::{default_state_dir, OperationStoreConfig, SchedulerSection, ServerConfig, WorkerSection};
use memobuild_cli::credentials::ClientArgs;
use memobuild_cli::graph::{self, GraphFormat};
use memobuild_cli::remote::{self, Endpoint, RemoteCommand};
use memobuild_cli::security::{Security, ServerSecurityArgs};
use memobuild_cli::server::{self, Listeners};
use memobuild_cli::telemetry::{LogFormat, Telemetry};
use tokio::net::TcpListener;

/// MemoBuild: container image builds and a Remote Execution API cluster.
#[derive(Parser)]
#[command(name = "memobuild", version, about)]
struct Cli {
    /// How log lines are written: text, or json (one object per line, with
    /// the build, step and operation of the spans around it).
    #[arg(long, global = true, value_enum, env = "MEMOBUILD_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Send traces to this OTLP/gRPC collector, e.g. http://collector:4317
    /// (a server's config may set `otlp_endpoint` instead).
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// All-in-one node on embedded defaults: CAS, action cache, ByteStream.
    Server(ServerArgs),
    /// The CAS role of a cluster: CAS, ByteStream, action cache.
    Cas(ServerArgs),
    /// The scheduler role: Execution and Operations; proxies the CAS role.
    Scheduler(SchedulerArgs),
    /// The worker role: runs actions for a scheduler.
    Worker(WorkerArgs),
    /// Build an image from a Dockerfile on this machine (flags as docker buildx build).
    Build(BuildArgs),
    /// Build on a cluster, and follow, list or cancel its builds.
    Remote {
        #[command(subcommand)]
        command: RemoteCommand,
    },
    /// The cluster at a glance: queue, workers' slots, builds, step cache.
    Status {
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// The cluster's workers and their load.
    Workers {
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// List, inspect or cancel the cluster's builds.
    Builds {
        #[command(subcommand)]
        command: BuildsCommand,
    },
    /// Print a completion script for a shell (bash, zsh, fish, ...).
    Completions { shell: clap_complete::Shell },
    /// Tell why the steps of the last build of a Dockerfile missed the cache.
    ExplainCache(BuildArgs),
    /// Print a Dockerfile's build graph (stages, steps, keys) without building.
    Graph(GraphArgs),
    /// Remove build cache from the state dir (flags as docker builder prune).
    ///
    /// Cache entries are the roots: --filter until=DURATION, --keep-storage and
    /// --all pick the entries to remove, then every blob that no remaining entry
    /// reaches is removed (with no flag, only those). Layers stay while a cached
    /// step built on them stays, and so do their unpacked snapshots in
    /// containerd (all of them when a layer's diff id is unknown). Refuses
    /// while a build uses the state dir.
    Prune(PruneArgs),
    /// Removes what a build left: its last RUN steps' containers and its
    /// network (`memobuild build` hands them over rather than waiting).
    #[command(name = build::FINISH_STEPS, hide = true)]
    FinishSteps,
}

#[derive(Args)]
struct GraphArgs {
    /// The build context directory.
    context: PathBuf,
    /// The Dockerfile [default: CONTEXT/Dockerfile].
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Build only this stage and what it needs.
    #[arg(long)]
    target: Option<String>,
    /// A build argument, NAME=VALUE (repeatable).
    #[arg(long = "build-arg", value_parser = parse_property)]
    build_args: Vec<(String, String)>,
    #[arg(long, value_enum, default_value = "text")]
    format: GraphFormat,
    /// Where the context scan keeps its stat cache [default: $XDG_STATE_HOME/memobuild].
    #[arg(long, env = "MEMOBUILD_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Args)]
struct SchedulerArgs {
    /// TOML configuration: its `listen`, `admin_listen`, `[scheduler]`,
    /// `[auth]` and `[tls]`; flags given here override it.
    #[arg(long, env = "MEMOBUILD_CONFIG", conflicts_with_all = ["state_dir", "postgres", "lease_seconds"])]
    config: Option<PathBuf>,
    /// gRPC address to listen on [default: 127.0.0.1:8981].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// HTTP address for /metrics, /healthz and /readyz.
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    /// The CAS role, e.g. grpc://cas:8980.
    #[arg(long, env = "MEMOBUILD_CAS")]
    cas: String,
    /// Where the operation state lives (SQLite), unless --postgres is given.
    #[arg(long, env = "MEMOBUILD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Keep operation state in PostgreSQL (postgres://user@host/db).
    #[arg(long, env = "MEMOBUILD_POSTGRES")]
    postgres: Option<String>,
    /// Seconds a worker may go silent before its actions are requeued.
    #[arg(long, default_value_t = 30)]
    lease_seconds: u64,
    /// The PostgreSQL database of the CAS role's blob metadata (its
    /// `DATABASE_URL`): the scheduler pins there what queued and running
    /// work needs, so the CAS never evicts it. Default: the PostgreSQL
    /// metadata of the evicting stores in --config's `[cas]`; without
    /// either nothing is pinned.
    #[arg(long, env = "MEMOBUILD_CAS_METADATA")]
    cas_metadata: Option<String>,
    /// The schema of that metadata (the CAS role's `DATABASE_SCHEMA`).
    #[arg(long, env = "MEMOBUILD_CAS_METADATA_SCHEMA", default_value = "memobuild", requires = "cas_metadata")]
    cas_metadata_schema: String,
    #[command(flatten)]
    security: ServerSecurityArgs,
    /// What this scheduler presents to the CAS role.
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct WorkerArgs {
    /// TOML configuration: its `[worker]` section and `admin_listen`; flags
    /// given here override it.
    #[arg(long, env = "MEMOBUILD_CONFIG", conflicts_with = "state_dir")]
    config: Option<PathBuf>,
    /// HTTP address for /metrics, /healthz and /readyz.
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    /// The scheduler to serve, e.g. grpc://scheduler:8981.
    #[arg(long, env = "MEMOBUILD_SCHEDULER")]
    scheduler: String,
    /// The CAS role, e.g. grpc://cas:8980.
    #[arg(long, env = "MEMOBUILD_CAS")]
    cas: String,
    /// What this worker presents to the scheduler and the CAS.
    #[command(flatten)]
    client: ClientArgs,
    /// Where the worker keeps its file cache and action directories.
    #[arg(long, env = "MEMOBUILD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Actions run at once [default: the number of CPUs].
    #[arg(long)]
    slots: Option<u32>,
    /// Bytes of the local input file cache [default: 10 GiB].
    #[arg(long)]
    cache_max_bytes: Option<u64>,
    /// A platform property offered to actions, NAME=VALUE (repeatable).
    #[arg(long = "property", value_parser = parse_property)]
    properties: Vec<(String, String)>,
    /// containerd's socket for Dockerfile steps [default: /run/containerd/containerd.sock,
    /// else a private containerd under the state dir, started on the first RUN].
    #[arg(long, env = "CONTAINERD_ADDRESS")]
    containerd_address: Option<PathBuf>,
    /// Run RUN steps in a user namespace: ids 0 to SIZE-1 (default 65536) are host ids from HOST_ID up.
    #[arg(long, value_name = "HOST_ID[:SIZE]")]
    userns_remap: Option<String>,
    /// What runs RUN steps' containers: auto (crun when it can run here, else runc), runc, crun
    /// or a path [default: auto].
    #[arg(long, value_name = "RUNTIME")]
    oci_runtime: Option<String>,
    /// Run only REAPI actions, no Dockerfile steps (no containerd needed).
    #[arg(long)]
    no_dockerfile_steps: bool,
    /// Refuse RUN steps on the default network (outbound access): builds must use --network none.
    #[arg(long)]
    forbid_egress: bool,
    /// Let RUN steps use this host's network (builds also need --allow network.host).
    #[arg(long)]
    allow_host_network: bool,
    /// A network RUN steps never reach, e.g. the cluster's pod range (repeatable).
    #[arg(long = "blocked-network", value_name = "CIDR")]
    blocked_networks: Vec<memobuild_worker::network::Ipv4Cidr>,
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

#[derive(Args)]
struct ServerArgs {
    /// TOML configuration; flags given here override it.
    #[arg(long, env = "MEMOBUILD_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC address to listen on [default: 127.0.0.1:8980].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// HTTP address for /metrics, /healthz and /readyz.
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    /// Where embedded state lives when no --config is given
    /// [default: $XDG_STATE_HOME/memobuild].
    #[arg(long, env = "MEMOBUILD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    security: ServerSecurityArgs,
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
        self.security.apply(&mut config.auth, &mut config.tls);
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
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain of contexts, without a backtrace: messages name the problem.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A build shows its own progress; servers log what they do.
    let default_level = match cli.command {
        Command::Build(_)
        | Command::Remote { .. }
        | Command::Status { .. }
        | Command::Workers { .. }
        | Command::Builds { .. }
        | Command::Completions { .. }
        | Command::ExplainCache(_)
        | Command::Graph(_)
        | Command::Prune(_) => "warn",
        _ => "info",
    };
    let (service, config_otlp) = match &cli.command {
        Command::Server(args) | Command::Cas(args) => {
            let configured = args.config.as_deref().and_then(|path| ServerConfig::load(path).ok());
            ("memobuild-server", configured.and_then(|c| c.otlp_endpoint))
        }
        Command::Scheduler(_) => ("memobuild-scheduler", None),
        Command::Worker(_) => ("memobuild-worker", None),
        _ => ("memobuild", None),
    };
    let otlp = cli.otlp_endpoint.clone().or(config_otlp);
    let telemetry = Telemetry::init(default_level, cli.log_format, otlp.as_deref(), service)?;
    let result = dispatch(cli.command).await;
    telemetry.shutdown();
    result
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Build(args) => {
            let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
            let quiet = args.quiet;
            let outcome = build::run(args, state_dir).await?;
            // -q: the image id alone, as docker build -q; else the manifest digest.
            let printed = if quiet { outcome.image_id } else { outcome.image_digest };
            if let Some(digest) = printed {
                std::io::stdout().write_all(format!("{digest}\n").as_bytes())?;
            }
            Ok(())
        }
        Command::Remote { command } => {
            if let Some(text) = remote::run(command).await? {
                std::io::stdout().write_all(format!("{text}\n").as_bytes())?;
            }
            Ok(())
        }
        Command::Status { endpoint } => print(cluster::status_text(&endpoint).await?),
        Command::Workers { endpoint } => print(cluster::workers_text(&endpoint).await?),
        Command::Builds { command } => match cluster::builds(command).await? {
            Some(text) => print(text),
            None => Ok(()),
        },
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "memobuild", &mut script);
            std::io::stdout().write_all(&script)?;
            Ok(())
        }
        Command::FinishSteps => build::finish_steps().await,
        Command::ExplainCache(args) => {
            let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
            let text = build::explain_cache(&args, &state_dir)?;
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(())
        }
        Command::Prune(args) => {
            let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
            if !args.force && !confirm_prune(&args, &state_dir)? {
                return Ok(());
            }
            let report = build::prune(&args, &state_dir).await.map_err(|e| anyhow::anyhow!("{}", e.message()))?;
            let mut text = String::new();
            for line in report.removed.iter().filter(|_| args.verbose) {
                text.push_str(&format!("{line}\n"));
            }
            text.push_str(&format!("{}\n", report.summary()));
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(())
        }
        Command::Server(args) => {
            let mut config = args.config()?;
            config.scheduler = config.scheduler.map(SchedulerSection::expand_env).transpose()?;
            serve(config).await
        }
        Command::Cas(args) => serve(args.config()?.cache_only()).await,
        Command::Scheduler(args) => {
            let (section, listen, admin, mut auth, mut tls, pins_from_config) = match &args.config {
                Some(path) => {
                    let config = ServerConfig::load(path)?;
                    let section = config.scheduler_section(path)?;
                    let pins = config.cas.shared_eviction_metadata();
                    (section, config.listen, config.admin_listen, config.auth, config.tls, pins)
                }
                None => (scheduler_section(&args), SCHEDULER_LISTEN.into(), None, None, None, Vec::new()),
            };
            let (listen, admin) = (args.listen.unwrap_or(listen), args.admin_listen.or(admin));
            args.security.apply(&mut auth, &mut tls);
            let security = Security::from_config(auth.as_ref(), tls.as_ref())?;
            let credentials = args.client.credentials()?;
            let listeners = Listeners::bind(listen, admin).await?;
            let pins = match args.cas_metadata {
                Some(url) => vec![MetadataConfig::Postgres { url, schema: Some(args.cas_metadata_schema) }],
                None => pins_from_config,
            };
            let cas = server::CasRole { endpoint: &args.cas, credentials: &credentials, pins };
            server::run_scheduler(cas, section, security, listeners, shutdown_signal())
                .await
                .context("memobuild scheduler")
        }
        Command::Graph(args) => {
            let cache_dir = args.state_dir.unwrap_or_else(default_state_dir).join("context-cache");
            let build_args = args.build_args.into_iter().collect();
            let graph = graph::plan(&args.context, args.file.as_deref(), args.target, build_args, &cache_dir)?;
            std::io::stdout().write_all(&graph::render(&graph, args.format))?;
            Ok(())
        }
        Command::Worker(args) => {
            let (section, admin) = worker_section(&args)?;
            let credentials = args.client.credentials()?;
            let admin = match admin {
                Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?),
                None => None,
            };
            server::run_worker_role(&args.scheduler, &args.cas, &credentials, section, admin, shutdown_signal())
                .await
                .context("memobuild worker")
        }
    }
}

fn print(text: String) -> anyhow::Result<()> {
    std::io::stdout().write_all(format!("{text}\n").as_bytes())?;
    Ok(())
}

/// Where `memobuild scheduler` listens without --config or --listen.
const SCHEDULER_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 8981);

/// `[scheduler]` from the flags, when no --config is given.
fn scheduler_section(args: &SchedulerArgs) -> SchedulerSection {
    let store = match (&args.postgres, &args.state_dir) {
        (Some(url), _) => OperationStoreConfig::Postgres { url: url.clone(), schema: None },
        (None, dir) => {
            OperationStoreConfig::Sqlite { path: dir.clone().unwrap_or_else(default_state_dir).join("scheduler.db") }
        }
    };
    SchedulerSection { store, lease_seconds: args.lease_seconds, ..SchedulerSection::default() }
}

/// `[worker]` and the admin address: the --config file's (or the defaults
/// under the state dir), with the flags given on top.
fn worker_section(args: &WorkerArgs) -> anyhow::Result<(WorkerSection, Option<std::net::SocketAddr>)> {
    let (mut section, admin) = match &args.config {
        Some(path) => {
            let config = ServerConfig::load(path)?;
            (config.worker_section(path)?, config.admin_listen)
        }
        None => (WorkerSection::new(args.state_dir.clone().unwrap_or_else(default_state_dir).join("worker")), None),
    };
    section.slots = args.slots.or(section.slots);
    section.cache_max_bytes = args.cache_max_bytes.unwrap_or(section.cache_max_bytes);
    section.properties.extend(args.properties.iter().cloned());
    section.containerd_address = args.containerd_address.clone().or(section.containerd_address);
    section.userns_remap = args.userns_remap.clone().or(section.userns_remap);
    section.oci_runtime = args.oci_runtime.clone().or(section.oci_runtime);
    section.dockerfile_steps &= !args.no_dockerfile_steps;
    section.network.egress &= !args.forbid_egress;
    section.network.host |= args.allow_host_network;
    section.network.blocked.extend(args.blocked_networks.iter().copied());
    Ok((section, args.admin_listen.or(admin)))
}

/// Asks before a prune, as docker does; refuses when no one can answer.
fn confirm_prune(args: &PruneArgs, state_dir: &Path) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "refusing to prune {} without confirmation: stdin is not a terminal (pass -f/--force)",
            state_dir.display()
        );
    }
    let what = if args.all { "all build cache" } else { "build cache that matches the flags" };
    eprint!("This will remove {what} from {}.\nAre you sure? [y/N] ", state_dir.display());
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let listeners = Listeners::bind(config.listen, config.admin_listen).await?;
    server::run(config, listeners, shutdown_signal()).await.context("memobuild server")
}
