//! Who a cluster member is: its [`Role`] (api, node, proxy) and [`MemberId`], and how the pair is
//! written into and read back from a certificate. The certificate's one authoritative record is
//! a URI subject alternative name `paddock://<role>/<id>`; the subject's CN (the id) and OU (the
//! role) repeat it for people reading the certificate and must agree with it. Verifying the
//! certificate against the CA is [`crate::CaCert`]'s job; this module only parses.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// URI scheme of the SAN that records a member's role and id.
pub const URI_SCHEME: &str = "paddock://";
/// Longest member id.
pub const MAX_ID_LEN: usize = 64;

/// Why a name or a certificate does not carry a valid cluster identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The id is empty, too long or has a character outside `[A-Za-z0-9._-]`.
    #[error("invalid member id {0:?}: 1 to {MAX_ID_LEN} characters of [A-Za-z0-9._-], starting with a letter or digit")]
    InvalidId(String),
    /// Not one of `api`, `node`, `proxy`.
    #[error("unknown member role {0:?}")]
    UnknownRole(String),
    /// The certificate is not DER X.509.
    #[error("certificate does not parse")]
    Unparsable,
    /// The certificate has no `paddock://` URI, or more than one.
    #[error("certificate carries {0} paddock:// identities, not exactly one")]
    UriCount(usize),
    /// The URI is not `paddock://<role>/<id>`.
    #[error("malformed identity URI {0:?}")]
    MalformedUri(String),
    /// The subject's CN or OU disagrees with the URI.
    #[error("certificate subject does not match its identity {0}")]
    SubjectMismatch(PeerIdentity),
}

/// What a member is in the cluster. Recorded in its certificate; the services decide from it
/// which calls a peer may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The control plane (`paddock api`).
    Api,
    /// A host that runs sandboxes (`paddock node`).
    Node,
    /// The edge proxy (`paddock proxy`).
    Proxy,
}

impl Role {
    /// The role's name in certificates and URIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Node => "node",
            Role::Proxy => "proxy",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "api" => Ok(Role::Api),
            "node" => Ok(Role::Node),
            "proxy" => Ok(Role::Proxy),
            other => Err(IdentityError::UnknownRole(other.to_owned())),
        }
    }
}

/// A member's id: 1 to 64 characters of `[A-Za-z0-9._-]`, starting with a letter or digit, so
/// it fits a URI path segment, a CN and a file name without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(String);

impl MemberId {
    /// Checks and wraps an id.
    pub fn new(id: impl Into<String>) -> Result<Self, IdentityError> {
        let id = id.into();
        let valid = (1..=MAX_ID_LEN).contains(&id.len())
            && id.starts_with(|c: char| c.is_ascii_alphanumeric())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if valid {
            Ok(Self(id))
        } else {
            Err(IdentityError::InvalidId(id))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MemberId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A member's identity: role and id, as its certificate records them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// What the member is.
    pub role: Role,
    /// Which one it is.
    pub id: MemberId,
}

impl PeerIdentity {
    /// Pairs a role and an id.
    pub fn new(role: Role, id: MemberId) -> Self {
        Self { role, id }
    }

    /// The identity's URI, `paddock://<role>/<id>`.
    pub fn uri(&self) -> String {
        format!("{URI_SCHEME}{}/{}", self.role, self.id)
    }

    /// Parses `paddock://<role>/<id>`.
    pub fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::MalformedUri(uri.to_owned());
        let rest = uri.strip_prefix(URI_SCHEME).ok_or_else(malformed)?;
        let (role, id) = rest.split_once('/').ok_or_else(malformed)?;
        Ok(Self {
            role: role.parse()?,
            id: MemberId::new(id)?,
        })
    }

    /// Reads the identity a certificate (DER) records, without verifying the certificate.
    pub(crate) fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparsable)?;
        let uris: Vec<&str> = match cert
            .subject_alternative_name()
            .map_err(|_| IdentityError::Unparsable)?
        {
            Some(san) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) if uri.starts_with(URI_SCHEME) => Some(*uri),
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        let [uri] = uris.as_slice() else {
            return Err(IdentityError::UriCount(uris.len()));
        };
        let identity = Self::from_uri(uri)?;
        let subject = cert.subject();
        let all_equal = |values: Vec<Option<&str>>, want: &str| {
            !values.is_empty() && values.iter().all(|v| *v == Some(want))
        };
        let cns = subject
            .iter_common_name()
            .map(|a| a.as_str().ok())
            .collect();
        let ous = subject
            .iter_organizational_unit()
            .map(|a| a.as_str().ok())
            .collect();
        if !all_equal(cns, identity.id.as_str()) || !all_equal(ous, identity.role.as_str()) {
            return Err(IdentityError::SubjectMismatch(identity));
        }
        Ok(identity)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for good in ["node-1", "a", "N0de_2.x", &"a".repeat(MAX_ID_LEN)] {
            assert!(MemberId::new(good).is_ok(), "{good} refused");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "a/b",
            "a b",
            "é",
            "a:b",
            &"a".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(MemberId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn uris_round_trip_and_malformed_ones_are_refused() {
        let id = PeerIdentity::new(Role::Node, MemberId::new("n1").expect("id"));
        assert_eq!(id.uri(), "paddock://node/n1");
        assert_eq!(PeerIdentity::from_uri(&id.uri()).expect("parse"), id);
        for bad in [
            "paddock://node",
            "paddock://king/n1",
            "paddock://node/n1/x",
            "https://node/n1",
            "paddock://node/",
        ] {
            assert!(PeerIdentity::from_uri(bad).is_err(), "{bad} accepted");
        }
    }
}
