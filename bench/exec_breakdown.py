"""Where the exec round trip's time goes: envd's `Start` called straight on its Unix socket and
through the proxy, with `/bin/true`, `bash -c true` and `bash -l -c true` (what the SDKs run),
next to `GET /health` (the HTTP hop alone) and the SDK's own `commands.run("true")`, all in one
live sandbox of a fresh `paddock serve` (default flags); then `bash -l -c true` and `/bin/true`
timed inside the sandbox (loop of 300, no envd in between).

    /var/cache/paddock/venv/bin/python bench/exec_breakdown.py [-n 300]

Uses PADDOCK_BIN / PADDOCK_TEMPLATES_DIR like bench.py. Prints p50 / p95 in ms; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Callable, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e" / "python"))

import httpx  # noqa: E402 - installed with the e2b SDK

from paddock_server import PaddockServer  # noqa: E402


def summary(samples: List[float]) -> str:
    xs = sorted(samples)
    return f"p50 {xs[len(xs) // 2]:.3f}  p95 {xs[int(len(xs) * 0.95)]:.3f}"


def timed(name: str, fn: Callable[[], None], n: int) -> None:
    for _ in range(max(5, n // 10)):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    print(f"{name:42s} {summary(samples)}", flush=True)


def start(client: httpx.Client, cmd: str, args: List[str]) -> None:
    """`process.Process/Start` over the Connect protocol, read to its end event."""
    body = json.dumps({"process": {"cmd": cmd, "args": args}}).encode()
    r = client.post(
        "/process.Process/Start",
        content=struct.pack(">BI", 0, len(body)) + body,
        headers={"Content-Type": "application/connect+json", "Authorization": "Basic dXNlcjo="},
    )
    if r.status_code != 200 or b'"end"' not in r.content:
        raise RuntimeError(f"Start failed: {r.status_code} {r.content[:300]!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=300)
    n = ap.parse_args().n
    server = PaddockServer().start()
    try:
        os.environ.update(server.client_env())
        from e2b import Sandbox

        sbx = Sandbox.create(timeout=600)
        server.track(sbx.sandbox_id)
        socket = server.data_dir / "sandboxes" / sbx.sandbox_id / "run" / "envd.sock"
        token = {"X-Access-Token": sbx._envd_access_token} if sbx._envd_access_token else {}
        direct = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://envd", headers=token)
        proxied = httpx.Client(
            base_url=server.sandbox_url,
            headers={**token, "E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"},
        )
        time.sleep(2)  # the warm pool refills after the create
        for label, client in (("envd socket", direct), ("through the proxy", proxied)):
            timed(f"{label}: GET /health", lambda c=client: c.get("/health"), n)
            timed(f"{label}: Start /bin/true", lambda c=client: start(c, "/bin/true", []), n)
            timed(f"{label}: Start bash -c true", lambda c=client: start(c, "/bin/bash", ["-c", "true"]), n)
            timed(f"{label}: Start bash -l -c true", lambda c=client: start(c, "/bin/bash", ["-l", "-c", "true"]), n)
        timed('SDK: commands.run("true")', lambda: sbx.commands.run("true"), n)
        for what in ("bash -l -c true", "/bin/true"):
            loop = f"s=$(date +%s%N); for i in $(seq 300); do {what}; done; e=$(date +%s%N); echo $(( (e-s)/300000 ))"
            print(f"{'inside the sandbox: ' + what:42s} {int(sbx.commands.run(loop).stdout) / 1000:.3f} (mean of 300)")
        sbx.kill()
    finally:
        server.stop()
        leaks = server.leaks()
        if leaks:
            print("leaks:", leaks, file=sys.stderr)
        else:
            server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
