//! The seccomp filter every sandbox runs under: a deny-list (everything not listed is allowed)
//! compiled with `seccompiler` and installed by the sandbox's PID 1 just before it drops its
//! capabilities and execs envd, so envd and everything it starts inherit it. The filter cannot be
//! removed, only narrowed further by the sandboxed processes themselves.
//!
//! Capabilities already keep root inside the sandbox away from most of the calls below; the
//! filter is a second wall that also holds when a capability check has a bug, when a setuid
//! binary runs, and against code paths that need no capability at all (user namespaces,
//! keyrings, `perf_event_open`, `userfaultfd`, `io_uring`). `no_new_privs` is deliberately NOT
//! set (E2B's `user` relies on `sudo`), so installing the filter needs `CAP_SYS_ADMIN`, which is
//! why it comes before the capabilities are dropped.
//!
//! The policy, group by group ([`Group`]; the full list is [`RULES`]):
//!
//! - **Kernel code** (`init_module`, `finit_module`, `delete_module`, `kexec_load`,
//!   `kexec_file_load`, `bpf`): loading code into the shared host kernel.
//! - **Keyrings** (`add_key`, `request_key`, `keyctl`): kernel keyrings are not namespaced and
//!   have a long CVE history.
//! - **Tracing** (`perf_event_open`, `lookup_dcookie`): observes the host and is a frequent
//!   exploit primitive.
//! - **File handles** (`open_by_handle_at`, `name_to_handle_at`): open files by handle, around
//!   the mount namespace (the "shocker" escape).
//! - **Mounts** (`mount`, `umount2`, `pivot_root`, `move_mount`, `open_tree`, `open_tree_attr`,
//!   `fsopen`, `fsconfig`, `fsmount`, `fspick`, `mount_setattr`): the sandbox's file system
//!   layout is fixed by the runtime; unmounting would uncover masked `/proc` files.
//! - **Namespaces** (`setns`; `unshare` and `clone` with any `CLONE_NEW*` flag; `clone3`):
//!   new namespaces, a user namespace above all, hand out capabilities over a large, poorly
//!   hardened kernel surface. `clone3` passes its flags in memory, which a filter cannot read,
//!   so it fails with `ENOSYS` and glibc (threads, `posix_spawn`) falls back to `clone`, whose
//!   flags are checked. `clone` and `unshare` without namespace flags (threads, `fork`,
//!   `vfork`, `unshare(CLONE_FILES)`) are allowed.
//! - **Host system** (`reboot`, `swapon`, `swapoff`, `acct`, `quotactl`, `quotactl_fd`,
//!   `syslog`, `vhangup`): host-global state, and the kernel log (host information).
//! - **Clock** (`settimeofday`, `clock_settime`, `clock_adjtime`, `adjtimex`): the clock is
//!   shared with the host. Read-only `adjtimex` queries (`ntp_gettime`) fail too; x86_64 has no
//!   `stime`.
//! - **Raw I/O** (`iopl`, `ioperm`): direct access to I/O ports.
//! - **Personality** (`personality`): only `PER_LINUX` (0), `PER_LINUX32` (8) and the query
//!   `0xffffffff` are allowed; flags such as `ADDR_NO_RANDOMIZE` or `READ_IMPLIES_EXEC` weaken
//!   exploit mitigations.
//! - **Memory tricks** (`userfaultfd`): pauses kernel page faults at will, the classic way to win
//!   kernel races.
//! - **io_uring** (`io_uring_setup`, `io_uring_enter`, `io_uring_register`): a large kernel
//!   surface with many recent CVEs, blocked by Docker and ChromeOS too; libuv and other users
//!   fall back to ordinary system calls when setup fails.
//! - **Obsolete** (`nfsservctl`, `uselib`): gone or unused, only attack surface.
//!
//! Allowed on purpose: `ptrace`, `process_vm_readv` and `process_vm_writev` (debuggers and
//! profilers work; the pid namespace confines them to the sandbox's own processes and
//! `CAP_SYS_PTRACE` is gone), and `kcmp`/`pidfd_getfd` (same reason).
//!
//! Architecture: only x86_64 is supported; [`compile`] refuses elsewhere with
//! [`SeccompError::UnsupportedArch`]. Every filter starts with an architecture check that kills
//! the process on any other ABI (i386 via `int 0x80`), and a small extra filter makes every x32
//! system call (numbers with bit 30 set, which carry the x86_64 architecture value and would slip
//! past the deny-list) fail with `ENOSYS`.

#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

use std::collections::BTreeMap;
use std::io;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::sys;

/// Why a system call is denied; see the module documentation for each group's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Loading code into the host kernel.
    KernelCode,
    /// Kernel keyrings (not namespaced).
    Keyrings,
    /// Performance and profiling interfaces.
    Tracing,
    /// Opening files by handle, around the mount namespace.
    FileHandles,
    /// Changing the mount table.
    Mounts,
    /// Creating or joining namespaces.
    Namespaces,
    /// Host-global state and the kernel log.
    HostSystem,
    /// Setting the (shared) clock.
    Clock,
    /// I/O port access.
    RawIo,
    /// Execution domains that weaken mitigations.
    Personality,
    /// `userfaultfd`.
    MemoryTricks,
    /// `io_uring`.
    IoUring,
    /// Obsolete interfaces.
    Obsolete,
}

/// When a listed system call is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Always.
    Always,
    /// When the first argument has any bit of the mask set.
    Arg0AnyBit(u64),
    /// When the first argument (its low 32 bits) is none of the values.
    Arg0NotIn(&'static [u32]),
}

/// One entry of the deny-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The system call's name (as in `man 2`).
    pub name: &'static str,
    /// The error the call fails with (`EPERM` or `ENOSYS`).
    pub errno: i32,
    /// When it is denied.
    pub when: When,
    /// Why.
    pub group: Group,
}

/// `CLONE_NEWTIME` (not in every libc version); only valid for `unshare` (for `clone` the bit
/// belongs to the exit signal).
const CLONE_NEWTIME: u64 = 0x80;

/// The namespace flags `clone` may not carry.
pub const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// The namespace flags `unshare` may not carry.
pub const UNSHARE_NAMESPACE_FLAGS: u64 = CLONE_NAMESPACE_FLAGS | CLONE_NEWTIME;

/// The `personality` values allowed: `PER_LINUX`, `PER_LINUX32` and the query.
pub const ALLOWED_PERSONALITIES: [u32; 3] = [0, 8, 0xffff_ffff];

const fn deny(name: &'static str, group: Group) -> Rule {
    Rule {
        name,
        errno: libc::EPERM,
        when: When::Always,
        group,
    }
}

/// The deny-list applied to every sandbox; everything else is allowed.
pub const RULES: &[Rule] = &[
    deny("init_module", Group::KernelCode),
    deny("finit_module", Group::KernelCode),
    deny("delete_module", Group::KernelCode),
    deny("kexec_load", Group::KernelCode),
    deny("kexec_file_load", Group::KernelCode),
    deny("bpf", Group::KernelCode),
    deny("add_key", Group::Keyrings),
    deny("request_key", Group::Keyrings),
    deny("keyctl", Group::Keyrings),
    deny("perf_event_open", Group::Tracing),
    deny("lookup_dcookie", Group::Tracing),
    deny("open_by_handle_at", Group::FileHandles),
    deny("name_to_handle_at", Group::FileHandles),
    deny("mount", Group::Mounts),
    deny("umount2", Group::Mounts),
    deny("pivot_root", Group::Mounts),
    deny("move_mount", Group::Mounts),
    deny("open_tree", Group::Mounts),
    deny("open_tree_attr", Group::Mounts),
    deny("fsopen", Group::Mounts),
    deny("fsconfig", Group::Mounts),
    deny("fsmount", Group::Mounts),
    deny("fspick", Group::Mounts),
    deny("mount_setattr", Group::Mounts),
    deny("setns", Group::Namespaces),
    Rule {
        name: "unshare",
        errno: libc::EPERM,
        when: When::Arg0AnyBit(UNSHARE_NAMESPACE_FLAGS),
        group: Group::Namespaces,
    },
    Rule {
        name: "clone",
        errno: libc::EPERM,
        when: When::Arg0AnyBit(CLONE_NAMESPACE_FLAGS),
        group: Group::Namespaces,
    },
    Rule {
        name: "clone3",
        errno: libc::ENOSYS,
        when: When::Always,
        group: Group::Namespaces,
    },
    deny("reboot", Group::HostSystem),
    deny("swapon", Group::HostSystem),
    deny("swapoff", Group::HostSystem),
    deny("acct", Group::HostSystem),
    deny("quotactl", Group::HostSystem),
    deny("quotactl_fd", Group::HostSystem),
    deny("syslog", Group::HostSystem),
    deny("vhangup", Group::HostSystem),
    deny("settimeofday", Group::Clock),
    deny("clock_settime", Group::Clock),
    deny("clock_adjtime", Group::Clock),
    deny("adjtimex", Group::Clock),
    deny("iopl", Group::RawIo),
    deny("ioperm", Group::RawIo),
    Rule {
        name: "personality",
        errno: libc::EPERM,
        when: When::Arg0NotIn(&ALLOWED_PERSONALITIES),
        group: Group::Personality,
    },
    deny("userfaultfd", Group::MemoryTricks),
    deny("io_uring_setup", Group::IoUring),
    deny("io_uring_enter", Group::IoUring),
    deny("io_uring_register", Group::IoUring),
    deny("nfsservctl", Group::Obsolete),
    deny("uselib", Group::Obsolete),
];

/// Failures compiling or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The sandbox filter is only defined for x86_64.
    #[error("seccomp filter: architecture {0} is not supported (only x86_64)")]
    UnsupportedArch(&'static str),
    /// A rule names a system call this architecture does not have.
    #[error("seccomp filter: unknown system call {0}")]
    UnknownSyscall(&'static str),
    /// `seccompiler` rejected the filter.
    #[error("compiling the seccomp filter: {0}")]
    Compile(String),
    /// The kernel refused the filter.
    #[error("installing the seccomp filter")]
    Install(#[source] io::Error),
}

/// The compiled filter: one BPF program per error number plus the x32 guard, installed in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompProgram {
    filters: Vec<BpfProgram>,
}

impl SeccompProgram {
    /// Total number of BPF instructions over all filters.
    pub fn len(&self) -> usize {
        self.filters.iter().map(Vec::len).sum()
    }

    /// Whether there is no instruction at all (never true for [`compile`]'s result).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Installs the filters on the calling thread, for good: it and every process it starts
    /// from now on run under them. Does not set `no_new_privs`, so the caller needs
    /// `CAP_SYS_ADMIN` (or must have set `no_new_privs` itself). Allocates nothing, so it may run
    /// between `fork` and `exec` of a multi-threaded process.
    pub fn install(&self) -> Result<(), SeccompError> {
        for filter in &self.filters {
            sys::seccomp_set_filter(filter).map_err(SeccompError::Install)?;
        }
        Ok(())
    }
}

/// The system call number of `name` on x86_64 (`None` for names this table does not know).
#[cfg(target_arch = "x86_64")]
fn syscall_number(name: &str) -> Option<i64> {
    use libc::*;
    let nr = match name {
        "init_module" => SYS_init_module,
        "finit_module" => SYS_finit_module,
        "delete_module" => SYS_delete_module,
        "kexec_load" => SYS_kexec_load,
        "kexec_file_load" => SYS_kexec_file_load,
        "bpf" => SYS_bpf,
        "add_key" => SYS_add_key,
        "request_key" => SYS_request_key,
        "keyctl" => SYS_keyctl,
        "perf_event_open" => SYS_perf_event_open,
        "lookup_dcookie" => SYS_lookup_dcookie,
        "open_by_handle_at" => SYS_open_by_handle_at,
        "name_to_handle_at" => SYS_name_to_handle_at,
        "mount" => SYS_mount,
        "umount2" => SYS_umount2,
        "pivot_root" => SYS_pivot_root,
        "move_mount" => SYS_move_mount,
        "open_tree" => SYS_open_tree,
        // Linux 6.15; not in libc yet.
        "open_tree_attr" => 467,
        "fsopen" => SYS_fsopen,
        "fsconfig" => SYS_fsconfig,
        "fsmount" => SYS_fsmount,
        "fspick" => SYS_fspick,
        "mount_setattr" => SYS_mount_setattr,
        "setns" => SYS_setns,
        "unshare" => SYS_unshare,
        "clone" => SYS_clone,
        "clone3" => SYS_clone3,
        "reboot" => SYS_reboot,
        "swapon" => SYS_swapon,
        "swapoff" => SYS_swapoff,
        "acct" => SYS_acct,
        "quotactl" => SYS_quotactl,
        "quotactl_fd" => SYS_quotactl_fd,
        "syslog" => SYS_syslog,
        "vhangup" => SYS_vhangup,
        "settimeofday" => SYS_settimeofday,
        "clock_settime" => SYS_clock_settime,
        "clock_adjtime" => SYS_clock_adjtime,
        "adjtimex" => SYS_adjtimex,
        "iopl" => SYS_iopl,
        "ioperm" => SYS_ioperm,
        "personality" => SYS_personality,
        "userfaultfd" => SYS_userfaultfd,
        "io_uring_setup" => SYS_io_uring_setup,
        "io_uring_enter" => SYS_io_uring_enter,
        "io_uring_register" => SYS_io_uring_register,
        "nfsservctl" => SYS_nfsservctl,
        "uselib" => SYS_uselib,
        _ => return None,
    };
    Some(nr)
}

/// x32 system calls are x86_64-arch calls with this bit set in the number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `AUDIT_ARCH_X86_64`.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

/// The filter that makes every x32 system call fail with `ENOSYS` (and, like the others, kills
/// the process on a foreign architecture).
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        // seccomp_data.arch
        ins(LD_W_ABS, 0, 0, 4),
        ins(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        // seccomp_data.nr
        ins(LD_W_ABS, 0, 0, 0),
        ins(JGE_K, 0, 1, X32_SYSCALL_BIT),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// The seccompiler rules (OR of ANDs) that make `when` match.
fn conditions(when: When) -> Result<Vec<SeccompRule>, SeccompError> {
    let err = |e: seccompiler::BackendError| SeccompError::Compile(e.to_string());
    let cond = |op, value| SeccompCondition::new(0, SeccompCmpArgLen::Dword, op, value);
    match when {
        When::Always => Ok(Vec::new()),
        // One rule per bit: (arg0 & bit) == bit.
        When::Arg0AnyBit(mask) => (0..64)
            .map(|b| 1u64 << b)
            .filter(|bit| mask & bit != 0)
            .map(|bit| {
                SeccompRule::new(vec![cond(SeccompCmpOp::MaskedEq(bit), bit).map_err(err)?])
                    .map_err(err)
            })
            .collect(),
        // One rule: arg0 != a && arg0 != b && ...
        When::Arg0NotIn(values) => {
            let conds = values
                .iter()
                .map(|v| cond(SeccompCmpOp::Ne, u64::from(*v)).map_err(err))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(vec![SeccompRule::new(conds).map_err(err)?])
        }
    }
}

/// Compiles [`RULES`] for the running architecture.
#[cfg(target_arch = "x86_64")]
pub fn compile() -> Result<SeccompProgram, SeccompError> {
    let err = |e: seccompiler::BackendError| SeccompError::Compile(e.to_string());
    let mut by_errno: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for rule in RULES {
        let nr = syscall_number(rule.name).ok_or(SeccompError::UnknownSyscall(rule.name))?;
        let chain = conditions(rule.when)?;
        let previous = by_errno.entry(rule.errno).or_default().insert(nr, chain);
        if previous.is_some() {
            return Err(SeccompError::Compile(format!(
                "system call {} is listed twice",
                rule.name
            )));
        }
    }
    let mut filters = vec![x32_guard()];
    for (errno, rules) in by_errno {
        let errno = u32::try_from(errno)
            .map_err(|_| SeccompError::Compile(format!("negative errno {errno}")))?;
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno),
            TargetArch::x86_64,
        )
        .map_err(err)?;
        filters.push(BpfProgram::try_from(filter).map_err(err)?);
    }
    Ok(SeccompProgram { filters })
}

/// Compiles [`RULES`] for the running architecture.
#[cfg(not(target_arch = "x86_64"))]
pub fn compile() -> Result<SeccompProgram, SeccompError> {
    Err(SeccompError::UnsupportedArch(std::env::consts::ARCH))
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn filter_compiles_and_fits() {
        let program = compile().expect("compile");
        // The x32 guard plus one filter each for EPERM and ENOSYS.
        assert_eq!(program.filters.len(), 3);
        assert!(!program.is_empty());
        for f in &program.filters {
            assert!(f.len() <= 4096, "BPF_MAXINSNS");
            // Every filter starts with the architecture check.
            assert_eq!(f[0].k, 4, "loads seccomp_data.arch first");
            assert_eq!(f[1].k, AUDIT_ARCH_X86_64);
            assert_eq!(f[2].k, libc::SECCOMP_RET_KILL_PROCESS);
        }
    }

    #[test]
    fn required_syscalls_are_listed_once() {
        let required = [
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "kexec_file_load",
            "add_key",
            "request_key",
            "keyctl",
            "bpf",
            "perf_event_open",
            "open_by_handle_at",
            "name_to_handle_at",
            "mount",
            "umount2",
            "pivot_root",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "mount_setattr",
            "reboot",
            "swapon",
            "swapoff",
            "settimeofday",
            "clock_settime",
            "clock_adjtime",
            "adjtimex",
            "acct",
            "quotactl",
            "lookup_dcookie",
            "iopl",
            "ioperm",
            "personality",
            "userfaultfd",
            "unshare",
            "clone",
            "clone3",
            "setns",
            "vhangup",
            "nfsservctl",
            "uselib",
            "syslog",
        ];
        for name in required {
            assert_eq!(RULES.iter().filter(|r| r.name == name).count(), 1, "{name}");
        }
        for rule in RULES {
            assert!(syscall_number(rule.name).is_some(), "{}", rule.name);
            assert!(matches!(rule.errno, libc::EPERM | libc::ENOSYS));
        }
        // Debugging stays possible (confined by the pid namespace).
        for allowed in [
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "fork",
            "vfork",
        ] {
            assert!(RULES.iter().all(|r| r.name != allowed), "{allowed}");
        }
    }

    #[test]
    fn conditional_rules_have_the_documented_shape() {
        let find = |name| RULES.iter().find(|r| r.name == name).expect("listed");
        assert_eq!(find("clone3").errno, libc::ENOSYS);
        assert_eq!(find("clone").when, When::Arg0AnyBit(CLONE_NAMESPACE_FLAGS));
        // CLONE_NEWTIME overlaps clone's exit-signal byte, so only unshare checks it.
        assert_eq!(CLONE_NAMESPACE_FLAGS & 0xff, 0);
        assert_eq!(UNSHARE_NAMESPACE_FLAGS & 0xff, CLONE_NEWTIME);
        // Seven namespace bits → seven OR-ed rules.
        assert_eq!(
            conditions(When::Arg0AnyBit(CLONE_NAMESPACE_FLAGS))
                .expect("rules")
                .len(),
            7
        );
        assert_eq!(
            find("personality").when,
            When::Arg0NotIn(&ALLOWED_PERSONALITIES)
        );
        assert_eq!(
            conditions(When::Arg0NotIn(&ALLOWED_PERSONALITIES))
                .expect("rules")
                .len(),
            1
        );
        assert!(conditions(When::Always).expect("rules").is_empty());
    }
}
