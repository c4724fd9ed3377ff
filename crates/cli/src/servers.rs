//! `cohort node` and `cohort coordinator`: long-running server processes.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use cohort_coordinator::CoordinatorConfig;
use cohort_coordinator::idempotency::embedded::EmbeddedIdempotency;
use cohort_coordinator::metadata::embedded::EmbeddedMetadata;
use cohort_node::{Durability, NodeConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::settings;
use crate::telemetry;

/// Flags of `cohort node`.
#[derive(Args)]
pub struct NodeArgs {
    /// TOML file with node settings (id, data_dir, listen, metrics_listen,
    /// durability, peer_timeout_ms); flags and COHORT_* variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Stable node id, as registered with `cohort admin node add`.
    #[arg(long)]
    id: Option<String>,
    /// Directory for the node's data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the internal Storage gRPC API.
    #[arg(long)]
    listen: Option<String>,
    /// Address of the HTTP endpoint with /metrics and /health/*; "" disables it.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// When a write counts as durable: `fsync` (survives power loss) or
    /// `flush` (survives a process crash).
    #[arg(long, value_parser = ["fsync", "flush"])]
    durability: Option<String>,
}

/// Settings of a node process.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct NodeSettings {
    id: String,
    data_dir: PathBuf,
    listen: String,
    metrics_listen: String,
    durability: Durability,
    peer_timeout_ms: u64,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            id: "node-1".into(),
            data_dir: PathBuf::from("cohort-data/node-1"),
            listen: "127.0.0.1:7101".into(),
            metrics_listen: String::new(),
            durability: Durability::Fsync,
            peer_timeout_ms: 2_000,
        }
    }
}

/// Runs a storage node until SIGINT or SIGTERM.
pub async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    telemetry::init_logging();
    let overrides = settings::given(&[
        ("id", args.id.map(|v| json!(v))),
        ("data_dir", args.data_dir.map(|v| json!(v))),
        ("listen", args.listen.map(|v| json!(v))),
        ("metrics_listen", args.metrics_listen.map(|v| json!(v))),
        ("durability", args.durability.map(|v| json!(v))),
    ]);
    let s: NodeSettings = settings::load(NodeSettings::default(), args.config.as_deref(), overrides)?;
    let config = NodeConfig {
        id: s.id.clone(),
        data_dir: s.data_dir.clone(),
        durability: s.durability,
        peer_timeout_ms: s.peer_timeout_ms,
    };
    config.validate().map_err(|e| anyhow::anyhow!(e))?;
    let listener =
        tokio::net::TcpListener::bind(&s.listen).await.map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", s.listen))?;
    let address = listener.local_addr()?;
    telemetry::prometheus();
    let metrics = if s.metrics_listen.is_empty() {
        None
    } else {
        Some(telemetry::serve_http(&s.metrics_listen, Arc::new(|| true)).await?)
    };
    cohort_node::serve(config, listener, telemetry::shutdown_signal(), move |_| {
        println!("cohort node {} listening on {address}", s.id);
        if let Some(metrics) = metrics {
            println!("metrics on http://{metrics}/metrics");
        }
    })
    .await?;
    Ok(())
}

/// Flags of `cohort coordinator`.
#[derive(Args)]
pub struct CoordinatorArgs {
    /// TOML file with coordinator settings (see deploy/coordinator.toml);
    /// COHORT_* variables and flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Coordinator id.
    #[arg(long)]
    id: Option<String>,
    /// Address of the public gRPC API.
    #[arg(long)]
    listen: Option<String>,
    /// Address of the HTTP endpoint with /metrics and /health/*.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Directory of the embedded metadata and idempotency stores.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Runs a coordinator until SIGINT or SIGTERM.
pub async fn run_coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    telemetry::init_logging();
    let overrides = settings::given(&[
        ("id", args.id.map(|v| json!(v))),
        ("listen", args.listen.map(|v| json!(v))),
        ("metrics_listen", args.metrics_listen.map(|v| json!(v))),
        ("data_dir", args.data_dir.map(|v| json!(v))),
    ]);
    let config: CoordinatorConfig = settings::load(CoordinatorConfig::default(), args.config.as_deref(), overrides)?;
    config.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let metadata = Arc::new(EmbeddedMetadata::open(&config.data_dir.join("metadata"))?);
    let idempotency = Arc::new(EmbeddedIdempotency::open(&config.data_dir.join("idempotency"))?);
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", config.listen))?;
    let address = listener.local_addr()?;
    telemetry::prometheus();
    let coordinator = cohort_coordinator::server::Coordinator::new(config.clone(), metadata, idempotency).await?;
    if !config.metrics_listen.is_empty() {
        let ready = coordinator.clone();
        let metrics = telemetry::serve_http(&config.metrics_listen, Arc::new(move || ready.is_ready())).await?;
        println!("metrics on http://{metrics}/metrics");
    }
    println!("cohort coordinator {} listening on {address}", config.id);
    cohort_coordinator::serve(coordinator, listener, telemetry::shutdown_signal()).await?;
    Ok(())
}
