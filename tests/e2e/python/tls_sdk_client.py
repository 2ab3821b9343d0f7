"""The SDK side of test_tls.py, run in its own process (see tls_helpers.run_with_dns) with only
E2B_API_KEY, E2B_DOMAIN and E2B_API_URL set (no E2B_SANDBOX_URL: sandboxes by host routing,
`https://<port>-<id>.<domain>`) and SSL_CERT_FILE naming the test's CA. Prints one JSON object
with what it saw; the test asserts on it."""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

from e2b import Sandbox

assert "E2B_SANDBOX_URL" not in os.environ

out: dict = {}
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


sbx = Sandbox.create(timeout=300)
try:
    out["sandbox_id"] = sbx.sandbox_id
    out["envd_api_url"] = sbx.envd_api_url
    out["stdout"] = sbx.commands.run("echo hello over tls").stdout
    sbx.files.write("/home/user/tls/note.txt", "written over https")
    out["read"] = sbx.files.read("/home/user/tls/note.txt")

    # A signed URL: nothing but the URL (and trust in the CA).
    url = sbx.download_url("/home/user/tls/note.txt", use_signature_expiration=300)
    out["signed_url"] = url
    out["signed"] = fetch(url)
    # The same URL with its signature cut off is refused: the signature is what lets it in.
    out["unsigned"] = fetch(url.split("&signature=")[0].split("?signature=")[0])[0]

    # A preview URL: a web server in the sandbox, reached by its host.
    sbx.files.write("/home/user/www/index.html", "<h1>preview over https</h1>")
    sbx.commands.run(
        "python3 -m http.server 8000 --directory /home/user/www", background=True, timeout=0
    )
    preview = f"https://{sbx.get_host(8000)}/index.html"
    out["preview_url"] = preview
    deadline = time.monotonic() + 60
    while True:
        status, body = fetch(preview)
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    out["preview"] = [status, body]
finally:
    sbx.kill()
json.dump(out, sys.stdout)
