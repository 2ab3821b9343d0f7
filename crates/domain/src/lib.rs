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

/// envd's version and port, defined by envd's protocol crate; re-exported for the control
/// plane, which reports the version in its sandbox and template records.
pub use paddock_envd_proto::{ENVD_PORT, ENVD_VERSION};

/// `e` and its sources, joined with `: ` (how every role writes an error's whole cause on one
/// line, and how node errors cross the node contract).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
