//! Tests of the SQLite store against real database files in temporary directories.

use super::*;
use crate::store::Cursor;

fn record(team: &TeamId, started_ms: i64, meta: &[(&str, &str)]) -> SandboxRecord {
    let started = from_ms(started_ms, "t").expect("valid time");
    SandboxRecord {
        id: SandboxId::generate(),
        team_id: team.clone(),
        template: TemplateName::parse("base").expect("valid"),
        alias: Some("base".into()),
        state: SandboxState::Running,
        metadata: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        access_token: "tok".into(),
        started_at: started,
        end_at: started + chrono::Duration::seconds(60),
        resources: Resources::default(),
        client_id: "6532622b".into(),
        end_reason: None,
    }
}

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&SqliteStore::path_in(dir.path())).expect("open");
    (dir, store)
}

#[tokio::test]
async fn migrations_are_idempotent_and_records_round_trip() {
    let (dir, store) = open();
    let team = store.ensure_team("default").await.expect("team");
    assert_eq!(
        store.ensure_team("default").await.expect("team again"),
        team
    );
    let rec = record(&team, 1_700_000_000_000, &[("k", "v w")]);
    store.insert_sandbox(&rec).await.expect("insert");
    drop(store);
    let store = SqliteStore::open(&SqliteStore::path_in(dir.path())).expect("reopen");
    assert_eq!(store.sandbox(&rec.id).await.expect("read"), Some(rec));
}

#[tokio::test]
async fn state_changes_are_compare_and_set() {
    let (_dir, store) = open();
    let team = store.ensure_team("t").await.expect("team");
    let rec = record(&team, 1_700_000_000_000, &[]);
    store.insert_sandbox(&rec).await.expect("insert");
    let (running, stopping) = (SandboxState::Running, SandboxState::Stopping);
    assert!(store
        .set_state(&rec.id, running, stopping, None)
        .await
        .expect("cas"));
    assert!(!store
        .set_state(&rec.id, running, stopping, None)
        .await
        .expect("cas lost"));
    let got = store.sandbox(&rec.id).await.expect("read").expect("exists");
    assert_eq!(got.state, stopping);
}

#[tokio::test]
async fn listing_filters_metadata_and_pages_by_cursor() {
    let (_dir, store) = open();
    let team = store.ensure_team("t").await.expect("team");
    let other = store.ensure_team("other").await.expect("team");
    let mut ids = Vec::new();
    for i in 0..5 {
        let meta: &[(&str, &str)] = if i % 2 == 0 {
            &[("env", "prod")]
        } else {
            &[("env", "dev")]
        };
        let rec = record(&team, 1_700_000_000_000 + i * 1000, meta);
        store.insert_sandbox(&rec).await.expect("insert");
        ids.push(rec.id);
    }
    store
        .insert_sandbox(&record(&other, 1_700_000_000_000, &[("env", "prod")]))
        .await
        .expect("x");
    let mut q = ListQuery {
        team_id: team.clone(),
        states: vec![SandboxState::Running],
        metadata: vec![("env".into(), "prod".into())],
        template: None,
        started_after: None,
        order: Order::Desc,
        cursor: None,
        limit: 2,
    };
    let page1 = store.list_sandboxes(&q).await.expect("page 1");
    assert_eq!(
        page1.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![ids[4].clone(), ids[2].clone()]
    );
    let last = page1.last().expect("non-empty");
    q.cursor = Some(Cursor {
        started_at_ms: to_ms(last.started_at),
        id: last.id.to_string(),
    });
    let page2 = store.list_sandboxes(&q).await.expect("page 2");
    assert_eq!(
        page2.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![ids[0].clone()]
    );
    q.metadata = vec![("env".into(), "nope".into())];
    q.cursor = None;
    assert!(store.list_sandboxes(&q).await.expect("none").is_empty());
}

#[tokio::test]
async fn started_after_includes_a_sandbox_started_at_that_instant() {
    let (_dir, store) = open();
    let team = store.ensure_team("t").await.expect("team");
    let rec = record(&team, 1_700_000_000_000, &[]);
    store.insert_sandbox(&rec).await.expect("insert");
    let query = |after: DateTime<Utc>, order: Order| ListQuery {
        team_id: team.clone(),
        states: vec![SandboxState::Running],
        metadata: vec![],
        template: None,
        started_after: Some(after),
        order,
        cursor: None,
        limit: 10,
    };
    for order in [Order::Desc, Order::Asc] {
        let at = store
            .list_sandboxes(&query(rec.started_at, order))
            .await
            .expect("list");
        assert_eq!(at.len(), 1, "a sandbox started at the bound is listed");
        let before = query(rec.started_at - chrono::Duration::milliseconds(1), order);
        assert_eq!(store.list_sandboxes(&before).await.expect("list").len(), 1);
        let after = query(rec.started_at + chrono::Duration::milliseconds(1), order);
        assert!(store.list_sandboxes(&after).await.expect("list").is_empty());
    }
}

#[tokio::test]
async fn expiry_queries_and_idempotency() {
    let (_dir, store) = open();
    let team = store.ensure_team("t").await.expect("team");
    let rec = record(&team, 1_700_000_000_000, &[]);
    store.insert_sandbox(&rec).await.expect("insert");
    let running = SandboxState::Running;
    assert_eq!(
        store.next_end_at(running).await.expect("next"),
        Some(rec.end_at)
    );
    assert!(store
        .ended_by(running, rec.started_at)
        .await
        .expect("none")
        .is_empty());
    assert_eq!(
        store.ended_by(running, rec.end_at).await.expect("one"),
        vec![rec.id.clone()]
    );

    let now = Utc::now();
    store
        .record_idempotency(&team, "k1", &rec.id, now)
        .await
        .expect("record");
    let since = now - chrono::Duration::minutes(10);
    assert_eq!(
        store
            .idempotent_sandbox(&team, "k1", since)
            .await
            .expect("get"),
        Some(rec.id)
    );
    let later = now + chrono::Duration::seconds(1);
    assert_eq!(
        store
            .idempotent_sandbox(&team, "k1", later)
            .await
            .expect("old"),
        None
    );
}

#[tokio::test]
async fn set_only_api_key_revokes_the_teams_other_keys() {
    let (_dir, store) = open();
    let team = store.ensure_team("default").await.expect("team");
    let other = store.ensure_team("other").await.expect("team");
    store.add_api_key(&team, "old").await.expect("add");
    store.add_api_key(&other, "theirs").await.expect("add");
    store.set_only_api_key(&team, "new").await.expect("replace");
    assert_eq!(store.team_for_key("old").await.expect("lookup"), None);
    assert_eq!(
        store.team_for_key("new").await.expect("lookup"),
        Some(team.clone())
    );
    // Other teams keep their keys; replacing with the same key again is a no-op.
    assert_eq!(
        store.team_for_key("theirs").await.expect("lookup"),
        Some(other)
    );
    store.set_only_api_key(&team, "new").await.expect("again");
    assert_eq!(store.team_for_key("new").await.expect("lookup"), Some(team));
}

#[tokio::test]
async fn prune_stopped_deletes_only_old_stopped_records() {
    let (_dir, store) = open();
    let team = store.ensure_team("t").await.expect("team");
    let stopped = record(&team, 1_700_000_000_000, &[]);
    let running = record(&team, 1_700_000_000_000, &[]);
    for rec in [&stopped, &running] {
        store.insert_sandbox(rec).await.expect("insert");
    }
    for (from, to) in [
        (SandboxState::Running, SandboxState::Stopping),
        (SandboxState::Stopping, SandboxState::Stopped),
    ] {
        assert!(store
            .set_state(&stopped.id, from, to, None)
            .await
            .expect("cas"));
    }
    let now = Utc::now();
    store
        .record_idempotency(&team, "k", &stopped.id, now)
        .await
        .expect("key");
    // Stopped just now: not older than a cut-off in the past.
    let week_ago = now - chrono::Duration::days(7);
    assert_eq!(store.prune_stopped(week_ago).await.expect("prune"), 0);
    let later = now + chrono::Duration::seconds(1);
    assert_eq!(store.prune_stopped(later).await.expect("prune"), 1);
    assert_eq!(store.sandbox(&stopped.id).await.expect("read"), None);
    assert!(store.sandbox(&running.id).await.expect("read").is_some());
    let since = now - chrono::Duration::seconds(1);
    assert_eq!(
        store
            .idempotent_sandbox(&team, "k", since)
            .await
            .expect("lookup"),
        None
    );
}

#[tokio::test]
async fn a_new_sandbox_is_recorded_in_one_write_and_running_is_logged_once() {
    let (_dir, store) = open();
    let team = store.ensure_team("t").await.expect("team");
    let mut rec = record(&team, 1_700_000_000_000, &[("k", "v")]);
    rec.state = SandboxState::Creating;
    let entry = |message: &str| paddock_node_contract::logs::LogEntry {
        timestamp: Utc::now(),
        level: paddock_node_contract::logs::LogLevel::Info,
        message: message.into(),
        fields: Default::default(),
    };
    let lifecycle = SandboxLifecycle {
        auto_pause: true,
        auto_resume: true,
        pause_to_disk: false,
    };
    let new = crate::store::NewSandbox {
        record: rec.clone(),
        lifecycle,
        log: entry("created"),
        idempotency: Some(("key-1".into(), Utc::now())),
        sent: crate::store::SentToNode {
            env_vars: [("TOKEN".to_string(), "s3cret".to_string())].into(),
            egress: paddock_domain::EgressPolicy {
                allow_internet_access: false,
                allow_out: vec!["10.1.0.0/16".parse().expect("cidr")],
                ..Default::default()
            },
            pause_mode: None,
        },
    };
    store.insert_new_sandbox(&new).await.expect("insert");
    // What was sent to the node is kept, and the pause mode and egress follow their setters.
    assert_eq!(
        store.sent_to_node(&rec.id).await.expect("sent"),
        Some(new.sent.clone())
    );
    let mode = Some(paddock_node_contract::PauseMode::Disk);
    store.set_pause_mode(&rec.id, mode).await.expect("mode");
    store
        .set_egress(&rec.id, &paddock_domain::EgressPolicy::default())
        .await
        .expect("egress");
    let sent = store
        .sent_to_node(&rec.id)
        .await
        .expect("sent")
        .expect("row");
    assert_eq!(sent.pause_mode, mode);
    assert_eq!(sent.egress, paddock_domain::EgressPolicy::default());
    assert_eq!(sent.env_vars, new.sent.env_vars);
    store.set_pause_mode(&rec.id, None).await.expect("mode");
    assert_eq!(
        store
            .sent_to_node(&rec.id)
            .await
            .expect("sent")
            .expect("row")
            .pause_mode,
        None
    );
    assert_eq!(
        store
            .sent_to_node(&SandboxId::generate())
            .await
            .expect("unknown"),
        None
    );
    assert_eq!(
        store.sandbox(&rec.id).await.expect("read"),
        Some(rec.clone())
    );
    assert_eq!(
        store.lifecycle(&rec.id).await.expect("lifecycle"),
        lifecycle
    );
    let since = Utc::now() - chrono::Duration::minutes(1);
    assert_eq!(
        store
            .idempotent_sandbox(&team, "key-1", since)
            .await
            .expect("key"),
        Some(rec.id.clone())
    );
    // The same id again: nothing of the second write is kept (one transaction).
    let mut again = new.clone();
    again.idempotency = Some(("key-2".into(), Utc::now()));
    assert!(store.insert_new_sandbox(&again).await.is_err());
    assert_eq!(
        store
            .idempotent_sandbox(&team, "key-2", since)
            .await
            .expect("key"),
        None
    );

    let (now, end) = (Utc::now(), Utc::now() + chrono::Duration::seconds(60));
    let res = Resources::default();
    assert!(store
        .set_running_logged(&rec.id, res, now, end, &entry("running"))
        .await
        .expect("running"));
    assert!(!store
        .set_running_logged(&rec.id, res, now, end, &entry("running again"))
        .await
        .expect("not creating any more"));
    let logged: Vec<String> = store
        .sandbox_logs(&rec.id)
        .await
        .expect("logs")
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(logged, ["created", "running"]);
    let read = store.sandbox(&rec.id).await.expect("read").expect("found");
    assert_eq!(read.state, SandboxState::Running);
}

#[tokio::test]
async fn store_calls_are_timed_under_their_method_name() {
    let (_dir, store) = open();
    let before = paddock_telemetry::STORE_CALL.count(&["ensure_team", "inline"])
        + paddock_telemetry::STORE_CALL.count(&["ensure_team", "pool"]);
    store.ensure_team("timed").await.expect("team");
    let after = paddock_telemetry::STORE_CALL.count(&["ensure_team", "inline"])
        + paddock_telemetry::STORE_CALL.count(&["ensure_team", "pool"]);
    assert!(
        after > before,
        "ensure_team was not counted: {}",
        paddock_telemetry::metrics::render(&[&*paddock_telemetry::STORE_CALL])
    );
}

#[test]
fn operation_names_come_from_the_enclosing_function() {
    fn name_of<F>(_: F) -> &'static str {
        operation_name(std::any::type_name::<F>())
    }
    fn list_things() -> &'static str {
        name_of(|| ())
    }
    assert_eq!(list_things(), "list_things");
    assert_eq!(
        operation_name("<a::S as a::T>::ensure_team<'_, '_>::{{closure}}::{{closure}}"),
        "ensure_team"
    );
    assert_eq!(operation_name("no closure here"), "other");
    assert_eq!(operation_name("<weird as Trait>::{{closure}}"), "other");
}
