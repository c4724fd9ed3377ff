//! Metadata in PostgreSQL, shared by every coordinator of a cluster.
//!
//! All tables live in one schema (`postgres_schema`, default `cohort`),
//! created and migrated at start-up by [`migrate`]: the SQL files in the
//! repository's `migrations/` folder, applied in order inside one
//! transaction that holds an advisory lock, so coordinators starting together
//! apply each migration exactly once.
//!
//! Changes are announced with `NOTIFY cohort_metadata` in the transaction
//! that makes them; every coordinator LISTENs on a dedicated connection and
//! turns notifications into [`MetadataChange`]s (ring rebuilds, tenant cache
//! invalidations). Notifications are an accelerator only: coordinators also
//! poll the ring version and expire cached tenants.
//!
//! The leader lease's expiry is decided by the database's clock. A
//! leader-only write is one statement that applies only while the lease row
//! is live at the writer's generation, and holds that row (`FOR SHARE`) until
//! it commits, so a takeover waits for it and no write of an old generation
//! lands after the lease changed hands.

use std::time::Duration;

use cohort_ring::{ContextKey, ReplicationConfig};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls, Row};
use tonic::async_trait;

use super::{
    Lease, MetadataChange, MetadataError, MetadataStore, NodeHealth, NodeProbe, NodeRecord, NodeState, Tenant,
};

/// The migrations, in the order they apply. Never edit an applied one: add
/// the next.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "metadata", include_str!("../../../../migrations/0001_metadata.sql")),
    (2, "context_keys_and_sibling_cap", include_str!("../../../../migrations/0002_context_keys_and_sibling_cap.sql")),
    (3, "node_health", include_str!("../../../../migrations/0003_node_health.sql")),
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
        for (version, name, sql) in MIGRATIONS {
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

fn row_to_node(row: &Row) -> NodeRecord {
    NodeRecord {
        id: row.get("id"),
        address: row.get("address"),
        zone: row.get("zone"),
        vnodes: row.get::<_, i32>("vnodes") as u32,
        state: NodeState::Active,
    }
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
    async fn create_tenant(
        &self,
        id: &str,
        replication: ReplicationConfig,
        max_siblings: u32,
    ) -> Result<Tenant, MetadataError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let inserted = tx
            .execute(
                "INSERT INTO tenants (id, replication, read_quorum, write_quorum, max_siblings, version)
                 VALUES ($1, $2, $3, $4, $5, 1) ON CONFLICT (id) DO NOTHING",
                &[
                    &id,
                    &i32::from(replication.n()),
                    &i32::from(replication.r()),
                    &i32::from(replication.w()),
                    &(max_siblings as i32),
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
        Ok(Tenant { id: id.to_string(), replication, max_siblings, version: 1 })
    }

    async fn get_tenant(&self, id: &str) -> Result<Tenant, MetadataError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, replication, read_quorum, write_quorum, max_siblings, version FROM tenants WHERE id = $1",
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
                "SELECT id, replication, read_quorum, write_quorum, max_siblings, version FROM tenants ORDER BY id",
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
        replication: ReplicationConfig,
        max_siblings: u32,
    ) -> Result<Tenant, MetadataError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let updated = tx
            .query_opt(
                "UPDATE tenants SET replication = $3, read_quorum = $4, write_quorum = $5, max_siblings = $6,
                        version = version + 1, updated_at = now()
                 WHERE id = $1 AND version = $2
                 RETURNING id, replication, read_quorum, write_quorum, max_siblings, version",
                &[
                    &id,
                    &(expected_version as i64),
                    &i32::from(replication.n()),
                    &i32::from(replication.r()),
                    &i32::from(replication.w()),
                    &(max_siblings as i32),
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
        // Serialise node changes so the ring version moves once per change.
        tx.execute("SELECT version FROM ring_state WHERE singleton FOR UPDATE", &[]).await.map_err(unavailable)?;
        let changed = tx
            .execute(
                "INSERT INTO storage_nodes (id, address, zone, vnodes, state) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, zone = EXCLUDED.zone,
                     vnodes = EXCLUDED.vnodes, state = EXCLUDED.state, updated_at = now()
                 WHERE (storage_nodes.address, storage_nodes.zone, storage_nodes.vnodes, storage_nodes.state)
                       IS DISTINCT FROM (EXCLUDED.address, EXCLUDED.zone, EXCLUDED.vnodes, EXCLUDED.state)",
                &[&node.id, &node.address, &node.zone, &(node.vnodes as i32), &node.state.as_str()],
            )
            .await
            .map_err(unavailable)?;
        if changed > 0 {
            let row = tx
                .query_one("UPDATE ring_state SET version = version + 1 WHERE singleton RETURNING version", &[])
                .await
                .map_err(unavailable)?;
            let version: i64 = row.get(0);
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.payload(&format!("ring|{version}"))])
                .await
                .map_err(unavailable)?;
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
        Ok(rows.iter().map(row_to_node).collect())
    }

    async fn ring_version(&self) -> Result<u64, MetadataError> {
        let client = self.client().await?;
        let row = client.query_one("SELECT version FROM ring_state WHERE singleton", &[]).await.map_err(unavailable)?;
        Ok(row.get::<_, i64>(0) as u64)
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
        writer.create_tenant("alpha", ReplicationConfig::majority(3).unwrap(), 100).await.unwrap();
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
        drop((writer, reader));
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
