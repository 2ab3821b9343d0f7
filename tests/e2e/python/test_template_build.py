"""Template builds through the official SDK's `Template` builder and the `paddock` CLI.

Nothing here downloads packages: test traffic stays on this machine. `apt_install` installs a
.deb made in the test (the template's apt sources are emptied first, so `apt-get update`
succeeds offline) and `pip_install` a wheel made in the test; both are COPY'd from the build
context, so the tests exercise the real apt/pip/COPY paths of a build.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import List

import pytest
import requests

from e2b import BuildException, Sandbox, Template, wait_for_port

APT_OFFLINE = "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*"


# Every template name this module builds; deleted when the module ends (the templates dir is a
# cache shared by runs, and test templates would pile up there and pin old base layers).
MADE: List[str] = []


def unique(prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    MADE.append(name)
    return name


@pytest.fixture(scope="module", autouse=True)
def delete_made_templates(paddock):
    """After the module: every template it built goes (through the API, which also drops the
    builds' hidden templates), then the build cache its steps filled (`template cache-clear`,
    which keeps the Debian base images), and the images imported from archives of the data dir
    (named after the archive's path, which dies with the server)."""
    before = set(os.listdir(paddock.templates_dir))
    yield
    auth = {"X-API-Key": paddock.api_key}
    left = []
    for name in MADE:
        r = requests.delete(f"{paddock.api_url}/templates/{name}", headers=auth, timeout=60)
        if r.status_code not in (200, 204, 404):
            left.append(f"{name}: {r.status_code} {r.text[:200]}")
    MADE.clear()
    out = subprocess.run([str(paddock.binary), "template", "cache-clear", "--templates-dir",
                          str(paddock.templates_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in sorted(set(os.listdir(paddock.templates_dir)) - before):
        if name.startswith("image-archive-"):
            out = subprocess.run([str(paddock.binary), "template", "delete", name, "--templates-dir",
                                  str(paddock.templates_dir)], capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                left.append(f"{name}: {out.stdout + out.stderr}")
    assert not left, left


def make_deb(dest: Path) -> Path:
    """A package `paddock-e2e-hello` installing /usr/bin/paddock-hello."""
    root = dest / "debroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: paddock-e2e-hello\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: Paddock <e2e@paddock.invalid>\nDescription: e2e test package\n"
    )
    script = root / "usr/bin/paddock-hello"
    script.write_text("#!/bin/sh\necho hello-from-deb\n")
    script.chmod(0o755)
    out = dest / "paddock-e2e-hello_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)],
                   check=True, capture_output=True)
    import shutil
    shutil.rmtree(root)
    return out


def make_wheel(dest: Path) -> Path:
    """A pure-Python wheel `paddockdemo` (module with ANSWER = 42)."""
    name = "paddockdemo-1.0-py3-none-any.whl"
    files = {
        "paddockdemo/__init__.py": b"ANSWER = 42\n",
        "paddockdemo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: paddockdemo\nVersion: 1.0\n",
        "paddockdemo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: paddock-e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append("paddockdemo-1.0.dist-info/RECORD,,")
    out = dest / name
    with zipfile.ZipFile(out, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
        z.writestr("paddockdemo-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return out


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Path:
    ctx = tmp_path_factory.mktemp("context")
    make_deb(ctx)
    make_wheel(ctx)
    (ctx / "app").mkdir()
    (ctx / "app/index.html").write_text("<h1>built by paddock</h1>\n")
    (ctx / "app/notes.txt").write_text("context file\n")
    (ctx / "run.sh").write_text("#!/bin/sh\necho run-script\n")
    return ctx


def recipe(ctx: Path, marker: str = "one") -> Template:
    return (
        Template(file_context_path=str(ctx))
        .from_template("base")
        .run_cmd(APT_OFFLINE, user="root")
        .copy("paddock-e2e-hello_1.0_all.deb", "/tmp/debs/")
        .apt_install(["/tmp/debs/paddock-e2e-hello_1.0_all.deb"])
        .copy("paddockdemo-1.0-py3-none-any.whl", "/tmp/wheels/")
        .pip_install(["/tmp/wheels/paddockdemo-1.0-py3-none-any.whl"])
        .copy("app", "/srv/www/")
        .copy("run.sh", "/usr/local/bin/run-script", user="root", mode=0o755)
        .set_envs({"GREETING": "hello there", "APP_MODE": "test"})
        .set_workdir("/srv/www")
        .run_cmd(f"echo {marker} > marker.txt")
        .set_user("user")
        .set_start_cmd("python3 -m http.server 8000", wait_for_port(8000))
    )


def build(template: Template, name: str, **kwargs) -> List[str]:
    logs: List[str] = []
    Template.build(template, name, on_build_logs=lambda e: logs.append(e.message), **kwargs)
    return logs


@pytest.fixture(scope="module")
def built(context: Path):
    name = unique("sdk-built")
    t0 = time.monotonic()
    logs = build(recipe(context), name, cpu_count=1, memory_mb=512)
    return {"name": name, "logs": logs, "seconds": time.monotonic() - t0}


def run(sbx: Sandbox, cmd: str, **kw) -> str:
    return sbx.commands.run(cmd, **kw).stdout.strip()


def test_sdk_template_has_everything(paddock, built, new_sandbox):
    assert Template.exists(built["name"])
    sbx = new_sandbox(template=built["name"])
    # The start command already listens: the first command finds the server up.
    assert run(sbx, "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/") == "200"
    assert "built by paddock" in run(sbx, "curl -s http://127.0.0.1:8000/index.html")
    assert run(sbx, "paddock-hello") == "hello-from-deb"
    assert run(sbx, "dpkg -s paddock-e2e-hello | grep Status") == "Status: install ok installed"
    assert run(sbx, "python3 -c 'import paddockdemo; print(paddockdemo.ANSWER)'") == "42"
    assert run(sbx, "cat /srv/www/notes.txt") == "context file"
    assert run(sbx, "stat -c %U /srv/www/index.html") == "user"
    assert run(sbx, "stat -c '%U %a' /usr/local/bin/run-script") == "root 755"
    assert run(sbx, "run-script") == "run-script"
    assert run(sbx, "cat marker.txt") == "one"
    assert run(sbx, "pwd") == "/srv/www"
    assert run(sbx, "whoami") == "user"
    assert run(sbx, "echo $GREETING/$APP_MODE") == "hello there/test"
    # A create's own env wins over the template's.
    sbx2 = new_sandbox(template=built["name"], envs={"APP_MODE": "override"})
    assert run(sbx2, "echo $APP_MODE") == "override"
    # Resources recorded with the build apply to its sandboxes.
    info = sbx.get_info()
    assert info.cpu_count == 1 and info.memory_mb == 512
    # The server is reachable from outside through the proxy too.
    r = requests.get(paddock.sandbox_url + "/index.html",
                     headers={"Host": sbx.get_host(8000)}, timeout=10)
    assert r.status_code == 200 and "built by paddock" in r.text


def test_build_logs_name_steps(built):
    logs = "\n".join(built["logs"])
    assert "RUN (as root) " + APT_OFFLINE in logs
    assert "COPY app /srv/www/" in logs
    assert "ready" in logs


def test_build_steps_are_timed_in_metrics(built, api, auth):
    # The built steps (RUN and COPY, not cache hits) are in the node's histogram; in `serve`
    # it is on the API's /metrics.
    text = requests.get(f"{api}/metrics", headers=auth, timeout=10).text
    counts = {}
    for line in text.splitlines():
        for kind in ("run", "copy"):
            if line.startswith(f'paddock_build_step_seconds_count{{kind="{kind}"}} '):
                counts[kind] = float(line.split()[-1])
    assert counts.get("run", 0) >= 1 and counts.get("copy", 0) >= 1, text


def test_unchanged_rebuild_is_a_cache_hit(built, context, api, auth):
    before = requests.get(f"{api}/templates/{built['name']}", headers=auth, timeout=10).json()
    logs = build(recipe(context), built["name"])
    cached = [m for m in logs if m.startswith("CACHED ")]
    # Every file-changing step: RUN, COPY, RUN(apt), COPY, RUN(pip), COPY, COPY, WORKDIR, RUN.
    assert len(cached) == 9, logs
    after = requests.get(f"{api}/templates/{built['name']}", headers=auth, timeout=10).json()
    assert after["buildID"] != "" and after["templateID"] == before["templateID"]


def test_changed_step_rebuilds_from_there(built, context, new_sandbox):
    logs = build(recipe(context, marker="two"), built["name"])
    cached = [m for m in logs if m.startswith("CACHED ")]
    assert len(cached) == 8, logs
    assert any("echo two > marker.txt" in m and not m.startswith("CACHED") for m in logs)
    sbx = new_sandbox(template=built["name"])
    assert run(sbx, "cat marker.txt") == "two"


def test_skip_cache_rebuilds_everything(context):
    name = unique("sdk-nocache")
    t = Template(file_context_path=str(context)).from_template("base").run_cmd("echo a > /tmp/a")
    build(t, name)
    logs = build(t, name, skip_cache=True)
    assert not [m for m in logs if m.startswith("CACHED ")], logs


def test_failing_run_reports_command_code_and_output():
    t = Template().from_template("base").run_cmd("echo first-line").run_cmd(
        "echo boom-output; echo on-stderr >&2; exit 7"
    )
    with pytest.raises(BuildException) as err:
        Template.build(t, unique("sdk-fails"))
    message = str(err.value)
    assert "exit code 7" in message
    assert "echo boom-output" in message
    assert "boom-output" in message.split("exit code 7", 1)[1]
    assert "on-stderr" in message


def test_start_command_that_fails_fails_the_build():
    t = Template().from_template("base").set_start_cmd(
        "echo cannot-start >&2; exit 3", wait_for_port(8123)
    )
    t0 = time.monotonic()
    with pytest.raises(BuildException) as err:
        Template.build(t, unique("sdk-notready"))
    message = str(err.value)
    assert "start command" in message and "exit code 3" in message, message
    assert "cannot-start" in message
    # Reported when the command ends, not after the ready check's timeout.
    assert time.monotonic() - t0 < 60


def test_unknown_image_fails_at_once():
    t = Template().from_image("python:3.12")
    t0 = time.monotonic()
    with pytest.raises(BuildException) as err:
        Template.build(t, unique("sdk-registry"))
    assert "registry" in str(err.value)
    assert time.monotonic() - t0 < 30


def test_default_base_image_is_paddock_base(new_sandbox):
    name = unique("sdk-default")
    build(Template().from_base_image().run_cmd("echo default > /tmp/d"), name)
    sbx = new_sandbox(template=name)
    assert run(sbx, "cat /tmp/d") == "default"


def test_dockerfile_build_through_the_cli(paddock, tmp_path, new_sandbox):
    (tmp_path / "hello.txt").write_text("from the context\n")
    (tmp_path / "Dockerfile").write_text(
        "FROM base\n"
        "ARG WHO=world\n"
        "ENV GREETING=\"hello ${WHO}\"\n"
        "WORKDIR /opt/app\n"
        "COPY hello.txt ./\n"
        "RUN echo built > built.txt && \\\n"
        "    cat hello.txt >> built.txt\n"
        "USER user\n"
        "CMD [\"python3\", \"-m\", \"http.server\", \"8001\"]\n"
    )
    name = unique("cli-built")
    env = {**os.environ, **paddock.client_env()}
    out = subprocess.run(
        [paddock.binary, "template", "build", "--name", name, "--build-arg", "WHO=cli",
         "--ready-cmd", "[ -n \"$(ss -Htln sport = :8001)\" ]", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    sbx = new_sandbox(template=name)
    assert run(sbx, "cat /opt/app/built.txt") == "built\nfrom the context"
    assert run(sbx, "echo $GREETING") == "hello cli"
    assert run(sbx, "whoami") == "user"
    assert run(sbx, "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8001/") == "200"
    listed = subprocess.run([paddock.binary, "template", "list"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0
    assert "buildcache-" not in listed.stdout


def oci_layer(files: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_oci_archive_as_base(paddock, tmp_path, new_sandbox):
    """An OCI layout archive made here: the base template's files (exported through a
    sandbox) as layer 1, a layer adding files as layer 2 and a whiteout deleting one of them
    in layer 3."""
    # Layer 1: a small root filesystem: the base template's files through a sandbox's tar.
    sbx = Sandbox.create("base")
    try:
        sbx.commands.run(
            "sudo tar --numeric-owner -C / -cf /tmp/root.tar "
            "--exclude=./proc --exclude=./sys --exclude=./dev --exclude=./tmp "
            "--exclude=./run --exclude=./usr/share/doc --exclude=./usr/share/locale "
            "--exclude=./var/cache --exclude=./var/lib/apt . || [ $? -eq 1 ]",
            timeout=300,
        )
        root_tar = sbx.files.read("/tmp/root.tar", format="bytes")
    finally:
        sbx.kill()
    layers = [
        bytes(root_tar),
        oci_layer({"opt/oci/keep.txt": b"kept\n", "opt/oci/gone.txt": b"deleted later\n"}),
        oci_layer({"opt/oci/.wh.gone.txt": b""}),
    ]
    layout = tmp_path / "layout"
    blobs = layout / "blobs/sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    diff_ids = [f"sha256:{hashlib.sha256(d).hexdigest()}" for d in layers]
    layer_descs = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(d)} for d in layers]
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
        "layers": layer_descs,
    }).encode()
    (layout / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **blob(manifest)}],
    }))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    # Archives a build may start from live in <data-dir>/images.
    images = paddock.data_dir / "images"
    images.mkdir(exist_ok=True)
    archive = images / "image.tar"
    with tarfile.open(archive, "w") as tar:
        for p in sorted(layout.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(layout)), recursive=False)

    name = unique("oci-based")
    build(Template().from_image(str(archive)).run_cmd("cat /opt/oci/keep.txt > /tmp/seen"), name)
    sbx = new_sandbox(template=name)
    assert run(sbx, "cat /opt/oci/keep.txt") == "kept"
    assert run(sbx, "cat /tmp/seen") == "kept"
    assert run(sbx, "test -e /opt/oci/gone.txt && echo present || echo absent") == "absent"
    # An archive outside <data-dir>/images is refused.
    outside = tmp_path / "image.tar"
    outside.write_bytes(archive.read_bytes())
    with pytest.raises(BuildException) as err:
        build(Template().from_image(str(outside)), unique("oci-outside"))
    assert "images" in str(err.value)


def test_cache_clear_through_the_cli(paddock, new_sandbox):
    """`paddock template cache-clear` empties the build cache; templates keep their files."""
    name = unique("sdk-cleared")
    t = Template().from_template("base").run_cmd("echo kept > /tmp/kept")
    build(t, name)
    env = {**os.environ, **paddock.client_env()}
    out = subprocess.run([str(paddock.binary), "template", "cache-clear",
                          "--templates-dir", str(paddock.templates_dir)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "deleted" in out.stdout
    sbx = new_sandbox(template=name)
    assert run(sbx, "cat /tmp/kept") == "kept"
    logs = build(t, name)
    assert not [m for m in logs if m.startswith("CACHED ")], logs


def test_tags_keep_builds_apart(new_sandbox):
    """`name:tag` builds stay apart; tags are assigned, listed and removed through the SDK."""
    from e2b import SandboxException

    name = unique("sdk-tags")

    def version(tag: str, content: str):
        t = Template().from_template("base").run_cmd(f"echo {content} > /tmp/version")
        return Template.build(t, f"{name}:{tag}" if tag else name)

    def content(ref: str) -> str:
        sbx = new_sandbox(template=ref)
        assert sbx.get_info().template_id == name, "sandboxes show the template's name"
        return run(sbx, "cat /tmp/version")

    v1 = version("v1", "one")
    v2 = version("v2", "two")
    assert v1.build_id != v2.build_id
    assert content(f"{name}:v1") == "one"
    assert content(f"{name}:v2") == "two"
    # Only tagged builds so far: `name` means `name:default`, which names nothing yet.
    with pytest.raises(SandboxException) as err:
        Sandbox.create(template=name)
    assert "not found" in str(err.value)

    info = Template.assign_tags(f"{name}:v1", ["stable"])
    assert (info.build_id, info.tags) == (v1.build_id, ["stable"])
    assert content(f"{name}:stable") == "one"
    tags = {t.tag: t.build_id for t in Template.get_tags(name)}
    assert tags == {"v1": v1.build_id, "v2": v2.build_id, "stable": v1.build_id}

    # An untagged build is `default`; assigning `default` to v2 makes `name` v2.
    latest = version("", "three")
    assert content(name) == "three"
    assert content(f"{name}:{latest.build_id}") == "three", "a build id works as a tag"
    assert content(f"{name}:v1") == "one", "older builds keep their files"
    Template.assign_tags(f"{name}:v2", "default")
    assert content(name) == "two"
    # No tag names the newest build any more: it is gone with its files.
    with pytest.raises(SandboxException):
        Sandbox.create(template=f"{name}:{latest.build_id}")

    Template.remove_tags(name, "stable")
    with pytest.raises(SandboxException):
        Sandbox.create(template=f"{name}:stable")
    assert content(f"{name}:v1") == "one"
    with pytest.raises(SandboxException):
        Template.remove_tags(name, "never-assigned")
    tags = {t.tag: t.build_id for t in Template.get_tags(name)}
    assert tags == {"v1": v1.build_id, "v2": v2.build_id, "default": v2.build_id}


def test_concurrent_builds_of_the_same_steps_share_the_cache(new_sandbox):
    """Two builds racing through identical (uncached) steps both succeed, on one cached layer."""
    import threading

    marker = uuid.uuid4().hex
    t = Template().from_template("base").run_cmd(f"echo {marker} > /tmp/race && sleep 1")
    names = [unique("sdk-race"), unique("sdk-race")]
    errors: List[BaseException] = []
    logs: List[str] = []

    def go(name: str) -> None:
        try:
            logs.extend(build(t, name))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(n,)) for n in names]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not errors, errors
    # Both ran the step at once (one kept its layer, the other used it), or the second found
    # the first's in the cache.
    assert any("another build made this step meanwhile" in m or m.startswith("CACHED ")
               for m in logs), logs
    for name in names:
        sbx = new_sandbox(template=name)
        assert run(sbx, "cat /tmp/race") == marker
