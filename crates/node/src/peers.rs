//! A cache of gRPC clients to storage nodes, keyed by address.
//!
//! One lazily connected HTTP/2 channel per address is enough: tonic
//! multiplexes concurrent calls over it. Coordinators and nodes share this
//! type.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cohort_proto::v1::storage_client::StorageClient;
use tonic::transport::{Channel, Endpoint};

/// Largest message accepted on the internal API (a sibling set with many
/// large siblings can exceed tonic's 4 MiB default).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Lazily connected clients to storage nodes.
#[derive(Debug)]
pub struct PeerPool {
    /// A std mutex: held only to look up or insert, never across an await.
    clients: Mutex<HashMap<String, StorageClient<Channel>>>,
    connect_timeout: Duration,
}

impl PeerPool {
    /// An empty pool whose connections give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        PeerPool { clients: Mutex::new(HashMap::new()), connect_timeout }
    }

    /// The client for `address` (`host:port`), created on first use.
    pub fn client(&self, address: &str) -> Result<StorageClient<Channel>, tonic::Status> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(address) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| tonic::Status::invalid_argument(format!("bad node address {address:?}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let client = StorageClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        clients.insert(address.to_string(), client.clone());
        Ok(client)
    }
}
