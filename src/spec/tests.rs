use std::path::{Path, PathBuf};

use serde_json::json;

use super::oci::{self, Spec};
use super::*;
use crate::proto::{self, security_profile::ProfileType};

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
# a comment\n\
broken line\n\
alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
bob:x:1001:1001::/home/bob:/bin/sh\n";

const GROUP: &str = "root:x:0:\n\
wheel:x:10:root,alice\n\
audio:x:29:alice\n\
alice:x:1000:\n\
video:x:44:bob\n\
staff:x:50:\n";

/// Everything a test may want to vary, owned; `spec()` borrows it.
struct Fixture {
    config: proto::ContainerConfig,
    pod: proto::PodSandboxConfig,
    image: ImageConfig,
    namespaces: PodNamespaces,
    target_pid: Option<PathBuf>,
    cgroup_parent: String,
    driver: CgroupDriver,
    files: PodFiles,
    handler: HandlerOptions,
    host: HostInfo,
    seccomp_profile: Option<String>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            config: proto::ContainerConfig {
                metadata: Some(proto::ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                ..Default::default()
            },
            pod: proto::PodSandboxConfig {
                metadata: Some(proto::PodSandboxMetadata {
                    name: "web".into(),
                    uid: "uid-1".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                hostname: "web-0".into(),
                linux: Some(proto::LinuxPodSandboxConfig {
                    cgroup_parent: "/kubepods/pod1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            image: ImageConfig {
                entrypoint: vec!["/entry".into()],
                cmd: vec!["cmd1".into(), "cmd2".into()],
                env: vec!["PATH=/image/bin".into(), "A=image".into()],
                working_dir: "/srv".into(),
                user: String::new(),
                stop_signal: "SIGQUIT".into(),
                etc_passwd: Some(PASSWD.into()),
                etc_group: Some(GROUP.into()),
            },
            namespaces: PodNamespaces {
                network: NamespaceSource::Path("/run/netns/pod1".into()),
                ipc: NamespaceSource::Path("/proc/42/ns/ipc".into()),
                uts: NamespaceSource::Path("/proc/42/ns/uts".into()),
                pid: NamespaceSource::Path("/proc/42/ns/pid".into()),
            },
            target_pid: None,
            cgroup_parent: "/kubepods/pod1".into(),
            driver: CgroupDriver::Cgroupfs,
            files: PodFiles {
                hosts: Some("/run/rcri/pods/p1/hosts".into()),
                resolv_conf: Some("/run/rcri/pods/p1/resolv.conf".into()),
                hostname: Some("/run/rcri/pods/p1/hostname".into()),
                shm: Some("/run/rcri/pods/p1/shm".into()),
            },
            handler: HandlerOptions {
                name: "runc".into(),
                ..Default::default()
            },
            host: HostInfo::default(),
            seccomp_profile: None,
        }
    }

    fn sc(&mut self) -> &mut proto::LinuxContainerSecurityContext {
        self.config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    fn resources(&mut self) -> &mut proto::LinuxContainerResources {
        self.config
            .linux
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default)
    }

    fn pod_sc(&mut self) -> &mut proto::LinuxSandboxSecurityContext {
        self.pod
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    fn privileged(&mut self) {
        self.pod_sc().privileged = true;
        self.sc().privileged = true;
    }

    fn try_spec(&self) -> Result<Spec, SpecError> {
        container_spec(&ContainerSpecInput {
            container_id: "c1",
            sandbox_id: "s1",
            config: &self.config,
            sandbox_config: &self.pod,
            image: &self.image,
            image_name: "docker.io/library/busybox:latest",
            rootfs: Path::new("/var/lib/rcri/containers/c1/rootfs"),
            namespaces: &self.namespaces,
            target_pid_namespace: self.target_pid.as_deref(),
            cgroup_parent: &self.cgroup_parent,
            cgroup_driver: self.driver,
            pod_files: &self.files,
            handler: &self.handler,
            host: &self.host,
            seccomp_localhost_profile: self.seccomp_profile.as_deref(),
        })
    }

    fn spec(&self) -> Spec {
        self.try_spec().expect("spec")
    }

    fn error(&self) -> String {
        match self.try_spec() {
            Ok(_) => panic!("expected an error"),
            Err(SpecError::InvalidArgument(m)) => m,
        }
    }
}

fn process(spec: &Spec) -> &oci::Process {
    spec.process.as_ref().unwrap()
}

fn linux(spec: &Spec) -> &oci::Linux {
    spec.linux.as_ref().unwrap()
}

fn caps(spec: &Spec) -> &oci::Capabilities {
    process(spec).capabilities.as_ref().unwrap()
}

fn env_value<'a>(spec: &'a Spec, key: &str) -> Option<&'a str> {
    process(spec)
        .env
        .iter()
        .find_map(|e| e.strip_prefix(&format!("{key}=")))
}

fn mount<'a>(spec: &'a Spec, destination: &str) -> Option<&'a oci::Mount> {
    spec.mounts.iter().find(|m| m.destination == destination)
}

fn namespaces(spec: &Spec) -> Vec<(String, Option<String>)> {
    linux(spec)
        .namespaces
        .iter()
        .map(|n| (n.kind.clone(), n.path.clone()))
        .collect()
}

fn ns(kind: &str, path: Option<&str>) -> (String, Option<String>) {
    (kind.to_string(), path.map(str::to_string))
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn kv(key: &str, value: &str) -> proto::KeyValue {
    proto::KeyValue {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

fn cri_mount(container: &str, host: &str) -> proto::Mount {
    proto::Mount {
        container_path: container.into(),
        host_path: host.into(),
        ..Default::default()
    }
}

fn profile(kind: ProfileType, localhost_ref: &str) -> Option<proto::SecurityProfile> {
    Some(proto::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: localhost_ref.into(),
    })
}

// ---- command, env, working dir ------------------------------------------

/// (cri command, cri args, image entrypoint, image cmd, expected argv)
type Case<'a> = (
    &'a [&'a str],
    &'a [&'a str],
    &'a [&'a str],
    &'a [&'a str],
    &'a [&'a str],
);

#[test]
fn command_matrix_follows_kubernetes_rules() {
    let cases: &[Case] = &[
        // (cri command, cri args, image entrypoint, image cmd, expected)
        (
            &[],
            &[],
            &["/entry"],
            &["c1", "c2"],
            &["/entry", "c1", "c2"],
        ),
        (&[], &["a1"], &["/entry"], &["c1"], &["/entry", "a1"]),
        (&["/cmd"], &[], &["/entry"], &["c1"], &["/cmd"]),
        (
            &["/cmd"],
            &["a1", "a2"],
            &["/entry"],
            &["c1"],
            &["/cmd", "a1", "a2"],
        ),
        (
            &[],
            &[],
            &[],
            &["/bin/sh", "-c", "x"],
            &["/bin/sh", "-c", "x"],
        ),
        (
            &[],
            &["/bin/echo", "hi"],
            &[],
            &["/bin/sh"],
            &["/bin/echo", "hi"],
        ),
        (&["/cmd"], &[], &[], &[], &["/cmd"]),
        (&[], &[], &["/entry"], &[], &["/entry"]),
    ];
    for (command, args, entrypoint, cmd, expected) in cases {
        let mut f = Fixture::new();
        f.config.command = strings(command);
        f.config.args = strings(args);
        f.image.entrypoint = strings(entrypoint);
        f.image.cmd = strings(cmd);
        assert_eq!(
            process(&f.spec()).args,
            strings(expected),
            "command {command:?} args {args:?} entrypoint {entrypoint:?} cmd {cmd:?}"
        );
    }
}

#[test]
fn no_command_at_all_is_invalid() {
    let mut f = Fixture::new();
    f.image.entrypoint.clear();
    f.image.cmd.clear();
    assert!(
        f.error().starts_with("no command specified"),
        "{}",
        f.error()
    );
}

#[test]
fn env_merges_image_then_cri_by_key() {
    let mut f = Fixture::new();
    f.image.env = strings(&["PATH=/image/bin", "A=image", "B=image", "FLAG"]);
    f.config.envs = vec![kv("B", "cri"), kv("C", "cri=with=equals"), kv("A", "")];
    let spec = f.spec();
    assert_eq!(
        process(&spec).env,
        strings(&[
            "PATH=/image/bin",
            "HOSTNAME=web-0",
            "A=",
            "B=cri",
            "FLAG",
            "C=cri=with=equals",
            "HOME=/root",
        ])
    );
}

#[test]
fn env_gets_default_path_and_home_from_passwd() {
    let mut f = Fixture::new();
    f.image.env.clear();
    f.image.user = "alice".into();
    let spec = f.spec();
    assert_eq!(
        env_value(&spec, "PATH"),
        Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    );
    assert_eq!(env_value(&spec, "HOME"), Some("/home/alice"));

    // An explicit HOME is kept; an unknown uid gets "/".
    f.config.envs = vec![kv("HOME", "/data")];
    assert_eq!(env_value(&f.spec(), "HOME"), Some("/data"));
    f.config.envs.clear();
    f.image.user = "4242".into();
    assert_eq!(env_value(&f.spec(), "HOME"), Some("/"));
}

#[test]
fn bad_env_names_and_values_are_invalid() {
    let mut f = Fixture::new();
    f.config.envs = vec![kv("", "x")];
    assert!(f.error().contains("invalid environment variable name"));
    f.config.envs = vec![proto::KeyValue {
        key: "K".into(),
        value: vec![0xff, 0xfe],
    }];
    assert!(f.error().contains("not valid UTF-8"));
}

#[test]
fn working_dir_prefers_cri_then_image_then_root() {
    let mut f = Fixture::new();
    f.config.working_dir = "/cri".into();
    assert_eq!(process(&f.spec()).cwd, "/cri");
    f.config.working_dir.clear();
    assert_eq!(process(&f.spec()).cwd, "/srv");
    f.image.working_dir.clear();
    assert_eq!(process(&f.spec()).cwd, "/");
    f.config.working_dir = "relative".into();
    assert!(f.error().contains("not absolute"));
}

#[test]
fn tty_sets_terminal() {
    let mut f = Fixture::new();
    assert!(!process(&f.spec()).terminal);
    f.config.tty = true;
    f.config.stdin = true;
    assert!(process(&f.spec()).terminal);
}

// ---- user ----------------------------------------------------------------

fn user(spec: &Spec) -> (u32, u32, Vec<u32>) {
    let u = &process(spec).user;
    (u.uid, u.gid, u.additional_gids.clone())
}

#[test]
fn default_user_is_root_with_roots_groups() {
    let f = Fixture::new();
    assert_eq!(user(&f.spec()), (0, 0, vec![0, 10]));
}

#[test]
fn image_user_forms() {
    let mut f = Fixture::new();
    f.image.user = "alice".into();
    assert_eq!(user(&f.spec()), (1000, 1000, vec![1000, 10, 29]));
    f.image.user = "alice:staff".into();
    assert_eq!(user(&f.spec()), (1000, 50, vec![50, 10, 29]));
    f.image.user = "1001".into();
    assert_eq!(user(&f.spec()), (1001, 1001, vec![1001, 44]));
    f.image.user = "1001:7".into();
    assert_eq!(user(&f.spec()), (1001, 7, vec![7, 44]));
    // A uid the image does not know: gid 0, no image groups.
    f.image.user = "5000".into();
    assert_eq!(user(&f.spec()), (5000, 0, vec![0]));
    f.image.user = "bob:audio".into();
    assert_eq!(user(&f.spec()), (1001, 29, vec![29, 44]));
}

#[test]
fn security_context_user_overrides_image_user() {
    let mut f = Fixture::new();
    f.image.user = "alice:staff".into();
    f.sc().run_as_user = Some(proto::Int64Value { value: 1001 });
    assert_eq!(user(&f.spec()), (1001, 1001, vec![1001, 44]));
    f.sc().run_as_group = Some(proto::Int64Value { value: 3000 });
    assert_eq!(user(&f.spec()), (1001, 3000, vec![3000, 44]));

    let mut f = Fixture::new();
    f.sc().run_as_username = "alice".into();
    assert_eq!(user(&f.spec()), (1000, 1000, vec![1000, 10, 29]));
}

#[test]
fn missing_user_is_invalid_and_named() {
    let mut f = Fixture::new();
    f.sc().run_as_username = "mallory".into();
    assert_eq!(
        f.error(),
        "user \"mallory\" is not in the image's /etc/passwd"
    );
    f.image.etc_passwd = None;
    assert!(f.error().contains("the image has no /etc/passwd"));
    let mut f = Fixture::new();
    f.image.user = "alice:nogroup".into();
    assert_eq!(
        f.error(),
        "group \"nogroup\" is not in the image's /etc/group"
    );
}

#[test]
fn run_as_group_without_user_is_invalid() {
    let mut f = Fixture::new();
    f.image.user = "alice".into();
    f.sc().run_as_group = Some(proto::Int64Value { value: 10 });
    assert!(
        f.error()
            .contains("run_as_group is set without run_as_user")
    );
}

#[test]
fn negative_ids_are_invalid() {
    let mut f = Fixture::new();
    f.sc().run_as_user = Some(proto::Int64Value { value: -1 });
    assert!(f.error().contains("not a valid id"));
}

#[test]
fn supplemental_groups_merge_and_strict() {
    let mut f = Fixture::new();
    f.sc().run_as_user = Some(proto::Int64Value { value: 1000 });
    f.sc().supplemental_groups = vec![5000, 10, 6000];
    assert_eq!(
        user(&f.spec()),
        (1000, 1000, vec![1000, 10, 29, 5000, 6000])
    );
    f.sc().supplemental_groups_policy = proto::SupplementalGroupsPolicy::Strict as i32;
    assert_eq!(user(&f.spec()), (1000, 1000, vec![1000, 5000, 10, 6000]));
}

#[test]
fn passwd_and_group_parsing_skip_garbage() {
    let users = user::parse_passwd("a:x:1:2:A:/h:/s\nb:x:notanumber:2::/:\n:x:3:3::/:\nc:x:4:5\n");
    assert_eq!(
        users
            .iter()
            .map(|u| (u.name.as_str(), u.uid, u.gid))
            .collect::<Vec<_>>(),
        [("a", 1, 2), ("c", 4, 5)]
    );
    let groups = user::parse_group("g:x:1:a, b ,\nh:x:x:\ni:x:2\n");
    assert_eq!(groups[0].members, ["a", "b"]);
    assert_eq!(groups.len(), 2);
    assert!(groups[1].members.is_empty());
}

// ---- mounts ----------------------------------------------------------------

#[test]
fn default_mounts_and_pod_files() {
    let spec = Fixture::new().spec();
    let dests: Vec<&str> = spec.mounts.iter().map(|m| m.destination.as_str()).collect();
    assert_eq!(
        dests,
        [
            "/proc",
            "/dev",
            "/sys",
            "/dev/pts",
            "/dev/mqueue",
            "/dev/shm",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/etc/hostname",
            "/sys/fs/cgroup",
        ]
    );
    assert_eq!(
        serde_json::to_value(mount(&spec, "/sys").unwrap()).unwrap(),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]})
    );
    assert!(
        mount(&spec, "/sys/fs/cgroup")
            .unwrap()
            .options
            .contains(&"ro".to_string())
    );
    assert_eq!(
        serde_json::to_value(mount(&spec, "/dev/shm").unwrap()).unwrap(),
        json!({"destination": "/dev/shm", "type": "bind", "source": "/run/rcri/pods/p1/shm",
               "options": ["rbind", "rprivate", "nosuid", "nodev", "noexec", "rw"]})
    );
    assert_eq!(
        mount(&spec, "/etc/resolv.conf").unwrap().source,
        "/run/rcri/pods/p1/resolv.conf"
    );
    assert_eq!(
        mount(&spec, "/etc/hosts").unwrap().options,
        strings(&["rbind", "rprivate", "rw"])
    );
}

#[test]
fn pod_files_are_read_only_with_a_read_only_rootfs() {
    let mut f = Fixture::new();
    f.sc().readonly_rootfs = true;
    let spec = f.spec();
    assert!(spec.root.as_ref().unwrap().readonly);
    for dest in ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"] {
        assert!(
            mount(&spec, dest)
                .unwrap()
                .options
                .contains(&"ro".to_string())
        );
    }
    assert!(!Fixture::new().spec().root.unwrap().readonly);
}

#[test]
fn missing_pod_files_and_shm_fall_back() {
    let mut f = Fixture::new();
    f.files = PodFiles::default();
    let spec = f.spec();
    assert!(mount(&spec, "/etc/hosts").is_none());
    assert!(mount(&spec, "/etc/hostname").is_none());
    let shm = mount(&spec, "/dev/shm").unwrap();
    assert_eq!(shm.kind, "tmpfs");
    assert!(shm.options.contains(&"mode=1777".to_string()));
}

#[test]
fn cri_mounts_replace_defaults_at_the_same_path() {
    let mut f = Fixture::new();
    f.config.mounts = vec![
        cri_mount("/etc/hosts", "/my/hosts"),
        cri_mount("/dev/shm/", "/my/shm"),
    ];
    let spec = f.spec();
    let hosts: Vec<_> = spec
        .mounts
        .iter()
        .filter(|m| m.destination == "/etc/hosts")
        .collect();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].source, "/my/hosts");
    assert_eq!(mount(&spec, "/dev/shm").unwrap().source, "/my/shm");
}

#[test]
fn cri_bind_mount_options() {
    let mut f = Fixture::new();
    f.config.mounts = vec![
        cri_mount("/data", "/host/data"),
        proto::Mount {
            readonly: true,
            selinux_relabel: true,
            ..cri_mount("/config", "/host/config")
        },
    ];
    let spec = f.spec();
    assert_eq!(
        serde_json::to_value(mount(&spec, "/data").unwrap()).unwrap(),
        json!({"destination": "/data", "type": "bind", "source": "/host/data",
               "options": ["rbind", "rprivate", "rw"]})
    );
    assert_eq!(
        mount(&spec, "/config").unwrap().options,
        strings(&["rbind", "rprivate", "ro"])
    );
    assert_eq!(linux(&spec).rootfs_propagation, None);
}

#[test]
fn mount_propagation_sets_rootfs_propagation() {
    let mut f = Fixture::new();
    f.config.mounts = vec![proto::Mount {
        propagation: proto::MountPropagation::PropagationHostToContainer as i32,
        ..cri_mount("/slave", "/host/slave")
    }];
    let spec = f.spec();
    assert!(
        mount(&spec, "/slave")
            .unwrap()
            .options
            .contains(&"rslave".to_string())
    );
    assert_eq!(linux(&spec).rootfs_propagation.as_deref(), Some("rslave"));

    f.config.mounts.push(proto::Mount {
        propagation: proto::MountPropagation::PropagationBidirectional as i32,
        ..cri_mount("/shared", "/host/shared")
    });
    f.config.mounts.push(proto::Mount {
        propagation: proto::MountPropagation::PropagationHostToContainer as i32,
        ..cri_mount("/slave2", "/host/slave2")
    });
    let spec = f.spec();
    assert!(
        mount(&spec, "/shared")
            .unwrap()
            .options
            .contains(&"rshared".to_string())
    );
    assert_eq!(linux(&spec).rootfs_propagation.as_deref(), Some("rshared"));

    f.config.mounts = vec![proto::Mount {
        propagation: 7,
        ..cri_mount("/x", "/y")
    }];
    assert!(f.error().contains("unknown propagation"));
}

#[test]
fn recursive_read_only_needs_handler_support() {
    let mut f = Fixture::new();
    f.config.mounts = vec![proto::Mount {
        readonly: true,
        recursive_read_only: true,
        ..cri_mount("/ro", "/host/ro")
    }];
    assert_eq!(
        f.error(),
        "runtime handler \"runc\" does not support recursive read-only mounts (mount /ro); run the pod on a handler that does (Status lists each handler's features) or drop recursive_read_only"
    );
    f.handler.supports_recursive_read_only = true;
    assert_eq!(
        mount(&f.spec(), "/ro").unwrap().options,
        strings(&["rbind", "rprivate", "ro", "rro"])
    );
}

#[test]
fn recursive_read_only_follows_the_cri_rules() {
    let mut f = Fixture::new();
    f.handler.supports_recursive_read_only = true;
    f.config.mounts = vec![proto::Mount {
        recursive_read_only: true,
        ..cri_mount("/ro", "/host/ro")
    }];
    assert!(f.error().contains("needs readonly"));
    for propagation in [
        proto::MountPropagation::PropagationHostToContainer,
        proto::MountPropagation::PropagationBidirectional,
    ] {
        f.config.mounts = vec![proto::Mount {
            readonly: true,
            recursive_read_only: true,
            propagation: propagation as i32,
            ..cri_mount("/ro", "/host/ro")
        }];
        assert!(f.error().contains("needs PROPAGATION_PRIVATE"));
    }
}

#[test]
fn mounts_are_sorted_parents_first() {
    let mut f = Fixture::new();
    f.config.mounts = vec![
        cri_mount("/a/b/c", "/h/c"),
        cri_mount("/a", "/h/a"),
        cri_mount("/a/b", "/h/b"),
        cri_mount("/z", "/h/z"),
    ];
    let spec = f.spec();
    let pos = |d: &str| spec.mounts.iter().position(|m| m.destination == d).unwrap();
    assert!(pos("/a") < pos("/a/b"));
    assert!(pos("/a/b") < pos("/a/b/c"));
    assert!(pos("/proc") < pos("/dev/pts"));
    // Equal depth keeps the request order.
    assert!(pos("/a") < pos("/z"));
}

#[test]
fn bad_mounts_are_invalid() {
    let mut f = Fixture::new();
    f.config.mounts = vec![cri_mount("relative", "/h")];
    assert!(f.error().contains("is not an absolute path"));
    f.config.mounts = vec![cri_mount("/x", "")];
    assert!(f.error().contains("has no host_path"));
    f.config.mounts = vec![proto::Mount {
        image: Some(proto::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        }),
        ..cri_mount("/img", "")
    }];
    assert!(f.error().contains("image volumes are not supported"));
    f.config.mounts = vec![proto::Mount {
        uid_mappings: vec![proto::IdMapping {
            host_id: 1,
            container_id: 0,
            length: 1,
        }],
        ..cri_mount("/x", "/h")
    }];
    assert!(f.error().contains("id-mapped"));
}

#[test]
fn mount_paths_are_cleaned() {
    let mut f = Fixture::new();
    f.config.mounts = vec![cri_mount("//data/./x/../y/", "/h")];
    assert!(mount(&f.spec(), "/data/y").is_some());
}

// ---- namespaces ------------------------------------------------------------

#[test]
fn namespaces_join_the_pod() {
    let spec = Fixture::new().spec();
    // PID mode POD (the proto default) joins the pod's PID namespace.
    assert_eq!(
        namespaces(&spec),
        [
            ns("pid", Some("/proc/42/ns/pid")),
            ns("network", Some("/run/netns/pod1")),
            ns("ipc", Some("/proc/42/ns/ipc")),
            ns("uts", Some("/proc/42/ns/uts")),
            ns("mount", None),
        ]
    );
    assert_eq!(spec.hostname, None);
    assert_eq!(
        serde_json::to_value(&linux(&spec).namespaces[0]).unwrap(),
        json!({"type": "pid", "path": "/proc/42/ns/pid"})
    );
}

#[test]
fn pid_namespace_modes() {
    let mut f = Fixture::new();
    let set_pid = |f: &mut Fixture, mode: NamespaceMode| {
        f.sc()
            .namespace_options
            .get_or_insert_with(Default::default)
            .pid = mode as i32;
    };
    set_pid(&mut f, NamespaceMode::Container);
    assert_eq!(namespaces(&f.spec())[0], ns("pid", None));
    set_pid(&mut f, NamespaceMode::Node);
    assert!(namespaces(&f.spec()).iter().all(|(k, _)| k != "pid"));
    set_pid(&mut f, NamespaceMode::Target);
    assert!(f.error().contains("TARGET"));
    f.target_pid = Some("/proc/77/ns/pid".into());
    assert_eq!(namespaces(&f.spec())[0], ns("pid", Some("/proc/77/ns/pid")));
}

#[test]
fn host_namespaces_are_omitted() {
    let mut f = Fixture::new();
    f.namespaces = PodNamespaces {
        network: NamespaceSource::Host,
        ipc: NamespaceSource::Host,
        uts: NamespaceSource::Host,
        pid: NamespaceSource::Host,
    };
    assert_eq!(namespaces(&f.spec()), [ns("mount", None)]);
}

#[test]
fn cgroup_namespace_only_on_cgroup_v2() {
    let mut f = Fixture::new();
    f.host.cgroup_v2 = true;
    assert!(namespaces(&f.spec()).contains(&ns("cgroup", None)));
}

#[test]
fn own_uts_namespace_gets_the_pod_hostname() {
    let mut f = Fixture::new();
    f.namespaces.uts = NamespaceSource::New;
    assert_eq!(f.spec().hostname.as_deref(), Some("web-0"));
}

#[test]
fn user_namespaces_are_refused() {
    let mut f = Fixture::new();
    f.sc().namespace_options = Some(proto::NamespaceOption {
        userns_options: Some(proto::UserNamespace {
            mode: NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(
        f.error(),
        "runtime handler \"runc\" does not support user namespaces (its runtime's `features` lack user namespaces with idmapped mounts); run the pod with hostUsers: true or on a handler that supports them"
    );
    f.handler.supports_user_namespaces = true;
    assert!(
        f.error().contains("not supported by rcri yet"),
        "{}",
        f.error()
    );
    f.sc()
        .namespace_options
        .as_mut()
        .unwrap()
        .userns_options
        .as_mut()
        .unwrap()
        .mode = NamespaceMode::Node as i32;
    f.spec();
}

// ---- resources -------------------------------------------------------------

#[test]
fn cpu_memory_and_hugepages() {
    let mut f = Fixture::new();
    *f.resources() = proto::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        cpuset_cpus: "0-1".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: vec![proto::HugepageLimit {
            page_size: "2MB".into(),
            limit: 4 << 20,
        }],
        ..Default::default()
    };
    let spec = f.spec();
    let r = serde_json::to_value(linux(&spec).resources.as_ref().unwrap()).unwrap();
    assert_eq!(
        r["cpu"],
        json!({"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"})
    );
    assert_eq!(r["memory"], json!({"limit": 67108864, "swap": 67108864}));
    assert_eq!(
        r["hugepageLimits"],
        json!([{"pageSize": "2MB", "limit": 4194304}])
    );
    assert!(r.get("pids").is_none());
}

#[test]
fn explicit_swap_and_unset_values() {
    let mut f = Fixture::new();
    f.resources().memory_limit_in_bytes = 100;
    f.resources().memory_swap_limit_in_bytes = 300;
    let spec = f.spec();
    let memory = linux(&spec)
        .resources
        .as_ref()
        .unwrap()
        .memory
        .clone()
        .unwrap();
    assert_eq!((memory.limit, memory.swap), (Some(100), Some(300)));

    let spec = Fixture::new().spec();
    let r = linux(&spec).resources.as_ref().unwrap();
    assert!(r.cpu.is_none() && r.memory.is_none() && r.hugepage_limits.is_empty());
}

#[test]
fn bad_hugepage_size_is_invalid() {
    let mut f = Fixture::new();
    f.resources().hugepage_limits = vec![proto::HugepageLimit {
        page_size: "2 megs".into(),
        limit: 1,
    }];
    assert!(f.error().contains("invalid hugepage size"));
}

#[test]
fn unified_goes_through_on_v2_and_pids_translates_on_v1() {
    let mut f = Fixture::new();
    f.resources()
        .unified
        .insert("pids.max".into(), "100".into());
    let spec = f.spec();
    let r = linux(&spec).resources.as_ref().unwrap();
    assert_eq!(r.pids, Some(oci::Pids { limit: 100 }));
    assert!(r.unified.is_empty());

    f.host.cgroup_v2 = true;
    f.resources()
        .unified
        .insert("memory.high".into(), "1000".into());
    let spec = f.spec();
    let r = linux(&spec).resources.as_ref().unwrap();
    assert_eq!(
        r.unified.get("memory.high").map(String::as_str),
        Some("1000")
    );
    assert_eq!(r.unified.get("pids.max").map(String::as_str), Some("100"));

    f.host.cgroup_v2 = false;
    assert!(f.error().contains("needs cgroup v2"));
}

#[test]
fn oom_score_adj_is_clamped() {
    let mut f = Fixture::new();
    f.resources().oom_score_adj = -998;
    assert_eq!(process(&f.spec()).oom_score_adj, Some(-998));
    f.host.min_oom_score_adj = -500;
    assert_eq!(process(&f.spec()).oom_score_adj, Some(-500));
    f.resources().oom_score_adj = 1500;
    assert_eq!(process(&f.spec()).oom_score_adj, Some(1000));
    f.resources().oom_score_adj = 300;
    assert_eq!(process(&f.spec()).oom_score_adj, Some(300));
}

#[test]
fn device_rules_for_unprivileged_containers() {
    let spec = Fixture::new().spec();
    let r = serde_json::to_value(linux(&spec).resources.as_ref().unwrap()).unwrap();
    assert_eq!(r["devices"][0], json!({"allow": false, "access": "rwm"}));
    assert!(
        r["devices"].as_array().unwrap().contains(
            &json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"})
        )
    );
    assert!(linux(&spec).devices.is_empty());
}

fn host_devices() -> Vec<oci::Device> {
    let dev = |path: &str, kind: &str, major, minor| oci::Device {
        kind: kind.into(),
        path: path.into(),
        major,
        minor,
        file_mode: Some(0o660),
        uid: Some(0),
        gid: Some(0),
    };
    vec![
        dev("/dev/fuse", "c", 10, 229),
        dev("/dev/sda", "b", 8, 0),
        dev("/dev/snd/controlC0", "c", 116, 0),
        dev("/dev/snd/timer", "c", 116, 33),
    ]
}

#[test]
fn cri_devices_are_resolved_against_host_devices() {
    let mut f = Fixture::new();
    f.host.devices = host_devices();
    f.config.devices = vec![
        proto::Device {
            container_path: "/dev/myfuse".into(),
            host_path: "/dev/fuse".into(),
            permissions: "rw".into(),
        },
        proto::Device {
            container_path: "/dev/snd".into(),
            host_path: "/dev/snd".into(),
            permissions: String::new(),
        },
    ];
    let spec = f.spec();
    let paths: Vec<&str> = linux(&spec)
        .devices
        .iter()
        .map(|d| d.path.as_str())
        .collect();
    assert_eq!(
        paths,
        ["/dev/myfuse", "/dev/snd/controlC0", "/dev/snd/timer"]
    );
    assert_eq!(
        serde_json::to_value(&linux(&spec).devices[0]).unwrap(),
        json!({"type": "c", "path": "/dev/myfuse", "major": 10, "minor": 229,
               "fileMode": 432, "uid": 0, "gid": 0})
    );
    let rules = &linux(&spec).resources.as_ref().unwrap().devices;
    assert!(rules.contains(&oci::DeviceCgroup {
        allow: true,
        kind: Some("c".into()),
        major: Some(10),
        minor: Some(229),
        access: Some("rw".into()),
    }));

    f.config.devices[0].host_path = "/dev/nope".into();
    assert!(
        f.error()
            .contains("\"/dev/nope\" is not a device on this host")
    );
    f.config.devices[0].host_path = "/dev/fuse".into();
    f.config.devices[0].permissions = "rwx".into();
    assert!(f.error().contains("invalid permissions"));
}

// ---- cgroups path ------------------------------------------------------------

#[test]
fn cgroups_path_for_both_drivers() {
    let mut f = Fixture::new();
    assert_eq!(linux(&f.spec()).cgroups_path, "/kubepods/pod1/c1");
    f.cgroup_parent = "kubepods/pod1/".into();
    assert_eq!(linux(&f.spec()).cgroups_path, "/kubepods/pod1/c1");
    f.cgroup_parent.clear();
    assert_eq!(linux(&f.spec()).cgroups_path, "/rcri/c1");

    f.driver = CgroupDriver::Systemd;
    f.cgroup_parent = "kubepods-besteffort-pod1.slice".into();
    assert_eq!(
        linux(&f.spec()).cgroups_path,
        "kubepods-besteffort-pod1.slice:rcri:c1"
    );
    f.cgroup_parent =
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice".into();
    assert_eq!(
        linux(&f.spec()).cgroups_path,
        "kubepods-besteffort-pod1.slice:rcri:c1"
    );
    f.cgroup_parent.clear();
    assert_eq!(linux(&f.spec()).cgroups_path, "system.slice:rcri:c1");
    f.cgroup_parent = "/kubepods/pod1".into();
    assert!(f.error().contains("is not a systemd slice"));
}

#[test]
fn cgroups_path_refuses_bad_ids() {
    assert!(cgroups_path(CgroupDriver::Cgroupfs, "/p", "a/b").is_err());
    assert!(cgroups_path(CgroupDriver::Systemd, "x.slice", "a:b").is_err());
    assert!(cgroups_path(CgroupDriver::Cgroupfs, "/p", "").is_err());
}

// ---- security --------------------------------------------------------------

#[test]
fn default_capabilities() {
    let spec = Fixture::new().spec();
    let c = caps(&spec);
    assert_eq!(c.bounding, strings(DEFAULT_CAPABILITIES));
    assert_eq!(c.effective, c.bounding);
    assert_eq!(c.permitted, c.bounding);
    assert!(c.inheritable.is_empty() && c.ambient.is_empty());
    assert_eq!(DEFAULT_CAPABILITIES.len(), 14);
}

#[test]
fn capability_add_and_drop_with_normalisation() {
    let mut f = Fixture::new();
    f.sc().capabilities = Some(proto::Capability {
        add_capabilities: strings(&["NET_ADMIN", "cap_sys_time", "CAP_CHOWN"]),
        drop_capabilities: strings(&["net_raw", "CAP_KILL"]),
        add_ambient_capabilities: Vec::new(),
    });
    let spec = f.spec();
    let bounding = &caps(&spec).bounding;
    assert!(bounding.contains(&"CAP_NET_ADMIN".to_string()));
    assert!(bounding.contains(&"CAP_SYS_TIME".to_string()));
    assert!(!bounding.contains(&"CAP_NET_RAW".to_string()));
    assert!(!bounding.contains(&"CAP_KILL".to_string()));
    assert_eq!(bounding.iter().filter(|c| *c == "CAP_CHOWN").count(), 1);

    f.sc().capabilities.as_mut().unwrap().add_capabilities = strings(&["NOT_A_CAP"]);
    assert_eq!(f.error(), "unknown capability \"NOT_A_CAP\"");
}

#[test]
fn capability_all_handling() {
    let mut f = Fixture::new();
    let set = |f: &mut Fixture, add: &[&str], drop: &[&str]| {
        f.sc().capabilities = Some(proto::Capability {
            add_capabilities: strings(add),
            drop_capabilities: strings(drop),
            add_ambient_capabilities: Vec::new(),
        });
    };
    set(&mut f, &["ALL"], &[]);
    assert_eq!(caps(&f.spec()).bounding, strings(ALL_CAPABILITIES));
    set(&mut f, &["all"], &["SYS_ADMIN"]);
    let spec = f.spec();
    assert_eq!(caps(&spec).bounding.len(), ALL_CAPABILITIES.len() - 1);
    assert!(!caps(&spec).bounding.contains(&"CAP_SYS_ADMIN".to_string()));
    set(&mut f, &[], &["ALL"]);
    let spec = f.spec();
    assert!(caps(&spec).bounding.is_empty());
    assert_eq!(
        serde_json::to_value(caps(&spec)).unwrap(),
        json!({"bounding": [], "effective": [], "permitted": [], "ambient": []})
    );
    // Drop ALL, then add back one: only that one.
    set(&mut f, &["NET_BIND_SERVICE"], &["ALL"]);
    assert_eq!(caps(&f.spec()).bounding, strings(&["CAP_NET_BIND_SERVICE"]));
}

#[test]
fn ambient_capabilities_are_also_inheritable_and_permitted() {
    let mut f = Fixture::new();
    f.sc().capabilities = Some(proto::Capability {
        add_ambient_capabilities: strings(&["NET_ADMIN"]),
        ..Default::default()
    });
    let spec = f.spec();
    let c = caps(&spec);
    assert_eq!(c.ambient, strings(&["CAP_NET_ADMIN"]));
    assert_eq!(c.inheritable, strings(&["CAP_NET_ADMIN"]));
    assert!(c.permitted.contains(&"CAP_NET_ADMIN".to_string()));
}

#[test]
fn privileged_container() {
    let mut f = Fixture::new();
    f.privileged();
    f.host.devices = host_devices();
    f.sc().seccomp = profile(ProfileType::RuntimeDefault, "");
    f.sc().capabilities = Some(proto::Capability {
        drop_capabilities: strings(&["ALL"]),
        ..Default::default()
    });
    let spec = f.spec();
    assert_eq!(caps(&spec).bounding, strings(ALL_CAPABILITIES));
    let l = linux(&spec);
    assert!(l.masked_paths.is_empty() && l.readonly_paths.is_empty());
    assert!(l.seccomp.is_none());
    assert_eq!(l.devices, host_devices());
    assert_eq!(
        serde_json::to_value(&l.resources.as_ref().unwrap().devices).unwrap(),
        json!([{"allow": true, "access": "rwm"}])
    );
    assert!(
        mount(&spec, "/sys")
            .unwrap()
            .options
            .contains(&"rw".to_string())
    );
    assert!(
        mount(&spec, "/sys/fs/cgroup")
            .unwrap()
            .options
            .contains(&"rw".to_string())
    );
}

#[test]
fn privileged_without_host_devices() {
    let mut f = Fixture::new();
    f.privileged();
    f.host.devices = host_devices();
    f.handler.privileged_without_host_devices = true;
    let spec = f.spec();
    assert!(linux(&spec).devices.is_empty());
    assert_eq!(
        linux(&spec).resources.as_ref().unwrap().devices,
        resources::default_device_rules()
    );
    assert_eq!(caps(&spec).bounding, strings(ALL_CAPABILITIES));
}

#[test]
fn privileged_container_needs_privileged_pod() {
    let mut f = Fixture::new();
    f.sc().privileged = true;
    assert!(f.error().contains("needs a privileged pod"));
}

#[test]
fn masked_and_readonly_paths_default_and_override() {
    let mut f = Fixture::new();
    let spec = f.spec();
    assert_eq!(linux(&spec).masked_paths, strings(DEFAULT_MASKED_PATHS));
    assert_eq!(linux(&spec).readonly_paths, strings(DEFAULT_READONLY_PATHS));
    assert!(DEFAULT_MASKED_PATHS.contains(&"/proc/kcore"));
    f.sc().masked_paths = strings(&["/bin/ls"]);
    f.sc().readonly_paths = strings(&["/etc"]);
    let spec = f.spec();
    assert_eq!(linux(&spec).masked_paths, strings(&["/bin/ls"]));
    assert_eq!(linux(&spec).readonly_paths, strings(&["/etc"]));
}

#[test]
fn no_new_privs() {
    let mut f = Fixture::new();
    assert!(!process(&f.spec()).no_new_privileges);
    f.sc().no_new_privs = true;
    assert!(process(&f.spec()).no_new_privileges);
}

#[test]
fn seccomp_unset_and_unconfined_mean_none() {
    let mut f = Fixture::new();
    assert!(linux(&f.spec()).seccomp.is_none());
    f.sc().seccomp = profile(ProfileType::Unconfined, "");
    assert!(linux(&f.spec()).seccomp.is_none());
}

#[test]
fn seccomp_runtime_default_denies_dangerous_syscalls() {
    let mut f = Fixture::new();
    f.sc().seccomp = profile(ProfileType::RuntimeDefault, "");
    let spec = f.spec();
    let s = linux(&spec).seccomp.clone().unwrap();
    assert_eq!(s.default_action, "SCMP_ACT_ALLOW");
    let denied = &s.syscalls[0];
    assert_eq!(denied.action, "SCMP_ACT_ERRNO");
    assert_eq!(denied.errno_ret, Some(1));
    for name in [
        "kexec_load",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "swapon",
        "swapoff",
        "mount",
        "umount2",
        "ptrace",
        "bpf",
        "perf_event_open",
        "keyctl",
        "add_key",
        "request_key",
        "acct",
        "settimeofday",
        "clock_settime",
        "pivot_root",
        "open_by_handle_at",
        "userfaultfd",
        "unshare",
    ] {
        assert!(
            denied.names.contains(&name.to_string()),
            "{name} not denied"
        );
    }
    for safe in ["read", "sethostname", "clone", "execve"] {
        assert!(!denied.names.contains(&safe.to_string()), "{safe} denied");
    }
    // clone with any CLONE_NEW* flag is refused; clone3 falls back to clone.
    let clone_rules: Vec<_> = s.syscalls.iter().filter(|r| r.names == ["clone"]).collect();
    assert_eq!(clone_rules.len(), 7);
    assert_eq!(
        serde_json::to_value(clone_rules[0]).unwrap(),
        json!({"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
               "args": [{"index": 0, "value": 0x20000, "valueTwo": 0x20000, "op": "SCMP_CMP_MASKED_EQ"}]})
    );
    assert!(
        s.syscalls
            .iter()
            .any(|r| r.names == ["clone3"] && r.errno_ret == Some(38))
    );
}

#[test]
fn seccomp_default_follows_capabilities() {
    let mut f = Fixture::new();
    f.sc().seccomp = profile(ProfileType::RuntimeDefault, "");
    f.sc().capabilities = Some(proto::Capability {
        add_capabilities: strings(&["SYS_ADMIN", "SYS_PTRACE"]),
        ..Default::default()
    });
    let spec = f.spec();
    let s = linux(&spec).seccomp.clone().unwrap();
    let denied = &s.syscalls[0].names;
    for allowed in [
        "mount",
        "umount2",
        "unshare",
        "ptrace",
        "bpf",
        "process_vm_readv",
    ] {
        assert!(
            !denied.contains(&allowed.to_string()),
            "{allowed} still denied"
        );
    }
    assert!(denied.contains(&"kexec_load".to_string()));
    assert!(
        !s.syscalls
            .iter()
            .any(|r| r.names == ["clone"] || r.names == ["clone3"])
    );
}

#[test]
fn seccomp_localhost_profile_is_embedded() {
    let mut f = Fixture::new();
    f.sc().seccomp = profile(
        ProfileType::Localhost,
        "/var/lib/kubelet/seccomp/block.json",
    );
    assert_eq!(
        seccomp_localhost_ref(&f.config).as_deref(),
        Some("/var/lib/kubelet/seccomp/block.json")
    );
    assert!(f.error().contains("could not be loaded"));
    f.seccomp_profile = Some(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#
            .into(),
    );
    let spec = f.spec();
    assert_eq!(
        serde_json::to_value(linux(&spec).seccomp.as_ref().unwrap()).unwrap(),
        json!({"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]})
    );
    f.seccomp_profile = Some("not json".into());
    assert!(f.error().contains("is not a valid profile"));
    f.sc().seccomp = profile(ProfileType::Localhost, "");
    assert!(f.error().contains("needs a localhost_ref"));
}

#[test]
#[allow(deprecated)]
fn seccomp_deprecated_profile_path() {
    let mut f = Fixture::new();
    for (path, default) in [
        ("runtime/default", true),
        ("docker/default", true),
        ("unconfined", false),
        ("", false),
    ] {
        f.sc().seccomp_profile_path = path.into();
        assert_eq!(linux(&f.spec()).seccomp.is_some(), default, "{path}");
    }
    f.sc().seccomp_profile_path = "localhost//etc/p.json".into();
    assert_eq!(
        seccomp_localhost_ref(&f.config).as_deref(),
        Some("/etc/p.json")
    );
    f.seccomp_profile = Some(r#"{"defaultAction":"SCMP_ACT_LOG"}"#.into());
    assert_eq!(
        linux(&f.spec()).seccomp.as_ref().unwrap().default_action,
        "SCMP_ACT_LOG"
    );
    f.sc().seccomp_profile_path = "bogus".into();
    assert!(f.error().contains("invalid seccomp profile \"bogus\""));
    // The new field wins over the deprecated one.
    f.sc().seccomp = profile(ProfileType::Unconfined, "");
    assert!(linux(&f.spec()).seccomp.is_none());
}

#[test]
fn no_localhost_ref_for_privileged_or_other_profiles() {
    let mut f = Fixture::new();
    assert_eq!(seccomp_localhost_ref(&f.config), None);
    f.sc().seccomp = profile(ProfileType::Localhost, "/p.json");
    f.sc().privileged = true;
    assert_eq!(seccomp_localhost_ref(&f.config), None);
}

#[test]
fn apparmor_on_a_host_without_it() {
    let mut f = Fixture::new();
    f.sc().apparmor = profile(ProfileType::RuntimeDefault, "");
    assert_eq!(process(&f.spec()).apparmor_profile, None);
    f.sc().apparmor = profile(ProfileType::Unconfined, "");
    assert_eq!(process(&f.spec()).apparmor_profile, None);
    f.sc().apparmor = profile(ProfileType::Localhost, "my-profile");
    assert_eq!(
        f.error(),
        "AppArmor profile \"my-profile\" requested but AppArmor is not enabled on this host"
    );
}

#[test]
#[allow(deprecated)]
fn apparmor_on_a_host_with_it() {
    let mut f = Fixture::new();
    f.host.apparmor_enabled = true;
    f.host.apparmor_default_profile = Some("rcri-default".into());
    // Unset means the runtime default.
    assert_eq!(
        process(&f.spec()).apparmor_profile.as_deref(),
        Some("rcri-default")
    );
    f.sc().apparmor = profile(ProfileType::Localhost, "localhost/k8s-deny-write");
    assert_eq!(
        process(&f.spec()).apparmor_profile.as_deref(),
        Some("k8s-deny-write")
    );
    f.sc().apparmor = None;
    f.sc().apparmor_profile = "unconfined".into();
    assert_eq!(process(&f.spec()).apparmor_profile, None);
    f.sc().apparmor_profile = "localhost/p2".into();
    assert_eq!(process(&f.spec()).apparmor_profile.as_deref(), Some("p2"));
    f.privileged();
    assert_eq!(process(&f.spec()).apparmor_profile, None);
}

#[test]
fn selinux_only_where_enabled() {
    let mut f = Fixture::new();
    f.sc().selinux_options = Some(proto::SeLinuxOption {
        level: "s0:c1,c2".into(),
        ..Default::default()
    });
    let spec = f.spec();
    assert_eq!(process(&spec).selinux_label, None);
    assert_eq!(linux(&spec).mount_label, None);
    f.host.selinux_enabled = true;
    let spec = f.spec();
    assert_eq!(
        process(&spec).selinux_label.as_deref(),
        Some("system_u:system_r:container_t:s0:c1,c2")
    );
    assert_eq!(
        linux(&spec).mount_label.as_deref(),
        Some("system_u:object_r:container_file_t:s0:c1,c2")
    );
}

// ---- annotations -----------------------------------------------------------

#[test]
fn annotations_are_filtered_and_cri_keys_always_set() {
    let mut f = Fixture::new();
    f.handler.allowed_annotations = strings(&["io.x/*", "exact.key"]);
    f.pod.annotations.insert("io.x/pod".into(), "p".into());
    f.pod.annotations.insert("io.x/both".into(), "pod".into());
    f.pod.annotations.insert("other".into(), "no".into());
    f.config
        .annotations
        .insert("io.x/both".into(), "container".into());
    f.config
        .annotations
        .insert("exact.key".into(), "yes".into());
    f.config
        .annotations
        .insert("exact.key.longer".into(), "no".into());
    // Users cannot spoof the sandbox grouping.
    f.handler
        .allowed_annotations
        .push("io.kubernetes.cri.*".into());
    f.config
        .annotations
        .insert(ANNOTATION_SANDBOX_ID.into(), "other-sandbox".into());
    let spec = f.spec();
    assert_eq!(
        serde_json::to_value(&spec.annotations).unwrap(),
        json!({
            "exact.key": "yes",
            "io.x/both": "container",
            "io.x/pod": "p",
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "s1",
            "io.kubernetes.cri.container-name": "app",
            "io.kubernetes.cri.sandbox-name": "web",
            "io.kubernetes.cri.sandbox-namespace": "default",
            "io.kubernetes.cri.sandbox-uid": "uid-1",
            "io.kubernetes.cri.image-name": "docker.io/library/busybox:latest",
        })
    );
}

#[test]
fn no_annotations_pass_without_patterns() {
    let mut f = Fixture::new();
    f.pod.annotations.insert("a".into(), "b".into());
    assert_eq!(f.spec().annotations.len(), 7);
}

// ---- sysctls ---------------------------------------------------------------

fn set_sysctls(f: &mut Fixture, list: &[(&str, &str)]) {
    let linux = f.pod.linux.get_or_insert_with(Default::default);
    linux.sysctls = list
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
}

#[test]
fn pod_sysctls_go_into_the_spec() {
    let mut f = Fixture::new();
    set_sysctls(
        &mut f,
        &[
            ("net.ipv4.ip_forward", "1"),
            ("kernel.shm_rmid_forced", "1"),
            ("net/ipv4/conf/eth0.100/forwarding", "1"),
        ],
    );
    let spec = f.spec();
    assert_eq!(
        serde_json::to_value(&linux(&spec).sysctl).unwrap(),
        json!({
            "kernel.shm_rmid_forced": "1",
            "net.ipv4.conf.eth0/100.forwarding": "1",
            "net.ipv4.ip_forward": "1",
        })
    );
}

#[test]
fn sysctls_are_refused_in_host_namespaces() {
    let mut f = Fixture::new();
    f.namespaces.network = NamespaceSource::Host;
    set_sysctls(&mut f, &[("net.ipv4.ip_forward", "1")]);
    assert_eq!(
        f.error(),
        "sysctl \"net.ipv4.ip_forward\" cannot be set: the pod uses the host's network namespace"
    );
    set_sysctls(&mut f, &[("kernel.msgmax", "1")]);
    f.spec();
    f.namespaces.ipc = NamespaceSource::Host;
    assert!(f.error().contains("host's IPC namespace"));
    set_sysctls(&mut f, &[("vm.swappiness", "1")]);
    assert!(f.error().contains("is not namespaced"));
}

// ---- JSON shape ------------------------------------------------------------

#[test]
fn json_field_names_match_the_runtime_spec() {
    let mut f = Fixture::new();
    f.sc().seccomp = profile(ProfileType::RuntimeDefault, "");
    f.resources().oom_score_adj = 5;
    f.image.user = "alice".into();
    let value = serde_json::to_value(f.spec()).unwrap();
    assert_eq!(value["ociVersion"], "1.0.2");
    assert_eq!(
        value["root"],
        json!({"path": "/var/lib/rcri/containers/c1/rootfs", "readonly": false})
    );
    let p = &value["process"];
    assert_eq!(
        p["user"],
        json!({"uid": 1000, "gid": 1000, "additionalGids": [1000, 10, 29]})
    );
    assert_eq!(p["args"], json!(["/entry", "cmd1", "cmd2"]));
    assert_eq!(p["cwd"], "/srv");
    assert_eq!(p["noNewPrivileges"], false);
    assert_eq!(p["oomScoreAdj"], 5);
    assert_eq!(p["terminal"], false);
    assert!(p.get("apparmorProfile").is_none() && p.get("selinuxLabel").is_none());
    let l = &value["linux"];
    for key in [
        "namespaces",
        "resources",
        "cgroupsPath",
        "seccomp",
        "maskedPaths",
        "readonlyPaths",
    ] {
        assert!(l.get(key).is_some(), "linux.{key} missing");
    }
    assert!(l.get("uidMappings").is_none() && l.get("rootfsPropagation").is_none());
    assert_eq!(l["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
    assert!(l["seccomp"]["architectures"].is_array() || cfg!(not(target_arch = "x86_64")));
    assert_eq!(
        value["mounts"][0],
        json!({"destination": "/proc", "type": "proc", "source": "proc",
        "options": ["nosuid", "noexec", "nodev"]})
    );

    // The JSON reads back into the same spec.
    let back: Spec = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(serde_json::to_value(back).unwrap(), value);
}

#[test]
fn id_mappings_use_the_spec_spelling() {
    let m = oci::IdMapping {
        container_id: 0,
        host_id: 100000,
        size: 65536,
    };
    assert_eq!(
        serde_json::to_value(m).unwrap(),
        json!({"containerID": 0, "hostID": 100000, "size": 65536})
    );
}

// ---- sandbox -----------------------------------------------------------------

struct SandboxFixture {
    pod: proto::PodSandboxConfig,
    netns: Option<PathBuf>,
    driver: CgroupDriver,
    parent: String,
    handler: HandlerOptions,
    host: HostInfo,
}

impl SandboxFixture {
    fn new() -> Self {
        let mut pod = Fixture::new().pod;
        pod.log_directory = "/var/log/pods/default_web_uid-1".into();
        Self {
            pod,
            netns: Some("/run/netns/pod1".into()),
            driver: CgroupDriver::Cgroupfs,
            parent: "/kubepods/pod1".into(),
            handler: HandlerOptions {
                name: "runsc".into(),
                ..Default::default()
            },
            host: HostInfo::default(),
        }
    }

    fn linux(&mut self) -> &mut proto::LinuxPodSandboxConfig {
        self.pod.linux.get_or_insert_with(Default::default)
    }

    fn ns_options(&mut self) -> &mut proto::NamespaceOption {
        self.linux()
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options
            .get_or_insert_with(Default::default)
    }

    fn try_spec(&self) -> Result<Spec, SpecError> {
        sandbox_spec(&SandboxSpecInput {
            sandbox_id: "s1",
            config: &self.pod,
            rootfs: Path::new("/usr/lib/rcri/pause-root"),
            pause_path: "/pause",
            netns_path: self.netns.as_deref(),
            cgroup_parent: &self.parent,
            cgroup_driver: self.driver,
            handler: &self.handler,
            host: &self.host,
        })
    }

    fn spec(&self) -> Spec {
        self.try_spec().expect("sandbox spec")
    }
}

#[test]
fn sandbox_basics() {
    let spec = SandboxFixture::new().spec();
    let p = process(&spec);
    assert_eq!(p.args, ["/pause"]);
    assert_eq!((p.user.uid, p.user.gid), (65535, 65535));
    assert!(p.no_new_privileges);
    assert_eq!(p.oom_score_adj, Some(-998));
    assert!(caps(&spec).bounding.is_empty() && caps(&spec).effective.is_empty());
    assert_eq!(
        spec.root,
        Some(oci::Root {
            path: "/usr/lib/rcri/pause-root".into(),
            readonly: true
        })
    );
    assert_eq!(spec.hostname.as_deref(), Some("web-0"));
    assert_eq!(linux(&spec).cgroups_path, "/kubepods/pod1/s1");
    assert!(linux(&spec).seccomp.is_some());
    assert_eq!(linux(&spec).masked_paths, strings(DEFAULT_MASKED_PATHS));
    assert_eq!(
        serde_json::to_value(&spec.annotations).unwrap(),
        json!({
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-id": "s1",
            "io.kubernetes.cri.sandbox-name": "web",
            "io.kubernetes.cri.sandbox-namespace": "default",
            "io.kubernetes.cri.sandbox-uid": "uid-1",
            "io.kubernetes.cri.sandbox-log-directory": "/var/log/pods/default_web_uid-1",
        })
    );
}

#[test]
fn sandbox_oom_score_adj_is_clamped() {
    let mut f = SandboxFixture::new();
    f.host.min_oom_score_adj = 0;
    assert_eq!(process(&f.spec()).oom_score_adj, Some(0));
}

#[test]
fn sandbox_namespaces_new_or_host() {
    let mut f = SandboxFixture::new();
    assert_eq!(
        namespaces(&f.spec()),
        [
            ns("pid", None),
            ns("network", Some("/run/netns/pod1")),
            ns("ipc", None),
            ns("uts", None),
            ns("mount", None),
        ]
    );
    f.netns = None;
    assert!(namespaces(&f.spec()).contains(&ns("network", None)));
    f.host.cgroup_v2 = true;
    assert!(namespaces(&f.spec()).contains(&ns("cgroup", None)));

    *f.ns_options() = proto::NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Node as i32,
        ipc: NamespaceMode::Node as i32,
        ..Default::default()
    };
    f.host.cgroup_v2 = false;
    let spec = f.spec();
    assert_eq!(namespaces(&spec), [ns("mount", None)]);
    // The host's UTS namespace keeps the host's name.
    assert_eq!(spec.hostname, None);
}

#[test]
fn sandbox_sysctls_and_refusal() {
    let mut f = SandboxFixture::new();
    f.linux()
        .sysctls
        .insert("net.core.somaxconn".into(), "1024".into());
    assert_eq!(
        linux(&f.spec())
            .sysctl
            .get("net.core.somaxconn")
            .map(String::as_str),
        Some("1024")
    );
    f.ns_options().network = NamespaceMode::Node as i32;
    assert!(matches!(
        f.try_spec(),
        Err(SpecError::InvalidArgument(m)) if m.contains("host's network namespace")
    ));
}

#[test]
fn sandbox_cgroup_gets_overhead_plus_resources() {
    let mut f = SandboxFixture::new();
    f.linux().resources = Some(proto::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 200_000,
        cpu_shares: 2048,
        memory_limit_in_bytes: 1 << 30,
        cpuset_cpus: "0-3".into(),
        hugepage_limits: vec![proto::HugepageLimit {
            page_size: "2MB".into(),
            limit: 8 << 20,
        }],
        ..Default::default()
    });
    f.linux().overhead = Some(proto::LinuxContainerResources {
        cpu_period: 50_000,
        cpu_quota: 10_000,
        cpu_shares: 100,
        memory_limit_in_bytes: 128 << 20,
        hugepage_limits: vec![proto::HugepageLimit {
            page_size: "2MB".into(),
            limit: 2 << 20,
        }],
        ..Default::default()
    });
    let spec = f.spec();
    let r = serde_json::to_value(linux(&spec).resources.as_ref().unwrap()).unwrap();
    // Overhead quota 10000/50000 is 20000 at the pod's 100000 period.
    assert_eq!(
        r["cpu"],
        json!({"shares": 2148, "quota": 220000, "period": 100000, "cpus": "0-3"})
    );
    assert_eq!(r["memory"]["limit"], (1i64 << 30) + (128 << 20));
    assert_eq!(
        r["hugepageLimits"],
        json!([{"pageSize": "2MB", "limit": 10 << 20}])
    );
}

#[test]
fn sandbox_overhead_alone_does_not_invent_limits() {
    let mut f = SandboxFixture::new();
    f.linux().overhead = Some(proto::LinuxContainerResources {
        cpu_shares: 100,
        memory_limit_in_bytes: 128 << 20,
        ..Default::default()
    });
    let spec = f.spec();
    let r = linux(&spec).resources.as_ref().unwrap();
    assert_eq!(r.cpu.as_ref().and_then(|c| c.shares), Some(100));
    assert!(r.memory.is_none());
}

#[test]
fn sandbox_systemd_cgroup_and_annotation_filter() {
    let mut f = SandboxFixture::new();
    f.driver = CgroupDriver::Systemd;
    f.parent = "kubepods-pod1.slice".into();
    f.handler.allowed_annotations = strings(&["dev.gvisor.*"]);
    f.pod
        .annotations
        .insert("dev.gvisor.spec.mount.x".into(), "y".into());
    f.pod.annotations.insert("other".into(), "z".into());
    let spec = f.spec();
    assert_eq!(linux(&spec).cgroups_path, "kubepods-pod1.slice:rcri:s1");
    assert_eq!(
        spec.annotations
            .get("dev.gvisor.spec.mount.x")
            .map(String::as_str),
        Some("y")
    );
    assert!(!spec.annotations.contains_key("other"));
}

// ---- properties --------------------------------------------------------------

mod properties {
    use proptest::prelude::*;

    use super::super::resources::clamp_oom_score_adj;
    use super::*;

    proptest! {
        #[test]
        fn oom_clamp_stays_in_range(value in any::<i64>(), min in -2000i64..2000) {
            let got = clamp_oom_score_adj(value, min);
            prop_assert!(got <= 1000);
            prop_assert!(got >= min.clamp(-1000, 1000));
        }

        #[test]
        fn user_strings_never_panic(user in "[a-z0-9:]{0,12}", passwd in "[a-z0-9:\n]{0,60}") {
            let mut f = Fixture::new();
            f.image.user = user;
            f.image.etc_passwd = Some(passwd.clone());
            f.image.etc_group = Some(passwd);
            let _ = f.try_spec();
        }

        #[test]
        fn mount_paths_clean_to_absolute(path in "/[a-z./]{0,30}") {
            let cleaned = super::super::mounts::clean_absolute(&path, "p").unwrap();
            prop_assert!(cleaned.starts_with('/'));
            prop_assert!(!cleaned.contains("//"));
            prop_assert!(!cleaned.split('/').any(|c| c == "." || c == ".."));
        }
    }
}
