//! Builds (or finds) the `base` template in a template directory, printing progress.
//!
//! `cargo run -p paddock-templates --example build_base -- /var/cache/paddock/templates`

use paddock_templates::TemplateStore;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/var/cache/paddock/templates".into());
    let store = TemplateStore::open(&root)?;
    let template = store.ensure_base(&|line| println!("{line}")).await?;
    println!("base template: {}", template.top_layer().display());
    Ok(())
}
