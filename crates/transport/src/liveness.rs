//! One view, per process, of which replicas are believed down.
//!
//! The write path passes a suspected replica over as coordinating replica,
//! the read path asks the others first, the leader's probe marks a node
//! that stopped answering, and hinted handoff will ask the same question.
//! Suspicion expires on its own: a suspected node is tried again once its
//! time is up, and nothing has to remember to clear it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Replicas under suspicion, and until when.
#[derive(Debug, Default)]
pub struct Liveness {
    /// A std mutex: never held across an await.
    until: Mutex<HashMap<String, Instant>>,
}

impl Liveness {
    /// An empty view: every node is presumed up.
    pub fn new() -> Self {
        Self::default()
    }

    /// Suspects `node` for `span` from now (extending, never shortening, a
    /// suspicion already held).
    pub fn suspect(&self, node: &str, span: Duration) {
        let until = Instant::now() + span;
        let mut suspects = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let entry = suspects.entry(node.to_string()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Whether `node` is suspected now.
    pub fn is_suspect(&self, node: &str) -> bool {
        let now = Instant::now();
        let mut suspects = self.until.lock().unwrap_or_else(|p| p.into_inner());
        match suspects.get(node) {
            Some(until) if *until > now => true,
            Some(_) => {
                suspects.remove(node);
                false
            }
            None => false,
        }
    }

    /// The nodes suspected now, sorted.
    pub fn suspects(&self) -> Vec<String> {
        let now = Instant::now();
        let suspects = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let mut nodes: Vec<String> =
            suspects.iter().filter(|(_, until)| **until > now).map(|(node, _)| node.clone()).collect();
        nodes.sort();
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspicion_holds_for_its_span_and_is_never_shortened() {
        let view = Liveness::new();
        assert!(!view.is_suspect("n1"));
        view.suspect("n1", Duration::from_secs(3600));
        view.suspect("n1", Duration::ZERO);
        assert!(view.is_suspect("n1"));
        assert!(!view.is_suspect("n2"));
        assert_eq!(view.suspects(), ["n1"]);
        view.suspect("n2", Duration::ZERO);
        assert!(!view.is_suspect("n2"), "a suspicion whose span has passed no longer holds");
        assert_eq!(view.suspects(), ["n1"]);
    }
}
