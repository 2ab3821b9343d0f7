//! The messages of the `process.Process` service (spec 3.4) that more than one crate reads or
//! writes: the `Start` request (envd reads it, the node and the CLI send it) and the events of
//! `Start`/`Connect` streams (envd writes them, the node reads them). proto3 JSON mapping:
//! camelCase keys out (snake_case accepted in where proto3 allows it), zero values omitted,
//! `exitCode` a sint32 number omitted when 0, `bytes` as base64, oneofs as one present key.
//! Messages only envd reads (selectors, input, signals, `List`) stay in envd.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::pbjson::{self, Base64};

/// `ProcessConfig`: what to run. Echoed back unchanged by `List`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessConfig {
    /// Executable (looked up in `PATH` when it has no slash).
    #[serde(default, deserialize_with = "pbjson::null_default")]
    pub cmd: String,
    /// Arguments after the executable.
    #[serde(
        default,
        deserialize_with = "pbjson::null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub args: Vec<String>,
    /// Extra environment variables (last wins).
    #[serde(
        default,
        deserialize_with = "pbjson::null_default",
        skip_serializing_if = "HashMap::is_empty"
    )]
    pub envs: HashMap<String, String>,
    /// Working directory (spec 3.2 path rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// `PTY.Size`: terminal dimensions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    /// Columns.
    #[serde(default, deserialize_with = "pbjson::uint32::deserialize_or_zero")]
    pub cols: u32,
    /// Rows.
    #[serde(default, deserialize_with = "pbjson::uint32::deserialize_or_zero")]
    pub rows: u32,
}

/// `PTY`: a pseudo-terminal request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pty {
    /// The terminal size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<PtySize>,
}

/// `StartRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    /// What to run.
    #[serde(default)]
    pub process: ProcessConfig,
    /// Run in a pseudo-terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
    /// Optional tag to select the process by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Whether stdin is a pipe (absent ⇒ true) or `/dev/null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

/// `StartEvent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartEvent {
    /// Process id.
    #[serde(default, deserialize_with = "pbjson::uint32::deserialize_or_zero")]
    pub pid: u32,
}

/// `DataEvent` (oneof stdout | stderr | pty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DataEvent {
    /// Standard output bytes.
    Stdout(Base64),
    /// Standard error bytes.
    Stderr(Base64),
    /// Terminal output bytes.
    Pty(Base64),
}

/// `EndEvent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    /// Exit code (sint32; -1 when killed by a signal), omitted when 0.
    #[serde(
        default,
        deserialize_with = "pbjson::int32",
        skip_serializing_if = "pbjson::is_zero"
    )]
    pub exit_code: i32,
    /// Whether the process exited normally (not by a signal).
    #[serde(
        default,
        deserialize_with = "pbjson::null_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub exited: bool,
    /// Go-style status text (`exit status N`, `signal: killed`).
    #[serde(
        default,
        deserialize_with = "pbjson::null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub status: String,
    /// Error text for unsuccessful ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `KeepAlive`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAlive {}

/// `ProcessEvent` (oneof start | data | end | keepalive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessEvent {
    /// The process started.
    Start(StartEvent),
    /// Output.
    Data(DataEvent),
    /// The process ended.
    End(EndEvent),
    /// Nothing happened for a while.
    Keepalive(KeepAlive),
}

/// `StartResponse` / `ConnectResponse`: `{"event":…}`. Borrows the event when written, owns it
/// when read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventResponse<'a> {
    /// The event.
    pub event: Cow<'a, ProcessEvent>,
}

impl<'a> From<&'a ProcessEvent> for EventResponse<'a> {
    fn from(event: &'a ProcessEvent) -> Self {
        EventResponse {
            event: Cow::Borrowed(event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn out(ev: ProcessEvent) -> String {
        serde_json::to_string(&EventResponse::from(&ev)).expect("serializes")
    }

    fn read(json: &str) -> ProcessEvent {
        serde_json::from_str::<EventResponse<'static>>(json)
            .expect("parses")
            .event
            .into_owned()
    }

    #[test]
    fn events_serialize_like_protojson_and_read_back() {
        let cases = [
            (
                ProcessEvent::Start(StartEvent { pid: 42 }),
                r#"{"event":{"start":{"pid":42}}}"#,
            ),
            (
                ProcessEvent::Data(DataEvent::Stdout(Base64(b"hi\n".to_vec()))),
                r#"{"event":{"data":{"stdout":"aGkK"}}}"#,
            ),
            (
                ProcessEvent::Keepalive(KeepAlive {}),
                r#"{"event":{"keepalive":{}}}"#,
            ),
            (
                ProcessEvent::End(EndEvent {
                    exited: true,
                    status: "exit status 0".into(),
                    ..Default::default()
                }),
                r#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#,
            ),
            (
                ProcessEvent::End(EndEvent {
                    exit_code: -1,
                    exited: false,
                    status: "signal: killed".into(),
                    error: Some("signal: killed".into()),
                }),
                r#"{"event":{"end":{"exitCode":-1,"status":"signal: killed","error":"signal: killed"}}}"#,
            ),
        ];
        for (event, json) in cases {
            assert_eq!(out(event.clone()), json);
            assert_eq!(read(json), event);
        }
    }

    #[test]
    fn events_read_the_looser_forms_proto3_allows() {
        assert_eq!(
            read(r#"{"event":{"start":{"pid":"42"}}}"#),
            ProcessEvent::Start(StartEvent { pid: 42 })
        );
        assert_eq!(
            read(r#"{"event":{"end":{"exitCode":"3","status":null}}}"#),
            ProcessEvent::End(EndEvent {
                exit_code: 3,
                ..Default::default()
            })
        );
        assert_eq!(
            read(r#"{"event":{"data":{"stderr":"aGk"}}}"#),
            ProcessEvent::Data(DataEvent::Stderr(Base64(b"hi".to_vec())))
        );
    }

    #[test]
    fn start_requests_round_trip_as_the_sdks_send_them() {
        let r: StartRequest = serde_json::from_value(json!({
            "process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"B"},"cwd":"/tmp"},
            "stdin":false, "unknownField": 1
        }))
        .expect("parses");
        assert_eq!(r.process.args.len(), 3);
        assert_eq!(r.stdin, Some(false));
        assert!(r.pty.is_none());
        assert_eq!(
            serde_json::to_string(&r).expect("encodes"),
            r#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"B"},"cwd":"/tmp"},"stdin":false}"#
        );
        let r: StartRequest = serde_json::from_value(json!({
            "process":{"cmd":"/bin/bash","args":null,"envs":null},
            "pty":{"size":{"cols":"80","rows":24}}
        }))
        .expect("parses");
        assert_eq!(
            r.pty.and_then(|p| p.size),
            Some(PtySize { cols: 80, rows: 24 })
        );
        assert_eq!(r.stdin, None);
        assert_eq!(
            serde_json::to_value(&r).expect("encodes"),
            json!({"process":{"cmd":"/bin/bash"},"pty":{"size":{"cols":80,"rows":24}}})
        );
    }
}
