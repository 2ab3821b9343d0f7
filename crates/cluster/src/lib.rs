//! Many nodes as one [`Node`]: [`NodeSet`] is what the control plane of a cluster talks to.
//! Creates (and builds) are placed by [`paddock_placement`] (best of K ready nodes, retried
//! on up to three nodes when one is full or fails, circuit breakers for failing ones); every
//! other call about a sandbox goes to the node that holds it ([`NodeSet::owner_of`]); calls
//! about templates go to every node. A template is on the nodes that made or received it: a
//! create placed on a node that lacks it first sends it there from a node that has it
//! ([`NodeSet::replicate`]: the manifest, then the layers the node lacks, checked against
//! their digests), and a node that joins receives `base` from another or, as the first, builds
//! it ([`NodeSet::provide_base`]), so `base` is built once per cluster. Members come and go at runtime ([`NodeSet::add`],
//! [`NodeSet::remove`]); each member's events are merged into the set's stream, and when a
//! member's stream ends (it went away, or restarted) the set subscribes again and reports as
//! lost ([`ExitReason::NodeLost`]) what the member no longer holds.
//!
//! A member's sandboxes are known from the creates that went through the set, from
//! [`Node::reconcile`] and, for an id the set has not seen, by asking every member's
//! [`Node::status`]. Removing a member reports its sandboxes as exited with
//! [`ExitReason::NodeLost`] (lost with it), as does [`NodeSet::report_gone`]; the exits a
//! member reports itself keep the member's reason.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use paddock_domain::{EgressPolicy, Resources, SandboxId, TemplateName};
use paddock_node_contract::build::{BuildError, BuildRequest, Built, LogSink};
use paddock_node_contract::{
    CreateRequest, ErrorCode, ExitReason, LogEntry, MetricSample, MetricsRange, Node, NodeError,
    NodeEvent, NodeSandbox, PauseMode, PoolStats, SandboxStatus, SnapshotMade, TemplateInfo,
    TemplateSummary, EVENT_BUFFER,
};
use paddock_placement::{
    Answer, Capacity, Demand, Load, NodeStatus, NodeView, PlaceError, Placer, PlacerConfig,
    Request, Usage,
};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use catalog::{Catalog, CatalogEntry, CatalogError, DirCatalog};

/// How many nodes one create is tried on.
pub const CREATE_TRIES: usize = 3;
/// How long a template found on a node is answered from memory (every create looks its
/// template up first; this saves that round trip). Templates changed through the set are
/// forgotten at once; ones changed on a node directly show after this long.
pub const TEMPLATE_CACHE_TTL: Duration = Duration::from_secs(5);
/// How long a node without `base` waits for a node that has it to join before it builds it
/// itself (the nodes of a new cluster start together; the first to register may not be the
/// one with `base`).
pub const BASE_GRACE: Duration = Duration::from_secs(15);
/// How long a warm sandbox claimed ahead is handed to a create (a node releases a claim no
/// create followed after a minute; this leaves a create time to arrive).
pub const PREFETCH_TTL: Duration = Duration::from_secs(40);
/// How long after a failed transfer of a template to a node the next may start, at first and
/// at most (doubling with each failure in a row; a success starts over).
pub const TRANSFER_BACKOFF: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(60));
/// How long after a create the claim ahead for the next create on its node waits: past the
/// first command a client sends the new sandbox (the claim starts the node's pool refill,
/// which would compete with that command for the node's CPU). Measured on 2 cores with
/// `bench/run.sh --configs cluster`: claimed before the create, the cluster added +3.2 ms
/// at p50 to SDK create + first command; right after it, +1.9 to +2.1 ms; 8 ms after it,
/// -2.2 ms (the refill no longer meets the first command); 25 ms after it, +0.05 ms with a
/// longer tail (the next create of a tight loop meets the refill instead).
pub const PREFETCH_DELAY: Duration = Duration::from_millis(8);
/// How long a member's event pump waits before subscribing again, at first and at most.
const RESUBSCRIBE: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// Held while a template is sent to a node.
type TransferLock = Arc<tokio::sync::Mutex<()>>;

struct Member {
    node: Arc<dyn Node>,
    pump: JoinHandle<()>,
}

/// Where a sandbox runs and what placement counted for it there.
#[derive(Debug, Clone)]
struct Owner {
    node: String,
    demand: Demand,
    /// Its status as the set last made it (create, pause, resume through the set); `None` for
    /// a sandbox the set learnt of from a node, whose status is asked for.
    status: Option<SandboxStatus>,
}

struct Inner {
    members: RwLock<HashMap<String, Member>>,
    placer: Mutex<Placer>,
    owners: RwLock<HashMap<SandboxId, Owner>>,
    /// Snapshots (and forks' templates) by the node that made them: creates of them go there
    /// while it can take them (affinity where the files are), elsewhere otherwise.
    homes: RwLock<HashMap<TemplateName, String>>,
    /// Templates found recently, and when (see [`TEMPLATE_CACHE_TTL`]).
    found: RwLock<HashMap<TemplateName, (TemplateInfo, Instant)>>,
    events: broadcast::Sender<NodeEvent>,
    /// One transfer of a template to a node at a time ([`NodeSet::replicate`]).
    transfers: Mutex<HashMap<(String, TemplateName), TransferLock>>,
    /// Transfers that failed, by node and template: how many times in a row, the last error,
    /// and when the next may start ([`TRANSFER_BACKOFF`]).
    transfer_failures: Mutex<HashMap<(String, TemplateName), transfer::Failures>>,
    /// One [`NodeSet::provide_base`] at a time, so `base` is built once per cluster.
    base: tokio::sync::Mutex<()>,
    /// See [`NodeSet::set_base_grace`].
    base_grace: Mutex<Duration>,
    /// Sandboxes as they start or resume, and on which member ([`NodeSet::started`]).
    started: broadcast::Sender<(SandboxId, String)>,
    /// Warm sandboxes claimed ahead, by member and template ([`NodeSet::prefetch`]).
    prefetched: Mutex<HashMap<(String, TemplateName), (SandboxId, Instant)>>,
    /// Prefetches under way.
    prefetching: Mutex<HashSet<(String, TemplateName)>>,
    /// How long after a create a claim ahead waits ([`PREFETCH_DELAY`]).
    prefetch_delay: Mutex<Duration>,
    /// The control plane's catalog of templates ([`NodeSet::set_catalog`]).
    catalog: RwLock<Option<Arc<dyn Catalog>>>,
    /// How many times each template changed through the set: an archive of a template that
    /// changed while it ran is not recorded.
    generations: Mutex<HashMap<TemplateName, u64>>,
    /// Archives (and collections of unused layers) one at a time.
    archiving: tokio::sync::Mutex<()>,
}

/// The nodes of a cluster as one [`Node`]. Cheap to clone.
#[derive(Clone)]
pub struct NodeSet {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NodeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let members: Vec<String> = self.member_ids();
        f.debug_struct("NodeSet")
            .field("members", &members)
            .finish()
    }
}

impl Default for NodeSet {
    fn default() -> Self {
        Self::new(PlacerConfig::default())
    }
}

/// What placement counts for a create that does not name its limits (the template's are
/// only known to the node): the platform's default sandbox.
fn demand_of(resources: Option<&Resources>) -> Demand {
    Demand::from(resources.unwrap_or(&Resources::default()))
}

/// How a node's failed create counts for placement.
fn answer_of(e: &NodeError) -> Answer {
    match e.code {
        ErrorCode::Busy => Answer::Full,
        // The node is healthy; no member has the template (create sends it to a node that
        // lacks it before it gets here).
        ErrorCode::TemplateNotFound => Answer::Rejected,
        ErrorCode::Unavailable | ErrorCode::Internal => Answer::NodeFailed,
        _ => Answer::Rejected,
    }
}

fn place_error(e: &PlaceError) -> NodeError {
    match e {
        PlaceError::AllFull { .. } | PlaceError::PinnedFull { .. } => NodeError::busy(e),
        PlaceError::NoReadyNode | PlaceError::PinnedUnavailable { .. } => {
            NodeError::unavailable(e.to_string())
        }
    }
}

impl NodeSet {
    /// An empty set.
    pub fn new(config: PlacerConfig) -> Self {
        NodeSet {
            inner: Arc::new(Inner {
                members: RwLock::new(HashMap::new()),
                placer: Mutex::new(Placer::new(config)),
                owners: RwLock::new(HashMap::new()),
                homes: RwLock::new(HashMap::new()),
                found: RwLock::new(HashMap::new()),
                events: broadcast::channel(EVENT_BUFFER).0,
                transfers: Mutex::new(HashMap::new()),
                transfer_failures: Mutex::new(HashMap::new()),
                base: tokio::sync::Mutex::new(()),
                base_grace: Mutex::new(BASE_GRACE),
                started: broadcast::channel(EVENT_BUFFER).0,
                prefetched: Mutex::new(HashMap::new()),
                prefetching: Mutex::new(HashSet::new()),
                prefetch_delay: Mutex::new(PREFETCH_DELAY),
                catalog: RwLock::new(None),
                generations: Mutex::new(HashMap::new()),
                archiving: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Adds (or replaces) member `id`, ready to take sandboxes up to `capacity`. A member
    /// that replaces one of the same id (the node restarted and registered again) is swept
    /// once subscribed: what the set placed on it that it no longer holds was lost.
    pub fn add(&self, id: &str, node: Arc<dyn Node>, capacity: Capacity) {
        let replacing = self.has_member(id);
        let pump = tokio::spawn(pump_events(
            Arc::downgrade(&self.inner),
            id.to_string(),
            Arc::clone(&node),
            replacing,
        ));
        let old = self
            .inner
            .members
            .write()
            .expect("members lock")
            .insert(id.to_string(), Member { node, pump });
        if let Some(old) = old {
            old.pump.abort();
        }
        self.inner
            .placer
            .lock()
            .expect("placer lock")
            .upsert(NodeView::new(id, capacity));
        tracing::info!(node = id, "node joined the set");
    }

    /// Removes member `id`; its sandboxes are lost with it and reported as exited with
    /// [`ExitReason::NodeLost`].
    pub fn remove(&self, id: &str) -> bool {
        let member = self.inner.members.write().expect("members lock").remove(id);
        self.inner.placer.lock().expect("placer lock").remove(id);
        let Some(member) = member else {
            return false;
        };
        member.pump.abort();
        self.inner
            .prefetched
            .lock()
            .expect("prefetch lock")
            .retain(|(node, _), _| node != id);
        let lost: Vec<SandboxId> = {
            let mut owners = self.inner.owners.write().expect("owners lock");
            let lost: Vec<SandboxId> = owners
                .iter()
                .filter(|(_, o)| o.node == id)
                .map(|(s, _)| s.clone())
                .collect();
            for s in &lost {
                owners.remove(s);
            }
            lost
        };
        tracing::warn!(
            node = id,
            sandboxes = lost.len(),
            "node left the set; its sandboxes are lost"
        );
        for sandbox in lost {
            let _ = self
                .inner
                .events
                .send(NodeEvent::exited(sandbox, ExitReason::NodeLost));
        }
        true
    }

    /// Records that member `node` holds `ids` (what its reconcile kept).
    pub fn adopt(&self, node: &str, ids: &[SandboxId]) {
        for id in ids {
            self.own(id, node, None);
        }
    }

    /// Reports sandboxes as lost ([`ExitReason::NodeLost`]) that no member holds any more
    /// (e.g. found by the control plane after its restart: their node never came back).
    pub fn report_gone(&self, ids: &[SandboxId]) {
        for id in ids {
            self.disown(id);
            let _ = self
                .inner
                .events
                .send(NodeEvent::exited(id.clone(), ExitReason::NodeLost));
        }
    }

    /// Sets member `id`'s status (only `Ready` members take new sandboxes).
    pub fn set_status(&self, id: &str, status: NodeStatus) -> bool {
        self.inner
            .placer
            .lock()
            .expect("placer lock")
            .set_status(id, status)
    }

    /// Records what member `id` reported it holds and how loaded it is.
    pub fn report(&self, id: &str, allocated: Usage, load: Load) -> bool {
        self.inner
            .placer
            .lock()
            .expect("placer lock")
            .report(id, allocated, load)
    }

    /// Records which templates member `id` reported warm sandboxes of, ready to be handed over:
    /// placement prefers such a node for a create of the template. A warm sandbox the set
    /// claimed ahead on the member counts as one.
    pub fn report_warm(&self, id: &str, templates: &[TemplateName]) -> bool {
        let mut warm: HashSet<TemplateName> = templates.iter().cloned().collect();
        warm.extend(
            self.inner
                .prefetched
                .lock()
                .expect("prefetch lock")
                .iter()
                .filter(|((node, _), (_, at))| node == id && at.elapsed() < PREFETCH_TTL)
                .map(|((_, t), _)| t.clone()),
        );
        self.inner
            .placer
            .lock()
            .expect("placer lock")
            .set_warm_templates(id, &warm)
    }

    /// The members' ids, sorted.
    pub fn member_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .inner
            .members
            .read()
            .expect("members lock")
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// Whether `id` is a member.
    pub fn has_member(&self, id: &str) -> bool {
        self.inner
            .members
            .read()
            .expect("members lock")
            .contains_key(id)
    }

    /// The member that holds sandbox `id`, if the set knows it.
    pub fn owner_of(&self, id: &SandboxId) -> Option<String> {
        self.inner
            .owners
            .read()
            .expect("owners lock")
            .get(id)
            .map(|o| o.node.clone())
    }

    /// The sandboxes the set knows on member `node`.
    pub fn sandboxes_on(&self, node: &str) -> Vec<SandboxId> {
        let mut ids: Vec<SandboxId> = self
            .inner
            .owners
            .read()
            .expect("owners lock")
            .iter()
            .filter(|(_, o)| o.node == node)
            .map(|(s, _)| s.clone())
            .collect();
        ids.sort();
        ids
    }

    fn member(&self, id: &str) -> Option<Arc<dyn Node>> {
        self.inner
            .members
            .read()
            .expect("members lock")
            .get(id)
            .map(|m| Arc::clone(&m.node))
    }

    /// Member `id`, or `unavailable` when it left.
    fn member_or_gone(&self, id: &str) -> Result<Arc<dyn Node>, NodeError> {
        self.member(id)
            .ok_or_else(|| NodeError::unavailable(format!("node {id} left the cluster")))
    }

    fn members(&self) -> Vec<(String, Arc<dyn Node>)> {
        let mut all: Vec<(String, Arc<dyn Node>)> = self
            .inner
            .members
            .read()
            .expect("members lock")
            .iter()
            .map(|(id, m)| (id.clone(), Arc::clone(&m.node)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Records that `sandbox` runs on `node`, holding `demand` (a sandbox the set learns of
    /// from a node counts as the default sandbox until the node's next report).
    fn own(&self, sandbox: &SandboxId, node: &str, demand: Option<Demand>) {
        let mut owners = self.inner.owners.write().expect("owners lock");
        let known = owners.get(sandbox).is_some_and(|o| o.node == node);
        if known && demand.is_none() {
            return;
        }
        owners.insert(
            sandbox.clone(),
            Owner {
                node: node.to_string(),
                demand: demand.unwrap_or_else(|| demand_of(None)),
                status: None,
            },
        );
    }

    /// The node that made template `name`, if one did through the set.
    pub fn home_of(&self, name: &TemplateName) -> Option<String> {
        self.inner
            .homes
            .read()
            .expect("homes lock")
            .get(name)
            .cloned()
    }

    fn set_home(&self, name: &TemplateName, node: Option<&str>) {
        self.forget_template(name);
        let mut homes = self.inner.homes.write().expect("homes lock");
        match node {
            Some(n) => homes.insert(name.clone(), n.to_string()),
            None => homes.remove(name),
        };
    }

    /// Records the status the set just gave `sandbox` (after a create, pause or resume).
    fn set_status_of(&self, sandbox: &SandboxId, status: SandboxStatus) {
        self.note_status(sandbox, Some(status));
    }

    /// Forgets what the set knew of `sandbox`'s status (a change is under way).
    fn forget_status(&self, sandbox: &SandboxId) {
        self.note_status(sandbox, None);
    }

    fn note_status(&self, sandbox: &SandboxId, status: Option<SandboxStatus>) {
        if let Some(o) = self
            .inner
            .owners
            .write()
            .expect("owners lock")
            .get_mut(sandbox)
        {
            o.status = status;
        }
    }

    /// The status the set last gave `sandbox`, if it knows it.
    fn known_status(&self, sandbox: &SandboxId) -> Option<SandboxStatus> {
        self.inner
            .owners
            .read()
            .expect("owners lock")
            .get(sandbox)
            .and_then(|o| o.status)
    }

    /// Drops `name` from the template cache (it changed through the set).
    fn forget_template(&self, name: &TemplateName) {
        *self
            .inner
            .generations
            .lock()
            .expect("generations lock")
            .entry(name.clone())
            .or_default() += 1;
        self.inner
            .found
            .write()
            .expect("templates lock")
            .remove(name);
        // Claimed ahead from the template as it was (its node releases them in a minute).
        self.inner
            .prefetched
            .lock()
            .expect("prefetch lock")
            .retain(|(_, t), _| t != name);
    }

    fn disown(&self, sandbox: &SandboxId) {
        let gone = self
            .inner
            .owners
            .write()
            .expect("owners lock")
            .remove(sandbox);
        if let Some(o) = gone {
            free(&self.inner, &o);
        }
    }

    /// The member holding `sandbox`: the one on record, else the first that reports it.
    async fn holder(&self, sandbox: &SandboxId) -> Result<Option<Arc<dyn Node>>, NodeError> {
        if let Some(owner) = self.owner_of(sandbox) {
            return match self.member(&owner) {
                Some(node) => Ok(Some(node)),
                None => Err(NodeError::unavailable(format!(
                    "node {owner} that holds sandbox {sandbox} is not in the cluster"
                ))),
            };
        }
        for (id, node) in self.members() {
            if node.status(sandbox).await?.is_some() {
                self.own(sandbox, &id, None);
                return Ok(Some(node));
            }
        }
        Ok(None)
    }

    async fn holder_or_not_found(&self, sandbox: &SandboxId) -> Result<Arc<dyn Node>, NodeError> {
        self.holder(sandbox)
            .await?
            .ok_or_else(|| NodeError::sandbox_not_found(sandbox))
    }

    /// Places a request of `demand` (excluding `tried`), reserving it.
    fn place(
        &self,
        demand: Demand,
        template: &TemplateName,
        pin: Option<&str>,
        tried: &HashSet<String>,
    ) -> Result<paddock_placement::Placement, NodeError> {
        let mut req = Request::new(demand).with_template(template.clone());
        if let Some(pin) = pin {
            req = req.pinned_to(pin);
        }
        for t in tried {
            req = req.excluding(t.clone());
        }
        self.inner
            .placer
            .lock()
            .expect("placer lock")
            .place(&req, Instant::now())
            .map_err(|e| place_error(&e))
    }

    /// The create of `req` on `node_id` once `req.template` is there (sent by
    /// [`NodeSet::replicate`], which this waits for): placed there, created, owned.
    async fn create_when_sent(
        &self,
        node_id: &str,
        req: &CreateRequest,
        not_found: NodeError,
    ) -> Result<NodeSandbox, NodeError> {
        match self.replicate(&req.template, node_id).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(not_found),
            Err(t) => {
                return Err(NodeError::unavailable(format!(
                    "template '{}' could not be sent to node {node_id}: {}",
                    req.template, t.message
                )))
            }
        }
        let demand = demand_of(req.resources.as_ref());
        let placed = self.place(demand, &req.template, Some(node_id), &HashSet::new())?;
        let node = self.member_or_gone(node_id)?;
        match node.create(req.clone()).await {
            Ok(made) => {
                self.created(&placed, &made, node_id);
                Ok(made)
            }
            Err(e) => {
                self.release(&placed, answer_of(&e));
                Err(e)
            }
        }
    }

    /// Bookkeeping of a create that succeeded on `node_id`.
    fn created(&self, placed: &paddock_placement::Placement, made: &NodeSandbox, node_id: &str) {
        self.release(placed, Answer::Created);
        self.own(&made.id, node_id, Some(Demand::from(&made.resources)));
        self.set_status_of(&made.id, SandboxStatus::Running);
        let _ = self
            .inner
            .started
            .send((made.id.clone(), node_id.to_string()));
    }

    /// Sandboxes as they start (a create) or resume through the set, with the member that runs
    /// them: what the edge proxies are told, so the first request for a new sandbox need not
    /// ask where it is. A subscriber that lags misses some (they are asked for as before).
    pub fn started(&self) -> broadcast::Receiver<(SandboxId, String)> {
        self.inner.started.subscribe()
    }

    fn release(&self, p: &paddock_placement::Placement, answer: Answer) {
        self.inner
            .placer
            .lock()
            .expect("placer lock")
            .release(p, answer, Instant::now());
    }
}

/// Gives back what placement counted for a sandbox that ended.
fn free(inner: &Inner, owner: &Owner) {
    inner
        .placer
        .lock()
        .expect("placer lock")
        .free(&owner.node, &owner.demand);
}

/// Copies member `id`'s events into the set's stream, subscribing again (and reporting as lost
/// what the member no longer holds) whenever its stream ends, until the set is gone. After a
/// lag (events were missed, the member itself is fine) what it no longer holds is reported as
/// exited by itself. `sweep_first`: sweep after the first subscription too (a member that
/// replaced one of the same id).
async fn pump_events(
    set: std::sync::Weak<Inner>,
    id: String,
    node: Arc<dyn Node>,
    sweep_first: bool,
) {
    let mut wait = RESUBSCRIBE.0;
    let mut sweep_next = sweep_first;
    loop {
        let rx = node.events().await;
        let Some(inner) = set.upgrade() else { return };
        let mut rx = match rx {
            Ok(rx) => {
                wait = RESUBSCRIBE.0;
                if sweep_next {
                    // It went away (or restarted): what it no longer has was lost with it.
                    sweep(&inner, &id, node.as_ref(), ExitReason::NodeLost).await;
                }
                sweep_next = true;
                rx
            }
            Err(e) => {
                tracing::warn!(node = %id, error = %e, "cannot subscribe to the node's events");
                drop(inner);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RESUBSCRIBE.1);
                continue;
            }
        };
        drop(inner);
        loop {
            match rx.recv().await {
                Ok(event) => {
                    let Some(inner) = set.upgrade() else { return };
                    let NodeEvent::Exited { id: sandbox, .. } = &event;
                    let gone = inner.owners.write().expect("owners lock").remove(sandbox);
                    if let Some(o) = gone {
                        free(&inner, &o);
                    }
                    let _ = inner.events.send(event);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let Some(inner) = set.upgrade() else { return };
                    sweep(&inner, &id, node.as_ref(), ExitReason::Exited).await;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        tracing::warn!(node = %id, "the node's event stream ended; subscribing again");
        tokio::time::sleep(wait).await;
    }
}

/// Reports as exited for `reason` every sandbox the set places on member `id` that it no
/// longer holds: not live and, asked one by one, not held at all (a sandbox paused to disk is
/// not live but still there; one created since `live` answered is live now). When the member
/// cannot be asked, nothing is reported.
async fn sweep(inner: &Inner, id: &str, node: &dyn Node, reason: ExitReason) {
    let Ok(live) = node.live().await else {
        return;
    };
    let live: HashSet<SandboxId> = live.into_iter().collect();
    let missing: Vec<SandboxId> = inner
        .owners
        .read()
        .expect("owners lock")
        .iter()
        .filter(|(s, o)| o.node == id && !live.contains(*s))
        .map(|(s, _)| s.clone())
        .collect();
    let mut gone = Vec::new();
    for sandbox in missing {
        match node.status(&sandbox).await {
            Ok(Some(_)) => {}
            Ok(None) => gone.push(sandbox),
            Err(e) => {
                tracing::warn!(node = %id, error = %e, "cannot ask a node what it still holds");
                return;
            }
        }
    }
    let gone: Vec<(SandboxId, Owner)> = {
        let mut owners = inner.owners.write().expect("owners lock");
        let mut removed = Vec::new();
        for s in gone {
            // Still where it was when asked (not killed or moved meanwhile).
            if owners.get(&s).is_some_and(|o| o.node == id) {
                if let Some(o) = owners.remove(&s) {
                    removed.push((s, o));
                }
            }
        }
        removed
    };
    if !gone.is_empty() {
        tracing::warn!(node = %id, sandboxes = gone.len(), %reason, "sandboxes the node no longer holds");
    }
    for (sandbox, owner) in gone {
        free(inner, &owner);
        let _ = inner.events.send(NodeEvent::exited(sandbox, reason));
    }
}

#[async_trait]
impl Node for NodeSet {
    /// Placed by best of K; a node that is full or fails is skipped and the create tried on
    /// another (up to [`CREATE_TRIES`]). A node that lacks the template starts receiving it
    /// in the background while the create tries a node that has it; only when none can take
    /// it does the create wait for the template to arrive.
    async fn create(&self, req: CreateRequest) -> Result<NodeSandbox, NodeError> {
        let demand = demand_of(req.resources.as_ref());
        // A claimed warm sandbox is handed over where it waits (nowhere else); a snapshot or
        // a fork's template starts where its files are if that node can take it, else
        // anywhere (its layers travel).
        let claimed = self.owner_of(&req.id);
        let mut pin = claimed.clone().or_else(|| self.home_of(&req.template));
        let mut tried = HashSet::new();
        let mut last = None;
        // A node that is being sent the template, and the answer that said it lacked it.
        let mut receiving: Option<(String, NodeError)> = None;
        for _ in 0..CREATE_TRIES {
            let placed = match self.place(demand, &req.template, pin.as_deref(), &tried) {
                Ok(p) => p,
                Err(_) if pin.is_some() && claimed.is_none() => {
                    pin = None;
                    match self.place(demand, &req.template, None, &tried) {
                        Ok(p) => p,
                        Err(e) => {
                            last.get_or_insert(e);
                            break;
                        }
                    }
                }
                Err(e) => {
                    last.get_or_insert(e);
                    break;
                }
            };
            let node_id = placed.node().to_string();
            let Some(node) = self.member(&node_id) else {
                self.release(&placed, Answer::NodeFailed);
                tried.insert(node_id);
                continue;
            };
            match node.create(req.clone()).await {
                Ok(made) => {
                    self.created(&placed, &made, &node_id);
                    if claimed.is_some() && Self::plain(&req) {
                        self.prefetch(&node_id, node, &req);
                    }
                    return Ok(made);
                }
                Err(e) if e.is(ErrorCode::TemplateNotFound) && claimed.is_none() => {
                    self.release(&placed, Answer::Withdrawn);
                    // No member has it: not found, whichever node is asked.
                    if self.template(&req.template).await?.is_none() {
                        return Err(e);
                    }
                    self.replicate_in_background(&req.template, &node_id);
                    receiving.get_or_insert((node_id.clone(), e));
                    tried.insert(node_id);
                }
                Err(e) => {
                    let answer = answer_of(&e);
                    self.release(&placed, answer);
                    tracing::warn!(node = %node_id, sandbox_id = %req.id, error = %e, "create failed on a node");
                    if !answer.retry_elsewhere() || claimed.is_some() {
                        if claimed.is_some() {
                            self.disown(&req.id);
                        }
                        return Err(e);
                    }
                    pin = None;
                    tried.insert(node_id);
                    last = Some(e);
                }
            }
        }
        if let Some((node_id, not_found)) = receiving {
            return self.create_when_sent(&node_id, &req, not_found).await;
        }
        Err(last.unwrap_or_else(|| NodeError::unavailable("no node could take the sandbox")))
    }

    async fn kill(&self, id: &SandboxId) -> Result<(), NodeError> {
        let holder = match self.holder(id).await {
            Ok(h) => h,
            // The node that held it is gone: so is the sandbox.
            Err(e) if e.is(ErrorCode::Unavailable) && self.owner_of(id).is_some() => {
                let owner = self.owner_of(id).unwrap_or_default();
                if self.member(&owner).is_none() {
                    self.disown(id);
                    return Ok(());
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if let Some(node) = holder {
            node.kill(id).await?;
        }
        self.disown(id);
        Ok(())
    }

    /// The first answer of a member that has the template; members that cannot be reached
    /// are skipped (a lost node must not hide the others' templates), and only when none
    /// answers is it an error.
    async fn template(&self, name: &TemplateName) -> Result<Option<TemplateInfo>, NodeError> {
        if let Some((info, at)) = self.inner.found.read().expect("templates lock").get(name) {
            if at.elapsed() < TEMPLATE_CACHE_TTL {
                return Ok(Some(info.clone()));
            }
        }
        let (mut answered, mut last_error) = (false, None);
        for (id, node) in self.members() {
            match node.template(name).await {
                Ok(Some(t)) => {
                    self.inner
                        .found
                        .write()
                        .expect("templates lock")
                        .insert(name.clone(), (t.clone(), Instant::now()));
                    return Ok(Some(t));
                }
                Ok(None) => answered = true,
                Err(e) => {
                    tracing::warn!(node = %id, error = %e, "a node could not be asked for a template");
                    last_error = Some(e);
                }
            }
        }
        // Recorded in the catalog though no reachable member has it: it is sent to the
        // node a create is placed on.
        if let Some((_, entry)) = self.catalog_entry(name).await {
            return Ok(Some(TemplateInfo {
                name: entry.summary.name,
                resources: entry.summary.resources,
            }));
        }
        match (answered, last_error) {
            (false, Some(e)) => Err(e),
            _ => Ok(None),
        }
    }

    async fn claim_warm(&self, req: &CreateRequest) -> Result<Option<SandboxId>, NodeError> {
        let demand = demand_of(req.resources.as_ref());
        let placed = match self.place(demand, &req.template, None, &HashSet::new()) {
            Ok(p) => p,
            Err(_) => return Ok(None),
        };
        let node_id = placed.node().to_string();
        // Not a create: the reservation is only for the choice.
        self.release(&placed, Answer::Withdrawn);
        let Some(node) = self.member(&node_id) else {
            return Ok(None);
        };
        // The next claim ahead is made a while after the create that takes this one (see
        // `create`): made now, it would take the node's time (and start its pool's refill)
        // while this create and its first command wait.
        if Self::plain(req) {
            if let Some(id) = self.take_prefetched(&node_id, &req.template) {
                self.own(&id, &node_id, None);
                return Ok(Some(id));
            }
        }
        let claimed = node.claim_warm(req).await?;
        if let Some(id) = &claimed {
            self.own(id, &node_id, None);
        }
        Ok(claimed)
    }

    async fn pool_stats(&self) -> Result<PoolStats, NodeError> {
        let mut all = PoolStats::default();
        for (id, node) in self.members() {
            // Metrics of the nodes that answer; a lost node's pools are gone anyway.
            let s = match node.pool_stats().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(node = %id, error = %e, "a node could not report its pools");
                    continue;
                }
            };
            all.pools.extend(s.pools);
            all.hits += s.hits;
            all.misses += s.misses;
            all.fill_failures += s.fill_failures;
            all.claimed += s.claimed;
        }
        Ok(all)
    }

    /// Every member's live sandboxes; fails if a member cannot answer (a node that is only
    /// slow must not make its sandboxes look gone).
    async fn live(&self) -> Result<Vec<SandboxId>, NodeError> {
        let mut all = Vec::new();
        for (id, node) in self.members() {
            for sandbox in node.live().await? {
                self.own(&sandbox, &id, None);
                all.push(sandbox);
            }
        }
        Ok(all)
    }

    async fn events(&self) -> Result<broadcast::Receiver<NodeEvent>, NodeError> {
        Ok(self.inner.events.subscribe())
    }

    /// What the set made of the sandbox (created, paused, resumed through it) without asking:
    /// every change of a sandbox the set placed goes through it but its end, which arrives as an
    /// event and removes the sandbox (a status asked before that event arrives says it runs,
    /// as the event will then find it). Sandboxes the set learnt of otherwise are asked for.
    async fn status(&self, id: &SandboxId) -> Result<Option<SandboxStatus>, NodeError> {
        if let Some(known) = self.known_status(id) {
            return Ok(Some(known));
        }
        let status = match self.holder(id).await? {
            Some(node) => node.status(id).await?,
            None => None,
        };
        if let Some(s) = status {
            self.set_status_of(id, s);
        }
        Ok(status)
    }

    async fn update_network(&self, id: &SandboxId, policy: EgressPolicy) -> Result<(), NodeError> {
        self.holder_or_not_found(id)
            .await?
            .update_network(id, policy)
            .await
    }

    async fn metrics(
        &self,
        id: &SandboxId,
        range: MetricsRange,
    ) -> Result<Vec<MetricSample>, NodeError> {
        match self.holder(id).await? {
            Some(node) => node.metrics(id, range).await,
            None => Ok(Vec::new()),
        }
    }

    async fn latest_metrics(
        &self,
        ids: &[SandboxId],
    ) -> Result<HashMap<SandboxId, MetricSample>, NodeError> {
        let mut by_node: HashMap<String, Vec<SandboxId>> = HashMap::new();
        for id in ids {
            if let Some(owner) = self.owner_of(id) {
                by_node.entry(owner).or_default().push(id.clone());
            }
        }
        let mut out = HashMap::new();
        for (owner, ids) in by_node {
            if let Some(node) = self.member(&owner) {
                out.extend(node.latest_metrics(&ids).await?);
            }
        }
        Ok(out)
    }

    async fn reconcile(&self, expected: &[SandboxId]) -> Result<Vec<SandboxId>, NodeError> {
        let mut kept = Vec::new();
        for (id, node) in self.members() {
            for sandbox in node.reconcile(expected).await? {
                self.own(&sandbox, &id, None);
                kept.push(sandbox);
            }
        }
        Ok(kept)
    }

    /// Nothing: the nodes of a cluster outlive its control plane.
    async fn shutdown(&self) -> Result<(), NodeError> {
        Ok(())
    }

    /// From the node that holds the sandbox; for one that ended (a node keeps its log after
    /// it stopped), from the first node that has entries for it.
    async fn envd_logs(&self, id: &SandboxId) -> Result<Vec<LogEntry>, NodeError> {
        if let Some(node) = self.holder(id).await? {
            return node.envd_logs(id).await;
        }
        for (member, node) in self.members() {
            match node.envd_logs(id).await {
                Ok(entries) if !entries.is_empty() => return Ok(entries),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(node = %member, error = %e, "a node could not be asked for a log")
                }
            }
        }
        Ok(Vec::new())
    }

    async fn pause(&self, id: &SandboxId) -> Result<(), NodeError> {
        let node = self.holder_or_not_found(id).await?;
        self.forget_status(id);
        node.pause(id).await?;
        // Pausing one on disk leaves it there: ask next time.
        Ok(())
    }

    async fn resume(&self, id: &SandboxId) -> Result<(), NodeError> {
        let node = self.holder_or_not_found(id).await?;
        self.forget_status(id);
        node.resume(id).await?;
        self.set_status_of(id, SandboxStatus::Running);
        if let Some(owner) = self.owner_of(id) {
            let _ = self.inner.started.send((id.clone(), owner));
        }
        Ok(())
    }

    async fn pause_to_disk(&self, id: &SandboxId) -> Result<(), NodeError> {
        let node = self.holder_or_not_found(id).await?;
        self.forget_status(id);
        node.pause_to_disk(id).await?;
        self.set_status_of(id, SandboxStatus::Paused(PauseMode::Disk));
        Ok(())
    }

    async fn snapshot(
        &self,
        id: &SandboxId,
        name: &TemplateName,
    ) -> Result<SnapshotMade, NodeError> {
        let owner = self.owner_of(id);
        let made = self
            .holder_or_not_found(id)
            .await?
            .snapshot(id, name)
            .await?;
        if let Some(owner) = owner.or_else(|| self.owner_of(id)) {
            self.drop_stale(name, std::slice::from_ref(&owner)).await;
            self.set_home(name, Some(&owner));
            self.archive_in_background(name, &owner);
        }
        Ok(made)
    }

    async fn list_templates(&self) -> Result<Vec<TemplateSummary>, NodeError> {
        let mut by_name: HashMap<TemplateName, TemplateSummary> = HashMap::new();
        let (mut answered, mut last_error) = (false, None);
        for (id, node) in self.members() {
            match node.list_templates().await {
                Ok(list) => {
                    answered = true;
                    for t in list {
                        by_name.entry(t.name.clone()).or_insert(t);
                    }
                }
                Err(e) => {
                    tracing::warn!(node = %id, error = %e, "a node could not list its templates");
                    last_error = Some(e);
                }
            }
        }
        let recorded = self.catalog_entries().await;
        if let (false, Some(e), true) = (answered, last_error, recorded.is_empty()) {
            return Err(e);
        }
        for entry in recorded {
            by_name
                .entry(entry.summary.name.clone())
                .or_insert(entry.summary);
        }
        let mut all: Vec<TemplateSummary> = by_name.into_values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    async fn delete_template(&self, name: &TemplateName) -> Result<bool, NodeError> {
        let mut deleted = false;
        for (_, node) in self.members() {
            deleted |= node.delete_template(name).await?;
        }
        self.set_home(name, None);
        deleted |= self.uncatalog(name).await;
        Ok(deleted)
    }

    /// Copies on every member that has `from`; members that do not drop their copy of `to`
    /// (an older template of that name) and fetch the new one when a create needs it.
    async fn copy_template(
        &self,
        from: &TemplateName,
        to: &TemplateName,
    ) -> Result<TemplateInfo, NodeError> {
        self.forget_template(to);
        self.uncatalog(to).await;
        let mut copied = None;
        let mut lacking = Vec::new();
        for (id, node) in self.members() {
            match node.copy_template(from, to).await {
                Ok(t) => copied = Some((t, id)),
                Err(e) if e.is(ErrorCode::TemplateNotFound) => lacking.push((id, node)),
                Err(e) => return Err(e),
            }
        }
        let (copied, holder) = copied.ok_or_else(|| NodeError::template_not_found(from))?;
        for (id, node) in lacking {
            if let Err(e) = node.delete_template(to).await {
                tracing::warn!(node = %id, template = %to, error = %e, "could not drop an older copy of a template");
            }
        }
        self.set_home(to, None);
        self.archive_in_background(to, &holder);
        Ok(copied)
    }

    /// The catalog's record of the template, else that of the first member that has it.
    async fn template_meta(&self, name: &TemplateName) -> Result<Option<String>, NodeError> {
        if let Some((_, entry)) = self.catalog_entry(name).await {
            return Ok(Some(entry.meta_json));
        }
        for (id, node) in self.members() {
            match node.template_meta(name).await {
                Ok(Some(meta)) => return Ok(Some(meta)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(node = %id, template = %name, error = %e, "a node could not describe a template")
                }
            }
        }
        Ok(None)
    }

    async fn build(&self, req: BuildRequest, logs: LogSink) -> Result<Built, BuildError> {
        let failed = |message: String| BuildError {
            step: paddock_template::BASE_STEP.to_string(),
            message,
        };
        let demand = Demand::from(&req.resources);
        let placed = self
            .place(demand, &req.name, None, &HashSet::new())
            .map_err(|e| failed(e.message))?;
        let node_id = placed.node().to_string();
        self.release(&placed, Answer::Withdrawn);
        let node = self
            .member(&node_id)
            .ok_or_else(|| failed(format!("node {node_id} left the cluster")))?;
        // A recipe that starts from a template starts from the same one on any node.
        if let paddock_template::Base::Template(parent) = &req.recipe.base {
            if let Ok(parent) = TemplateName::parse(parent) {
                self.replicate(&parent, &node_id).await.map_err(|e| {
                    failed(format!(
                        "template '{parent}' could not be sent to node {node_id}: {}",
                        e.message
                    ))
                })?;
            }
        }
        tracing::info!(node = %node_id, template = %req.name, "building a template");
        let name = req.name.clone();
        let built = node.build(req, logs).await?;
        // Other nodes' copies of the name are of the template it replaces; they fetch this
        // one when a create needs it.
        self.drop_stale(&name, std::slice::from_ref(&node_id)).await;
        self.set_home(&name, None);
        self.archive_in_background(&name, &node_id);
        Ok(built)
    }
}

pub mod catalog;
mod prefetch;
mod transfer;

#[cfg(test)]
mod tests;
