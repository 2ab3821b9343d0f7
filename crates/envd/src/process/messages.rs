//! Messages of the `process.Process` service (spec 3.4) with the proto3 JSON mapping: camelCase
//! keys out (snake_case accepted in), zero values omitted, enums as names (integers accepted),
//! `bytes` as base64, oneofs as one present key. The messages envd's clients share (`Start`'s
//! request and the process events) are `paddock_envd_proto::process`'s, re-exported here; the
//! rest only envd reads or writes.

use serde::{Deserialize, Deserializer, Serialize};

pub use paddock_envd_proto::pbjson::Base64;
pub use paddock_envd_proto::process::{
    DataEvent, EndEvent, EventResponse, KeepAlive, ProcessConfig, ProcessEvent, Pty, PtySize,
    StartEvent, StartRequest,
};

/// `ProcessSelector`: a process by pid or by tag (oneof).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ProcessSelectorJson {
    /// Selects by pid.
    #[serde(
        default,
        deserialize_with = "paddock_envd_proto::pbjson::uint32::deserialize_opt"
    )]
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
