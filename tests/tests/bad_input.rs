//! Guarantee 7: bad input never panics a process and never
//! changes stored data. Every bad input gets its documented status code.

use bytes::Bytes;
use cohort_proto::v1 as pb;
use cohort_proto::v1::admin_client::AdminClient;
use cohort_proto::v1::key_value_client::KeyValueClient;
use cohort_tests::{TENANT, TestCluster};
use tonic::Code;
use tonic::transport::Channel;

fn put(tenant: &str, key: &[u8], value: Vec<u8>) -> pb::PutRequest {
    pb::PutRequest {
        tenant: tenant.into(),
        key: Bytes::copy_from_slice(key),
        value: value.into(),
        ..Default::default()
    }
}

fn level(level: i32) -> Option<pb::Consistency> {
    Some(pb::Consistency { kind: Some(pb::consistency::Kind::Level(level)) })
}

fn replicas(count: u32) -> Option<pb::Consistency> {
    Some(pb::Consistency { kind: Some(pb::consistency::Kind::Replicas(count)) })
}

async fn kv(cluster: &TestCluster) -> KeyValueClient<Channel> {
    KeyValueClient::connect(cluster.endpoint()).await.expect("connect").max_encoding_message_size(64 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_writes_and_reads_get_their_status_and_store_nothing() {
    let cluster = TestCluster::start().await;
    let mut client = kv(&cluster).await;
    let cases: Vec<(&str, pb::PutRequest, Code)> = vec![
        ("empty key", put(TENANT, b"", b"v".to_vec()), Code::InvalidArgument),
        ("oversize key", put(TENANT, &[b'k'; 1025], b"v".to_vec()), Code::InvalidArgument),
        ("oversize value", put(TENANT, b"victim", vec![0; 1024 * 1024 + 1]), Code::InvalidArgument),
        ("bad tenant id", put("Not_Valid", b"victim", b"v".to_vec()), Code::InvalidArgument),
        ("tenant id too long", put(&"t".repeat(64), b"victim", b"v".to_vec()), Code::InvalidArgument),
        ("unknown tenant", put("nobody", b"victim", b"v".to_vec()), Code::NotFound),
        (
            "unknown level",
            pb::PutRequest { consistency: level(99), ..put(TENANT, b"victim", b"v".to_vec()) },
            Code::InvalidArgument,
        ),
        (
            "zero replicas",
            pb::PutRequest { consistency: replicas(0), ..put(TENANT, b"victim", b"v".to_vec()) },
            Code::InvalidArgument,
        ),
        (
            "more replicas than N",
            pb::PutRequest { consistency: replicas(4), ..put(TENANT, b"victim", b"v".to_vec()) },
            Code::InvalidArgument,
        ),
        (
            "garbage context",
            pb::PutRequest { context: Bytes::from_static(b"\x01\xff\xff"), ..put(TENANT, b"victim", b"v".to_vec()) },
            Code::InvalidArgument,
        ),
        (
            "unknown context format",
            pb::PutRequest { context: Bytes::from_static(b"\x09abc"), ..put(TENANT, b"victim", b"v".to_vec()) },
            Code::InvalidArgument,
        ),
        (
            "oversize idempotency key",
            pb::PutRequest { idempotency_key: "i".repeat(129), ..put(TENANT, b"victim", b"v".to_vec()) },
            Code::InvalidArgument,
        ),
    ];
    for (what, request, code) in cases {
        let status = client.put(request).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert!(!status.message().is_empty(), "{what}: the error says why");
    }

    let get = |tenant: &str, key: &[u8], consistency| pb::GetRequest {
        tenant: tenant.into(),
        key: Bytes::copy_from_slice(key),
        consistency,
    };
    let reads = vec![
        ("empty key", get(TENANT, b"", None), Code::InvalidArgument),
        ("oversize key", get(TENANT, &[b'k'; 1025], None), Code::InvalidArgument),
        ("bad tenant", get("UPPER", b"k", None), Code::InvalidArgument),
        ("unknown tenant", get("nobody", b"k", None), Code::NotFound),
        ("bad level", get(TENANT, b"k", level(-1)), Code::InvalidArgument),
        ("too many replicas", get(TENANT, b"k", replicas(7)), Code::InvalidArgument),
    ];
    for (what, request, code) in reads {
        let status = client.get(request).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
    }
    let delete = pb::DeleteRequest { tenant: TENANT.into(), key: Bytes::new(), ..Default::default() };
    assert_eq!(client.delete(delete).await.expect_err("empty key").code(), Code::InvalidArgument);

    for state in cluster.replica_states("victim").await {
        assert!(state.is_empty(), "a rejected write stored something: {state:?}");
    }
    // The cluster still serves good requests.
    client.put(put(TENANT, b"victim", b"fine".to_vec())).await.expect("a good write after bad ones");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_requests_get_their_status_and_change_nothing() {
    let cluster = TestCluster::start().await;
    let mut admin = AdminClient::connect(cluster.endpoint()).await.expect("connect");
    let create = |id: &str, replication, read_quorum, write_quorum| pb::CreateTenantRequest {
        id: id.into(),
        replication,
        read_quorum,
        write_quorum,
        ..Default::default()
    };
    let cases = vec![
        ("bad id", create("Bad Id", 3, 0, 0), Code::InvalidArgument),
        ("replication 8", create("t8", 8, 0, 0), Code::InvalidArgument),
        ("read quorum above N", create("tr", 3, 4, 0), Code::InvalidArgument),
        ("write quorum above N", create("tw", 3, 0, 4), Code::InvalidArgument),
        ("exists", create(TENANT, 3, 0, 0), Code::AlreadyExists),
        (
            "sibling cap too high",
            pb::CreateTenantRequest { max_siblings: 10_001, ..create("ts", 3, 0, 0) },
            Code::InvalidArgument,
        ),
    ];
    for (what, request, code) in cases {
        let status = admin.create_tenant(request).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
    }
    let tenants = admin.list_tenants(pb::ListTenantsRequest {}).await.expect("list").into_inner().tenants;
    assert_eq!(tenants.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), [TENANT], "nothing was created");

    let tenant = admin.get_tenant(pb::GetTenantRequest { id: TENANT.into() }).await.expect("get").into_inner();
    let stale = pb::UpdateTenantRequest {
        id: TENANT.into(),
        expected_version: tenant.version + 7,
        replication: 1,
        ..Default::default()
    };
    let status = admin.update_tenant(stale).await.expect_err("stale version");
    assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message());
    // Changing N would need a data migration: refused, nothing changes.
    let grow = pb::UpdateTenantRequest {
        id: TENANT.into(),
        expected_version: tenant.version,
        replication: 5,
        ..Default::default()
    };
    assert_eq!(admin.update_tenant(grow).await.expect_err("N change").code(), Code::FailedPrecondition);
    let empty = pb::UpdateTenantRequest { id: TENANT.into(), expected_version: tenant.version, ..Default::default() };
    assert_eq!(admin.update_tenant(empty).await.expect_err("nothing to change").code(), Code::InvalidArgument);
    let missing =
        pb::UpdateTenantRequest { id: "nobody".into(), expected_version: 1, read_quorum: 1, ..Default::default() };
    assert_eq!(admin.update_tenant(missing).await.expect_err("unknown").code(), Code::NotFound);
    let unchanged = admin.get_tenant(pb::GetTenantRequest { id: TENANT.into() }).await.expect("get").into_inner();
    assert_eq!(unchanged, tenant, "failed updates changed nothing");

    let node = |id: &str, address: &str, vnodes| pb::AddNodeRequest {
        id: id.into(),
        address: address.into(),
        zone: None,
        vnodes,
        dry_run: false,
    };
    let taken = cluster.node_address(0).expect("node 1 runs").to_string();
    for (what, request, code) in [
        ("no port", node("n9", "127.0.0.1", None), Code::InvalidArgument),
        ("bad id", node("n 9", "127.0.0.1:1", None), Code::InvalidArgument),
        ("too many vnodes", node("node-1", &taken, Some(100_000)), Code::InvalidArgument),
        ("zero vnodes", node("node-1", &taken, Some(0)), Code::InvalidArgument),
        // F13: one disk must never count as two replicas.
        ("a second id on one address", node("n9", &taken, None), Code::FailedPrecondition),
        ("an address that serves another node", node("node-2", &taken, None), Code::FailedPrecondition),
        ("nothing listens there", node("n9", "127.0.0.1:1", None), Code::FailedPrecondition),
    ] {
        let status = admin.add_node(request).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
    }
    let nodes = admin.list_nodes(pb::ListNodesRequest {}).await.expect("list").into_inner().nodes;
    assert_eq!(nodes.len(), 3, "no node was added");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_as_context_never_break_the_server() {
    let cluster = TestCluster::start().await;
    let mut client = kv(&cluster).await;
    // A fixed pseudo-random sequence (xorshift), so failures replay.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let len = (next() % 40) as usize;
        let mut context: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 && !context.is_empty() {
            context[0] = 2; // the real format byte, so decoding goes deeper
        }
        let request = pb::PutRequest { context: context.into(), ..put(TENANT, b"fuzz", b"v".to_vec()) };
        if let Err(status) = client.put(request).await {
            assert_eq!(status.code(), Code::InvalidArgument, "round {round}: {}", status.message());
        }
    }
    client.put(put(TENANT, b"after", b"v".to_vec())).await.expect("still serving");
    cluster.shutdown().await;
}

/// F14: re-registering a node without `--zone`/`--vnodes` reset them to
/// none and 150, silently re-placing its data. What a request leaves out
/// now keeps its registered value, and a placement change of a node on the
/// ring (which would move data without a migration) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_adding_a_node_on_the_ring_keeps_its_placement_and_never_changes_it() {
    let cluster = TestCluster::start().await;
    let mut admin = AdminClient::connect(cluster.endpoint()).await.expect("connect");
    let address = cluster.node_address(0).expect("node 1 runs").to_string();
    let add = |zone: Option<&str>, vnodes: Option<u32>| pb::AddNodeRequest {
        id: "node-1".into(),
        address: address.clone(),
        zone: zone.map(str::to_string),
        vnodes,
        dry_run: false,
    };
    let kept = admin.add_node(add(None, None)).await.expect("re-add").into_inner();
    let node = kept.node.expect("the node");
    assert_eq!((node.zone.as_str(), node.vnodes, node.state.as_str()), ("", 150, "active"));
    assert!(kept.migration.is_none(), "re-adding a node on the ring moves nothing");
    for (zone, vnodes) in [(Some("z1"), None), (None, Some(64))] {
        let status = admin.add_node(add(zone, vnodes)).await.expect_err("a placement change");
        assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message());
        assert!(status.message().contains("remove it"), "{}", status.message());
    }
    let nodes = admin.list_nodes(pb::ListNodesRequest {}).await.expect("list").into_inner().nodes;
    assert!(nodes.iter().all(|n| n.zone.is_empty() && n.vnodes == 150), "nothing changed: {nodes:?}");
    cluster.shutdown().await;
}
