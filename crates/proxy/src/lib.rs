//! The sandbox traffic proxy: the one listener the E2B SDKs reach for every sandbox and every
//! port (`E2B_SANDBOX_URL`). It routes each request by `Host: <port>-<sandboxID>.<domain>` or by
//! the `E2b-Sandbox-Id` / `E2b-Sandbox-Port` headers ([`route`]), asks a [`SandboxDirectory`]
//! where the sandbox lives, and passes the request through — streaming bodies both ways and
//! `Upgrade` (WebSocket) tunnels — to envd's Unix socket (port 49983) or to the sandbox's
//! port-forwarding socket (any other port), or, for a sandbox on another host, unchanged to
//! that node's hop over TLS ([`RemoteUpstream`]). Failures answer with the exact E2B JSON
//! bodies the SDKs parse ([`reply`]).
//!
//! The proxy does not own sandboxes or know about nodes: the directory is its only view of them.
//! Main types: [`Proxy`] (the request handler, usable without a socket), [`serve`] /
//! [`Proxy::serve`] (the HTTP/1.1 accept loop with graceful shutdown),
//! [`Proxy::serve_connection`] (one connection accepted elsewhere: a node's hop),
//! [`ProxyConfig`], and [`ClusterDirectory`], the edge's directory over a [`Locator`] (the
//! control plane). [`listener`] is the HTTP/1.1 listener with slow-client limits (header
//! timeout, connection caps per listener and per client, descriptor budget) that both the proxy
//! and the REST API of `paddock serve` run on, over TLS when given a [`ServerTls`] ([`tls`]).
//!
//! In a cluster: the edge (`paddock proxy`) runs a [`Proxy`] over a [`ClusterDirectory`]; each
//! node runs a [`Proxy`] over its own sandboxes and serves it, as the hop, on the `http/1.1`
//! connections ([`HOP_ALPN`]) of its mutual-TLS cluster port.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::time::Duration;

mod cluster;
mod directory;
mod handler;
mod headers;
pub mod listener;
mod pool;
pub mod reply;
pub mod route;
mod server;
pub mod tls;
mod upstream;

pub use cluster::{
    ClusterDirectory, ClusterDirectoryConfig, LocateError, LocateFuture, Located, Locator, NodeHop,
};
pub use directory::{
    Lookup, PausedFuture, RemoteUpstream, ResolveFuture, SandboxDirectory, Upstream, WakeFuture,
    HOP_ALPN,
};
pub use handler::{Proxy, ProxyBody};
pub use route::{Route, RouteError};
pub use server::serve;
pub use tls::{ServerTls, TlsError};

/// Tuning of a [`Proxy`]. [`ProxyConfig::default`] fits `paddock serve`.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The sandbox port served by envd; requests for it go to the envd socket.
    pub envd_port: u16,
    /// Refuse external requests to envd's orchestrator-only paths (`/init`, `/freeze`, ...),
    /// as the reference edge does. The node reaches them through the socket directly.
    pub refuse_envd_control_paths: bool,
    /// Limit for connecting to a sandbox socket and, for forwarded ports, for the port status;
    /// for a sandbox on another host, for the TCP connection and TLS handshake to its hop.
    pub connect_timeout: Duration,
    /// Idle upstream HTTP/1 connections kept per sandbox socket (and port), or per node hop,
    /// for reuse; 0 disables reuse.
    pub max_idle_per_upstream: usize,
    /// How long an idle upstream connection may wait for reuse before it is closed.
    pub idle_timeout: Duration,
    /// Slow-client limits of the client listener: header and keep-alive timeouts, connection
    /// caps per listener and per client address.
    pub limits: listener::Limits,
    /// How long [`serve`] lets in-flight requests and tunnels finish after shutdown is asked for
    /// before it cuts them.
    pub shutdown_grace: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            envd_port: paddock_envd_proto::ENVD_PORT,
            refuse_envd_control_paths: true,
            connect_timeout: Duration::from_secs(10),
            max_idle_per_upstream: 16,
            idle_timeout: Duration::from_secs(30),
            limits: listener::Limits::default(),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Why the proxy server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listener failed with an error that is not about a single connection.
    #[error("accepting connections on the proxy listener failed")]
    Accept(#[source] std::io::Error),
}
