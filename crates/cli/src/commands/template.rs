//! `paddock template import|list|delete`: manage the templates of the local node directly on disk
//! (`build` goes through a server: [`super::template_build`]).

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
