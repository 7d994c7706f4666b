//! CRI container and pod configuration plus image configuration → OCI
//! runtime-spec (`config.json`).
//!
//! Everything here is a pure function of its input: whatever needs the host
//! (the image's /etc/passwd, a localhost seccomp profile, the host's
//! devices, the lowest oom_score_adj rcri may set) is read by the caller and
//! passed in, so every rule is unit-tested without root.

pub mod oci;
pub mod seccomp;

mod mounts;
mod resources;
pub(crate) use resources::linux_resources;
mod security;
mod user;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::CgroupDriver;
use crate::proto;
use crate::proto::NamespaceMode;

pub use security::{
    ALL_CAPABILITIES, DEFAULT_CAPABILITIES, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS,
};

use security::Profile;

/// Annotations runsc (and other sandboxed runtimes) read to put the
/// containers of one pod into one sandbox.
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const ANNOTATION_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub const ANNOTATION_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const ANNOTATION_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const ANNOTATION_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
pub const ANNOTATION_SANDBOX_LOG_DIRECTORY: &str = "io.kubernetes.cri.sandbox-log-directory";
pub const ANNOTATION_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// cgroup parents used when the kubelet (or crictl) gives none.
pub const DEFAULT_CGROUPFS_PARENT: &str = "/rcri";
pub const DEFAULT_SYSTEMD_PARENT: &str = "system.slice";

/// The infra container's identity and score (the kubelet's and
/// containerd's choices for pause).
pub const SANDBOX_USER: u32 = 65535;
pub const SANDBOX_OOM_SCORE_ADJ: i64 = -998;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The request cannot be turned into a spec; the text says why.
    #[error("{0}")]
    InvalidArgument(String),
}

fn invalid(message: impl Into<String>) -> SpecError {
    SpecError::InvalidArgument(message.into())
}

/// The parts of an image's configuration that shape the process, plus the
/// image's /etc/passwd and /etc/group (if it has them) for user lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub working_dir: String,
    /// `uid`, `uid:gid`, `name`, `name:group` or empty (root).
    pub user: String,
    /// Not part of the spec; kept here for StopContainer.
    pub stop_signal: String,
    pub etc_passwd: Option<String>,
    pub etc_group: Option<String>,
}

/// Where a namespace comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceSource {
    /// The host's: nothing goes into the spec.
    Host,
    /// Join the namespace pinned at this path (a bind-mounted namespace
    /// file or `/proc/PID/ns/KIND` of the infra process).
    Path(PathBuf),
    /// A fresh one for this container.
    New,
}

/// The pod's namespaces, as the containers of the pod join them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNamespaces {
    pub network: NamespaceSource,
    pub ipc: NamespaceSource,
    pub uts: NamespaceSource,
    /// The pod-shared PID namespace, joined by containers whose PID mode is
    /// POD; `Host` for a host-PID pod.
    pub pid: NamespaceSource,
}

/// Files and directories rcri prepared for the pod, bind-mounted into
/// every container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFiles {
    pub hosts: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub hostname: Option<PathBuf>,
    /// The pod's /dev/shm (the host's /dev/shm for a host-IPC pod); `None`
    /// gives the container a private tmpfs.
    pub shm: Option<PathBuf>,
}

/// What the runtime handler allows and supports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerOptions {
    pub name: String,
    pub privileged_without_host_devices: bool,
    /// Annotation keys, or prefixes ending in `*`, copied into the spec.
    pub allowed_annotations: Vec<String>,
    pub supports_recursive_read_only: bool,
    /// The runtime reports user namespaces with idmapped mounts.
    pub supports_user_namespaces: bool,
}

impl HandlerOptions {
    pub fn new(handler: &crate::config::Handler, features: crate::handler::Features) -> Self {
        Self {
            name: handler.name.clone(),
            privileged_without_host_devices: handler.privileged_without_host_devices,
            allowed_annotations: handler.allowed_annotations.clone(),
            supports_recursive_read_only: features.recursive_read_only_mounts,
            supports_user_namespaces: features.user_namespaces,
        }
    }
}

/// Facts about the host the caller found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// The lowest oom_score_adj rcri may set (its own, without
    /// CAP_SYS_RESOURCE); lower requests are raised to it.
    pub min_oom_score_adj: i64,
    pub cgroup_v2: bool,
    pub apparmor_enabled: bool,
    /// The loaded profile to use for AppArmor RuntimeDefault; `None` leaves
    /// the process unconfined by the spec.
    pub apparmor_default_profile: Option<String>,
    pub selinux_enabled: bool,
    /// The host's device nodes: all of them go to privileged containers;
    /// the CRI's `devices` are looked up here.
    pub devices: Vec<oci::Device>,
}

impl Default for HostInfo {
    fn default() -> Self {
        Self {
            min_oom_score_adj: -1000,
            cgroup_v2: false,
            apparmor_enabled: false,
            apparmor_default_profile: None,
            selinux_enabled: false,
            devices: Vec::new(),
        }
    }
}

/// Everything `container_spec` needs.
#[derive(Debug, Clone)]
pub struct ContainerSpecInput<'a> {
    pub container_id: &'a str,
    pub sandbox_id: &'a str,
    pub config: &'a proto::ContainerConfig,
    pub sandbox_config: &'a proto::PodSandboxConfig,
    pub image: &'a ImageConfig,
    /// The image's name for the image-name annotation.
    pub image_name: &'a str,
    pub rootfs: &'a Path,
    pub namespaces: &'a PodNamespaces,
    /// The target container's PID namespace, for PID mode TARGET.
    pub target_pid_namespace: Option<&'a Path>,
    /// Usually `LinuxPodSandboxConfig.cgroup_parent`; empty → the default.
    pub cgroup_parent: &'a str,
    pub cgroup_driver: CgroupDriver,
    pub pod_files: &'a PodFiles,
    pub handler: &'a HandlerOptions,
    pub host: &'a HostInfo,
    /// Contents of the profile `seccomp_localhost_ref` names, if any.
    pub seccomp_localhost_profile: Option<&'a str>,
}

/// Everything `sandbox_spec` needs.
#[derive(Debug, Clone)]
pub struct SandboxSpecInput<'a> {
    pub sandbox_id: &'a str,
    pub config: &'a proto::PodSandboxConfig,
    /// The directory holding the pause program; mounted read-only.
    pub rootfs: &'a Path,
    /// The pause program's path inside `rootfs`.
    pub pause_path: &'a str,
    /// A network namespace prepared for CNI; `None` makes a new one (or
    /// the host's for a host-network pod).
    pub netns_path: Option<&'a Path>,
    pub cgroup_parent: &'a str,
    pub cgroup_driver: CgroupDriver,
    pub handler: &'a HandlerOptions,
    pub host: &'a HostInfo,
}

/// The node path of the localhost seccomp profile the container asks for,
/// so the caller can read it into `seccomp_localhost_profile`.
pub fn seccomp_localhost_ref(config: &proto::ContainerConfig) -> Option<String> {
    let sc = config.linux.as_ref()?.security_context.as_ref()?;
    if sc.privileged {
        return None;
    }
    match security::seccomp_choice(sc) {
        Ok(Profile::Localhost(path)) => Some(path),
        _ => None,
    }
}

/// The OCI spec of one application container of a pod.
pub fn container_spec(input: &ContainerSpecInput<'_>) -> Result<oci::Spec, SpecError> {
    let config = input.config;
    let pod = input.sandbox_config;
    let default_sc = proto::LinuxContainerSecurityContext::default();
    let linux_config = config.linux.as_ref();
    let sc = linux_config
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&default_sc);
    let pod_sc = pod.linux.as_ref().and_then(|l| l.security_context.as_ref());
    let privileged = sc.privileged;
    if privileged && !pod_sc.is_some_and(|s| s.privileged) {
        return Err(invalid(
            "a privileged container needs a privileged pod (pod security_context.privileged)",
        ));
    }
    refuse_user_namespaces(sc.namespace_options.as_ref(), input.handler)?;
    refuse_user_namespaces(
        pod_sc.and_then(|s| s.namespace_options.as_ref()),
        input.handler,
    )?;

    // Command: Kubernetes' rules; a CRI command drops the image's Cmd too.
    let mut args = if config.command.is_empty() {
        let mut a = input.image.entrypoint.clone();
        a.extend(if config.args.is_empty() {
            input.image.cmd.iter().cloned()
        } else {
            config.args.iter().cloned()
        });
        a
    } else {
        let mut a = config.command.clone();
        a.extend(config.args.iter().cloned());
        a
    };
    if args.is_empty() {
        return Err(invalid(
            "no command specified: the container config has no command or args and the image no Entrypoint or Cmd",
        ));
    }
    args.shrink_to_fit();

    let cwd = [
        config.working_dir.as_str(),
        input.image.working_dir.as_str(),
    ]
    .into_iter()
    .find(|d| !d.is_empty())
    .unwrap_or("/");
    if !cwd.starts_with('/') {
        return Err(invalid(format!(
            "working directory {cwd:?} is not absolute"
        )));
    }

    let resolved = user::resolve_user(
        &user::UserRequest {
            run_as_user: sc.run_as_user.as_ref().map(|v| v.value),
            run_as_username: &sc.run_as_username,
            run_as_group: sc.run_as_group.as_ref().map(|v| v.value),
            supplemental_groups: &sc.supplemental_groups,
            strict: sc.supplemental_groups_policy == proto::SupplementalGroupsPolicy::Strict as i32,
            image_user: &input.image.user,
        },
        input.image.etc_passwd.as_deref(),
        input.image.etc_group.as_deref(),
    )?;

    // Env: defaults, then the image's, then the CRI's, each overriding by key.
    let mut env = vec![DEFAULT_PATH.to_string()];
    if !pod.hostname.is_empty() {
        merge_env(&mut env, format!("HOSTNAME={}", pod.hostname));
    }
    for e in &input.image.env {
        merge_env(&mut env, e.clone());
    }
    for kv in &config.envs {
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(invalid(format!(
                "invalid environment variable name {:?}",
                kv.key
            )));
        }
        let value = String::from_utf8(kv.value.clone()).map_err(|_| {
            invalid(format!(
                "environment variable {} is not valid UTF-8",
                kv.key
            ))
        })?;
        merge_env(&mut env, format!("{}={value}", kv.key));
    }
    if !env.iter().any(|e| env_key(e) == "HOME") {
        // What runc does when HOME is unset, done here so every runtime agrees.
        env.push(format!("HOME={}", resolved.home.as_deref().unwrap_or("/")));
    }

    let capabilities = security::capabilities(privileged, sc.capabilities.as_ref())?;

    // Namespaces.
    let ns = input.namespaces;
    let host_network = ns.network == NamespaceSource::Host;
    let host_ipc = ns.ipc == NamespaceSource::Host;
    let pid_mode = sc
        .namespace_options
        .as_ref()
        .map(|o| o.pid)
        .unwrap_or(NamespaceMode::Pod as i32);
    let pid = match NamespaceMode::try_from(pid_mode) {
        Ok(NamespaceMode::Node) => NamespaceSource::Host,
        Ok(NamespaceMode::Pod) => ns.pid.clone(),
        Ok(NamespaceMode::Container) => NamespaceSource::New,
        Ok(NamespaceMode::Target) => match input.target_pid_namespace {
            Some(path) => NamespaceSource::Path(path.to_path_buf()),
            None => {
                return Err(invalid(
                    "PID namespace mode TARGET needs the target container's namespace",
                ));
            }
        },
        Err(_) => return Err(invalid(format!("unknown PID namespace mode {pid_mode}"))),
    };
    let namespaces = namespace_list(&[
        ("pid", &pid),
        ("network", &ns.network),
        ("ipc", &ns.ipc),
        ("uts", &ns.uts),
        ("mount", &NamespaceSource::New),
        (
            "cgroup",
            if input.host.cgroup_v2 {
                &NamespaceSource::New
            } else {
                &NamespaceSource::Host
            },
        ),
    ]);
    // The hostname belongs to the pod's UTS namespace; setting it needs our own.
    let hostname =
        (ns.uts == NamespaceSource::New && !pod.hostname.is_empty()).then(|| pod.hostname.clone());

    let mount_plan = mounts::plan(&mounts::MountInput {
        cri: &config.mounts,
        privileged,
        readonly_rootfs: sc.readonly_rootfs,
        pod_files: input.pod_files,
        handler_name: &input.handler.name,
        supports_recursive_read_only: input.handler.supports_recursive_read_only,
    })?;

    // Resources and devices.
    let default_resources = proto::LinuxContainerResources::default();
    let cri_resources = linux_config
        .and_then(|l| l.resources.as_ref())
        .unwrap_or(&default_resources);
    let mut cgroup = resources::linux_resources(cri_resources, input.host.cgroup_v2)?;
    let (cri_devices, cri_device_rules) =
        resources::cri_devices(&config.devices, &input.host.devices)?;
    let mut devices = Vec::new();
    if privileged && !input.handler.privileged_without_host_devices {
        devices.extend(input.host.devices.iter().cloned());
        cgroup.devices = resources::allow_all_devices();
    } else {
        cgroup.devices = resources::default_device_rules();
        cgroup.devices.extend(cri_device_rules);
    }
    for d in cri_devices {
        devices.retain(|existing: &oci::Device| existing.path != d.path);
        devices.push(d);
    }
    let oom_score_adj =
        resources::clamp_oom_score_adj(cri_resources.oom_score_adj, input.host.min_oom_score_adj);

    // Security profiles; a privileged container gets none of them.
    let seccomp = if privileged {
        None
    } else {
        match security::seccomp_choice(sc)? {
            Profile::Unconfined => None,
            Profile::RuntimeDefault => Some(seccomp::default_profile(&capabilities.bounding)),
            Profile::Localhost(path) => {
                let text = input.seccomp_localhost_profile.ok_or_else(|| {
                    invalid(format!("seccomp profile {path:?} could not be loaded"))
                })?;
                Some(serde_json::from_str::<oci::Seccomp>(text).map_err(|e| {
                    invalid(format!(
                        "seccomp profile {path:?} is not a valid profile: {e}"
                    ))
                })?)
            }
        }
    };
    let apparmor_profile = if privileged {
        None
    } else {
        apparmor_profile(security::apparmor_choice(sc)?, input.host)?
    };
    let (selinux_label, mount_label) = match &sc.selinux_options {
        // SELinux options on a host without SELinux are ignored, as
        // containerd does: there is nothing to enforce them with.
        Some(opts) if input.host.selinux_enabled && !privileged => {
            security::selinux_labels(opts).unzip()
        }
        _ => (None, None),
    };
    let (masked_paths, readonly_paths) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        (
            or_default(&sc.masked_paths, DEFAULT_MASKED_PATHS),
            or_default(&sc.readonly_paths, DEFAULT_READONLY_PATHS),
        )
    };

    let sysctl = pod_sysctls(pod, host_network, host_ipc)?;

    // Annotations: the allowed ones from the pod then the container, and
    // ours last so they cannot be spoofed.
    let mut annotations = allowed_annotations(&pod.annotations, &input.handler.allowed_annotations);
    annotations.extend(allowed_annotations(
        &config.annotations,
        &input.handler.allowed_annotations,
    ));
    let metadata = pod.metadata.clone().unwrap_or_default();
    let fixed = [
        (ANNOTATION_CONTAINER_TYPE, "container"),
        (ANNOTATION_SANDBOX_ID, input.sandbox_id),
        (
            ANNOTATION_CONTAINER_NAME,
            config
                .metadata
                .as_ref()
                .map(|m| m.name.as_str())
                .unwrap_or(""),
        ),
        (ANNOTATION_SANDBOX_NAME, &metadata.name),
        (ANNOTATION_SANDBOX_NAMESPACE, &metadata.namespace),
        (ANNOTATION_SANDBOX_UID, &metadata.uid),
        (ANNOTATION_IMAGE_NAME, input.image_name),
    ];
    for (key, value) in fixed {
        annotations.insert(key.to_string(), value.to_string());
    }

    Ok(oci::Spec {
        oci_version: oci::OCI_VERSION.to_string(),
        process: Some(oci::Process {
            terminal: config.tty,
            user: resolved.user,
            args,
            env,
            cwd: cwd.to_string(),
            capabilities: Some(capabilities),
            rlimits: Vec::new(),
            no_new_privileges: sc.no_new_privs,
            oom_score_adj: Some(oom_score_adj),
            apparmor_profile,
            selinux_label,
        }),
        root: Some(oci::Root {
            path: input.rootfs.to_string_lossy().into_owned(),
            readonly: sc.readonly_rootfs,
        }),
        hostname,
        mounts: mount_plan.mounts,
        annotations,
        linux: Some(oci::Linux {
            namespaces,
            resources: Some(cgroup),
            cgroups_path: cgroups_path(
                input.cgroup_driver,
                input.cgroup_parent,
                input.container_id,
            )?,
            sysctl,
            seccomp,
            masked_paths,
            readonly_paths,
            devices,
            rootfs_propagation: mount_plan.rootfs_propagation,
            mount_label,
            ..oci::Linux::default()
        }),
    })
}

/// The OCI spec of a pod's infra (pause) container.
pub fn sandbox_spec(input: &SandboxSpecInput<'_>) -> Result<oci::Spec, SpecError> {
    let config = input.config;
    let linux = config.linux.as_ref();
    let sc = linux.and_then(|l| l.security_context.as_ref());
    let ns_opts = sc.and_then(|s| s.namespace_options.as_ref());
    refuse_user_namespaces(ns_opts, input.handler)?;
    let mode = |get: fn(&proto::NamespaceOption) -> i32| {
        ns_opts.map(get).unwrap_or(NamespaceMode::Pod as i32)
    };
    let is_node = |m: i32| m == NamespaceMode::Node as i32;
    let host_network = is_node(mode(|o| o.network));
    let host_ipc = is_node(mode(|o| o.ipc));
    let host_pid = is_node(mode(|o| o.pid));

    let network = if host_network {
        NamespaceSource::Host
    } else if let Some(path) = input.netns_path {
        NamespaceSource::Path(path.to_path_buf())
    } else {
        NamespaceSource::New
    };
    let new_or_host = |host: bool| {
        if host {
            NamespaceSource::Host
        } else {
            NamespaceSource::New
        }
    };
    // A host-network pod also keeps the host's UTS namespace (and name).
    let uts = new_or_host(host_network);
    let namespaces = namespace_list(&[
        ("pid", &new_or_host(host_pid)),
        ("network", &network),
        ("ipc", &new_or_host(host_ipc)),
        ("uts", &uts),
        ("mount", &NamespaceSource::New),
        ("cgroup", &new_or_host(!input.host.cgroup_v2)),
    ]);
    let hostname = (uts == NamespaceSource::New && !config.hostname.is_empty())
        .then(|| config.hostname.clone());

    let mut cgroup = match resources::pod_resources(
        linux.and_then(|l| l.overhead.as_ref()),
        linux.and_then(|l| l.resources.as_ref()),
    ) {
        Some(r) => resources::linux_resources(&r, input.host.cgroup_v2)?,
        None => oci::Resources::default(),
    };
    cgroup.devices = resources::default_device_rules();

    let mut annotations =
        allowed_annotations(&config.annotations, &input.handler.allowed_annotations);
    let metadata = config.metadata.clone().unwrap_or_default();
    let fixed = [
        (ANNOTATION_CONTAINER_TYPE, "sandbox"),
        (ANNOTATION_SANDBOX_ID, input.sandbox_id),
        (ANNOTATION_SANDBOX_NAME, &metadata.name),
        (ANNOTATION_SANDBOX_NAMESPACE, &metadata.namespace),
        (ANNOTATION_SANDBOX_UID, &metadata.uid),
        (ANNOTATION_SANDBOX_LOG_DIRECTORY, &config.log_directory),
    ];
    for (key, value) in fixed {
        if !value.is_empty() {
            annotations.insert(key.to_string(), value.to_string());
        }
    }

    // pause needs no capabilities; the default seccomp profile costs nothing.
    let capabilities = oci::Capabilities::default();
    let privileged = sc.is_some_and(|s| s.privileged);
    let seccomp = (!privileged).then(|| seccomp::default_profile(&[]));
    // The pod's sysfs is shared through its network namespace: a privileged
    // pod's must be writable, or its privileged containers get a read-only /sys.
    let mut mounts = mounts::default_mounts(privileged, None);
    mounts.retain(|m| m.destination != "/dev/shm");

    Ok(oci::Spec {
        oci_version: oci::OCI_VERSION.to_string(),
        process: Some(oci::Process {
            terminal: false,
            user: oci::User {
                uid: SANDBOX_USER,
                gid: SANDBOX_USER,
                umask: None,
                additional_gids: Vec::new(),
            },
            args: vec![input.pause_path.to_string()],
            env: vec![DEFAULT_PATH.to_string()],
            cwd: "/".to_string(),
            capabilities: Some(capabilities),
            rlimits: Vec::new(),
            no_new_privileges: true,
            oom_score_adj: Some(resources::clamp_oom_score_adj(
                SANDBOX_OOM_SCORE_ADJ,
                input.host.min_oom_score_adj,
            )),
            apparmor_profile: None,
            selinux_label: None,
        }),
        root: Some(oci::Root {
            path: input.rootfs.to_string_lossy().into_owned(),
            readonly: true,
        }),
        hostname,
        mounts,
        annotations,
        linux: Some(oci::Linux {
            namespaces,
            resources: Some(cgroup),
            cgroups_path: cgroups_path(input.cgroup_driver, input.cgroup_parent, input.sandbox_id)?,
            sysctl: pod_sysctls(config, host_network, host_ipc)?,
            seccomp,
            masked_paths: DEFAULT_MASKED_PATHS.iter().map(|p| p.to_string()).collect(),
            readonly_paths: DEFAULT_READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            ..oci::Linux::default()
        }),
    })
}

/// `cgroupfs`: `<parent>/<id>`; `systemd`: `<slice>:rcri:<id>`, which runc
/// and crun turn into the unit `rcri-<id>.scope` inside the slice.
pub fn cgroups_path(driver: CgroupDriver, parent: &str, id: &str) -> Result<String, SpecError> {
    if id.is_empty() || id.contains('/') || id.contains(':') {
        return Err(invalid(format!("invalid container id {id:?}")));
    }
    match driver {
        CgroupDriver::Cgroupfs => {
            let parent = parent.trim_end_matches('/');
            let parent = if parent.is_empty() {
                DEFAULT_CGROUPFS_PARENT.to_string()
            } else if parent.starts_with('/') {
                parent.to_string()
            } else {
                format!("/{parent}")
            };
            Ok(format!("{parent}/{id}"))
        }
        CgroupDriver::Systemd => {
            // The kubelet passes the slice name; a path ending in one works too.
            let slice = parent
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_SYSTEMD_PARENT);
            if !slice.ends_with(".slice") {
                return Err(invalid(format!(
                    "cgroup parent {parent:?} is not a systemd slice (the systemd cgroup driver needs NAME.slice)"
                )));
            }
            Ok(format!("{slice}:rcri:{id}"))
        }
    }
}

/// A pod in a user namespace of its own (`hostUsers: false`) needs a
/// runtime with user namespaces and idmapped mounts, and rcri does not map
/// ids yet either: refused, naming what is missing.
fn refuse_user_namespaces(
    opts: Option<&proto::NamespaceOption>,
    handler: &HandlerOptions,
) -> Result<(), SpecError> {
    match opts.and_then(|o| o.userns_options.as_ref()) {
        Some(u) if u.mode != NamespaceMode::Node as i32 => {
            if handler.supports_user_namespaces {
                Err(invalid(
                    "user namespaces (hostUsers: false) are not supported by rcri yet; run the pod with hostUsers: true",
                ))
            } else {
                Err(invalid(format!(
                    "runtime handler {:?} does not support user namespaces (its runtime's `features` lack user namespaces with idmapped mounts); run the pod with hostUsers: true or on a handler that supports them",
                    handler.name
                )))
            }
        }
        _ => Ok(()),
    }
}

fn namespace_list(list: &[(&str, &NamespaceSource)]) -> Vec<oci::Namespace> {
    list.iter()
        .filter_map(|(kind, source)| match source {
            NamespaceSource::Host => None,
            NamespaceSource::New => Some(oci::Namespace {
                kind: kind.to_string(),
                path: None,
            }),
            NamespaceSource::Path(p) => Some(oci::Namespace {
                kind: kind.to_string(),
                path: Some(p.to_string_lossy().into_owned()),
            }),
        })
        .collect()
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// Replaces the entry with the same key in place, else appends.
fn merge_env(env: &mut Vec<String>, entry: String) {
    let key = env_key(&entry).to_string();
    match env.iter_mut().find(|e| env_key(e) == key) {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
}

fn or_default(given: &[String], default: &[&str]) -> Vec<String> {
    if given.is_empty() {
        default.iter().map(|p| p.to_string()).collect()
    } else {
        given.to_vec()
    }
}

fn annotation_allowed(key: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => key == p,
    })
}

fn allowed_annotations(
    annotations: &std::collections::HashMap<String, String>,
    patterns: &[String],
) -> BTreeMap<String, String> {
    annotations
        .iter()
        .filter(|(k, _)| annotation_allowed(k, patterns))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn apparmor_profile(choice: Profile, host: &HostInfo) -> Result<Option<String>, SpecError> {
    match choice {
        Profile::Unconfined => Ok(None),
        Profile::RuntimeDefault if host.apparmor_enabled => {
            Ok(host.apparmor_default_profile.clone())
        }
        Profile::RuntimeDefault => Ok(None),
        Profile::Localhost(name) if host.apparmor_enabled => Ok(Some(
            name.strip_prefix("localhost/").unwrap_or(&name).to_string(),
        )),
        Profile::Localhost(name) => Err(invalid(format!(
            "AppArmor profile {name:?} requested but AppArmor is not enabled on this host"
        ))),
    }
}

/// `net/ipv4/ip_forward` → `net.ipv4.ip_forward` (the kubelet's rule: when
/// the first separator is a slash, slashes and dots swap).
fn normalize_sysctl(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect(),
        _ => name.to_string(),
    }
}

/// Which namespace a sysctl belongs to; `None`: not namespaced at all.
fn sysctl_namespace(name: &str) -> Option<&'static str> {
    if name.starts_with("net.") {
        Some("network")
    } else if name.starts_with("kernel.shm")
        || name.starts_with("kernel.msg")
        || name == "kernel.sem"
        || name.starts_with("fs.mqueue.")
    {
        Some("IPC")
    } else if name == "kernel.hostname" || name == "kernel.domainname" {
        Some("UTS")
    } else {
        None
    }
}

/// The pod's sysctls; one that would change the host (its namespace is the
/// host's, or it is not namespaced) is refused rather than applied.
fn pod_sysctls(
    pod: &proto::PodSandboxConfig,
    host_network: bool,
    host_ipc: bool,
) -> Result<BTreeMap<String, String>, SpecError> {
    let mut out = BTreeMap::new();
    let Some(linux) = pod.linux.as_ref() else {
        return Ok(out);
    };
    for (name, value) in &linux.sysctls {
        let name = normalize_sysctl(name);
        let on_host = match sysctl_namespace(&name) {
            Some("network") | Some("UTS") => host_network,
            Some(_) => host_ipc,
            None => {
                return Err(invalid(format!(
                    "sysctl {name:?} is not namespaced and cannot be set for a pod"
                )));
            }
        };
        if on_host {
            let ns = sysctl_namespace(&name).unwrap_or_default();
            return Err(invalid(format!(
                "sysctl {name:?} cannot be set: the pod uses the host's {ns} namespace"
            )));
        }
        out.insert(name, value.clone());
    }
    Ok(out)
}
