//! `cohort node` and `cohort coordinator`: long-running server processes.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use cohort_coordinator::config::{IdempotencyBackend, MetadataBackend};
use cohort_coordinator::metadata::MetadataStore;
use cohort_coordinator::metadata::embedded::EmbeddedMetadata;
use cohort_coordinator::metadata::postgres::PostgresMetadata;
use cohort_coordinator::{CoordinatorConfig, Readiness};
use cohort_idempotency::IdempotencyStore;
use cohort_idempotency::embedded::EmbeddedIdempotency;
use cohort_idempotency::redis::RedisIdempotency;
use cohort_node::{Durability, NodeConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::settings;
use crate::telemetry;

/// Flags of `cohort node`.
#[derive(Args)]
pub struct NodeArgs {
    /// TOML file with node settings (id, data_dir, listen, metrics_listen,
    /// durability, peer_timeout, [hints]; see deploy/node.toml); flags and COHORT_*
    /// variables override it.
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
    /// Also run a coordinator in this process, its public API on this
    /// address (the `[coordinator]` section of --config holds its other
    /// settings and must name its stores). It calls this node directly and
    /// makes it the coordinating replica of every key it holds.
    #[arg(long)]
    coordinator_listen: Option<String>,
}

/// Settings of a node process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeSettings {
    id: String,
    data_dir: PathBuf,
    listen: String,
    metrics_listen: String,
    durability: Durability,
    #[serde(with = "humantime_serde")]
    peer_timeout: std::time::Duration,
    #[serde(default)]
    hints: cohort_node::HintsConfig,
    /// A coordinator run in the same process, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    coordinator: Option<CoordinatorConfig>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            id: "node-1".into(),
            data_dir: PathBuf::from("cohort-data/node-1"),
            listen: "127.0.0.1:7101".into(),
            metrics_listen: String::new(),
            durability: Durability::Fsync,
            peer_timeout: std::time::Duration::from_secs(2),
            hints: cohort_node::HintsConfig::default(),
            coordinator: None,
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
    let mut overrides = overrides;
    if let Some(listen) = args.coordinator_listen {
        overrides["coordinator"] = json!({ "listen": listen });
    }
    let s: NodeSettings = settings::load(NodeSettings::default(), args.config.as_deref(), overrides)?;
    let config = NodeConfig {
        id: s.id.clone(),
        data_dir: s.data_dir.clone(),
        durability: s.durability,
        peer_timeout: s.peer_timeout,
        hints: s.hints.clone(),
    };
    config.validate().map_err(|e| anyhow::anyhow!(e))?;
    let coordinator = match &s.coordinator {
        Some(coordinator) => {
            coordinator.validate_backends().map_err(|e| anyhow::anyhow!("invalid [coordinator] settings: {e}"))?;
            Some(coordinator.clone())
        }
        None => None,
    };
    let listener =
        tokio::net::TcpListener::bind(&s.listen).await.map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", s.listen))?;
    let address = listener.local_addr()?;
    telemetry::prometheus();
    // One signal stops both roles.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        telemetry::shutdown_signal().await;
        let _ = stop.send(true);
    });
    let shutdown = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let in_process = coordinator.as_ref().map(|_| Arc::new(cohort_transport::InProcessNodes::default()));
    let node: Arc<std::sync::OnceLock<cohort_node::NodeHandle>> = Arc::default();
    let metrics = if s.metrics_listen.is_empty() {
        None
    } else {
        let node = node.clone();
        let ready = move || match node.get().and_then(|n| n.store()) {
            Some(store) if store.is_poisoned() => {
                Readiness::NotReady("storage failed a sync; writes are refused".into())
            }
            Some(_) => Readiness::Ready,
            None => Readiness::NotReady("store not open".into()),
        };
        Some(telemetry::serve_http(&s.metrics_listen, Arc::new(ready)).await?)
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let id = s.id.clone();
    let serving = tokio::spawn(cohort_node::serve_with(
        config,
        listener,
        shutdown(),
        move |handle| {
            let _ = node.set(handle);
            println!("cohort node {id} listening on {address}");
            if let Some(metrics) = metrics {
                println!("metrics on http://{metrics}/metrics");
            }
            let _ = ready_tx.send(());
        },
        in_process.clone(),
    ));
    let coordinating = match coordinator {
        None => None,
        Some(config) => {
            // Only once the node is registered in the directory (its store
            // is open) may the coordinator call it directly.
            if ready_rx.await.is_err() {
                serving.await??;
                anyhow::bail!("the storage node stopped before it served");
            }
            let (metadata, idempotency) = open_stores(&config).await?;
            let listener = tokio::net::TcpListener::bind(&config.listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", config.listen))?;
            let public = listener.local_addr()?;
            let coordinator = cohort_coordinator::server::Coordinator::with_in_process(
                config.clone(),
                metadata,
                idempotency,
                in_process,
            )
            .await?;
            println!("cohort coordinator {} listening on {public}", config.id);
            Some(tokio::spawn(cohort_coordinator::serve(coordinator, listener, shutdown())))
        }
    };
    if let Some(coordinating) = coordinating {
        coordinating.await??;
    }
    serving.await??;
    Ok(())
}

/// Opens the metadata and idempotency stores `config` names, waiting (with
/// backoff) for shared ones to answer.
async fn open_stores(
    config: &CoordinatorConfig,
) -> anyhow::Result<(Arc<dyn MetadataStore>, Arc<dyn IdempotencyStore>)> {
    let metadata: Arc<dyn MetadataStore> = match config.metadata.backend {
        Some(MetadataBackend::Postgres) => {
            let m = &config.metadata;
            Arc::new(with_backoff("PostgreSQL", || PostgresMetadata::connect(&m.url, &m.schema, m.pool_size)).await?)
        }
        _ => Arc::new(EmbeddedMetadata::open(&config.data_dir.join("metadata"))?),
    };
    let idem = &config.idempotency;
    let idempotency: Arc<dyn IdempotencyStore> = match idem.backend {
        Some(IdempotencyBackend::Redis) => Arc::new(
            with_backoff("Redis", || RedisIdempotency::connect(&idem.url, &idem.prefix, idem.in_flight)).await?,
        ),
        _ => Arc::new(EmbeddedIdempotency::open(&config.data_dir.join("idempotency"), idem.in_flight)?),
    };
    let shared =
        (config.metadata.backend == Some(MetadataBackend::Postgres), idem.backend == Some(IdempotencyBackend::Redis));
    if shared.0 != shared.1 {
        tracing::warn!(
            "only one of the metadata and idempotency stores is shared: this coordinator cannot share its cluster"
        );
    }
    tracing::info!(metadata = ?config.metadata.backend, idempotency = ?idem.backend, "stores chosen");
    Ok((metadata, idempotency))
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
    /// PostgreSQL URL for shared metadata (tenants, nodes, leader lease);
    /// chooses metadata.backend = "postgres".
    #[arg(long, conflicts_with = "metadata_backend")]
    postgres_url: Option<String>,
    /// Redis URL for shared idempotency records; chooses
    /// idempotency.backend = "redis".
    #[arg(long, conflicts_with = "idempotency_backend")]
    redis_url: Option<String>,
    /// Where metadata lives, when no --postgres-url is given: `embedded`
    /// (under --data-dir; this coordinator must be the cluster's only one)
    /// or `postgres` (with metadata.url from the file or the environment).
    #[arg(long, value_parser = ["embedded", "postgres"])]
    metadata_backend: Option<String>,
    /// Where idempotency records live, when no --redis-url is given:
    /// `embedded` (under --data-dir; one coordinator only) or `redis` (with
    /// idempotency.url from the file or the environment).
    #[arg(long, value_parser = ["embedded", "redis"])]
    idempotency_backend: Option<String>,
}

/// Retries `connect` with exponential backoff (capped at 10 s) until it
/// succeeds or the process is asked to stop.
async fn with_backoff<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut connect: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let mut delay = std::time::Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match connect().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                tracing::error!(%error, attempt, retry_in_ms = delay.as_millis() as u64, "{what} unreachable");
                eprintln!("{what} unreachable (attempt {attempt}): {error}; retrying in {:.1}s", delay.as_secs_f64());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tokio::signal::ctrl_c() => anyhow::bail!("stopped while waiting for {what}"),
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(10));
        attempt += 1;
    }
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
    let mut overrides = overrides;
    let sections = [
        (
            "metadata",
            args.postgres_url
                .map(|url| json!({"backend": "postgres", "url": url}))
                .or(args.metadata_backend.map(|b| json!({"backend": b}))),
        ),
        (
            "idempotency",
            args.redis_url
                .map(|url| json!({"backend": "redis", "url": url}))
                .or(args.idempotency_backend.map(|b| json!({"backend": b}))),
        ),
    ];
    for (section, value) in sections {
        if let Some(value) = value {
            overrides[section] = value;
        }
    }
    let config: CoordinatorConfig = settings::load(CoordinatorConfig::default(), args.config.as_deref(), overrides)?;
    config.validate_backends().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let (metadata, idempotency) = open_stores(&config).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", config.listen))?;
    let address = listener.local_addr()?;
    telemetry::prometheus();
    let coordinator = cohort_coordinator::server::Coordinator::new(config.clone(), metadata, idempotency).await?;
    if !config.metrics_listen.is_empty() {
        let ready = coordinator.clone();
        let metrics = telemetry::serve_http(&config.metrics_listen, Arc::new(move || ready.readiness())).await?;
        println!("metrics on http://{metrics}/metrics");
    }
    println!("cohort coordinator {} listening on {address}", config.id);
    cohort_coordinator::serve(coordinator, listener, telemetry::shutdown_signal()).await?;
    Ok(())
}
