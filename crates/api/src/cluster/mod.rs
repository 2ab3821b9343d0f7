//! The cluster's nodes as the control plane sees them.
//!
//! This module owns:
//! - the node records ([`NodeRegistration`]: what a node says about itself when it joins, its
//!   id, instance, cluster, version, commit, E2B's [`MachineInfo`], [`Capacity`] and labels;
//!   [`NodeReport`]: the status and load it reports every second or two; [`NodeInfo`]: a
//!   snapshot of one node for readers, including its [`paddock_placement::NodeView`]);
//! - [`NodeRegistry`], the table of nodes (cheap to clone, internally synchronized): joining
//!   ([`NodeRegistry::register`]), reports ([`NodeRegistry::report`]), the admin state
//!   ([`NodeRegistry::set_status`]: `ready` or `draining`), leaving
//!   ([`NodeRegistry::mark_gone`]) and the health sweep ([`NodeRegistry::tick`], run by
//!   [`NodeRegistry::run_health`]) that makes a node `unhealthy` once its last report is older
//!   than [`HEALTH_TIMEOUT`];
//! - the status each node shows, in E2B's `NodeStatus` words ([`NodeStatus`]) with the time it
//!   last changed, and the [`RegistryEvent`]s (`node.joined`, `node.left`, `node.unhealthy`,
//!   `node.status_changed`) published on a broadcast channel ([`NodeRegistry::subscribe`]).
//!
//! [`service`] is the control plane's side of the cluster's gRPC service, which feeds the
//! registry and the node set placement uses; [`history`] records the registry's events in the
//! store for `GET /nodes/events`.
//!
//! It does not own the transport that feeds it (the cluster's gRPC service calls `register`,
//! `report` and `mark_gone`), placement (`paddock-placement`, which reads
//! [`NodeInfo::placement_view`]) or the HTTP admin routes (`routes::nodes`).
//!
//! Node events do not go through the sandbox lifecycle hub ([`crate::events::Events`]): its
//! events belong to a team and a sandbox, are stored per team, streamed to the team and
//! delivered to the team's webhooks, and a node event has neither (a node serves every team;
//! telling teams about the cluster's machines would leak the operator's infrastructure). They
//! are kept for the operator instead: [`history`] stores them, the admin route
//! `GET /nodes/events` serves them, and subscribers of [`NodeRegistry::subscribe`] get them live.
//! What a node's loss means for a team's sandboxes does reach the team: each one is settled with
//! the reason `node lost` (its logs, its `sandbox.lifecycle.killed` event and webhooks).

pub mod history;
mod node;
mod registry;
pub mod service;

pub use node::{
    AdminStatus, Allocated, DiskUsage, HugePages, MachineInfo, NodeInfo, NodeRegistration,
    NodeReport,
};
pub use paddock_placement::{Capacity, NodeStatus};
pub use registry::{
    Clock, NodeRegistry, RegistryError, RegistryEvent, RegistryEventKind, HEALTH_INTERVAL,
    HEALTH_TIMEOUT, RESERVED_IDS,
};
