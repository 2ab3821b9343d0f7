//! The code interpreter that runs inside a `code-interpreter-v1` sandbox (issue 15), built up
//! in steps. This crate owns the Paddock side of Jupyter's messaging protocol: [`wire`] (the
//! signed multipart messages of protocol 5.3) and [`kernel`] (a kernel process started with
//! its connection file, and executions on it as streams of [`kernel::Output`]) over [`zmtp`]
//! (ZeroMQ's wire protocol, the part a client needs). The HTTP
//! server that speaks E2B's code-interpreter API on port 49999 over these kernels is the next
//! step; see docs/design.md, "Code interpreter".
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod kernel;
pub mod server;
pub mod wire;
pub mod zmtp;
