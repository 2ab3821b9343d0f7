//! Routing: which sandbox and which port a request is for. A `Host` of the form
//! `<port>-<sandboxID>.<anything>` wins; otherwise the `E2b-Sandbox-Id` and `E2b-Sandbox-Port`
//! headers the SDKs always send are used. Invalid ids are rejected here, before any lookup.

use http::{HeaderMap, Uri};
use paddock_domain::SandboxId;
use paddock_envd_proto::headers::{SANDBOX_ID, SANDBOX_PORT};

/// The destination of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The sandbox.
    pub sandbox_id: SandboxId,
    /// The port inside the sandbox.
    pub port: u16,
}

/// Why a request cannot be routed (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Neither a `<port>-<id>.` host nor both routing headers.
    #[error("missing sandbox routing: expected a host of the form <port>-<sandboxID>.<domain> or the E2b-Sandbox-Id and E2b-Sandbox-Port headers")]
    Missing,
    /// The sandbox id is not of `[a-z0-9]+`.
    #[error("invalid sandbox id {0:?}")]
    InvalidSandboxId(String),
    /// The port is not a number in 1..=65535.
    #[error("invalid sandbox port {0:?}")]
    InvalidPort(String),
}

/// Resolves the destination of a request from its `Host` (or absolute URI) and headers.
pub fn resolve(uri: &Uri, headers: &HeaderMap) -> Result<Route, RouteError> {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    if let Some(route) = host.and_then(parse_host) {
        return Ok(route);
    }
    let id = header_str(headers, SANDBOX_ID)?;
    let port = header_str(headers, SANDBOX_PORT)?;
    match (id, port) {
        (Some(id), Some(port)) => {
            let sandbox_id =
                SandboxId::parse(id).map_err(|_| RouteError::InvalidSandboxId(id.to_string()))?;
            let port = parse_port(port).ok_or_else(|| RouteError::InvalidPort(port.to_string()))?;
            Ok(Route { sandbox_id, port })
        }
        _ => Err(RouteError::Missing),
    }
}

/// Parses `<port>-<sandboxID>[-<clientID>].<anything>[:<listen port>]`, case-insensitively.
/// Returns `None` for any other host shape (including an invalid id), so headers can decide.
pub fn parse_host(host: &str) -> Option<Route> {
    let (label, rest) = host.split_once('.')?;
    if rest.is_empty() {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    let port = parse_port(port)?;
    let id = id.to_ascii_lowercase();
    let sandbox_id = SandboxId::parse(&id).ok()?;
    Some(Route { sandbox_id, port })
}

fn parse_port(raw: &str) -> Option<u16> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 5 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse::<u16>().ok().filter(|p| *p != 0)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, RouteError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(s) => Ok(Some(s.trim())),
            Err(_) => Err(if name == SANDBOX_ID {
                RouteError::InvalidSandboxId(String::from_utf8_lossy(v.as_bytes()).into_owned())
            } else {
                RouteError::InvalidPort(String::from_utf8_lossy(v.as_bytes()).into_owned())
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SandboxId {
        SandboxId::parse(s).expect("valid id")
    }

    #[test]
    fn host_shapes_that_route() {
        assert_eq!(
            parse_host("49983-iabc123.e2b.app"),
            Some(Route {
                sandbox_id: id("iabc123"),
                port: 49983
            })
        );
        assert_eq!(
            parse_host("8080-iabc123.localhost:3002"),
            Some(Route {
                sandbox_id: id("iabc123"),
                port: 8080
            })
        );
        // historical client id suffix and upper case (hosts are case-insensitive)
        assert_eq!(
            parse_host("3000-IABC123-6532622b.example.com"),
            Some(Route {
                sandbox_id: id("iabc123"),
                port: 3000
            })
        );
    }

    #[test]
    fn host_shapes_that_do_not_route() {
        for host in [
            "127.0.0.1:3002",
            "localhost:3002",
            "localhost",
            "sandbox.e2b.app",
            "49983-iabc123",
            "49983-iabc123.",
            "x49983-iabc.e2b.app",
            "99999-iabc.e2b.app",
            "0-iabc.e2b.app",
            "49983-.e2b.app",
            "49983-ab_c.e2b.app",
            "[::1]:3002",
        ] {
            assert_eq!(parse_host(host), None, "{host}");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn host_wins_over_headers() {
        let uri = Uri::from_static("/x");
        let h = headers(&[
            ("host", "8080-ihost.example.com"),
            ("E2b-Sandbox-Id", "iheader"),
            ("E2b-Sandbox-Port", "49983"),
        ]);
        assert_eq!(
            resolve(&uri, &h),
            Ok(Route {
                sandbox_id: id("ihost"),
                port: 8080
            })
        );
    }

    #[test]
    fn headers_route_when_host_does_not() {
        let uri = Uri::from_static("/x");
        let h = headers(&[
            ("host", "127.0.0.1:3002"),
            ("E2b-Sandbox-Id", "iheader"),
            ("E2b-Sandbox-Port", "49999"),
        ]);
        assert_eq!(
            resolve(&uri, &h),
            Ok(Route {
                sandbox_id: id("iheader"),
                port: 49999
            })
        );
    }

    #[test]
    fn absolute_uri_authority_is_a_host() {
        let uri = Uri::from_static("http://49983-iabs.example.com/health");
        assert_eq!(
            resolve(&uri, &HeaderMap::new()),
            Ok(Route {
                sandbox_id: id("iabs"),
                port: 49983
            })
        );
    }

    #[test]
    fn bad_routing_is_rejected() {
        let uri = Uri::from_static("/");
        assert_eq!(
            resolve(&uri, &headers(&[("host", "localhost")])),
            Err(RouteError::Missing)
        );
        assert_eq!(
            resolve(&uri, &headers(&[("E2b-Sandbox-Id", "iabc")])),
            Err(RouteError::Missing)
        );
        assert_eq!(
            resolve(
                &uri,
                &headers(&[("E2b-Sandbox-Id", "../etc"), ("E2b-Sandbox-Port", "1")])
            ),
            Err(RouteError::InvalidSandboxId("../etc".into()))
        );
        assert_eq!(
            resolve(
                &uri,
                &headers(&[("E2b-Sandbox-Id", "iabc"), ("E2b-Sandbox-Port", "70000")])
            ),
            Err(RouteError::InvalidPort("70000".into()))
        );
    }
}
