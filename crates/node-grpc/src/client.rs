//! A remote node as a [`Node`]: [`GrpcNode`] calls a node's gRPC service over mutual TLS.
//!
//! The connection is made lazily and again after it breaks; HTTP/2 keepalives notice a node
//! that went away, and every call but the long ones (create, resume, snapshot, builds...) has a
//! deadline, so nothing waits forever on a lost node: the call fails with
//! [`ErrorCode::Unavailable`](paddock_node_contract::ErrorCode::Unavailable).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use paddock_cluster_tls::{ExpectedPeer, MemberIdentity};
use paddock_domain::{EgressPolicy, SandboxId, TemplateName};
use paddock_node_contract::build::{BuildError, BuildRequest, Built, LogSink};
use paddock_node_contract::{
    CreateRequest, LayerStream, LogEntry, MetricSample, MetricsRange, Node, NodeError, NodeEvent,
    NodeSandbox, PoolStats, SandboxStatus, SnapshotMade, TemplateInfo, TemplateManifest,
    TemplateSummary, EVENT_BUFFER,
};
use tonic::transport::Channel;
use tonic::Request;

use crate::convert;
use crate::proto as p;
use crate::proto::node_client::NodeClient;
use crate::server::{MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use crate::status::from_status;

/// Deadline of calls that only read or flip state on the node.
pub const QUICK_CALL: Duration = Duration::from_secs(15);
/// Deadline of calls that start or copy a sandbox or a template.
pub const LONG_CALL: Duration = Duration::from_secs(600);
pub use crate::tls::CONNECT_TIMEOUT;

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS configuration could not be made from the identity.
    #[error("TLS configuration")]
    Tls(#[from] paddock_cluster_tls::Error),
    /// The endpoint could not be set up.
    #[error("gRPC endpoint")]
    Transport(#[from] tonic::transport::Error),
}

/// A node reached over gRPC.
#[derive(Clone)]
pub struct GrpcNode {
    client: NodeClient<Channel>,
    addr: SocketAddr,
}

impl std::fmt::Debug for GrpcNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcNode")
            .field("addr", &self.addr)
            .finish()
    }
}

impl GrpcNode {
    /// A client of the node at `addr`, presenting `identity` and accepting only a server whose
    /// certificate (of the same CA) is `expect`. Connects on the first call.
    pub fn new(
        addr: SocketAddr,
        identity: &MemberIdentity,
        expect: ExpectedPeer,
    ) -> Result<Self, ClientError> {
        let tls = paddock_cluster_tls::client_config(identity, expect)?;
        let channel = crate::tls::channel(addr, tls)?;
        let client = NodeClient::new(channel)
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .max_encoding_message_size(MAX_REQUEST_BYTES);
        Ok(GrpcNode { client, addr })
    }

    /// The node's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A request of `message`, with the caller's trace context (W3C `traceparent`) when traces are
/// exported.
fn call<T>(message: T, deadline: Option<Duration>) -> Request<T> {
    let mut req = Request::new(message);
    paddock_telemetry::trace::inject_metadata(req.metadata_mut());
    if let Some(d) = deadline {
        req.set_timeout(d);
    }
    req
}

fn decoded<T>(r: Result<T, convert::Invalid>) -> Result<T, NodeError> {
    r.map_err(|e| NodeError::internal(format!("the node answered with {e}")))
}

fn sandbox_ref(id: &SandboxId) -> p::SandboxRef {
    p::SandboxRef { id: id.to_string() }
}

fn template_ref(name: &TemplateName) -> p::TemplateRef {
    p::TemplateRef {
        name: name.to_string(),
    }
}

impl GrpcNode {
    /// Sends the node the COPY archives of `req` it has not got (see [`crate::build_files`]);
    /// nothing to do for a node that reads them where the caller keeps them.
    async fn send_build_files(&self, req: &BuildRequest) -> Result<(), NodeError> {
        let mut hashes: Vec<String> = Vec::new();
        for step in &req.recipe.steps {
            if let paddock_template::BuildStep::Copy { files_hash, .. } = &step.step {
                if !hashes.contains(files_hash) {
                    hashes.push(files_hash.clone());
                }
            }
        }
        if hashes.is_empty() {
            return Ok(());
        }
        let namespace = req.files_dir.to_string_lossy().into_owned();
        let query = p::BuildFilesQuery {
            namespace: namespace.clone(),
            hashes,
        };
        let missing = match self
            .client
            .clone()
            .missing_build_files(call(query, Some(QUICK_CALL)))
            .await
        {
            Ok(r) => r.into_inner().digests,
            Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(()),
            Err(s) => return Err(from_status(&s)),
        };
        for hash in missing {
            let path = req.files_dir.join(&hash);
            let file = tokio::fs::File::open(&path).await.map_err(|e| {
                NodeError::new(
                    paddock_node_contract::ErrorCode::InvalidArgument,
                    format!("the files of a COPY ({hash}) were not uploaded: {e}"),
                )
            })?;
            let size = file
                .metadata()
                .await
                .map_err(|e| NodeError::internal(format!("{}: {e}", path.display())))?
                .len();
            let (tx, rx) = tokio::sync::mpsc::channel::<p::BuildFilePart>(4);
            let header = p::BuildFilePart {
                part: Some(p::build_file_part::Part::Header(p::BuildFileHeader {
                    namespace: namespace.clone(),
                    hash: hash.clone(),
                    size,
                })),
            };
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut file = file;
                if tx.send(header).await.is_err() {
                    return;
                }
                loop {
                    let mut buf = vec![0u8; paddock_node_contract::layers::CHUNK_BYTES];
                    let n = match file.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.truncate(n);
                    let part = p::BuildFilePart {
                        part: Some(p::build_file_part::Part::Data(buf.into())),
                    };
                    if tx.send(part).await.is_err() {
                        return;
                    }
                }
            });
            self.client
                .clone()
                .put_build_file(call(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                    Some(LONG_CALL),
                ))
                .await
                .map_err(|s| from_status(&s))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Node for GrpcNode {
    async fn create(&self, req: CreateRequest) -> Result<NodeSandbox, NodeError> {
        let r = self
            .client
            .clone()
            .create(call(convert::create_out(&req), Some(LONG_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        decoded(convert::sandbox(r.into_inner()))
    }

    async fn kill(&self, id: &SandboxId) -> Result<(), NodeError> {
        self.client
            .clone()
            .kill(call(sandbox_ref(id), Some(LONG_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        Ok(())
    }

    async fn template(&self, name: &TemplateName) -> Result<Option<TemplateInfo>, NodeError> {
        let r = self
            .client
            .clone()
            .get_template(call(template_ref(name), Some(QUICK_CALL)))
            .await
            .map_err(|s| from_status(&s))?
            .into_inner();
        if !r.found {
            return Ok(None);
        }
        decoded(convert::template_info(r.template)).map(Some)
    }

    async fn claim_warm(&self, req: &CreateRequest) -> Result<Option<SandboxId>, NodeError> {
        let r = self
            .client
            .clone()
            .claim_warm(call(convert::create_out(req), Some(QUICK_CALL)))
            .await
            .map_err(|s| from_status(&s))?
            .into_inner();
        if r.id.is_empty() {
            return Ok(None);
        }
        decoded(convert::sandbox_id(&r.id)).map(Some)
    }

    async fn pool_stats(&self) -> Result<PoolStats, NodeError> {
        let r = self
            .client
            .clone()
            .pool_stats(call(p::Empty {}, Some(QUICK_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        decoded(convert::pool_stats(r.into_inner()))
    }

    async fn live(&self) -> Result<Vec<SandboxId>, NodeError> {
        let r = self
            .client
            .clone()
            .live(call(p::Empty {}, Some(QUICK_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        decoded(convert::sandbox_ids(&r.into_inner().ids))
    }

    /// A new subscription: the node's stream is copied into a channel of [`EVENT_BUFFER`]
    /// events; when the stream ends (the node went away, or this subscriber lagged on the
    /// node) the channel closes, and the subscriber should compare its records with
    /// [`Node::live`] and subscribe again.
    async fn events(&self) -> Result<tokio::sync::broadcast::Receiver<NodeEvent>, NodeError> {
        let mut stream = self
            .client
            .clone()
            .events(call(p::Empty {}, None))
            .await
            .map_err(|s| from_status(&s))?
            .into_inner();
        let (tx, rx) = tokio::sync::broadcast::channel(EVENT_BUFFER);
        let addr = self.addr;
        tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(event)) => match convert::event(event) {
                        Ok(Some(event)) => {
                            if tx.send(event).is_err() {
                                return;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(node = %addr, error = %e, "bad node event"),
                    },
                    Ok(None) => return,
                    Err(s) => {
                        tracing::warn!(node = %addr, error = %from_status(&s), "node event stream ended");
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn status(&self, id: &SandboxId) -> Result<Option<SandboxStatus>, NodeError> {
        let r = self
            .client
            .clone()
            .status(call(sandbox_ref(id), Some(QUICK_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        decoded(convert::status(r.into_inner()))
    }

    async fn update_network(&self, id: &SandboxId, policy: EgressPolicy) -> Result<(), NodeError> {
        let req = p::UpdateNetworkRequest {
            id: id.to_string(),
            policy: Some(convert::egress_out(&policy)),
        };
        self.client
            .clone()
            .update_network(call(req, Some(QUICK_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        Ok(())
    }

    async fn metrics(
        &self,
        id: &SandboxId,
        range: MetricsRange,
    ) -> Result<Vec<MetricSample>, NodeError> {
        let req = p::MetricsRequest {
            id: id.to_string(),
            start: range.start,
            end: range.end,
        };
        let r = self
            .client
            .clone()
            .metrics(call(req, Some(QUICK_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        decoded(
            r.into_inner()
                .samples
                .into_iter()
                .map(convert::sample)
                .collect(),
        )
    }

    async fn latest_metrics(
        &self,
        ids: &[SandboxId],
    ) -> Result<HashMap<SandboxId, MetricSample>, NodeError> {
        let r = self
            .client
            .clone()
            .latest_metrics(call(convert::ids_out(ids), Some(QUICK_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        decoded(convert::latest(r.into_inner()))
    }

    async fn reconcile(&self, expected: &[SandboxId]) -> Result<Vec<SandboxId>, NodeError> {
        let r = self
            .client
            .clone()
            .reconcile(call(convert::ids_out(expected), Some(LONG_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        decoded(convert::sandbox_ids(&r.into_inner().ids))
    }

    async fn shutdown(&self) -> Result<(), NodeError> {
        self.client
            .clone()
            .shutdown(call(p::Empty {}, Some(LONG_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        Ok(())
    }

    async fn envd_logs(&self, id: &SandboxId) -> Result<Vec<LogEntry>, NodeError> {
        let r = self
            .client
            .clone()
            .envd_logs(call(sandbox_ref(id), Some(QUICK_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        decoded(
            r.into_inner()
                .entries
                .into_iter()
                .map(convert::log)
                .collect(),
        )
    }

    async fn pause(&self, id: &SandboxId) -> Result<(), NodeError> {
        self.client
            .clone()
            .pause(call(sandbox_ref(id), Some(LONG_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        Ok(())
    }

    async fn resume(&self, id: &SandboxId) -> Result<(), NodeError> {
        self.client
            .clone()
            .resume(call(sandbox_ref(id), Some(LONG_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        Ok(())
    }

    async fn pause_to_disk(&self, id: &SandboxId) -> Result<(), NodeError> {
        self.client
            .clone()
            .pause_to_disk(call(sandbox_ref(id), Some(LONG_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        Ok(())
    }

    async fn snapshot(
        &self,
        id: &SandboxId,
        name: &TemplateName,
    ) -> Result<SnapshotMade, NodeError> {
        let req = p::SnapshotRequest {
            id: id.to_string(),
            name: name.to_string(),
        };
        let r = self
            .client
            .clone()
            .snapshot(call(req, Some(LONG_CALL)))
            .await
            .map_err(|s| from_status(&s))?
            .into_inner();
        Ok(SnapshotMade {
            template: decoded(convert::template_info(r.template))?,
            size_bytes: r.size_bytes,
        })
    }

    async fn list_templates(&self) -> Result<Vec<TemplateSummary>, NodeError> {
        let r = self
            .client
            .clone()
            .list_templates(call(p::Empty {}, Some(QUICK_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        decoded(
            r.into_inner()
                .templates
                .into_iter()
                .map(convert::summary)
                .collect(),
        )
    }

    async fn delete_template(&self, name: &TemplateName) -> Result<bool, NodeError> {
        let r = self
            .client
            .clone()
            .delete_template(call(template_ref(name), Some(LONG_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        Ok(r.into_inner().deleted)
    }

    async fn copy_template(
        &self,
        from: &TemplateName,
        to: &TemplateName,
    ) -> Result<TemplateInfo, NodeError> {
        let req = p::CopyTemplateRequest {
            from: from.to_string(),
            to: to.to_string(),
        };
        let r = self
            .client
            .clone()
            .copy_template(call(req, Some(LONG_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        decoded(convert::template_info(Some(r.into_inner())))
    }

    async fn template_manifest(
        &self,
        name: &TemplateName,
    ) -> Result<Option<TemplateManifest>, NodeError> {
        let r = self
            .client
            .clone()
            .get_manifest(call(template_ref(name), Some(LONG_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        r.into_inner()
            .manifest
            .map(|m| decoded(convert::manifest(m)))
            .transpose()
    }

    async fn export_layer(&self, digest: &str) -> Result<LayerStream, NodeError> {
        let req = p::LayerRequest {
            digest: digest.to_string(),
        };
        let stream = self
            .client
            .clone()
            .export_layer(call(req, None))
            .await
            .map_err(|s| from_status(&s))?
            .into_inner();
        Ok(Box::pin(stream.map(|c| {
            c.map(convert::chunk).map_err(|s| from_status(&s))
        })))
    }

    async fn missing_layers(&self, digests: &[String]) -> Result<Vec<String>, NodeError> {
        let req = p::Digests {
            digests: digests.to_vec(),
        };
        let r = self
            .client
            .clone()
            .missing_layers(call(req, Some(LONG_CALL)))
            .await
            .map_err(|s| from_status(&s))?;
        Ok(r.into_inner().digests)
    }

    /// Sends the manifest, then the chunks as they come; a chunk the stream fails with ends
    /// the call (the node then refuses the incomplete layer).
    async fn install_template(
        &self,
        manifest: TemplateManifest,
        layers: LayerStream,
    ) -> Result<TemplateInfo, NodeError> {
        let first = p::InstallPart {
            part: Some(p::install_part::Part::Manifest(convert::manifest_out(
                &manifest,
            ))),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<p::InstallPart>(4);
        // The layers are read on a task of their own; a failure of theirs ends the call.
        let pump = tokio::spawn(async move {
            let mut layers = layers;
            if tx.send(first).await.is_err() {
                return None;
            }
            while let Some(chunk) = layers.next().await {
                let part = match chunk {
                    Ok(c) => p::InstallPart {
                        part: Some(p::install_part::Part::Chunk(convert::chunk_out(c))),
                    },
                    Err(e) => return Some(e),
                };
                if tx.send(part).await.is_err() {
                    return None;
                }
            }
            None
        });
        let r = self
            .client
            .clone()
            .install_template(call(tokio_stream::wrappers::ReceiverStream::new(rx), None))
            .await;
        if let Ok(Some(e)) = pump.await {
            return Err(e);
        }
        let r = r.map_err(|s| from_status(&s))?;
        decoded(convert::template_info(Some(r.into_inner())))
    }

    async fn prepare_base(&self) -> Result<(), NodeError> {
        self.client
            .clone()
            .prepare_base(call(p::Empty {}, None))
            .await
            .map_err(|s| from_status(&s))?;
        Ok(())
    }

    /// Streams the node's build log into `logs`; a broken stream fails the build in the last
    /// step it logged (`base` before any).
    async fn build(&self, req: BuildRequest, logs: LogSink) -> Result<Built, BuildError> {
        let mut step = paddock_template::BASE_STEP.to_string();
        let failed = |step: &str, message: String| BuildError {
            step: step.to_string(),
            message,
        };
        let wire = convert::build_request_out(&req).map_err(|e| failed(&step, e.to_string()))?;
        self.send_build_files(&req)
            .await
            .map_err(|e| failed(&step, format!("sending the build's files: {}", e.message)))?;
        let mut stream = self
            .client
            .clone()
            .build(call(wire, None))
            .await
            .map_err(|s| failed(&step, from_status(&s).message))?
            .into_inner();
        loop {
            let event = stream
                .message()
                .await
                .map_err(|s| failed(&step, from_status(&s).message))?
                .ok_or_else(|| {
                    failed(&step, "the node ended the build without an outcome".into())
                })?;
            match event.kind {
                Some(p::build_event::Kind::Log(line)) => {
                    let line =
                        convert::build_log(line).map_err(|e| failed(&step, e.to_string()))?;
                    step.clone_from(&line.step);
                    let _ = logs.send(line);
                }
                Some(p::build_event::Kind::Built(built)) => {
                    return convert::built(built).map_err(|e| failed(&step, e.to_string()));
                }
                Some(p::build_event::Kind::Failed(f)) => {
                    return Err(BuildError {
                        step: f.step,
                        message: f.message,
                    })
                }
                None => {}
            }
        }
    }
}
