//! Drives the real `paddock-envd` binary over its Unix socket through [`EnvdClient`]: output and
//! exit codes, environment, working directory and user, the access token, processes that outlive
//! the client, uploads, dead or symlinked sockets, and dropped calls. Needs root (envd runs
//! processes as another user); envd is built from this workspace with cargo on first use.

use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use paddock_node::envd_client::{
    EnvdClient, EnvdClientError, ExitStatus, OutputStream, ProcessSpec, SETUP_TIMEOUT,
};
use serde_json::{json, Value};

/// The envd binary of this workspace, built once per test process.
fn envd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let out = Command::new(cargo)
            .args([
                "build",
                "-p",
                "paddock-envd",
                "--bin",
                "paddock-envd",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo");
        assert!(out.status.success(), "building paddock-envd failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "paddock-envd")
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the paddock-envd executable")
    })
    .clone()
}

/// A running envd with its own run dir and user database (`root`, and `user` with uid 1000).
struct Envd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Envd {
    fn launch(config: Value) -> Envd {
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
        let child = Command::new(envd_bin())
            .args(["--port", "0", "--run-dir"])
            .arg(&run)
            .arg("--etc-dir")
            .arg(&etc)
            .env("PADDOCK_READY_FD", write_end.as_raw_fd().to_string())
            .env("ENVD_LOG", "warn")
            .spawn()
            .expect("spawn envd");
        drop(write_end);
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

    fn client(&self, token: Option<&str>) -> EnvdClient {
        EnvdClient::new(self.socket(), token.map(str::to_string))
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

const TOKEN: &str = "secret-token";

fn config() -> Value {
    json!({"sandboxId":"isbxclient","templateId":"base","accessToken":TOKEN})
}

/// A finished process: its output per stream, in order, and how it ended.
#[derive(Debug, Default)]
struct Ran {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    chunks: usize,
}

impl Ran {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

async fn run(
    client: &EnvdClient,
    spec: &ProcessSpec,
) -> (Ran, Result<ExitStatus, EnvdClientError>) {
    let mut ran = Ran::default();
    let mut on_output = |stream: OutputStream, bytes: &[u8]| {
        assert!(!bytes.is_empty(), "empty chunks are not passed on");
        ran.chunks += 1;
        match stream {
            OutputStream::Stdout => ran.stdout.extend_from_slice(bytes),
            OutputStream::Stderr => ran.stderr.extend_from_slice(bytes),
        }
    };
    let status = tokio::time::timeout(Duration::from_secs(60), client.run(spec, &mut on_output))
        .await
        .expect("the process ends in time");
    (ran, status)
}

/// Runs `spec` and expects it to exit 0; returns its stdout.
async fn stdout_of(client: &EnvdClient, spec: &ProcessSpec) -> String {
    let (ran, status) = run(client, spec).await;
    let status = status.expect("runs");
    assert!(status.success(), "{status:?}: {ran:?}");
    ran.stdout()
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[tokio::test]
async fn run_streams_output_and_returns_the_exit_code() {
    let envd = Envd::launch(config());
    let client = envd.client(Some(TOKEN));
    let spec = ProcessSpec::shell("echo out; echo err >&2; exit 3", "root");
    let (ran, status) = run(&client, &spec).await;
    let status = status.expect("runs");
    assert_eq!(ran.stdout(), "out\n");
    assert_eq!(String::from_utf8_lossy(&ran.stderr), "err\n");
    assert_eq!(status.exit_code, 3);
    assert_eq!(status.status, "exit status 3");
    assert!(!status.success());

    let (ran, status) = run(&client, &ProcessSpec::shell("printf 'a\\0\\377'", "root")).await;
    assert!(status.expect("runs").success());
    assert_eq!(ran.stdout, b"a\0\xff", "output is passed on as raw bytes");

    let (_, status) = run(&client, &ProcessSpec::shell("kill -9 $$", "root")).await;
    let status = status.expect("runs");
    assert_eq!(status.exit_code, -1);
    assert_eq!(status.status, "signal: killed");
}

#[tokio::test]
async fn output_arrives_while_the_process_runs() {
    let envd = Envd::launch(config());
    let client = envd.client(Some(TOKEN));
    let spec = ProcessSpec::shell("echo first; sleep 2; echo second", "root");
    let started = Instant::now();
    let mut seen: Vec<(Duration, Vec<u8>)> = Vec::new();
    let mut on_output =
        |_: OutputStream, bytes: &[u8]| seen.push((started.elapsed(), bytes.to_vec()));
    let status = client.run(&spec, &mut on_output).await.expect("runs");
    let total = started.elapsed();
    assert!(status.success());
    let first = seen.first().expect("output");
    assert_eq!(first.1, b"first\n");
    assert!(
        total - first.0 >= Duration::from_secs(1),
        "the first line came at {:?}, the end at {total:?}",
        first.0
    );
}

#[tokio::test]
async fn environment_working_directory_and_tag_are_applied() {
    let envd = Envd::launch(config());
    let client = envd.client(Some(TOKEN));
    let mut spec = ProcessSpec::shell(r#"printf '%s|%s|' "$A" "$B"; pwd"#, "root");
    spec.envs = vec![
        ("A".into(), "0".into()),
        ("B".into(), "two words".into()),
        ("A".into(), "1".into()),
    ];
    spec.cwd = Some("/tmp".into());
    spec.tag = Some("build-step".into());
    assert_eq!(stdout_of(&client, &spec).await, "1|two words|/tmp\n");

    // Without a cwd, a process starts in its user's home.
    let spec = ProcessSpec::shell("pwd", "user");
    assert_eq!(
        stdout_of(&client, &spec).await,
        format!("{}\n", envd.home().display())
    );

    // A program without a shell, looked up in PATH.
    let spec = ProcessSpec {
        cmd: "echo".into(),
        args: vec!["a  b".into(), "$HOME".into()],
        user: "root".into(),
        ..Default::default()
    };
    assert_eq!(stdout_of(&client, &spec).await, "a  b $HOME\n");
}

#[tokio::test]
async fn the_user_is_applied() {
    let envd = Envd::launch(config());
    let client = envd.client(Some(TOKEN));
    let whoami = "id -u; id -g; echo $USER $HOME";
    assert_eq!(
        stdout_of(&client, &ProcessSpec::shell(whoami, "root")).await,
        "0\n0\nroot /root\n"
    );
    assert_eq!(
        stdout_of(&client, &ProcessSpec::shell(whoami, "user")).await,
        format!("1000\n1000\nuser {}\n", envd.home().display())
    );
    // No user: envd's default user (`user` unless the config names another).
    assert_eq!(
        stdout_of(&client, &ProcessSpec::shell("id -u", "")).await,
        "1000\n"
    );

    let (_, status) = run(&client, &ProcessSpec::shell("id -u", "nobody-here")).await;
    match status {
        Err(EnvdClientError::Rpc { code, message }) => {
            assert_eq!(code, "unauthenticated", "{message}");
        }
        other => panic!("an unknown user must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failing_start_is_an_rpc_error() {
    let envd = Envd::launch(config());
    let client = envd.client(Some(TOKEN));
    let spec = ProcessSpec {
        cmd: "/nonexistent/program".into(),
        user: "root".into(),
        ..Default::default()
    };
    let (_, status) = run(&client, &spec).await;
    assert!(
        matches!(status, Err(EnvdClientError::Rpc { .. })),
        "{status:?}"
    );
    let err = client.spawn(&spec).await.expect_err("cannot start");
    assert!(matches!(err, EnvdClientError::Rpc { .. }), "{err:?}");
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused() {
    let envd = Envd::launch(config());
    let spec = ProcessSpec::shell("true", "root");
    for client in [envd.client(Some("wrong")), envd.client(None)] {
        let (_, status) = run(&client, &spec).await;
        assert!(
            matches!(&status, Err(EnvdClientError::Http { status: 401, .. })),
            "{status:?}"
        );
        let err = client.spawn(&spec).await.expect_err("refused");
        assert!(
            matches!(&err, EnvdClientError::Http { status: 401, .. }),
            "{err:?}"
        );
        let err = client
            .upload("/tmp/never-written", "root", Bytes::from_static(b"x"))
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, EnvdClientError::Http { status: 401, .. }),
            "{err:?}"
        );
    }
    assert!(!std::path::Path::new("/tmp/never-written").exists());
    let (_, status) = run(&envd.client(Some(TOKEN)), &spec).await;
    assert!(status.expect("the right token works").success());
}

#[tokio::test]
async fn a_spawned_process_outlives_the_call_and_the_client() {
    let envd = Envd::launch(config());
    let client = envd.client(Some(TOKEN));
    let spec = ProcessSpec {
        cmd: "sleep".into(),
        args: vec!["30".into()],
        user: "user".into(),
        tag: Some("background".into()),
        ..Default::default()
    };
    let pid = tokio::time::timeout(Duration::from_secs(10), client.spawn(&spec))
        .await
        .expect("spawn returns once the process started")
        .expect("spawns");
    drop(client);
    // Give envd time to notice the closed connection.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alive_then = alive(pid);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let uid = std::fs::metadata(format!("/proc/{pid}"))
        .map(|m| m.uid())
        .ok();
    kill(pid);
    assert!(alive_then, "process {pid} died with its stream");
    assert_eq!(cmdline, b"sleep\x0030\x00");
    assert_eq!(uid, Some(1000));
}

#[tokio::test]
async fn dropping_run_closes_the_connection_and_leaves_no_task() {
    let envd = Envd::launch(config());
    let client = envd.client(Some(TOKEN));
    let spec = ProcessSpec::shell("echo $$; exec sleep 30", "root");
    let mut out = Vec::new();
    let mut on_output = |_: OutputStream, bytes: &[u8]| out.extend_from_slice(bytes);
    let cut = tokio::time::timeout(Duration::from_secs(2), client.run(&spec, &mut on_output)).await;
    assert!(cut.is_err(), "sleep 30 cannot end within 2 s");
    let pid: u32 = String::from_utf8_lossy(&out)
        .trim()
        .parse()
        .expect("the shell's pid came first");

    // The connection's driver task is gone (aborted with the call).
    let metrics = tokio::runtime::Handle::current().metrics();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics.num_alive_tasks() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tasks = metrics.num_alive_tasks();
    // envd only detaches: the process keeps running until someone stops it.
    let still_running = alive(pid);
    kill(pid);
    assert_eq!(tasks, 0, "a task outlived the dropped call");
    assert!(still_running, "envd killed the process of a dropped stream");
}

#[tokio::test]
async fn upload_writes_files_as_the_user() {
    let envd = Envd::launch(config());
    let client = envd.client(Some(TOKEN));
    let data = Bytes::from_static(b"hello\0\xff\nworld\n");
    // Relative to the user's home; the missing parents are created for the user.
    client
        .upload("sub/dir/f.bin", "user", data.clone())
        .await
        .expect("uploads");
    let path = envd.home().join("sub/dir/f.bin");
    let (ran, status) = run(
        &client,
        &ProcessSpec::shell(&format!("cat {}", path.display()), "user"),
    )
    .await;
    assert!(status.expect("runs").success());
    assert_eq!(ran.stdout, data);
    for p in [
        path.clone(),
        envd.home().join("sub/dir"),
        envd.home().join("sub"),
    ] {
        let meta = std::fs::metadata(&p).expect("exists");
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000), "{}", p.display());
    }

    // Overwrites truncate; names that need escaping in a query arrive intact.
    let odd = envd.dir.path().join("a b+c&d=%é.txt");
    client
        .upload(&odd.to_string_lossy(), "root", Bytes::from_static(b"1"))
        .await
        .expect("uploads");
    client
        .upload(&odd.to_string_lossy(), "", Bytes::from_static(b"2"))
        .await
        .expect("uploads again, as the default user");
    assert_eq!(std::fs::read(&odd).expect("written"), b"2");
    assert_eq!(std::fs::metadata(&odd).expect("written").uid(), 1000);

    // envd's errors come back with their status.
    let err = client
        .upload(&envd.home().to_string_lossy(), "root", Bytes::new())
        .await
        .expect_err("a directory is not a file");
    assert!(
        matches!(&err, EnvdClientError::Http { status: 400, .. }),
        "{err:?}"
    );
}

/// `upload_file` streams a file (from its position, `len` bytes) rather than taking it in
/// memory: what envd writes is exactly that slice, however large.
#[tokio::test]
async fn upload_file_streams_a_slice_of_a_file() {
    use tokio::io::AsyncSeekExt as _;
    let envd = Envd::launch(config());
    let client = envd.client(Some(TOKEN));
    let data: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
    let src = envd.dir.path().join("archive.tar");
    std::fs::write(&src, &data).expect("source");

    let file = tokio::fs::File::open(&src).await.expect("open");
    client
        .upload_file("big.bin", "user", file, data.len() as u64)
        .await
        .expect("uploads");
    let written = std::fs::read(envd.home().join("big.bin")).expect("written");
    assert!(written == data, "{} bytes written", written.len());

    let mut file = tokio::fs::File::open(&src).await.expect("open");
    file.seek(std::io::SeekFrom::Start(1000))
        .await
        .expect("seek");
    client
        .upload_file("slice.bin", "user", file, 300_000)
        .await
        .expect("uploads");
    let written = std::fs::read(envd.home().join("slice.bin")).expect("written");
    assert!(written[..] == data[1000..301_000]);
}

#[tokio::test]
async fn dead_or_foreign_sockets_fail_fast() {
    let envd = Envd::launch(config());
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = &ProcessSpec::shell("true", "root");
    let expect_connect_error = |client: EnvdClient| async move {
        let started = Instant::now();
        let err = client.spawn(spec).await.expect_err("no envd there");
        assert!(
            matches!(err, EnvdClientError::Connect { .. }),
            "{}: {err:?}",
            client.socket().display()
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    };

    // Missing, not a socket, and a socket nobody listens on.
    expect_connect_error(EnvdClient::new(dir.path().join("missing.sock"), None)).await;
    std::fs::write(dir.path().join("file"), b"").expect("file");
    expect_connect_error(EnvdClient::new(dir.path().join("file"), None)).await;
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    expect_connect_error(EnvdClient::new(stale, None)).await;

    // A symlink to a live envd is not followed.
    let link = dir.path().join("envd.sock");
    std::os::unix::fs::symlink(envd.socket(), &link).expect("symlink");
    expect_connect_error(EnvdClient::new(link, Some(TOKEN.into()))).await;
}

#[tokio::test]
async fn an_envd_that_does_not_answer_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hung.sock");
    // Connections queue in the backlog but are never answered.
    let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let client = EnvdClient::new(path, None);
    let started = Instant::now();
    let err = client
        .spawn(&ProcessSpec::shell("true", "root"))
        .await
        .expect_err("no answer");
    assert!(
        matches!(err, EnvdClientError::Unresponsive { .. }),
        "{err:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= SETUP_TIMEOUT && waited < SETUP_TIMEOUT + Duration::from_secs(5),
        "{waited:?}"
    );
}
