//! The Paddock control plane: the E2B-compatible REST API (spec section 2), `X-API-Key`
//! authentication, the SQLite store and the sandbox lifecycle (creation, connect, timeouts and
//! expiry, kill, exit watching, restart reconciliation). It drives sandboxes only through the
//! [`paddock_node_contract::Node`] trait.
//!
//! How a binary uses it (this is what `paddock serve` does):
//!
//! ```no_run
//! # async fn serve(node: std::sync::Arc<dyn paddock_node_contract::Node>) -> Result<(), Box<dyn std::error::Error>> {
//! use paddock_api::{ApiConfig, ControlPlane};
//!
//! let config = ApiConfig::new("/var/lib/paddock");
//! // Opens (creating, migrating) <data_dir>/paddock.db.
//! let control = ControlPlane::open(config, node).await?;
//! // Records whose sandboxes did not survive the restart become `stopped`.
//! control.reconcile().await?;
//! // Accept PADDOCK_API_KEY, or reuse/generate <data_dir>/api-key.
//! let (key, generated) = control.ensure_api_key(std::env::var("PADDOCK_API_KEY").ok()).await?;
//! # let _ = (key, generated);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! let background = tokio::spawn({
//!     let control = control.clone();
//!     async move { control.run_background().await } // expiry + exit watcher
//! });
//! axum::serve(listener, control.router())
//!     .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
//!     .await?;
//! control.shutdown().await; // kills every sandbox, records them stopped
//! background.await?;
//! # Ok(()) }
//! ```
//!
//! Modules: [`store`] (the [`Store`] trait and [`SqliteStore`]), [`auth`] (key hashing and
//! provisioning), [`routes`] (one file per endpoint), [`wire`] (JSON schemas), [`error`]
//! ([`ApiError`]), [`logs`] (sandbox logs: sources, queries, wire shapes), [`cluster`] (the
//! node registry and node health), the private
//! `lifecycle` core (one file per operation) and the private `dashboard` (the web dashboard's
//! static bundle under `/dashboard/`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;

use paddock_node_contract::Node;

pub mod auth;
pub mod cluster;
mod dashboard;
pub mod error;
pub mod events;
pub mod extract;
mod lifecycle;
pub use lifecycle::system_templates;
pub mod logs;
pub mod routes;
pub mod store;
pub mod wire;

pub use auth::{ensure_api_key, ensure_api_key_in, hash_api_key, KeySetupError};
pub use error::ApiError;
pub use events::WebhookDestinations;
pub use lifecycle::admission::{AdmissionLimits, Rejected as AdmissionRejected};
pub use lifecycle::build_files::MAX_UPLOAD_BYTES as MAX_BUILD_UPLOAD_BYTES;
pub use lifecycle::pause::Wake;
pub use lifecycle::reconcile::ReconcileReport;
pub use lifecycle::tags::is_build_template;
pub use lifecycle::Error as LifecycleError;
pub use store::{SqliteStore, Store, StoreError};

use lifecycle::Core;

/// Name of the team that `PADDOCK_API_KEY` and the generated key belong to.
pub const DEFAULT_TEAM: &str = "default";

/// Settings of the control plane.
#[derive(Clone)]
pub struct ApiConfig {
    /// Directory holding `paddock.db` and the generated `api-key`.
    pub data_dir: PathBuf,
    /// Sandbox domain returned to clients as `domain` (`None` = `null`: clients use their own).
    pub domain: Option<String>,
    /// Limits on creates in flight (on the node, per team); over them creates get 429.
    pub admission: AdmissionLimits,
    /// Where webhooks may be delivered (default: globally routable addresses only).
    pub webhook_destinations: WebhookDestinations,
    /// Largest build-files (COPY archive) upload accepted, in bytes; a larger one gets 413
    /// (default [`MAX_BUILD_UPLOAD_BYTES`], 10 GiB).
    pub build_upload_limit: u64,
    /// The token the admin routes (`/nodes`) require in `X-Admin-Token`; `None` closes them
    /// (every admin request gets 401).
    pub admin_token: Option<String>,
    /// At shutdown, leave sandboxes and their records as they are (a cluster's control plane:
    /// its nodes and their sandboxes outlive it) instead of stopping every sandbox (`serve`).
    pub keep_sandboxes_on_shutdown: bool,
    /// Build the templates every server provides (`code-interpreter-v1`) in the background
    /// when they are missing or were built from another recipe (see
    /// [`system_templates`]). Off in [`ApiConfig::new`]; `paddock serve` and `paddock api`
    /// turn it on unless told not to.
    pub system_templates: bool,
    /// The sandbox proxy's URL as a browser reaches it (what SDKs get as `E2B_SANDBOX_URL`):
    /// the web dashboard's terminal talks to envd through it. `None`: `http://<domain>` when
    /// a domain is set, else the dashboard has no terminal.
    pub sandbox_url: Option<String>,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("data_dir", &self.data_dir)
            .field("domain", &self.domain)
            .field("admission", &self.admission)
            .field("webhook_destinations", &self.webhook_destinations)
            .field("build_upload_limit", &self.build_upload_limit)
            .field(
                "keep_sandboxes_on_shutdown",
                &self.keep_sandboxes_on_shutdown,
            )
            .field("system_templates", &self.system_templates)
            .field("sandbox_url", &self.sandbox_url)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl ApiConfig {
    /// A configuration with no domain, this machine's default admission limits and webhooks
    /// limited to globally routable destinations.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ApiConfig {
            data_dir: data_dir.into(),
            domain: None,
            admission: AdmissionLimits::default(),
            webhook_destinations: WebhookDestinations::default(),
            build_upload_limit: MAX_BUILD_UPLOAD_BYTES,
            admin_token: None,
            keep_sandboxes_on_shutdown: false,
            system_templates: false,
            sandbox_url: None,
        }
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store could not be opened.
    #[error("cannot open the control-plane database")]
    Store(#[from] StoreError),
}

/// Shared state of the axum handlers: a cheap handle on the lifecycle core.
#[derive(Clone)]
pub struct AppState {
    core: Arc<Core>,
    nodes: cluster::NodeRegistry,
}

/// The control plane: store, node and lifecycle behind one cheap-to-clone handle.
///
/// Lifecycle: [`ControlPlane::open`] (migrates and reconciles) → [`ControlPlane::ensure_api_key`]
/// → serve [`ControlPlane::router`] while [`ControlPlane::run_background`] runs in a task →
/// [`ControlPlane::shutdown`], which also ends `run_background`.
#[derive(Clone)]
pub struct ControlPlane {
    core: Arc<Core>,
    nodes: cluster::NodeRegistry,
    /// The node event recorder's subscription, taken at construction (before any node can
    /// register) and handed to the recorder by [`ControlPlane::run_background`].
    node_events: Arc<std::sync::Mutex<Option<NodeEventFeed>>>,
}

type NodeEventFeed = tokio::sync::broadcast::Receiver<cluster::RegistryEvent>;

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("config", &self.core.config)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Opens (creating and migrating) `<data_dir>/paddock.db`. Call
    /// [`ControlPlane::reconcile`] next, before serving.
    pub async fn open(config: ApiConfig, node: Arc<dyn Node>) -> Result<Self, OpenError> {
        let path = SqliteStore::path_in(&config.data_dir);
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
            .await
            .map_err(StoreError::from)??;
        Ok(Self::with_store(config, Arc::new(store), node))
    }

    /// Like [`ControlPlane::open`] with any [`Store`] implementation.
    pub fn with_store(config: ApiConfig, store: Arc<dyn Store>, node: Arc<dyn Node>) -> Self {
        let nodes = cluster::NodeRegistry::new();
        let feed = nodes.subscribe();
        ControlPlane {
            core: Arc::new(Core::new(store, node, config)),
            nodes,
            node_events: Arc::new(std::sync::Mutex::new(Some(feed))),
        }
    }

    /// Brings the store in line with the node at startup: running and paused records are passed
    /// to `Node::reconcile`; every live record it does not report as running is marked
    /// `stopped`. Safe to call more than once.
    pub async fn reconcile(&self) -> Result<ReconcileReport, LifecycleError> {
        self.core.reconcile().await
    }

    /// Makes sure an API key is accepted for the default team: `explicit` (e.g.
    /// `PADDOCK_API_KEY`), which then becomes the team's only key (earlier keys are revoked and
    /// a stale `<data_dir>/api-key` is removed), or else the key saved in `<data_dir>/api-key`,
    /// generated on first use. Returns the key and whether it was just generated (print it then).
    pub async fn ensure_api_key(
        &self,
        explicit: Option<String>,
    ) -> Result<(String, bool), KeySetupError> {
        auth::ensure_api_key_in(
            self.core.store.as_ref(),
            DEFAULT_TEAM,
            explicit,
            &self.core.config.data_dir,
        )
        .await
    }

    /// The REST API.
    pub fn router(&self) -> axum::Router {
        routes::router(AppState {
            core: Arc::clone(&self.core),
            nodes: self.nodes.clone(),
        })
    }

    /// Runs the expiry task (which also retries failed node cleanups and prunes `stopped`
    /// records older than 7 days), the exit watcher and the webhook delivery worker (which
    /// also prunes events older than 7 days), the node health sweep
    /// ([`cluster::NodeRegistry::run_health`]) and the node event recorder
    /// ([`cluster::history`], pruning node events older than 7 days) until
    /// [`ControlPlane::shutdown`].
    pub async fn run_background(&self) {
        let feed = self
            .node_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| self.nodes.subscribe());
        let system = async {
            if self.core.config.system_templates {
                self.core.run_system_templates().await
            }
        };
        tokio::join!(
            system,
            self.core.run_expiry(),
            self.core.run_exit_watcher(),
            self.core.run_events(),
            self.nodes.run_health(self.core.shutdown.subscribe()),
            cluster::history::record(
                Arc::clone(&self.core.store),
                feed,
                self.core.shutdown.subscribe()
            )
        );
    }

    /// The lifecycle event hub: record events (e.g. `checkpointed` from snapshot code), tune
    /// webhook retries, subscribe to the live stream.
    pub fn events(&self) -> Arc<events::Events> {
        Arc::clone(&self.core.events)
    }

    /// Refuses new creates (503), waits up to 20 s for creates and kills in flight, stops every
    /// sandbox through the node, kills every record still unsettled and marks it `stopped`;
    /// ends [`ControlPlane::run_background`]. Failures to update records are logged (the next
    /// start reconciles them).
    pub async fn shutdown(&self) {
        if let Err(err) = self.core.shutdown().await {
            tracing::error!(error = %error::chain(&err), "recording the shutdown failed");
        }
    }

    /// For the proxy, on traffic to a sandbox the node reports paused: resumes it if it was
    /// created with `autoResume` (its end time becomes now + 300 s) and says whether it runs now.
    pub async fn wake(&self, id: &paddock_domain::SandboxId) -> Result<Wake, LifecycleError> {
        self.core.wake(id).await
    }

    /// The cluster's node registry (the cluster service registers nodes and records their
    /// reports in it; the admin routes read it).
    pub fn nodes(&self) -> cluster::NodeRegistry {
        self.nodes.clone()
    }

    /// The store (for tools that inspect records).
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.core.store)
    }

    /// The configuration.
    pub fn config(&self) -> &ApiConfig {
        &self.core.config
    }
}
