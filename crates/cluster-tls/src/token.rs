//! The join token: what an operator copies from the control plane to a new node or proxy.
//! Its form is `pdk_join_<secret>.<fingerprint>`: 32 random bytes (base64url, unpadded) that
//! prove the joiner was let in, and the SHA-256 (hex) of the CA certificate, which lets the
//! joiner pin the CA before it trusts anything the network says. The control plane keeps it in
//! `DIR/join-token` (0600) and compares presented tokens in constant time.

use std::fmt;
use std::path::Path;

use base64::Engine;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::ca::{CaCert, CaFingerprint};
use crate::files::{self, SECRET_MODE};
use crate::Error;

const SECRET_LEN: usize = 32;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a string is not a join token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It does not start with [`JoinToken::PREFIX`].
    #[error("a join token starts with {}", JoinToken::PREFIX)]
    Prefix,
    /// The `.<fingerprint>` part is missing.
    #[error("a join token ends with .<sha256 of the cluster CA>")]
    NoFingerprint,
    /// The secret is not 32 bytes of base64url.
    #[error("the join token's secret is not {SECRET_LEN} bytes of base64url")]
    Secret,
    /// The fingerprint is not 64 hex digits.
    #[error("the join token's CA fingerprint is not 64 hex digits")]
    Fingerprint,
}

/// A cluster's join token. `Debug` does not show the secret; [`JoinToken::reveal`] does.
#[derive(Clone)]
pub struct JoinToken {
    secret: [u8; SECRET_LEN],
    ca: CaFingerprint,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// Every token starts with this.
    pub const PREFIX: &'static str = "pdk_join_";
    /// The file the control plane keeps its token in.
    pub const FILE: &'static str = "join-token";

    /// A new token for the cluster of `ca`, with a secret from the OS's random source.
    pub fn generate(ca: &CaCert) -> Self {
        let mut secret = [0u8; SECRET_LEN];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Self {
            secret,
            ca: ca.fingerprint(),
        }
    }

    /// Parses a token (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let rest = text
            .trim()
            .strip_prefix(Self::PREFIX)
            .ok_or(TokenError::Prefix)?;
        let (secret, fingerprint) = rest.split_once('.').ok_or(TokenError::NoFingerprint)?;
        let secret = B64
            .decode(secret)
            .ok()
            .and_then(|bytes| <[u8; SECRET_LEN]>::try_from(bytes).ok())
            .ok_or(TokenError::Secret)?;
        Ok(Self {
            secret,
            ca: fingerprint.parse().map_err(|_| TokenError::Fingerprint)?,
        })
    }

    /// The token as the operator copies it. It is a secret: print it once, log it never.
    pub fn reveal(&self) -> String {
        format!("{}{}.{}", Self::PREFIX, B64.encode(self.secret), self.ca)
    }

    /// The fingerprint of the CA the token pins.
    pub fn ca_fingerprint(&self) -> CaFingerprint {
        self.ca
    }

    /// Whether `presented` is this token. The comparison of secrets and fingerprints takes the
    /// same time wherever they differ; a string that is not a token at all is refused at once
    /// (its shape says nothing about the secret).
    pub fn verify(&self, presented: &str) -> bool {
        let Ok(other) = Self::parse(presented) else {
            return false;
        };
        let same = self.secret.ct_eq(&other.secret) & self.ca.0.ct_eq(&other.ca.0);
        same.into()
    }

    /// Writes the token to `dir`/[`Self::FILE`] (0600), atomically.
    pub fn store(&self, dir: &Path) -> Result<(), Error> {
        files::ensure_dir(dir)?;
        let text = format!("{}\n", self.reveal());
        files::write_atomic(&dir.join(Self::FILE), text.as_bytes(), SECRET_MODE)?;
        Ok(())
    }

    /// Loads the token kept in `dir`: a regular file (not a symlink) of this user with mode
    /// 0600 or stricter.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        Ok(Self::parse(&files::read_secret(&dir.join(Self::FILE))?)?)
    }

    /// Loads the token kept in `dir`, or makes and stores one for `ca` if there is none.
    /// Returns whether it was made now. A stored token that pins another CA is an error (the CA
    /// was replaced under it): remove the file to make a new one.
    pub fn load_or_create(dir: &Path, ca: &CaCert) -> Result<(Self, bool), Error> {
        if files::exists(&dir.join(Self::FILE))? {
            let token = Self::load(dir)?;
            if !token.ca.ct_eq(&ca.fingerprint()) {
                return Err(Error::CaNotPinned {
                    pinned: token.ca,
                    got: ca.fingerprint(),
                });
            }
            return Ok((token, false));
        }
        let token = Self::generate(ca);
        token.store(dir)?;
        Ok((token, true))
    }

    /// Reads a token from a file an operator supplied (a joining member's `--token-file`): a
    /// regular file, which may be reached through a symlink (mounted secrets often are).
    pub fn read_file(path: &Path) -> Result<Self, Error> {
        Ok(Self::parse(&files::read_supplied(path)?)?)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::ca::ClusterCa;

    fn ca() -> (tempfile::TempDir, ClusterCa) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::create(dir.path()).expect("ca");
        (dir, ca)
    }

    #[test]
    fn round_trips_and_has_the_documented_shape() {
        let (_dir, ca) = ca();
        let token = JoinToken::generate(ca.cert());
        let text = token.reveal();
        let (secret, fingerprint) = text
            .strip_prefix("pdk_join_")
            .and_then(|r| r.split_once('.'))
            .expect("shape");
        assert_eq!(secret.len(), 43);
        assert_eq!(fingerprint, ca.cert().fingerprint().to_string());
        assert!(text.chars().all(|c| c.is_ascii_graphic()));
        let parsed = JoinToken::parse(&format!("  {text}\n")).expect("parse");
        assert_eq!(parsed.reveal(), text);
        assert!(token.verify(&text));
        assert!(!format!("{token:?}").contains(secret));
        assert_ne!(JoinToken::generate(ca.cert()).reveal(), text);
    }

    #[test]
    fn wrong_tokens_are_refused() {
        let (_dir, ca) = ca();
        let token = JoinToken::generate(ca.cert());
        let text = token.reveal();
        let other = JoinToken::generate(ca.cert()).reveal();
        // One secret character changed, at the start and at the end of the secret.
        let flip = |i: usize| {
            let mut b = text.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            String::from_utf8(b).expect("ascii")
        };
        let first = JoinToken::PREFIX.len();
        let last = first + 41;
        let other_ca = {
            let (_d, ca2) = self::ca();
            format!(
                "{}.{}",
                text.split_once('.').expect("dot").0,
                ca2.cert().fingerprint()
            )
        };
        for wrong in [
            other,
            flip(first),
            flip(last),
            other_ca,
            text[..text.len() - 1].to_owned(),
            text.replace("pdk_join_", "pdk_jion_"),
            String::new(),
            "pdk_join_.".to_owned(),
        ] {
            assert!(!token.verify(&wrong), "{wrong} accepted");
        }
    }

    #[test]
    fn stored_once_with_mode_0600_and_tied_to_its_ca() {
        let (dir, ca) = ca();
        let (token, created) = JoinToken::load_or_create(dir.path(), ca.cert()).expect("create");
        assert!(created);
        let path = dir.path().join(JoinToken::FILE);
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let (again, created) = JoinToken::load_or_create(dir.path(), ca.cert()).expect("load");
        assert!(!created);
        assert_eq!(again.reveal(), token.reveal());
        assert_eq!(
            JoinToken::read_file(&path).expect("read").reveal(),
            token.reveal()
        );

        let (_d, other) = self::ca();
        assert!(matches!(
            JoinToken::load_or_create(dir.path(), other.cert()),
            Err(Error::CaNotPinned { .. })
        ));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(JoinToken::load(dir.path()).is_err());
    }
}
