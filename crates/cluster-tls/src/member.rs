//! A member's side of the trust: [`MemberKey`] (a new key pair and the signing request sent
//! with the join) and [`MemberIdentity`] (the issued certificate, its key and the CA), kept in
//! the member's data directory as one file, `cluster-identity.pem` (0600), so a restarted node
//! or proxy keeps its identity and never joins again.
//!
//! Lifecycle: `MemberKey::generate` → `csr_pem` → join (the control plane answers with a
//! [`JoinGrant`](crate::JoinGrant)) → [`MemberIdentity::from_grant`] → `store`; on later starts
//! [`MemberIdentity::load`].

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{KeyPair, PublicKeyData};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::{pem_encode, subject_params, CaCert};
use crate::files::{self, SECRET_MODE};
use crate::identity::PeerIdentity;
use crate::token::JoinToken;
use crate::Error;

/// A member's new key pair (ECDSA P-256), before it has a certificate. It never leaves the
/// member: only its signing request does.
pub struct MemberKey {
    key: KeyPair,
}

impl fmt::Debug for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberKey").finish_non_exhaustive()
    }
}

impl MemberKey {
    /// Generates a key pair.
    pub fn generate() -> Result<Self, Error> {
        Ok(Self {
            key: KeyPair::generate()?,
        })
    }

    /// A PKCS#10 signing request (PEM) for `identity` with the given names, signed with this
    /// key. The CA keeps only the public key from it and decides the rest itself.
    pub fn csr_pem(
        &self,
        identity: &PeerIdentity,
        dns_names: &[String],
        ip_addresses: &[IpAddr],
    ) -> Result<String, Error> {
        let params = subject_params(identity, dns_names, ip_addresses)?;
        Ok(params.serialize_request(&self.key)?.pem()?)
    }
}

/// A member's certificate, key and CA: what it presents and what it trusts on cluster links.
#[derive(Clone)]
pub struct MemberIdentity {
    identity: PeerIdentity,
    cert: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    ca: CaCert,
    not_after: SystemTime,
}

impl fmt::Debug for MemberIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberIdentity")
            .field("identity", &self.identity)
            .field("ca", &self.ca)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl MemberIdentity {
    /// The file a member's identity is kept in.
    pub const FILE: &'static str = "cluster-identity.pem";

    /// The identity a join granted: the CA must be the one the join token pins (its SHA-256
    /// equals the token's fingerprint), and the certificate must verify against it and be for
    /// `key`.
    pub fn from_grant(
        key: MemberKey,
        cert_pem: &str,
        ca_pem: &str,
        token: &JoinToken,
    ) -> Result<Self, Error> {
        let ca = CaCert::from_pem(ca_pem)?;
        if !ca.fingerprint().ct_eq(&token.ca_fingerprint()) {
            return Err(Error::CaNotPinned {
                pinned: token.ca_fingerprint(),
                got: ca.fingerprint(),
            });
        }
        Self::new(key, cert_pem, ca)
    }

    /// An identity from a certificate (PEM) issued for `key` by `ca`. The certificate must
    /// verify against `ca` now, for client and server use.
    pub fn new(key: MemberKey, cert_pem: &str, ca: CaCert) -> Result<Self, Error> {
        let cert = single_cert(cert_pem)?;
        let identity = ca.verify_client(&cert)?;
        ca.verify_server(&cert)?;
        Self::assemble(cert, key.key.serialize_pem(), &key.key, ca, identity)
    }

    fn assemble(
        cert: CertificateDer<'static>,
        key_pem: String,
        key: &KeyPair,
        ca: CaCert,
        identity: PeerIdentity,
    ) -> Result<Self, Error> {
        let (_, parsed) = X509Certificate::from_der(&cert).map_err(|_| Error::BadCertificate)?;
        if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(Error::KeyMismatch);
        }
        let not_after = u64::try_from(parsed.validity().not_after.timestamp())
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(Self {
            identity,
            cert_pem: pem_encode("CERTIFICATE", &cert),
            cert,
            key_pem,
            ca,
            not_after,
        })
    }

    /// Writes the identity to `dir`/[`Self::FILE`] (0600), atomically: the member's
    /// certificate, the CA's, then the key.
    pub fn store(&self, dir: &Path) -> Result<(), Error> {
        files::ensure_dir(dir)?;
        let mut contents = String::from(
            "# Paddock cluster identity: this member's certificate, the cluster CA, this member's key\n",
        );
        contents.push_str(&self.cert_pem);
        contents.push_str(self.ca.pem());
        contents.push_str(&self.key_pem);
        files::write_atomic(&dir.join(Self::FILE), contents.as_bytes(), SECRET_MODE)?;
        Ok(())
    }

    /// Loads the identity kept in `dir`, `None` if there is none (the member has not joined).
    /// The file must be a regular file (not a symlink) of this user with mode 0600 or stricter;
    /// the certificate must be signed by the CA kept beside it and be for the key. An expired
    /// certificate still loads ([`Self::not_after`] tells); peers refuse it.
    pub fn load(dir: &Path) -> Result<Option<Self>, Error> {
        let path = dir.join(Self::FILE);
        if !files::exists(&path)? {
            return Ok(None);
        }
        let contents = files::read_secret(&path)?;
        let certs =
            CertificateDer::pem_slice_iter(contents.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let [cert, ca] = <[_; 2]>::try_from(certs).map_err(|_| Error::BadIdentityFile(path))?;
        let ca = CaCert::from_der(ca)?;
        let key_der = PrivatePkcs8KeyDer::from_pem_slice(contents.as_bytes())?;
        let key = KeyPair::try_from(&key_der)?;
        // Verified at the certificate's own start, so that an expired one loads: the chain and
        // the identity are checked, the date is left to the peers.
        let (_, parsed) = X509Certificate::from_der(&cert).map_err(|_| Error::BadCertificate)?;
        let start = u64::try_from(parsed.validity().not_before.timestamp()).unwrap_or(0);
        let identity = ca.verify_client_at(
            &cert,
            rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(start)),
        )?;
        let key_pem = pem_encode("PRIVATE KEY", key_der.secret_pkcs8_der());
        Self::assemble(cert, key_pem, &key, ca, identity).map(Some)
    }

    /// Who this member is.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// The CA this member trusts.
    pub fn ca(&self) -> &CaCert {
        &self.ca
    }

    /// The member's certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The member's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The member's private key, PKCS#8 PEM (for transports that take PEM, e.g. tonic's
    /// `Identity::from_pem`).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// When the certificate expires. There is no renewal yet: a member whose certificate
    /// expired joins again with a (new) join token.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The chain a member presents: its certificate, then the CA's (which lets a joining member
    /// find the CA its token pins).
    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone(), self.ca.der().clone()]
    }

    pub(crate) fn key_der(&self) -> Result<PrivateKeyDer<'static>, Error> {
        Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from_pem_slice(
            self.key_pem.as_bytes(),
        )?))
    }
}

fn single_cert(pem: &str) -> Result<CertificateDer<'static>, Error> {
    let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
    let cert = certs.next().ok_or(Error::NoCertificate)??;
    if certs.next().is_some() {
        return Err(Error::ExtraCertificates);
    }
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::ca::{CertRequest, ClusterCa};
    use crate::identity::{MemberId, Role};

    fn node(id: &str) -> PeerIdentity {
        PeerIdentity::new(Role::Node, MemberId::new(id).expect("id"))
    }

    #[test]
    fn identity_survives_store_and_load() {
        let ca_dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::create(ca_dir.path()).expect("ca");
        let token = JoinToken::generate(ca.cert());
        let key = MemberKey::generate().expect("key");
        let csr = key.csr_pem(&node("n1"), &[], &[]).expect("csr");
        let grant = ca
            .admit(&token, &token.reveal(), &csr, &CertRequest::new(node("n1")))
            .expect("admit");
        let member =
            MemberIdentity::from_grant(key, &grant.cert_pem, &grant.ca_pem, &token).expect("id");

        let dir = tempfile::tempdir().expect("tempdir");
        assert!(MemberIdentity::load(dir.path()).expect("load").is_none());
        member.store(dir.path()).expect("store");
        let file = dir.path().join(MemberIdentity::FILE);
        assert_eq!(
            std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let loaded = MemberIdentity::load(dir.path())
            .expect("load")
            .expect("stored");
        assert_eq!(loaded.identity(), &node("n1"));
        assert_eq!(loaded.cert_der(), member.cert_der());
        assert_eq!(loaded.key_pem(), member.key_pem());
        assert_eq!(loaded.ca().fingerprint(), ca.cert().fingerprint());

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(MemberIdentity::load(dir.path()).is_err());
    }

    #[test]
    fn a_grant_from_another_ca_than_the_token_pins_is_refused() {
        let one = tempfile::tempdir().expect("tempdir");
        let two = tempfile::tempdir().expect("tempdir");
        let pinned = ClusterCa::create(one.path()).expect("one");
        let other = ClusterCa::create(two.path()).expect("two");
        let token = JoinToken::generate(pinned.cert());
        let key = MemberKey::generate().expect("key");
        let csr = key.csr_pem(&node("n1"), &[], &[]).expect("csr");
        let cert = other
            .issue(&csr, &CertRequest::new(node("n1")))
            .expect("issue");
        let err = MemberIdentity::from_grant(key, &cert, other.cert().pem(), &token)
            .expect_err("other CA accepted");
        assert!(matches!(err, Error::CaNotPinned { .. }), "{err:?}");
    }

    #[test]
    fn a_certificate_for_another_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::create(dir.path()).expect("ca");
        let theirs = MemberKey::generate().expect("key");
        let csr = theirs.csr_pem(&node("n1"), &[], &[]).expect("csr");
        let cert = ca
            .issue(&csr, &CertRequest::new(node("n1")))
            .expect("issue");
        let mine = MemberKey::generate().expect("key");
        let err = MemberIdentity::new(mine, &cert, ca.cert().clone()).expect_err("accepted");
        assert!(matches!(err, Error::KeyMismatch), "{err:?}");
    }
}
