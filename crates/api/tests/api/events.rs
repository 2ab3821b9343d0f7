//! Lifecycle events and webhooks through the REST API: one event per transition (create,
//! timeout, pause, resume, kill, expiry, exit), listing filters, order and paging, team
//! scoping, Server-Sent Events (live, `Last-Event-ID` resume, a lagging subscriber reloading
//! from the store, end at shutdown), and webhook delivery to a local receiver (signature,
//! headers, retry after a 500, a pending delivery surviving a restart), and the destinations
//! webhooks may not reach (loopback, link-local, ... at registration and after resolution).

use std::collections::VecDeque;
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::harness::*;
use paddock_api::events::{EventKind, RetryPolicy};

const OTHER_KEY: &str = "e2b_other_team_key";

/// GETs `uri` and returns the JSON array it answered.
async fn events(h: &Harness, uri: &str) -> Vec<Value> {
    let r = h.get(uri).await;
    assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
    r.body.as_array().expect("an array").clone()
}

fn types(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|e| {
            e["type"]
                .as_str()
                .expect("type")
                .trim_start_matches("sandbox.lifecycle.")
                .to_string()
        })
        .collect()
}

/// Polls the sandbox's events (oldest first) until `done` holds; bounded.
async fn wait_events(h: &Harness, id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let uri = format!("/events/sandboxes/{id}?orderAsc=true&limit=100");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = events(h, &uri).await;
        if done(&list) {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events of {id} never got there: {:?}",
            types(&list)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn_background(h: &Harness) -> tokio::task::JoinHandle<()> {
    let control = h.control.clone();
    tokio::spawn(async move { control.run_background().await })
}

async fn add_other_team(h: &Harness) {
    let store = h.control.store();
    let team = store.ensure_team("other").await.expect("team");
    store
        .add_api_key(&team, &paddock_api::hash_api_key(OTHER_KEY))
        .await
        .expect("key");
}

#[tokio::test]
async fn every_transition_is_recorded_once_in_order() {
    let h = start().await;
    let id = h
        .create(json!({"templateID": "base", "metadata": {"role": "web"}}))
        .await;
    let r = h
        .post(&format!("/sandboxes/{id}/timeout"), r#"{"timeout":600}"#)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h.post(&format!("/sandboxes/{id}/pause"), "{}").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h
        .post(&format!("/v2/sandboxes/{id}/connect"), r#"{"timeout":60}"#)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = h
        .call(Method::DELETE, &format!("/sandboxes/{id}"), Some(KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    let list = events(&h, &format!("/events/sandboxes/{id}?orderAsc=true")).await;
    assert_eq!(
        types(&list),
        ["created", "updated", "paused", "resumed", "killed"]
    );
    for e in &list {
        assert_eq!(e["version"], "v1");
        assert_eq!(e["sandboxId"], id.as_str());
        assert_eq!(e["sandboxTemplateId"], "base");
        assert!(!e["sandboxTeamId"].as_str().expect("team").is_empty());
        assert_eq!(e["eventData"]["sandbox_metadata"], json!({"role": "web"}));
        let _: chrono::DateTime<chrono::Utc> = e["timestamp"]
            .as_str()
            .expect("timestamp")
            .parse()
            .expect("RFC 3339");
    }
    let ids: std::collections::HashSet<&str> =
        list.iter().map(|e| e["id"].as_str().expect("id")).collect();
    assert_eq!(ids.len(), 5, "event ids are unique");
    let exec = |i: usize| list[i]["sandboxExecutionId"].as_str().expect("execution");
    assert_eq!(exec(0), exec(1), "same execution until the pause");
    assert_eq!(exec(0), exec(2));
    assert_ne!(exec(2), exec(3), "a resume starts a new execution");
    assert_eq!(exec(3), exec(4));
    assert!(list[1]["eventData"]["set_timeout"].is_string());
    assert_eq!(list[2]["eventData"]["execution"]["vcpu_count"], 2);
    assert_eq!(list[4]["eventData"]["kill_reason"], "request");
    assert_eq!(list[4]["eventData"]["reason"], "killed by request");
    assert_eq!(list[4]["eventData"]["execution"]["memory_mb"], 512);

    // Newest first by default.
    let newest = events(&h, &format!("/events/sandboxes/{id}")).await;
    assert_eq!(
        types(&newest),
        ["killed", "resumed", "paused", "updated", "created"]
    );
    // The record is stopped, but its events are still there.
    assert_eq!(h.state_of(&id).await, SandboxState::Stopped);
}

#[tokio::test]
async fn expiry_exit_auto_pause_and_network_are_recorded() {
    let h = start().await;
    let background = spawn_background(&h);
    let expiring = h.create(json!({"templateID": "base"})).await;
    let dying = h.create(json!({"templateID": "base"})).await;
    let pausing = h
        .create(json!({"templateID": "base", "autoPause": true}))
        .await;

    let r = h
        .call(
            Method::PUT,
            &format!("/sandboxes/{dying}/network"),
            Some(KEY),
            Some(r#"{"allowOut":["1.1.1.1"],"denyOut":["0.0.0.0/0"]}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    for id in [&expiring, &pausing] {
        let r = h
            .post(&format!("/sandboxes/{id}/timeout"), r#"{"timeout":0}"#)
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
    h.node.die(&dying);

    let list = wait_events(&h, &expiring, |l| types(l).contains(&"killed".into())).await;
    assert_eq!(types(&list), ["created", "updated", "killed"]);
    assert_eq!(list[2]["eventData"]["kill_reason"], "timeout");

    let list = wait_events(&h, &dying, |l| types(l).contains(&"killed".into())).await;
    assert_eq!(types(&list), ["created", "updated", "killed"]);
    assert_eq!(
        list[1]["eventData"]["set_network"]["allow_out"],
        json!(["1.1.1.1"])
    );
    assert_eq!(list[2]["eventData"]["kill_reason"], "exited");

    let list = wait_events(&h, &pausing, |l| types(l).contains(&"paused".into())).await;
    assert_eq!(types(&list), ["created", "updated", "paused"]);
    h.control.shutdown().await;
    background.await.expect("background ends");

    // Shutdown kills the paused sandbox: one more event, with its reason.
    let list = events(&h, &format!("/events/sandboxes/{pausing}?orderAsc=true")).await;
    assert_eq!(types(&list), ["created", "updated", "paused", "killed"]);
    assert_eq!(list[3]["eventData"]["kill_reason"], "shutdown");
}

#[tokio::test]
async fn listing_filters_orders_and_pages() {
    let h = start().await;
    let a = h.create(json!({"templateID": "base"})).await;
    let b = h.create(json!({"templateID": "base"})).await;
    let r = h
        .call(Method::DELETE, &format!("/sandboxes/{a}"), Some(KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h.post(&format!("/sandboxes/{b}/pause"), "{}").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // Team-wide, oldest first: created a, created b, killed a, paused b.
    let all = events(&h, "/events/sandboxes?orderAsc=true").await;
    assert_eq!(types(&all), ["created", "created", "killed", "paused"]);
    let sandboxes: Vec<&str> = all
        .iter()
        .map(|e| e["sandboxId"].as_str().expect("id"))
        .collect();
    assert_eq!(sandboxes, [&a, &b, &a, &b]);

    let newest = events(&h, "/events/sandboxes").await;
    assert_eq!(types(&newest), ["paused", "killed", "created", "created"]);
    let page = events(&h, "/events/sandboxes?limit=2&offset=1").await;
    assert_eq!(types(&page), ["killed", "created"]);
    assert_eq!(page[1]["sandboxId"], b.as_str());
    let past_end = events(&h, "/events/sandboxes?offset=10").await;
    assert!(past_end.is_empty());
    let created = events(&h, "/events/sandboxes?types=sandbox.lifecycle.created").await;
    assert_eq!(types(&created), ["created", "created"]);
    let two = events(
        &h,
        "/events/sandboxes?types=sandbox.lifecycle.killed&types=sandbox.lifecycle.paused&orderAsc=true",
    )
    .await;
    assert_eq!(types(&two), ["killed", "paused"]);
    let only_b = events(&h, &format!("/events/sandboxes/{b}?limit=1")).await;
    assert_eq!(types(&only_b), ["paused"]);

    // The default page is 10 events.
    for _ in 0..6 {
        h.create(json!({"templateID": "base"})).await;
    }
    assert_eq!(events(&h, "/events/sandboxes").await.len(), 10);
    assert_eq!(events(&h, "/events/sandboxes?limit=100").await.len(), 10);

    for (query, needle) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("offset=-3", "offset"),
        ("orderAsc=sideways", "orderAsc"),
        ("types=sandbox.lifecycle.melted", "types"),
    ] {
        let r = h.get(&format!("/events/sandboxes?{query}")).await;
        assert_error(&r, StatusCode::BAD_REQUEST, needle);
    }
    let r = h.call(Method::GET, "/events/sandboxes", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn events_and_webhooks_are_team_scoped() {
    let h = start().await;
    add_other_team(&h).await;
    let id = h.create(json!({"templateID": "base"})).await;
    let hook = h
        .post(
            "/events/webhooks",
            r#"{"name":"mine","url":"http://hooks.example.com:9/h","events":["sandbox.lifecycle.created"],"signatureSecret":"s"}"#,
        )
        .await;
    assert_eq!(hook.status, StatusCode::CREATED, "{}", hook.body);
    let hook_id = hook.body["id"].as_str().expect("id").to_string();

    let theirs = h
        .call(Method::GET, "/events/sandboxes", Some(OTHER_KEY), None)
        .await;
    assert_eq!(theirs.status, StatusCode::OK);
    assert_eq!(theirs.body, json!([]));
    let r = h
        .call(
            Method::GET,
            &format!("/events/sandboxes/{id}"),
            Some(OTHER_KEY),
            None,
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, &id);
    let r = h
        .get(&format!("/events/sandboxes/{}", SandboxId::generate()))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "unknown sandbox");
    let r = h.get("/events/sandboxes/not-an-id").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = h
        .call(Method::GET, "/events/webhooks", Some(OTHER_KEY), None)
        .await;
    assert_eq!(r.body, json!([]));
    for method in [Method::GET, Method::DELETE] {
        let r = h
            .call(
                method,
                &format!("/events/webhooks/{hook_id}"),
                Some(OTHER_KEY),
                None,
            )
            .await;
        assert_error(&r, StatusCode::NOT_FOUND, &hook_id);
    }
    let r = h
        .call(
            Method::PATCH,
            &format!("/events/webhooks/{hook_id}"),
            Some(OTHER_KEY),
            Some(r#"{"enabled":false}"#),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, &hook_id);
    let mine = h.get(&format!("/events/webhooks/{hook_id}")).await;
    assert_eq!(mine.body["enabled"], true, "untouched by the other team");
}

#[tokio::test]
async fn webhook_crud_and_validation() {
    let h = start().await;
    let r = h
        .post(
            "/events/webhooks",
            r#"{"name":"My Sandbox Webhook","url":"https://example.com/webhook","enabled":true,
               "events":["sandbox.lifecycle.created","sandbox.lifecycle.updated","sandbox.lifecycle.killed"],
               "signatureSecret":"secret-for-event-signature-verification"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    assert_eq!(r.body["name"], "My Sandbox Webhook");
    assert_eq!(r.body["url"], "https://example.com/webhook");
    assert_eq!(r.body["enabled"], true);
    assert_eq!(
        r.body["events"],
        json!([
            "sandbox.lifecycle.created",
            "sandbox.lifecycle.killed",
            "sandbox.lifecycle.updated"
        ])
    );
    assert!(r.body["teamId"].is_string());
    assert!(r.body["createdAt"].is_string());
    assert!(r.body.get("signatureSecret").is_none(), "{}", r.body);
    assert!(!r.body.to_string().contains("secret-for-event"));

    let list = h.get("/events/webhooks").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body.as_array().expect("list").len(), 1);
    assert_eq!(list.body[0], r.body);
    assert_eq!(h.get(&format!("/events/webhooks/{id}")).await.body, r.body);

    let patched = h
        .call(
            Method::PATCH,
            &format!("/events/webhooks/{id}"),
            Some(KEY),
            Some(r#"{"url":"http://hooks.example.com:8080/hook","enabled":false,"events":["sandbox.lifecycle.created"]}"#),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["url"], "http://hooks.example.com:8080/hook");
    assert_eq!(patched.body["enabled"], false);
    assert_eq!(patched.body["events"], json!(["sandbox.lifecycle.created"]));
    assert_eq!(patched.body["name"], "My Sandbox Webhook");

    for (body, needle) in [
        (r#"{"url":"ftp://x/"}"#, "url"),
        (r#"{"events":[]}"#, "events"),
        (r#"{"events":["nope"]}"#, "events"),
        (r#"{"name":""}"#, "name"),
        (r#"{"signatureSecret":""}"#, "signatureSecret"),
        (r#"{"enabled":"yes"}"#, "invalid request body"),
    ] {
        let r = h
            .call(
                Method::PATCH,
                &format!("/events/webhooks/{id}"),
                Some(KEY),
                Some(body),
            )
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, needle);
    }
    for (body, needle) in [
        (
            r#"{"url":"http://a/","events":["sandbox.lifecycle.created"],"signatureSecret":"s"}"#,
            "name",
        ),
        (
            r#"{"name":"n","events":["sandbox.lifecycle.created"],"signatureSecret":"s"}"#,
            "url",
        ),
        (
            r#"{"name":"n","url":"localhost:80","events":["sandbox.lifecycle.created"],"signatureSecret":"s"}"#,
            "url",
        ),
        (
            r#"{"name":"n","url":"http://a/","signatureSecret":"s"}"#,
            "events",
        ),
        (
            r#"{"name":"n","url":"http://a/","events":["sandbox.lifecycle.created"]}"#,
            "signatureSecret",
        ),
        ("[1,2]", "invalid request body"),
    ] {
        let r = h.post("/events/webhooks", body).await;
        assert_error(&r, StatusCode::BAD_REQUEST, needle);
    }

    let r = h
        .call(
            Method::DELETE,
            &format!("/events/webhooks/{id}"),
            Some(KEY),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h.get(&format!("/events/webhooks/{id}")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "webhook");
    assert_eq!(h.get("/events/webhooks").await.body, json!([]));
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events

struct SseMessage {
    id: String,
    event: String,
    data: Value,
}

/// Reads SSE messages from a response body, skipping comments (keepalives).
struct SseReader {
    body: Body,
    buf: String,
}

impl SseReader {
    async fn open(h: &Harness, uri: &str, last_event_id: Option<&str>) -> SseReader {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header("X-API-Key", KEY)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = h
            .router
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        SseReader {
            body: res.into_body(),
            buf: String::new(),
        }
    }

    /// The next message, or `None` when the stream ended; panics after 10 s of silence.
    async fn next(&mut self) -> Option<SseMessage> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if event.is_empty() {
                    continue; // a comment
                }
                let data = serde_json::from_str(&data).expect("JSON data");
                return Some(SseMessage { id, event, data });
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("an SSE message within 10 s");
            match frame {
                None => return None,
                Some(frame) => {
                    let frame = frame.expect("body frame");
                    if let Ok(bytes) = frame.into_data() {
                        self.buf
                            .push_str(std::str::from_utf8(&bytes).expect("UTF-8"));
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn stream_sees_events_live_and_resumes_after_last_event_id() {
    let h = start().await;
    let mut all = SseReader::open(&h, "/events/sandboxes", None).await;
    let id = h.create(json!({"templateID": "base"})).await;
    let created = all.next().await.expect("created");
    assert_eq!(created.event, "sandbox.lifecycle.created");
    assert_eq!(created.data["sandboxId"], id.as_str());
    assert_eq!(created.data["id"], created.id.as_str());

    let mut one = SseReader::open(&h, &format!("/events/sandboxes/{id}"), None).await;
    let mut kills =
        SseReader::open(&h, "/events/sandboxes?types=sandbox.lifecycle.killed", None).await;
    let other = h.create(json!({"templateID": "base"})).await;
    let r = h.post(&format!("/sandboxes/{id}/pause"), "{}").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h
        .call(Method::DELETE, &format!("/sandboxes/{id}"), Some(KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    let mut seen = Vec::new();
    for _ in 0..3 {
        let m = all.next().await.expect("event");
        seen.push((
            m.event,
            m.data["sandboxId"].as_str().expect("id").to_string(),
        ));
    }
    assert_eq!(
        seen,
        [
            ("sandbox.lifecycle.created".to_string(), other.clone()),
            ("sandbox.lifecycle.paused".to_string(), id.clone()),
            ("sandbox.lifecycle.killed".to_string(), id.clone()),
        ]
    );
    // The per-sandbox stream only has this sandbox's, the filtered one only kills.
    assert_eq!(
        one.next().await.expect("paused").event,
        "sandbox.lifecycle.paused"
    );
    let killed = one.next().await.expect("killed");
    assert_eq!(killed.event, "sandbox.lifecycle.killed");
    assert_eq!(kills.next().await.expect("kill").id, killed.id);

    // A reconnect after `created` gets everything after it from the store, then goes live.
    let mut resumed = SseReader::open(&h, "/events/sandboxes", Some(&created.id)).await;
    let replay: Vec<String> = [
        resumed.next().await,
        resumed.next().await,
        resumed.next().await,
    ]
    .into_iter()
    .map(|m| m.expect("replayed").event)
    .collect();
    assert_eq!(
        replay,
        [
            "sandbox.lifecycle.created",
            "sandbox.lifecycle.paused",
            "sandbox.lifecycle.killed"
        ]
    );
    let r = h.post(&format!("/sandboxes/{other}/pause"), "{}").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let live = resumed.next().await.expect("live after the replay");
    assert_eq!(live.event, "sandbox.lifecycle.paused");
    assert_eq!(live.data["sandboxId"], other.as_str());

    // An unknown Last-Event-ID replays everything kept.
    let mut unknown = SseReader::open(&h, "/events/sandboxes", Some("no-such-event")).await;
    assert_eq!(unknown.next().await.expect("first").id, created.id);

    // Shutdown ends every stream.
    h.control.shutdown().await;
    for reader in [&mut all, &mut one, &mut kills, &mut resumed, &mut unknown] {
        while let Some(m) = reader.next().await {
            assert!(m.event.starts_with("sandbox.lifecycle."));
        }
    }
}

#[tokio::test]
async fn a_lagging_stream_reloads_from_the_store_and_loses_nothing() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base"})).await;
    let mut reader = SseReader::open(&h, "/events/sandboxes", None).await;
    let rec = h
        .control
        .store()
        .sandbox(&SandboxId::parse(&id).expect("id"))
        .await
        .expect("store")
        .expect("record");
    // Far more than the live channel holds, while the reader reads nothing.
    let events = h.control.events();
    let start = chrono::Utc::now();
    let mut ids = Vec::new();
    for i in 0..1500 {
        let end = start + chrono::Duration::seconds(i);
        ids.push(events.record(&rec, EventKind::ends(end)).await.id.clone());
    }
    for (n, want) in ids.iter().enumerate() {
        let m = reader.next().await.expect("no event is lost");
        assert_eq!(&m.id, want, "event {n} in order");
    }
}

// ---------------------------------------------------------------------------------------------
// Webhooks

struct Delivery {
    headers: axum::http::HeaderMap,
    body: String,
}

/// A local webhook receiver: answers with the queued statuses (then 200) and reports every
/// request it gets.
struct Receiver {
    url: String,
    got: mpsc::UnboundedReceiver<Delivery>,
    statuses: Arc<Mutex<VecDeque<StatusCode>>>,
    listener: Option<tokio::net::TcpListener>,
    tx: mpsc::UnboundedSender<Delivery>,
}

impl Receiver {
    async fn bind() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let (tx, got) = mpsc::unbounded_channel();
        Receiver {
            url,
            got,
            statuses: Arc::new(Mutex::new(VecDeque::new())),
            listener: Some(listener),
            tx,
        }
    }

    async fn start() -> Receiver {
        let mut r = Receiver::bind().await;
        r.serve();
        r
    }

    fn serve(&mut self) {
        let listener = self.listener.take().expect("served once");
        let (tx, statuses) = (self.tx.clone(), Arc::clone(&self.statuses));
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let (tx, statuses) = (tx.clone(), Arc::clone(&statuses));
                async move {
                    let _ = tx.send(Delivery { headers, body });
                    statuses
                        .lock()
                        .expect("lock")
                        .pop_front()
                        .unwrap_or(StatusCode::OK)
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
    }

    async fn next(&mut self) -> Delivery {
        tokio::time::timeout(Duration::from_secs(10), self.got.recv())
            .await
            .expect("a delivery within 10 s")
            .expect("receiver open")
    }

    async fn nothing_more(&mut self) {
        let extra = tokio::time::timeout(Duration::from_millis(300), self.got.recv()).await;
        assert!(extra.is_err(), "an unexpected extra delivery");
    }
}

/// A control plane whose webhooks may reach the test receivers on 127.0.0.1 (and nothing
/// else that is not globally routable).
async fn start_local_hooks(dir: tempfile::TempDir) -> Harness {
    start_configured(dir, FakeNode::new(), |c| {
        c.webhook_destinations.allowed = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await
}

fn e2b_signature(secret: &str, body: &str) -> String {
    STANDARD_NO_PAD.encode(Sha256::digest(format!("{secret}{body}").as_bytes()))
}

async fn register(h: &Harness, url: &str, events: &[&str], secret: &str) -> String {
    let body =
        json!({"name": "test hook", "url": url, "events": events, "signatureSecret": secret});
    let r = h.post("/events/webhooks", &body.to_string()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn webhook_gets_signed_deliveries() {
    let h = start_local_hooks(tempfile::tempdir().expect("tempdir")).await;
    let mut receiver = Receiver::start().await;
    let hook = register(
        &h,
        &receiver.url,
        &["sandbox.lifecycle.created", "sandbox.lifecycle.killed"],
        "topsecret",
    )
    .await;
    let background = spawn_background(&h);
    let id = h
        .create(json!({"templateID": "base", "metadata": {"k": "v"}}))
        .await;
    let r = h.post(&format!("/sandboxes/{id}/pause"), "{}").await;
    assert_eq!(
        r.status,
        StatusCode::NO_CONTENT,
        "not subscribed: not delivered"
    );
    let r = h
        .call(Method::DELETE, &format!("/sandboxes/{id}"), Some(KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    let created = receiver.next().await;
    let killed = receiver.next().await;
    receiver.nothing_more().await;
    let stored = events(&h, &format!("/events/sandboxes/{id}?orderAsc=true")).await;
    for (d, want_type, stored) in [
        (&created, "sandbox.lifecycle.created", &stored[0]),
        (&killed, "sandbox.lifecycle.killed", &stored[2]),
    ] {
        let header = |name: &str| d.headers[name].to_str().expect("ASCII").to_string();
        assert_eq!(header("e2b-signature"), e2b_signature("topsecret", &d.body));
        assert_eq!(header("e2b-signature-version"), "v1");
        assert_eq!(header("e2b-webhook-id"), hook);
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(header("e2b-delivery-id").len(), 36);
        let v: Value = serde_json::from_str(&d.body).expect("JSON payload");
        assert_eq!(v["type"], want_type);
        assert_eq!(v["version"], "v2");
        assert_eq!(v["event_category"], "lifecycle");
        assert_eq!(v["sandbox_id"], id.as_str());
        assert_eq!(v["sandbox_template_id"], "base");
        assert_eq!(v["id"], stored["id"], "the same event as the API's");
        assert_eq!(v["sandbox_team_id"], stored["sandboxTeamId"]);
        assert_eq!(v["event_data"]["sandbox_metadata"], json!({"k": "v"}));
    }
    assert_ne!(
        created.headers["e2b-delivery-id"],
        killed.headers["e2b-delivery-id"]
    );

    // A disabled webhook gets nothing; the secret can be changed.
    let r = h
        .call(
            Method::PATCH,
            &format!("/events/webhooks/{hook}"),
            Some(KEY),
            Some(r#"{"enabled":false}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    h.create(json!({"templateID": "base"})).await;
    receiver.nothing_more().await;
    let r = h
        .call(
            Method::PATCH,
            &format!("/events/webhooks/{hook}"),
            Some(KEY),
            Some(r#"{"enabled":true,"signatureSecret":"rotated"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    h.create(json!({"templateID": "base"})).await;
    let d = receiver.next().await;
    assert_eq!(
        d.headers["e2b-signature"].to_str().expect("ASCII"),
        e2b_signature("rotated", &d.body)
    );
    h.control.shutdown().await;
    background.await.expect("background ends");
}

#[tokio::test]
async fn failed_delivery_is_retried_until_it_succeeds() {
    let h = start_local_hooks(tempfile::tempdir().expect("tempdir")).await;
    h.control.events().set_retry_policy(RetryPolicy {
        first_retry: Duration::from_millis(50),
        factor: 2,
        ..RetryPolicy::default()
    });
    let mut receiver = Receiver::start().await;
    receiver.statuses.lock().expect("lock").extend([
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::SERVICE_UNAVAILABLE,
    ]);
    register(&h, &receiver.url, &["sandbox.lifecycle.created"], "s").await;
    let background = spawn_background(&h);
    let first = h.create(json!({"templateID": "base"})).await;
    let second = h.create(json!({"templateID": "base"})).await;

    let attempts: Vec<Delivery> = vec![
        receiver.next().await,
        receiver.next().await,
        receiver.next().await,
    ];
    for a in &attempts {
        assert_eq!(a.body, attempts[0].body, "the same payload, byte for byte");
        assert_eq!(
            a.headers["e2b-signature"].to_str().expect("ASCII"),
            e2b_signature("s", &a.body)
        );
    }
    let delivery_ids: std::collections::HashSet<_> = attempts
        .iter()
        .map(|a| a.headers["e2b-delivery-id"].clone())
        .collect();
    assert_eq!(delivery_ids.len(), 3, "a new delivery id per attempt");
    let v: Value = serde_json::from_str(&attempts[0].body).expect("JSON");
    assert_eq!(
        v["sandbox_id"],
        first.as_str(),
        "in order: the first event first"
    );
    // Only after it succeeded does the next event go out.
    let next: Value = serde_json::from_str(&receiver.next().await.body).expect("JSON");
    assert_eq!(next["sandbox_id"], second.as_str());
    receiver.nothing_more().await;
    h.control.shutdown().await;
    background.await.expect("background ends");
}

#[tokio::test]
async fn a_delivery_that_keeps_failing_is_given_up() {
    let attempts = |outcome: &str| paddock_telemetry::WEBHOOK_ATTEMPT.count(&[outcome]);
    let before = ["delivered", "failed_will_retry", "failed_gave_up"].map(attempts);
    let h = start_local_hooks(tempfile::tempdir().expect("tempdir")).await;
    h.control.events().set_retry_policy(RetryPolicy {
        max_attempts: 3,
        first_retry: Duration::from_millis(20),
        factor: 1,
        ..RetryPolicy::default()
    });
    let mut receiver = Receiver::start().await;
    receiver
        .statuses
        .lock()
        .expect("lock")
        .extend([StatusCode::BAD_GATEWAY; 3]);
    register(&h, &receiver.url, &["sandbox.lifecycle.created"], "s").await;
    let background = spawn_background(&h);
    let doomed = h.create(json!({"templateID": "base"})).await;
    for _ in 0..3 {
        let v: Value = serde_json::from_str(&receiver.next().await.body).expect("JSON");
        assert_eq!(v["sandbox_id"], doomed.as_str());
    }
    // The queue moves on to the next event.
    let fine = h.create(json!({"templateID": "base"})).await;
    let v: Value = serde_json::from_str(&receiver.next().await.body).expect("JSON");
    assert_eq!(v["sandbox_id"], fine.as_str());
    receiver.nothing_more().await;
    // Every attempt is timed by its outcome (other tests in the process may add more).
    let after = ["delivered", "failed_will_retry", "failed_gave_up"].map(attempts);
    assert!(after[0] > before[0], "{before:?} {after:?}");
    assert!(after[1] >= before[1] + 2, "{before:?} {after:?}");
    assert!(after[2] > before[2], "{before:?} {after:?}");
    h.control.shutdown().await;
    background.await.expect("background ends");
}

#[tokio::test]
async fn a_pending_delivery_survives_a_restart() {
    let h = start_local_hooks(tempfile::tempdir().expect("tempdir")).await;
    // The receiver's address is known, but nothing answers it before the restart.
    let mut receiver = Receiver::bind().await;
    let hook = register(
        &h,
        &receiver.url,
        &["sandbox.lifecycle.created", "sandbox.lifecycle.killed"],
        "persist",
    )
    .await;
    // No background tasks: the delivery stays queued in the database.
    let id = h.create(json!({"templateID": "base"})).await;
    let store = h.control.events().store().cloned().expect("persistent");
    let heads = store.delivery_heads().await.expect("heads");
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0].webhook_id, hook);
    assert_eq!(heads[0].attempts, 0);
    drop(store);

    // Restart on the same data directory (the node forgot the sandbox: it is reconciled
    // to stopped, which is one more event).
    let Harness { dir, .. } = h;
    let h = start_local_hooks(dir).await;
    receiver.serve();
    let background = spawn_background(&h);
    let created: Value = serde_json::from_str(&receiver.next().await.body).expect("JSON");
    assert_eq!(created["type"], "sandbox.lifecycle.created");
    assert_eq!(created["sandbox_id"], id.as_str());
    let killed = receiver.next().await;
    assert_eq!(
        killed.headers["e2b-signature"].to_str().expect("ASCII"),
        e2b_signature("persist", &killed.body)
    );
    let killed: Value = serde_json::from_str(&killed.body).expect("JSON");
    assert_eq!(killed["type"], "sandbox.lifecycle.killed");
    assert_eq!(killed["event_data"]["kill_reason"], "restart");
    receiver.nothing_more().await;
    h.control.shutdown().await;
    background.await.expect("background ends");
}

#[tokio::test]
async fn webhooks_to_internal_addresses_are_refused_at_registration() {
    let h = start().await;
    let ok = h
        .post(
            "/events/webhooks",
            &json!({"name": "n", "url": "https://hooks.example.com/x",
                    "events": ["sandbox.lifecycle.created"], "signatureSecret": "s"})
            .to_string(),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    let id = ok.body["id"].as_str().expect("id").to_string();
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://127.1/",
        "http://2130706433/",
        "http://localhost:3000/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://0.0.0.0:3000/",
        "http://10.213.0.2:49983/",
        "http://192.168.1.1/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
    ] {
        let body = json!({"name": "n", "url": url, "events": ["sandbox.lifecycle.created"],
                          "signatureSecret": "s"});
        let r = h.post("/events/webhooks", &body.to_string()).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "url");
        assert!(
            r.body["message"]
                .as_str()
                .expect("message")
                .contains("refused"),
            "{url}: {}",
            r.body
        );
        let r = h
            .call(
                Method::PATCH,
                &format!("/events/webhooks/{id}"),
                Some(KEY),
                Some(&json!({ "url": url }).to_string()),
            )
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "url");
    }
    let hooks = h.get("/events/webhooks").await;
    assert_eq!(hooks.body.as_array().expect("list").len(), 1);
    assert_eq!(hooks.body[0]["url"], "https://hooks.example.com/x");
}

/// Webhooks stored before the rule (by an older server, straight in the store here) are
/// checked at every delivery: a name is resolved and every address checked, and an IP literal
/// is checked before connecting. The receiver is up and answers 200, so a failed attempt means
/// nothing reached it.
#[tokio::test]
async fn deliveries_to_internal_addresses_are_refused_after_resolution() {
    let h = start().await;
    h.control.events().set_retry_policy(RetryPolicy {
        first_retry: Duration::from_secs(3600),
        ..RetryPolicy::default()
    });
    let mut receiver = Receiver::start().await;
    let port = receiver.url.rsplit(':').next().expect("port").to_string();
    let team = h
        .control
        .store()
        .ensure_team(paddock_api::DEFAULT_TEAM)
        .await
        .expect("team");
    let store = h.control.events().store().cloned().expect("persistent");
    let mut ids = Vec::new();
    for url in [
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{port}"),
        format!("http://[::ffff:127.0.0.1]:{port}"),
    ] {
        let hook = paddock_api::events::Webhook {
            id: format!("{:08}-0000-4000-8000-000000000000", ids.len()),
            team_id: team.clone(),
            name: "stored earlier".into(),
            url,
            enabled: true,
            events: vec![paddock_api::events::EventType::Created],
            secret: "s".into(),
            created_at: chrono::Utc::now(),
        };
        store.insert_webhook(&hook).await.expect("insert");
        ids.push(hook.id);
    }
    let background = spawn_background(&h);
    h.create(json!({"templateID": "base"})).await;
    // Wait until every webhook's attempt has been made and recorded as failed.
    let mut waited = 0;
    loop {
        let heads = store.delivery_heads().await.expect("heads");
        assert_eq!(heads.len(), ids.len(), "kept for a retry");
        if heads.iter().all(|d| d.attempts == 1) {
            break;
        }
        waited += 1;
        assert!(waited < 1000, "attempts not made: {heads:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(receiver.got.try_recv().is_err(), "nothing was delivered");
    h.control.shutdown().await;
    background.await.expect("background ends");
}
