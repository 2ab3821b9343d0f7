//! A built template's start command on a [`LocalNode`]: running it (and waiting for its ready
//! check) in a sandbox that has just started, and reading back the envd boot configuration a
//! sandbox was given (its access token and environment). Writing that configuration is
//! `prepare_state_dir`'s job in the parent module.

use paddock_domain::SandboxId;
use paddock_envd_proto::boot::{self, BootConfig};

use super::LocalNode;

impl LocalNode {
    /// The boot configuration envd of sandbox `id` was given (`None` if unreadable). It lives
    /// in the host-only state directory; read without following links and bounded all the
    /// same.
    pub(super) fn boot_config(&self, id: &SandboxId) -> Option<BootConfig> {
        let path = self.state_dir(id).join(boot::BOOT_CONFIG_FILE);
        paddock_sandbox::hostfile::read_bounded(&path, boot::BOOT_CONFIG_MAX_BYTES)
            .ok()
            .and_then(|raw| serde_json::from_slice::<BootConfig>(&raw).ok())
    }

    /// Runs a built template's start command in sandbox `id` (whose envd listens on `socket`)
    /// and waits for its ready check ([`crate::start`]); nothing to do for templates without
    /// them.
    pub(super) async fn run_start_cmd(
        &self,
        id: &SandboxId,
        socket: std::path::PathBuf,
        config: &paddock_templates::TemplateConfig,
        token: &str,
    ) -> Result<(), String> {
        if config.start_cmd.is_none() && config.ready_cmd.is_none() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let envd = crate::envd_client::EnvdClient::new(socket, Some(token.to_string()));
        crate::start::start_and_wait(&envd, config, crate::start::READY_TIMEOUT).await?;
        tracing::info!(
            sandbox_id = %id,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "start command running, ready check passed"
        );
        Ok(())
    }
}
