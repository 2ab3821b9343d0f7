//! The proxy's only view of sandboxes: a [`SandboxDirectory`] answers where a sandbox's sockets
//! are. The node (or, later, a cluster registry) implements it; the proxy never owns sandboxes.

use std::path::PathBuf;

use paddock_domain::SandboxId;

/// Where traffic for one running sandbox goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// envd's HTTP socket (sandbox port 49983).
    pub envd_socket: PathBuf,
    /// The port-forwarding socket (any other port): the proxy writes the port as 2 bytes big
    /// endian, reads one status byte (0 connected, 1 nothing listening), then speaks HTTP/1.1
    /// over the same stream.
    pub forward_socket: PathBuf,
}

/// The answer of a [`SandboxDirectory`] lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lookup {
    /// The sandbox runs; traffic goes to these sockets.
    Running(Upstream),
    /// No such sandbox, or it is no longer running.
    NotFound,
}

/// Resolves sandbox ids to their sockets. Called once per proxied request, on the request's
/// task, so it must be cheap and must not block.
pub trait SandboxDirectory: Send + Sync + 'static {
    /// Looks up where `id` runs.
    fn lookup(&self, id: &SandboxId) -> Lookup;
}
