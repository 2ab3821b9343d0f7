//! The in-test node and the request helpers shared by every test module.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use axum::http::HeaderMap;
use axum::Router;
use paddock_domain::{Resources, TemplateName};
use paddock_node::{CreateRequest, Endpoint, Node, NodeError, NodeSandbox, TemplateInfo};
use tokio::sync::{broadcast, Semaphore};

pub use std::sync::Arc;
pub use std::time::Duration;

pub use axum::body::Body;
pub use axum::http::{Method, Request, StatusCode};
pub use http_body_util::BodyExt as _;
pub use paddock_api::{ApiConfig, ControlPlane};
pub use paddock_domain::{SandboxId, SandboxState};
pub use serde_json::{json, Value};
pub use tower::ServiceExt as _;

pub const KEY: &str = "e2b_test_key";

/// A node that keeps its "sandboxes" in a set. Template `base` works, `busy` reports no
/// capacity, `broken` fails in envd initialisation, `slow` waits for a permit of `slow_gate`,
/// `fragile` starts but is dead by the time create returns; templates it built (see
/// [`FakeNode::build`]) work like `base`; everything else does not exist.
pub struct FakeNode {
    pub live: Mutex<HashSet<SandboxId>>,
    pub killed: Mutex<Vec<SandboxId>>,
    pub created: Mutex<Vec<CreateRequest>>,
    pub exits: broadcast::Sender<SandboxId>,
    /// Creates of `slow` sandboxes wait for a permit here.
    pub slow_gate: Semaphore,
    /// Creates currently inside `Node::create`.
    pub in_create: AtomicUsize,
    /// How many of the next kills fail.
    pub kill_failures: AtomicUsize,
    /// What `envd_logs` returns for every sandbox this node created.
    pub envd_log: Mutex<Vec<paddock_node::logs::LogEntry>>,
    /// Live sandboxes that are paused ("frozen").
    pub paused: Mutex<HashSet<SandboxId>>,
    /// How many of the next pauses fail.
    pub pause_failures: AtomicUsize,
    /// When set, a pause reports itself on `pausing` and lands only after a permit of
    /// `pause_gate` (the freeze is "in progress" until then).
    pub hold_pauses: std::sync::atomic::AtomicBool,
    pub pausing: tokio::sync::Notify,
    pub pause_gate: Semaphore,
    /// Templates published by builds.
    pub built: Mutex<std::collections::BTreeMap<TemplateName, paddock_node::TemplateSummary>>,
    /// Every build request, in order.
    pub build_requests: Mutex<Vec<paddock_node::build::BuildRequest>>,
    /// A `RUN wait` step waits for a permit here.
    pub build_gate: Semaphore,
    /// Builds whose future was dropped before it finished (shutdown).
    pub builds_abandoned: AtomicUsize,
}

impl FakeNode {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeNode {
            live: Mutex::new(HashSet::new()),
            killed: Mutex::new(Vec::new()),
            created: Mutex::new(Vec::new()),
            exits: broadcast::channel(16).0,
            slow_gate: Semaphore::new(0),
            in_create: AtomicUsize::new(0),
            kill_failures: AtomicUsize::new(0),
            envd_log: Mutex::new(Vec::new()),
            paused: Mutex::new(HashSet::new()),
            pause_failures: AtomicUsize::new(0),
            hold_pauses: std::sync::atomic::AtomicBool::new(false),
            pausing: tokio::sync::Notify::new(),
            pause_gate: Semaphore::new(0),
            built: Mutex::new(std::collections::BTreeMap::new()),
            build_requests: Mutex::new(Vec::new()),
            build_gate: Semaphore::new(0),
            builds_abandoned: AtomicUsize::new(0),
        })
    }

    fn built_info(&self, name: &TemplateName) -> Option<TemplateInfo> {
        self.built
            .lock()
            .expect("lock")
            .get(name)
            .map(|t| TemplateInfo {
                name: t.name.clone(),
                resources: t.resources,
            })
    }

    pub fn is_live(&self, id: &str) -> bool {
        self.live
            .lock()
            .expect("lock")
            .iter()
            .any(|s| s.as_str() == id)
    }

    pub fn was_killed(&self, id: &str) -> bool {
        self.killed
            .lock()
            .expect("lock")
            .iter()
            .any(|s| s.as_str() == id)
    }

    /// Simulates a sandbox dying by itself.
    pub fn die(&self, id: &str) {
        let id = SandboxId::parse(id).expect("valid id");
        self.live.lock().expect("lock").remove(&id);
        self.exits.send(id).expect("a watcher is subscribed");
    }
}

#[async_trait]
impl Node for FakeNode {
    async fn create(&self, req: CreateRequest) -> Result<NodeSandbox, NodeError> {
        self.in_create.fetch_add(1, Ordering::SeqCst);
        let _done = InCreate(&self.in_create);
        match req.template.as_str() {
            "busy" => return Err(NodeError::Busy("all slots taken".into())),
            "broken" => return Err(NodeError::Envd("envd did not answer /init".into())),
            "slow" => self.slow_gate.acquire().await.expect("gate open").forget(),
            _ => {}
        }
        if req.template.as_str() == "fragile" {
            // Died right after starting: gone from the node, exit reported while `creating`.
            let _ = self.exits.send(req.id.clone());
        } else {
            self.live.lock().expect("lock").insert(req.id.clone());
        }
        let sandbox = NodeSandbox {
            id: req.id.clone(),
            template: req.template.clone(),
            resources: Resources {
                cpu_count: 2,
                memory_mb: 512,
                disk_mb: 2048,
                pids_max: 1024,
            },
        };
        self.created.lock().expect("lock").push(req);
        Ok(sandbox)
    }

    async fn kill(&self, id: &SandboxId) -> Result<(), NodeError> {
        let fail = self
            .kill_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(NodeError::Envd("kill failed for the test".into()));
        }
        self.live.lock().expect("lock").remove(id);
        self.paused.lock().expect("lock").remove(id);
        self.killed.lock().expect("lock").push(id.clone());
        Ok(())
    }

    async fn template(&self, name: &TemplateName) -> Result<Option<TemplateInfo>, NodeError> {
        if let Some(info) = self.built_info(name) {
            return Ok(Some(info));
        }
        Ok(["base", "busy", "broken", "slow", "fragile"]
            .contains(&name.as_str())
            .then(|| TemplateInfo {
                name: name.clone(),
                resources: Resources::default(),
            }))
    }

    async fn list_templates(&self) -> Result<Vec<paddock_node::TemplateSummary>, NodeError> {
        let mut all: Vec<paddock_node::TemplateSummary> =
            ["base", "broken", "busy", "fragile", "slow"]
                .iter()
                .map(|n| paddock_node::TemplateSummary {
                    name: TemplateName::parse(n).expect("name"),
                    resources: Resources::default(),
                    created_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time"),
                    layer_ids: vec![format!("{:0>24}", n.len())],
                })
                .collect();
        all.extend(self.built.lock().expect("lock").values().cloned());
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    async fn delete_template(&self, name: &TemplateName) -> Result<bool, NodeError> {
        Ok(self.built.lock().expect("lock").remove(name).is_some())
    }

    async fn copy_template(
        &self,
        from: &TemplateName,
        to: &TemplateName,
    ) -> Result<TemplateInfo, NodeError> {
        let mut built = self.built.lock().expect("lock");
        let mut copy = built
            .get(from)
            .cloned()
            .ok_or_else(|| NodeError::TemplateNotFound(from.to_string()))?;
        copy.name = to.clone();
        built.insert(to.clone(), copy.clone());
        Ok(TemplateInfo {
            name: copy.name,
            resources: copy.resources,
        })
    }

    /// Builds by the recipe without files: logs a few lines per step (`debug` "cache miss",
    /// `info` the step), checks that COPY archives are in `files_dir`, and publishes. `RUN exit
    /// <n>` fails its step, `RUN emit <n>` logs n lines (every 10th a warning), `RUN wait` waits
    /// for a permit of `build_gate`; a `fromTemplate` the node does not have fails `base`.
    async fn build(
        &self,
        req: paddock_node::build::BuildRequest,
        logs: paddock_node::build::LogSink,
    ) -> Result<paddock_node::build::Built, paddock_node::build::BuildError> {
        use paddock_node::build::{BuildError, BuildLog, Built, LogLevel};
        use paddock_template::{Base, BuildStep};
        self.build_requests.lock().expect("lock").push(req.clone());
        let mut abandoned = Abandoned(Some(&self.builds_abandoned));
        let log = |step: &str, level: LogLevel, message: String| {
            let _ = logs.send(BuildLog {
                timestamp: chrono::Utc::now(),
                level,
                step: step.to_string(),
                message,
            });
        };
        let fail = |step: &str, message: String| {
            log(step, LogLevel::Error, message.clone());
            Err(BuildError {
                step: step.to_string(),
                message,
            })
        };
        match &req.recipe.base {
            Base::Template(t) => {
                let name = TemplateName::parse(t.split(':').next().unwrap_or(t));
                let known = match &name {
                    Ok(n) => self.template(n).await.expect("infallible").is_some(),
                    Err(_) => false,
                };
                if !known {
                    return fail("base", format!("template '{t}' not found"));
                }
                log("base", LogLevel::Info, format!("FROM template {t}"));
            }
            Base::Image(i) => log("base", LogLevel::Info, format!("FROM image {i}")),
        }
        for (i, step) in req.recipe.steps.iter().enumerate() {
            let n = (i + 1).to_string();
            log(&n, LogLevel::Debug, "cache miss".into());
            log(&n, LogLevel::Info, step.step.describe());
            match &step.step {
                BuildStep::Copy { files_hash, .. } => {
                    match std::fs::metadata(req.files_dir.join(files_hash)) {
                        Ok(m) => log(&n, LogLevel::Info, format!("copied {} bytes", m.len())),
                        Err(e) => return fail(&n, format!("files {files_hash}: {e}")),
                    }
                }
                BuildStep::Run { command, .. } => {
                    if let Some(code) = command.strip_prefix("exit ") {
                        return fail(&n, format!("command {command:?} exited with code {code}"));
                    }
                    if let Some(count) = command.strip_prefix("emit ") {
                        for k in 0..count.parse::<usize>().expect("emit <n>") {
                            let level = if k % 10 == 9 {
                                LogLevel::Warn
                            } else {
                                LogLevel::Info
                            };
                            log(&n, level, format!("output {k}"));
                        }
                    }
                    if command == "wait" {
                        self.build_gate.acquire().await.expect("gate open").forget();
                    }
                }
                _ => {}
            }
        }
        log(
            paddock_template::FINALIZE_STEP,
            LogLevel::Info,
            format!("publishing template {}", req.name),
        );
        let summary = paddock_node::TemplateSummary {
            name: req.name.clone(),
            resources: req.resources,
            created_at: chrono::Utc::now(),
            layer_ids: vec![format!("{:0>24}", req.recipe.steps.len())],
        };
        self.built
            .lock()
            .expect("lock")
            .insert(req.name.clone(), summary.clone());
        abandoned.0 = None;
        Ok(Built {
            template: TemplateInfo {
                name: req.name.clone(),
                resources: req.resources,
            },
            layer_ids: summary.layer_ids,
            cached_steps: 0,
            built_steps: req.recipe.steps.len(),
        })
    }

    async fn live(&self) -> Vec<SandboxId> {
        self.live.lock().expect("lock").iter().cloned().collect()
    }

    async fn update_network(
        &self,
        id: &SandboxId,
        _policy: paddock_node::EgressPolicy,
    ) -> Result<(), NodeError> {
        if self.live.lock().expect("lock").contains(id) {
            Ok(())
        } else {
            Err(NodeError::SandboxNotFound(id.clone()))
        }
    }

    fn exits(&self) -> broadcast::Receiver<SandboxId> {
        self.exits.subscribe()
    }

    fn endpoint(&self, id: &SandboxId) -> Option<Endpoint> {
        self.live
            .lock()
            .expect("lock")
            .contains(id)
            .then(|| Endpoint {
                envd_socket: "/nonexistent/envd.sock".into(),
                forward_socket: "/nonexistent/forward.sock".into(),
            })
    }

    async fn reconcile(&self, expected: &[SandboxId]) -> Vec<SandboxId> {
        let live = self.live.lock().expect("lock");
        expected
            .iter()
            .filter(|id| live.contains(id))
            .cloned()
            .collect()
    }

    async fn shutdown(&self) {
        self.live.lock().expect("lock").clear();
    }

    async fn pause(&self, id: &SandboxId) -> Result<(), NodeError> {
        if !self.live.lock().expect("lock").contains(id) {
            return Err(NodeError::SandboxNotFound(id.clone()));
        }
        let fail = self
            .pause_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(NodeError::Envd(
                "freezer did not settle for the test".into(),
            ));
        }
        if self.hold_pauses.load(Ordering::SeqCst) {
            self.pausing.notify_one();
            self.pause_gate.acquire().await.expect("gate open").forget();
        }
        self.paused.lock().expect("lock").insert(id.clone());
        Ok(())
    }

    async fn resume(&self, id: &SandboxId) -> Result<(), NodeError> {
        if !self.live.lock().expect("lock").contains(id) {
            return Err(NodeError::SandboxNotFound(id.clone()));
        }
        self.paused.lock().expect("lock").remove(id);
        Ok(())
    }

    fn is_paused(&self, id: &SandboxId) -> bool {
        self.paused.lock().expect("lock").contains(id)
    }

    async fn envd_logs(
        &self,
        id: &SandboxId,
    ) -> Result<Vec<paddock_node::logs::LogEntry>, NodeError> {
        let created = self
            .created
            .lock()
            .expect("lock")
            .iter()
            .any(|r| &r.id == id);
        Ok(if created {
            self.envd_log.lock().expect("lock").clone()
        } else {
            Vec::new()
        })
    }
}

/// Counts a build whose future is dropped before it finishes.
struct Abandoned<'a>(Option<&'a AtomicUsize>);

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(counter) = self.0 {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Decrements the in-create counter when a create ends, however it ends.
struct InCreate<'a>(&'a AtomicUsize);

impl Drop for InCreate<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub data_dir: std::path::PathBuf,
    pub node: Arc<FakeNode>,
    pub control: ControlPlane,
    pub router: Router,
}

pub async fn start_in(dir: tempfile::TempDir, node: Arc<FakeNode>) -> Harness {
    start_configured(dir, node, |_| {}).await
}

/// Like [`start_in`], with the configuration adjusted by `adjust` first.
pub async fn start_configured(
    dir: tempfile::TempDir,
    node: Arc<FakeNode>,
    adjust: impl FnOnce(&mut ApiConfig),
) -> Harness {
    let data_dir = dir.path().to_path_buf();
    let mut config = ApiConfig::new(&data_dir);
    config.domain = Some("sbx.example.com".into());
    adjust(&mut config);
    let control = ControlPlane::open(config, node.clone())
        .await
        .expect("open control plane");
    control.reconcile().await.expect("reconcile");
    control
        .ensure_api_key(Some(KEY.into()))
        .await
        .expect("register key");
    let router = control.router();
    Harness {
        dir,
        data_dir,
        node,
        control,
        router,
    }
}

pub async fn start() -> Harness {
    start_in(tempfile::tempdir().expect("tempdir"), FakeNode::new()).await
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Harness {
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            req = req.header("X-API-KEY", key);
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .expect("request");
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, uri: &str, body: &str) -> Reply {
        self.call(Method::POST, uri, Some(KEY), Some(body)).await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, Some(KEY), None).await
    }

    pub async fn create(&self, body: Value) -> String {
        let r = self.post("/v2/sandboxes", &body.to_string()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["sandboxID"].as_str().expect("sandboxID").to_string()
    }

    pub async fn state_of(&self, id: &str) -> SandboxState {
        let id = SandboxId::parse(id).expect("valid");
        self.control
            .store()
            .sandbox(&id)
            .await
            .expect("store")
            .expect("record")
            .state
    }
}

pub fn assert_error(r: &Reply, status: StatusCode, needle: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["code"], status.as_u16(), "{}", r.body);
    let message = r.body["message"].as_str().expect("message");
    assert!(
        message.contains(needle),
        "{message:?} should contain {needle:?}"
    );
}

pub fn end_at(r: &Reply) -> chrono::DateTime<chrono::Utc> {
    r.body["endAt"]
        .as_str()
        .expect("endAt")
        .parse()
        .expect("RFC 3339")
}
