"""`sandbox.pty`: create a terminal, type into it, resize it, exit it."""

from __future__ import annotations

import threading
import time

from e2b import PtySize


class _Screen:
    """Collects PTY output from a background thread."""

    def __init__(self):
        self._buf = bytearray()
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        with self._lock:
            self._buf += data

    def text(self) -> str:
        with self._lock:
            return self._buf.decode("utf-8", errors="replace")

    def wait_for(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not seen on the terminal within {timeout}s:\n{self.text()}")


def test_pty_interactive_resize_and_exit(sbx):
    screen = _Screen()
    handle = sbx.pty.create(PtySize(rows=24, cols=80), timeout=60)
    result = {}

    def pump():
        try:
            result["r"] = handle.wait(on_pty=screen.feed)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            result["e"] = e

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        pid = handle.pid
        assert pid in {p.pid for p in sbx.commands.list()}

        # A real terminal: `tty` names a pty device, `stty size` reports the requested size.
        sbx.pty.send_stdin(pid, b"tty; echo TERM=$TERM; stty size\n")
        screen.wait_for("24 80")
        assert "/dev/pts/" in screen.text()
        assert "TERM=xterm-256color" in screen.text()

        sbx.pty.resize(pid, PtySize(rows=33, cols=101))
        sbx.pty.send_stdin(pid, b"stty size\n")
        screen.wait_for("33 101")

        # Output written by the shell's children comes back through the pty as well.
        sbx.pty.send_stdin(pid, b"echo $((6*7))-answer\n")
        screen.wait_for("42-answer")

        sbx.pty.send_stdin(pid, b"exit 0\n")
        thread.join(10)
        assert not thread.is_alive(), "pty did not end after `exit`"
        assert "e" not in result, result.get("e")
        assert result["r"].exit_code == 0
    finally:
        if thread.is_alive():
            sbx.pty.kill(handle.pid)
            thread.join(10)


def test_pty_kill(sbx):
    handle = sbx.pty.create(PtySize(rows=10, cols=40))
    assert sbx.pty.kill(handle.pid) is True
    deadline = time.monotonic() + 5
    while handle.pid in {p.pid for p in sbx.commands.list()} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert handle.pid not in {p.pid for p in sbx.commands.list()}
    handle.disconnect()
