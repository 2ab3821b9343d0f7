//! A [`NodeError`] as a gRPC status and back. The contract's code travels in the
//! `paddock-error-code` metadata entry (exact), and the gRPC code is picked to match for tools
//! that only see that; a status without the entry (a transport failure, a proxy in between)
//! is judged by its gRPC code alone.

use paddock_node_contract::{ErrorCode, NodeError};
use tonic::{Code, Status};

/// The metadata key of the contract's error code.
pub const ERROR_CODE_KEY: &str = "paddock-error-code";

fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::SandboxNotFound | ErrorCode::TemplateNotFound => Code::NotFound,
        ErrorCode::TemplateExists => Code::AlreadyExists,
        ErrorCode::Busy => Code::ResourceExhausted,
        ErrorCode::Unsupported => Code::Unimplemented,
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::StartCmd | ErrorCode::Envd => Code::FailedPrecondition,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::Internal => Code::Internal,
    }
}

/// The status a server answers a failed call with.
pub fn to_status(e: &NodeError) -> Status {
    let mut status = Status::new(grpc_code(e.code), e.message.clone());
    if let Ok(value) = e.code.as_str().parse() {
        status.metadata_mut().insert(ERROR_CODE_KEY, value);
    }
    status
}

/// The error a client reports for a failed call.
pub fn from_status(s: &Status) -> NodeError {
    let exact = s
        .metadata()
        .get(ERROR_CODE_KEY)
        .and_then(|v| v.to_str().ok())
        .map(ErrorCode::parse);
    // A connection that could not be made or broke (refused, reset, handshake refused):
    // tonic reports it as UNKNOWN with a transport error as its source.
    let transport = std::error::Error::source(s)
        .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some());
    let code = exact.unwrap_or(match s.code() {
        _ if transport => ErrorCode::Unavailable,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
            ErrorCode::Unavailable
        }
        Code::Unimplemented => ErrorCode::Unsupported,
        Code::ResourceExhausted => ErrorCode::Busy,
        Code::InvalidArgument => ErrorCode::InvalidArgument,
        _ => ErrorCode::Internal,
    });
    let message = if exact.is_some() {
        s.message().to_string()
    } else {
        format!("node call failed ({}): {}", s.code(), s.message())
    };
    NodeError::new(code, message)
}

/// `INVALID_ARGUMENT` for a request that does not decode.
pub fn invalid(e: &crate::convert::Invalid) -> Status {
    to_status(&NodeError::new(ErrorCode::InvalidArgument, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_and_message_crosses_exactly() {
        for code in ErrorCode::ALL {
            let e = NodeError::new(code, format!("message of {code}"));
            assert_eq!(from_status(&to_status(&e)), e);
        }
    }

    #[test]
    fn a_bare_transport_failure_is_unavailable() {
        let e = from_status(&Status::unavailable("connection refused"));
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.message.contains("connection refused"), "{e:?}");
        assert_eq!(
            from_status(&Status::unknown("h2 protocol error")).code,
            ErrorCode::Internal
        );
    }
}
