//! Sandbox logs (`GET /sandboxes/{id}/logs`, `GET /v2/sandboxes/{id}/logs`): what they hold,
//! how they are queried and how they look on the wire.
//!
//! Two sources, kept apart because they are not equally trustworthy:
//! - **control plane** (`source: control-plane`, logger `lifecycle`): the lifecycle records this
//!   crate writes itself (created, running, paused, resumed, stopping with its reason: killed by
//!   request, timeout reached..., stopped; or `error` when it ended unasked: exited by itself, ran
//!   out of memory, node lost), stored in SQLite next to the sandbox
//!   record ([`crate::Store::append_sandbox_log`]) and deleted with it. A sandbox cannot touch
//!   them.
//! - **envd** (`source: envd`): envd's own JSON-lines log (envd start, every process start and
//!   end with pid, command, user, tag, exit code or signal, OOM kills), read by the node from the
//!   sandbox's run directory (or the copy it keeps after a stop) through
//!   [`paddock_node_contract::Node::envd_logs`]. This is the sandbox's word: a sandbox with root can write
//!   anything there, but never an entry labelled `control-plane`.
//!
//! Queries ([`LogQuery`], [`select`]): entries are merged by time; `cursor` (v2) / `start` (v1)
//! are Unix milliseconds, inclusive; `forward` returns entries at or after the cursor, oldest
//! first, `backward` entries at or before it (default: now), newest first; `level` is a minimum;
//! `search` is a case-sensitive substring of the message; `limit` (0..=1000, default 1000)
//! applies after the filters. Paging: ask again with the last timestamp + 1 ms (forward) or
//! - 1 ms (backward).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use paddock_domain::{Resources, SandboxId, SandboxState};
use paddock_node_contract::logs::{LogEntry, LogLevel};
use serde::Serialize;

use crate::error::ApiError;
use crate::lifecycle::{Core, Error};
use crate::store::TeamId;

/// Largest (and default) number of entries per response.
pub const MAX_LIMIT: usize = 1000;
/// Longest `search` string accepted.
pub const MAX_SEARCH: usize = 256;

/// Paging direction (v2 `direction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Oldest first, from the cursor on.
    #[default]
    Forward,
    /// Newest first, from the cursor back.
    Backward,
}

/// A validated logs query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    /// Unix ms, inclusive; `None` = the beginning (forward) or now (backward).
    pub cursor_ms: Option<i64>,
    /// Most entries returned.
    pub limit: usize,
    /// Paging direction.
    pub direction: Direction,
    /// Minimum level.
    pub min_level: Option<LogLevel>,
    /// Substring the message must contain.
    pub search: Option<String>,
}

impl Default for LogQuery {
    fn default() -> Self {
        LogQuery {
            cursor_ms: None,
            limit: MAX_LIMIT,
            direction: Direction::Forward,
            min_level: None,
            search: None,
        }
    }
}

fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(msg)
}

fn parse_ms(name: &str, value: &str) -> Result<i64, ApiError> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| {
            bad(format!(
                "{name} must be a non-negative integer (Unix milliseconds), got {value:?}"
            ))
        })
}

fn parse_limit(value: &str) -> Result<usize, ApiError> {
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|v| *v <= MAX_LIMIT)
        .ok_or_else(|| {
            bad(format!(
                "limit must be between 0 and {MAX_LIMIT}, got {value:?}"
            ))
        })
}

/// Parses the v1 query (`start`, `limit`); other parameters are ignored.
pub fn parse_v1(pairs: &[(String, String)]) -> Result<LogQuery, ApiError> {
    let mut q = LogQuery::default();
    for (name, value) in pairs {
        match name.as_str() {
            "start" => q.cursor_ms = Some(parse_ms("start", value)?),
            "limit" => q.limit = parse_limit(value)?,
            _ => {}
        }
    }
    Ok(q)
}

/// Parses the v2 query (`cursor`, `limit`, `direction`, `level`, `search`); other parameters
/// are ignored.
pub fn parse_v2(pairs: &[(String, String)]) -> Result<LogQuery, ApiError> {
    let mut q = LogQuery::default();
    for (name, value) in pairs {
        match name.as_str() {
            "cursor" => q.cursor_ms = Some(parse_ms("cursor", value)?),
            "limit" => q.limit = parse_limit(value)?,
            "direction" => {
                q.direction = match value.as_str() {
                    "forward" => Direction::Forward,
                    "backward" => Direction::Backward,
                    other => {
                        return Err(bad(format!(
                            "direction must be forward or backward, got {other:?}"
                        )))
                    }
                }
            }
            "level" => {
                q.min_level = Some(LogLevel::parse(value).ok_or_else(|| {
                    bad(format!(
                        "level must be one of debug, info, warn, error, got {value:?}"
                    ))
                })?)
            }
            "search" if value.len() > MAX_SEARCH => {
                return Err(bad(format!(
                    "search must be at most {MAX_SEARCH} bytes long"
                )))
            }
            "search" if !value.is_empty() => q.search = Some(value.clone()),
            _ => {}
        }
    }
    Ok(q)
}

/// Applies `q` to `entries` (in any order): filters, orders by time in the query's direction
/// (equal times keep their given order), pages.
pub fn select(mut entries: Vec<LogEntry>, q: &LogQuery) -> Vec<LogEntry> {
    entries.sort_by_key(|e| e.timestamp);
    let in_range = |e: &LogEntry| {
        let ms = e.timestamp.timestamp_millis();
        match (q.direction, q.cursor_ms) {
            (_, None) => true,
            (Direction::Forward, Some(c)) => ms >= c,
            (Direction::Backward, Some(c)) => ms <= c,
        }
    };
    let wanted = |e: &LogEntry| {
        in_range(e)
            && q.min_level.is_none_or(|min| e.level >= min)
            && q.search.as_deref().is_none_or(|s| e.message.contains(s))
    };
    match q.direction {
        Direction::Forward => entries.into_iter().filter(wanted).take(q.limit).collect(),
        Direction::Backward => entries
            .into_iter()
            .rev()
            .filter(wanted)
            .take(q.limit)
            .collect(),
    }
}

/// `SandboxLogEntry`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WireEntry {
    /// RFC 3339, milliseconds.
    pub timestamp: String,
    /// The text.
    pub message: String,
    /// `debug|info|warn|error`.
    pub level: &'static str,
    /// Details, all strings.
    pub fields: BTreeMap<String, String>,
}

impl From<&LogEntry> for WireEntry {
    fn from(e: &LogEntry) -> Self {
        WireEntry {
            timestamp: rfc3339(e.timestamp),
            message: e.message.clone(),
            level: e.level.as_str(),
            fields: e.fields.clone(),
        }
    }
}

/// `SandboxLog` (v1 `logs[]`): a timestamp and a JSON `line`, as the E2B CLI prints it: it
/// parses `line`, reads `level` (required) and filters on `logger`, and shows the other keys.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WireLine {
    /// RFC 3339, milliseconds.
    pub timestamp: String,
    /// The entry as one JSON object: its fields plus `level`, `logger` and `message`.
    pub line: String,
}

impl From<&LogEntry> for WireLine {
    fn from(e: &LogEntry) -> Self {
        let mut obj: serde_json::Map<String, serde_json::Value> = e
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        obj.insert("level".into(), e.level.as_str().into());
        obj.insert("message".into(), e.message.clone().into());
        obj.entry("logger")
            .or_insert_with(|| serde_json::Value::String("lifecycle".into()));
        WireLine {
            timestamp: rfc3339(e.timestamp),
            line: serde_json::Value::Object(obj).to_string(),
        }
    }
}

/// The v1 response body.
#[derive(Debug, Serialize)]
pub struct LogsV1 {
    /// One JSON line per entry.
    pub logs: Vec<WireLine>,
    /// The same entries, structured.
    #[serde(rename = "logEntries")]
    pub log_entries: Vec<WireEntry>,
}

/// The v2 response body.
#[derive(Debug, Serialize)]
pub struct LogsV2 {
    /// The entries.
    pub logs: Vec<WireEntry>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A control-plane entry stamped now.
fn control_entry(level: LogLevel, message: String, event: &str) -> LogEntry {
    let mut fields = BTreeMap::new();
    fields.insert("source".into(), "control-plane".into());
    fields.insert("logger".into(), "lifecycle".into());
    fields.insert("event".into(), event.into());
    LogEntry {
        timestamp: Utc::now(),
        level,
        message,
        fields,
    }
}

fn put_resources(entry: &mut LogEntry, r: &Resources) {
    entry
        .fields
        .insert("cpuCount".into(), r.cpu_count.to_string());
    entry
        .fields
        .insert("memoryMB".into(), r.memory_mb.to_string());
    entry
        .fields
        .insert("diskSizeMB".into(), r.disk_mb.to_string());
}

/// The record of a create request.
pub(crate) fn created_entry(
    template: &str,
    alias: Option<&str>,
    resources: &Resources,
    timeout_secs: i64,
) -> LogEntry {
    let mut e = control_entry(
        LogLevel::Info,
        format!("sandbox created from template {template}"),
        "created",
    );
    e.fields.insert("template".into(), template.into());
    if let Some(alias) = alias {
        e.fields.insert("alias".into(), alias.into());
    }
    e.fields
        .insert("timeoutSeconds".into(), timeout_secs.to_string());
    put_resources(&mut e, resources);
    e
}

/// The record of a sandbox that started running with `resources`.
pub(crate) fn running_entry(resources: &Resources) -> LogEntry {
    let mut e = control_entry(LogLevel::Info, "sandbox running".into(), "state_change");
    e.fields.insert("from".into(), "creating".into());
    e.fields.insert("to".into(), "running".into());
    put_resources(&mut e, resources);
    e
}

/// The record of a state change.
pub(crate) fn state_change_entry(
    from: SandboxState,
    to: SandboxState,
    reason: Option<&str>,
) -> LogEntry {
    let what = match (from, to) {
        (SandboxState::Paused, SandboxState::Running) => "resumed".to_string(),
        (_, to) => to.to_string(),
    };
    let message = match reason {
        Some(r) if !r.is_empty() => format!("sandbox {what}: {r}"),
        _ => format!("sandbox {what}"),
    };
    let level = if to == SandboxState::Error {
        LogLevel::Error
    } else {
        LogLevel::Info
    };
    let mut e = control_entry(level, message, "state_change");
    e.fields.insert("from".into(), from.to_string());
    e.fields.insert("to".into(), to.to_string());
    if let Some(r) = reason.filter(|r| !r.is_empty()) {
        e.fields.insert("reason".into(), r.into());
    }
    e
}

impl Core {
    /// Appends a control-plane entry to a sandbox's log. Best effort: a failure is logged and
    /// never fails the operation being recorded.
    pub(crate) async fn record_log(&self, id: &SandboxId, entry: LogEntry) {
        if let Err(e) = self.store.append_sandbox_log(id, &entry).await {
            tracing::warn!(sandbox_id = %id, error = %crate::error::chain(&e), "recording a sandbox log entry failed");
        }
    }

    /// Every log entry of one of the team's sandboxes, whatever its state (a stopped sandbox
    /// whose record is kept still has its logs), unsorted.
    pub(crate) async fn sandbox_logs(
        &self,
        team: &TeamId,
        id: &SandboxId,
    ) -> Result<Vec<LogEntry>, Error> {
        match self.store.sandbox(id).await? {
            Some(rec) if &rec.team_id == team => {}
            _ => return Err(Error::SandboxNotFound(id.to_string())),
        }
        let mut entries = self.store.sandbox_logs(id).await?;
        match self.node.envd_logs(id).await {
            Ok(envd) => entries.extend(envd),
            Err(e) => {
                let reason = crate::error::chain(&e);
                tracing::warn!(sandbox_id = %id, error = %reason, "reading envd's log failed");
                let mut note = control_entry(
                    LogLevel::Warn,
                    format!("envd's log could not be read: {reason}"),
                    "envd_log_unavailable",
                );
                note.fields.insert("reason".into(), reason);
                entries.push(note);
            }
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn pairs(q: &str) -> Vec<(String, String)> {
        crate::routes::query::parse_pairs(q).expect("valid query")
    }

    fn entry(ms: i64, level: LogLevel, message: &str) -> LogEntry {
        LogEntry {
            timestamp: Utc.timestamp_millis_opt(ms).single().expect("valid"),
            level,
            message: message.into(),
            fields: BTreeMap::new(),
        }
    }

    fn messages(entries: &[LogEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.message.as_str()).collect()
    }

    #[test]
    fn v1_query_parses_and_rejects_bad_values() {
        assert_eq!(parse_v1(&[]).expect("defaults"), LogQuery::default());
        let q = parse_v1(&pairs("start=1700000000000&limit=5&other=x")).expect("valid");
        assert_eq!((q.cursor_ms, q.limit), (Some(1_700_000_000_000), 5));
        for bad in ["start=abc", "start=-1", "limit=1001", "limit=-3", "limit=x"] {
            let err = parse_v1(&pairs(bad)).expect_err(bad);
            assert!(matches!(err, ApiError::BadRequest(_)), "{bad}");
        }
    }

    #[test]
    fn v2_query_parses_and_rejects_bad_values() {
        let q = parse_v2(&pairs(
            "cursor=10&limit=0&direction=backward&level=WARN&search=exit+status",
        ))
        .expect("valid");
        assert_eq!(
            q,
            LogQuery {
                cursor_ms: Some(10),
                limit: 0,
                direction: Direction::Backward,
                min_level: Some(LogLevel::Warn),
                search: Some("exit status".into()),
            }
        );
        assert_eq!(parse_v2(&pairs("search=")).expect("empty").search, None);
        let long = format!("search={}", "a".repeat(MAX_SEARCH + 1));
        for bad in [
            "direction=up",
            "level=loud",
            "cursor=1.5",
            "limit=100000",
            long.as_str(),
        ] {
            assert!(parse_v2(&pairs(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn forward_pages_from_the_cursor_oldest_first() {
        let entries = vec![
            entry(30, LogLevel::Info, "c"),
            entry(10, LogLevel::Info, "a"),
            entry(20, LogLevel::Info, "b"),
            entry(20, LogLevel::Info, "b2"),
        ];
        let all = select(entries.clone(), &LogQuery::default());
        assert_eq!(messages(&all), ["a", "b", "b2", "c"], "stable by time");
        let page = LogQuery {
            cursor_ms: Some(20),
            limit: 2,
            ..LogQuery::default()
        };
        assert_eq!(messages(&select(entries.clone(), &page)), ["b", "b2"]);
        // The next page starts after the last timestamp seen.
        let next = LogQuery {
            cursor_ms: Some(21),
            ..page
        };
        assert_eq!(messages(&select(entries, &next)), ["c"]);
    }

    #[test]
    fn backward_pages_newest_first_up_to_the_cursor() {
        let entries = vec![
            entry(10, LogLevel::Info, "a"),
            entry(20, LogLevel::Info, "b"),
            entry(30, LogLevel::Info, "c"),
        ];
        let q = LogQuery {
            direction: Direction::Backward,
            limit: 2,
            ..LogQuery::default()
        };
        assert_eq!(messages(&select(entries.clone(), &q)), ["c", "b"]);
        let q = LogQuery {
            cursor_ms: Some(19),
            ..q
        };
        assert_eq!(messages(&select(entries, &q)), ["a"]);
    }

    #[test]
    fn level_and_search_filter_before_the_limit() {
        let entries = vec![
            entry(1, LogLevel::Debug, "process started: ls"),
            entry(2, LogLevel::Info, "process ended: ls (exit status 0)"),
            entry(3, LogLevel::Warn, "process ended: grep (exit status 1)"),
            entry(4, LogLevel::Error, "sandbox error: exited"),
        ];
        let q = LogQuery {
            min_level: Some(LogLevel::Warn),
            limit: 1,
            ..LogQuery::default()
        };
        assert_eq!(
            messages(&select(entries.clone(), &q)),
            ["process ended: grep (exit status 1)"]
        );
        let q = LogQuery {
            search: Some("ls".into()),
            ..LogQuery::default()
        };
        assert_eq!(select(entries.clone(), &q).len(), 2);
        let q = LogQuery {
            search: Some("LS".into()),
            ..LogQuery::default()
        };
        assert!(select(entries, &q).is_empty(), "search is case-sensitive");
    }

    #[test]
    fn wire_shapes_match_the_spec_and_the_cli() {
        let mut e = entry(1_700_000_000_123, LogLevel::Warn, "process ended: false");
        e.fields.insert("exit_code".into(), "1".into());
        e.fields.insert("logger".into(), "processSvc".into());
        let wire = serde_json::to_value(WireEntry::from(&e)).expect("json");
        assert_eq!(
            wire,
            serde_json::json!({
                "timestamp": "2023-11-14T22:13:20.123Z",
                "message": "process ended: false",
                "level": "warn",
                "fields": {"exit_code": "1", "logger": "processSvc"}
            })
        );
        let line = WireLine::from(&e);
        assert_eq!(line.timestamp, "2023-11-14T22:13:20.123Z");
        let parsed: serde_json::Value = serde_json::from_str(&line.line).expect("line is JSON");
        assert_eq!(parsed["level"], "warn");
        assert_eq!(parsed["logger"], "processSvc");
        assert_eq!(parsed["message"], "process ended: false");
        assert_eq!(parsed["exit_code"], "1");
        // Entries without a logger still give the CLI one to filter on.
        let bare = WireLine::from(&entry(0, LogLevel::Info, "x"));
        let parsed: serde_json::Value = serde_json::from_str(&bare.line).expect("JSON");
        assert_eq!(parsed["logger"], "lifecycle");
    }

    #[test]
    fn lifecycle_records_say_what_happened() {
        use SandboxState::*;
        let e = state_change_entry(Running, Stopping, Some("killed by request"));
        assert_eq!(e.message, "sandbox stopping: killed by request");
        assert_eq!(e.level, LogLevel::Info);
        assert_eq!(e.fields["source"], "control-plane");
        assert_eq!(e.fields["reason"], "killed by request");
        assert_eq!(
            (e.fields["from"].as_str(), e.fields["to"].as_str()),
            ("running", "stopping")
        );
        assert_eq!(
            state_change_entry(Paused, Running, None).message,
            "sandbox resumed"
        );
        assert_eq!(
            state_change_entry(Running, Paused, None).message,
            "sandbox paused"
        );
        let e = state_change_entry(Running, Error, Some("sandbox exited by itself"));
        assert_eq!(e.level, LogLevel::Error);
        let res = Resources::default();
        let e = created_entry("base", Some("base"), &res, 300);
        assert_eq!(e.fields["template"], "base");
        assert_eq!(e.fields["timeoutSeconds"], "300");
        assert_eq!(e.fields["memoryMB"], res.memory_mb.to_string());
        assert_eq!(running_entry(&res).fields["to"], "running");
    }
}
