//! Shared harness of the process integration tests: the real `paddock-envd` binary on a Unix
//! socket in a temp run dir, Connect envelopes and streams, and what a process reported.
#![allow(dead_code)]

pub use std::io::Read;
pub use std::os::fd::AsRawFd;
pub use std::os::unix::fs::PermissionsExt;
pub use std::os::unix::process::CommandExt;
pub use std::path::{Path, PathBuf};
pub use std::process::{Child, Command};
pub use std::time::Duration;

pub use base64::Engine;
pub use bytes::Bytes;
pub use http_body_util::{BodyExt, Full};
pub use hyper::body::Incoming;
pub use hyper_util::rt::TokioIo;
pub use paddock_envd_proto::connect::{Decoder, Frame, END_STREAM_FLAG};
pub use serde_json::{json, Value};
pub use tokio::net::UnixStream;

pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A running envd with its own run dir and user database.
pub struct Envd {
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl Envd {
    pub fn launch(config: Value) -> Envd {
        Self::launch_with(config, None)
    }

    /// Launches envd, optionally with a lowered soft open-files limit.
    pub fn launch_with(config: Value, nofile_soft: Option<u64>) -> Envd {
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

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/envd.sock")
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home/user")
    }

    pub async fn request(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> http::Response<Incoming> {
        request(&self.socket(), path, headers, body).await
    }

    /// A call of `process.Process/{method}` with `content_type`, the Connect version header and
    /// `extra` headers.
    async fn call(
        &self,
        method: &str,
        content_type: &str,
        extra: &[(&str, &str)],
        body: Vec<u8>,
    ) -> http::Response<Incoming> {
        let mut headers = vec![
            ("content-type", content_type),
            ("connect-protocol-version", "1"),
        ];
        headers.extend_from_slice(extra);
        self.request(&format!("/process.Process/{method}"), &headers, body)
            .await
    }

    /// A unary call: (status, JSON body).
    pub async fn unary(&self, method: &str, msg: Value, extra: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .call(
                method,
                "application/json",
                extra,
                msg.to_string().into_bytes(),
            )
            .await;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&body).expect("json body"))
    }

    /// A server-streaming call.
    pub async fn stream(&self, method: &str, msg: Value, extra: &[(&str, &str)]) -> Frames {
        let body = envelope(0, &msg.to_string());
        let resp = self
            .call(method, "application/connect+json", extra, body)
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/connect+json");
        Frames::new(resp.into_body())
    }

    pub async fn run(&self, cmd: &str, extra: &[(&str, &str)]) -> Frames {
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

pub fn envelope(flags: u8, payload: &str) -> Vec<u8> {
    paddock_envd_proto::connect::encode(flags, payload.as_bytes()).to_vec()
}

pub async fn request(
    sock: &Path,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> http::Response<Incoming> {
    send(sock, http::Method::POST, path, headers, body).await
}

pub async fn send(
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
pub struct Frames {
    body: Incoming,
    decoder: Decoder,
}

impl Frames {
    /// Reads the envelopes of a streaming response's body.
    pub fn new(body: Incoming) -> Self {
        Frames {
            body,
            decoder: Decoder::new(usize::MAX),
        }
    }

    /// The next envelope: (flags, JSON), or None at the end of the body.
    pub async fn next(&mut self) -> Option<(u8, Value)> {
        loop {
            match self.decoder.next_frame().expect("well-formed envelopes") {
                Some(Frame::Message(payload)) => {
                    return Some((0, serde_json::from_slice(&payload).expect("envelope json")))
                }
                Some(Frame::End(payload)) => {
                    return Some((
                        END_STREAM_FLAG,
                        serde_json::from_slice(&payload).expect("envelope json"),
                    ))
                }
                None => {}
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Some(Err(e)) => panic!("stream body failed: {e}"),
                None => {
                    self.decoder.finish().expect("body ended between envelopes");
                    return None;
                }
            }
        }
    }

    /// The next message event (flag 0), asserting it is not the end of the stream.
    pub async fn event(&mut self) -> Value {
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
    pub async fn collect(mut self) -> Outcome {
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
pub struct Outcome {
    pub pid: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub pty: Vec<u8>,
    pub end: Value,
    pub order: Vec<String>,
    pub trailer: Value,
}

impl Outcome {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

pub fn root_config() -> Value {
    json!({"sandboxId":"isbxtest","templateId":"base"})
}

pub const ROOT: (&str, &str) = ("authorization", "Basic cm9vdDo=");
