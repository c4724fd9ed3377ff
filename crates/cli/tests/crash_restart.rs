//! Guarantee 1 across `kill -9`: no acknowledged write is lost.
//!
//! Three `cohort node` processes (durability `fsync`) and one
//! `cohort coordinator` process serve a tenant with N = 3, W = 2. While
//! clients write unique values, one node is killed with SIGKILL and later
//! restarted on the same data directory. Every write the cluster acknowledged
//! must then be readable at R = 3, and every write the killed node itself
//! acknowledged must be in its own store after the restart: an
//! acknowledgement means the write was durable, not merely buffered.

#![allow(missing_docs)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_client::{Client, Consistency, ReadOptions};
use cohort_proto::internal::v1::ReadRequest;
use cohort_proto::internal::v1::storage_client::StorageClient;
use cohort_ring::SiblingSet;
use common::{Coordinator, DEADLINE, Proc, admin, node_id, start_coordinator, start_node};
use tokio::sync::watch;

const TENANT: &str = "app";
const KEYS: usize = 200;
const WRITERS: usize = 4;
/// The node killed mid-run, by index (`node-2`).
const VICTIM: usize = 1;
/// Acknowledged writes before the kill.
const KILL_AFTER: usize = 60;

/// One write the cluster acknowledged.
struct Acked {
    key: String,
    value: String,
    /// Node ids named in the write's receipt as having acknowledged it.
    replicas: Vec<String>,
    /// Whether the write was sent after the victim was dead.
    after_kill: bool,
}

/// A cluster of separate processes. Field order matters: the processes are
/// dropped (killed) before the directory they write to is removed.
struct Cluster {
    nodes: Vec<Option<Proc>>,
    coordinator: Coordinator,
    dir: tempfile::TempDir,
}

fn node_dir(dir: &Path, index: usize) -> std::path::PathBuf {
    dir.join(node_id(index))
}

impl Cluster {
    /// Starts three nodes and a coordinator, registers the nodes and creates
    /// the tenant.
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        let mut addresses = Vec::new();
        for index in 0..3 {
            let (proc, address) = start_node(&node_id(index), &node_dir(dir.path(), index));
            nodes.push(Some(proc));
            addresses.push(address);
        }
        let coordinator = start_coordinator(&dir.path().join("coordinator"), &[("COHORT_NODE_TIMEOUT", "1s")]);
        for (index, address) in addresses.iter().enumerate() {
            admin(&coordinator.endpoint, &["node", "add", "--wait", "--id", &node_id(index), "--address", address]);
        }
        admin(&coordinator.endpoint, &["tenant", "create", TENANT, "--replication", "3"]);
        Cluster { nodes, coordinator, dir }
    }

    /// Starts node `index` again on its data directory; returns its new address.
    fn restart(&mut self, index: usize) -> String {
        assert!(self.nodes[index].is_none(), "node {index} is still running");
        let (proc, address) = start_node(&node_id(index), &node_dir(self.dir.path(), index));
        self.nodes[index] = Some(proc);
        address
    }
}

/// Writes `KEYS` unique values from `WRITERS` concurrent tasks while another
/// task kills node `VICTIM` with SIGKILL once `KILL_AFTER` writes have been
/// acknowledged. Returns the acknowledged writes.
async fn write_while_killing(cluster: &mut Cluster) -> Vec<Acked> {
    let client = Client::connect(cluster.coordinator.endpoint.clone()).await.expect("connect to the coordinator");
    let (progress, mut watch_progress) = watch::channel(0usize);
    let progress = Arc::new(progress);
    let killed = Arc::new(AtomicBool::new(false));
    let mut victim = cluster.nodes[VICTIM].take().expect("the victim runs");
    let killer = {
        let killed = killed.clone();
        tokio::spawn(async move {
            let reached = watch_progress.wait_for(|acked| *acked >= KILL_AFTER).await.is_ok();
            victim.kill(); // SIGKILL, then reaped
            killed.store(true, Ordering::SeqCst);
            reached
        })
    };

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (client, progress, killed) = (client.clone(), progress.clone(), killed.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed = Vec::new();
            for i in (writer..KEYS).step_by(WRITERS) {
                let (key, value) = (format!("key-{i:03}"), format!("value-{i:03}-written-once"));
                let after_kill = killed.load(Ordering::SeqCst);
                match client.put(TENANT, key.clone(), value.clone()).await {
                    Ok(written) => {
                        let replicas = written.receipt.map(|r| r.replicas).unwrap_or_default();
                        let replicas = replicas.into_iter().map(|r| r.node_id).collect();
                        acked.push(Acked { key, value, replicas, after_kill });
                        progress.send_modify(|n| *n += 1);
                    }
                    Err(error) => failed.push(format!("{key}: {error}")),
                }
            }
            (acked, failed)
        }));
    }
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    for writer in writers {
        let (a, f) = writer.await.expect("writer task");
        acked.extend(a);
        failed.extend(f);
    }
    drop(progress); // ends the killer's wait if the writers never got far enough
    let killed_midway =
        tokio::time::timeout(DEADLINE, killer).await.expect("the victim is killed").expect("killer task");
    assert!(killed_midway, "fewer than {KILL_AFTER} writes acknowledged before the kill; failures: {failed:?}");
    // With one replica of three down, W = 2 is still reachable: every write
    // should succeed. At least most must, or the test proves nothing.
    assert!(acked.len() >= KEYS - 10, "only {} of {KEYS} writes acknowledged; failures: {failed:?}", acked.len());
    let victim = node_id(VICTIM);
    let by_victim = acked.iter().filter(|a| a.replicas.contains(&victim)).count();
    assert!(by_victim > 0, "{victim} acknowledged nothing before it was killed");
    let after_kill: Vec<&Acked> = acked.iter().filter(|a| a.after_kill).collect();
    assert!(after_kill.len() >= 20, "only {} writes were sent after the kill", after_kill.len());
    for write in after_kill {
        assert!(!write.replicas.contains(&victim), "dead {victim} acknowledged {}: {:?}", write.key, write.replicas);
        assert!(write.replicas.len() >= 2, "{} acknowledged by {:?}, W = 2", write.key, write.replicas);
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_are_read_at_all_replicas() {
    let mut cluster = Cluster::start();
    let acked = write_while_killing(&mut cluster).await;

    // Restart the victim on its data directory and re-register it at its new
    // address; the coordinator refreshes its ring on `node add`.
    let address = cluster.restart(VICTIM);
    admin(&cluster.coordinator.endpoint, &["node", "add", "--id", &node_id(VICTIM), "--address", &address]);

    let client = Client::connect(cluster.coordinator.endpoint.clone()).await.expect("connect to the coordinator");
    let all = ReadOptions { consistency: Some(Consistency::All) };
    // Wait until all three replicas answer again.
    let deadline = Instant::now() + DEADLINE;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        poll.tick().await;
        match client.get_with(TENANT, acked[0].key.clone(), all.clone()).await {
            Ok(_) => break,
            Err(error) if Instant::now() < deadline => eprintln!("waiting for R=3 reads: {error}"),
            Err(error) => panic!("R=3 reads still fail after {DEADLINE:?}: {error}"),
        }
    }

    let mut lost = Vec::new();
    for write in &acked {
        let read = client.get_with(TENANT, write.key.clone(), all.clone()).await.expect("read at R=3");
        let receipt = read.receipt.expect("a read has a receipt");
        assert_eq!(receipt.required, 3, "the read waited for all replicas");
        if !read.siblings.contains(&Bytes::from(write.value.clone())) {
            lost.push(format!("{} (acked by {:?}): read {:?}", write.key, write.replicas, read.siblings));
        }
    }
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost:\n{}", lost.len(), acked.len(), lost.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_keeps_every_write_it_acknowledged() {
    let mut cluster = Cluster::start();
    let acked = write_while_killing(&mut cluster).await;

    // Read the restarted node's own state, before anything (read repair)
    // could copy the writes back to it from the other replicas.
    let address = cluster.restart(VICTIM);
    let mut storage = StorageClient::connect(format!("http://{address}")).await.expect("connect to the node");
    let victim = node_id(VICTIM);
    let mut checked = 0;
    let mut lost = Vec::new();
    for write in acked.iter().filter(|a| a.replicas.contains(&victim)) {
        // Inspection, not routing: past any ring fence.
        let request = ReadRequest {
            tenant: TENANT.into(),
            key: Bytes::from(write.key.clone()),
            ring_version: u64::MAX,
            ..Default::default()
        };
        let state = storage.read(request).await.expect("read the node's state").into_inner().state;
        let state = if state.is_empty() { SiblingSet::new() } else { SiblingSet::decode(&state).expect("decodes") };
        if !state.values().any(|v| v == write.value.as_bytes()) {
            lost.push(format!("{}: node holds {:?}", write.key, state.values().collect::<Vec<_>>()));
        }
        checked += 1;
    }
    assert!(checked > 0);
    assert!(
        lost.is_empty(),
        "{victim} lost {} of the {checked} writes it acknowledged before SIGKILL:\n{}",
        lost.len(),
        lost.join("\n")
    );
}
