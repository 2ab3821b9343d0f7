//! Placement of sandboxes on a cluster's nodes, for the control plane (`paddock api`).
//!
//! - [`NodeView`]: what the control plane knows of a node (status, [`Capacity`], allocated
//!   and in-flight [`Usage`], measured [`Load`], warm templates), with [`NodeView::fits`] and
//!   [`NodeView::score`].
//! - [`Placer`]: the node table and the decision: best of K sampled ready nodes, warm
//!   preference, pins and excludes, in-flight reservations ([`Placer::place`] /
//!   [`Placer::release`]) and one [`Breaker`] per node.
//! - [`tries`]: a create tried on up to three nodes, the node's errors classified as "retry
//!   elsewhere" or final.
//! - [`PlaceError`]: why nothing could be placed, with the HTTP status of E2B's error body.
//!
//! Pure logic: no I/O, no clock (callers pass [`std::time::Instant`]s), no async runtime.
//!
//! ```
//! use std::time::Instant;
//! use paddock_placement::{Answer, Capacity, Demand, NodeView, Placer, PlacerConfig, Request};
//!
//! let mut placer = Placer::with_seed(PlacerConfig::default(), 7);
//! let cap = Capacity { cpus: 8, memory_mb: 16384, disk_mb: 100_000, max_sandboxes: 50 };
//! placer.upsert(NodeView::new("node-a", cap));
//! placer.upsert(NodeView::new("node-b", cap));
//! let demand = Demand { cpus: 2, memory_mb: 512, disk_mb: 1024 };
//! let p = placer.place(&Request::new(demand), Instant::now()).expect("room");
//! // ... send the create to p.node(), then:
//! placer.release(&p, Answer::Created, Instant::now());
//! assert_eq!(placer.node(p.node()).expect("known").allocated.cpus, 2);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod breaker;
pub mod error;
pub mod node;
pub mod placer;
mod slots;
pub mod tries;

pub use breaker::{Admit, Breaker, BreakerConfig, BreakerState};
pub use error::{PlaceError, Unavailable};
pub use node::{Capacity, Demand, Load, NodeStatus, NodeView, ScoreWeights, Usage};
pub use placer::{Answer, Placement, Placer, PlacerConfig, Request};
pub use tries::{place_with_tries, place_with_tries_async, Failure, Placed, TriesError};
