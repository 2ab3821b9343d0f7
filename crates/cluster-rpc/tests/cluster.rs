//! The cluster service on loopback: joining with the token, and who may make which call.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use paddock_cluster_rpc::{join, proto, serve, ClusterClient, ClusterHandler, JoinError};
use paddock_cluster_tls::{CertRequest, ClusterCa, JoinToken, MemberId, PeerIdentity, Role};
use paddock_domain::SandboxId;
use tonic::{Code, Status};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct Handler {
    ca: ClusterCa,
    token: JoinToken,
    seen: Mutex<Vec<(String, String)>>,
}

#[async_trait]
impl ClusterHandler for Handler {
    async fn join(&self, req: proto::JoinRequest) -> Result<proto::JoinReply, Status> {
        let role: Role = req
            .role
            .parse()
            .map_err(|_| Status::invalid_argument("role"))?;
        let id = MemberId::new(req.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let grant = self
            .ca
            .admit(
                &self.token,
                &req.token,
                &req.csr_pem,
                &CertRequest::new(PeerIdentity::new(role, id)).ip_address(LOOPBACK),
            )
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        Ok(proto::JoinReply {
            cert_pem: grant.cert_pem,
            ca_pem: grant.ca_pem,
        })
    }
    async fn register(
        &self,
        node: &MemberId,
        reg: proto::Registration,
    ) -> Result<proto::Registered, Status> {
        self.seen.lock().expect("lock").push((
            node.as_str().to_string(),
            format!("register {}", reg.advertise),
        ));
        Ok(proto::Registered {
            cluster_id: "c1".into(),
        })
    }
    async fn report(
        &self,
        node: &MemberId,
        report: proto::NodeReport,
    ) -> Result<proto::ReportAck, Status> {
        self.seen.lock().expect("lock").push((
            node.as_str().to_string(),
            format!("report {}", report.sandbox_count),
        ));
        Ok(proto::ReportAck {
            status: "ready".into(),
        })
    }
    async fn locate(&self, _id: &SandboxId) -> Result<proto::Location, Status> {
        Ok(proto::Location {
            state: proto::location::State::Running as i32,
            node_address: "127.0.0.1:1".into(),
            node_id: "n1".into(),
        })
    }
    async fn wake(&self, id: &SandboxId) -> Result<proto::Location, Status> {
        self.locate(id).await
    }
}

async fn start() -> (tempfile::TempDir, SocketAddr, JoinToken, Arc<Handler>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::create(dir.path()).expect("ca");
    let (token, _) = JoinToken::load_or_create(dir.path(), ca.cert()).expect("token");
    let api = ca
        .issue_member(
            &CertRequest::new(PeerIdentity::new(
                Role::Api,
                MemberId::new("api").expect("id"),
            ))
            .ip_address(LOOPBACK),
        )
        .expect("api identity");
    let handler = Arc::new(Handler {
        ca,
        token: token.clone(),
        seen: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind((LOOPBACK, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served: Arc<dyn ClusterHandler> = handler.clone();
    tokio::spawn(async move {
        serve(listener, api, served, std::future::pending())
            .await
            .expect("serve")
    });
    (dir, addr, token, handler)
}

fn name(s: &str) -> MemberId {
    MemberId::new(s).expect("id")
}

#[tokio::test]
async fn a_node_joins_registers_and_reports_as_itself() {
    let (_dir, addr, token, handler) = start().await;
    let node = join(addr, &token, Role::Node, &name("n1"), &[], &[LOOPBACK])
        .await
        .expect("join");
    assert_eq!(node.identity().role, Role::Node);
    assert_eq!(node.identity().id.as_str(), "n1");
    let client = ClusterClient::new(addr, &node).expect("client");
    let registered = client
        .register(proto::Registration {
            advertise: "127.0.0.1:7000".into(),
            ..Default::default()
        })
        .await
        .expect("register");
    assert_eq!(registered.cluster_id, "c1");
    let ack = client
        .report(proto::NodeReport {
            sandbox_count: 3,
            ..Default::default()
        })
        .await
        .expect("report");
    assert_eq!(ack.status, "ready");
    assert_eq!(
        *handler.seen.lock().expect("lock"),
        vec![
            ("n1".to_string(), "register 127.0.0.1:7000".to_string()),
            ("n1".to_string(), "report 3".to_string())
        ]
    );
    // A node may not ask where sandboxes run.
    let err = client
        .locate(&SandboxId::generate())
        .await
        .expect_err("nodes do not locate");
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_wrong_token_gets_no_certificate() {
    let (_dir, addr, token, handler) = start().await;
    // Right CA fingerprint, wrong secret.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other_ca = ClusterCa::create(other_dir.path()).expect("ca");
    let forged = JoinToken::generate(other_ca.cert());
    let forged_text = forged.reveal();
    let (_, pin) = token
        .reveal()
        .rsplit_once('.')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .expect("token shape");
    let (secret, _) = forged_text.rsplit_once('.').expect("token shape");
    let wrong = JoinToken::parse(&format!("{secret}.{pin}")).expect("parse");
    match join(addr, &wrong, Role::Node, &name("n1"), &[], &[]).await {
        Err(JoinError::Refused(s)) => assert_eq!(s.code(), Code::PermissionDenied, "{s:?}"),
        other => panic!("joined with a wrong token: {:?}", other.map(|_| ())),
    }
    // A token pinning another CA does not even trust this control plane.
    assert!(join(addr, &forged, Role::Node, &name("n1"), &[], &[])
        .await
        .is_err());
    assert!(handler.seen.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn calls_need_the_right_role() {
    let (_dir, addr, token, _handler) = start().await;
    // Without a certificate (as during a join) only the join may be called.
    let anonymous = proto::cluster_client::ClusterClient::new(
        paddock_node_grpc::tls::channel(
            addr,
            paddock_cluster_tls::join_client_config(&token).expect("config"),
        )
        .expect("channel"),
    );
    let err = anonymous
        .clone()
        .register(proto::Registration::default())
        .await
        .expect_err("no certificate");
    assert_eq!(err.code(), Code::Unauthenticated);

    // A proxy locates but may not register.
    let proxy = join(addr, &token, Role::Proxy, &name("edge"), &[], &[])
        .await
        .expect("join");
    let client = ClusterClient::new(addr, &proxy).expect("client");
    let at = client.locate(&SandboxId::generate()).await.expect("locate");
    assert_eq!(at.node_id, "n1");
    assert_eq!(
        client
            .register(proto::Registration::default())
            .await
            .expect_err("a proxy is not a node")
            .code(),
        Code::PermissionDenied
    );
}
