//! The one fake node for tests (feature `fake`): a [`Node`] that keeps its "sandboxes" in a set,
//! with knobs to make creates, kills, pauses and builds slow or fail. The control plane's tests
//! use it, and so can any other implementation's tests that need a node without a kernel.
#![allow(missing_docs)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use paddock_domain::{Resources, SandboxId, TemplateName};
use tokio::sync::{broadcast, Semaphore};

use crate::{
    CreateRequest, ErrorCode, ExitReason, Node, NodeError, NodeEvent, NodeSandbox, PauseMode,
    SandboxStatus, TemplateInfo,
};

/// A node that keeps its "sandboxes" in a set. Template `base` works, `busy` reports no
/// capacity, `broken` fails in envd initialisation, `slow` waits for a permit of `slow_gate`,
/// `fragile` starts but is dead by the time create returns; templates it built (see
/// [`FakeNode::build`]) work like `base`; everything else does not exist.
pub struct FakeNode {
    pub live: Mutex<HashSet<SandboxId>>,
    pub killed: Mutex<Vec<SandboxId>>,
    pub created: Mutex<Vec<CreateRequest>>,
    /// Where events go; [`FakeNode::end_events`] replaces it (ending every subscription).
    pub exits: Mutex<broadcast::Sender<NodeEvent>>,
    /// Creates of `slow` sandboxes wait for a permit here.
    pub slow_gate: Semaphore,
    /// Creates currently inside `Node::create`.
    pub in_create: AtomicUsize,
    /// How many of the next kills fail.
    pub kill_failures: AtomicUsize,
    /// What `envd_logs` returns for every sandbox this node created.
    pub envd_log: Mutex<Vec<crate::logs::LogEntry>>,
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
    pub built: Mutex<std::collections::BTreeMap<TemplateName, crate::TemplateSummary>>,
    /// The env vars (ENV steps) of templates published by builds, as their metadata shows them.
    pub built_env: Mutex<std::collections::BTreeMap<TemplateName, Vec<(String, String)>>>,
    /// Every build request, in order.
    pub build_requests: Mutex<Vec<crate::build::BuildRequest>>,
    /// A `RUN wait` step waits for a permit here.
    pub build_gate: Semaphore,
    /// Builds whose future was dropped before it finished (shutdown).
    pub builds_abandoned: AtomicUsize,
    /// The samples every sandbox this node ever created has (like the real node's series,
    /// they outlive a pause); none by default.
    pub samples: Mutex<Vec<crate::MetricSample>>,
    /// Every create answers "busy" (the node is full).
    pub full: std::sync::atomic::AtomicBool,
    /// Every call fails as if the node could not be reached.
    pub down: std::sync::atomic::AtomicBool,
    /// Layers (digests) this node has: those of the templates it built and received.
    pub layers: Mutex<HashSet<String>>,
    /// Templates received from other nodes, in order, with the digests that came with them.
    pub received: Mutex<Vec<(TemplateName, Vec<String>)>>,
    /// How many times `prepare_base` built `base` (it had not got it).
    pub base_builds: AtomicUsize,
    /// Does not have `base` (until it builds or receives it).
    pub without_base: std::sync::atomic::AtomicBool,
    /// Warm sandboxes ready to be claimed (of any template; none by default).
    pub warm: AtomicUsize,
    /// Calls of `claim_warm`, and the ids they handed out.
    pub claim_calls: AtomicUsize,
    pub claimed: Mutex<Vec<SandboxId>>,
}

/// The templates every fake node has (besides `base`).
const STANDARD: [&str; 4] = ["broken", "busy", "fragile", "slow"];

/// The bytes of the one layer of fake template `name`.
pub fn fake_layer(name: &TemplateName) -> bytes::Bytes {
    bytes::Bytes::from(format!("the one layer of template {name}"))
}

/// The digest of the one layer of fake template `name`: the SHA-256 of [`fake_layer`], as a
/// real node's would be.
pub fn fake_digest(name: &TemplateName) -> String {
    use sha2::Digest;
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(fake_layer(name)));
    FAKE_LAYERS
        .lock()
        .expect("lock")
        .insert(digest.clone(), name.clone());
    digest
}

/// The templates whose layer digests [`fake_digest`] made, by digest (what an export sends).
static FAKE_LAYERS: Mutex<std::collections::BTreeMap<String, TemplateName>> =
    Mutex::new(std::collections::BTreeMap::new());

impl FakeNode {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeNode {
            live: Mutex::new(HashSet::new()),
            killed: Mutex::new(Vec::new()),
            created: Mutex::new(Vec::new()),
            exits: Mutex::new(broadcast::channel(crate::EVENT_BUFFER).0),
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
            built_env: Mutex::new(std::collections::BTreeMap::new()),
            build_requests: Mutex::new(Vec::new()),
            build_gate: Semaphore::new(0),
            builds_abandoned: AtomicUsize::new(0),
            samples: Mutex::new(Vec::new()),
            full: std::sync::atomic::AtomicBool::new(false),
            down: std::sync::atomic::AtomicBool::new(false),
            layers: Mutex::new(HashSet::new()),
            received: Mutex::new(Vec::new()),
            base_builds: AtomicUsize::new(0),
            without_base: std::sync::atomic::AtomicBool::new(false),
            warm: AtomicUsize::new(0),
            claim_calls: AtomicUsize::new(0),
            claimed: Mutex::new(Vec::new()),
        })
    }

    /// Whether the node has template `name`.
    pub fn has_template(&self, name: &TemplateName) -> bool {
        (name.as_str() == "base" && !self.without_base.load(Ordering::SeqCst))
            || STANDARD.contains(&name.as_str())
            || self.built.lock().expect("lock").contains_key(name)
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

    /// Whether a live sandbox is paused.
    pub fn is_paused(&self, id: &SandboxId) -> bool {
        self.paused.lock().expect("lock").contains(id)
    }

    /// [`NodeError`] `unavailable` while [`FakeNode::down`] is set.
    fn reachable(&self) -> Result<(), NodeError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(NodeError::unavailable("the fake node is down"));
        }
        Ok(())
    }

    /// Ends every event subscription (as a remote node's stream ends when it goes away);
    /// new subscriptions work.
    pub fn end_events(&self) {
        *self.exits.lock().expect("lock") = broadcast::channel(crate::EVENT_BUFFER).0;
    }

    /// How many subscribers the event stream has now.
    pub fn event_subscribers(&self) -> usize {
        self.exits.lock().expect("lock").receiver_count()
    }

    /// Simulates a sandbox dying by itself without an event reaching anyone.
    pub fn vanish(&self, id: &str) {
        let id = SandboxId::parse(id).expect("valid id");
        self.live.lock().expect("lock").remove(&id);
    }

    /// Simulates a sandbox dying by itself.
    pub fn die(&self, id: &str) {
        self.end(id, ExitReason::Exited);
    }

    /// Simulates a sandbox ending for `reason` (e.g. [`ExitReason::OutOfMemory`], or
    /// [`ExitReason::NodeLost`] as a set of nodes reports a member's sandboxes).
    pub fn end(&self, id: &str, reason: ExitReason) {
        let id = SandboxId::parse(id).expect("valid id");
        self.live.lock().expect("lock").remove(&id);
        self.paused.lock().expect("lock").remove(&id);
        self.exits
            .lock()
            .expect("lock")
            .send(NodeEvent::exited(id, reason))
            .expect("a watcher is subscribed");
    }
}

#[async_trait]
impl Node for FakeNode {
    async fn create(&self, req: CreateRequest) -> Result<NodeSandbox, NodeError> {
        self.reachable()?;
        self.in_create.fetch_add(1, Ordering::SeqCst);
        let _done = InCreate(&self.in_create);
        if self.full.load(Ordering::SeqCst) {
            return Err(NodeError::busy("the fake node is full"));
        }
        if !self.has_template(&req.template) {
            return Err(NodeError::template_not_found(&req.template));
        }
        match req.template.as_str() {
            "busy" => return Err(NodeError::busy("all slots taken")),
            "broken" => {
                return Err(NodeError::new(
                    ErrorCode::Envd,
                    "envd initialisation failed: envd did not answer /init",
                ))
            }
            "slow" => self.slow_gate.acquire().await.expect("gate open").forget(),
            _ => {}
        }
        if req.template.as_str() == "fragile" {
            // Died right after starting: gone from the node, exit reported while `creating`.
            let _ = self
                .exits
                .lock()
                .expect("lock")
                .send(NodeEvent::exited(req.id.clone(), ExitReason::Exited));
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
        self.reachable()?;
        let fail = self
            .kill_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(NodeError::internal("kill failed for the test"));
        }
        self.live.lock().expect("lock").remove(id);
        self.paused.lock().expect("lock").remove(id);
        self.killed.lock().expect("lock").push(id.clone());
        Ok(())
    }

    /// Hands out one of `warm` for a plain request (no limits, default egress, start command).
    async fn claim_warm(&self, req: &CreateRequest) -> Result<Option<SandboxId>, NodeError> {
        self.reachable()?;
        self.claim_calls.fetch_add(1, Ordering::SeqCst);
        if req.resources.is_some() || !req.start_cmd || !self.has_template(&req.template) {
            return Ok(None);
        }
        let took = self
            .warm
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !took {
            return Ok(None);
        }
        let id = SandboxId::generate();
        self.claimed.lock().expect("lock").push(id.clone());
        Ok(Some(id))
    }

    async fn template(&self, name: &TemplateName) -> Result<Option<TemplateInfo>, NodeError> {
        self.reachable()?;
        if let Some(info) = self.built_info(name) {
            return Ok(Some(info));
        }
        Ok(self.has_template(name).then(|| TemplateInfo {
            name: name.clone(),
            resources: Resources::default(),
        }))
    }

    async fn list_templates(&self) -> Result<Vec<crate::TemplateSummary>, NodeError> {
        self.reachable()?;
        let mut all: Vec<crate::TemplateSummary> = ["base", "broken", "busy", "fragile", "slow"]
            .iter()
            .map(|n| crate::TemplateSummary {
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
            .ok_or_else(|| NodeError::template_not_found(from))?;
        copy.name = to.clone();
        built.insert(to.clone(), copy.clone());
        Ok(TemplateInfo {
            name: copy.name,
            resources: copy.resources,
        })
    }

    async fn template_manifest(
        &self,
        name: &TemplateName,
    ) -> Result<Option<crate::TemplateManifest>, NodeError> {
        self.reachable()?;
        if !self.has_template(name) {
            return Ok(None);
        }
        let env = self
            .built_env
            .lock()
            .expect("lock")
            .get(name)
            .cloned()
            .unwrap_or_default();
        Ok(Some(crate::TemplateManifest {
            name: name.clone(),
            meta_json: serde_json::json!({"name": name.as_str(), "config": {"env": env}})
                .to_string(),
            layers: vec![crate::LayerRef {
                digest: fake_digest(name),
                size: fake_layer(name).len() as u64,
            }],
        }))
    }

    /// The layer's bytes ([`fake_layer`]) in two chunks.
    async fn export_layer(&self, digest: &str) -> Result<crate::LayerStream, NodeError> {
        self.reachable()?;
        let name = FAKE_LAYERS.lock().expect("lock").get(digest).cloned();
        let Some(name) = name else {
            return Err(NodeError::internal(format!("no layer {digest}")));
        };
        let data = fake_layer(&name);
        let half = data.len() / 2;
        let chunks = [data.slice(..half), data.slice(half..)].map(|data| {
            Ok(crate::LayerChunk {
                digest: digest.to_string(),
                data,
            })
        });
        Ok(Box::pin(futures::stream::iter(chunks)))
    }

    async fn missing_layers(&self, digests: &[String]) -> Result<Vec<String>, NodeError> {
        self.reachable()?;
        let have = self.layers.lock().expect("lock");
        Ok(digests
            .iter()
            .filter(|d| !have.contains(*d))
            .cloned()
            .collect())
    }

    /// Takes every chunk (each must carry its digest as data) and then has the template.
    async fn install_template(
        &self,
        manifest: crate::TemplateManifest,
        mut layers: crate::LayerStream,
    ) -> Result<TemplateInfo, NodeError> {
        self.reachable()?;
        let mut got: Vec<(String, Vec<u8>)> = Vec::new();
        while let Some(chunk) = futures::StreamExt::next(&mut layers).await {
            let chunk = chunk?;
            match got.last_mut() {
                Some((d, data)) if *d == chunk.digest => data.extend_from_slice(&chunk.data),
                _ => got.push((chunk.digest, chunk.data.to_vec())),
            }
        }
        for (digest, data) in &got {
            use sha2::Digest;
            if format!("sha256:{:x}", sha2::Sha256::digest(data)) != *digest {
                return Err(NodeError::new(
                    ErrorCode::InvalidArgument,
                    format!("layer {digest} does not match its digest"),
                ));
            }
        }
        let got: Vec<String> = got.into_iter().map(|(d, _)| d).collect();
        for d in manifest.digests() {
            if !got.contains(&d) && !self.layers.lock().expect("lock").contains(&d) {
                return Err(NodeError::new(
                    ErrorCode::InvalidArgument,
                    format!("layer {d} missing"),
                ));
            }
        }
        self.layers.lock().expect("lock").extend(manifest.digests());
        self.received
            .lock()
            .expect("lock")
            .push((manifest.name.clone(), got));
        if manifest.name.as_str() == "base" {
            self.without_base.store(false, Ordering::SeqCst);
        } else {
            self.built.lock().expect("lock").insert(
                manifest.name.clone(),
                crate::TemplateSummary {
                    name: manifest.name.clone(),
                    resources: Resources::default(),
                    created_at: chrono::Utc::now(),
                    layer_ids: vec![manifest.digests()[0][7..].to_string()],
                },
            );
        }
        Ok(TemplateInfo {
            name: manifest.name,
            resources: Resources::default(),
        })
    }

    async fn prepare_base(&self) -> Result<(), NodeError> {
        self.reachable()?;
        if self.without_base.swap(false, Ordering::SeqCst) {
            self.base_builds.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Builds by the recipe without files: logs a few lines per step (`debug` "cache miss",
    /// `info` the step), checks that COPY archives are in `files_dir`, and publishes. `RUN exit
    /// <n>` fails its step, `RUN emit <n>` logs n lines (every 10th a warning), `RUN wait` waits
    /// for a permit of `build_gate`; a `fromTemplate` the node does not have fails `base`.
    async fn build(
        &self,
        req: crate::build::BuildRequest,
        logs: crate::build::LogSink,
    ) -> Result<crate::build::Built, crate::build::BuildError> {
        use crate::build::{BuildError, BuildLog, Built, LogLevel};
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
        let summary = crate::TemplateSummary {
            name: req.name.clone(),
            resources: req.resources,
            created_at: chrono::Utc::now(),
            layer_ids: vec![format!("{:0>24}", req.recipe.steps.len())],
        };
        self.built
            .lock()
            .expect("lock")
            .insert(req.name.clone(), summary.clone());
        let env = req
            .recipe
            .steps
            .iter()
            .filter_map(|s| match &s.step {
                BuildStep::Env { vars } => Some(vars.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        self.built_env
            .lock()
            .expect("lock")
            .insert(req.name.clone(), env);
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

    async fn live(&self) -> Result<Vec<SandboxId>, NodeError> {
        self.reachable()?;
        Ok(self.live.lock().expect("lock").iter().cloned().collect())
    }

    async fn update_network(
        &self,
        id: &SandboxId,
        _policy: paddock_domain::EgressPolicy,
    ) -> Result<(), NodeError> {
        if self.live.lock().expect("lock").contains(id) {
            Ok(())
        } else {
            Err(NodeError::sandbox_not_found(id))
        }
    }

    async fn events(&self) -> Result<broadcast::Receiver<NodeEvent>, NodeError> {
        Ok(self.exits.lock().expect("lock").subscribe())
    }

    async fn status(&self, id: &SandboxId) -> Result<Option<SandboxStatus>, NodeError> {
        self.reachable()?;
        if !self.live.lock().expect("lock").contains(id) {
            return Ok(None);
        }
        Ok(Some(if self.is_paused(id) {
            SandboxStatus::Paused(PauseMode::Memory)
        } else {
            SandboxStatus::Running
        }))
    }

    async fn reconcile(&self, expected: &[SandboxId]) -> Result<Vec<SandboxId>, NodeError> {
        self.reachable()?;
        let live = self.live.lock().expect("lock");
        Ok(expected
            .iter()
            .filter(|id| live.contains(id))
            .cloned()
            .collect())
    }

    async fn shutdown(&self) -> Result<(), NodeError> {
        self.live.lock().expect("lock").clear();
        Ok(())
    }

    async fn pause(&self, id: &SandboxId) -> Result<(), NodeError> {
        self.reachable()?;
        if !self.live.lock().expect("lock").contains(id) {
            return Err(NodeError::sandbox_not_found(id));
        }
        let fail = self
            .pause_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(NodeError::internal("freezer did not settle for the test"));
        }
        if self.hold_pauses.load(Ordering::SeqCst) {
            self.pausing.notify_one();
            self.pause_gate.acquire().await.expect("gate open").forget();
        }
        self.paused.lock().expect("lock").insert(id.clone());
        Ok(())
    }

    async fn resume(&self, id: &SandboxId) -> Result<(), NodeError> {
        self.reachable()?;
        if !self.live.lock().expect("lock").contains(id) {
            return Err(NodeError::sandbox_not_found(id));
        }
        self.paused.lock().expect("lock").remove(id);
        Ok(())
    }

    async fn metrics(
        &self,
        id: &SandboxId,
        range: crate::MetricsRange,
    ) -> Result<Vec<crate::MetricSample>, NodeError> {
        let created = self
            .created
            .lock()
            .expect("lock")
            .iter()
            .any(|r| &r.id == id);
        if !created {
            return Ok(Vec::new());
        }
        Ok(self
            .samples
            .lock()
            .expect("lock")
            .iter()
            .filter(|m| range.contains(&m.timestamp))
            .cloned()
            .collect())
    }

    async fn envd_logs(&self, id: &SandboxId) -> Result<Vec<crate::logs::LogEntry>, NodeError> {
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
