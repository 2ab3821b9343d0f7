//! `paddock template import|list|delete|prepare`: manage the templates of the local node
//! directly on disk (`build` goes through a server: [`super::template_build`]). `prepare`
//! makes what a server makes on its first start (`base`, then the templates every server
//! provides: [`paddock_api::system_templates`]) without serving anything, to bake them into a
//! templates dir ahead of time.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use paddock_domain::TemplateName;
use paddock_templates::TemplateStore;

/// Where the templates are (shared by every template subcommand).
#[derive(Args)]
pub struct StoreArgs {
    /// Data directory of `paddock serve`.
    #[arg(long, default_value = "/var/lib/paddock")]
    data_dir: PathBuf,
    /// Templates directory (default `<data-dir>/templates`).
    #[arg(long, env = "PADDOCK_TEMPLATES_DIR")]
    templates_dir: Option<PathBuf>,
}

impl StoreArgs {
    fn open(&self) -> anyhow::Result<TemplateStore> {
        let dir = super::templates_dir(self.templates_dir.clone(), &self.data_dir);
        TemplateStore::open(&dir).with_context(|| format!("opening templates in {}", dir.display()))
    }
}

/// Template subcommands.
#[derive(Subcommand)]
pub enum TemplateCommand {
    /// Register a root filesystem tarball, a `docker save` archive or an OCI image layout tar
    /// (each as .tar, .tar.gz or .tar.zst) as a template.
    Import {
        /// Template name (`[a-z0-9._-]`).
        name: String,
        /// The archive.
        rootfs: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List templates.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Build a template from a Dockerfile on a Paddock server (E2B's template build API).
    Build(super::template_build::BuildArgs),
    /// Delete the build cache: every cached build layer (the next build of each template runs
    /// every step again); with `--images`, the base images made for builds too (Debian suites,
    /// imported archives). Templates and running sandboxes keep their files.
    CacheClear {
        /// Also delete the base images made for builds.
        #[arg(long)]
        images: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Make what a server makes on its first start, and exit: `base` (debootstrap) and then
    /// `code-interpreter-v1` (built on this host, in sandboxes, as `paddock serve` builds it
    /// in the background). Templates already current are left alone.
    Prepare {
        /// Data directory for the build's sandboxes (the templates go to `--templates-dir`,
        /// default `<data-dir>/templates`).
        #[arg(long, default_value = "/var/lib/paddock")]
        data_dir: PathBuf,
        #[command(flatten)]
        host: super::host::HostArgs,
    },
    /// Delete a template.
    Delete {
        /// Template name.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Runs a template subcommand.
pub async fn run(cmd: TemplateCommand) -> anyhow::Result<()> {
    match cmd {
        TemplateCommand::Import {
            name,
            rootfs,
            store,
        } => {
            let name = TemplateName::parse(&name)?;
            let t = store
                .open()?
                .import(&name, &rootfs, &|line: &str| eprintln!("{line}"))
                .await?;
            println!("imported template {} ({})", t.name, t.top_layer().display());
        }
        TemplateCommand::Build(args) => super::template_build::run(args).await?,
        TemplateCommand::Prepare { data_dir, host } => prepare(&data_dir, &host).await?,
        TemplateCommand::List { store } => {
            let hidden = [
                paddock_node::build::CACHE_PREFIX,
                paddock_node::build::IMAGE_PREFIX,
            ];
            for t in store.open()?.list()? {
                // Build caches, base images and the builds kept for tags are templates of the
                // store, not the user's.
                if hidden.iter().any(|p| t.name.as_str().starts_with(p))
                    || paddock_api::is_build_template(&t.name)
                {
                    continue;
                }
                println!(
                    "{}\t{} vCPU\t{} MiB\t{}",
                    t.name,
                    t.resources.cpu_count,
                    t.resources.memory_mb,
                    t.created_at.to_rfc3339()
                );
            }
        }
        TemplateCommand::CacheClear { images, store } => {
            let store = store.open()?;
            let deleted = paddock_node::build::clear_cache(&store, images)?;
            println!("deleted {} cached build templates", deleted.len());
        }
        TemplateCommand::Delete { name, store } => {
            let name = TemplateName::parse(&name)?;
            if store.open()?.delete(&name)? {
                println!("deleted template {name}");
            } else {
                anyhow::bail!("template {name} does not exist");
            }
        }
    }
    Ok(())
}

/// `paddock template prepare`: `base`, then every system template, on a node of this process.
async fn prepare(data_dir: &std::path::Path, args: &super::host::HostArgs) -> anyhow::Result<()> {
    use paddock_api::system_templates::{ensure, names, Freshness};
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let host = super::host::start(args, data_dir, super::host::BaseSource::Build).await?;
    let node: std::sync::Arc<dyn paddock_node::Node> = host.node.clone();
    let mut result = Ok(());
    for name in names() {
        let label = name.to_string();
        let progress = move |line: &paddock_node::build::BuildLog| {
            eprintln!("[{label}] {}: {}", line.step, line.message)
        };
        let started = std::time::Instant::now();
        let files = data_dir.join("build-files").join("system");
        match ensure(&*node, &name, files, &progress).await {
            Ok(Freshness::Current) => println!("{name}: current"),
            Ok(before) => println!(
                "{name}: built in {:.0?} ({})",
                started.elapsed(),
                match before {
                    Freshness::Stale(_) => "it was built from another recipe",
                    _ => "it was missing",
                }
            ),
            Err(e) => {
                result = Err(anyhow::anyhow!("building {name}: {e}"));
                break;
            }
        }
    }
    host.node.shutdown().await;
    if let Some(net) = &host.network {
        net.shutdown().await;
    }
    result
}
