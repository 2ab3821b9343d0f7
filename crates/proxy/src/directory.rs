//! The proxy's only view of sandboxes: a [`SandboxDirectory`] answers where a sandbox's sockets
//! are, or that it is paused, and can wake a paused one that resumes on traffic. The node (or,
//! later, a cluster registry) implements it; the proxy never owns sandboxes.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

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
    /// The sandbox exists but is paused: its processes cannot answer until it is resumed
    /// (see [`SandboxDirectory::wake`]).
    Paused,
    /// No such sandbox, or it is no longer running.
    NotFound,
}

/// The future [`SandboxDirectory::wake`] returns.
pub type WakeFuture<'a> = Pin<Box<dyn Future<Output = Lookup> + Send + 'a>>;

/// The future [`SandboxDirectory::until_paused`] returns.
pub type PausedFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Resolves sandbox ids to their sockets. Called once per proxied request, on the request's
/// task, so it must be cheap and must not block.
pub trait SandboxDirectory: Send + Sync + 'static {
    /// Looks up where `id` runs.
    fn lookup(&self, id: &SandboxId) -> Lookup;

    /// Called when [`SandboxDirectory::lookup`] answered [`Lookup::Paused`]: resumes the
    /// sandbox if it asked to be resumed by traffic (`autoResume`), and answers the lookup
    /// after that attempt (`Running` once resumed, still `Paused` if it does not resume on
    /// traffic). Default: sandboxes stay paused.
    fn wake<'a>(&'a self, id: &'a SandboxId) -> WakeFuture<'a> {
        let _ = id;
        Box::pin(std::future::ready(Lookup::Paused))
    }

    /// A future that completes once `id` is paused (at once if it is paused now). The proxy
    /// races it against the sandbox's answer: a request sent just before a freeze would
    /// otherwise wait on a frozen sandbox until it is resumed (E2B drops such requests). It
    /// must start watching when called, not when first polled. Default: never completes.
    fn until_paused<'a>(&'a self, id: &'a SandboxId) -> PausedFuture<'a> {
        let _ = id;
        Box::pin(std::future::pending())
    }
}
