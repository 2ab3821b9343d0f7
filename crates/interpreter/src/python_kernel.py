# Paddock's Python kernel (crates/interpreter/src/pipe.rs, Driver::Python): IPython's own
# InteractiveShell (magics, `!` commands, rich display, matplotlib's inline backend, tracebacks
# as ipykernel shows them) driven over pipes instead of Jupyter's ZeroMQ protocol, which costs
# a few milliseconds per execution (sockets, message signing, an IOPub thread).
#
# Protocol (the pipe kernels' own): a request is one JSON line on stdin, {"id", "code",
# "silent"}; the kernel answers with lines on stdout that start with the record separator
# (\x1e) followed by JSON: {"id", "t": "result" | "display" | "error" | "done"}; every other
# byte on stdout or stderr (print, a program started by the code) is output of the execution
# under way. "done" goes to stdout and "stderr_done" to stderr last, after both are flushed.
# SIGINT interrupts the execution under way (KeyboardInterrupt, shown as its error), also one
# whose request is read or still in the pipe when it comes; otherwise it is ignored. The requests' pipe is moved off descriptor 0, which becomes
# /dev/null, so code (and what it starts) never reads the protocol.

import base64
import json
import math
import os
import select
import signal
import sys
import threading


def __paddock_main():
    requests_fd = os.dup(0)  # not inherited by what the code starts (os.dup: close-on-exec)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(os.devnull, "r")
    requests = os.fdopen(requests_fd, "rb")
    # Line by line, so output streams while code runs (and comes before what the kernel says
    # after it: events are written only after both streams are flushed).
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass
    # Figures are shown the way ipykernel shows them: the inline backend.
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets import Type
    from traitlets.config import Config

    lock = threading.Lock()
    # running: a cell runs; in_code: its code (not IPython's work around it) runs; accepted: a
    # request was read and has not ended; pending: an interrupt came for it before its code ran.
    state = {"id": None, "running": False, "accepted": False, "pending": False, "in_code": False}

    def flush():
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed or replaced stream
                pass

    def write_all(fd, data):
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def plain(value):
        # As Jupyter's messages carry them: bytes (a PNG from PIL's _repr_png_) as base64.
        if isinstance(value, (bytes, bytearray, memoryview)):
            return base64.b64encode(bytes(value)).decode("ascii")
        return str(value)

    def no_nan(value):
        # JSON has no NaN or infinity: null, as jupyter_client sends them.
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            return None
        if isinstance(value, dict):
            return {k: no_nan(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [no_nan(v) for v in value]
        return value

    def emit(event, fd=1):
        event.setdefault("id", state["id"])
        try:
            text = json.dumps(event, default=plain, allow_nan=False)
        except ValueError:
            text = json.dumps(no_nan(json.loads(json.dumps(event, default=plain))), allow_nan=False)
        line = ("\x1e" + text + "\n").encode()
        flush()
        with lock:
            write_all(fd, line)

    class Publisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            emit({"t": "display", "data": data})

        def clear_output(self, wait=False):
            pass

    class Hook(DisplayHook):
        def start_displayhook(self):
            pass

        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            emit({"t": "result", "data": format_dict})

        def finish_displayhook(self):
            flush()

    class Shell(InteractiveShell):
        displayhook_class = Type(Hook)
        display_pub_class = Type(Publisher)

        def _showtraceback(self, etype, evalue, stb):
            name = getattr(etype, "__name__", str(etype))
            emit({"t": "error", "name": name, "value": str(evalue), "traceback": "\n".join(stb)})

        async def run_code(self, code_obj, result=None, *, async_=False):
            if state["pending"]:
                state["pending"] = False
                code_obj = compile("raise KeyboardInterrupt", "<interrupted>", "exec")
            state["in_code"] = True
            try:
                return await super().run_code(code_obj, result, async_=async_)
            finally:
                state["in_code"] = False

        def ask_exit(self):
            pass  # `exit()` ends nothing: the context's kernel lives until it is deleted

    def on_sigint(signum, frame):
        if state["in_code"]:
            raise KeyboardInterrupt
        if state["running"]:
            # In IPython's own work around the code (hooks, which swallow exceptions,
            # compiling): the code is replaced by the interrupt when it is about to run.
            state["pending"] = True
            return
        # Between cells: for the request on its way (read and not started, or still in the
        # pipe: the server interrupts only while an execution is under way), which then ends
        # at once; a late one for an execution that has ended finds neither and is ignored.
        if state["accepted"] or select.select([requests_fd], [], [], 0)[0]:
            state["pending"] = True

    signal.signal(signal.SIGINT, on_sigint)
    # No SQLite history (no database write or saving thread per execution; `In`, `Out` and
    # execution counts stay): set before the shell starts, which is when it opens the file.
    config = Config()
    config.HistoryManager.enabled = False
    shell = Shell.instance(config=config)
    emit({"id": None, "t": "ready"})

    while True:
        try:
            line = requests.readline()
        except KeyboardInterrupt:
            continue
        if not line:
            return
        state["accepted"] = True
        try:
            request = json.loads(line)
        except ValueError:
            state["accepted"] = state["pending"] = False
            continue
        state["id"] = request.get("id")
        silent = bool(request.get("silent"))
        try:
            try:
                state["running"] = True
                shell.run_cell(request.get("code", ""), store_history=not silent, silent=silent)
            finally:
                state["running"] = False
        except KeyboardInterrupt:
            pass  # arrived as the execution ended
        state["accepted"] = state["pending"] = False
        emit({"t": "done", "status": 0, "silent": silent})
        emit({"t": "stderr_done"}, fd=2)
        state["id"] = None


__paddock_main()
