//! Polled watchers for the sync Python SDK (spec 3.5): `CreateWatcher` starts a watch and
//! returns `w<random>`, `GetWatcherEvents` drains what accumulated (or reports the error that
//! stopped the watcher), `RemoveWatcher` drops it. The registry lives as long as the router.
//!
//! Watchers are bounded: at most [`MAX_WATCHERS`] live at once (more is `resource_exhausted`), and
//! a watcher not polled for [`IDLE_TIMEOUT`] is removed (a client that died never calls
//! `RemoveWatcher`), by a sweep on every call and by a background task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http::HeaderMap;
use rand::distributions::{Alphanumeric, DistString};

use crate::connect::{decode_unary, unary_ok, ConnectError, UnaryBody};
use crate::filesystem::messages::{
    CreateWatcherResponse, Empty, FilesystemEvent, GetWatcherEventsResponse, WatchRequest,
    WatcherIdRequest,
};
use crate::filesystem::watch::{start_watch, WatchItem};
use crate::filesystem::{blocking, caller};
use crate::state::EnvdState;

/// Events kept per watcher between two polls; later ones are dropped until the next poll.
pub const MAX_BUFFERED_EVENTS: usize = 100_000;
/// Polled watchers alive at once in one envd.
pub const MAX_WATCHERS: usize = 64;
/// A watcher not polled (or created) for this long is removed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the background task looks for idle watchers.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// What a watcher accumulated since the last poll.
#[derive(Debug, Default)]
struct Buffer {
    events: Vec<FilesystemEvent>,
    error: Option<String>,
}

/// What keeps a watch alive (the `notify` watcher); dropping it stops the watch.
type Guard = Box<dyn Send>;

struct SyncWatcher {
    // Held only to keep the inotify watches alive.
    _guard: Guard,
    buffer: Arc<Mutex<Buffer>>,
    last_polled: Instant,
}

/// The registry of polled watchers by id.
#[derive(Default)]
pub struct Watchers {
    map: Mutex<HashMap<String, SyncWatcher>>,
    sweeper: std::sync::OnceLock<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn too_many() -> ConnectError {
    ConnectError::exhausted(format!(
        "too many watchers: at most {MAX_WATCHERS} may exist at once, remove unused ones"
    ))
}

impl Watchers {
    /// Fails with `resource_exhausted` when no further watcher may be created.
    fn check_room(&self, now: Instant) -> Result<(), ConnectError> {
        self.sweep(now);
        if self.len() >= MAX_WATCHERS {
            return Err(too_many());
        }
        Ok(())
    }

    fn insert(
        &self,
        guard: Guard,
        buffer: Arc<Mutex<Buffer>>,
        now: Instant,
    ) -> Result<String, ConnectError> {
        self.sweep(now);
        let mut map = lock(&self.map);
        if map.len() >= MAX_WATCHERS {
            drop(map);
            drop(guard);
            return Err(too_many());
        }
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
                        _guard: guard,
                        buffer,
                        last_polled: now,
                    },
                );
                return Ok(id);
            }
        }
    }

    /// Drains the events of watcher `id`.
    fn drain(&self, id: &str, now: Instant) -> Result<Vec<FilesystemEvent>, ConnectError> {
        self.sweep(now);
        let mut map = lock(&self.map);
        let w = map.get_mut(id).ok_or_else(|| unknown(id))?;
        w.last_polled = now;
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

    /// Removes the watchers not polled for [`IDLE_TIMEOUT`]; returns how many.
    fn sweep(&self, now: Instant) -> usize {
        let mut map = lock(&self.map);
        let idle: Vec<String> = map
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.last_polled) >= IDLE_TIMEOUT)
            .map(|(id, _)| id.clone())
            .collect();
        let removed: Vec<SyncWatcher> = idle.iter().filter_map(|id| map.remove(id)).collect();
        drop(map);
        for id in &idle {
            tracing::info!(watcher = %id, "removing a watcher that was not polled for 10 minutes");
        }
        // The inotify watches stop here, outside the lock.
        let n = removed.len();
        drop(removed);
        n
    }

    /// Starts the background sweep once (it ends when the registry is dropped). Needs a runtime.
    fn start_sweeper(self: &Arc<Self>) {
        self.sweeper.get_or_init(|| {
            let weak: Weak<Watchers> = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(watchers) = weak.upgrade() else {
                        return;
                    };
                    watchers.sweep(Instant::now());
                }
            });
        });
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
    UnaryBody(body): UnaryBody,
) -> Response {
    let result = async {
        let req: WatchRequest = decode_unary(&headers, &body)?;
        let who = caller(&state, &headers)?;
        watchers.start_sweeper();
        watchers.check_room(Instant::now())?;
        let buffer = Arc::new(Mutex::new(Buffer::default()));
        let sink_buffer = buffer.clone();
        let users = state.users.clone();
        let watcher = blocking(move || {
            start_watch(users, &who, &req, move |item| collect(&sink_buffer, item))
        })
        .await?;
        watchers.insert(Box::new(watcher), buffer, Instant::now())
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
    UnaryBody(body): UnaryBody,
) -> Response {
    let result = decode_unary::<WatcherIdRequest>(&headers, &body)
        .and_then(|req| watchers.drain(&req.watcher_id, Instant::now()));
    match result {
        Ok(events) => unary_ok(&GetWatcherEventsResponse { events }),
        Err(e) => e.into_response(),
    }
}

/// `POST /filesystem.Filesystem/RemoveWatcher`.
pub async fn remove_watcher_handler(
    Extension(watchers): Extension<Arc<Watchers>>,
    headers: HeaderMap,
    UnaryBody(body): UnaryBody,
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

    fn add(w: &Watchers, now: Instant) -> Result<String, ConnectError> {
        w.insert(Box::new(()), Arc::new(Mutex::new(Buffer::default())), now)
    }

    #[test]
    fn watchers_are_capped() {
        let w = Watchers::default();
        let now = Instant::now();
        let ids: Vec<String> = (0..MAX_WATCHERS)
            .map(|_| add(&w, now).expect("room"))
            .collect();
        let err = add(&w, now).expect_err("full");
        assert_eq!(err.code, crate::connect::Code::ResourceExhausted);
        assert_eq!(
            w.check_room(now).map_err(|e| e.code),
            Err(crate::connect::Code::ResourceExhausted)
        );
        w.remove(&ids[0]).expect("removed");
        add(&w, now).expect("room again");
    }

    #[test]
    fn watchers_not_polled_for_ten_minutes_are_removed() {
        let w = Watchers::default();
        let start = Instant::now();
        let polled = add(&w, start).expect("room");
        let idle = add(&w, start).expect("room");
        let later = start + IDLE_TIMEOUT / 2;
        w.drain(&polled, later).expect("polled");
        let expired = start + IDLE_TIMEOUT + Duration::from_secs(1);
        assert_eq!(w.sweep(expired), 1);
        assert_eq!(
            w.drain(&idle, expired).map_err(|e| e.code),
            Err(crate::connect::Code::NotFound)
        );
        w.drain(&polled, expired).expect("still there");
        // A full registry makes room once its watchers expire.
        for _ in 1..MAX_WATCHERS {
            add(&w, expired).expect("room");
        }
        assert!(add(&w, expired).is_err());
        add(&w, expired + IDLE_TIMEOUT + Duration::from_secs(1)).expect("expired ones removed");
        assert_eq!(w.len(), 1);
    }

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
