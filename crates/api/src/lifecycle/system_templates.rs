//! Templates every install has without a manual step, besides `base` (which the node makes):
//! `code-interpreter-v1`, the template E2B's code-interpreter SDKs create by default.
//!
//! Its recipe is `recipes/code-interpreter-v1/Dockerfile`, embedded in the binary ([`recipe`]);
//! an ENV step [`RECIPE_ENV`] holding a hash of that file is appended, so a template built by
//! another version of the file is recognised ([`Freshness`]) and rebuilt (the old one serves
//! until the new one replaces it). [`ensure`] builds it through [`Node::build`] (on a cluster,
//! on one node, archived in the catalog for the others) once `base` is there; it is a node
//! template like `base` (everyone's, no team owns it, no team may claim its name).
//!
//! The control plane runs [`Core::run_system_templates`] in the background from its start
//! (when [`crate::ApiConfig::system_templates`] is on): it waits for `base`, builds what is
//! missing or stale, retries a failed build after [`RETRY_AFTER`], and keeps a [`Status`] per
//! template so that a create of one that is not ready yet is told how long it has been
//! building ([`Core::preparing`]) instead of "not found". `paddock template prepare` calls
//! [`ensure`] on a node of its own (to bake templates into a templates dir ahead of time).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paddock_domain::{Resources, TemplateName};
use paddock_node_contract::build::{BuildLog, BuildRequest};
use paddock_node_contract::{ErrorCode, Node};
use paddock_template::{BuildStep, Recipe, Step};
use sha2::{Digest, Sha256};

use super::Core;

/// The code interpreter's template, by the name the SDKs use.
pub const CODE_INTERPRETER: &str = "code-interpreter-v1";
/// The variable (in the template's environment) naming the recipe it was built from.
pub const RECIPE_ENV: &str = "PADDOCK_TEMPLATE_RECIPE";
/// The recipe of [`CODE_INTERPRETER`].
const CODE_INTERPRETER_DOCKERFILE: &str =
    include_str!("../../../../recipes/code-interpreter-v1/Dockerfile");
/// How long a failed build waits before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5 * 60);
/// How often the background task looks for `base` while it waits for it.
const BASE_POLL: Duration = Duration::from_secs(2);
/// What a first build usually takes here (said to clients who ask before it is ready).
const USUAL_BUILD: &str = "3 to 6 minutes";
/// Memory of the template's sandboxes: a kernel with pandas and matplotlib loaded takes about
/// 150 MiB, and data work more.
const MEMORY_MB: u64 = 1024;

/// The templates this module provides.
pub fn names() -> Vec<TemplateName> {
    vec![TemplateName::parse(CODE_INTERPRETER).expect("a valid name")]
}

/// Whether `name` is one of the templates every server provides (no team may claim it).
pub fn is_system(name: &TemplateName) -> bool {
    name.as_str() == CODE_INTERPRETER
}

/// A short hash of the recipe text: what [`RECIPE_ENV`] holds.
pub fn recipe_version() -> String {
    hex::encode(&Sha256::digest(CODE_INTERPRETER_DOCKERFILE.as_bytes())[..8])
}

/// The build recipe of [`CODE_INTERPRETER`]: the embedded Dockerfile and an ENV step with
/// [`recipe_version`].
pub fn recipe() -> Recipe {
    let parsed = paddock_template::dockerfile::parse(CODE_INTERPRETER_DOCKERFILE, &[])
        .expect("the embedded code-interpreter Dockerfile parses");
    let mut recipe = Recipe::from_wire(parsed.build_request(true, false))
        .expect("the embedded code-interpreter Dockerfile is a valid recipe");
    recipe.steps.push(Step {
        step: BuildStep::Env {
            vars: vec![(RECIPE_ENV.into(), recipe_version())],
        },
        force: false,
    });
    recipe
}

/// How a node's copy of a system template compares with this binary's recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// There is none.
    Missing,
    /// Built from this recipe (or the node cannot say what from: left alone).
    Current,
    /// Built from another recipe (the version it names, if any).
    Stale(Option<String>),
}

/// What the node's `name` was built from.
pub async fn freshness(node: &dyn Node, name: &TemplateName) -> Result<Freshness, String> {
    let meta = match node.template_meta(name).await {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(Freshness::Missing),
        Err(e) if e.is(ErrorCode::Unsupported) => {
            return Ok(
                match node.template(name).await.map_err(|e| e.to_string())? {
                    Some(_) => Freshness::Current,
                    None => Freshness::Missing,
                },
            )
        }
        Err(e) => return Err(e.to_string()),
    };
    let version = recipe_version_of(&meta);
    Ok(if version.as_deref() == Some(recipe_version().as_str()) {
        Freshness::Current
    } else {
        Freshness::Stale(version)
    })
}

/// The [`RECIPE_ENV`] recorded in a template's metadata (its `config.env` pairs), if any.
fn recipe_version_of(meta_json: &str) -> Option<String> {
    let meta: serde_json::Value = serde_json::from_str(meta_json).ok()?;
    meta.get("config")?
        .get("env")?
        .as_array()?
        .iter()
        .rev()
        .filter_map(|pair| pair.as_array())
        .find(|pair| pair.first().and_then(|k| k.as_str()) == Some(RECIPE_ENV))
        .and_then(|pair| pair.get(1)?.as_str().map(str::to_string))
}

/// Builds `name` on `node` from this binary's recipe, unless it is there and current. Log lines
/// go to `progress`. `files_dir` is where the build's uploaded files would be (the recipe has
/// no COPY steps; the directory need not exist).
pub async fn ensure(
    node: &dyn Node,
    name: &TemplateName,
    files_dir: PathBuf,
    progress: &(dyn Fn(&BuildLog) + Send + Sync),
) -> Result<Freshness, String> {
    let before = freshness(node, name).await?;
    if before == Freshness::Current {
        return Ok(before);
    }
    let request = BuildRequest {
        name: name.clone(),
        recipe: recipe(),
        resources: Resources {
            memory_mb: MEMORY_MB,
            ..Resources::default()
        },
        images_dir: Some(files_dir.clone()),
        files_dir,
    };
    let (sink, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let build = node.build(request, sink);
    tokio::pin!(build);
    let result = loop {
        tokio::select! {
            r = &mut build => break r,
            Some(line) = lines.recv() => progress(&line),
        }
    };
    while let Ok(line) = lines.try_recv() {
        progress(&line);
    }
    result.map(|_| before).map_err(|e| e.to_string())
}

/// Where a system template is.
#[derive(Debug, Clone)]
pub(crate) enum Status {
    /// Waiting for `base` before it can be built.
    WaitingForBase { since: Instant },
    /// Being built.
    Building { since: Instant },
    /// Its last build failed; tried again at `retry_at`.
    Failed { reason: String, retry_at: Instant },
    /// Built and current (or owned by a team, which the module leaves alone).
    Ready,
}

/// The status of every system template, as the background task leaves it.
#[derive(Default)]
pub(crate) struct SystemTemplates {
    status: Mutex<HashMap<TemplateName, Status>>,
}

impl SystemTemplates {
    fn set(&self, name: &TemplateName, status: Status) {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), status);
    }

    fn get(&self, name: &TemplateName) -> Option<Status> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}

impl Core {
    /// Why template `name`, which the node does not have, is not there yet: a message for the
    /// client when it is a system template still on its way (`None` otherwise).
    pub(crate) fn preparing(&self, name: &TemplateName) -> Option<String> {
        let secs = |since: Instant| since.elapsed().as_secs();
        Some(match self.system.get(name)? {
            Status::Ready => return None,
            Status::WaitingForBase { since } => format!(
                "template '{name}' is not ready yet: this server makes it on its first start, \
                 after the base template (waiting for base for {} s; the build usually takes \
                 {USUAL_BUILD} after that); try again then",
                secs(since)
            ),
            Status::Building { since } => format!(
                "template '{name}' is not ready yet: this server is building it (first start, \
                 {} s so far; it usually takes {USUAL_BUILD}); try again then",
                secs(since)
            ),
            Status::Failed { reason, retry_at } => format!(
                "template '{name}' is not ready: its build failed ({reason}); the server tries \
                 again in {} s",
                retry_at.saturating_duration_since(Instant::now()).as_secs()
            ),
        })
    }

    /// Builds every system template that is missing or stale, and keeps doing so (a template
    /// deleted later is built again on the next pass) until shutdown.
    pub(crate) async fn run_system_templates(self: &Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        let names = names();
        let started = Instant::now();
        for name in &names {
            self.system
                .set(name, Status::WaitingForBase { since: started });
        }
        let base = TemplateName::parse(paddock_template::BASE_STEP).expect("a valid name");
        loop {
            let mut next = RETRY_AFTER;
            match self.node.template(&base).await {
                Ok(Some(_)) => {
                    for name in &names {
                        if let Some(wait) = self.ensure_system(name).await {
                            next = next.min(wait);
                        }
                    }
                }
                Ok(None) => next = BASE_POLL,
                Err(e) => {
                    tracing::debug!(error = %e, "system templates: cannot ask for base yet");
                    next = BASE_POLL;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One pass for `name`: builds it if it is missing or stale and no team owns the name.
    /// Returns how soon to look again when it failed.
    async fn ensure_system(self: &Arc<Self>, name: &TemplateName) -> Option<Duration> {
        if let Some(Status::Failed { retry_at, .. }) = self.system.get(name) {
            if Instant::now() < retry_at {
                return Some(retry_at - Instant::now());
            }
        }
        match self.template_owner(name).await {
            Ok(super::build::Owner::Public) => {}
            Ok(_) => {
                // A team built a template of that name before the server provided it: theirs.
                self.system.set(name, Status::Ready);
                return None;
            }
            Err(e) => {
                tracing::warn!(template = %name, error = %e, "system templates: cannot read the owner");
                return Some(BASE_POLL);
            }
        }
        match freshness(&*self.node, name).await {
            Ok(Freshness::Current) => {
                self.system.set(name, Status::Ready);
                return None;
            }
            Ok(Freshness::Missing) => {
                self.system.set(
                    name,
                    Status::Building {
                        since: Instant::now(),
                    },
                );
                tracing::info!(template = %name, "building the template in the background (first start; it usually takes {USUAL_BUILD})");
            }
            Ok(Freshness::Stale(v)) => {
                // The old one keeps serving creates until the new one replaces it.
                self.system.set(name, Status::Ready);
                tracing::info!(template = %name, built_from = v.as_deref().unwrap_or("an unrecorded recipe"), now = %recipe_version(), "the template was built from another recipe: rebuilding it in the background");
            }
            Err(e) => {
                tracing::warn!(template = %name, error = %e, "system templates: cannot inspect the template");
                return Some(BASE_POLL);
            }
        }
        let started = Instant::now();
        let files_dir = self.config.data_dir.join("build-files").join("system");
        let label = name.to_string();
        let progress = move |line: &BuildLog| tracing::info!(target: "paddock::system_templates", template = %label, step = %line.step, "{}", line.message);
        let result = ensure(&*self.node, name, files_dir, &progress).await;
        match result {
            Ok(_) => {
                tracing::info!(template = %name, secs = started.elapsed().as_secs(), "template ready");
                self.system.set(name, Status::Ready);
                None
            }
            Err(reason) => {
                tracing::error!(template = %name, error = %reason, "building the template failed; trying again in {} s", RETRY_AFTER.as_secs());
                // A stale copy still serves: only a missing one reports the failure.
                if !matches!(freshness(&*self.node, name).await, Ok(Freshness::Stale(_))) {
                    self.system.set(
                        name,
                        Status::Failed {
                            reason: last_line(&reason),
                            retry_at: Instant::now() + RETRY_AFTER,
                        },
                    );
                }
                Some(RETRY_AFTER)
            }
        }
    }
}

/// The first line of a build error, cut to 300 characters (the full error is in the log).
fn last_line(reason: &str) -> String {
    let line = reason.lines().next().unwrap_or(reason);
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_recipe_builds_on_base_and_starts_the_interpreter() {
        let r = recipe();
        assert_eq!(
            r.base,
            paddock_template::Base::Template("base".into()),
            "built on base"
        );
        assert_eq!(
            r.start_cmd.as_deref(),
            Some("/usr/local/bin/paddock-interpreter")
        );
        assert!(r.ready_cmd.as_deref().is_some_and(|c| c.contains("49999")));
        assert!(
            r.steps
                .iter()
                .all(|s| !matches!(s.step, BuildStep::Copy { .. })),
            "no COPY: the node provides the interpreter binary"
        );
        let last = &r.steps.last().expect("steps").step;
        assert_eq!(
            *last,
            BuildStep::Env {
                vars: vec![(RECIPE_ENV.into(), recipe_version())]
            }
        );
        assert_eq!(recipe_version().len(), 16);
    }

    #[test]
    fn the_recorded_version_is_read_from_the_metadata() {
        let meta = serde_json::json!({
            "name": "code-interpreter-v1",
            "config": {"env": [["A", "1"], [RECIPE_ENV, "old"], [RECIPE_ENV, "abc"]]},
        })
        .to_string();
        assert_eq!(recipe_version_of(&meta).as_deref(), Some("abc"));
        assert_eq!(recipe_version_of(r#"{"config":{}}"#), None);
        assert_eq!(recipe_version_of("not json"), None);
    }

    fn core() -> (
        tempfile::TempDir,
        Arc<Core>,
        Arc<paddock_node_contract::fake::FakeNode>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::SqliteStore::open(&dir.path().join("paddock.db")).expect("open");
        let node = paddock_node_contract::fake::FakeNode::new();
        let core = Core::new(
            Arc::new(store),
            node.clone(),
            crate::ApiConfig::new(dir.path()),
        );
        (dir, Arc::new(core), node)
    }

    #[tokio::test]
    async fn ensure_builds_once_and_then_finds_it_current() {
        let (dir, _core, node) = core();
        let name = TemplateName::parse(CODE_INTERPRETER).expect("name");
        let lines = std::sync::Mutex::new(Vec::new());
        let progress = |l: &BuildLog| lines.lock().expect("lock").push(l.message.clone());
        let before = ensure(&*node, &name, dir.path().join("f"), &progress)
            .await
            .expect("built");
        assert_eq!(before, Freshness::Missing);
        assert!(!lines.lock().expect("lock").is_empty(), "the build's log");
        let requests = node.build_requests.lock().expect("lock").clone();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].name, name);
        assert_eq!(requests[0].recipe, recipe());
        assert_eq!(requests[0].resources.memory_mb, MEMORY_MB);
        assert_eq!(freshness(&*node, &name).await, Ok(Freshness::Current));
        let again = ensure(&*node, &name, dir.path().join("f"), &progress)
            .await
            .expect("nothing to do");
        assert_eq!(again, Freshness::Current);
        assert_eq!(
            node.build_requests.lock().expect("lock").len(),
            1,
            "no rebuild"
        );

        // Built from another recipe: stale, and rebuilt.
        node.built_env
            .lock()
            .expect("lock")
            .insert(name.clone(), vec![(RECIPE_ENV.into(), "0123".into())]);
        assert_eq!(
            freshness(&*node, &name).await,
            Ok(Freshness::Stale(Some("0123".into())))
        );
        ensure(&*node, &name, dir.path().join("f"), &progress)
            .await
            .expect("rebuilt");
        assert_eq!(node.build_requests.lock().expect("lock").len(), 2);
    }

    #[tokio::test]
    async fn a_create_before_it_is_ready_is_told_so_and_the_name_is_reserved() {
        let (_dir, core, _node) = core();
        let team = core.store.ensure_team("t").await.expect("team");
        let name = TemplateName::parse(CODE_INTERPRETER).expect("name");
        // Nobody builds it: plain not found.
        let err = core
            .resolve_template(&team, CODE_INTERPRETER)
            .await
            .expect_err("missing");
        assert!(
            matches!(err, super::super::Error::TemplateNotFound(_)),
            "{err:?}"
        );
        core.system.set(
            &name,
            Status::Building {
                since: Instant::now(),
            },
        );
        let err = core
            .resolve_template(&team, CODE_INTERPRETER)
            .await
            .expect_err("not ready");
        let msg = err.to_string();
        assert!(
            matches!(err, super::super::Error::TemplatePreparing(_)),
            "{err:?}"
        );
        assert!(
            msg.contains("not ready yet") && msg.contains("building"),
            "{msg}"
        );
        let api: crate::ApiError = err.into();
        assert!(
            matches!(api, crate::ApiError::Unavailable(_)),
            "503: {api:?}"
        );

        core.system.set(
            &name,
            Status::Failed {
                reason: "apt failed".into(),
                retry_at: Instant::now() + RETRY_AFTER,
            },
        );
        let msg = core
            .resolve_template(&team, CODE_INTERPRETER)
            .await
            .expect_err("failed")
            .to_string();
        assert!(
            msg.contains("apt failed") && msg.contains("tries again"),
            "{msg}"
        );

        let err = core
            .request_build(
                &team,
                super::super::build::BuildRequestSpec {
                    name: Some(CODE_INTERPRETER.into()),
                    ..Default::default()
                },
            )
            .await
            .expect_err("reserved");
        assert!(matches!(err, super::super::Error::Forbidden(_)), "{err:?}");
    }

    #[tokio::test]
    async fn the_background_task_waits_for_base_then_builds() {
        let (_dir, core, node) = core();
        node.without_base
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let name = TemplateName::parse(CODE_INTERPRETER).expect("name");
        let task = tokio::spawn({
            let core = Arc::clone(&core);
            async move { core.run_system_templates().await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(matches!(
            core.system.get(&name),
            Some(Status::WaitingForBase { .. })
        ));
        assert!(core.preparing(&name).expect("a message").contains("base"));
        assert!(node.build_requests.lock().expect("lock").is_empty());
        node.without_base
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(core.system.get(&name), Some(Status::Ready)) {
            assert!(Instant::now() < deadline, "built within BASE_POLL");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(node.build_requests.lock().expect("lock").len(), 1);
        assert!(core.preparing(&name).is_none());
        core.begin_shutdown();
        task.await.expect("ends at shutdown");
    }

    #[test]
    fn only_the_code_interpreter_is_a_system_template() {
        assert!(is_system(
            &TemplateName::parse(CODE_INTERPRETER).expect("name")
        ));
        assert!(!is_system(&TemplateName::parse("base").expect("name")));
    }
}
