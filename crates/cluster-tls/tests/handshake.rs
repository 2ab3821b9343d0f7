//! Real TLS handshakes over loopback (tokio-rustls) with the configurations this crate makes:
//! who gets in, who does not, and what the server learns about the peer.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use paddock_cluster_tls::{
    client_config, client_identity, join_client_config, server_config, CaCert, CertRequest,
    ClientAuth, ClusterCa, Error, ExpectedPeer, JoinToken, MemberId, MemberIdentity, MemberKey,
    PeerIdentity, Role,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn identity(role: Role, id: &str) -> PeerIdentity {
    PeerIdentity::new(role, MemberId::new(id).expect("id"))
}

/// A control plane's state: its CA (in a temporary directory), join token and own identity.
struct ControlPlane {
    dir: tempfile::TempDir,
    ca: ClusterCa,
    token: JoinToken,
    api: MemberIdentity,
}

fn control_plane() -> ControlPlane {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, created) = ClusterCa::load_or_create(dir.path()).expect("ca");
    assert!(created);
    let (token, created) = JoinToken::load_or_create(dir.path(), ca.cert()).expect("token");
    assert!(created);
    let api = ca
        .issue_member(&CertRequest::new(identity(Role::Api, "api")).ip_address(LOOPBACK))
        .expect("api identity");
    ControlPlane {
        dir,
        ca,
        token,
        api,
    }
}

/// A member as a node makes it: key, signing request, join with the token, identity.
fn join(cp: &ControlPlane, role: Role, id: &str) -> MemberIdentity {
    let key = MemberKey::generate().expect("key");
    let who = identity(role, id);
    let csr = key.csr_pem(&who, &[], &[LOOPBACK]).expect("csr");
    let grant = cp
        .ca
        .admit(
            &cp.token,
            &cp.token.reveal(),
            &csr,
            &CertRequest::new(who).ip_address(LOOPBACK),
        )
        .expect("admit");
    MemberIdentity::from_grant(key, &grant.cert_pem, &grant.ca_pem, &cp.token).expect("grant")
}

/// A certificate and key made outside `MemberIdentity` (which refuses what these tests need:
/// expired certificates, foreign CAs).
fn raw_member(ca: &ClusterCa, request: &CertRequest) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (ca.issue(&csr, request).expect("issue"), key.serialize_pem())
}

fn chain_and_key(
    cert_pem: &str,
    key_pem: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    (
        vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert")],
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key"),
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A plain rustls client that trusts `trust` (host name checked: 127.0.0.1) and presents the
/// given certificate: it can offer what our own configurations never would.
fn raw_client(trust: &CaCert, cert_pem: &str, key_pem: &str) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(trust.der().clone()).expect("root");
    let (chain, key) = chain_and_key(cert_pem, key_pem);
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// A plain rustls server presenting the given certificate, asking for no client certificate.
fn raw_server(cert_pem: &str, key_pem: &str) -> ServerConfig {
    let (chain, key) = chain_and_key(cert_pem, key_pem);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server cert");
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// What each side saw of one connection.
#[derive(Debug)]
struct Outcome {
    /// The server: the client's identity (None: no certificate), or why the handshake failed.
    server: Result<Option<PeerIdentity>, String>,
    /// The client: whether it completed the handshake and read the server's greeting.
    client: Result<(), String>,
}

impl Outcome {
    fn accepted(&self) -> Option<&PeerIdentity> {
        assert!(self.client.is_ok(), "client failed: {self:?}");
        match &self.server {
            Ok(who) => who.as_ref(),
            Err(e) => panic!("server refused: {e}"),
        }
    }

    /// Both sides failed, one of them saying `why` (so the refusal is the one meant, not an
    /// accident of the test's setup).
    fn refused(&self, why: &str) {
        let (Err(server), Err(client)) = (&self.server, &self.client) else {
            panic!("not refused: {self:?}");
        };
        assert!(
            server.contains(why) || client.contains(why),
            "refused, but not for {why}: {self:?}"
        );
    }
}

/// Connects once over loopback: the server completes its handshake, reads the client's
/// identity, and greets; the client completes its handshake and reads the greeting.
async fn handshake(
    server: ServerConfig,
    server_ca: Option<&CaCert>,
    client: ClientConfig,
) -> Outcome {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let ca = server_ca.cloned();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let who = match &ca {
            Some(ca) => client_identity(ca, tls.get_ref().1.peer_certificates())
                .map_err(|e| e.to_string())?,
            None => None,
        };
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        tls.write_all(b"hi").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(who)
    });
    let client = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let connector = TlsConnector::from(Arc::new(client));
        let mut tls = connector
            .connect(ServerName::from(LOOPBACK), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut greeting = [0u8; 2];
        tls.read_exact(&mut greeting)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(&greeting, b"hi");
        Ok(())
    };
    let client = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .expect("client hung");
    let server = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server hung")
        .expect("server task");
    Outcome { server, client }
}

#[tokio::test]
async fn a_member_with_a_certificate_of_the_ca_is_accepted_and_named() {
    let cp = control_plane();
    let node = join(&cp, Role::Node, "n1");
    for auth in [ClientAuth::Required, ClientAuth::Optional] {
        let outcome = handshake(
            server_config(&cp.api, auth).expect("server"),
            Some(cp.ca.cert()),
            client_config(&node, ExpectedPeer::role(Role::Api)).expect("client"),
        )
        .await;
        assert_eq!(outcome.accepted(), Some(&identity(Role::Node, "n1")));
    }
    // And the other way: the control plane calls the node on the node's port.
    let outcome = handshake(
        server_config(&node, ClientAuth::Required).expect("server"),
        Some(node.ca()),
        client_config(&cp.api, ExpectedPeer::member(identity(Role::Node, "n1"))).expect("client"),
    )
    .await;
    assert_eq!(outcome.accepted(), Some(&identity(Role::Api, "api")));
}

#[tokio::test]
async fn no_certificate_is_refused_by_the_strict_config_and_unauthenticated_by_the_optional_one() {
    let cp = control_plane();
    let no_cert = || join_client_config(&cp.token).expect("join client");
    handshake(
        server_config(&cp.api, ClientAuth::Required).expect("server"),
        Some(cp.ca.cert()),
        no_cert(),
    )
    .await
    .refused("CertificateRequired");
    let outcome = handshake(
        server_config(&cp.api, ClientAuth::Optional).expect("server"),
        Some(cp.ca.cert()),
        no_cert(),
    )
    .await;
    assert_eq!(outcome.accepted(), None, "seen as unauthenticated");
}

#[tokio::test]
async fn a_certificate_of_another_ca_is_refused() {
    let cp = control_plane();
    let foreign = control_plane();
    // A client that trusts our server but presents a certificate of another CA: refused by
    // both configs (an optional client certificate is not a license to present a bad one).
    let (cert, key) = raw_member(&foreign.ca, &CertRequest::new(identity(Role::Node, "n1")));
    for auth in [ClientAuth::Required, ClientAuth::Optional] {
        handshake(
            server_config(&cp.api, auth).expect("server"),
            Some(cp.ca.cert()),
            raw_client(cp.ca.cert(), &cert, &key),
        )
        .await
        .refused("UnknownCA");
    }
    // A member does not accept a server of another CA, even one that calls itself the api.
    let node = join(&cp, Role::Node, "n1");
    handshake(
        server_config(&foreign.api, ClientAuth::Optional).expect("server"),
        None,
        client_config(&node, ExpectedPeer::role(Role::Api)).expect("client"),
    )
    .await
    .refused("UnknownIssuer");
}

#[tokio::test]
async fn an_expired_certificate_is_refused_on_either_side() {
    let cp = control_plane();
    let three_days_ago = SystemTime::now() - Duration::from_secs(3 * 86400);
    let expired = CertRequest::new(identity(Role::Node, "old"))
        .ip_address(LOOPBACK)
        .valid_from(three_days_ago)
        .validity(Duration::from_secs(86400));
    let (cert, key) = raw_member(&cp.ca, &expired);
    // The same certificate, still valid: accepted (so the refusals below are about the date).
    let fresh = CertRequest::new(identity(Role::Node, "old")).ip_address(LOOPBACK);
    let (fresh_cert, fresh_key) = raw_member(&cp.ca, &fresh);
    let outcome = handshake(
        server_config(&cp.api, ClientAuth::Required).expect("server"),
        Some(cp.ca.cert()),
        raw_client(cp.ca.cert(), &fresh_cert, &fresh_key),
    )
    .await;
    assert_eq!(outcome.accepted(), Some(&identity(Role::Node, "old")));

    handshake(
        server_config(&cp.api, ClientAuth::Required).expect("server"),
        Some(cp.ca.cert()),
        raw_client(cp.ca.cert(), &cert, &key),
    )
    .await
    .refused("CertificateExpired");

    // A server presenting an expired certificate.
    let node = join(&cp, Role::Node, "n1");
    handshake(
        raw_server(&cert, &key),
        None,
        client_config(&node, ExpectedPeer::role(Role::Node)).expect("client"),
    )
    .await
    .refused("certificate expired");

    // And a grant of an expired certificate does not make an identity.
    let member_key = MemberKey::generate().expect("key");
    let csr = member_key
        .csr_pem(&identity(Role::Node, "old"), &[], &[])
        .expect("csr");
    let cert = cp.ca.issue(&csr, &expired).expect("issue");
    assert!(matches!(
        MemberIdentity::new(member_key, &cert, cp.ca.cert().clone()),
        Err(Error::Untrusted(_))
    ));
}

#[tokio::test]
async fn a_client_reaches_only_the_member_it_expects() {
    let cp = control_plane();
    let n1 = join(&cp, Role::Node, "n1");
    let n2 = join(&cp, Role::Node, "n2");
    let proxy = join(&cp, Role::Proxy, "edge");
    let to = |expect: ExpectedPeer| client_config(&proxy, expect).expect("client");
    // Node n1 answering where n2 was meant: refused; where any node was meant: accepted.
    handshake(
        server_config(&n1, ClientAuth::Required).expect("server"),
        Some(n1.ca()),
        to(ExpectedPeer::member(n2.identity().clone())),
    )
    .await
    .refused("WrongPeer");
    let outcome = handshake(
        server_config(&n1, ClientAuth::Required).expect("server"),
        Some(n1.ca()),
        to(ExpectedPeer::role(Role::Node)),
    )
    .await;
    assert_eq!(outcome.accepted(), Some(&identity(Role::Proxy, "edge")));
    // A node cannot pose as the control plane.
    handshake(
        server_config(&n1, ClientAuth::Optional).expect("server"),
        Some(n1.ca()),
        client_config(&n2, ExpectedPeer::role(Role::Api)).expect("client"),
    )
    .await
    .refused("WrongPeer");
}

#[tokio::test]
async fn the_join_pins_the_ca_of_the_token() {
    let cp = control_plane();
    let foreign = control_plane();
    // The genuine control plane: the joining node completes the handshake without a
    // certificate.
    let outcome = handshake(
        server_config(&cp.api, ClientAuth::Optional).expect("server"),
        Some(cp.ca.cert()),
        join_client_config(&cp.token).expect("join client"),
    )
    .await;
    assert_eq!(outcome.accepted(), None);
    // Someone else answering at the join address, with a perfectly good api certificate of
    // its own CA: the joining node refuses it.
    handshake(
        server_config(&foreign.api, ClientAuth::Optional).expect("server"),
        Some(foreign.ca.cert()),
        join_client_config(&cp.token).expect("join client"),
    )
    .await
    .refused("UnknownIssuer");
    // A member of the right cluster that is not the api (a node) cannot take the join either.
    let n1 = join(&cp, Role::Node, "n1");
    handshake(
        server_config(&n1, ClientAuth::Optional).expect("server"),
        Some(n1.ca()),
        join_client_config(&cp.token).expect("join client"),
    )
    .await
    .refused("WrongPeer");
}

#[tokio::test]
async fn a_wrong_join_token_gets_no_certificate() {
    let cp = control_plane();
    let key = MemberKey::generate().expect("key");
    let who = identity(Role::Node, "n1");
    let csr = key.csr_pem(&who, &[], &[]).expect("csr");
    let request = CertRequest::new(who);
    let other_cluster = control_plane();
    let stale = JoinToken::generate(cp.ca.cert()).reveal();
    for wrong in [
        other_cluster.token.reveal(),
        stale,
        "pdk_join_x".to_owned(),
        String::new(),
    ] {
        assert!(matches!(
            cp.ca.admit(&cp.token, &wrong, &csr, &request),
            Err(Error::TokenRefused)
        ));
    }
    // The token the control plane stored is the one it checks against.
    let stored = JoinToken::load(cp.dir.path()).expect("stored token");
    assert!(cp
        .ca
        .admit(&stored, &cp.token.reveal(), &csr, &request)
        .is_ok());
}

#[tokio::test]
async fn identities_survive_a_restart() {
    let cp = control_plane();
    let node_dir = tempfile::tempdir().expect("tempdir");
    let node = join(&cp, Role::Node, "n1");
    node.store(node_dir.path()).expect("store");
    drop(node);

    // Both sides restart: the control plane reloads its CA and token, the node its identity.
    let (ca, created) = ClusterCa::load_or_create(cp.dir.path()).expect("reload ca");
    assert!(!created);
    let (token, created) = JoinToken::load_or_create(cp.dir.path(), ca.cert()).expect("token");
    assert!(!created);
    assert_eq!(token.reveal(), cp.token.reveal());
    let api = ca
        .issue_member(&CertRequest::new(identity(Role::Api, "api")))
        .expect("api identity");
    let node = MemberIdentity::load(node_dir.path())
        .expect("load")
        .expect("identity kept");
    assert_eq!(node.identity(), &identity(Role::Node, "n1"));
    let outcome = handshake(
        server_config(&api, ClientAuth::Required).expect("server"),
        Some(ca.cert()),
        client_config(&node, ExpectedPeer::role(Role::Api)).expect("client"),
    )
    .await;
    assert_eq!(outcome.accepted(), Some(&identity(Role::Node, "n1")));
}
