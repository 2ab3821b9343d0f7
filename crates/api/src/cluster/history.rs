//! The history of the cluster's node events, for operators (`GET /nodes/events`): the recorder
//! ([`record`]) copies every [`RegistryEvent`] the registry publishes into the [`Store`]
//! ([`Store::append_node_event`]) and deletes what is older than [`RETENTION`] (at start and
//! then every [`PRUNE_EVERY`]).
//!
//! The recorder's subscription is taken when the control plane is built, before any node can
//! register, so no event is missed while the background tasks start; one that falls more than
//! the registry's buffer behind logs how many it missed. A store that keeps no node events
//! ([`StoreError::Unsupported`]) ends the recorder at the first event.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{broadcast, watch};

use super::RegistryEvent;
use crate::events::RETENTION;
use crate::store::{Store, StoreError};

/// How often old node events are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Records the registry's events from `events` in `store` until `stop` turns true (then what
/// is already queued is recorded too) or the registry is gone.
pub(crate) async fn record(
    store: Arc<dyn Store>,
    mut events: broadcast::Receiver<RegistryEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = prune.tick() => {
                match store.prune_node_events(Utc::now() - RETENTION).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "pruned old node events"),
                    Err(e) => tracing::warn!(error = %crate::error::chain(&e), "pruning node events failed"),
                }
                continue;
            }
            changed = stop.changed() => {
                // A dropped sender stops the recorder too.
                if changed.is_ok() && !*stop.borrow() {
                    continue;
                }
                while let Ok(event) = events.try_recv() {
                    if !keep(store.as_ref(), &event).await {
                        return;
                    }
                }
                return;
            }
        };
        match event {
            Ok(event) => {
                if !keep(store.as_ref(), &event).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "node events were not recorded: the recorder fell behind"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Stores one event; `false` when the store keeps none (the recorder ends). A failure to
/// store it is logged and the event dropped.
async fn keep(store: &dyn Store, event: &RegistryEvent) -> bool {
    match store.append_node_event(event).await {
        Ok(()) => true,
        Err(StoreError::Unsupported(what)) => {
            tracing::info!(what, "this store keeps no node event history");
            false
        }
        Err(e) => {
            tracing::error!(node_id = %event.node_id, event = %event.kind, error = %crate::error::chain(&e), "recording a node event failed");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{NodeRegistry, RegistryEventKind};
    use crate::store::{NodeEventQuery, SqliteStore};

    fn registration(id: &str) -> crate::cluster::NodeRegistration {
        crate::cluster::NodeRegistration {
            id: id.into(),
            service_instance_id: "i".into(),
            cluster_id: "c".into(),
            version: "0".into(),
            commit: "x".into(),
            machine_info: Default::default(),
            capacity: paddock_placement::Capacity {
                cpus: 1,
                memory_mb: 1024,
                disk_mb: 1024,
                max_sandboxes: 1,
            },
            labels: Default::default(),
        }
    }

    #[tokio::test]
    async fn registry_events_are_recorded_until_stop_and_queued_ones_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&SqliteStore::path_in(dir.path())).expect("open"));
        let registry = NodeRegistry::new();
        let (stop, stop_rx) = watch::channel(false);
        let recorder = tokio::spawn(record(Arc::clone(&store), registry.subscribe(), stop_rx));
        registry.register(registration("n1")).expect("register");
        registry.mark_gone("n1").expect("leave");
        let all = NodeEventQuery {
            node_id: None,
            kind: None,
            offset: 0,
            limit: 10,
        };
        for _ in 0..500 {
            if store.node_events(&all).await.expect("list").len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let kinds: Vec<RegistryEventKind> = store
            .node_events(&all)
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.event.kind)
            .collect();
        assert_eq!(kinds, [RegistryEventKind::Left, RegistryEventKind::Joined]);

        // Published just before the stop: still recorded.
        registry.register(registration("n2")).expect("register");
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), recorder)
            .await
            .expect("stops")
            .expect("no panic");
        let newest = store.node_events(&all).await.expect("list");
        assert_eq!(newest.len(), 3);
        assert_eq!(newest[0].event.node_id, "n2");
    }
}
