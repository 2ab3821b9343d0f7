//! What the node hands envd at boot: the [`BootConfig`] (JSON, written by the node into the
//! sandbox's state directory as [`BOOT_CONFIG_FILE`] and given to envd as a sealed descriptor
//! named by [`BOOT_CONFIG_FD_ENV`]), and the other descriptors and names the sandbox runtime
//! and envd agree on. Reading and writing the file is the node's and envd's business; this
//! module owns only the format and the names.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// envd's run directory inside every sandbox (`--run-dir`): where it looks for
/// [`BOOT_CONFIG_FILE`] and binds [`ENVD_SOCKET`] and [`FORWARD_SOCKET`] when they are not
/// handed over as descriptors.
pub const RUN_DIR: &str = "/run/paddock";
/// Name of the boot configuration file (in the node's state directory, or envd's run dir).
pub const BOOT_CONFIG_FILE: &str = "config.json";
/// Largest boot configuration read back, by envd or the host (what the node writes is far
/// smaller; the bound only keeps a damaged file from being loaded whole).
pub const BOOT_CONFIG_MAX_BYTES: u64 = 8 << 20;
/// Name of envd's HTTP socket.
pub const ENVD_SOCKET: &str = "envd.sock";
/// Name of envd's port-forwarding socket.
pub const FORWARD_SOCKET: &str = "forward.sock";

/// Environment variable naming the fd envd reads its boot configuration from (a sealed memfd).
pub const BOOT_CONFIG_FD_ENV: &str = "PADDOCK_BOOT_CONFIG_FD";
/// Environment variable naming the listening fds envd serves: `<http>,<forward>`.
pub const LISTEN_FDS_ENV: &str = "PADDOCK_LISTEN_FDS";
/// Environment variable naming the fd envd writes `ready\n` to once every listener is bound.
pub const READY_FD_ENV: &str = "PADDOCK_READY_FD";
/// Environment variable listing (comma-separated) the fds of the `cgroup.procs` files envd's
/// children write `0` into to leave envd's cgroup for the user one (opened by the node, so
/// the sandbox never sees the cgroup file system).
pub const USER_CGROUP_FDS_ENV: &str = "PADDOCK_USER_CGROUP_FDS";
/// Environment variable listing the fds of the `cgroup.procs` files of the rescue cgroup, the
/// user cgroup's sibling where envd starts new commands while the user cgroup is at its pids
/// limit (a fork bomb), so the user can still look around and end it.
pub const RESCUE_CGROUP_FDS_ENV: &str = "PADDOCK_RESCUE_CGROUP_FDS";
/// Environment variable naming two read-only fds, `<pids.current>,<pids.max>` of the user
/// cgroup, which envd reads before it starts a process to tell whether the user cgroup is full.
pub const USER_PIDS_FDS_ENV: &str = "PADDOCK_USER_PIDS_FDS";

/// Boot configuration written by the node before envd starts. The same fields can later be
/// replaced by `POST /init`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BootConfig {
    /// The access token every request must carry (`X-Access-Token`); none = open.
    pub access_token: Option<String>,
    /// Global environment variables for every process.
    #[serde(default)]
    pub env_vars: HashMap<String, String>,
    /// Sandbox id (`E2B_SANDBOX_ID`).
    #[serde(default)]
    pub sandbox_id: String,
    /// Template id (`E2B_TEMPLATE_ID`).
    #[serde(default)]
    pub template_id: String,
    /// Default user when a request names none (default `user`).
    pub default_user: Option<String>,
    /// Default working directory for empty paths and processes.
    pub default_workdir: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_config_keeps_its_json_form() {
        let boot = BootConfig {
            access_token: Some("tok".into()),
            env_vars: HashMap::from([("A".into(), "1".into())]),
            sandbox_id: "iabc".into(),
            template_id: "base".into(),
            default_user: Some("user".into()),
            default_workdir: None,
        };
        let json = serde_json::to_string(&boot).expect("encodes");
        assert_eq!(
            json,
            r#"{"accessToken":"tok","envVars":{"A":"1"},"sandboxId":"iabc","templateId":"base","defaultUser":"user","defaultWorkdir":null}"#
        );
        assert_eq!(
            serde_json::from_str::<BootConfig>(&json).expect("decodes"),
            boot
        );
        // Everything may be left out (envd run by hand with a minimal file).
        assert_eq!(
            serde_json::from_str::<BootConfig>("{}").expect("decodes"),
            BootConfig::default()
        );
    }
}
