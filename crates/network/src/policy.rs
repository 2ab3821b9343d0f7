//! Egress policy of one sandbox: whether it may reach the internet at all, and the CIDRs it is
//! explicitly allowed (`allowOut`) or denied (`denyOut`). `allowOut` wins over `denyOut`, and
//! `allow_internet_access = false` is the same as denying `0.0.0.0/0` (as in E2B).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network in CIDR notation; a bare address is a /32 (or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not an address at all; it may be a domain name.
    #[error("{0:?} is not an IP address or CIDR")]
    NotAnAddress(String),
    /// The prefix length is not a number or too long for the address family.
    #[error("{0:?} has an invalid prefix length")]
    BadPrefix(String),
}

impl Cidr {
    /// Builds a network from an address and a prefix length; host bits are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError::BadPrefix(format!("{addr}/{prefix}")));
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Ok(Cidr { addr, prefix })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Cidr::new(ip, self.prefix).is_ok_and(|c| c.addr == self.addr)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::NotAnAddress(s.to_string()))?;
        let prefix = match prefix {
            None => {
                if addr.is_ipv4() {
                    32
                } else {
                    128
                }
            }
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| CidrError::BadPrefix(s.to_string()))?,
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What a sandbox may reach outside the host. The default lets everything out (E2B's default);
/// the pool, the host and link-local addresses stay unreachable whatever the policy says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    /// `false` denies every destination not in `allow_out`.
    pub allow_internet_access: bool,
    /// Destinations always allowed (checked first).
    pub allow_out: Vec<Cidr>,
    /// Destinations denied unless in `allow_out`.
    pub deny_out: Vec<Cidr>,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy {
            allow_internet_access: true,
            allow_out: Vec::new(),
            deny_out: Vec::new(),
        }
    }
}

impl EgressPolicy {
    /// Whether the policy lets every destination out (needs no per-sandbox rules).
    pub fn is_open(&self) -> bool {
        self.allow_internet_access && self.deny_out.is_empty()
    }

    /// Whether a packet to `ip` passes this policy (the same decision the nftables rules make).
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.allow_out.iter().any(|c| c.contains(ip)) {
            return true;
        }
        self.allow_internet_access && !self.deny_out.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(c("1.1.1.1").to_string(), "1.1.1.1/32");
        assert_eq!(c("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(c("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert!(matches!(
            "example.com".parse::<Cidr>(),
            Err(CidrError::NotAnAddress(_))
        ));
        assert!(matches!(
            "1.2.3.4/33".parse::<Cidr>(),
            Err(CidrError::BadPrefix(_))
        ));
        assert!(matches!(
            "1.2.3.4/x".parse::<Cidr>(),
            Err(CidrError::BadPrefix(_))
        ));
    }

    #[test]
    fn contains() {
        assert!(c("10.0.0.0/8").contains("10.9.9.9".parse().expect("ip")));
        assert!(!c("10.0.0.0/8").contains("11.0.0.0".parse().expect("ip")));
        assert!(c("0.0.0.0/0").contains("8.8.8.8".parse().expect("ip")));
        assert!(!c("0.0.0.0/0").contains("::1".parse().expect("ip")));
    }

    #[test]
    fn allow_wins_over_deny() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let open = EgressPolicy::default();
        assert!(open.is_open() && open.allows(ip("8.8.8.8")));
        let closed = EgressPolicy {
            allow_internet_access: false,
            allow_out: vec![c("1.1.1.1")],
            deny_out: vec![],
        };
        assert!(!closed.is_open());
        assert!(closed.allows(ip("1.1.1.1")) && !closed.allows(ip("1.1.1.2")));
        let deny = EgressPolicy {
            allow_internet_access: true,
            allow_out: vec![c("8.8.8.8")],
            deny_out: vec![c("8.0.0.0/8")],
        };
        assert!(deny.allows(ip("8.8.8.8")) && !deny.allows(ip("8.8.4.4")));
        assert!(deny.allows(ip("9.9.9.9")));
    }
}
