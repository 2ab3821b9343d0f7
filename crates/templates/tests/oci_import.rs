//! Integration tests of importing container images as templates: OCI image layouts and
//! `docker save` archives built here with the `tar` crate (no docker), with layers that delete
//! files through whiteouts and make directories opaque; digest checks; multi-arch indexes.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

use paddock_domain::TemplateName;
use paddock_templates::import::image::host_architecture;
use paddock_templates::{TemplateError, TemplateSource, TemplateStore};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

const BASE: u32 = paddock_sandbox::idmap::IdMap::DEFAULT.base;
const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn name(s: &str) -> TemplateName {
    TemplateName::parse(s).expect("valid template name")
}

/// One entry of a layer tar.
enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a str),
    Owned(&'a str, u32, &'a str, u64),
    Symlink(&'a str, &'a str),
    Hard(&'a str, &'a str),
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let (path, data): (&str, &[u8]) = match e {
            E::Dir(p, mode) => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(*mode);
                (p, b"")
            }
            E::File(p, mode, data) => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(*mode);
                (p, data.as_bytes())
            }
            E::Owned(p, mode, data, id) => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*id);
                h.set_gid(*id);
                (p, data.as_bytes())
            }
            E::Symlink(p, target) => {
                h.set_entry_type(EntryType::Symlink);
                h.set_mode(0o777);
                h.set_link_name(target).expect("link");
                (p, b"")
            }
            E::Hard(p, target) => {
                h.set_entry_type(EntryType::Link);
                h.set_mode(0o755);
                h.set_link_name(target).expect("link");
                (p, b"")
            }
        };
        h.set_path(path).expect("path");
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    b.into_inner().expect("finish")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, data).expect("gzip");
    gz.finish().expect("gzip")
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tar of regular files (the outer archive of an image).
fn outer_tar(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = Header::new_gnu();
        h.set_path(path).expect("path");
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append(&h, &data[..]).expect("append");
    }
    b.into_inner().expect("finish")
}

/// An OCI layout being assembled: blobs by digest.
#[derive(Default)]
struct Oci {
    files: Vec<(String, Vec<u8>)>,
}

impl Oci {
    /// Stores a blob; returns its descriptor JSON (with `extra` fields merged in).
    fn blob(
        &mut self,
        media_type: &str,
        data: Vec<u8>,
        extra: serde_json::Value,
    ) -> serde_json::Value {
        let hex = sha256(&data);
        let mut desc = serde_json::json!({
            "mediaType": media_type,
            "digest": format!("sha256:{hex}"),
            "size": data.len(),
        });
        if let (Some(d), Some(e)) = (desc.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        self.files.push((format!("blobs/sha256/{hex}"), data));
        desc
    }

    /// Stores a config and a manifest over `layers` (`(media type, bytes)`); returns the
    /// manifest's descriptor.
    fn image(
        &mut self,
        layers: Vec<(&str, Vec<u8>)>,
        extra: serde_json::Value,
    ) -> serde_json::Value {
        let config = serde_json::json!({
            "architecture": host_architecture(),
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hi"],
                "Cmd": ["/usr/bin/tool"],
                "WorkingDir": "/srv",
                "User": "1000",
            },
            "rootfs": {"type": "layers", "diff_ids": []},
        });
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            serde_json::to_vec(&config).expect("json"),
            serde_json::json!({}),
        );
        let layers: Vec<serde_json::Value> = layers
            .into_iter()
            .map(|(mt, data)| self.blob(mt, data, serde_json::json!({})))
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config,
            "layers": layers,
        });
        self.blob(
            MANIFEST,
            serde_json::to_vec(&manifest).expect("json"),
            extra,
        )
    }

    /// The layout as a tar, `index.json` listing `manifests`.
    fn finish(mut self, manifests: Vec<serde_json::Value>) -> Vec<u8> {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": manifests,
        });
        self.files.push((
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ));
        self.files.push((
            "index.json".into(),
            serde_json::to_vec(&index).expect("json"),
        ));
        outer_tar(&self.files)
    }
}

/// A base layer: passwd and group, a tool with a hard link, `bin -> usr/bin`, a file owned
/// by uid 1000, and files later layers delete.
fn base_layer() -> Vec<u8> {
    layer(&[
        E::Dir("etc/", 0o755),
        E::File("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n"),
        E::File("etc/group", 0o644, "root:x:0:\n"),
        E::Dir("usr/", 0o755),
        E::Dir("usr/bin/", 0o755),
        E::File("usr/bin/tool", 0o755, "#!/bin/sh\necho tool\n"),
        E::Hard("usr/bin/tool-hard", "usr/bin/tool"),
        E::Symlink("bin", "usr/bin"),
        E::Dir("data/", 0o755),
        E::Owned("data/owned.txt", 0o600, "mine", 1000),
        E::File("doomed.txt", 0o644, "bye"),
        E::Dir("gone-dir/", 0o755),
        E::File("gone-dir/x", 0o644, "x"),
        E::Dir("kept/", 0o755),
        E::File("kept/a", 0o644, "a"),
        E::Dir("opaque/", 0o755),
        E::File("opaque/old1", 0o644, "old"),
        E::Dir("opaque/oldsub/", 0o755),
        E::File("opaque/oldsub/old2", 0o644, "old"),
        E::File("swap", 0o644, "was a file"),
    ])
}

/// The second layer: deletes `doomed.txt` and `gone-dir` through whiteouts, makes `opaque`
/// opaque (its new file comes before the marker), turns `swap` into a directory.
fn upper_layer() -> Vec<u8> {
    layer(&[
        E::File(".wh.doomed.txt", 0o644, ""),
        E::File(".wh.gone-dir", 0o644, ""),
        E::Dir("opaque/", 0o750),
        E::File("opaque/new.txt", 0o640, "new"),
        E::File("opaque/.wh..wh..opq", 0o644, ""),
        E::Dir("swap/", 0o755),
        E::File("swap/inner", 0o644, "inside"),
        E::File("usr/bin/tool2", 0o755, "two"),
    ])
}

fn ls(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn no_whiteouts_left(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("ls") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with(".wh."), "{} left", entry.path().display());
        if entry.file_type().expect("type").is_dir() {
            no_whiteouts_left(&entry.path());
        }
    }
}

/// The tree of [`base_layer`] under [`upper_layer`], shifted into the sandboxes' id range.
fn check_layered(rootfs: &Path) {
    assert!(!rootfs.join("doomed.txt").exists(), "whited-out file");
    assert!(!rootfs.join("gone-dir").exists(), "whited-out directory");
    assert_eq!(ls(&rootfs.join("opaque")), ["new.txt"], "opaque directory");
    assert_eq!(
        std::fs::metadata(rootfs.join("opaque"))
            .expect("opaque")
            .mode()
            & 0o7777,
        0o750
    );
    assert_eq!(ls(&rootfs.join("kept")), ["a"]);
    let swap = std::fs::symlink_metadata(rootfs.join("swap")).expect("swap");
    assert!(swap.is_dir(), "a file replaced by a directory");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("swap/inner")).expect("inner"),
        "inside"
    );
    let tool = std::fs::metadata(rootfs.join("usr/bin/tool")).expect("tool");
    assert_eq!(tool.mode() & 0o7777, 0o755);
    let hard = std::fs::metadata(rootfs.join("usr/bin/tool-hard")).expect("hard");
    assert_eq!(hard.ino(), tool.ino(), "hard link shares the inode");
    assert!(rootfs.join("usr/bin/tool2").is_file());
    assert_eq!(
        std::fs::read_link(rootfs.join("bin")).expect("symlink"),
        Path::new("usr/bin")
    );
    let owned = std::fs::metadata(rootfs.join("data/owned.txt")).expect("owned");
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o777),
        (BASE + 1000, BASE + 1000, 0o600)
    );
    assert_eq!(std::fs::metadata(rootfs).expect("root").uid(), BASE);
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("passwd");
    assert!(passwd.contains("\nuser:x:1000:1000:"), "{passwd}");
    assert!(rootfs.join("run/paddock").is_dir());
    assert!(rootfs.join("usr/local/bin").is_dir());
    assert_eq!(
        std::fs::metadata(rootfs.join("tmp")).expect("tmp").mode() & 0o7777,
        0o1777
    );
    no_whiteouts_left(rootfs);
}

/// The store holds exactly `expected` templates, no build leftovers, no stray layers.
fn only_templates_left(store: &TemplateStore, expected: &[&str]) {
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.push(".layers".into());
    want.sort();
    assert_eq!(ls(store.root()), want, "no build leftovers");
    let layers: usize = store
        .list()
        .expect("list")
        .iter()
        .map(|t| t.layers.len())
        .sum();
    let found = ls(&store.layers_dir())
        .into_iter()
        .filter(|n| !n.ends_with(".lease") && !n.ends_with(".idmap"))
        .count();
    assert_eq!(found, layers, "no unused layers");
}

#[tokio::test]
async fn oci_layout_applies_layers_and_whiteouts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = TemplateStore::open(tmp.path().join("t")).expect("open");
    let mut oci = Oci::default();
    let manifest = oci.image(
        vec![
            (LAYER_TAR, base_layer()),
            (LAYER_GZIP, gzip(&upper_layer())),
        ],
        serde_json::json!({}),
    );
    let path = tmp.path().join("image.oci.tar");
    std::fs::write(&path, oci.finish(vec![manifest])).expect("write");

    let lines = Mutex::new(Vec::<String>::new());
    let progress = |l: &str| lines.lock().expect("lock").push(l.to_string());
    let t = store
        .import(&name("oci"), &path, &progress)
        .await
        .expect("import oci");
    assert_eq!(
        t.layers.len(),
        1,
        "the image's layers become one template layer"
    );
    check_layered(t.top_layer());
    assert!(matches!(&t.source, TemplateSource::Import { format, .. } if format == "oci"));
    let seen = lines.lock().expect("lock").join("\n");
    assert!(seen.contains("layer 2/2"), "{seen}");
    assert!(seen.contains("3 whiteouts"), "{seen}");
    assert!(seen.contains("GREETING=hi"), "{seen}");
    assert!(seen.contains("workdir \"/srv\""), "{seen}");
    only_templates_left(&store, &["oci"]);
}

#[tokio::test]
async fn docker_save_archive_with_two_layers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = TemplateStore::open(tmp.path().join("t")).expect("open");
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": host_architecture(),
        "os": "linux",
        "config": {"Entrypoint": ["/usr/bin/tool"], "Env": ["A=1"]},
    }))
    .expect("json");
    let config_name = format!("{}.json", sha256(&config));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["test/image:latest"],
        "Layers": ["1111/layer.tar", "2222/layer.tar"],
    }]);
    let archive = outer_tar(&[
        ("1111/layer.tar".into(), base_layer()),
        ("2222/layer.tar".into(), upper_layer()),
        (config_name.clone(), config),
        (
            "manifest.json".into(),
            serde_json::to_vec(&manifest).expect("json"),
        ),
    ]);
    // `docker save | gzip`: the outer archive may be compressed too.
    let path = tmp.path().join("image.tar.gz");
    std::fs::write(&path, gzip(&archive)).expect("write");
    let lines = Mutex::new(Vec::<String>::new());
    let progress = |l: &str| lines.lock().expect("lock").push(l.to_string());
    let t = store
        .import(&name("saved"), &path, &progress)
        .await
        .expect("import docker save");
    check_layered(t.top_layer());
    assert!(matches!(&t.source, TemplateSource::Import { format, .. } if format == "docker-save"));
    let seen = lines.lock().expect("lock").join("\n");
    assert!(seen.contains("entrypoint [\"/usr/bin/tool\"]"), "{seen}");

    // A config that does not hash to its name is refused.
    let bad = outer_tar(&[
        ("1111/layer.tar".into(), base_layer()),
        (config_name.clone(), b"{}".to_vec()),
        (
            "manifest.json".into(),
            serde_json::to_vec(&serde_json::json!([{
                "Config": config_name, "Layers": ["1111/layer.tar"]
            }]))
            .expect("json"),
        ),
    ]);
    let bad_path = tmp.path().join("bad.tar");
    std::fs::write(&bad_path, bad).expect("write");
    let err = store
        .import(&name("bad"), &bad_path, &|_| {})
        .await
        .expect_err("bad config");
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    only_templates_left(&store, &["saved"]);
}

#[tokio::test]
async fn digest_mismatch_is_refused_without_leftovers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = TemplateStore::open(tmp.path().join("t")).expect("open");
    let mut oci = Oci::default();
    let manifest = oci.image(
        vec![(LAYER_TAR, base_layer()), (LAYER_TAR, upper_layer())],
        serde_json::json!({}),
    );
    // Swap the upper layer's bytes for another valid tar, keeping its name and descriptor.
    let upper_name = format!("blobs/sha256/{}", sha256(&upper_layer()));
    let tampered = layer(&[E::File("evil", 0o644, "planted")]);
    for (path, data) in &mut oci.files {
        if *path == upper_name {
            *data = tampered.clone();
        }
    }
    let path = tmp.path().join("tampered.tar");
    std::fs::write(&path, oci.finish(vec![manifest])).expect("write");
    let err = store
        .import(&name("tampered"), &path, &|_| {})
        .await
        .expect_err("tampered");
    assert!(
        matches!(&err, TemplateError::InvalidArchive { reason, .. } if reason.contains("digest mismatch")),
        "{err:?}"
    );
    assert!(store.list().expect("list").is_empty());
    only_templates_left(&store, &[]);
}

#[tokio::test]
async fn multi_arch_index_picks_the_host_platform() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = TemplateStore::open(tmp.path().join("t")).expect("open");
    let arch = host_architecture();
    let other = if arch == "arm64" { "amd64" } else { "arm64" };
    let mut oci = Oci::default();
    let mut images = Vec::new();
    for a in [other, arch] {
        let marker = layer(&[E::File("arch", 0o644, a)]);
        images.push(oci.image(
            vec![(LAYER_GZIP, gzip(&base_layer())), (LAYER_TAR, marker)],
            serde_json::json!({"platform": {"os": "linux", "architecture": a}}),
        ));
    }
    // A buildkit attestation manifest, which is not an image to run.
    images.push(oci.blob(
        MANIFEST,
        br#"{"schemaVersion":2}"#.to_vec(),
        serde_json::json!({
            "platform": {"os": "unknown", "architecture": "unknown"},
            "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
        }),
    ));
    // The top index names a nested index, as `docker buildx` / skopeo layouts do.
    let nested = serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": images});
    let nested = oci.blob(
        INDEX,
        serde_json::to_vec(&nested).expect("json"),
        serde_json::json!({}),
    );
    let path = tmp.path().join("multi.tar");
    std::fs::write(&path, oci.finish(vec![nested])).expect("write");
    let t = store
        .import(&name("multi"), &path, &|_| {})
        .await
        .expect("import multi-arch");
    assert_eq!(
        std::fs::read_to_string(t.top_layer().join("arch")).expect("arch"),
        arch
    );

    // No manifest for this host: a clear error.
    let mut oci = Oci::default();
    let foreign: Vec<serde_json::Value> = ["s390x", "riscv64"]
        .into_iter()
        .map(|a| {
            oci.image(
                vec![(LAYER_TAR, base_layer())],
                serde_json::json!({"platform": {"os": "linux", "architecture": a}}),
            )
        })
        .collect();
    let path = tmp.path().join("foreign.tar");
    std::fs::write(&path, oci.finish(foreign)).expect("write");
    let err = store
        .import(&name("foreign"), &path, &|_| {})
        .await
        .expect_err("no host platform");
    let msg = err.to_string();
    assert!(
        msg.contains("linux/s390x") && msg.contains(&format!("none is for linux/{arch}")),
        "{msg}"
    );
    only_templates_left(&store, &["multi"]);
}

#[tokio::test]
async fn layer_escaping_through_a_symlink_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = TemplateStore::open(tmp.path().join("t")).expect("open");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("victim"), "keep me").expect("write");
    let target = outside.to_string_lossy().into_owned();
    let lower = layer(&[
        E::Dir("etc/", 0o755),
        E::File("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n"),
        E::Symlink("escape", &target),
    ]);
    for upper in [
        layer(&[E::File("escape/pwned", 0o644, "x")]),
        layer(&[E::File("escape/.wh.victim", 0o644, "")]),
    ] {
        let mut oci = Oci::default();
        let manifest = oci.image(
            vec![(LAYER_TAR, lower.clone()), (LAYER_TAR, upper)],
            serde_json::json!({}),
        );
        let path = tmp.path().join("escape.tar");
        std::fs::write(&path, oci.finish(vec![manifest])).expect("write");
        let err = store
            .import(&name("escape"), &path, &|_| {})
            .await
            .expect_err("escape");
        let msg = format!("{err} {err:?}");
        assert!(
            msg.contains("outside"),
            "refused for leaving the root: {msg}"
        );
        assert!(!outside.join("pwned").exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).expect("victim"),
            "keep me"
        );
    }
    assert_eq!(
        std::fs::metadata(&outside)
            .expect("outside")
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    only_templates_left(&store, &[]);
}
