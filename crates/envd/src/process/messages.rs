//! Messages of the `process.Process` service (spec 3.4) with the proto3 JSON mapping: camelCase
//! keys out (snake_case accepted in), zero values omitted, `exitCode` as a sint32 number omitted
//! when 0, enums as names (integers accepted), `bytes` as base64, oneofs as one present key.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::connect::pbjson;

/// `null` in proto3 JSON means the default value.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An optional 32-bit unsigned number given as a JSON number or string.
fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(u32),
    }
    match Option::<N>::deserialize(d)? {
        None => Ok(None),
        Some(N::I(i)) => Ok(Some(i)),
        Some(N::S(s)) => s.trim().parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// A 32-bit unsigned number given as a JSON number, string or null.
fn u32_any<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Ok(opt_u32(d)?.unwrap_or_default())
}

/// Raw bytes carried as base64 in JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Base64(pub Vec<u8>);

impl Serialize for Base64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        pbjson::bytes::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Base64::default()),
            Some(s) => pbjson::decode(&s)
                .map(Base64)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `ProcessConfig`: what to run. Echoed back unchanged by `List`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessConfig {
    /// Executable (looked up in `PATH` when it has no slash).
    #[serde(default, deserialize_with = "null_default")]
    pub cmd: String,
    /// Arguments after the executable.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub args: Vec<String>,
    /// Extra environment variables (last wins).
    #[serde(
        default,
        deserialize_with = "null_default",
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
    #[serde(default, deserialize_with = "u32_any")]
    pub cols: u32,
    /// Rows.
    #[serde(default, deserialize_with = "u32_any")]
    pub rows: u32,
}

/// `PTY`: a pseudo-terminal request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pty {
    /// The terminal size.
    #[serde(default)]
    pub size: Option<PtySize>,
}

/// `ProcessSelector`: a process by pid or by tag (oneof).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ProcessSelectorJson {
    /// Selects by pid.
    #[serde(default, deserialize_with = "opt_u32")]
    pub pid: Option<u32>,
    /// Selects by tag.
    #[serde(default)]
    pub tag: Option<String>,
}

/// A validated process selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// By pid.
    Pid(u32),
    /// By tag.
    Tag(String),
}

impl ProcessSelectorJson {
    /// The selector, or `None` when neither member is set.
    pub fn selector(&self) -> Option<Selector> {
        match (&self.pid, &self.tag) {
            (Some(pid), _) => Some(Selector::Pid(*pid)),
            (None, Some(tag)) => Some(Selector::Tag(tag.clone())),
            (None, None) => None,
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Pid(pid) => write!(f, "process with pid {pid}"),
            Selector::Tag(tag) => write!(f, "process with tag {tag:?}"),
        }
    }
}

/// `StartRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StartRequest {
    /// What to run.
    #[serde(default)]
    pub process: ProcessConfig,
    /// Run in a pseudo-terminal.
    #[serde(default)]
    pub pty: Option<Pty>,
    /// Optional tag to select the process by.
    #[serde(default)]
    pub tag: Option<String>,
    /// Whether stdin is a pipe (absent ⇒ true) or `/dev/null`.
    #[serde(default)]
    pub stdin: Option<bool>,
}

/// `ConnectRequest`, `CloseStdinRequest`: just a selector.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SelectorRequest {
    /// The process.
    #[serde(default)]
    pub process: ProcessSelectorJson,
}

/// `UpdateRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UpdateRequest {
    /// The process.
    #[serde(default)]
    pub process: ProcessSelectorJson,
    /// New PTY settings.
    #[serde(default)]
    pub pty: Option<Pty>,
}

/// `ProcessInput` (oneof stdin | pty).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProcessInput {
    /// Bytes for the stdin pipe.
    #[serde(default)]
    pub stdin: Option<Base64>,
    /// Bytes for the terminal.
    #[serde(default)]
    pub pty: Option<Base64>,
}

/// `SendInputRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SendInputRequest {
    /// The process.
    #[serde(default)]
    pub process: ProcessSelectorJson,
    /// The input.
    #[serde(default)]
    pub input: ProcessInput,
}

/// `StreamInputRequest` (oneof start | data | keepalive).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamInputRequest {
    /// First message: which process.
    #[serde(default)]
    pub start: Option<SelectorRequest>,
    /// Input data.
    #[serde(default)]
    pub data: Option<StreamInputData>,
    /// Ignored keepalive.
    #[serde(default)]
    pub keepalive: Option<serde_json::Value>,
}

/// `StreamInputRequest.DataEvent`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamInputData {
    /// The input.
    #[serde(default)]
    pub input: ProcessInput,
}

/// enum `Signal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `SIGNAL_UNSPECIFIED` = 0 (or any unknown value).
    Unspecified(i64),
    /// `SIGNAL_SIGTERM` = 15.
    Term,
    /// `SIGNAL_SIGKILL` = 9.
    Kill,
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            S(String),
            I(i64),
        }
        Ok(match Option::<V>::deserialize(d)? {
            None => Signal::Unspecified(0),
            Some(V::I(15)) => Signal::Term,
            Some(V::I(9)) => Signal::Kill,
            Some(V::I(n)) => Signal::Unspecified(n),
            Some(V::S(s)) => match s.as_str() {
                "SIGNAL_SIGTERM" | "15" => Signal::Term,
                "SIGNAL_SIGKILL" | "9" => Signal::Kill,
                "SIGNAL_UNSPECIFIED" => Signal::Unspecified(0),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "unknown signal {other:?}"
                    )));
                }
            },
        })
    }
}

impl Default for Signal {
    fn default() -> Self {
        Signal::Unspecified(0)
    }
}

/// `SendSignalRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SendSignalRequest {
    /// The process.
    #[serde(default)]
    pub process: ProcessSelectorJson,
    /// The signal.
    #[serde(default)]
    pub signal: Signal,
}

/// An empty response message (`{}`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Empty {}

/// `ProcessInfo` in `ListResponse`.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessInfo {
    /// The configuration as originally requested.
    pub config: ProcessConfig,
    /// Process id.
    pub pid: u32,
    /// Tag, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// `ListResponse`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListResponse {
    /// Running processes.
    pub processes: Vec<ProcessInfo>,
}

/// `StartEvent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StartEvent {
    /// Process id.
    pub pid: u32,
}

/// `DataEvent` (oneof stdout | stderr | pty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    /// Exit code (sint32; -1 when killed by a signal), omitted when 0.
    #[serde(skip_serializing_if = "pbjson::is_zero")]
    pub exit_code: i32,
    /// Whether the process exited normally (not by a signal).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exited: bool,
    /// Go-style status text (`exit status N`, `signal: killed`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// Error text for unsuccessful ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `KeepAlive`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KeepAlive {}

/// `ProcessEvent` (oneof start | data | end | keepalive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// `StartResponse` / `ConnectResponse`: `{"event":…}`.
#[derive(Debug, Clone, Serialize)]
pub struct EventResponse<'a> {
    /// The event.
    pub event: &'a ProcessEvent,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn out(ev: ProcessEvent) -> serde_json::Value {
        serde_json::to_value(EventResponse { event: &ev }).expect("serializes")
    }

    #[test]
    fn events_serialize_like_protojson() {
        assert_eq!(
            out(ProcessEvent::Start(StartEvent { pid: 42 })),
            json!({"event":{"start":{"pid":42}}})
        );
        assert_eq!(
            out(ProcessEvent::Data(DataEvent::Stdout(Base64(
                b"hi\n".to_vec()
            )))),
            json!({"event":{"data":{"stdout":"aGkK"}}})
        );
        assert_eq!(
            out(ProcessEvent::Keepalive(KeepAlive {})),
            json!({"event":{"keepalive":{}}})
        );
        let ok = EndEvent {
            exited: true,
            status: "exit status 0".into(),
            ..Default::default()
        };
        assert_eq!(
            out(ProcessEvent::End(ok)),
            json!({"event":{"end":{"exited":true,"status":"exit status 0"}}})
        );
        let killed = EndEvent {
            exit_code: -1,
            exited: false,
            status: "signal: killed".into(),
            error: Some("signal: killed".into()),
        };
        assert_eq!(
            out(ProcessEvent::End(killed)),
            json!({"event":{"end":{"exitCode":-1,"status":"signal: killed","error":"signal: killed"}}})
        );
    }

    #[test]
    fn start_request_parses_sdk_shapes() {
        let r: StartRequest = serde_json::from_value(json!({
            "process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"B"},"cwd":"/tmp"},
            "stdin":false, "unknownField": 1
        }))
        .expect("parses");
        assert_eq!(r.process.args.len(), 3);
        assert_eq!(r.stdin, Some(false));
        assert!(r.pty.is_none());
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
    }

    #[test]
    fn selectors_and_signals_parse() {
        let r: SendSignalRequest =
            serde_json::from_value(json!({"process":{"pid":"7"},"signal":"SIGNAL_SIGKILL"}))
                .expect("parses");
        assert_eq!(r.process.selector(), Some(Selector::Pid(7)));
        assert_eq!(r.signal, Signal::Kill);
        let r: SendSignalRequest =
            serde_json::from_value(json!({"process":{"tag":"t"},"signal":15})).expect("parses");
        assert_eq!(r.process.selector(), Some(Selector::Tag("t".into())));
        assert_eq!(r.signal, Signal::Term);
        let r: SendSignalRequest = serde_json::from_value(json!({"process":{}})).expect("parses");
        assert_eq!(r.process.selector(), None);
        assert_eq!(r.signal, Signal::Unspecified(0));
    }

    #[test]
    fn input_accepts_any_base64() {
        let r: SendInputRequest =
            serde_json::from_value(json!({"process":{"pid":1},"input":{"stdin":"aGk"}}))
                .expect("parses");
        assert_eq!(r.input.stdin, Some(Base64(b"hi".to_vec())));
        let r: StreamInputRequest =
            serde_json::from_value(json!({"data":{"input":{"pty":"aGk="}}})).expect("parses");
        assert_eq!(
            r.data.map(|d| d.input.pty),
            Some(Some(Base64(b"hi".to_vec())))
        );
    }

    #[test]
    fn list_echoes_config() {
        let info = ProcessInfo {
            config: ProcessConfig {
                cmd: "sleep".into(),
                args: vec!["1".into()],
                ..Default::default()
            },
            pid: 3,
            tag: None,
        };
        let v = serde_json::to_value(ListResponse {
            processes: vec![info],
        })
        .expect("serializes");
        assert_eq!(
            v,
            json!({"processes":[{"config":{"cmd":"sleep","args":["1"]},"pid":3}]})
        );
    }
}
