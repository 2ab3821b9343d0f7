//! [`LocalNode`]: the in-process node. Owns the table of live sandboxes on this host and their
//! state directories under `<data_dir>/sandboxes/<id>`, writes each sandbox's envd boot
//! configuration, drives the [`RuntimeDriver`], and forwards sandbox deaths to the control plane.
//!
//! Lifecycle of one sandbox here: `create` (template lookup → capacity check → state dir +
//! `node.json` + `run/config.json` → runtime create → table insert) → traffic via
//! [`Node::endpoint`] → `kill` or death (runtime exit event) → runtime cleanup → table removal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use paddock_domain::{Resources, SandboxId, TemplateName};
use paddock_envd::BootConfig;
use paddock_sandbox::{RuntimeDriver, SandboxHandle, SandboxSpec};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::templates::TemplateStore;
use crate::{CreateRequest, Endpoint, Node, NodeError, NodeSandbox, TemplateInfo};

/// Static configuration of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Root of per-sandbox state directories (`<data_dir>/sandboxes`).
    pub sandboxes_dir: PathBuf,
    /// The envd binary put into every sandbox.
    pub envd_bin: PathBuf,
    /// Most sandboxes this node runs at once; creates beyond it get [`NodeError::Busy`].
    pub max_sandboxes: usize,
}

/// What the node remembers about a sandbox next to its state directory (`node.json`), so a
/// restarted node can adopt it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SandboxMeta {
    template: TemplateName,
    resources: Resources,
}

#[derive(Debug, Clone)]
struct Live {
    handle: SandboxHandle,
}

/// The in-process node.
pub struct LocalNode {
    cfg: NodeConfig,
    templates: TemplateStore,
    runtime: Arc<dyn RuntimeDriver>,
    live: RwLock<HashMap<SandboxId, Live>>,
    exits: broadcast::Sender<SandboxId>,
}

impl LocalNode {
    /// Builds a node over a runtime driver and a template store, and starts forwarding the
    /// runtime's exit notifications. Must be called inside a tokio runtime.
    pub fn new(cfg: NodeConfig, templates: TemplateStore, runtime: Arc<dyn RuntimeDriver>) -> Result<Arc<Self>, NodeError> {
        std::fs::create_dir_all(&cfg.sandboxes_dir).map_err(|source| NodeError::Io {
            context: format!("creating {}", cfg.sandboxes_dir.display()),
            source,
        })?;
        let (exits, _) = broadcast::channel(256);
        let node = Arc::new(LocalNode { cfg, templates, runtime, live: RwLock::new(HashMap::new()), exits });
        let weak = Arc::downgrade(&node);
        let mut rx = node.runtime.exits();
        tokio::spawn(async move {
            loop {
                let id = match rx.recv().await {
                    Ok(id) => id,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "sandbox exit notifications lagged");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(node) = weak.upgrade() else { return };
                node.on_exit(id).await;
            }
        });
        Ok(node)
    }

    /// The template store this node serves.
    pub fn templates(&self) -> &TemplateStore {
        &self.templates
    }

    fn state_dir(&self, id: &SandboxId) -> PathBuf {
        self.cfg.sandboxes_dir.join(id.as_str())
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, HashMap<SandboxId, Live>> {
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    fn table_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SandboxId, Live>> {
        self.live.write().unwrap_or_else(|p| p.into_inner())
    }

    async fn on_exit(&self, id: SandboxId) {
        let was_live = self.table_mut().remove(&id).is_some();
        if !was_live {
            return;
        }
        tracing::warn!(sandbox_id = %id, "sandbox exited on its own");
        if let Err(e) = self.runtime.kill(&id, &self.state_dir(&id)).await {
            tracing::error!(sandbox_id = %id, error = %e, "cleaning up an exited sandbox");
        }
        let _ = self.exits.send(id);
    }

    fn prepare_state_dir(&self, req: &CreateRequest, meta: &SandboxMeta) -> Result<PathBuf, NodeError> {
        let dir = self.state_dir(&req.id);
        let io = |context: String| move |source| NodeError::Io { context, source };
        let run = dir.join("run");
        std::fs::create_dir_all(&run).map_err(io(format!("creating {}", run.display())))?;
        let meta_json = serde_json::to_vec(meta).map_err(|e| NodeError::Io {
            context: "encoding node.json".into(),
            source: std::io::Error::other(e),
        })?;
        write_private(&dir.join("node.json"), &meta_json).map_err(io("writing node.json".into()))?;
        let boot = BootConfig {
            access_token: Some(req.access_token.clone()),
            env_vars: req.env_vars.clone(),
            sandbox_id: req.id.to_string(),
            template_id: req.template.to_string(),
            default_user: Some("user".into()),
            default_workdir: None,
        };
        let boot_json = serde_json::to_vec(&boot).map_err(|e| NodeError::Io {
            context: "encoding envd config".into(),
            source: std::io::Error::other(e),
        })?;
        write_private(&run.join("config.json"), &boot_json).map_err(io("writing envd config".into()))?;
        Ok(dir)
    }
}

/// Writes a file readable only by root (it holds the sandbox's access token).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(data)
}

#[async_trait]
impl Node for LocalNode {
    async fn create(&self, req: CreateRequest) -> Result<NodeSandbox, NodeError> {
        let template = self
            .templates
            .get(&req.template)?
            .ok_or_else(|| NodeError::TemplateNotFound(req.template.to_string()))?;
        {
            let n = self.table().len();
            if n >= self.cfg.max_sandboxes {
                return Err(NodeError::Busy(format!("{n} sandboxes running, limit {}", self.cfg.max_sandboxes)));
            }
        }
        let meta = SandboxMeta { template: req.template.clone(), resources: req.resources.unwrap_or(template.resources) };
        let state_dir = match self.prepare_state_dir(&req, &meta) {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_dir_all(self.state_dir(&req.id));
                return Err(e);
            }
        };
        let spec = SandboxSpec {
            id: req.id.clone(),
            hostname: req.id.to_string(),
            rootfs: template.rootfs.clone(),
            state_dir,
            envd_bin: self.cfg.envd_bin.clone(),
            resources: meta.resources,
        };
        let handle = match self.runtime.create(spec).await {
            Ok(h) => h,
            Err(e) => {
                let _ = std::fs::remove_dir_all(self.state_dir(&req.id));
                return Err(e.into());
            }
        };
        tracing::info!(sandbox_id = %req.id, template = %req.template, pid = handle.init_pid, "sandbox running");
        self.table_mut().insert(req.id.clone(), Live { handle });
        Ok(NodeSandbox { id: req.id, template: meta.template, resources: meta.resources })
    }

    async fn kill(&self, id: &SandboxId) -> Result<(), NodeError> {
        self.table_mut().remove(id);
        self.runtime.kill(id, &self.state_dir(id)).await?;
        tracing::info!(sandbox_id = %id, "sandbox killed");
        Ok(())
    }

    async fn template(&self, name: &TemplateName) -> Result<Option<TemplateInfo>, NodeError> {
        Ok(self.templates.get(name)?.map(|t| TemplateInfo { name: t.name, resources: t.resources }))
    }

    async fn live(&self) -> Vec<SandboxId> {
        self.table().keys().cloned().collect()
    }

    fn exits(&self) -> broadcast::Receiver<SandboxId> {
        self.exits.subscribe()
    }

    fn endpoint(&self, id: &SandboxId) -> Option<Endpoint> {
        self.table().get(id).map(|l| Endpoint {
            envd_socket: l.handle.envd_socket.clone(),
            forward_socket: l.handle.forward_socket.clone(),
        })
    }

    async fn reconcile(&self, expected: &[SandboxId]) -> Vec<SandboxId> {
        let mut adopted = Vec::new();
        for id in expected {
            let dir = self.state_dir(id);
            let meta: Option<SandboxMeta> =
                std::fs::read(dir.join("node.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
            match (meta, self.runtime.adopt(id, &dir).await) {
                (Some(_), Ok(Some(handle))) => {
                    tracing::info!(sandbox_id = %id, pid = handle.init_pid, "adopted running sandbox");
                    self.table_mut().insert(id.clone(), Live { handle });
                    adopted.push(id.clone());
                }
                (_, Ok(Some(_))) => {
                    tracing::warn!(sandbox_id = %id, "running sandbox without node.json; killing it");
                    let _ = self.runtime.kill(id, &dir).await;
                }
                (_, Ok(None)) => tracing::info!(sandbox_id = %id, "sandbox did not survive the restart"),
                (_, Err(e)) => {
                    tracing::warn!(sandbox_id = %id, error = %e, "cannot adopt sandbox; killing it");
                    let _ = self.runtime.kill(id, &dir).await;
                }
            }
        }
        match self.runtime.reap_orphans(&adopted).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "removed orphaned sandboxes"),
            Err(e) => tracing::error!(error = %e, "reaping orphaned sandboxes"),
        }
        // State directories nobody owns any more (e.g. a crash between create and record).
        if let Ok(entries) = std::fs::read_dir(&self.cfg.sandboxes_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let keep = SandboxId::parse(&name.to_string_lossy()).is_ok_and(|id| adopted.contains(&id));
                if !keep {
                    if let Ok(id) = SandboxId::parse(&name.to_string_lossy()) {
                        let _ = self.runtime.kill(&id, &entry.path()).await;
                    }
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        adopted
    }

    async fn shutdown(&self) {
        let ids: Vec<SandboxId> = self.table().keys().cloned().collect();
        let kills = ids.iter().map(|id| self.kill(id));
        for (id, res) in ids.iter().zip(futures::future::join_all(kills).await) {
            if let Err(e) = res {
                tracing::error!(sandbox_id = %id, error = %e, "stopping sandbox at shutdown");
            }
        }
        self.runtime.release().await;
    }
}
