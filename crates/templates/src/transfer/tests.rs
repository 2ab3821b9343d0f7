use super::*;
use crate::{TemplateConfig, TemplateSource};
use paddock_domain::Resources;
use paddock_sandbox::xattr::set_xattr;
use std::ffi::CString;
use std::os::unix::fs::{symlink, PermissionsExt};

const MAP: IdMap = IdMap::DEFAULT;

fn name(s: &str) -> TemplateName {
    TemplateName::parse(s).expect("valid name")
}

fn meta(n: &str) -> TemplateMeta {
    TemplateMeta {
        name: name(n),
        resources: Resources::default(),
        created_at: chrono::Utc::now(),
        source: TemplateSource::Build {
            base: "template:base".into(),
            key: "k".into(),
        },
        config: TemplateConfig {
            start_cmd: Some("serve".into()),
            ..TemplateConfig::default()
        },
    }
}

fn xattr(path: &Path, key: &str, value: &[u8]) {
    let key = CString::new(key).expect("name");
    set_xattr(path, &key, value).expect("setxattr");
}

fn own(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(MAP.to_host(uid)), Some(MAP.to_host(uid))).expect("chown");
}

/// A layer of `store` with one of everything a layer holds, stored as a build leaves it (owners
/// in the id range, marker beside it), published as template `n`.
fn sample_template(store: &TemplateStore, n: &str) -> Template {
    let id = store.new_layer_id().expect("id");
    let root = store.layer_path(&id);
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    std::fs::create_dir_all(root.join("home/user/opaque")).expect("mkdir");
    std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").expect("write");
    std::fs::write(root.join("home/user/data.bin"), vec![7u8; 300_000]).expect("write");
    std::fs::hard_link(
        root.join("home/user/data.bin"),
        root.join("home/user/data-link"),
    )
    .expect("link");
    symlink("/etc/passwd", root.join("home/user/passwd-link")).expect("symlink");
    let sudo = root.join("etc/sudo");
    std::fs::write(&sudo, "#!/bin/sh\n").expect("write");
    nix::sys::stat::mknod(
        &root.join("home/user/gone"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .expect("whiteout");
    xattr(
        &root.join("home/user/opaque"),
        "trusted.overlay.opaque",
        b"y",
    );
    xattr(&root.join("etc/passwd"), "user.note", b"kept");
    // Dropped on the way (the tree copier keeps it; a layer in transit does not).
    xattr(&root.join("etc/passwd"), "trusted.overlay.origin", b"x");
    for p in [
        root.clone(),
        root.join("etc"),
        root.join("etc/passwd"),
        root.join("home"),
        root.join("home/user/gone"),
    ] {
        own(&p, 0);
    }
    for p in [
        "home/user",
        "home/user/opaque",
        "home/user/data.bin",
        "home/user/passwd-link",
    ] {
        own(&root.join(p), 1000);
    }
    own(&sudo, 0);
    std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    std::fs::write(
        paddock_sandbox::idmap::marker_path(&root).expect("marker"),
        format!("{} {}\n", MAP.base, MAP.size),
    )
    .expect("marker");
    assert!(paddock_sandbox::idmap::is_shifted(&root, &MAP));
    // Every entry from a fixed past second, so a time the transfer does not carry shows
    // (one left to "now" would otherwise match unless a second ticked meanwhile).
    age(&root);
    store.publish(&[root], &meta(n)).expect("publish")
}

/// Sets the time of `path` and everything below it to 2020-09-13 (children first).
fn age(path: &Path) {
    let meta = std::fs::symlink_metadata(path).expect("stat");
    if meta.is_dir() {
        for e in std::fs::read_dir(path).expect("dir") {
            age(&e.expect("entry").path());
        }
    }
    super::set_mtime(path, 1_600_000_000).expect("utimensat");
}

/// Everything the module docs say travels, of every entry below `root`.
fn describe(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let m = std::fs::symlink_metadata(&path).expect("stat");
        let mut line = format!(
            "{} {:o} {}:{} {} rdev={}",
            rel.display(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime(),
            m.rdev()
        );
        if m.is_file() {
            line += &format!(
                " {} {}",
                m.len(),
                hex(&Sha256::digest(std::fs::read(&path).expect("read")))
            );
        }
        if m.file_type().is_symlink() {
            line += &format!(
                " -> {}",
                std::fs::read_link(&path).expect("readlink").display()
            );
        }
        for x in list_xattrs(&path).expect("xattrs") {
            let v = get_xattr(&path, &x).expect("get").unwrap_or_default();
            line += &format!(" {}={}", x.to_string_lossy(), String::from_utf8_lossy(&v));
        }
        out.push(line);
        if m.is_dir() {
            for e in std::fs::read_dir(&path).expect("ls") {
                stack.push(rel.join(e.expect("entry").file_name()));
            }
        }
    }
    out.sort();
    out
}

/// A store in a directory of its own (kept with it).
fn store() -> (tempfile::TempDir, TemplateStore) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = TemplateStore::open(dir.path()).expect("store");
    (dir, store)
}

fn export(store: &TemplateStore, digest: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    store.export_layer(digest, &mut bytes).expect("export");
    bytes
}

#[test]
fn a_layer_travels_whole_and_keeps_its_digest() {
    let ((_a_dir, a), (_b_dir, b)) = (store(), store());
    let t = sample_template(&a, "app");
    let manifest = a.manifest(&name("app")).expect("manifest").expect("exists");
    assert_eq!(manifest.meta.config.start_cmd.as_deref(), Some("serve"));
    assert_eq!(manifest.layers.len(), 1);
    let digest = manifest.layers[0].digest.clone();
    assert!(is_digest(&digest), "{digest}");
    // Cached beside the layer, and the same when computed again.
    let id = t.layers[0]
        .file_name()
        .and_then(OsStr::to_str)
        .expect("id")
        .to_string();
    assert_eq!(a.find_layer(&digest).expect("find"), Some(id.clone()));
    std::fs::remove_file(a.layers_dir().join(format!(".{id}.digest"))).expect("rm");
    assert_eq!(a.layer_digest(&id).expect("digest"), manifest.layers[0]);

    let bytes = export(&a, &digest);
    assert_eq!(bytes.len() as u64, manifest.layers[0].size);
    assert_eq!(
        b.missing_layers(std::slice::from_ref(&digest))
            .expect("missing"),
        vec![digest.clone()]
    );
    let (lease, stats) = b.import_layer(&digest, bytes.as_slice()).expect("import");
    assert_eq!(stats.bytes, bytes.len() as u64);
    let installed = b
        .install(&manifest.meta, std::slice::from_ref(&digest))
        .expect("install");
    drop(lease);
    assert!(b
        .missing_layers(std::slice::from_ref(&digest))
        .expect("missing")
        .is_empty());
    assert_eq!(installed.config.start_cmd.as_deref(), Some("serve"));

    // The same files, owners, modes, times, links, whiteout and kept xattrs; not the origin.
    let (want, got) = (describe(&t.layers[0]), describe(&installed.layers[0]));
    let want: Vec<String> = want
        .into_iter()
        .map(|l| l.replace(" trusted.overlay.origin=x", ""))
        .collect();
    assert_eq!(want, got);
    let data =
        std::fs::symlink_metadata(installed.layers[0].join("home/user/data.bin")).expect("stat");
    assert_eq!(data.nlink(), 2, "the hard link stays a hard link");
    assert!(paddock_sandbox::idmap::is_shifted(
        &installed.layers[0],
        &MAP
    ));
    // The received layer gives the same stream, so the same digest.
    assert_eq!(export(&b, &digest), bytes);
    // Receiving it again unpacks nothing; a collection keeps it (the template names it).
    let (_, again) = b.import_layer(&digest, bytes.as_slice()).expect("again");
    assert_eq!(again, ImportStats::default());
    b.collect_garbage().expect("gc");
    assert!(installed.layers[0].is_dir());
    // Deleting the template removes the layer and its digest file.
    assert!(b.delete(&name("app")).expect("delete"));
    assert!(!installed.layers[0].exists());
    assert_eq!(b.find_layer(&digest).expect("find"), None);
    let hex_id = &digest[DIGEST_PREFIX.len()..];
    assert!(!b.layers_dir().join(format!(".{hex_id}.digest")).exists());
}

#[test]
fn a_stream_that_does_not_hash_to_its_digest_leaves_nothing() {
    let ((_a_dir, a), (b_dir, b)) = (store(), store());
    sample_template(&a, "app");
    let digest = a.manifest(&name("app")).expect("m").expect("exists").layers[0]
        .digest
        .clone();
    let mut bytes = export(&a, &digest);
    // A byte of data.bin's content (all 7s) changed.
    let at = bytes
        .windows(64)
        .position(|w| w.iter().all(|b| *b == 7))
        .expect("content");
    bytes[at] = 8;
    let err = b
        .import_layer(&digest, bytes.as_slice())
        .expect_err("refused");
    assert!(matches!(err, TemplateError::Transfer { .. }), "{err}");
    assert!(
        b.missing_layers(std::slice::from_ref(&digest))
            .expect("missing")
            .len()
            == 1
    );
    let left: Vec<_> = std::fs::read_dir(b_dir.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from(".layers")], "{left:?}");
    assert_eq!(std::fs::read_dir(b.layers_dir()).expect("ls").count(), 0);
    // Not a digest at all.
    assert!(matches!(
        b.import_layer("sha256:xyz", &b""[..]),
        Err(TemplateError::Transfer { .. })
    ));
    assert!(matches!(
        b.export_layer(&digest, io::sink()),
        Err(TemplateError::UnknownLayer(_))
    ));
}

/// A stream of `entries` (built by `f`) as a sender could forge it.
fn forged(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut root = Header::new_gnu();
    root.set_entry_type(EntryType::Directory);
    root.set_mode(0o755);
    b.append_data(&mut root, ".", io::empty()).expect("root");
    f(&mut b);
    b.into_inner().expect("tar")
}

fn header(kind: EntryType, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size);
    h
}

#[test]
fn forged_streams_cannot_reach_outside_the_layer() {
    let outside = tempfile::tempdir().expect("tmp");
    let target = outside.path().to_path_buf();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dot-dot",
            forged(|b| {
                let mut h = header(EntryType::Regular, 1);
                // `append_data` refuses `..`: write the name into the header directly.
                h.as_gnu_mut().expect("gnu").name[..9].copy_from_slice(b"../escape");
                h.set_cksum();
                b.append(&h, &b"x"[..]).expect("append");
            }),
        ),
        (
            "through a symlink",
            forged(|b| {
                let mut h = header(EntryType::Symlink, 0);
                b.append_link(&mut h, "out", &target).expect("link");
                let mut h = header(EntryType::Regular, 1);
                b.append_data(&mut h, "out/escape", &b"x"[..])
                    .expect("file");
            }),
        ),
        (
            "a whiteout through a symlink",
            forged(|b| {
                let mut h = header(EntryType::Symlink, 0);
                b.append_link(&mut h, "out", &target).expect("link");
                let mut h = header(EntryType::Char, 0);
                h.set_device_major(0).expect("major");
                h.set_device_minor(0).expect("minor");
                b.append_data(&mut h, "out/escape", io::empty())
                    .expect("whiteout");
            }),
        ),
        (
            "an xattr layers do not keep",
            forged(|b| {
                b.append_pax_extensions([("SCHILY.xattr.trusted.overlay.metacopy", &b""[..])])
                    .expect("pax");
                let mut h = header(EntryType::Regular, 1);
                b.append_data(&mut h, "file", &b"x"[..]).expect("file");
            }),
        ),
    ];
    for (what, bytes) in cases {
        let dir = tempfile::tempdir().expect("tmp");
        let store = TemplateStore::open(dir.path()).expect("store");
        let digest = format!("{DIGEST_PREFIX}{}", hex(&Sha256::digest(&bytes)));
        let err = store
            .import_layer(&digest, bytes.as_slice())
            .expect_err(what);
        assert!(
            matches!(err, TemplateError::Transfer { .. }),
            "{what}: {err}"
        );
        assert!(!target.join("escape").exists(), "{what}");
        assert!(
            !dir.path().parent().expect("parent").join("escape").exists(),
            "{what}"
        );
        assert_eq!(store.find_layer(&digest).expect("find"), None, "{what}");
    }
    assert_eq!(std::fs::read_dir(&target).expect("ls").count(), 0);
}
