//! The egress proxy: domain names in `allowOut`. For a sandbox whose policy names domains, the
//! nftables `prerouting` chain (see `nft`) redirects its TCP connections to ports 80 and 443 to
//! this proxy, one listener on the host for every sandbox of the [`crate::Network`]. For each
//! connection the proxy
//!
//! 1. identifies the sandbox by its source address (the [`Registry`] maps addresses to live
//!    policies) and gets the original destination (`SO_ORIGINAL_DST`);
//! 2. refuses destinations no sandbox may ever reach, whatever its policy: loopback, this host's
//!    own addresses, the sandbox range, link-local, multicast, broadcast and reserved addresses
//!    (the proxy connects from the host, so it must not become a way around the rules);
//! 3. if the IP/CIDR rules allow the destination, splices at once; else reads the first bytes
//!    (at most [`SNIFF_MAX`], for at most [`SNIFF_TIMEOUT`]) for the TLS SNI (port 443) or the
//!    HTTP `Host` header (port 80) (see `sniff`) and allows the connection when the name matches
//!    an allowed domain;
//! 4. connects to the ORIGINAL destination address and port, replays the bytes it read, and
//!    copies both ways until either side closes, the sandbox is released, or a policy update no
//!    longer allows the connection.
//!
//! Refused connections are reset (`SO_LINGER` 0) and logged at debug level. The name decides
//! only whether the original destination may be reached: a client that sends an allowed name to
//! another address reaches that address on that port, with that name.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::policy::{Cidr, EgressPolicy, Verdict};
use crate::sniff::{self, Sniff};
use crate::NetworkError;

/// Longest wait for the client's first bytes (ClientHello or request head).
pub const SNIFF_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes read to find the name.
pub const SNIFF_MAX: usize = 16 * 1024;
/// Longest wait for the upstream connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most proxied connections one sandbox may hold open at once.
const MAX_PER_SANDBOX: usize = 1024;
/// Most connections the proxy holds open at once, all sandboxes together (each also holds an
/// upstream socket): beyond it new ones are reset at once, so that sandboxes together cannot
/// take the descriptors the API and the sandbox traffic proxy share with this one.
const MAX_CONNECTIONS: usize = 4096;
/// The redirected ports: HTTP and TLS.
const HTTP_PORT: u16 = 80;
const TLS_PORT: u16 = 443;

/// The live policy of one sandbox, as the proxy sees it.
struct Entry {
    id: String,
    policy: watch::Sender<Arc<EgressPolicy>>,
    active: Arc<AtomicUsize>,
}

/// Sandbox address → its current policy. Updated before the nftables rules, so the proxy
/// always judges with the policy the rules belong to (or a newer one).
#[derive(Default)]
pub(crate) struct Registry {
    sandboxes: Mutex<HashMap<Ipv4Addr, Entry>>,
}

/// What a connection handler needs of its sandbox.
struct Sandbox {
    id: String,
    policy: watch::Receiver<Arc<EgressPolicy>>,
    active: Arc<AtomicUsize>,
}

impl Registry {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Ipv4Addr, Entry>> {
        self.sandboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the policy of the sandbox at `addr`; returns the previous one. Open connections
    /// see the change at once.
    pub fn set(
        &self,
        addr: Ipv4Addr,
        id: &str,
        policy: &EgressPolicy,
    ) -> Option<Arc<EgressPolicy>> {
        let policy = Arc::new(policy.clone());
        let mut map = self.map();
        match map.get_mut(&addr) {
            Some(e) if e.id == id => Some(e.policy.send_replace(policy)),
            _ => {
                map.insert(
                    addr,
                    Entry {
                        id: id.to_string(),
                        policy: watch::channel(policy).0,
                        active: Arc::new(AtomicUsize::new(0)),
                    },
                );
                None
            }
        }
    }

    /// Forgets the sandbox at `addr`: its open proxied connections close.
    pub fn remove(&self, addr: Ipv4Addr) {
        self.map().remove(&addr);
    }

    fn lookup(&self, addr: Ipv4Addr) -> Option<Sandbox> {
        self.map().get(&addr).map(|e| Sandbox {
            id: e.id.clone(),
            policy: e.policy.subscribe(),
            active: Arc::clone(&e.active),
        })
    }

    fn clear(&self) {
        self.map().clear();
    }
}

/// The running proxy: its port, the registry, the accept loop (stopped on drop).
pub(crate) struct Proxy {
    port: u16,
    registry: Arc<Registry>,
    accept: tokio::task::AbortHandle,
}

impl Proxy {
    /// Listens on `0.0.0.0:port` (`0`: any free port) and starts accepting. `all` is the
    /// sandbox range of every server on the host (never a destination).
    pub async fn start(all: Cidr, port: u16) -> Result<Proxy, NetworkError> {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            .await
            .map_err(|e| NetworkError::Io(format!("binding the egress proxy to port {port}"), e))?;
        let port = listener
            .local_addr()
            .map_err(|e| NetworkError::Io("egress proxy address".into(), e))?
            .port();
        let registry = Arc::new(Registry::default());
        let reg = Arc::clone(&registry);
        let open = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let Some(slot) = Active::take(&open, MAX_CONNECTIONS) else {
                            tracing::debug!(source = %peer, "egress proxy: too many open connections, refused");
                            refuse(stream);
                            continue;
                        };
                        let reg = Arc::clone(&reg);
                        tokio::spawn(async move {
                            handle(stream, peer, reg, all).await;
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "egress proxy accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
        .abort_handle();
        Ok(Proxy {
            port,
            registry,
            accept,
        })
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The sandbox policies it judges with.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Stops accepting and closes every proxied connection.
    pub fn stop(&self) {
        self.accept.abort();
        self.registry.clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Closes a connection with a reset, so the client sees a refusal at once.
fn refuse(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Holds one of a sandbox's connection slots.
struct Active(Arc<AtomicUsize>);

impl Active {
    fn take(counter: &Arc<AtomicUsize>, max: usize) -> Option<Active> {
        let prev = counter.fetch_add(1, Ordering::SeqCst);
        let slot = Active(Arc::clone(counter));
        (prev < max).then_some(slot)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(mut client: TcpStream, peer: SocketAddr, registry: Arc<Registry>, all: Cidr) {
    let IpAddr::V4(src) = peer.ip() else {
        return refuse(client);
    };
    let Some(mut sbx) = registry.lookup(src) else {
        tracing::debug!(source = %peer, "egress proxy: connection from an unknown address refused");
        return refuse(client);
    };
    let Some(_active) = Active::take(&sbx.active, MAX_PER_SANDBOX) else {
        tracing::debug!(sandbox_id = %sbx.id, "egress proxy: too many open connections, refused");
        return refuse(client);
    };
    let dst = match original_dst(&client) {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(sandbox_id = %sbx.id, error = %e, "egress proxy: no original destination");
            return refuse(client);
        }
    };
    let local = client.local_addr().ok();
    if local == Some(SocketAddr::V4(dst)) || !matches!(dst.port(), HTTP_PORT | TLS_PORT) {
        // Not redirected by our rules: a direct connection to the proxy port.
        tracing::debug!(sandbox_id = %sbx.id, destination = %dst, "egress proxy: not a redirected connection, refused");
        return refuse(client);
    }
    if let Some(why) = forbidden(*dst.ip(), &all) {
        tracing::debug!(sandbox_id = %sbx.id, destination = %dst, why, "egress proxy: destination never reachable, refused");
        return refuse(client);
    }
    let ip = IpAddr::V4(*dst.ip());
    let policy = Arc::clone(&sbx.policy.borrow_and_update());
    let (head, host) = if policy.allows(ip) {
        (Vec::new(), None)
    } else {
        match read_head(&mut client, dst.port()).await {
            Some((head, Sniff::Name(n))) => (head, Some(n)),
            Some((head, _)) => (head, None),
            None => return, // the client went away
        }
    };
    // The policy may have changed while the client was sending.
    let policy = Arc::clone(&sbx.policy.borrow_and_update());
    let verdict = policy.decide(host.as_deref(), ip);
    if verdict == Verdict::Denied {
        tracing::debug!(sandbox_id = %sbx.id, destination = %dst, host = host.as_deref().unwrap_or(""), "egress refused");
        return refuse(client);
    }
    let mut upstream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect(SocketAddr::V4(dst)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(sandbox_id = %sbx.id, destination = %dst, error = %e, "egress proxy: upstream connect failed");
            return refuse(client);
        }
        Err(_) => {
            tracing::debug!(sandbox_id = %sbx.id, destination = %dst, "egress proxy: upstream connect timed out");
            return refuse(client);
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    tracing::debug!(sandbox_id = %sbx.id, destination = %dst, host = host.as_deref().unwrap_or(""), verdict = ?verdict, "egress allowed");
    if !head.is_empty() && upstream.write_all(&head).await.is_err() {
        return refuse(client);
    }
    let revoked = async {
        // Ends when the sandbox is released or its new policy refuses this connection.
        while sbx.policy.changed().await.is_ok() {
            let p = Arc::clone(&sbx.policy.borrow_and_update());
            if p.decide(host.as_deref(), ip) == Verdict::Denied {
                break;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        () = revoked => {
            tracing::debug!(sandbox_id = %sbx.id, destination = %dst, "egress proxy: connection closed by a policy change");
            refuse(client);
        }
    }
}

/// Reads the client's first bytes until the name is known, the limit is reached, the client
/// stops sending for [`SNIFF_TIMEOUT`] or closes. `None` if the connection failed.
async fn read_head(client: &mut TcpStream, port: u16) -> Option<(Vec<u8>, Sniff)> {
    let parse = if port == TLS_PORT {
        sniff::tls_sni
    } else {
        sniff::http_host
    };
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = vec![0u8; 4096];
    loop {
        match parse(&buf) {
            Sniff::Incomplete => {}
            decided => return Some((buf, decided)),
        }
        let room = (SNIFF_MAX - buf.len()).min(chunk.len());
        if room == 0 {
            return Some((buf, Sniff::NoName));
        }
        match tokio::time::timeout_at(deadline, client.read(&mut chunk[..room])).await {
            Ok(Ok(0)) | Err(_) => return Some((buf, Sniff::NoName)),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => return None,
        }
    }
}

/// The destination the client connected to before the redirect.
fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddrV4> {
    let addr = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::OriginalDst)
        .map_err(std::io::Error::from)?;
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

/// Why `ip` may never be reached through the proxy, if so.
fn forbidden(ip: Ipv4Addr, all: &Cidr) -> Option<&'static str> {
    if let Some(why) = forbidden_range(ip, all) {
        return Some(why);
    }
    match host_addresses() {
        Ok(local) if local.contains(&ip) => Some("an address of this host"),
        Ok(_) => None,
        Err(_) => Some("this host's addresses are unknown"),
    }
}

/// The fixed part of [`forbidden`].
fn forbidden_range(ip: Ipv4Addr, all: &Cidr) -> Option<&'static str> {
    if ip.octets()[0] == 0 {
        Some("0.0.0.0/8")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_multicast() || ip.is_broadcast() || ip.octets()[0] >= 240 {
        Some("multicast, broadcast or reserved")
    } else if all.contains(IpAddr::V4(ip)) {
        Some("the sandbox range")
    } else {
        None
    }
}

/// Every IPv4 address configured on this host's interfaces.
fn host_addresses() -> nix::Result<Vec<Ipv4Addr>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|a| a.address)
        .filter_map(|a| a.as_sockaddr_in().map(|s| s.ip()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_reachable() {
        let all: Cidr = "10.213.0.0/16".parse().expect("cidr");
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
        for bad in [
            "0.1.2.3",
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "10.213.5.6",
        ] {
            assert!(forbidden_range(ip(bad), &all).is_some(), "{bad} allowed");
        }
        for good in ["198.18.5.2", "8.8.8.8", "10.214.0.1", "192.168.1.1"] {
            assert_eq!(forbidden_range(ip(good), &all), None, "{good} refused");
        }
        // Whatever address this host has is refused too.
        let mine = host_addresses().expect("getifaddrs");
        assert!(mine.contains(&Ipv4Addr::LOCALHOST));
        for a in mine {
            assert!(forbidden(a, &all).is_some(), "own address {a} allowed");
        }
    }

    #[test]
    fn registry_updates_reach_open_connections() {
        let reg = Registry::default();
        let a = Ipv4Addr::new(10, 213, 0, 2);
        assert!(reg.set(a, "sbx", &EgressPolicy::default()).is_none());
        let mut sbx = reg.lookup(a).expect("registered");
        assert_eq!(sbx.id, "sbx");
        let closed = EgressPolicy {
            allow_internet_access: false,
            ..EgressPolicy::default()
        };
        let old = reg.set(a, "sbx", &closed).expect("replaced");
        assert!(old.allow_internet_access);
        assert!(sbx.policy.has_changed().expect("sender alive"));
        assert!(!sbx.policy.borrow_and_update().allow_internet_access);
        // Another sandbox on a reused address starts afresh; the old watchers see it end.
        reg.set(a, "other", &EgressPolicy::default());
        assert!(sbx.policy.has_changed().is_err());
        reg.remove(a);
        assert!(reg.lookup(a).is_none());
    }

    #[test]
    fn connection_slots_are_bounded() {
        let counter = Arc::new(AtomicUsize::new(0));
        let held: Vec<Active> = (0..MAX_PER_SANDBOX)
            .map(|_| Active::take(&counter, MAX_PER_SANDBOX).expect("slot"))
            .collect();
        assert!(Active::take(&counter, MAX_PER_SANDBOX).is_none());
        drop(held);
        assert_eq!(counter.load(Ordering::SeqCst), 0);
        assert!(Active::take(&counter, MAX_PER_SANDBOX).is_some());
    }
}
