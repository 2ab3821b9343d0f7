//! One network slot: a network namespace kept alive by a descriptor, and a veth pair — host end
//! `<prefix><n>` with `<block>.1/30`, the other end `eth0` inside the namespace with
//! `<block>.2/30`, `lo` up and a default route via `.1`. Built with in-process netlink
//! (`rtnetlink`) on a dedicated thread: the thread `unshare`s its network namespace (never a
//! tokio worker), opens `/proc/thread-self/ns/net`, configures both ends and exits; the
//! namespace lives on through the returned descriptor.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::policy::Cidr;
use crate::NetworkError;

/// Addresses of one /30 block of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    /// Index of the block in the pool.
    pub index: u32,
    /// The host end (gateway of the sandbox).
    pub host: Ipv4Addr,
    /// The sandbox end (`eth0`).
    pub guest: Ipv4Addr,
}

/// How many /30 blocks an IPv4 pool holds; `None` for IPv6 or pools smaller than a /30.
pub(crate) fn block_count(pool: &Cidr) -> Option<u32> {
    match pool.addr() {
        IpAddr::V4(_) if pool.prefix() <= 30 => Some(1u32 << (30 - u32::from(pool.prefix()))),
        _ => None,
    }
}

/// The addresses of block `index` of `pool` (an IPv4 pool; see [`block_count`]).
pub(crate) fn block(pool: &Cidr, index: u32) -> Option<Block> {
    let IpAddr::V4(base) = pool.addr() else {
        return None;
    };
    if index >= block_count(pool)? {
        return None;
    }
    let start = u32::from(base) + index * 4;
    Some(Block {
        index,
        host: Ipv4Addr::from(start + 1),
        guest: Ipv4Addr::from(start + 2),
    })
}

/// A built slot.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Host-side interface name.
    pub iface: String,
    /// Its addresses.
    pub block: Block,
    /// Keeps the network namespace alive.
    pub netns: OwnedFd,
    /// Whether a policy chain exists for it in nftables.
    pub has_chain: bool,
}

/// Builds a slot on a new thread and waits for it (without blocking the async runtime).
pub(crate) async fn create(iface: String, block: Block) -> Result<Slot, NetworkError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = iface.clone();
    std::thread::Builder::new()
        .name("paddock-netns".into())
        .spawn(move || {
            let _ = tx.send(create_on_thread(&name, block));
        })
        .map_err(|e| NetworkError::Io("spawning the netns thread".into(), e))?;
    let netns = rx
        .await
        .map_err(|_| NetworkError::Slot(iface.clone(), "the netns thread died".into()))??;
    wait_carrier(&iface).await;
    Ok(Slot {
        iface,
        block,
        netns,
        has_chain: false,
    })
}

/// Waits (bounded) until the veth has carrier: the kernel reports it through linkwatch up to a
/// second after the link is set up, and packets sent before that are dropped.
async fn wait_carrier(iface: &str) {
    let path = format!("/sys/class/net/{iface}/operstate");
    let deadline = tokio::time::Instant::now() + CARRIER_WAIT;
    while tokio::time::Instant::now() < deadline {
        match std::fs::read_to_string(&path) {
            Ok(state) if state.trim() == "up" => return,
            _ => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
    tracing::warn!(interface = %iface, "network slot has no carrier yet");
}

/// Longest wait for a new veth's carrier.
const CARRIER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn create_on_thread(iface: &str, block: Block) -> Result<OwnedFd, NetworkError> {
    let fail = |step: &str, e: &dyn std::fmt::Display| {
        NetworkError::Slot(iface.to_string(), format!("{step}: {e}"))
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| fail("building the netlink runtime", &e))?;
    rt.block_on(async {
        // Opened before unshare: this socket stays in the host's namespace.
        let (conn, host, _) = rtnetlink::new_connection().map_err(|e| fail("netlink", &e))?;
        tokio::spawn(conn);
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| fail("unshare(CLONE_NEWNET)", &e))?;
        let netns = open_netns().map_err(|e| fail("opening the netns", &e))?;
        let (conn, inside, _) = rtnetlink::new_connection().map_err(|e| fail("netlink", &e))?;
        tokio::spawn(conn);

        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name("eth0".to_string())
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let veth = LinkVeth::new(iface, "eth0")
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        host.link()
            .add(veth)
            .execute()
            .await
            .map_err(|e| fail("creating the veth pair", &e))?;
        let idx = index(&host, iface).await?;
        host.address()
            .add(idx, IpAddr::V4(block.host), 30)
            .execute()
            .await
            .map_err(|e| fail("addressing the host end", &e))?;
        set_up(&host, idx)
            .await
            .map_err(|e| fail("host end up", &e))?;

        let lo = index(&inside, "lo").await?;
        set_up(&inside, lo).await.map_err(|e| fail("lo up", &e))?;
        let eth = index(&inside, "eth0").await?;
        inside
            .address()
            .add(eth, IpAddr::V4(block.guest), 30)
            .execute()
            .await
            .map_err(|e| fail("addressing eth0", &e))?;
        set_up(&inside, eth)
            .await
            .map_err(|e| fail("eth0 up", &e))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(block.host)
            .output_interface(eth)
            .build();
        inside
            .route()
            .add(route)
            .execute()
            .await
            .map_err(|e| fail("adding the default route", &e))?;
        Ok(netns)
    })
}

fn open_netns() -> nix::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        "/proc/thread-self/ns/net",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

async fn set_up(handle: &Handle, idx: u32) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
}

/// Index of the link called `name`.
pub(crate) async fn index(handle: &Handle, name: &str) -> Result<u32, NetworkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err(NetworkError::Slot(name.into(), "no such link".into())),
        Err(e) => Err(NetworkError::Slot(
            name.into(),
            format!("looking it up: {e}"),
        )),
    }
}

/// Deletes the host end of a slot (which takes `eth0` with it at once, rather than when the
/// namespace is finally freed). A missing link is not an error.
pub(crate) async fn delete_link(handle: &Handle, name: &str) -> Result<(), NetworkError> {
    let Ok(idx) = index(handle, name).await else {
        return Ok(());
    };
    match handle.link().del(idx).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
        {
            Ok(())
        }
        Err(e) => Err(NetworkError::Slot(name.into(), format!("deleting: {e}"))),
    }
}

/// Names of every link in the host namespace that starts with `prefix` followed by digits.
pub(crate) async fn links_with_prefix(
    handle: &Handle,
    prefix: &str,
) -> Result<Vec<String>, NetworkError> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let mut links = handle.link().get().execute();
    let mut names = Vec::new();
    while let Some(link) = links
        .try_next()
        .await
        .map_err(|e| NetworkError::Slot(prefix.into(), format!("listing links: {e}")))?
    {
        for attr in &link.attributes {
            if let LinkAttribute::IfName(name) = attr {
                let ours = name.strip_prefix(prefix).is_some_and(|rest| {
                    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
                });
                if ours {
                    names.push(name.clone());
                }
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_math() {
        let pool: Cidr = "10.213.0.0/16".parse().expect("cidr");
        assert_eq!(block_count(&pool), Some(16384));
        let b0 = block(&pool, 0).expect("block");
        assert_eq!(
            (b0.host, b0.guest),
            (
                "10.213.0.1".parse().expect("ip"),
                "10.213.0.2".parse().expect("ip")
            )
        );
        let b = block(&pool, 65).expect("block");
        assert_eq!(b.host.to_string(), "10.213.1.5");
        assert_eq!(b.guest.to_string(), "10.213.1.6");
        let last = block(&pool, 16383).expect("block");
        assert_eq!(last.guest.to_string(), "10.213.255.254");
        assert!(block(&pool, 16384).is_none());
        let v6: Cidr = "fd00::/64".parse().expect("cidr");
        assert_eq!(block_count(&v6), None);
        let tiny: Cidr = "10.0.0.0/31".parse().expect("cidr");
        assert_eq!(block_count(&tiny), None);
    }
}
