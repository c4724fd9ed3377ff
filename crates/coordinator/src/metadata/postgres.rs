//! Metadata in PostgreSQL, shared by every coordinator of a cluster.
//!
//! All tables live in one schema (`postgres_schema`, default `cohort`),
//! created and migrated at start-up by [`migrate`]: the SQL files in the
//! repository's `migrations/` folder, applied in order inside one
//! transaction that holds an advisory lock, so coordinators starting together
//! apply each migration exactly once.
//!
//! Changes are announced with `NOTIFY cohort_metadata` in the transaction
//! that makes them (payload `<schema>|ring|<stamp>`, `<schema>|tenant|<id>`
//! or `<schema>|migration|<id>`); every coordinator LISTENs on a dedicated
//! connection and turns notifications into [`MetadataChange`]s (placement
//! rebuilds, tenant cache invalidations, migration progress).
//! Notifications are an accelerator only: coordinators also poll the
//! topology stamp and expire cached tenants.
//!
//! Ring changes (node upserts, proposals, a leader's ring steps) serialise on
//! the `ring_state` row (`FOR UPDATE`), so of two racing proposals planned
//! from the same version exactly one applies.
//!
//! The leader lease's expiry is decided by the database's clock. A
//! leader-only write applies only while the lease row is live at the
//! writer's generation, and holds that row (`FOR SHARE`) until it commits —
//! in the same statement (node health) or as the first statement of its
//! transaction (migrations, ring steps, checkpoints) — so a takeover waits
//! for it and no write of an old generation lands after the lease changed
//! hands.

use std::collections::BTreeMap;
use std::time::Duration;

use cohort_ring::{ContextKey, NodeSpec, ReplicationConfig};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls, Row, Transaction};
use tonic::async_trait;

use super::{
    Checkpoint, Lease, MetadataChange, MetadataError, MetadataStore, Migration, MigrationKind, MigrationPhase,
    MigrationState, NodeHealth, NodeProbe, NodeRecord, NodeState, RingChange, RingHistory, RingStep, RingVersion,
    Tenant, TenantSettings,
};

/// The migrations, in the order they apply. Never edit an applied one: add
/// the next.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "metadata", include_str!("../../../../migrations/0001_metadata.sql")),
    (2, "context_keys_and_sibling_cap", include_str!("../../../../migrations/0002_context_keys_and_sibling_cap.sql")),
    (3, "node_health", include_str!("../../../../migrations/0003_node_health.sql")),
    (4, "ring_history", include_str!("../../../../migrations/0004_ring_history.sql")),
    (5, "sloppy_quorum", include_str!("../../../../migrations/0005_sloppy_quorum.sql")),
];

/// The notification channel.
const CHANNEL: &str = "cohort_metadata";

/// The PostgreSQL metadata store.
pub struct PostgresMetadata {
    pool: Pool,
    schema: String,
    changes: broadcast::Sender<MetadataChange>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresMetadata {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn unavailable(e: impl std::fmt::Display) -> MetadataError {
    MetadataError::Unavailable(e.to_string())
}

/// Whether `schema` is a plain lowercase identifier (it is interpolated into
/// SQL, so nothing else is accepted).
pub fn valid_schema(schema: &str) -> bool {
    let mut bytes = schema.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && schema.len() <= 63
}

fn pg_config(url: &str, schema: &str) -> Result<tokio_postgres::Config, MetadataError> {
    if !valid_schema(schema) {
        return Err(MetadataError::Unavailable(format!(
            "postgres_schema {schema:?} is invalid: expected a lowercase identifier"
        )));
    }
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|e| MetadataError::Unavailable(format!("postgres_url is invalid: {e}")))?;
    config.options(format!("-c search_path={schema}"));
    config.connect_timeout(Duration::from_secs(5));
    config.application_name("cohort-coordinator");
    Ok(config)
}

/// Applies every migration `schema` lacks; returns how many it applied.
pub async fn migrate(url: &str, schema: &str) -> Result<usize, MetadataError> {
    apply_migrations(url, schema, MIGRATIONS).await
}

/// Applies those of `migrations` that `schema` lacks (tests apply a prefix
/// to build an older schema).
async fn apply_migrations(url: &str, schema: &str, migrations: &[(i32, &str, &str)]) -> Result<usize, MetadataError> {
    let config = pg_config(url, schema)?;
    let (mut client, connection) = config.connect(NoTls).await.map_err(|e| unreachable_error(url, e))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let tx = client.transaction().await.map_err(unavailable)?;
        tx.execute("SELECT pg_advisory_xact_lock(hashtext('cohort-migrations:' || $1))", &[&schema])
            .await
            .map_err(unavailable)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             SET LOCAL search_path TO {schema};
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now());"
        ))
        .await
        .map_err(unavailable)?;
        let applied: Vec<i32> = tx
            .query("SELECT version FROM schema_migrations", &[])
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut count = 0;
        for (version, name, sql) in migrations {
            if applied.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await.map_err(|e| unavailable(format!("migration {version} ({name}): {e}")))?;
            tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[version, name])
                .await
                .map_err(unavailable)?;
            count += 1;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(count)
    }
    .await;
    drop(client);
    let _ = driver.await;
    result
}

fn unreachable_error(url: &str, e: tokio_postgres::Error) -> MetadataError {
    // The URL may carry a password: name only the host part.
    let host = url.rsplit('@').next().unwrap_or(url);
    MetadataError::Unavailable(format!("cannot reach PostgreSQL at {host}: {e}"))
}

fn row_to_tenant(row: &Row) -> Result<Tenant, MetadataError> {
    let id: String = row.get("id");
    let (n, r, w): (i32, i32, i32) = (row.get("replication"), row.get("read_quorum"), row.get("write_quorum"));
    let replication = ReplicationConfig::new(n as u32, r as u32, w as u32)
        .map_err(|e| MetadataError::Unavailable(format!("stored tenant {id:?} is invalid: {e}")))?;
    Ok(Tenant {
        id,
        replication,
        max_siblings: row.get::<_, i32>("max_siblings") as u32,
        sloppy_quorum: row.get("sloppy_quorum"),
        version: row.get::<_, i64>("version") as u64,
    })
}

fn row_to_key(row: &Row) -> Result<ContextKey, MetadataError> {
    let id: i32 = row.get("id");
    let secret: Vec<u8> = row.get("secret");
    let secret = secret
        .try_into()
        .map_err(|_| MetadataError::Unavailable(format!("stored context key {id} is not 32 bytes")))?;
    Ok(ContextKey { id: id as u32, secret })
}

fn row_to_node(row: &Row) -> Result<NodeRecord, MetadataError> {
    let id: String = row.get("id");
    let state: String = row.get("state");
    let state = NodeState::parse(&state)
        .ok_or_else(|| MetadataError::Unavailable(format!("stored node {id:?} has an unknown state {state:?}")))?;
    Ok(NodeRecord {
        id,
        address: row.get("address"),
        zone: row.get("zone"),
        vnodes: row.get::<_, i32>("vnodes") as u32,
        state,
    })
}

/// A ring version's node as stored in `ring_versions.nodes`.
#[derive(Serialize, Deserialize)]
struct SpecJson {
    id: String,
    zone: Option<String>,
    vnodes: u32,
}

/// A ring version's nodes as stored: a JSON array ordered by id (passed as
/// text and cast, as this build has no JSON support in the driver).
fn nodes_json(nodes: &[NodeSpec]) -> Result<String, MetadataError> {
    let mut rows: Vec<SpecJson> =
        nodes.iter().map(|n| SpecJson { id: n.id.clone(), zone: n.zone.clone(), vnodes: n.vnodes }).collect();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    serde_json::to_string(&rows).map_err(unavailable)
}

fn row_to_ring_version(row: &Row) -> Result<RingVersion, MetadataError> {
    let version = row.get::<_, i64>("version") as u64;
    let nodes: String = row.get("nodes");
    let nodes: Vec<SpecJson> = serde_json::from_str(&nodes)
        .map_err(|e| MetadataError::Unavailable(format!("stored ring version {version} is unreadable: {e}")))?;
    let nodes = nodes.into_iter().map(|n| NodeSpec { id: n.id, zone: n.zone, vnodes: n.vnodes }).collect();
    Ok(RingVersion { version, nodes })
}

/// The columns [`row_to_migration`] reads.
const MIGRATION_COLUMNS: &str = "id, kind, node_id, state, phase, from_version, to_version, ranges_total, ranges_done,
    keys_total, keys_copied, bytes_copied, error, cancel_requested,
    (extract(epoch FROM created_at) * 1000)::bigint AS created_at_ms,
    (extract(epoch FROM updated_at) * 1000)::bigint AS updated_at_ms";

fn row_to_migration(row: &Row) -> Result<Migration, MetadataError> {
    let id = row.get::<_, i64>("id") as u64;
    let unknown = |what: &str, name: &str| {
        MetadataError::Unavailable(format!("stored migration {id} has an unknown {what} {name:?}"))
    };
    let (kind, state, phase): (String, String, String) = (row.get("kind"), row.get("state"), row.get("phase"));
    let count = |column: &str| row.get::<_, i64>(column) as u64;
    Ok(Migration {
        id,
        kind: MigrationKind::parse(&kind).ok_or_else(|| unknown("kind", &kind))?,
        node_id: row.get("node_id"),
        state: MigrationState::parse(&state).ok_or_else(|| unknown("state", &state))?,
        phase: MigrationPhase::parse(&phase).ok_or_else(|| unknown("phase", &phase))?,
        from_version: count("from_version"),
        to_version: count("to_version"),
        ranges_total: count("ranges_total"),
        ranges_done: count("ranges_done"),
        keys_total: count("keys_total"),
        keys_copied: count("keys_copied"),
        bytes_copied: count("bytes_copied"),
        error: row.get("error"),
        cancel_requested: row.get("cancel_requested"),
        created_at_ms: count("created_at_ms"),
        updated_at_ms: count("updated_at_ms"),
    })
}

/// The names of the migration states that still run.
fn running_states() -> Vec<&'static str> {
    [
        MigrationState::Pending,
        MigrationState::InProgress,
        MigrationState::Completed,
        MigrationState::Failed,
        MigrationState::Cancelled,
    ]
    .into_iter()
    .filter(MigrationState::is_running)
    .map(|state| state.as_str())
    .collect()
}

/// Registers a node or replaces its record when it differs; returns how many
/// rows changed.
const UPSERT_NODE: &str = "INSERT INTO storage_nodes (id, address, zone, vnodes, state) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, zone = EXCLUDED.zone,
         vnodes = EXCLUDED.vnodes, state = EXCLUDED.state, updated_at = now()
     WHERE (storage_nodes.address, storage_nodes.zone, storage_nodes.vnodes, storage_nodes.state)
           IS DISTINCT FROM (EXCLUDED.address, EXCLUDED.zone, EXCLUDED.vnodes, EXCLUDED.state)";

async fn upsert_node_in(tx: &Transaction<'_>, node: &NodeRecord) -> Result<u64, MetadataError> {
    tx.execute(UPSERT_NODE, &[&node.id, &node.address, &node.zone, &(node.vnodes as i32), &node.state.as_str()])
        .await
        .map_err(unavailable)
}

/// The fence of a leader-only write, as the first statement of its
/// transaction: passes only while the lease is live at exactly `generation`,
/// and holds the lease row (`FOR SHARE`) until the transaction ends, so a
/// takeover waits for the write and one committed meanwhile fails the check.
async fn fence(tx: &Transaction<'_>, generation: u64) -> Result<(), MetadataError> {
    let holds = tx
        .query_opt(
            "SELECT generation FROM leader_lease
             WHERE singleton AND holder IS NOT NULL AND generation = $1 AND expires_at > now()
             FOR SHARE",
            &[&(generation as i64)],
        )
        .await
        .map_err(unavailable)?;
    if holds.is_some() {
        return Ok(());
    }
    let row = tx.query_one("SELECT generation FROM leader_lease WHERE singleton", &[]).await.map_err(unavailable)?;
    Err(MetadataError::Fenced { generation, current: row.get::<_, i64>(0) as u64 })
}

/// Writes a leader's view of a migration (state, phase, progress, error);
/// a stored cancel request is kept.
async fn write_migration(tx: &Transaction<'_>, m: &Migration) -> Result<(), MetadataError> {
    let updated = tx
        .execute(
            "UPDATE membership_migrations SET state = $2, phase = $3, ranges_total = $4, ranges_done = $5,
                 keys_total = $6, keys_copied = $7, bytes_copied = $8, error = $9,
                 cancel_requested = cancel_requested OR $10, updated_at = now()
             WHERE id = $1",
            &[
                &(m.id as i64),
                &m.state.as_str(),
                &m.phase.as_str(),
                &(m.ranges_total as i64),
                &(m.ranges_done as i64),
                &(m.keys_total as i64),
                &(m.keys_copied as i64),
                &(m.bytes_copied as i64),
                &m.error,
                &m.cancel_requested,
            ],
        )
        .await
        .map_err(unavailable)?;
    if updated == 0 {
        return Err(MetadataError::MigrationNotFound(m.id));
    }
    Ok(())
}

impl PostgresMetadata {
    /// Migrates `schema`, opens a pool of `pool_size` connections and starts
    /// listening for changes.
    pub async fn connect(url: &str, schema: &str, pool_size: usize) -> Result<Self, MetadataError> {
        migrate(url, schema).await?;
        let config = pg_config(url, schema)?;
        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager).max_size(pool_size.max(1)).build().map_err(unavailable)?;
        let (changes, _) = broadcast::channel(256);
        let listener = tokio::spawn(listen(config, schema.to_string(), changes.clone()));
        Ok(PostgresMetadata { pool, schema: schema.to_string(), changes, listener })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, MetadataError> {
        self.pool.get().await.map_err(|e| MetadataError::Unavailable(format!("PostgreSQL: {e}")))
    }

    fn payload(&self, change: &str) -> String {
        format!("{}|{change}", self.schema)
    }

    /// Announces, in `tx`, a change of the ring history, live versions or
    /// node records (`stamp` is the new topology stamp).
    async fn notify_ring(&self, tx: &Transaction<'_>, stamp: i64) -> Result<(), MetadataError> {
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.payload(&format!("ring|{stamp}"))])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Announces, in `tx`, a change of migration `id`.
    async fn notify_migration(&self, tx: &Transaction<'_>, id: u64) -> Result<(), MetadataError> {
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.payload(&format!("migration|{id}"))])
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// Keeps a LISTEN connection open (reconnecting with backoff) and forwards
/// this schema's notifications.
async fn listen(config: tokio_postgres::Config, schema: String, changes: broadcast::Sender<MetadataChange>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                let statement = format!("LISTEN {CHANNEL}");
                let subscribe = client.batch_execute(&statement);
                // The connection must be driven while LISTEN runs.
                let mut subscribe = std::pin::pin!(subscribe);
                let subscribed = loop {
                    tokio::select! {
                        result = &mut subscribe => break result.is_ok(),
                        message = messages.next() => if message.is_none() { break false },
                    }
                };
                if subscribed {
                    backoff = Duration::from_millis(100);
                    // After a reconnect, changes may have been missed.
                    let _ = changes.send(MetadataChange::Ring);
                    while let Some(message) = messages.next().await {
                        let Ok(AsyncMessage::Notification(note)) = message else {
                            if message.is_err() {
                                break;
                            }
                            continue;
                        };
                        let Some(rest) = note.payload().strip_prefix(&format!("{schema}|")) else { continue };
                        let change = match rest.split_once('|') {
                            Some(("tenant", id)) => MetadataChange::Tenant(id.to_string()),
                            Some(("migration", id)) => match id.parse() {
                                Ok(id) => MetadataChange::Migration(id),
                                Err(_) => continue,
                            },
                            _ => MetadataChange::Ring,
                        };
                        let _ = changes.send(change);
                    }
                }
                tracing::warn!("metadata change listener disconnected; reconnecting");
            }
            Err(error) => tracing::debug!(%error, "metadata change listener cannot connect"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[async_trait]
impl MetadataStore for PostgresMetadata {
    async fn create_tenant(&self, id: &str, settings: TenantSettings) -> Result<Tenant, MetadataError> {
        let (replication, max_siblings) = (settings.replication, settings.max_siblings);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let inserted = tx
            .execute(
                "INSERT INTO tenants (id, replication, read_quorum, write_quorum, max_siblings, sloppy_quorum, version)
                 VALUES ($1, $2, $3, $4, $5, $6, 1) ON CONFLICT (id) DO NOTHING",
                &[
                    &id,
                    &i32::from(replication.n()),
                    &i32::from(replication.r()),
                    &i32::from(replication.w()),
                    &(max_siblings as i32),
                    &settings.sloppy_quorum,
                ],
            )
            .await
            .map_err(unavailable)?;
        if inserted == 0 {
            return Err(MetadataError::TenantExists(id.to_string()));
        }
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.payload(&format!("tenant|{id}"))])
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(settings.tenant(id, 1))
    }

    async fn get_tenant(&self, id: &str) -> Result<Tenant, MetadataError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, replication, read_quorum, write_quorum, max_siblings, sloppy_quorum, version FROM tenants WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(unavailable)?;
        row.as_ref().map(row_to_tenant).unwrap_or_else(|| Err(MetadataError::TenantNotFound(id.to_string())))
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, MetadataError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, replication, read_quorum, write_quorum, max_siblings, sloppy_quorum, version FROM tenants ORDER BY id",
                &[],
            )
            .await
            .map_err(unavailable)?;
        rows.iter().map(row_to_tenant).collect()
    }

    async fn update_tenant(
        &self,
        id: &str,
        expected_version: u64,
        settings: TenantSettings,
    ) -> Result<Tenant, MetadataError> {
        let (replication, max_siblings) = (settings.replication, settings.max_siblings);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let updated = tx
            .query_opt(
                "UPDATE tenants SET replication = $3, read_quorum = $4, write_quorum = $5, max_siblings = $6,
                        sloppy_quorum = $7, version = version + 1, updated_at = now()
                 WHERE id = $1 AND version = $2
                 RETURNING id, replication, read_quorum, write_quorum, max_siblings, sloppy_quorum, version",
                &[
                    &id,
                    &(expected_version as i64),
                    &i32::from(replication.n()),
                    &i32::from(replication.r()),
                    &i32::from(replication.w()),
                    &(max_siblings as i32),
                    &settings.sloppy_quorum,
                ],
            )
            .await
            .map_err(unavailable)?;
        let Some(row) = updated else {
            let current =
                tx.query_opt("SELECT version FROM tenants WHERE id = $1", &[&id]).await.map_err(unavailable)?;
            return Err(match current {
                None => MetadataError::TenantNotFound(id.to_string()),
                Some(row) => MetadataError::VersionConflict {
                    id: id.to_string(),
                    expected: expected_version,
                    actual: row.get::<_, i64>(0) as u64,
                },
            });
        };
        let tenant = row_to_tenant(&row)?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.payload(&format!("tenant|{id}"))])
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(tenant)
    }

    async fn upsert_node(&self, node: NodeRecord) -> Result<NodeRecord, MetadataError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        // Serialise topology changes so the stamp moves once per change.
        tx.execute("SELECT version FROM ring_state WHERE singleton FOR UPDATE", &[]).await.map_err(unavailable)?;
        if upsert_node_in(&tx, &node).await? > 0 {
            let row = tx
                .query_one("UPDATE ring_state SET stamp = stamp + 1 WHERE singleton RETURNING stamp", &[])
                .await
                .map_err(unavailable)?;
            self.notify_ring(&tx, row.get(0)).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(node)
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, MetadataError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT id, address, zone, vnodes, state FROM storage_nodes ORDER BY id", &[])
            .await
            .map_err(unavailable)?;
        rows.iter().map(row_to_node).collect()
    }

    async fn ring_version(&self) -> Result<u64, MetadataError> {
        let client = self.client().await?;
        let row = client.query_one("SELECT version FROM ring_state WHERE singleton", &[]).await.map_err(unavailable)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn topology_stamp(&self) -> Result<u64, MetadataError> {
        let client = self.client().await?;
        let row = client.query_one("SELECT stamp FROM ring_state WHERE singleton", &[]).await.map_err(unavailable)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn ring_history(&self) -> Result<RingHistory, MetadataError> {
        let client = self.client().await?;
        // One statement: the live range and the versions come from one snapshot.
        let rows = client
            .query(
                "SELECT v.version, v.nodes::text AS nodes FROM ring_versions v, ring_state s
                 WHERE s.singleton AND v.version BETWEEN s.oldest_live AND s.version
                 ORDER BY v.version",
                &[],
            )
            .await
            .map_err(unavailable)?;
        Ok(RingHistory { live: rows.iter().map(row_to_ring_version).collect::<Result<_, _>>()? })
    }

    async fn ring_at(&self, version: u64) -> Result<Option<RingVersion>, MetadataError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT version, nodes::text AS nodes FROM ring_versions WHERE version = $1",
                &[&i64::try_from(version).unwrap_or(i64::MAX)],
            )
            .await
            .map_err(unavailable)?;
        row.as_ref().map(row_to_ring_version).transpose()
    }

    async fn propose_ring_change(&self, change: RingChange) -> Result<(u64, Option<Migration>), MetadataError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        // Serialises ring changes: a racing proposal waits here, then reads
        // the winner's version (and migration) and is refused.
        let ring = tx
            .query_one("SELECT version, oldest_live FROM ring_state WHERE singleton FOR UPDATE", &[])
            .await
            .map_err(unavailable)?;
        let (current, oldest_live) = (ring.get::<_, i64>(0) as u64, ring.get::<_, i64>(1) as u64);
        let running = tx
            .query_opt(
                "SELECT id, kind, node_id, state FROM membership_migrations WHERE state = ANY($1) ORDER BY id LIMIT 1",
                &[&running_states()],
            )
            .await
            .map_err(unavailable)?;
        if let Some(row) = running {
            let id = row.get::<_, i64>("id") as u64;
            let (kind, state): (String, String) = (row.get("kind"), row.get("state"));
            let unknown = |what: &str, name: &str| {
                MetadataError::Unavailable(format!("stored migration {id} has an unknown {what} {name:?}"))
            };
            return Err(MetadataError::MigrationRunning {
                id,
                kind: MigrationKind::parse(&kind).ok_or_else(|| unknown("kind", &kind))?.as_str(),
                node: row.get("node_id"),
                state: MigrationState::parse(&state).ok_or_else(|| unknown("state", &state))?.as_str(),
            });
        }
        if current != change.expected_version {
            return Err(MetadataError::RingConflict { expected: change.expected_version, current });
        }
        let version = current + 1;
        tx.execute(
            "INSERT INTO ring_versions (version, nodes) VALUES ($1, $2::text::jsonb)",
            &[&(version as i64), &nodes_json(&change.nodes)?],
        )
        .await
        .map_err(unavailable)?;
        for record in &change.records {
            upsert_node_in(&tx, record).await?;
        }
        // Without a migration the new version is at once the only live one.
        let oldest_live = if change.migration.is_some() { oldest_live } else { version };
        let stamp: i64 = tx
            .query_one(
                "UPDATE ring_state SET version = $1, oldest_live = $2, stamp = stamp + 1 WHERE singleton RETURNING stamp",
                &[&(version as i64), &(oldest_live as i64)],
            )
            .await
            .map_err(unavailable)?
            .get(0);
        let migration = match &change.migration {
            None => None,
            Some((kind, node_id)) => {
                // Ids are max + 1: the ring_state row lock serialises them.
                let row = tx
                    .query_one(
                        &format!(
                            "INSERT INTO membership_migrations (id, kind, node_id, state, phase, from_version, to_version)
                             SELECT coalesce(max(id), 0) + 1, $1::text, $2::text, $3::text, $4::text, $5::bigint, $6::bigint
                             FROM membership_migrations
                             RETURNING {MIGRATION_COLUMNS}"
                        ),
                        &[
                            &kind.as_str(),
                            node_id,
                            &MigrationState::Pending.as_str(),
                            &MigrationPhase::DualWrite.as_str(),
                            &(current as i64),
                            &(version as i64),
                        ],
                    )
                    .await
                    .map_err(unavailable)?;
                Some(row_to_migration(&row)?)
            }
        };
        self.notify_ring(&tx, stamp).await?;
        if let Some(migration) = &migration {
            self.notify_migration(&tx, migration.id).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok((version, migration))
    }

    async fn migrations(&self) -> Result<Vec<Migration>, MetadataError> {
        let client = self.client().await?;
        let rows = client
            .query(&format!("SELECT {MIGRATION_COLUMNS} FROM membership_migrations ORDER BY id DESC"), &[])
            .await
            .map_err(unavailable)?;
        rows.iter().map(row_to_migration).collect()
    }

    async fn migration(&self, id: u64) -> Result<Migration, MetadataError> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("SELECT {MIGRATION_COLUMNS} FROM membership_migrations WHERE id = $1"), &[&(id as i64)])
            .await
            .map_err(unavailable)?;
        row.as_ref().map(row_to_migration).unwrap_or(Err(MetadataError::MigrationNotFound(id)))
    }

    async fn request_cancel(&self, id: u64) -> Result<Migration, MetadataError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let row = tx
            .query_opt("SELECT state FROM membership_migrations WHERE id = $1 FOR UPDATE", &[&(id as i64)])
            .await
            .map_err(unavailable)?
            .ok_or(MetadataError::MigrationNotFound(id))?;
        let state: String = row.get(0);
        let state = MigrationState::parse(&state).ok_or_else(|| {
            MetadataError::Unavailable(format!("stored migration {id} has an unknown state {state:?}"))
        })?;
        if !state.is_running() {
            return Err(MetadataError::MigrationEnded { id, state: state.as_str() });
        }
        let row = tx
            .query_one(
                &format!(
                    "UPDATE membership_migrations SET cancel_requested = true, updated_at = now() WHERE id = $1
                     RETURNING {MIGRATION_COLUMNS}"
                ),
                &[&(id as i64)],
            )
            .await
            .map_err(unavailable)?;
        let migration = row_to_migration(&row)?;
        self.notify_migration(&tx, id).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(migration)
    }

    async fn update_migration(&self, generation: u64, migration: &Migration) -> Result<(), MetadataError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        fence(&tx, generation).await?;
        write_migration(&tx, migration).await?;
        self.notify_migration(&tx, migration.id).await?;
        tx.commit().await.map_err(unavailable)
    }

    async fn step_ring(&self, generation: u64, migration: &Migration, step: RingStep) -> Result<(), MetadataError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        fence(&tx, generation).await?;
        let ring = tx
            .query_one("SELECT version, oldest_live FROM ring_state WHERE singleton FOR UPDATE", &[])
            .await
            .map_err(unavailable)?;
        let (mut current, oldest) = (ring.get::<_, i64>(0) as u64, ring.get::<_, i64>(1) as u64);
        if let Some(nodes) = &step.append {
            current += 1;
            tx.execute(
                "INSERT INTO ring_versions (version, nodes) VALUES ($1, $2::text::jsonb)",
                &[&(current as i64), &nodes_json(nodes)?],
            )
            .await
            .map_err(unavailable)?;
        }
        if !(oldest..=current).contains(&step.oldest_live) {
            return Err(MetadataError::Unavailable(format!(
                "ring step refused: oldest live version {} is outside the live versions {oldest}..={current}",
                step.oldest_live
            )));
        }
        // The last state given for a node wins; unknown nodes are ignored.
        let states: BTreeMap<&str, &str> =
            step.node_states.iter().map(|(id, state)| (id.as_str(), state.as_str())).collect();
        let (ids, names): (Vec<&str>, Vec<&str>) = states.into_iter().unzip();
        tx.execute(
            "UPDATE storage_nodes SET state = s.state, updated_at = now()
             FROM unnest($1::text[], $2::text[]) AS s (id, state)
             WHERE storage_nodes.id = s.id AND storage_nodes.state IS DISTINCT FROM s.state",
            &[&ids, &names],
        )
        .await
        .map_err(unavailable)?;
        let stamp: i64 = tx
            .query_one(
                "UPDATE ring_state SET version = $1, oldest_live = $2, stamp = stamp + 1 WHERE singleton RETURNING stamp",
                &[&(current as i64), &(step.oldest_live as i64)],
            )
            .await
            .map_err(unavailable)?
            .get(0);
        write_migration(&tx, migration).await?;
        self.notify_ring(&tx, stamp).await?;
        self.notify_migration(&tx, migration.id).await?;
        tx.commit().await.map_err(unavailable)
    }

    async fn checkpoints(&self, migration: u64) -> Result<Vec<Checkpoint>, MetadataError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT range_start::text AS range_start, range_end::text AS range_end, keys_copied, done
                 FROM migration_checkpoints WHERE migration_id = $1 ORDER BY range_start",
                &[&(migration as i64)],
            )
            .await
            .map_err(unavailable)?;
        let token = |row: &Row, column: &str| -> Result<u64, MetadataError> {
            let text: String = row.get(column);
            text.parse().map_err(|_| {
                MetadataError::Unavailable(format!("stored checkpoint of migration {migration} has {column} {text:?}"))
            })
        };
        rows.iter()
            .map(|row| {
                Ok(Checkpoint {
                    range_start: token(row, "range_start")?,
                    range_end: token(row, "range_end")?,
                    keys_copied: row.get::<_, i64>("keys_copied") as u64,
                    done: row.get("done"),
                })
            })
            .collect()
    }

    async fn save_checkpoints(
        &self,
        generation: u64,
        migration: u64,
        checkpoints: &[Checkpoint],
    ) -> Result<(), MetadataError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        fence(&tx, generation).await?;
        let exists = tx
            .query_opt("SELECT 1 FROM membership_migrations WHERE id = $1", &[&(migration as i64)])
            .await
            .map_err(unavailable)?;
        if exists.is_none() {
            return Err(MetadataError::MigrationNotFound(migration));
        }
        // By range start, the last given winning: one statement may not
        // update a row twice. Tokens travel as decimal text (numeric(20)).
        let by_start: BTreeMap<u64, &Checkpoint> = checkpoints.iter().map(|c| (c.range_start, c)).collect();
        let starts: Vec<String> = by_start.keys().map(u64::to_string).collect();
        let ends: Vec<String> = by_start.values().map(|c| c.range_end.to_string()).collect();
        let keys: Vec<i64> = by_start.values().map(|c| c.keys_copied as i64).collect();
        let done: Vec<bool> = by_start.values().map(|c| c.done).collect();
        tx.execute(
            "INSERT INTO migration_checkpoints (migration_id, range_start, range_end, keys_copied, done)
             SELECT $1::bigint, c.range_start::numeric, c.range_end::numeric, c.keys_copied, c.done
             FROM unnest($2::text[], $3::text[], $4::bigint[], $5::boolean[]) AS c (range_start, range_end, keys_copied, done)
             ON CONFLICT (migration_id, range_start) DO UPDATE
                 SET range_end = EXCLUDED.range_end, keys_copied = EXCLUDED.keys_copied, done = EXCLUDED.done,
                     updated_at = now()",
            &[&(migration as i64), &starts, &ends, &keys, &done],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<Option<u64>, MetadataError> {
        let client = self.client().await?;
        // The database's clock decides expiry, so coordinators' clocks need
        // not agree.
        let row = client
            .query_opt(
                "UPDATE leader_lease SET
                     generation = CASE WHEN holder = $1 AND expires_at > now() THEN generation ELSE generation + 1 END,
                     holder = $1,
                     expires_at = now() + make_interval(secs => $2)
                 WHERE singleton AND (holder = $1 OR holder IS NULL OR expires_at <= now())
                 RETURNING generation",
                &[&holder, &ttl.as_secs_f64()],
            )
            .await
            .map_err(unavailable)?;
        Ok(row.map(|row| row.get::<_, i64>(0) as u64))
    }

    async fn release_lease(&self, holder: &str) -> Result<(), MetadataError> {
        let client = self.client().await?;
        client
            .execute("UPDATE leader_lease SET expires_at = now() WHERE singleton AND holder = $1", &[&holder])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn context_keys(&self) -> Result<Vec<ContextKey>, MetadataError> {
        let client = self.client().await?;
        let select = "SELECT id, secret FROM context_keys ORDER BY id";
        let rows = client.query(select, &[]).await.map_err(unavailable)?;
        if !rows.is_empty() {
            return rows.iter().map(row_to_key).collect();
        }
        // The first to find none creates key 1; a racing creator's insert
        // does nothing, and both read the one that won.
        let secret: Vec<u8> = rand::random::<[u8; 32]>().to_vec();
        client
            .execute("INSERT INTO context_keys (id, secret) VALUES (1, $1) ON CONFLICT (id) DO NOTHING", &[&secret])
            .await
            .map_err(unavailable)?;
        let rows = client.query(select, &[]).await.map_err(unavailable)?;
        rows.iter().map(row_to_key).collect()
    }

    async fn rotate_context_key(&self) -> Result<ContextKey, MetadataError> {
        let client = self.client().await?;
        let secret: Vec<u8> = rand::random::<[u8; 32]>().to_vec();
        let row = client
            .query_one(
                "INSERT INTO context_keys (id, secret)
                 SELECT COALESCE(max(id), 0) + 1, $1 FROM context_keys RETURNING id, secret",
                &[&secret],
            )
            .await
            .map_err(unavailable)?;
        row_to_key(&row)
    }

    async fn current_lease(&self) -> Result<Option<Lease>, MetadataError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT holder, generation, expires_at > now() AS live FROM leader_lease WHERE singleton", &[])
            .await
            .map_err(unavailable)?;
        let holder: Option<String> = row.get("holder");
        Ok(holder.map(|holder| Lease {
            holder,
            generation: row.get::<_, i64>("generation") as u64,
            live: row.get("live"),
        }))
    }

    async fn record_node_health(&self, generation: u64, probes: &[NodeProbe]) -> Result<(), MetadataError> {
        let client = self.client().await?;
        let nodes: Vec<&str> = probes.iter().map(|p| p.node.as_str()).collect();
        let up: Vec<bool> = probes.iter().map(|p| p.up).collect();
        // One statement: the fence and the write commit together. `FOR SHARE`
        // holds the lease row until the write commits, so a takeover (which
        // updates that row) waits for it, and a takeover committed meanwhile
        // makes the row fail the generation check. The upsert's own guard
        // never lets an older generation overwrite a newer one's record.
        let row = client
            .query_one(
                "WITH lease AS (
                     SELECT generation FROM leader_lease
                     WHERE singleton AND holder IS NOT NULL AND generation = $1 AND expires_at > now()
                     FOR SHARE
                 ), written AS (
                     INSERT INTO node_health (node_id, up, checked_at, generation)
                     SELECT probe.node_id, probe.up, now(), lease.generation
                     FROM lease, unnest($2::text[], $3::boolean[]) AS probe (node_id, up)
                     JOIN storage_nodes ON storage_nodes.id = probe.node_id
                     ON CONFLICT (node_id) DO UPDATE
                         SET up = EXCLUDED.up, checked_at = EXCLUDED.checked_at, generation = EXCLUDED.generation
                         WHERE node_health.generation <= EXCLUDED.generation
                 )
                 SELECT EXISTS (SELECT 1 FROM lease) AS holds,
                        (SELECT generation FROM leader_lease WHERE singleton) AS current",
                &[&(generation as i64), &nodes, &up],
            )
            .await
            .map_err(unavailable)?;
        if row.get("holds") {
            Ok(())
        } else {
            Err(MetadataError::Fenced { generation, current: row.get::<_, i64>("current") as u64 })
        }
    }

    async fn node_health(&self) -> Result<Vec<NodeHealth>, MetadataError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT node_id, up, (extract(epoch FROM checked_at) * 1000)::bigint AS checked_at_ms, generation
                 FROM node_health ORDER BY node_id",
                &[],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|row| NodeHealth {
                node: row.get("node_id"),
                up: row.get("up"),
                checked_at_ms: row.get::<_, i64>("checked_at_ms") as u64,
                generation: row.get::<_, i64>("generation") as u64,
            })
            .collect())
    }

    fn changes(&self) -> Option<broadcast::Receiver<MetadataChange>> {
        Some(self.changes.subscribe())
    }
}

/// Test support: a fresh schema per test against the PostgreSQL named by
/// `COHORT_TEST_POSTGRES_URL` (default: the local `test` database).
pub mod testing {
    /// The PostgreSQL URL tests use.
    pub fn url() -> String {
        std::env::var("COHORT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// A schema name no other test run uses.
    pub fn unique_schema(label: &str) -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        format!("cohort_test_{label}_{}_{nanos}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// Drops a test schema and everything in it.
    pub async fn drop_schema(schema: &str) {
        let (client, connection) =
            tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.expect("PostgreSQL for tests is reachable");
        let driver = tokio::spawn(connection);
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.expect("drop test schema");
        drop(client);
        let _ = driver.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails loudly when PostgreSQL is unreachable: these tests never skip.
    async fn store(schema: &str) -> PostgresMetadata {
        PostgresMetadata::connect(&testing::url(), schema, 4).await.unwrap_or_else(|e| {
            panic!("PostgreSQL for tests is unreachable at {} (set COHORT_TEST_POSTGRES_URL): {e}", testing::url())
        })
    }

    #[tokio::test]
    async fn passes_the_contract() {
        let schema = testing::unique_schema("contract");
        let store = store(&schema).await;
        super::super::contract::run(&store).await;
        drop(store);
        testing::drop_schema(&schema).await;
    }

    #[tokio::test]
    async fn migrations_apply_once_from_empty_and_rerun_cleanly() {
        let schema = testing::unique_schema("migrate");
        let url = testing::url();
        // Two coordinators starting at once: the advisory lock serialises them.
        let (a, b) = tokio::join!(migrate(&url, &schema), migrate(&url, &schema));
        let applied = a.expect("first migrate") + b.expect("second migrate");
        assert_eq!(applied, MIGRATIONS.len(), "each migration applied exactly once");
        assert_eq!(migrate(&url, &schema).await.expect("re-run"), 0, "a re-run applies nothing");
        let store = store(&schema).await;
        assert_eq!(store.ring_version().await.unwrap(), 0);
        assert!(store.list_tenants().await.unwrap().is_empty());
        drop(store);
        testing::drop_schema(&schema).await;
    }

    #[tokio::test]
    async fn changes_are_announced_to_other_coordinators() {
        let schema = testing::unique_schema("notify");
        let (writer, reader) = (store(&schema).await, store(&schema).await);
        let mut changes = reader.changes().expect("postgres announces changes");
        // The listener announces a ring change once subscribed; wait for it
        // so the writes below cannot race the LISTEN.
        let first = tokio::time::timeout(Duration::from_secs(10), changes.recv()).await;
        assert_eq!(first.expect("listener subscribes").expect("open"), MetadataChange::Ring);
        writer.create_tenant("alpha", TenantSettings::new(ReplicationConfig::majority(3).unwrap(), 100)).await.unwrap();
        let node = NodeRecord {
            id: "n1".into(),
            address: "127.0.0.1:1".into(),
            zone: None,
            vnodes: 150,
            state: NodeState::Active,
        };
        writer.upsert_node(node).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let next = tokio::time::timeout(Duration::from_secs(10), changes.recv()).await;
            seen.push(next.expect("notification arrives").expect("open"));
        }
        assert_eq!(seen, [MetadataChange::Tenant("alpha".into()), MetadataChange::Ring]);

        // A proposal with a migration announces both; a cancel request the
        // migration.
        let change = RingChange {
            expected_version: 0,
            nodes: vec![NodeSpec { id: "n1".into(), zone: None, vnodes: 150 }],
            records: vec![],
            migration: Some((MigrationKind::Join, "n1".into())),
        };
        writer.propose_ring_change(change).await.unwrap();
        writer.request_cancel(1).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let next = tokio::time::timeout(Duration::from_secs(10), changes.recv()).await;
            seen.push(next.expect("notification arrives").expect("open"));
        }
        assert_eq!(seen, [MetadataChange::Ring, MetadataChange::Migration(1), MetadataChange::Migration(1)]);
        drop((writer, reader));
        testing::drop_schema(&schema).await;
    }

    /// Migration 4 converts a cluster that ran on migrations 1-3: its active
    /// nodes become the one live ring version, numbered as the old counter.
    #[tokio::test]
    async fn migration_4_converts_a_schema_with_nodes() {
        let schema = testing::unique_schema("upgrade");
        let url = testing::url();
        assert_eq!(apply_migrations(&url, &schema, &MIGRATIONS[..3]).await.unwrap(), 3);
        let (client, connection) = pg_config(&url, &schema).unwrap().connect(NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        // As the old code left it: every upsert bumped ring_state.version
        // (two nodes added, one moved).
        client
            .batch_execute(
                "INSERT INTO storage_nodes (id, address, zone, vnodes, state)
                     VALUES ('n2', '127.0.0.1:2', 'z2', 150, 'active'), ('n1', '127.0.0.1:1', NULL, 64, 'active');
                 UPDATE ring_state SET version = 3;
                 INSERT INTO node_health (node_id, up, checked_at, generation) VALUES ('n1', true, now(), 1);
                 INSERT INTO membership_migrations (kind, node_id, phase) VALUES ('join', 'n1', 'dual_write');",
            )
            .await
            .unwrap();
        assert_eq!(migrate(&url, &schema).await.unwrap(), MIGRATIONS.len() - 3, "migrations 4 and later are left");

        let store = store(&schema).await;
        let n1 = NodeSpec { id: "n1".into(), zone: None, vnodes: 64 };
        let n2 = NodeSpec { id: "n2".into(), zone: Some("z2".into()), vnodes: 150 };
        let history = RingHistory { live: vec![RingVersion { version: 3, nodes: vec![n1.clone(), n2.clone()] }] };
        assert_eq!(store.ring_history().await.unwrap(), history);
        assert_eq!(store.ring_version().await.unwrap(), 3, "ring_state.version and the newest version agree");
        assert_eq!(store.topology_stamp().await.unwrap(), 3, "the stamp carries on from the old counter");
        let nodes: Vec<_> = store.list_nodes().await.unwrap().into_iter().map(|n| (n.id, n.state)).collect();
        assert_eq!(nodes, [("n1".into(), NodeState::Active), ("n2".into(), NodeState::Active)]);
        assert_eq!(store.node_health().await.unwrap().len(), 1, "node health is kept");
        assert!(store.migrations().await.unwrap().is_empty(), "the unused old migrations table is replaced");
        let bad = client.execute("UPDATE storage_nodes SET state = 'bogus' WHERE id = 'n1'", &[]).await;
        assert!(bad.is_err(), "node states are checked");

        // The ring changes on from the converted version.
        let change = RingChange {
            expected_version: 3,
            nodes: vec![n1],
            records: vec![],
            migration: Some((MigrationKind::Leave, "n2".into())),
        };
        let (version, migration) = store.propose_ring_change(change).await.unwrap();
        let migration = migration.expect("recorded");
        assert_eq!((version, migration.id, migration.from_version, migration.to_version), (4, 1, 3, 4));
        assert_eq!(store.ring_history().await.unwrap().live.len(), 2);

        drop(client);
        let _ = driver.await;
        drop(store);
        testing::drop_schema(&schema).await;
    }

    /// Migration 4 on a schema without active nodes leaves no ring version,
    /// whatever the old counter said.
    #[tokio::test]
    async fn migration_4_converts_a_schema_without_nodes() {
        let schema = testing::unique_schema("upgrade_empty");
        let url = testing::url();
        assert_eq!(apply_migrations(&url, &schema, &MIGRATIONS[..3]).await.unwrap(), 3);
        let (client, connection) = pg_config(&url, &schema).unwrap().connect(NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        client.batch_execute("UPDATE ring_state SET version = 5").await.unwrap();
        drop(client);
        let _ = driver.await;
        assert_eq!(migrate(&url, &schema).await.unwrap(), MIGRATIONS.len() - 3);
        let store = store(&schema).await;
        assert_eq!(store.ring_history().await.unwrap(), RingHistory::default());
        assert_eq!(store.ring_version().await.unwrap(), 0);
        drop(store);
        testing::drop_schema(&schema).await;
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["cohort", "_x", "cohort_test_1"] {
            assert!(valid_schema(good), "{good}");
        }
        for bad in ["", "1x", "Cohort", "a;drop", "a-b", "a b"] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}
