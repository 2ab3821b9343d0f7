//! Log entries as the node hands them over: a sandbox's envd log and a build's log share the
//! severity scale.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// Severity of a log entry, ordered from `Debug` to `Error` (sandbox logs and build logs).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// `debug`.
    Debug,
    /// `info`.
    Info,
    /// `warn`.
    Warn,
    /// `error`.
    Error,
}

impl LogLevel {
    /// Parses `debug|info|warn|error` (any case; `warning` and `trace` are accepted too).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "debug" | "trace" => Some(LogLevel::Debug),
            "info" => Some(LogLevel::Info),
            "warn" | "warning" => Some(LogLevel::Warn),
            "error" => Some(LogLevel::Error),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// One sandbox log entry (`SandboxLogEntry` on the wire).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogEntry {
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// Severity.
    pub level: LogLevel,
    /// Human-readable text.
    pub message: String,
    /// Structured details; always has `source` (`envd` or `control-plane`) and `logger`.
    pub fields: BTreeMap<String, String>,
}
