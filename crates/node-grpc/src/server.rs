//! Serves any [`Node`] implementation over gRPC with mutual TLS: [`serve`].
//!
//! Every connection must present a certificate of the cluster's CA whose role is one the
//! server allows (a node allows only the control plane, [`Role::Api`]); anything else is
//! dropped after the handshake, before a single call. The listener has limits: at most
//! [`ServeConfig::max_connections`] connections at once, a TLS handshake must finish within
//! [`HANDSHAKE_TIMEOUT`], HTTP/2 keepalives find dead peers, and requests larger than
//! [`MAX_REQUEST_BYTES`] are refused.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use paddock_cluster_tls::{ClientAuth, MemberIdentity, Role};
use paddock_node_contract::{build::BuildError, Node, NodeError};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

use crate::build_files::{BuildFileError, BuildFiles};
use crate::convert;
use crate::proto as p;
use crate::proto::node_server::{Node as NodeRpc, NodeServer};
use crate::status::{invalid, to_status};

pub use crate::tls::HANDSHAKE_TIMEOUT;
/// Largest request accepted (a build's recipe is the largest: 256 steps of up to 64 KiB).
pub const MAX_REQUEST_BYTES: usize = 32 << 20;
/// Largest answer sent (a sandbox's envd log is at most 4 MiB of text).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;
pub use crate::tls::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};

/// How [`serve`] runs.
#[derive(Clone)]
pub struct ServeConfig {
    /// The server's own identity (its certificate and the cluster's CA).
    pub identity: MemberIdentity,
    /// Roles whose members may call (a node: only [`Role::Api`]).
    pub callers: Vec<Role>,
    /// Connections open at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Where the node keeps the COPY archives builds are sent ([`crate::build_files`]);
    /// `None`: builds read `files_dir` as the caller gave it (a node on the caller's host).
    pub build_files: Option<BuildFiles>,
}

impl ServeConfig {
    /// A node's service: only the control plane may call, 1024 connections.
    pub fn node(identity: MemberIdentity) -> Self {
        ServeConfig {
            identity,
            callers: vec![Role::Api],
            max_connections: 1024,
            build_files: None,
        }
    }
}

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TLS configuration could not be made from the identity.
    #[error("TLS configuration")]
    Tls(#[from] paddock_cluster_tls::Error),
    /// The gRPC server failed.
    #[error("gRPC server")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `node` on `listener` until `shutdown` completes.
pub async fn serve(
    node: Arc<dyn Node>,
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = paddock_cluster_tls::server_config(&config.identity, ClientAuth::Required)?;
    let callers = config.callers.clone();
    let (incoming, accept) = crate::tls::incoming(
        listener,
        tls,
        config.identity.ca().clone(),
        config.max_connections,
        move |peer| peer.is_some_and(|p| callers.contains(&p.role)),
    );
    let served = serve_incoming(node, incoming, config.build_files, shutdown).await;
    drop(accept);
    served
}

/// Serves `node` on connections someone else accepted and verified (e.g. a node's listener
/// that also carries other traffic, told apart by ALPN) until `shutdown` completes. Builds'
/// COPY archives are kept in `build_files` (see [`ServeConfig::build_files`]).
pub async fn serve_incoming(
    node: Arc<dyn Node>,
    incoming: impl tokio_stream::Stream<Item = Result<crate::tls::Authed, std::io::Error>>
        + Send
        + 'static,
    build_files: Option<BuildFiles>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let service = NodeServer::new(NodeService { node, build_files })
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(256))
        .tcp_nodelay(true)
        .layer(tower::layer::layer_fn(Timed))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Runs each call in a `grpc.request` span (the child of the caller's trace context, while
/// traces are exported) and times it to its response head into `paddock_grpc_request_duration_seconds`
/// (`method`: the RPC's name; `code`: the gRPC status the head carries, which is every error
/// a unary call or a stream returns before its first message, else `0`; `transport` when the
/// service itself failed).
#[derive(Clone)]
struct Timed<S>(S);

impl<S, B, RB> tower::Service<tonic::codegen::http::Request<B>> for Timed<S>
where
    S: tower::Service<
        tonic::codegen::http::Request<B>,
        Response = tonic::codegen::http::Response<RB>,
    >,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let started = std::time::Instant::now();
        let span = paddock_telemetry::span!(
            "grpc.request",
            otel.name = req.uri().path().trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        paddock_telemetry::trace::adopt(&span, req.headers());
        let call = span.in_scope(|| self.0.call(req));
        Box::pin(async move {
            let result = tracing::Instrument::instrument(call, span.clone()).await;
            let code = match &result {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0")
                    .to_string(),
                Err(_) => "transport".to_string(),
            };
            span.record("rpc.grpc.status_code", code.as_str());
            if code != "0" {
                span.record("otel.status_code", "ERROR");
            }
            paddock_telemetry::GRPC_REQUEST_DURATION.observe(&[&method, &code], started.elapsed());
            result
        })
    }
}

/// The gRPC face of a [`Node`].
struct NodeService {
    node: Arc<dyn Node>,
    build_files: Option<BuildFiles>,
}

type Reply<T> = Result<Response<T>, Status>;

fn answer<T, U>(r: Result<T, NodeError>, f: impl FnOnce(T) -> U) -> Reply<U> {
    match r {
        Ok(v) => Ok(Response::new(f(v))),
        Err(e) => Err(to_status(&e)),
    }
}

fn id_of(raw: &str) -> Result<paddock_domain::SandboxId, Status> {
    convert::sandbox_id(raw).map_err(|e| invalid(&e))
}

fn name_of(raw: &str) -> Result<paddock_domain::TemplateName, Status> {
    convert::template_name(raw).map_err(|e| invalid(&e))
}

fn build_file_status(e: &BuildFileError) -> Status {
    match e {
        BuildFileError::BadHash(_) | BuildFileError::Size(_) => {
            Status::invalid_argument(e.to_string())
        }
        BuildFileError::Io(_) => Status::internal(e.to_string()),
    }
}

type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<p::Event, Status>> + Send + 'static>>;
type BuildStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<p::BuildEvent, Status>> + Send + 'static>>;
type LayerChunks =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<p::LayerChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl NodeRpc for NodeService {
    async fn create(&self, req: Request<p::CreateRequest>) -> Reply<p::Sandbox> {
        let req = convert::create(req.into_inner()).map_err(|e| invalid(&e))?;
        answer(self.node.create(req).await, |s| convert::sandbox_out(&s))
    }

    async fn kill(&self, req: Request<p::SandboxRef>) -> Reply<p::Empty> {
        let id = id_of(&req.into_inner().id)?;
        answer(self.node.kill(&id).await, |()| p::Empty {})
    }

    async fn get_template(&self, req: Request<p::TemplateRef>) -> Reply<p::TemplateLookup> {
        let name = name_of(&req.into_inner().name)?;
        answer(self.node.template(&name).await, |t| p::TemplateLookup {
            found: t.is_some(),
            template: t.as_ref().map(convert::template_info_out),
        })
    }

    async fn claim_warm(&self, req: Request<p::CreateRequest>) -> Reply<p::WarmClaim> {
        let req = convert::create(req.into_inner()).map_err(|e| invalid(&e))?;
        answer(self.node.claim_warm(&req).await, |id| p::WarmClaim {
            id: id.map(|id| id.to_string()).unwrap_or_default(),
        })
    }

    async fn pool_stats(&self, _req: Request<p::Empty>) -> Reply<p::PoolStatsReply> {
        answer(self.node.pool_stats().await, |s| {
            convert::pool_stats_out(&s)
        })
    }

    async fn live(&self, _req: Request<p::Empty>) -> Reply<p::SandboxIds> {
        answer(self.node.live().await, |ids| convert::ids_out(&ids))
    }

    type EventsStream = EventStream;

    async fn events(&self, _req: Request<p::Empty>) -> Reply<EventStream> {
        let rx = self.node.events().await.map_err(|e| to_status(&e))?;
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).map(|item| match item {
            Ok(event) => Ok(convert::event_out(&event)),
            // The subscriber lagged: end the stream, so the caller compares its records with
            // `Live` and subscribes again.
            Err(lagged) => Err(Status::data_loss(lagged.to_string())),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(&self, req: Request<p::SandboxRef>) -> Reply<p::StatusReply> {
        let id = id_of(&req.into_inner().id)?;
        answer(self.node.status(&id).await, convert::status_out)
    }

    async fn update_network(&self, req: Request<p::UpdateNetworkRequest>) -> Reply<p::Empty> {
        let req = req.into_inner();
        let id = id_of(&req.id)?;
        let policy = convert::egress(req.policy).map_err(|e| invalid(&e))?;
        answer(
            self.node.update_network(&id, policy).await,
            |()| p::Empty {},
        )
    }

    async fn metrics(&self, req: Request<p::MetricsRequest>) -> Reply<p::MetricSamples> {
        let req = req.into_inner();
        let id = id_of(&req.id)?;
        let range = paddock_node_contract::MetricsRange {
            start: req.start,
            end: req.end,
        };
        answer(self.node.metrics(&id, range).await, |s| p::MetricSamples {
            samples: s.iter().map(convert::sample_out).collect(),
        })
    }

    async fn latest_metrics(&self, req: Request<p::SandboxIds>) -> Reply<p::LatestMetricsReply> {
        let ids = convert::sandbox_ids(&req.into_inner().ids).map_err(|e| invalid(&e))?;
        answer(self.node.latest_metrics(&ids).await, |m| {
            convert::latest_out(&m)
        })
    }

    async fn reconcile(&self, req: Request<p::SandboxIds>) -> Reply<p::SandboxIds> {
        let ids = convert::sandbox_ids(&req.into_inner().ids).map_err(|e| invalid(&e))?;
        answer(self.node.reconcile(&ids).await, |ids| {
            convert::ids_out(&ids)
        })
    }

    async fn shutdown(&self, _req: Request<p::Empty>) -> Reply<p::Empty> {
        answer(self.node.shutdown().await, |()| p::Empty {})
    }

    async fn envd_logs(&self, req: Request<p::SandboxRef>) -> Reply<p::LogEntries> {
        let id = id_of(&req.into_inner().id)?;
        answer(self.node.envd_logs(&id).await, |entries| p::LogEntries {
            entries: entries.iter().map(convert::log_out).collect(),
        })
    }

    async fn pause(&self, req: Request<p::SandboxRef>) -> Reply<p::Empty> {
        let id = id_of(&req.into_inner().id)?;
        answer(self.node.pause(&id).await, |()| p::Empty {})
    }

    async fn resume(&self, req: Request<p::SandboxRef>) -> Reply<p::Empty> {
        let id = id_of(&req.into_inner().id)?;
        answer(self.node.resume(&id).await, |()| p::Empty {})
    }

    async fn pause_to_disk(&self, req: Request<p::SandboxRef>) -> Reply<p::Empty> {
        let id = id_of(&req.into_inner().id)?;
        answer(self.node.pause_to_disk(&id).await, |()| p::Empty {})
    }

    async fn snapshot(&self, req: Request<p::SnapshotRequest>) -> Reply<p::SnapshotReply> {
        let req = req.into_inner();
        let (id, name) = (id_of(&req.id)?, name_of(&req.name)?);
        answer(self.node.snapshot(&id, &name).await, |s| p::SnapshotReply {
            template: Some(convert::template_info_out(&s.template)),
            size_bytes: s.size_bytes,
        })
    }

    async fn list_templates(&self, _req: Request<p::Empty>) -> Reply<p::TemplateList> {
        answer(self.node.list_templates().await, |t| p::TemplateList {
            templates: t.iter().map(convert::summary_out).collect(),
        })
    }

    async fn delete_template(&self, req: Request<p::TemplateRef>) -> Reply<p::Deleted> {
        let name = name_of(&req.into_inner().name)?;
        answer(self.node.delete_template(&name).await, |deleted| {
            p::Deleted { deleted }
        })
    }

    async fn copy_template(&self, req: Request<p::CopyTemplateRequest>) -> Reply<p::TemplateInfo> {
        let req = req.into_inner();
        let (from, to) = (name_of(&req.from)?, name_of(&req.to)?);
        answer(self.node.copy_template(&from, &to).await, |t| {
            convert::template_info_out(&t)
        })
    }

    async fn get_manifest(&self, req: Request<p::TemplateRef>) -> Reply<p::ManifestLookup> {
        let name = name_of(&req.into_inner().name)?;
        answer(self.node.template_manifest(&name).await, |m| {
            p::ManifestLookup {
                manifest: m.as_ref().map(convert::manifest_out),
            }
        })
    }

    type ExportLayerStream = LayerChunks;

    async fn export_layer(&self, req: Request<p::LayerRequest>) -> Reply<LayerChunks> {
        let digest = req.into_inner().digest;
        let chunks = self
            .node
            .export_layer(&digest)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(Box::pin(chunks.map(|c| {
            c.map(convert::chunk_out).map_err(|e| to_status(&e))
        }))))
    }

    async fn missing_layers(&self, req: Request<p::Digests>) -> Reply<p::Digests> {
        let digests = req.into_inner().digests;
        answer(self.node.missing_layers(&digests).await, |digests| {
            p::Digests { digests }
        })
    }

    async fn install_template(
        &self,
        req: Request<tonic::Streaming<p::InstallPart>>,
    ) -> Reply<p::TemplateInfo> {
        let mut parts = req.into_inner();
        let first = parts
            .message()
            .await?
            .and_then(|part| part.part)
            .ok_or_else(|| Status::invalid_argument("an install starts with the manifest"))?;
        let p::install_part::Part::Manifest(m) = first else {
            return Err(Status::invalid_argument(
                "an install starts with the manifest",
            ));
        };
        let manifest = convert::manifest(m).map_err(|e| invalid(&e))?;
        let chunks = parts.map(|part| match part {
            Ok(p::InstallPart {
                part: Some(p::install_part::Part::Chunk(c)),
            }) => Ok(convert::chunk(c)),
            Ok(_) => Err(NodeError::new(
                paddock_node_contract::ErrorCode::InvalidArgument,
                "after the manifest, an install sends only layer chunks",
            )),
            Err(s) => Err(crate::status::from_status(&s)),
        });
        answer(
            self.node.install_template(manifest, Box::pin(chunks)).await,
            |t| convert::template_info_out(&t),
        )
    }

    async fn prepare_base(&self, _req: Request<p::Empty>) -> Reply<p::Empty> {
        answer(self.node.prepare_base().await, |()| p::Empty {})
    }

    async fn missing_build_files(&self, req: Request<p::BuildFilesQuery>) -> Reply<p::Digests> {
        let Some(files) = &self.build_files else {
            return Err(Status::unimplemented(
                "this node reads build files where the caller keeps them",
            ));
        };
        let q = req.into_inner();
        match files.missing(&q.namespace, &q.hashes).await {
            Ok(digests) => Ok(Response::new(p::Digests { digests })),
            Err(e) => Err(build_file_status(&e)),
        }
    }

    async fn put_build_file(
        &self,
        req: Request<tonic::Streaming<p::BuildFilePart>>,
    ) -> Reply<p::Empty> {
        let Some(files) = &self.build_files else {
            return Err(Status::unimplemented(
                "this node reads build files where the caller keeps them",
            ));
        };
        let mut parts = req.into_inner();
        let Some(p::BuildFilePart {
            part: Some(p::build_file_part::Part::Header(header)),
        }) = parts.message().await?
        else {
            return Err(Status::invalid_argument(
                "a build file starts with its header",
            ));
        };
        let data = parts.map(|part| match part {
            Ok(p::BuildFilePart {
                part: Some(p::build_file_part::Part::Data(d)),
            }) => Ok(d),
            Ok(_) => Err(BuildFileError::Size("a second header".into())),
            Err(s) => Err(BuildFileError::Io(std::io::Error::other(
                s.message().to_string(),
            ))),
        });
        files
            .put(&header.namespace, &header.hash, header.size, Box::pin(data))
            .await
            .map_err(|e| build_file_status(&e))?;
        Ok(Response::new(p::Empty {}))
    }

    type BuildStream = BuildStream;

    async fn build(&self, req: Request<p::BuildRequest>) -> Reply<BuildStream> {
        let mut req = convert::build_request(req.into_inner()).map_err(|e| invalid(&e))?;
        // The archives the caller sent before (PutBuildFile), not a path on its host.
        if let Some(files) = &self.build_files {
            req.files_dir = files.dir(&req.files_dir.to_string_lossy());
        }
        let (out, rx) = mpsc::channel::<Result<p::BuildEvent, Status>>(256);
        let node = Arc::clone(&self.node);
        tokio::spawn(async move {
            let (logs, mut log_rx) = mpsc::unbounded_channel();
            let build = node.build(req, logs);
            tokio::pin!(build);
            let log_event = |l: &paddock_node_contract::build::BuildLog| p::BuildEvent {
                kind: Some(p::build_event::Kind::Log(convert::build_log_out(l))),
            };
            // The caller hanging up abandons the build, as dropping the call does in process.
            let outcome: Result<_, BuildError> = loop {
                tokio::select! {
                    biased;
                    () = out.closed() => return,
                    Some(line) = log_rx.recv() => {
                        if out.send(Ok(log_event(&line))).await.is_err() {
                            return;
                        }
                    }
                    done = &mut build => break done,
                }
            };
            while let Ok(line) = log_rx.try_recv() {
                if out.send(Ok(log_event(&line))).await.is_err() {
                    return;
                }
            }
            let last = match outcome {
                Ok(built) => p::build_event::Kind::Built(convert::built_out(&built)),
                Err(e) => p::build_event::Kind::Failed(p::BuildFailed {
                    step: e.step,
                    message: e.message,
                }),
            };
            let _ = out.send(Ok(p::BuildEvent { kind: Some(last) })).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
