//! cgroup resources, devices and the OOM score.

use std::collections::BTreeMap;

use crate::proto;

use super::SpecError;
use super::oci;

const DEFAULT_CPU_PERIOD: i64 = 100_000;

/// Device cgroup rules for unprivileged containers: deny everything, then
/// allow the nodes every container gets (the set runc also allows).
pub(crate) fn default_device_rules() -> Vec<oci::DeviceCgroup> {
    let rule =
        |kind: &str, major: Option<i64>, minor: Option<i64>, access: &str| oci::DeviceCgroup {
            allow: true,
            kind: Some(kind.to_string()),
            major,
            minor,
            access: Some(access.to_string()),
        };
    vec![
        oci::DeviceCgroup {
            allow: false,
            kind: None,
            major: None,
            minor: None,
            access: Some("rwm".to_string()),
        },
        // mknod of any node is harmless without access to it.
        rule("c", None, None, "m"),
        rule("b", None, None, "m"),
        rule("c", Some(1), Some(3), "rwm"), // null
        rule("c", Some(1), Some(5), "rwm"), // zero
        rule("c", Some(1), Some(7), "rwm"), // full
        rule("c", Some(1), Some(8), "rwm"), // random
        rule("c", Some(1), Some(9), "rwm"), // urandom
        rule("c", Some(5), Some(0), "rwm"), // tty
        rule("c", Some(5), Some(2), "rwm"), // ptmx
        rule("c", Some(136), None, "rwm"),  // pts/*
    ]
}

pub(crate) fn allow_all_devices() -> Vec<oci::DeviceCgroup> {
    vec![oci::DeviceCgroup {
        allow: true,
        kind: None,
        major: None,
        minor: None,
        access: Some("rwm".to_string()),
    }]
}

/// The CRI's devices, resolved against the host's device list (which the
/// caller read from /dev). A directory host_path maps every device under it.
pub(crate) fn cri_devices(
    requested: &[proto::Device],
    host: &[oci::Device],
) -> Result<(Vec<oci::Device>, Vec<oci::DeviceCgroup>), SpecError> {
    let mut devices = Vec::new();
    let mut rules = Vec::new();
    for d in requested {
        let container_path =
            super::mounts::clean_absolute(&d.container_path, "device container_path")?;
        let permissions = if d.permissions.is_empty() {
            "rwm".to_string()
        } else if d.permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            d.permissions.clone()
        } else {
            return Err(SpecError::InvalidArgument(format!(
                "device {}: invalid permissions {:?} (only r, w, m)",
                d.host_path, d.permissions
            )));
        };
        let host_path = d.host_path.trim_end_matches('/');
        let prefix = format!("{host_path}/");
        let mut found = false;
        for h in host {
            let suffix = if h.path == host_path {
                ""
            } else if let Some(rest) = h.path.strip_prefix(&prefix) {
                rest
            } else {
                continue;
            };
            found = true;
            let path = if suffix.is_empty() {
                container_path.clone()
            } else {
                format!("{}/{suffix}", container_path.trim_end_matches('/'))
            };
            devices.push(oci::Device { path, ..h.clone() });
            rules.push(oci::DeviceCgroup {
                allow: true,
                kind: Some(h.kind.clone()),
                major: Some(h.major),
                minor: Some(h.minor),
                access: Some(permissions.clone()),
            });
        }
        if !found {
            return Err(SpecError::InvalidArgument(format!(
                "device {:?} is not a device on this host",
                d.host_path
            )));
        }
    }
    Ok((devices, rules))
}

/// `2MB`, `1GB`, `64KB`: the page-size spelling runc and the kubelet use.
fn valid_page_size(size: &str) -> bool {
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &size[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && matches!(unit, "B" | "KB" | "MB" | "GB" | "TB" | "PB")
}

/// The CRI's resources as cgroup settings; 0 means "unset" in the CRI.
pub(crate) fn linux_resources(
    r: &proto::LinuxContainerResources,
    cgroup_v2: bool,
) -> Result<oci::Resources, SpecError> {
    let mut out = oci::Resources::default();
    let cpu = oci::Cpu {
        shares: u64::try_from(r.cpu_shares).ok().filter(|v| *v > 0),
        quota: (r.cpu_quota > 0).then_some(r.cpu_quota),
        period: u64::try_from(r.cpu_period).ok().filter(|v| *v > 0),
        cpus: (!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone()),
        mems: (!r.cpuset_mems.is_empty()).then(|| r.cpuset_mems.clone()),
    };
    if cpu != oci::Cpu::default() {
        out.cpu = Some(cpu);
    }
    if r.memory_limit_in_bytes > 0 {
        let limit = r.memory_limit_in_bytes;
        // swap is memory+swap: equal to the limit means no swap, what the
        // kubelet expects unless it asks for swap explicitly.
        let swap = if r.memory_swap_limit_in_bytes > 0 {
            r.memory_swap_limit_in_bytes
        } else {
            limit
        };
        out.memory = Some(oci::Memory {
            limit: Some(limit),
            reservation: None,
            swap: Some(swap),
        });
    }
    for h in &r.hugepage_limits {
        if !valid_page_size(&h.page_size) {
            return Err(SpecError::InvalidArgument(format!(
                "invalid hugepage size {:?}",
                h.page_size
            )));
        }
        out.hugepage_limits.push(oci::HugepageLimit {
            page_size: h.page_size.clone(),
            limit: h.limit,
        });
    }
    let unified: BTreeMap<String, String> = r
        .unified
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if cgroup_v2 {
        out.unified = unified;
    } else {
        // runc refuses `unified` on cgroup v1; translate what has a v1 form.
        for (key, value) in unified {
            match key.as_str() {
                "pids.max" => {
                    let limit = if value == "max" {
                        -1
                    } else {
                        value.parse().map_err(|_| {
                            SpecError::InvalidArgument(format!("invalid pids.max {value:?}"))
                        })?
                    };
                    out.pids = Some(oci::Pids { limit });
                }
                _ => {
                    return Err(SpecError::InvalidArgument(format!(
                        "unified cgroup setting {key:?} needs cgroup v2; this host uses cgroup v1"
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// The pod cgroup's budget: the containers' aggregate plus the pod overhead.
/// Overhead only adds to a limit that exists: an unlimited pod stays so.
pub(crate) fn pod_resources(
    overhead: Option<&proto::LinuxContainerResources>,
    resources: Option<&proto::LinuxContainerResources>,
) -> Option<proto::LinuxContainerResources> {
    let (mut total, overhead) = match (resources, overhead) {
        (None, None) => return None,
        (Some(r), None) => return Some(r.clone()),
        (None, Some(o)) => (proto::LinuxContainerResources::default(), o),
        (Some(r), Some(o)) => (r.clone(), o),
    };
    total.cpu_shares = total.cpu_shares.saturating_add(overhead.cpu_shares.max(0));
    if total.cpu_quota > 0 && overhead.cpu_quota > 0 {
        let period = if total.cpu_period > 0 {
            total.cpu_period
        } else {
            DEFAULT_CPU_PERIOD
        };
        let overhead_period = if overhead.cpu_period > 0 {
            overhead.cpu_period
        } else {
            DEFAULT_CPU_PERIOD
        };
        // Scale the overhead's quota to the pod's period.
        let scaled =
            i128::from(overhead.cpu_quota) * i128::from(period) / i128::from(overhead_period);
        total.cpu_quota = total
            .cpu_quota
            .saturating_add(i64::try_from(scaled).unwrap_or(i64::MAX));
    }
    if total.memory_limit_in_bytes > 0 && overhead.memory_limit_in_bytes > 0 {
        total.memory_limit_in_bytes = total
            .memory_limit_in_bytes
            .saturating_add(overhead.memory_limit_in_bytes);
    }
    for h in &mut total.hugepage_limits {
        if let Some(o) = overhead
            .hugepage_limits
            .iter()
            .find(|o| o.page_size == h.page_size)
        {
            h.limit = h.limit.saturating_add(o.limit);
        }
    }
    Some(total)
}

/// The kernel range, narrowed to what the host lets rcri set: a process
/// without CAP_SYS_RESOURCE cannot go below its own score.
pub(crate) fn clamp_oom_score_adj(value: i64, min: i64) -> i64 {
    let min = min.clamp(-1000, 1000);
    value.clamp(min, 1000)
}
