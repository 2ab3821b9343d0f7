"""`sandbox.commands`: output, exit codes, envs, cwd, users, timeouts, background processes,
listing, stdin and streaming callbacks, through the official SDK."""

from __future__ import annotations

import threading
import time

import pytest

from e2b import CommandExitException, SandboxException, TimeoutException


def _pids(sbx) -> set:
    return {p.pid for p in sbx.commands.list()}


def test_stdout_and_stderr_are_separated(sbx):
    r = sbx.commands.run("echo out; echo err >&2; printf 'no newline'")
    assert r.exit_code == 0
    assert r.error is None
    assert r.stdout == "out\nno newline"
    assert r.stderr == "err\n"


def test_non_zero_exit_raises_with_code_and_output(sbx):
    with pytest.raises(CommandExitException) as exc:
        sbx.commands.run("echo partial; echo boom >&2; exit 7")
    assert exc.value.exit_code == 7
    assert exc.value.stdout == "partial\n"
    assert exc.value.stderr == "boom\n"
    assert "exit status 7" in (exc.value.error or "")


def test_missing_binary_is_exit_127(sbx):
    with pytest.raises(CommandExitException) as exc:
        sbx.commands.run("definitely-not-a-command-xyz")
    assert exc.value.exit_code == 127
    assert "not found" in exc.value.stderr


def test_large_output_is_complete(sbx):
    # 2 MiB through stdout: many 32 KiB data events, nothing lost or reordered.
    r = sbx.commands.run("head -c 2097152 /dev/zero | tr '\\0' 'a'; echo; echo done")
    assert r.stdout == "a" * 2097152 + "\ndone\n"


def test_utf8_split_across_chunks_is_decoded(sbx):
    r = sbx.commands.run("python3 -c \"import sys; [sys.stdout.write('ž€😀') for _ in range(20000)]\"")
    assert r.stdout == "ž€😀" * 20000


def test_command_envs(sbx):
    r = sbx.commands.run('echo "$FOO|$BAR"', envs={"FOO": "x y", "BAR": "2"})
    assert r.stdout == "x y|2\n"


def test_command_envs_do_not_leak_into_next_command(sbx):
    sbx.commands.run("true", envs={"ONLY_ONCE": "1"})
    assert sbx.commands.run('echo "[${ONLY_ONCE:-}]"').stdout == "[]\n"


def test_sandbox_level_envs_apply_to_every_command(sbx):
    assert sbx.commands.run("echo $PADDOCK_E2E_SBX").stdout == "module-level\n"
    # A command-level env overrides the sandbox-level one.
    r = sbx.commands.run("echo $PADDOCK_E2E_SBX", envs={"PADDOCK_E2E_SBX": "override"})
    assert r.stdout == "override\n"


def test_sandbox_identity_envs(sbx):
    assert sbx.commands.run("echo $E2B_SANDBOX").stdout == "true\n"
    assert sbx.commands.run("echo $E2B_SANDBOX_ID").stdout.strip() == sbx.sandbox_id


def test_cwd(sbx):
    assert sbx.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert sbx.commands.run("pwd").stdout == "/home/user\n"
    assert sbx.commands.run("pwd", user="root").stdout == "/root\n"


def test_missing_cwd_is_an_error(sbx):
    with pytest.raises(SandboxException):
        sbx.commands.run("pwd", cwd="/does/not/exist")


def test_default_user(sbx):
    r = sbx.commands.run('whoami; id -u; id -g; echo "$HOME"; echo "$USER"')
    assert r.stdout.split("\n")[:5] == ["user", "1000", "1000", "/home/user", "user"]


def test_root_user(sbx):
    r = sbx.commands.run('whoami; id -u; echo "$HOME"', user="root")
    assert r.stdout.split("\n")[:3] == ["root", "0", "/root"]


def test_login_shell_path_is_debians(sbx):
    # The base template's /etc/profile reads bash's EUID instead of forking `id -u`
    # (crates/templates/src/base.rs); bash and sh must still get Debian's PATH for each user.
    user_path = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
    root_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert sbx.commands.run('echo "$PATH"').stdout == user_path + "\n"
    assert sbx.commands.run('echo "$PATH"', user="root").stdout == root_path + "\n"
    assert sbx.commands.run("sh -l -c 'echo \"$PATH\"'").stdout == user_path + "\n"
    assert sbx.commands.run("sh -l -c 'echo \"$PATH\"'", user="root").stdout == root_path + "\n"
    assert "EUID" in sbx.files.read("/etc/profile")


def test_default_user_cannot_write_as_root(sbx):
    with pytest.raises(CommandExitException):
        sbx.commands.run("touch /root/forbidden")
    sbx.commands.run("touch /root/allowed", user="root")


def test_timeout_kills_the_command(sbx):
    marker = "paddock-timeout-marker"
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.commands.run(f"sleep 5 # {marker}", timeout=1)
    elapsed = time.monotonic() - started
    assert elapsed < 4.5, f"timeout=1 took {elapsed:.1f}s"
    # The process is killed, not merely detached.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = [p for p in sbx.commands.list() if any(marker in a for a in p.args)]
        if not alive:
            break
        time.sleep(0.2)
    assert not alive, f"timed-out command still running: {alive}"


def test_timeout_zero_means_unlimited(sbx):
    assert sbx.commands.run("sleep 1.5; echo ok", timeout=0).stdout == "ok\n"


def test_background_process_and_kill(sbx):
    handle = sbx.commands.run("sleep 120", background=True)
    assert handle.pid > 0
    assert handle.pid in _pids(sbx)
    assert sbx.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as exc:
        handle.wait()
    assert exc.value.exit_code != 0
    deadline = time.monotonic() + 5
    while handle.pid in _pids(sbx) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert handle.pid not in _pids(sbx)


def test_kill_unknown_pid_returns_false(sbx):
    assert sbx.commands.kill(999_999) is False


def test_background_output_is_collected(sbx):
    handle = sbx.commands.run("echo start; sleep 0.5; echo end", background=True)
    result = handle.wait()
    assert result.stdout == "start\nend\n"


def test_background_process_survives_disconnect_and_reconnects(sbx):
    handle = sbx.commands.run("sleep 1; echo after-reconnect", background=True)
    pid = handle.pid
    handle.disconnect()
    again = sbx.commands.connect(pid)
    assert again.wait().stdout == "after-reconnect\n"


def test_list_shows_running_commands(sbx):
    a = sbx.commands.run("sleep 30 # list-a", background=True, envs={"TAG": "a"}, cwd="/tmp")
    b = sbx.commands.run("sleep 30 # list-b", background=True)
    try:
        procs = {p.pid: p for p in sbx.commands.list()}
        assert a.pid in procs and b.pid in procs
        pa = procs[a.pid]
        assert pa.cmd == "/bin/bash"
        assert pa.args[-1] == "sleep 30 # list-a"
        assert pa.envs.get("TAG") == "a"
        assert pa.cwd == "/tmp"
    finally:
        sbx.commands.kill(a.pid)
        sbx.commands.kill(b.pid)


def test_send_stdin_and_close(sbx):
    handle = sbx.commands.run("cat", background=True, stdin=True)
    handle.send_stdin("hello\n")
    sbx.commands.send_stdin(handle.pid, b"world\n")
    sbx.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "hello\nworld\n"


def test_stdin_disabled_by_default(sbx):
    # Without stdin=True the command reads EOF immediately instead of hanging.
    assert sbx.commands.run("cat; echo eof", timeout=10).stdout == "eof\n"


def test_streaming_callbacks_receive_output_as_it_comes(sbx):
    seen = []
    started = time.monotonic()
    r = sbx.commands.run(
        "for i in 1 2 3; do echo line$i; echo err$i >&2; sleep 0.6; done",
        on_stdout=lambda s: seen.append(("out", s, time.monotonic() - started)),
        on_stderr=lambda s: seen.append(("err", s, time.monotonic() - started)),
    )
    out = [x for x in seen if x[0] == "out"]
    err = [x for x in seen if x[0] == "err"]
    assert "".join(s for _, s, _ in out) == "line1\nline2\nline3\n" == r.stdout
    assert "".join(s for _, s, _ in err) == "err1\nerr2\nerr3\n" == r.stderr
    # The first line arrived long before the command finished: streamed, not buffered.
    assert out[0][1].startswith("line1")
    assert out[-1][2] - out[0][2] > 0.9, seen


def test_background_streaming_with_concurrent_commands(sbx):
    lines = []
    got_first = threading.Event()

    def on_out(s):
        lines.append(s)
        got_first.set()

    handle = sbx.commands.run("echo first; sleep 1; echo second", background=True)
    waiter = threading.Thread(target=lambda: handle.wait(on_stdout=on_out))
    waiter.start()
    assert got_first.wait(5), "no output within 5 s"
    # Another command runs fine while the first is still streaming.
    assert sbx.commands.run("echo concurrent").stdout == "concurrent\n"
    waiter.join(10)
    assert "".join(lines) == "first\nsecond\n"
