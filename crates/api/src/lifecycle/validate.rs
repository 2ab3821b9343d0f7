//! Input validation shared by the lifecycle operations. Every message names the offending field
//! so a 400 tells the client exactly what to fix.

use std::collections::{BTreeMap, HashMap};

use super::Error;

/// Longest timeout a sandbox may be given: 24 hours.
pub const MAX_TIMEOUT_SECS: i64 = 24 * 3600;
/// Most metadata entries per sandbox.
pub const MAX_METADATA_ENTRIES: usize = 100;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY: usize = 256;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE: usize = 4096;
/// Most environment variables per sandbox.
pub const MAX_ENV_VARS: usize = 1000;
/// Longest environment variable value, in bytes.
pub const MAX_ENV_VALUE: usize = 128 * 1024;

/// Checks a timeout in seconds (`0..=86400`).
pub fn timeout(field: &str, secs: i64) -> Result<i64, Error> {
    if !(0..=MAX_TIMEOUT_SECS).contains(&secs) {
        return Err(Error::Invalid(format!(
            "{field} must be between 0 and {MAX_TIMEOUT_SECS} seconds, got {secs}"
        )));
    }
    Ok(secs)
}

/// Checks metadata sizes.
pub fn metadata(meta: &BTreeMap<String, String>) -> Result<(), Error> {
    if meta.len() > MAX_METADATA_ENTRIES {
        return Err(Error::Invalid(format!(
            "metadata has {} entries, at most {MAX_METADATA_ENTRIES} are allowed",
            meta.len()
        )));
    }
    for (key, value) in meta {
        if key.is_empty() || key.len() > MAX_METADATA_KEY {
            return Err(Error::Invalid(format!(
                "metadata key {key:?} must be 1 to {MAX_METADATA_KEY} bytes long"
            )));
        }
        if value.len() > MAX_METADATA_VALUE {
            return Err(Error::Invalid(format!(
                "metadata value of {key:?} is longer than {MAX_METADATA_VALUE} bytes"
            )));
        }
    }
    Ok(())
}

/// Checks environment variable names and values.
pub fn env_vars(vars: &HashMap<String, String>) -> Result<(), Error> {
    if vars.len() > MAX_ENV_VARS {
        return Err(Error::Invalid(format!(
            "envVars has {} entries, at most {MAX_ENV_VARS} are allowed",
            vars.len()
        )));
    }
    for (name, value) in vars {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(Error::Invalid(format!(
                "envVars name {name:?} is invalid: it must be non-empty without '=' or NUL"
            )));
        }
        if value.contains('\0') || value.len() > MAX_ENV_VALUE {
            return Err(Error::Invalid(format!(
                "envVars value of {name:?} must not contain NUL or exceed {MAX_ENV_VALUE} bytes"
            )));
        }
    }
    Ok(())
}

/// Checks an `Idempotency-Key` header value (1 to 255 printable ASCII characters).
pub fn idempotency_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Invalid(
            "Idempotency-Key must be 1 to 255 printable ASCII characters".into(),
        ));
    }
    Ok(())
}

/// Builds the egress policy of a create (`allow_internet_access` + `network`) or of a
/// `PUT /sandboxes/{id}/network` (where `allow_internet_access` sits inside the body).
/// `allowOut` takes IPs, CIDRs and domain names (`example.com`, `*.example.com`), which need a
/// deny of everything else (as in E2B); `denyOut` only IPs and CIDRs. Features that cannot be
/// honoured yet are refused with a 400 rather than silently ignored.
pub fn egress(
    allow_internet_access: Option<bool>,
    network: Option<&crate::wire::NetworkBody>,
) -> Result<paddock_domain::EgressPolicy, Error> {
    let mut policy = paddock_domain::EgressPolicy {
        allow_internet_access: allow_internet_access.unwrap_or(true),
        ..Default::default()
    };
    let Some(net) = network else {
        return Ok(policy);
    };
    if let Some(allow) = net.allow_internet_access {
        policy.allow_internet_access = allow;
    }
    let unsupported = |field: &str| {
        Err(Error::Invalid(format!(
            "network.{field} is not supported by this server yet"
        )))
    };
    if net.allow_public_traffic == Some(false) {
        return unsupported("allowPublicTraffic=false");
    }
    if net.dns_servers.as_ref().is_some_and(|d| !d.is_empty()) {
        return unsupported("dnsServers");
    }
    if net.egress_proxy.as_ref().is_some_and(|v| !v.is_null()) {
        return unsupported("egressProxy");
    }
    if net.mask_request_host.is_some() {
        return unsupported("maskRequestHost");
    }
    if net.https_ports.as_ref().is_some_and(|p| !p.is_empty()) {
        return unsupported("httpsPorts");
    }
    if net
        .rules
        .as_ref()
        .is_some_and(|r| !r.is_null() && r.as_object().is_none_or(|o| !o.is_empty()))
    {
        return unsupported("rules");
    }
    for entry in net.deny_out.iter().flatten() {
        let c = entry.parse::<paddock_domain::Cidr>().map_err(|e| {
            // E2B's message first, then ours.
            Error::Invalid(format!(
                "invalid denied CIDR {entry}: network.denyOut: {e} (only IPs and CIDRs, no domain names)"
            ))
        })?;
        policy.deny_out.push(c);
    }
    for entry in net.allow_out.iter().flatten() {
        match entry.parse::<paddock_domain::Cidr>() {
            Ok(c) => policy.allow_out.push(c),
            Err(_) if looks_like_domain(entry) => {
                let domain = entry
                    .parse()
                    .map_err(|e| Error::Invalid(format!("network.allowOut: {e}")))?;
                policy.allow_domains.push(domain);
            }
            Err(e) => return Err(Error::Invalid(format!("network.allowOut: {e}"))),
        }
    }
    if policy.has_domains() && !policy.denies_all() {
        return Err(Error::Invalid(DOMAINS_REQUIRE_DENY_ALL.into()));
    }
    Ok(policy)
}

/// E2B's 400 message for domains in `allowOut` without a deny of all other traffic.
pub const DOMAINS_REQUIRE_DENY_ALL: &str = "When specifying allowed domains in allow out, you must include 'ALL_TRAFFIC' in deny out to block all other traffic.";

/// Whether `s` is meant as a domain rather than an address: no `/` and no `:` (CIDRs and IPv6),
/// and not only digits and dots (a mistyped IPv4 address).
fn looks_like_domain(s: &str) -> bool {
    let s = s.trim();
    !s.is_empty() && !s.contains(['/', ':']) && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_bounded() {
        assert!(timeout("timeout", 0).is_ok());
        assert!(timeout("timeout", MAX_TIMEOUT_SECS).is_ok());
        let err = timeout("timeout", MAX_TIMEOUT_SECS + 1).expect_err("too long");
        assert!(err.to_string().contains("timeout"));
        assert!(timeout("timeout", -1).is_err());
    }

    #[test]
    fn metadata_and_env_limits() {
        let mut meta = BTreeMap::new();
        meta.insert("k".to_string(), "v".to_string());
        assert!(metadata(&meta).is_ok());
        meta.insert(String::new(), "v".into());
        assert!(metadata(&meta).is_err());

        let mut env = HashMap::new();
        env.insert("A".to_string(), "b".to_string());
        assert!(env_vars(&env).is_ok());
        env.insert("A=B".into(), "x".into());
        assert!(env_vars(&env)
            .expect_err("bad name")
            .to_string()
            .contains("envVars"));
    }

    #[test]
    fn idempotency_keys() {
        assert!(idempotency_key("3f2c-11aa").is_ok());
        assert!(idempotency_key("").is_err());
        assert!(idempotency_key("has space").is_err());
    }

    #[test]
    fn egress_policy_from_the_wire() {
        use crate::wire::NetworkBody;
        let open = egress(None, None).expect("default");
        assert!(open.is_open());
        let closed = egress(Some(false), None).expect("closed");
        assert!(!closed.allow_internet_access);
        let body = NetworkBody {
            allow_out: Some(vec!["1.1.1.1".into(), "10.0.0.0/8".into()]),
            deny_out: Some(vec!["0.0.0.0/0".into()]),
            ..Default::default()
        };
        let p = egress(None, Some(&body)).expect("lists");
        assert_eq!(p.allow_out.len(), 2);
        assert_eq!(p.deny_out[0].to_string(), "0.0.0.0/0");
        let update = NetworkBody {
            allow_internet_access: Some(false),
            ..Default::default()
        };
        assert!(
            !egress(None, Some(&update))
                .expect("update")
                .allow_internet_access
        );
        let msg = |b: NetworkBody| match egress(None, Some(&b)) {
            Err(Error::Invalid(m)) => m,
            other => panic!("expected a 400, got {other:?}"),
        };
        // Domains need a deny of everything else (denyOut 0.0.0.0/0 or no internet access).
        for domain in ["example.com", "*.example.com"] {
            let m = msg(NetworkBody {
                allow_out: Some(vec![domain.into()]),
                ..Default::default()
            });
            assert_eq!(m, DOMAINS_REQUIRE_DENY_ALL);
            let m = msg(NetworkBody {
                allow_out: Some(vec![domain.into()]),
                deny_out: Some(vec!["10.0.0.0/8".into()]),
                ..Default::default()
            });
            assert_eq!(m, DOMAINS_REQUIRE_DENY_ALL);
        }
        let p = egress(
            None,
            Some(&NetworkBody {
                allow_out: Some(vec![
                    "Allowed.Test".into(),
                    "*.wild.test".into(),
                    "1.1.1.1".into(),
                ]),
                deny_out: Some(vec!["0.0.0.0/0".into()]),
                ..Default::default()
            }),
        )
        .expect("domains with deny all");
        let names: Vec<String> = p.allow_domains.iter().map(|d| d.to_string()).collect();
        assert_eq!(names, ["allowed.test", "*.wild.test"]);
        assert_eq!(p.allow_out.len(), 1);
        assert!(egress(
            Some(false),
            Some(&NetworkBody {
                allow_out: Some(vec!["example.com".into()]),
                ..Default::default()
            }),
        )
        .expect("no internet access counts as deny all")
        .has_domains());
        for bad in [
            "exa mple.com",
            "a..b",
            "*.",
            "ex*ample.com",
            "-a.com",
            "1.2.3.4.5",
        ] {
            let m = msg(NetworkBody {
                allow_out: Some(vec![bad.into()]),
                deny_out: Some(vec!["0.0.0.0/0".into()]),
                ..Default::default()
            });
            assert!(m.starts_with("network.allowOut"), "{bad}: {m}");
        }
        assert!(msg(NetworkBody {
            allow_out: Some(vec!["1.2.3.4/40".into()]),
            ..Default::default()
        })
        .starts_with("network.allowOut"));
        for domain in ["example.com", "*.example.com"] {
            let m = msg(NetworkBody {
                deny_out: Some(vec![domain.into()]),
                ..Default::default()
            });
            assert!(
                m.starts_with(&format!("invalid denied CIDR {domain}")),
                "{m}"
            );
            assert!(m.contains("network.denyOut"), "{m}");
        }
        assert!(msg(NetworkBody {
            egress_proxy: Some(serde_json::json!({"address": "p:1"})),
            ..Default::default()
        })
        .contains("egressProxy"));
    }
}
