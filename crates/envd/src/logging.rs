//! envd's log format: one JSON object per line, `{"ts", "level", "message", "fields", "target"}`,
//! written by [`JsonLines`], a `tracing` layer. The node sends envd's stderr to
//! `<state dir>/envd.log` (through a pipe the shim copies) and parses these lines for the sandbox logs endpoints
//! (`paddock_node::logs`), so the format is a contract between the two:
//!
//! - `ts`: RFC 3339 UTC with microseconds (`2024-05-01T12:00:00.123456Z`);
//! - `level`: `debug` (tracing's TRACE and DEBUG), `info`, `warn` or `error`;
//! - `message`: the event's message;
//! - `fields`: every other field of the event, as strings (`Display` for `%x`, `Debug` for `?x`);
//! - `target`: the event's target (module path), which the node maps to a logger name.
//!
//! Each record is written with one `write` call on the unbuffered writer, so lines from different
//! threads do not interleave in the `O_APPEND` log file.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};

/// One log record, as written on one line.
#[derive(Debug, Serialize)]
pub struct Record {
    /// When, RFC 3339 UTC with microseconds.
    pub ts: String,
    /// `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// The message.
    pub message: String,
    /// The other fields, stringified.
    pub fields: BTreeMap<String, String>,
    /// The event's target.
    pub target: String,
}

/// The wire name of a tracing level (TRACE is folded into `debug`).
pub fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        _ => "debug",
    }
}

/// Collects an event's message and fields.
#[derive(Default)]
struct Collect {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Collect {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.insert(field.name().to_string(), value);
        }
    }
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

/// A `tracing` layer writing each event as one JSON line to `W`.
pub struct JsonLines<W> {
    make_writer: W,
}

impl<W> JsonLines<W> {
    /// A layer writing to what `make_writer` makes (e.g. `std::io::stderr`).
    pub fn new(make_writer: W) -> Self {
        JsonLines { make_writer }
    }
}

/// Encodes one record as a JSON line (with its trailing newline).
pub fn encode(
    level: &Level,
    target: &str,
    message: String,
    fields: BTreeMap<String, String>,
) -> Vec<u8> {
    let record = Record {
        ts: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        level: level_name(level),
        message,
        fields,
        target: target.to_string(),
    };
    let mut line = serde_json::to_vec(&record).unwrap_or_else(|e| {
        // Only non-string map keys can fail, and there are none; keep a trace of it anyway.
        format!(r#"{{"ts":"","level":"error","message":"log encoding failed: {e}"}}"#).into_bytes()
    });
    line.push(b'\n');
    line
}

impl<S, W> Layer<S> for JsonLines<W>
where
    S: Subscriber,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut collect = Collect::default();
        event.record(&mut collect);
        let meta = event.metadata();
        let line = encode(meta.level(), meta.target(), collect.message, collect.fields);
        // Nowhere to report a failed log write to.
        let _ = self.make_writer.make_writer().write_all(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn events_become_one_json_object_per_line() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(JsonLines::new(buffer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(pid = 42, cmd = %"/bin/bash", args = ?["-c", "x"], "process started: {}", "bash");
            tracing::warn!(target: "custom", "two\nlines");
            tracing::trace!("fine detail");
        });
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["level"], "info");
        assert_eq!(lines[0]["message"], "process started: bash");
        assert_eq!(lines[0]["fields"]["pid"], "42");
        assert_eq!(lines[0]["fields"]["cmd"], "/bin/bash");
        assert_eq!(lines[0]["fields"]["args"], r#"["-c", "x"]"#);
        assert_eq!(lines[0]["target"], module_path!());
        let ts = lines[0]["ts"].as_str().expect("ts");
        chrono::DateTime::parse_from_rfc3339(ts).expect("RFC 3339");
        assert_eq!(lines[1]["level"], "warn");
        assert_eq!(
            lines[1]["message"], "two\nlines",
            "newlines stay inside the line"
        );
        assert_eq!(lines[1]["target"], "custom");
        assert_eq!(lines[2]["level"], "debug", "trace folds into debug");
    }
}
