//! Polled watchers for the sync Python SDK (spec 3.5): `CreateWatcher` starts a watch and
//! returns `w<random>`, `GetWatcherEvents` drains what accumulated (or reports the error that
//! stopped the watcher), `RemoveWatcher` drops it. The registry lives as long as the router.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http::HeaderMap;
use notify::RecommendedWatcher;
use rand::distributions::{Alphanumeric, DistString};

use crate::connect::{decode_unary, unary_ok, ConnectError};
use crate::filesystem::messages::{
    CreateWatcherResponse, Empty, FilesystemEvent, GetWatcherEventsResponse, WatchRequest,
    WatcherIdRequest,
};
use crate::filesystem::watch::{start_watch, WatchItem};
use crate::filesystem::{blocking, caller};
use crate::state::EnvdState;

/// Events kept per watcher between two polls; later ones are dropped until the next poll.
pub const MAX_BUFFERED_EVENTS: usize = 100_000;

/// What a watcher accumulated since the last poll.
#[derive(Debug, Default)]
struct Buffer {
    events: Vec<FilesystemEvent>,
    error: Option<String>,
}

struct SyncWatcher {
    // Held only to keep the inotify watches alive.
    _watcher: RecommendedWatcher,
    buffer: Arc<Mutex<Buffer>>,
}

/// The registry of polled watchers by id.
#[derive(Default)]
pub struct Watchers {
    map: Mutex<HashMap<String, SyncWatcher>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Watchers {
    fn insert(&self, watcher: RecommendedWatcher, buffer: Arc<Mutex<Buffer>>) -> String {
        let mut map = lock(&self.map);
        loop {
            let id = format!(
                "w{}",
                Alphanumeric
                    .sample_string(&mut rand::thread_rng(), 16)
                    .to_lowercase()
            );
            if !map.contains_key(&id) {
                map.insert(
                    id.clone(),
                    SyncWatcher {
                        _watcher: watcher,
                        buffer,
                    },
                );
                return id;
            }
        }
    }

    /// Drains the events of watcher `id`.
    fn drain(&self, id: &str) -> Result<Vec<FilesystemEvent>, ConnectError> {
        let map = lock(&self.map);
        let w = map.get(id).ok_or_else(|| unknown(id))?;
        let mut buf = lock(&w.buffer);
        if let Some(e) = &buf.error {
            return Err(ConnectError::internal(format!("watcher error: {e}")));
        }
        Ok(std::mem::take(&mut buf.events))
    }

    /// Stops and forgets watcher `id`.
    fn remove(&self, id: &str) -> Result<(), ConnectError> {
        let removed = lock(&self.map).remove(id).ok_or_else(|| unknown(id))?;
        drop(removed);
        Ok(())
    }

    /// Number of live watchers.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether no watcher is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn unknown(id: &str) -> ConnectError {
    ConnectError::not_found(format!("watcher with id {id} not found"))
}

fn collect(buffer: &Mutex<Buffer>, item: WatchItem) {
    let mut buf = lock(buffer);
    match item {
        Ok(events) => {
            let room = MAX_BUFFERED_EVENTS.saturating_sub(buf.events.len());
            buf.events.extend(events.into_iter().take(room));
        }
        Err(e) => buf.error = Some(e),
    }
}

/// `POST /filesystem.Filesystem/CreateWatcher`.
pub async fn create_watcher_handler(
    State(state): State<EnvdState>,
    Extension(watchers): Extension<Arc<Watchers>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let req: WatchRequest = decode_unary(&headers, &body)?;
        let who = caller(&state, &headers)?;
        let buffer = Arc::new(Mutex::new(Buffer::default()));
        let sink_buffer = buffer.clone();
        let users = state.users.clone();
        let watcher = blocking(move || {
            start_watch(users, &who, &req, move |item| collect(&sink_buffer, item))
        })
        .await?;
        Ok::<_, ConnectError>(watchers.insert(watcher, buffer))
    }
    .await;
    match result {
        Ok(watcher_id) => unary_ok(&CreateWatcherResponse { watcher_id }),
        Err(e) => e.into_response(),
    }
}

/// `POST /filesystem.Filesystem/GetWatcherEvents`.
pub async fn get_watcher_events_handler(
    Extension(watchers): Extension<Arc<Watchers>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = decode_unary::<WatcherIdRequest>(&headers, &body)
        .and_then(|req| watchers.drain(&req.watcher_id));
    match result {
        Ok(events) => unary_ok(&GetWatcherEventsResponse { events }),
        Err(e) => e.into_response(),
    }
}

/// `POST /filesystem.Filesystem/RemoveWatcher`.
pub async fn remove_watcher_handler(
    Extension(watchers): Extension<Arc<Watchers>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = decode_unary::<WatcherIdRequest>(&headers, &body)
        .and_then(|req| watchers.remove(&req.watcher_id));
    match result {
        Ok(()) => unary_ok(&Empty {}),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filesystem::messages::EventType;

    #[test]
    fn buffer_is_capped_and_keeps_errors() {
        let buffer = Mutex::new(Buffer::default());
        let ev = FilesystemEvent {
            name: "a".into(),
            event_type: EventType::Write,
            entry: None,
        };
        collect(&buffer, Ok(vec![ev.clone(); MAX_BUFFERED_EVENTS + 5]));
        assert_eq!(lock(&buffer).events.len(), MAX_BUFFERED_EVENTS);
        collect(&buffer, Err("boom".into()));
        assert_eq!(lock(&buffer).error.as_deref(), Some("boom"));
    }
}
