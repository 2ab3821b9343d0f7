//! The cluster's certificate authority. [`ClusterCa`] (the control plane's: certificate and
//! key) is made once in the api's data directory and signs members' certificates from their
//! signing requests ([`CertRequest`] says what goes in them). [`CaCert`] is the public half every
//! member holds: the one trust anchor of cluster links, with [`CaCert::verify_client`] and
//! [`CaCert::verify_server`] reading a peer's [`PeerIdentity`] back from a verified certificate,
//! and [`CaFingerprint`], the SHA-256 of its DER that join tokens carry.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::RootCertStore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::files::{self, PUBLIC_MODE, SECRET_MODE};
use crate::identity::PeerIdentity;
use crate::member::{MemberIdentity, MemberKey};
use crate::tls::provider;
use crate::token::JoinToken;
use crate::Error;

/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back a certificate's validity starts, for clocks a little behind the issuer's.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// SHA-256 of a CA certificate's DER: what a join token carries to pin the CA.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaFingerprint(pub(crate) [u8; 32]);

impl CaFingerprint {
    /// The fingerprint of a certificate (DER).
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// Compares in constant time.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaFingerprint({self})")
    }
}

impl FromStr for CaFingerprint {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Self(out))
    }
}

/// The CA's certificate: the trust anchor every member verifies peers against. Cheap to clone.
#[derive(Clone)]
pub struct CaCert(Arc<CaInner>);

struct CaInner {
    der: CertificateDer<'static>,
    pem: String,
    fingerprint: CaFingerprint,
    roots: Arc<RootCertStore>,
    clients: Arc<dyn ClientCertVerifier>,
}

impl fmt::Debug for CaCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaCert")
            .field("fingerprint", &self.0.fingerprint)
            .finish()
    }
}

impl CaCert {
    /// Parses a PEM file holding exactly one certificate, which must be a CA certificate.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
        let der = certs.next().ok_or(Error::NoCertificate)??;
        if certs.next().is_some() {
            return Err(Error::ExtraCertificates);
        }
        Self::from_der(der)
    }

    /// Wraps a CA certificate (DER).
    pub fn from_der(der: CertificateDer<'static>) -> Result<Self, Error> {
        let (_, cert) = X509Certificate::from_der(&der).map_err(|_| Error::NotCa)?;
        match cert.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            _ => return Err(Error::NotCa),
        }
        let mut roots = RootCertStore::empty();
        roots.add(der.clone()).map_err(Error::Tls)?;
        let roots = Arc::new(roots);
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(Error::Verifier)?;
        let pem = pem_of(&der);
        Ok(Self(Arc::new(CaInner {
            fingerprint: CaFingerprint::of(&der),
            der,
            pem,
            roots,
            clients,
        })))
    }

    /// The certificate, DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.0.der
    }

    /// The certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.0.pem
    }

    /// SHA-256 of the DER.
    pub fn fingerprint(&self) -> CaFingerprint {
        self.0.fingerprint
    }

    pub(crate) fn roots(&self) -> Arc<RootCertStore> {
        self.0.roots.clone()
    }

    /// Verifies a client's certificate (DER, as a TLS server received it) against the CA, now,
    /// for client authentication, and returns the identity it records.
    pub fn verify_client(&self, cert: &CertificateDer<'_>) -> Result<PeerIdentity, Error> {
        self.verify_client_at(cert, UnixTime::now())
    }

    /// [`verify_client`](Self::verify_client) at a given time.
    pub fn verify_client_at(
        &self,
        cert: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Result<PeerIdentity, Error> {
        self.0
            .clients
            .verify_client_cert(cert, &[], now)
            .map_err(Error::Untrusted)?;
        Ok(PeerIdentity::from_cert_der(cert)?)
    }

    /// Verifies a server's certificate (DER) against the CA, now, for server authentication,
    /// and returns the identity it records. No host name is checked: cluster members are named
    /// by their identity, which the caller compares with the one it meant to reach.
    pub fn verify_server(&self, cert: &CertificateDer<'_>) -> Result<PeerIdentity, Error> {
        self.verify_server_at(cert, UnixTime::now())
    }

    /// [`verify_server`](Self::verify_server) at a given time.
    pub fn verify_server_at(
        &self,
        cert: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Result<PeerIdentity, Error> {
        let parsed = ParsedCertificate::try_from(cert).map_err(Error::Untrusted)?;
        let algs = provider().signature_verification_algorithms;
        verify_server_cert_signed_by_trust_anchor(&parsed, &self.0.roots, &[], now, algs.all)
            .map_err(Error::Untrusted)?;
        Ok(PeerIdentity::from_cert_der(cert)?)
    }
}

/// What goes into a member's certificate. The CA takes only the public key from a signing
/// request: role, id, names and validity come from here, i.e. from the control plane, never
/// from what the member asked for.
#[derive(Debug, Clone)]
pub struct CertRequest {
    identity: PeerIdentity,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
    validity: Duration,
    valid_from: Option<SystemTime>,
}

impl CertRequest {
    /// How long a member's certificate is valid unless said otherwise.
    pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

    /// A certificate for `identity`, valid for [`Self::DEFAULT_VALIDITY`], with no names but
    /// its identity URI.
    pub fn new(identity: PeerIdentity) -> Self {
        Self {
            identity,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            validity: Self::DEFAULT_VALIDITY,
            valid_from: None,
        }
    }

    /// Adds a DNS name SAN.
    pub fn dns_name(mut self, name: impl Into<String>) -> Self {
        self.dns_names.push(name.into());
        self
    }

    /// Adds an IP address SAN.
    pub fn ip_address(mut self, ip: IpAddr) -> Self {
        self.ip_addresses.push(ip);
        self
    }

    /// Sets how long the certificate is valid from its start.
    pub fn validity(mut self, validity: Duration) -> Self {
        self.validity = validity;
        self
    }

    /// Sets when the certificate starts to be valid (default: five minutes before it is made,
    /// for clocks a little behind the CA's).
    pub fn valid_from(mut self, start: SystemTime) -> Self {
        self.valid_from = Some(start);
        self
    }

    /// The identity the certificate will record.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    fn params(&self) -> Result<CertificateParams, Error> {
        let mut params = subject_params(&self.identity, &self.dns_names, &self.ip_addresses)?;
        let start = self
            .valid_from
            .unwrap_or_else(|| SystemTime::now() - CLOCK_SKEW);
        params.not_before = start.into();
        params.not_after = (start + self.validity).into();
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

/// Subject and SANs of a member's certificate or signing request.
pub(crate) fn subject_params(
    identity: &PeerIdentity,
    dns_names: &[String],
    ip_addresses: &[IpAddr],
) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Paddock");
    dn.push(DnType::OrganizationalUnitName, identity.role.as_str());
    dn.push(DnType::CommonName, identity.id.as_str());
    params.distinguished_name = dn;
    params
        .subject_alt_names
        .push(SanType::URI(identity.uri().try_into()?));
    for name in dns_names {
        rustls::pki_types::DnsName::try_from(name.as_str())
            .map_err(|_| Error::InvalidDnsName(name.clone()))?;
        params
            .subject_alt_names
            .push(SanType::DnsName(name.clone().try_into()?));
    }
    for ip in ip_addresses {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut serial = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut serial);
    // A positive integer with no leading zero byte to strip: 16 bytes, top bit clear, nonzero.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&serial)
}

fn pem_of(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

/// PEM armour: `label`, base64 of `der` in 64-column lines.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 is ASCII, so every chunk is UTF-8.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// What the control plane hands a member that joined: its certificate and the CA's.
#[derive(Debug, Clone)]
pub struct JoinGrant {
    /// The member's certificate, PEM.
    pub cert_pem: String,
    /// The CA's certificate, PEM; the member checks it against its join token's fingerprint.
    pub ca_pem: String,
}

/// The cluster's CA: certificate and signing key, kept in the control plane's data directory
/// as `ca.pem` (0644) and `ca.key` (0600).
pub struct ClusterCa {
    cert: CaCert,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// The CA certificate's file name.
    pub const CERT_FILE: &'static str = "ca.pem";
    /// The CA key's file name.
    pub const KEY_FILE: &'static str = "ca.key";

    /// Loads the CA kept in `dir`, or makes one there if there is none. Returns whether it was
    /// made now (the control plane's first start). A `ca.key` without `ca.pem` is an error,
    /// never overwritten: it may be the key every member trusts.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), Error> {
        files::ensure_dir(dir)?;
        let cert_path = dir.join(Self::CERT_FILE);
        let key_path = dir.join(Self::KEY_FILE);
        if files::exists(&cert_path)? {
            return Ok((Self::load(dir)?, false));
        }
        if files::exists(&key_path)? {
            return Err(Error::Incomplete {
                present: key_path,
                missing: cert_path,
            });
        }
        Ok((Self::create(dir)?, true))
    }

    /// Loads the CA kept in `dir`: `ca.key` must be a regular file (not a symlink) of this user
    /// with mode 0600 or stricter, and belong to `ca.pem`.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let key_pem = files::read_secret(&dir.join(Self::KEY_FILE))?;
        let cert_pem = files::read_public(&dir.join(Self::CERT_FILE))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let cert = CaCert::from_pem(&cert_pem)?;
        let (_, parsed) = X509Certificate::from_der(cert.der()).map_err(|_| Error::NotCa)?;
        if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(Error::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(cert.der(), key)?;
        Ok(Self { cert, issuer })
    }

    /// Makes a new CA in `dir`: the key first (0600), then the certificate (0644), each written
    /// atomically, so `ca.pem` exists only beside its key.
    pub fn create(dir: &Path) -> Result<Self, Error> {
        files::ensure_dir(dir)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut tag = [0u8; 4];
        rand::rngs::OsRng.fill_bytes(&mut tag);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Paddock");
        dn.push(
            DnType::CommonName,
            format!("Paddock cluster CA {}", hex::encode(tag)),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + CA_VALIDITY).into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        files::write_atomic(
            &dir.join(Self::KEY_FILE),
            key.serialize_pem().as_bytes(),
            SECRET_MODE,
        )?;
        files::write_atomic(
            &dir.join(Self::CERT_FILE),
            cert.pem().as_bytes(),
            PUBLIC_MODE,
        )?;
        Ok(Self {
            cert: CaCert::from_der(cert.der().clone())?,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA's certificate.
    pub fn cert(&self) -> &CaCert {
        &self.cert
    }

    /// Signs a certificate for the public key of `csr_pem` (a PKCS#10 request, PEM, whose own
    /// signature must verify), with the role, id, names and validity of `request`; the
    /// request's subject and names are ignored. Returns the certificate, PEM.
    pub fn issue(&self, csr_pem: &str, request: &CertRequest) -> Result<String, Error> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(Error::Csr)?;
        let cert = request.params()?.signed_by(&csr.public_key, &self.issuer)?;
        Ok(cert.pem())
    }

    /// The join: checks `presented` against the cluster's join token (in constant time), then
    /// issues the certificate. A wrong token gets [`Error::TokenRefused`] and nothing is signed.
    pub fn admit(
        &self,
        token: &JoinToken,
        presented: &str,
        csr_pem: &str,
        request: &CertRequest,
    ) -> Result<JoinGrant, Error> {
        if !token.verify(presented) {
            return Err(Error::TokenRefused);
        }
        Ok(JoinGrant {
            cert_pem: self.issue(csr_pem, request)?,
            ca_pem: self.cert.pem().to_owned(),
        })
    }

    /// An identity made and signed here, for the control plane's own certificate (it presents
    /// it on the cluster port and to nodes): a new key, never sent anywhere.
    pub fn issue_member(&self, request: &CertRequest) -> Result<MemberIdentity, Error> {
        let key = MemberKey::generate()?;
        let csr = key.csr_pem(request.identity(), &[], &[])?;
        let cert_pem = self.issue(&csr, request)?;
        MemberIdentity::new(key, &cert_pem, self.cert.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::identity::{MemberId, Role};

    fn node(id: &str) -> PeerIdentity {
        PeerIdentity::new(Role::Node, MemberId::new(id).expect("id"))
    }

    #[test]
    fn creates_once_then_loads_the_same_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, created) = ClusterCa::load_or_create(dir.path()).expect("create");
        assert!(created);
        let (again, created) = ClusterCa::load_or_create(dir.path()).expect("load");
        assert!(!created);
        assert_eq!(ca.cert().fingerprint(), again.cert().fingerprint());
        let mode = |f: &str| {
            std::fs::metadata(dir.path().join(f))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(ClusterCa::KEY_FILE), 0o600);
        assert_eq!(mode(ClusterCa::CERT_FILE), 0o644);

        // A certificate the reloaded CA signs verifies against the original certificate.
        let member = again
            .issue_member(&CertRequest::new(node("n1")))
            .expect("issue");
        assert_eq!(
            ca.cert()
                .verify_client(member.cert_der())
                .expect("verifies"),
            node("n1")
        );
    }

    #[test]
    fn refuses_a_symlinked_or_open_key_and_an_orphan_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        ClusterCa::create(dir.path()).expect("create");
        let key = dir.path().join(ClusterCa::KEY_FILE);

        let elsewhere = dir.path().join("real.key");
        std::fs::rename(&key, &elsewhere).expect("move");
        std::os::unix::fs::symlink(&elsewhere, &key).expect("symlink");
        let err = ClusterCa::load(dir.path()).expect_err("symlink accepted");
        assert!(
            matches!(err, Error::File(files::FileError::Symlink(_))),
            "{err:?}"
        );

        std::fs::remove_file(&key).expect("unlink");
        std::fs::rename(&elsewhere, &key).expect("back");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = ClusterCa::load(dir.path()).expect_err("0640 accepted");
        assert!(
            matches!(err, Error::File(files::FileError::OpenToOthers { .. })),
            "{err:?}"
        );

        std::fs::remove_file(dir.path().join(ClusterCa::CERT_FILE)).expect("rm pem");
        let err = ClusterCa::load_or_create(dir.path()).expect_err("orphan key overwritten");
        assert!(matches!(err, Error::Incomplete { .. }), "{err:?}");
    }

    #[test]
    fn refuses_a_key_of_another_ca() {
        let one = tempfile::tempdir().expect("tempdir");
        let two = tempfile::tempdir().expect("tempdir");
        ClusterCa::create(one.path()).expect("one");
        ClusterCa::create(two.path()).expect("two");
        std::fs::copy(
            two.path().join(ClusterCa::KEY_FILE),
            one.path().join(ClusterCa::KEY_FILE),
        )
        .expect("copy");
        let err = ClusterCa::load(one.path()).expect_err("mismatched key accepted");
        assert!(matches!(err, Error::KeyMismatch), "{err:?}");
    }

    #[test]
    fn the_control_plane_decides_what_a_certificate_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::create(dir.path()).expect("create");
        let key = MemberKey::generate().expect("key");
        // The member asks to be the api; the control plane makes it node n7.
        let api = PeerIdentity::new(Role::Api, MemberId::new("api").expect("id"));
        let csr = key
            .csr_pem(&api, &["api.example".into()], &[])
            .expect("csr");
        let request = CertRequest::new(node("n7"))
            .dns_name("n7.cluster.internal")
            .ip_address("10.0.0.7".parse().expect("ip"));
        let pem = ca.issue(&csr, &request).expect("issue");
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
        assert_eq!(ca.cert().verify_server(&der).expect("server"), node("n7"));

        let (_, cert) = X509Certificate::from_der(&der).expect("parse");
        let san = cert.subject_alternative_name().expect("san").expect("some");
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "URI(paddock://node/n7)",
                "DNSName(n7.cluster.internal)",
                "IPAddress(0a:00:00:07)",
            ]
        );
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86400;
        assert_eq!(days, 365);
        assert!(!cert.is_ca());
    }

    #[test]
    fn refuses_bad_names_and_forged_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::create(dir.path()).expect("create");
        let key = MemberKey::generate().expect("key");
        let csr = key.csr_pem(&node("n1"), &[], &[]).expect("csr");
        let bad = CertRequest::new(node("n1")).dns_name("not a name");
        assert!(matches!(
            ca.issue(&csr, &bad),
            Err(Error::InvalidDnsName(_))
        ));
        // Flip a byte of the request's signature: its proof of possession fails.
        let mut der =
            rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
                .expect("pem")
                .as_ref()
                .to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        let forged = pem_encode("CERTIFICATE REQUEST", &der);
        assert!(matches!(
            ca.issue(&forged, &CertRequest::new(node("n1"))),
            Err(Error::Csr(_))
        ));
    }
}
