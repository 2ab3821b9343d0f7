//! Real loop devices and ext4 mounts (the tests run as root).

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use super::*;

/// Small disks keep the fill test quick.
const SMALL_MB: u64 = 64;

fn loops_under(dir: &Path) -> Vec<String> {
    loop_devices_under(dir)
}

/// Waits (bounded) for a condition the kernel or the pool's builder reaches on its own.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn data_extents_skip_holes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("sparse");
    let mut f = File::create(&path).expect("create");
    f.set_len(16 << 20).expect("len");
    f.write_all(b"head").expect("write");
    nix::sys::uio::pwrite(&f, b"tail", 8 << 20).expect("pwrite");
    let extents = data_extents(&f, 16 << 20).expect("extents");
    assert_eq!(extents.len(), 2, "{extents:?}");
    assert_eq!(extents[0].0, 0);
    assert!(extents[1].0 <= 8 << 20 && extents[1].0 + extents[1].1 > 8 << 20);
}

#[test]
fn sizes_are_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let disks = Disks::new(tmp.path().join("disks"), SMALL_MB, 0).expect("disks");
    assert!(matches!(disks.master(1), Err(DiskError::Size(1))));
    assert!(matches!(
        disks.master(MAX_DISK_MB + 1),
        Err(DiskError::Size(_))
    ));
}

#[test]
fn a_disk_is_small_on_the_host_and_full_at_its_size() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let disks = Disks::new(tmp.path().join("disks"), SMALL_MB, 0).expect("disks");
    let master = disks.master(SMALL_MB).expect("master");
    // The master holds no reserved GDT blocks: well under 1 MiB of data.
    let data: u64 = master.extents.iter().map(|e| e.1).sum();
    assert!(data < 1 << 20, "master data {data}");

    let state = tmp.path().join("sb");
    std::fs::create_dir(&state).expect("mkdir");
    disks.create(&state, SMALL_MB).expect("create");
    let mount = state.join(DISK_DIR);
    assert!(is_mount_point(&mount));
    assert!(upper_dir(&state).is_dir() && work_dir(&state).is_dir());
    let image = state.join(IMAGE_FILE);
    let meta = std::fs::metadata(&image).expect("image");
    assert_eq!(meta.len(), SMALL_MB << 20);
    assert!(
        meta.blocks() * 512 < 4 << 20,
        "allocated {}",
        meta.blocks() * 512
    );
    let loops = loops_under(tmp.path());
    assert_eq!(loops.len(), 1, "{loops:?}");
    let fs = nix::sys::statvfs::statvfs(&mount).expect("statvfs");
    let total = fs.blocks() as u64 * fs.fragment_size() as u64;
    assert!(
        total > (SMALL_MB - 16) << 20 && total <= SMALL_MB << 20,
        "{total}"
    );

    // Filling the disk: ENOSPC from fallocate beyond its size and from plain writes.
    let big = upper_dir(&state).join("big");
    let f = File::create(&big).expect("create");
    let err = nix::fcntl::fallocate(
        f.as_raw_fd(),
        nix::fcntl::FallocateFlags::empty(),
        0,
        (SMALL_MB << 20) as i64,
    )
    .expect_err("fallocate beyond the disk");
    assert_eq!(err, nix::errno::Errno::ENOSPC);
    // A failed fallocate may keep what it got; deleting the file gives it back.
    drop(f);
    std::fs::remove_file(&big).expect("rm");
    let mut f = File::create(upper_dir(&state).join("fill")).expect("create");
    let chunk = vec![0xa5u8; 1 << 20];
    let err = loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_data()) {
            break e;
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    // The image grew by what was written, no more than the disk's size.
    let allocated = std::fs::metadata(&image).expect("image").blocks() * 512;
    assert!(
        allocated > (SMALL_MB / 2) << 20 && allocated <= (SMALL_MB + 4) << 20,
        "allocated {allocated}"
    );
    // Deleting gives the space back, inside (writes work again) and, through discard, on
    // the host.
    std::fs::remove_file(upper_dir(&state).join("fill")).expect("rm");
    std::fs::write(upper_dir(&state).join("again"), b"x").expect("write after delete");
    let syncfs = File::open(&mount).expect("open mount");
    nix::unistd::syncfs(syncfs.as_raw_fd()).expect("syncfs");
    drop(syncfs);
    // ext4 issues the discards from a work queue after the commit.
    eventually("the deleted data punched out of the image", || {
        std::fs::metadata(&image).expect("image").blocks() * 512 < allocated / 2
    });

    // Teardown: unmounting frees the loop device; the image goes with the state directory.
    assert!(Disks::remove(&state).expect("remove"));
    assert!(!is_mount_point(&mount));
    assert!(!Disks::remove(&state).expect("second remove"), "idempotent");
    eventually("loop device detached", || {
        loops_under(tmp.path()).is_empty()
    });
    std::fs::remove_dir_all(&state).expect("rm state");
}

#[test]
fn failed_create_leaves_nothing_mounted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let disks = Disks::new(tmp.path().join("disks"), SMALL_MB, 0).expect("disks");
    let state = tmp.path().join("sb");
    std::fs::create_dir(&state).expect("mkdir");
    // An image already there (create_new) makes the create fail before anything is attached.
    std::fs::write(state.join(IMAGE_FILE), b"").expect("write");
    let err = disks.create(&state, SMALL_MB).expect_err("create");
    assert!(matches!(err, DiskError::Io { .. }), "{err}");
    assert!(!is_mount_point(&state.join(DISK_DIR)));
    assert!(loops_under(tmp.path()).is_empty());
}

#[test]
fn orphaned_disks_are_reaped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let disks = Disks::new(tmp.path().join("disks"), SMALL_MB, 0).expect("disks");
    let root = tmp.path().join("sandboxes");
    for name in ["ikeep", "iorphan"] {
        std::fs::create_dir_all(root.join(name)).expect("mkdir");
        disks.create(&root.join(name), SMALL_MB).expect("create");
    }
    assert_eq!(Disks::reap(&root, &["ikeep"]), 1);
    assert!(is_mount_point(&root.join("ikeep").join(DISK_DIR)));
    assert!(!is_mount_point(&root.join("iorphan").join(DISK_DIR)));
    assert_eq!(Disks::reap(&root, &[]), 1);
    eventually("loop devices detached", || {
        loops_under(tmp.path()).is_empty()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_hands_out_ready_disks_and_refills() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("disks");
    let disks = Disks::new(dir.clone(), SMALL_MB, 2).expect("disks");
    eventually("pool filled", || disks.ready() == 2);
    assert_eq!(loops_under(tmp.path()).len(), 2);

    let state = tmp.path().join("sb");
    std::fs::create_dir(&state).expect("mkdir");
    disks.create(&state, SMALL_MB).expect("create");
    // The disk came from the pool: its image was moved into the state directory.
    assert!(is_mount_point(&state.join(DISK_DIR)));
    assert!(upper_dir(&state).is_dir() && work_dir(&state).is_dir());
    assert!(state.join(IMAGE_FILE).is_file());
    std::fs::write(upper_dir(&state).join("f"), b"data").expect("write");
    eventually("pool refilled", || disks.ready() == 2);
    // One in use plus two ready.
    assert_eq!(loops_under(tmp.path()).len(), 3);

    // Another size does not come from the pool.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    disks
        .create(&other, SMALL_MB * 2)
        .expect("create other size");
    assert_eq!(disks.ready(), 2);

    disks.release().await;
    assert_eq!(disks.ready(), 0);
    assert!(!dir.join("pool").exists());
    // Only the two sandboxes' disks are left.
    assert_eq!(
        mounts_under(tmp.path()).len(),
        2,
        "{:?}",
        mounts_under(tmp.path())
    );
    for s in [&state, &other] {
        Disks::remove(s).expect("remove");
    }
    assert!(mounts_under(tmp.path()).is_empty());
    eventually("loop devices detached", || {
        loops_under(tmp.path()).is_empty()
    });
}

#[test]
fn a_pool_left_by_a_dead_node_is_cleared() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("disks");
    let disks = Disks::new(dir.clone(), SMALL_MB, 1).expect("disks");
    eventually("pool filled", || disks.ready() == 1);
    // A crash: nothing is released, the pool's disk and bind mount stay.
    std::mem::forget(disks);
    assert_eq!(mounts_under(tmp.path()).len(), 2);
    // The next driver removes them, with or without a pool of its own.
    let again = Disks::new(dir.clone(), SMALL_MB, 0).expect("disks");
    assert!(
        mounts_under(tmp.path()).is_empty(),
        "{:?}",
        mounts_under(tmp.path())
    );
    assert!(!dir.join("pool").exists());
    eventually("loop devices detached", || {
        loops_under(tmp.path()).is_empty()
    });
    drop(again);
    let again = Disks::new(dir.clone(), SMALL_MB, 1).expect("disks");
    eventually("pool filled", || again.ready() == 1);
    assert_eq!(loops_under(tmp.path()).len(), 1);
    drop(again);
    assert!(
        mounts_under(tmp.path()).is_empty(),
        "{:?}",
        mounts_under(tmp.path())
    );
    eventually("loop devices detached", || {
        loops_under(tmp.path()).is_empty()
    });
}

/// Not a check: prints what a disk costs on the create path, without and with the pool
/// (`cargo nextest run -p paddock-sandbox disk_cost --no-capture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_cost() {
    const N: usize = 20;
    let tmp = tempfile::tempdir().expect("tempdir");
    let size = paddock_domain::Resources::default().disk_mb;
    let disks = Disks::new(tmp.path().join("disks"), size, 4).expect("disks");
    let mut fresh = Vec::new();
    let mut pooled = Vec::new();
    for i in 0..N {
        let state = tmp.path().join(format!("f{i}"));
        std::fs::create_dir(&state).expect("mkdir");
        let master = disks.master(size).expect("master");
        mkdir(&state.join(DISK_DIR)).expect("mkdir");
        let t = Instant::now();
        build(&master, &state.join(IMAGE_FILE), &state.join(DISK_DIR)).expect("build");
        fresh.push(t.elapsed());
        Disks::remove(&state).expect("remove");
    }
    for i in 0..N {
        eventually("pool filled", || disks.ready() == 4);
        let state = tmp.path().join(format!("p{i}"));
        std::fs::create_dir(&state).expect("mkdir");
        let t = Instant::now();
        disks.create(&state, size).expect("create");
        pooled.push(t.elapsed());
        Disks::remove(&state).expect("remove");
    }
    disks.release().await;
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    eprintln!(
        "disk of {size} MiB: built on create median {:?} (max {:?}), from the pool median {:?} (max {:?})",
        median(&mut fresh),
        fresh.last().expect("n"),
        median(&mut pooled),
        pooled.last().expect("n")
    );
    eventually("loop devices detached", || {
        loops_under(tmp.path()).is_empty()
    });
}
