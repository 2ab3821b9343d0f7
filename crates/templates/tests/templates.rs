//! Integration tests of the template store's public API: importing rootfs tarballs (tar,
//! tar.zst, tar.gz) with their special files into layers, listing and deleting templates.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

use paddock_domain::TemplateName;
use paddock_templates::{TemplateError, TemplateSource, TemplateStore};
use tar::{EntryType, Header};

fn name(s: &str) -> TemplateName {
    TemplateName::parse(s).expect("valid template name")
}

fn header(path: &str, kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_path(path).expect("path");
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// A docker-export-like root filesystem: `bin -> usr/bin`, an executable with a hard link, a
/// file owned by uid 1000, a read-only directory with a child, a device node; no `user`.
fn rootfs_tar(prefix: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add =
        |path: &str, kind: EntryType, mode: u32, data: &[u8], tweak: &dyn Fn(&mut Header)| {
            let mut h = header(&format!("{prefix}{path}"), kind, mode, data.len() as u64);
            tweak(&mut h);
            h.set_cksum();
            b.append(&h, data).expect("append");
        };
    let none = |_: &mut Header| {};
    add("etc/", EntryType::Directory, 0o755, b"", &none);
    add(
        "etc/passwd",
        EntryType::Regular,
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n",
        &none,
    );
    add("etc/group", EntryType::Regular, 0o644, b"root:x:0:", &none);
    add("usr/bin/", EntryType::Directory, 0o755, b"", &none);
    add(
        "usr/bin/tool",
        EntryType::Regular,
        0o755,
        b"#!/bin/sh\necho tool\n",
        &none,
    );
    let link = format!("{prefix}usr/bin/tool");
    add("usr/bin/tool-hard", EntryType::Link, 0o755, b"", &|h| {
        h.set_link_name(&link).expect("link")
    });
    add("bin", EntryType::Symlink, 0o777, b"", &|h| {
        h.set_link_name("usr/bin").expect("link")
    });
    add("data/owned.txt", EntryType::Regular, 0o600, b"mine", &|h| {
        h.set_uid(1000);
        h.set_gid(1000);
    });
    add("ro/", EntryType::Directory, 0o555, b"", &none);
    add("ro/inside", EntryType::Regular, 0o444, b"x", &none);
    add("dev/null", EntryType::Char, 0o666, b"", &|h| {
        h.set_device_major(1).expect("major");
        h.set_device_minor(3).expect("minor");
    });
    b.into_inner().expect("finish")
}

fn check_rootfs(rootfs: &Path) {
    let tool = rootfs.join("usr/bin/tool");
    let meta = std::fs::metadata(&tool).expect("tool");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::read_to_string(&tool).expect("read"),
        "#!/bin/sh\necho tool\n"
    );
    let hard = std::fs::metadata(rootfs.join("usr/bin/tool-hard")).expect("hard link");
    assert_eq!(hard.ino(), meta.ino(), "hard link shares the inode");
    assert_eq!(
        std::fs::read_link(rootfs.join("bin")).expect("symlink"),
        Path::new("usr/bin")
    );
    // Stored shifted into the sandboxes' id range: uid 1000 inside is BASE + 1000 on the host.
    const BASE: u32 = paddock_sandbox::idmap::IdMap::DEFAULT.base;
    let owned = std::fs::metadata(rootfs.join("data/owned.txt")).expect("owned");
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o777),
        (BASE + 1000, BASE + 1000, 0o600)
    );
    assert_eq!(std::fs::metadata(rootfs).expect("root").uid(), BASE);
    let ro = std::fs::metadata(rootfs.join("ro")).expect("ro");
    assert_eq!(ro.mode() & 0o777, 0o555);
    assert!(rootfs.join("ro/inside").is_file());
    assert!(
        !rootfs.join("dev/null").exists(),
        "device nodes are skipped"
    );

    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("passwd");
    assert!(passwd.contains("\nuser:x:1000:1000:"), "{passwd}");
    let group = std::fs::read_to_string(rootfs.join("etc/group")).expect("group");
    assert_eq!(group, "root:x:0:\nuser:x:1000:\n");
    let home = std::fs::metadata(rootfs.join("home/user")).expect("home");
    assert!(home.is_dir());
    assert_eq!((home.uid(), home.gid()), (BASE + 1000, BASE + 1000));
    assert!(rootfs.join("run/paddock").is_dir());
    assert_eq!(
        std::fs::metadata(rootfs.join("tmp")).expect("tmp").mode() & 0o7777,
        0o1777
    );
}

fn ls(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The store holds exactly the `expected` templates (no build leftovers) and their layers
/// with their id-shift markers (no layer of a deleted or failed template).
fn only_templates_left(store: &TemplateStore, expected: &[&str]) {
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.push(".layers".into());
    want.sort();
    assert_eq!(ls(store.root()), want, "no build leftovers");
    let mut layers = Vec::new();
    for t in store.list().expect("list") {
        for layer in &t.layers {
            assert_eq!(layer.parent(), Some(store.layers_dir().as_path()));
            let id = layer
                .file_name()
                .expect("id")
                .to_string_lossy()
                .into_owned();
            layers.push(format!(".{id}.idmap"));
            layers.push(id);
        }
    }
    layers.sort();
    // Lease lock files stay beside live layers (they go with their layer).
    let found: Vec<String> = ls(&store.layers_dir())
        .into_iter()
        .filter(|n| !n.ends_with(".lease"))
        .collect();
    assert_eq!(found, layers, "no unused layers");
}

#[tokio::test]
async fn import_tar_and_zst_then_list_and_delete() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = TemplateStore::open(tmp.path().join("templates")).expect("open");
    let tar_path = tmp.path().join("rootfs.tar");
    std::fs::write(&tar_path, rootfs_tar("")).expect("write tar");
    // zstd with a misleading name: the format comes from the magic bytes.
    let zst_path = tmp.path().join("rootfs.img");
    let zst = zstd::encode_all(&rootfs_tar("./")[..], 3).expect("zstd");
    std::fs::write(&zst_path, zst).expect("write zst");

    let lines = Mutex::new(Vec::<String>::new());
    let progress = |l: &str| lines.lock().expect("lock").push(l.to_string());
    let plain = store
        .import(&name("plain"), &tar_path, &progress)
        .await
        .expect("import tar");
    check_rootfs(plain.top_layer());
    assert_eq!(plain.layers.len(), 1);
    assert_eq!(
        plain.top_layer().parent(),
        Some(tmp.path().join("templates/.layers").as_path())
    );
    assert!(paddock_sandbox::idmap::is_shifted(
        plain.top_layer(),
        &paddock_sandbox::idmap::IdMap::DEFAULT
    ));
    assert!(matches!(&plain.source, TemplateSource::Import { format, .. } if format == "tar"));
    let seen = lines.lock().expect("lock").join("\n");
    assert!(seen.contains("[plain] added account 'user'"), "{seen}");
    assert!(seen.contains("skipped 1 device nodes"), "{seen}");

    let zstd = store
        .import(&name("zstd"), &zst_path, &progress)
        .await
        .expect("import zst");
    check_rootfs(zstd.top_layer());
    assert_ne!(zstd.top_layer(), plain.top_layer());
    assert!(matches!(&zstd.source, TemplateSource::Import { format, .. } if format == "tar.zst"));

    let listed: Vec<String> = store
        .list()
        .expect("list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(listed, ["plain", "zstd"]);
    let got = store.get(&name("zstd")).expect("get").expect("exists");
    assert_eq!(got, zstd);
    // A fresh store over the same directory sees the same templates.
    let reopened = TemplateStore::open(tmp.path().join("templates")).expect("reopen");
    assert_eq!(
        reopened.get(&name("plain")).expect("get"),
        Some(plain.clone())
    );

    let again = store.import(&name("plain"), &tar_path, &progress).await;
    assert!(
        matches!(again, Err(TemplateError::AlreadyExists(_))),
        "{again:?}"
    );

    assert!(store.delete(&name("plain")).expect("delete"));
    assert!(!store.delete(&name("plain")).expect("delete twice"));
    assert_eq!(store.get(&name("plain")).expect("get"), None);
    assert!(!plain.top_layer().exists(), "its layer went with it");
    only_templates_left(&store, &["zstd"]);
}

#[tokio::test]
async fn import_gzip_wrapped_in_a_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = TemplateStore::open(tmp.path().join("t")).expect("open");
    let path = tmp.path().join("rootfs.tgz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &rootfs_tar("rootfs/")).expect("gzip");
    std::fs::write(&path, gz.finish().expect("gzip")).expect("write");
    let t = store
        .import(&name("wrapped"), &path, &|_| {})
        .await
        .expect("import tgz");
    check_rootfs(t.top_layer());
}

#[tokio::test]
async fn bad_archives_fail_without_leftovers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("t");
    let store = TemplateStore::open(&root).expect("open");

    let garbage = tmp.path().join("garbage.tar");
    std::fs::write(&garbage, vec![7u8; 4096]).expect("write");
    let err = store
        .import(&name("g"), &garbage, &|_| {})
        .await
        .expect_err("garbage");
    assert!(
        matches!(err, TemplateError::InvalidArchive { .. }),
        "{err:?}"
    );

    // No /etc/passwd: not a root filesystem.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header("hello.txt", EntryType::Regular, 0o644, 2);
    h.set_cksum();
    b.append(&h, &b"hi"[..]).expect("append");
    let no_passwd = tmp.path().join("nopasswd.tar");
    std::fs::write(&no_passwd, b.into_inner().expect("finish")).expect("write");
    let err = store
        .import(&name("n"), &no_passwd, &|_| {})
        .await
        .expect_err("no passwd");
    assert!(
        err.to_string().starts_with("not a root filesystem"),
        "{err}"
    );

    // A symlink to an absolute host path, then a file through it: must not write outside.
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header("escape", EntryType::Symlink, 0o777, 0);
    h.set_link_name(&outside).expect("link");
    h.set_cksum();
    b.append(&h, &b""[..]).expect("append");
    let mut h = header("escape/pwned", EntryType::Regular, 0o644, 1);
    h.set_cksum();
    b.append(&h, &b"x"[..]).expect("append");
    let escaping = tmp.path().join("escape.tar");
    std::fs::write(&escaping, b.into_inner().expect("finish")).expect("write");
    let err = store
        .import(&name("e"), &escaping, &|_| {})
        .await
        .expect_err("escape");
    assert!(matches!(err, TemplateError::Unpack { .. }), "{err:?}");
    assert!(!outside.join("pwned").exists());

    assert!(store.list().expect("list").is_empty());
    only_templates_left(&store, &[]);
}

#[tokio::test]
async fn concurrent_imports_of_one_name_register_it_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = TemplateStore::open(tmp.path().join("t")).expect("open");
    let path = tmp.path().join("rootfs.tar");
    std::fs::write(&path, rootfs_tar("")).expect("write");
    let n = name("twice");
    let other = store.clone();
    let quiet = |_: &str| {};
    let (a, b) = tokio::join!(
        store.import(&n, &path, &quiet),
        other.import(&n, &path, &quiet)
    );
    let results = [a, b];
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(TemplateError::AlreadyExists(_)))));
    only_templates_left(&store, &["twice"]);
}
