//! Integration tests of the base images of template builds ([`TemplateStore::resolve_image`]):
//! an OCI archive built here is imported once, found again by any spelling of its path, and
//! imported again (replacing the older import) when the file changes; `e2bdev/base` is the
//! `base` template; registry images are refused. The debootstrap of a Debian suite needs the
//! network and minutes, so it is `#[ignore]`d: run it with
//! `cargo test -p paddock-templates --test images -- --ignored` (as root; `PADDOCK_TEMPLATES_DIR`
//! keeps the store, `PADDOCK_TEST_SUITE` picks the suite, default trixie).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use paddock_domain::TemplateName;
use paddock_templates::import::image::host_architecture;
use paddock_templates::{Template, TemplateError, TemplateSource, TemplateStore};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// Collects progress lines.
#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl Lines {
    fn push(&self, line: &str) {
        self.0.lock().expect("lines").push(line.to_string());
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("lines"))
    }
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tar of `(path, mode, content)` entries; paths ending in `/` are directories.
fn tar_of(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, data) in entries {
        let mut h = Header::new_gnu();
        h.set_path(path).expect("path");
        h.set_entry_type(if path.ends_with('/') {
            EntryType::Directory
        } else {
            EntryType::Regular
        });
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append(&h, *data).expect("append");
    }
    b.into_inner().expect("finish")
}

/// An OCI image layout packed as a tar: one layer holding a minimal root filesystem (no
/// `user` account) and `/etc/image-version` = `version`.
fn oci_archive(version: &str) -> Vec<u8> {
    let layer = tar_of(&[
        ("etc/", 0o755, b""),
        ("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", 0o644, b"root:x:0:\n"),
        ("etc/image-version", 0o644, version.as_bytes()),
        ("usr/", 0o755, b""),
        ("usr/bin/", 0o755, b""),
        ("usr/bin/tool", 0o755, b"#!/bin/sh\necho tool\n"),
    ]);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": host_architecture(),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/usr/bin/tool"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256(&layer))]},
    }))
    .expect("json");
    let desc = |media_type: &str, data: &[u8]| {
        serde_json::json!({
            "mediaType": media_type,
            "digest": format!("sha256:{}", sha256(data)),
            "size": data.len(),
        })
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar", &layer)],
    }))
    .expect("json");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [desc("application/vnd.oci.image.manifest.v1+json", &manifest)],
    }))
    .expect("json");
    let blob = |data: &[u8]| format!("blobs/sha256/{}", sha256(data));
    let (layer_path, config_path, manifest_path) = (blob(&layer), blob(&config), blob(&manifest));
    tar_of(&[
        ("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", 0o644, &index),
        ("blobs/", 0o755, b""),
        ("blobs/sha256/", 0o755, b""),
        (&layer_path, 0o644, &layer),
        (&config_path, 0o644, &config),
        (&manifest_path, 0o644, &manifest),
    ])
}

/// The names of the store's templates, sorted.
fn names(store: &TemplateStore) -> Vec<String> {
    store
        .list()
        .expect("list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}

/// How many layers the store holds on disk (not their markers or leases).
fn layers_on_disk(store: &TemplateStore) -> usize {
    std::fs::read_dir(store.layers_dir())
        .expect("ls layers")
        .filter(|e| {
            let name = e.as_ref().expect("entry").file_name();
            !name.to_string_lossy().starts_with('.')
        })
        .count()
}

fn read(template: &Template, path: &str) -> String {
    std::fs::read_to_string(template.top_layer().join(path)).expect("read from the template")
}

#[tokio::test]
async fn archive_is_imported_once_and_again_when_it_changes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = TemplateStore::open(tmp.path().join("templates")).expect("open");
    std::fs::create_dir(tmp.path().join("images")).expect("mkdir");
    let archive = tmp.path().join("images/app.tar");
    std::fs::write(&archive, oci_archive("one")).expect("write archive");
    let reference = archive.display().to_string();
    let lines = Lines::default();
    let progress = |l: &str| lines.push(l);

    // Two concurrent calls import once.
    let (a, b) = tokio::join!(
        store.resolve_image(&reference, &progress),
        store.resolve_image(&reference, &progress)
    );
    let (first, other) = (a.expect("resolve"), b.expect("resolve concurrently"));
    assert_eq!(first, other);
    let log = lines.take();
    assert_eq!(count(&log, "unpacking"), 1, "imported once: {log:#?}");
    let expected = paddock_templates::images::image_template_name(&reference).expect("name");
    assert_eq!(first.name, expected);
    assert!(first.name.as_str().starts_with("image-archive-app-"));
    assert!(
        matches!(&first.source, TemplateSource::Import { archive: a, format }
        if *a == archive.canonicalize().expect("canonical") && format == "oci")
    );
    assert_eq!(read(&first, "etc/image-version"), "one");
    assert!(
        read(&first, "etc/passwd").contains("\nuser:x:1000:1000:"),
        "the import added the user account"
    );
    assert!(first.top_layer().join("home/user").is_dir());
    assert_eq!(layers_on_disk(&store), 1);

    // Again, by another spelling of the same file: cached, nothing imported.
    let again = store
        .resolve_image(
            &format!(
                "oci-archive:{}",
                tmp.path().join("images/../images/app.tar").display()
            ),
            &progress,
        )
        .await
        .expect("resolve again");
    assert_eq!(again, first);
    let log = lines.take();
    assert_eq!(count(&log, "unpacking"), 0, "cached: {log:#?}");
    assert_eq!(layers_on_disk(&store), 1);

    // Touching the file makes it another version: imported again, the older import removed.
    let file = std::fs::File::options()
        .write(true)
        .open(&archive)
        .expect("open archive");
    file.set_modified(SystemTime::now() + Duration::from_secs(60))
        .expect("touch");
    drop(file);
    let touched = store
        .resolve_image(&reference, &progress)
        .await
        .expect("resolve after touching");
    let log = lines.take();
    assert_eq!(count(&log, "unpacking"), 1, "imported again: {log:#?}");
    assert_ne!(touched.name, first.name);
    assert_ne!(touched.top_layer(), first.top_layer());
    assert_eq!(names(&store), [touched.name.to_string()]);
    assert_eq!(
        layers_on_disk(&store),
        1,
        "the older import's layer is gone"
    );

    // A file replaced by another of the same size and mtime (as `rsync -t` or `cp -p` of a
    // rebuilt image do: a new file renamed over the old) is a new version too.
    let mtime = std::fs::metadata(&archive)
        .expect("stat")
        .modified()
        .expect("mtime");
    let next = tmp.path().join("images/.app.tar.tmp");
    std::fs::write(&next, oci_archive("two")).expect("write the new version");
    std::fs::File::options()
        .write(true)
        .open(&next)
        .expect("open new version")
        .set_modified(mtime)
        .expect("keep mtime");
    assert_eq!(
        std::fs::metadata(&next).expect("stat").len(),
        std::fs::metadata(&archive).expect("stat").len()
    );
    std::fs::rename(&next, &archive).expect("replace archive");
    let rewritten = store
        .resolve_image(&reference, &progress)
        .await
        .expect("resolve after rewriting");
    assert_eq!(read(&rewritten, "etc/image-version"), "two");
    assert_eq!(names(&store), [rewritten.name.to_string()]);

    // A missing archive is an error naming it, and leaves the store as it was.
    std::fs::remove_file(&archive).expect("rm");
    let err = store
        .resolve_image(&reference, &progress)
        .await
        .expect_err("missing archive");
    assert!(
        err.to_string().contains("cannot find image archive"),
        "{err}"
    );
    assert_eq!(names(&store), [rewritten.name.to_string()]);
}

#[tokio::test]
async fn e2b_base_is_the_base_template_and_registry_images_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = TemplateStore::open(tmp.path().join("templates")).expect("open");
    let archive = tmp.path().join("base.tar");
    std::fs::write(&archive, oci_archive("base")).expect("write archive");
    let quiet = |_: &str| {};
    // A `base` registered by import (as a node without debootstrap would) is not rebuilt.
    let base = TemplateName::parse("base").expect("name");
    let imported = store.import(&base, &archive, &quiet).await.expect("import");
    for reference in ["e2bdev/base", "e2bdev/base:latest", "docker.io/e2bdev/base"] {
        let t = store
            .resolve_image(reference, &quiet)
            .await
            .expect("resolve");
        assert_eq!(t, imported, "{reference}");
    }

    for reference in ["python:3", "ubuntu:22.04", "node:lts", "ghcr.io/o/app:1"] {
        let err = store
            .resolve_image(reference, &quiet)
            .await
            .expect_err(reference);
        assert!(matches!(err, TemplateError::Image(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("no container registry") && msg.contains("docker save"),
            "{msg}"
        );
    }
    let err = store
        .resolve_image("debian:buster", &quiet)
        .await
        .expect_err("unknown suite");
    assert!(err.to_string().contains("unknown Debian suite"), "{err}");
    assert_eq!(names(&store), ["base"]);
}

/// Bootstraps a Debian suite other than the base's from the host's mirror (network, root,
/// minutes), then checks it is found again without a build.
#[tokio::test]
#[ignore = "debootstraps a Debian suite from the network: minutes; run by hand as root"]
async fn debian_suite_is_bootstrapped_once() {
    let suite = std::env::var("PADDOCK_TEST_SUITE").unwrap_or_else(|_| "trixie".into());
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = std::env::var_os("PADDOCK_TEMPLATES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("templates"));
    let store = TemplateStore::open(&root).expect("open");
    let reference = format!("debian:{suite}-slim");
    let progress = |l: &str| eprintln!("{l}");

    let started = Instant::now();
    let t = store
        .resolve_image(&reference, &progress)
        .await
        .expect("bootstrap");
    eprintln!(
        "resolved {reference} to {} in {:.1?}",
        t.name,
        started.elapsed()
    );
    assert_eq!(t.name.as_str(), format!("image-debian-{suite}"));
    assert!(matches!(&t.source, TemplateSource::Debootstrap { suite: s, .. } if *s == suite));
    let rootfs = t.top_layer();
    let os_release = read(&t, "etc/os-release");
    eprintln!("{os_release}");
    if !["stable", "testing", "sid", "unstable"].contains(&suite.as_str()) {
        assert!(
            os_release.contains(&format!("VERSION_CODENAME={suite}")),
            "{os_release}"
        );
    }
    for tool in ["bash", "ps", "ss", "curl", "sudo"] {
        assert!(
            rootfs.join("usr/bin").join(tool).exists() || rootfs.join("bin").join(tool).exists(),
            "{tool} is installed"
        );
    }
    assert!(read(&t, "etc/passwd").contains("\nuser:x:1000:1000:"));
    assert!(read(&t, "etc/sudoers.d/user").contains("NOPASSWD"));
    assert!(rootfs.join("home/user").is_dir());
    let apt_lists = std::fs::read_dir(rootfs.join("var/lib/apt/lists")).map_or(0, |d| d.count());
    assert_eq!(apt_lists, 0, "apt lists removed");

    let started = Instant::now();
    let again = store
        .resolve_image(&format!("docker.io/library/debian:{suite}"), &progress)
        .await
        .expect("cached");
    assert_eq!(again, t);
    assert!(started.elapsed() < Duration::from_secs(2), "no rebuild");
}
