"""`paddock sandbox shell` against the real server, run the way a person runs it: under a real
pseudo-terminal (the test holds the master side, like a terminal emulator), typing, resizing,
pressing Ctrl-C, exiting; and in pipe mode, with stdin from a pipe. Also the errors a user meets
(unknown sandbox, bad key) and a hang-up of the CLI (the remote shell must not stay behind)."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import threading
import time

from paddock_server import PaddockServer


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Terminal:
    """`paddock sandbox shell ARGS` on the slave side of a fresh local pty of the given size;
    the test types on the master side and reads everything the CLI writes."""

    def __init__(self, paddock: PaddockServer, *args: str, rows: int, cols: int, env=None):
        self.master, self.slave = os.openpty()
        set_size(self.slave, rows, cols)
        self.modes = termios.tcgetattr(self.slave)
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        full_env = {**os.environ, **paddock.client_env(), **(env or {})}
        self.proc = subprocess.Popen(
            [str(paddock.binary), "sandbox", "shell", *args],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=full_env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            with self._lock:
                self._buf += data

    def text(self) -> str:
        with self._lock:
            return self._buf.decode("utf-8", errors="replace")

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{needle!r} not on the terminal within {timeout}s "
            f"(exit code {self.proc.poll()}):\n{self.text()}"
        )

    def current_modes(self) -> list:
        return termios.tcgetattr(self.slave)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stop.set()
        self._reader.join(5)
        os.close(self.master)
        os.close(self.slave)


def pids(sandbox) -> set:
    return {p.pid for p in sandbox.commands.list()}


def remote(sandbox, command: str) -> str:
    return sandbox.commands.run(command, user="root").stdout


def wait_until(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_shell_in_a_terminal_types_resizes_and_exits_with_the_code(paddock, new_sandbox):
    s = new_sandbox()
    before = pids(s)
    term = Terminal(paddock, s.sandbox_id, rows=31, cols=97, env={"TERM": "vt100"})
    try:
        term.type(b"echo hi-$((6*7))\r")
        term.wait_for("hi-42")
        # The local terminal is raw while the session runs: no local echo, no line editing, no
        # signals from keys; the remote terminal does all that.
        iflag, oflag, cflag, lflag = term.current_modes()[:4]
        assert lflag & (termios.ICANON | termios.ECHO | termios.ISIG) == 0, lflag
        assert len(pids(s) - before) == 1, "one shell process runs for the session"

        term.type(b"echo T=$TERM; stty size\r")
        term.wait_for("T=vt100")
        term.wait_for("31 97")

        # Resize the local terminal as a terminal emulator does: new size, then SIGWINCH.
        set_size(term.slave, 40, 120)
        term.proc.send_signal(signal.SIGWINCH)
        deadline = time.monotonic() + 20
        while "40 120" not in term.text():
            assert time.monotonic() < deadline, f"resize not seen by stty:\n{term.text()}"
            term.type(b"stty size\r")
            try:
                term.wait_for("40 120", timeout=1)
            except AssertionError:
                pass

        # Ctrl-C is a byte for the remote terminal: it interrupts the remote `sleep`, and the
        # CLI itself keeps running.
        term.type(b"sleep 60\r")
        wait_until(lambda: remote(s, "pgrep -x sleep || true").strip(), "`sleep` to start")
        term.type(b"\x03")
        term.type(b"echo after-$((1+1))\r")
        term.wait_for("after-2", timeout=20)
        assert term.proc.poll() is None

        term.type(b"exit 3\r")
        assert term.proc.wait(30) == 3, term.text()
        assert term.current_modes() == term.modes, "the local terminal modes were not restored"
        assert "error" not in term.text().lower(), term.text()
    finally:
        term.close()


def test_shell_hung_up_restores_the_terminal_and_kills_the_remote_shell(paddock, new_sandbox):
    s = new_sandbox()
    before = pids(s)
    term = Terminal(paddock, s.sandbox_id, rows=24, cols=80)
    try:
        term.type(b"echo up-$((2*3))\r")
        term.wait_for("up-6")
        assert len(pids(s) - before) == 1
        term.proc.send_signal(signal.SIGHUP)
        assert term.proc.wait(30) == 128 + signal.SIGHUP
        assert term.current_modes() == term.modes, "the local terminal modes were not restored"
        wait_until(lambda: not pids(s) - before, "the remote shell to be killed")
    finally:
        term.close()


def test_shell_with_a_command_and_options(paddock, new_sandbox):
    s = new_sandbox()
    term = Terminal(
        paddock,
        s.sandbox_id,
        "--user",
        "root",
        "--cwd",
        "/tmp",
        "--",
        "echo",
        "me=$(id -un)",
        "in=$(pwd)",
        "tty=$(tty)",
        ";",
        "exit",
        "4",
        rows=24,
        cols=80,
    )
    try:
        assert term.proc.wait(30) == 4, term.text()
        term.wait_for("me=root in=/tmp tty=/dev/pts/")
        assert term.current_modes() == term.modes
    finally:
        term.close()


def _pipe(
    paddock: PaddockServer, script: str, sandbox_id: str, *args: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        f"printf '{script}' | {paddock.binary} sandbox shell {sandbox_id} {' '.join(args)}",
        shell=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, **paddock.client_env()},
    )


def test_shell_in_pipe_mode(paddock, new_sandbox):
    s = new_sandbox()
    r = _pipe(paddock, "echo piped\\nexit\\n", s.sandbox_id)
    assert r.returncode == 0, r
    lines = [line.strip() for line in r.stdout.decode(errors="replace").splitlines()]
    assert "piped" in lines, r.stdout  # the output line, not only the echoed `echo piped`

    r = _pipe(paddock, "echo piped-$((6*7))\\nexit 5\\n", s.sandbox_id)
    assert r.returncode == 5 and b"piped-42" in r.stdout, r

    # The end of stdin is typed as Ctrl-D, the terminal's end of input: `cat` (reading its
    # terminal line by line) sees its input end and exits 0. (An interactive bash takes Ctrl-D
    # as end of input only at an empty prompt, so scripts piped into the shell end with `exit`.)
    r = _pipe(paddock, "eof-line\\n", s.sandbox_id, "--", "cat")
    assert r.returncode == 0 and r.stdout.count(b"eof-line") == 2, r  # the echo, then cat's copy


def test_shell_errors_are_clear(paddock, new_sandbox):
    def shell(*args: str, env=None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(paddock.binary), "sandbox", "shell", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **paddock.client_env(), **(env or {})},
        )

    r = shell("inotasandbox0000000000")
    assert r.returncode == 1 and "sandbox inotasandbox0000000000 not found" in r.stderr, r

    s = new_sandbox()
    r = shell(s.sandbox_id, env={"E2B_API_KEY": "e2b_" + "0" * 40})
    assert r.returncode == 1 and "authentication failed" in r.stderr, r

    r = shell(s.sandbox_id, "--user", "nosuchuser")
    assert r.returncode == 1 and "nosuchuser" in r.stderr, r

    s.kill()
    r = shell(s.sandbox_id)
    assert r.returncode == 1 and "not found" in r.stderr, r
