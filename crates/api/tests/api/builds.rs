//! The template build API as the SDKs drive it (`Template.build`), against the fake node's
//! builder (which logs a few lines per step, checks COPY archives and publishes): request →
//! upload link → upload → start → status polling → ready or error; ownership of built
//! templates across two teams (listing, aliases, creates, deletes); restart and shutdown.

use crate::harness::*;
use futures::StreamExt as _;
use paddock_api::store::TeamId;

const OTHER_KEY: &str = "e2b_other_builder_key";
const HOST: &str = "paddock.test:3000";

async fn other_team(h: &Harness) -> TeamId {
    let store = h.control.store();
    let team = store.ensure_team("other").await.expect("team");
    store
        .add_api_key(&team, &paddock_api::hash_api_key(OTHER_KEY))
        .await
        .expect("key");
    team
}

fn hash(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

async fn send(h: &Harness, req: Request<Body>) -> Reply {
    let res = h.router.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    Reply {
        status,
        headers,
        body,
    }
}

async fn request(h: &Harness, key: &str, body: Value) -> Reply {
    h.call(
        Method::POST,
        "/v3/templates",
        Some(key),
        Some(&body.to_string()),
    )
    .await
}

/// Requests a build and returns its id.
async fn request_ok(h: &Harness, key: &str, name: &str) -> String {
    let r = request(h, key, json!({ "name": name })).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    r.body["buildID"].as_str().expect("buildID").to_string()
}

async fn link(h: &Harness, key: &str, template: &str, hash: &str) -> Reply {
    let req = Request::get(format!("/templates/{template}/files/{hash}"))
        .header("x-api-key", key)
        .header("host", HOST)
        .body(Body::empty())
        .expect("request");
    send(h, req).await
}

/// PUTs `data` to an upload URL (no API key, as the SDK does).
async fn upload(h: &Harness, url: &str, data: &[u8]) -> Reply {
    let path = url
        .strip_prefix(&format!("http://{HOST}"))
        .unwrap_or(url)
        .to_string();
    let req = Request::put(path)
        .header("content-length", data.len())
        .body(Body::from(data.to_vec()))
        .expect("request");
    send(h, req).await
}

async fn start_build(h: &Harness, key: &str, template: &str, build: &str, body: Value) -> Reply {
    h.call(
        Method::POST,
        &format!("/v2/templates/{template}/builds/{build}"),
        Some(key),
        Some(&body.to_string()),
    )
    .await
}

async fn status(h: &Harness, key: &str, template: &str, build: &str, query: &str) -> Reply {
    h.call(
        Method::GET,
        &format!("/templates/{template}/builds/{build}/status?{query}"),
        Some(key),
        None,
    )
    .await
}

/// Polls the status as the SDK does (advancing `logsOffset` by the entries received) until it
/// is final, then drains the log; returns the final status and every entry.
async fn follow(h: &Harness, key: &str, template: &str, build: &str) -> (Value, Vec<Value>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut entries: Vec<Value> = Vec::new();
    loop {
        let r = status(
            h,
            key,
            template,
            build,
            &format!("logsOffset={}", entries.len()),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let got = r.body["logEntries"].as_array().expect("logEntries").clone();
        assert_eq!(r.body["logs"].as_array().expect("logs").len(), got.len());
        entries.extend(got);
        let state = r.body["status"].as_str().expect("status");
        if state == "ready" || state == "error" {
            loop {
                let more = status(
                    h,
                    key,
                    template,
                    build,
                    &format!("logsOffset={}", entries.len()),
                )
                .await;
                let got = more.body["logEntries"].as_array().expect("entries").clone();
                if got.is_empty() {
                    return (r.body, entries);
                }
                entries.extend(got);
            }
        }
        assert!(
            ["waiting", "building"].contains(&state),
            "unexpected status {state}"
        );
        assert!(tokio::time::Instant::now() < deadline, "build never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn steps_of(entries: &[Value]) -> Vec<String> {
    let mut steps: Vec<String> = Vec::new();
    for e in entries {
        let s = e["step"].as_str().expect("step").to_string();
        if steps.last() != Some(&s) {
            steps.push(s);
        }
    }
    steps
}

fn messages(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["message"].as_str().expect("message"))
        .collect()
}

#[tokio::test]
async fn the_sdk_flow_uploads_builds_and_publishes_a_template() {
    let h = start().await;
    let r = request(
        &h,
        KEY,
        json!({"name": "app:v1", "tags": ["stable", "v1"], "cpuCount": 4, "memoryMB": 1024,
               "minFreeDiskMb": 20000}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let build = r.body["buildID"].as_str().expect("buildID").to_string();
    assert_eq!(build.len(), 36);
    assert_eq!(
        r.body,
        json!({"templateID": "app", "buildID": build, "public": false, "names": ["app"],
               "tags": ["v1", "stable"], "aliases": ["app"]})
    );
    let r = status(&h, KEY, "app", &build, "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"logs": [], "logEntries": [], "templateID": "app", "buildID": build,
               "status": "waiting"})
    );

    // Upload link: absent, then uploaded, then present.
    let files = hash(0xab);
    let r = link(&h, KEY, "app", &files).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["present"], false);
    let url = r.body["url"].as_str().expect("url").to_string();
    let prefix = format!("http://{HOST}/templates/app/files/{files}/upload?token=");
    assert!(url.starts_with(&prefix), "{url}");
    let r = upload(&h, &format!("{prefix}1.{}", "00".repeat(32)), b"forged").await;
    assert_error(&r, StatusCode::FORBIDDEN, "invalid or has expired");
    let r = upload(&h, &url.replace(&files, &hash(0xcd)), b"other hash").await;
    assert_error(&r, StatusCode::FORBIDDEN, "invalid or has expired");
    let r = upload(&h, &url.replace(&files, "nothex"), b"x").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "sha256");
    let r = upload(&h, &url, b"tar bytes").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // Kept in the owning team's own directory: build-files/<team>/<hash>.
    let stored: Vec<_> = std::fs::read_dir(h.data_dir.join("build-files"))
        .expect("files dir")
        .map(|e| e.expect("entry").path().join(&files))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(std::fs::read(&stored[0]).expect("stored"), b"tar bytes");
    let r = link(&h, KEY, "app", &files).await;
    assert_eq!(r.body["present"], true);
    assert!(r.body["url"].is_string(), "forced uploads need a URL too");
    assert_error(
        &link(&h, KEY, "app", "abc").await,
        StatusCode::BAD_REQUEST,
        "sha256",
    );
    assert_error(
        &link(&h, KEY, "nothing", &files).await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    let too_big = Request::put(url.strip_prefix(&format!("http://{HOST}")).expect("path"))
        .header("content-length", 11u64 << 30)
        .body(Body::empty())
        .expect("request");
    assert_error(
        &send(&h, too_big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "limit",
    );

    // Start: refused while files are missing or a step is malformed.
    let copy = |files_hash: &str| json!({"type": "COPY", "args": ["app.py", "/app/", "", ""], "filesHash": files_hash});
    let missing = hash(0xee);
    let r = start_build(
        &h,
        KEY,
        "app",
        &build,
        json!({"fromTemplate": "base", "steps": [copy(&files), copy(&missing)]}),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, &missing);
    let r = start_build(
        &h,
        KEY,
        "app",
        &build,
        json!({"fromTemplate": "base", "steps": [{"type": "FROB", "args": []}]}),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "step 1");
    let r = start_build(&h, KEY, "app", &build, json!({"steps": []})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "fromTemplate");
    let r = start_build(&h, KEY, "app", &build, json!({"fromTemplate": "nothing"})).await;
    assert_error(&r, StatusCode::NOT_FOUND, "nothing");
    let unknown = "00000000-0000-4000-8000-000000000000";
    assert_error(
        &start_build(&h, KEY, "app", unknown, json!({"fromTemplate": "base"})).await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        &start_build(
            &h,
            KEY,
            "app",
            "not-a-uuid",
            json!({"fromTemplate": "base"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not found",
    );

    let recipe = json!({
        "fromTemplate": "base",
        "steps": [
            copy(&files),
            {"type": "RUN", "args": ["pip install flask"]},
            {"type": "ENV", "args": ["MODE", "prod"]}
        ],
        "startCmd": "python /app/app.py",
        "readyCmd": "true"
    });
    let r = start_build(&h, KEY, "app", &build, recipe.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body, Value::Null, "202 without a body");
    assert_error(
        &start_build(&h, KEY, "app", &build, recipe).await,
        StatusCode::CONFLICT,
        "not waiting",
    );

    let (done, entries) = follow(&h, KEY, "app", &build).await;
    assert_eq!(done["status"], "ready", "{done}");
    assert!(done.get("reason").is_none(), "{done}");
    assert_eq!(steps_of(&entries), ["base", "1", "2", "3", "finalize"]);
    let msgs = messages(&entries);
    assert!(msgs.contains(&"copied 9 bytes"), "{msgs:?}");
    assert!(msgs.contains(&"RUN pip install flask"), "{msgs:?}");
    for e in &entries {
        let ts = e["timestamp"].as_str().expect("timestamp");
        chrono::DateTime::parse_from_rfc3339(ts).expect("RFC 3339");
        assert!(["debug", "info", "warn", "error"].contains(&e["level"].as_str().expect("level")));
    }

    // What the node was asked for: the requested resources (disk raised), the files' place.
    let req = h.node.build_requests.lock().expect("lock")[0].clone();
    // Published as the build's own hidden template; the tags name it (see tags.rs).
    assert_eq!(
        req.name.as_str(),
        format!("build-{}", build.replace('-', ""))
    );
    assert_eq!(
        (
            req.resources.cpu_count,
            req.resources.memory_mb,
            req.resources.disk_mb
        ),
        (4, 1024, 20000)
    );
    assert_eq!(
        req.files_dir.parent(),
        Some(h.data_dir.join("build-files").as_path())
    );
    assert_eq!(req.images_dir, Some(h.data_dir.join("images")));
    assert_eq!(req.recipe.start_cmd.as_deref(), Some("python /app/app.py"));

    // The template is the team's, private, and starts sandboxes.
    let r = h.get("/templates").await;
    let app = r
        .body
        .as_array()
        .expect("list")
        .iter()
        .find(|t| t["templateID"] == "app")
        .cloned()
        .expect("listed");
    assert_eq!(app["public"], false);
    assert_eq!(app["buildStatus"], "ready");
    assert_eq!(app["buildCount"], 1);
    assert_eq!(app["buildID"], build.as_str());
    assert_eq!(
        (app["cpuCount"].clone(), app["memoryMB"].clone()),
        (json!(4), json!(1024))
    );
    let r = h.get("/templates/app").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["builds"][0]["buildID"], build.as_str());
    assert_eq!(r.body["builds"][0]["status"], "ready");
    assert!(r.body["builds"][0]["finishedAt"].is_string());
    let r = h.get("/templates/aliases/app").await;
    assert_eq!(r.body, json!({"templateID": "app", "public": false}));
    h.create(json!({"templateID": "app:v1"})).await;
}

#[tokio::test]
async fn status_pages_by_offset_limit_and_level() {
    let h = start().await;
    let build = request_ok(&h, KEY, "chatty").await;
    let r = start_build(
        &h,
        KEY,
        "chatty",
        &build,
        json!({"fromImage": "debian:bookworm", "steps": [{"type": "RUN", "args": ["emit 250"]}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    // base 1 + step (cache miss, RUN, 250 lines) + finalize 2 (publish, tags); every 10th
    // output a warning.
    let (done, entries) = follow(&h, KEY, "chatty", &build).await;
    assert_eq!(done["status"], "ready");
    assert_eq!(entries.len(), 255);
    let outputs: Vec<String> = (0..250).map(|k| format!("output {k}")).collect();
    assert_eq!(messages(&entries)[3..253], outputs, "in order");

    let r = status(&h, KEY, "chatty", &build, "logsOffset=0").await;
    assert_eq!(r.body["logEntries"].as_array().expect("entries").len(), 100);
    let first = &r.body["logEntries"][0];
    let line = r.body["logs"][0].as_str().expect("line");
    assert!(
        line.starts_with('[') && line.ends_with("] FROM image debian:bookworm\n"),
        "{line:?}"
    );
    assert_eq!(first["message"], "FROM image debian:bookworm");
    let r = status(&h, KEY, "chatty", &build, "logsOffset=0&limit=1000").await;
    assert_eq!(
        r.body["logEntries"].as_array().expect("entries").len(),
        100,
        "clamped"
    );
    let r = status(&h, KEY, "chatty", &build, "logsOffset=250&limit=10").await;
    assert_eq!(r.body["logEntries"].as_array().expect("entries").len(), 5);
    let r = status(&h, KEY, "chatty", &build, "logsOffset=20&level=warn").await;
    let warn = r.body["logEntries"].as_array().expect("entries");
    assert_eq!(warn.len(), 5, "25 warnings, 20 skipped");
    assert!(warn.iter().all(|e| e["level"] == "warn"));
    assert_eq!(warn[0]["message"], "output 209");
    let r = status(
        &h,
        KEY,
        "chatty",
        &build,
        "level=info&limit=100&logsOffset=200",
    )
    .await;
    assert_eq!(
        r.body["logEntries"].as_array().expect("entries").len(),
        54,
        "the debug line is filtered out"
    );
    for bad in ["logsOffset=-1", "limit=x", "level=loud"] {
        assert_error(
            &status(&h, KEY, "chatty", &build, bad).await,
            StatusCode::BAD_REQUEST,
            "",
        );
    }

    let logs = |q: &str| {
        let (h, uri) = (&h, format!("/templates/chatty/builds/{build}/logs?{q}"));
        async move { h.get(&uri).await }
    };
    let r = logs("direction=backward&limit=3").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let back: Vec<Value> = r.body["logs"].as_array().expect("logs").clone();
    assert_eq!(
        messages(&back),
        [
            "published as chatty:default",
            &format!("publishing template build-{}", build.replace('-', "")),
            "output 249"
        ]
    );
    let r = logs("limit=500").await;
    assert_eq!(r.body["logs"].as_array().expect("logs").len(), 100);
    let r = logs(&format!(
        "cursor={}&level=error",
        chrono::Utc::now().timestamp_millis() - 60_000
    ))
    .await;
    assert_eq!(r.body["logs"], json!([]), "no error lines");
    let r = logs("cursor=99999999999999").await;
    assert_eq!(r.body["logs"], json!([]), "nothing after the cursor");
    assert_error(
        &logs("direction=up").await,
        StatusCode::BAD_REQUEST,
        "direction",
    );
}

#[tokio::test]
async fn a_failing_step_ends_the_build_with_its_reason() {
    let h = start().await;
    let build = request_ok(&h, KEY, "fails").await;
    let r = start_build(
        &h,
        KEY,
        "fails",
        &build,
        json!({"fromTemplate": "base", "steps": [
            {"type": "RUN", "args": ["echo hi"]},
            {"type": "RUN", "args": ["exit 3"]},
            {"type": "RUN", "args": ["echo never"]}
        ]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let (done, entries) = follow(&h, KEY, "fails", &build).await;
    assert_eq!(done["status"], "error", "{done}");
    let reason = &done["reason"];
    assert_eq!(reason["step"], "2");
    assert!(
        reason["message"]
            .as_str()
            .expect("message")
            .contains("exit 3"),
        "{reason}"
    );
    let tail = reason["logEntries"].as_array().expect("reason lines");
    assert!(!tail.is_empty() && tail.len() <= 20);
    assert_eq!(tail.last().expect("last")["level"], "error");
    assert_eq!(steps_of(&entries), ["base", "1", "2"]);
    assert!(!messages(&entries).contains(&"RUN echo never"));

    // Not published: listed as the team's with the failed build, no sandbox from it.
    let r = h.get("/templates/fails").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["buildStatus"], "error");
    assert_eq!(r.body["public"], false);
    assert_eq!(r.body["builds"][0]["status"], "error");
    let listed = h.get("/templates").await;
    assert!(listed
        .body
        .as_array()
        .expect("list")
        .iter()
        .any(|t| t["templateID"] == "fails" && t["buildStatus"] == "error"));
    assert_error(
        &h.post("/v2/sandboxes", r#"{"templateID":"fails"}"#).await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    // A failed build does not block the next one.
    request_ok(&h, KEY, "fails").await;
}

#[tokio::test]
async fn names_and_builds_belong_to_the_team_that_builds() {
    let h = start().await;
    other_team(&h).await;
    let build = request_ok(&h, KEY, "app").await;

    // Taken, reserved, malformed names; a foreign teamID; a second build meanwhile.
    let r = request(&h, OTHER_KEY, json!({"name": "app"})).await;
    assert_error(&r, StatusCode::FORBIDDEN, "another team");
    let r = request(&h, KEY, json!({"name": "base"})).await;
    assert_error(&r, StatusCode::FORBIDDEN, "reserved");
    for reserved in ["buildcache-x", "image-debian", "fork-abc"] {
        let r = request(&h, KEY, json!({ "name": reserved })).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "reserved");
    }
    for (body, needle) in [
        (json!({"name": "App!"}), "invalid template name"),
        (json!({}), "name is required"),
        (json!({"name": "x", "tags": ["a b"]}), "invalid tag"),
        (json!({"name": "x", "cpuCount": 0}), "cpuCount"),
        (json!({"name": "x", "memoryMB": 1}), "memoryMB"),
    ] {
        assert_error(
            &request(&h, KEY, body).await,
            StatusCode::BAD_REQUEST,
            needle,
        );
    }
    // The API key decides the team; a client's (E2B) team id is ignored.
    let r = request(&h, KEY, json!({"name": "mine", "teamID": "someone-else"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let r = request(&h, KEY, json!({"name": "app"})).await;
    assert_error(&r, StatusCode::CONFLICT, "already waiting");
    // Builds of one template with other tags go ahead meanwhile (as in E2B); one that shares
    // a tag with a waiting build does not.
    let r = request(&h, KEY, json!({"name": "mine:v1"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let r = request(&h, KEY, json!({"name": "mine:v2", "tags": ["stable"]})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let r = request(&h, KEY, json!({"name": "mine", "tags": ["stable"]})).await;
    assert_error(
        &r,
        StatusCode::CONFLICT,
        "with tag stable is already waiting",
    );
    let r = request(&h, KEY, json!({"alias": "legacy"})).await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "deprecated alias is a name: {}",
        r.body
    );
    assert_eq!(r.body["tags"], json!(["default"]));

    // The other team cannot see or drive this team's build.
    assert_error(
        &link(&h, OTHER_KEY, "app", &hash(1)).await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        &status(&h, OTHER_KEY, "app", &build, "").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        &start_build(
            &h,
            OTHER_KEY,
            "app",
            &build,
            json!({"fromTemplate": "base"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    // An aborted (never started) build is still this team's name.
    assert_error(
        &h.call(Method::GET, "/templates/aliases/app", Some(OTHER_KEY), None)
            .await,
        StatusCode::FORBIDDEN,
        "another team",
    );

    let r = start_build(&h, KEY, "app", &build, json!({"fromTemplate": "base"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(follow(&h, KEY, "app", &build).await.0["status"], "ready");

    // Other team: not listed, not found, not startable, not a base, not deletable.
    let r = h
        .call(Method::GET, "/templates", Some(OTHER_KEY), None)
        .await;
    assert!(!r
        .body
        .as_array()
        .expect("list")
        .iter()
        .any(|t| t["templateID"] == "app"));
    assert_error(
        &h.call(Method::GET, "/templates/app", Some(OTHER_KEY), None)
            .await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        &h.call(
            Method::POST,
            "/v2/sandboxes",
            Some(OTHER_KEY),
            Some(r#"{"templateID":"app"}"#),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    let theirs = request_ok(&h, OTHER_KEY, "theirs").await;
    assert_error(
        &start_build(
            &h,
            OTHER_KEY,
            "theirs",
            &theirs,
            json!({"fromTemplate": "app"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "app",
    );
    assert_error(
        &h.call(Method::DELETE, "/templates/app", Some(OTHER_KEY), None)
            .await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    // The owner builds on it.
    let child = request_ok(&h, KEY, "child").await;
    let r = start_build(
        &h,
        KEY,
        "child",
        &child,
        json!({"fromTemplate": "app:default"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(follow(&h, KEY, "child", &child).await.0["status"], "ready");

    // Deleting: refused while a build runs, then the template and its name are gone.
    let again = request_ok(&h, KEY, "app").await;
    let r = start_build(
        &h,
        KEY,
        "app",
        &again,
        json!({"fromTemplate": "base", "steps": [{"type": "RUN", "args": ["wait"]}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let r = h
        .call(Method::DELETE, "/templates/app", Some(KEY), None)
        .await;
    assert_error(&r, StatusCode::CONFLICT, "being built");
    let r = h.get("/templates").await;
    let app = r
        .body
        .as_array()
        .expect("list")
        .iter()
        .find(|t| t["templateID"] == "app")
        .cloned()
        .expect("listed");
    assert_eq!(app["buildStatus"], "building");
    assert_eq!(app["buildCount"], 2);
    assert_eq!(app["buildID"], build.as_str(), "the last successful build");
    h.node.build_gate.add_permits(1);
    assert_eq!(follow(&h, KEY, "app", &again).await.0["status"], "ready");
    let r = h
        .call(Method::DELETE, "/templates/app", Some(KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(!h
        .node
        .built
        .lock()
        .expect("lock")
        .keys()
        .any(|n| n.as_str() == "app"));
    assert_error(
        &h.get("/templates/app").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        &status(&h, KEY, "app", &again, "").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_eq!(
        h.call(Method::GET, "/templates/aliases/app", Some(OTHER_KEY), None)
            .await
            .status,
        StatusCode::NOT_FOUND,
        "the name is free"
    );
    request_ok(&h, OTHER_KEY, "app").await;
    // Node templates cannot be deleted through the API.
    assert_error(
        &h.call(Method::DELETE, "/templates/base", Some(KEY), None)
            .await,
        StatusCode::FORBIDDEN,
        "not a snapshot",
    );
}

#[tokio::test]
async fn a_restart_fails_builds_it_interrupted() {
    let h = start().await;
    let waiting = request_ok(&h, KEY, "idle").await;
    let running = request_ok(&h, KEY, "busy-build").await;
    let r = start_build(
        &h,
        KEY,
        "busy-build",
        &running,
        json!({"fromTemplate": "base", "steps": [{"type": "RUN", "args": ["wait"]}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    while h.node.build_requests.lock().expect("lock").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The process "dies" without a shutdown; a new one opens the same data directory.
    let Harness {
        dir,
        node,
        control,
        router,
        ..
    } = h;
    drop((control, router));
    let h = start_in(dir, FakeNode::new()).await;
    for (template, build) in [("idle", &waiting), ("busy-build", &running)] {
        let r = status(&h, KEY, template, build, "").await;
        assert_eq!(r.body["status"], "error", "{}", r.body);
        assert_eq!(
            r.body["reason"]["message"],
            "the server stopped during the build"
        );
    }
    request_ok(&h, KEY, "busy-build").await;
    // The old process's build, if it ever ends, cannot overwrite the recorded failure.
    node.build_gate.add_permits(1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = status(&h, KEY, "busy-build", &running, "").await;
    assert_eq!(r.body["status"], "error");
}

#[tokio::test]
async fn shutdown_abandons_running_builds() {
    let h = start().await;
    let build = request_ok(&h, KEY, "long").await;
    let r = start_build(
        &h,
        KEY,
        "long",
        &build,
        json!({"fromTemplate": "base", "steps": [
            {"type": "RUN", "args": ["echo started"]},
            {"type": "RUN", "args": ["wait"]}
        ]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    while h.node.build_requests.lock().expect("lock").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::timeout(Duration::from_secs(5), h.control.shutdown())
        .await
        .expect("shutdown does not wait for builds");
    assert_eq!(
        h.node
            .builds_abandoned
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let r = status(&h, KEY, "long", &build, "").await;
    assert_eq!(r.body["status"], "error", "{}", r.body);
    assert_eq!(
        r.body["reason"]["message"],
        "the server stopped during the build"
    );
    assert!(
        messages(r.body["logEntries"].as_array().expect("entries")).contains(&"RUN echo started"),
        "lines logged before the shutdown are kept"
    );
    // No build starts any more.
    let next = request_ok(&h, KEY, "later").await;
    let r = start_build(&h, KEY, "later", &next, json!({"fromTemplate": "base"})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
}

/// A harness whose build-files uploads are limited to `limit` bytes.
async fn start_with_upload_limit(limit: u64) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    start_configured(dir, FakeNode::new(), |c| c.build_upload_limit = limit).await
}

const MIB: usize = 1 << 20;

/// Chunk `i` of a generated upload.
fn chunk(i: usize) -> axum::body::Bytes {
    axum::body::Bytes::from(vec![(i % 251) as u8; MIB])
}

/// Sizes of the temporary files of uploads in progress (or left behind).
fn partial_uploads(data_dir: &std::path::Path) -> Vec<u64> {
    let Ok(teams) = std::fs::read_dir(data_dir.join("build-files")) else {
        return Vec::new();
    };
    teams
        .flat_map(|t| std::fs::read_dir(t.expect("team").path()).expect("team dir"))
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_name().to_string_lossy().starts_with(".upload-"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .collect()
}

/// PUTs a generated body of `chunks` MiB (optionally declaring `content_length`) and counts
/// how many chunks the server pulled.
async fn upload_generated(
    h: &Harness,
    url: &str,
    chunks: usize,
    content_length: Option<u64>,
    on_pull: impl Fn(usize) + Send + Sync + 'static,
) -> (Reply, usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let body = futures::stream::iter(0..chunks).map(move |i| {
        counter.fetch_add(1, Ordering::SeqCst);
        on_pull(i);
        Ok::<_, std::io::Error>(chunk(i))
    });
    let path = url.strip_prefix(&format!("http://{HOST}")).unwrap_or(url);
    let mut req = Request::put(path);
    if let Some(n) = content_length {
        req = req.header("content-length", n);
    }
    let req = req.body(Body::from_stream(body)).expect("request");
    let reply = send(h, req).await;
    (reply, pulled.load(Ordering::SeqCst))
}

/// A 64 MiB COPY archive is streamed to disk as it arrives: whenever the server asks for the
/// next chunk, all but the last chunk or two it took are already in the file (so the server
/// holds a bounded amount of the body however large it is), and the stored archive is exact.
#[tokio::test]
async fn large_uploads_are_streamed_to_disk() {
    use sha2::Digest as _;
    let h = start().await;
    request_ok(&h, KEY, "app").await;
    let files = hash(0x64);
    let r = link(&h, KEY, "app", &files).await;
    let url = r.body["url"].as_str().expect("url").to_string();

    const CHUNKS: usize = 64;
    let data_dir = h.data_dir.clone();
    let (r, pulled) = upload_generated(&h, &url, CHUNKS, None, move |i| {
        if i >= 2 {
            let sizes = partial_uploads(&data_dir);
            assert_eq!(sizes.len(), 1, "one upload in progress: {sizes:?}");
            let behind = (i * MIB) as u64 - sizes[0];
            assert!(
                behind <= (2 * MIB) as u64,
                "asking for chunk {i} with {behind} bytes taken but not written"
            );
        }
    })
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(pulled, CHUNKS);

    let stored = std::fs::read_dir(h.data_dir.join("build-files"))
        .expect("files dir")
        .map(|e| e.expect("team").path().join(&files))
        .find(|p| p.exists())
        .expect("stored archive");
    let mut want = sha2::Sha256::new();
    for i in 0..CHUNKS {
        want.update(chunk(i));
    }
    let mut got = sha2::Sha256::new();
    let mut file = std::fs::File::open(&stored).expect("open");
    std::io::copy(&mut file, &mut got).expect("hash");
    assert_eq!(got.finalize(), want.finalize());
    assert_eq!(
        std::fs::metadata(&stored).expect("stat").len(),
        (CHUNKS * MIB) as u64
    );
    assert!(partial_uploads(&h.data_dir).is_empty());
}

/// Over the limit: a declared length is refused with 413 before any of the body is read; an
/// undeclared one is refused as soon as it passes the limit (the rest is never read); an
/// interrupted body is 400. None leaves a file behind.
#[tokio::test]
async fn oversized_or_interrupted_uploads_are_refused_and_leave_nothing() {
    let h = start_with_upload_limit(8 * MIB as u64).await;
    request_ok(&h, KEY, "app").await;
    let files = hash(0x65);
    let r = link(&h, KEY, "app", &files).await;
    let url = r.body["url"].as_str().expect("url").to_string();

    let (r, pulled) = upload_generated(&h, &url, 9, Some(9 * MIB as u64), |_| {}).await;
    assert_error(
        &r,
        StatusCode::PAYLOAD_TOO_LARGE,
        "larger than the limit of 8388608 bytes",
    );
    assert_eq!(pulled, 0, "refused on its Content-Length, before reading");

    let (r, pulled) = upload_generated(&h, &url, 64, None, |_| {}).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "larger than the limit");
    assert_eq!(
        pulled, 9,
        "reading stopped at the chunk that passed the limit"
    );
    assert!(
        partial_uploads(&h.data_dir).is_empty(),
        "the partial upload is removed"
    );

    // Exactly at the limit is fine.
    let (r, _) = upload_generated(&h, &url, 8, None, |_| {}).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // A body that fails half-way (a client gone) is 400; the archive stored before stays.
    let other = hash(0x66);
    let r = link(&h, KEY, "app", &other).await;
    let url = r.body["url"].as_str().expect("url").to_string();
    let path = url.strip_prefix(&format!("http://{HOST}")).unwrap_or(&url);
    let body = futures::stream::iter(0..4).map(|i| {
        if i < 3 {
            Ok(chunk(i))
        } else {
            Err(std::io::Error::other("connection reset"))
        }
    });
    let req = Request::put(path)
        .body(Body::from_stream(body))
        .expect("request");
    let r = send(&h, req).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "interrupted");
    assert!(
        partial_uploads(&h.data_dir).is_empty(),
        "the partial upload is removed"
    );
    let kept: Vec<_> = std::fs::read_dir(h.data_dir.join("build-files"))
        .expect("files dir")
        .flat_map(|t| std::fs::read_dir(t.expect("team").path()).expect("team dir"))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept, vec![files], "only the complete upload is kept");
}
