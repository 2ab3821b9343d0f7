//! Unit tests of [`LocalNode`]'s bookkeeping under races: capacity with concurrent creates,
//! shutdown while creates are in flight, and sandboxes whose exit notification is lost. They
//! run over [`GatedRuntime`], a runtime whose creates block until the test releases them —
//! the only way to hold a real create at a chosen point (the namespace driver itself is tested
//! against the kernel in `paddock-sandbox`).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use paddock_domain::{Resources, SandboxId, TemplateName};
use paddock_sandbox::{RuntimeDriver, RuntimeError, SandboxHandle, SandboxSpec};
use tokio::sync::{broadcast, Semaphore};

use super::{LocalNode, NodeConfig};
use crate::templates::{TemplateMeta, TemplateSource, TemplateStore};
use crate::{CreateRequest, Node, NodeError};

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
}

/// A runtime whose creates wait for a permit of `gate`.
struct GatedRuntime {
    gate: Semaphore,
    state: Mutex<RtState>,
    exits: broadcast::Sender<SandboxId>,
}

impl GatedRuntime {
    fn new() -> Arc<Self> {
        let (exits, _) = broadcast::channel(16);
        Arc::new(GatedRuntime {
            gate: Semaphore::new(0),
            state: Mutex::default(),
            exits,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RtState> {
        self.state.lock().expect("test runtime lock")
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
        let run_dir = spec.state_dir.join("run");
        Ok(SandboxHandle {
            id: spec.id,
            init_pid: 1,
            envd_socket: run_dir.join("envd.sock"),
            forward_socket: run_dir.join("forward.sock"),
            run_dir,
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

    async fn release(&self) {
        let mut st = self.state();
        st.alive_at_release = Some(st.alive.len());
    }
}

fn node(rt: &Arc<GatedRuntime>, max: usize) -> (tempfile::TempDir, Arc<LocalNode>) {
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
        max_sandboxes: max,
        network: None,
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
            Err(NodeError::Busy(msg)) => assert!(msg.contains("limit 2"), "{msg}"),
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
    assert!(matches!(err, NodeError::Runtime(_)), "{err}");
    node.create(request(&SandboxId::generate()))
        .await
        .expect("slot is free again");
    assert!(matches!(
        node.create(request(&SandboxId::generate())).await,
        Err(NodeError::Busy(_))
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
        Err(NodeError::Busy(msg)) => assert_eq!(msg, "shutting down"),
        other => panic!("create during shutdown: {other:?}"),
    }

    rt.gate.add_permits(1);
    shutdown.await.expect("shutdown");
    match late_task.await.expect("task") {
        Err(NodeError::Busy(msg)) => assert_eq!(msg, "shutting down"),
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
    let mut node_exits = node.exits();
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
    assert_eq!(got, id);
    assert!(node.live().await.is_empty());
    assert!(rt.state().killed.contains(&id));
}
