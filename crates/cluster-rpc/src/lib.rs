//! The control plane's cluster service (`proto/paddock/cluster/v1/cluster.proto`) over gRPC
//! with mutual TLS: nodes and proxies [`join`] with the join token; nodes register and report
//! ([`ClusterClient::register`], [`ClusterClient::report`]); proxies ask where a sandbox runs
//! ([`ClusterClient::locate`], [`ClusterClient::wake`]). The control plane serves it with
//! [`serve`] over its own [`ClusterHandler`].
//!
//! Who may call what is decided here, from the caller's certificate: `Join` needs none (the
//! token is the credential); `Register`/`Report` need role `node` and act for the caller's own
//! id only; `Locate`/`Wake` need role `proxy` (or `api`). Failed joins are slowed down.
#![warn(missing_docs)]

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use paddock_cluster_tls::{
    ClientAuth, ExpectedPeer, JoinToken, MemberId, MemberIdentity, MemberKey, PeerIdentity, Role,
};
use paddock_domain::SandboxId;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// The generated messages, client and server of `paddock.cluster.v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("paddock.cluster.v1");
}

use proto::cluster_client::ClusterClient as RawClient;
use proto::cluster_server::{Cluster, ClusterServer};

/// Deadline of every call of [`ClusterClient`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused join waits before it is answered (slows down guessing).
const REFUSED_JOIN_DELAY: Duration = Duration::from_millis(500);
/// Joins handled at once.
const CONCURRENT_JOINS: usize = 8;

/// What the control plane does for each call; the caller is already authorized.
#[async_trait]
pub trait ClusterHandler: Send + Sync + 'static {
    /// Checks the token and issues the certificate (`PERMISSION_DENIED` for a wrong token).
    async fn join(&self, req: proto::JoinRequest) -> Result<proto::JoinReply, Status>;
    /// Node `node` is up.
    async fn register(
        &self,
        node: &MemberId,
        reg: proto::Registration,
    ) -> Result<proto::Registered, Status>;
    /// Node `node` reports.
    async fn report(
        &self,
        node: &MemberId,
        report: proto::NodeReport,
    ) -> Result<proto::ReportAck, Status>;
    /// Where sandbox `id` runs.
    async fn locate(&self, id: &SandboxId) -> Result<proto::Location, Status>;
    /// Resumes paused sandbox `id` if it resumes on traffic; where it runs then.
    async fn wake(&self, id: &SandboxId) -> Result<proto::Location, Status>;
    /// Where sandboxes start or resume from now on, as they do. Default: not offered.
    async fn watch(&self) -> Result<AnnouncementStream, Status> {
        Err(Status::unimplemented("announcements"))
    }
}

/// Announcements of where sandboxes run, as [`ClusterHandler::watch`] sends them.
pub type AnnouncementStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<proto::Announcement, Status>> + Send + 'static>,
>;

/// Why [`serve`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TLS configuration could not be made.
    #[error("TLS configuration")]
    Tls(#[from] paddock_cluster_tls::Error),
    /// The gRPC server failed.
    #[error("gRPC server")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the cluster service on `listener` as `identity` (the control plane's own
/// certificate) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    identity: MemberIdentity,
    handler: Arc<dyn ClusterHandler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = paddock_cluster_tls::server_config(&identity, ClientAuth::Optional)?;
    // Every peer gets to the calls (the join needs no certificate); each call checks its own.
    let (incoming, accept) =
        paddock_node_grpc::incoming(listener, tls, identity.ca().clone(), 1024, |_| true);
    let service = Service {
        handler,
        joins: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_JOINS)),
    };
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(paddock_node_grpc::tls::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(paddock_node_grpc::tls::KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(64))
        .timeout(Duration::from_secs(30))
        .add_service(ClusterServer::new(service).max_decoding_message_size(1 << 20))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    drop(accept);
    Ok(served?)
}

struct Service {
    handler: Arc<dyn ClusterHandler>,
    joins: Arc<tokio::sync::Semaphore>,
}

/// The caller's identity if it has one of `roles`; `UNAUTHENTICATED` / `PERMISSION_DENIED`
/// otherwise.
fn require<T>(req: &Request<T>, roles: &[Role]) -> Result<PeerIdentity, Status> {
    let peer = paddock_node_grpc::caller(req)
        .and_then(|p| p.identity.clone())
        .ok_or_else(|| Status::unauthenticated("this call needs a cluster certificate"))?;
    if !roles.contains(&peer.role) {
        return Err(Status::permission_denied(format!(
            "a {} may not make this call",
            peer.role
        )));
    }
    Ok(peer)
}

fn sandbox_id(raw: &str) -> Result<SandboxId, Status> {
    SandboxId::parse(raw).map_err(|e| Status::invalid_argument(format!("sandbox id: {e}")))
}

#[async_trait]
impl Cluster for Service {
    async fn join(
        &self,
        req: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::JoinReply>, Status> {
        let _turn = self
            .joins
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        match self.handler.join(req.into_inner()).await {
            Ok(reply) => Ok(Response::new(reply)),
            Err(status) => {
                if status.code() == tonic::Code::PermissionDenied {
                    tokio::time::sleep(REFUSED_JOIN_DELAY).await;
                }
                Err(status)
            }
        }
    }

    async fn register(
        &self,
        req: Request<proto::Registration>,
    ) -> Result<Response<proto::Registered>, Status> {
        let peer = require(&req, &[Role::Node])?;
        Ok(Response::new(
            self.handler.register(&peer.id, req.into_inner()).await?,
        ))
    }

    async fn report(
        &self,
        req: Request<proto::NodeReport>,
    ) -> Result<Response<proto::ReportAck>, Status> {
        let peer = require(&req, &[Role::Node])?;
        Ok(Response::new(
            self.handler.report(&peer.id, req.into_inner()).await?,
        ))
    }

    async fn locate(
        &self,
        req: Request<proto::SandboxRef>,
    ) -> Result<Response<proto::Location>, Status> {
        require(&req, &[Role::Proxy, Role::Api])?;
        let id = sandbox_id(&req.get_ref().id)?;
        Ok(Response::new(self.handler.locate(&id).await?))
    }

    async fn wake(
        &self,
        req: Request<proto::SandboxRef>,
    ) -> Result<Response<proto::Location>, Status> {
        require(&req, &[Role::Proxy, Role::Api])?;
        let id = sandbox_id(&req.get_ref().id)?;
        Ok(Response::new(self.handler.wake(&id).await?))
    }

    type WatchStream = AnnouncementStream;

    async fn watch(
        &self,
        req: Request<proto::WatchRequest>,
    ) -> Result<Response<AnnouncementStream>, Status> {
        require(&req, &[Role::Proxy])?;
        Ok(Response::new(self.handler.watch().await?))
    }
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// Keys, certificates or the token.
    #[error(transparent)]
    Tls(#[from] paddock_cluster_tls::Error),
    /// The connection.
    #[error("cannot reach the control plane")]
    Transport(#[from] tonic::transport::Error),
    /// The control plane refused or failed the join.
    #[error("the control plane refused the join: {}", .0.message())]
    Refused(Status),
}

/// Joins the cluster at `addr` with `token` as member `name` of `role`, with a new key: the
/// control plane's certificate must be of the CA the token pins. Returns the member's identity
/// (store it: a restarted member keeps it and does not join again).
pub async fn join(
    addr: SocketAddr,
    token: &JoinToken,
    role: Role,
    name: &MemberId,
    dns_names: &[String],
    ip_addresses: &[IpAddr],
) -> Result<MemberIdentity, JoinError> {
    let key = MemberKey::generate()?;
    let identity = PeerIdentity::new(role, name.clone());
    let csr_pem = key.csr_pem(&identity, dns_names, ip_addresses)?;
    let channel =
        paddock_node_grpc::tls::channel(addr, paddock_cluster_tls::join_client_config(token)?)?;
    let mut req = Request::new(proto::JoinRequest {
        token: token_text(token),
        csr_pem,
        role: role.as_str().to_string(),
        name: name.as_str().to_string(),
        dns_names: dns_names.to_vec(),
        ip_addresses: ip_addresses.iter().map(IpAddr::to_string).collect(),
    });
    req.set_timeout(CALL_TIMEOUT);
    let reply = RawClient::new(channel)
        .join(req)
        .await
        .map_err(JoinError::Refused)?
        .into_inner();
    Ok(MemberIdentity::from_grant(
        key,
        &reply.cert_pem,
        &reply.ca_pem,
        token,
    )?)
}

fn token_text(token: &JoinToken) -> String {
    token.reveal()
}

/// A member's client of the control plane's cluster service.
#[derive(Debug, Clone)]
pub struct ClusterClient {
    client: RawClient<Channel>,
}

impl ClusterClient {
    /// A client of the control plane at `addr`, as `identity`; the server must present a
    /// certificate of role `api` of the same CA.
    pub fn new(addr: SocketAddr, identity: &MemberIdentity) -> Result<Self, JoinError> {
        let tls = paddock_cluster_tls::client_config(identity, ExpectedPeer::role(Role::Api))?;
        Ok(ClusterClient {
            client: RawClient::new(paddock_node_grpc::tls::channel(addr, tls)?),
        })
    }

    fn call<T>(message: T) -> Request<T> {
        let mut req = Request::new(message);
        req.set_timeout(CALL_TIMEOUT);
        req
    }

    /// Registers this node.
    pub async fn register(&self, reg: proto::Registration) -> Result<proto::Registered, Status> {
        Ok(self
            .client
            .clone()
            .register(Self::call(reg))
            .await?
            .into_inner())
    }

    /// Reports this node's load; the answer is its status as the control plane sees it.
    pub async fn report(&self, report: proto::NodeReport) -> Result<proto::ReportAck, Status> {
        Ok(self
            .client
            .clone()
            .report(Self::call(report))
            .await?
            .into_inner())
    }

    /// Where sandbox `id` runs.
    pub async fn locate(&self, id: &SandboxId) -> Result<proto::Location, Status> {
        let req = proto::SandboxRef { id: id.to_string() };
        Ok(self
            .client
            .clone()
            .locate(Self::call(req))
            .await?
            .into_inner())
    }

    /// Where sandboxes start or resume from now on (no deadline: it lasts as long as the
    /// connection).
    pub async fn watch(&self) -> Result<tonic::Streaming<proto::Announcement>, Status> {
        Ok(self
            .client
            .clone()
            .watch(Request::new(proto::WatchRequest {}))
            .await?
            .into_inner())
    }

    /// Resumes paused sandbox `id` if it resumes on traffic; where it runs then.
    pub async fn wake(&self, id: &SandboxId) -> Result<proto::Location, Status> {
        let req = proto::SandboxRef { id: id.to_string() };
        Ok(self
            .client
            .clone()
            .wake(Self::call(req))
            .await?
            .into_inner())
    }
}
