//! `cohort dev`: the whole cluster in one process, for trying Cohort.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use cohort_cluster::{LocalCluster, LocalClusterOptions};
use cohort_node::Durability;

use crate::telemetry;

/// Flags of `cohort dev`.
#[derive(Args)]
pub struct DevArgs {
    /// Directory holding all data; a restart on the same directory keeps
    /// every key and tenant.
    #[arg(long, default_value = "./cohort-data")]
    data_dir: PathBuf,
    /// Address of the public gRPC API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Address of the HTTP endpoint with /metrics and /health/*.
    #[arg(long, default_value = "127.0.0.1:9090")]
    metrics_listen: String,
    /// Number of storage nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=7))]
    nodes: u16,
    /// When a write counts as durable: `fsync` or `flush`.
    #[arg(long, default_value = "fsync", value_parser = ["fsync", "flush"])]
    durability: String,
}

/// Runs the dev cluster until SIGINT or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    telemetry::init_logging();
    telemetry::prometheus();
    let mut options = LocalClusterOptions::new(&args.data_dir);
    options.nodes = args.nodes.into();
    options.listen = args.listen;
    options.durability = if args.durability == "flush" { Durability::Flush } else { Durability::Fsync };
    options.coordinator.metrics_listen = args.metrics_listen.clone();
    // One process: the coordinator and the nodes call each other directly.
    options.in_process = true;
    let cluster = LocalCluster::start(options).await?;
    let ready = cluster.coordinator.coordinator.clone();
    let metrics = telemetry::serve_http(&args.metrics_listen, Arc::new(move || ready.readiness())).await?;
    let tenant = cluster.metadata.get_tenant("default").await?;
    let r = tenant.replication;
    println!("cohort dev cluster ready");
    println!("  API:      {}   (tenant \"default\": N={}, R={}, W={})", cluster.endpoint(), r.n(), r.r(), r.w());
    println!("  metrics:  http://{metrics}/metrics");
    println!("  data:     {}", args.data_dir.display());
    println!("  try:      cohort kv put --tenant default greeting hello");
    telemetry::shutdown_signal().await;
    cluster.shutdown().await;
    Ok(())
}
