//! The files of template builds: the archives that COPY steps copy from, uploaded by the SDKs
//! before a build starts and kept in `<data_dir>/build-files/<filesHash>` (a tar, optionally
//! gzipped, exactly as uploaded; the node's builder reads them from there).
//!
//! `GET /templates/{id}/files/{hash}` answers whether the archive is present and always gives
//! an upload link (the SDKs upload again when asked to), signed so that the upload needs no API
//! key: the token is `<expiry>.<hex HMAC-SHA256>` over the template name, the hash and the
//! expiry (one hour), keyed with a random per-server key kept in `<data_dir>/upload-key`.
//! Uploads are streamed to a temporary file beside their final place and renamed into place
//! once complete (never buffered in memory: one body chunk at a time); the size limit
//! ([`crate::ApiConfig::build_upload_limit`]) is checked against `Content-Length` before the
//! body is read and again as it streams; a partial, refused or interrupted upload (even a
//! dropped request) leaves nothing behind. There is no checksum to verify: E2B's `filesHash` is
//! the SDK's hash of the COPY instruction and the files' names, modes and contents, not of the
//! archive's bytes.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use chrono::Utc;
use futures::{Stream, StreamExt as _};
use paddock_domain::TemplateName;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;

use super::build::template_ref;
use super::{Core, Error};
use crate::store::TeamId;

/// Directory of the uploaded archives, inside the data directory.
pub const FILES_DIR: &str = "build-files";
/// File, inside the data directory, that keeps the key signing upload links.
pub const UPLOAD_KEY_FILE: &str = "upload-key";
/// How long an upload link stays valid, in seconds.
pub const UPLOAD_LINK_SECS: i64 = 3600;
/// Default largest upload accepted, in bytes (10 GiB).
pub const MAX_UPLOAD_BYTES: u64 = 10 << 30;

/// What `GET /templates/{id}/files/{hash}` tells the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadLink {
    /// The template, as its name.
    pub template: TemplateName,
    /// The hash, lowercase.
    pub hash: String,
    /// Whether the archive is already here.
    pub present: bool,
    /// The `token` query parameter of the upload URL.
    pub token: String,
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Malformed request (400).
    #[error("{0}")]
    Invalid(String),
    /// Missing, wrong or expired token (403).
    #[error("the upload link is invalid or has expired: ask for a new one")]
    Forbidden,
    /// The body is larger than the limit, in bytes (413).
    #[error("the upload is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// The body could not be read to its end (400).
    #[error("the upload was interrupted")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Storing it failed (500).
    #[error(transparent)]
    Lifecycle(#[from] Error),
}

/// Whether `hash` is a sha256 in hex (64 hex digits).
pub fn valid_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// HMAC-SHA256 (RFC 2104) with a key of at most one block.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|k| k ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn signed_message(template: &TemplateName, hash: &str, expiry: i64) -> Vec<u8> {
    format!("paddock-upload\0{template}\0{hash}\0{expiry}").into_bytes()
}

/// The token of an upload link valid until `expiry` (Unix seconds).
fn sign(key: &[u8], template: &TemplateName, hash: &str, expiry: i64) -> String {
    let mac = hmac_sha256(key, &signed_message(template, hash, expiry));
    format!("{expiry}.{}", hex::encode(mac))
}

/// Whether `token` is a valid, unexpired upload token for `template` and `hash` at `now`.
fn verify(key: &[u8], template: &TemplateName, hash: &str, token: &str, now: i64) -> bool {
    let Some((expiry, mac)) = token.split_once('.') else {
        return false;
    };
    let Ok(expiry) = expiry.parse::<i64>() else {
        return false;
    };
    let Ok(given) = hex::decode(mac) else {
        return false;
    };
    let want = hmac_sha256(key, &signed_message(template, hash, expiry));
    // Constant time in the MAC's content: a wrong guess learns nothing from the timing.
    let same = given.len() == want.len()
        && given
            .iter()
            .zip(want.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    same && expiry >= now
}

/// Reads the signing key, or makes one (32 random bytes, hex, mode 0600) on first use.
fn load_or_create_key(data_dir: &Path) -> Result<[u8; 32], Error> {
    let path = data_dir.join(UPLOAD_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut key = [0u8; 32];
            if hex::decode_to_slice(text.trim(), &mut key).is_ok() {
                return Ok(key);
            }
            tracing::warn!(path = %path.display(), "replacing an unreadable upload key");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(format!("cannot read {}", path.display()))(e)),
    }
    std::fs::create_dir_all(data_dir)
        .map_err(io_error(format!("cannot create {}", data_dir.display())))?;
    let key = rand::random::<[u8; 32]>();
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(hex::encode(key).as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(io_error(format!("cannot write {}", path.display())))?;
    Ok(key)
}

/// Removes a partial upload unless disarmed (also when the request is dropped mid-body).
struct PartialFile(Option<PathBuf>);

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "removing a partial upload");
            }
        }
    }
}

impl Core {
    /// `<data_dir>/build-files/<team>`: each team's uploads apart, so knowing another team's
    /// files hash does not let a build copy its files.
    pub(crate) fn build_files_dir(&self, team: &TeamId) -> PathBuf {
        let id = team.as_str();
        let safe = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let segment = if safe {
            id.to_string()
        } else {
            hex::encode(id.as_bytes())
        };
        self.config.data_dir.join(FILES_DIR).join(segment)
    }

    async fn upload_key(&self) -> Result<&[u8; 32], Error> {
        let data_dir = self.config.data_dir.clone();
        self.builds
            .upload_key
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || load_or_create_key(&data_dir)).await?
            })
            .await
    }

    /// Whether the archive `hash` of one of the team's templates is present, and the token of
    /// its upload link. 400 for a malformed hash; 404 unless the template is one the team
    /// builds (which means it has a build).
    pub(crate) async fn upload_link(
        &self,
        team: &TeamId,
        raw_template: &str,
        hash: &str,
    ) -> Result<UploadLink, Error> {
        if !valid_hash(hash) {
            return Err(Error::Invalid(format!(
                "invalid files hash {hash:?}: expected a sha256 in hex (64 hex digits)"
            )));
        }
        let not_found = || Error::TemplateNotFound(raw_template.to_string());
        let (name, _) = template_ref(raw_template).ok_or_else(not_found)?;
        match self.store.template_record(&name).await? {
            Some(rec) if &rec.team_id == team => {}
            _ => return Err(not_found()),
        }
        let hash = hash.to_ascii_lowercase();
        let path = self.build_files_dir(team).join(&hash);
        let present = tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file());
        let expiry = Utc::now().timestamp() + UPLOAD_LINK_SECS;
        let token = sign(self.upload_key().await?, &name, &hash, expiry);
        Ok(UploadLink {
            template: name,
            hash,
            present,
            token,
        })
    }

    /// Stores the body of an upload as the archive `hash` of `raw_template`, after checking
    /// the link's token: streamed to a temporary file in the files directory, then renamed
    /// into place (an existing archive of that hash is replaced). Returns the size in bytes.
    pub(crate) async fn receive_upload<S, B, E>(
        &self,
        raw_template: &str,
        hash: &str,
        token: &str,
        content_length: Option<u64>,
        body: S,
    ) -> Result<u64, UploadError>
    where
        S: Stream<Item = Result<B, E>>,
        B: AsRef<[u8]>,
        E: std::error::Error + Send + Sync + 'static,
    {
        if !valid_hash(hash) {
            return Err(UploadError::Invalid(format!(
                "invalid files hash {hash:?}: expected a sha256 in hex (64 hex digits)"
            )));
        }
        let hash = hash.to_ascii_lowercase();
        let (name, _) = template_ref(raw_template).ok_or(UploadError::Forbidden)?;
        let key = self.upload_key().await?;
        if !verify(key, &name, &hash, token, Utc::now().timestamp()) {
            return Err(UploadError::Forbidden);
        }
        let limit = self.config.build_upload_limit;
        if content_length.is_some_and(|n| n > limit) {
            return Err(UploadError::TooLarge(limit));
        }
        // The link names the template; its owner's directory receives the files.
        let owner = match self.store.template_record(&name).await {
            Ok(Some(rec)) => rec.team_id,
            Ok(None) => return Err(UploadError::Forbidden),
            Err(e) => return Err(UploadError::from(Error::from(e))),
        };
        let dir = self.build_files_dir(&owner);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io_error(format!("cannot create {}", dir.display())))?;
        let tmp = dir.join(format!(
            ".upload-{}",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(io_error(format!("cannot create {}", tmp.display())))?;
        let mut partial = PartialFile(Some(tmp.clone()));
        let write_err = || io_error(format!("cannot write {}", tmp.display()));
        let mut total = 0u64;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| UploadError::Body(Box::new(e)))?;
            let bytes = chunk.as_ref();
            total += bytes.len() as u64;
            if total > limit {
                return Err(UploadError::TooLarge(limit));
            }
            file.write_all(bytes).await.map_err(write_err())?;
        }
        file.sync_all().await.map_err(write_err())?;
        drop(file);
        let dest = dir.join(&hash);
        tokio::fs::rename(&tmp, &dest)
            .await
            .map_err(io_error(format!(
                "cannot move the upload to {}",
                dest.display()
            )))?;
        partial.0 = None;
        tracing::info!(template = %name, hash = %hash, bytes = total, "build files uploaded");
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than a block is hashed first.
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn tokens_bind_template_hash_and_expiry() {
        let key = [7u8; 32];
        let t = TemplateName::parse("app").expect("name");
        let other = TemplateName::parse("app2").expect("name");
        let hash = "ab".repeat(32);
        let token = sign(&key, &t, &hash, 1_000);
        assert!(verify(&key, &t, &hash, &token, 999));
        assert!(verify(&key, &t, &hash, &token, 1_000));
        assert!(!verify(&key, &t, &hash, &token, 1_001), "expired");
        assert!(!verify(&key, &other, &hash, &token, 0), "other template");
        assert!(!verify(&key, &t, &"cd".repeat(32), &token, 0), "other hash");
        assert!(!verify(&[8u8; 32], &t, &hash, &token, 0), "other key");
        let (_, mac) = token.split_once('.').expect("dot");
        assert!(
            !verify(&key, &t, &hash, &format!("2000.{mac}"), 0),
            "a moved expiry breaks the MAC"
        );
        for garbage in ["", "1000", "x.y", "1000.zz", "1000.abcd"] {
            assert!(!verify(&key, &t, &hash, garbage, 0), "{garbage:?}");
        }
    }

    #[test]
    fn the_key_is_made_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = load_or_create_key(dir.path()).expect("made");
        let mode = std::fs::metadata(dir.path().join(UPLOAD_KEY_FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_key(dir.path()).expect("read"), key);
        std::fs::write(dir.path().join(UPLOAD_KEY_FILE), "garbage").expect("write");
        let fresh = load_or_create_key(dir.path()).expect("replaced");
        assert_ne!(fresh, key);
        assert_eq!(load_or_create_key(dir.path()).expect("read"), fresh);
    }

    #[test]
    fn hashes_are_64_hex_digits() {
        assert!(valid_hash(&"aB".repeat(32)));
        assert!(!valid_hash(&"ab".repeat(31)));
        assert!(!valid_hash(&format!("{}zz", "ab".repeat(31))));
        assert!(!valid_hash("../../etc/passwd"));
    }
}
