//! Shared state of one envd: the access token, global environment, default user and workdir
//! (set at boot from the node's config file and replaced by `/init`), and the user database.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use paddock_envd_proto::BootConfig;

use crate::connect::{Code, ConnectError};
use crate::users::{User, UserDb};

/// Mutable runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Current access token.
    pub access_token: Option<String>,
    /// Global env from `/init` (`envVars`).
    pub env_vars: HashMap<String, String>,
    /// Sandbox id.
    pub sandbox_id: String,
    /// Template id.
    pub template_id: String,
    /// Default user name.
    pub default_user: String,
    /// Default workdir.
    pub default_workdir: Option<String>,
    /// Last `/init` timestamp applied (replays of older ones are ignored).
    pub last_init: Option<chrono::DateTime<chrono::Utc>>,
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct EnvdState {
    inner: Arc<RwLock<Config>>,
    /// The sandbox's user database.
    pub users: UserDb,
    /// Directory the node shares with envd (sockets, config, logs).
    pub run_dir: PathBuf,
}

impl EnvdState {
    /// Builds the state from the boot configuration.
    pub fn new(boot: BootConfig, users: UserDb, run_dir: PathBuf) -> Self {
        let cfg = Config {
            access_token: boot.access_token.filter(|t| !t.is_empty()),
            env_vars: boot.env_vars,
            sandbox_id: boot.sandbox_id,
            template_id: boot.template_id,
            default_user: boot.default_user.unwrap_or_else(|| "user".to_string()),
            default_workdir: boot.default_workdir,
            last_init: None,
        };
        EnvdState {
            inner: Arc::new(RwLock::new(cfg)),
            users,
            run_dir,
        }
    }

    /// A snapshot of the configuration.
    pub fn config(&self) -> Config {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the configuration under the write lock.
    pub fn update<R>(&self, f: impl FnOnce(&mut Config) -> R) -> R {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// The environment every process starts with, before user- and request-specific variables:
    /// `E2B_SANDBOX`, `E2B_SANDBOX_ID`, `E2B_TEMPLATE_ID` and the `/init` variables.
    pub fn global_env(&self) -> HashMap<String, String> {
        let cfg = self.config();
        let mut env = HashMap::new();
        env.insert("E2B_SANDBOX".to_string(), "true".to_string());
        if !cfg.sandbox_id.is_empty() {
            env.insert("E2B_SANDBOX_ID".to_string(), cfg.sandbox_id.clone());
        }
        if !cfg.template_id.is_empty() {
            env.insert("E2B_TEMPLATE_ID".to_string(), cfg.template_id.clone());
        }
        env.extend(cfg.env_vars);
        env
    }

    /// Resolves the acting user of an RPC: the named one, else the default user.
    /// Unknown users are `unauthenticated`, as in the reference envd.
    pub fn rpc_user(&self, named: Option<&str>) -> Result<User, ConnectError> {
        let name = match named {
            Some(n) => n.to_string(),
            None => self.config().default_user,
        };
        self.users
            .lookup(&name)
            .map_err(|e| ConnectError::new(Code::Unauthenticated, e.to_string()))
    }
}
