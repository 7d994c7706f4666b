//! Every field of the CRI container and pod config checked from inside the
//! container (`id`, `/proc/self/status`, `mount`, cgroup files, …), under
//! runc and crun. Needs root, runc, crun, docker-registry and busybox-static
//! (`make test` installs them).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::node::{HANDLERS, Node, pod_security, read_log, security};
use common::registry::{ImageBuilder, Layer, block_on};
use rcri::proto::runtime_service_client::RuntimeServiceClient;
use rcri::proto::{self, NamespaceMode, security_profile::ProfileType};
use tonic::transport::Endpoint;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// containerd's default capability set (CHOWN, DAC_OVERRIDE, FSETID, FOWNER,
/// MKNOD, NET_RAW, SETGID, SETUID, SETFCAP, SETPCAP, NET_BIND_SERVICE,
/// SYS_CHROOT, KILL, AUDIT_WRITE) as /proc/PID/status prints it.
const DEFAULT_CAP_MASK: &str = "00000000a80425fb";
const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_SYS_RESOURCE: u64 = 1 << 24;
const MIB: i64 = 1024 * 1024;

/// Removes the pods of a test that panicked: their monitors outlive rcri, so
/// without this a failure would leave containers, mounts and cgroups behind.
struct Leftovers {
    socket: PathBuf,
    pods: Mutex<Vec<String>>,
}

impl Leftovers {
    fn new(node: &Node) -> Leftovers {
        Leftovers {
            socket: node.server.socket.clone(),
            pods: Mutex::new(Vec::new()),
        }
    }

    fn track(&self, pod: &str) {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pod.to_string());
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let pods = std::mem::take(&mut *self.pods.lock().unwrap_or_else(|e| e.into_inner()));
        let socket = self.socket.clone();
        block_on(async move {
            let Ok(channel) = Endpoint::from_shared(format!("unix://{}", socket.display()))
                .unwrap()
                .connect()
                .await
            else {
                return;
            };
            let mut client = RuntimeServiceClient::new(channel);
            for pod in pods {
                let _ = client
                    .stop_pod_sandbox(proto::StopPodSandboxRequest {
                        pod_sandbox_id: pod.clone(),
                    })
                    .await;
                let _ = client
                    .remove_pod_sandbox(proto::RemovePodSandboxRequest {
                        pod_sandbox_id: pod,
                    })
                    .await;
            }
        });
    }
}

fn resources(config: &mut proto::ContainerConfig) -> &mut proto::LinuxContainerResources {
    config
        .linux
        .get_or_insert_with(Default::default)
        .resources
        .get_or_insert_with(Default::default)
}

fn namespaces(config: &mut proto::ContainerConfig) -> &mut proto::NamespaceOption {
    security(config)
        .namespace_options
        .get_or_insert_with(Default::default)
}

/// A private PID namespace: PID 1 is the container's own command, so
/// `/proc/1/...` inspects the main process from an exec.
fn own_pid_namespace(mut config: proto::ContainerConfig) -> proto::ContainerConfig {
    namespaces(&mut config).pid = NamespaceMode::Container as i32;
    config
}

async fn create_config(
    node: &Node,
    pod: &str,
    config: proto::ContainerConfig,
) -> Result<String, tonic::Status> {
    node.client()
        .await
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().container_id)
}

async fn run_config(node: &Node, pod: &str, config: proto::ContainerConfig) -> String {
    let name = config.metadata.as_ref().unwrap().name.clone();
    let id = create_config(node, pod, config)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {}", e.message()));
    node.start_container(&id)
        .await
        .unwrap_or_else(|e| panic!("start {name}: {}", e.message()));
    id
}

/// `sh -c script` in the container; must succeed; its stdout.
async fn sh(node: &Node, id: &str, script: &str) -> String {
    node.out(id, &["sh", "-c", script]).await
}

/// `sh -c script` in the container; (exit code, stdout + stderr).
async fn sh_status(node: &Node, id: &str, script: &str) -> (i32, String) {
    let r = node.exec(id, &["sh", "-c", script], 10).await.unwrap();
    let mut text = String::from_utf8_lossy(&r.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&r.stderr));
    (r.exit_code, text)
}

/// The value of `key:` in a /proc/PID/status text.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
        .to_string()
}

fn own_status_field(key: &str) -> String {
    status_field(&std::fs::read_to_string("/proc/self/status").unwrap(), key)
}

fn log_path(node: &Node, pod_name: &str, container: &str) -> PathBuf {
    PathBuf::from(node.pod_config(pod_name).log_directory).join(format!("{container}.log"))
}

/// Polls `path` until it has a line ending in ` F <line>`; the whole text.
async fn wait_log_line(path: &Path, line: &str) -> String {
    for _ in 0..250 {
        let text = read_log(path);
        if text.lines().any(|l| l.ends_with(&format!(" F {line}"))) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never got {line:?}:\n{}", path.display(), read_log(path));
}

fn host(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// 1. User and groups
// ---------------------------------------------------------------------------

#[tokio::test]
async fn user_group_and_supplemental_groups_come_from_the_cri_and_the_image() {
    let node = Node::start().await;
    let leftovers = Leftovers::new(&node);
    let image = node
        .add_image(
            "users",
            &ImageBuilder::busybox()
                .layer(
                    Layer::new()
                        .file(
                            "etc/passwd",
                            "root:x:0:0:root:/root:/bin/sh\n\
                             app:x:1234:1234:app:/home/app:/bin/sh\n\
                             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
                            0o644,
                        )
                        .file(
                            "etc/group",
                            "root:x:0:\napp:x:1234:\nextra:x:4321:nobody,app\nnobody:x:65534:\n",
                            0o644,
                        ),
                )
                .user("nobody"),
        )
        .await;
    for handler in HANDLERS {
        let pod = node.run_pod(&format!("users-{handler}"), handler).await;
        leftovers.track(&pod);
        let with_image = |name: &str| {
            let mut config = own_pid_namespace(node.container_config(name, "exec sleep 1000"));
            config.image.as_mut().unwrap().image = image.clone();
            config
        };

        // run_as_user + run_as_group + supplemental_groups.
        let mut config = with_image("numeric");
        let sc = security(&mut config);
        sc.run_as_user = Some(proto::Int64Value { value: 1000 });
        sc.run_as_group = Some(proto::Int64Value { value: 2000 });
        sc.supplemental_groups = vec![3000];
        let numeric = run_config(&node, &pod, config).await;
        let id = sh(&node, &numeric, "id").await;
        assert!(id.starts_with("uid=1000 gid=2000 "), "{handler}: {id}");
        assert!(
            id.contains("groups=") && id.contains("3000"),
            "{handler}: {id}"
        );
        let status = sh(&node, &numeric, "cat /proc/1/status").await;
        assert_eq!(status_field(&status, "Uid"), "1000\t1000\t1000\t1000");
        assert_eq!(status_field(&status, "Gid"), "2000\t2000\t2000\t2000");
        let groups = status_field(&status, "Groups");
        assert!(
            groups.split_whitespace().any(|g| g == "3000"),
            "{handler}: the main process's groups: {groups}"
        );

        // run_as_username through the image's /etc/passwd and /etc/group.
        let mut config = with_image("byname");
        security(&mut config).run_as_username = "app".into();
        let byname = run_config(&node, &pod, config).await;
        let id = sh(&node, &byname, "id").await;
        assert!(
            id.starts_with("uid=1234(app) gid=1234(app) "),
            "{handler}: {id}"
        );
        assert!(id.contains("4321(extra)"), "{handler}: {id}");
        let status = sh(&node, &byname, "cat /proc/1/status").await;
        assert_eq!(status_field(&status, "Uid"), "1234\t1234\t1234\t1234");
        let groups = status_field(&status, "Groups");
        assert!(
            groups.split_whitespace().any(|g| g == "4321"),
            "{handler}: {groups}"
        );
        let environ = sh(&node, &byname, "tr '\\0' '\\n' < /proc/1/environ").await;
        assert!(
            environ.lines().any(|l| l == "HOME=/home/app"),
            "{handler}: {environ}"
        );

        // No user in the CRI: the image's User (nobody), with its groups.
        let from_image = run_config(&node, &pod, with_image("image-user")).await;
        let id = sh(&node, &from_image, "id").await;
        assert!(
            id.starts_with("uid=65534(nobody) gid=65534(nobody) "),
            "{handler}: {id}"
        );
        assert!(id.contains("4321(extra)"), "{handler}: {id}");
        let status = sh(&node, &from_image, "cat /proc/1/status").await;
        assert_eq!(status_field(&status, "Uid"), "65534\t65534\t65534\t65534");

        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

// ---------------------------------------------------------------------------
// 2. Read-only rootfs, environment, working directory
// ---------------------------------------------------------------------------

#[tokio::test]
async fn readonly_rootfs_environment_and_working_dir() {
    let node = Node::start().await;
    let leftovers = Leftovers::new(&node);
    let image = node
        .add_image(
            "env",
            &ImageBuilder::busybox()
                .layer(Layer::new().dir("srv", 0o755).dir("srv/app", 0o755))
                .env("FOO=from-image")
                .env("ONLY_IMAGE=kept")
                .working_dir("/srv/app"),
        )
        .await;
    for handler in HANDLERS {
        let pod_name = format!("env-{handler}");
        let pod = node.run_pod(&pod_name, handler).await;
        leftovers.track(&pod);

        let mut config = own_pid_namespace(node.container_config("ro", "exec sleep 1000"));
        config.image.as_mut().unwrap().image = image.clone();
        config.working_dir = "/var".into();
        config.envs = vec![
            proto::KeyValue {
                key: "FOO".into(),
                value: "from-cri".into(),
            },
            proto::KeyValue {
                key: "ONLY_CRI".into(),
                value: "a b=c".into(),
            },
        ];
        security(&mut config).readonly_rootfs = true;
        let ro = run_config(&node, &pod, config).await;

        let (code, text) = sh_status(&node, &ro, "touch /x").await;
        assert_ne!(code, 0, "{handler}: writing to / succeeded");
        assert!(text.contains("Read-only file system"), "{handler}: {text}");
        let (code, text) = sh_status(&node, &ro, "touch /var/x").await;
        assert_ne!(code, 0, "{handler}: writing to /var succeeded: {text}");
        let mounts = sh(&node, &ro, "mount").await;
        let root = mounts
            .lines()
            .find(|l| l.contains(" on / "))
            .unwrap_or_else(|| panic!("{mounts}"));
        assert!(root.contains("(ro,"), "{handler}: {root}");
        // /dev/shm and the pod files stay usable.
        sh(&node, &ro, "echo ok > /dev/shm/probe && cat /etc/hostname").await;

        for (what, env) in [
            ("exec", sh(&node, &ro, "env").await),
            (
                "main process",
                sh(&node, &ro, "tr '\\0' '\\n' < /proc/1/environ").await,
            ),
        ] {
            let env: Vec<&str> = env.lines().collect();
            for expected in [
                "FOO=from-cri",
                "ONLY_IMAGE=kept",
                "ONLY_CRI=a b=c",
                "PATH=/bin:/usr/bin:/sbin:/usr/sbin",
                &format!("HOSTNAME={pod_name}-host"),
            ] {
                assert!(env.contains(&expected), "{handler} {what}: {env:?}");
            }
            assert!(
                !env.contains(&"FOO=from-image"),
                "{handler} {what}: {env:?}"
            );
        }
        assert_eq!(sh(&node, &ro, "readlink /proc/1/cwd").await.trim(), "/var");
        assert_eq!(sh(&node, &ro, "pwd").await.trim(), "/var", "{handler}");

        // No working_dir in the CRI: the image's.
        let mut config = own_pid_namespace(node.container_config("wd", "exec sleep 1000"));
        config.image.as_mut().unwrap().image = image.clone();
        let wd = run_config(&node, &pod, config).await;
        assert_eq!(
            sh(&node, &wd, "readlink /proc/1/cwd").await.trim(),
            "/srv/app",
            "{handler}"
        );
        sh(&node, &wd, "touch /x").await; // writable rootfs by default

        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

// ---------------------------------------------------------------------------
// 3. Capabilities, no_new_privs, privileged
// ---------------------------------------------------------------------------

#[tokio::test]
async fn capabilities_no_new_privs_and_privileged() {
    let node = Node::start().await;
    let leftovers = Leftovers::new(&node);
    let own_bounding = own_status_field("CapBnd");
    for handler in HANDLERS {
        let mut pod_config = node.pod_config(&format!("caps-{handler}"));
        pod_security(&mut pod_config).privileged = true;
        let pod = node.run_pod_with(pod_config, handler).await;
        leftovers.track(&pod);
        let cases: [(&str, &[&str], &[&str], String); 4] = [
            ("default", &[], &[], DEFAULT_CAP_MASK.to_string()),
            (
                "add-net-admin",
                &["NET_ADMIN"],
                &[],
                format!(
                    "{:016x}",
                    u64::from_str_radix(DEFAULT_CAP_MASK, 16).unwrap() | CAP_NET_ADMIN
                ),
            ),
            ("drop-all", &[], &["ALL"], format!("{:016x}", 0)),
            (
                "only-net-admin",
                &["CAP_NET_ADMIN"],
                &["ALL"],
                format!("{CAP_NET_ADMIN:016x}"),
            ),
        ];
        for (name, add, drop, expected) in cases {
            let mut config = node.container_config(name, "exec sleep 1000");
            security(&mut config).capabilities = Some(proto::Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                add_ambient_capabilities: Vec::new(),
            });
            let id = run_config(&node, &pod, config).await;
            let status = sh(&node, &id, "cat /proc/self/status").await;
            for set in ["CapEff", "CapPrm", "CapBnd"] {
                assert_eq!(
                    status_field(&status, set),
                    expected,
                    "{handler} {name}: {set}"
                );
            }
            assert_eq!(status_field(&status, "NoNewPrivs"), "0", "{handler} {name}");
        }

        let mut config = node.container_config("nnp", "exec sleep 1000");
        security(&mut config).no_new_privs = true;
        let nnp = run_config(&node, &pod, config).await;
        let status = sh(&node, &nnp, "cat /proc/self/status").await;
        assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{handler}");

        // youki 0.7 fails to create a privileged container in a pod whose
        // other containers run, here on cgroup v1: "failed to mount cgroup
        // v1: procfs failed ... NotFound(/proc/N)". (A pod's first
        // container, privileged, works: a_privileged_container_gets_a_writable_sys.)
        if handler == "youki" {
            node.remove_pod(&pod).await;
            continue;
        }
        let mut config = node.container_config("privileged", "exec sleep 1000");
        security(&mut config).privileged = true;
        let privileged = run_config(&node, &pod, config).await;
        let status = sh(&node, &privileged, "cat /proc/self/status").await;
        assert_eq!(status_field(&status, "CapEff"), own_bounding, "{handler}");
        assert_eq!(status_field(&status, "CapBnd"), own_bounding, "{handler}");
        // Not privileged: /sys and /proc/sys read-only.
        let plain = run_config(
            &node,
            &pod,
            node.container_config("plain", "exec sleep 1000"),
        )
        .await;
        let mounts = sh(&node, &plain, "mount").await;
        assert!(
            mounts
                .lines()
                .any(|l| l.starts_with("sysfs on /sys type sysfs (ro,")),
            "{handler}: {mounts}"
        );
        let (code, text) =
            sh_status(&node, &plain, "echo 1 > /proc/sys/kernel/shm_rmid_forced").await;
        assert_ne!(code, 0, "{handler}: /proc/sys is writable: {text}");

        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

// ---------------------------------------------------------------------------
// 4 and 10. Resources, oom_score_adj, UpdateContainerResources
// ---------------------------------------------------------------------------

#[tokio::test]
async fn resources_oom_score_adj_and_updates_reach_the_cgroup() {
    let node = Node::start().await;
    let leftovers = Leftovers::new(&node);
    let own_oom: i64 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let own_effective = u64::from_str_radix(&own_status_field("CapEff"), 16).unwrap();
    let lowest_oom = if own_effective & CAP_SYS_RESOURCE != 0 {
        -1000
    } else {
        own_oom
    };
    let hugetlb_2m = Path::new("/sys/fs/cgroup/hugetlb/hugetlb.2MB.limit_in_bytes").exists();
    for handler in HANDLERS {
        let pod = node.run_pod(&format!("res-{handler}"), handler).await;
        leftovers.track(&pod);
        let mut config = own_pid_namespace(node.container_config("limited", "exec sleep 1000"));
        let r = resources(&mut config);
        r.memory_limit_in_bytes = 64 * MIB;
        r.cpu_shares = 512;
        r.cpu_quota = 50_000;
        r.cpu_period = 100_000;
        r.cpuset_cpus = "0".into();
        r.oom_score_adj = 500;
        r.unified = HashMap::from([("pids.max".into(), "100".into())]);
        if hugetlb_2m {
            r.hugepage_limits = vec![proto::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 * MIB as u64,
            }];
        }
        let limited = run_config(&node, &pod, config).await;
        let read = |file: &'static str| {
            let node = &node;
            let limited = &limited;
            async move {
                sh(node, limited, &format!("cat /sys/fs/cgroup/{file}"))
                    .await
                    .trim()
                    .to_string()
            }
        };
        // The container sees its own cgroup at the root of each hierarchy.
        assert_eq!(
            read("memory/memory.limit_in_bytes").await,
            (64 * MIB).to_string(),
            "{handler}"
        );
        assert_eq!(
            read("memory/memory.memsw.limit_in_bytes").await,
            (64 * MIB).to_string(),
            "{handler}: no swap beyond the limit"
        );
        assert_eq!(read("cpu/cpu.shares").await, "512", "{handler}");
        assert_eq!(read("cpu/cpu.cfs_quota_us").await, "50000", "{handler}");
        assert_eq!(read("cpu/cpu.cfs_period_us").await, "100000", "{handler}");
        assert_eq!(read("cpuset/cpuset.cpus").await, "0", "{handler}");
        assert_eq!(read("pids/pids.max").await, "100", "{handler}");
        if hugetlb_2m {
            assert_eq!(
                read("hugetlb/hugetlb.2MB.limit_in_bytes").await,
                (4 * MIB).to_string(),
                "{handler}"
            );
        }
        assert_eq!(
            sh(&node, &limited, "cat /proc/1/oom_score_adj")
                .await
                .trim(),
            "500",
            "{handler}"
        );
        // ... and it is the cgroup the host put the main process into.
        let info = node
            .client()
            .await
            .container_status(proto::ContainerStatusRequest {
                container_id: limited.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner()
            .info;
        let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
        let pid = info["pid"].as_i64().unwrap();
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let memory = cgroups
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                (controllers == "memory").then_some(path)
            })
            .unwrap_or_else(|| panic!("{cgroups}"));
        assert!(memory.ends_with(&limited), "{handler}: {memory}");
        let host_limit = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/memory{memory}/memory.limit_in_bytes"
        ))
        .unwrap();
        assert_eq!(host_limit.trim(), (64 * MIB).to_string(), "{handler}");

        // UpdateContainerResources on the running container.
        node.client()
            .await
            .update_container_resources(proto::UpdateContainerResourcesRequest {
                container_id: limited.clone(),
                linux: Some(proto::LinuxContainerResources {
                    memory_limit_in_bytes: 128 * MIB,
                    cpu_shares: 1024,
                    cpu_quota: 20_000,
                    cpu_period: 100_000,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{handler}: update: {}", e.message()));
        assert_eq!(
            read("memory/memory.limit_in_bytes").await,
            (128 * MIB).to_string(),
            "{handler}"
        );
        assert_eq!(read("cpu/cpu.shares").await, "1024", "{handler}");
        assert_eq!(read("cpu/cpu.cfs_quota_us").await, "20000", "{handler}");

        // oom_score_adj below what rcri may set is raised to rcri's own.
        let mut config = own_pid_namespace(node.container_config("low-oom", "exec sleep 1000"));
        resources(&mut config).oom_score_adj = -998;
        let low = run_config(&node, &pod, config).await;
        let adj: i64 = sh(&node, &low, "cat /proc/1/oom_score_adj")
            .await
            .trim()
            .parse()
            .unwrap();
        assert_eq!(adj, (-998).max(lowest_oom), "{handler}");

        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

// ---------------------------------------------------------------------------
// 5. OOM kill
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_container_over_its_memory_limit_is_oom_killed() {
    let node = Node::start().await;
    let leftovers = Leftovers::new(&node);
    for handler in HANDLERS {
        let pod = node.run_pod(&format!("oom-{handler}"), handler).await;
        leftovers.track(&pod);
        // The shell keeps the whole command substitution in memory.
        let mut config =
            node.container_config("hog", "x=$(yes | head -c 200000000); echo survived");
        resources(&mut config).memory_limit_in_bytes = 32 * MIB;
        let hog = run_config(&node, &pod, config).await;
        let status = node.wait_exited(&hog).await;
        assert_eq!(status.reason, "OOMKilled", "{handler}: {status:?}");
        assert_eq!(status.exit_code, 137, "{handler}");

        // A plain failure is not an OOM kill.
        let failed = node.run(&pod, "fails", "exit 3").await;
        let status = node.wait_exited(&failed).await;
        assert_eq!((status.exit_code, status.reason.as_str()), (3, "Error"));
        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

// ---------------------------------------------------------------------------
// 6. Mounts, /dev/shm, /etc/hosts, /etc/hostname
// ---------------------------------------------------------------------------

/// A host directory made a shared mount point of its own, so mounts made
/// under it later propagate to rslave bind mounts of it; unmounted on drop.
struct SharedDir {
    dir: tempfile::TempDir,
}

impl SharedDir {
    fn new() -> SharedDir {
        let dir = tempfile::Builder::new()
            .prefix("rcri-shared-")
            .tempdir()
            .unwrap();
        let path = dir.path().to_str().unwrap();
        host("mount", &["--bind", path, path]);
        host("mount", &["--make-shared", path]);
        SharedDir { dir }
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path())
            .status();
    }
}

fn cri_mount(container: &str, host: &Path) -> proto::Mount {
    proto::Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        ..Default::default()
    }
}

#[tokio::test]
async fn bind_mounts_shm_hosts_and_hostname() {
    let node = Node::start().await;
    let leftovers = Leftovers::new(&node);
    for handler in HANDLERS {
        let pod_name = format!("mounts-{handler}");
        let pod = node.run_pod(&pod_name, handler).await;
        leftovers.track(&pod);
        let ro_dir = tempfile::tempdir().unwrap();
        std::fs::write(ro_dir.path().join("data"), "host data\n").unwrap();
        let rw_dir = tempfile::tempdir().unwrap();
        let shared = SharedDir::new();
        std::fs::create_dir(shared.dir.path().join("sub")).unwrap();

        let mut config = node.container_config("mounter", "exec sleep 1000");
        config.mounts = vec![
            proto::Mount {
                readonly: true,
                ..cri_mount("/ro", ro_dir.path())
            },
            cri_mount("/rw", rw_dir.path()),
        ];
        // youki 0.7 refuses the spec's rootfsPropagation "rslave" (what a
        // HostToContainer mount needs, as containerd sets it):
        // `UnknownRootfsPropagation("rslave")`.
        let propagation = handler != "youki";
        if propagation {
            config.mounts.push(proto::Mount {
                propagation: proto::MountPropagation::PropagationHostToContainer as i32,
                ..cri_mount("/slave", shared.dir.path())
            });
        }
        let mounter = run_config(&node, &pod, config).await;

        assert_eq!(sh(&node, &mounter, "cat /ro/data").await, "host data\n");
        let (code, text) = sh_status(&node, &mounter, "touch /ro/new").await;
        assert_ne!(code, 0, "{handler}: a read-only mount was written");
        assert!(text.contains("Read-only file system"), "{handler}: {text}");
        sh(&node, &mounter, "echo from container > /rw/file").await;
        assert_eq!(
            std::fs::read_to_string(rw_dir.path().join("file")).unwrap(),
            "from container\n"
        );
        // rslave: a mount made on the host afterwards shows up inside.
        if propagation {
            let sub = shared.dir.path().join("sub");
            host(
                "mount",
                &["-t", "tmpfs", "rcri-slave-probe", sub.to_str().unwrap()],
            );
            let mountinfo = sh(&node, &mounter, "cat /proc/self/mountinfo").await;
            let slave_line = mountinfo
                .lines()
                .find(|l| l.split_whitespace().nth(4) == Some("/slave/sub"))
                .unwrap_or_else(|| panic!("{handler}: no /slave/sub:\n{mountinfo}"));
            assert!(slave_line.contains("rcri-slave-probe"), "{slave_line}");
            assert!(slave_line.contains("master:"), "{handler}: {slave_line}");
        }

        // /dev/shm: one tmpfs for the pod.
        let other = node.run(&pod, "other", "exec sleep 1000").await;
        sh(&node, &mounter, "echo shared > /dev/shm/note").await;
        assert_eq!(sh(&node, &other, "cat /dev/shm/note").await, "shared\n");
        let mounts = sh(&node, &other, "mount").await;
        assert!(
            mounts
                .lines()
                .any(|l| l.contains(" on /dev/shm type tmpfs ")),
            "{handler}: {mounts}"
        );

        // /etc/hostname and /etc/hosts name the pod.
        assert_eq!(
            sh(&node, &other, "cat /etc/hostname").await,
            format!("{pod_name}-host\n")
        );
        let hosts = sh(&node, &other, "cat /etc/hosts").await;
        assert!(
            hosts
                .lines()
                .any(|l| l.starts_with("127.0.0.1") && l.contains("localhost")),
            "{handler}: {hosts}"
        );
        assert!(
            hosts.lines().any(|l| l
                .split_whitespace()
                .skip(1)
                .any(|h| h == format!("{pod_name}-host"))),
            "{handler}: {hosts}"
        );

        node.remove_pod(&pod).await;
        drop(shared);
    }
    node.assert_clean();
}

#[tokio::test]
async fn recursive_read_only_mounts_where_the_handler_supports_them() {
    let node = Node::start().await;
    let leftovers = Leftovers::new(&node);
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    host(
        "mount",
        &["-t", "tmpfs", "rcri-rro-probe", sub.to_str().unwrap()],
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(sub.clone());
    for handler in HANDLERS {
        let pod = node.run_pod(&format!("rro-{handler}"), handler).await;
        leftovers.track(&pod);
        let mut config = node.container_config("rro", "exec sleep 1000");
        config.mounts = vec![proto::Mount {
            readonly: true,
            recursive_read_only: true,
            ..cri_mount("/rro", dir.path())
        }];
        let supported = String::from_utf8(
            Command::new(handler)
                .arg("features")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .contains("\"rro\"");
        match create_config(&node, &pod, config).await {
            Ok(id) => {
                assert!(
                    supported,
                    "{handler} has no rro, yet the mount was accepted"
                );
                node.start_container(&id).await.unwrap();
                let (code, text) = sh_status(&node, &id, "touch /rro/sub/x").await;
                assert_ne!(code, 0, "{handler}: the submount is writable");
                assert!(text.contains("Read-only file system"), "{text}");
            }
            Err(error) => {
                assert!(!supported, "{handler}: {}", error.message());
                assert!(
                    error.message().contains("recursive"),
                    "{handler}: {}",
                    error.message()
                );
            }
        }
        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

// ---------------------------------------------------------------------------
// 7. Namespaces
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pid_network_and_ipc_namespaces() {
    let node = Node::start().await;
    let leftovers = Leftovers::new(&node);
    let own_ns = |kind: &str| {
        std::fs::read_link(format!("/proc/self/ns/{kind}"))
            .unwrap()
            .display()
            .to_string()
    };
    let host_name = nix::unistd::gethostname().unwrap().into_string().unwrap();
    for handler in HANDLERS {
        // PID POD (the default): the containers and pause share one.
        let pod_name = format!("ns-{handler}");
        let pod = node.run_pod(&pod_name, handler).await;
        leftovers.track(&pod);
        let first = node.run(&pod, "first", "exec sleep 1001").await;
        let second = node.run(&pod, "second", "exec sleep 1002").await;
        let ps = sh(&node, &second, "ps").await;
        assert!(ps.contains("sleep 1001"), "{handler}: {ps}");
        assert_eq!(
            sh(&node, &first, "cat /proc/1/cmdline").await,
            "/pause\0",
            "{handler}"
        );
        // PID CONTAINER: the container's own command is PID 1.
        let own = run_config(
            &node,
            &pod,
            own_pid_namespace(node.container_config("own", "exec sleep 1003")),
        )
        .await;
        assert_eq!(
            sh(&node, &own, "cat /proc/1/cmdline").await,
            "sleep\x001003\0",
            "{handler}"
        );
        let ps = sh(&node, &own, "ps").await;
        assert!(!ps.contains("sleep 1001"), "{handler}: {ps}");
        // The pod's own network, IPC and UTS namespaces.
        for kind in ["net", "ipc", "uts"] {
            assert_ne!(
                sh(&node, &first, &format!("readlink /proc/self/ns/{kind}"))
                    .await
                    .trim(),
                own_ns(kind),
                "{handler}: {kind}"
            );
        }
        assert_eq!(
            sh(&node, &first, "readlink /proc/self/ns/ipc").await,
            sh(&node, &own, "readlink /proc/self/ns/ipc").await
        );
        node.remove_pod(&pod).await;

        // Host network, IPC and PID.
        let mut pod_config = node.pod_config(&format!("hostns-{handler}"));
        let host_ns = proto::NamespaceOption {
            network: NamespaceMode::Node as i32,
            pid: NamespaceMode::Node as i32,
            ipc: NamespaceMode::Node as i32,
            ..Default::default()
        };
        pod_security(&mut pod_config).namespace_options = Some(host_ns.clone());
        let pod = node.run_pod_with(pod_config, handler).await;
        leftovers.track(&pod);
        let mut config = node.container_config("hostly", "exec sleep 1004");
        *namespaces(&mut config) = host_ns;
        let hostly = run_config(&node, &pod, config).await;
        assert_eq!(sh(&node, &hostly, "hostname").await.trim(), host_name);
        for kind in ["net", "ipc", "pid", "uts"] {
            assert_eq!(
                sh(&node, &hostly, &format!("readlink /proc/self/ns/{kind}"))
                    .await
                    .trim(),
                own_ns(kind),
                "{handler}: {kind}"
            );
        }
        // The host's processes, this test among them, are visible.
        sh(
            &node,
            &hostly,
            &format!("test -d /proc/{}", std::process::id()),
        )
        .await;
        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

// ---------------------------------------------------------------------------
// 8. Sysctls
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pod_sysctls_are_visible_inside() {
    let node = Node::start().await;
    let leftovers = Leftovers::new(&node);
    let host_port_start =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    let host_shm = std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").unwrap();
    for handler in HANDLERS {
        let mut pod_config = node.pod_config(&format!("sysctl-{handler}"));
        pod_config
            .linux
            .get_or_insert_with(Default::default)
            .sysctls = HashMap::from([
            ("net.ipv4.ip_unprivileged_port_start".into(), "0".into()),
            // The kubelet's slash form.
            ("kernel/shm_rmid_forced".into(), "1".into()),
        ]);
        let pod = node.run_pod_with(pod_config, handler).await;
        leftovers.track(&pod);
        let c = node.run(&pod, "c", "exec sleep 1000").await;
        assert_eq!(
            sh(
                &node,
                &c,
                "cat /proc/sys/net/ipv4/ip_unprivileged_port_start"
            )
            .await,
            "0\n",
            "{handler}"
        );
        assert_eq!(
            sh(&node, &c, "cat /proc/sys/kernel/shm_rmid_forced").await,
            "1\n",
            "{handler}"
        );
        node.remove_pod(&pod).await;
    }
    // The host's own values are untouched.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap(),
        host_port_start
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").unwrap(),
        host_shm
    );
    node.assert_clean();
}

// ---------------------------------------------------------------------------
// 9. Stop signal, ReopenContainerLog
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_image_stop_signal_and_log_reopening() {
    let node = Node::start().await;
    let leftovers = Leftovers::new(&node);
    let image = node
        .add_image("quitter", &ImageBuilder::busybox().stop_signal("SIGQUIT"))
        .await;
    for handler in HANDLERS {
        let pod_name = format!("stop-{handler}");
        let pod = node.run_pod(&pod_name, handler).await;
        leftovers.track(&pod);

        let mut config = node.container_config(
            "quitter",
            "trap 'echo got QUIT; exit 9' QUIT; trap 'exit 1' TERM; echo ready; \
             while true; do sleep 1 & wait $!; done",
        );
        config.image.as_mut().unwrap().image = image.clone();
        let quitter = run_config(&node, &pod, config).await;
        let log = log_path(&node, &pod_name, "quitter");
        wait_log_line(&log, "ready").await;
        // The init starts with no signal blocked, whatever rcri's monitor
        // blocks for itself (youki passes the mask on).
        let blocked = sh(&node, &quitter, "grep SigBlk /proc/1/status").await;
        assert_eq!(
            blocked.split_whitespace().nth(1),
            Some("0000000000000000"),
            "{handler}: {blocked}"
        );
        let started = std::time::Instant::now();
        node.client()
            .await
            .stop_container(proto::StopContainerRequest {
                container_id: quitter.clone(),
                timeout: 5,
            })
            .await
            .unwrap();
        let status = node.wait_exited(&quitter).await;
        assert_eq!(status.exit_code, 9, "{handler}: {status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{handler}: the stop signal did not end it; the timeout did"
        );
        wait_log_line(&log, "got QUIT").await;

        // ReopenContainerLog: after a rename, new lines go to a fresh file.
        let talker = node
            .run(
                &pod,
                "talker",
                "mkfifo /tmp/say; while true; do cat /tmp/say; done",
            )
            .await;
        let log = log_path(&node, &pod_name, "talker");
        sh(&node, &talker, "echo before > /tmp/say").await;
        wait_log_line(&log, "before").await;
        let rotated = log.with_extension("log.1");
        std::fs::rename(&log, &rotated).unwrap();
        node.client()
            .await
            .reopen_container_log(proto::ReopenContainerLogRequest {
                container_id: talker.clone(),
            })
            .await
            .unwrap();
        assert!(
            log.exists(),
            "{handler}: the new file exists when the call returns"
        );
        sh(&node, &talker, "echo after > /tmp/say").await;
        let text = wait_log_line(&log, "after").await;
        assert!(!text.contains("before"), "{handler}: {text}");
        let old = read_log(&rotated);
        assert!(
            old.contains(" F before") && !old.contains("after"),
            "{handler}: {old}"
        );

        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

// ---------------------------------------------------------------------------
// 11. Seccomp
// ---------------------------------------------------------------------------

#[tokio::test]
async fn seccomp_runtime_default_unconfined_and_localhost() {
    let node = Node::start().await;
    let leftovers = Leftovers::new(&node);
    let profiles = tempfile::tempdir().unwrap();
    let localhost = profiles.path().join("no-mkdir.json");
    std::fs::write(
        &localhost,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    for handler in HANDLERS {
        let pod = node.run_pod(&format!("seccomp-{handler}"), handler).await;
        leftovers.track(&pod);
        let with_profile = |name: &str, profile_type: ProfileType, localhost_ref: &str| {
            let mut config = node.container_config(name, "exec sleep 1000");
            security(&mut config).seccomp = Some(proto::SecurityProfile {
                profile_type: profile_type as i32,
                localhost_ref: localhost_ref.into(),
            });
            config
        };

        // youki 0.7 cannot load a seccomp filter into a container without
        // no_new_privs: libseccomp fails with ECANCELED ("failed to load
        // seccomp context"), seemingly because it loads the filter after
        // dropping CAP_SYS_ADMIN. Only Unconfined is checked for youki.
        if handler == "youki" {
            let free = run_config(
                &node,
                &pod,
                with_profile("unconfined", ProfileType::Unconfined, ""),
            )
            .await;
            let status = sh(&node, &free, "cat /proc/self/status").await;
            assert_eq!(status_field(&status, "Seccomp"), "0", "{handler}");
            node.remove_pod(&pod).await;
            continue;
        }
        let confined = run_config(
            &node,
            &pod,
            with_profile("default", ProfileType::RuntimeDefault, ""),
        )
        .await;
        let status = sh(&node, &confined, "cat /proc/self/status").await;
        assert_eq!(status_field(&status, "Seccomp"), "2", "{handler}");
        // A new user namespace needs no capability, only the profile forbids it.
        let (code, text) = sh_status(&node, &confined, "unshare -U true").await;
        assert_ne!(
            code, 0,
            "{handler}: RuntimeDefault allowed unshare(CLONE_NEWUSER)"
        );
        assert!(
            text.contains("Operation not permitted"),
            "{handler}: {text}"
        );

        let free = run_config(
            &node,
            &pod,
            with_profile("unconfined", ProfileType::Unconfined, ""),
        )
        .await;
        let status = sh(&node, &free, "cat /proc/self/status").await;
        assert_eq!(status_field(&status, "Seccomp"), "0", "{handler}");
        let (code, text) = sh_status(&node, &free, "unshare -U true").await;
        assert_eq!(code, 0, "{handler}: unconfined: {text}");

        let custom = run_config(
            &node,
            &pod,
            with_profile(
                "localhost",
                ProfileType::Localhost,
                localhost.to_str().unwrap(),
            ),
        )
        .await;
        let (code, text) = sh_status(&node, &custom, "mkdir /tmp/d").await;
        assert_ne!(code, 0, "{handler}: the localhost profile did not apply");
        assert!(
            text.contains("Operation not permitted"),
            "{handler}: {text}"
        );
        sh(&node, &custom, "touch /tmp/f").await;

        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

#[tokio::test]
async fn a_privileged_container_gets_a_writable_sys() {
    let node = Node::start().await;
    let leftovers = Leftovers::new(&node);
    for handler in HANDLERS {
        let mut pod_config = node.pod_config(&format!("sysfs-{handler}"));
        pod_security(&mut pod_config).privileged = true;
        let pod = node.run_pod_with(pod_config, handler).await;
        leftovers.track(&pod);
        let mut config = node.container_config("privileged", "exec sleep 1000");
        security(&mut config).privileged = true;
        let privileged = run_config(&node, &pod, config).await;
        let mounts = sh(&node, &privileged, "mount").await;
        let sys = mounts
            .lines()
            .find(|l| l.starts_with("sysfs on /sys type sysfs"))
            .unwrap_or_else(|| panic!("{handler}: {mounts}"));
        assert!(sys.contains("(rw,"), "{handler}: {sys}");
        // Privileged containers get the host's device nodes.
        let devices = sh(&node, &privileged, "ls /dev").await;
        assert!(
            devices.lines().any(|d| d == "loop-control"),
            "{handler}: {devices}"
        );
        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}
