//! Storage nodes served by this process, reachable without the network.
//!
//! A node that runs in the same process as its callers (as in `cohort dev`)
//! registers its handler here under the address it listens on. A
//! [`crate::PeerPool`] sharing the directory then calls it directly — no
//! TCP, HTTP/2 or protobuf — while calls to nodes elsewhere, or registered
//! under another address (a proxy in front of them), still go over gRPC.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::handler::StorageHandler;

/// A node's handler and whether it is shutting down.
#[derive(Clone)]
pub(crate) struct LocalNode {
    pub(crate) handler: Arc<dyn StorageHandler>,
    /// True once the node stops taking requests.
    pub(crate) stopping: watch::Receiver<bool>,
}

/// Storage nodes served by this process, by the address they listen on.
#[derive(Default)]
pub struct InProcessNodes {
    /// A std lock: held only to look up, insert or remove.
    nodes: RwLock<HashMap<String, LocalNode>>,
}

impl std::fmt::Debug for InProcessNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        f.debug_set().entries(nodes.keys()).finish()
    }
}

impl InProcessNodes {
    /// Makes `handler` reachable in-process at `address`; calls are refused
    /// as never sent once `stopping` turns true.
    pub fn register(&self, address: &str, handler: Arc<dyn StorageHandler>, stopping: watch::Receiver<bool>) {
        let node = LocalNode { handler, stopping };
        self.nodes.write().unwrap_or_else(|p| p.into_inner()).insert(address.to_string(), node);
    }

    /// Removes the node at `address` (it stopped).
    pub fn unregister(&self, address: &str) {
        self.nodes.write().unwrap_or_else(|p| p.into_inner()).remove(address);
    }

    /// Whether a node is registered at `address`.
    pub fn contains(&self, address: &str) -> bool {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).contains_key(address)
    }

    pub(crate) fn get(&self, address: &str) -> Option<LocalNode> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).get(address).cloned()
    }
}
