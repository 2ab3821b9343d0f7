//! Reuse of upstream HTTP/1 connections. A connection goes back to the pool only once hyper
//! reports it ready for the next request (the previous response fully read); idle connections
//! older than the idle timeout, or closed by the sandbox, are dropped. A background reaper,
//! started on first use, prunes the pool and ends when the pool is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;

use crate::upstream::{Target, UpstreamBody};

/// Idle upstream connections by target.
pub(crate) struct Pool {
    idle: Mutex<HashMap<Target, Vec<Idle>>>,
    max_idle: usize,
    idle_timeout: Duration,
    reaper_started: AtomicBool,
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

impl Idle {
    fn usable(&self, idle_timeout: Duration) -> bool {
        self.since.elapsed() < idle_timeout && self.sender.is_ready()
    }
}

impl Pool {
    /// An empty pool; `max_idle == 0` disables reuse.
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(HashMap::new()),
            max_idle,
            idle_timeout,
            reaper_started: AtomicBool::new(false),
        })
    }

    /// Takes the most recently used idle connection to `target` that is still usable.
    pub(crate) fn checkout(&self, target: &Target) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.lock();
        let conns = idle.get_mut(target)?;
        let mut found = None;
        while let Some(conn) = conns.pop() {
            if conn.usable(self.idle_timeout) {
                found = Some(conn.sender);
                break;
            }
        }
        if conns.is_empty() {
            idle.remove(target);
        }
        found
    }

    /// Returns `sender` to the pool once its connection can take another request. Nothing
    /// happens if the connection closes first (including when the client dropped the response).
    pub(crate) fn checkin_when_idle(
        self: &Arc<Self>,
        target: Target,
        mut sender: SendRequest<UpstreamBody>,
    ) {
        if self.max_idle == 0 {
            return;
        }
        self.start_reaper();
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            if let Some(pool) = pool.upgrade() {
                pool.put(target, sender);
            }
        });
    }

    fn put(&self, target: Target, sender: SendRequest<UpstreamBody>) {
        let mut idle = self.lock();
        let conns = idle.entry(target).or_default();
        if conns.len() < self.max_idle {
            conns.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    fn prune(&self) {
        let timeout = self.idle_timeout;
        self.lock().retain(|_, conns| {
            conns.retain(|c| c.usable(timeout));
            !conns.is_empty()
        });
    }

    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(self);
        let period = (self.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match pool.upgrade() {
                    Some(pool) => pool.prune(),
                    None => return,
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Target, Vec<Idle>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removals), so a poisoned lock is still safe to use.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::connect;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A minimal HTTP/1.1 server that answers every request on a connection with `200 ok`.
    fn serve_ok(listener: UnixListener) {
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {
                                let r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if s.write_all(r).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
    }

    fn request() -> http::Request<UpstreamBody> {
        let body = Empty::new().map_err(|never| match never {}).boxed_unsync();
        let mut req = http::Request::new(body);
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("x"));
        req
    }

    #[tokio::test]
    async fn connection_returns_after_response_is_read_and_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("envd.sock");
        serve_ok(UnixListener::bind(&path).expect("bind"));
        let target = Target::Envd(path);
        let pool = Pool::new(4, Duration::from_millis(300));

        let mut sender = connect(&target, Duration::from_secs(5))
            .await
            .expect("connect");
        let resp = sender.send_request(request()).await.expect("response");
        pool.checkin_when_idle(target.clone(), sender);
        assert!(
            pool.checkout(&target).is_none(),
            "busy until the body is read"
        );
        resp.into_body().collect().await.expect("body");
        tokio::time::timeout(Duration::from_secs(5), async {
            while pool.idle_count() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("connection returned to the pool");
        let mut again = pool.checkout(&target).expect("pooled connection");
        let resp = again
            .send_request(request())
            .await
            .expect("second response on same conn");
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.expect("body");
        pool.checkin_when_idle(target.clone(), again);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(pool.idle_count(), 0, "reaper drops expired connections");
    }
}
