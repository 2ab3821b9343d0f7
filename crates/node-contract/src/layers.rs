//! Templates across nodes: what a node tells of a template so another node can have it
//! ([`TemplateManifest`]), and a template's layers as they travel ([`LayerStream`]). A layer is
//! named by its content address (`sha256:<64 hex>` of its canonical stream, see
//! `paddock_templates::transfer`), so a node knows which layers it lacks and checks what it
//! receives.

use bytes::Bytes;
use futures::stream::BoxStream;
use paddock_domain::TemplateName;

use crate::NodeError;

/// One layer of a [`TemplateManifest`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRef {
    /// Its content address, `sha256:<64 hex>`.
    pub digest: String,
    /// The length of its stream in bytes.
    pub size: u64,
}

/// What a node needs to have a template another node has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateManifest {
    /// The template's name.
    pub name: TemplateName,
    /// Its metadata as the node stores it (JSON; the control plane passes it on unread).
    pub meta_json: String,
    /// Its layers, top first.
    pub layers: Vec<LayerRef>,
}

impl TemplateManifest {
    /// The layers' digests, top first.
    pub fn digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }

    /// The bytes of all its layers' streams.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// A piece of a layer's stream. A stream of several layers sends each whole, one after the
/// other: a chunk with another digest starts the next layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerChunk {
    /// The layer the bytes belong to.
    pub digest: String,
    /// The next bytes of its stream.
    pub data: Bytes,
}

/// Layers as they travel: chunks in order, or the error that cut the stream.
pub type LayerStream = BoxStream<'static, Result<LayerChunk, NodeError>>;

/// The size of the chunks nodes send (well below gRPC's 4 MiB message limit).
pub const CHUNK_BYTES: usize = 1 << 20;
