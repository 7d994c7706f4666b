//! Capabilities, seccomp, AppArmor, SELinux and the masked/read-only /proc
//! and /sys paths.

use crate::proto;
use crate::proto::security_profile::ProfileType;

use super::SpecError;
use super::oci;

/// Docker's and containerd's default set for unprivileged containers.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux defines (0 to 40, CAP_CHECKPOINT_RESTORE being
/// the last as of Linux 6.x), in kernel order.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// containerd's defaults: kernel interfaces that leak host information or
/// allow host-wide actions.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// `net_admin`, `NET_ADMIN` and `CAP_NET_ADMIN` all name one capability.
pub(crate) fn normalize_capability(name: &str) -> Result<String, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if ALL_CAPABILITIES.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(SpecError::InvalidArgument(format!(
            "unknown capability {name:?}"
        )))
    }
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// containerd's order: add ALL, drop ALL, then the named adds, then the
/// named drops; so `drop: [ALL], add: [NET_ADMIN]` leaves only NET_ADMIN.
pub(crate) fn capabilities(
    privileged: bool,
    requested: Option<&proto::Capability>,
) -> Result<oci::Capabilities, SpecError> {
    let all = || ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    let empty = proto::Capability::default();
    let requested = requested.unwrap_or(&empty);
    let mut set: Vec<String> = if privileged {
        all()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    };
    let mut ambient = Vec::new();
    if !privileged {
        if requested.add_capabilities.iter().any(|c| is_all(c)) {
            set = all();
        }
        if requested.drop_capabilities.iter().any(|c| is_all(c)) {
            set.clear();
        }
        for cap in requested.add_capabilities.iter().filter(|c| !is_all(c)) {
            let cap = normalize_capability(cap)?;
            if !set.contains(&cap) {
                set.push(cap);
            }
        }
        for cap in requested.drop_capabilities.iter().filter(|c| !is_all(c)) {
            let cap = normalize_capability(cap)?;
            set.retain(|c| *c != cap);
        }
    }
    // An ambient capability must also be permitted and inheritable.
    for cap in &requested.add_ambient_capabilities {
        let cap = normalize_capability(cap)?;
        if !set.contains(&cap) {
            set.push(cap.clone());
        }
        if !ambient.contains(&cap) {
            ambient.push(cap);
        }
    }
    Ok(oci::Capabilities {
        bounding: set.clone(),
        effective: set.clone(),
        permitted: set,
        inheritable: ambient.clone(),
        ambient,
    })
}

/// A profile choice common to seccomp and AppArmor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Profile {
    RuntimeDefault,
    Unconfined,
    /// Seccomp: a path on the node; AppArmor: a loaded profile's name.
    Localhost(String),
}

fn from_security_profile(what: &str, p: &proto::SecurityProfile) -> Result<Profile, SpecError> {
    match ProfileType::try_from(p.profile_type) {
        Ok(ProfileType::RuntimeDefault) => Ok(Profile::RuntimeDefault),
        Ok(ProfileType::Unconfined) => Ok(Profile::Unconfined),
        Ok(ProfileType::Localhost) if p.localhost_ref.is_empty() => {
            Err(SpecError::InvalidArgument(format!(
                "{what} profile type Localhost needs a localhost_ref"
            )))
        }
        Ok(ProfileType::Localhost) => Ok(Profile::Localhost(p.localhost_ref.clone())),
        Err(_) => Err(SpecError::InvalidArgument(format!(
            "unknown {what} profile type {}",
            p.profile_type
        ))),
    }
}

/// The deprecated string form: `runtime/default`, `docker/default`,
/// `unconfined`, `localhost/<ref>`; `empty` is what "" means.
fn from_legacy(what: &str, value: &str, empty: Profile) -> Result<Profile, SpecError> {
    match value {
        "" => Ok(empty),
        "runtime/default" | "docker/default" => Ok(Profile::RuntimeDefault),
        "unconfined" => Ok(Profile::Unconfined),
        _ => match value.strip_prefix("localhost/") {
            Some(r) if !r.is_empty() => Ok(Profile::Localhost(r.to_string())),
            _ => Err(SpecError::InvalidArgument(format!(
                "invalid {what} profile {value:?}"
            ))),
        },
    }
}

/// An unset seccomp profile means unconfined (the CRI's and the kubelet's
/// reading of a nil profile).
pub(crate) fn seccomp_choice(
    sc: &proto::LinuxContainerSecurityContext,
) -> Result<Profile, SpecError> {
    match &sc.seccomp {
        Some(p) => from_security_profile("seccomp", p),
        #[allow(deprecated)]
        None => from_legacy("seccomp", &sc.seccomp_profile_path, Profile::Unconfined),
    }
}

/// An unset AppArmor profile means the runtime default, as in containerd
/// (kubernetes#51746).
pub(crate) fn apparmor_choice(
    sc: &proto::LinuxContainerSecurityContext,
) -> Result<Profile, SpecError> {
    match &sc.apparmor {
        Some(p) => from_security_profile("AppArmor", p),
        #[allow(deprecated)]
        None => from_legacy("AppArmor", &sc.apparmor_profile, Profile::RuntimeDefault),
    }
}

/// SELinux label from the CRI options; unset parts take the usual
/// container defaults.
pub(crate) fn selinux_labels(opts: &proto::SeLinuxOption) -> Option<(String, String)> {
    if opts.user.is_empty()
        && opts.role.is_empty()
        && opts.r#type.is_empty()
        && opts.level.is_empty()
    {
        return None;
    }
    let or = |v: &str, d: &str| {
        if v.is_empty() {
            d.to_string()
        } else {
            v.to_string()
        }
    };
    let user = or(&opts.user, "system_u");
    let level = or(&opts.level, "s0");
    let process = format!(
        "{user}:{}:{}:{level}",
        or(&opts.role, "system_r"),
        or(&opts.r#type, "container_t")
    );
    let mount = format!("{user}:object_r:container_file_t:{level}");
    Some((process, mount))
}
