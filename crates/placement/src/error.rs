//! Why a sandbox could not be placed ([`PlaceError`]), with the HTTP status the API answers it
//! with in E2B's error body.

use std::fmt;

use crate::node::{Demand, NodeStatus};

/// A placement that could not be made.
///
/// The API maps these to E2B errors with [`PlaceError::status_code`]:
///
/// | error | status | why |
/// |---|---|---|
/// | [`PlaceError::NoReadyNode`] | 503 | no node can take creates now (none joined, all draining, unhealthy or cut off); the cluster, not the request, is at fault |
/// | [`PlaceError::AllFull`] | 429 | nodes are up but hold all they can; retrying later succeeds as sandboxes end (E2B answers a reached concurrency limit with 429 too) |
/// | [`PlaceError::PinnedUnavailable`] | 503 | the node holding the sandbox's state (a paused sandbox's disk, a fork's parent) is not ready |
/// | [`PlaceError::PinnedFull`] | 429 | that node is up but has no room now |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// No ready node may take a create.
    #[error("no ready node can take a sandbox")]
    NoReadyNode,
    /// Ready nodes exist, none has room.
    #[error("no ready node has room for {demand}")]
    AllFull {
        /// What was asked for.
        demand: Demand,
    },
    /// The request is pinned to a node that cannot take it now.
    #[error("node {node} holding the sandbox's state is not available: {reason}")]
    PinnedUnavailable {
        /// The pinned node's id.
        node: String,
        /// Why it is not available.
        reason: Unavailable,
    },
    /// The request is pinned to a ready node without room.
    #[error("node {node} holding the sandbox's state has no room for {demand}")]
    PinnedFull {
        /// The pinned node's id.
        node: String,
        /// What was asked for.
        demand: Demand,
    },
}

impl PlaceError {
    /// The HTTP status of E2B's error body for this error (see the table on [`PlaceError`]).
    pub fn status_code(&self) -> u16 {
        match self {
            PlaceError::NoReadyNode | PlaceError::PinnedUnavailable { .. } => 503,
            PlaceError::AllFull { .. } | PlaceError::PinnedFull { .. } => 429,
        }
    }
}

/// Why a pinned node cannot take a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The control plane does not know the node (it left, or never joined).
    Unknown,
    /// The node is not ready.
    Status(NodeStatus),
    /// The node's circuit breaker is open after repeated failures.
    CircuitOpen,
    /// The request excluded it (a previous try failed there).
    Excluded,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::Unknown => f.write_str("unknown node"),
            Unavailable::Status(s) => write!(f, "node is {s}"),
            Unavailable::CircuitOpen => f.write_str("cut off after repeated failures"),
            Unavailable::Excluded => f.write_str("a previous try failed there"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_statuses() {
        let e = PlaceError::PinnedUnavailable {
            node: "n1".into(),
            reason: Unavailable::Status(NodeStatus::Draining),
        };
        assert_eq!(
            e.to_string(),
            "node n1 holding the sandbox's state is not available: node is draining"
        );
        assert_eq!(e.status_code(), 503);
        assert_eq!(PlaceError::NoReadyNode.status_code(), 503);
        let full = PlaceError::AllFull {
            demand: Demand {
                cpus: 2,
                memory_mb: 512,
                disk_mb: 1024,
            },
        };
        assert_eq!(full.status_code(), 429);
        assert_eq!(
            full.to_string(),
            "no ready node has room for 2 vCPU, 512 MiB memory, 1024 MiB disk"
        );
    }
}
