//! Pure domain types shared by every Paddock role: sandbox and template ids, the sandbox
//! lifecycle state machine, resource limits and sandboxes' egress policies. No I/O lives here.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod egress;
pub mod ids;
pub mod resources;
pub mod state;

pub use egress::{Cidr, EgressPolicy};
pub use ids::{IdError, SandboxId, TemplateName};
pub use resources::Resources;
pub use state::{SandboxState, TransitionError};

/// The envd version Paddock reports to the SDKs (they gate features on it; see the spec 3.7).
pub const ENVD_VERSION: &str = "0.6.13";

/// The port envd listens on inside every sandbox.
pub const ENVD_PORT: u16 = 49983;
