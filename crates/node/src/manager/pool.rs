//! Warm pools: per template, sandboxes started in advance (namespaces, network slot, disk,
//! cgroup, envd up, the template's start command running and its ready check passed), so that a
//! create only has to hand one over: rewrite its boot configuration, `POST /init` envd with the
//! caller's access token and environment, and put it into the live table (about a millisecond).
//!
//! Owns: the pools' bookkeeping ([`PoolTable`], kept inside the node's table so that warm
//! sandboxes count against `max_sandboxes` atomically with creates), claiming and handing over,
//! and the filler task that refills pools in the background with bounded concurrency.
//!
//! Rules:
//! - A warm sandbox is used once. It never served anyone before it is handed over, and it
//!   leaves the pool for good when it is claimed; nothing of one user reaches another.
//! - A create can use a warm sandbox when it asks for the template's limits, the default egress
//!   policy and the start command (every create of the control plane except forks and
//!   non-default limits or policies). The sandbox id is the warm sandbox's, chosen when it was
//!   filled: the control plane asks [`LocalNode::claim`] for it before it records the sandbox.
//! - A pool exists for a template once a create asked for it (or from the start for the
//!   configured ones) and is emptied when no create asked for it for [`PoolConfig::idle`]. A
//!   template changed since a sandbox was filled (rebuilt, deleted) makes that sandbox stale:
//!   it is discarded, never handed over.
//! - Warm sandboxes give their slot up to creates when the node is full, and the filler keeps
//!   one slot free. Shutdown waits for fills in flight, then kills every warm sandbox.
//! - A fill that fails (a broken start command, say) backs off exponentially, up to a minute.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use paddock_domain::{SandboxId, TemplateName};
use paddock_sandbox::SandboxHandle;
use paddock_templates::{LayerLease, Template};

use super::{boot_config, Booted, LocalNode, Reservation, SandboxMeta};
use crate::envd_client::{EnvdClient, InitBody};
use crate::{CreateRequest, EgressPolicy, LocalError, NodeSandbox};

/// How often the filler looks at the pools without being woken.
const TICK: Duration = Duration::from_secs(1);
/// A claimed sandbox whose create has not come within this time is discarded.
const CLAIM_TTL: Duration = Duration::from_secs(60);
/// Longest wait before a template whose fills fail is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Configuration of the warm pools of one node.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Sandboxes kept ready per template (0: no pools).
    pub size: usize,
    /// Templates whose pools are filled from the start and never emptied for idleness.
    pub pinned: Vec<TemplateName>,
    /// Most fills running at once, node-wide.
    pub fill_concurrency: usize,
    /// A pool no create asked for within this time is emptied (until the next create).
    pub idle: Duration,
}

impl Default for PoolConfig {
    /// Pools off.
    fn default() -> Self {
        PoolConfig {
            size: 0,
            pinned: Vec::new(),
            fill_concurrency: 1,
            idle: Duration::from_secs(600),
        }
    }
}

pub use paddock_node_contract::metrics::{PoolStats, TemplatePoolStats};

/// A sandbox started in advance for a template's pool.
pub(super) struct Warm {
    pub(super) id: SandboxId,
    handle: SandboxHandle,
    /// The template as it was when the sandbox was filled.
    pub(super) template: Template,
    lease: LayerLease,
    /// The access token envd was booted with; known only to the node.
    token: String,
}

struct TemplatePool {
    /// Oldest first.
    ready: VecDeque<Warm>,
    filling: usize,
    last_wanted: Instant,
    pinned: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

impl TemplatePool {
    fn new(pinned: bool) -> Self {
        TemplatePool {
            ready: VecDeque::new(),
            filling: 0,
            last_wanted: Instant::now(),
            pinned,
            failures: 0,
            retry_at: None,
        }
    }
}

/// The pools' part of the node's table.
#[derive(Default)]
pub(super) struct PoolTable {
    pools: HashMap<TemplateName, TemplatePool>,
    claimed: HashMap<SandboxId, (Warm, Instant)>,
    /// Taken out of the pools (evicted, stale, idle); the filler kills them.
    doomed: Vec<Warm>,
    /// Fills in flight, node-wide.
    fills: usize,
    hits: u64,
    misses: u64,
    fill_failures: u64,
}

impl std::fmt::Debug for PoolTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolTable")
            .field("ready", &self.ready_count())
            .field("claimed", &self.claimed.len())
            .field("doomed", &self.doomed.len())
            .field("fills", &self.fills)
            .finish()
    }
}

impl PoolTable {
    /// Creates the pools of `templates`, kept from the start.
    pub(super) fn pin(&mut self, templates: &[TemplateName]) {
        for name in templates {
            self.pools
                .entry(name.clone())
                .or_insert_with(|| TemplatePool::new(true))
                .pinned = true;
        }
    }

    fn ready_count(&self) -> usize {
        self.pools.values().map(|p| p.ready.len()).sum()
    }

    /// Warm sandboxes that hold a slot (fills in flight hold theirs as reservations). Doomed
    /// ones gave theirs up when they were taken out of their pool: an evicted sandbox's slot
    /// goes to the create that evicted it while it is being stopped.
    /// Warm sandboxes being started right now (each holds a slot until it is ready, when a
    /// create may evict it).
    pub(super) fn fills_in_progress(&self) -> usize {
        self.fills
    }

    pub(super) fn held(&self) -> usize {
        self.ready_count() + self.claimed.len()
    }

    /// Moves the oldest ready sandbox of the fullest pool out, to be killed; `false` if no
    /// pool has one.
    pub(super) fn evict_one(&mut self) -> bool {
        let fullest = self
            .pools
            .values_mut()
            .filter(|p| !p.ready.is_empty())
            .max_by_key(|p| p.ready.len());
        match fullest.and_then(|p| p.ready.pop_front()) {
            Some(warm) => {
                self.doomed.push(warm);
                true
            }
            None => false,
        }
    }

    /// Takes ready sandbox `id` out of its pool (it died).
    pub(super) fn remove_ready(&mut self, id: &SandboxId) -> Option<Warm> {
        for pool in self.pools.values_mut() {
            if let Some(at) = pool.ready.iter().position(|w| &w.id == id) {
                return pool.ready.remove(at);
            }
        }
        None
    }

    /// Takes claimed sandbox `id` out of the table.
    pub(super) fn unclaim(&mut self, id: &SandboxId) -> Option<Warm> {
        self.claimed.remove(id).map(|(warm, _)| warm)
    }
}

impl LocalNode {
    /// See [`crate::Node::claim_warm`].
    pub(super) fn claim(&self, req: &CreateRequest) -> Option<SandboxId> {
        if self.cfg.warm_pool.size == 0
            || !req.start_cmd
            || req.resources.is_some()
            || (self.cfg.network.is_some() && req.network != EgressPolicy::default())
        {
            return None;
        }
        // Read before taking the lock: a file read.
        let current = self.templates.get(&req.template).ok().flatten()?;
        let mut table = self.table_mut();
        if table.shutting_down {
            return None;
        }
        let pools = &mut table.pool;
        let pool = pools
            .pools
            .entry(req.template.clone())
            .or_insert_with(|| TemplatePool::new(false));
        pool.last_wanted = Instant::now();
        let mut found = None;
        while let Some(warm) = pool.ready.pop_front() {
            if warm.template == current && self.runtime.is_alive(&warm.id) {
                found = Some(warm);
                break;
            }
            pools.doomed.push(warm);
        }
        self.pool_wake.notify_one();
        match found {
            Some(warm) => {
                let id = warm.id.clone();
                pools.claimed.insert(id.clone(), (warm, Instant::now()));
                Some(id)
            }
            None => {
                pools.misses += 1;
                None
            }
        }
    }

    /// Counts a hand-over: a hit, or a miss when it failed and the create started cold.
    pub(super) fn count_hand_over(&self, ok: bool) {
        let mut table = self.table_mut();
        if ok {
            table.pool.hits += 1;
        } else {
            table.pool.misses += 1;
        }
    }

    /// Gives live sandbox `id` (envd on `socket`, accepting `current_token`) to the create
    /// `req`: writes the create's boot configuration (read again by a start from disk) and
    /// re-initialises envd with the caller's access token, environment, user and workdir.
    pub(super) async fn reinit(
        &self,
        req: &CreateRequest,
        meta: &SandboxMeta,
        socket: std::path::PathBuf,
        current_token: &str,
    ) -> Result<(), LocalError> {
        self.prepare_state_dir(req, meta)?;
        let boot = boot_config(req, meta);
        let envd = EnvdClient::new(socket, Some(current_token.to_string()));
        envd.init(&InitBody {
            access_token: req.access_token.clone(),
            env_vars: boot.env_vars,
            default_user: boot.default_user.unwrap_or_else(|| "user".into()),
            default_workdir: boot.default_workdir,
            timestamp: chrono::Utc::now(),
        })
        .await
        .map_err(|e| LocalError::Envd(e.to_string()))
    }

    /// The claimed warm sandbox `id`, taken out of the table.
    pub(super) fn take_claimed(&self, id: &SandboxId) -> Option<Warm> {
        self.table_mut().pool.unclaim(id)
    }

    /// Hands claimed sandbox `warm` over to the create `req`: writes the create's boot
    /// configuration (read again by a start from disk), re-initialises envd with the caller's
    /// access token and environment, and admits it as live. On failure the warm sandbox is
    /// gone, and the id is free for a new start.
    pub(super) async fn hand_over(
        &self,
        req: &CreateRequest,
        warm: Warm,
    ) -> Result<NodeSandbox, LocalError> {
        let started = Instant::now();
        let reservation = {
            let mut table = self.table_mut();
            if table.shutting_down {
                None
            } else {
                table.creating.insert(req.id.clone());
                Some(Reservation {
                    node: self,
                    id: req.id.clone(),
                })
            }
        };
        let Some(reservation) = reservation else {
            self.discard(warm).await;
            return Err(LocalError::Busy("shutting down".into()));
        };
        let meta = SandboxMeta {
            template: req.template.clone(),
            resources: warm.template.resources,
            layers: warm.template.layers.clone(),
            network: req.network.clone(),
            config: warm.template.config.clone(),
        };
        let initialised = self
            .reinit(req, &meta, warm.handle.envd_socket.clone(), &warm.token)
            .await;
        if let Err(e) = initialised {
            self.discard(warm).await;
            return Err(e);
        }
        let Warm {
            handle,
            template,
            lease,
            ..
        } = warm;
        let booted = Booted {
            handle,
            meta: meta.clone(),
            template,
            lease,
            reservation,
            env_deferred: false,
        };
        self.admit_live(&req.id, booted).await?;
        tracing::info!(
            sandbox_id = %req.id,
            template = %req.template,
            elapsed_us = started.elapsed().as_micros() as u64,
            "sandbox running (from the warm pool)"
        );
        Ok(NodeSandbox {
            id: req.id.clone(),
            template: meta.template,
            resources: meta.resources,
        })
    }

    /// Stops a warm sandbox and gives back everything it holds.
    pub(super) async fn discard(&self, warm: Warm) {
        let id = warm.id.clone();
        if let Err(e) = self.runtime.kill(&id, &self.state_dir(&id)).await {
            tracing::error!(sandbox_id = %id, error = %e, "stopping a warm sandbox");
        }
        self.release_network(&id).await;
        // Its template may have been deleted meanwhile: its layers may be unused now.
        if warm.lease.release() {
            self.collect_garbage().await;
        }
    }

    /// Shutdown: kills every warm sandbox (ready, claimed, doomed) and forgets the pools.
    pub(super) async fn drain_pools(&self) {
        let all: Vec<Warm> = {
            let mut table = self.table_mut();
            let pools = &mut table.pool;
            let mut all: Vec<Warm> = pools.doomed.drain(..).collect();
            all.extend(pools.claimed.drain().map(|(_, (w, _))| w));
            for pool in pools.pools.values_mut() {
                all.extend(pool.ready.drain(..));
            }
            all
        };
        if !all.is_empty() {
            tracing::info!(count = all.len(), "stopping warm sandboxes");
        }
        futures::future::join_all(all.into_iter().map(|w| self.discard(w))).await;
    }

    /// See [`crate::Node::pool_stats`].
    pub(super) fn stats(&self) -> crate::PoolStats {
        let table = self.table();
        let mut pools: Vec<TemplatePoolStats> = table
            .pool
            .pools
            .iter()
            .map(|(name, p)| TemplatePoolStats {
                template: name.clone(),
                ready: p.ready.len(),
                filling: p.filling,
                size: self.cfg.warm_pool.size,
            })
            .collect();
        pools.sort_by(|a, b| a.template.as_str().cmp(b.template.as_str()));
        PoolStats {
            pools,
            hits: table.pool.hits,
            misses: table.pool.misses,
            fill_failures: table.pool.fill_failures,
            claimed: table.pool.claimed.len(),
        }
    }

    /// A slot for a fill: like a create's, but never the last free one and never by evicting.
    fn reserve_fill(&self, id: &SandboxId) -> Result<Reservation<'_>, LocalError> {
        let mut table = self.table_mut();
        if table.shutting_down {
            return Err(LocalError::Busy("shutting down".into()));
        }
        let used = table.live.len() + table.creating.len() + table.pool.held();
        if used + 1 >= self.cfg.max_sandboxes {
            return Err(LocalError::Busy(
                "no slot to spare for a warm sandbox".into(),
            ));
        }
        table.creating.insert(id.clone());
        Ok(Reservation {
            node: self,
            id: id.clone(),
        })
    }

    /// Starts one sandbox for `name`'s pool and puts it there.
    async fn fill_one(&self, name: &TemplateName) -> Result<(), LocalError> {
        let req = CreateRequest {
            id: SandboxId::generate(),
            template: name.clone(),
            env_vars: HashMap::new(),
            access_token: hex::encode(rand::random::<[u8; 32]>()),
            resources: None,
            network: EgressPolicy::default(),
            start_cmd: true,
        };
        let id = req.id.clone();
        let booted = self.boot(&req, self.reserve_fill(&id)?, false).await?;
        let socket = booted.handle.envd_socket.clone();
        let started = self
            .run_start_cmd(&id, socket, &booted.meta.config, &req.access_token)
            .await
            .map_err(LocalError::StartCmd);
        let Booted {
            handle,
            template,
            lease,
            reservation,
            ..
        } = booted;
        let warm = Warm {
            id: id.clone(),
            handle,
            template,
            lease,
            token: req.access_token,
        };
        if let Err(e) = started {
            self.discard(warm).await;
            return Err(e);
        }
        if !self.runtime.is_alive(&id) {
            self.discard(warm).await;
            return Err(LocalError::Envd(
                "envd exited right after it started".into(),
            ));
        }
        // Placed while the reservation still counts, so shutdown (which waits for
        // reservations) finds it in the pool.
        let rejected = {
            let mut table = self.table_mut();
            let shutting_down = table.shutting_down;
            match table.pool.pools.get_mut(name) {
                Some(pool) if !shutting_down => {
                    pool.ready.push_back(warm);
                    None
                }
                _ => Some(warm),
            }
        };
        if let Some(warm) = rejected {
            self.discard(warm).await;
        }
        drop(reservation);
        tracing::debug!(sandbox_id = %id, template = %name, "warm sandbox ready");
        Ok(())
    }

    /// One round of the filler: finds what to discard (stale, idle, dead, claims never
    /// used) and which fills to start, under the lock; marks the fills as in flight.
    fn plan_round(&self, current: &HashMap<TemplateName, Option<Template>>) -> Round {
        let cfg = &self.cfg.warm_pool;
        let now = Instant::now();
        if !self.reconciled.load(std::sync::atomic::Ordering::Acquire) {
            return Round::default();
        }
        let mut table = self.table_mut();
        if table.shutting_down {
            return Round::default();
        }
        let mut free = self
            .cfg
            .max_sandboxes
            .saturating_sub(table.live.len() + table.creating.len() + table.pool.held());
        // Creates in flight (not fills) go first: no new fill competes with them for the CPU.
        let foreground = table.creating.len().saturating_sub(table.pool.fills);
        let pools = &mut table.pool;
        let mut doomed: Vec<Warm> = pools.doomed.drain(..).collect();
        let expired: Vec<SandboxId> = pools
            .claimed
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) > CLAIM_TTL)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some((warm, _)) = pools.claimed.remove(&id) {
                tracing::warn!(sandbox_id = %id, "a claimed warm sandbox was never used; discarding it");
                doomed.push(warm);
            }
        }
        let mut fills = Vec::new();
        let mut gone = Vec::new();
        for (name, pool) in pools.pools.iter_mut() {
            let template = current.get(name).cloned().flatten();
            let idle = !pool.pinned && now.duration_since(pool.last_wanted) > cfg.idle;
            let mut kept = VecDeque::with_capacity(pool.ready.len());
            for warm in pool.ready.drain(..) {
                let fresh = template.as_ref() == Some(&warm.template);
                if !idle && fresh && self.runtime.is_alive(&warm.id) {
                    kept.push_back(warm);
                } else {
                    doomed.push(warm);
                }
            }
            pool.ready = kept;
            if idle || template.is_none() {
                if pool.filling == 0 && (!pool.pinned || template.is_none()) {
                    gone.push(name.clone());
                }
                continue;
            }
            if foreground > 0 || pool.retry_at.is_some_and(|at| now < at) {
                continue;
            }
            while pool.ready.len() + pool.filling < cfg.size
                && pools.fills + fills.len() < cfg.fill_concurrency
                && free > 1
            {
                pool.filling += 1;
                free -= 1;
                fills.push(name.clone());
            }
        }
        for name in gone {
            // A pinned pool whose template is gone stays pinned: it fills again once the
            // template exists.
            if pools.pools.get(&name).is_some_and(|p| !p.pinned) {
                pools.pools.remove(&name);
            }
        }
        pools.fills += fills.len();
        Round { doomed, fills }
    }

    /// Books the end of a fill of `name`'s pool.
    fn fill_done(&self, name: &TemplateName, result: Result<(), LocalError>) {
        let mut table = self.table_mut();
        let pools = &mut table.pool;
        pools.fills = pools.fills.saturating_sub(1);
        if result.is_err() {
            pools.fill_failures += 1;
        }
        let Some(pool) = pools.pools.get_mut(name) else {
            return;
        };
        pool.filling = pool.filling.saturating_sub(1);
        match result {
            Ok(()) => {
                pool.failures = 0;
                pool.retry_at = None;
            }
            Err(e) => {
                pool.failures = pool.failures.saturating_add(1);
                let backoff = Duration::from_secs(1u64 << pool.failures.min(6)).min(MAX_BACKOFF);
                pool.retry_at = Some(Instant::now() + backoff);
                tracing::warn!(template = %name, error = %e, retry_in_s = backoff.as_secs(), "filling a warm pool failed");
            }
        }
    }
}

/// What one filler round does.
#[derive(Default)]
struct Round {
    doomed: Vec<Warm>,
    fills: Vec<TemplateName>,
}

/// The filler: refills the pools, discards stale and unused warm sandboxes, on every wake-up
/// (claims, finished fills, evictions) and every [`TICK`]. Ends when the node is dropped or
/// shuts down.
pub(super) async fn run_filler(node: Weak<LocalNode>) {
    let Some(wake) = node.upgrade().map(|n| Arc::clone(&n.pool_wake)) else {
        return;
    };
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let Some(node) = node.upgrade() else { return };
            if node.table().shutting_down {
                return;
            }
            // The templates as they are now, read outside the lock (file reads).
            let names: Vec<TemplateName> = node.table().pool.pools.keys().cloned().collect();
            let current: HashMap<TemplateName, Option<Template>> = names
                .into_iter()
                .map(|n| {
                    let t = node.templates.get(&n).ok().flatten();
                    (n, t)
                })
                .collect();
            let round = node.plan_round(&current);
            for name in round.fills {
                let node = Arc::clone(&node);
                tokio::spawn(async move {
                    let result = node.fill_one(&name).await;
                    node.fill_done(&name, result);
                    node.pool_wake.notify_one();
                });
            }
            for warm in round.doomed {
                node.discard(warm).await;
            }
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}
