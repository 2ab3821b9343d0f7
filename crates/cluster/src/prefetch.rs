//! Warm sandboxes claimed ahead ([`NodeSet::prefetch`]): one per member and template, so a
//! plain create through the set takes one without the claim's round trip.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use paddock_domain::{EgressPolicy, SandboxId, TemplateName};
use paddock_node_contract::{CreateRequest, Node};

use crate::{NodeSet, PREFETCH_TTL};

impl NodeSet {
    /// How long after a create the claim ahead waits (default [`PREFETCH_DELAY`]).
    ///
    /// [`PREFETCH_DELAY`]: crate::PREFETCH_DELAY
    pub fn set_prefetch_delay(&self, delay: std::time::Duration) {
        *self.inner.prefetch_delay.lock().expect("prefetch lock") = delay;
    }

    /// Whether a create may take a warm sandbox claimed ahead: the requests a warm pool
    /// serves, which claim the same whatever their env vars and token.
    pub(crate) fn plain(req: &CreateRequest) -> bool {
        req.start_cmd && req.resources.is_none() && req.network == EgressPolicy::default()
    }

    /// A warm sandbox of `template` claimed ahead on `node`, if one is fresh.
    pub(crate) fn take_prefetched(&self, node: &str, template: &TemplateName) -> Option<SandboxId> {
        let (id, at) = self
            .inner
            .prefetched
            .lock()
            .expect("prefetch lock")
            .remove(&(node.to_string(), template.clone()))?;
        (at.elapsed() < PREFETCH_TTL).then_some(id)
    }

    /// Claims a warm sandbox of `req`'s template on `node` in the background, after
    /// [`NodeSet::set_prefetch_delay`], for the next create placed there to take without
    /// asking ([`Node::claim_warm`] costs a round trip to a remote node). One at a time per
    /// member and template; a claim no create takes is released by its node after a minute.
    pub(crate) fn prefetch(&self, node_id: &str, node: Arc<dyn Node>, req: &CreateRequest) {
        let key = (node_id.to_string(), req.template.clone());
        if !self
            .inner
            .prefetching
            .lock()
            .expect("prefetch lock")
            .insert(key.clone())
        {
            return;
        }
        let ahead = CreateRequest {
            id: SandboxId::generate(),
            env_vars: HashMap::new(),
            ..req.clone()
        };
        let inner = Arc::downgrade(&self.inner);
        let delay = *self.inner.prefetch_delay.lock().expect("prefetch lock");
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let claimed = node.claim_warm(&ahead).await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            inner
                .prefetching
                .lock()
                .expect("prefetch lock")
                .remove(&key);
            if let Ok(Some(id)) = claimed {
                // The node has a warm sandbox of the template for placement, held here.
                inner
                    .placer
                    .lock()
                    .expect("placer lock")
                    .set_warm(&key.0, &key.1, true);
                inner
                    .prefetched
                    .lock()
                    .expect("prefetch lock")
                    .insert(key, (id, Instant::now()));
            }
        });
    }
}
