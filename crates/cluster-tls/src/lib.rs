//! The trust of a Paddock cluster: who may join, and how members of a cluster (the control
//! plane `paddock api`, nodes, proxies) know each other on the links between them. It owns
//! certificates, keys, the join token and the rustls configurations; it does not own the RPC
//! that carries a join or the listeners (the gRPC service builds on these pieces).
//!
//! - [`ClusterCa`]: the cluster's CA, made on the control plane's first start in its data
//!   directory (`ca.pem` 0644, `ca.key` 0600). It signs members' certificates from their
//!   signing requests; what a certificate says ([`CertRequest`]: role, id, names, validity)
//!   is decided by the control plane, only the public key comes from the member.
//! - [`JoinToken`]: `pdk_join_<secret>.<sha256 of ca.pem's DER>`, kept in `DIR/join-token`
//!   (0600). The secret lets a member join; the fingerprint lets it pin the CA before it has
//!   any reason to trust the server answering at the join address.
//! - [`MemberKey`] and [`MemberIdentity`]: a member's key and signing request, then its issued
//!   certificate, kept with the CA in `cluster-identity.pem` (0600) in its data directory, so a
//!   restarted member keeps its identity.
//! - [`PeerIdentity`] (a [`Role`] and a [`MemberId`]): recorded in every certificate as a URI
//!   SAN `paddock://<role>/<id>` (with CN = id, OU = role), read back from a peer's verified
//!   certificate by [`CaCert::verify_client`] / [`client_identity`].
//! - [`server_config`], [`client_config`], [`join_client_config`]: rustls configurations
//!   (TLS 1.3, `ring`) for cluster links; see [`tls`] for the rule a service with
//!   [`ClientAuth::Optional`] must follow.
//!
//! The join, end to end:
//! 1. the control plane: `ClusterCa::load_or_create(dir)`, `JoinToken::load_or_create(dir,
//!    ca.cert())`, prints the token if it was made now; serves the cluster port with
//!    `server_config(&ca.issue_member(..)?, ClientAuth::Optional)`;
//! 2. a node: `JoinToken::read_file(token_file)`, `MemberKey::generate()`, `csr_pem(..)`,
//!    connects with `join_client_config(&token)` and sends the token and the request;
//! 3. the control plane: `ca.admit(&token, presented, csr, &CertRequest::new(..))` gives a
//!    [`JoinGrant`] (certificate + CA), refused with [`Error::TokenRefused`] for a wrong token;
//! 4. the node: `MemberIdentity::from_grant(key, cert, ca, &token)` (the CA must be the one
//!    the token pins), `store(dir)`; from then on `client_config`/`server_config` with
//!    `ClientAuth::Required` on its own port.
//!
//! With tonic (0.14, feature `tls-ring`; it uses this rustls 0.23 through tokio-rustls 0.26):
//! serve with `serve_with_incoming` over streams a `tokio_rustls::TlsAcceptor` made from
//! [`server_config`] accepted (tonic's `tls-connect-info` then gives each request its
//! `peer_certs()`, for [`client_identity`]), and connect through a connector that wraps a
//! `tokio_rustls::TlsConnector` made from [`client_config`], rather than tonic's own
//! `ServerTlsConfig`/`ClientTlsConfig`, which check host names and cannot check roles.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod ca;
mod files;
mod identity;
mod member;
pub mod tls;
mod token;

use std::path::PathBuf;

pub use ca::{CaCert, CaFingerprint, CertRequest, ClusterCa, JoinGrant};
pub use files::FileError;
pub use identity::{IdentityError, MemberId, PeerIdentity, Role};
pub use member::{MemberIdentity, MemberKey};
pub use tls::{
    client_config, client_identity, join_client_config, server_config, ClientAuth, ExpectedPeer,
};
pub use token::{JoinToken, TokenError};

/// Everything that can go wrong with the cluster's trust.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing or reading one of the files.
    #[error(transparent)]
    File(#[from] FileError),
    /// A malformed id, role or identity in a certificate.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A malformed join token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A presented join token is not the cluster's.
    #[error("join token refused")]
    TokenRefused,
    /// The CA offered is not the one the join token pins (or a stored token pins another CA).
    #[error("the cluster CA has fingerprint {got}, but the join token pins {pinned}")]
    CaNotPinned {
        /// What the token pins.
        pinned: CaFingerprint,
        /// What was offered.
        got: CaFingerprint,
    },
    /// Making a key, signing request or certificate.
    #[error("certificate generation")]
    Generate(#[from] rcgen::Error),
    /// A signing request that does not parse or whose signature does not verify.
    #[error("invalid certificate signing request")]
    Csr(#[source] rcgen::Error),
    /// A DNS name that may not go into a certificate.
    #[error("invalid DNS name {0:?}")]
    InvalidDnsName(String),
    /// A PEM file that does not decode.
    #[error("malformed PEM")]
    Pem(#[from] rustls::pki_types::pem::Error),
    /// A PEM text without a certificate.
    #[error("no certificate in PEM")]
    NoCertificate,
    /// A PEM text with more than the one certificate expected.
    #[error("more than one certificate in PEM")]
    ExtraCertificates,
    /// A certificate that does not parse.
    #[error("certificate does not parse")]
    BadCertificate,
    /// A certificate used as the CA that is not a CA certificate.
    #[error("not a CA certificate")]
    NotCa,
    /// A key that is not the one the certificate beside it certifies.
    #[error("the key does not belong to the certificate")]
    KeyMismatch,
    /// One of the CA's two files without the other.
    #[error("{present} exists without {missing}; restore it, or remove both to make a new CA (every member must then join again)")]
    Incomplete {
        /// The file found.
        present: PathBuf,
        /// The file missing.
        missing: PathBuf,
    },
    /// A member's identity file without its certificate, the CA or the key.
    #[error("{0} does not hold a certificate, the CA and a key")]
    BadIdentityFile(PathBuf),
    /// A peer's certificate that does not verify against the CA.
    #[error("certificate not trusted")]
    Untrusted(#[source] rustls::Error),
    /// Building a TLS configuration.
    #[error("TLS configuration")]
    Tls(#[source] rustls::Error),
    /// Building a client-certificate verifier.
    #[error("client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}
