"""`sandbox.files`: read/write (text and 50 MiB binary), list, exists, get_info, rename, remove,
make_dir, ownership and watch_dir, through the official SDK."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from e2b import FileType, FilesystemEventType, NotFoundException, SandboxException

HOME = "/home/user"


def test_write_and_read_text(sbx):
    info = sbx.files.write(f"{HOME}/hello.txt", "hello world\nšašo\n")
    assert info.path == f"{HOME}/hello.txt"
    assert info.name == "hello.txt"
    assert sbx.files.read(f"{HOME}/hello.txt") == "hello world\nšašo\n"
    # What the SDK wrote is what a process inside sees.
    assert sbx.commands.run(f"cat {HOME}/hello.txt").stdout == "hello world\nšašo\n"


def test_relative_paths_resolve_against_home(sbx):
    sbx.files.write("relative.txt", "rel")
    assert sbx.commands.run("cat /home/user/relative.txt").stdout == "rel"
    assert sbx.files.read("/home/user/relative.txt") == "rel"


def test_overwrite_truncates(sbx):
    sbx.files.write(f"{HOME}/over.txt", "a much longer first version")
    sbx.files.write(f"{HOME}/over.txt", "short")
    assert sbx.files.read(f"{HOME}/over.txt") == "short"


def test_write_creates_parent_directories(sbx):
    sbx.files.write(f"{HOME}/deep/er/still/file.txt", "x")
    assert sbx.files.read(f"{HOME}/deep/er/still/file.txt") == "x"
    assert sbx.files.get_info(f"{HOME}/deep/er").type == FileType.DIR


def test_binary_50mib_round_trip(sbx):
    data = os.urandom(50 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()
    sbx.files.write(f"{HOME}/big.bin", data)
    # Inside the sandbox the bytes are exactly what was uploaded...
    r = sbx.commands.run(f"sha256sum {HOME}/big.bin; stat -c %s {HOME}/big.bin")
    assert r.stdout.split() == [digest, f"{HOME}/big.bin", str(len(data))]
    # ...and they come back unchanged.
    back = sbx.files.read(f"{HOME}/big.bin", format="bytes")
    assert len(back) == len(data)
    assert hashlib.sha256(back).hexdigest() == digest
    sbx.files.remove(f"{HOME}/big.bin")


def test_binary_all_byte_values(sbx):
    data = bytes(range(256)) * 64
    sbx.files.write(f"{HOME}/bytes.bin", data)
    assert bytes(sbx.files.read(f"{HOME}/bytes.bin", format="bytes")) == data


def test_read_stream(sbx):
    data = os.urandom(3 * 1024 * 1024 + 17)
    sbx.files.write(f"{HOME}/stream.bin", data)
    chunks = sbx.files.read(f"{HOME}/stream.bin", format="stream")
    assert b"".join(chunks) == data


def test_read_missing_file(sbx):
    with pytest.raises(NotFoundException):
        sbx.files.read(f"{HOME}/no-such-file")


def test_list(sbx):
    base = f"{HOME}/listing"
    sbx.files.make_dir(base)
    sbx.files.write(f"{base}/a.txt", "aaaaa")
    sbx.files.make_dir(f"{base}/sub")
    sbx.files.write(f"{base}/sub/nested.txt", "n")
    entries = {e.name: e for e in sbx.files.list(base)}
    assert set(entries) == {"a.txt", "sub"}
    assert entries["a.txt"].type == FileType.FILE
    assert entries["a.txt"].size == 5
    assert entries["a.txt"].path == f"{base}/a.txt"
    assert entries["sub"].type == FileType.DIR
    deep = {e.path for e in sbx.files.list(base, depth=2)}
    assert deep == {f"{base}/a.txt", f"{base}/sub", f"{base}/sub/nested.txt"}


def test_list_missing_dir(sbx):
    with pytest.raises(NotFoundException):
        sbx.files.list(f"{HOME}/missing-dir")


def test_exists(sbx):
    sbx.files.write(f"{HOME}/exists.txt", "1")
    assert sbx.files.exists(f"{HOME}/exists.txt") is True
    assert sbx.files.exists(f"{HOME}") is True
    assert sbx.files.exists(f"{HOME}/nope.txt") is False


def test_get_info(sbx):
    sbx.files.write(f"{HOME}/info.txt", "12345678")
    info = sbx.files.get_info(f"{HOME}/info.txt")
    assert info.name == "info.txt"
    assert info.type == FileType.FILE
    assert info.size == 8
    assert info.permissions.startswith("-rw")
    assert abs(info.modified_time.timestamp() - time.time()) < 300


def test_rename(sbx):
    sbx.files.write(f"{HOME}/before.txt", "moving")
    entry = sbx.files.rename(f"{HOME}/before.txt", f"{HOME}/moved/after.txt")
    assert entry.path == f"{HOME}/moved/after.txt"
    assert sbx.files.exists(f"{HOME}/before.txt") is False
    assert sbx.files.read(f"{HOME}/moved/after.txt") == "moving"


def test_rename_missing_source(sbx):
    with pytest.raises(NotFoundException):
        sbx.files.rename(f"{HOME}/ghost.txt", f"{HOME}/ghost2.txt")


def test_remove_file_and_tree(sbx):
    sbx.files.write(f"{HOME}/rm/a/b.txt", "x")
    sbx.files.write(f"{HOME}/rm/c.txt", "x")
    sbx.files.remove(f"{HOME}/rm/c.txt")
    assert sbx.files.exists(f"{HOME}/rm/c.txt") is False
    sbx.files.remove(f"{HOME}/rm")
    assert sbx.files.exists(f"{HOME}/rm") is False
    # Removing what is not there is not an error.
    sbx.files.remove(f"{HOME}/rm")


def test_make_dir(sbx):
    assert sbx.files.make_dir(f"{HOME}/newdir/with/parents") is True
    assert sbx.files.get_info(f"{HOME}/newdir/with/parents").type == FileType.DIR
    assert sbx.files.make_dir(f"{HOME}/newdir/with/parents") is False


def test_make_dir_over_a_file(sbx):
    sbx.files.write(f"{HOME}/plainfile", "x")
    with pytest.raises(SandboxException):
        sbx.files.make_dir(f"{HOME}/plainfile")


def test_ownership_is_user_by_default(sbx):
    sbx.files.write(f"{HOME}/owned/by/user.txt", "mine")
    sbx.files.make_dir(f"{HOME}/owned-dir")
    for path in (f"{HOME}/owned/by/user.txt", f"{HOME}/owned/by", f"{HOME}/owned-dir"):
        info = sbx.files.get_info(path)
        assert info.owner == "user", path
        assert info.group == "user", path
    stat = sbx.commands.run(f"stat -c '%U:%G' {HOME}/owned/by/user.txt {HOME}/owned").stdout
    assert stat.split() == ["user:user", "user:user"]
    # The default user can modify what it was given.
    sbx.commands.run(f"echo more >> {HOME}/owned/by/user.txt")


def test_write_as_root_to_root_home(sbx):
    sbx.files.write("/root/secret.txt", "root only", user="root")
    assert sbx.files.get_info("/root/secret.txt", user="root").owner == "root"
    assert sbx.files.read("/root/secret.txt", user="root") == "root only"
    assert sbx.commands.run("stat -c %U /root/secret.txt", user="root").stdout == "root\n"


def test_watch_dir_sees_created_file(sbx):
    watched = f"{HOME}/watched"
    sbx.files.make_dir(watched)
    handle = sbx.files.watch_dir(watched)
    try:
        sbx.files.write(f"{watched}/new.txt", "hi")
        sbx.commands.run(f"echo more >> {watched}/new.txt; rm {watched}/new.txt")
        events = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            events += handle.get_new_events()
            kinds = {(e.name, e.type) for e in events}
            if ("new.txt", FilesystemEventType.REMOVE) in kinds:
                break
            time.sleep(0.2)
        kinds = {(e.name, e.type) for e in events}
        assert ("new.txt", FilesystemEventType.CREATE) in kinds, events
        assert ("new.txt", FilesystemEventType.WRITE) in kinds, events
        assert ("new.txt", FilesystemEventType.REMOVE) in kinds, events
    finally:
        handle.stop()


def test_watch_missing_dir(sbx):
    with pytest.raises(NotFoundException):
        sbx.files.watch_dir(f"{HOME}/not-watched")


@pytest.mark.parametrize(
    "path,marker",
    [
        ("/proc/self/status", "Name:"),
        ("/proc/cpuinfo", "processor"),
        ("/proc/self/mountinfo", " / "),
        ("/sys/devices/system/cpu/online", "0"),
    ],
)
def test_read_proc_and_sys_files(sbx, path, marker):
    # procfs reports a size of 0 and sysfs 4096 whatever the content: the read goes to the end.
    text = sbx.files.read(path)
    assert text, f"{path} read empty"
    assert marker in text
    if path.startswith("/sys/"):
        assert text == sbx.commands.run(f"cat {path}").stdout
    assert sbx.files.read(path, format="bytes") != b""


def test_read_with_and_without_gzip(sbx):
    # The SDK's HTTP client asks for gzip; a request without it gets the identity body.
    import requests

    text = "compressible line\n" * 20000
    sbx.files.write(f"{HOME}/gz.txt", text)
    url = sbx.download_url(f"{HOME}/gz.txt")
    route = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}
    gz = requests.get(url, headers={**route, "Accept-Encoding": "gzip"}, timeout=30)
    assert gz.status_code == 200, gz.text
    assert gz.headers["content-encoding"] == "gzip"
    assert gz.text == text
    plain = requests.get(url, headers={**route, "Accept-Encoding": "identity"}, timeout=30)
    assert plain.status_code == 200, plain.text
    assert "content-encoding" not in plain.headers
    assert plain.headers["content-length"] == str(len(text))
    assert plain.text == text
