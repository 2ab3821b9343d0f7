//! The filesystem Connect service and HTTP `/files` through the whole envd router, called
//! in-process with `oneshot` (no socket): real files in temp dirs, real inotify watches.

mod fs_support;

use std::io::Write;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, StatusCode};
use paddock_envd::auth::sign;
use serde_json::{json, Value};

use fs_support::{multipart, owner_uid, q, Env};

#[tokio::test]
async fn stat_make_dir_list_move_remove() {
    let env = Env::new(None);
    let home = env.home();
    std::fs::write(home.join("a.txt"), "hello").expect("write");
    std::fs::set_permissions(
        home.join("a.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");

    let (status, body) = env.rpc("Stat", json!({"path": "a.txt"}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let entry = &body["entry"];
    assert_eq!(entry["name"], "a.txt");
    assert_eq!(entry["type"], "FILE_TYPE_FILE");
    assert_eq!(entry["path"], home.join("a.txt").to_string_lossy().as_ref());
    assert_eq!(entry["size"], "5");
    assert_eq!(entry["mode"], 420);
    assert_eq!(entry["permissions"], "-rw-r--r--");
    assert!(entry["modifiedTime"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(entry.get("isSymlink").is_none() && entry.get("symlinkTarget").is_none());

    let (status, body) = env.rpc("Stat", json!({"path": "missing"}), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    let (status, body) = env.rpc("Stat", json!({"path": "/"}), Some("nobody")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );

    let (status, body) = env.rpc("MakeDir", json!({"path": "x/y"}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["entry"]["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(body["entry"]["permissions"], "drwxr-xr-x");
    assert_eq!(owner_uid(&home.join("x")), env.uid);
    assert_eq!(owner_uid(&home.join("x/y")), env.uid);
    let (status, body) = env.rpc("MakeDir", json!({"path": "x/y"}), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_exists"))
    );
    let (status, body) = env.rpc("MakeDir", json!({"path": "a.txt"}), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );

    let (_, body) = env
        .rpc(
            "ListDir",
            json!({"path": home.to_string_lossy(), "depth": 1}),
            None,
        )
        .await;
    let names: Vec<&str> = body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["a.txt", "x"]);
    let (_, body) = env
        .rpc("ListDir", json!({"path": "~", "depth": 2}), None)
        .await;
    let paths: Vec<&str> = body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["path"].as_str().unwrap_or(""))
        .collect();
    let y = home.join("x/y");
    assert_eq!(paths.len(), 3);
    assert_eq!(paths[2], y.to_string_lossy());
    let (status, body) = env.rpc("ListDir", json!({"path": "a.txt"}), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );

    let (status, body) = env
        .rpc(
            "Move",
            json!({"source": "a.txt", "destination": "moved/deep/b.txt"}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["entry"]["path"],
        home.join("moved/deep/b.txt").to_string_lossy().as_ref()
    );
    assert_eq!(
        std::fs::read_to_string(home.join("moved/deep/b.txt")).expect("moved"),
        "hello"
    );
    assert_eq!(owner_uid(&home.join("moved")), env.uid);
    let (status, body) = env
        .rpc(
            "Move",
            json!({"source": "a.txt", "destination": "c.txt"}),
            None,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    let (status, body) = env.rpc("Remove", json!({"path": "x"}), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    assert!(!home.join("x").exists());
    let (status, _) = env.rpc("Remove", json!({"path": "x"}), None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "removing a missing path is not an error"
    );
}

#[tokio::test]
async fn watch_dir_streams_start_then_create_events() {
    let env = Env::new(None);
    let home = env.home();
    let mut stream = env
        .open_stream(
            "WatchDir",
            json!({"path": "~", "recursive": true, "includeEntry": true}),
        )
        .await;
    assert_eq!(stream.next().await, Ok(json!({"start": {}})));

    std::fs::create_dir(home.join("sub")).expect("mkdir");
    // Give the recursive watcher a moment to add the new directory.
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(home.join("sub/new.txt"), "data").expect("write");
    let mut seen_create = false;
    while !seen_create {
        let msg = stream
            .next()
            .await
            .expect("filesystem event, not the end of the stream");
        let ev = &msg["filesystem"];
        if ev["name"] == "sub/new.txt" && ev["type"] == "EVENT_TYPE_CREATE" {
            assert_eq!(ev["entry"]["name"], "new.txt");
            seen_create = true;
        }
    }

    let mut missing = env
        .open_stream("WatchDir", json!({"path": "/definitely/not/here"}))
        .await;
    let end = missing.next().await.expect_err("an error end envelope");
    assert_eq!(end["error"]["code"], "not_found");
}

#[tokio::test]
async fn watch_dir_sends_keepalives_and_honours_the_deadline() {
    let env = Env::new(None);
    let headers = [
        ("keepalive-ping-interval", "1"),
        ("connect-timeout-ms", "2500"),
    ];
    let mut stream = env
        .open_stream_with("WatchDir", json!({"path": "~"}), &headers)
        .await;
    assert_eq!(stream.next().await, Ok(json!({"start": {}})));
    assert_eq!(stream.next().await, Ok(json!({"keepalive": {}})));
    let end = loop {
        match stream.next().await {
            Ok(msg) => assert_eq!(msg, json!({"keepalive": {}})),
            Err(end) => break end,
        }
    };
    assert_eq!(end["error"]["code"], "deadline_exceeded");
}

#[tokio::test]
async fn legacy_python_sdk_gets_reduced_entries() {
    let env = Env::new(None);
    std::fs::write(env.home().join("l.txt"), "legacy").expect("write");
    let req = Request::post("/filesystem.Filesystem/Stat")
        .header("content-type", "application/json")
        .header("user-agent", "connect-python")
        .body(Body::from(r#"{"path":"l.txt"}"#))
        .expect("request");
    let resp = env.call(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-e2b-legacy-sdk"], "true");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    let body: Value = serde_json::from_slice(&body).expect("json");
    let path = env.home().join("l.txt");
    assert_eq!(
        body,
        json!({"entry": {"name": "l.txt", "type": "FILE_TYPE_FILE", "path": path.to_string_lossy()}})
    );
}

#[tokio::test]
async fn polled_watchers_accumulate_and_are_removed() {
    let env = Env::new(None);
    let (status, body) = env.rpc("CreateWatcher", json!({"path": "~"}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["watcherId"].as_str().expect("watcher id").to_string();
    assert!(id.starts_with('w') && id.len() > 1);

    std::fs::write(env.home().join("polled.txt"), "x").expect("write");
    let mut events = Vec::new();
    for _ in 0..50 {
        let (status, body) = env
            .rpc("GetWatcherEvents", json!({"watcherId": id}), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        events.extend(body["events"].as_array().cloned().unwrap_or_default());
        if events
            .iter()
            .any(|e| e["name"] == "polled.txt" && e["type"] == "EVENT_TYPE_CREATE")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        events
            .iter()
            .any(|e| e["name"] == "polled.txt" && e["type"] == "EVENT_TYPE_CREATE"),
        "{events:?}"
    );
    let (status, body) = env
        .rpc("GetWatcherEvents", json!({"watcherId": id}), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.get("events")
            .is_none_or(|e| e.as_array().is_some_and(|a| a
                .iter()
                .all(|e| e["name"] != "polled.txt" || e["type"] != "EVENT_TYPE_CREATE"))),
        "events were drained"
    );

    assert_eq!(
        env.rpc("RemoveWatcher", json!({"watcherId": id}), None)
            .await,
        (StatusCode::OK, json!({}))
    );
    let (status, body) = env
        .rpc("GetWatcherEvents", json!({"watcherId": id}), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, _) = env
        .rpc("RemoveWatcher", json!({"watcherId": id}), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = env
        .rpc("CreateWatcher", json!({"path": "~/nope"}), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn multipart_upload_then_download() {
    let env = Env::new(None);
    let home = env.home();
    let abs = home.join("docs/report.txt");
    let (ct, body) = multipart(&[
        ("file", abs.to_str().expect("utf-8"), b"first file"),
        ("other", "ignored.txt", b"not a file part"),
        ("file", "rel/second.bin", &[0u8, 1, 2, 3]),
    ]);
    let (status, written) = env.post_file("", &[("content-type", &ct)], body).await;
    assert_eq!(status, StatusCode::OK, "{written}");
    assert_eq!(
        written,
        json!([
            {"path": abs.to_string_lossy(), "name": "report.txt", "type": "file"},
            {"path": home.join("rel/second.bin").to_string_lossy(), "name": "second.bin", "type": "file"}
        ])
    );
    assert_eq!(owner_uid(&abs), env.uid);
    assert_eq!(owner_uid(&home.join("docs")), env.uid);
    assert!(!home.join("ignored.txt").exists());

    let (status, headers, data) = env
        .get_file(&format!("path={}", q(abs.to_str().expect("utf-8"))))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&data[..], b"first file");
    assert_eq!(
        headers["content-disposition"],
        "inline; filename=report.txt"
    );
    assert_eq!(headers["content-length"], "10");
    let (status, _, data) = env.get_file("path=rel%2Fsecond.bin&username=user").await;
    assert_eq!((status, &data[..]), (StatusCode::OK, &[0u8, 1, 2, 3][..]));

    // Query `path` overrides the filename; it then cannot take two parts.
    let (ct, body) = multipart(&[("file", "/ignored/name", b"v2")]);
    let (status, _) = env
        .post_file("path=docs%2Freport.txt", &[("content-type", &ct)], body)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        std::fs::read(&abs).expect("read"),
        b"v2",
        "overwritten and truncated"
    );
    let (ct, body) = multipart(&[("file", "a", b"1"), ("file", "b", b"2")]);
    let (status, body) = env
        .post_file("path=dup.txt", &[("content-type", &ct)], body)
        .await;
    assert_eq!(
        (status, body["code"].as_i64()),
        (StatusCode::BAD_REQUEST, Some(400))
    );
    let (ct, body) = multipart(&[("file", "docs", b"x")]);
    let (status, _) = env.post_file("", &[("content-type", &ct)], body).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a directory target is refused"
    );
}

#[tokio::test]
async fn octet_stream_uploads_raw_gzip_large_and_metadata() {
    let env = Env::new(None);
    let home = env.home();

    // 50 MiB in 1 MiB chunks, streamed.
    const MIB: usize = 1 << 20;
    let chunks = (0..50u8).map(|i| Ok::<_, std::io::Error>(Bytes::from(vec![i; MIB])));
    let body = Body::from_stream(futures::stream::iter(chunks));
    let (status, written) = env
        .post_file(
            "path=big%2Fblob.bin",
            &[("content-type", "application/octet-stream")],
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{written}");
    assert_eq!(written[0]["name"], "blob.bin");
    let (status, headers, data) = env.get_file("path=big%2Fblob.bin").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], (50 * MIB).to_string().as_str());
    assert_eq!(data.len(), 50 * MIB);
    assert!(data
        .chunks(MIB)
        .enumerate()
        .all(|(i, c)| c.iter().all(|&b| b as usize == i)));

    let text = "compressed text ".repeat(10_000);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).expect("gzip");
    let gz = enc.finish().expect("gzip");
    let (status, _) = env
        .post_file(
            "path=z.txt",
            &[
                ("content-type", "application/octet-stream"),
                ("content-encoding", "gzip"),
                ("x-metadata-Kind", "report"),
            ],
            Body::from(gz),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        std::fs::read_to_string(home.join("z.txt")).expect("read"),
        text
    );
    let (_, stat) = env.rpc("Stat", json!({"path": "z.txt"}), None).await;
    assert_eq!(stat["entry"]["metadata"], json!({"kind": "report"}));
    assert_eq!(owner_uid(&home.join("z.txt")), env.uid);

    // A new upload replaces the metadata set.
    let (status, _) = env
        .post_file(
            "path=z.txt",
            &[("content-type", "application/octet-stream")],
            Body::from("x"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, stat) = env.rpc("Stat", json!({"path": "z.txt"}), None).await;
    assert!(stat["entry"].get("metadata").is_none(), "{stat}");

    let raw = [("content-type", "application/octet-stream")];
    assert_eq!(
        env.post_file("", &raw, Body::from("x")).await.0,
        StatusCode::BAD_REQUEST,
        "path is required"
    );
    let br = [
        ("content-type", "application/octet-stream"),
        ("content-encoding", "br"),
    ];
    assert_eq!(
        env.post_file("path=b", &br, Body::from("x")).await.0,
        StatusCode::BAD_REQUEST
    );
    let gz_bad = [
        ("content-type", "application/octet-stream"),
        ("content-encoding", "gzip"),
    ];
    assert_eq!(
        env.post_file("path=b", &gz_bad, Body::from("not gzip"))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let bad_md = [
        ("content-type", "application/octet-stream"),
        ("x-metadata-k", "tab\there"),
    ];
    assert_eq!(
        env.post_file("path=b", &bad_md, Body::from("x")).await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn download_errors() {
    let env = Env::new(None);
    let (status, headers, body) = env.get_file("path=nope.txt").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["content-type"], "application/json; charset=utf-8");
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["code"], 404);
    assert_eq!(
        env.get_file("path=%2F").await.0,
        StatusCode::BAD_REQUEST,
        "directory"
    );
    assert_eq!(
        env.get_file("path=x&username=ghost").await.0,
        StatusCode::UNAUTHORIZED,
        "unknown user"
    );
    let (status, _) = env
        .post_file("path=x&username=ghost", &[], Body::from("x"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn files_require_token_or_signature_when_a_token_is_set() {
    let token = "secret-token";
    let env = Env::new(Some(token));
    let file = env.home().join("s.txt");
    std::fs::write(&file, "signed").expect("write");
    let path = file.to_str().expect("utf-8");

    assert_eq!(
        env.get_file(&format!("path={}", q(path))).await.0,
        StatusCode::UNAUTHORIZED
    );

    let req = Request::get(format!("/files?path={}", q(path))).header("x-access-token", token);
    let resp = env.call(req.body(Body::empty()).expect("request")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let req = Request::get(format!("/files?path={}", q(path))).header("x-access-token", "wrong");
    let resp = env.call(req.body(Body::empty()).expect("request")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let exp = chrono::Utc::now().timestamp() + 60;
    let sig = sign(path, "read", "user", token, Some(exp));
    let signed = format!(
        "path={}&username=user&signature={}&signature_expiration={exp}",
        q(path),
        q(&sig)
    );
    let (status, _, data) = env.get_file(&signed).await;
    assert_eq!((status, &data[..]), (StatusCode::OK, &b"signed"[..]));

    let expired = sign(path, "read", "user", token, Some(exp - 3600));
    let query = format!(
        "path={}&username=user&signature={}&signature_expiration={}",
        q(path),
        q(&expired),
        exp - 3600
    );
    assert_eq!(env.get_file(&query).await.0, StatusCode::UNAUTHORIZED);

    let write_sig = sign(path, "write", "", token, None);
    assert_eq!(
        env.get_file(&format!("path={}&signature={}", q(path), q(&write_sig)))
            .await
            .0,
        StatusCode::UNAUTHORIZED,
        "a write signature does not allow reading"
    );
    let (status, _) = env
        .post_file(
            &format!("path={}&signature={}", q(path), q(&write_sig)),
            &[("content-type", "application/octet-stream")],
            Body::from("new"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "new");

    // RPCs need the header itself.
    let (status, body) = env.rpc("Stat", json!({"path": path}), None).await;
    assert_eq!(
        (status, body["code"].as_i64()),
        (StatusCode::UNAUTHORIZED, Some(401))
    );
}

/// The epilogue after a multipart body's final boundary (and the rest of a body after an early
/// error) is read before the answer: a server that answers without reading the whole request
/// closes the connection, and the client (the proxy) still writing the body gets a broken pipe
/// instead of the answer.
#[tokio::test]
async fn upload_reads_the_body_to_its_end() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let env = Env::new(None);
    let boundary = "paddock-test-boundary";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"epi.txt\"\r\n\
         Content-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n"
    );
    let body_of = |head: String| {
        let read_all = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&read_all);
        use futures::StreamExt;
        let chunks = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from(head)),
            // The epilogue arrives as a chunk of its own, after the final boundary.
            Ok(Bytes::from_static(b"\r\n")),
        ])
        .chain(futures::stream::poll_fn(move |_| {
            flag.store(true, Ordering::SeqCst);
            std::task::Poll::Ready(None)
        }));
        (Body::from_stream(chunks), read_all)
    };
    let ct = format!("multipart/form-data; boundary={boundary}");

    let (body, read_all) = body_of(head.clone());
    let (status, written) = env.post_file("", &[("content-type", &ct)], body).await;
    assert_eq!(status, StatusCode::OK, "{written}");
    assert!(
        read_all.load(Ordering::SeqCst),
        "the epilogue was left unread"
    );
    assert_eq!(
        std::fs::read_to_string(env.home().join("epi.txt")).expect("read"),
        "hello"
    );

    // An error answered before the body was looked at (an unknown encoding) drains it too.
    let (body, read_all) = body_of(head);
    let (status, _) = env
        .post_file(
            "",
            &[("content-type", &ct), ("content-encoding", "br")],
            body,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(read_all.load(Ordering::SeqCst), "the body was left unread");
}

/// Checks that a body is complete by its framing: a `Content-Length`, when sent, is the body's
/// length (a length taken from `st_size` would be 0 for procfs and 4096 for sysfs).
fn assert_framed(headers: &http::HeaderMap, body: &[u8], what: &str) {
    if let Some(len) = headers.get("content-length") {
        assert_eq!(
            len.to_str().ok(),
            Some(body.len().to_string().as_str()),
            "{what}"
        );
    }
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("a valid gzip body");
    out
}

/// Files of `/proc` and `/sys` report a size (0, 4096) that is not their content's length: they
/// are read to their end, with a `Content-Length` only when it is the body's.
#[tokio::test]
async fn proc_and_sys_files_are_read_to_their_end() {
    let env = Env::new(None);
    let (status, headers, body) = env.get_file("path=%2Fproc%2Fself%2Fstatus").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    assert!(
        text.starts_with("Name:") && text.contains("\nPid:"),
        "{text:?}"
    );
    assert_framed(&headers, &body, "/proc/self/status");

    let (status, headers, body) = env.get_file("path=%2Fproc%2Fcpuinfo").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    assert!(text.contains("processor"), "{text:?}");
    assert_framed(&headers, &body, "/proc/cpuinfo");

    // sysfs says 4096 bytes; the content is a few.
    let sys = "/sys/devices/system/cpu/online";
    let (status, headers, body) = env.get_file(&format!("path={}", q(sys))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        &body[..],
        std::fs::read(sys).expect("read sysfs").as_slice()
    );
    assert!(!body.is_empty());
    assert_framed(&headers, &body, sys);

    // Compressed, too.
    let (status, headers, body) = env
        .get_file_with(
            "path=%2Fproc%2Fself%2Fstatus",
            &[("accept-encoding", "gzip")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-encoding"], "gzip");
    assert!(String::from_utf8(gunzip(&body))
        .expect("utf-8")
        .starts_with("Name:"));
}

/// A file whose end only reading finds (a FIFO here: no size at all), longer than one read
/// chunk, is streamed whole with chunked framing; opening it does not wait for a writer.
#[tokio::test]
async fn files_without_a_size_stream_past_the_first_chunk() {
    let env = Env::new(None);
    let fifo = env.home().join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let writer = {
        let (fifo, data) = (fifo.clone(), data.clone());
        std::thread::spawn(move || {
            // Blocks until envd opens the reading end.
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open fifo");
            w.write_all(&data).expect("write fifo");
        })
    };
    let (status, headers, body) = env.get_file("path=pipe").await;
    writer.join().expect("writer");
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("content-length").is_none(), "{headers:?}");
    assert_eq!(body.len(), data.len());
    assert!(body[..] == data[..]);
}

/// A regular file keeps its `Content-Length` and single byte ranges; `Accept-Encoding: gzip`
/// compresses the body (no length then), except for range requests, as E2B's envd does.
#[tokio::test]
async fn regular_files_keep_their_length_ranges_and_gzip() {
    let env = Env::new(None);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(env.home().join("blob.bin"), &data).expect("write");

    let (status, headers, body) = env.get_file("path=blob.bin").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], data.len().to_string().as_str());
    assert_eq!(headers["accept-ranges"], "bytes");
    assert!(body[..] == data[..]);

    let (status, headers, body) = env
        .get_file_with("path=blob.bin", &[("accept-encoding", "gzip, deflate")])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(headers["vary"], "Accept-Encoding");
    assert!(headers.get("content-length").is_none());
    assert!(gunzip(&body) == data);
    let text = "line of text\n".repeat(5000);
    std::fs::write(env.home().join("notes.txt"), &text).expect("write");
    let (_, headers, body) = env
        .get_file_with("path=notes.txt", &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(
        body.len() < text.len() / 10,
        "compressed to {} bytes",
        body.len()
    );
    assert_eq!(gunzip(&body), text.as_bytes());

    let (status, headers, body) = env
        .get_file_with(
            "path=blob.bin",
            &[("range", "bytes=70000-70009"), ("accept-encoding", "gzip")],
        )
        .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(headers["content-range"], "bytes 70000-70009/200000");
    assert_eq!(headers["content-length"], "10");
    assert_eq!(&body[..], &data[70000..70010]);
    let (status, _, body) = env
        .get_file_with("path=blob.bin", &[("range", "bytes=-5")])
        .await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::PARTIAL_CONTENT, &data[199_995..])
    );
    let (status, headers, _) = env
        .get_file_with("path=blob.bin", &[("range", "bytes=200000-")])
        .await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(headers["content-range"], "bytes */200000");

    let (status, _, body) = env
        .get_file_with("path=blob.bin", &[("accept-encoding", "br, identity;q=0")])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["code"], 400);
}
