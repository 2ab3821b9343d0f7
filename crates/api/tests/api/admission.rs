//! Admission control of creates: over the node's or a team's limit of creates in flight, and
//! when the node is full, a create gets 429 with `Retry-After` at once, before any node work;
//! slots come back when creates end (success, failure, a client gone away). The fake node's
//! `slow` template holds creates in flight until `slow_gate` gets permits.

use std::sync::atomic::Ordering;

use paddock_api::AdmissionLimits;

use crate::harness::*;

const OTHER_KEY: &str = "e2b_other_admission_key";

/// A control plane with these admission limits, a second team (`OTHER_KEY`) and no background.
async fn start_with(node: usize, per_team: usize) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().to_path_buf();
    let mut config = ApiConfig::new(&data_dir);
    config.admission = AdmissionLimits { node, per_team };
    let fake = FakeNode::new();
    let control = ControlPlane::open(config, fake.clone())
        .await
        .expect("open control plane");
    control.reconcile().await.expect("reconcile");
    control
        .ensure_api_key(Some(KEY.into()))
        .await
        .expect("register key");
    let store = control.store();
    let other = store.ensure_team("other").await.expect("team");
    store
        .add_api_key(&other, &paddock_api::hash_api_key(OTHER_KEY))
        .await
        .expect("key");
    let router = control.router();
    Harness {
        dir,
        data_dir,
        node: fake,
        control,
        router,
    }
}

fn create_request(key: &str, template: &str) -> Request<Body> {
    Request::post("/v2/sandboxes")
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(Body::from(format!(r#"{{"templateID":"{template}"}}"#)))
        .expect("request")
}

/// Starts a create of a `slow` sandbox for `key` and waits until the node holds `in_node`
/// creates; the handle answers once `slow_gate` lets it through.
async fn hold_slow(
    h: &Harness,
    key: &str,
    in_node: usize,
) -> tokio::task::JoinHandle<Result<axum::response::Response, std::convert::Infallible>> {
    let task = tokio::spawn(h.router.clone().oneshot(create_request(key, "slow")));
    wait_for("the create reaches the node", || {
        h.node.in_create.load(Ordering::SeqCst) == in_node
    })
    .await;
    task
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn create_as(h: &Harness, key: &str, template: &str) -> Reply {
    let body = format!(r#"{{"templateID":"{template}"}}"#);
    h.call(Method::POST, "/v2/sandboxes", Some(key), Some(&body))
        .await
}

/// A 429 of admission control: E2B's body naming the limit, `Retry-After` in seconds.
fn assert_too_many(r: &Reply, needle: &str) {
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, needle);
    assert_eq!(r.headers["retry-after"], "1");
    let secs: u64 = r.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("delta-seconds");
    assert!(secs >= 1);
}

async fn status_of(
    task: tokio::task::JoinHandle<Result<axum::response::Response, std::convert::Infallible>>,
) -> StatusCode {
    task.await.expect("no panic").expect("infallible").status()
}

#[tokio::test]
async fn a_team_over_its_limit_gets_429_while_another_team_gets_201() {
    let h = start_with(10, 2).await;
    let first = hold_slow(&h, KEY, 1).await;
    let second = hold_slow(&h, KEY, 2).await;

    let r = create_as(&h, KEY, "base").await;
    assert_too_many(&r, "for this team (limit 2");
    // Refused before any node work or record.
    assert_eq!(h.node.created.lock().expect("lock").len(), 0);
    assert_eq!(h.node.in_create.load(Ordering::SeqCst), 2);

    let r = create_as(&h, OTHER_KEY, "base").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    h.node.slow_gate.add_permits(2);
    assert_eq!(status_of(first).await, StatusCode::CREATED);
    assert_eq!(status_of(second).await, StatusCode::CREATED);
    let r = create_as(&h, KEY, "base").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // Only the admitted creates left records: 2 slow + 1 other team + 1 after the release.
    let listed = h.get("/v2/sandboxes").await;
    assert_eq!(
        listed.body.as_array().expect("array").len(),
        3,
        "{}",
        listed.body
    );
}

#[tokio::test]
async fn the_node_limit_holds_across_teams() {
    let h = start_with(2, 2).await;
    let mine = hold_slow(&h, KEY, 1).await;
    let theirs = hold_slow(&h, OTHER_KEY, 2).await;

    // The team has a slot left, the node has none.
    assert_too_many(&create_as(&h, KEY, "base").await, "on this node (limit 2");
    assert_too_many(&create_as(&h, OTHER_KEY, "base").await, "on this node");

    h.node.slow_gate.add_permits(2);
    assert_eq!(status_of(mine).await, StatusCode::CREATED);
    assert_eq!(status_of(theirs).await, StatusCode::CREATED);
    assert_eq!(
        create_as(&h, OTHER_KEY, "base").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn slots_come_back_after_success_and_after_failure() {
    let h = start_with(1, 1).await;
    for _ in 0..3 {
        let r = create_as(&h, KEY, "base").await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let r = create_as(&h, KEY, "broken").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    let r = create_as(&h, KEY, "nosuchtemplate").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = create_as(&h, KEY, "base").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn a_full_node_is_429_not_503() {
    let h = start_with(4, 4).await;
    // The fake node's `busy` template: the node refuses for capacity (max sandboxes).
    let r = create_as(&h, KEY, "busy").await;
    assert_too_many(&r, "node is at capacity");
    assert_eq!(r.headers["should-retry"], "true");
    let r = create_as(&h, KEY, "base").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn a_cancelled_request_keeps_its_slot_until_its_create_ends() {
    let h = start_with(1, 1).await;
    let gone = hold_slow(&h, KEY, 1).await;
    gone.abort(); // the client goes away; the create goes on
    let _ = gone.await;
    assert_too_many(&create_as(&h, KEY, "base").await, "limit 1");

    h.node.slow_gate.add_permits(1);
    wait_for("the abandoned create ends", || {
        h.node.in_create.load(Ordering::SeqCst) == 0
    })
    .await;
    // The task gives the slot back right after recording the create: poll briefly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = create_as(&h, KEY, "base").await;
        if r.status == StatusCode::CREATED {
            break;
        }
        assert_too_many(&r, "limit 1");
        assert!(tokio::time::Instant::now() < deadline, "the slot leaked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The abandoned create finished and runs.
    let id = h.node.created.lock().expect("lock")[0].id.to_string();
    assert_eq!(h.state_of(&id).await, SandboxState::Running);
}

#[tokio::test]
async fn a_burst_gets_201_or_429_each_and_leaks_no_slot() {
    let h = start_with(3, 3).await;
    let tasks: Vec<_> = (0..12)
        .map(|_| tokio::spawn(h.router.clone().oneshot(create_request(KEY, "slow"))))
        .collect();
    // Three are admitted and held in the node; the nine others are answered at once.
    wait_for("nine answered while three are held", || {
        tasks.iter().filter(|t| t.is_finished()).count() == 9
            && h.node.in_create.load(Ordering::SeqCst) == 3
    })
    .await;
    h.node.slow_gate.add_permits(3);
    let mut statuses = Vec::new();
    for task in tasks {
        let res = task.await.expect("no panic").expect("infallible");
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(res.headers()["retry-after"], "1");
        }
        statuses.push(res.status());
    }
    let count = |status| statuses.iter().filter(|s| **s == status).count();
    assert_eq!(count(StatusCode::CREATED), 3, "{statuses:?}");
    assert_eq!(count(StatusCode::TOO_MANY_REQUESTS), 9, "{statuses:?}");
    // Every slot is free again: three more at once fit.
    let again: Vec<_> = (0..3)
        .map(|_| tokio::spawn(h.router.clone().oneshot(create_request(KEY, "slow"))))
        .collect();
    wait_for("three more reach the node", || {
        h.node.in_create.load(Ordering::SeqCst) == 3
    })
    .await;
    h.node.slow_gate.add_permits(3);
    for task in again {
        assert_eq!(status_of(task).await, StatusCode::CREATED);
    }
}

#[tokio::test]
async fn a_fork_is_admitted_before_the_copy() {
    let h = start_with(10, 2).await;
    let parent = h.create(json!({"templateID": "base"})).await;
    let fork = format!("/sandboxes/{parent}/fork");
    let first = hold_slow(&h, KEY, 1).await;
    let second = hold_slow(&h, KEY, 2).await;
    // No child can be admitted: the whole fork is 429, the node is not asked to copy.
    assert_too_many(&h.post(&fork, r#"{"count":2}"#).await, "for this team");
    h.node.slow_gate.add_permits(2);
    assert_eq!(status_of(first).await, StatusCode::CREATED);
    assert_eq!(status_of(second).await, StatusCode::CREATED);
    // Admitted now; the fake node cannot copy files (501), and the slots come back.
    let r = h.post(&fork, r#"{"count":2}"#).await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{}", r.body);
    for _ in 0..2 {
        assert_eq!(create_as(&h, KEY, "base").await.status, StatusCode::CREATED);
    }
}

#[tokio::test]
async fn a_cold_resume_counts_as_a_create() {
    let h = start_with(10, 1).await;
    let id = h.create(json!({"templateID": "base"})).await;
    let r = h.post(&format!("/sandboxes/{id}/pause"), "{}").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let held = hold_slow(&h, KEY, 1).await;
    // Starting again from its files (a create's work) is refused; from memory it is not.
    let connect = format!("/v2/sandboxes/{id}/connect");
    assert_too_many(&h.post(&connect, r#"{"memory":false}"#).await, "limit 1");
    assert_eq!(h.state_of(&id).await, SandboxState::Paused);
    let r = h.post(&connect, "{}").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    h.node.slow_gate.add_permits(1);
    assert_eq!(status_of(held).await, StatusCode::CREATED);
}
