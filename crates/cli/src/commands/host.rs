//! What a host that runs sandboxes sets up, shared by `paddock serve` and `paddock node`: its
//! flags ([`HostArgs`]), the `base` template on first start, the namespace runtime, sandbox
//! networking and the [`LocalNode`] ([`start`]), and the proxy's view of its sandboxes
//! ([`NodeDirectory`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use paddock_domain::{SandboxId, TemplateName};
use paddock_node::{LocalNode, NodeConfig};
use paddock_sandbox::namespace::{NamespaceConfig, NamespaceDriver};
use paddock_templates::{TemplateSource, TemplateStore};

/// Flags of a host that runs sandboxes (`serve` and `node`).
#[derive(Args, Clone)]
pub struct HostArgs {
    /// Templates directory (default `<data-dir>/templates`).
    #[arg(long, env = "PADDOCK_TEMPLATES_DIR")]
    pub(crate) templates_dir: Option<PathBuf>,
    /// envd binary to put into sandboxes (default: `paddock-envd` next to this binary, or the
    /// static build under `target/<arch>-unknown-linux-gnu/`).
    #[arg(long, env = "PADDOCK_ENVD_BIN")]
    pub(crate) envd_bin: Option<PathBuf>,
    /// Code interpreter binary shown in every sandbox at /usr/local/bin/paddock-interpreter
    /// (E2B's port-49999 server, the start command of `code-interpreter-v1`; default:
    /// `paddock-interpreter` next to this binary, or the static build under
    /// `target/<arch>-unknown-linux-gnu/`; without one, that template is not built).
    #[arg(long, env = "PADDOCK_INTERPRETER_BIN")]
    pub(crate) interpreter_bin: Option<PathBuf>,
    /// Most sandboxes alive at once on this node (running, starting, paused in memory); creates
    /// beyond it get 429 with `Retry-After`.
    #[arg(long, env = "PADDOCK_MAX_SANDBOXES", default_value_t = 1000)]
    pub(crate) max_sandboxes: usize,
    /// Sandbox networking: `nat` (own network namespace, veth, NAT egress, nftables policy;
    /// needs `nft`) or `none` (only `lo`, no IP connectivity at all).
    #[arg(long, env = "PADDOCK_NETWORK", value_enum, default_value_t = NetworkMode::Nat)]
    pub(crate) network: NetworkMode,
    /// IPv4 range for the sandboxes of every Paddock server on this host (`--network nat`): cut
    /// into 16 slices, each server claims one and gives each sandbox a /30 of it. Every server
    /// on a host should use the same range.
    #[arg(long, env = "PADDOCK_NETWORK_CIDR", default_value_t = paddock_node::NetworkConfig::default().cidr)]
    pub(crate) network_cidr: paddock_node::Cidr,
    /// Most connections the host tracks at once for one sandbox (its conntrack entries; closed
    /// TCP connections do not count): its new flows over it are dropped, so no sandbox fills
    /// the host's table. 0 turns the cap off.
    #[arg(long, env = "PADDOCK_SANDBOX_MAX_FLOWS", default_value_t = paddock_node::FlowLimits::default().max_flows)]
    pub(crate) sandbox_max_flows: u32,
    /// New connections one sandbox may open per second, sustained (see
    /// `--sandbox-new-flow-burst`); more are dropped. 0 turns the limit off.
    #[arg(long, env = "PADDOCK_SANDBOX_NEW_FLOWS_PER_SEC", default_value_t = paddock_node::FlowLimits::default().new_flows_per_sec)]
    pub(crate) sandbox_new_flows_per_sec: u32,
    /// New connections one sandbox may open at once above `--sandbox-new-flows-per-sec`.
    #[arg(long, env = "PADDOCK_SANDBOX_NEW_FLOW_BURST", default_value_t = paddock_node::FlowLimits::default().new_flow_burst)]
    pub(crate) sandbox_new_flow_burst: u32,
    /// Sandboxes kept started in advance per template (warm pool), so that a create only
    /// hands one over. A template's pool is filled after its first create (or from the start
    /// with `--warm-pool-template`) and emptied after 10 idle minutes. 0 turns pools off.
    #[arg(long, env = "PADDOCK_WARM_POOL_SIZE", default_value_t = 2)]
    pub(crate) warm_pool_size: usize,
    /// A template whose warm pool is filled from the start and kept however idle it is
    /// (repeatable).
    #[arg(long = "warm-pool-template", value_name = "TEMPLATE")]
    pub(crate) warm_pool_templates: Vec<String>,
    /// Benchmarks only: sandboxes without user namespace, seccomp filter, capability cut or
    /// `/proc` masks (and with `--network none`), to measure what hardening costs. Never use
    /// it for untrusted code.
    #[arg(long, hide = true)]
    pub(crate) unhardened_for_benchmarks: bool,
}

/// A started host: its node, its networking (to shut down) and the whole sandbox address range.
pub(crate) struct Host {
    pub(crate) node: Arc<LocalNode>,
    pub(crate) network: Option<paddock_node::Network>,
    pub(crate) sandbox_pool: paddock_node::Cidr,
}

/// Where a host's `base` template comes from when it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BaseSource {
    /// Built here before anything starts (`paddock serve`).
    Build,
    /// Sent by the cluster from a node that has it, or built here when the control plane asks
    /// (the first node of a cluster): `paddock node`.
    Cluster,
}

/// Builds `base` if missing (with [`BaseSource::Build`]), then starts the runtime, networking
/// and the node of `data_dir`.
pub(crate) async fn start(
    args: &HostArgs,
    data_dir: &Path,
    base_source: BaseSource,
) -> anyhow::Result<Host> {
    let templates_dir = super::templates_dir(args.templates_dir.clone(), data_dir);
    let templates = TemplateStore::open(&templates_dir)
        .with_context(|| format!("opening templates in {}", templates_dir.display()))?;
    let base = TemplateName::parse("base").context("template name")?;
    let existing = templates.get(&base)?;
    if let Some(recipe) = existing.as_ref().and_then(|t| match &t.source {
        TemplateSource::Debootstrap { recipe, .. } => Some(*recipe),
        _ => None,
    }) {
        if recipe < paddock_templates::base::RECIPE {
            eprintln!(
                "paddock: the base template in {} was built by an older recipe ({recipe}, now {}); \
                 it works; `paddock template delete base` and a restart rebuild it with the \
                 current one",
                templates_dir.display(),
                paddock_templates::base::RECIPE
            );
        }
    }
    if existing.is_none() && base_source == BaseSource::Cluster {
        eprintln!(
            "paddock: no base template in {} yet: the cluster sends it from a node that has it \
             (or has this node build it, if none has)",
            templates_dir.display()
        );
    } else if existing.is_none() {
        eprintln!(
            "paddock: building the base template in {} (first start; takes a minute or two)",
            templates_dir.display()
        );
        templates
            .ensure_base(&|line: &str| eprintln!("{line}"))
            .await
            .context("building the base template")?;
        eprintln!("paddock: base template ready");
    }

    let envd_bin = resolve_envd(args.envd_bin.as_deref())?;
    let interpreter_bin = resolve_interpreter(args.interpreter_bin.as_deref())?;
    let exe = std::env::current_exe().context("locating the paddock binary")?;
    let runtime = NamespaceDriver::new(NamespaceConfig {
        shim_exe: exe,
        shim_args: vec!["sandbox-shim".into()],
        cgroup_parent: cgroup_parent(data_dir),
        state_root: data_dir.join("sandboxes"),
        disk_dir: data_dir.join("disks"),
        id_map: (!args.unhardened_for_benchmarks).then_some(paddock_sandbox::idmap::IdMap::DEFAULT),
        hardened: !args.unhardened_for_benchmarks,
    })
    .context("setting up the namespace runtime")?;
    if args.unhardened_for_benchmarks {
        if args.network != NetworkMode::None {
            anyhow::bail!("--unhardened-for-benchmarks needs --network none");
        }
        eprintln!(
            "paddock: WARNING: sandboxes run UNHARDENED (no user namespace, seccomp, capability \
             cut or /proc masks); for benchmarks only, never for untrusted code"
        );
    }
    let network_config = paddock_node::NetworkConfig {
        // A restarted server gets its own slice (and cleans up its leftovers) first.
        preferred_slice: data_dir_hash(data_dir) % 16,
        cidr: args.network_cidr,
        flow_limits: paddock_node::FlowLimits {
            max_flows: args.sandbox_max_flows,
            new_flows_per_sec: args.sandbox_new_flows_per_sec,
            new_flow_burst: args.sandbox_new_flow_burst,
        },
        ..paddock_node::NetworkConfig::default()
    };
    // The whole range, every server's slice: webhooks never reach any sandbox on this host.
    let sandbox_pool = network_config.cidr;
    let network = match args.network {
        NetworkMode::None => None,
        NetworkMode::Nat => Some(
            paddock_node::Network::start(network_config)
                .await
                .context("setting up sandbox networking (use --network none to run without)")?,
        ),
    };
    let node = LocalNode::new(
        NodeConfig {
            sandboxes_dir: data_dir.join("sandboxes"),
            envd_bin,
            interpreter_bin,
            max_sandboxes: args.max_sandboxes,
            network: network.clone(),
            warm_pool: warm_pool(args)?,
            // Two starts per CPU keep the CPUs busy while one waits for envd.
            start_concurrency: std::thread::available_parallelism()
                .map_or(2, |n| n.get().saturating_mul(2)),
        },
        templates,
        Arc::new(runtime),
    )?;

    Ok(Host {
        node,
        network,
        sandbox_pool,
    })
}

/// The warm pools' configuration from `--warm-pool-size` and `--warm-pool-template`: fills
/// run one per CPU at most (two at most), so refills never take the whole machine.
fn warm_pool(args: &HostArgs) -> anyhow::Result<paddock_node::PoolConfig> {
    let pinned = args
        .warm_pool_templates
        .iter()
        .map(|t| TemplateName::parse(t).with_context(|| format!("--warm-pool-template {t}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(paddock_node::PoolConfig {
        size: args.warm_pool_size,
        pinned,
        fill_concurrency: cpus.clamp(1, 2),
        ..Default::default()
    })
}

/// `--network` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkMode {
    /// Per-sandbox network namespace with NAT egress.
    Nat,
    /// Loopback only.
    None,
}

/// Routes proxy lookups to the node's live sandboxes; traffic for a paused one asks the
/// control plane in the same process, if any, to wake it (`autoResume`).
pub(crate) struct NodeDirectory {
    pub(crate) node: Arc<LocalNode>,
    /// The control plane in the same process (`serve`), which resumes `autoResume` sandboxes;
    /// `None` on a cluster node, whose edge proxy asks the control plane itself.
    pub(crate) control: Option<paddock_api::ControlPlane>,
}

impl paddock_proxy::SandboxDirectory for NodeDirectory {
    fn lookup(&self, id: &SandboxId) -> paddock_proxy::Lookup {
        if self.node.is_paused(id) {
            return paddock_proxy::Lookup::Paused;
        }
        match self.node.endpoint(id) {
            Some(e) => paddock_proxy::Lookup::Running(paddock_proxy::Upstream {
                envd_socket: e.envd_socket,
                forward_socket: e.forward_socket,
            }),
            None => paddock_proxy::Lookup::NotFound,
        }
    }

    fn wake<'a>(&'a self, id: &'a SandboxId) -> paddock_proxy::WakeFuture<'a> {
        Box::pin(async move {
            let Some(control) = &self.control else {
                return paddock_proxy::Lookup::Paused;
            };
            match control.wake(id).await {
                Ok(paddock_api::Wake::Running) => self.lookup(id),
                Ok(paddock_api::Wake::Paused) => paddock_proxy::Lookup::Paused,
                Ok(paddock_api::Wake::NotFound) => paddock_proxy::Lookup::NotFound,
                Err(e) => {
                    tracing::error!(sandbox_id = %id, error = %e, "waking a paused sandbox failed");
                    paddock_proxy::Lookup::Paused
                }
            }
        })
    }

    fn until_paused<'a>(&'a self, id: &'a SandboxId) -> paddock_proxy::PausedFuture<'a> {
        Box::pin(self.node.until_paused(id))
    }
}

/// One cgroup subtree per data dir, so two servers on one host never reap each other's sandboxes.
/// The name must be the same across releases (a restarted server reaps and adopts under it), so
/// it is FNV-1a (32-bit) of the path's bytes, not `DefaultHasher`, whose output may change.
pub(crate) fn cgroup_parent(data_dir: &Path) -> String {
    format!("paddock/{:08x}", data_dir_hash(data_dir))
}

/// FNV-1a (32-bit) of the data dir path's bytes: stable across releases.
pub(crate) fn data_dir_hash(data_dir: &Path) -> u32 {
    use std::os::unix::ffi::OsStrExt;
    data_dir
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
        })
}

/// The code interpreter binary: `flag` (which must exist), else the first candidate next to
/// this binary that exists, else none (logged: `code-interpreter-v1` is then not built here).
pub(crate) fn resolve_interpreter(flag: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    if let Some(p) = flag {
        anyhow::ensure!(
            p.is_file(),
            "code interpreter binary {} does not exist",
            p.display()
        );
        return Ok(Some(p.to_path_buf()));
    }
    let exe = std::env::current_exe().context("locating the paddock binary")?;
    let candidates =
        paddock_node::doctor::host::sandbox_binary_candidates(&exe, "paddock-interpreter");
    let found = candidates.iter().find(|p| p.is_file()).cloned();
    if found.is_none() {
        eprintln!(
            "paddock: no code interpreter binary (looked at {candidates:?}): sandboxes run \
             without it and code-interpreter-v1 cannot start; build it with scripts/setup.sh \
             or pass --interpreter-bin"
        );
    }
    Ok(found)
}

pub(crate) fn resolve_envd(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        anyhow::ensure!(p.is_file(), "envd binary {} does not exist", p.display());
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().context("locating the paddock binary")?;
    // The static build comes first: a dynamically linked envd only runs in rootfs with a
    // matching libc.
    let candidates = paddock_node::doctor::host::envd_candidates(&exe);
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!("no envd binary found (looked at {candidates:?}); build it with scripts/setup.sh or pass --envd-bin")
    })
}
