//! HTTPS on the client listeners ([`crate::listener::serve_tls`]): the certificate and key a
//! listener presents, loaded from PEM files (`--tls-cert`, `--tls-key`), and reloadable in
//! place ([`ServerTls::reload`]) without dropping the connections that are open.
//!
//! The certificate file holds the leaf first, then any intermediates; the key file one private
//! key (PKCS#8, PKCS#1 or SEC1). Loading checks that the key is the leaf's. TLS 1.2 and 1.3,
//! rustls's `ring` provider; ALPN offers `http/1.1` only, the one protocol the listener speaks
//! (upgrades such as WebSocket need it).
//!
//! Main items: [`ServerTls`], [`TlsError`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Largest certificate or key file read: a chain of a few certificates is a few kilobytes.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why a certificate and key could not be loaded. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read (missing, unreadable, a directory).
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than any certificate chain or key.
    #[error("{0} is larger than {MAX_PEM_BYTES} bytes: not a PEM certificate or key")]
    TooLarge(PathBuf),
    /// The certificate file holds no PEM `CERTIFICATE` block (or a broken one).
    #[error("{path} holds no PEM certificate{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// What the PEM parser found wrong, if anything.
        detail: Option<String>,
    },
    /// The key file holds no PEM private key (or a broken one).
    #[error("{path} holds no PEM private key{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What the PEM parser found wrong, if anything.
        detail: Option<String>,
    },
    /// The key is not one rustls can sign with, or it is not the certificate's.
    #[error("the key in {key} does not fit the certificate in {cert}: {source}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the configuration (no usable protocol version).
    #[error("configuring TLS: {0}")]
    Config(#[source] rustls::Error),
}

/// The TLS side of a client listener: a rustls server configuration whose certificate can be
/// swapped at run time ([`ServerTls::reload`]). Cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    key: Arc<CurrentKey>,
}

/// The certificate a [`ServerTls`] presents now, and where it came from.
#[derive(Debug)]
struct CurrentKey {
    cert_path: PathBuf,
    key_path: PathBuf,
    certified: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CurrentKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.certified.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerTls {
    /// Loads the certificate chain in `cert` and the private key in `key` (PEM files) and
    /// checks that they belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let certified = load_pair(cert, key, &provider)?;
        let current = Arc::new(CurrentKey {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            certified: RwLock::new(Arc::new(certified)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            key: current,
        })
    }

    /// Reads the certificate and key files again and presents them from the next handshake on.
    /// On an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let certified = load_pair(&self.key.cert_path, &self.key.key_path, &provider())?;
        *self
            .key
            .certified
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(certified);
        Ok(())
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.key.cert_path
    }

    /// The rustls configuration (for an acceptor).
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.config)
    }

    /// An acceptor for this configuration.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config())
    }
}

/// Reads at most [`MAX_PEM_BYTES`] of `path`.
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let read = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge(path.to_owned()));
    }
    Ok(bytes)
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read_pem(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate {
            path: cert.to_owned(),
            detail: Some(e.to_string()),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
            detail: None,
        });
    }
    let key_pem = read_pem(key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        path: key.to_owned(),
        detail: match e {
            rustls::pki_types::pem::Error::NoItemsFound => None,
            other => Some(other.to_string()),
        },
    })?;
    let mismatch = |source| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(mismatch)?;
    // `from_der` lets a key whose public half it cannot tell through; insist on a match.
    certified.keys_match().map_err(mismatch)?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert: String,
        key: String,
    }

    fn pair(name: &str) -> Pair {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write");
        path
    }

    #[test]
    fn loads_a_pair_and_offers_http1_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = pair("*.paddock.test");
        let cert = write(dir.path(), "cert.pem", &p.cert);
        let key = write(dir.path(), "key.pem", &p.key);
        let tls = ServerTls::load(&cert, &key).expect("loads");
        assert_eq!(tls.config().alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(tls.cert_path(), cert);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (pair("a.test"), pair("b.test"));
        let cert = write(dir.path(), "a.pem", &a.cert);
        let key = write(dir.path(), "b-key.pem", &b.key);
        let err = ServerTls::load(&cert, &key).expect_err("mismatch");
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("a.pem") && text.contains("b-key.pem"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = pair("a.test");
        let key = write(dir.path(), "key.pem", &p.key);
        let missing = dir.path().join("nope.pem");
        let err = ServerTls::load(&missing, &key).expect_err("missing cert");
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let cert = write(dir.path(), "cert.pem", &p.cert);
        let err = ServerTls::load(&cert, &missing).expect_err("missing key");
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }

    #[test]
    fn files_without_certificates_or_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = pair("a.test");
        let cert = write(dir.path(), "cert.pem", &p.cert);
        let key = write(dir.path(), "key.pem", &p.key);
        // The key file given as the certificate: a PEM file without a certificate.
        let err = ServerTls::load(&key, &key).expect_err("no certificate");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains("key.pem"), "{err}");
        let empty = write(dir.path(), "empty.pem", "");
        let err = ServerTls::load(&empty, &key).expect_err("empty");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        let err = ServerTls::load(&cert, &cert).expect_err("no key");
        assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
        assert!(err.to_string().contains("cert.pem"), "{err}");
    }

    #[test]
    fn reload_swaps_the_certificate_and_keeps_it_on_a_broken_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (pair("a.test"), pair("b.test"));
        let cert = write(dir.path(), "cert.pem", &a.cert);
        let key = write(dir.path(), "key.pem", &a.key);
        let tls = ServerTls::load(&cert, &key).expect("loads");
        let leaf = |tls: &ServerTls| tls.key.certified.read().expect("lock").cert[0].clone();
        let before = leaf(&tls);
        write(dir.path(), "cert.pem", &b.cert);
        let err = tls.reload().expect_err("b's cert with a's key");
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err:?}");
        assert_eq!(leaf(&tls), before, "the old pair stays");
        write(dir.path(), "key.pem", &b.key);
        tls.reload().expect("b's pair");
        assert_ne!(leaf(&tls), before);
    }
}
