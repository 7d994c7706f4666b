//! The built-in `RuntimeDefault` seccomp profile.
//!
//! A deny-list rather than Docker's allow-list: everything is allowed except
//! the syscalls that reach outside the container (kernel modules, kexec,
//! clocks, keyrings, swap, accounting, namespace and mount manipulation,
//! tracing other processes, BPF, perf, io_uring…). Those fail with EPERM
//! unless the container holds the capability that legitimately grants them,
//! which mirrors the gating Docker's profile does. Syscall names a runtime's
//! libseccomp does not know for the architecture are skipped by runc, crun
//! and youki, so one list serves every architecture.

use std::collections::BTreeSet;

use super::oci::{Seccomp, Syscall, SyscallArg};

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// `(capability that lifts the ban, syscalls)`; `None` means always denied.
const DENIED: &[(Option<&str>, &[&str])] = &[
    (
        None,
        &[
            // Obsolete or never namespaced; no container needs them.
            "_sysctl",
            "add_key",
            "create_module",
            "get_kernel_syms",
            "keyctl",
            "lookup_dcookie",
            "nfsservctl",
            "query_module",
            "request_key",
            "sysfs",
            "uselib",
            "ustat",
            "vm86",
            "vm86old",
            // io_uring bypasses seccomp for the operations it performs.
            "io_uring_enter",
            "io_uring_register",
            "io_uring_setup",
        ],
    ),
    (
        Some("CAP_SYS_MODULE"),
        &["delete_module", "finit_module", "init_module"],
    ),
    (
        Some("CAP_SYS_BOOT"),
        &["kexec_file_load", "kexec_load", "reboot"],
    ),
    (
        Some("CAP_SYS_TIME"),
        &[
            "clock_adjtime",
            "clock_adjtime64",
            "clock_settime",
            "clock_settime64",
            "settimeofday",
            "stime",
        ],
    ),
    (Some("CAP_SYS_PACCT"), &["acct"]),
    (
        Some("CAP_SYS_PTRACE"),
        &[
            "kcmp",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
            "userfaultfd",
        ],
    ),
    (Some("CAP_SYS_RAWIO"), &["ioperm", "iopl"]),
    (Some("CAP_SYSLOG"), &["syslog"]),
    (Some("CAP_DAC_READ_SEARCH"), &["open_by_handle_at"]),
    (
        Some("CAP_SYS_ADMIN"),
        &[
            "bpf",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "pivot_root",
            "quotactl",
            "quotactl_fd",
            "setns",
            "swapoff",
            "swapon",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
];

/// CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];

fn architectures() -> Vec<String> {
    let arches: &[&str] = if cfg!(target_arch = "x86_64") {
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        // The runtime then filters the native architecture only.
        &[]
    };
    arches.iter().map(|a| a.to_string()).collect()
}

/// The default profile for a process holding `capabilities` (bounding set).
pub fn default_profile(capabilities: &[String]) -> Seccomp {
    let has = |cap: &str| capabilities.iter().any(|c| c == cap);
    let mut denied = BTreeSet::new();
    for (cap, names) in DENIED {
        if cap.is_none_or(|cap| !has(cap)) {
            denied.extend(names.iter().map(|n| n.to_string()));
        }
    }
    // CAP_BPF and CAP_PERFMON (Linux 5.8) grant these without CAP_SYS_ADMIN.
    if has("CAP_BPF") {
        denied.remove("bpf");
    }
    if has("CAP_PERFMON") {
        denied.remove("perf_event_open");
    }
    let mut syscalls = vec![Syscall {
        names: denied.into_iter().collect(),
        action: "SCMP_ACT_ERRNO".to_string(),
        errno_ret: Some(EPERM),
        args: Vec::new(),
    }];
    if !has("CAP_SYS_ADMIN") {
        // clone: one rule per namespace flag, since the rules of one syscall
        // are OR-ed and a masked compare tests a single condition.
        for flag in CLONE_NAMESPACE_FLAGS {
            syscalls.push(Syscall {
                names: vec!["clone".to_string()],
                action: "SCMP_ACT_ERRNO".to_string(),
                errno_ret: Some(EPERM),
                args: vec![SyscallArg {
                    index: 0,
                    value: *flag,
                    value_two: *flag,
                    op: "SCMP_CMP_MASKED_EQ".to_string(),
                }],
            });
        }
        // clone3 passes its flags in memory seccomp cannot read: ENOSYS
        // makes libc fall back to clone, where the rules above apply.
        syscalls.push(Syscall {
            names: vec!["clone3".to_string()],
            action: "SCMP_ACT_ERRNO".to_string(),
            errno_ret: Some(ENOSYS),
            args: Vec::new(),
        });
    }
    Seccomp {
        default_action: "SCMP_ACT_ALLOW".to_string(),
        default_errno_ret: None,
        architectures: architectures(),
        flags: Vec::new(),
        syscalls,
    }
}
