//! Drives the real `paddock-envd` binary over its Unix socket with Connect envelopes, as the E2B
//! SDKs do: Start/Connect/List/SendInput/StreamInput/CloseStdin/SendSignal/Update, PTYs,
//! deadlines, keepalives, users, token enforcement, zombie reaping, request-size and header
//! limits, and the open-files limit.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::UnixStream;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A running envd with its own run dir and user database.
struct Envd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Envd {
    fn launch(config: Value) -> Envd {
        Self::launch_with(config, None)
    }

    /// Launches envd, optionally with a lowered soft open-files limit.
    fn launch_with(config: Value, nofile_soft: Option<u64>) -> Envd {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let run = dir.path().join("run");
        let etc = dir.path().join("etc");
        let home = dir.path().join("home/user");
        std::fs::create_dir_all(&run).expect("run dir");
        std::fs::create_dir_all(&etc).expect("etc dir");
        std::fs::create_dir_all(&home).expect("home");
        std::os::unix::fs::chown(&home, Some(1000), Some(1000)).expect("chown home");
        std::fs::write(
            etc.join("passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::{}:/bin/bash\n",
                home.display()
            ),
        )
        .expect("passwd");
        std::fs::write(etc.join("group"), "root:x:0:\nuser:x:1000:\n").expect("group");
        std::fs::write(run.join("config.json"), config.to_string()).expect("config");

        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paddock-envd"));
        if let Some(soft) = nofile_soft {
            let (_, hard) =
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                    .expect("getrlimit");
            let limit = libc::rlimit {
                rlim_cur: soft.min(hard),
                rlim_max: hard,
            };
            // SAFETY: setrlimit is a plain system call on a value copied into the closure.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(["--port", "0", "--run-dir"])
            .arg(&run)
            .arg("--etc-dir")
            .arg(&etc)
            .env("PADDOCK_READY_FD", write_end.as_raw_fd().to_string())
            .env("ENVD_LOG", "warn")
            .spawn()
            .expect("spawn envd");
        drop(write_end);
        // Read exactly the line: parallel tests may have leaked the write end into other
        // children, so EOF cannot be awaited.
        let mut ready = [0u8; 6];
        std::fs::File::from(read_end)
            .read_exact(&mut ready)
            .expect("ready pipe");
        assert_eq!(&ready, b"ready\n", "envd did not signal readiness");
        Envd { child, dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/envd.sock")
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home/user")
    }

    async fn request(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> http::Response<Incoming> {
        request(&self.socket(), path, headers, body).await
    }

    /// A unary call: (status, JSON body).
    async fn unary(&self, method: &str, msg: Value, extra: &[(&str, &str)]) -> (u16, Value) {
        let mut headers = vec![
            ("content-type", "application/json"),
            ("connect-protocol-version", "1"),
        ];
        headers.extend_from_slice(extra);
        let resp = self
            .request(
                &format!("/process.Process/{method}"),
                &headers,
                msg.to_string().into_bytes(),
            )
            .await;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&body).expect("json body"))
    }

    /// A server-streaming call.
    async fn stream(&self, method: &str, msg: Value, extra: &[(&str, &str)]) -> Frames {
        let mut headers = vec![
            ("content-type", "application/connect+json"),
            ("connect-protocol-version", "1"),
        ];
        headers.extend_from_slice(extra);
        let resp = self
            .request(
                &format!("/process.Process/{method}"),
                &headers,
                envelope(0, &msg.to_string()),
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/connect+json");
        Frames {
            body: resp.into_body(),
            buf: BytesMut::new(),
        }
    }

    async fn run(&self, cmd: &str, extra: &[(&str, &str)]) -> Frames {
        let msg = json!({"process":{"cmd":"/bin/bash","args":["-l","-c",cmd]},"stdin":false});
        self.stream("Start", msg, extra).await
    }
}

impl Drop for Envd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn envelope(flags: u8, payload: &str) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload.as_bytes());
    out
}

async fn request(
    sock: &Path,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> http::Response<Incoming> {
    send(sock, http::Method::POST, path, headers, body).await
}

async fn send(
    sock: &Path,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> http::Response<Incoming> {
    let stream = UnixStream::connect(sock)
        .await
        .expect("connect envd socket");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    sender.send_request(req).await.expect("response")
}

/// Incremental envelope reader of a streaming response.
struct Frames {
    body: Incoming,
    buf: BytesMut,
}

impl Frames {
    /// The next envelope: (flags, JSON), or None at the end of the body.
    async fn next(&mut self) -> Option<(u8, Value)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() >= 5 + len {
                    let flags = self.buf[0];
                    self.buf.advance(5);
                    let payload = self.buf.split_to(len);
                    return Some((
                        flags,
                        serde_json::from_slice(&payload).expect("envelope json"),
                    ));
                }
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => panic!("stream body failed: {e}"),
                None => {
                    assert!(self.buf.is_empty(), "body ended inside an envelope");
                    return None;
                }
            }
        }
    }

    /// The next message event (flag 0), asserting it is not the end of the stream.
    async fn event(&mut self) -> Value {
        let (flags, v) = tokio::time::timeout(Duration::from_secs(20), self.next())
            .await
            .expect("event in time")
            .expect("an event");
        assert_eq!(
            flags, 0,
            "expected a message envelope, got end-of-stream {v}"
        );
        v["event"].clone()
    }

    /// Reads to the end: (pid, stdout, stderr, pty output, end event, keepalives, trailer).
    async fn collect(mut self) -> Outcome {
        let mut out = Outcome::default();
        while let Some((flags, v)) = tokio::time::timeout(Duration::from_secs(30), self.next())
            .await
            .expect("in time")
        {
            if flags & 2 != 0 {
                out.trailer = v;
                assert!(
                    self.next().await.is_none(),
                    "nothing may follow the end-of-stream envelope"
                );
                return out;
            }
            let ev = &v["event"];
            out.order.push(
                ev.as_object()
                    .and_then(|o| o.keys().next().cloned())
                    .unwrap_or_default(),
            );
            if let Some(pid) = ev["start"]["pid"].as_u64() {
                out.pid = pid as u32;
            }
            for (key, dst) in [
                ("stdout", &mut out.stdout),
                ("stderr", &mut out.stderr),
                ("pty", &mut out.pty),
            ] {
                if let Some(b) = ev["data"][key].as_str() {
                    dst.extend(B64.decode(b).expect("base64"));
                }
            }
            if !ev["end"].is_null() {
                out.end = ev["end"].clone();
            }
        }
        panic!("stream ended without an end-of-stream envelope");
    }
}

#[derive(Default, Debug)]
struct Outcome {
    pid: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    pty: Vec<u8>,
    end: Value,
    order: Vec<String>,
    trailer: Value,
}

impl Outcome {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

fn root_config() -> Value {
    json!({"sandboxId":"isbxtest","templateId":"base"})
}

const ROOT: (&str, &str) = ("authorization", "Basic cm9vdDo=");

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
    let mut frames_in = Frames {
        body: resp.into_body(),
        buf: BytesMut::new(),
    };
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

/// `(pid, state, comm)` of every process whose parent is `ppid`.
fn children_of(ppid: u32) -> Vec<(u32, String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some((head, rest)), Some(open)) = (stat.rsplit_once(") "), stat.find('(')) else {
            continue;
        };
        let comm = head[open + 1..].to_string();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1) == Some(&ppid.to_string().as_str()) {
            found.push((pid, fields[0].to_string(), comm));
        }
    }
    found
}

/// The pid of envd's spawner (waits for it to appear).
async fn spawner_of(envd: &Envd) -> u32 {
    for _ in 0..100 {
        let found = children_of(envd.child.id())
            .into_iter()
            .find(|(_, state, comm)| comm == "envd-spawner" && state != "Z");
        if let Some((pid, _, _)) = found {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("envd has no spawner child");
}

/// Context switches of a process so far (a process that served a request has switched).
fn switches(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .filter(|l| l.contains("ctxt_switches"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// What a started process sees of itself: its environment in order, parent, ids, signal
/// state, process group and session, open-files limit, OOM score and descriptors. Each
/// program is started directly (a shell would read its own state in a racy moment).
const PROBES: &[&[&str]] = &[
    &["env"],
    &[
        "grep",
        "-E",
        "^(PPid|Uid|Gid|Groups|SigBlk|SigIgn|SigCgt|NSpid|NSpgid|NSsid|CapEff|NoNewPrivs|Seccomp):",
        "/proc/self/status",
    ],
    &["grep", "open files", "/proc/self/limits"],
    &["cat", "/proc/self/oom_score_adj", "/proc/self/cgroup"],
    &["ls", "/proc/self/fd"],
];

/// The probes' output as `user` (`None`: the default user), with each process's own pid
/// replaced by `<pid>`.
async fn probe(envd: &Envd, user: Option<(&str, &str)>) -> Vec<String> {
    let mut seen = Vec::new();
    for argv in PROBES {
        let msg = json!({"process":{"cmd":argv[0],"args":&argv[1..],
            "envs":{"ZED":"last","ALPHA":"first","MIDDLE":"x=y"}},"stdin":false});
        let extra: Vec<_> = user.into_iter().collect();
        let out = envd.stream("Start", msg, &extra).await.collect().await;
        assert_eq!(out.end["exited"], true, "{argv:?}: {out:?}");
        assert_eq!(out.end["exitCode"], Value::Null, "{argv:?}: {out:?}");
        let pid = out.pid.to_string();
        seen.extend(out.stdout().lines().map(|l| l.replace(&pid, "<pid>")));
    }
    seen
}

#[tokio::test]
async fn the_spawner_and_envd_itself_start_identical_processes() {
    let envd = Envd::launch(root_config());
    let spawner = spawner_of(&envd).await;
    let before = switches(spawner);
    let as_user = probe(&envd, None).await;
    let as_root = probe(&envd, Some(ROOT)).await;
    assert!(switches(spawner) > before, "the spawner served no request");
    let ppid = format!("PPid:\t{}", envd.child.id());
    assert!(
        as_user.contains(&ppid),
        "processes are envd's children: {as_user:?}"
    );
    assert!(
        as_user.contains(&"NSpgid:\t<pid>".to_string()),
        "{as_user:?}"
    );
    assert!(
        as_user.iter().any(|l| l.starts_with("Uid:\t1000")),
        "{as_user:?}"
    );
    assert!(
        as_root.iter().any(|l| l.starts_with("Uid:\t0")),
        "{as_root:?}"
    );
    assert!(as_user.contains(&"ZED=last".to_string()), "{as_user:?}");

    // Without the spawner envd forks the processes itself; they must not differ.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(spawner as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the spawner");
    for _ in 0..100 {
        if !children_of(envd.child.id())
            .iter()
            .any(|(pid, state, _)| *pid == spawner && state != "Z")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(probe(&envd, None).await, as_user);
    assert_eq!(probe(&envd, Some(ROOT)).await, as_root);
    // Errors read the same too.
    let msg = json!({"process":{"cmd":"/no/such/binary"}});
    let out = envd.stream("Start", msg, &[]).await.collect().await;
    assert_eq!(out.trailer["error"]["code"], "invalid_argument");
}

#[tokio::test]
async fn failed_execs_through_the_spawner_are_invalid_arguments() {
    let envd = Envd::launch(root_config());
    let spawner = spawner_of(&envd).await;
    let before = switches(spawner);
    for cmd in ["/no/such/binary", "no-such-command-in-path"] {
        let msg = json!({"process":{"cmd":cmd}});
        let out = envd.stream("Start", msg, &[]).await.collect().await;
        assert_eq!(out.trailer["error"]["code"], "invalid_argument", "{out:?}");
        let message = out.trailer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("failed to start") && message.contains("No such file"),
            "{message}"
        );
        assert!(out.order.is_empty());
    }
    assert!(switches(spawner) > before, "the spawner served no request");
    // A PTY process through the spawner gets its terminal as the controlling one.
    let msg = json!({"process":{"cmd":"/bin/sh","args":["-c","tty; ps -o stat= -p $$"]},
        "pty":{"size":{"cols":80,"rows":24}}});
    let out = envd.stream("Start", msg, &[ROOT]).await.collect().await;
    let text = String::from_utf8_lossy(&out.pty).into_owned();
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains('s'), "a session leader: {text:?}");
    assert_eq!(out.end["exited"], true);
}
