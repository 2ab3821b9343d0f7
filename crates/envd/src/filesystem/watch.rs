//! Directory watching over inotify (through the `notify` crate) and the `WatchDir` server
//! stream (spec 3.5). [`start_watch`] validates the request and turns raw notifications into
//! `FilesystemEvent`s with fsnotify's vocabulary (a move is RENAME of the old name and CREATE of
//! the new one); both `WatchDir` and the sync watchers in [`super::watchers`] are built on it.
//!
//! Stream lifecycle: `start` first, then one `filesystem` message per event, `keepalive` after
//! each `Keepalive-Ping-Interval` of silence; the stream ends with `internal` on watcher errors,
//! `resource_exhausted` when more than [`STREAM_BUFFER`] notifications pile up unsent (events
//! were dropped; the client must re-list), `deadline_exceeded` when `Connect-Timeout-Ms` elapses,
//! or silently when the client goes away (dropping the watcher removes the inotify watches).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::HeaderMap;
use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, Notify};

use crate::connect::{
    decode_stream_request, stream_error, stream_response, CallOptions, Code, ConnectError,
};
use crate::filesystem::entry::{entry_info, OwnerNames};
use crate::filesystem::messages::{
    Empty, EventType, FilesystemEvent, WatchDirResponse, WatchRequest,
};
use crate::filesystem::{blocking, caller, Caller};
use crate::state::EnvdState;
use crate::users::UserDb;

/// What a watcher delivers: a batch of events (one notification may carry several), or the
/// error that stopped it.
pub type WatchItem = Result<Vec<FilesystemEvent>, String>;

/// Notifications buffered between the watcher thread and one `WatchDir` stream.
pub const STREAM_BUFFER: usize = 1024;

/// Filesystem magic numbers of network (and FUSE) filesystems, refused unless allowed.
const NETWORK_FS_MAGICS: [u64; 5] = [
    0x6969,      // NFS
    0xFF53_4D42, // CIFS
    0xFE53_4D42, // SMB2
    0x517B,      // SMB
    0x6573_5546, // FUSE
];

/// Validates a watch request and starts watching; every batch of events (or the error) is
/// passed to `sink` on the watcher's own thread. Dropping the returned watcher stops it.
pub fn start_watch(
    users: UserDb,
    caller: &Caller,
    req: &WatchRequest,
    sink: impl Fn(WatchItem) + Send + 'static,
) -> Result<RecommendedWatcher, ConnectError> {
    let root = caller.resolve(&req.path)?;
    check_watchable(&root, req.allow_network_mounts)?;
    let include_entry = req.include_entry;
    let event_root = root.clone();
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(event) => {
            let events = translate(&users, &event_root, &event, include_entry);
            if !events.is_empty() {
                sink(Ok(events));
            }
        }
        Err(e) => sink(Err(e.to_string())),
    };
    let mut watcher = notify::recommended_watcher(handler)
        .map_err(|e| ConnectError::internal(format!("error creating watcher: {e}")))?;
    let mode = if req.recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    watcher
        .watch(&root, mode)
        .map_err(|e| ConnectError::internal(format!("error watching {}: {e}", root.display())))?;
    Ok(watcher)
}

/// The path must exist, be a directory and (unless allowed) not sit on a network filesystem.
fn check_watchable(root: &Path, allow_network_mounts: bool) -> Result<(), ConnectError> {
    let meta = fs::metadata(root).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            ConnectError::not_found(format!("path {} not found", root.display()))
        }
        _ => ConnectError::internal(format!(
            "error getting file info of {}: {e}",
            root.display()
        )),
    })?;
    if !meta.is_dir() {
        return Err(ConnectError::invalid(format!(
            "path {} not a directory",
            root.display()
        )));
    }
    if !allow_network_mounts {
        let fs = nix::sys::statfs::statfs(root).map_err(|e| {
            ConnectError::internal(format!(
                "error checking filesystem of {}: {e}",
                root.display()
            ))
        })?;
        let magic = (fs.filesystem_type().0 as u64) & 0xFFFF_FFFF;
        if NETWORK_FS_MAGICS.contains(&magic) {
            return Err(ConnectError::invalid(format!(
                "cannot watch path on network filesystem: {}",
                root.display()
            )));
        }
    }
    Ok(())
}

/// The E2B event type of a notification, in fsnotify's terms.
pub fn event_type(kind: &EventKind) -> Option<EventType> {
    match kind {
        EventKind::Create(_) => Some(EventType::Create),
        EventKind::Remove(_) => Some(EventType::Remove),
        EventKind::Modify(ModifyKind::Metadata(_)) => Some(EventType::Chmod),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(EventType::Create),
        // The paired From/To notifications already describe a move.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => None,
        EventKind::Modify(ModifyKind::Name(_)) => Some(EventType::Rename),
        EventKind::Modify(_) => Some(EventType::Write),
        EventKind::Access(_) | EventKind::Any | EventKind::Other => None,
    }
}

/// The event's path relative to the watched directory (`.` for the directory itself).
pub fn relative_name(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".to_string(),
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => path.to_string_lossy().into_owned(),
    }
}

fn translate(
    users: &UserDb,
    root: &Path,
    event: &notify::Event,
    include_entry: bool,
) -> Vec<FilesystemEvent> {
    let Some(event_type) = event_type(&event.kind) else {
        return Vec::new();
    };
    let with_entry = include_entry
        && matches!(
            event_type,
            EventType::Create | EventType::Write | EventType::Chmod
        );
    let mut names = OwnerNames::new(users);
    event
        .paths
        .iter()
        .map(|path: &PathBuf| FilesystemEvent {
            name: relative_name(root, path),
            event_type,
            entry: if with_entry {
                entry_info(&mut names, path).ok()
            } else {
                None
            },
        })
        .collect()
}

/// `POST /filesystem.Filesystem/WatchDir`.
pub async fn watch_dir_handler(
    State(state): State<EnvdState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let opts = CallOptions::from_headers(&headers);
    let req: WatchRequest = match decode_stream_request(&headers, body).await {
        Ok(req) => req,
        Err(e) => return stream_error(e),
    };
    let who = match caller(&state, &headers) {
        Ok(who) => who,
        Err(e) => return stream_error(e),
    };
    let (sink, feed) = channel(STREAM_BUFFER);
    let users = state.users.clone();
    let watcher = match blocking(move || start_watch(users, &who, &req, sink)).await {
        Ok(w) => w,
        Err(e) => return stream_error(e),
    };
    let (sender, resp) = stream_response();
    tokio::spawn(async move {
        let _watcher = watcher;
        let result = pump(&sender, feed, opts).await;
        if let Some(result) = result {
            sender.finish(result).await;
        }
    });
    resp
}

/// The receiving side of a watcher: its notifications and the signal that some were dropped.
struct Feed {
    rx: mpsc::Receiver<WatchItem>,
    overflow: Arc<Notify>,
}

/// A bounded channel from the watcher thread (which must never block) to a stream. When it is
/// full the notification is dropped and the overflow is signalled.
fn channel(capacity: usize) -> (impl Fn(WatchItem) + Send + 'static, Feed) {
    let (tx, rx) = mpsc::channel::<WatchItem>(capacity);
    let overflow = Arc::new(Notify::new());
    let signal = overflow.clone();
    let sink = move |item| match tx.try_send(item) {
        // Closed: the stream has ended and the watcher is about to be dropped.
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(_)) => signal.notify_one(),
    };
    (sink, Feed { rx, overflow })
}

/// Forwards watcher events to the stream; `None` when the client went away.
async fn pump(
    sender: &crate::connect::StreamSender,
    feed: Feed,
    opts: CallOptions,
) -> Option<Result<(), ConnectError>> {
    let Feed { mut rx, overflow } = feed;
    if !sender.send(&WatchDirResponse::Start(Empty {})).await {
        return None;
    }
    let deadline = async {
        match opts.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            () = overflow.notified() => {
                return Some(Err(ConnectError::exhausted(format!(
                    "filesystem events were dropped: more than {} notifications were pending, \
                     the client reads too slowly",
                    rx.max_capacity()
                ))));
            }
            item = rx.recv() => match item {
                Some(Ok(events)) => {
                    for event in events {
                        if !sender.send(&WatchDirResponse::Filesystem(Box::new(event))).await {
                            return None;
                        }
                    }
                }
                Some(Err(e)) => return Some(Err(ConnectError::internal(format!("watcher error: {e}")))),
                None => return Some(Err(ConnectError::internal("watcher stopped"))),
            },
            _ = tokio::time::sleep(opts.keepalive) => {
                if !sender.send(&WatchDirResponse::Keepalive(Empty {})).await {
                    return None;
                }
            }
            _ = &mut deadline => {
                return Some(Err(ConnectError::new(Code::DeadlineExceeded, "watch deadline exceeded")));
            }
            _ = sender.closed() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, DataChange, MetadataKind, RemoveKind};

    #[test]
    fn maps_notify_kinds_like_fsnotify() {
        assert_eq!(
            event_type(&EventKind::Create(CreateKind::File)),
            Some(EventType::Create)
        );
        assert_eq!(
            event_type(&EventKind::Modify(ModifyKind::Data(DataChange::Any))),
            Some(EventType::Write)
        );
        assert_eq!(
            event_type(&EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any))),
            Some(EventType::Chmod)
        );
        assert_eq!(
            event_type(&EventKind::Modify(ModifyKind::Name(RenameMode::From))),
            Some(EventType::Rename)
        );
        assert_eq!(
            event_type(&EventKind::Modify(ModifyKind::Name(RenameMode::To))),
            Some(EventType::Create)
        );
        assert_eq!(
            event_type(&EventKind::Modify(ModifyKind::Name(RenameMode::Both))),
            None
        );
        assert_eq!(
            event_type(&EventKind::Remove(RemoveKind::File)),
            Some(EventType::Remove)
        );
        assert_eq!(event_type(&EventKind::Access(AccessKind::Any)), None);
    }

    #[tokio::test]
    async fn overflow_ends_the_stream_with_resource_exhausted() {
        use futures::StreamExt;
        let (sink, feed) = channel(4);
        let event = FilesystemEvent {
            name: "f".into(),
            event_type: EventType::Write,
            entry: None,
        };
        for _ in 0..5 {
            sink(Ok(vec![event.clone()]));
        }
        let (sender, resp) = crate::connect::stream_response();
        let opts = CallOptions {
            timeout: None,
            keepalive: std::time::Duration::from_secs(60),
        };
        let task = tokio::spawn(async move {
            let result = pump(&sender, feed, opts).await;
            if let Some(result) = result {
                sender.finish(result).await;
            }
        });
        let mut body = resp.into_body().into_data_stream();
        let mut frames = Vec::new();
        while let Some(chunk) = tokio::time::timeout(std::time::Duration::from_secs(5), body.next())
            .await
            .expect("the stream ends")
        {
            frames.push(chunk.expect("chunk"));
        }
        task.await.expect("pump");
        let last = frames.last().expect("end envelope");
        assert_eq!(last[0], paddock_envd_proto::connect::END_STREAM_FLAG);
        let end: serde_json::Value = serde_json::from_slice(&last[5..]).expect("json");
        assert_eq!(end["error"]["code"], "resource_exhausted");
        assert!(end["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("dropped")));
    }

    #[tokio::test]
    async fn a_full_feed_never_blocks_the_watcher_thread() {
        let (sink, feed) = channel(2);
        // Called from a plain thread, as notify does; must return at once even when full.
        let handle = std::thread::spawn(move || {
            for _ in 0..100 {
                sink(Ok(Vec::new()));
            }
        });
        handle.join().expect("sink thread");
        assert_eq!(feed.rx.len(), 2);
        tokio::time::timeout(std::time::Duration::from_secs(1), feed.overflow.notified())
            .await
            .expect("overflow signalled");
    }

    #[test]
    fn names_are_relative_to_the_watched_dir() {
        let root = Path::new("/home/user/w");
        assert_eq!(
            relative_name(root, Path::new("/home/user/w/a/b.txt")),
            "a/b.txt"
        );
        assert_eq!(relative_name(root, root), ".");
    }

    #[test]
    fn refuses_missing_paths_and_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("f"), "x").expect("write");
        assert_eq!(
            check_watchable(&tmp.path().join("nope"), false)
                .expect_err("missing")
                .code,
            Code::NotFound
        );
        assert_eq!(
            check_watchable(&tmp.path().join("f"), false)
                .expect_err("file")
                .code,
            Code::InvalidArgument
        );
        check_watchable(tmp.path(), false).expect("a local directory is watchable");
    }
}
