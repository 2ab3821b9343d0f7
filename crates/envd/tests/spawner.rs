//! Processes started through envd's spawner helper and through envd itself (the fallback, once
//! the spawner is killed) must be identical: environment, ids, signals, session, limits,
//! cgroup and descriptors; failed execs are the same errors.

mod process_support;

use process_support::*;

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
