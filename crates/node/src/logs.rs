//! envd's records in the sandbox logs: reading and parsing `<state dir>/envd.log` (the JSON
//! lines of `paddock_envd::logging`), and keeping a copy of it after the sandbox stops.
//!
//! Trust: the log is in the host-only state directory, but its lines are what envd (run by
//! sandbox root) wrote, so everything read here is the sandbox's word. Every entry is labelled
//! `source: envd` (whatever the line says), the file is opened without following symlinks and
//! only if it is a regular file with one link (a second wall: the sandbox cannot reach the
//! directory), and reads are bounded to the last [`TAIL_BYTES`] of the
//! file (a sandbox cannot make the node load an unbounded file into memory). Lines that are not
//! envd JSON records (e.g. a panic message) are skipped.
//!
//! After a stop the node copies the log's tail to `<data dir>/sandbox-logs/<id>.envd.log`
//! ([`archive`]), outside any sandbox's reach, before the state directory is removed; copies
//! older than [`ARCHIVE_MAX_AGE`] are deleted by an archive at most every [`PRUNE_EVERY`] (the control plane forgets
//! stopped sandboxes after 7 days, and serves logs only for sandboxes it still has).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use paddock_domain::SandboxId;

/// How much of the end of an envd log is read (and archived).
pub const TAIL_BYTES: u64 = 4 << 20;
/// How long archived envd logs are kept.
pub const ARCHIVE_MAX_AGE: Duration = Duration::from_secs(8 * 24 * 3600);
/// Longest message kept from an envd line (longer ones are cut).
const MAX_MESSAGE: usize = 4096;
/// Most fields kept from an envd line.
const MAX_FIELDS: usize = 64;

pub use paddock_node_contract::logs::{LogEntry, LogLevel};

/// Failures reading or archiving an envd log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log path is not a plain file (a symlink, a FIFO, a hard link...).
    #[error("{0} is not a regular file; refusing to read it")]
    NotRegular(PathBuf),
    /// I/O failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> LogError {
    move |source| LogError::Io { context, source }
}

/// The live envd log of the sandbox whose state directory is `state_dir`.
pub fn envd_log_path(state_dir: &Path) -> PathBuf {
    state_dir.join(paddock_sandbox::ENVD_LOG_FILE)
}

/// Where archived envd logs live: `sandbox-logs` beside the sandboxes directory.
pub fn archive_dir(sandboxes_dir: &Path) -> PathBuf {
    sandboxes_dir.with_file_name("sandbox-logs")
}

/// The archived envd log of `id`.
pub fn archive_path(archive_dir: &Path, id: &SandboxId) -> PathBuf {
    archive_dir.join(format!("{}.envd.log", id.as_str()))
}

/// The logger name shown for an envd target (the E2B CLI filters on its prefix).
fn logger_for(target: &str) -> &'static str {
    if target.starts_with("paddock_envd::process") {
        "processSvc"
    } else if target.starts_with("paddock_envd::filesystem")
        || target.starts_with("paddock_envd::files")
    {
        "filesystemSvc"
    } else {
        "envd"
    }
}

fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Parses one envd JSON line; `None` for anything else.
pub fn parse_line(line: &str) -> Option<LogEntry> {
    let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    let obj = value.as_object()?;
    let timestamp = DateTime::parse_from_rfc3339(obj.get("ts")?.as_str()?)
        .ok()?
        .with_timezone(&Utc);
    let level = obj
        .get("level")
        .and_then(|l| l.as_str())
        .and_then(LogLevel::parse)
        .unwrap_or(LogLevel::Info);
    let message = match obj.get("message") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let mut fields = BTreeMap::new();
    if let Some(map) = obj.get("fields").and_then(|f| f.as_object()) {
        for (key, value) in map.iter().take(MAX_FIELDS) {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            fields.insert(cut(key.clone(), 128), cut(text, MAX_MESSAGE));
        }
    }
    let target = obj.get("target").and_then(|t| t.as_str()).unwrap_or("");
    // Set last: a line cannot pass itself off as the control plane.
    fields.insert("logger".into(), logger_for(target).into());
    fields.insert("source".into(), "envd".into());
    Some(LogEntry {
        timestamp,
        level,
        message: cut(message, MAX_MESSAGE),
        fields,
    })
}

/// Parses the lines of a log tail; when `partial_start`, the first line may be cut and is
/// dropped.
pub fn parse_tail(bytes: &[u8], partial_start: bool) -> Vec<LogEntry> {
    let mut text = String::from_utf8_lossy(bytes);
    if partial_start {
        text = match text.find('\n') {
            Some(i) => text[i + 1..].to_string().into(),
            None => "".into(),
        };
    }
    text.lines().filter_map(parse_line).collect()
}

/// The last `max` bytes of the file at `path` and whether the file is longer than that;
/// `None` when it does not exist. Opened through [`paddock_sandbox::hostfile`]: a regular file
/// with a single link, no symlink followed, no FIFO blocked on.
pub fn read_tail(path: &Path, max: u64) -> Result<Option<(Vec<u8>, bool)>, LogError> {
    paddock_sandbox::hostfile::read_tail(path, max).map_err(|e| {
        if e.raw_os_error() == Some(nix::libc::ELOOP) || e.kind() == std::io::ErrorKind::InvalidData
        {
            LogError::NotRegular(path.to_path_buf())
        } else {
            io_err(format!("reading {}", path.display()))(e)
        }
    })
}

/// envd's entries for a sandbox: from its live log while its state directory exists, else from
/// the archived copy; empty when there is neither.
pub fn read_envd_logs(
    state_dir: &Path,
    archive_dir: &Path,
    id: &SandboxId,
) -> Result<Vec<LogEntry>, LogError> {
    for path in [envd_log_path(state_dir), archive_path(archive_dir, id)] {
        if let Some((bytes, partial)) = read_tail(&path, TAIL_BYTES)? {
            return Ok(parse_tail(&bytes, partial));
        }
    }
    Ok(Vec::new())
}

/// How often [`archive`] looks for archived logs to delete: the look lists and stats every kept
/// log (up to [`ARCHIVE_MAX_AGE`] of sandboxes), far too much to do for every sandbox that ends.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Whether `archive_dir` is due a prune (none in this process yet, or the last one is
/// [`PRUNE_EVERY`] old); if so, records now as its last.
fn prune_due(archive_dir: &Path) -> bool {
    static LAST: LazyLock<Mutex<HashMap<PathBuf, Instant>>> = LazyLock::new(Mutex::default);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    match last.get(archive_dir) {
        Some(at) if now.duration_since(*at) < PRUNE_EVERY => false,
        _ => {
            last.insert(archive_dir.to_path_buf(), now);
            true
        }
    }
}

/// Copies the tail of a sandbox's live envd log to the archive (atomically, readable by root
/// only), then, at most every [`PRUNE_EVERY`], deletes archived logs older than
/// [`ARCHIVE_MAX_AGE`]. No live log, no copy.
pub fn archive(state_dir: &Path, archive_dir: &Path, id: &SandboxId) -> Result<(), LogError> {
    let Some((bytes, partial)) = read_tail(&envd_log_path(state_dir), TAIL_BYTES)? else {
        return Ok(());
    };
    let bytes = match (partial, bytes.iter().position(|&b| b == b'\n')) {
        (true, Some(i)) => &bytes[i + 1..],
        (true, None) => &[][..],
        (false, _) => &bytes[..],
    };
    std::fs::create_dir_all(archive_dir)
        .map_err(io_err(format!("creating {}", archive_dir.display())))?;
    let dest = archive_path(archive_dir, id);
    let tmp = dest.with_extension("log.tmp");
    crate::manager::write_private(&tmp, bytes)
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &dest).map_err(io_err(format!("renaming {}", tmp.display())))?;
    if prune_due(archive_dir) {
        prune_archives(archive_dir, ARCHIVE_MAX_AGE);
    }
    Ok(())
}

/// Deletes archived logs last modified more than `max_age` ago; returns how many.
pub fn prune_archives(archive_dir: &Path, max_age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(archive_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > max_age);
        if old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// [`archive`] on the blocking pool for the node's sandbox `id`; a failure is logged (the
/// sandbox's envd records are then lost, its control-plane records are not).
pub(crate) async fn archive_logged(state_dir: PathBuf, sandboxes_dir: &Path, id: &SandboxId) {
    let archive_dir = archive_dir(sandboxes_dir);
    let sandbox = id.clone();
    let done =
        tokio::task::spawn_blocking(move || archive(&state_dir, &archive_dir, &sandbox)).await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(sandbox_id = %id, error = %e, "keeping the envd log failed"),
        Err(e) => tracing::warn!(sandbox_id = %id, error = %e, "keeping the envd log failed"),
    }
}

/// How long a read of a running sandbox's log waits for its shim to copy what envd wrote
/// before it (see [`paddock_sandbox::namespace::wait_log_copied`]).
const COPY_WAIT: Duration = Duration::from_millis(250);

/// [`read_envd_logs`] on the blocking pool for the node's sandbox `id`; for a running one
/// (`init_pid`), after its shim has copied everything envd wrote so far.
pub(crate) async fn read_logged(
    state_dir: PathBuf,
    sandboxes_dir: &Path,
    id: &SandboxId,
    init_pid: Option<u32>,
) -> Result<Vec<LogEntry>, crate::LocalError> {
    let archive_dir = archive_dir(sandboxes_dir);
    let sandbox = id.clone();
    let read = tokio::task::spawn_blocking(move || {
        if let Some(pid) = init_pid {
            paddock_sandbox::namespace::wait_log_copied(pid, COPY_WAIT);
        }
        read_envd_logs(&state_dir, &archive_dir, &sandbox)
    });
    let context = format!("reading the envd log of {id}");
    match read.await {
        Ok(Ok(entries)) => Ok(entries),
        Ok(Err(e)) => Err(crate::LocalError::Io {
            context,
            source: std::io::Error::other(e),
        }),
        Err(e) => Err(crate::LocalError::Io {
            context,
            source: std::io::Error::other(e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const START: &str = r#"{"ts":"2024-05-01T12:00:00.123456Z","level":"info","message":"process started: /bin/bash -l -c echo hi","fields":{"pid":"42","cmd":"/bin/bash","user":"user"},"target":"paddock_envd::process::start"}"#;

    #[test]
    fn parses_envd_lines_and_labels_them() {
        let e = parse_line(START).expect("parses");
        assert_eq!(e.timestamp.timestamp_micros(), 1_714_564_800_123_456);
        assert_eq!(e.level, LogLevel::Info);
        assert_eq!(e.message, "process started: /bin/bash -l -c echo hi");
        assert_eq!(e.fields["pid"], "42");
        assert_eq!(e.fields["source"], "envd");
        assert_eq!(e.fields["logger"], "processSvc");
    }

    #[test]
    fn a_line_cannot_claim_another_source() {
        let line = r#"{"ts":"2024-05-01T12:00:00Z","level":"bogus","message":7,"fields":{"source":"control-plane","n":3},"target":"x"}"#;
        let e = parse_line(line).expect("parses");
        assert_eq!(e.fields["source"], "envd");
        assert_eq!(e.fields["logger"], "envd");
        assert_eq!(e.fields["n"], "3");
        assert_eq!(e.level, LogLevel::Info, "unknown levels read as info");
        assert_eq!(e.message, "7");
    }

    #[test]
    fn non_records_are_skipped() {
        for line in [
            "",
            "thread 'main' panicked at src/main.rs",
            "[1,2]",
            r#"{"level":"info","message":"no ts"}"#,
            r#"{"ts":"yesterday","message":"bad ts"}"#,
        ] {
            assert!(parse_line(line).is_none(), "{line:?}");
        }
    }

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(LogLevel::parse("WARN"), Some(LogLevel::Warn));
        assert_eq!(LogLevel::parse("warning"), Some(LogLevel::Warn));
        assert_eq!(LogLevel::parse("loud"), None);
        assert!(LogLevel::Debug < LogLevel::Info && LogLevel::Warn < LogLevel::Error);
        assert_eq!(LogLevel::Error.as_str(), "error");
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let line = format!(r#"{{"ts":"2024-05-01T12:00:00Z","message":"{long}"}}"#);
        let e = parse_line(&line).expect("parses");
        assert!(e.message.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(e.message.ends_with('…'));
    }

    #[test]
    fn tails_drop_the_cut_first_line() {
        let text = format!("{START}\n{START}\n");
        let bytes = text.as_bytes();
        assert_eq!(parse_tail(bytes, false).len(), 2);
        // A tail starting mid-line loses that line only.
        assert_eq!(parse_tail(&bytes[5..], true).len(), 1);
        assert_eq!(parse_tail(&bytes[..20], true).len(), 0);
    }

    #[test]
    fn reads_are_bounded_to_the_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("envd.log");
        std::fs::write(&path, b"0123456789").expect("write");
        let (bytes, partial) = read_tail(&path, 4).expect("read").expect("exists");
        assert_eq!((bytes.as_slice(), partial), (&b"6789"[..], true));
        let (bytes, partial) = read_tail(&path, 100).expect("read").expect("exists");
        assert_eq!((bytes.len(), partial), (10, false));
        assert!(read_tail(&dir.path().join("none"), 4)
            .expect("missing is fine")
            .is_none());
    }

    #[test]
    fn symlinks_fifos_and_hard_links_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"host secret\n").expect("write");
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&secret, &link).expect("symlink");
        assert!(matches!(
            read_tail(&link, 100),
            Err(LogError::NotRegular(_))
        ));
        let hard = dir.path().join("hard.log");
        std::fs::hard_link(&secret, &hard).expect("hard link");
        assert!(matches!(
            read_tail(&hard, 100),
            Err(LogError::NotRegular(_))
        ));
        let fifo = dir.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        assert!(matches!(
            read_tail(&fifo, 100),
            Err(LogError::NotRegular(_))
        ));
    }

    #[test]
    fn archived_logs_outlive_the_state_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sandboxes = dir.path().join("sandboxes");
        let archive = archive_dir(&sandboxes);
        assert_eq!(archive, dir.path().join("sandbox-logs"));
        let id = SandboxId::generate();
        let state = sandboxes.join(id.as_str());
        std::fs::create_dir_all(&state).expect("mkdir");
        std::fs::write(envd_log_path(&state), format!("{START}\nnoise\n")).expect("write");

        let live = read_envd_logs(&state, &archive, &id).expect("live");
        assert_eq!(live.len(), 1);
        archive_fn(&state, &archive, &id);
        std::fs::remove_dir_all(&state).expect("remove state dir");
        let archived = read_envd_logs(&state, &archive, &id).expect("archived");
        assert_eq!(archived, live);
        let mode = std::fs::metadata(archive_path(&archive, &id))
            .expect("archived file")
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let other = SandboxId::generate();
        assert!(
            read_envd_logs(&sandboxes.join(other.as_str()), &archive, &other)
                .expect("nothing")
                .is_empty()
        );
        // Nothing is old enough yet; everything is with a zero age limit.
        assert_eq!(prune_archives(&archive, ARCHIVE_MAX_AGE), 0);
        assert_eq!(prune_archives(&archive, Duration::ZERO), 1);
    }

    #[test]
    fn the_archive_is_pruned_once_per_period_per_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        assert!(prune_due(&a));
        assert!(!prune_due(&a));
        assert!(prune_due(&b));
        assert!(!prune_due(&a) && !prune_due(&b));
    }

    fn archive_fn(state: &Path, archive_dir: &Path, id: &SandboxId) {
        archive(state, archive_dir, id).expect("archive");
    }
}
