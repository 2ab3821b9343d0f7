//! `state.json` in a sandbox's state directory: what the driver needs to find and verify a
//! running sandbox after the node restarts (pid, its start time, cgroup directories).

use std::io;
use std::path::{Path, PathBuf};

use paddock_domain::SandboxId;
use serde::{Deserialize, Serialize};

use crate::RuntimeError;

/// File name inside the state directory.
pub(crate) const STATE_FILE: &str = "state.json";

/// The persisted record of one running sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SandboxState {
    /// The sandbox id.
    pub id: SandboxId,
    /// Host pid of PID 1 (envd).
    pub init_pid: u32,
    /// Start time of PID 1 in clock ticks since boot, to tell it from a recycled pid.
    pub init_start_time: u64,
    /// Host pid of the shim that waits for PID 1.
    pub shim_pid: u32,
    /// The sandbox's cgroup directories.
    pub cgroups: Vec<PathBuf>,
}

/// Writes `state` atomically (temporary file + rename).
pub(crate) fn write(state_dir: &Path, state: &SandboxState) -> Result<(), RuntimeError> {
    let io_err = |context: String| move |source| RuntimeError::Io { context, source };
    let json = serde_json::to_vec_pretty(state).map_err(|e| RuntimeError::Io {
        context: "encoding state.json".into(),
        source: io::Error::other(e),
    })?;
    let tmp = state_dir.join(".state.json.tmp");
    std::fs::write(&tmp, json).map_err(io_err(format!("writing {}", tmp.display())))?;
    let path = state_dir.join(STATE_FILE);
    std::fs::rename(&tmp, &path).map_err(io_err(format!("renaming to {}", path.display())))
}

/// Reads the state, or `None` when there is none (never started, or already removed).
pub(crate) fn read(state_dir: &Path) -> Result<Option<SandboxState>, RuntimeError> {
    let path = state_dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RuntimeError::Io {
                context: format!("reading {}", path.display()),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| RuntimeError::Io {
            context: format!("parsing {}", path.display()),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(tmp.path()).expect("read"), None);
        let state = SandboxState {
            id: SandboxId::parse("iabc").expect("id"),
            init_pid: 10,
            init_start_time: 99,
            shim_pid: 9,
            cgroups: vec!["/sys/fs/cgroup/pids/paddock/iabc".into()],
        };
        write(tmp.path(), &state).expect("write");
        assert_eq!(read(tmp.path()).expect("read"), Some(state));
        std::fs::write(tmp.path().join(STATE_FILE), "{").expect("write");
        assert!(read(tmp.path()).is_err());
    }
}
