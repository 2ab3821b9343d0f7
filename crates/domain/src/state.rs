//! The sandbox lifecycle state machine. Every transition goes through [`SandboxState::transition`],
//! the one place that says which moves are legal:
//!
//! `creating → running → stopping → stopped`, `error` reachable from any live state,
//! `running ⇄ paused` reserved for pause/resume.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Record written, runtime not yet up.
    Creating,
    /// envd is up and initialised; the sandbox serves traffic.
    Running,
    /// Frozen (pause/resume work).
    Paused,
    /// Being torn down.
    Stopping,
    /// Gone; kept only as history.
    Stopped,
    /// Failed to create or lost unexpectedly.
    Error,
}

/// An illegal state change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("illegal sandbox transition {from} -> {to}")]
pub struct TransitionError {
    /// State the sandbox was in.
    pub from: SandboxState,
    /// State that was asked for.
    pub to: SandboxState,
}

impl SandboxState {
    /// Checks a transition and returns the new state.
    pub fn transition(self, to: SandboxState) -> Result<SandboxState, TransitionError> {
        use SandboxState::*;
        let ok = matches!(
            (self, to),
            (Creating, Running)
                | (Creating, Stopping)
                | (Running, Paused)
                | (Paused, Running)
                | (Running, Stopping)
                | (Paused, Stopping)
                | (Stopping, Stopped)
                | (Creating | Running | Paused | Stopping, Error)
                | (Error, Stopping)
                | (Error, Stopped)
        );
        if ok {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }

    /// Whether the sandbox still holds node resources.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            SandboxState::Creating | SandboxState::Running | SandboxState::Paused
        )
    }

    /// The lowercase wire name (`running`, `paused`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Stopping => "stopping",
            SandboxState::Stopped => "stopped",
            SandboxState::Error => "error",
        }
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "creating" => SandboxState::Creating,
            "running" => SandboxState::Running,
            "paused" => SandboxState::Paused,
            "stopping" => SandboxState::Stopping,
            "stopped" => SandboxState::Stopped,
            "error" => SandboxState::Error,
            other => return Err(format!("unknown sandbox state {other:?}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::SandboxState::*;

    #[test]
    fn legal_and_illegal_transitions() {
        assert_eq!(Creating.transition(Running), Ok(Running));
        assert_eq!(Running.transition(Stopping), Ok(Stopping));
        assert_eq!(Stopping.transition(Stopped), Ok(Stopped));
        assert!(Stopped.transition(Running).is_err());
        assert!(Creating.transition(Paused).is_err());
        assert!(Stopped.transition(Error).is_err());
    }

    #[test]
    fn round_trips_names() {
        for s in [Creating, Running, Paused, Stopping, Stopped, Error] {
            assert_eq!(s.as_str().parse::<super::SandboxState>(), Ok(s));
        }
    }
}
