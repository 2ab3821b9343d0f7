//! Live event streams (Server-Sent Events): `GET /events/sandboxes[/{id}]` with
//! `Accept: text/event-stream`. Every event is one SSE message, `id:` the event id, `event:`
//! its type, `data:` its API JSON; a `:keepalive` comment goes out every [`KEEPALIVE`].
//!
//! No event is lost between reconnects: a client that sends `Last-Event-ID` first gets every
//! stored event after that one (matching its filter) from the store, then the live ones; an
//! id the server does not know (pruned, or from another server) replays everything kept. A
//! subscriber that falls behind the live channel does not drop events either: it reloads what
//! it missed from the store, by `seq`, and goes on live. Live events already delivered from
//! the store are skipped by `seq`. The stream ends when the server shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use super::store::EventQuery;
use super::{EventType, Events, SandboxEvent};
use crate::store::{StoreError, TeamId};

/// Interval of the keepalive comments.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Events read from the store per query while catching up.
const PAGE: u32 = 100;

/// Which events a stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFilter {
    /// Whose events.
    pub team_id: TeamId,
    /// Only this sandbox's.
    pub sandbox_id: Option<String>,
    /// Only these types (empty: all).
    pub types: Vec<EventType>,
}

impl StreamFilter {
    /// Whether `event` belongs in the stream.
    pub fn matches(&self, event: &SandboxEvent) -> bool {
        event.team_id == self.team_id
            && self
                .sandbox_id
                .as_ref()
                .is_none_or(|id| *id == event.sandbox_id)
            && (self.types.is_empty() || self.types.contains(&event.event_type))
    }

    fn query_after(&self, seq: i64) -> EventQuery {
        EventQuery {
            team_id: self.team_id.clone(),
            sandbox_id: self.sandbox_id.clone(),
            types: self.types.clone(),
            ascending: true,
            after_seq: Some(seq),
            offset: 0,
            limit: PAGE,
        }
    }
}

/// The SSE message of an event.
pub fn sse_event(event: &SandboxEvent) -> sse::Event {
    sse::Event::default()
        .id(event.id.as_str())
        .event(event.event_type.as_str())
        .data(event.to_api().to_string())
}

struct State {
    events: Arc<Events>,
    filter: StreamFilter,
    rx: broadcast::Receiver<Arc<SandboxEvent>>,
    /// Highest `seq` delivered (or known to be before the stream's start).
    delivered: i64,
    /// Read the store after `delivered` before going live.
    catch_up: bool,
    backlog: VecDeque<SandboxEvent>,
    shutdown: watch::Receiver<bool>,
}

/// Opens a stream of the events matching `filter`, resuming after `last_event_id` if given.
/// Ends when `shutdown` turns true (or its sender goes away).
pub async fn open(
    events: Arc<Events>,
    filter: StreamFilter,
    last_event_id: Option<&str>,
    shutdown: watch::Receiver<bool>,
) -> Result<impl Stream<Item = Result<sse::Event, Infallible>>, StoreError> {
    let (rx, max_seq) = events.subscribe().await?;
    let (delivered, catch_up) = match (last_event_id, events.store()) {
        (Some(id), Some(store)) => match store.event_seq(&filter.team_id, id).await? {
            Some(seq) => (seq, true),
            None => {
                tracing::debug!(
                    last_event_id = id,
                    "unknown Last-Event-ID; replaying every stored event"
                );
                (0, true)
            }
        },
        _ => (max_seq, false),
    };
    let state = State {
        events,
        filter,
        rx,
        delivered,
        catch_up,
        backlog: VecDeque::new(),
        shutdown,
    };
    Ok(futures::stream::unfold(state, next))
}

async fn next(mut st: State) -> Option<(Result<sse::Event, Infallible>, State)> {
    loop {
        if let Some(event) = st.backlog.pop_front() {
            if let Some(seq) = event.seq {
                st.delivered = st.delivered.max(seq);
            }
            return Some((Ok(sse_event(&event)), st));
        }
        if st.catch_up {
            let Some(store) = st.events.store() else {
                st.catch_up = false;
                continue;
            };
            match store.events(&st.filter.query_after(st.delivered)).await {
                Ok(page) => {
                    st.catch_up = page.len() >= PAGE as usize;
                    st.backlog.extend(page);
                    continue;
                }
                Err(e) => {
                    // The client reconnects with its Last-Event-ID and resumes from there.
                    tracing::error!(error = %crate::error::chain(&e), "reading events for a stream failed; ending it");
                    return None;
                }
            }
        }
        let received = tokio::select! {
            biased;
            _ = st.shutdown.wait_for(|stop| *stop) => return None,
            received = st.rx.recv() => received,
        };
        match received {
            Ok(event) => {
                let new = event.seq.is_none_or(|seq| seq > st.delivered);
                if new && st.filter.matches(&event) {
                    if let Some(seq) = event.seq {
                        st.delivered = seq;
                    }
                    return Some((Ok(sse_event(&event)), st));
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "an event stream fell behind; reloading from the store"
                );
                st.catch_up = true;
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(team: &str, sandbox: &str, t: EventType) -> SandboxEvent {
        SandboxEvent {
            seq: Some(1),
            id: "e1".into(),
            event_type: t,
            timestamp: chrono::Utc::now(),
            sandbox_id: sandbox.into(),
            team_id: TeamId::from_stored(team.into()),
            template_id: "base".into(),
            build_id: "base".into(),
            execution_id: "x".into(),
            data: Default::default(),
        }
    }

    #[test]
    fn filters_by_team_sandbox_and_type() {
        let f = StreamFilter {
            team_id: TeamId::from_stored("a".into()),
            sandbox_id: None,
            types: vec![],
        };
        assert!(f.matches(&event("a", "s1", EventType::Created)));
        assert!(!f.matches(&event("b", "s1", EventType::Created)));
        let f = StreamFilter {
            sandbox_id: Some("s1".into()),
            types: vec![EventType::Killed],
            ..f
        };
        assert!(f.matches(&event("a", "s1", EventType::Killed)));
        assert!(!f.matches(&event("a", "s2", EventType::Killed)));
        assert!(!f.matches(&event("a", "s1", EventType::Paused)));
    }
}
