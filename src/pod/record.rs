//! What rcri remembers of each pod and container, written atomically to the
//! state directory so that a restart (even `kill -9`) finds everything again.

use std::path::{Path, PathBuf};

use prost::Message;
use serde::{Deserialize, Serialize};

use crate::config::{Handler, RuntimeType};
use crate::fsutil;
use crate::handler::{Features, HandlerEntry};
use crate::proto;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
}

/// A CRI message kept as protobuf bytes (base64 in JSON), so every field the
/// kubelet sent survives a restart unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded(pub Vec<u8>);

impl Serialize for Encoded {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Encoded {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Encoded)
            .map_err(serde::de::Error::custom)
    }
}

impl Encoded {
    pub fn of<M: Message>(message: &M) -> Encoded {
        Encoded(message.encode_to_vec())
    }

    pub fn decode<M: Message + Default>(&self) -> M {
        // Written by us from a valid message; a damaged file decodes to defaults.
        M::decode(self.0.as_slice()).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub handler: String,
    pub state: PodState,
    pub created_at: i64,
    pub config: Encoded,
    /// The pause process, holder of the pod's namespaces.
    pub pause_pid: i64,
    pub monitor_pid: i32,
    /// The monitor's start time (/proc/<pid>/stat field 22), so that a
    /// reused pid is not taken for the monitor. Records written before it
    /// was kept have none.
    #[serde(default)]
    pub monitor_start_time: Option<u64>,
    pub cgroup_parent: String,
    /// The pod's own /dev/shm tmpfs is mounted.
    pub shm_mounted: bool,
    /// The pinned network namespace; none for host-network pods.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// What CNI ADD gave the pod, kept for status and for DEL after a restart.
    #[serde(default)]
    pub network: Option<NetworkAttachment>,
    /// The handler as it was resolved at RunPodSandbox: the pod keeps it
    /// even if a reload changes or removes the handler. Records written
    /// before it existed have none; the table is asked by name then.
    #[serde(default)]
    pub runtime: Option<PodHandler>,
}

/// What a pod needs of its handler for its whole life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodHandler {
    pub runtime_type: RuntimeType,
    pub runtime_path: PathBuf,
    pub runtime_root: PathBuf,
    pub runtime_args: Vec<String>,
    pub privileged_without_host_devices: bool,
    pub allowed_annotations: Vec<String>,
    pub create_timeout_ms: u64,
    pub recursive_read_only_mounts: bool,
    pub user_namespaces: bool,
}

impl PodHandler {
    pub fn of(entry: &HandlerEntry) -> PodHandler {
        let h = &entry.config;
        PodHandler {
            runtime_type: h.runtime_type,
            runtime_path: h.runtime_path.clone(),
            runtime_root: h.runtime_root.clone(),
            runtime_args: h.runtime_args.clone(),
            privileged_without_host_devices: h.privileged_without_host_devices,
            allowed_annotations: h.allowed_annotations.clone(),
            create_timeout_ms: h.create_timeout.as_millis() as u64,
            recursive_read_only_mounts: entry.features.recursive_read_only_mounts,
            user_namespaces: entry.features.user_namespaces,
        }
    }

    /// The handler entry again, under the pod's handler name.
    pub fn entry(&self, name: &str) -> HandlerEntry {
        HandlerEntry {
            config: Handler {
                name: name.to_string(),
                runtime_type: self.runtime_type,
                runtime_path: self.runtime_path.clone(),
                runtime_root: self.runtime_root.clone(),
                runtime_args: self.runtime_args.clone(),
                privileged_without_host_devices: self.privileged_without_host_devices,
                allowed_annotations: self.allowed_annotations.clone(),
                create_timeout: std::time::Duration::from_millis(self.create_timeout_ms),
            },
            features: Features {
                recursive_read_only_mounts: self.recursive_read_only_mounts,
                user_namespaces: self.user_namespaces,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// Addresses, the first reported as the pod's `ip`.
    pub ips: Vec<String>,
    pub result_json: String,
    pub config_json: String,
}

impl PodRecord {
    pub fn config(&self) -> proto::PodSandboxConfig {
        self.config.decode()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub state: ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub config: Encoded,
    /// The image as the kubelet named it, and its id.
    pub image: String,
    pub image_id: String,
    pub pid: i64,
    pub monitor_pid: i32,
    /// As [`PodRecord::monitor_start_time`].
    #[serde(default)]
    pub monitor_start_time: Option<u64>,
    /// Full path of the CRI log file; empty when the kubelet asked for none.
    pub log_path: String,
    pub stop_signal: String,
}

impl ContainerRecord {
    pub fn config(&self) -> proto::ContainerConfig {
        self.config.decode()
    }
}

/// Writes a record as JSON, atomically. Blocking.
pub fn save<T: Serialize>(path: &Path, record: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    fsutil::write_atomic(path, &bytes)
}

/// Loads every `<dir>/<id>/<file>` record; unreadable ones are skipped with
/// a warning. Blocking.
pub fn load_all<T: for<'de> Deserialize<'de>>(dir: &Path, file: &str) -> Vec<(PathBuf, T)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut records = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path().join(file);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(record) => records.push((entry.path(), record)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable record")
                }
            },
            // A directory without its record: a creation that never finished.
            Err(_) => records.push_unfinished(entry.path()),
        }
    }
    records
}

/// Directories whose record is missing are remembered for clean-up by the
/// caller through this hook (the record type decides nothing here).
trait Unfinished {
    fn push_unfinished(&mut self, dir: PathBuf);
}

impl<T> Unfinished for Vec<(PathBuf, T)> {
    fn push_unfinished(&mut self, dir: PathBuf) {
        tracing::info!(dir = %dir.display(), "removing the remains of an unfinished creation");
        if let Err(e) = fsutil::remove_tree(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove");
        }
    }
}

/// Nanoseconds since the Unix epoch, as the CRI reports times.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A new 64-hex-digit id, as other runtimes use.
pub fn new_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let time = now_nanos();
    (0..4)
        .map(|i| format!("{:016x}", RandomState::new().hash_one((time, i))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn records_round_trip_with_their_cri_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = proto::PodSandboxConfig {
            hostname: "web".into(),
            ..Default::default()
        };
        let record = PodRecord {
            id: new_id(),
            handler: "runc".into(),
            state: PodState::Ready,
            created_at: now_nanos(),
            config: Encoded::of(&config),
            pause_pid: 42,
            monitor_pid: 41,
            monitor_start_time: Some(7),
            cgroup_parent: "/rcri".into(),
            shm_mounted: true,
            netns: None,
            network: None,
            runtime: None,
        };
        let pod_dir = dir.path().join(&record.id);
        std::fs::create_dir(&pod_dir).unwrap();
        save(&pod_dir.join("pod.json"), &record).unwrap();
        std::fs::create_dir(dir.path().join("half-made")).unwrap();
        let loaded: Vec<(PathBuf, PodRecord)> = load_all(dir.path(), "pod.json");
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].1.config().hostname, "web");
        assert!(
            !dir.path().join("half-made").exists(),
            "unfinished creations are cleaned"
        );
    }

    #[test]
    fn the_resolved_handler_round_trips_and_old_records_have_none() {
        let entry = HandlerEntry {
            config: Handler {
                name: "fast".into(),
                runtime_type: RuntimeType::Oci,
                runtime_path: "/usr/bin/crun".into(),
                runtime_root: "/run/rcri/runtimes/fast".into(),
                runtime_args: vec!["--systemd-cgroup".into()],
                privileged_without_host_devices: true,
                allowed_annotations: vec!["io.example/*".into()],
                create_timeout: std::time::Duration::from_millis(1500),
            },
            features: Features {
                recursive_read_only_mounts: true,
                user_namespaces: false,
            },
        };
        let stored = PodHandler::of(&entry);
        let json = serde_json::to_string(&stored).unwrap();
        let back: PodHandler = serde_json::from_str(&json).unwrap();
        let again = back.entry("fast");
        assert_eq!(again.config, entry.config);
        assert_eq!(again.features, entry.features);

        let old = r#"{"id":"p","handler":"runc","state":"Ready","created_at":1,"config":"",
            "pause_pid":2,"monitor_pid":3,"cgroup_parent":"","shm_mounted":false}"#;
        let record: PodRecord = serde_json::from_str(old).unwrap();
        assert!(record.runtime.is_none());
        assert!(record.monitor_start_time.is_none());
    }

    #[test]
    fn container_records_without_a_monitor_start_time_load() {
        let old = r#"{"id":"c","pod_id":"p","state":"Running","created_at":1,"started_at":2,
            "finished_at":0,"exit_code":0,"reason":"","message":"","config":"","image":"i",
            "image_id":"sha256:x","pid":4,"monitor_pid":3,"log_path":"","stop_signal":""}"#;
        let record: ContainerRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.monitor_pid, 3);
        assert!(record.monitor_start_time.is_none());
    }
}
