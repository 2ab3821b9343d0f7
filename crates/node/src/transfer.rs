//! The node's side of templates across nodes ([`Node::template_manifest`],
//! [`Node::export_layer`], [`Node::missing_layers`], [`Node::install_template`],
//! [`Node::prepare_base`]): the template store does the work ([`paddock_templates::transfer`]),
//! on blocking threads; this module moves the bytes between them and the async streams.
//!
//! [`Node::template_manifest`]: paddock_node_contract::Node::template_manifest
//! [`Node::export_layer`]: paddock_node_contract::Node::export_layer
//! [`Node::missing_layers`]: paddock_node_contract::Node::missing_layers
//! [`Node::install_template`]: paddock_node_contract::Node::install_template
//! [`Node::prepare_base`]: paddock_node_contract::Node::prepare_base

use std::io::{self, Read, Write};

use bytes::Bytes;
use futures::StreamExt;
use paddock_domain::TemplateName;
use paddock_node_contract::layers::CHUNK_BYTES;
use paddock_node_contract::{
    LayerChunk, LayerRef, LayerStream, NodeError, TemplateInfo, TemplateManifest,
};
use paddock_templates::{LayerLease, TemplateError, TemplateMeta, TemplateStore};
use tokio::sync::mpsc;

use crate::{LocalError, LocalNode};

/// How many chunks wait between the store's thread and the stream.
const QUEUE: usize = 4;

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, TemplateError> + Send + 'static,
) -> Result<T, LocalError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LocalError::Io {
            context: format!("{what} task failed"),
            source: io::Error::other(e),
        })?
        .map_err(LocalError::from)
}

/// Sends what is written to it as chunks of one layer.
struct ChunkWriter {
    digest: String,
    buf: Vec<u8>,
    tx: mpsc::Sender<Result<LayerChunk, NodeError>>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.tx
            .blocking_send(Ok(LayerChunk {
                digest: self.digest.clone(),
                data,
            }))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the receiver went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Reads the chunks of one layer as they arrive (on a blocking thread).
struct ChunkReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(next) => self.current = next,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// A layer being received: its chunks go to `tx`, the store unpacks on `task`.
struct Receiving {
    digest: String,
    tx: mpsc::Sender<Bytes>,
    task: tokio::task::JoinHandle<Result<LayerLease, TemplateError>>,
}

impl Receiving {
    fn start(store: &TemplateStore, digest: String) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (store, d) = (store.clone(), digest.clone());
        let task = tokio::task::spawn_blocking(move || {
            let reader = ChunkReader {
                rx,
                current: Bytes::new(),
            };
            store.import_layer(&d, reader).map(|(lease, _)| lease)
        });
        Receiving { digest, tx, task }
    }

    async fn finish(self) -> Result<LayerLease, LocalError> {
        drop(self.tx);
        self.task
            .await
            .map_err(|e| LocalError::Io {
                context: "layer receive task failed".into(),
                source: io::Error::other(e),
            })?
            .map_err(LocalError::from)
    }
}

impl LocalNode {
    /// See [`Node::template_manifest`](paddock_node_contract::Node::template_manifest).
    pub async fn template_manifest(
        &self,
        name: &TemplateName,
    ) -> Result<Option<TemplateManifest>, LocalError> {
        let (store, n) = (self.templates().clone(), name.clone());
        let Some(m) = blocking("template manifest", move || store.manifest(&n)).await? else {
            return Ok(None);
        };
        let meta_json = serde_json::to_string(&m.meta).map_err(|e| LocalError::Io {
            context: "encoding a template's metadata".into(),
            source: io::Error::other(e),
        })?;
        Ok(Some(TemplateManifest {
            name: m.meta.name,
            meta_json,
            layers: m
                .layers
                .into_iter()
                .map(|l| LayerRef {
                    digest: l.digest,
                    size: l.size,
                })
                .collect(),
        }))
    }

    /// See [`Node::template_meta`](paddock_node_contract::Node::template_meta): read from the
    /// template's record, no layer hashed.
    pub async fn template_meta(&self, name: &TemplateName) -> Result<Option<String>, LocalError> {
        let (store, n) = (self.templates().clone(), name.clone());
        let Some(t) = blocking("template lookup", move || store.get(&n)).await? else {
            return Ok(None);
        };
        let meta = paddock_templates::TemplateMeta {
            name: t.name,
            resources: t.resources,
            created_at: t.created_at,
            source: t.source,
            config: t.config,
        };
        serde_json::to_string(&meta)
            .map(Some)
            .map_err(|e| LocalError::Io {
                context: "encoding a template's metadata".into(),
                source: io::Error::other(e),
            })
    }

    /// See [`Node::export_layer`](paddock_node_contract::Node::export_layer).
    pub async fn export_layer(&self, digest: &str) -> Result<LayerStream, LocalError> {
        let (store, d) = (self.templates().clone(), digest.to_string());
        if blocking("layer lookup", {
            let (store, d) = (store.clone(), d.clone());
            move || store.find_layer(&d)
        })
        .await?
        .is_none()
        {
            return Err(TemplateError::UnknownLayer(d).into());
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::task::spawn_blocking(move || {
            let mut out = ChunkWriter {
                digest: d.clone(),
                buf: Vec::with_capacity(CHUNK_BYTES),
                tx: tx.clone(),
            };
            let sent = store.export_layer(&d, &mut out).and_then(|_| {
                out.flush().map_err(|source| TemplateError::Io {
                    context: "sending a layer".into(),
                    source,
                })
            });
            if let Err(e) = sent {
                tracing::warn!(layer = %d, error = %e, "sending a layer failed");
                let _ = tx.blocking_send(Err(NodeError::from(LocalError::from(e))));
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    /// See [`Node::missing_layers`](paddock_node_contract::Node::missing_layers).
    pub async fn missing_layers(&self, digests: &[String]) -> Result<Vec<String>, LocalError> {
        let (store, d) = (self.templates().clone(), digests.to_vec());
        blocking("layer lookup", move || store.missing_layers(&d)).await
    }

    /// See [`Node::install_template`](paddock_node_contract::Node::install_template).
    pub async fn install_template(
        &self,
        manifest: TemplateManifest,
        layers: LayerStream,
    ) -> Result<TemplateInfo, LocalError> {
        let meta: TemplateMeta =
            serde_json::from_str(&manifest.meta_json).map_err(|e| TemplateError::Transfer {
                digest: String::new(),
                reason: format!("the template's metadata is not valid: {e}"),
            })?;
        if meta.name != manifest.name {
            return Err(TemplateError::Transfer {
                digest: String::new(),
                reason: format!(
                    "the metadata names template '{}', the manifest '{}'",
                    meta.name, manifest.name
                ),
            }
            .into());
        }
        let store = self.templates().clone();
        // No layer read past the size the manifest gives it.
        let mut layers = paddock_node_contract::bounded(&manifest.layers, layers);
        let mut leases = Vec::new();
        let mut current: Option<Receiving> = None;
        while let Some(chunk) = layers.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    return Err(TemplateError::Transfer {
                        digest: current.map(|c| c.digest).unwrap_or_default(),
                        reason: format!("the sender failed: {e}"),
                    }
                    .into())
                }
            };
            if current.as_ref().is_none_or(|c| c.digest != chunk.digest) {
                if let Some(done) = current.take() {
                    leases.push(done.finish().await?);
                }
                if !manifest.layers.iter().any(|l| l.digest == chunk.digest) {
                    return Err(TemplateError::Transfer {
                        digest: chunk.digest,
                        reason: "the template does not use this layer".into(),
                    }
                    .into());
                }
                current = Some(Receiving::start(&store, chunk.digest.clone()));
            }
            let stopped = {
                let receiving = current.as_ref().expect("set above");
                receiving.tx.send(chunk.data).await.is_err()
            };
            if stopped {
                // The store stopped reading: its error says why.
                let failed = current.take().expect("set above");
                let digest = failed.digest.clone();
                return Err(match failed.finish().await {
                    Err(e) => e,
                    Ok(_) => TemplateError::Transfer {
                        digest,
                        reason: "the layer was read before its end".into(),
                    }
                    .into(),
                });
            }
        }
        if let Some(done) = current.take() {
            leases.push(done.finish().await?);
        }
        let digests = manifest.digests();
        let installed =
            blocking("template install", move || store.install(&meta, &digests)).await?;
        drop(leases);
        tracing::info!(template = %installed.name, layers = installed.layers.len(), "template received");
        Ok(TemplateInfo {
            name: installed.name,
            resources: installed.resources,
        })
    }

    /// See [`Node::prepare_base`](paddock_node_contract::Node::prepare_base).
    pub async fn prepare_base(&self) -> Result<(), LocalError> {
        let progress = |line: &str| tracing::info!(target: "paddock::base", "{line}");
        self.templates().ensure_base(&progress).await?;
        Ok(())
    }
}
