//! The edge proxy's directory: [`ClusterDirectory`] asks a [`Locator`] (the control plane,
//! through the cluster service's `Locate` and `Wake`) which node holds a sandbox, answers
//! [`Lookup::Remote`] with that node's hop, and caches answers briefly so that a burst of
//! requests costs one question. It does not own the gRPC client or the certificates: the
//! [`Locator`] implementation brings both.
//!
//! Caching: answers are kept for [`ClusterDirectoryConfig`]'s time to live by kind (running,
//! paused, not found), at most [`ClusterDirectoryConfig::capacity`] of them (the oldest go
//! first); failures to ask are never kept. Concurrent lookups of one sandbox share one
//! question. The proxy calls [`SandboxDirectory::forget`] when a node's hop fails, so the next
//! request asks again. `Wake` is always asked (it is only called for a paused answer).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use paddock_domain::SandboxId;
use tokio::sync::OnceCell;

use crate::directory::{Lookup, RemoteUpstream, ResolveFuture, SandboxDirectory, WakeFuture};
use crate::handler::ErrorChain;
use crate::upstream::BoxError;

/// The node-local hop of the node that holds a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHop {
    /// The hop's address (the node's cluster port: gRPC and hop on one TLS listener).
    pub addr: SocketAddr,
    /// The node's id, which its certificate must record ([`Locator::hop_tls`]).
    pub node_id: String,
}

/// What the control plane says about a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// No such sandbox, or it is no longer running.
    NotFound,
    /// It runs on this node.
    Running(NodeHop),
    /// It is paused (traffic wakes it only through [`Locator::wake`]).
    Paused,
}

/// Asking the control plane failed (it is unreachable, refused the call, or answered
/// something unusable); the request is answered with a 502 that does not say the sandbox is
/// gone.
#[derive(Debug, thiserror::Error)]
#[error("asking the control plane where the sandbox runs failed")]
pub struct LocateError(#[source] BoxError);

impl LocateError {
    /// Wraps the cause.
    pub fn new(cause: impl Into<BoxError>) -> Self {
        LocateError(cause.into())
    }
}

/// The future [`Locator::locate`] and [`Locator::wake`] return.
pub type LocateFuture<'a> = Pin<Box<dyn Future<Output = Result<Located, LocateError>> + Send + 'a>>;

/// Where the edge learns which node holds a sandbox: the cluster service's `Locate` and
/// `Wake` (implemented over its gRPC client), plus the TLS configuration to reach a node's hop.
pub trait Locator: Send + Sync + 'static {
    /// Where `id` runs now (`Locate`).
    fn locate<'a>(&'a self, id: &'a SandboxId) -> LocateFuture<'a>;

    /// Resumes `id` if it was paused with auto-resume, and says where it runs after that
    /// (`Wake`): [`Located::Running`] once resumed, [`Located::Paused`] if it stays paused.
    fn wake<'a>(&'a self, id: &'a SandboxId) -> LocateFuture<'a>;

    /// The TLS configuration for connections to node `node_id`'s hop: the proxy's own
    /// certificate, and trust only in a server certificate of the cluster's CA for exactly
    /// that node (with paddock-cluster-tls: `client_config(&identity,
    /// ExpectedPeer::member(PeerIdentity::new(Role::Node, node_id)))`). Its ALPN protocols are
    /// replaced by [`crate::HOP_ALPN`]. Called once per node id; the directory keeps the
    /// result, and idle connections are pooled per node.
    fn hop_tls(&self, node_id: &str) -> Result<rustls::ClientConfig, LocateError>;
}

/// Tuning of a [`ClusterDirectory`]; [`ClusterDirectoryConfig::default`] fits `paddock proxy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDirectoryConfig {
    /// How long a running sandbox's node is used without asking again.
    pub running_ttl: Duration,
    /// How long a paused answer is kept (each request for a paused sandbox still asks
    /// [`Locator::wake`]).
    pub paused_ttl: Duration,
    /// How long "no such sandbox" is kept. Short: a sandbox may be created just after.
    pub not_found_ttl: Duration,
    /// Most answers kept at once.
    pub capacity: usize,
}

impl Default for ClusterDirectoryConfig {
    fn default() -> Self {
        ClusterDirectoryConfig {
            running_ttl: Duration::from_secs(2),
            paused_ttl: Duration::from_secs(1),
            not_found_ttl: Duration::from_millis(500),
            capacity: 65_536,
        }
    }
}

/// Most node TLS configurations kept; past it they are all dropped and made again on demand
/// (a cluster has far fewer nodes; this only bounds a control plane naming endless ids).
const MAX_NODES: usize = 4096;

/// A [`SandboxDirectory`] over a [`Locator`], for the edge proxy: every sandbox is
/// [`Lookup::Remote`] (or paused, not found, or [`Lookup::Unavailable`] when the locator
/// fails). Its synchronous [`SandboxDirectory::lookup`] answers from the cache only
/// (`Unavailable` when it holds nothing); the proxy uses [`SandboxDirectory::resolve`].
pub struct ClusterDirectory<L> {
    locator: L,
    config: ClusterDirectoryConfig,
    cache: Mutex<Cache>,
    /// One question per sandbox at a time: later askers wait for its answer.
    asking: Mutex<HashMap<SandboxId, Arc<OnceCell<Lookup>>>>,
    /// The hop of each node seen, so that its TLS configuration (and so its connection pool)
    /// is shared by all its sandboxes.
    nodes: Mutex<HashMap<String, RemoteUpstream>>,
}

impl<L> std::fmt::Debug for ClusterDirectory<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterDirectory")
            .field("config", &self.config)
            .field("cached", &lock(&self.cache).map.len())
            .finish_non_exhaustive()
    }
}

impl<L: Locator> ClusterDirectory<L> {
    /// A directory that asks `locator`.
    pub fn new(locator: L, config: ClusterDirectoryConfig) -> Self {
        let cache = Cache::new(config.capacity);
        ClusterDirectory {
            locator,
            config,
            cache: Mutex::new(cache),
            asking: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
        }
    }

    /// The locator this directory asks.
    pub fn locator(&self) -> &L {
        &self.locator
    }

    /// Takes what the control plane announced of sandbox `id` (it started or resumed there) as
    /// if it had been asked: the first request for it need not ask.
    pub fn announce(&self, id: &SandboxId, located: Located) {
        self.remember(id, Ok(located));
    }

    async fn ask(&self, id: &SandboxId) -> Lookup {
        let cell = Arc::clone(lock(&self.asking).entry(id.clone()).or_default());
        let lookup = cell
            .get_or_init(|| async {
                let answer = self.locator.locate(id).await;
                let lookup = self.remember(id, answer);
                let mut asking = lock(&self.asking);
                if asking.get(id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                    asking.remove(id);
                }
                lookup
            })
            .await;
        lookup.clone()
    }

    /// Turns the locator's answer into a lookup and caches it (failures are not cached).
    fn remember(&self, id: &SandboxId, answer: Result<Located, LocateError>) -> Lookup {
        let (lookup, ttl) = match answer {
            Ok(Located::Running(hop)) => match self.upstream(&hop) {
                Some(upstream) => (Lookup::Remote(upstream), self.config.running_ttl),
                None => (Lookup::Unavailable, Duration::ZERO),
            },
            Ok(Located::Paused) => (Lookup::Paused, self.config.paused_ttl),
            Ok(Located::NotFound) => (Lookup::NotFound, self.config.not_found_ttl),
            Err(e) => {
                tracing::warn!(sandbox_id = %id, error = %ErrorChain(&e), "locating a sandbox failed");
                (Lookup::Unavailable, Duration::ZERO)
            }
        };
        lock(&self.cache).insert(id, lookup.clone(), ttl, Instant::now());
        lookup
    }

    /// The hop of `hop.node_id` at `hop.addr`, sharing the node's TLS configuration.
    fn upstream(&self, hop: &NodeHop) -> Option<RemoteUpstream> {
        let mut nodes = lock(&self.nodes);
        if let Some(known) = nodes.get_mut(&hop.node_id) {
            if known.addr() != hop.addr {
                *known = known.with_addr(hop.addr);
            }
            return Some(known.clone());
        }
        let tls = match self.locator.hop_tls(&hop.node_id) {
            Ok(tls) => tls,
            Err(e) => {
                tracing::warn!(node_id = %hop.node_id, error = %ErrorChain(&e), "no TLS configuration for the node");
                return None;
            }
        };
        if nodes.len() >= MAX_NODES {
            nodes.clear();
        }
        let upstream = RemoteUpstream::new(hop.addr, tls);
        nodes.insert(hop.node_id.clone(), upstream.clone());
        Some(upstream)
    }
}

impl<L: Locator> SandboxDirectory for ClusterDirectory<L> {
    fn lookup(&self, id: &SandboxId) -> Lookup {
        lock(&self.cache)
            .get(id, Instant::now())
            .unwrap_or(Lookup::Unavailable)
    }

    fn resolve<'a>(&'a self, id: &'a SandboxId) -> ResolveFuture<'a> {
        Box::pin(async move {
            if let Some(cached) = lock(&self.cache).get(id, Instant::now()) {
                return cached;
            }
            self.ask(id).await
        })
    }

    fn wake<'a>(&'a self, id: &'a SandboxId) -> WakeFuture<'a> {
        Box::pin(async move {
            let answer = self.locator.wake(id).await;
            self.remember(id, answer)
        })
    }

    fn forget(&self, id: &SandboxId) {
        lock(&self.cache).remove(id);
    }
}

/// Answers by sandbox with their expiry; bounded, oldest out first.
struct Cache {
    map: HashMap<SandboxId, Cached>,
    /// Insertions in order, to expire and evict the oldest first. A record whose expiry is
    /// not its entry's any more (answered again since, or forgotten) is skipped.
    order: VecDeque<(SandboxId, Instant)>,
    capacity: usize,
}

struct Cached {
    lookup: Lookup,
    expires: Instant,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Cache {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn get(&self, id: &SandboxId, now: Instant) -> Option<Lookup> {
        self.map
            .get(id)
            .filter(|c| c.expires > now)
            .map(|c| c.lookup.clone())
    }

    fn insert(&mut self, id: &SandboxId, lookup: Lookup, ttl: Duration, now: Instant) {
        if ttl.is_zero() {
            self.map.remove(id);
        } else {
            let expires = now + ttl;
            self.map.insert(id.clone(), Cached { lookup, expires });
            self.order.push_back((id.clone(), expires));
        }
        self.evict(now);
    }

    fn remove(&mut self, id: &SandboxId) {
        self.map.remove(id);
    }

    /// Drops expired answers, and the oldest ones while over capacity.
    fn evict(&mut self, now: Instant) {
        while let Some((id, expires)) = self.order.front() {
            let current = self.map.get(id).map(|c| c.expires);
            if current == Some(*expires) {
                if *expires > now && self.map.len() <= self.capacity {
                    return;
                }
                self.map.remove(id);
            }
            self.order.pop_front();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent (single inserts and removals), so a
    // poisoned lock is still safe to use.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Answers from a map that tests change; counts questions; `locate` waits for `gate`
    /// when it is set, so that concurrent askers pile up.
    struct FakeLocator {
        answers: Mutex<HashMap<String, Result<Located, String>>>,
        woken: Mutex<HashMap<String, Located>>,
        locates: AtomicUsize,
        wakes: AtomicUsize,
        tls_made: AtomicUsize,
        gate: Option<tokio::sync::Semaphore>,
    }

    impl FakeLocator {
        fn new() -> Self {
            FakeLocator {
                answers: Mutex::new(HashMap::new()),
                woken: Mutex::new(HashMap::new()),
                locates: AtomicUsize::new(0),
                wakes: AtomicUsize::new(0),
                tls_made: AtomicUsize::new(0),
                gate: None,
            }
        }

        fn set(&self, id: &str, answer: Result<Located, String>) {
            lock(&self.answers).insert(id.to_string(), answer);
        }
    }

    impl Locator for FakeLocator {
        fn locate<'a>(&'a self, id: &'a SandboxId) -> LocateFuture<'a> {
            Box::pin(async move {
                self.locates.fetch_add(1, Ordering::SeqCst);
                if let Some(gate) = &self.gate {
                    let _permit = gate.acquire().await.expect("gate open");
                }
                match lock(&self.answers).get(id.as_str()) {
                    Some(Ok(located)) => Ok(located.clone()),
                    Some(Err(e)) => Err(LocateError::new(e.clone())),
                    None => Ok(Located::NotFound),
                }
            })
        }

        fn wake<'a>(&'a self, id: &'a SandboxId) -> LocateFuture<'a> {
            Box::pin(async move {
                self.wakes.fetch_add(1, Ordering::SeqCst);
                Ok(lock(&self.woken)
                    .get(id.as_str())
                    .cloned()
                    .unwrap_or(Located::Paused))
            })
        }

        fn hop_tls(&self, node_id: &str) -> Result<rustls::ClientConfig, LocateError> {
            if node_id == "broken" {
                return Err(LocateError::new("no certificate for that node"));
            }
            self.tls_made.fetch_add(1, Ordering::SeqCst);
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            Ok(config)
        }
    }

    fn id(s: &str) -> SandboxId {
        SandboxId::parse(s).expect("id")
    }

    fn running(node: &str, port: u16) -> Result<Located, String> {
        Ok(Located::Running(NodeHop {
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
            node_id: node.to_string(),
        }))
    }

    fn remote(lookup: &Lookup) -> &RemoteUpstream {
        match lookup {
            Lookup::Remote(hop) => hop,
            other => panic!("not remote: {other:?}"),
        }
    }

    #[tokio::test]
    async fn running_answers_are_cached_for_their_ttl_and_forgotten_on_demand() {
        let locator = FakeLocator::new();
        locator.set("isb1", running("n1", 5000));
        let config = ClusterDirectoryConfig {
            running_ttl: Duration::from_millis(200),
            ..ClusterDirectoryConfig::default()
        };
        let dir = ClusterDirectory::new(locator, config);
        let sb = id("isb1");
        assert_eq!(dir.lookup(&sb), Lookup::Unavailable, "nothing cached yet");
        let first = dir.resolve(&sb).await;
        assert_eq!(remote(&first).addr().port(), 5000);
        assert_eq!(dir.resolve(&sb).await, first);
        assert_eq!(dir.lookup(&sb), first);
        assert_eq!(dir.locator().locates.load(Ordering::SeqCst), 1);

        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(dir.lookup(&sb), Lookup::Unavailable, "expired");
        dir.resolve(&sb).await;
        assert_eq!(dir.locator().locates.load(Ordering::SeqCst), 2);

        dir.forget(&sb);
        dir.resolve(&sb).await;
        assert_eq!(dir.locator().locates.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_announced_sandbox_is_found_without_asking() {
        let dir = ClusterDirectory::new(FakeLocator::new(), ClusterDirectoryConfig::default());
        let sb = id("isbnew");
        dir.announce(&sb, running("n2", 7000).expect("located"));
        let found = dir.resolve(&sb).await;
        assert_eq!(remote(&found).addr().port(), 7000);
        assert_eq!(dir.locator().locates.load(Ordering::SeqCst), 0, "not asked");
    }

    #[tokio::test]
    async fn failures_are_not_cached_and_read_as_unavailable() {
        let locator = FakeLocator::new();
        locator.set("isb1", Err("control plane down".into()));
        locator.set("isb2", running("broken", 5000));
        let dir = ClusterDirectory::new(locator, ClusterDirectoryConfig::default());
        assert_eq!(dir.resolve(&id("isb1")).await, Lookup::Unavailable);
        assert_eq!(dir.resolve(&id("isb1")).await, Lookup::Unavailable);
        assert_eq!(dir.locator().locates.load(Ordering::SeqCst), 2);
        assert_eq!(dir.resolve(&id("isb2")).await, Lookup::Unavailable);

        dir.locator().set("isb1", Ok(Located::NotFound));
        assert_eq!(dir.resolve(&id("isb1")).await, Lookup::NotFound);
        assert_eq!(dir.resolve(&id("isb1")).await, Lookup::NotFound);
        assert_eq!(dir.locator().locates.load(Ordering::SeqCst), 4, "cached");
    }

    #[tokio::test]
    async fn sandboxes_of_one_node_share_its_tls_and_follow_its_address() {
        let locator = FakeLocator::new();
        locator.set("isb1", running("n1", 5000));
        locator.set("isb2", running("n1", 5000));
        locator.set("isb3", running("n2", 5000));
        let dir = ClusterDirectory::new(locator, ClusterDirectoryConfig::default());
        let a = dir.resolve(&id("isb1")).await;
        let b = dir.resolve(&id("isb2")).await;
        let c = dir.resolve(&id("isb3")).await;
        assert_eq!(a, b, "same node, same pool key");
        assert_ne!(a, c, "another node");
        assert_eq!(remote(&a).tls().alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(dir.locator().tls_made.load(Ordering::SeqCst), 2);

        // n1 restarted elsewhere: same trust, new address.
        dir.locator().set("isb2", running("n1", 6000));
        dir.forget(&id("isb2"));
        let moved = dir.resolve(&id("isb2")).await;
        assert_eq!(remote(&moved).addr().port(), 6000);
        assert!(Arc::ptr_eq(remote(&moved).tls(), remote(&a).tls()));
        assert_eq!(dir.locator().tls_made.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_lookups_share_one_question() {
        let mut locator = FakeLocator::new();
        locator.gate = Some(tokio::sync::Semaphore::new(0));
        locator.set("isb1", running("n1", 5000));
        let dir = Arc::new(ClusterDirectory::new(
            locator,
            ClusterDirectoryConfig::default(),
        ));
        let askers: Vec<_> = (0..8)
            .map(|_| {
                let dir = Arc::clone(&dir);
                tokio::spawn(async move { dir.resolve(&id("isb1")).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        dir.locator().gate.as_ref().expect("gate").add_permits(100);
        for asker in askers {
            let lookup = asker.await.expect("asker");
            assert_eq!(remote(&lookup).addr().port(), 5000);
        }
        assert_eq!(dir.locator().locates.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn wake_always_asks_and_caches_its_answer() {
        let locator = FakeLocator::new();
        locator.set("isb1", Ok(Located::Paused));
        let dir = ClusterDirectory::new(locator, ClusterDirectoryConfig::default());
        let sb = id("isb1");
        assert_eq!(dir.resolve(&sb).await, Lookup::Paused);
        assert_eq!(dir.wake(&sb).await, Lookup::Paused);
        assert_eq!(dir.wake(&sb).await, Lookup::Paused);
        assert_eq!(dir.locator().wakes.load(Ordering::SeqCst), 2);
        let n1 = running("n1", 5000).expect("located");
        lock(&dir.locator().woken).insert("isb1".into(), n1);
        assert!(matches!(dir.wake(&sb).await, Lookup::Remote(_)));
        assert!(matches!(dir.resolve(&sb).await, Lookup::Remote(_)));
        assert_eq!(dir.locator().locates.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_cache_is_bounded_and_drops_the_oldest_and_the_expired() {
        let mut cache = Cache::new(2);
        let now = Instant::now();
        let ttl = Duration::from_secs(10);
        cache.insert(&id("ia"), Lookup::NotFound, ttl, now);
        cache.insert(&id("ib"), Lookup::Paused, ttl, now);
        // Answered again: its older record must not evict the new entry.
        cache.insert(&id("ia"), Lookup::Paused, ttl, now + Duration::from_secs(1));
        cache.insert(
            &id("ic"),
            Lookup::NotFound,
            ttl,
            now + Duration::from_secs(2),
        );
        assert_eq!(cache.map.len(), 2);
        assert!(cache.get(&id("ib"), now).is_none(), "oldest evicted");
        assert_eq!(cache.get(&id("ia"), now), Some(Lookup::Paused));
        let later = now + Duration::from_millis(10_500);
        assert!(cache.get(&id("ia"), later).is_some(), "ia was refreshed");
        // Over capacity again: the oldest live answer (ia) goes.
        cache.insert(&id("id"), Lookup::NotFound, ttl, later);
        assert!(cache.get(&id("ia"), later).is_none());
        assert!(cache.get(&id("ic"), later).is_some());
        assert!(cache.get(&id("id"), later).is_some());
        let much_later = now + Duration::from_secs(60);
        cache.insert(&id("ie"), Lookup::NotFound, ttl, much_later);
        assert_eq!(cache.map.len(), 1, "expired answers dropped");
        assert_eq!(cache.order.len(), 1);
    }
}
