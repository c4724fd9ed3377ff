//! `cohort admin repair`: how anti-entropy is doing, and repairs run now.

use std::time::Duration;

use clap::Subcommand;
use cohort_proto::v1 as pb;
use indicatif::ProgressBar;
use serde_json::json;

use crate::admin::{Target, connect, status_error};

/// Repair commands.
#[derive(Subcommand)]
pub enum RepairCommand {
    /// Anti-entropy as the coordinator asked has run it (the leader runs
    /// the periodic rounds): per node, the oldest last exchange of its
    /// ranges, keys repaired and its ranges left in the current round; with
    /// --json also every range's last exchange.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Compare and sync every range a node replicates, now: its replicas
    /// exchange hash-tree digests and the keys that differ are merged into
    /// all of them. Also reaps old tombstones of ranges found converged.
    Node {
        #[command(flatten)]
        target: Target,
        /// Node id.
        id: String,
        /// Only this tenant's ranges.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Compare and sync, now, every range that overlaps the token range
    /// START..=END (tokens are 0..=18446744073709551615).
    Range {
        #[command(flatten)]
        target: Target,
        /// First token.
        start: u64,
        /// Last token (included).
        end: u64,
        /// Only this tenant's ranges.
        #[arg(long)]
        tenant: Option<String>,
    },
}

fn millis(ms: u64) -> serde_json::Value {
    if ms == 0 { serde_json::Value::Null } else { json!(ms) }
}

/// How long ago `ms` (milliseconds since the epoch) was, for people.
fn ago(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    format!(
        "{} ago",
        humantime_serde::re::humantime::format_duration(Duration::from_secs(now.saturating_sub(ms) / 1000))
    )
}

/// Runs a repair command.
pub async fn run(command: RepairCommand) -> anyhow::Result<()> {
    match command {
        RepairCommand::Status { target } => {
            let status =
                connect(&target).await?.repair_status(pb::RepairStatusRequest {}).await.map_err(status_error)?;
            let status = status.into_inner();
            if target.json {
                let out = json!({
                    "leader": status.leader,
                    "state": status.state,
                    "round": status.round,
                    "round_started_ms": millis(status.round_started_ms),
                    "round_total": status.round_total,
                    "round_done": status.round_done,
                    "nodes": status.nodes.iter().map(|n| json!({
                        "id": n.id,
                        "ranges": n.ranges,
                        "last_exchange_ms": millis(n.last_exchange_ms),
                        "keys_repaired": n.keys_repaired,
                        "backlog": n.backlog,
                    })).collect::<Vec<_>>(),
                    "ranges": status.ranges.iter().map(|r| json!({
                        "tenant": r.tenant,
                        "start": r.start,
                        "end": r.end,
                        "replicas": r.replicas,
                        "last_exchange_ms": millis(r.last_exchange_ms),
                        "exchanges": r.exchanges,
                        "last_keys_repaired": r.last_keys_repaired,
                        "keys_repaired": r.keys_repaired,
                        "differing_segments": r.differing_segments,
                        "unreachable": r.unreachable,
                        "tombstones_reaped": r.tombstones_reaped,
                        "gc_blocked": r.gc_blocked,
                    })).collect::<Vec<_>>(),
                });
                println!("{out}");
            } else {
                let role = if status.leader { "leader" } else { "not the leader: only repairs forced here" };
                println!("anti-entropy: {} ({role})", status.state);
                if status.round > 0 {
                    println!(
                        "round {}: {} of {} ranges exchanged, started {}",
                        status.round,
                        status.round_done,
                        status.round_total,
                        ago(status.round_started_ms)
                    );
                }
                for n in &status.nodes {
                    println!(
                        "  {}: {} ranges, oldest exchange {}, {} keys repaired, {} ranges left this round",
                        n.id,
                        n.ranges,
                        ago(n.last_exchange_ms),
                        n.keys_repaired,
                        n.backlog
                    );
                }
                let reaped: u64 = status.ranges.iter().map(|r| r.tombstones_reaped).sum();
                let blocked = status.ranges.iter().filter(|r| r.gc_blocked).count();
                println!("tombstones reaped: {reaped}; ranges where reaping is blocked: {blocked}");
            }
        }
        RepairCommand::Node { target, id, tenant } => {
            let scope = pb::repair_request::Scope::Node(id);
            force(&target, scope, tenant).await?;
        }
        RepairCommand::Range { target, start, end, tenant } => {
            let scope = pb::repair_request::Scope::Range(pb::TokenSpan { start, end });
            force(&target, scope, tenant).await?;
        }
    }
    Ok(())
}

async fn force(target: &Target, scope: pb::repair_request::Scope, tenant: Option<String>) -> anyhow::Result<()> {
    let spinner = if target.json { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    spinner.set_message("comparing replicas");
    spinner.enable_steady_tick(Duration::from_millis(120));
    let request = pb::RepairRequest { scope: Some(scope), tenant: tenant.unwrap_or_default() };
    let answer = connect(target).await?.repair(request).await.map_err(status_error);
    spinner.finish_and_clear();
    let r = answer?.into_inner();
    if target.json {
        println!(
            "{}",
            json!({
                "ranges": r.ranges,
                "differing_segments": r.differing_segments,
                "keys_compared": r.keys_compared,
                "keys_repaired": r.keys_repaired,
                "bytes": r.bytes,
                "unreachable": r.unreachable,
                "tombstones_reaped": r.tombstones_reaped,
            })
        );
    } else {
        println!(
            "{} ranges compared: {} segments differed, {} keys compared, {} repaired, {} tombstones reaped",
            r.ranges, r.differing_segments, r.keys_compared, r.keys_repaired, r.tombstones_reaped
        );
        if !r.unreachable.is_empty() {
            println!("not reached (their ranges were compared among the others): {}", r.unreachable.join(", "));
        }
    }
    if !r.unreachable.is_empty() {
        anyhow::bail!("{} replicas did not answer: {}", r.unreachable.len(), r.unreachable.join(", "));
    }
    Ok(())
}
