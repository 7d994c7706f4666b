//! The container's mount table: the default kernel filesystems, the pod's
//! shared files, then the CRI mounts.

use std::path::Path;

use crate::proto;
use crate::proto::MountPropagation;

use super::oci;
use super::{PodFiles, SpecError};

fn opts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn kernel_mount(destination: &str, kind: &str, options: &[&str]) -> oci::Mount {
    oci::Mount {
        destination: destination.to_string(),
        kind: kind.to_string(),
        source: kind.to_string(),
        options: opts(options),
    }
}

pub(crate) fn bind(destination: &str, source: &Path, readonly: bool) -> oci::Mount {
    oci::Mount {
        destination: destination.to_string(),
        kind: "bind".to_string(),
        source: source.to_string_lossy().into_owned(),
        options: opts(&["rbind", "rprivate", if readonly { "ro" } else { "rw" }]),
    }
}

/// The filesystems every container gets (containerd's defaults). Privileged
/// containers get /sys and its cgroup tree writable.
pub(crate) fn default_mounts(privileged: bool, shm: Option<&Path>) -> Vec<oci::Mount> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    let mut mounts = vec![
        kernel_mount("/proc", "proc", &["nosuid", "noexec", "nodev"]),
        kernel_mount(
            "/dev",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        oci::Mount {
            destination: "/dev/pts".to_string(),
            kind: "devpts".to_string(),
            source: "devpts".to_string(),
            options: opts(&[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ]),
        },
        kernel_mount("/dev/mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        kernel_mount("/sys", "sysfs", &["nosuid", "noexec", "nodev", sys_mode]),
        kernel_mount(
            "/sys/fs/cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
    ];
    mounts.push(match shm {
        // The pod's shared /dev/shm, so containers of one IPC namespace
        // see the same POSIX shared memory.
        Some(path) => oci::Mount {
            destination: "/dev/shm".to_string(),
            kind: "bind".to_string(),
            source: path.to_string_lossy().into_owned(),
            options: opts(&["rbind", "rprivate", "nosuid", "nodev", "noexec", "rw"]),
        },
        None => kernel_mount(
            "/dev/shm",
            "tmpfs",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
    });
    mounts
}

/// Lexically cleaned absolute path: no empty, `.` or `..` components.
pub(crate) fn clean_absolute(path: &str, what: &str) -> Result<String, SpecError> {
    if !path.starts_with('/') {
        return Err(SpecError::InvalidArgument(format!(
            "{what} {path:?} is not an absolute path"
        )));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

fn depth(destination: &str) -> usize {
    destination.split('/').filter(|p| !p.is_empty()).count()
}

/// What the CRI mounts imply beyond the mount list itself.
pub(crate) struct MountPlan {
    pub mounts: Vec<oci::Mount>,
    /// `rshared` if any mount is bidirectional, else `rslave` if any is
    /// host-to-container: runc refuses shared/slave mounts under a private
    /// rootfs.
    pub rootfs_propagation: Option<String>,
}

pub(crate) struct MountInput<'a> {
    pub cri: &'a [proto::Mount],
    pub privileged: bool,
    pub readonly_rootfs: bool,
    pub pod_files: &'a PodFiles,
    pub handler_name: &'a str,
    pub supports_recursive_read_only: bool,
}

pub(crate) fn plan(input: &MountInput<'_>) -> Result<MountPlan, SpecError> {
    let mut cri_mounts = Vec::with_capacity(input.cri.len());
    let mut propagation = None;
    for m in input.cri {
        let (mount, p) = cri_mount(m, input)?;
        match (p, propagation) {
            (Some("rshared"), _) => propagation = Some("rshared"),
            (Some("rslave"), None) => propagation = Some("rslave"),
            _ => {}
        }
        cri_mounts.push(mount);
    }
    let taken = |dest: &str| cri_mounts.iter().any(|m| m.destination == dest);

    let mut mounts: Vec<oci::Mount> =
        default_mounts(input.privileged, input.pod_files.shm.as_deref())
            .into_iter()
            .filter(|m| !taken(&m.destination))
            .collect();
    // The pod's files follow the rootfs: read-only when it is.
    let pod_files = [
        ("/etc/hosts", &input.pod_files.hosts),
        ("/etc/resolv.conf", &input.pod_files.resolv_conf),
        ("/etc/hostname", &input.pod_files.hostname),
    ];
    for (dest, source) in pod_files {
        if let Some(source) = source
            && !taken(dest)
        {
            mounts.push(bind(dest, source, input.readonly_rootfs));
        }
    }
    mounts.extend(cri_mounts);
    // Parents before children; the sort is stable so equal depths keep
    // their order (later mounts still win at the same destination).
    mounts.sort_by_key(|m| depth(&m.destination));
    Ok(MountPlan {
        mounts,
        rootfs_propagation: propagation.map(str::to_string),
    })
}

fn cri_mount(
    m: &proto::Mount,
    input: &MountInput<'_>,
) -> Result<(oci::Mount, Option<&'static str>), SpecError> {
    let destination = clean_absolute(&m.container_path, "mount container_path")?;
    if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
        return Err(SpecError::InvalidArgument(format!(
            "mount {destination}: image volumes are not supported"
        )));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(SpecError::InvalidArgument(format!(
            "mount {destination}: id-mapped mounts are not supported"
        )));
    }
    if m.host_path.is_empty() {
        return Err(SpecError::InvalidArgument(format!(
            "mount {destination} has no host_path"
        )));
    }
    let propagation = match MountPropagation::try_from(m.propagation) {
        Ok(MountPropagation::PropagationPrivate) => "rprivate",
        Ok(MountPropagation::PropagationHostToContainer) => "rslave",
        Ok(MountPropagation::PropagationBidirectional) => "rshared",
        Err(_) => {
            return Err(SpecError::InvalidArgument(format!(
                "mount {destination}: unknown propagation {}",
                m.propagation
            )));
        }
    };
    let mut options = vec!["rbind".to_string(), propagation.to_string()];
    options.push(if m.readonly { "ro" } else { "rw" }.to_string());
    if m.recursive_read_only {
        // The CRI's rules: rro only with readonly and private propagation.
        if !m.readonly {
            return Err(SpecError::InvalidArgument(format!(
                "mount {destination}: recursive_read_only needs readonly"
            )));
        }
        if propagation != "rprivate" {
            return Err(SpecError::InvalidArgument(format!(
                "mount {destination}: recursive_read_only needs PROPAGATION_PRIVATE"
            )));
        }
        if !input.supports_recursive_read_only {
            return Err(SpecError::InvalidArgument(format!(
                "runtime handler {:?} does not support recursive read-only mounts (mount {destination}); run the pod on a handler that does (Status lists each handler's features) or drop recursive_read_only",
                input.handler_name
            )));
        }
        options.push("rro".to_string());
    }
    let mount = oci::Mount {
        destination,
        kind: "bind".to_string(),
        source: m.host_path.clone(),
        options,
    };
    let implied = (propagation != "rprivate").then_some(propagation);
    Ok((mount, implied))
}
