//! Where webhooks may be delivered: the guard against server-side request forgery.
//!
//! A webhook URL is chosen by an API caller, but the delivery is made by the server, from the
//! host's network position: without a check, a caller could make the host POST to its own
//! loopback services, to the cloud metadata endpoint (`169.254.169.254`), to the host's LAN or
//! to other tenants' sandboxes. This module owns the rule ([`WebhookDestinations`]) and its two
//! enforcement points:
//!
//! - at registration ([`WebhookDestinations::check_url`]): a URL whose host is a refused IP
//!   literal, or `localhost`, is a 400 naming `url`. Other names are not resolved here (DNS can
//!   change between registration and delivery; the delivery check is the one that counts);
//! - at delivery ([`WebhookDestinations::client`]): the HTTP client resolves names through
//!   [`CheckedResolver`], which resolves once, checks **every** address and hands only checked
//!   addresses to the connector (there is no second resolution for a rebinding DNS server to
//!   answer differently); a refused address fails the attempt. IP literals never reach a
//!   resolver, so [`WebhookDestinations::check_url`] is applied to the URL of every attempt as
//!   well. The client follows no redirects and uses no proxy (a proxy would connect on the
//!   server's behalf to whatever it is told).
//!
//! Refused unless the operator allows them: every address that is not globally routable
//! (unspecified, loopback, link-local, private RFC 1918 and unique-local, shared CGNAT,
//! multicast, broadcast, reserved, documentation and benchmarking ranges), the IPv6 forms that
//! embed such an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4), and the sandbox
//! network pool (even when the operator picked a public range for it). `paddock serve
//! --webhook-allow-cidr` allows given ranges (not the sandbox pool); `--webhook-allow-private`
//! turns the guard off (tests with a receiver on 127.0.0.1, trusted single-user setups).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use paddock_domain::Cidr;

/// Why an address is refused as a webhook destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "webhook destination {addr} is refused ({reason}); an operator can allow it with \
     `paddock serve --webhook-allow-cidr` or `--webhook-allow-private`"
)]
pub struct Refused {
    /// The refused address.
    pub addr: IpAddr,
    /// Which kind of range it is in (`loopback`, `link-local`, ...).
    pub reason: &'static str,
}

/// Which webhook destinations are allowed (see the module docs). The default refuses every
/// address that is not globally routable.
#[derive(Debug, Clone, Default)]
pub struct WebhookDestinations {
    /// Turns the guard off: every address is allowed.
    pub allow_private: bool,
    /// Ranges allowed although they are not globally routable (the sandbox pool stays refused).
    pub allowed: Vec<Cidr>,
    /// Further ranges refused whatever `allowed` says: the sandbox network pool.
    pub sandbox_pool: Vec<Cidr>,
}

impl WebhookDestinations {
    /// Checks one address.
    pub fn check(&self, addr: IpAddr) -> Result<(), Refused> {
        if self.allow_private {
            return Ok(());
        }
        let refused = |reason| Err(Refused { addr, reason });
        if self.sandbox_pool.iter().any(|c| c.contains(addr))
            || embedded_v4(addr)
                .is_some_and(|v4| self.sandbox_pool.iter().any(|c| c.contains(IpAddr::V4(v4))))
        {
            return refused("the sandbox network pool");
        }
        if self.allowed.iter().any(|c| c.contains(addr)) {
            return Ok(());
        }
        if let Some(reason) = special_range(addr) {
            return refused(reason);
        }
        if is_host_address(addr) || embedded_v4(addr).is_some_and(|v4| is_host_address(v4.into())) {
            return refused("an address of this host");
        }
        Ok(())
    }

    /// Checks what can be checked of a URL without resolving names: an IP-literal host, and
    /// `localhost` (and its subdomains, which resolve to loopback by definition, RFC 6761).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        // The URL parser has already normalised IPv4 literals (`2130706433`, `0x7f.1`, ...)
        // to dotted quads, the form the connector parses too; IPv6 literals are bracketed.
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        if let Ok(addr) = literal.unwrap_or(host).parse::<IpAddr>() {
            return self.check(addr);
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            self.check(IpAddr::V4(Ipv4Addr::LOCALHOST))
        } else {
            Ok(())
        }
    }

    /// The HTTP client deliveries are made with: names resolved by a [`CheckedResolver`] for
    /// this policy, no redirects followed, no proxy.
    pub fn client(self: &Arc<Self>) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver {
                policy: Arc::clone(self),
            }))
            .user_agent(concat!("paddock-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
    }
}

/// The IPv4 address an IPv6 address stands for, if it embeds one: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4
/// (`2002:aabb:ccdd::`).
/// Whether `addr` is assigned to one of this host's interfaces (its public or LAN address
/// reaches the server's own listeners, whatever range it is in). Read at every check:
/// addresses change, and deliveries are rare.
fn is_host_address(addr: IpAddr) -> bool {
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return false;
    };
    ifaddrs.filter_map(|i| i.address).any(|sa| {
        sa.as_sockaddr_in()
            .is_some_and(|v4| IpAddr::V4(v4.ip()) == addr)
            || sa
                .as_sockaddr_in6()
                .is_some_and(|v6| IpAddr::V6(v6.ip()) == addr)
    })
}

fn embedded_v4(addr: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = addr else {
        return None;
    };
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// The special-purpose range `addr` lies in, if any (IANA's registries of addresses that are
/// not globally reachable, plus multicast).
fn special_range(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(a: Ipv4Addr) -> Option<&'static str> {
    let [b0, b1, b2, _] = a.octets();
    Some(match (b0, b1, b2) {
        _ if a.is_unspecified() => "unspecified",
        (0, ..) => "\"this network\" (0.0.0.0/8)",
        (127, ..) => "loopback",
        (169, 254, _) => "link-local",
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => "private",
        (100, 64..=127, _) => "shared address space (100.64.0.0/10)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        _ if a.is_broadcast() => "broadcast",
        (224..=239, ..) => "multicast",
        (240..=255, ..) => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn special_v6(a: Ipv6Addr) -> Option<&'static str> {
    if a.is_unspecified() {
        return Some("unspecified");
    }
    if a.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = embedded_v4(IpAddr::V6(a)) {
        if let Some(reason) = special_v4(v4) {
            return Some(reason);
        }
    }
    let s = a.segments();
    Some(match s[0] {
        0 if s[1..6] == [0; 5] && s[6] != 0xffff => "IPv4-compatible (deprecated)",
        0x64 if s[1] == 0xff9b && s[2] == 1 => "local-use NAT64 (64:ff9b:1::/48)",
        0x100 if s[1..4] == [0; 3] => "discard-only (100::/64)",
        0x2001 if s[1] == 0xdb8 => "documentation",
        x if x & 0xfe00 == 0xfc00 => "unique-local (private)",
        x if x & 0xffc0 == 0xfe80 => "link-local",
        x if x & 0xffc0 == 0xfec0 => "site-local (deprecated)",
        x if x & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

/// The resolver of the delivery client: resolves a name once with the system resolver, checks
/// every address it got, and fails the lookup (so the attempt, with the reason) when any is
/// refused; otherwise the connector connects to exactly these checked addresses.
#[derive(Debug)]
pub struct CheckedResolver {
    policy: Arc<WebhookDestinations>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_string();
        Box::pin(async move {
            // The port is the connector's business; it replaces this 0.
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                policy.check(addr.ip())?;
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn pool() -> WebhookDestinations {
        WebhookDestinations {
            sandbox_pool: vec!["10.213.0.0/16".parse().expect("cidr")],
            ..Default::default()
        }
    }

    #[test]
    fn refuses_every_kind_of_non_public_address_by_default() {
        let p = pool();
        for (addr, reason) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("169.254.169.254", "link-local"),
            ("10.0.0.1", "private"),
            ("172.16.5.4", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared"),
            ("192.0.0.8", "IETF"),
            ("192.0.2.1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("10.213.4.2", "sandbox network pool"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.213.0.2", "sandbox network pool"),
            ("::127.0.0.1", "loopback"),
            ("::8.8.8.8", "IPv4-compatible"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b:1::1", "NAT64"),
            ("2002:7f00:1::", "loopback"),
            ("2002:a9fe:a9fe::1", "link-local"),
            ("100::1", "discard"),
            ("2001:db8::1", "documentation"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
        ] {
            let err = p.check(ip(addr)).expect_err(addr);
            assert!(err.reason.contains(reason), "{addr}: {}", err.reason);
            assert_eq!(err.addr, ip(addr));
        }
    }

    #[test]
    fn the_hosts_own_addresses_are_recognised() {
        let own: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
            .expect("getifaddrs")
            .filter_map(|i| i.address)
            .filter_map(|sa| sa.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())))
            .collect();
        assert!(own.contains(&ip("127.0.0.1")), "{own:?}");
        for addr in &own {
            assert!(is_host_address(*addr), "{addr}");
            assert!(pool().check(*addr).is_err(), "{addr} allowed");
        }
        // A public address no interface here has (TEST-NET-free, globally routable).
        assert!(!is_host_address(ip("8.8.8.8")));
        assert!(!is_host_address(ip("2001:4860:4860::8888")));
    }

    #[test]
    fn allows_public_addresses() {
        let p = pool();
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.128.0.1",
            "169.253.1.1",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2606:4700:4700::1111",
        ] {
            assert_eq!(p.check(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn operator_allowances() {
        let mut p = pool();
        p.allowed = vec![
            "127.0.0.1/32".parse().expect("cidr"),
            "10.0.0.0/8".parse().expect("cidr"),
        ];
        assert_eq!(p.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(p.check(ip("10.1.2.3")), Ok(()));
        assert!(p.check(ip("127.0.0.2")).is_err(), "only what was allowed");
        assert!(p.check(ip("::1")).is_err());
        assert!(
            p.check(ip("10.213.0.2")).is_err(),
            "an allowed range does not open the sandbox pool"
        );
        p.allow_private = true;
        for addr in ["127.0.0.2", "::1", "169.254.169.254", "10.213.0.2"] {
            assert_eq!(p.check(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn a_public_sandbox_pool_is_refused_too() {
        let p = WebhookDestinations {
            sandbox_pool: vec!["203.0.112.0/24".parse().expect("cidr")],
            ..Default::default()
        };
        let err = p.check(ip("203.0.112.9")).expect_err("pool");
        assert!(err.reason.contains("pool"));
    }

    #[test]
    fn urls_are_checked_by_literal_host() {
        let p = pool();
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://api.localhost:3000/",
            "https://10.213.0.2/",
        ] {
            let parsed = reqwest::Url::parse(url).expect("url");
            assert!(p.check_url(&parsed).is_err(), "{url}");
        }
        for url in [
            "https://example.com/hook",
            "http://8.8.8.8/",
            "http://localhost.example.com/",
        ] {
            let parsed = reqwest::Url::parse(url).expect("url");
            assert_eq!(p.check_url(&parsed), Ok(()), "{url}");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_resolve_to_refused_addresses() {
        use reqwest::dns::Resolve as _;
        let resolver = CheckedResolver {
            policy: Arc::new(pool()),
        };
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let err = match resolver.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        let refused = err.downcast_ref::<Refused>().expect("a Refused error");
        assert!(refused.addr.is_loopback(), "{refused}");

        let allowed = CheckedResolver {
            policy: Arc::new(WebhookDestinations {
                allow_private: true,
                ..pool()
            }),
        };
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let addrs: Vec<SocketAddr> = allowed.resolve(name).await.expect("allowed").collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
