//! Identifier newtypes. Sandbox ids follow the E2B shape (`i` + 20 chars of `[a-z0-9]`) and are
//! validated on every boundary so they can be used safely in paths and cgroup names.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// The sandbox id is empty, too long or has characters outside `[a-z0-9]`.
    #[error("invalid sandbox id {0:?}: expected 1-64 characters of [a-z0-9]")]
    Sandbox(String),
    /// The template name has characters outside `[a-z0-9._-]` or a bad length.
    #[error("invalid template name {0:?}: expected 1-64 characters of [a-z0-9._-], starting with a letter or digit")]
    Template(String),
}

/// A sandbox identifier, e.g. `i3k9x0q2m4n6b8v1c5z7`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxId(String);

impl SandboxId {
    /// Generates a fresh random id.
    pub fn generate() -> Self {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::thread_rng();
        let mut s = String::with_capacity(21);
        s.push('i');
        for _ in 0..20 {
            s.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
        }
        SandboxId(s)
    }

    /// Parses an id as it arrives on the wire. A historical `<id>-<clientID>` suffix is stripped.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let id = raw.split('-').next().unwrap_or_default();
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(IdError::Sandbox(raw.to_string()));
        }
        Ok(SandboxId(id.to_string()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SandboxId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        SandboxId::parse(&s)
    }
}

impl From<SandboxId> for String {
    fn from(id: SandboxId) -> String {
        id.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SandboxId({})", self.0)
    }
}

/// A template name such as `base`; also used as a directory name on the node.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TemplateName(String);

impl TemplateName {
    /// Validates a template name. A `:default` tag suffix is accepted and dropped; a
    /// `namespace/` prefix is rejected by the caller before this (one team per node for now).
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let name = raw.strip_suffix(":default").unwrap_or(raw);
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && name.as_bytes()[0].is_ascii_alphanumeric();
        if !ok {
            return Err(IdError::Template(raw.to_string()));
        }
        Ok(TemplateName(name.to_string()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TemplateName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        TemplateName::parse(&s)
    }
}

impl From<TemplateName> for String {
    fn from(t: TemplateName) -> String {
        t.0
    }
}

impl fmt::Display for TemplateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TemplateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TemplateName({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_e2b_shape() {
        let id = SandboxId::generate();
        assert_eq!(id.as_str().len(), 21);
        assert!(id.as_str().starts_with('i'));
        assert_eq!(SandboxId::parse(id.as_str()), Ok(id));
    }

    #[test]
    fn sandbox_id_rejects_bad_input_and_strips_client_suffix() {
        assert!(SandboxId::parse("").is_err());
        assert!(SandboxId::parse("../etc").is_err());
        assert!(SandboxId::parse("ABC").is_err());
        assert_eq!(
            SandboxId::parse("abc123-6532622b").map(String::from),
            Ok("abc123".into())
        );
    }

    #[test]
    fn template_names() {
        assert_eq!(
            TemplateName::parse("base:default").map(String::from),
            Ok("base".into())
        );
        assert!(TemplateName::parse("code-interpreter-v1").is_ok());
        assert!(TemplateName::parse("team/x").is_err());
        assert!(TemplateName::parse(".hidden").is_err());
        assert!(TemplateName::parse("").is_err());
    }
}
