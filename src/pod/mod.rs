//! Pods and containers: the lifecycle the CRI asks for, run through each
//! pod's runtime handler, with state kept on disk.
//!
//! ```text
//! state_dir/pods/<id>/pod.json, exit.json
//! state_dir/containers/<id>/container.json, exit.json, upper/ work/ rootfs/
//! run_dir/pods/<id>/            bundle (config.json), hosts, resolv.conf, hostname, shm/
//! run_dir/containers/<id>/      bundle (config.json), pid, runtime.log, monitor.json, monitor.log
//! ```
//! The pause container of a pod has the pod's id as its OCI id.

mod files;
mod lost;
mod netns;
mod stats;

pub use netns::{ConnectError, PodNetwork};
pub mod record;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::handler::oci::{OciRuntime, RuntimeError};
use crate::handler::{HandlerEntry, SharedHandlers};
use crate::image::rootfs::{self, RootfsError, RootfsLayout};
use crate::image::store::{ImageStore, StoreError};
use crate::monitor::{self, MonitorConfig, SyncReply};
use crate::network::{self, AttachRequest, Cni, CniConfig};
use crate::proto;
use crate::spec::{self, SpecError, oci};
use record::{ContainerRecord, ContainerState, Encoded, PodRecord, PodState, now_nanos};

/// Beyond the handler's create_timeout (which the monitor enforces), how
/// long to wait for the monitor's answer before giving up on it.
const MONITOR_GRACE: Duration = Duration::from_secs(10);
/// How often a stopping container's exit is looked for.
const EXIT_POLL: Duration = Duration::from_millis(20);
/// After SIGKILL, how long to wait for the exit to be recorded.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// After SIGKILL, how long the monitor has to record the exit before the
/// runtime is asked instead.
const MONITOR_EXIT_WAIT: Duration = Duration::from_secs(2);
/// ExecSync output is capped (the kubelet caps it too).
const MAX_EXEC_OUTPUT: usize = 16 << 20;
/// ReopenContainerLog waits at most this long for the monitor's new file.
const REOPEN_WAIT: Duration = Duration::from_secs(2);
const PAUSE_PATH: &str = "/pause";
static PAUSE_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rcri-pause"));

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Boxed: a runtime's error carries several strings.
    #[error(transparent)]
    Runtime(Box<RuntimeError>),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Image(#[from] StoreError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Network(String),
    #[error("{0}")]
    Internal(String),
}

impl From<RuntimeError> for PodError {
    fn from(error: RuntimeError) -> PodError {
        PodError::Runtime(Box::new(error))
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PodError {
    let path = path.to_path_buf();
    move |source| PodError::Io {
        action,
        path,
        source,
    }
}

/// Runs a blocking step on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PodError> + Send + 'static,
) -> Result<T, PodError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PodError::Internal(format!("a blocking task failed: {e}")))?
}

#[derive(Default)]
struct Tables {
    pods: BTreeMap<String, PodRecord>,
    containers: BTreeMap<String, ContainerRecord>,
    /// Names reserved by creations in progress or done: pod and container
    /// names must be unique, as the kubelet relies on.
    names: HashMap<String, String>,
}

pub struct PodManager {
    config: Arc<Config>,
    handlers: Arc<SharedHandlers>,
    images: Arc<ImageStore>,
    host: spec::HostInfo,
    cni: Cni,
    /// rcri's own capability bounding set: no container gets more.
    capability_bound: u64,
    monitor_exe: PathBuf,
    pause_rootfs: PathBuf,
    tables: Mutex<Tables>,
    /// One lock per pod or container id, so that lifecycle steps on the
    /// same object never interleave.
    locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Containers and pods whose monitor is lost: when the runtime was last asked.
    lost_checks: lost::LostChecks,
    /// Resource usage readers, with the last CPU sample of each object.
    stats: Arc<stats::Collector>,
}

fn pod_name_key(metadata: &proto::PodSandboxMetadata) -> String {
    format!(
        "pod\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
        metadata.name, metadata.namespace, metadata.uid, metadata.attempt
    )
}

fn container_name_key(pod_id: &str, metadata: &proto::ContainerMetadata) -> String {
    format!(
        "ctr\u{0}{pod_id}\u{0}{}\u{0}{}",
        metadata.name, metadata.attempt
    )
}

impl PodManager {
    /// Loads the stored pods and containers and installs the pause program.
    /// Blocking: call before serving.
    pub fn open(
        config: Arc<Config>,
        handlers: Arc<SharedHandlers>,
        images: Arc<ImageStore>,
    ) -> Result<PodManager, PodError> {
        for dir in [
            config.state_dir.join("pods"),
            config.state_dir.join("containers"),
            config.run_dir.join("pods"),
            config.run_dir.join("containers"),
        ] {
            std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        }
        let pause_rootfs = install_pause(&config.run_dir)?;
        let monitor_exe =
            std::env::current_exe().map_err(io_error("find", Path::new("/proc/self/exe")))?;
        let mut tables = Tables::default();
        for (_, pod) in record::load_all::<PodRecord>(&config.state_dir.join("pods"), "pod.json") {
            if let Some(metadata) = pod.config().metadata {
                tables.names.insert(pod_name_key(&metadata), pod.id.clone());
            }
            tables.pods.insert(pod.id.clone(), pod);
        }
        for (_, container) in record::load_all::<ContainerRecord>(
            &config.state_dir.join("containers"),
            "container.json",
        ) {
            if let Some(metadata) = container.config().metadata {
                tables.names.insert(
                    container_name_key(&container.pod_id, &metadata),
                    container.id.clone(),
                );
            }
            tables.containers.insert(container.id.clone(), container);
        }
        tracing::info!(
            pods = tables.pods.len(),
            containers = tables.containers.len(),
            "pod state loaded"
        );
        let stats = Arc::new(stats::Collector::new(
            stats::Cgroups::host(),
            config.state_dir.join("containers"),
        ));
        let manager = PodManager {
            host: host_info(),
            cni: Cni::new(CniConfig {
                conf_dir: config.network.cni_conf_dir.clone(),
                bin_dirs: config.network.cni_bin_dirs.clone(),
            }),
            capability_bound: own_capabilities("CapBnd").unwrap_or(u64::MAX),
            config,
            handlers,
            images,
            monitor_exe,
            pause_rootfs,
            tables: Mutex::new(tables),
            locks: std::sync::Mutex::new(HashMap::new()),
            lost_checks: lost::LostChecks::default(),
            stats,
        };
        Ok(manager)
    }

    /// Reconciles loaded state with reality: exits recorded while rcri was
    /// down, monitors lost meanwhile (see [`lost`]), layers held by existing
    /// containers.
    pub async fn recover(&self) {
        let containers: Vec<ContainerRecord> = self
            .tables
            .lock()
            .await
            .containers
            .values()
            .cloned()
            .collect();
        for container in containers {
            if let Ok(Some(image)) = self.images.find(&container.image_id).await {
                self.images.hold_layers(&container.id, &image);
            }
            if container.state == ContainerState::Running
                || container.state == ContainerState::Created
            {
                let _ = self.refresh_container(&container.id).await;
            }
        }
        let pods: Vec<PodRecord> = self.tables.lock().await.pods.values().cloned().collect();
        for pod in pods {
            self.refresh_pod(&pod.id).await;
        }
    }

    fn lock_for(&self, id: &str) -> Arc<Mutex<()>> {
        self.locks
            .lock()
            .expect("id lock table")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    fn forget_lock(&self, id: &str) {
        self.locks.lock().expect("id lock table").remove(id);
        self.lost_checks.forget(id);
        self.stats.forget(id);
    }

    /// The handler a new pod asked for, from the current table.
    fn handler(&self, name: &str) -> Result<HandlerEntry, PodError> {
        self.handlers
            .current()
            .resolve(name)
            .cloned()
            .map_err(|e| PodError::InvalidArgument(e.to_string()))
    }

    /// The handler a pod started with: kept in its record, so a reload that
    /// changes or removes the handler does not touch running pods. Records
    /// from before that was kept are looked up in the table by name.
    fn handler_of(&self, pod: &PodRecord) -> Result<HandlerEntry, PodError> {
        if let Some(stored) = &pod.runtime {
            return Ok(stored.entry(&pod.handler));
        }
        self.handlers
            .current()
            .handlers
            .get(&pod.handler)
            .cloned()
            .ok_or_else(|| {
                PodError::FailedPrecondition(format!(
                    "runtime handler {:?} of pod {} is no longer configured; configure it again to manage this pod",
                    pod.handler, pod.id
                ))
            })
    }

    fn runtime_of(&self, pod: &PodRecord) -> Result<OciRuntime, PodError> {
        self.handler_of(pod).map(|h| OciRuntime::new(&h.config))
    }

    fn pod_state_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("pods").join(id)
    }

    fn pod_run_dir(&self, id: &str) -> PathBuf {
        self.config.run_dir.join("pods").join(id)
    }

    fn container_state_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("containers").join(id)
    }

    fn container_run_dir(&self, id: &str) -> PathBuf {
        self.config.run_dir.join("containers").join(id)
    }

    fn exit_of_pod(&self, id: &str) -> Option<monitor::ExitRecord> {
        monitor::read_exit(&self.pod_state_dir(id).join("exit.json"))
    }

    // ---- pods ------------------------------------------------------------

    pub async fn run_pod(
        &self,
        config: proto::PodSandboxConfig,
        handler_name: &str,
    ) -> Result<String, PodError> {
        let metadata = config.metadata.clone().ok_or_else(|| {
            PodError::InvalidArgument("PodSandboxConfig.metadata is required".into())
        })?;
        if metadata.name.is_empty() || metadata.namespace.is_empty() || metadata.uid.is_empty() {
            return Err(PodError::InvalidArgument(
                "PodSandboxConfig.metadata needs a name, a namespace and a uid".into(),
            ));
        }
        let handler = self.handler(handler_name)?;
        let id = record::new_id();
        let key = pod_name_key(&metadata);
        {
            let mut tables = self.tables.lock().await;
            if let Some(existing) = tables.names.get(&key) {
                return Err(PodError::AlreadyExists(format!(
                    "pod {}/{} (uid {}, attempt {}) already exists as {existing}",
                    metadata.namespace, metadata.name, metadata.uid, metadata.attempt
                )));
            }
            tables.names.insert(key.clone(), id.clone());
        }
        let lock = self.lock_for(&id);
        let _guard = lock.lock().await;
        match self.create_pod(&id, &config, &handler).await {
            Ok(pod) => {
                self.tables.lock().await.pods.insert(id.clone(), pod);
                tracing::info!(pod = %id, name = %metadata.name, namespace = %metadata.namespace, handler = %handler.config.name, "pod running");
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(pod = %id, error = %e, "pod creation failed; rolling back");
                let netns = self.pod_run_dir(&id).join("netns");
                if netns.exists() {
                    self.detach_network(&id, &config, &netns, None).await;
                }
                self.destroy_pod_files(&id, &OciRuntime::new(&handler.config))
                    .await;
                self.tables.lock().await.names.remove(&key);
                self.forget_lock(&id);
                Err(e)
            }
        }
    }

    async fn create_pod(
        &self,
        id: &str,
        config: &proto::PodSandboxConfig,
        handler: &HandlerEntry,
    ) -> Result<PodRecord, PodError> {
        let options = namespace_options(config);
        let host_network = options.network == proto::NamespaceMode::Node as i32;
        let host_ipc = options.ipc == proto::NamespaceMode::Node as i32;
        let run_dir = self.pod_run_dir(id);
        let state_dir = self.pod_state_dir(id);
        let shm = run_dir.join("shm");
        let netns = (!host_network).then(|| run_dir.join("netns"));
        // The spec first: a request the handler cannot serve is refused
        // before anything is made.
        let cgroup_parent = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        let handler_options = spec::HandlerOptions::new(&handler.config, handler.features);
        let mut spec = spec::sandbox_spec(&spec::SandboxSpecInput {
            sandbox_id: id,
            config,
            rootfs: &self.pause_rootfs,
            pause_path: PAUSE_PATH,
            netns_path: netns.as_deref(),
            cgroup_parent: &cgroup_parent,
            cgroup_driver: self.config.cgroup_driver,
            handler: &handler_options,
            host: &self.host,
        })?;
        restrict_capabilities(&mut spec, self.capability_bound);
        {
            let netns = netns.clone();
            let (run_dir, state_dir, shm, config) = (
                run_dir.clone(),
                state_dir.clone(),
                shm.clone(),
                config.clone(),
            );
            blocking(move || {
                std::fs::create_dir_all(&state_dir).map_err(io_error("create", &state_dir))?;
                std::fs::create_dir_all(&shm).map_err(io_error("create", &shm))?;
                files::write_pod_files(&run_dir, &config, host_network)
                    .map_err(io_error("write pod files in", &run_dir))?;
                if let Some(netns) = &netns {
                    netns::create(netns)
                        .map_err(io_error("create the network namespace", netns))?;
                }
                if !host_ipc {
                    nix::mount::mount(
                        Some("shm"),
                        &shm,
                        Some("tmpfs"),
                        nix::mount::MsFlags::MS_NOSUID
                            | nix::mount::MsFlags::MS_NODEV
                            | nix::mount::MsFlags::MS_NOEXEC,
                        Some("mode=1777,size=65536k"),
                    )
                    .map_err(|e| PodError::Io {
                        action: "mount /dev/shm tmpfs on",
                        path: shm.clone(),
                        source: e.into(),
                    })?;
                }
                Ok(())
            })
            .await?;
        }
        let attachment = match &netns {
            Some(netns) => self.attach_network(id, config, netns).await?,
            None => None,
        };
        let runtime = OciRuntime::new(&handler.config);
        let started = self
            .create_and_start(
                &runtime,
                id,
                &run_dir,
                &spec,
                &state_dir.join("exit.json"),
                "",
                None,
                ContainerIo::default(),
            )
            .await?;
        let pod = PodRecord {
            id: id.to_string(),
            handler: handler.config.name.clone(),
            state: PodState::Ready,
            created_at: now_nanos(),
            config: Encoded::of(config),
            pause_pid: started.pid,
            monitor_pid: started.monitor_pid,
            monitor_start_time: started.monitor_start_time,
            cgroup_parent,
            shm_mounted: !host_ipc,
            netns,
            network: attachment,
            runtime: Some(record::PodHandler::of(handler)),
        };
        self.save_pod(&pod).await?;
        Ok(pod)
    }

    /// Writes the bundle, starts a monitor that runs `create`, then `start`s.
    #[allow(clippy::too_many_arguments)]
    async fn create_and_start(
        &self,
        runtime: &OciRuntime,
        id: &str,
        bundle: &Path,
        spec: &oci::Spec,
        exit_file: &Path,
        log_path: &str,
        memory_cgroup: Option<PathBuf>,
        io: ContainerIo,
    ) -> Result<Started, PodError> {
        let created = self
            .create(
                runtime,
                id,
                bundle,
                spec,
                exit_file,
                log_path,
                memory_cgroup,
                io,
            )
            .await?;
        let stdio = open_start_fifos(bundle).await;
        runtime.start(id, &bundle.join("start.log"), stdio).await?;
        Ok(created)
    }

    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        runtime: &OciRuntime,
        id: &str,
        bundle: &Path,
        spec: &oci::Spec,
        exit_file: &Path,
        log_path: &str,
        memory_cgroup: Option<PathBuf>,
        io: ContainerIo,
    ) -> Result<Started, PodError> {
        let spec_json = serde_json::to_vec_pretty(spec)
            .map_err(|e| PodError::Internal(format!("spec: {e}")))?;
        let monitor_config = MonitorConfig {
            container_id: id.to_string(),
            runtime_path: runtime.path.clone(),
            runtime_args: runtime.global_args.clone(),
            bundle: bundle.to_path_buf(),
            pid_file: bundle.join("pid"),
            runtime_log: bundle.join("runtime.log"),
            log_path: PathBuf::from(log_path),
            exit_file: exit_file.to_path_buf(),
            terminal: io.terminal,
            stdin: io.stdin,
            stdin_once: io.stdin_once,
            stdin_fifo: io.stdin.then(|| bundle.join("stdin")),
            memory_cgroup,
            create_timeout_ms: Some(runtime.create_timeout.as_millis() as u64),
        };
        let monitor_json = serde_json::to_vec_pretty(&monitor_config)
            .map_err(|e| PodError::Internal(format!("monitor config: {e}")))?;
        let bundle_dir = bundle.to_path_buf();
        let monitor_log = blocking(move || {
            std::fs::create_dir_all(&bundle_dir).map_err(io_error("create", &bundle_dir))?;
            let config_path = bundle_dir.join("config.json");
            std::fs::write(&config_path, spec_json).map_err(io_error("write", &config_path))?;
            let monitor_path = bundle_dir.join("monitor.json");
            std::fs::write(&monitor_path, monitor_json)
                .map_err(io_error("write", &monitor_path))?;
            let log_path = bundle_dir.join("monitor.log");
            std::fs::File::create(&log_path).map_err(io_error("create", &log_path))
        })
        .await?;
        let mut child = tokio::process::Command::new(&self.monitor_exe)
            .arg("monitor")
            .arg("--config")
            .arg(bundle.join("monitor.json"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(monitor_log)
            .current_dir("/")
            .process_group(0)
            .spawn()
            .map_err(io_error("start the monitor", &self.monitor_exe))?;
        let monitor_pid = child.id().unwrap_or_default() as i32;
        let monitor_start_time = lost::start_time_of(monitor_pid).await;
        let stdout = child.stdout.take().expect("monitor stdout is piped");
        let mut line = String::new();
        let started_at = tokio::time::Instant::now();
        let read = tokio::time::timeout(
            runtime.create_timeout + MONITOR_GRACE,
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await;
        let timed_out = started_at.elapsed() >= runtime.create_timeout;
        let deadline_error = || {
            PodError::DeadlineExceeded(format!(
                "runtime handler {:?} ({}) did not create {id} within its create_timeout of {:?}: the runtime hangs or is too slow; check it by hand or raise create_timeout in [handlers.{}]",
                runtime.handler,
                runtime.path.display(),
                runtime.create_timeout,
                runtime.handler
            ))
        };
        // The monitor lives on; tokio reaps it when it exits.
        drop(child);
        let reply: SyncReply = match read {
            Err(_) => {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(monitor_pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(deadline_error());
            }
            Ok(Err(e)) => {
                return Err(PodError::Internal(format!(
                    "reading from the monitor of {id}: {e}"
                )));
            }
            Ok(Ok(_)) => serde_json::from_str(line.trim()).map_err(|_| {
                PodError::Internal(format!(
                    "the monitor of {id} exited without an answer (see {})",
                    bundle.join("monitor.log").display()
                ))
            })?,
        };
        if !reply.ok && timed_out {
            return Err(deadline_error());
        }
        if !reply.ok {
            return Err(PodError::from(RuntimeError::Failed {
                handler: runtime.handler.clone(),
                path: runtime.path.clone(),
                verb: "create".into(),
                id: id.to_string(),
                status: "failed".into(),
                stderr: reply.error.unwrap_or_default(),
            }));
        }
        Ok(Started {
            pid: i64::from(reply.pid.unwrap_or_default()),
            monitor_pid,
            monitor_start_time,
        })
    }

    async fn save_pod(&self, pod: &PodRecord) -> Result<(), PodError> {
        let path = self.pod_state_dir(&pod.id).join("pod.json");
        let pod = pod.clone();
        blocking(move || record::save(&path, &pod).map_err(io_error("write", &path))).await
    }

    async fn save_container(&self, container: &ContainerRecord) -> Result<(), PodError> {
        let path = self
            .container_state_dir(&container.id)
            .join("container.json");
        let container = container.clone();
        blocking(move || record::save(&path, &container).map_err(io_error("write", &path))).await
    }

    async fn set_pod_state(&self, id: &str, state: PodState) -> Result<(), PodError> {
        let pod = {
            let mut tables = self.tables.lock().await;
            let Some(pod) = tables.pods.get_mut(id) else {
                return Ok(());
            };
            pod.state = state;
            pod.clone()
        };
        self.save_pod(&pod).await
    }

    /// Whether the pod network is usable, and if not why.
    pub fn network_status(&self) -> Result<String, String> {
        self.cni.network_status()
    }

    /// CNI ADD for a new pod. Without a usable network configuration the
    /// pod keeps a namespace with only loopback (the node reports
    /// NetworkReady=false, so the kubelet starts no such pods meanwhile).
    async fn attach_network(
        &self,
        id: &str,
        config: &proto::PodSandboxConfig,
        netns: &Path,
    ) -> Result<Option<record::NetworkAttachment>, PodError> {
        if let Err(why) = self.cni.network_status() {
            tracing::warn!(pod = %id, reason = %why, "no pod network: the pod gets loopback only");
            return Ok(None);
        }
        let result = self
            .cni
            .add(&attach_request(id, config, netns))
            .await
            .map_err(|e| PodError::Network(e.to_string()))?;
        tracing::info!(pod = %id, ips = ?result.pod_ips(), network = %result.network_name, "pod network attached");
        Ok(Some(record::NetworkAttachment {
            ips: result.pod_ips().iter().map(|ip| ip.to_string()).collect(),
            result_json: result.result_json,
            config_json: result.config_json,
        }))
    }

    /// CNI DEL, best effort: failures are logged (the kubelet retries stops).
    async fn detach_network(
        &self,
        id: &str,
        config: &proto::PodSandboxConfig,
        netns: &Path,
        attachment: Option<&record::NetworkAttachment>,
    ) {
        let result = self
            .cni
            .del(
                &attach_request(id, config, netns),
                attachment.map(|a| a.config_json.as_str()),
                attachment.map(|a| a.result_json.as_str()),
            )
            .await;
        if let Err(e) = result {
            tracing::warn!(pod = %id, error = %e, "CNI DEL failed");
        }
    }

    /// Removes what a pod creation made: runtime container, mounts, dirs.
    async fn destroy_pod_files(&self, id: &str, runtime: &OciRuntime) {
        if let Err(e) = runtime.delete(id, true).await {
            tracing::warn!(pod = %id, error = %e, "runtime delete failed");
        }
        remove_trees([self.pod_run_dir(id), self.pod_state_dir(id)]).await;
    }

    fn resolve_pod_id(tables: &Tables, id: &str) -> Option<String> {
        if tables.pods.contains_key(id) {
            return Some(id.to_string());
        }
        unique_prefix(tables.pods.keys(), id)
    }

    fn resolve_container_id(tables: &Tables, id: &str) -> Option<String> {
        if tables.containers.contains_key(id) {
            return Some(id.to_string());
        }
        unique_prefix(tables.containers.keys(), id)
    }

    /// A pod and the ids of its containers.
    async fn pod_and_containers(&self, id: &str) -> Option<(PodRecord, Vec<String>)> {
        let tables = self.tables.lock().await;
        let id = Self::resolve_pod_id(&tables, id)?;
        let containers = tables
            .containers
            .values()
            .filter(|c| c.pod_id == id)
            .map(|c| c.id.clone())
            .collect();
        Some((tables.pods[&id].clone(), containers))
    }

    pub async fn stop_pod(&self, id: &str) -> Result<(), PodError> {
        // Stopping (and removing) what is gone succeeds: the CRI asks for idempotence.
        let Some((pod, containers)) = self.pod_and_containers(id).await else {
            return Ok(());
        };
        for container in containers {
            self.stop_container(&container, 0).await?;
        }
        let lock = self.lock_for(&pod.id);
        let _guard = lock.lock().await;
        let runtime = self.runtime_of(&pod)?;
        if self.exit_of_pod(&pod.id).is_none() {
            let _ = runtime.kill(&pod.id, "KILL", false).await;
            self.wait_pod_stopped(&runtime, &pod, KILL_WAIT).await;
        }
        if let Some(netns) = &pod.netns {
            // Every stop runs DEL again: the CNI asks plugins to tolerate it.
            self.detach_network(&pod.id, &pod.config(), netns, pod.network.as_ref())
                .await;
        }
        if pod.shm_mounted {
            let shm = self.pod_run_dir(&pod.id).join("shm");
            let _ = blocking(move || {
                crate::fsutil::unmount_under(&shm).map_err(io_error("unmount", Path::new("shm")))
            })
            .await;
        }
        self.set_pod_state(&pod.id, PodState::NotReady).await?;
        tracing::info!(pod = %pod.id, "pod stopped");
        Ok(())
    }

    pub async fn remove_pod(&self, id: &str) -> Result<(), PodError> {
        let Some((pod, containers)) = self.pod_and_containers(id).await else {
            return Ok(());
        };
        for container in containers {
            self.remove_container(&container).await?;
        }
        self.stop_pod(&pod.id).await?;
        let lock = self.lock_for(&pod.id);
        let _guard = lock.lock().await;
        let runtime = self.runtime_of(&pod)?;
        runtime.delete(&pod.id, true).await?;
        self.destroy_pod_files(&pod.id, &runtime).await;
        {
            let mut tables = self.tables.lock().await;
            tables.pods.remove(&pod.id);
            tables.names.retain(|_, v| *v != pod.id);
        }
        self.forget_lock(&pod.id);
        tracing::info!(pod = %pod.id, "pod removed");
        Ok(())
    }

    pub async fn pod_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<proto::PodSandboxStatusResponse, PodError> {
        self.refresh_pod(id).await;
        let tables = self.tables.lock().await;
        let id = Self::resolve_pod_id(&tables, id)
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {id:?} not found")))?;
        let pod = &tables.pods[&id];
        let config = pod.config();
        let mut info = HashMap::new();
        if verbose {
            let detail = serde_json::json!({
                "pid": pod.pause_pid,
                "monitorPid": pod.monitor_pid,
                "runtimeHandler": pod.handler,
                "cgroupParent": pod.cgroup_parent,
            });
            info.insert("info".to_string(), detail.to_string());
        }
        Ok(proto::PodSandboxStatusResponse {
            status: Some(proto::PodSandboxStatus {
                id: pod.id.clone(),
                metadata: config.metadata.clone(),
                state: pod_state_value(pod.state) as i32,
                created_at: pod.created_at,
                network: Some(network_status_of(pod)),
                linux: Some(proto::LinuxPodSandboxStatus {
                    namespaces: Some(proto::Namespace {
                        options: Some(namespace_options(&config)),
                    }),
                }),
                labels: config.labels.clone(),
                annotations: config.annotations.clone(),
                runtime_handler: pod.handler.clone(),
            }),
            info,
            containers_statuses: Vec::new(),
            timestamp: now_nanos(),
        })
    }

    pub async fn list_pods(
        &self,
        filter: Option<proto::PodSandboxFilter>,
    ) -> Vec<proto::PodSandbox> {
        let ready: Vec<String> = {
            let tables = self.tables.lock().await;
            let ready = tables.pods.values().filter(|p| p.state == PodState::Ready);
            ready.map(|p| p.id.clone()).collect()
        };
        for id in ready {
            self.refresh_pod(&id).await;
        }
        let tables = self.tables.lock().await;
        tables
            .pods
            .values()
            .filter(|pod| {
                let Some(filter) = &filter else { return true };
                let config = pod.config();
                (filter.id.is_empty() || pod.id.starts_with(&filter.id))
                    && filter
                        .state
                        .is_none_or(|s| s.state == pod_state_value(pod.state) as i32)
                    && labels_match(&filter.label_selector, &config.labels)
            })
            .map(|pod| {
                let config = pod.config();
                proto::PodSandbox {
                    id: pod.id.clone(),
                    metadata: config.metadata,
                    state: pod_state_value(pod.state) as i32,
                    created_at: pod.created_at,
                    labels: config.labels,
                    annotations: config.annotations,
                    runtime_handler: pod.handler.clone(),
                }
            })
            .collect()
    }

    // ---- containers -----------------------------------------------------

    pub async fn create_container(
        &self,
        pod_id: &str,
        config: proto::ContainerConfig,
        pod_config: Option<proto::PodSandboxConfig>,
    ) -> Result<String, PodError> {
        let metadata = config
            .metadata
            .clone()
            .filter(|m| !m.name.is_empty())
            .ok_or_else(|| {
                PodError::InvalidArgument("ContainerConfig.metadata.name is required".into())
            })?;
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| PodError::InvalidArgument("ContainerConfig.image is required".into()))?;
        let id = record::new_id();
        let (pod, key) = {
            let mut tables = self.tables.lock().await;
            let pod_id = Self::resolve_pod_id(&tables, pod_id)
                .ok_or_else(|| PodError::NotFound(format!("pod sandbox {pod_id:?} not found")))?;
            let pod = tables.pods[&pod_id].clone();
            if pod.state != PodState::Ready {
                return Err(PodError::FailedPrecondition(format!(
                    "pod sandbox {pod_id} is not ready"
                )));
            }
            let key = container_name_key(&pod_id, &metadata);
            if let Some(existing) = tables.names.get(&key) {
                return Err(PodError::AlreadyExists(format!(
                    "container {:?} (attempt {}) already exists in pod {pod_id} as {existing}",
                    metadata.name, metadata.attempt
                )));
            }
            tables.names.insert(key.clone(), id.clone());
            (pod, key)
        };
        let pod_config = pod_config.unwrap_or_else(|| pod.config());
        let lock = self.lock_for(&id);
        let _guard = lock.lock().await;
        match self
            .make_container(&id, &pod, &pod_config, &config, &image_name)
            .await
        {
            Ok(container) => {
                self.tables
                    .lock()
                    .await
                    .containers
                    .insert(id.clone(), container);
                tracing::info!(container = %id, pod = %pod.id, name = %metadata.name, "container created");
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "container creation failed; rolling back");
                if let Ok(runtime) = self.runtime_of(&pod) {
                    let _ = runtime.delete(&id, true).await;
                }
                self.remove_container_files(&id).await;
                self.tables.lock().await.names.remove(&key);
                self.forget_lock(&id);
                Err(e)
            }
        }
    }

    async fn make_container(
        &self,
        id: &str,
        pod: &PodRecord,
        pod_config: &proto::PodSandboxConfig,
        config: &proto::ContainerConfig,
        image_name: &str,
    ) -> Result<ContainerRecord, PodError> {
        let image = self.images.find(image_name).await?.ok_or_else(|| {
            PodError::NotFound(format!(
                "image {image_name:?} is not present: pull it first"
            ))
        })?;
        let image_config = image_config_of(&self.images.config_bytes(&image).await?);
        let handler = self.handler_of(pod)?;
        // The rootfs: the image's layers under the container's own layer.
        self.images.hold_layers(id, &image);
        let state_dir = self.container_state_dir(id);
        let layout = RootfsLayout::under(&state_dir);
        let layers = self.images.layer_dirs(&image);
        let (mount_layout, mount_state) = (layout.clone(), state_dir.clone());
        let (etc_passwd, etc_group) = blocking(move || {
            std::fs::create_dir_all(&mount_state).map_err(io_error("create", &mount_state))?;
            rootfs::mount(&layers, &mount_layout)?;
            let read = |name: &str| {
                std::fs::read_to_string(mount_layout.merged.join("etc").join(name)).ok()
            };
            Ok((read("passwd"), read("group")))
        })
        .await?;
        let image_config = spec::ImageConfig {
            etc_passwd,
            etc_group,
            ..image_config
        };
        let pod_dir = self.pod_run_dir(&pod.id);
        let options = namespace_options(pod_config);
        let ns = |kind: &str, mode: i32| {
            if mode == proto::NamespaceMode::Node as i32 {
                spec::NamespaceSource::Host
            } else {
                spec::NamespaceSource::Path(PathBuf::from(format!(
                    "/proc/{}/ns/{kind}",
                    pod.pause_pid
                )))
            }
        };
        let network = match &pod.netns {
            Some(path) => spec::NamespaceSource::Path(path.clone()),
            None => ns("net", options.network),
        };
        let namespaces = spec::PodNamespaces {
            network,
            ipc: ns("ipc", options.ipc),
            uts: ns("uts", options.network),
            pid: ns("pid", options.pid),
        };
        let pod_files = spec::PodFiles {
            hosts: Some(pod_dir.join("hosts")),
            resolv_conf: Some(pod_dir.join("resolv.conf")),
            hostname: Some(pod_dir.join("hostname")),
            shm: Some(if pod.shm_mounted {
                pod_dir.join("shm")
            } else {
                PathBuf::from("/dev/shm")
            }),
        };
        let seccomp_profile = match spec::seccomp_localhost_ref(config) {
            Some(path) => Some(tokio::fs::read_to_string(&path).await.map_err(|e| {
                PodError::InvalidArgument(format!(
                    "cannot read the localhost seccomp profile {path}: {e}"
                ))
            })?),
            None => None,
        };
        let handler_options = spec::HandlerOptions::new(&handler.config, handler.features);
        let mut oci_spec = spec::container_spec(&spec::ContainerSpecInput {
            container_id: id,
            sandbox_id: &pod.id,
            config,
            sandbox_config: pod_config,
            image: &image_config,
            image_name,
            rootfs: &layout.merged,
            namespaces: &namespaces,
            target_pid_namespace: None,
            cgroup_parent: &pod.cgroup_parent,
            cgroup_driver: self.config.cgroup_driver,
            pod_files: &pod_files,
            handler: &handler_options,
            host: &self.host,
            seccomp_localhost_profile: seccomp_profile.as_deref(),
        })?;
        restrict_capabilities(&mut oci_spec, self.capability_bound);
        let log_path = match (pod_config.log_directory.as_str(), config.log_path.as_str()) {
            ("", _) | (_, "") => String::new(),
            (dir, file) => Path::new(dir).join(file).display().to_string(),
        };
        let memory_cgroup = memory_cgroup_dir(
            oci_spec
                .linux
                .as_ref()
                .map(|l| l.cgroups_path.as_str())
                .filter(|p| !p.is_empty()),
        );
        let runtime = OciRuntime::new(&handler.config);
        let run_dir = self.container_run_dir(id);
        let created = self
            .create(
                &runtime,
                id,
                &run_dir,
                &oci_spec,
                &state_dir.join("exit.json"),
                &log_path,
                memory_cgroup,
                ContainerIo {
                    terminal: config.tty,
                    stdin: config.stdin,
                    stdin_once: config.stdin_once,
                },
            )
            .await?;
        let container = ContainerRecord {
            id: id.to_string(),
            pod_id: pod.id.clone(),
            state: ContainerState::Created,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            config: Encoded::of(config),
            image: image_name.to_string(),
            image_id: image.id.clone(),
            pid: created.pid,
            monitor_pid: created.monitor_pid,
            monitor_start_time: created.monitor_start_time,
            log_path,
            stop_signal: image_config.stop_signal.clone(),
        };
        self.save_container(&container).await?;
        Ok(container)
    }

    async fn remove_container_files(&self, id: &str) {
        remove_trees([self.container_state_dir(id), self.container_run_dir(id)]).await;
        if let Err(e) = self.images.release_layers(id).await {
            tracing::warn!(container = %id, error = %e, "cannot release image layers");
        }
    }

    async fn container(&self, id: &str) -> Result<ContainerRecord, PodError> {
        let tables = self.tables.lock().await;
        let id = Self::resolve_container_id(&tables, id)
            .ok_or_else(|| PodError::NotFound(format!("container {id:?} not found")))?;
        Ok(tables.containers[&id].clone())
    }

    async fn update_container(&self, container: &ContainerRecord) -> Result<(), PodError> {
        self.save_container(container).await?;
        self.tables
            .lock()
            .await
            .containers
            .insert(container.id.clone(), container.clone());
        Ok(())
    }

    pub async fn start_container(&self, id: &str) -> Result<(), PodError> {
        let mut container = self.container(id).await?;
        let lock = self.lock_for(&container.id);
        let _guard = lock.lock().await;
        if container.state != ContainerState::Created {
            return Err(PodError::FailedPrecondition(format!(
                "container {} is {:?}, not created: it can be started only once",
                container.id, container.state
            )));
        }
        let pod = self.pod_of(&container).await?;
        let runtime = self.runtime_of(&pod)?;
        let run_dir = self.container_run_dir(&container.id);
        let stdio = open_start_fifos(&run_dir).await;
        let start_log = run_dir.join("start.log");
        if let Err(e) = runtime.start(&container.id, &start_log, stdio).await {
            container.state = ContainerState::Exited;
            container.finished_at = now_nanos();
            container.exit_code = 128;
            container.reason = "StartError".into();
            container.message = e.to_string();
            self.update_container(&container).await?;
            return Err(e.into());
        }
        container.state = ContainerState::Running;
        container.started_at = now_nanos();
        self.update_container(&container).await?;
        Ok(())
    }

    async fn pod_of(&self, container: &ContainerRecord) -> Result<PodRecord, PodError> {
        self.tables
            .lock()
            .await
            .pods
            .get(&container.pod_id)
            .cloned()
            .ok_or_else(|| {
                PodError::NotFound(format!(
                    "the pod {} of container {} is gone",
                    container.pod_id, container.id
                ))
            })
    }

    /// Folds a recorded exit into the container's state; a container whose
    /// monitor is lost is checked with its runtime (see [`lost`]).
    async fn refresh_container(&self, id: &str) -> Result<ContainerRecord, PodError> {
        let mut container = self.container(id).await?;
        if container.state == ContainerState::Exited {
            return Ok(container);
        }
        let exit = match self.container_fate(&container).await {
            lost::Fate::Exited(exit) => Some(exit),
            lost::Fate::Watched => None,
            lost::Fate::MonitorLost => return self.check_lost_container(container).await,
        };
        if let Some(exit) = exit {
            container.state = ContainerState::Exited;
            container.exit_code = exit.exit_code;
            container.finished_at = exit.finished_at_unix_nanos;
            if container.started_at == 0 {
                container.started_at = container.finished_at;
            }
            container.reason = if exit.oom_killed {
                "OOMKilled".into()
            } else if exit.exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            };
            self.update_container(&container).await?;
        }
        Ok(container)
    }

    async fn wait_exit(&self, exit_file: &Path, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if monitor::read_exit(exit_file).is_some() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    pub async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<(), PodError> {
        let container = match self.refresh_container(id).await {
            // Stopping what is gone succeeds: the CRI asks for idempotence.
            Err(PodError::NotFound(_)) => return Ok(()),
            other => other?,
        };
        let lock = self.lock_for(&container.id);
        let _guard = lock.lock().await;
        if container.state == ContainerState::Exited {
            return Ok(());
        }
        let pod = self.pod_of(&container).await?;
        let runtime = self.runtime_of(&pod)?;
        let exit_file = self.container_state_dir(&container.id).join("exit.json");
        if container.state == ContainerState::Created {
            // Never started: nothing to wait for but the kill.
            let _ = runtime.kill(&container.id, "KILL", false).await;
        } else {
            if timeout_secs > 0 {
                let signal = if container.stop_signal.is_empty() {
                    "TERM"
                } else {
                    container.stop_signal.as_str()
                };
                if let Err(e) = runtime.kill(&container.id, signal, false).await {
                    tracing::warn!(container = %container.id, signal, error = %e, "stop signal not delivered; SIGKILL follows after the timeout");
                }
                if self
                    .wait_exit_of(
                        &runtime,
                        &container,
                        Duration::from_secs(timeout_secs as u64),
                    )
                    .await
                {
                    drop(_guard);
                    self.refresh_container(&container.id).await?;
                    return Ok(());
                }
            }
            if let Err(e) = runtime.kill(&container.id, "KILL", true).await {
                tracing::warn!(container = %container.id, error = %e, "SIGKILL not delivered");
            }
        }
        if !self.wait_exit(&exit_file, MONITOR_EXIT_WAIT).await
            && let Err(why) = self
                .exit_from_runtime(&runtime, &container, &exit_file)
                .await
        {
            return Err(PodError::DeadlineExceeded(format!(
                "container {} did not exit within {KILL_WAIT:?} of SIGKILL: {why}",
                container.id
            )));
        }
        drop(_guard);
        self.refresh_container(&container.id).await?;
        Ok(())
    }

    /// Some runtimes run a container inside a process that is not its
    /// monitor's child (runsc: a pod's second container lives in the
    /// sandbox process), so the monitor cannot see it exit. Ask the runtime;
    /// once it reports the container stopped (or gone), record the kill and
    /// retire the monitor. Fails, saying what the runtime last answered, if
    /// the container is not stopped within KILL_WAIT.
    async fn exit_from_runtime(
        &self,
        runtime: &OciRuntime,
        container: &ContainerRecord,
        exit_file: &Path,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + KILL_WAIT;
        // What the runtime last said, for the error.
        let mut last = None;
        loop {
            if monitor::read_exit(exit_file).is_some() {
                return Ok(());
            }
            // A runtime that hangs on `state` gets no more than the deadline.
            let Ok(answer) = tokio::time::timeout_at(deadline, runtime.state(&container.id)).await
            else {
                return Err(last.unwrap_or_else(|| {
                    format!(
                        "runtime handler {:?} ({}) did not answer `state` in time",
                        runtime.handler,
                        runtime.path.display()
                    )
                }));
            };
            last = Some(match answer {
                Ok(None) => break,
                Ok(Some(state)) if state.status == "stopped" => break,
                Ok(Some(state)) => format!(
                    "runtime handler {:?} ({}) reports it {:?}",
                    runtime.handler,
                    runtime.path.display(),
                    state.status
                ),
                Err(e) => {
                    tracing::debug!(container = %container.id, error = %e, "runtime state failed");
                    format!("its runtime cannot tell whether it runs: {e}")
                }
            });
            if tokio::time::Instant::now() >= deadline {
                return Err(last.unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Only the monitor itself: its pid may be someone else's by now.
        if self
            .monitor_alive(
                container.monitor_pid,
                container.monitor_start_time,
                &container.id,
            )
            .await
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(container.monitor_pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let record = monitor::ExitRecord {
            exit_code: 137,
            signal: Some(9),
            finished_at_unix_nanos: now_nanos(),
            oom_killed: false,
        };
        let path = exit_file.to_path_buf();
        blocking(move || {
            let bytes =
                serde_json::to_vec(&record).map_err(|e| PodError::Internal(e.to_string()))?;
            crate::fsutil::write_atomic(&path, &bytes).map_err(io_error("write", &path))
        })
        .await
        .map_err(|e| format!("cannot record its exit: {e}"))
    }

    pub async fn remove_container(&self, id: &str) -> Result<(), PodError> {
        let Ok(container) = self.container(id).await else {
            return Ok(()); // Removing what is gone succeeds.
        };
        if container.state != ContainerState::Exited {
            self.stop_container(&container.id, 0).await?;
        }
        let lock = self.lock_for(&container.id);
        let _guard = lock.lock().await;
        if let Ok(pod) = self.pod_of(&container).await {
            self.runtime_of(&pod)?.delete(&container.id, true).await?;
        }
        self.remove_container_files(&container.id).await;
        {
            let mut tables = self.tables.lock().await;
            tables.containers.remove(&container.id);
            tables.names.retain(|_, v| *v != container.id);
        }
        self.forget_lock(&container.id);
        tracing::info!(container = %container.id, "container removed");
        Ok(())
    }

    pub async fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<proto::ContainerStatusResponse, PodError> {
        let container = self.refresh_container(id).await?;
        let config = container.config();
        let mut info = HashMap::new();
        if verbose {
            let detail = serde_json::json!({
                "pid": container.pid,
                "monitorPid": container.monitor_pid,
                "sandboxID": container.pod_id,
            });
            info.insert("info".to_string(), detail.to_string());
        }
        Ok(proto::ContainerStatusResponse {
            status: Some(proto::ContainerStatus {
                id: container.id.clone(),
                metadata: config.metadata.clone(),
                state: container_state_value(container.state) as i32,
                created_at: container.created_at,
                started_at: container.started_at,
                finished_at: container.finished_at,
                exit_code: container.exit_code,
                image: config.image.clone(),
                image_ref: container.image_id.clone(),
                reason: container.reason.clone(),
                message: container.message.clone(),
                labels: config.labels.clone(),
                annotations: config.annotations.clone(),
                mounts: config.mounts.clone(),
                log_path: container.log_path.clone(),
                image_id: container.image_id.clone(),
                ..Default::default()
            }),
            info,
        })
    }

    pub async fn list_containers(
        &self,
        filter: Option<proto::ContainerFilter>,
    ) -> Vec<proto::Container> {
        let ids: Vec<String> = self
            .tables
            .lock()
            .await
            .containers
            .keys()
            .cloned()
            .collect();
        let mut containers = Vec::new();
        for id in ids {
            if let Ok(container) = self.refresh_container(&id).await {
                containers.push(container);
            }
        }
        containers
            .into_iter()
            .filter(|c| {
                let Some(filter) = &filter else { return true };
                (filter.id.is_empty() || c.id.starts_with(&filter.id))
                    && (filter.pod_sandbox_id.is_empty()
                        || c.pod_id.starts_with(&filter.pod_sandbox_id))
                    && filter
                        .state
                        .is_none_or(|s| s.state == container_state_value(c.state) as i32)
                    && labels_match(&filter.label_selector, &c.config().labels)
            })
            .map(|c| {
                let config = c.config();
                proto::Container {
                    id: c.id.clone(),
                    pod_sandbox_id: c.pod_id.clone(),
                    metadata: config.metadata,
                    image: config.image,
                    image_ref: c.image_id.clone(),
                    state: container_state_value(c.state) as i32,
                    created_at: c.created_at,
                    labels: config.labels,
                    annotations: config.annotations,
                    image_id: c.image_id.clone(),
                }
            })
            .collect()
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout_secs: i64,
    ) -> Result<proto::ExecSyncResponse, PodError> {
        let cmd_text = cmd.join(" ");
        let mut prepared = self.prepare_exec(id, cmd, false).await?;
        let pid_path = prepared.pid_file.clone();
        prepared
            .command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = prepared
            .command
            .spawn()
            .map_err(io_error("run the runtime", &prepared.runtime_path))?;
        let stdout = tokio::spawn(read_capped(child.stdout.take()));
        let stderr = tokio::spawn(read_capped(child.stderr.take()));
        let waited = if timeout_secs > 0 {
            tokio::time::timeout(Duration::from_secs(timeout_secs as u64), child.wait()).await
        } else {
            Ok(child.wait().await)
        };
        let status = match waited {
            Ok(status) => status,
            Err(_) => {
                // Kill the command first, so the runtime reaps it and no
                // zombie stays behind in the container, then the runtime.
                if let Ok(pid) = tokio::fs::read_to_string(&pid_path).await
                    && let Ok(pid) = pid.trim().parse::<i32>()
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                if tokio::time::timeout(Duration::from_secs(2), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
                prepared.cleanup().await;
                return Err(PodError::DeadlineExceeded(format!(
                    "command {cmd_text:?} in container {id} timed out after {timeout_secs}s and was killed"
                )));
            }
        };
        prepared.cleanup().await;
        let status = status.map_err(|e| PodError::Internal(format!("exec in {id}: {e}")))?;
        Ok(proto::ExecSyncResponse {
            stdout: stdout.await.unwrap_or_default(),
            stderr: stderr.await.unwrap_or_default(),
            exit_code: status.code().unwrap_or(255),
        })
    }

    /// Checks an Attach request: container `id` exists and runs, stdin is
    /// asked for only if the container has one, and `tty` matches the
    /// container's. Returns the full container id.
    pub async fn check_attach(&self, id: &str, stdin: bool, tty: bool) -> Result<String, PodError> {
        let container = self.refresh_container(id).await?;
        if container.state != ContainerState::Running {
            return Err(PodError::FailedPrecondition(format!(
                "container {} is not running",
                container.id
            )));
        }
        let config = container.config();
        if stdin && !config.stdin {
            return Err(PodError::InvalidArgument(format!(
                "container {} has no stdin (its config has stdin: false): attach without stdin",
                container.id
            )));
        }
        if tty != config.tty {
            return Err(PodError::InvalidArgument(format!(
                "container {} {} a TTY: attach with tty {}",
                container.id,
                if config.tty { "has" } else { "does not have" },
                config.tty
            )));
        }
        Ok(container.id)
    }

    /// The monitor's attach socket of container `id` (see
    /// [`crate::monitor::attach`]).
    pub fn attach_socket_dir(&self, id: &str) -> PathBuf {
        self.container_run_dir(id)
    }

    /// Checks that pod `id` exists and is ready, as port-forward needs;
    /// returns its full id.
    pub async fn check_port_forward(&self, id: &str) -> Result<String, PodError> {
        let (id, state) = {
            let tables = self.tables.lock().await;
            let id = Self::resolve_pod_id(&tables, id)
                .ok_or_else(|| PodError::NotFound(format!("pod sandbox {id:?} not found")))?;
            let state = tables.pods[&id].state;
            (id, state)
        };
        if state != PodState::Ready || self.exit_of_pod(&id).is_some() {
            return Err(PodError::FailedPrecondition(format!(
                "pod sandbox {id} is not ready (its infra container is stopped): ports can be forwarded only into a running pod"
            )));
        }
        Ok(id)
    }

    /// The network namespace of ready pod `id`, open for port-forward
    /// connections (the host's for a host-network pod).
    pub async fn pod_network(&self, id: &str) -> Result<PodNetwork, PodError> {
        let id = self.check_port_forward(id).await?;
        let netns = self
            .tables
            .lock()
            .await
            .pods
            .get(&id)
            .map(|pod| pod.netns.clone())
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {id:?} not found")))?;
        blocking(move || {
            PodNetwork::open(netns.as_deref()).map_err(|source| PodError::Io {
                action: "open the network namespace",
                path: netns.unwrap_or_default(),
                source,
            })
        })
        .await
    }

    /// Checks that container `id` exists and runs, as streaming exec needs.
    pub async fn check_exec(&self, id: &str) -> Result<(), PodError> {
        let container = self.refresh_container(id).await?;
        if container.state != ContainerState::Running {
            return Err(PodError::FailedPrecondition(format!(
                "container {} is not running",
                container.id
            )));
        }
        Ok(())
    }

    /// Prepares `cmd` to run in running container `id` through its pod's
    /// handler (`exec --process FILE`). With `terminal`, the process gets a
    /// TTY: the runtime sends its pty master to [`PreparedExec::console`],
    /// a socket listening in the container's run directory. The caller sets
    /// up stdio, spawns the command and then calls [`PreparedExec::cleanup`].
    pub async fn prepare_exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        terminal: bool,
    ) -> Result<PreparedExec, PodError> {
        if cmd.is_empty() {
            return Err(PodError::InvalidArgument(
                "the command to run is empty: give at least the program".into(),
            ));
        }
        let container = self.refresh_container(id).await?;
        if container.state != ContainerState::Running {
            return Err(PodError::FailedPrecondition(format!(
                "container {} is not running",
                container.id
            )));
        }
        let pod = self.pod_of(&container).await?;
        let runtime = self.runtime_of(&pod)?;
        let run_dir = self.container_run_dir(&container.id);
        let exec_id = record::new_id();
        let process_path = run_dir.join(format!("exec-{}.json", &exec_id[..12]));
        let pid_path = run_dir.join(format!("exec-{}.pid", &exec_id[..12]));
        let config_path = run_dir.join("config.json");
        let process_file = process_path.clone();
        let socket_name = format!("exec-{}.sock", &exec_id[..12]);
        let socket_file = run_dir.join(&socket_name);
        let console = blocking(move || {
            let bytes = std::fs::read(&config_path).map_err(io_error("read", &config_path))?;
            let mut spec: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| PodError::Internal(format!("{}: {e}", config_path.display())))?;
            let mut process = spec["process"].take();
            process["args"] = serde_json::json!(cmd);
            process["terminal"] = serde_json::json!(terminal);
            std::fs::write(&process_file, process.to_string())
                .map_err(io_error("write", &process_file))?;
            if !terminal {
                return Ok(None);
            }
            // The path may be too long for a socket address: bind and hand
            // it to the runtime through a descriptor of the directory.
            let ours = crate::tty::SocketPath::new(&run_dir, &socket_name, None)
                .map_err(io_error("open", &run_dir))?;
            let listener = std::os::unix::net::UnixListener::bind(&ours.path)
                .map_err(io_error("listen on", &run_dir.join(&socket_name)))?;
            listener
                .set_nonblocking(true)
                .map_err(io_error("listen on", &run_dir.join(&socket_name)))?;
            let theirs =
                crate::tty::SocketPath::new(&run_dir, &socket_name, Some(std::process::id()))
                    .map_err(io_error("open", &run_dir))?;
            Ok(Some((listener, theirs)))
        })
        .await?;
        let (console, console_path) = match console {
            Some((listener, path)) => {
                let listener = tokio::net::UnixListener::from_std(listener)
                    .map_err(io_error("listen on", &socket_file))?;
                (Some(listener), Some(path))
            }
            None => (None, None),
        };
        let command = match &console_path {
            None => runtime.exec_command(&container.id, &process_path, &pid_path),
            Some(socket) => {
                let mut command = tokio::process::Command::new(&self.monitor_exe);
                command
                    .arg("exec-wait")
                    .arg("--pid-file")
                    .arg(&pid_path)
                    .arg("--")
                    .args(runtime.detached_exec_argv(
                        &container.id,
                        &process_path,
                        &pid_path,
                        &socket.path,
                    ))
                    .kill_on_drop(true);
                command
            }
        };
        Ok(PreparedExec {
            command,
            runtime_path: runtime.path.clone(),
            pid_file: pid_path,
            process_file: process_path,
            console,
            console_file: console_path.map(|path| (socket_file, path)),
        })
    }

    pub async fn reopen_log(&self, id: &str) -> Result<(), PodError> {
        let container = self.refresh_container(id).await?;
        if container.state != ContainerState::Running {
            return Err(PodError::FailedPrecondition(format!(
                "container {} is not running",
                container.id
            )));
        }
        let (pid, start_time, id) = (
            container.monitor_pid,
            container.monitor_start_time,
            container.id.clone(),
        );
        // Never signal a process that merely reuses the monitor's pid.
        let alive = tokio::task::spawn_blocking(move || lost::monitor_alive(pid, start_time, &id))
            .await
            .unwrap_or(false);
        if !alive {
            return Err(PodError::FailedPrecondition(format!(
                "the monitor of container {} is gone, so its log cannot be reopened",
                container.id
            )));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .map_err(|e| {
            PodError::Internal(format!("signalling the monitor of {}: {e}", container.id))
        })?;
        // The kubelet (and critest) expect the new file to exist when the
        // call returns: wait, briefly, for the monitor to create it.
        if !container.log_path.is_empty() {
            let log_path = PathBuf::from(&container.log_path);
            let deadline = tokio::time::Instant::now() + REOPEN_WAIT;
            while !tokio::fs::try_exists(&log_path).await.unwrap_or(false) {
                if tokio::time::Instant::now() >= deadline {
                    return Err(PodError::DeadlineExceeded(format!(
                        "the monitor of container {} did not reopen {} within {REOPEN_WAIT:?}",
                        container.id,
                        log_path.display()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }

    pub async fn update_resources(
        &self,
        id: &str,
        resources: Option<proto::LinuxContainerResources>,
    ) -> Result<(), PodError> {
        let container = self.refresh_container(id).await?;
        if container.state == ContainerState::Exited {
            return Err(PodError::FailedPrecondition(format!(
                "container {} has exited",
                container.id
            )));
        }
        let Some(resources) = resources else {
            return Ok(());
        };
        let pod = self.pod_of(&container).await?;
        let runtime = self.runtime_of(&pod)?;
        let oci_resources = spec::linux_resources(&resources, self.host.cgroup_v2)?;
        let path = self.container_run_dir(&container.id).join("update.json");
        let json =
            serde_json::to_vec(&oci_resources).map_err(|e| PodError::Internal(e.to_string()))?;
        tokio::fs::write(&path, json)
            .await
            .map_err(io_error("write", &path))?;
        let mut command = runtime.command();
        let output = command
            .arg("update")
            .arg("--resources")
            .arg(&path)
            .arg(&container.id)
            .output()
            .await
            .map_err(io_error("run the runtime", &runtime.path))?;
        if !output.status.success() {
            return Err(PodError::from(RuntimeError::Failed {
                handler: runtime.handler.clone(),
                path: runtime.path.clone(),
                verb: "update".into(),
                id: container.id.clone(),
                status: output.status.to_string(),
                stderr: crate::handler::oci::runtime_message(&output.stderr),
            }));
        }
        Ok(())
    }
}

/// What CNI needs to know of a pod.
fn attach_request(id: &str, config: &proto::PodSandboxConfig, netns: &Path) -> AttachRequest {
    let metadata = config.metadata.clone().unwrap_or_default();
    AttachRequest {
        container_id: id.to_string(),
        netns: netns.to_path_buf(),
        ifname: "eth0".to_string(),
        pod_name: metadata.name,
        pod_namespace: metadata.namespace,
        pod_uid: metadata.uid,
        port_mappings: config
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| network::PortMapping {
                host_port: p.host_port,
                container_port: p.container_port,
                protocol: match proto::Protocol::try_from(p.protocol) {
                    Ok(proto::Protocol::Udp) => "udp",
                    Ok(proto::Protocol::Sctp) => "sctp",
                    _ => "tcp",
                }
                .to_string(),
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        dns: config.dns_config.as_ref().map(|d| network::Dns {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        bandwidth: None,
    }
}

/// The pod's addresses as the CRI reports them: the first as `ip`.
fn network_status_of(pod: &PodRecord) -> proto::PodSandboxNetworkStatus {
    let ips = pod
        .network
        .as_ref()
        .map(|n| n.ips.clone())
        .unwrap_or_default();
    let mut ips = ips.into_iter();
    proto::PodSandboxNetworkStatus {
        ip: ips.next().unwrap_or_default(),
        additional_ips: ips.map(|ip| proto::PodIp { ip }).collect(),
    }
}

/// Reads a pipe to its end, keeping at most MAX_EXEC_OUTPUT bytes.
async fn read_capped(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        let room = MAX_EXEC_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buffer[..n.min(room)]);
    }
    kept
}

/// Removes directories (unmounting what is mounted inside first); failures
/// are logged, as there is nothing better to do during clean-up.
async fn remove_trees(dirs: [PathBuf; 2]) {
    let _ = blocking(move || {
        for dir in &dirs {
            if let Err(e) = crate::fsutil::remove_tree(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove");
            }
        }
        Ok(())
    })
    .await;
}

/// A streaming exec ready to spawn (see [`PodManager::prepare_exec`]).
pub struct PreparedExec {
    /// `RUNTIME exec --process FILE --pid-file PID ID`; stdio not set yet.
    pub command: tokio::process::Command,
    /// The runtime binary, for error messages.
    pub runtime_path: PathBuf,
    /// Where the runtime writes the pid of the command (in rcri's namespace).
    pub pid_file: PathBuf,
    process_file: PathBuf,
    /// With a terminal: where the runtime sends the pty master.
    pub console: Option<tokio::net::UnixListener>,
    /// The console socket's file, and the path the runtime was given (kept
    /// so the directory descriptor it may go through stays open).
    console_file: Option<(PathBuf, crate::tty::SocketPath)>,
}

impl PreparedExec {
    /// Removes the process and pid files (and the console socket) once the
    /// command has exited.
    pub async fn cleanup(&self) {
        let mut files = vec![self.process_file.clone(), self.pid_file.clone()];
        if let Some((file, _)) = &self.console_file {
            files.push(file.clone());
        }
        remove_files(&files).await;
    }
}

async fn remove_files(paths: &[PathBuf]) {
    for path in paths {
        let _ = tokio::fs::remove_file(path).await;
    }
}

/// The monitor's start FIFOs in `bundle` (see [`OciRuntime::start`]),
/// blocking as stdio must be; None when they cannot be opened (no monitor
/// reads them: a container created before they existed, or one whose
/// monitor is gone).
async fn open_start_fifos(bundle: &Path) -> Option<crate::handler::oci::StartStdio> {
    let bundle = bundle.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || {
        let open = |name: &str, write: bool| -> std::io::Result<std::fs::File> {
            use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
            // Non-blocking, an open for writing without a reader fails
            // (ENXIO) instead of waiting.
            let file = std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(bundle.join(name))?;
            if !file.metadata()?.file_type().is_fifo() {
                return Err(std::io::Error::other("not a FIFO"));
            }
            let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL)?;
            let flags = nix::fcntl::OFlag::from_bits_retain(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags))?;
            Ok(file)
        };
        let [out, err] = monitor::START_FIFOS;
        // Only a container with a stdin has this one.
        let stdin = match open(monitor::START_STDIN, false) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok::<_, std::io::Error>(crate::handler::oci::StartStdio {
            stdin,
            stdout: open(out, true)?,
            stderr: open(err, true)?,
        })
    })
    .await;
    match opened {
        Ok(Ok(stdio)) => Some(stdio),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "no start FIFOs; start's output goes to a file");
            None
        }
        Err(_) => None,
    }
}

/// A container's terminal and stdin, as its monitor sets them up.
#[derive(Debug, Clone, Copy, Default)]
struct ContainerIo {
    terminal: bool,
    stdin: bool,
    stdin_once: bool,
}

struct Started {
    pid: i64,
    monitor_pid: i32,
    monitor_start_time: Option<u64>,
}

fn unique_prefix<'a>(keys: impl Iterator<Item = &'a String>, prefix: &str) -> Option<String> {
    if prefix.len() < 4 {
        return None;
    }
    let mut matches = keys.filter(|k| k.starts_with(prefix));
    match (matches.next(), matches.next()) {
        (Some(one), None) => Some(one.clone()),
        _ => None,
    }
}

fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn namespace_options(config: &proto::PodSandboxConfig) -> proto::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

fn pod_state_value(state: PodState) -> proto::PodSandboxState {
    match state {
        PodState::Ready => proto::PodSandboxState::SandboxReady,
        PodState::NotReady => proto::PodSandboxState::SandboxNotready,
    }
}

fn container_state_value(state: ContainerState) -> proto::ContainerState {
    match state {
        ContainerState::Created => proto::ContainerState::ContainerCreated,
        ContainerState::Running => proto::ContainerState::ContainerRunning,
        ContainerState::Exited => proto::ContainerState::ContainerExited,
    }
}

/// The image config fields that shape a container's process.
fn image_config_of(bytes: &[u8]) -> spec::ImageConfig {
    #[derive(serde::Deserialize, Default)]
    struct Doc {
        #[serde(default)]
        config: Option<Inner>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "PascalCase")]
    struct Inner {
        #[serde(default)]
        entrypoint: Option<Vec<String>>,
        #[serde(default)]
        cmd: Option<Vec<String>>,
        #[serde(default)]
        env: Option<Vec<String>>,
        #[serde(default)]
        working_dir: Option<String>,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        stop_signal: Option<String>,
    }
    let inner = serde_json::from_slice::<Doc>(bytes)
        .ok()
        .and_then(|d| d.config)
        .unwrap_or_default();
    spec::ImageConfig {
        entrypoint: inner.entrypoint.unwrap_or_default(),
        cmd: inner.cmd.unwrap_or_default(),
        env: inner.env.unwrap_or_default(),
        working_dir: inner.working_dir.unwrap_or_default(),
        user: inner.user.unwrap_or_default(),
        stop_signal: inner.stop_signal.unwrap_or_default(),
        etc_passwd: None,
        etc_group: None,
    }
}

/// The container's memory cgroup directory (cgroup v1 cgroupfs layout), for
/// OOM detection by the monitor.
fn memory_cgroup_dir(cgroups_path: Option<&str>) -> Option<PathBuf> {
    let path = cgroups_path?;
    if path.contains(':') {
        return None; // systemd driver: the slice layout is the runtime's business.
    }
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.is_dir() {
        Some(v1.join(path.trim_start_matches('/')))
    } else {
        Some(Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')))
    }
}

/// Facts the spec generator needs about this host.
fn host_info() -> spec::HostInfo {
    let own_oom = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0);
    spec::HostInfo {
        // Without CAP_SYS_RESOURCE nothing may go below our own value.
        min_oom_score_adj: if has_sys_resource() { -1000 } else { own_oom },
        cgroup_v2: Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        apparmor_enabled: Path::new("/sys/kernel/security/apparmor").exists(),
        apparmor_default_profile: None,
        selinux_enabled: Path::new("/sys/fs/selinux/enforce").exists(),
        devices: host_devices(Path::new("/dev")),
    }
}

/// The host's device nodes: privileged containers get them all, and the
/// CRI's `devices` are looked up among them.
fn host_devices(dev: &Path) -> Vec<oci::Device> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut devices = Vec::new();
    let mut stack = vec![dev.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // Per-container instances, not host devices to hand out.
            if ["pts", "shm", "mqueue"]
                .iter()
                .any(|skip| path == dev.join(skip))
            {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let kind = if meta.file_type().is_char_device() {
                "c"
            } else if meta.file_type().is_block_device() {
                "b"
            } else {
                if meta.is_dir() {
                    stack.push(path);
                }
                continue;
            };
            devices.push(oci::Device {
                kind: kind.to_string(),
                path: path.display().to_string(),
                major: nix::sys::stat::major(meta.rdev()) as i64,
                minor: nix::sys::stat::minor(meta.rdev()) as i64,
                file_mode: Some(meta.mode() & 0o777),
                uid: Some(meta.uid()),
                gid: Some(meta.gid()),
            });
        }
    }
    devices.sort_by(|a, b| a.path.cmp(&b.path));
    devices
}

fn has_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    own_capabilities("CapEff").is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// One of rcri's capability sets from /proc/self/status (`CapEff`, `CapBnd`).
fn own_capabilities(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Capability names by number, as the kernel numbers them.
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Drops capabilities rcri itself cannot grant (a privileged container on a
/// host that withholds some from rcri would otherwise fail to start), as
/// other runtimes do with their own set.
fn restrict_capabilities(spec: &mut oci::Spec, bound: u64) {
    let held = |name: &String| {
        let bare = name.trim_start_matches("CAP_");
        CAPABILITIES
            .iter()
            .position(|c| *c == bare)
            .is_none_or(|bit| bit >= 64 || bound & (1 << bit) != 0)
    };
    if let Some(caps) = spec.process.as_mut().and_then(|p| p.capabilities.as_mut()) {
        for set in [
            &mut caps.bounding,
            &mut caps.effective,
            &mut caps.permitted,
            &mut caps.inheritable,
            &mut caps.ambient,
        ] {
            set.retain(held);
        }
    }
}

/// Writes the built-in pause program into its own tiny rootfs.
fn install_pause(run_dir: &Path) -> Result<PathBuf, PodError> {
    use std::os::unix::fs::PermissionsExt;
    let rootfs = run_dir.join("pause").join("rootfs");
    for dir in ["proc", "dev", "sys", "etc"] {
        let path = rootfs.join(dir);
        std::fs::create_dir_all(&path).map_err(io_error("create", &path))?;
    }
    let binary = rootfs.join(PAUSE_PATH.trim_start_matches('/'));
    if std::fs::read(&binary).ok().as_deref() != Some(PAUSE_BINARY) {
        let tmp = rootfs.join(".pause.tmp");
        std::fs::write(&tmp, PAUSE_BINARY).map_err(io_error("write", &tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(io_error("chmod", &tmp))?;
        std::fs::rename(&tmp, &binary).map_err(io_error("install", &binary))?;
    }
    Ok(rootfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_devices_include_null_and_skip_per_container_mounts() {
        let devices = host_devices(Path::new("/dev"));
        let null = devices
            .iter()
            .find(|d| d.path == "/dev/null")
            .expect("/dev/null");
        assert_eq!((null.kind.as_str(), null.major, null.minor), ("c", 1, 3));
        assert!(devices.iter().all(|d| !d.path.starts_with("/dev/pts/")));
    }
}
