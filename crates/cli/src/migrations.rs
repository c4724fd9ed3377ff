//! `cohort admin migration`: list, inspect, wait for and cancel membership
//! changes, and the progress bar `wait` draws.

use std::time::Duration;

use clap::Subcommand;
use cohort_proto::v1 as pb;
use cohort_proto::v1::admin_client::AdminClient;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tonic::transport::Channel;

use crate::admin::{Target, connect, status_error};

/// How often `wait` asks for a migration's progress.
const POLL: Duration = Duration::from_millis(250);

/// Migration commands.
#[derive(Subcommand)]
pub enum MigrationCommand {
    /// Every migration, newest first.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// One migration: phase, state, progress, what it waits on.
    Get {
        #[command(flatten)]
        target: Target,
        /// Migration id.
        id: u64,
    },
    /// Wait until a migration ends, drawing its progress (keys copied of
    /// the total, rate, time left). Without an id, waits for every
    /// migration that is running or queued. Exits 0 when they completed,
    /// non-zero with the reason when one failed or was cancelled.
    Wait {
        #[command(flatten)]
        target: Target,
        /// Migration id (default: every running one).
        id: Option<u64>,
    },
    /// Ask a running migration to stop: the leader puts the ring back to
    /// the nodes it had and drops what was copied. A migration past its
    /// cutover finishes instead.
    Cancel {
        #[command(flatten)]
        target: Target,
        /// Migration id.
        id: u64,
    },
}

/// A migration as `--json` prints it.
pub fn migration_json(m: &pb::Migration) -> serde_json::Value {
    json!({
        "id": m.id,
        "kind": m.kind,
        "node_id": m.node_id,
        "state": m.state,
        "phase": m.phase,
        "from_version": m.from_version,
        "to_version": m.to_version,
        "ranges_total": m.ranges_total,
        "ranges_done": m.ranges_done,
        "migrated": m.keys_copied,
        "total": m.keys_total,
        "percent": m.percent,
        "bytes_copied": m.bytes_copied,
        "error": if m.error.is_empty() { serde_json::Value::Null } else { json!(m.error) },
        "cancel_requested": m.cancel_requested,
        "created_at_ms": m.created_at_ms,
        "updated_at_ms": m.updated_at_ms,
    })
}

/// One line per migration.
pub fn migration_line(m: &pb::Migration) -> String {
    let waiting = if m.error.is_empty() { String::new() } else { format!("  ({})", m.error) };
    let cancel = if m.cancel_requested && m.state != "cancelled" { "  cancel requested" } else { "" };
    format!(
        "migration {}  {} {}  {}  phase {}  ring {} -> {}  keys {}/{} ({:.1}%)  ranges {}/{}{cancel}{waiting}",
        m.id,
        m.kind,
        m.node_id,
        m.state,
        m.phase,
        m.from_version,
        m.to_version,
        m.keys_copied,
        m.keys_total,
        m.percent,
        m.ranges_done,
        m.ranges_total
    )
}

fn running(m: &pb::Migration) -> bool {
    m.state == "pending" || m.state == "in_progress"
}

/// Waits for migration `id` to end, with a progress bar unless `quiet`;
/// returns it, or an error naming why it did not complete.
pub async fn wait_for(client: &mut AdminClient<Channel>, id: u64, quiet: bool) -> anyhow::Result<pb::Migration> {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} keys  {per_sec}  eta {eta}  {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("migration {id}"));
    loop {
        let m = client.get_migration(pb::GetMigrationRequest { id }).await.map_err(status_error)?.into_inner();
        bar.set_length(m.keys_total.max(m.keys_copied));
        bar.set_position(m.keys_copied);
        let note = if m.error.is_empty() { String::new() } else { format!(" ({})", m.error) };
        bar.set_message(format!("{} {} {}: {}{note}", m.kind, m.node_id, m.state, m.phase));
        match m.state.as_str() {
            "completed" => {
                bar.finish_with_message(format!("{} {} completed", m.kind, m.node_id));
                return Ok(m);
            }
            "failed" | "cancelled" => {
                bar.abandon();
                let why = if m.error.is_empty() { String::new() } else { format!(": {}", m.error) };
                anyhow::bail!("migration {id} ({} of node {}) {}{why}", m.kind, m.node_id, m.state);
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

/// Runs a migration command.
pub async fn run(command: MigrationCommand) -> anyhow::Result<()> {
    match command {
        MigrationCommand::List { target } => {
            let all = connect(&target).await?.list_migrations(pb::ListMigrationsRequest {}).await;
            let all = all.map_err(status_error)?.into_inner().migrations;
            if target.json {
                println!("{}", json!(all.iter().map(migration_json).collect::<Vec<_>>()));
            } else if all.is_empty() {
                println!("no migrations");
            } else {
                all.iter().for_each(|m| println!("{}", migration_line(m)));
            }
        }
        MigrationCommand::Get { target, id } => {
            let m = connect(&target).await?.get_migration(pb::GetMigrationRequest { id }).await;
            let m = m.map_err(status_error)?.into_inner();
            if target.json { println!("{}", migration_json(&m)) } else { println!("{}", migration_line(&m)) }
        }
        MigrationCommand::Wait { target, id } => {
            let mut client = connect(&target).await?;
            let ids = match id {
                Some(id) => vec![id],
                None => {
                    let all = client.list_migrations(pb::ListMigrationsRequest {}).await.map_err(status_error)?;
                    let mut ids: Vec<u64> =
                        all.into_inner().migrations.iter().filter(|m| running(m)).map(|m| m.id).collect();
                    ids.sort_unstable();
                    ids
                }
            };
            if ids.is_empty() && !target.json {
                println!("no migration is running");
            }
            let mut ended = Vec::new();
            for id in ids {
                ended.push(wait_for(&mut client, id, target.json).await?);
            }
            if target.json {
                println!("{}", json!(ended.iter().map(migration_json).collect::<Vec<_>>()));
            }
        }
        MigrationCommand::Cancel { target, id } => {
            let m = connect(&target).await?.cancel_migration(pb::CancelMigrationRequest { id }).await;
            let m = m.map_err(status_error)?.into_inner();
            if target.json {
                println!("{}", migration_json(&m));
            } else {
                println!("cancel requested: {}", migration_line(&m));
            }
        }
    }
    Ok(())
}
