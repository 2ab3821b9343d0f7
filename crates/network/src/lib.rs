//! Per-sandbox networking for the namespace runtime. A [`Network`] owns a pool of ready
//! network slots (see `slot`: a network namespace held by a descriptor, a veth pair, an address
//! block), hands one out per sandbox as a [`Lease`], and enforces egress with one nftables table
//! (see `nft`): NAT to the outside, no sandbox-to-sandbox, no host services, no link-local
//! addresses, and a per-sandbox [`EgressPolicy`] that can change at runtime. Domain names in a
//! policy are enforced by the egress proxy (see `egress`), which judges the HTTP and TLS
//! connections the ruleset redirects to it.
//!
//! Slots are built in the background with bounded concurrency, so a create only pops one from
//! the pool (and runs `nft` only for a non-default policy). A slot is never reused: release
//! deletes it and the pool is refilled with a fresh one. Deleting a veth waits for the kernel's
//! RCU grace periods, so under churn address blocks come back late: a create that finds every
//! block taken while slots are being destroyed or built waits for one (up to [`ACQUIRE_WAIT`])
//! instead of failing, and only then reports [`NetworkError::Exhausted`], which
//! [`NetworkError::is_exhausted`] tells callers to treat as "busy, retry later", never as a
//! server fault.
#![warn(missing_docs)]

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod egress;
mod nft;
mod slot;
mod sniff;

pub use egress::{SNIFF_MAX, SNIFF_TIMEOUT};
/// The egress policy types live in the domain crate (the control plane uses them without the
/// networking); they are re-exported here, as `policy`, for the code that enforces them.
pub use paddock_domain::egress as policy;
pub use paddock_domain::egress::{
    Cidr, CidrError, DomainError, DomainPattern, EgressPolicy, Verdict,
};

use slot::Slot;

/// How many slots are built at the same time.
const FILL_CONCURRENCY: usize = 2;
/// How long shutdown waits for slots still being built.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
/// Longest wait of [`Network::acquire`] for an address block held by a slot being destroyed
/// or built, before it gives up with [`NetworkError::Exhausted`].
pub const ACQUIRE_WAIT: Duration = Duration::from_secs(10);

/// Per-sandbox limits on the connections the host tracks for a sandbox (its conntrack
/// entries), enforced by the ruleset before an entry is confirmed: a sandbox over them has its
/// new flows dropped instead of filling the host's table, which would drop new flows of every
/// sandbox and of the host. `0` turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    /// Most connections tracked at once per sandbox (TCP, UDP, ICMP flows; closed TCP
    /// connections do not count). Default 4096.
    pub max_flows: u32,
    /// New flows per second per sandbox, sustained. Default 300.
    pub new_flows_per_sec: u32,
    /// New flows a sandbox may open at once above the rate. Default 1000.
    pub new_flow_burst: u32,
}

impl Default for FlowLimits {
    fn default() -> Self {
        FlowLimits {
            max_flows: 4096,
            new_flows_per_sec: 300,
            new_flow_burst: 1000,
        }
    }
}

/// Settings of a [`Network`].
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// IPv4 range for the sandboxes of every Paddock server on this host (default
    /// `10.213.0.0/16`). It is cut into `slices` equal parts; each server claims one.
    pub cidr: Cidr,
    /// How many servers can run on one host (power of two, default 16: a /20 each).
    pub slices: u32,
    /// The slice to try first (e.g. derived from the data dir, so a restart gets its own back).
    pub preferred_slice: u32,
    /// Ready slots kept in the pool (default 8).
    pub pool_size: usize,
    /// DNS servers written to each sandbox's `/etc/resolv.conf` (default: see [`default_dns`]).
    pub dns: Vec<IpAddr>,
    /// nftables table name prefix, family `inet` (default `paddock`; slice `a` uses
    /// `paddock_a`).
    pub table: String,
    /// Prefix of host-side interface names, at most 4 lowercase letters (default `pdk`; slice
    /// `a` names its interfaces `pdka<n>`).
    pub prefix: String,
    /// Where the per-slice lock files live (default `/run/paddock`).
    pub lock_dir: PathBuf,
    /// TCP port of the egress proxy on every host address (default `0`: any free port). Only
    /// sandboxes' redirected HTTP/TLS connections reach it; the ruleset closes it to every
    /// other interface.
    pub egress_proxy_port: u16,
    /// Per-sandbox connection tracking limits (default: see [`FlowLimits`]).
    pub flow_limits: FlowLimits,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            cidr: Cidr::new(IpAddr::V4(Ipv4Addr::new(10, 213, 0, 0)), 16)
                .expect("a /16 is a valid prefix"),
            slices: 16,
            preferred_slice: 0,
            pool_size: 8,
            dns: default_dns(),
            table: "paddock".into(),
            prefix: "pdk".into(),
            lock_dir: PathBuf::from("/run/paddock"),
            egress_proxy_port: 0,
            flow_limits: FlowLimits::default(),
        }
    }
}

/// Slice `index` of `all` cut into `slices` parts (`slices` a power of two).
fn slice(all: &Cidr, slices: u32, index: u32) -> Option<Cidr> {
    let IpAddr::V4(base) = all.addr() else {
        return None;
    };
    if !slices.is_power_of_two() || index >= slices {
        return None;
    }
    let bits = slices.trailing_zeros();
    let prefix = u32::from(all.prefix()) + bits;
    if prefix > 30 {
        return None;
    }
    let size = 1u64 << (32 - prefix);
    let start = u64::from(u32::from(base)) + u64::from(index) * size;
    let start = u32::try_from(start).ok()?;
    Cidr::new(IpAddr::V4(Ipv4Addr::from(start)), prefix as u8).ok()
}

/// Takes the lock of the first free slice, starting at the preferred one.
fn claim_slice(
    cfg: &NetworkConfig,
) -> Result<(u32, nix::fcntl::Flock<std::fs::File>), NetworkError> {
    std::fs::create_dir_all(&cfg.lock_dir)
        .map_err(|e| NetworkError::Io(format!("creating {}", cfg.lock_dir.display()), e))?;
    for step in 0..cfg.slices {
        let index = (cfg.preferred_slice + step) % cfg.slices;
        let path = cfg
            .lock_dir
            .join(format!("network-{}-{index}.lock", cfg.table));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| NetworkError::Io(format!("opening {}", path.display()), e))?;
        if let Ok(lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        {
            return Ok((index, lock));
        }
    }
    Err(NetworkError::Config(format!(
        "all {} network slices of {} are in use by other servers on this host",
        cfg.slices, cfg.cidr
    )))
}

/// The host's nameservers from `/etc/resolv.conf` when none of them is a loopback address
/// (which a sandbox could not reach), else 1.1.1.1 and 8.8.8.8.
pub fn default_dns() -> Vec<IpAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers = parse_nameservers(&text);
    if !servers.is_empty() && servers.iter().all(|ip| !ip.is_loopback()) {
        servers
    } else {
        vec![
            IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
            IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
        ]
    }
}

fn parse_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .collect()
}

/// Networking failures.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// `nft` is not installed.
    #[error("nft (package nftables) is not installed; install it or run with --network none")]
    NftMissing,
    /// `nft` rejected a script.
    #[error("nft: {0}")]
    Nft(String),
    /// Building or deleting a slot failed.
    #[error("network slot {0}: {1}")]
    Slot(String, String),
    /// The configuration cannot work.
    #[error("network config: {0}")]
    Config(String),
    /// The pool has no free address block left, even after waiting for slots being
    /// destroyed: the host is busy, not broken (see [`NetworkError::is_exhausted`]).
    #[error("no free address in the network pool")]
    Exhausted,
    /// The sandbox holds no lease.
    #[error("sandbox {0} has no network lease")]
    NoLease(String),
    /// Shutting down.
    #[error("the network is shutting down")]
    ShuttingDown,
    /// I/O with context.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
}

impl NetworkError {
    /// Whether the error means a pooled resource ran out for now (a caller should answer
    /// "busy, retry later", e.g. HTTP 429 with `Retry-After`), rather than a failure.
    pub fn is_exhausted(&self) -> bool {
        matches!(self, NetworkError::Exhausted)
    }
}

/// The network of one sandbox, as the runtime needs it.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Path the sandbox's shim opens to join the slot's network namespace
    /// (`/proc/<node pid>/fd/<fd>`).
    pub netns_path: PathBuf,
    /// Host-side interface name.
    pub interface: String,
    /// The sandbox's address (`eth0`).
    pub address: Ipv4Addr,
    /// Its gateway (the host end).
    pub gateway: Ipv4Addr,
    /// DNS servers for `/etc/resolv.conf`.
    pub dns: Vec<IpAddr>,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Slot>,
    leased: HashMap<String, Slot>,
    free_blocks: BTreeSet<u32>,
    next_block: u32,
    /// Slots being built (their blocks are taken).
    building: usize,
    /// Slots being destroyed (their blocks come back when done).
    destroying: usize,
}

impl State {
    /// Takes a free address block, if any is left.
    fn take_block(&mut self, blocks: u32) -> Option<u32> {
        if let Some(b) = self.free_blocks.pop_first() {
            Some(b)
        } else if self.next_block < blocks {
            self.next_block += 1;
            Some(self.next_block - 1)
        } else {
            None
        }
    }

    /// Free blocks left (never handed out or given back).
    fn blocks_left(&self, blocks: u32) -> usize {
        self.free_blocks.len() + (blocks - self.next_block) as usize
    }
}

struct Inner {
    cfg: NetworkConfig,
    names: nft::Names,
    /// This instance's interface prefix (`pdka`).
    iface_prefix: String,
    blocks: u32,
    /// Held for the life of the network: this slice is ours.
    _lock: nix::fcntl::Flock<std::fs::File>,
    host: rtnetlink::Handle,
    state: Mutex<State>,
    counter: AtomicU32,
    shutting_down: AtomicBool,
    fill_permits: tokio::sync::Semaphore,
    /// Serialises `nft` transactions touching slot chains.
    nft_lock: tokio::sync::Mutex<()>,
    /// Judges the redirected connections of sandboxes whose policy names domains.
    egress: egress::Proxy,
    fill_done: tokio::sync::Notify,
}

/// Pooled per-sandbox networking (see the crate docs). Cheap to clone.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("pool", &self.inner.names.pool)
            .field("table", &self.inner.names.table)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// Enables IPv4 forwarding, removes leftovers of an earlier run (links with the prefix, the
    /// table), installs the ruleset and starts filling the pool. Must run inside tokio.
    pub async fn start(cfg: NetworkConfig) -> Result<Network, NetworkError> {
        if cfg.prefix.is_empty()
            || cfg.prefix.len() > 4
            || !cfg.prefix.bytes().all(|b| b.is_ascii_lowercase())
        {
            return Err(NetworkError::Config(format!(
                "interface prefix {:?} must be 1 to 4 lowercase letters",
                cfg.prefix
            )));
        }
        if cfg.table.is_empty()
            || !cfg
                .table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(NetworkError::Config(format!(
                "bad table name {:?}",
                cfg.table
            )));
        }
        if !cfg.slices.is_power_of_two() || cfg.slices > 16 {
            return Err(NetworkError::Config(format!(
                "slices must be a power of two up to 16, got {}",
                cfg.slices
            )));
        }
        let first = slice(&cfg.cidr, cfg.slices, 0);
        let blocks = first.as_ref().and_then(slot::block_count).ok_or_else(|| {
            NetworkError::Config(format!(
                "cidr {} must be IPv4 and hold {} slices of at least a /30",
                cfg.cidr, cfg.slices
            ))
        })?;
        nft::check_installed()?;
        let (index, lock) = claim_slice(&cfg)?;
        let pool = slice(&cfg.cidr, cfg.slices, index)
            .ok_or_else(|| NetworkError::Config("slice out of range".into()))?;
        let letter = char::from(b'a' + index as u8);
        let iface_prefix = format!("{}{letter}", cfg.prefix);
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| NetworkError::Io("enabling net.ipv4.ip_forward".into(), e))?;
        let (conn, host, _) = rtnetlink::new_connection()
            .map_err(|e| NetworkError::Io("opening netlink".into(), e))?;
        tokio::spawn(conn);
        // The slice was free, so whatever still carries its names belongs to a dead server.
        for stale in slot::links_with_prefix(&host, &iface_prefix).await? {
            tracing::info!(interface = %stale, "removing a network slot left by an earlier run");
            slot::delete_link(&host, &stale).await?;
        }
        let egress = egress::Proxy::start(cfg.cidr, cfg.egress_proxy_port).await?;
        let names = nft::Names {
            table: format!("{}_{letter}", cfg.table),
            prefix: cfg.prefix.clone(),
            all: cfg.cidr,
            pool,
            proxy_port: egress.port(),
            dns: cfg
                .dns
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            limits: cfg.flow_limits,
        };
        nft::run(&names.ruleset()).await?;
        tracing::info!(pool = %pool, table = %names.table, interfaces = %iface_prefix, egress_proxy_port = egress.port(), "sandbox networking ready");
        let net = Network {
            inner: Arc::new(Inner {
                cfg,
                names,
                iface_prefix,
                blocks,
                _lock: lock,
                host,
                state: Mutex::new(State::default()),
                counter: AtomicU32::new(0),
                shutting_down: AtomicBool::new(false),
                fill_permits: tokio::sync::Semaphore::new(FILL_CONCURRENCY),
                nft_lock: tokio::sync::Mutex::new(()),
                egress,
                fill_done: tokio::sync::Notify::new(),
            }),
        };
        net.refill();
        Ok(net)
    }

    /// This server's address range (its slice of [`NetworkConfig::cidr`]).
    pub fn pool(&self) -> Cidr {
        self.inner.names.pool
    }

    /// The nftables table of this server (family `inet`).
    pub fn table(&self) -> &str {
        &self.inner.names.table
    }

    /// Port of the egress proxy (see [`NetworkConfig::egress_proxy_port`]).
    pub fn egress_proxy_port(&self) -> u16 {
        self.inner.egress.port()
    }

    /// Prefix of this server's host-side interface names.
    pub fn interface_prefix(&self) -> &str {
        &self.inner.iface_prefix
    }

    /// Slots ready in the pool right now.
    pub fn ready(&self) -> usize {
        self.inner.state().ready.len()
    }

    /// Slots being destroyed in the background right now.
    pub fn destroying(&self) -> usize {
        self.inner.state().destroying
    }

    /// Gives sandbox `id` a slot (from the pool, or built now if the pool is empty) and applies
    /// `policy` to it. When every address block is taken but slots are being destroyed or
    /// built, waits for one (up to [`ACQUIRE_WAIT`]); [`NetworkError::Exhausted`] after that.
    pub async fn acquire(&self, id: &str, policy: &EgressPolicy) -> Result<Lease, NetworkError> {
        let mut slot = self.take_slot().await?;
        self.inner
            .egress
            .registry()
            .set(slot.block.guest, id, policy);
        if !policy.is_open() {
            let _guard = self.inner.nft_lock.lock().await;
            if let Err(e) = nft::run(&self.inner.names.set_policy(&slot.iface, policy, false)).await
            {
                drop(_guard);
                self.inner.destroy(slot).await;
                return Err(e);
            }
            slot.has_chain = true;
        }
        let lease = Lease {
            netns_path: PathBuf::from(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                slot.netns.as_raw_fd()
            )),
            interface: slot.iface.clone(),
            address: slot.block.guest,
            gateway: slot.block.host,
            dns: self.inner.cfg.dns.clone(),
        };
        let old = self.inner.state().leased.insert(id.to_string(), slot);
        if let Some(old) = old {
            self.inner.destroy(old).await;
        }
        Ok(lease)
    }

    /// A ready slot, or one built now on a free block, or (every block taken) the first that
    /// slots being destroyed or built give back within [`ACQUIRE_WAIT`].
    async fn take_slot(&self) -> Result<Slot, NetworkError> {
        let deadline = tokio::time::Instant::now() + ACQUIRE_WAIT;
        loop {
            if self.inner.shutting_down.load(Ordering::SeqCst) {
                return Err(NetworkError::ShuttingDown);
            }
            let notified = self.inner.fill_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (block, pending) = {
                let mut st = self.inner.state();
                if let Some(slot) = st.ready.pop_front() {
                    return Ok(slot);
                }
                (
                    st.take_block(self.inner.blocks),
                    st.building + st.destroying,
                )
            };
            if let Some(index) = block {
                self.refill();
                return self.inner.build(index).await;
            }
            if pending == 0 {
                return Err(NetworkError::Exhausted);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(
                    waited_secs = ACQUIRE_WAIT.as_secs(),
                    "no network slot came back in time"
                );
                return Err(NetworkError::Exhausted);
            }
        }
    }

    /// Replaces the egress policy of sandbox `id` (atomically, one nft transaction). The egress
    /// proxy judges new and open connections with the new policy from here on.
    pub async fn update(&self, id: &str, policy: &EgressPolicy) -> Result<(), NetworkError> {
        let _guard = self.inner.nft_lock.lock().await;
        let (iface, guest, exists) = {
            let st = self.inner.state();
            let slot = st
                .leased
                .get(id)
                .ok_or_else(|| NetworkError::NoLease(id.into()))?;
            (slot.iface.clone(), slot.block.guest, slot.has_chain)
        };
        let registry = self.inner.egress.registry();
        let old = registry.set(guest, id, policy);
        if !exists && policy.is_open() {
            return Ok(());
        }
        if let Err(e) = nft::run(&self.inner.names.set_policy(&iface, policy, exists)).await {
            if let Some(old) = old {
                registry.set(guest, id, &old);
            }
            return Err(e);
        }
        if let Some(slot) = self.inner.state().leased.get_mut(id) {
            slot.has_chain = true;
        }
        Ok(())
    }

    /// Destroys the slot of sandbox `id` (unknown ids are ignored) in the background: deleting
    /// a veth waits for the kernel's RCU grace periods, which a caller (a sandbox kill) need
    /// not wait for. [`Network::shutdown`] waits for destroys still running.
    pub fn release(&self, id: &str) {
        let slot = {
            let mut st = self.inner.state();
            let slot = st.leased.remove(id);
            if slot.is_some() {
                st.destroying += 1;
            }
            slot
        };
        if let Some(slot) = slot {
            let inner = Arc::clone(&self.inner);
            let net = self.clone();
            tokio::spawn(async move {
                inner.destroy(slot).await;
                inner.state().destroying -= 1;
                // Refill before waking waiters: they may find the block taken by a build, which
                // they then wait for.
                net.refill();
                inner.fill_done.notify_waiters();
            });
        }
    }

    /// Deletes the table and every slot (pooled and leased). Call after every sandbox is gone.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.egress.stop();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        loop {
            let notified = self.inner.fill_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let pending = {
                let st = self.inner.state();
                st.building + st.destroying
            };
            if pending == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!("network slots still being built at shutdown");
                break;
            }
        }
        let slots: Vec<Slot> = {
            let mut st = self.inner.state();
            let mut all: Vec<Slot> = st.ready.drain(..).collect();
            all.extend(st.leased.drain().map(|(_, s)| s));
            all
        };
        for mut s in slots {
            s.has_chain = false; // the table goes as a whole below
            self.inner.destroy(s).await;
        }
        if let Err(e) = nft::run(&self.inner.names.delete_table()).await {
            tracing::warn!(error = %e, "deleting the nftables table");
        }
    }

    /// Starts building slots until the pool is full again. [`Network::acquire`] does not do
    /// it when the pool had a slot: building one takes the kernel's RTNL lock, which the
    /// sandbox being started needs too, so the caller refills once its sandbox runs.
    pub fn refill(&self) {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        let blocks: Vec<u32> = {
            let mut st = self.inner.state();
            let want = self
                .inner
                .cfg
                .pool_size
                .saturating_sub(st.ready.len() + st.building)
                .min(st.blocks_left(self.inner.blocks));
            st.building += want;
            (0..want)
                .filter_map(|_| st.take_block(self.inner.blocks))
                .collect()
        };
        for index in blocks {
            let inner = Arc::clone(&self.inner);
            tokio::spawn(async move {
                let built = match inner.fill_permits.acquire().await {
                    Ok(_permit) if !inner.shutting_down.load(Ordering::SeqCst) => {
                        Some(inner.build(index).await)
                    }
                    _ => {
                        inner.state().free_blocks.insert(index);
                        None
                    }
                };
                let leftover = match built {
                    Some(Ok(slot)) if !inner.shutting_down.load(Ordering::SeqCst) => {
                        inner.state().ready.push_back(slot);
                        None
                    }
                    Some(Ok(slot)) => Some(slot),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "building a network slot");
                        None
                    }
                    None => None,
                };
                if let Some(slot) = leftover {
                    inner.destroy(slot).await;
                }
                inner.state().building -= 1;
                inner.fill_done.notify_waiters();
            });
        }
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Builds one slot with a fresh name on address block `index` (taken from the free ones
    /// by the caller; given back on failure).
    async fn build(&self, index: u32) -> Result<Slot, NetworkError> {
        let Some(block) = slot::block(&self.names.pool, index) else {
            self.state().free_blocks.insert(index);
            return Err(NetworkError::Exhausted);
        };
        let iface = format!(
            "{}{}",
            self.iface_prefix,
            self.counter.fetch_add(1, Ordering::SeqCst)
        );
        match slot::create(iface.clone(), block).await {
            Ok(s) => Ok(s),
            Err(e) => {
                let _ = slot::delete_link(&self.host, &iface).await;
                self.state().free_blocks.insert(index);
                Err(e)
            }
        }
    }

    /// Deletes a slot: its policy chain, its veth pair, its namespace; frees its block.
    async fn destroy(&self, slot: Slot) {
        self.egress.registry().remove(slot.block.guest);
        if slot.has_chain {
            let _guard = self.nft_lock.lock().await;
            if let Err(e) = nft::run(&self.names.remove_policy(&slot.iface)).await {
                tracing::warn!(interface = %slot.iface, error = %e, "removing a slot's policy");
            }
        }
        if let Err(e) = slot::delete_link(&self.host, &slot.iface).await {
            tracing::warn!(error = %e, "deleting a network slot");
        }
        let index = slot.block.index;
        drop(slot);
        self.state().free_blocks.insert(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices() {
        let all: Cidr = "10.213.0.0/16".parse().expect("cidr");
        assert_eq!(
            slice(&all, 16, 0).expect("slice").to_string(),
            "10.213.0.0/20"
        );
        assert_eq!(
            slice(&all, 16, 15).expect("slice").to_string(),
            "10.213.240.0/20"
        );
        assert_eq!(slice(&all, 1, 0), Some(all));
        assert!(slice(&all, 16, 16).is_none());
        assert!(slice(&all, 3, 0).is_none());
        let small: Cidr = "10.0.0.0/28".parse().expect("cidr");
        assert!(slice(&small, 8, 0).is_none());
    }

    #[test]
    fn nameservers() {
        let text = "# c\nnameserver 10.0.0.2\nsearch x\nnameserver  2001:db8::1\nnameserver bad\n";
        assert_eq!(
            parse_nameservers(text),
            vec![
                "10.0.0.2".parse::<IpAddr>().expect("ip"),
                "2001:db8::1".parse::<IpAddr>().expect("ip")
            ]
        );
        assert!(default_dns().iter().all(|ip| !ip.is_loopback()));
    }
}
