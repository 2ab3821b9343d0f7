//! The code interpreter that runs inside a `code-interpreter-v1` sandbox (issue 15): [`server`]
//! speaks E2B's code-interpreter API on port 49999 over kernels, one per context. [`kernel`]
//! runs a kernel and turns each execution into a stream of [`kernel::Output`]s: a Jupyter
//! kernel (IRkernel; ipykernel on request) spoken to with [`wire`] (the signed multipart
//! messages of protocol 5.3) over [`zmtp`] (ZeroMQ's wire protocol, the part a client needs),
//! or a [`pipe`] kernel driven over its stdin and stdout (Python in IPython's shell,
//! JavaScript and TypeScript on Node.js, Bash). See docs/design.md, "Code interpreter".
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod kernel;
pub mod pipe;
pub mod server;
pub mod wire;
pub mod zmtp;
