//! One module per subcommand.
pub mod api;
pub mod doctor;
pub mod envd;
pub mod host;
pub mod listen;
pub mod member;
pub mod node;
pub mod proxy;
pub mod sandbox;
pub mod serve;
pub mod shell;
pub mod template;
pub mod template_build;

use std::path::PathBuf;

/// Where templates live: the flag, else `PADDOCK_TEMPLATES_DIR`, else `<data-dir>/templates`.
pub fn templates_dir(flag: Option<PathBuf>, data_dir: &std::path::Path) -> PathBuf {
    flag.unwrap_or_else(|| data_dir.join("templates"))
}
