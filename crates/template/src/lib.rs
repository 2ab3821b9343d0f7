//! Template recipes, independent of how they are built: the build request of E2B's template API
//! as the SDKs send it ([`wire`]), the typed recipe a build runs ([`Recipe`], [`BuildStep`]) and
//! the cache keys that make layers content-addressed ([`cache_key`]). The node's builder
//! ([`paddock_node`]'s `build` module) executes recipes; the control plane validates requests
//! into them; the CLI makes them from Dockerfiles ([`dockerfile`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod context;
pub mod dockerfile;
pub mod recipe;
pub mod wire;

pub use recipe::{
    base_key, cache_key, finalize_key, Base, BuildStep, Recipe, RecipeError, Step, BASE_STEP,
    FINALIZE_STEP,
};
