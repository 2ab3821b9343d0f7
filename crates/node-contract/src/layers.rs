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

/// `layers` cut off with an error at the first chunk of a layer `expected` does not name, or
/// that takes a layer past the size `expected` gives it: whoever stores a stream from another
/// member reads no more than the manifest announced (the digest check at the layer's end
/// catches the rest).
pub fn bounded(expected: &[LayerRef], layers: LayerStream) -> LayerStream {
    use futures::StreamExt;
    let sizes: std::collections::HashMap<String, u64> = expected
        .iter()
        .map(|l| (l.digest.clone(), l.size))
        .collect();
    let mut received: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut failed = false;
    layers
        .map(move |chunk| {
            let chunk = chunk?;
            let Some(&limit) = sizes.get(&chunk.digest) else {
                return Err(NodeError::new(
                    crate::ErrorCode::InvalidArgument,
                    format!("layer {} is not one the template uses", chunk.digest),
                ));
            };
            let got = received.entry(chunk.digest.clone()).or_default();
            *got += chunk.data.len() as u64;
            if *got > limit {
                return Err(NodeError::new(
                    crate::ErrorCode::InvalidArgument,
                    format!(
                        "layer {} is longer than the {limit} bytes its manifest names",
                        chunk.digest
                    ),
                ));
            }
            Ok(chunk)
        })
        .take_while(move |item| {
            // The first error ends the stream (after it is passed on).
            let pass = !failed;
            failed |= item.is_err();
            futures::future::ready(pass)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn chunk(digest: &str, data: &'static [u8]) -> Result<LayerChunk, NodeError> {
        Ok(LayerChunk {
            digest: digest.into(),
            data: Bytes::from_static(data),
        })
    }

    async fn run(
        expected: &[LayerRef],
        chunks: Vec<Result<LayerChunk, NodeError>>,
    ) -> Vec<Result<LayerChunk, NodeError>> {
        bounded(expected, futures::stream::iter(chunks).boxed())
            .collect()
            .await
    }

    #[tokio::test]
    async fn a_stream_is_cut_where_it_leaves_its_manifest() {
        let expected = [
            LayerRef {
                digest: "a".into(),
                size: 4,
            },
            LayerRef {
                digest: "b".into(),
                size: 2,
            },
        ];
        // Within the sizes: passed on unchanged.
        let fine = run(
            &expected,
            vec![chunk("a", b"ab"), chunk("a", b"cd"), chunk("b", b"xy")],
        )
        .await;
        assert_eq!(fine.len(), 3);
        assert!(fine.iter().all(Result::is_ok));
        // One byte too many: an error, and nothing after it.
        let long = run(
            &expected,
            vec![chunk("a", b"abc"), chunk("a", b"de"), chunk("b", b"xy")],
        )
        .await;
        assert_eq!(long.len(), 2);
        let e = long[1].as_ref().expect_err("too long");
        assert!(e.message.contains("longer than the 4 bytes"), "{e:?}");
        // A layer the manifest does not name.
        let other = run(&expected, vec![chunk("c", b"x"), chunk("a", b"ab")]).await;
        assert_eq!(other.len(), 1);
        assert!(other[0].is_err());
        // The sender's own error passes through and ends it.
        let cut = run(
            &expected,
            vec![Err(NodeError::internal("gone")), chunk("a", b"ab")],
        )
        .await;
        assert_eq!(cut.len(), 1);
    }
}
