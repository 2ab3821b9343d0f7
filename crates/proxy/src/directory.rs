//! The proxy's only view of sandboxes: a [`SandboxDirectory`] answers where a sandbox's sockets
//! are, that it runs on another host ([`RemoteUpstream`]: the node-local hop of its node), or
//! that it is paused, and can wake a paused one that resumes on traffic. The node implements
//! it over its own sandboxes, [`crate::ClusterDirectory`] over the control plane; the proxy
//! never owns sandboxes.
//!
//! Lookups are synchronous ([`SandboxDirectory::lookup`]) for directories that answer from
//! memory; a directory that must ask elsewhere overrides [`SandboxDirectory::resolve`], the
//! asynchronous lookup the handler calls (its default answers `lookup`).

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

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

/// The ALPN protocol of the node-local hop (HTTP/1.1 over the node's mutual-TLS port, beside
/// its gRPC service on `h2`).
pub const HOP_ALPN: &[u8] = b"http/1.1";

/// Where traffic for a sandbox on another host goes: that node's hop, a [`crate::Proxy`] that
/// serves the request unchanged (same `Host` and `E2b-Sandbox-*` headers) over TLS.
///
/// Cheap to clone. Idle connections are pooled per `(address, TLS configuration)`, the
/// configuration compared by identity: make one `RemoteUpstream` per node (or clone its
/// [`RemoteUpstream::tls`]) and clone it, rather than building a new configuration per lookup.
#[derive(Debug, Clone)]
pub struct RemoteUpstream {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl RemoteUpstream {
    /// The hop at `addr`, reached with `tls` (which decides whom the proxy trusts and which
    /// certificate it presents). Its ALPN protocols are replaced by [`HOP_ALPN`]; the server
    /// name given to the handshake is the address.
    pub fn new(addr: SocketAddr, mut tls: rustls::ClientConfig) -> Self {
        tls.alpn_protocols = vec![HOP_ALPN.to_vec()];
        RemoteUpstream {
            addr,
            tls: Arc::new(tls),
        }
    }

    /// The same node (same TLS configuration, so the same trust) at another address.
    pub fn with_addr(&self, addr: SocketAddr) -> Self {
        RemoteUpstream {
            addr,
            tls: Arc::clone(&self.tls),
        }
    }

    /// The hop's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TLS configuration connections to the hop use (ALPN [`HOP_ALPN`]).
    pub fn tls(&self) -> &Arc<rustls::ClientConfig> {
        &self.tls
    }
}

/// Equal when the address is the same and the TLS configuration is the same object.
impl PartialEq for RemoteUpstream {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr && Arc::ptr_eq(&self.tls, &other.tls)
    }
}

impl Eq for RemoteUpstream {}

impl Hash for RemoteUpstream {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.addr.hash(state);
        std::ptr::hash(Arc::as_ptr(&self.tls), state);
    }
}

/// The answer of a [`SandboxDirectory`] lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lookup {
    /// The sandbox runs here; traffic goes to these sockets.
    Running(Upstream),
    /// The sandbox runs on another host; traffic goes to that node's hop.
    Remote(RemoteUpstream),
    /// The sandbox exists but is paused: its processes cannot answer until it is resumed
    /// (see [`SandboxDirectory::wake`]).
    Paused,
    /// No such sandbox, or it is no longer running.
    NotFound,
    /// The directory cannot tell now (e.g. the control plane it asks is unreachable); answered
    /// with a 502 that does not say the sandbox is gone.
    Unavailable,
}

/// The future [`SandboxDirectory::wake`] returns.
pub type WakeFuture<'a> = Pin<Box<dyn Future<Output = Lookup> + Send + 'a>>;

/// The future [`SandboxDirectory::resolve`] returns.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = Lookup> + Send + 'a>>;

/// The future [`SandboxDirectory::until_paused`] returns.
pub type PausedFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Resolves sandbox ids to their sockets or hops. Asked once per proxied request (and again
/// when the upstream it named fails), on the request's task.
pub trait SandboxDirectory: Send + Sync + 'static {
    /// Looks up where `id` runs, from memory: it must be cheap and must not block. A directory
    /// that has to ask elsewhere answers what it knows now (e.g. its cache, else
    /// [`Lookup::Unavailable`]) and overrides [`SandboxDirectory::resolve`].
    fn lookup(&self, id: &SandboxId) -> Lookup;

    /// Looks up where `id` runs, waiting for an answer if the directory must ask elsewhere.
    /// This is what the proxy calls. Default: [`SandboxDirectory::lookup`]'s answer.
    fn resolve<'a>(&'a self, id: &'a SandboxId) -> ResolveFuture<'a> {
        Box::pin(std::future::ready(self.lookup(id)))
    }

    /// Told when the upstream the last answer for `id` named could not be reached or failed
    /// mid-exchange, before the proxy resolves `id` again: a caching directory drops its
    /// answer here. Default: nothing.
    fn forget(&self, id: &SandboxId) {
        let _ = id;
    }

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
