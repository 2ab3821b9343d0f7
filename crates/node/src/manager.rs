//! [`LocalNode`]: the in-process node. Owns the table of live sandboxes on this host and their
//! state directories under `<data_dir>/sandboxes/<id>`, writes each sandbox's envd boot
//! configuration, drives the [`RuntimeDriver`], and forwards sandbox deaths to the control plane.
//!
//! Lifecycle of one sandbox here: `create` (a claimed warm sandbox is handed over, see `pool`;
//! otherwise slot reservation → a turn in the start queue → template lease → state dir +
//! `node.json` + `config.json` → runtime create → table insert → liveness re-check → the
//! template's start command) → traffic via [`Node::endpoint`](crate::Node::endpoint) → `kill` or death (runtime exit
//! event, or found dead by a resync after missed events) → runtime cleanup → table removal.
//!
//! Capacity: a create reserves its slot synchronously (sandboxes being created and warm ones
//! count with the live ones against `max_sandboxes`) before its first await, and gives it back
//! when it fails. At most [`NodeConfig::start_concurrency`] sandboxes start at once; the others
//! wait in order. Shutdown closes the node to new creates, waits (bounded) for the ones in
//! flight, stops the warm pools, kills every sandbox, then releases the runtime.
//!
//! Submodules hold the rest of `impl LocalNode`: `boot` (starting one sandbox, its state
//! directory and admission to the live table), `pool` (warm pools), `state` (pause in memory
//! and to disk, start from disk), `snapshot` (snapshots of live sandboxes) and `start_cmd` (the
//! template's start command).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use paddock_domain::{Resources, SandboxId, TemplateName};
use paddock_sandbox::{RuntimeDriver, SandboxHandle, SandboxSpec};
use paddock_templates::{LayerLease, TemplateStore};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Notify};

/// How long a create waits for warm sandboxes being started to free a slot
/// ([`LocalNode::reserve_after_fills`]).
const FILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

use crate::{
    CreateRequest, EgressPolicy, Endpoint, LocalError, NodeSandbox, PauseMode, SnapshotMade,
    TemplateInfo,
};
pub(crate) use boot::write_private;
use boot::{boot_config, Booted};
use state::ON_DISK_MARKER;

mod boot;
mod pool;
mod snapshot;
mod start_cmd;
mod state;

pub use pool::{PoolConfig, PoolStats, TemplatePoolStats};

/// Static configuration of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Root of per-sandbox state directories (`<data_dir>/sandboxes`).
    pub sandboxes_dir: PathBuf,
    /// The envd binary put into every sandbox.
    pub envd_bin: PathBuf,
    /// The code interpreter (`paddock-interpreter`) shown in every sandbox at
    /// [`paddock_sandbox::SANDBOX_INTERPRETER_PATH`], if this node has one: the start command of
    /// `code-interpreter-v1` and of templates built from it.
    pub interpreter_bin: Option<PathBuf>,
    /// Most sandboxes this node runs at once; creates beyond it get [`LocalError::Busy`].
    pub max_sandboxes: usize,
    /// Per-sandbox networking; `None` = sandboxes get only `lo`.
    pub network: Option<paddock_network::Network>,
    /// Warm pools (sandboxes started in advance per template); off by default.
    pub warm_pool: PoolConfig,
    /// Most sandboxes starting at once (creates, starts from disk); more wait their turn in
    /// order. Starting is CPU-bound kernel work: past a few per CPU, parallel starts only
    /// make every one of them slower. Hand-overs of warm sandboxes do not wait.
    pub start_concurrency: usize,
}

/// What the node remembers about a sandbox next to its state directory (`node.json`), so a
/// restarted node can adopt it, and a sandbox paused to disk can start again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SandboxMeta {
    template: TemplateName,
    resources: Resources,
    /// The root-filesystem layers it runs on, top first (empty in records of older nodes).
    #[serde(default)]
    layers: Vec<PathBuf>,
    /// Its egress policy, applied again when it starts from disk.
    #[serde(default)]
    network: EgressPolicy,
    /// Its template's start state (user, workdir, env, start and ready commands).
    #[serde(default)]
    config: paddock_templates::TemplateConfig,
}

/// How long shutdown waits for creates in flight before killing what is live.
const SHUTDOWN_CREATE_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
struct Live {
    handle: SandboxHandle,
    /// Paused (frozen) by [`Node::pause`](crate::Node::pause) or found frozen when adopted.
    paused: bool,
}

/// The sandboxes of this node: running, paused to disk, and being created (slots reserved).
#[derive(Debug, Default)]
struct Table {
    live: HashMap<SandboxId, Live>,
    creating: HashSet<SandboxId>,
    /// Paused to disk: no processes, no slot, no network; only files.
    on_disk: HashSet<SandboxId>,
    /// The template layers each live or on-disk sandbox holds (none for sandboxes adopted from
    /// an older node that did not record them).
    leases: HashMap<SandboxId, LayerLease>,
    /// Set by shutdown: no new creates, and creates in flight do not enter `live`.
    shutting_down: bool,
    /// The warm pools' sandboxes (ready, claimed, to be discarded); they count against
    /// `max_sandboxes` like live ones.
    pool: pool::PoolTable,
}

/// The in-process node.
pub struct LocalNode {
    cfg: NodeConfig,
    templates: TemplateStore,
    runtime: Arc<dyn RuntimeDriver>,
    table: RwLock<Table>,
    /// Woken whenever a create gives its reservation back.
    create_done: Notify,
    exits: broadcast::Sender<crate::NodeEvent>,
    /// Resource-usage samples of the sandboxes (see [`crate::metrics`]).
    metrics: Arc<crate::metrics::MetricsStore>,
    /// Wakes the warm pools' filler (a claim, a finished fill, a sandbox to discard).
    pool_wake: Arc<Notify>,
    /// Turns to start a sandbox ([`NodeConfig::start_concurrency`]); FIFO.
    starts: tokio::sync::Semaphore,
    /// Set once [`Node::reconcile`](crate::Node::reconcile) has run: it removes every sandbox it does not adopt, so
    /// warm pools are filled only after it.
    reconciled: std::sync::atomic::AtomicBool,
    /// Counts pauses (bumped when a sandbox is marked paused, before its freeze), so waiters
    /// for a given sandbox's pause ([`LocalNode::until_paused`]) wake up and look.
    pauses: tokio::sync::watch::Sender<u64>,
}

/// A reserved slot for one create; dropping it (failure, cancellation) frees the slot.
struct Reservation<'a> {
    node: &'a LocalNode,
    id: SandboxId,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.node.table_mut().creating.remove(&self.id);
        self.node.create_done.notify_waiters();
        // The filler waits while creates are in flight.
        self.node.pool_wake.notify_one();
    }
}

impl LocalNode {
    /// Builds a node over a runtime driver and a template store, and starts forwarding the
    /// runtime's exit notifications. Must be called inside a tokio runtime.
    pub fn new(
        cfg: NodeConfig,
        templates: TemplateStore,
        runtime: Arc<dyn RuntimeDriver>,
    ) -> Result<Arc<Self>, LocalError> {
        std::fs::create_dir_all(&cfg.sandboxes_dir).map_err(|source| LocalError::Io {
            context: format!("creating {}", cfg.sandboxes_dir.display()),
            source,
        })?;
        let (exits, _) = broadcast::channel(paddock_node_contract::EVENT_BUFFER);
        let cfg_start_concurrency = cfg.start_concurrency.max(1);
        let node = Arc::new(LocalNode {
            cfg,
            templates,
            runtime,
            table: RwLock::new(Table::default()),
            create_done: Notify::new(),
            exits,
            metrics: Arc::default(),
            pool_wake: Arc::new(Notify::new()),
            starts: tokio::sync::Semaphore::new(cfg_start_concurrency),
            reconciled: std::sync::atomic::AtomicBool::new(false),
            pauses: tokio::sync::watch::channel(0).0,
        });
        tokio::spawn(crate::metrics::run_sampler(Arc::downgrade(&node)));
        if node.cfg.warm_pool.size > 0 {
            node.table_mut().pool.pin(&node.cfg.warm_pool.pinned);
            tokio::spawn(pool::run_filler(Arc::downgrade(&node)));
        }
        let weak = Arc::downgrade(&node);
        let mut rx = node.runtime.exits();
        tokio::spawn(async move {
            loop {
                let received = rx.recv().await;
                let Some(node) = weak.upgrade() else { return };
                match received {
                    Ok(id) => node.on_exit(id).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "sandbox exit notifications lagged; resyncing");
                        node.resync().await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(node)
    }

    /// The template store this node serves.
    pub fn templates(&self) -> &TemplateStore {
        &self.templates
    }

    /// The metrics sampler's view of this node: the store, and what to read for sandbox `id`
    /// (`None` once its state directory or `node.json` is gone).
    pub(crate) fn metrics_store(&self) -> &Arc<crate::metrics::MetricsStore> {
        &self.metrics
    }

    pub(crate) fn metrics_source(
        &self,
        id: &SandboxId,
    ) -> Option<(crate::metrics::MetricsSource, std::time::SystemTime)> {
        let dir = self.state_dir(id);
        let (resources, started) = crate::metrics::read_node_meta(&dir)?;
        let source = crate::metrics::MetricsSource {
            cgroup_dirs: self.runtime.cgroup_dirs(id),
            disk_dir: dir.join("disk"),
            resources,
        };
        Some((source, started))
    }

    pub(crate) fn live_ids(&self) -> Vec<SandboxId> {
        self.table().live.keys().cloned().collect()
    }

    pub(crate) fn sandboxes_dir(&self) -> &Path {
        &self.cfg.sandboxes_dir
    }

    fn state_dir(&self, id: &SandboxId) -> PathBuf {
        self.cfg.sandboxes_dir.join(id.as_str())
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        // Single inserts and removes cannot leave the table inconsistent, so a poisoned lock
        // is still usable.
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn table_mut(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a slot for creating `id`, synchronously, so concurrent creates cannot all pass
    /// the capacity check before any of them is live.
    fn reserve(&self, id: &SandboxId) -> Result<Reservation<'_>, LocalError> {
        let mut table = self.table_mut();
        if table.shutting_down {
            return Err(LocalError::Busy("shutting down".into()));
        }
        if table.live.contains_key(id) || table.creating.contains(id) {
            return Err(LocalError::Busy(format!(
                "sandbox {id} already exists on this node"
            )));
        }
        let mut used = table.live.len() + table.creating.len() + table.pool.held();
        // A warm sandbox gives its slot up to a create that needs one.
        while used >= self.cfg.max_sandboxes && table.pool.evict_one() {
            used -= 1;
            self.pool_wake.notify_one();
        }
        if used >= self.cfg.max_sandboxes {
            return Err(LocalError::Busy(format!(
                "{} sandboxes running and {} starting, limit {}",
                table.live.len(),
                table.creating.len(),
                self.cfg.max_sandboxes
            )));
        }
        table.creating.insert(id.clone());
        Ok(Reservation {
            node: self,
            id: id.clone(),
        })
    }

    /// [`LocalNode::reserve`] for a create: a node that is full only while warm sandboxes are
    /// being started waits for them (at most [`FILL_WAIT`]); once ready, one gives its slot up
    /// to the create. Without this, a create arriving while the pool refills after a burst was
    /// refused although the node had room for it.
    async fn reserve_after_fills(&self, id: &SandboxId) -> Result<Reservation<'_>, LocalError> {
        let deadline = std::time::Instant::now() + FILL_WAIT;
        loop {
            match self.reserve(id) {
                Err(LocalError::Busy(_))
                    if self.table().pool.fills_in_progress() > 0
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Drops every sandbox of the table whose PID 1 the runtime no longer sees running, as if
    /// its exit had been reported (used after exit notifications were lost).
    async fn resync(&self) {
        let ids: Vec<SandboxId> = self.table().live.keys().cloned().collect();
        for id in ids {
            if !self.runtime.is_alive(&id) {
                self.on_exit(id).await;
            }
        }
    }

    async fn on_exit(&self, id: SandboxId) {
        let was_live = self.table_mut().live.remove(&id).is_some();
        if !was_live {
            let warm = self.table_mut().pool.remove_ready(&id);
            if let Some(warm) = warm {
                tracing::warn!(sandbox_id = %id, template = %warm.template.name, "a warm sandbox exited on its own");
                self.discard(warm).await;
                self.pool_wake.notify_one();
            }
            return;
        }
        // Read before the cgroup goes with the cleanup.
        let reason = self.exit_reason(&id);
        tracing::warn!(sandbox_id = %id, %reason, "sandbox exited on its own");
        crate::logs::archive_logged(self.state_dir(&id), &self.cfg.sandboxes_dir, &id).await;
        self.stop_and_forget(&id, "cleaning up an exited sandbox")
            .await;
        let _ = self.exits.send(crate::NodeEvent::exited(id, reason));
    }

    /// Why sandbox `id`, whose init just ended and whose cgroup is still there, ended: out of
    /// memory when the OOM killer killed a process of the sandbox's own cgroup, else exited by
    /// itself. On cgroup v1 that cgroup holds envd alone (the user's processes, whose OOM kills
    /// leave the sandbox running, are in a child); on v2 it holds them all, so an init that
    /// ended for another reason after an OOM kill of a user's process is reported as out of
    /// memory too.
    fn exit_reason(&self, id: &SandboxId) -> paddock_node_contract::ExitReason {
        let kills = crate::metrics::init_oom_kills(&self.runtime.cgroup_dirs(id));
        if kills.is_some_and(|n| n > 0) {
            paddock_node_contract::ExitReason::OutOfMemory
        } else {
            paddock_node_contract::ExitReason::Exited
        }
    }

    /// Stops sandbox `id` (already out of the live table) and gives back what it held: its
    /// runtime state, network slot, on-disk entry and layer lease. A failure to stop it is
    /// logged as `context`.
    async fn stop_and_forget(&self, id: &SandboxId, context: &str) {
        if let Err(e) = self.runtime.kill(id, &self.state_dir(id)).await {
            tracing::error!(sandbox_id = %id, error = %e, "{context}");
        }
        self.release_network(id).await;
        self.forget(id).await;
    }

    /// Drops what the node still holds for a sandbox that is gone: its on-disk entry and its
    /// layer lease (then, unless other sandboxes still lease all of its layers, layers no
    /// template or sandbox uses any more are removed, e.g. the private snapshot of a fork once
    /// its last child is gone).
    async fn forget(&self, id: &SandboxId) {
        let lease = {
            let mut table = self.table_mut();
            table.on_disk.remove(id);
            table.leases.remove(id)
        };
        if lease.is_some_and(LayerLease::release) {
            self.collect_garbage().await;
        }
    }

    /// Removes template layers nothing uses any more (on a blocking thread).
    async fn collect_garbage(&self) {
        let store = self.templates.clone();
        match tokio::task::spawn_blocking(move || store.collect_garbage()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "removing unused template layers"),
            Err(e) => tracing::warn!(error = %e, "template garbage collection task failed"),
        }
    }

    /// Reads a sandbox's `node.json`.
    fn read_meta(&self, id: &SandboxId) -> Result<SandboxMeta, LocalError> {
        let path = self.state_dir(id).join("node.json");
        let raw = std::fs::read(&path).map_err(|source| LocalError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        serde_json::from_slice(&raw).map_err(|e| LocalError::Io {
            context: format!("decoding {}", path.display()),
            source: std::io::Error::other(e),
        })
    }

    /// Acquires a network slot for sandbox `id` with `policy` (none without networking).
    async fn acquire_network(
        &self,
        id: &SandboxId,
        policy: &EgressPolicy,
    ) -> Result<Option<paddock_sandbox::SandboxNetwork>, LocalError> {
        match &self.cfg.network {
            None => Ok(None),
            Some(net) => {
                let lease = net.acquire(id.as_str(), policy).await?;
                Ok(Some(paddock_sandbox::SandboxNetwork {
                    netns: lease.netns_path,
                    dns: lease.dns,
                }))
            }
        }
    }

    /// Asks the runtime to start sandbox `id` in its state directory; refills the network
    /// pool after the start and gives the slot back when the start fails.
    async fn start_runtime(
        &self,
        id: &SandboxId,
        layers: Vec<PathBuf>,
        reuse_disk: bool,
        resources: Resources,
        network: Option<paddock_sandbox::SandboxNetwork>,
    ) -> Result<SandboxHandle, LocalError> {
        let spec = SandboxSpec {
            id: id.clone(),
            hostname: id.to_string(),
            layers,
            reuse_disk,
            state_dir: self.state_dir(id),
            envd_bin: self.cfg.envd_bin.clone(),
            interpreter_bin: self.cfg.interpreter_bin.clone(),
            resources,
            network,
        };
        let created = self.runtime.create(spec).await;
        if let Some(net) = &self.cfg.network {
            // After the start, not during it: building slots contends for the RTNL lock.
            net.refill();
        }
        match created {
            Ok(handle) => Ok(handle),
            Err(e) => {
                self.release_network(id).await;
                Err(e.into())
            }
        }
    }

    /// Leases the layers a surviving sandbox recorded (none for records of older nodes).
    fn lease_recorded(&self, id: &SandboxId, meta: &SandboxMeta) -> Option<LayerLease> {
        if meta.layers.is_empty() {
            return None;
        }
        match self.templates.lease_layers(&meta.layers) {
            Ok(lease) => Some(lease),
            Err(e) => {
                tracing::warn!(sandbox_id = %id, error = %e, "cannot lease the layers of an adopted sandbox");
                None
            }
        }
    }

    /// Gives the sandbox's network slot back (a no-op without networking or lease).
    async fn release_network(&self, id: &SandboxId) {
        if let Some(net) = &self.cfg.network {
            net.release(id.as_str());
        }
    }
}

/// The node's own API: what the [`Node`] contract delegates to (see `crate::contract`), plus
/// the reads of its memory that only code in the same process may make (the proxy's routing,
/// tests).
impl LocalNode {
    /// See [`Node::create`](crate::Node::create).
    pub async fn create(&self, req: CreateRequest) -> Result<NodeSandbox, LocalError> {
        use tracing::Instrument as _;
        if let Some(warm) = self.take_claimed(&req.id) {
            let handed = self
                .hand_over(&req, warm)
                .instrument(paddock_telemetry::span!("node.hand_over", sandbox_id = %req.id))
                .await;
            self.count_hand_over(handed.is_ok());
            match handed {
                Ok(sandbox) => return Ok(sandbox),
                // The warm sandbox is gone (discarded by `hand_over`); start a new one.
                Err(e @ LocalError::Busy(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(sandbox_id = %req.id, error = %e, "a warm sandbox could not be handed over; starting a new one")
                }
            }
        }
        let reservation = self
            .reserve_after_fills(&req.id)
            .instrument(paddock_telemetry::span!("node.reserve"))
            .await?;
        let turn = self
            .start_turn()
            .instrument(paddock_telemetry::span!("node.queue"))
            .await?;
        let booted = self
            .boot(&req, reservation, req.start_cmd)
            .instrument(paddock_telemetry::span!("node.boot", sandbox_id = %req.id))
            .await?;
        drop(turn);
        let meta = booted.meta.clone();
        let env_deferred = booted.env_deferred;
        self.admit_live(&req.id, booted).await?;
        if req.start_cmd {
            let socket = self
                .table()
                .live
                .get(&req.id)
                .map(|l| l.handle.envd_socket.clone());
            let started = match socket {
                Some(socket) => {
                    let ready = self
                        .run_start_cmd(&req.id, socket.clone(), &meta.config, &req.access_token)
                        .instrument(paddock_telemetry::span!("node.start_cmd"))
                        .await;
                    match ready {
                        Ok(()) if env_deferred => self
                            .reinit(&req, &meta, socket, &req.access_token)
                            .await
                            .map_err(|e| e.to_string()),
                        other => other,
                    }
                }
                None => Err("the sandbox stopped".into()),
            };
            if let Err(e) = started {
                tracing::warn!(sandbox_id = %req.id, error = %e, "the template's start command failed");
                self.table_mut().live.remove(&req.id);
                self.stop_and_forget(&req.id, "cleaning up after a failed start command")
                    .await;
                return Err(LocalError::StartCmd(e));
            }
        }
        tracing::info!(sandbox_id = %req.id, template = %req.template, "sandbox running");
        Ok(NodeSandbox {
            id: req.id,
            template: meta.template,
            resources: meta.resources,
        })
    }

    /// See [`Node::envd_logs`](crate::Node::envd_logs).
    pub async fn envd_logs(
        &self,
        id: &SandboxId,
    ) -> Result<Vec<crate::logs::LogEntry>, LocalError> {
        let init_pid = self.table().live.get(id).map(|l| l.handle.init_pid);
        crate::logs::read_logged(self.state_dir(id), &self.cfg.sandboxes_dir, id, init_pid).await
    }

    /// See [`Node::kill`](crate::Node::kill).
    pub async fn kill(&self, id: &SandboxId) -> Result<(), LocalError> {
        // A warm sandbox claimed for a create that never came (the control plane's cleanup).
        let claimed = self.table_mut().pool.unclaim(id);
        if let Some(warm) = claimed {
            self.discard(warm).await;
            return Ok(());
        }
        self.table_mut().live.remove(id);
        crate::logs::archive_logged(self.state_dir(id), &self.cfg.sandboxes_dir, id).await;
        let killed = self.runtime.kill(id, &self.state_dir(id)).await;
        self.release_network(id).await;
        killed?;
        self.forget(id).await;
        tracing::info!(sandbox_id = %id, "sandbox killed");
        Ok(())
    }

    /// See [`Node::update_network`](crate::Node::update_network).
    pub async fn update_network(
        &self,
        id: &SandboxId,
        policy: EgressPolicy,
    ) -> Result<(), LocalError> {
        if !self.table().live.contains_key(id) {
            return Err(LocalError::SandboxNotFound(id.clone()));
        }
        match &self.cfg.network {
            Some(net) => Ok(net.update(id.as_str(), &policy).await?),
            None => Ok(()),
        }
    }

    /// See [`Node::template`](crate::Node::template).
    pub async fn template(&self, name: &TemplateName) -> Result<Option<TemplateInfo>, LocalError> {
        Ok(self.templates.get(name)?.map(|t| TemplateInfo {
            name: t.name,
            resources: t.resources,
        }))
    }

    /// See [`Node::claim_warm`](crate::Node::claim_warm).
    pub fn claim_warm(&self, req: &CreateRequest) -> Option<SandboxId> {
        self.claim(req)
    }

    /// The warm pools' sizes and counters.
    pub fn pool_stats(&self) -> PoolStats {
        self.stats()
    }

    /// See [`Node::live`](crate::Node::live).
    pub async fn live(&self) -> Vec<SandboxId> {
        self.table().live.keys().cloned().collect()
    }

    /// Whether [`Node::reconcile`](crate::Node::reconcile) has run since the node started.
    pub fn is_reconciled(&self) -> bool {
        self.reconciled.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Notifies when a sandbox died by itself (see [`Node::events`](crate::Node::events)).
    pub fn events(&self) -> broadcast::Receiver<crate::NodeEvent> {
        self.exits.subscribe()
    }

    /// Where to route traffic for a live sandbox (the proxy's node-local hop).
    pub fn endpoint(&self, id: &SandboxId) -> Option<Endpoint> {
        self.table().live.get(id).map(|l| Endpoint {
            envd_socket: l.handle.envd_socket.clone(),
            forward_socket: l.handle.forward_socket.clone(),
        })
    }

    /// See [`Node::metrics`](crate::Node::metrics).
    pub async fn metrics(
        &self,
        id: &SandboxId,
        range: crate::MetricsRange,
    ) -> Vec<crate::MetricSample> {
        crate::metrics::query(self, id, range).await
    }

    /// See [`Node::reconcile`](crate::Node::reconcile).
    pub async fn reconcile(&self, expected: &[SandboxId]) -> Vec<SandboxId> {
        let mut adopted = Vec::new();
        for id in expected {
            let dir = self.state_dir(id);
            let meta: Option<SandboxMeta> = std::fs::read(dir.join("node.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(meta) = meta.as_ref().filter(|_| dir.join(ON_DISK_MARKER).exists()) {
                match self.adopt_on_disk(id, meta).await {
                    Ok(()) => adopted.push(id.clone()),
                    Err(e) => {
                        tracing::error!(sandbox_id = %id, error = %e, "cannot keep a sandbox paused to disk; removing it");
                        let _ = self.runtime.kill(id, &dir).await;
                    }
                }
                continue;
            }
            match (meta, self.runtime.adopt(id, &dir).await) {
                (Some(meta), Ok(Some(handle))) => {
                    let paused = self.runtime.is_paused(id);
                    tracing::info!(sandbox_id = %id, pid = handle.init_pid, paused, "adopted running sandbox");
                    let lease = self.lease_recorded(id, &meta);
                    let mut table = self.table_mut();
                    table.live.insert(id.clone(), Live { handle, paused });
                    if let Some(lease) = lease {
                        table.leases.insert(id.clone(), lease);
                    }
                    drop(table);
                    adopted.push(id.clone());
                }
                (_, Ok(Some(_))) => {
                    tracing::warn!(sandbox_id = %id, "running sandbox without node.json; killing it");
                    let _ = self.runtime.kill(id, &dir).await;
                }
                (_, Ok(None)) => {
                    tracing::info!(sandbox_id = %id, "sandbox did not survive the restart")
                }
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
                let keep =
                    SandboxId::parse(&name.to_string_lossy()).is_ok_and(|id| adopted.contains(&id));
                if !keep {
                    if let Ok(id) = SandboxId::parse(&name.to_string_lossy()) {
                        let _ = self.runtime.kill(&id, &entry.path()).await;
                    }
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        // Layers of deleted templates that no surviving sandbox holds.
        self.collect_garbage().await;
        self.reconciled
            .store(true, std::sync::atomic::Ordering::Release);
        self.pool_wake.notify_one();
        adopted
    }

    /// See [`Node::pause`](crate::Node::pause).
    pub async fn pause(&self, id: &SandboxId) -> Result<(), LocalError> {
        if self.table().on_disk.contains(id) {
            return Ok(());
        }
        self.set_paused(id, true).await
    }

    /// See [`Node::pause_to_disk`](crate::Node::pause_to_disk).
    pub async fn pause_to_disk(&self, id: &SandboxId) -> Result<(), LocalError> {
        self.persist(id).await
    }

    /// See [`Node::resume`](crate::Node::resume).
    pub async fn resume(&self, id: &SandboxId) -> Result<(), LocalError> {
        if self.table().on_disk.contains(id) {
            return self.start_from_disk(id).await;
        }
        self.set_paused(id, false).await
    }

    /// Whether a sandbox is paused (frozen in memory or on disk).
    pub fn is_paused(&self, id: &SandboxId) -> bool {
        let table = self.table();
        table.on_disk.contains(id) || table.live.get(id).is_some_and(|l| l.paused)
    }

    /// How a paused sandbox is kept; `None` when it is not paused (or unknown).
    pub fn pause_mode(&self, id: &SandboxId) -> Option<PauseMode> {
        let table = self.table();
        if table.on_disk.contains(id) {
            Some(PauseMode::Disk)
        } else if table.live.get(id).is_some_and(|l| l.paused) {
            Some(PauseMode::Memory)
        } else {
            None
        }
    }

    /// See [`Node::snapshot`](crate::Node::snapshot).
    pub async fn snapshot(
        &self,
        id: &SandboxId,
        name: &TemplateName,
    ) -> Result<SnapshotMade, LocalError> {
        // A sandbox paused to disk has no mounted disk to copy from: it is started, frozen
        // for the copy and paused to disk again.
        let on_disk = self.table().on_disk.contains(id);
        if on_disk {
            self.start_from_disk(id).await?;
            self.runtime.pause(id).await?;
            self.set_paused_flag(id, true);
        }
        let made = self.snapshot_live(id, name).await;
        if on_disk {
            if let Err(e) = self.persist(id).await {
                tracing::error!(sandbox_id = %id, error = %e, "pausing to disk again after a snapshot failed");
            }
        }
        made
    }

    /// See [`Node::list_templates`](crate::Node::list_templates).
    pub async fn list_templates(&self) -> Result<Vec<crate::TemplateSummary>, LocalError> {
        let store = self.templates.clone();
        let listed = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| LocalError::Io {
                context: "template list task failed".into(),
                source: std::io::Error::other(e),
            })??;
        Ok(listed
            .into_iter()
            .map(|t| crate::TemplateSummary {
                layer_ids: t
                    .layers
                    .iter()
                    .filter_map(|l| l.file_name().and_then(|n| n.to_str()).map(str::to_string))
                    .collect(),
                name: t.name,
                resources: t.resources,
                created_at: t.created_at,
            })
            .collect())
    }

    /// See [`Node::delete_template`](crate::Node::delete_template).
    pub async fn delete_template(&self, name: &TemplateName) -> Result<bool, LocalError> {
        let store = self.templates.clone();
        let target = name.clone();
        let deleted = tokio::task::spawn_blocking(move || store.delete(&target))
            .await
            .map_err(|e| LocalError::Io {
                context: "template delete task failed".into(),
                source: std::io::Error::other(e),
            })??;
        Ok(deleted)
    }

    /// See [`Node::copy_template`](crate::Node::copy_template).
    pub async fn copy_template(
        &self,
        from: &TemplateName,
        to: &TemplateName,
    ) -> Result<TemplateInfo, LocalError> {
        let store = self.templates.clone();
        let (source, target) = (from.clone(), to.clone());
        let copied = tokio::task::spawn_blocking(move || store.copy(&source, &target))
            .await
            .map_err(|e| LocalError::Io {
                context: "template copy task failed".into(),
                source: std::io::Error::other(e),
            })??
            .ok_or_else(|| LocalError::TemplateNotFound(from.to_string()))?;
        Ok(TemplateInfo {
            name: copied.name,
            resources: copied.resources,
        })
    }

    /// The egress policy sandbox `id` was started with (`None` if unknown).
    pub fn egress_policy(&self, id: &SandboxId) -> Option<EgressPolicy> {
        self.read_meta(id).ok().map(|m| m.network)
    }

    /// The environment variables sandbox `id` was booted with (empty if unknown).
    pub fn env_vars(&self, id: &SandboxId) -> HashMap<String, String> {
        self.boot_config(id)
            .map(|boot| boot.env_vars)
            .unwrap_or_default()
    }

    /// See [`Node::build`](crate::Node::build).
    pub async fn build(
        &self,
        req: crate::build::BuildRequest,
        logs: crate::build::LogSink,
    ) -> Result<crate::build::Built, crate::build::BuildError> {
        crate::build::run::build(self, req, logs).await
    }

    /// See [`Node::shutdown`](crate::Node::shutdown).
    pub async fn shutdown(&self) {
        self.table_mut().shutting_down = true;
        // Creates in flight finish (and, seeing the flag, remove their sandbox) before the
        // table is emptied, so none of them outlives the shutdown.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_CREATE_WAIT;
        loop {
            let notified = self.create_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let in_flight = self.table().creating.len();
            if in_flight == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(
                    in_flight,
                    "creates still running at shutdown; they stop their sandboxes when done"
                );
                break;
            }
        }
        // Paused sandboxes outlive the server: frozen ones are paused to disk (their processes
        // end, their files stay), and those already on disk stay there.
        let paused: Vec<SandboxId> = self
            .table()
            .live
            .iter()
            .filter(|(_, l)| l.paused)
            .map(|(id, _)| id.clone())
            .collect();
        for id in paused {
            if let Err(e) = self.persist(&id).await {
                tracing::error!(sandbox_id = %id, error = %e, "pausing to disk at shutdown failed");
            }
        }
        self.drain_pools().await;
        let ids: Vec<SandboxId> = self.table().live.keys().cloned().collect();
        let kills = ids.iter().map(|id| self.kill(id));
        for (id, res) in ids.iter().zip(futures::future::join_all(kills).await) {
            if let Err(e) = res {
                tracing::error!(sandbox_id = %id, error = %e, "stopping sandbox at shutdown");
            }
        }
        self.runtime.release().await;
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
