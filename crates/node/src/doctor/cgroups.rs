//! The cgroups check: which layout the host has (v1, v2 or hybrid) and whether the controllers
//! the namespace driver needs are where it can use them. The verdict mirrors the driver's own
//! [`paddock_sandbox::namespace::cgroup::detect`], which is asked too.

use super::Check;

/// Controllers every sandbox needs.
const REQUIRED: [&str; 3] = ["memory", "cpu", "pids"];
/// Controllers the v1 backend also uses (pause, CPU accounting) or that sandboxes benefit from.
const V1_EXTRA: [&str; 3] = ["freezer", "cpuacct", "devices"];

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Only cgroup v1 hierarchies.
    V1,
    /// Only the unified cgroup v2 tree.
    V2,
    /// Both (v1 controllers plus a cgroup2 mount, e.g. `/sys/fs/cgroup/unified`).
    Hybrid,
    /// No cgroup filesystem mounted.
    None,
}

impl Layout {
    /// `v1`, `v2`, `hybrid` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::V1 => "v1",
            Layout::V2 => "v2",
            Layout::Hybrid => "hybrid",
            Layout::None => "none",
        }
    }
}

pub use paddock_sandbox::namespace::cgroup::{parse_mountinfo, unescape, CgroupMount};
use paddock_sandbox::namespace::cgroup::{v1_mount_of, v2_root_of};

/// The layout of `mounts`.
pub fn layout(mounts: &[CgroupMount]) -> Layout {
    let v1 = mounts.iter().any(|m| m.v1_controllers.is_some());
    let v2 = mounts.iter().any(|m| m.v1_controllers.is_none());
    match (v1, v2) {
        (true, true) => Layout::Hybrid,
        (true, false) => Layout::V1,
        (false, true) => Layout::V2,
        (false, false) => Layout::None,
    }
}

/// The cgroups check on this host.
pub fn check() -> Check {
    let text = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(t) => t,
        Err(e) => {
            return Check::fail(
                "cgroups",
                format!("reading /proc/self/mountinfo: {e}"),
                "mount /proc",
            )
        }
    };
    let mounts = parse_mountinfo(&text);
    let v2_controllers: Vec<String> = mounts
        .iter()
        .find(|m| m.v1_controllers.is_none())
        .and_then(|m| std::fs::read_to_string(m.mount_point.join("cgroup.controllers")).ok())
        .map(|t| t.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let mut verdict = analyze(&mounts, &v2_controllers);
    if verdict.status == super::Status::Ok {
        // The driver must agree; if it does not, its reason is the one that matters.
        if let Err(e) = paddock_sandbox::namespace::cgroup::detect("paddock") {
            verdict = Check::fail(
                "cgroups",
                format!(
                    "{}; but the namespace driver refuses it: {e}",
                    verdict.detail
                ),
                "see the detail; a pure v1 or pure v2 layout always works",
            );
        }
    }
    verdict
}

/// The verdict for `mounts` and the controllers listed in the cgroup2 root's
/// `cgroup.controllers`, following the driver's rule: all required controllers on v1, or all
/// on v2.
pub fn analyze(mounts: &[CgroupMount], v2_controllers: &[String]) -> Check {
    let name = "cgroups";
    let layout = layout(mounts);
    let v1_mount = |ctrl: &str| v1_mount_of(mounts, ctrl);
    let v2_root = v2_root_of(mounts).map(|p| p.display().to_string());
    let on_v2 = |ctrl: &str| v2_controllers.iter().any(|c| c == ctrl);

    if layout == Layout::None {
        return Check::fail(
            name,
            "no cgroup filesystem is mounted",
            "mount -t cgroup2 none /sys/fs/cgroup (or let systemd mount it)",
        );
    }
    let mut in_v1 = Vec::new();
    let mut in_v2 = Vec::new();
    let mut missing = Vec::new();
    for ctrl in REQUIRED {
        if v1_mount(ctrl).is_some() {
            in_v1.push(ctrl);
        } else if on_v2(ctrl) {
            in_v2.push(ctrl);
        } else {
            missing.push(ctrl);
        }
    }
    let layout_s = layout.as_str();
    if !missing.is_empty() {
        let list = missing.join(", ");
        let fix = match (layout, &v2_root) {
            (Layout::V2, Some(root)) => format!(
                "{list} not in {root}/cgroup.controllers: boot without cgroup_disable={} (some boards also need cgroup_enable=memory) or use a kernel with CONFIG_MEMCG/CONFIG_CGROUP_SCHED/CONFIG_CGROUP_PIDS",
                missing[0]
            ),
            _ => format!(
                "mount each as v1: mkdir -p /sys/fs/cgroup/{c} && mount -t cgroup -o {c} cgroup /sys/fs/cgroup/{c} (or boot with systemd.unified_cgroup_hierarchy=1 for pure v2)",
                c = missing[0]
            ),
        };
        return Check::fail(
            name,
            format!("layout {layout_s}; missing controllers: {list}"),
            fix,
        );
    }
    if !in_v1.is_empty() && !in_v2.is_empty() {
        return Check::fail(
            name,
            format!(
                "layout {layout_s}; controllers split between v1 ({}) and v2 ({})",
                in_v1.join(","),
                in_v2.join(",")
            ),
            "boot with systemd.unified_cgroup_hierarchy=1 (all on v2) or =0 (all on v1)",
        );
    }
    if in_v2.is_empty() {
        let absent: Vec<&str> = V1_EXTRA
            .into_iter()
            .filter(|c| v1_mount(c).is_none())
            .collect();
        let detail = format!(
            "layout {layout_s}; driver uses v1: memory, cpu, pids{}",
            if absent.is_empty() {
                ", freezer, cpuacct, devices".to_string()
            } else {
                format!("; missing {}", absent.join(", "))
            }
        );
        if absent.is_empty() {
            return Check::ok(name, detail);
        }
        let c = absent[0];
        return Check::warn(
            name,
            detail,
            format!(
                "mkdir -p /sys/fs/cgroup/{c} && mount -t cgroup -o {c} cgroup /sys/fs/cgroup/{c} (freezer is needed for pause)"
            ),
        );
    }
    Check::ok(
        name,
        format!(
            "layout {layout_s}; driver uses v2 at {}: memory, cpu, pids (freeze built in)",
            v2_root.unwrap_or_default()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;
    use std::path::PathBuf;

    const HYBRID: &str = "\
30 23 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:6 - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:7 - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid shared:8 - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/pids rw,nosuid shared:9 - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/freezer rw,nosuid shared:10 - cgroup cgroup rw,freezer
37 30 0:33 / /sys/fs/cgroup/devices rw,nosuid shared:11 - cgroup cgroup rw,devices
";
    const V2: &str = "\
25 1 0:22 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    fn strings(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn mountinfo_parsing_and_layouts() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 7);
        assert_eq!(
            mounts[0].mount_point,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        assert_eq!(mounts[0].v1_controllers, None);
        assert_eq!(mounts[1].v1_controllers, Some(vec![]));
        assert_eq!(mounts[2].v1_controllers, Some(strings("cpu cpuacct")));
        assert_eq!(layout(&mounts), Layout::Hybrid);
        assert_eq!(layout(&parse_mountinfo(V2)), Layout::V2);
        assert_eq!(layout(&mounts[1..]), Layout::V1);
        assert_eq!(layout(&[]), Layout::None);
        let spaced = "1 0 0:1 / /a\\040b rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(spaced)[0].mount_point,
            PathBuf::from("/a b")
        );
    }

    #[test]
    fn hybrid_with_all_v1_controllers_is_ok() {
        let check = analyze(&parse_mountinfo(HYBRID), &strings("hugetlb"));
        assert_eq!(check.status, Status::Ok, "{check:?}");
        assert!(
            check.detail.starts_with("layout hybrid; driver uses v1"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn v1_without_freezer_warns_with_a_mount_fix() {
        let text: String = HYBRID
            .lines()
            .filter(|l| !l.contains("freezer"))
            .map(|l| format!("{l}\n"))
            .collect();
        let check = analyze(&parse_mountinfo(&text), &[]);
        assert_eq!(check.status, Status::Warn, "{check:?}");
        assert!(check.detail.contains("missing freezer"), "{}", check.detail);
        assert!(check
            .fix
            .as_deref()
            .unwrap_or("")
            .contains("mount -t cgroup -o freezer"));
    }

    #[test]
    fn pure_v2_needs_controllers_in_the_root() {
        let mounts = parse_mountinfo(V2);
        let ok = analyze(
            &mounts,
            &strings("cpuset cpu io memory hugetlb pids rdma misc"),
        );
        assert_eq!(ok.status, Status::Ok, "{ok:?}");
        assert!(ok.detail.contains("v2 at /sys/fs/cgroup"), "{}", ok.detail);
        let bad = analyze(&mounts, &strings("cpu io pids"));
        assert_eq!(bad.status, Status::Fail);
        assert!(
            bad.detail.contains("missing controllers: memory"),
            "{}",
            bad.detail
        );
        assert!(bad
            .fix
            .as_deref()
            .unwrap_or("")
            .contains("cgroup_disable=memory"));
    }

    #[test]
    fn split_and_missing_hierarchies_fail() {
        let text: String = HYBRID
            .lines()
            .filter(|l| !l.contains("pids"))
            .map(|l| format!("{l}\n"))
            .collect();
        let mounts = parse_mountinfo(&text);
        let split = analyze(&mounts, &strings("pids"));
        assert_eq!(split.status, Status::Fail);
        assert!(
            split.detail.contains("split between v1"),
            "{}",
            split.detail
        );
        let missing = analyze(&mounts, &[]);
        assert_eq!(missing.status, Status::Fail);
        assert!(missing
            .fix
            .as_deref()
            .unwrap_or("")
            .contains("mount -t cgroup -o pids"));
        assert_eq!(analyze(&[], &[]).status, Status::Fail);
    }
}
