//! Drives the real `paddock-envd` binary over its Unix socket with Connect envelopes, as the E2B
//! SDKs do: Start/Connect/List/SendInput/StreamInput/CloseStdin/SendSignal/Update, PTYs,
//! deadlines, keepalives, users, token enforcement, zombie reaping, request-size and header
//! limits, and the open-files limit.

mod process_support;

use process_support::*;

#[tokio::test]
async fn start_streams_output_and_exit_codes() {
    let envd = Envd::launch(root_config());
    let out = envd
        .run("echo hi; echo err >&2; exit 3", &[ROOT])
        .await
        .collect()
        .await;
    assert_eq!(out.order.first().map(String::as_str), Some("start"));
    assert_eq!(out.order.last().map(String::as_str), Some("end"));
    assert!(out.pid > 0);
    assert_eq!(out.stdout(), "hi\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(
        out.end,
        json!({"exitCode":3,"exited":true,"status":"exit status 3","error":"exit status 3"})
    );
    assert_eq!(out.trailer, json!({}));

    let out = envd.run("true", &[ROOT]).await.collect().await;
    assert_eq!(out.end, json!({"exited":true,"status":"exit status 0"}));

    // Large output arrives complete, in chunks of at most 32 KiB.
    let out = envd
        .run("head -c 200000 /dev/zero", &[ROOT])
        .await
        .collect()
        .await;
    assert_eq!(out.stdout.len(), 200_000);
}

#[tokio::test]
async fn users_envs_and_cwd() {
    let envd = Envd::launch(root_config());
    let home = envd.home().display().to_string();
    let msg = json!({"process":{"cmd":"/bin/bash","args":["-c","id -u; pwd; echo $A $HOME $USER $E2B_SANDBOX $E2B_SANDBOX_ID; echo $PATH"],"envs":{"A":"B"}},"stdin":false});
    let out = envd.stream("Start", msg.clone(), &[]).await.collect().await;
    assert_eq!(
        out.stdout(),
        format!("1000\n{home}\nB {home} user true isbxtest\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n")
    );
    let out = envd.stream("Start", msg, &[ROOT]).await.collect().await;
    assert!(out.stdout().starts_with("0\n/root\n"), "{}", out.stdout());

    // No descriptor of envd leaks into processes (ls's own directory fd is 3).
    let msg = json!({"process":{"cmd":"ls","args":["/proc/self/fd"]},"stdin":false});
    assert_eq!(
        envd.stream("Start", msg, &[])
            .await
            .collect()
            .await
            .stdout(),
        "0\n1\n2\n3\n"
    );
    let msg = json!({"process":{"cmd":"pwd","cwd":"/tmp"},"stdin":false});
    assert_eq!(
        envd.stream("Start", msg, &[])
            .await
            .collect()
            .await
            .stdout(),
        "/tmp\n"
    );
    let msg = json!({"process":{"cmd":"pwd","cwd":"sub/.."},"stdin":false});
    assert_eq!(
        envd.stream("Start", msg, &[])
            .await
            .collect()
            .await
            .stdout(),
        format!("{home}\n")
    );

    let msg = json!({"process":{"cmd":"pwd","cwd":"/does/not/exist"}});
    let out = envd.stream("Start", msg, &[]).await.collect().await;
    assert_eq!(out.trailer["error"]["code"], "invalid_argument");
    assert!(out.order.is_empty());
    let msg = json!({"process":{"cmd":"/no/such/binary"}});
    let out = envd.stream("Start", msg, &[]).await.collect().await;
    assert_eq!(out.trailer["error"]["code"], "invalid_argument");
    let msg = json!({"process":{"cmd":"true"}});
    let nobody = ("authorization", "Basic bm9ib2R5Og==");
    let out = envd.stream("Start", msg, &[nobody]).await.collect().await;
    assert_eq!(out.trailer["error"]["code"], "unauthenticated");
}

#[tokio::test]
async fn deadline_kills_the_process_group() {
    let envd = Envd::launch(root_config());
    let started = std::time::Instant::now();
    let out = envd
        .run(
            "sleep 30 & sleep 30",
            &[ROOT, ("connect-timeout-ms", "700")],
        )
        .await
        .collect()
        .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.trailer["error"]["code"], "deadline_exceeded");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, list) = envd.unary("List", json!({}), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(list, json!({"processes":[]}));
    // The background sleep of the group was killed too: no process of the group remains.
    assert!(nix::sys::signal::killpg(nix::unistd::Pid::from_raw(out.pid as i32), None).is_err());
}

#[tokio::test]
async fn background_process_survives_disconnect_and_reconnects() {
    let envd = Envd::launch(root_config());
    let mut frames = envd.run("sleep 1; echo done", &[ROOT]).await;
    let pid = frames.event().await["start"]["pid"].as_u64().expect("pid");
    drop(frames);

    let (_, list) = envd.unary("List", json!({}), &[]).await;
    assert_eq!(list["processes"][0]["pid"], pid);
    assert_eq!(
        list["processes"][0]["config"]["args"][2],
        "sleep 1; echo done"
    );

    let out = envd
        .stream("Connect", json!({"process":{"pid":pid}}), &[])
        .await
        .collect()
        .await;
    assert_eq!(out.pid as u64, pid);
    assert_eq!(out.stdout(), "done\n");
    assert_eq!(out.end["status"], "exit status 0");

    // Retained after exit: start + end again.
    let out = envd
        .stream("Connect", json!({"process":{"pid":pid}}), &[])
        .await
        .collect()
        .await;
    assert_eq!(out.order, vec!["start", "end"]);
    assert_eq!(out.trailer, json!({}));

    let out = envd
        .stream("Connect", json!({"process":{"pid":999999}}), &[])
        .await
        .collect()
        .await;
    assert_eq!(out.trailer["error"]["code"], "not_found");
    assert!(out.trailer["error"]["message"]
        .as_str()
        .expect("message")
        .contains("999999"));
}

#[tokio::test]
async fn stdin_input_and_close() {
    let envd = Envd::launch(root_config());
    let mut frames = envd
        .stream(
            "Start",
            json!({"process":{"cmd":"cat"},"tag":"cat-1"}),
            &[ROOT],
        )
        .await;
    let pid = frames.event().await["start"]["pid"].as_u64().expect("pid");
    let input = json!({"process":{"pid":pid},"input":{"stdin":B64.encode("hello\n")}});
    assert_eq!(envd.unary("SendInput", input, &[]).await, (200, json!({})));
    assert_eq!(
        frames.event().await["data"]["stdout"],
        B64.encode("hello\n")
    );

    // StreamInput: start, data, keepalive, then half-close; selected by tag.
    let mut body = envelope(0, r#"{"start":{"process":{"tag":"cat-1"}}}"#);
    body.extend(envelope(
        0,
        &json!({"data":{"input":{"stdin":B64.encode("more\n")}}}).to_string(),
    ));
    body.extend(envelope(0, r#"{"keepalive":{}}"#));
    let resp = envd
        .request(
            "/process.Process/StreamInput",
            &[
                ("content-type", "application/connect+json"),
                ("connect-protocol-version", "1"),
            ],
            body,
        )
        .await;
    let mut frames_in = Frames::new(resp.into_body());
    assert_eq!(frames_in.next().await, Some((0, json!({}))));
    assert_eq!(frames_in.next().await, Some((2, json!({}))));
    assert_eq!(frames.event().await["data"]["stdout"], B64.encode("more\n"));

    let (status, err) = envd
        .unary(
            "SendInput",
            json!({"process":{"pid":pid},"input":{"pty":"eA=="}}),
            &[],
        )
        .await;
    assert_eq!((status, err["code"].as_str()), (500, Some("internal")));

    assert_eq!(
        envd.unary("CloseStdin", json!({"process":{"pid":pid}}), &[])
            .await,
        (200, json!({}))
    );
    let out = frames.collect().await;
    assert_eq!(out.end["status"], "exit status 0");

    // stdin:false gives /dev/null: cat ends at once, and input is refused.
    let out = envd
        .stream(
            "Start",
            json!({"process":{"cmd":"cat"},"stdin":false}),
            &[ROOT],
        )
        .await
        .collect()
        .await;
    assert_eq!(out.end["status"], "exit status 0");
}

#[tokio::test]
async fn signals_end_processes() {
    let envd = Envd::launch(root_config());
    let mut frames = envd.run("sleep 30", &[ROOT]).await;
    let pid = frames.event().await["start"]["pid"].as_u64().expect("pid");
    let (status, err) = envd
        .unary(
            "SendSignal",
            json!({"process":{"pid":pid},"signal":"SIGNAL_UNSPECIFIED"}),
            &[],
        )
        .await;
    assert_eq!((status, err["code"].as_str()), (501, Some("unimplemented")));
    let req = json!({"process":{"pid":pid},"signal":"SIGNAL_SIGKILL"});
    assert_eq!(envd.unary("SendSignal", req, &[]).await, (200, json!({})));
    let out = frames.collect().await;
    assert_eq!(
        out.end,
        json!({"exitCode":-1,"status":"signal: killed","error":"signal: killed"})
    );

    let mut frames = envd.run("sleep 30", &[ROOT]).await;
    let pid = frames.event().await["start"]["pid"].as_u64().expect("pid");
    assert_eq!(
        envd.unary(
            "SendSignal",
            json!({"process":{"pid":pid},"signal":15}),
            &[]
        )
        .await
        .0,
        200
    );
    assert_eq!(frames.collect().await.end["status"], "signal: terminated");

    let (status, err) = envd
        .unary(
            "SendSignal",
            json!({"process":{"pid":999999},"signal":"SIGNAL_SIGKILL"}),
            &[],
        )
        .await;
    assert_eq!((status, err["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn pty_sessions_resize_and_take_input() {
    let envd = Envd::launch(root_config());
    let msg = json!({
        "process":{"cmd":"/bin/bash","args":["-c","stty size; tty >/dev/null && echo has-tty; read x; stty size; echo got:$x"]},
        "pty":{"size":{"cols":100,"rows":30}}
    });
    let mut frames = envd.stream("Start", msg, &[ROOT]).await;
    let pid = frames.event().await["start"]["pid"].as_u64().expect("pid");
    let mut seen = String::new();
    while !seen.contains("has-tty") {
        let ev = frames.event().await;
        seen.push_str(&String::from_utf8_lossy(
            &B64.decode(ev["data"]["pty"].as_str().expect("pty data"))
                .expect("b64"),
        ));
    }
    assert!(seen.contains("30 100"), "{seen:?}");
    let resize = json!({"process":{"pid":pid},"pty":{"size":{"cols":120,"rows":40}}});
    assert_eq!(envd.unary("Update", resize, &[]).await, (200, json!({})));
    let (status, err) = envd
        .unary(
            "SendInput",
            json!({"process":{"pid":pid},"input":{"stdin":"eA=="}}),
            &[],
        )
        .await;
    assert_eq!((status, err["code"].as_str()), (500, Some("internal")));
    let (status, err) = envd
        .unary("CloseStdin", json!({"process":{"pid":pid}}), &[])
        .await;
    assert_eq!((status, err["code"].as_str()), (500, Some("unknown")));
    let input = json!({"process":{"pid":pid},"input":{"pty":B64.encode("yes\r")}});
    assert_eq!(envd.unary("SendInput", input, &[]).await, (200, json!({})));
    let out = frames.collect().await;
    let text = String::from_utf8_lossy(&out.pty);
    assert!(text.contains("40 120"), "{text:?}");
    assert!(text.contains("got:yes"), "{text:?}");
    assert_eq!(out.end["status"], "exit status 0");

    // Update of a process without a terminal is internal.
    let mut frames = envd.run("sleep 5", &[ROOT]).await;
    let pid = frames.event().await["start"]["pid"].as_u64().expect("pid");
    let resize = json!({"process":{"pid":pid},"pty":{"size":{"cols":1,"rows":1}}});
    assert_eq!(envd.unary("Update", resize, &[]).await.0, 500);
    envd.unary(
        "SendSignal",
        json!({"process":{"pid":pid},"signal":"SIGNAL_SIGKILL"}),
        &[],
    )
    .await;
}

#[tokio::test]
async fn keepalives_fill_silence() {
    let envd = Envd::launch(root_config());
    let out = envd
        .run(
            "sleep 2.5; echo x",
            &[ROOT, ("keepalive-ping-interval", "1")],
        )
        .await
        .collect()
        .await;
    let keepalives = out.order.iter().filter(|k| *k == "keepalive").count();
    assert!(keepalives >= 2, "{:?}", out.order);
    assert_eq!(out.order.first().map(String::as_str), Some("start"));
    assert_eq!(out.stdout(), "x\n");
}

#[tokio::test]
async fn access_token_is_enforced() {
    let envd = Envd::launch(json!({"accessToken":"tok","defaultUser":"root"}));
    let msg = json!({"process":{"cmd":"echo","args":["ok"]}});
    let resp = envd
        .request(
            "/process.Process/Start",
            &[("content-type", "application/connect+json")],
            envelope(0, &msg.to_string()),
        )
        .await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(body["code"], 401);
    assert!(body["message"].is_string());
    let out = envd
        .stream("Start", msg, &[("x-access-token", "tok")])
        .await
        .collect()
        .await;
    assert_eq!(out.stdout(), "ok\n");
    let health = send(
        &envd.socket(),
        http::Method::GET,
        "/health",
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(health.status(), 204);
    let envs = send(&envd.socket(), http::Method::GET, "/envs", &[], Vec::new()).await;
    assert_eq!(envs.status(), 401);
}

#[tokio::test]
async fn orphans_are_reaped() {
    let envd = Envd::launch(root_config());
    // The background sleep is orphaned when the shell exits; envd must reap it.
    let out = envd
        .run("(sleep 0.3 >/dev/null 2>&1 &) ; exit 0", &[ROOT])
        .await
        .collect()
        .await;
    assert_eq!(out.end["status"], "exit status 0");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let envd_pid = envd.child.id().to_string();
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc") {
        let Ok(entry) = entry else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 1 && fields[1] == envd_pid && fields[0] == "Z" {
            zombies.push(entry.file_name());
        }
    }
    assert!(zombies.is_empty(), "zombie children of envd: {zombies:?}");
}

#[tokio::test]
async fn large_unary_input_is_accepted() {
    let envd = Envd::launch(root_config());
    let mut frames = envd
        .stream(
            "Start",
            json!({"process":{"cmd":"wc","args":["-c"]}}),
            &[ROOT],
        )
        .await;
    let pid = frames.event().await["start"]["pid"].as_u64().expect("pid");
    // 3 MiB of stdin is a 4 MiB JSON body: over axum's default 2 MiB limit.
    let data = vec![b'x'; 3 << 20];
    let input = json!({"process":{"pid":pid},"input":{"stdin":B64.encode(&data)}});
    assert_eq!(envd.unary("SendInput", input, &[]).await, (200, json!({})));
    assert_eq!(
        envd.unary("CloseStdin", json!({"process":{"pid":pid}}), &[])
            .await,
        (200, json!({}))
    );
    let out = frames.collect().await;
    assert_eq!(out.stdout().trim(), (3 << 20).to_string());
}

#[tokio::test]
async fn huge_timeout_and_keepalive_headers_are_clamped() {
    let envd = Envd::launch(root_config());
    let huge = [
        ROOT,
        ("connect-timeout-ms", "18446744073709551615"),
        ("keepalive-ping-interval", "18446744073709551615"),
    ];
    let out = envd.run("echo fine", &huge).await.collect().await;
    assert_eq!(out.stdout(), "fine\n");
    assert_eq!(out.end["status"], "exit status 0");
    // Connect with the same headers to a running process.
    let mut frames = envd.run("sleep 0.5; echo late", &[ROOT]).await;
    let pid = frames.event().await["start"]["pid"].as_u64().expect("pid");
    let out = envd
        .stream("Connect", json!({"process":{"pid":pid}}), &huge[1..])
        .await
        .collect()
        .await;
    assert_eq!(out.stdout(), "late\n");
}

/// The soft open-files limit of a process, from `/proc/<pid>/limits`.
fn soft_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    line.split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .expect("soft limit")
}

#[tokio::test]
async fn envd_raises_its_open_files_limit_but_children_keep_the_original() {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    let soft = 256.min(hard);
    let envd = Envd::launch_with(root_config(), Some(soft));
    assert_eq!(soft_nofile(envd.child.id()), hard);
    let out = envd
        .run("ulimit -Sn; ulimit -Hn", &[ROOT])
        .await
        .collect()
        .await;
    assert_eq!(out.stdout(), format!("{soft}\n{hard}\n"));
}
