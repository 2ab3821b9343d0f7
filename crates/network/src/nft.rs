//! The nftables side: the text of the `inet <table>` ruleset installed at start, of each slot's
//! policy chain, and running `nft -f -` with it (a subprocess; only at start, for non-default
//! policies, updates and releases — never for a create with the default policy).
//!
//! Ruleset, for interfaces `<prefix>*` (the host ends of sandbox veths):
//! - input: only replies (`ct state established,related`) from a sandbox reach the host, and
//!   connections a sandbox chain redirected to an egress proxy (`ct status dnat`: nothing else
//!   DNATs sandbox traffic to a host address); every other new connection to any host address
//!   and port is dropped. The egress proxy's port is closed to every other interface.
//! - nat prerouting: for the slots in the `proxied` set (policies with domain names), TCP to
//!   ports 80 and 443 of a non-local address outside the sandbox range and link-local is
//!   redirected to the egress proxy (see `egress`).
//! - forward: from a sandbox, drop the pool CIDR (no sandbox-to-sandbox), link-local
//!   (169.254.0.0/16: cloud metadata) and all IPv6; then the slot's own chain through the
//!   `egress` verdict map; then accept. To a sandbox only replies pass.
//! - nat postrouting: masquerade this instance's slice leaving through any other interface.
//! - limits (prerouting, after conntrack has seen the packet, before NAT): per sandbox
//!   interface, new flows over the rate limit and over the cap of tracked connections are
//!   dropped, so their conntrack entries are never confirmed and no sandbox fills the host's
//!   table (see [`FlowLimits`]). Keyed by the interface name, which no later slot reuses, so a
//!   new sandbox never inherits the entries of an earlier one at the same address.
//! - output: the host opens no connection into a sandbox (every port of every sandbox is
//!   reached through the proxy's Unix sockets, never its address); only replies and errors
//!   about a sandbox's own flows leave through `<prefix>*`.
//!
//! A slot chain accepts `allowOut` CIDRs, then (for a policy with domain names) DNS on port 53
//! to the configured nameservers, then drops `denyOut` CIDRs, then drops everything when
//! internet access is off.
//!
//! Several servers on one host each own a slice of the range and a table; the filter rules of
//! every table cover all `<prefix>*` interfaces and the whole range, so no instance's
//! sandboxes reach another's.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use std::net::Ipv4Addr;

use crate::policy::{Cidr, EgressPolicy};
use crate::{FlowLimits, NetworkError};

/// Names and ranges of the nftables objects of one [`crate::Network`].
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// Table name (family `inet`), one per instance.
    pub table: String,
    /// Interface name prefix shared by every instance on the host (`pdk`).
    pub prefix: String,
    /// Every sandbox address of every instance on the host (`10.213.0.0/16`).
    pub all: Cidr,
    /// This instance's slice of `all`.
    pub pool: Cidr,
    /// Port of the egress proxy (listening on every host address).
    pub proxy_port: u16,
    /// Nameservers of the sandboxes, reachable on port 53 when a policy names domains.
    pub dns: Vec<Ipv4Addr>,
    /// Per-sandbox caps on tracked connections.
    pub limits: FlowLimits,
}

impl Names {
    /// The chain holding the policy of the slot whose host interface is `iface`.
    pub fn chain(&self, iface: &str) -> String {
        format!("slot_{iface}")
    }

    /// Full ruleset: replaces any table of the same name atomically. Filter rules cover every
    /// instance's interfaces and addresses (duplicates across tables are harmless); the verdict
    /// map and NAT only this instance's.
    pub fn ruleset(&self) -> String {
        let t = &self.table;
        let p = &self.prefix;
        let all = &self.all;
        let pool = &self.pool;
        let port = self.proxy_port;
        let mut limits = String::new();
        let l = &self.limits;
        if l.new_flows_per_sec > 0 {
            let (rate, burst) = (l.new_flows_per_sec, l.new_flow_burst.max(1));
            limits.push_str(&format!(
                "    iifname \"{p}*\" ct state new add @new_flows {{ iifname limit rate over {rate}/second burst {burst} packets }} drop\n"
            ));
        }
        if l.max_flows > 0 {
            let max = l.max_flows;
            limits.push_str(&format!(
                "    iifname \"{p}*\" ct state new add @flows {{ iifname ct count over {max} }} drop\n"
            ));
        }
        format!(
            "add table inet {t}
delete table inet {t}
table inet {t} {{
  map egress {{
    type ifname : verdict
  }}
  set proxied {{
    type ifname
  }}
  set flows {{
    type ifname
    size 65535
    flags dynamic
  }}
  set new_flows {{
    type ifname
    size 65535
    flags dynamic,timeout
    timeout 1m
  }}
  chain limits {{
    type filter hook prerouting priority mangle; policy accept;
{limits}  }}
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    iifname \"{p}*\" ct state established,related accept
    iifname \"{p}*\" meta l4proto tcp ct status dnat accept
    iifname \"{p}*\" drop
    iifname != \"{p}*\" tcp dport {port} drop
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname @proxied ip daddr != {{ {all}, 169.254.0.0/16 }} tcp dport {{ 80, 443 }} fib daddr type != local redirect to :{port}
  }}
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    iifname \"{p}*\" ip daddr {all} drop
    iifname \"{p}*\" ip daddr 169.254.0.0/16 drop
    iifname \"{p}*\" meta nfproto ipv6 drop
    iifname vmap @egress
    iifname \"{p}*\" accept
    oifname \"{p}*\" ct state established,related accept
    oifname \"{p}*\" drop
  }}
  chain output {{
    type filter hook output priority filter - 10; policy accept;
    oifname \"{p}*\" ct state established,related accept
    oifname \"{p}*\" drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {pool} oifname != \"{p}*\" masquerade
  }}
}}
"
        )
    }

    /// Creates (if needed) and fills the policy chain of `iface`, and maps the interface to it.
    pub fn set_policy(&self, iface: &str, policy: &EgressPolicy, exists: bool) -> String {
        let t = &self.table;
        let chain = self.chain(iface);
        let mut s = String::new();
        if !exists {
            s.push_str(&format!("add chain inet {t} {chain}\n"));
            s.push_str(&format!(
                "add element inet {t} egress {{ \"{iface}\" : jump {chain} }}\n"
            ));
        }
        s.push_str(&format!("flush chain inet {t} {chain}\n"));
        // Adding an element that exists is a no-op, deleting one that does not is an error:
        // add first so both are safe.
        s.push_str(&format!("add element inet {t} proxied {{ \"{iface}\" }}\n"));
        if !policy.has_domains() {
            s.push_str(&format!(
                "delete element inet {t} proxied {{ \"{iface}\" }}\n"
            ));
        }
        let rule = |c: &Cidr, verdict: &str| {
            let family = if c.addr().is_ipv4() { "ip" } else { "ip6" };
            format!("add rule inet {t} {chain} {family} daddr {c} {verdict}\n")
        };
        for c in &policy.allow_out {
            s.push_str(&rule(c, "accept"));
        }
        if policy.has_domains() {
            for ns in &self.dns {
                for proto in ["udp", "tcp"] {
                    s.push_str(&format!(
                        "add rule inet {t} {chain} ip daddr {ns} {proto} dport 53 accept\n"
                    ));
                }
            }
        }
        for c in &policy.deny_out {
            s.push_str(&rule(c, "drop"));
        }
        if !policy.allow_internet_access {
            s.push_str(&format!("add rule inet {t} {chain} drop\n"));
        }
        s
    }

    /// Removes the policy chain of `iface` and its map element.
    pub fn remove_policy(&self, iface: &str) -> String {
        let t = &self.table;
        let chain = self.chain(iface);
        format!(
            "delete element inet {t} egress {{ \"{iface}\" }}
delete chain inet {t} {chain}
add element inet {t} proxied {{ \"{iface}\" }}
delete element inet {t} proxied {{ \"{iface}\" }}
"
        )
    }

    /// Deletes the table (whether or not it exists).
    pub fn delete_table(&self) -> String {
        let t = &self.table;
        format!("add table inet {t}\ndelete table inet {t}\n")
    }
}

/// Fails unless the `nft` binary runs.
pub(crate) fn check_installed() -> Result<(), NetworkError> {
    match std::process::Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        _ => Err(NetworkError::NftMissing),
    }
}

/// Runs `nft -f -` with `script` as one transaction.
pub(crate) async fn run(script: &str) -> Result<(), NetworkError> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|_| NetworkError::NftMissing)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| NetworkError::Nft(format!("writing the script: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NetworkError::Nft(format!("waiting for nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Nft(
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " | "),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            table: "paddock".into(),
            prefix: "pdk".into(),
            all: "10.213.0.0/16".parse().expect("cidr"),
            pool: "10.213.16.0/20".parse().expect("cidr"),
            proxy_port: 40123,
            dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
            limits: FlowLimits {
                max_flows: 4096,
                new_flows_per_sec: 300,
                new_flow_burst: 1000,
            },
        }
    }

    #[test]
    fn ruleset_text() {
        let r = names().ruleset();
        assert!(r.starts_with("add table inet paddock\ndelete table inet paddock\n"));
        for line in [
            "iifname \"pdk*\" ct state established,related accept\n    iifname \"pdk*\" meta l4proto tcp ct status dnat accept\n    iifname \"pdk*\" drop\n",
            "iifname \"pdk*\" ip daddr 10.213.0.0/16 drop",
            "iifname \"pdk*\" ip daddr 169.254.0.0/16 drop",
            "iifname vmap @egress",
            "ip saddr 10.213.16.0/20 oifname != \"pdk*\" masquerade",
            "set proxied {\n    type ifname\n  }",
            "iifname \"pdk*\" meta l4proto tcp ct status dnat accept\n    iifname \"pdk*\" drop\n    iifname != \"pdk*\" tcp dport 40123 drop",
            "type filter hook prerouting priority mangle; policy accept;\n    iifname \"pdk*\" ct state new add @new_flows { iifname limit rate over 300/second burst 1000 packets } drop\n    iifname \"pdk*\" ct state new add @flows { iifname ct count over 4096 } drop\n  }",
            "type filter hook output priority filter - 10; policy accept;\n    oifname \"pdk*\" ct state established,related accept\n    oifname \"pdk*\" drop\n  }",
            "type nat hook prerouting priority dstnat; policy accept;\n    iifname @proxied ip daddr != { 10.213.0.0/16, 169.254.0.0/16 } tcp dport { 80, 443 } fib daddr type != local redirect to :40123",
        ] {
            assert!(r.contains(line), "missing {line:?} in {r}");
        }
        // A limit of 0 is no limit: no rule (the sets stay, empty).
        let mut n = names();
        n.limits = FlowLimits {
            max_flows: 0,
            new_flows_per_sec: 0,
            new_flow_burst: 5,
        };
        let r = n.ruleset();
        assert!(!r.contains("ct count"), "{r}");
        assert!(!r.contains("limit rate"), "{r}");
        assert!(r.contains("priority mangle; policy accept;\n  }"), "{r}");
    }

    #[test]
    fn policy_text() {
        let n = names();
        assert_eq!(
            n.set_policy("pdk3", &EgressPolicy::default(), true),
            "flush chain inet paddock slot_pdk3
add element inet paddock proxied { \"pdk3\" }
delete element inet paddock proxied { \"pdk3\" }
"
        );
        let p = EgressPolicy {
            allow_internet_access: false,
            allow_out: vec!["1.1.1.1".parse().expect("cidr")],
            deny_out: vec!["8.0.0.0/8".parse().expect("cidr")],
            allow_domains: vec![],
        };
        assert_eq!(
            n.set_policy("pdk3", &p, false),
            "add chain inet paddock slot_pdk3
add element inet paddock egress { \"pdk3\" : jump slot_pdk3 }
flush chain inet paddock slot_pdk3
add element inet paddock proxied { \"pdk3\" }
delete element inet paddock proxied { \"pdk3\" }
add rule inet paddock slot_pdk3 ip daddr 1.1.1.1/32 accept
add rule inet paddock slot_pdk3 ip daddr 8.0.0.0/8 drop
add rule inet paddock slot_pdk3 drop
"
        );
        assert_eq!(
            n.remove_policy("pdk3"),
            "delete element inet paddock egress { \"pdk3\" }
delete chain inet paddock slot_pdk3
add element inet paddock proxied { \"pdk3\" }
delete element inet paddock proxied { \"pdk3\" }
"
        );
    }

    #[test]
    fn domain_policy_text() {
        let n = names();
        let p = EgressPolicy {
            allow_internet_access: true,
            allow_out: vec!["1.1.1.1".parse().expect("cidr")],
            deny_out: vec!["0.0.0.0/0".parse().expect("cidr")],
            allow_domains: vec!["*.example.com".parse().expect("domain")],
        };
        // In the proxied set; DNS to the nameservers after allowOut, before denyOut.
        assert_eq!(
            n.set_policy("pdk3", &p, true),
            "flush chain inet paddock slot_pdk3
add element inet paddock proxied { \"pdk3\" }
add rule inet paddock slot_pdk3 ip daddr 1.1.1.1/32 accept
add rule inet paddock slot_pdk3 ip daddr 192.0.2.53 udp dport 53 accept
add rule inet paddock slot_pdk3 ip daddr 192.0.2.53 tcp dport 53 accept
add rule inet paddock slot_pdk3 ip daddr 0.0.0.0/0 drop
"
        );
    }
}
