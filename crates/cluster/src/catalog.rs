//! The control plane's catalog of templates: what each template is (its listing, its
//! metadata, its layers by digest) and a durable copy of every layer, kept apart from the
//! nodes. A template made on a node is archived here in the background ([`NodeSet`]'s
//! `archive`), so it starts on every node even after the nodes that made or received it are
//! gone, and a node that lacks it is sent its layers from here rather than from a busy node.
//!
//! [`Catalog`] is the pluggable backend; [`DirCatalog`] keeps it in a directory of the
//! control plane's host: `templates/<hex of the name>.json` per template and
//! `layers/<sha256 hex>` per layer, each written to a temporary file, checked against its
//! digest, synced and renamed into place, so a crash leaves either the whole file or none.
//!
//! [`NodeSet`]: crate::NodeSet

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use paddock_domain::TemplateName;
use paddock_node_contract::layers::CHUNK_BYTES;
use paddock_node_contract::{
    LayerChunk, LayerRef, LayerStream, NodeError, TemplateManifest, TemplateSummary,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A template as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// How listings show it (name, default limits, when it was made, its layer ids).
    pub summary: TemplateSummary,
    /// Its metadata as the node that made it stores it (passed on unread).
    pub meta_json: String,
    /// Its layers, top first.
    pub layers: Vec<LayerRef>,
}

impl CatalogEntry {
    /// What a node that lacks the template is given.
    pub fn manifest(&self) -> TemplateManifest {
        TemplateManifest {
            name: self.summary.name.clone(),
            meta_json: self.meta_json.clone(),
            layers: self.layers.clone(),
        }
    }

    /// The layers' digests, top first.
    pub fn digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }
}

/// Why the catalog could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog's storage failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A digest that is not `sha256:<64 lowercase hex>`.
    #[error("not a layer digest: {0:?}")]
    BadDigest(String),
    /// A layer whose bytes do not hash to its digest.
    #[error("layer {digest} does not match its digest (its bytes hash to sha256:{got})")]
    Mismatch {
        /// What it was sent as.
        digest: String,
        /// What its bytes hash to.
        got: String,
    },
    /// A layer that came in two pieces of a stream (a stream sends each layer whole).
    #[error("layer {0} came twice in one stream")]
    Repeated(String),
    /// A stored entry that cannot be read.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The entry's file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A layer the catalog does not have.
    #[error("the catalog has no layer {0}")]
    NoLayer(String),
    /// The stream that carried the layers failed.
    #[error("{0}")]
    Source(NodeError),
}

impl From<CatalogError> for NodeError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Source(e) => e,
            other => NodeError::internal(format!("template catalog: {other}")),
        }
    }
}

/// Where a cluster's templates are recorded and their layers kept.
#[async_trait]
pub trait Catalog: Send + Sync + std::fmt::Debug {
    /// Template `name`, if recorded.
    async fn entry(&self, name: &TemplateName) -> Result<Option<CatalogEntry>, CatalogError>;
    /// Every recorded template, by name.
    async fn entries(&self) -> Result<Vec<CatalogEntry>, CatalogError>;
    /// Records (or replaces) a template; its layers must be stored first.
    async fn put_entry(&self, entry: &CatalogEntry) -> Result<(), CatalogError>;
    /// Forgets template `name` (its layers go with the next [`Catalog::collect`]).
    async fn remove_entry(&self, name: &TemplateName) -> Result<bool, CatalogError>;
    /// Which of `digests` the catalog does not hold.
    async fn missing_layers(&self, digests: &[String]) -> Result<Vec<String>, CatalogError>;
    /// Stores the layers of `layers` (each whole, one after the other), each checked against
    /// its digest; a layer that does not match is refused and leaves nothing behind. Answers
    /// the bytes stored.
    async fn put_layers(&self, layers: LayerStream) -> Result<u64, CatalogError>;
    /// The chunks of layers `digests`, one layer after the other.
    async fn open_layers(&self, digests: Vec<String>) -> Result<LayerStream, CatalogError>;
    /// Deletes the layers no recorded template uses; answers how many.
    async fn collect(&self) -> Result<usize, CatalogError>;
}

/// The hex part of a `sha256:<64 hex>` digest (which is then safe as a file name).
fn digest_hex(digest: &str) -> Result<&str, CatalogError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| CatalogError::BadDigest(digest.to_string()))
}

/// A [`Catalog`] in a directory (see the module docs).
#[derive(Debug, Clone)]
pub struct DirCatalog {
    root: PathBuf,
}

const TEMP_PREFIX: &str = ".tmp-";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CatalogError + '_ {
    move |source| CatalogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DirCatalog {
    /// Opens (making it if new, mode 0700) the catalog in `root`, removing temporary files a
    /// crash left behind.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CatalogError> {
        use std::os::unix::fs::DirBuilderExt;
        let root = root.into();
        for dir in [root.clone(), root.join("templates"), root.join("layers")] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io(&dir))?;
            for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
                let e = e.map_err(io(&dir))?;
                if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(DirCatalog { root })
    }

    /// The directory it is kept in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn entry_path(&self, name: &TemplateName) -> PathBuf {
        self.root
            .join("templates")
            .join(format!("{}.json", hex::encode(name.as_str())))
    }

    fn layer_path(&self, digest: &str) -> Result<PathBuf, CatalogError> {
        Ok(self.root.join("layers").join(digest_hex(digest)?))
    }

    fn temp_path(&self, dir: &str) -> PathBuf {
        self.root.join(dir).join(format!(
            "{TEMP_PREFIX}{}",
            hex::encode(rand::random::<[u8; 8]>())
        ))
    }

    /// Writes `bytes` to `path` whole or not at all.
    async fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), CatalogError> {
        let tmp = self.temp_path("templates");
        let result = async {
            let mut f = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
            f.write_all(bytes).await.map_err(io(&tmp))?;
            f.sync_all().await.map_err(io(&tmp))?;
            tokio::fs::rename(&tmp, path).await.map_err(io(path))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn read_entry(&self, path: &Path) -> Result<Option<CatalogEntry>, CatalogError> {
        let bytes = match tokio::fs::read(path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CatalogError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }
}

/// A layer being written: its temporary file and the hash of what it holds so far.
struct Incoming {
    digest: String,
    tmp: PathBuf,
    file: tokio::fs::File,
    hash: Sha256,
    bytes: u64,
}

impl DirCatalog {
    /// Checks, syncs and renames a layer into place.
    async fn finish(&self, mut layer: Incoming) -> Result<u64, CatalogError> {
        let got = hex::encode(std::mem::take(&mut layer.hash).finalize());
        let result = async {
            if digest_hex(&layer.digest)? != got {
                return Err(CatalogError::Mismatch {
                    digest: layer.digest.clone(),
                    got,
                });
            }
            layer.file.flush().await.map_err(io(&layer.tmp))?;
            layer.file.sync_all().await.map_err(io(&layer.tmp))?;
            let dst = self.layer_path(&layer.digest)?;
            tokio::fs::rename(&layer.tmp, &dst).await.map_err(io(&dst))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&layer.tmp).await;
        }
        result.map(|()| layer.bytes)
    }
}

#[async_trait]
impl Catalog for DirCatalog {
    async fn entry(&self, name: &TemplateName) -> Result<Option<CatalogEntry>, CatalogError> {
        self.read_entry(&self.entry_path(name)).await
    }

    async fn entries(&self) -> Result<Vec<CatalogEntry>, CatalogError> {
        let dir = self.root.join("templates");
        let mut read = tokio::fs::read_dir(&dir).await.map_err(io(&dir))?;
        let mut all = Vec::new();
        while let Some(e) = read.next_entry().await.map_err(io(&dir))? {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TEMP_PREFIX) || !name.ends_with(".json") {
                continue;
            }
            if let Some(entry) = self.read_entry(&e.path()).await? {
                all.push(entry);
            }
        }
        all.sort_by(|a, b| a.summary.name.cmp(&b.summary.name));
        Ok(all)
    }

    async fn put_entry(&self, entry: &CatalogEntry) -> Result<(), CatalogError> {
        let missing = self.missing_layers(&entry.digests()).await?;
        if let Some(d) = missing.into_iter().next() {
            return Err(CatalogError::NoLayer(d));
        }
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| CatalogError::Corrupt {
            path: self.entry_path(&entry.summary.name),
            reason: e.to_string(),
        })?;
        self.write_atomic(&self.entry_path(&entry.summary.name), &bytes)
            .await
    }

    async fn remove_entry(&self, name: &TemplateName) -> Result<bool, CatalogError> {
        let path = self.entry_path(name);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&path)(e)),
        }
    }

    async fn missing_layers(&self, digests: &[String]) -> Result<Vec<String>, CatalogError> {
        let mut missing = Vec::new();
        for d in digests {
            let path = self.layer_path(d)?;
            match tokio::fs::symlink_metadata(&path).await {
                Ok(m) if m.is_file() => {}
                Ok(_) => missing.push(d.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(d.clone()),
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(missing)
    }

    async fn put_layers(&self, mut layers: LayerStream) -> Result<u64, CatalogError> {
        let mut done: HashSet<String> = HashSet::new();
        let mut current: Option<Incoming> = None;
        let mut total = 0;
        let result = async {
            while let Some(chunk) = futures::StreamExt::next(&mut layers).await {
                let chunk = chunk.map_err(CatalogError::Source)?;
                if current.as_ref().is_none_or(|c| c.digest != chunk.digest) {
                    if let Some(layer) = current.take() {
                        done.insert(layer.digest.clone());
                        total += self.finish(layer).await?;
                    }
                    digest_hex(&chunk.digest)?;
                    if done.contains(&chunk.digest) {
                        return Err(CatalogError::Repeated(chunk.digest));
                    }
                    let tmp = self.temp_path("layers");
                    let file = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
                    current = Some(Incoming {
                        digest: chunk.digest.clone(),
                        tmp,
                        file,
                        hash: Sha256::new(),
                        bytes: 0,
                    });
                }
                let layer = current.as_mut().expect("a layer is open");
                layer.hash.update(&chunk.data);
                layer.bytes += chunk.data.len() as u64;
                layer
                    .file
                    .write_all(&chunk.data)
                    .await
                    .map_err(io(&layer.tmp))?;
            }
            if let Some(layer) = current.take() {
                total += self.finish(layer).await?;
            }
            Ok(total)
        }
        .await;
        if let Some(layer) = current {
            let _ = tokio::fs::remove_file(&layer.tmp).await;
        }
        result
    }

    async fn open_layers(&self, digests: Vec<String>) -> Result<LayerStream, CatalogError> {
        let mut files = Vec::new();
        for d in digests {
            let path = self.layer_path(&d)?;
            let file = tokio::fs::File::open(&path).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    CatalogError::NoLayer(d.clone())
                } else {
                    io(&path)(e)
                }
            })?;
            files.push((d, path, file));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for (digest, path, mut file) in files {
                loop {
                    let mut buf = vec![0u8; CHUNK_BYTES];
                    let n = match file.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) => {
                            let e = NodeError::internal(format!("{}: {e}", path.display()));
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    buf.truncate(n);
                    let chunk = LayerChunk {
                        digest: digest.clone(),
                        data: buf.into(),
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn collect(&self) -> Result<usize, CatalogError> {
        let used: HashSet<String> = self
            .entries()
            .await?
            .iter()
            .flat_map(|e| e.layers.iter().map(|l| l.digest.clone()))
            .filter_map(|d| digest_hex(&d).ok().map(str::to_string))
            .collect();
        let dir = self.root.join("layers");
        let mut read = tokio::fs::read_dir(&dir).await.map_err(io(&dir))?;
        let mut removed = 0;
        while let Some(e) = read.next_entry().await.map_err(io(&dir))? {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) || used.contains(&name) {
                continue;
            }
            tokio::fs::remove_file(e.path())
                .await
                .map_err(io(&e.path()))?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn digest_of(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    fn stream(chunks: Vec<(String, &'static [u8])>) -> LayerStream {
        Box::pin(futures::stream::iter(chunks.into_iter().map(|(d, b)| {
            Ok(LayerChunk {
                digest: d,
                data: Bytes::from_static(b),
            })
        })))
    }

    fn entry(name: &str, digests: &[&str]) -> CatalogEntry {
        CatalogEntry {
            summary: TemplateSummary {
                name: TemplateName::parse(name).expect("name"),
                resources: Default::default(),
                created_at: chrono::Utc::now(),
                layer_ids: vec![],
            },
            meta_json: "{}".into(),
            layers: digests
                .iter()
                .map(|d| LayerRef {
                    digest: d.to_string(),
                    size: 1,
                })
                .collect(),
        }
    }

    async fn read_all(mut s: LayerStream) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        while let Some(c) = futures::StreamExt::next(&mut s).await {
            let c = c.expect("chunk");
            match out.last_mut() {
                Some((d, b)) if *d == c.digest => b.extend_from_slice(&c.data),
                _ => out.push((c.digest, c.data.to_vec())),
            }
        }
        out
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn layers_are_stored_checked_and_read_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = DirCatalog::open(dir.path().join("catalog")).expect("open");
        let (a, b) = (
            digest_of(b"first layer, in two chunks"),
            digest_of(b"second"),
        );
        let stored = cat
            .put_layers(stream(vec![
                (a.clone(), b"first layer, "),
                (a.clone(), b"in two chunks"),
                (b.clone(), b"second"),
            ]))
            .await
            .expect("put");
        assert_eq!(stored, 32);
        assert!(cat
            .missing_layers(&[a.clone(), b.clone()])
            .await
            .expect("missing")
            .is_empty());
        let back = read_all(
            cat.open_layers(vec![b.clone(), a.clone()])
                .await
                .expect("open"),
        )
        .await;
        assert_eq!(
            back,
            vec![
                (b.clone(), b"second".to_vec()),
                (a.clone(), b"first layer, in two chunks".to_vec())
            ]
        );
        let e = entry("mine", &[&a, &b]);
        cat.put_entry(&e).await.expect("entry");
        assert_eq!(
            cat.entry(&e.summary.name).await.expect("get"),
            Some(e.clone())
        );
        assert_eq!(cat.entries().await.expect("all"), vec![e.clone()]);
        // Reopened (a restart of the control plane), it still has both.
        let again = DirCatalog::open(dir.path().join("catalog")).expect("reopen");
        assert_eq!(again.entry(&e.summary.name).await.expect("get"), Some(e));
    }

    #[tokio::test]
    async fn a_layer_that_does_not_match_its_digest_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = DirCatalog::open(dir.path()).expect("open");
        let good = digest_of(b"good");
        let claimed = digest_of(b"what it claims to be");
        let err = cat
            .put_layers(stream(vec![
                (good.clone(), b"good"),
                (claimed.clone(), b"something else"),
            ]))
            .await
            .expect_err("mismatch");
        assert!(matches!(err, CatalogError::Mismatch { .. }), "{err}");
        // The good one before it stays; nothing of the bad one, not even a temporary file.
        assert_eq!(
            files_in(&dir.path().join("layers")),
            vec![good[7..].to_string()]
        );
        // Names that are not digests never become paths.
        for bad in ["sha256:../../etc/passwd", "sha256:ABC", "md5:00"] {
            let err = cat
                .put_layers(stream(vec![(bad.to_string(), b"x")]))
                .await
                .expect_err("bad digest");
            assert!(matches!(err, CatalogError::BadDigest(_)), "{err}");
            assert!(cat.missing_layers(&[bad.to_string()]).await.is_err());
        }
        // A layer sent twice in one stream is refused.
        let twice = stream(vec![
            (good.clone(), b"good"),
            (claimed.clone(), b"what it claims to be"),
            (good.clone(), b"good"),
        ]);
        assert!(matches!(
            cat.put_layers(twice).await,
            Err(CatalogError::Repeated(_))
        ));
        // A stream cut by its source stores nothing of the layer it was in.
        let cut: LayerStream = Box::pin(futures::stream::iter(vec![
            Ok(LayerChunk {
                digest: digest_of(b"never finished"),
                data: Bytes::from_static(b"never"),
            }),
            Err(NodeError::unavailable("node went away")),
        ]));
        assert!(matches!(
            cat.put_layers(cut).await,
            Err(CatalogError::Source(_))
        ));
        let mut left = files_in(&dir.path().join("layers"));
        left.retain(|f| f.starts_with(TEMP_PREFIX));
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn an_entry_needs_its_layers_and_collection_keeps_only_used_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = DirCatalog::open(dir.path()).expect("open");
        let (a, b) = (digest_of(b"a"), digest_of(b"b"));
        let err = cat
            .put_entry(&entry("early", &[&a]))
            .await
            .expect_err("no layers yet");
        assert!(matches!(err, CatalogError::NoLayer(_)), "{err}");
        cat.put_layers(stream(vec![(a.clone(), b"a"), (b.clone(), b"b")]))
            .await
            .expect("put");
        cat.put_entry(&entry("one", &[&a])).await.expect("one");
        cat.put_entry(&entry("two", &[&a, &b])).await.expect("two");
        assert_eq!(cat.collect().await.expect("collect"), 0);
        let two = TemplateName::parse("two").expect("name");
        assert!(cat.remove_entry(&two).await.expect("remove"));
        assert!(!cat.remove_entry(&two).await.expect("again"));
        assert_eq!(cat.collect().await.expect("collect"), 1);
        assert_eq!(
            cat.missing_layers(&[a.clone(), b.clone()])
                .await
                .expect("missing"),
            vec![b]
        );
        assert!(matches!(
            cat.open_layers(vec![digest_of(b"b")]).await,
            Err(CatalogError::NoLayer(_))
        ));
    }
}
