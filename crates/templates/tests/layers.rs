//! Integration tests of template layers: an overlay upper directory copied with
//! [`copy_tree`] works as a lower layer of a real overlay mount; leases and garbage
//! collection keep exactly the layers in use; snapshots; and the move of templates from the
//! older one-tree-per-template layout into layers, including after a crash half-way.
//!
//! The overlay test needs root (it mounts); it is skipped without.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::Utc;
use nix::mount::{MntFlags, MsFlags};
use paddock_domain::{Resources, TemplateName};
use paddock_sandbox::idmap::{self, IdMap};
use paddock_templates::copy::{copy_tree, CopyOptions};
use paddock_templates::{
    layer_size, GcStats, TemplateError, TemplateMeta, TemplateSource, TemplateStore,
};

const BASE: u32 = IdMap::DEFAULT.base;

fn name(s: &str) -> TemplateName {
    TemplateName::parse(s).expect("valid template name")
}

fn mount_overlay(target: &Path, options: &str, flags: MsFlags) -> nix::Result<()> {
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        Some(options),
    )
}

/// Unmounts on drop, so a failed assertion does not leave a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

fn mkdirs(root: &Path, dirs: &[&str]) -> Vec<PathBuf> {
    dirs.iter()
        .map(|d| {
            let p = root.join(d);
            std::fs::create_dir_all(&p).expect("mkdir");
            p
        })
        .collect()
}

#[test]
fn overlay_upper_copied_for_a_lower_layer_keeps_deletions_and_opaque_dirs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let [lower, upper, work, merged, layer_parent, view] = mkdirs(
        tmp.path(),
        &["lower", "upper", "work", "merged", "layers", "view"],
    )
    .try_into()
    .expect("six dirs");
    std::fs::create_dir_all(lower.join("opaque")).expect("mkdir");
    std::fs::create_dir_all(lower.join("merged-dir")).expect("mkdir");
    for (path, text) in [
        ("keep.txt", "keep"),
        ("gone.txt", "gone"),
        ("old-name.txt", "renamed"),
        ("opaque/old.txt", "old"),
        ("merged-dir/from-lower", "lower"),
    ] {
        std::fs::write(lower.join(path), text).expect("write");
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    if let Err(e) = mount_overlay(&merged, &options, MsFlags::empty()) {
        eprintln!("skipping: cannot mount an overlay ({e}); needs root");
        return;
    }
    let mounted = Mounted(merged.clone());
    // Through the overlay: delete, rename, replace a directory (opaque), add files.
    std::fs::remove_file(merged.join("gone.txt")).expect("rm");
    std::fs::rename(merged.join("old-name.txt"), merged.join("new-name.txt")).expect("mv");
    std::fs::remove_dir_all(merged.join("opaque")).expect("rmdir");
    std::fs::create_dir(merged.join("opaque")).expect("mkdir");
    std::fs::write(merged.join("opaque/new.txt"), "new").expect("write");
    std::fs::write(merged.join("merged-dir/from-upper"), "upper").expect("write");
    let written = merged.join("written.txt");
    std::fs::write(&written, "written").expect("write");
    std::os::unix::fs::lchown(&written, Some(BASE + 1000), Some(BASE + 1000)).expect("chown");
    std::fs::set_permissions(&written, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let suid = merged.join("suid");
    std::fs::write(&suid, "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    drop(mounted);
    assert!(
        std::fs::symlink_metadata(upper.join("gone.txt"))
            .expect("whiteout")
            .rdev()
            == 0,
        "the upper holds a whiteout"
    );

    let layer = layer_parent.join("top");
    let stats = copy_tree(
        &upper,
        &layer,
        CopyOptions {
            for_lower_layer: true,
        },
    )
    .expect("copy");
    assert!(stats.specials >= 2, "whiteouts copied: {stats:?}");
    assert!(layer_size(&layer).expect("size") > 0);

    // Read-only overlay of the layer over the original lower.
    let options = format!("lowerdir={}:{}", layer.display(), lower.display());
    mount_overlay(&view, &options, MsFlags::MS_RDONLY).expect("mount the layers");
    let _mounted = Mounted(view.clone());
    let read = |p: &str| std::fs::read_to_string(view.join(p)).ok();
    assert_eq!(read("keep.txt").as_deref(), Some("keep"));
    assert_eq!(read("gone.txt"), None, "the whiteout hides the lower file");
    assert!(!view.join("gone.txt").exists());
    assert_eq!(read("old-name.txt"), None);
    assert_eq!(read("new-name.txt").as_deref(), Some("renamed"));
    assert_eq!(
        read("opaque/old.txt"),
        None,
        "the opaque dir hides the lower one"
    );
    assert_eq!(read("opaque/new.txt").as_deref(), Some("new"));
    assert_eq!(read("merged-dir/from-lower").as_deref(), Some("lower"));
    assert_eq!(read("merged-dir/from-upper").as_deref(), Some("upper"));
    let meta = std::fs::metadata(view.join("written.txt")).expect("written");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (BASE + 1000, BASE + 1000, 0o640)
    );
    let meta = std::fs::metadata(view.join("suid")).expect("suid");
    assert_eq!(meta.mode() & 0o7777, 0o4755);
    let mut names: Vec<String> = std::fs::read_dir(&view)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "keep.txt",
            "merged-dir",
            "new-name.txt",
            "opaque",
            "suid",
            "written.txt"
        ]
    );
}

/// A template in the layout of older Paddock versions: `<root>/<name>/rootfs` (with a passwd,
/// a symlink and a home owned by the sandbox's `user`) and metadata without layers.
fn old_layout_template(root: &Path, template: &str) -> PathBuf {
    let dir = root.join(template);
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).expect("mkdir");
    std::fs::create_dir_all(rootfs.join("home/user")).expect("mkdir");
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").expect("write");
    std::os::unix::fs::symlink("usr/bin", rootfs.join("bin")).expect("symlink");
    std::os::unix::fs::lchown(rootfs.join("home/user"), Some(1000), Some(1000)).expect("chown");
    let meta = TemplateMeta {
        name: name(template),
        resources: Resources {
            cpu_count: 3,
            ..Resources::default()
        },
        created_at: Utc::now(),
        source: TemplateSource::Import {
            archive: "/old.tar".into(),
            format: "tar".into(),
        },
        config: Default::default(),
    };
    std::fs::write(
        dir.join("template.json"),
        serde_json::to_vec_pretty(&meta).expect("json"),
    )
    .expect("write");
    dir
}

/// Shifts an old-layout rootfs as an older Paddock did (marker `<dir>/.rootfs.idmap`), then
/// gives one file an owner a second shift would change: if it keeps it, nothing was shifted
/// again.
fn shift_like_an_older_paddock(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    idmap::shift_tree(&rootfs, &IdMap::DEFAULT).expect("shift");
    assert!(dir.join(".rootfs.idmap").is_file());
    let canary = rootfs.join("etc/canary");
    std::fs::write(&canary, "c").expect("write");
    std::os::unix::fs::lchown(&canary, Some(7), Some(7)).expect("chown");
    canary
}

/// Layers and their markers (lease lock files, which come and go with leases, left out).
fn layer_entries(store: &TemplateStore) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.layers_dir())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lease"))
        .collect();
    names.sort();
    names
}

/// The template reads as the old one did, from one layer with its marker beside it.
fn check_migrated(store: &TemplateStore, dir: &Path) {
    let t = store.get(&name("base")).expect("get").expect("exists");
    assert_eq!(t.resources.cpu_count, 3);
    assert_eq!(t.layers.len(), 1);
    let layer = t.top_layer();
    assert_eq!(layer.parent(), Some(store.layers_dir().as_path()));
    assert!(idmap::is_shifted(layer, &IdMap::DEFAULT), "marker moved");
    assert_eq!(
        std::fs::read_to_string(layer.join("etc/passwd")).expect("passwd"),
        "root:x:0:0::/root:/bin/sh\n"
    );
    assert_eq!(
        std::fs::read_link(layer.join("bin")).expect("symlink"),
        Path::new("usr/bin")
    );
    let home = std::fs::metadata(layer.join("home/user")).expect("home");
    assert_eq!((home.uid(), home.gid()), (BASE + 1000, BASE + 1000));
    assert_eq!(std::fs::metadata(layer).expect("root").uid(), BASE);
    assert!(!dir.join("rootfs").exists());
    assert!(!dir.join(".rootfs.idmap").exists());
    let id = layer
        .file_name()
        .expect("id")
        .to_string_lossy()
        .into_owned();
    assert_eq!(layer_entries(store), [format!(".{id}.idmap"), id]);
    let mut in_dir: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    in_dir.sort();
    assert_eq!(in_dir, ["template.json"]);
    // Leasing works on the moved layer, and the store can be opened again unchanged.
    let (_, lease) = store.lease(&name("base")).expect("lease").expect("exists");
    assert_eq!(lease.layers(), t.layers);
    let again = TemplateStore::open(store.root()).expect("reopen");
    assert_eq!(again.get(&name("base")).expect("get"), Some(t));
}

#[test]
fn old_layout_moves_into_a_layer_with_its_marker() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("templates");
    let dir = old_layout_template(&root, "base");
    let canary = shift_like_an_older_paddock(&dir);
    // A crash while an older write of template.json was in flight left its temporary file.
    std::fs::write(dir.join(".template.json.tmp"), "{").expect("write");
    let store = TemplateStore::open(&root).expect("open");
    check_migrated(&store, &dir);
    let t = store.get(&name("base")).expect("get").expect("exists");
    let moved_canary = t
        .top_layer()
        .join(canary.strip_prefix(dir.join("rootfs")).expect("below"));
    assert_eq!(
        std::fs::metadata(moved_canary).expect("canary").uid(),
        7,
        "not shifted a second time"
    );
}

#[test]
fn old_layout_without_a_marker_is_shifted_once_moved() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("templates");
    let dir = old_layout_template(&root, "base");
    let store = TemplateStore::open(&root).expect("open");
    check_migrated(&store, &dir);
}

/// Rewrites `template.json` as the first migration step does: the same metadata, naming `id`.
fn name_a_layer(dir: &Path, id: &str) {
    let path = dir.join("template.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    json["layers"] = serde_json::json!([id]);
    std::fs::write(&path, serde_json::to_vec(&json).expect("json")).expect("write");
}

#[test]
fn migration_interrupted_after_naming_the_layer_is_finished_by_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("templates");
    let dir = old_layout_template(&root, "base");
    let canary = shift_like_an_older_paddock(&dir);
    let id = "0123456789abcdef01234567";
    name_a_layer(&dir, id);
    let store = TemplateStore::open(&root).expect("open");
    check_migrated(&store, &dir);
    let t = store.get(&name("base")).expect("get").expect("exists");
    assert_eq!(t.top_layer(), store.layers_dir().join(id));
    let moved = t
        .top_layer()
        .join(canary.strip_prefix(dir.join("rootfs")).expect("below"));
    assert_eq!(std::fs::metadata(moved).expect("canary").uid(), 7);
}

#[test]
fn migration_interrupted_after_moving_the_tree_is_finished_by_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("templates");
    let dir = old_layout_template(&root, "base");
    let canary = shift_like_an_older_paddock(&dir);
    let id = "89abcdef0123456789abcdef";
    name_a_layer(&dir, id);
    let layers = root.join(".layers");
    std::fs::create_dir_all(&layers).expect("mkdir");
    // The tree moved; the crash came before its marker followed.
    std::fs::rename(dir.join("rootfs"), layers.join(id)).expect("mv");
    let store = TemplateStore::open(&root).expect("open");
    check_migrated(&store, &dir);
    let t = store.get(&name("base")).expect("get").expect("exists");
    let moved = t
        .top_layer()
        .join(canary.strip_prefix(dir.join("rootfs")).expect("below"));
    assert_eq!(
        std::fs::metadata(moved).expect("canary").uid(),
        7,
        "the marker followed the tree, so nothing was shifted again"
    );
}

fn snapshot_source(parent: &str) -> TemplateSource {
    TemplateSource::Snapshot {
        sandbox_id: "isandbox1".into(),
        parent: name(parent),
    }
}

/// An upper directory as a sandbox leaves it: owned by the sandbox's root, a new file and a
/// whiteout.
fn fake_upper(path: &Path, text: &str) {
    std::fs::create_dir_all(path.join("home/user")).expect("mkdir");
    std::fs::write(path.join("home/user/notes.txt"), text).expect("write");
    nix::sys::stat::mknod(
        &path.join("home/user/deleted"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .expect("whiteout");
    for p in [
        path.to_path_buf(),
        path.join("home"),
        path.join("home/user"),
    ] {
        std::os::unix::fs::lchown(p, Some(BASE), Some(BASE)).expect("chown");
    }
    std::os::unix::fs::lchown(
        path.join("home/user/notes.txt"),
        Some(BASE + 1000),
        Some(BASE + 1000),
    )
    .expect("chown");
}

#[test]
fn snapshots_stack_layers_and_garbage_collection_respects_names_and_leases() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("templates");
    old_layout_template(&root, "base");
    let store = TemplateStore::open(&root).expect("open");
    let base = store.get(&name("base")).expect("get").expect("exists");

    let upper = tmp.path().join("upper");
    fake_upper(&upper, "v1");
    let snap = store
        .snapshot(
            &name("snap"),
            &upper,
            &base,
            Resources::default(),
            snapshot_source("base"),
        )
        .expect("snapshot");
    assert_eq!(snap.layers.len(), 2);
    assert_eq!(snap.layers[1], base.layers[0]);
    assert_eq!(snap.source, snapshot_source("base"));
    let top = snap.top_layer().to_path_buf();
    assert_eq!(
        std::fs::read_to_string(top.join("home/user/notes.txt")).expect("read"),
        "v1"
    );
    assert!(idmap::is_shifted(&top, &IdMap::DEFAULT));
    assert_eq!(
        std::fs::metadata(top.join("home/user/notes.txt"))
            .expect("notes")
            .uid(),
        BASE + 1000,
        "in-range owners are left alone"
    );
    assert_eq!(store.get(&name("snap")).expect("get"), Some(snap.clone()));
    // A snapshot of the snapshot stacks a third layer.
    let upper2 = tmp.path().join("upper2");
    fake_upper(&upper2, "v2");
    let snap2 = store
        .snapshot(
            &name("snap2"),
            &upper2,
            &snap,
            Resources::default(),
            snapshot_source("snap"),
        )
        .expect("snapshot of a snapshot");
    assert_eq!(snap2.layers[1..], snap.layers[..]);

    // Taken names and a missing upper fail without leftovers.
    let err = store
        .snapshot(
            &name("snap"),
            &upper,
            &base,
            Resources::default(),
            snapshot_source("base"),
        )
        .expect_err("taken");
    assert!(matches!(err, TemplateError::AlreadyExists(_)), "{err:?}");
    let err = store
        .snapshot(
            &name("nothing"),
            &tmp.path().join("no-upper"),
            &base,
            Resources::default(),
            snapshot_source("base"),
        )
        .expect_err("no upper");
    assert!(matches!(err, TemplateError::Io { .. }), "{err:?}");
    assert_eq!(store.get(&name("nothing")).expect("get"), None);
    assert_eq!(
        layer_entries(&store).len(),
        6,
        "three layers and their markers"
    );
    assert_eq!(
        store.collect_garbage().expect("gc"),
        GcStats {
            referenced: 3,
            ..GcStats::default()
        }
    );

    // A layer shared by two templates stays while one of them names it.
    assert!(store.delete(&name("base")).expect("delete"));
    assert!(base.top_layer().is_dir(), "snap still uses it");
    assert!(store.delete(&name("snap2")).expect("delete"));
    assert!(!snap2.top_layer().exists(), "nothing else used it");

    // A leased layer outlives its template until the lease goes and a collection runs.
    let (leased, lease) = store.lease(&name("snap")).expect("lease").expect("exists");
    assert_eq!(leased, snap);
    assert_eq!(lease.layers(), snap.layers);
    let clone = store.clone();
    assert!(clone.delete(&name("snap")).expect("delete"));
    assert_eq!(store.get(&name("snap")).expect("get"), None);
    assert!(snap.layers.iter().all(|l| l.is_dir()), "leased layers stay");
    assert_eq!(
        store.collect_garbage().expect("gc"),
        GcStats {
            leased: 2,
            ..GcStats::default()
        }
    );
    // A restarted node re-leases the layers of a sandbox it re-adopts.
    let readopted = store.lease_layers(&snap.layers).expect("re-lease");
    drop(lease);
    assert_eq!(store.collect_garbage().expect("gc").leased, 2);
    drop(readopted);
    assert_eq!(store.collect_garbage().expect("gc").removed, 2);
    assert!(snap.layers.iter().all(|l| !l.exists()));
    assert!(
        layer_entries(&store).is_empty(),
        "markers went with their layers"
    );
    let err = store.lease_layers(&snap.layers).expect_err("gone");
    assert!(matches!(err, TemplateError::LayerMissing(_)), "{err:?}");
    assert!(store.list().expect("list").is_empty());
}

#[test]
fn unreferenced_layers_survive_open_and_go_with_the_next_collection() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("templates");
    old_layout_template(&root, "base");
    let store = TemplateStore::open(&root).expect("open");
    let base = store.get(&name("base")).expect("get").expect("exists");
    // What a crash between moving a build's tree into a layer and registering the template
    // leaves: a layer no template names, with its marker; and a marker without a layer.
    let stray = store.layers_dir().join("fedcba9876543210fedcba98");
    std::fs::create_dir_all(stray.join("etc")).expect("mkdir");
    std::fs::write(
        store.layers_dir().join(".fedcba9876543210fedcba98.idmap"),
        "x",
    )
    .expect("write");
    std::fs::write(
        store.layers_dir().join(".aaaaaaaaaaaaaaaaaaaaaaaa.idmap"),
        "x",
    )
    .expect("write");
    // Not a layer: left alone.
    std::fs::write(store.layers_dir().join("README"), "x").expect("write");
    // A layer a sandbox of the previous run may still use must survive the open.
    let reopened = TemplateStore::open(&root).expect("reopen");
    assert!(stray.is_dir(), "open does not collect garbage");
    let stats = reopened.collect_garbage().expect("gc");
    assert_eq!(
        stats,
        GcStats {
            removed: 1,
            referenced: 1,
            leased: 0,
            markers_removed: 1,
        }
    );
    assert!(!stray.exists());
    let id = base
        .top_layer()
        .file_name()
        .expect("id")
        .to_string_lossy()
        .into_owned();
    let mut want = vec![format!(".{id}.idmap"), "README".to_string(), id];
    want.sort();
    assert_eq!(layer_entries(&reopened), want);
    // Nothing of the removal is left in the store's root either.
    let mut top: Vec<String> = std::fs::read_dir(&root)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, [".layers", "base"]);
}

#[test]
fn a_template_json_that_cannot_be_read_stops_the_collection() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("templates");
    old_layout_template(&root, "base");
    let store = TemplateStore::open(&root).expect("open");
    let base = store.get(&name("base")).expect("get").expect("exists");
    std::fs::create_dir(root.join("broken")).expect("mkdir");
    std::fs::write(root.join("broken/template.json"), "{ not json").expect("write");
    let stray = store.layers_dir().join("fedcba9876543210fedcba98");
    std::fs::create_dir(&stray).expect("mkdir");
    let err = store.collect_garbage().expect_err("unknown references");
    assert!(matches!(err, TemplateError::Metadata { .. }), "{err:?}");
    assert!(stray.is_dir() && base.top_layer().is_dir());
    // A source this version does not know still protects its layers.
    let id = base
        .top_layer()
        .file_name()
        .expect("id")
        .to_string_lossy()
        .into_owned();
    std::fs::write(
        root.join("broken/template.json"),
        format!(r#"{{"source": {{"kind": "from_the_future"}}, "layers": ["{id}"]}}"#),
    )
    .expect("write");
    assert!(store.delete(&name("base")).expect("delete"));
    assert!(base.top_layer().is_dir());
    assert!(!stray.exists());
}

#[test]
fn a_lease_held_by_another_store_keeps_the_layer_from_its_collection() {
    // Two stores over one directory stand for two processes: their lease tables are separate,
    // and only the lock files tell them about each other's leases.
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("templates");
    old_layout_template(&root, "base");
    let serving = TemplateStore::open(&root).expect("open");
    let base = serving.get(&name("base")).expect("get").expect("exists");
    let upper = tmp.path().join("upper");
    fake_upper(&upper, "leased elsewhere");
    let snap = serving
        .snapshot(
            &name("snap"),
            &upper,
            &base,
            Resources::default(),
            snapshot_source("base"),
        )
        .expect("snapshot");
    let top = snap.top_layer().to_path_buf();
    let (_, lease) = serving
        .lease(&name("snap"))
        .expect("lease")
        .expect("exists");

    let other = TemplateStore::open(&root).expect("open again");
    assert!(other.delete(&name("snap")).expect("delete"));
    let stats = other.collect_garbage().expect("gc");
    assert_eq!(stats.removed, 0, "{stats:?}");
    assert_eq!(stats.leased, 1, "{stats:?}");
    assert!(top.is_dir(), "a layer in use by the other store stays");

    drop(lease);
    let stats = other.collect_garbage().expect("gc");
    assert_eq!(stats.removed, 1, "{stats:?}");
    assert!(!top.exists());
    let leftovers: Vec<String> = std::fs::read_dir(other.layers_dir())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".lease"))
        .collect();
    assert!(
        leftovers.iter().all(|n| n.contains(&base_layer_id(&base))),
        "only live layers keep lock files: {leftovers:?}"
    );
}

fn base_layer_id(base: &paddock_templates::Template) -> String {
    base.layers[0]
        .file_name()
        .expect("id")
        .to_string_lossy()
        .into_owned()
}
