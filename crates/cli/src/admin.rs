//! `cohort admin`: tenants, storage nodes, membership changes, repair and
//! cluster status.

use clap::{Args, Subcommand};
use cohort_proto::v1 as pb;
use cohort_proto::v1::admin_client::AdminClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::kv::normalize_endpoint;
use crate::migrations::{MigrationCommand, migration_json, migration_line, wait_for};

/// Admin commands.
#[derive(Subcommand)]
pub enum AdminCommand {
    /// Create, inspect and change tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Add, remove and list storage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Follow, wait for and cancel membership changes.
    #[command(subcommand)]
    Migration(MigrationCommand),
    /// Cluster-wide state.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Anti-entropy: its status, and repairs run now.
    #[command(subcommand)]
    Repair(crate::repair::RepairCommand),
}

/// Flags shared by admin commands.
#[derive(Args)]
pub struct Target {
    /// Coordinator endpoint.
    #[arg(long, env = "COHORT_ENDPOINT", default_value = "http://127.0.0.1:7070")]
    pub endpoint: String,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// Flags of commands that change membership.
#[derive(Args)]
pub struct ChangeFlags {
    /// Print the plan (ranges, keys and bytes each node gains and loses) and
    /// change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Wait until the migration ends, drawing its progress; exit non-zero if
    /// it fails or is cancelled.
    #[arg(long, conflicts_with = "dry_run")]
    wait: bool,
}

/// Tenant commands.
#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create {
        #[command(flatten)]
        target: Target,
        /// Tenant id: [a-z0-9][a-z0-9_-]{0,62}.
        name: String,
        /// Replication factor N, 1..=7.
        #[arg(long, default_value_t = 3)]
        replication: u32,
        /// Default read quorum R (default: a majority of N).
        #[arg(long)]
        read: Option<u32>,
        /// Default write quorum W (default: a majority of N).
        #[arg(long)]
        write: Option<u32>,
        /// Most siblings a key may have (default 100, at most 10000): a write
        /// that would add one more is refused until the key is resolved.
        #[arg(long)]
        max_siblings: Option<u32>,
        /// Let a write count acknowledgements of fallback nodes that hold it
        /// for replicas believed down (sloppy quorum). Default: strict, W
        /// counts only the key's own replicas.
        #[arg(long)]
        sloppy_quorum: bool,
    },
    /// Show a tenant.
    Get {
        #[command(flatten)]
        target: Target,
        /// Tenant id.
        name: String,
    },
    /// List tenants.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Change a tenant's settings if it is still at --expected-version.
    Update {
        #[command(flatten)]
        target: Target,
        /// Tenant id.
        name: String,
        /// The version you last read (`admin tenant get`); a stale one fails.
        #[arg(long)]
        expected_version: u64,
        /// New replication factor N.
        #[arg(long)]
        replication: Option<u32>,
        /// New default read quorum R.
        #[arg(long)]
        read: Option<u32>,
        /// New default write quorum W.
        #[arg(long)]
        write: Option<u32>,
        /// New sibling cap per key.
        #[arg(long)]
        max_siblings: Option<u32>,
        /// Sloppy (true) or strict (false) write quorums.
        #[arg(long)]
        sloppy_quorum: Option<bool>,
    },
}

/// Node commands.
#[derive(Subcommand)]
pub enum NodeCommand {
    /// Add a storage node: registers it and starts its join, a migration
    /// that copies the ranges it gains from their old owners while reads
    /// and writes go on (`cohort admin migration wait` follows it). The
    /// first nodes of an empty ring join at once. For a node already on the
    /// ring only the address changes. The node must be running: it is asked
    /// for its id, and an address that serves another node, or is
    /// registered for another id, is refused. One membership change runs at
    /// a time; another is refused until it ends.
    Add {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        change: ChangeFlags,
        /// Stable node id, as the node was started with.
        #[arg(long)]
        id: String,
        /// HOST:PORT of the node's Storage API.
        #[arg(long)]
        address: String,
        /// Failure zone; replicas spread over zones. Left out, a registered
        /// node keeps its zone; "" clears it.
        #[arg(long)]
        zone: Option<String>,
        /// Virtual nodes (default 150); scales the node's share of keys. Left
        /// out, a registered node keeps its count.
        #[arg(long)]
        vnodes: Option<u32>,
    },
    /// Remove a storage node. By default it is drained: its ranges are
    /// copied to their new owners, then it holds nothing and can be shut
    /// down. With --dead, a node that is gone for good is removed and its
    /// replicas are rebuilt from the surviving ones (writes acknowledged by
    /// it alone are lost).
    Remove {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        change: ChangeFlags,
        /// Node id.
        #[arg(long)]
        id: String,
        /// The node is gone for good: do not copy from it.
        #[arg(long)]
        dead: bool,
    },
    /// List storage nodes.
    List {
        #[command(flatten)]
        target: Target,
    },
}

/// Cluster commands.
#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Leader, ring version, nodes (with the health the leader last
    /// recorded) and the background workers of the coordinator that answers.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Add a new secret for sealing causal contexts (contexts clients hold
    /// stay valid: older secrets still open theirs).
    RotateContextKey {
        #[command(flatten)]
        target: Target,
    },
}

/// A client of the coordinator at `target`.
pub async fn connect(target: &Target) -> anyhow::Result<AdminClient<Channel>> {
    let endpoint = normalize_endpoint(&target.endpoint);
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())?
        .connect()
        .await
        .map_err(|e| anyhow::Error::new(e).context(format!("cannot connect to {endpoint}")))?;
    Ok(AdminClient::new(channel))
}

/// An error that says the status code and message.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

fn tenant_json(t: &pb::Tenant) -> serde_json::Value {
    json!({
        "id": t.id,
        "replication": t.replication,
        "read": t.read_quorum,
        "write": t.write_quorum,
        "max_siblings": t.max_siblings,
        "sloppy_quorum": t.sloppy_quorum,
        "version": t.version,
    })
}

fn print_tenant(t: &pb::Tenant, as_json: bool) {
    if as_json {
        println!("{}", tenant_json(t));
    } else {
        println!(
            "{}  N={} R={} W={}{}  max siblings {}  version {}",
            t.id,
            t.replication,
            t.read_quorum,
            t.write_quorum,
            if t.sloppy_quorum { " (sloppy)" } else { "" },
            t.max_siblings,
            t.version
        );
    }
}

fn node_json(n: &pb::StorageNode) -> serde_json::Value {
    json!({"id": n.id, "address": n.address, "zone": n.zone, "vnodes": n.vnodes, "state": n.state})
}

fn print_node(n: &pb::StorageNode) {
    println!("{}", node_line(n));
}

fn node_line(n: &pb::StorageNode) -> String {
    let zone = if n.zone.is_empty() { "-" } else { n.zone.as_str() };
    format!("{}  {}  zone {}  vnodes {}  {}", n.id, n.address, zone, n.vnodes, n.state)
}

/// A node of `cluster status`: its registration and the health a leader
/// last recorded (`null` before any probe).
fn status_node_json(n: &pb::StorageNode) -> serde_json::Value {
    let mut node = node_json(n);
    node["health"] = n.health.as_ref().map_or(
        serde_json::Value::Null,
        |h| json!({"up": h.up, "checked_at_ms": h.checked_at_ms, "generation": h.generation}),
    );
    node
}

fn print_status_node(n: &pb::StorageNode) {
    let health = match &n.health {
        None => "not probed yet".to_string(),
        Some(h) => {
            let now_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let age = now_ms.saturating_sub(h.checked_at_ms) as f64 / 1000.0;
            let up = if h.up { "up" } else { "DOWN" };
            format!("{up} (probed {age:.1} s ago by leader generation {})", h.generation)
        }
    };
    println!("{}  {health}", node_line(n));
}

fn worker_json(w: &pb::Worker) -> serde_json::Value {
    json!({
        "name": w.name,
        "state": w.state,
        "steps": w.steps,
        "errors": w.errors,
        "last_error": if w.last_error.is_empty() { serde_json::Value::Null } else { json!(w.last_error) },
        "last_step_at_ms": w.last_step_at_ms,
    })
}

fn print_worker(w: &pb::Worker) {
    let error = if w.last_error.is_empty() { String::new() } else { format!("  last error: {}", w.last_error) };
    println!("  {}  {}  {} steps, {} failed{error}", w.name, w.state, w.steps, w.errors);
}

fn ring_version_json(v: &pb::RingVersionStatus) -> serde_json::Value {
    json!({
        "version": v.version,
        "nodes": v.nodes.iter().map(|n| json!({"id": n.id, "share": n.share})).collect::<Vec<_>>(),
    })
}

fn plan_json(plan: &pb::Plan) -> serde_json::Value {
    json!({
        "from_version": plan.from_version,
        "to_version": plan.to_version,
        "ranges": plan.ranges,
        "nodes": plan.nodes.iter().map(|n| json!({
            "id": n.id,
            "ranges_gained": n.ranges_gained,
            "ranges_lost": n.ranges_lost,
            "share_gained": n.share_gained,
            "share_lost": n.share_lost,
            "keys_gained": n.keys_gained,
            "bytes_gained": n.bytes_gained,
            "keys_lost": n.keys_lost,
            "bytes_lost": n.bytes_lost,
        })).collect::<Vec<_>>(),
    })
}

fn print_plan(plan: &pb::Plan, counted: bool) {
    println!("ring version {} -> {}: {} token ranges change replicas", plan.from_version, plan.to_version, plan.ranges);
    for n in &plan.nodes {
        let keys = if counted {
            format!("  +{} keys ({} B)  -{} keys ({} B)", n.keys_gained, n.bytes_gained, n.keys_lost, n.bytes_lost)
        } else {
            String::new()
        };
        println!(
            "  {}  gains {} ranges ({:.1}% of tokens)  loses {} ranges ({:.1}%){keys}",
            n.id,
            n.ranges_gained,
            100.0 * n.share_gained,
            n.ranges_lost,
            100.0 * n.share_lost
        );
    }
}

/// Prints what `node add` or `node remove` did, and waits for its migration
/// when asked.
async fn report_change(
    client: &mut AdminClient<Channel>,
    answer: pb::NodeChangeResponse,
    target: &Target,
    change: &ChangeFlags,
) -> anyhow::Result<()> {
    let node = answer.node.unwrap_or_default();
    let mut migration = answer.migration;
    if change.wait
        && let Some(m) = &migration
    {
        migration = Some(wait_for(client, m.id, target.json).await?);
    }
    if target.json {
        let mut out = node_json(&node);
        out["migration"] = migration.as_ref().map_or(serde_json::Value::Null, migration_json);
        out["plan"] = answer.plan.as_ref().map_or(serde_json::Value::Null, plan_json);
        println!("{out}");
        return Ok(());
    }
    print_node(&node);
    if let Some(plan) = &answer.plan {
        print_plan(plan, change.dry_run);
    }
    match (&migration, change.dry_run) {
        (_, true) => println!("dry run: nothing changed"),
        (Some(m), false) if !change.wait => {
            println!("{}", migration_line(m));
            println!("follow it with: cohort admin migration wait {}", m.id);
        }
        (Some(m), false) => println!("{}", migration_line(m)),
        (None, false) => {}
    }
    Ok(())
}

/// Runs an admin command.
pub async fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Tenant(TenantCommand::Create {
            target,
            name,
            replication,
            read,
            write,
            max_siblings,
            sloppy_quorum,
        }) => {
            let request = pb::CreateTenantRequest {
                id: name,
                replication,
                read_quorum: read.unwrap_or(0),
                write_quorum: write.unwrap_or(0),
                max_siblings: max_siblings.unwrap_or(0),
                sloppy_quorum,
            };
            let tenant = connect(&target).await?.create_tenant(request).await.map_err(status_error)?.into_inner();
            print_tenant(&tenant, target.json);
        }
        AdminCommand::Tenant(TenantCommand::Get { target, name }) => {
            let tenant =
                connect(&target).await?.get_tenant(pb::GetTenantRequest { id: name }).await.map_err(status_error)?;
            print_tenant(&tenant.into_inner(), target.json);
        }
        AdminCommand::Tenant(TenantCommand::List { target }) => {
            let tenants =
                connect(&target).await?.list_tenants(pb::ListTenantsRequest {}).await.map_err(status_error)?;
            let tenants = tenants.into_inner().tenants;
            if target.json {
                println!("{}", json!(tenants.iter().map(tenant_json).collect::<Vec<_>>()));
            } else {
                tenants.iter().for_each(|t| print_tenant(t, false));
            }
        }
        AdminCommand::Tenant(TenantCommand::Update {
            target,
            name,
            expected_version,
            replication,
            read,
            write,
            max_siblings,
            sloppy_quorum,
        }) => {
            let request = pb::UpdateTenantRequest {
                id: name,
                expected_version,
                replication: replication.unwrap_or(0),
                read_quorum: read.unwrap_or(0),
                write_quorum: write.unwrap_or(0),
                max_siblings: max_siblings.unwrap_or(0),
                sloppy_quorum,
            };
            let tenant = connect(&target).await?.update_tenant(request).await.map_err(status_error)?.into_inner();
            print_tenant(&tenant, target.json);
        }
        AdminCommand::Node(NodeCommand::Add { target, change, id, address, zone, vnodes }) => {
            let request = pb::AddNodeRequest { id, address, zone, vnodes, dry_run: change.dry_run };
            let mut client = connect(&target).await?;
            let answer = client.add_node(request).await.map_err(status_error)?.into_inner();
            report_change(&mut client, answer, &target, &change).await?;
        }
        AdminCommand::Node(NodeCommand::Remove { target, change, id, dead }) => {
            let request = pb::RemoveNodeRequest { id, dead, dry_run: change.dry_run };
            let mut client = connect(&target).await?;
            let answer = client.remove_node(request).await.map_err(status_error)?.into_inner();
            report_change(&mut client, answer, &target, &change).await?;
        }
        AdminCommand::Migration(command) => crate::migrations::run(command).await?,
        AdminCommand::Repair(command) => crate::repair::run(command).await?,
        AdminCommand::Node(NodeCommand::List { target }) => {
            let nodes = connect(&target).await?.list_nodes(pb::ListNodesRequest {}).await.map_err(status_error)?;
            let nodes = nodes.into_inner().nodes;
            if target.json {
                println!("{}", json!(nodes.iter().map(node_json).collect::<Vec<_>>()));
            } else {
                nodes.iter().for_each(print_node);
            }
        }
        AdminCommand::Cluster(ClusterCommand::Status { target }) => {
            let status =
                connect(&target).await?.cluster_status(pb::ClusterStatusRequest {}).await.map_err(status_error)?;
            let status = status.into_inner();
            let leader = status.leader.unwrap_or_default();
            if target.json {
                let out = json!({
                    "leader": {"id": leader.id, "generation": leader.generation},
                    "ring_version": status.ring_version,
                    "nodes": status.nodes.iter().map(status_node_json).collect::<Vec<_>>(),
                    "workers": status.workers.iter().map(worker_json).collect::<Vec<_>>(),
                    "ring_versions": status.ring_versions.iter().map(ring_version_json).collect::<Vec<_>>(),
                    "migrations": status.migrations.iter().map(migration_json).collect::<Vec<_>>(),
                });
                println!("{out}");
            } else {
                println!("leader: {} (generation {})", leader.id, leader.generation);
                println!("ring version: {}", status.ring_version);
                for version in &status.ring_versions {
                    let shares: Vec<String> =
                        version.nodes.iter().map(|n| format!("{} {:.1}%", n.id, 100.0 * n.share)).collect();
                    println!("  live version {}: {}", version.version, shares.join(", "));
                }
                status.nodes.iter().for_each(print_status_node);
                for m in &status.migrations {
                    println!("{}", migration_line(m));
                }
                println!("workers of this coordinator:");
                status.workers.iter().for_each(print_worker);
            }
        }
        AdminCommand::Cluster(ClusterCommand::RotateContextKey { target }) => {
            let rotated = connect(&target)
                .await?
                .rotate_context_key(pb::RotateContextKeyRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if target.json {
                println!("{}", json!({"key_id": rotated.key_id}));
            } else {
                println!("contexts are now sealed with key {}", rotated.key_id);
            }
        }
    }
    Ok(())
}
