//! Resource usage of containers and pods, read from their cgroups (v1 or
//! v2), their writable layer and the pod's network namespace.
//!
//! Every read here is blocking: callers run [`Collector`] methods on the
//! blocking pool. CPU usage in nano-cores is the delta to the previous
//! sample of the same container or pod, kept in memory; the first sample
//! has none.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::record::{ContainerRecord, PodRecord, PodState, now_nanos};
use super::{PodError, Tables, blocking, labels_match};
use crate::config::CgroupDriver;
use crate::image::rootfs::RootfsLayout;
use crate::proto;
use crate::spec;

/// A sample closer than this to the previous one reuses the last rate:
/// two quick calls would otherwise give a noisy (or zero) figure.
const MIN_SAMPLE_INTERVAL_NS: i64 = 100_000_000;
/// Limits at or above this are "unlimited" (cgroup v1 writes a huge number).
const UNLIMITED: u64 = 1 << 62;

/// A cgroup's path relative to the cgroup hierarchy's root, for a container
/// whose OCI `cgroupsPath` is `path`: `/a/b/id` for cgroupfs, and for the
/// systemd driver's `slice:prefix:name` the expanded slice with the unit
/// `prefix-name.scope` runc and crun create.
pub fn cgroup_relative(cgroups_path: &str) -> Option<PathBuf> {
    if cgroups_path.is_empty() {
        return None;
    }
    let mut parts = cgroups_path.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(slice), Some(prefix), Some(name), None) => {
            let unit = if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            Some(expand_slice(slice)?.join(unit))
        }
        (Some(path), None, None, None) => Some(PathBuf::from(path.trim_start_matches('/'))),
        _ => None,
    }
}

/// `a-b-c.slice` lives at `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    let name = slice.strip_suffix(".slice")?;
    if name == "-" || name.is_empty() {
        return Some(PathBuf::new());
    }
    if name.starts_with('-') || name.ends_with('-') || name.contains("--") || name.contains('/') {
        return None;
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Some(path)
}

/// The pod's own cgroup, when the kubelet gave it a parent of its own (the
/// default parent is shared by every pod and says nothing of one).
pub fn pod_cgroup_relative(driver: CgroupDriver, cgroup_parent: &str) -> Option<PathBuf> {
    let parent = cgroup_parent.trim_end_matches('/');
    if parent.is_empty() {
        return None;
    }
    match driver {
        CgroupDriver::Cgroupfs => Some(PathBuf::from(parent.trim_start_matches('/'))),
        CgroupDriver::Systemd => expand_slice(parent.rsplit('/').next()?),
    }
}

/// The mounted cgroup hierarchies.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    v2: bool,
}

/// What a memory cgroup reports, in bytes and counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemorySample {
    pub usage: u64,
    pub working_set: u64,
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// The limit, when there is one.
    pub limit: Option<u64>,
    pub swap_usage: Option<u64>,
    pub swap_limit: Option<u64>,
}

impl MemorySample {
    fn add(&mut self, other: &MemorySample) {
        let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        self.usage += other.usage;
        self.working_set += other.working_set;
        self.rss = sum(self.rss, other.rss);
        self.page_faults = sum(self.page_faults, other.page_faults);
        self.major_page_faults = sum(self.major_page_faults, other.major_page_faults);
        self.swap_usage = sum(self.swap_usage, other.swap_usage);
        // The limits of several cgroups do not add up to anything meaningful.
        self.limit = None;
        self.swap_limit = None;
    }
}

impl Cgroups {
    /// The host's hierarchies under /sys/fs/cgroup.
    pub fn host() -> Cgroups {
        Cgroups::at(Path::new("/sys/fs/cgroup"))
    }

    /// Hierarchies mounted under `root`; v2 when `root` has `cgroup.controllers`.
    pub fn at(root: &Path) -> Cgroups {
        Cgroups {
            root: root.to_path_buf(),
            v2: root.join("cgroup.controllers").exists(),
        }
    }

    /// The directory of cgroup `rel` in `controller`'s hierarchy (v1), or in
    /// the unified one (v2).
    fn dir(&self, controller: &str, rel: &Path) -> PathBuf {
        if self.v2 {
            return self.root.join(rel);
        }
        let dir = self.root.join(controller);
        if dir.is_dir() {
            return dir.join(rel);
        }
        // Some hosts mount cpu and cpuacct together under this name only.
        self.root.join("cpu,cpuacct").join(rel)
    }

    pub fn exists(&self, rel: &Path) -> bool {
        self.dir("memory", rel).is_dir()
    }

    /// Total CPU time used, in nanoseconds.
    pub fn cpu_usage_ns(&self, rel: &Path) -> Option<u64> {
        if self.v2 {
            let stat = read_flat_keyed(&self.dir("cpu", rel).join("cpu.stat"))?;
            return stat.get("usage_usec").map(|us| us.saturating_mul(1000));
        }
        read_u64(&self.dir("cpuacct", rel).join("cpuacct.usage"))
    }

    pub fn memory(&self, rel: &Path) -> Option<MemorySample> {
        let dir = self.dir("memory", rel);
        let limited = |v: Option<u64>| v.filter(|&v| v < UNLIMITED);
        if self.v2 {
            let usage = read_u64(&dir.join("memory.current"))?;
            let stat = read_flat_keyed(&dir.join("memory.stat")).unwrap_or_default();
            let inactive = stat.get("inactive_file").copied().unwrap_or(0);
            return Some(MemorySample {
                usage,
                working_set: usage.saturating_sub(inactive),
                rss: stat.get("anon").copied(),
                page_faults: stat.get("pgfault").copied(),
                major_page_faults: stat.get("pgmajfault").copied(),
                limit: limited(read_u64(&dir.join("memory.max"))),
                swap_usage: read_u64(&dir.join("memory.swap.current")),
                swap_limit: limited(read_u64(&dir.join("memory.swap.max"))),
            });
        }
        let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
        let stat = read_flat_keyed(&dir.join("memory.stat")).unwrap_or_default();
        let inactive = stat.get("total_inactive_file").copied().unwrap_or(0);
        // memsw counts memory and swap together.
        let memsw = read_u64(&dir.join("memory.memsw.usage_in_bytes"));
        let limit = limited(read_u64(&dir.join("memory.limit_in_bytes")));
        let memsw_limit = limited(read_u64(&dir.join("memory.memsw.limit_in_bytes")));
        Some(MemorySample {
            usage,
            working_set: usage.saturating_sub(inactive),
            rss: stat.get("total_rss").copied(),
            page_faults: stat.get("total_pgfault").copied(),
            major_page_faults: stat.get("total_pgmajfault").copied(),
            limit,
            swap_usage: memsw.map(|m| m.saturating_sub(usage)),
            swap_limit: memsw_limit.map(|m| m.saturating_sub(limit.unwrap_or(0))),
        })
    }

    /// Processes and threads in the cgroup.
    pub fn pids(&self, rel: &Path) -> Option<u64> {
        read_u64(&self.dir("pids", rel).join("pids.current"))
    }
}

/// A file holding one number; `max` reads as unlimited.
fn read_u64(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim() {
        "max" => Some(u64::MAX),
        value => value.parse().ok(),
    }
}

/// `key value` lines, as memory.stat and cpu.stat are.
fn read_flat_keyed(path: &Path) -> Option<HashMap<String, u64>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(' ')?;
                Some((key.to_string(), value.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// One interface's counters from /proc/<pid>/net/dev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSample {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// Parses /proc/net/dev: two header lines, then `name: 16 counters`
/// (receive bytes, packets, errs, … then transmit bytes, packets, errs, …).
pub fn parse_net_dev(text: &str) -> Vec<InterfaceSample> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let values: Vec<u64> = counters
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            if values.len() < 11 {
                return None;
            }
            Some(InterfaceSample {
                name: name.trim().to_string(),
                rx_bytes: values[0],
                rx_errors: values[2],
                tx_bytes: values[8],
                tx_errors: values[10],
            })
        })
        .collect()
}

/// The mount point of the filesystem holding `path`, from a mountinfo text
/// (field 5 is the mount point, with spaces and such escaped as `\040`).
pub fn mountpoint_of(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_field(field)))
        .filter(|mountpoint| path.starts_with(mountpoint))
        .max_by_key(|mountpoint| mountpoint.components().count())
}

fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(value) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What stats are read for one container.
#[derive(Debug, Clone)]
pub struct ContainerTarget {
    pub attributes: proto::ContainerAttributes,
    /// Relative to the hierarchy root; none when it cannot be known.
    pub cgroup: Option<PathBuf>,
    /// The container's writable layer.
    pub upper: PathBuf,
}

/// What stats are read for one pod.
#[derive(Debug, Clone)]
pub struct PodTarget {
    pub attributes: proto::PodSandboxAttributes,
    /// The pod's own cgroup (its parent), if it has one.
    pub cgroup: Option<PathBuf>,
    /// The pause container's cgroup.
    pub pause_cgroup: Option<PathBuf>,
    /// A process in the pod's own network namespace (none for host network).
    pub netns_pid: Option<i64>,
    pub containers: Vec<ContainerTarget>,
}

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: i64,
    usage_ns: u64,
    nano_cores: Option<u64>,
}

/// Reads stats; remembers the last CPU sample of each container and pod.
pub struct Collector {
    cgroups: Cgroups,
    /// Where the writable layers live, to name their filesystem.
    layers_dir: PathBuf,
    layers_mountpoint: OnceLock<String>,
    cpu: Mutex<HashMap<String, CpuSample>>,
}

fn value(v: u64) -> Option<proto::UInt64Value> {
    Some(proto::UInt64Value { value: v })
}

impl Collector {
    pub fn new(cgroups: Cgroups, layers_dir: PathBuf) -> Collector {
        Collector {
            cgroups,
            layers_dir,
            layers_mountpoint: OnceLock::new(),
            cpu: Mutex::new(HashMap::new()),
        }
    }

    /// Drops the remembered sample of a removed container or pod.
    pub fn forget(&self, id: &str) {
        self.samples().remove(id);
    }

    fn samples(&self) -> std::sync::MutexGuard<'_, HashMap<String, CpuSample>> {
        // The map holds plain numbers: one poisoned by a panic is still usable.
        self.cpu.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rate since the previous sample of `key`, in nano-cores.
    fn rate(&self, key: &str, at: i64, usage_ns: u64) -> Option<u64> {
        let mut samples = self.samples();
        let previous = samples.get(key).copied();
        let nano_cores = match previous {
            Some(p) if at - p.at < MIN_SAMPLE_INTERVAL_NS && usage_ns >= p.usage_ns => {
                return p.nano_cores;
            }
            // A usage going back means another cgroup (a restart): start over.
            Some(p) if usage_ns >= p.usage_ns => {
                let elapsed = (at - p.at) as u128;
                Some(((usage_ns - p.usage_ns) as u128 * 1_000_000_000 / elapsed) as u64)
            }
            _ => None,
        };
        samples.insert(
            key.to_string(),
            CpuSample {
                at,
                usage_ns,
                nano_cores,
            },
        );
        nano_cores
    }

    fn cpu_usage(&self, key: &str, usage_ns: Option<u64>) -> proto::CpuUsage {
        let timestamp = now_nanos();
        proto::CpuUsage {
            timestamp,
            usage_core_nano_seconds: usage_ns.and_then(value),
            usage_nano_cores: usage_ns
                .and_then(|usage| self.rate(key, timestamp, usage))
                .and_then(value),
            psi: None,
        }
    }

    fn memory_usage(sample: Option<MemorySample>) -> proto::MemoryUsage {
        let timestamp = now_nanos();
        let Some(m) = sample else {
            return proto::MemoryUsage {
                timestamp,
                ..Default::default()
            };
        };
        proto::MemoryUsage {
            timestamp,
            working_set_bytes: value(m.working_set),
            available_bytes: m
                .limit
                .map(|limit| limit.saturating_sub(m.working_set))
                .and_then(value),
            usage_bytes: value(m.usage),
            rss_bytes: m.rss.and_then(value),
            page_faults: m.page_faults.and_then(value),
            major_page_faults: m.major_page_faults.and_then(value),
            psi: None,
        }
    }

    fn swap_usage(sample: Option<MemorySample>) -> Option<proto::SwapUsage> {
        let m = sample?;
        let usage = m.swap_usage?;
        Some(proto::SwapUsage {
            timestamp: now_nanos(),
            swap_available_bytes: m
                .swap_limit
                .map(|limit| limit.saturating_sub(usage))
                .and_then(value),
            swap_usage_bytes: value(usage),
        })
    }

    fn layers_mountpoint(&self) -> &str {
        self.layers_mountpoint.get_or_init(|| {
            std::fs::read_to_string("/proc/self/mountinfo")
                .ok()
                .and_then(|text| mountpoint_of(&text, &self.layers_dir))
                .unwrap_or_else(|| PathBuf::from("/"))
                .display()
                .to_string()
        })
    }

    fn writable_layer(&self, upper: &Path) -> proto::FilesystemUsage {
        let usage = crate::fsutil::disk_usage(upper);
        if let Err(e) = &usage {
            tracing::debug!(dir = %upper.display(), error = %e, "cannot measure a writable layer");
        }
        let usage = usage.ok();
        proto::FilesystemUsage {
            timestamp: now_nanos(),
            fs_id: Some(proto::FilesystemIdentifier {
                mountpoint: self.layers_mountpoint().to_string(),
            }),
            used_bytes: usage.as_ref().and_then(|u| value(u.bytes)),
            inodes_used: usage.as_ref().and_then(|u| value(u.inodes)),
        }
    }

    /// Stats of one container. Blocking. A container not started yet, or
    /// gone, has timestamps and whatever its cgroup still tells.
    pub fn container(&self, target: &ContainerTarget) -> proto::ContainerStats {
        let cgroup = target.cgroup.as_deref();
        let memory = cgroup.and_then(|c| self.cgroups.memory(c));
        proto::ContainerStats {
            attributes: Some(target.attributes.clone()),
            cpu: Some(self.cpu_usage(
                &target.attributes.id,
                cgroup.and_then(|c| self.cgroups.cpu_usage_ns(c)),
            )),
            memory: Some(Self::memory_usage(memory)),
            writable_layer: Some(self.writable_layer(&target.upper)),
            swap: Self::swap_usage(memory),
            io: None,
        }
    }

    /// Stats of a pod and its containers. Blocking. CPU, memory and process
    /// counts come from the pod's own cgroup when it has one, otherwise they
    /// are the sums over its pause container's and containers' cgroups.
    pub fn pod(&self, target: &PodTarget) -> proto::PodSandboxStats {
        let containers: Vec<proto::ContainerStats> = target
            .containers
            .iter()
            .map(|c| self.container(c))
            .collect();
        let own = target.cgroup.as_deref().filter(|c| self.cgroups.exists(c));
        let (cpu_ns, memory, pids) = match own {
            Some(cgroup) => (
                self.cgroups.cpu_usage_ns(cgroup),
                self.cgroups.memory(cgroup),
                self.cgroups.pids(cgroup),
            ),
            None => {
                let cgroups: Vec<&Path> = target
                    .pause_cgroup
                    .iter()
                    .chain(target.containers.iter().filter_map(|c| c.cgroup.as_ref()))
                    .map(PathBuf::as_path)
                    .collect();
                let mut cpu = None::<u64>;
                let mut memory = None::<MemorySample>;
                let mut pids = None::<u64>;
                for cgroup in cgroups {
                    if let Some(ns) = self.cgroups.cpu_usage_ns(cgroup) {
                        cpu = Some(cpu.unwrap_or(0) + ns);
                    }
                    if let Some(m) = self.cgroups.memory(cgroup) {
                        memory.get_or_insert_with(MemorySample::default).add(&m);
                    }
                    if let Some(p) = self.cgroups.pids(cgroup) {
                        pids = Some(pids.unwrap_or(0) + p);
                    }
                }
                (cpu, memory, pids)
            }
        };
        let network = target.netns_pid.filter(|&pid| pid > 0).and_then(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
            Some(network_usage(&parse_net_dev(&text)))
        });
        proto::PodSandboxStats {
            attributes: Some(target.attributes.clone()),
            linux: Some(proto::LinuxPodSandboxStats {
                cpu: Some(self.cpu_usage(&target.attributes.id, cpu_ns)),
                memory: Some(Self::memory_usage(memory)),
                network,
                process: Some(proto::ProcessUsage {
                    timestamp: now_nanos(),
                    process_count: pids.and_then(value),
                }),
                containers,
                io: None,
            }),
            windows: None,
        }
    }
}

/// The pod's interfaces but loopback; `eth0` (or the first) is the default.
fn network_usage(interfaces: &[InterfaceSample]) -> proto::NetworkUsage {
    let usage = |i: &InterfaceSample| proto::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: value(i.rx_bytes),
        rx_errors: value(i.rx_errors),
        tx_bytes: value(i.tx_bytes),
        tx_errors: value(i.tx_errors),
    };
    let interfaces: Vec<proto::NetworkInterfaceUsage> = interfaces
        .iter()
        .filter(|i| i.name != "lo")
        .map(usage)
        .collect();
    let default_interface = interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .or_else(|| interfaces.first())
        .cloned();
    proto::NetworkUsage {
        timestamp: now_nanos(),
        default_interface,
        interfaces,
    }
}

impl super::PodManager {
    fn container_target(&self, pod: Option<&PodRecord>, c: &ContainerRecord) -> ContainerTarget {
        let config = c.config();
        ContainerTarget {
            attributes: proto::ContainerAttributes {
                id: c.id.clone(),
                metadata: config.metadata,
                labels: config.labels,
                annotations: config.annotations,
            },
            cgroup: pod.and_then(|pod| self.oci_cgroup(&pod.cgroup_parent, &c.id)),
            upper: RootfsLayout::under(&self.container_state_dir(&c.id)).upper,
        }
    }

    /// The cgroup the runtime was given for container (or pause) `id`.
    fn oci_cgroup(&self, cgroup_parent: &str, id: &str) -> Option<PathBuf> {
        spec::cgroups_path(self.config.cgroup_driver, cgroup_parent, id)
            .ok()
            .and_then(|path| cgroup_relative(&path))
    }

    fn pod_target(&self, tables: &Tables, pod: &PodRecord) -> PodTarget {
        let config = pod.config();
        PodTarget {
            attributes: proto::PodSandboxAttributes {
                id: pod.id.clone(),
                metadata: config.metadata,
                labels: config.labels,
                annotations: config.annotations,
            },
            cgroup: pod_cgroup_relative(self.config.cgroup_driver, &pod.cgroup_parent),
            pause_cgroup: self.oci_cgroup(&pod.cgroup_parent, &pod.id),
            netns_pid: (pod.state == PodState::Ready && pod.netns.is_some())
                .then_some(pod.pause_pid),
            containers: tables
                .containers
                .values()
                .filter(|c| c.pod_id == pod.id)
                .map(|c| self.container_target(Some(pod), c))
                .collect(),
        }
    }

    pub async fn container_stats(&self, id: &str) -> Result<proto::ContainerStats, PodError> {
        let target = {
            let tables = self.tables.lock().await;
            let id = Self::resolve_container_id(&tables, id)
                .ok_or_else(|| PodError::NotFound(format!("container {id:?} not found")))?;
            let container = &tables.containers[&id];
            self.container_target(tables.pods.get(&container.pod_id), container)
        };
        let collector = Arc::clone(&self.stats);
        blocking(move || Ok(collector.container(&target))).await
    }

    /// Stats of the containers the filter selects; an id or pod id matching
    /// nothing gives an empty list.
    pub async fn list_container_stats(
        &self,
        filter: Option<proto::ContainerStatsFilter>,
    ) -> Result<Vec<proto::ContainerStats>, PodError> {
        let filter = filter.unwrap_or_default();
        let targets: Vec<ContainerTarget> = {
            let tables = self.tables.lock().await;
            tables
                .containers
                .values()
                .filter(|c| {
                    c.id.starts_with(&filter.id)
                        && c.pod_id.starts_with(&filter.pod_sandbox_id)
                        && labels_match(&filter.label_selector, &c.config().labels)
                })
                .map(|c| self.container_target(tables.pods.get(&c.pod_id), c))
                .collect()
        };
        let collector = Arc::clone(&self.stats);
        blocking(move || Ok(targets.iter().map(|t| collector.container(t)).collect())).await
    }

    pub async fn pod_stats(&self, id: &str) -> Result<proto::PodSandboxStats, PodError> {
        let target = {
            let tables = self.tables.lock().await;
            let id = Self::resolve_pod_id(&tables, id)
                .ok_or_else(|| PodError::NotFound(format!("pod sandbox {id:?} not found")))?;
            self.pod_target(&tables, &tables.pods[&id])
        };
        let collector = Arc::clone(&self.stats);
        blocking(move || Ok(collector.pod(&target))).await
    }

    pub async fn list_pod_stats(
        &self,
        filter: Option<proto::PodSandboxStatsFilter>,
    ) -> Result<Vec<proto::PodSandboxStats>, PodError> {
        let filter = filter.unwrap_or_default();
        let targets: Vec<PodTarget> = {
            let tables = self.tables.lock().await;
            tables
                .pods
                .values()
                .filter(|p| {
                    p.id.starts_with(&filter.id)
                        && labels_match(&filter.label_selector, &p.config().labels)
                })
                .map(|p| self.pod_target(&tables, p))
                .collect()
        };
        let collector = Arc::clone(&self.stats);
        blocking(move || Ok(targets.iter().map(|t| collector.pod(t)).collect())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn cgroup_paths_for_both_drivers() {
        assert_eq!(
            cgroup_relative("/kubepods/pod1/c1"),
            Some(PathBuf::from("kubepods/pod1/c1"))
        );
        assert_eq!(
            cgroup_relative("kubepods-besteffort-pod1.slice:rcri:c1"),
            Some(PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/rcri-c1.scope"
            ))
        );
        assert_eq!(
            cgroup_relative("system.slice:rcri:c1"),
            Some(PathBuf::from("system.slice/rcri-c1.scope"))
        );
        assert_eq!(
            cgroup_relative("-.slice:rcri:c1"),
            Some(PathBuf::from("rcri-c1.scope"))
        );
        assert_eq!(cgroup_relative(""), None);
        assert_eq!(cgroup_relative("a:b"), None);
        assert_eq!(cgroup_relative("bad-.slice:rcri:c1"), None);
        assert_eq!(
            pod_cgroup_relative(CgroupDriver::Cgroupfs, "/kubepods/pod1/"),
            Some(PathBuf::from("kubepods/pod1"))
        );
        assert_eq!(
            pod_cgroup_relative(CgroupDriver::Systemd, "kubepods-pod1.slice"),
            Some(PathBuf::from("kubepods.slice/kubepods-pod1.slice"))
        );
        assert_eq!(pod_cgroup_relative(CgroupDriver::Cgroupfs, ""), None);
    }

    #[test]
    fn cgroup_v1_files() {
        let root = tempfile::tempdir().unwrap();
        let rel = Path::new("rcri/c1");
        write(
            &root.path().join("cpuacct/rcri/c1"),
            "cpuacct.usage",
            "123456789\n",
        );
        let memory = root.path().join("memory/rcri/c1");
        write(&memory, "memory.usage_in_bytes", "10000\n");
        write(&memory, "memory.memsw.usage_in_bytes", "10500\n");
        write(&memory, "memory.limit_in_bytes", "9223372036854771712\n");
        write(
            &memory,
            "memory.stat",
            "cache 10\nrss 1\ninactive_file 5\ntotal_rss 4000\ntotal_inactive_file 3000\ntotal_pgfault 77\ntotal_pgmajfault 2\n",
        );
        write(&root.path().join("pids/rcri/c1"), "pids.current", "3\n");
        let cgroups = Cgroups::at(root.path());
        assert!(!cgroups.v2);
        assert!(cgroups.exists(rel));
        assert_eq!(cgroups.cpu_usage_ns(rel), Some(123456789));
        assert_eq!(
            cgroups.memory(rel),
            Some(MemorySample {
                usage: 10000,
                working_set: 7000,
                rss: Some(4000),
                page_faults: Some(77),
                major_page_faults: Some(2),
                limit: None,
                swap_usage: Some(500),
                swap_limit: None,
            })
        );
        assert_eq!(cgroups.pids(rel), Some(3));
        assert_eq!(cgroups.memory(Path::new("rcri/gone")), None);
    }

    #[test]
    fn cgroup_v2_files() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "cgroup.controllers", "cpu memory pids\n");
        let dir = root.path().join("kubepods.slice/rcri-c1.scope");
        write(&dir, "cpu.stat", "usage_usec 2500\nuser_usec 2000\n");
        write(&dir, "memory.current", "8192\n");
        write(&dir, "memory.max", "16384\n");
        write(&dir, "memory.swap.current", "0\n");
        write(&dir, "memory.swap.max", "max\n");
        write(
            &dir,
            "memory.stat",
            "anon 4096\nfile 4096\ninactive_file 1024\npgfault 9\npgmajfault 1\n",
        );
        let cgroups = Cgroups::at(root.path());
        let rel = cgroup_relative("kubepods.slice:rcri:c1").unwrap();
        assert_eq!(cgroups.cpu_usage_ns(&rel), Some(2_500_000));
        let m = cgroups.memory(&rel).unwrap();
        assert_eq!(m.usage, 8192);
        assert_eq!(m.working_set, 7168);
        assert_eq!(m.rss, Some(4096));
        assert_eq!((m.page_faults, m.major_page_faults), (Some(9), Some(1)));
        assert_eq!(m.limit, Some(16384));
        assert_eq!((m.swap_usage, m.swap_limit), (Some(0), None));
        let usage = Collector::memory_usage(Some(m));
        assert_eq!(usage.available_bytes, value(16384 - 7168));
    }

    #[test]
    fn cpu_rate_from_the_previous_sample() {
        let collector = Collector::new(Cgroups::at(Path::new("/nonexistent")), "/".into());
        assert_eq!(collector.rate("c", 1_000_000_000, 5_000), None);
        // Half a core over one second.
        assert_eq!(
            collector.rate("c", 2_000_000_000, 500_005_000),
            Some(500_000_000)
        );
        // Too close to the previous sample: the last rate again.
        assert_eq!(
            collector.rate("c", 2_010_000_000, 900_000_000),
            Some(500_000_000)
        );
        // A usage going back starts over.
        assert_eq!(collector.rate("c", 3_000_000_000, 10), None);
        collector.forget("c");
        assert!(collector.samples().is_empty());
    }

    #[test]
    fn a_container_without_a_cgroup_still_has_stats() {
        let layers = tempfile::tempdir().unwrap();
        let upper = layers.path().join("upper");
        write(&upper, "file", &"x".repeat(10000));
        let collector = Collector::new(
            Cgroups::at(Path::new("/nonexistent")),
            layers.path().to_path_buf(),
        );
        let stats = collector.container(&ContainerTarget {
            attributes: proto::ContainerAttributes {
                id: "c1".into(),
                ..Default::default()
            },
            cgroup: None,
            upper,
        });
        assert!(stats.cpu.unwrap().timestamp > 0);
        let memory = stats.memory.unwrap();
        assert!(memory.timestamp > 0);
        assert!(memory.working_set_bytes.is_none());
        let layer = stats.writable_layer.unwrap();
        assert!(layer.used_bytes.unwrap().value >= 10000);
        assert_eq!(layer.inodes_used.unwrap().value, 2);
        assert!(!layer.fs_id.unwrap().mountpoint.is_empty());
    }

    #[test]
    fn net_dev_and_mountinfo() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
            lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
            eth0:    2000      20    3    0    0     0          0         0     4000      40    5    0    0     0       0          0\n";
        let interfaces = parse_net_dev(text);
        assert_eq!(interfaces.len(), 2);
        assert_eq!(
            interfaces[1],
            InterfaceSample {
                name: "eth0".into(),
                rx_bytes: 2000,
                rx_errors: 3,
                tx_bytes: 4000,
                tx_errors: 5,
            }
        );
        let usage = network_usage(&interfaces);
        assert_eq!(usage.interfaces.len(), 1);
        assert_eq!(usage.default_interface.unwrap().name, "eth0");

        let mountinfo = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
            30 22 0:40 / /var/lib/my\\040state rw - xfs /dev/sdb rw\n\
            31 22 0:41 / /var/lib/my rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mountpoint_of(
                mountinfo,
                Path::new("/var/lib/my state/containers/c1/upper")
            ),
            Some(PathBuf::from("/var/lib/my state"))
        );
        assert_eq!(
            mountpoint_of(mountinfo, Path::new("/var/lib/mystate")),
            Some(PathBuf::from("/"))
        );
    }
}
