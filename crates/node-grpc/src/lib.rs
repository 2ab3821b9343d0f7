//! The node contract ([`paddock_node_contract::Node`]) over gRPC with mutual TLS, as written
//! down in `proto/paddock/node/v1/node.proto`:
//! - [`serve`] serves any implementation of the trait (a node serves its `LocalNode`; tests
//!   serve the shared fake) to callers whose cluster certificate has an allowed role;
//! - [`GrpcNode`] is a remote node as an implementation of the trait, for the control plane.
//!
//! Modules: [`proto`] (generated), [`build_files`] (a build's COPY archives on a remote node), `convert` (contract types ↔ messages), [`status`] (errors ↔
//! gRPC statuses), [`tls`] (mutual-TLS connections for any cluster service), [`server`],
//! [`client`].
#![warn(missing_docs)]

pub mod build_files;
pub mod client;
mod convert;
pub mod server;
pub mod status;
pub mod tls;

/// The generated messages, client and server of `paddock.node.v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("paddock.node.v1");
}

pub use build_files::BuildFiles;
pub use client::{ClientError, GrpcNode};
pub use convert::Invalid;
pub use server::{serve, serve_incoming, ServeConfig, ServeError};
pub use tls::{caller, incoming, AcceptHandle, Authed, PeerInfo};
