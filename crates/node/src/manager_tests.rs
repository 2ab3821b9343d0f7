//! Unit tests of [`LocalNode`]'s bookkeeping under races: capacity with concurrent creates,
//! shutdown while creates are in flight, and sandboxes whose exit notification is lost. They
//! run over [`GatedRuntime`], a runtime whose creates block until the test releases them —
//! the only way to hold a real create at a chosen point (the namespace driver itself is tested
//! against the kernel in `paddock-sandbox`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use paddock_domain::{Resources, SandboxId, TemplateName};
use paddock_sandbox::{RuntimeDriver, RuntimeError, SandboxHandle, SandboxSpec};
use paddock_templates::{TemplateMeta, TemplateSource, TemplateStore};
use tokio::sync::{broadcast, Semaphore};

use super::{LocalNode, NodeConfig};
use crate::{CreateRequest, LocalError};

#[derive(Debug, Default)]
struct RtState {
    /// Creates that entered `create`.
    started: usize,
    alive: HashSet<SandboxId>,
    killed: Vec<SandboxId>,
    /// Creates of these ids fail.
    fail: HashSet<SandboxId>,
    /// These start, then are dead before the node looks (no exit notification).
    die_at_start: HashSet<SandboxId>,
    /// How many sandboxes were alive when `release` ran.
    alive_at_release: Option<usize>,
    /// When set, sandbox `id`'s cgroup directory is `<this>/<id>`.
    cgroup_root: Option<PathBuf>,
}

/// The `POST /init` requests a [`GatedRuntime`]'s envd answered: the `X-Access-Token` header
/// and the JSON body.
type InitsSeen = Arc<Mutex<Vec<(Option<String>, serde_json::Value)>>>;

/// A runtime whose creates wait for a permit of `gate`.
struct GatedRuntime {
    gate: Semaphore,
    state: Mutex<RtState>,
    exits: broadcast::Sender<SandboxId>,
    /// When set, every sandbox gets a stand-in envd on its socket that answers `POST /init`
    /// with 204 and records it here (the node's side of the hand-over is what is tested; the
    /// real envd's `/init` is tested in `paddock-envd`).
    inits: Option<InitsSeen>,
}

impl GatedRuntime {
    fn new() -> Arc<Self> {
        Self::build(None)
    }

    fn with_envd() -> Arc<Self> {
        Self::build(Some(InitsSeen::default()))
    }

    fn build(inits: Option<InitsSeen>) -> Arc<Self> {
        let (exits, _) = broadcast::channel(16);
        Arc::new(GatedRuntime {
            gate: Semaphore::new(0),
            state: Mutex::default(),
            exits,
            inits,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RtState> {
        self.state.lock().expect("test runtime lock")
    }

    fn inits(&self) -> Vec<(Option<String>, serde_json::Value)> {
        self.inits
            .as_ref()
            .map(|i| i.lock().expect("inits").clone())
            .unwrap_or_default()
    }
}

/// Answers `POST /init` on `socket` with 204, one request per connection, recording each.
async fn serve_init(listener: tokio::net::UnixListener, seen: InitsSeen) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    while let Ok((mut conn, _)) = listener.accept().await {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head_len, body_len) = loop {
            let Ok(n) = conn.read(&mut chunk).await else {
                break (0, 0);
            };
            if n == 0 {
                break (0, 0);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (end + 4, len);
            }
        };
        while buf.len() < head_len + body_len {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let token = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-access-token")
                .then(|| v.trim().to_string())
        });
        let body = serde_json::from_slice(&buf[head_len..]).unwrap_or(serde_json::Value::Null);
        if head.starts_with("POST /init ") {
            seen.lock().expect("inits").push((token, body));
        }
        let _ = conn
            .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            .await;
    }
}

#[async_trait]
impl RuntimeDriver for GatedRuntime {
    fn name(&self) -> &'static str {
        "gated"
    }

    async fn create(&self, spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        self.state().started += 1;
        self.gate.acquire().await.expect("gate open").forget();
        let mut st = self.state();
        if st.fail.contains(&spec.id) {
            return Err(RuntimeError::Create {
                id: spec.id,
                message: "test failure".into(),
            });
        }
        if !st.die_at_start.contains(&spec.id) {
            st.alive.insert(spec.id.clone());
        }
        let run_dir = spec.state_dir.clone();
        if let Some(seen) = &self.inits {
            let listener =
                tokio::net::UnixListener::bind(run_dir.join("envd.sock")).expect("bind envd.sock");
            tokio::spawn(serve_init(listener, Arc::clone(seen)));
        }
        Ok(SandboxHandle {
            id: spec.id,
            init_pid: 1,
            envd_socket: run_dir.join("envd.sock"),
            forward_socket: run_dir.join("forward.sock"),
        })
    }

    async fn kill(&self, id: &SandboxId, _state_dir: &Path) -> Result<(), RuntimeError> {
        let mut st = self.state();
        st.alive.remove(id);
        st.killed.push(id.clone());
        Ok(())
    }

    async fn adopt(
        &self,
        _id: &SandboxId,
        _state_dir: &Path,
    ) -> Result<Option<SandboxHandle>, RuntimeError> {
        Ok(None)
    }

    async fn reap_orphans(&self, _keep: &[SandboxId]) -> Result<usize, RuntimeError> {
        Ok(0)
    }

    fn exits(&self) -> broadcast::Receiver<SandboxId> {
        self.exits.subscribe()
    }

    fn is_alive(&self, id: &SandboxId) -> bool {
        self.state().alive.contains(id)
    }

    fn cgroup_dirs(&self, id: &SandboxId) -> Vec<PathBuf> {
        let root = self.state().cgroup_root.clone();
        root.map(|r| vec![r.join(id.as_str())]).unwrap_or_default()
    }

    async fn release(&self) {
        let mut st = self.state();
        st.alive_at_release = Some(st.alive.len());
    }
}

fn node(rt: &Arc<GatedRuntime>, max: usize) -> (tempfile::TempDir, Arc<LocalNode>) {
    node_with_pool(rt, max, Default::default())
}

fn node_with_pool(
    rt: &Arc<GatedRuntime>,
    max: usize,
    warm_pool: super::PoolConfig,
) -> (tempfile::TempDir, Arc<LocalNode>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let template = dir.path().join("templates/base");
    std::fs::create_dir_all(template.join("rootfs")).expect("mkdir");
    let meta = TemplateMeta {
        name: TemplateName::parse("base").expect("name"),
        resources: Resources::default(),
        created_at: chrono::Utc::now(),
        source: TemplateSource::Import {
            archive: "/base.tar".into(),
            format: "tar".into(),
        },
        config: Default::default(),
    };
    std::fs::write(
        template.join("template.json"),
        serde_json::to_vec(&meta).expect("json"),
    )
    .expect("write");
    let store = TemplateStore::open(dir.path().join("templates")).expect("store");
    let cfg = NodeConfig {
        sandboxes_dir: dir.path().join("sandboxes"),
        envd_bin: dir.path().join("envd"),
        interpreter_bin: None,
        max_sandboxes: max,
        network: None,
        warm_pool,
        start_concurrency: 4,
    };
    let runtime: Arc<dyn RuntimeDriver> = rt.clone();
    let node = LocalNode::new(cfg, store, runtime).expect("node");
    (dir, node)
}

fn request(id: &SandboxId) -> CreateRequest {
    CreateRequest {
        id: id.clone(),
        template: TemplateName::parse("base").expect("name"),
        env_vars: HashMap::new(),
        access_token: "token".into(),
        resources: None,
        network: Default::default(),
        start_cmd: true,
    }
}

/// Lets spawned tasks run until they block (the tests use the current-thread runtime).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[tokio::test]
async fn capacity_counts_creates_in_flight_and_failures_free_their_slot() {
    let rt = GatedRuntime::new();
    let (_dir, node) = node(&rt, 2);
    let ids: Vec<SandboxId> = (0..5).map(|_| SandboxId::generate()).collect();
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (node, req) = (Arc::clone(&node), request(id));
            tokio::spawn(async move { node.create(req).await })
        })
        .collect();
    settle().await;
    assert_eq!(
        rt.state().started,
        2,
        "only two creates may reach the runtime"
    );
    let mut busy = 0;
    for t in &tasks {
        busy += usize::from(t.is_finished());
    }
    assert_eq!(busy, 3);
    rt.gate.add_permits(2);
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => ok += 1,
            Err(LocalError::Busy(msg)) => assert!(msg.contains("limit 2"), "{msg}"),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(node.live().await.len(), 2);

    // A failed create gives its slot back.
    let live = node.live().await;
    node.kill(&live[0]).await.expect("kill");
    let failing = SandboxId::generate();
    rt.state().fail.insert(failing.clone());
    rt.gate.add_permits(2);
    let err = node.create(request(&failing)).await.expect_err("fails");
    assert!(matches!(err, LocalError::Runtime(_)), "{err}");
    node.create(request(&SandboxId::generate()))
        .await
        .expect("slot is free again");
    assert!(matches!(
        node.create(request(&SandboxId::generate())).await,
        Err(LocalError::Busy(_))
    ));
}

#[tokio::test]
async fn shutdown_waits_for_creates_in_flight_and_refuses_new_ones() {
    let rt = GatedRuntime::new();
    let (_dir, node) = node(&rt, 4);
    let running = SandboxId::generate();
    rt.gate.add_permits(1);
    node.create(request(&running)).await.expect("create");

    let late = SandboxId::generate();
    let late_task = {
        let (node, req) = (Arc::clone(&node), request(&late));
        tokio::spawn(async move { node.create(req).await })
    };
    settle().await;
    let shutdown = {
        let node = Arc::clone(&node);
        tokio::spawn(async move { node.shutdown().await })
    };
    settle().await;
    assert!(
        !shutdown.is_finished(),
        "shutdown must wait for the create in flight"
    );
    match node.create(request(&SandboxId::generate())).await {
        Err(LocalError::Busy(msg)) => assert_eq!(msg, "shutting down"),
        other => panic!("create during shutdown: {other:?}"),
    }

    rt.gate.add_permits(1);
    shutdown.await.expect("shutdown");
    match late_task.await.expect("task") {
        Err(LocalError::Busy(msg)) => assert_eq!(msg, "shutting down"),
        other => panic!("create finishing during shutdown: {other:?}"),
    }
    {
        let st = rt.state();
        assert!(st.alive.is_empty(), "left running: {:?}", st.alive);
        assert_eq!(
            st.alive_at_release,
            Some(0),
            "released with sandboxes alive"
        );
        assert!(st.killed.contains(&running) && st.killed.contains(&late));
    }
    assert!(node.live().await.is_empty());
}

#[tokio::test]
async fn sandbox_dead_before_the_table_insert_is_not_kept() {
    let rt = GatedRuntime::new();
    let (_dir, node) = node(&rt, 4);
    let id = SandboxId::generate();
    rt.state().die_at_start.insert(id.clone());
    rt.gate.add_permits(1);
    let err = node.create(request(&id)).await.expect_err("died at start");
    assert!(err.to_string().contains("exited right after"), "{err}");
    assert!(node.live().await.is_empty());
    assert!(node.endpoint(&id).is_none());
    assert!(
        rt.state().killed.contains(&id),
        "runtime state not cleaned up"
    );
}

#[tokio::test]
async fn lagged_exit_notifications_resync_the_table() {
    let rt = GatedRuntime::new();
    let (_dir, node) = node(&rt, 4);
    let mut node_exits = node.events();
    let id = SandboxId::generate();
    rt.gate.add_permits(1);
    node.create(request(&id)).await.expect("create");

    // The sandbox dies and its notification is lost in a flood the node lags behind.
    rt.state().alive.remove(&id);
    for _ in 0..64 {
        let _ = rt.exits.send(SandboxId::generate());
    }
    let got = tokio::time::timeout(Duration::from_secs(5), node_exits.recv())
        .await
        .expect("exit reported")
        .expect("recv");
    assert_eq!(
        got,
        crate::NodeEvent::exited(id.clone(), paddock_node_contract::ExitReason::Exited)
    );
    assert!(node.live().await.is_empty());
    assert!(rt.state().killed.contains(&id));
}

/// Subscribers through the contract wait for the reconcile: before it, `live` does not yet
/// list the sandboxes that survived a restart.
#[tokio::test]
async fn events_through_the_contract_wait_for_the_reconcile() {
    use paddock_node_contract::{ErrorCode, Node};
    let rt = GatedRuntime::new();
    let (_dir, node) = node(&rt, 4);
    let refused = Node::events(node.as_ref())
        .await
        .expect_err("not reconciled");
    assert_eq!(refused.code, ErrorCode::Unavailable);
    Node::reconcile(node.as_ref(), &[])
        .await
        .expect("reconcile");
    assert!(node.is_reconciled());
    Node::events(node.as_ref()).await.expect("subscribed");
}

#[tokio::test]
async fn an_exit_after_an_oom_kill_in_the_sandboxs_cgroup_is_out_of_memory() {
    use paddock_node_contract::ExitReason;
    let rt = GatedRuntime::new();
    let cgroups = tempfile::tempdir().expect("tempdir");
    rt.state().cgroup_root = Some(cgroups.path().to_path_buf());
    let (_dir, node) = node(&rt, 4);
    let mut events = node.events();
    let (oom, plain) = (SandboxId::generate(), SandboxId::generate());
    rt.gate.add_permits(2);
    node.create(request(&oom)).await.expect("create");
    node.create(request(&plain)).await.expect("create");
    for (id, kills) in [(&oom, 1), (&plain, 0)] {
        let dir = cgroups.path().join(id.as_str());
        std::fs::create_dir_all(&dir).expect("mkdir");
        let text = format!("oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n");
        std::fs::write(dir.join("memory.oom_control"), text).expect("write");
    }
    for (id, reason) in [
        (&oom, ExitReason::OutOfMemory),
        (&plain, ExitReason::Exited),
    ] {
        rt.state().alive.remove(id);
        rt.exits.send(id.clone()).expect("the node listens");
        let got = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("exit reported")
            .expect("recv");
        assert_eq!(got, crate::NodeEvent::exited(id.clone(), reason));
    }
}

/// A node with warm pools of `size`, reconciled (pools fill only after the first reconcile).
async fn pooled_node(
    rt: &Arc<GatedRuntime>,
    max: usize,
    size: usize,
) -> (tempfile::TempDir, Arc<LocalNode>) {
    let (dir, node) = node_with_pool(rt, max, pool_config(size));
    node.reconcile(&[]).await;
    (dir, node)
}

fn pool_config(size: usize) -> super::PoolConfig {
    super::PoolConfig {
        size,
        fill_concurrency: 2,
        ..Default::default()
    }
}

fn ready(node: &LocalNode) -> usize {
    node.pool_stats().pools.iter().map(|p| p.ready).sum()
}

/// Waits (up to 5 s) until the pools hold `n` ready sandboxes.
async fn wait_ready(node: &LocalNode, n: usize) {
    for _ in 0..500 {
        if ready(node) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("pools never reached {n} ready: {:?}", node.pool_stats());
}

/// Waits (up to 5 s) until the runtime has killed every id of `ids`.
async fn wait_killed(rt: &GatedRuntime, ids: &[SandboxId]) {
    for _ in 0..500 {
        if ids.iter().all(|id| rt.state().killed.contains(id)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not killed: {ids:?} (killed: {:?})", rt.state().killed);
}

#[tokio::test]
async fn a_miss_fills_the_pool_and_a_claim_hands_over_with_the_callers_token_and_env() {
    let rt = GatedRuntime::with_envd();
    rt.gate.add_permits(100);
    let (_dir, node) = pooled_node(&rt, 10, 2).await;
    let first = request(&SandboxId::generate());
    assert_eq!(
        node.claim_warm(&first),
        None,
        "nothing is warm before a create"
    );
    wait_ready(&node, 2).await;
    let stats = node.pool_stats();
    assert_eq!((stats.hits, stats.misses), (0, 1));
    assert_eq!(stats.pools[0].template.as_str(), "base");
    assert!(node.live().await.is_empty(), "warm sandboxes are not live");

    let mut req = request(&SandboxId::generate());
    req.env_vars.insert("FOO".into(), "bar".into());
    let id = node.claim_warm(&req).expect("a warm sandbox");
    assert_ne!(id, req.id, "the warm sandbox keeps its own id");
    assert!(rt.state().alive.contains(&id));
    req.id = id.clone();
    node.create(req).await.expect("hand-over");
    assert_eq!(node.live().await, vec![id.clone()]);
    assert!(node.endpoint(&id).is_some());

    let inits = rt.inits();
    assert_eq!(inits.len(), 1, "{inits:?}");
    let (header, body) = &inits[0];
    let pool_token = header
        .as_deref()
        .expect("the pool's token authorises /init");
    assert_ne!(pool_token, "token");
    assert_eq!(body["accessToken"], "token");
    assert_eq!(body["envVars"]["FOO"], "bar");
    assert_eq!(body["defaultUser"], "user");
    let boot = std::fs::read_to_string(node.state_dir(&id).join("config.json")).expect("boot");
    assert!(
        boot.contains("\"token\"") && !boot.contains(pool_token),
        "{boot}"
    );

    let stats = node.pool_stats();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    wait_ready(&node, 2).await;
}

#[tokio::test]
async fn creates_that_cannot_use_a_pool_neither_claim_nor_start_one() {
    let rt = GatedRuntime::with_envd();
    rt.gate.add_permits(100);
    let (_dir, node) = pooled_node(&rt, 10, 2).await;
    let mut sized = request(&SandboxId::generate());
    sized.resources = Some(Resources::default());
    let mut build_step = request(&SandboxId::generate());
    build_step.start_cmd = false;
    for req in [&sized, &build_step] {
        assert_eq!(node.claim_warm(req), None);
    }
    settle().await;
    assert_eq!(node.pool_stats(), super::PoolStats::default());
    assert_eq!(rt.state().started, 0);
}

#[tokio::test]
async fn warm_sandboxes_hold_slots_and_give_them_up_to_creates() {
    let rt = GatedRuntime::new();
    rt.gate.add_permits(100);
    let (_dir, node) = pooled_node(&rt, 3, 2).await;
    assert_eq!(node.claim_warm(&request(&SandboxId::generate())), None);
    // Of 3 slots the filler takes 2 and keeps the last one free.
    wait_ready(&node, 2).await;
    settle().await;
    assert_eq!(ready(&node), 2);
    let warm: Vec<SandboxId> = rt.state().alive.iter().cloned().collect();
    let mut cold = Vec::new();
    for i in 0..3 {
        let mut req = request(&SandboxId::generate());
        req.resources = Some(Resources::default());
        cold.push(req.id.clone());
        if let Err(e) = node.create(req).await {
            panic!("create {i}: {e} ({:?})", node.pool_stats());
        }
    }
    assert_eq!(ready(&node), 0);
    let mut req = request(&SandboxId::generate());
    req.resources = Some(Resources::default());
    assert!(matches!(node.create(req).await, Err(LocalError::Busy(_))));
    // The evicted ones are stopped in the background.
    wait_killed(&rt, &warm).await;
    let live = node.live().await;
    assert_eq!(live.len(), 3);
    for id in &cold {
        assert!(live.contains(id));
    }
}

#[tokio::test]
async fn a_changed_or_deleted_template_discards_its_warm_sandboxes() {
    let rt = GatedRuntime::with_envd();
    rt.gate.add_permits(100);
    let (_dir, node) = pooled_node(&rt, 10, 2).await;
    let base = TemplateName::parse("base").expect("name");
    let copy = TemplateName::parse("base-copy").expect("name");
    assert_eq!(node.claim_warm(&request(&SandboxId::generate())), None);
    wait_ready(&node, 2).await;
    let old: Vec<SandboxId> = rt.state().alive.iter().cloned().collect();

    // Republished (same layers, a new record): the warm ones are stale.
    node.copy_template(&base, &copy).await.expect("copy");
    assert!(node.delete_template(&base).await.expect("delete"));
    node.copy_template(&copy, &base).await.expect("copy back");
    let req = request(&SandboxId::generate());
    if let Some(id) = node.claim_warm(&req) {
        assert!(!old.contains(&id), "a stale warm sandbox was handed out");
    }
    wait_killed(&rt, &old).await;
    wait_ready(&node, 2).await;

    // Deleted: the pool is emptied and goes away.
    let filled: Vec<SandboxId> = rt.state().alive.iter().cloned().collect();
    assert!(node.delete_template(&base).await.expect("delete"));
    wait_killed(&rt, &filled).await;
    assert_eq!(node.claim_warm(&request(&SandboxId::generate())), None);
    for _ in 0..100 {
        if node.pool_stats().pools.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        node.pool_stats().pools.is_empty(),
        "{:?}",
        node.pool_stats()
    );
}

#[tokio::test]
async fn a_failed_hand_over_starts_a_new_sandbox_under_the_claimed_id() {
    // No envd answers `/init`: the warm sandbox is discarded and the create starts cold.
    let rt = GatedRuntime::new();
    rt.gate.add_permits(100);
    let (_dir, node) = pooled_node(&rt, 10, 1).await;
    assert_eq!(node.claim_warm(&request(&SandboxId::generate())), None);
    wait_ready(&node, 1).await;
    let mut req = request(&SandboxId::generate());
    let id = node.claim_warm(&req).expect("claimed");
    req.id = id.clone();
    node.create(req)
        .await
        .expect("cold start after the failed hand-over");
    let stats = node.pool_stats();
    assert_eq!(
        (stats.hits, stats.misses),
        (0, 2),
        "a failed hand-over is a miss"
    );
    assert!(
        rt.state().killed.contains(&id),
        "the warm sandbox was not stopped"
    );
    assert!(
        rt.state().alive.contains(&id),
        "the new one runs under the id"
    );
    assert_eq!(node.live().await, vec![id]);
}

#[tokio::test]
async fn kill_releases_a_claim_and_shutdown_stops_every_warm_sandbox() {
    let rt = GatedRuntime::with_envd();
    rt.gate.add_permits(100);
    let (_dir, node) = pooled_node(&rt, 10, 2).await;
    assert_eq!(node.claim_warm(&request(&SandboxId::generate())), None);
    wait_ready(&node, 2).await;
    let claimed = node
        .claim_warm(&request(&SandboxId::generate()))
        .expect("claimed");
    assert_eq!(node.pool_stats().claimed, 1);
    node.kill(&claimed).await.expect("kill");
    assert!(rt.state().killed.contains(&claimed));
    assert_eq!(node.pool_stats().claimed, 0);

    wait_ready(&node, 2).await;
    let again = node
        .claim_warm(&request(&SandboxId::generate()))
        .expect("claimed");
    node.shutdown().await;
    let st = rt.state();
    assert_eq!(st.alive_at_release, Some(0), "alive: {:?}", st.alive);
    assert!(st.killed.contains(&again));
    assert!(st.alive.is_empty());
}

#[tokio::test]
async fn pools_fill_only_after_the_first_reconcile() {
    let rt = GatedRuntime::with_envd();
    rt.gate.add_permits(100);
    let (_dir, node) = node_with_pool(&rt, 10, pool_config(2));
    assert_eq!(node.claim_warm(&request(&SandboxId::generate())), None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rt.state().started, 0, "a fill ran before the reconcile");
    node.reconcile(&[]).await;
    wait_ready(&node, 2).await;
}
