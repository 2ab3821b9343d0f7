//! Egress policy of one sandbox: whether it may reach the internet at all, the CIDRs it is
//! explicitly allowed (`allowOut`) or denied (`denyOut`), and the domain names it is allowed
//! (`allowOut` entries like `example.com` or `*.example.com`, enforced for HTTP on port 80 and
//! TLS on port 443 by the node's egress proxy). `allowOut` wins over `denyOut`, and
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

/// A domain name in `allowOut`: `example.com` (that name only), `*.example.com` (any name below
/// `example.com`, not `example.com` itself, as in E2B) or `*` (any name). Stored lowercase
/// without a trailing dot; IDNA is not applied (use the `xn--` form).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainPattern {
    /// `None` for `*`; else the name (for a wildcard, the part after `*.`).
    name: Option<String>,
    wildcard: bool,
}

/// Why a string is not a domain pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Empty, too long, a bad label, or a misplaced `*`.
    #[error("{0:?} is not a valid domain name or *.domain pattern: {1}")]
    Invalid(String, &'static str),
}

/// Longest domain name (RFC 1035, without the trailing dot).
const MAX_NAME: usize = 253;
/// Longest label.
const MAX_LABEL: usize = 63;

impl DomainPattern {
    /// Whether `host` (a name from an HTTP `Host` header or a TLS SNI, any case, optionally with
    /// a trailing dot) matches this pattern.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() {
            return false;
        }
        match (&self.name, self.wildcard) {
            (None, _) => true,
            (Some(name), false) => host.eq_ignore_ascii_case(name),
            (Some(name), true) => {
                host.len() > name.len() + 1
                    && host.as_bytes()[host.len() - name.len() - 1] == b'.'
                    && host[host.len() - name.len()..].eq_ignore_ascii_case(name)
            }
        }
    }
}

impl FromStr for DomainPattern {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let original = s;
        let bad = |why| DomainError::Invalid(original.to_string(), why);
        let s = s.trim();
        if s == "*" {
            return Ok(DomainPattern {
                name: None,
                wildcard: true,
            });
        }
        let (wildcard, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        if name.len() > MAX_NAME {
            return Err(bad("longer than 253 characters"));
        }
        if name.contains('*') {
            return Err(bad(
                "'*' is only allowed as the whole first label (*.example.com)",
            ));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(bad("empty label"));
            }
            if label.len() > MAX_LABEL {
                return Err(bad("a label is longer than 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad(
                    "only letters, digits, '-' and '_' are allowed in labels",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a label starts or ends with '-'"));
            }
        }
        if name.parse::<IpAddr>().is_ok() || name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad("an IP address is not a domain name"));
        }
        Ok(DomainPattern {
            name: Some(name),
            wildcard,
        })
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.name, self.wildcard) {
            (None, _) => f.write_str("*"),
            (Some(n), true) => write!(f, "*.{n}"),
            (Some(n), false) => f.write_str(n),
        }
    }
}

/// Why a connection passes a policy (see [`EgressPolicy::decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The host name matched this `allowOut` domain pattern.
    Domain(DomainPattern),
    /// The destination address passes the IP/CIDR rules.
    Address,
    /// Neither.
    Denied,
}

/// Serialises a value as its `Display` text and reads it back with `FromStr`, so policies are
/// stored in the same notation users write them in.
macro_rules! serde_as_text {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_text!(Cidr);
serde_as_text!(DomainPattern);

/// What a sandbox may reach outside the host. The default lets everything out (E2B's default);
/// the pool, the host and link-local addresses stay unreachable whatever the policy says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EgressPolicy {
    /// `false` denies every destination not in `allow_out`.
    pub allow_internet_access: bool,
    /// Destinations always allowed (checked first).
    pub allow_out: Vec<Cidr>,
    /// Destinations denied unless in `allow_out`.
    pub deny_out: Vec<Cidr>,
    /// Domain names always allowed for HTTP (port 80, `Host` header) and TLS (port 443, SNI)
    /// connections, whatever the destination address (checked with `allow_out`).
    pub allow_domains: Vec<DomainPattern>,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy {
            allow_internet_access: true,
            allow_out: Vec::new(),
            deny_out: Vec::new(),
            allow_domains: Vec::new(),
        }
    }
}

impl EgressPolicy {
    /// Whether the policy lets every destination out (needs no per-sandbox rules).
    pub fn is_open(&self) -> bool {
        self.allow_internet_access && self.deny_out.is_empty() && self.allow_domains.is_empty()
    }

    /// Whether HTTP/TLS connections of the sandbox go through the egress proxy.
    pub fn has_domains(&self) -> bool {
        !self.allow_domains.is_empty()
    }

    /// Whether the policy denies every address not explicitly allowed (`denyOut` holds
    /// `0.0.0.0/0` or `allow_internet_access` is false): E2B requires it next to domains.
    pub fn denies_all(&self) -> bool {
        !self.allow_internet_access
            || self
                .deny_out
                .iter()
                .any(|c| c.addr().is_ipv4() && c.prefix() == 0)
    }

    /// The decision for a connection to `ip` whose HTTP `Host` / TLS SNI is `host` (if any):
    /// an allowed domain first, then the IP/CIDR rules (see [`EgressPolicy::allows`]).
    pub fn decide(&self, host: Option<&str>, ip: IpAddr) -> Verdict {
        if let Some(host) = host {
            if let Some(p) = self.allow_domains.iter().find(|p| p.matches(host)) {
                return Verdict::Domain(p.clone());
            }
        }
        if self.allows(ip) {
            Verdict::Address
        } else {
            Verdict::Denied
        }
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

    #[test]
    fn policies_round_trip_through_json_in_their_written_form() {
        let policy = EgressPolicy {
            allow_internet_access: false,
            allow_out: vec!["10.1.2.0/24".parse().expect("cidr")],
            deny_out: vec!["0.0.0.0/0".parse().expect("cidr")],
            allow_domains: vec!["*.example.com".parse().expect("domain")],
        };
        let json = serde_json::to_string(&policy).expect("encode");
        assert!(json.contains(r#""10.1.2.0/24""#), "{json}");
        assert!(json.contains(r#""*.example.com""#), "{json}");
        let back: EgressPolicy = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, policy);
        let bad = json.replace("10.1.2.0/24", "10.1.2.0/99");
        assert!(serde_json::from_str::<EgressPolicy>(&bad).is_err());
    }

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
            allow_domains: vec![],
        };
        assert!(!closed.is_open());
        assert!(closed.allows(ip("1.1.1.1")) && !closed.allows(ip("1.1.1.2")));
        let deny = EgressPolicy {
            allow_internet_access: true,
            allow_out: vec![c("8.8.8.8")],
            deny_out: vec![c("8.0.0.0/8")],
            allow_domains: vec![],
        };
        assert!(deny.allows(ip("8.8.8.8")) && !deny.allows(ip("8.8.4.4")));
        assert!(deny.allows(ip("9.9.9.9")));
    }

    fn d(s: &str) -> DomainPattern {
        s.parse().expect("domain")
    }

    #[test]
    fn domain_patterns_parse_and_normalise() {
        assert_eq!(d("Example.COM.").to_string(), "example.com");
        assert_eq!(d("*.Wild.test").to_string(), "*.wild.test");
        assert_eq!(d("*").to_string(), "*");
        assert_eq!(d("localhost").to_string(), "localhost");
        assert_eq!(
            d("_acme.xn--bcher-kva.de").to_string(),
            "_acme.xn--bcher-kva.de"
        );
        for bad in [
            "",
            ".",
            "*.",
            "a..b",
            "a.*.b",
            "**.a",
            "*a.b",
            "-a.b",
            "a-.b",
            "a b.c",
            "a/b",
            "bücher.de",
            "1.2.3.4",
            "1.2.3",
            "::1",
            "http://a.b",
            "a.b:443",
        ] {
            assert!(bad.parse::<DomainPattern>().is_err(), "{bad:?} accepted");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(long_label.parse::<DomainPattern>().is_err());
        let long_name = vec!["abcdefghi"; 26].join(".");
        assert!(long_name.len() > 253 && long_name.parse::<DomainPattern>().is_err());
    }

    #[test]
    fn domain_matching() {
        let exact = d("allowed.test");
        assert!(exact.matches("allowed.test"));
        assert!(exact.matches("ALLOWED.Test."));
        assert!(!exact.matches("a.allowed.test"));
        assert!(!exact.matches("notallowed.test"));
        assert!(!exact.matches(""));
        // A wildcard matches names below the domain, not the domain itself (as in E2B).
        let wild = d("*.wild.test");
        assert!(wild.matches("a.wild.test"));
        assert!(wild.matches("x.y.WILD.test"));
        assert!(!wild.matches("wild.test"));
        assert!(!wild.matches("evilwild.test"));
        assert!(!wild.matches(".wild.test"));
        assert!(!wild.matches("wild.test.evil"));
        assert!(d("*").matches("anything.example"));
        assert!(!d("*").matches(""));
    }

    #[test]
    fn decisions_with_domains() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let p = EgressPolicy {
            allow_internet_access: true,
            allow_out: vec![c("198.51.100.7")],
            deny_out: vec![c("0.0.0.0/0")],
            allow_domains: vec![d("allowed.test"), d("*.wild.test")],
        };
        assert!(p.has_domains() && p.denies_all() && !p.is_open());
        assert_eq!(
            p.decide(Some("allowed.test"), ip("203.0.113.1")),
            Verdict::Domain(d("allowed.test"))
        );
        assert_eq!(
            p.decide(Some("a.wild.test"), ip("203.0.113.1")),
            Verdict::Domain(d("*.wild.test"))
        );
        assert_eq!(
            p.decide(Some("denied.test"), ip("203.0.113.1")),
            Verdict::Denied
        );
        assert_eq!(p.decide(None, ip("203.0.113.1")), Verdict::Denied);
        // An allowed address passes whatever name is sent.
        assert_eq!(
            p.decide(Some("denied.test"), ip("198.51.100.7")),
            Verdict::Address
        );
        let open_deny = EgressPolicy {
            deny_out: vec![c("10.0.0.0/8")],
            ..EgressPolicy::default()
        };
        assert!(!open_deny.denies_all());
        let closed = EgressPolicy {
            allow_internet_access: false,
            ..EgressPolicy::default()
        };
        assert!(closed.denies_all() && !closed.has_domains());
    }
}
