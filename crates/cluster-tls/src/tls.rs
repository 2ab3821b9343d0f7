//! rustls configurations of cluster links (TLS 1.3 only, the `ring` provider, ALPN `h2` for
//! gRPC; callers may change `alpn_protocols` before wrapping a config in an `Arc`).
//!
//! - [`server_config`] presents the member's certificate; with [`ClientAuth::Required`] a
//!   client without a certificate of the cluster's CA fails the handshake. With
//!   [`ClientAuth::Optional`] a client may come without one (for the join call), but one that
//!   presents a certificate the CA did not sign still fails. **A service behind an optional
//!   config must then refuse every call but the join from a peer whose [`client_identity`] is
//!   `None`.**
//! - [`client_config`] presents the member's certificate and accepts a server only if its
//!   certificate verifies against the CA and records the [`ExpectedPeer`]: members are named by
//!   their identity, not by host names, so the `ServerName` given to the connector is not
//!   checked (an address literal will do).
//! - [`join_client_config`] is for the join, before the member has a certificate: it trusts
//!   only a server whose chain contains the CA whose SHA-256 the join token carries, and which
//!   that CA made an api. So a joining node trusts nothing the network says: whoever answers at
//!   the join address must hold a certificate of the CA the operator copied the token from.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, ServerConfig,
    SignatureScheme,
};

use crate::ca::{CaCert, CaFingerprint};
use crate::identity::{MemberId, PeerIdentity, Role};
use crate::member::MemberIdentity;
use crate::token::JoinToken;
use crate::Error;

/// The ALPN protocol cluster links speak (gRPC over HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider of cluster links: rustls's `ring` provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether a server needs clients to present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client without a certificate completes the handshake (for the join only: see the
    /// module docs); one with a certificate not of the cluster's CA does not.
    Optional,
    /// Every client must present a certificate of the cluster's CA.
    Required,
}

/// A server configuration that presents `member`'s certificate and verifies clients' against
/// its CA.
pub fn server_config(member: &MemberIdentity, auth: ClientAuth) -> Result<ServerConfig, Error> {
    let provider = provider();
    let builder =
        WebPkiClientVerifier::builder_with_provider(member.ca().roots(), provider.clone());
    let verifier = match auth {
        ClientAuth::Required => builder.build(),
        ClientAuth::Optional => builder.allow_unauthenticated().build(),
    }
    .map_err(Error::Verifier)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(member.chain(), member.key_der()?)
        .map_err(Error::Tls)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The identity of the client of a server connection, from the certificates it presented
/// (rustls's `ServerConnection::peer_certificates()`, or tonic's `Request::peer_certs()` on a
/// server fed tokio-rustls streams): `None` if it presented none (possible only under
/// [`ClientAuth::Optional`]), else the identity its certificate records, verified again against
/// `ca`.
pub fn client_identity(
    ca: &CaCert,
    peer_certificates: Option<&[CertificateDer<'_>]>,
) -> Result<Option<PeerIdentity>, Error> {
    match peer_certificates.and_then(|certs| certs.first()) {
        None => Ok(None),
        Some(cert) => ca.verify_client(cert).map(Some),
    }
}

/// Which server a client means to reach: a role, and possibly one member of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedPeer {
    role: Role,
    id: Option<MemberId>,
}

impl ExpectedPeer {
    /// Any member of `role` (e.g. a node reaching the control plane: [`Role::Api`]).
    pub fn role(role: Role) -> Self {
        Self { role, id: None }
    }

    /// Exactly `identity` (e.g. the control plane reaching node `n1`).
    pub fn member(identity: PeerIdentity) -> Self {
        Self {
            role: identity.role,
            id: Some(identity.id),
        }
    }

    fn admits(&self, found: &PeerIdentity) -> bool {
        self.role == found.role && self.id.as_ref().is_none_or(|id| *id == found.id)
    }
}

impl fmt::Display for ExpectedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{}/{id}", self.role),
            None => write!(f, "any {}", self.role),
        }
    }
}

/// A server that answered was not the one the client meant to reach.
#[derive(Debug, thiserror::Error)]
#[error("server is {found}, expected {expected}")]
pub struct WrongPeer {
    /// Who the client meant to reach.
    pub expected: ExpectedPeer,
    /// Who answered.
    pub found: PeerIdentity,
}

/// A client configuration that presents `member`'s certificate and accepts only a server of
/// the member's CA that is `expect`.
pub fn client_config(member: &MemberIdentity, expect: ExpectedPeer) -> Result<ClientConfig, Error> {
    let verifier = ClusterServerVerifier::new(Anchor::Ca(member.ca().clone()), expect);
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(member.chain(), member.key_der()?)
        .map_err(Error::Tls)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The client configuration of the join: no client certificate; the server must present, in
/// its chain, the CA `token` pins, and a certificate of that CA for the api role.
pub fn join_client_config(token: &JoinToken) -> Result<ClientConfig, Error> {
    let verifier = ClusterServerVerifier::new(
        Anchor::Pinned(token.ca_fingerprint()),
        ExpectedPeer::role(Role::Api),
    );
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// What a client trusts: the CA it holds, or (at the join) whichever certificate in the
/// server's chain has the pinned fingerprint.
#[derive(Debug)]
enum Anchor {
    Ca(CaCert),
    Pinned(CaFingerprint),
}

/// Verifies a server by the cluster's rules: chain to the CA, server-auth usage, validity, and
/// the identity the client expects; no host name.
#[derive(Debug)]
struct ClusterServerVerifier {
    anchor: Anchor,
    expect: ExpectedPeer,
    algs: WebPkiSupportedAlgorithms,
}

impl ClusterServerVerifier {
    fn new(anchor: Anchor, expect: ExpectedPeer) -> Self {
        Self {
            anchor,
            expect,
            algs: provider().signature_verification_algorithms,
        }
    }
}

fn other(err: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned;
        let ca = match &self.anchor {
            Anchor::Ca(ca) => ca,
            Anchor::Pinned(fingerprint) => {
                let der = intermediates
                    .iter()
                    .find(|c| CaFingerprint::of(c).ct_eq(fingerprint))
                    .ok_or(rustls::Error::InvalidCertificate(
                        CertificateError::UnknownIssuer,
                    ))?;
                pinned = CaCert::from_der(der.clone().into_owned()).map_err(other)?;
                &pinned
            }
        };
        let parsed = ParsedCertificate::try_from(end_entity)?;
        // Only the CA itself may sign: no intermediates are passed on.
        verify_server_cert_signed_by_trust_anchor(&parsed, &ca.roots(), &[], now, self.algs.all)?;
        let found = PeerIdentity::from_cert_der(end_entity).map_err(other)?;
        if !self.expect.admits(&found) {
            return Err(other(WrongPeer {
                expected: self.expect.clone(),
                found,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
