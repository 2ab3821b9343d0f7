//! Node failures as they cross the seam: a code the control plane decides on and a message
//! for people. Nothing node-internal (runtime, networking or template-store error types) is
//! part of it, so the same value travels over gRPC unchanged.

use std::fmt;

/// What kind of failure a [`NodeError`] is; the control plane maps it to an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The sandbox is not on this node (404).
    SandboxNotFound,
    /// The template does not exist on this node (404 / 400 by context).
    TemplateNotFound,
    /// A template of that name already exists (409).
    TemplateExists,
    /// The node cannot take more work right now, e.g. a pooled resource ran out (429).
    Busy,
    /// The node cannot do this at all (501).
    Unsupported,
    /// The request was malformed for this node (400).
    InvalidArgument,
    /// The template's start command did not start or its ready check did not pass.
    StartCmd,
    /// envd did not accept initialisation.
    Envd,
    /// The node could not be reached or did not answer (a remote node only; retry elsewhere).
    Unavailable,
    /// Anything else that failed on the node (runtime, networking, storage).
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::SandboxNotFound,
        ErrorCode::TemplateNotFound,
        ErrorCode::TemplateExists,
        ErrorCode::Busy,
        ErrorCode::Unsupported,
        ErrorCode::InvalidArgument,
        ErrorCode::StartCmd,
        ErrorCode::Envd,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The wire name (`snake_case`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::SandboxNotFound => "sandbox_not_found",
            ErrorCode::TemplateNotFound => "template_not_found",
            ErrorCode::TemplateExists => "template_exists",
            ErrorCode::Busy => "busy",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::StartCmd => "start_cmd",
            ErrorCode::Envd => "envd",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Parses a wire name; an unknown one (a newer node) is [`ErrorCode::Internal`].
    pub fn parse(raw: &str) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == raw)
            .unwrap_or(ErrorCode::Internal)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed node call: a [`ErrorCode`] and a message (the whole cause chain, as text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{message}")]
pub struct NodeError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// For people: what failed and why.
    pub message: String,
}

impl NodeError {
    /// An error of `code` with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        NodeError {
            code,
            message: message.into(),
        }
    }

    /// Sandbox `id` is not on this node.
    pub fn sandbox_not_found(id: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::SandboxNotFound,
            format!("sandbox {id} not found"),
        )
    }

    /// Template `name` does not exist on this node.
    pub fn template_not_found(name: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::TemplateNotFound,
            format!("template '{name}' not found"),
        )
    }

    /// The node is at capacity (`why` says which resource).
    pub fn busy(why: impl fmt::Display) -> Self {
        Self::new(ErrorCode::Busy, format!("node is at capacity: {why}"))
    }

    /// The node does not support `what` (e.g. "pausing sandboxes").
    pub fn unsupported(what: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::Unsupported,
            format!("this node does not support {what}"),
        )
    }

    /// Any other failure on the node.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The node could not be reached or did not answer.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// Whether the code is `code`.
    pub fn is(&self, code: ErrorCode) -> bool {
        self.code == code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_ones_are_internal() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), code);
            let json = serde_json_like(code);
            assert_eq!(json, code.as_str());
        }
        assert_eq!(ErrorCode::parse("from_the_future"), ErrorCode::Internal);
    }

    fn serde_json_like(code: ErrorCode) -> String {
        // The serde name and the wire name are the same string.
        format!("{code}")
    }

    #[test]
    fn messages_say_what() {
        assert_eq!(
            NodeError::template_not_found("base").to_string(),
            "template 'base' not found"
        );
        assert!(NodeError::busy("network pool exhausted").is(ErrorCode::Busy));
        assert_eq!(
            NodeError::unsupported("snapshots").to_string(),
            "this node does not support snapshots"
        );
    }
}
