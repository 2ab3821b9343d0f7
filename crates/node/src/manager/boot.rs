//! Starting one sandbox on a [`LocalNode`]: waiting for a turn in the start queue, writing
//! its state directory (`node.json` and envd's boot configuration, readable only by root),
//! booting it through the runtime on a reserved slot, and admitting it into the live table.
//! `create`, the warm pools' fills and hand-overs all go through here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tracing::Instrument as _;

use paddock_domain::SandboxId;
use paddock_envd_proto::boot::{self, BootConfig};
use paddock_sandbox::SandboxHandle;
use paddock_templates::LayerLease;

use super::{Live, LocalNode, Reservation, SandboxMeta};
use crate::{CreateRequest, LocalError};

/// A sandbox [`LocalNode::boot`] started, not yet in the live table (or a warm pool).
pub(super) struct Booted<'a> {
    pub(super) handle: SandboxHandle,
    pub(super) meta: SandboxMeta,
    /// The template as it was when the sandbox started.
    pub(super) template: paddock_templates::Template,
    pub(super) lease: LayerLease,
    pub(super) reservation: Reservation<'a>,
    /// envd booted without the create's environment (see [`LocalNode::boot`]).
    pub(super) env_deferred: bool,
}

impl LocalNode {
    /// Waits for a turn to start a sandbox (in order); fails if the node shut down meanwhile.
    pub(super) async fn start_turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, LocalError> {
        let turn = self
            .starts
            .acquire()
            .await
            .map_err(|_| LocalError::Busy("shutting down".into()))?;
        if self.table().shutting_down {
            return Err(LocalError::Busy("shutting down".into()));
        }
        Ok(turn)
    }

    /// Starts sandbox `req.id` from its template on the slot `reservation` holds: leases the
    /// template's layers, writes the state directory, acquires the network slot and starts the
    /// runtime. On failure nothing of it is left (the reservation is given back).
    ///
    /// With `template_env_only`, a template with a start or ready command boots envd without
    /// the create's environment ([`Booted::env_deferred`]): the start command runs with the
    /// template's environment only, as in a warm sandbox, and [`LocalNode::reinit`] adds the
    /// create's variables once it is ready.
    pub(super) async fn boot<'a>(
        &'a self,
        req: &CreateRequest,
        reservation: Reservation<'a>,
        template_env_only: bool,
    ) -> Result<Booted<'a>, LocalError> {
        let (template, lease) = self
            .templates
            .lease(&req.template)?
            .ok_or_else(|| LocalError::TemplateNotFound(req.template.to_string()))?;
        let meta = SandboxMeta {
            template: req.template.clone(),
            resources: req.resources.unwrap_or(template.resources),
            layers: template.layers.clone(),
            network: req.network.clone(),
            config: template.config.clone(),
        };
        let remove_dir = || {
            let _ = std::fs::remove_dir_all(self.state_dir(&req.id));
        };
        let has_start = meta.config.start_cmd.is_some() || meta.config.ready_cmd.is_some();
        let env_deferred = template_env_only && has_start && !req.env_vars.is_empty();
        let written = if env_deferred {
            self.prepare_state_dir(
                &CreateRequest {
                    env_vars: HashMap::new(),
                    ..req.clone()
                },
                &meta,
            )
        } else {
            self.prepare_state_dir(req, &meta)
        };
        if let Err(e) = written {
            remove_dir();
            return Err(e);
        }
        let network = self
            .acquire_network(&req.id, &req.network)
            .instrument(paddock_telemetry::span!("node.network"))
            .await;
        let network = match network {
            Ok(n) => n,
            Err(e) => {
                remove_dir();
                return Err(e);
            }
        };
        let started = self
            .start_runtime(
                &req.id,
                template.layers.clone(),
                false,
                meta.resources,
                network,
            )
            .instrument(paddock_telemetry::span!("node.runtime_start"))
            .await;
        match started {
            Ok(handle) => Ok(Booted {
                handle,
                meta,
                template,
                lease,
                reservation,
                env_deferred,
            }),
            Err(e) => {
                remove_dir();
                Err(e)
            }
        }
    }

    /// Puts a sandbox that has just started into the live table, gives its reservation back,
    /// and checks that envd is still alive. During shutdown, or if envd died meanwhile, the
    /// sandbox is stopped and the create fails.
    pub(super) async fn admit_live(
        &self,
        id: &SandboxId,
        booted: Booted<'_>,
    ) -> Result<(), LocalError> {
        let Booted {
            handle,
            lease,
            reservation,
            ..
        } = booted;
        let pid = handle.init_pid;
        let accepted = {
            let mut table = self.table_mut();
            if table.shutting_down {
                false
            } else {
                table.live.insert(
                    id.clone(),
                    Live {
                        handle,
                        paused: false,
                    },
                );
                table.leases.insert(id.clone(), lease);
                true
            }
        };
        if !accepted {
            // Shutdown is waiting for this reservation; leave nothing behind before giving it up.
            if let Err(e) = self.runtime.kill(id, &self.state_dir(id)).await {
                tracing::error!(sandbox_id = %id, error = %e, "stopping a sandbox created during shutdown");
            }
            self.release_network(id).await;
            return Err(LocalError::Busy("shutting down".into()));
        }
        drop(reservation);
        // envd may have died between the runtime's bookkeeping and the insert above, and its
        // exit notification may already have been handled (and ignored) before it.
        if !self.runtime.is_alive(id) {
            let removed = self.table_mut().live.remove(id).is_some();
            if removed {
                self.stop_and_forget(id, "cleaning up a sandbox that died at start")
                    .await;
            }
            tracing::warn!(sandbox_id = %id, "sandbox exited right after it started");
            return Err(LocalError::Runtime(paddock_sandbox::RuntimeError::Create {
                id: id.clone(),
                message: "envd exited right after it was ready".into(),
            }));
        }
        tracing::debug!(sandbox_id = %id, pid, "sandbox admitted");
        Ok(())
    }

    pub(super) fn prepare_state_dir(
        &self,
        req: &CreateRequest,
        meta: &SandboxMeta,
    ) -> Result<PathBuf, LocalError> {
        let dir = self.state_dir(&req.id);
        let io = |context: String| move |source| LocalError::Io { context, source };
        // Host-only (0700): the sandbox sees none of it (see paddock_sandbox::hostfile).
        paddock_sandbox::hostfile::create_private_dir(&dir)
            .map_err(io(format!("creating {}", dir.display())))?;
        let meta_json = serde_json::to_vec(meta).map_err(|e| LocalError::Io {
            context: "encoding node.json".into(),
            source: std::io::Error::other(e),
        })?;
        write_private(&dir.join("node.json"), &meta_json)
            .map_err(io("writing node.json".into()))?;
        let boot = boot_config(req, meta);
        let boot_json = serde_json::to_vec(&boot).map_err(|e| LocalError::Io {
            context: "encoding envd config".into(),
            source: std::io::Error::other(e),
        })?;
        write_private(&dir.join(boot::BOOT_CONFIG_FILE), &boot_json)
            .map_err(io("writing envd config".into()))?;
        Ok(dir)
    }
}

/// envd's boot configuration for `req`: the template's environment, then the create's own
/// (which wins), the access token, and the template's user and workdir.
pub(super) fn boot_config(req: &CreateRequest, meta: &SandboxMeta) -> BootConfig {
    let mut env_vars: HashMap<String, String> = meta.config.env.iter().cloned().collect();
    env_vars.extend(req.env_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    BootConfig {
        access_token: Some(req.access_token.clone()),
        env_vars,
        sandbox_id: req.id.to_string(),
        template_id: req.template.to_string(),
        default_user: Some(meta.config.user.clone().unwrap_or_else(|| "user".into())),
        default_workdir: meta.config.workdir.clone(),
    }
}

/// Writes a file readable only by root (it holds the sandbox's access token), replacing it
/// atomically and never writing through a symlink.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    paddock_sandbox::hostfile::write_private(path, data)
}
