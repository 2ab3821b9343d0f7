//! Placeholder: template store (being written).
/// Template store errors.
#[derive(Debug, thiserror::Error)]
#[error("template error")]
pub struct TemplateError;
