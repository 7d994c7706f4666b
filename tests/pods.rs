//! Pods and containers end to end, under the real runc and crun: the same
//! tests run for each handler. Needs root, runc, crun, docker-registry and
//! busybox-static (`make test` installs them).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::registry::{ImageBuilder, TestRegistry};
use common::{Sandbox, Server, require_tool};
use rcri::proto::{self, runtime_service_client::RuntimeServiceClient};
use tonic::Code;
use tonic::transport::Channel;

const HANDLERS: [&str; 2] = ["runc", "crun"];

struct Node {
    sandbox: Sandbox,
    server: Server,
    _registry: TestRegistry,
    image: String,
    logs: tempfile::TempDir,
}

impl Node {
    /// rcri with runc (default) and crun, and a pulled busybox image.
    async fn start() -> Node {
        let registry = TestRegistry::start();
        let sandbox = Sandbox::new();
        sandbox.write_config(&format!(
            "default_handler = \"runc\"\n[handlers.runc]\nruntime_path = \"{}\"\n[handlers.crun]\nruntime_path = \"{}\"\n",
            require_tool("runc").display(),
            require_tool("crun").display()
        ));
        let server = sandbox.serve();
        registry
            .push("test/busybox", "1", &ImageBuilder::busybox().build_oci())
            .await;
        let image = registry.reference("test/busybox", "1");
        server
            .images()
            .await
            .pull_image(proto::PullImageRequest {
                image: Some(proto::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        Node {
            sandbox,
            server,
            _registry: registry,
            image,
            logs: tempfile::tempdir().unwrap(),
        }
    }

    async fn client(&self) -> RuntimeServiceClient<Channel> {
        self.server.runtime().await
    }

    fn pod_config(&self, name: &str) -> proto::PodSandboxConfig {
        proto::PodSandboxConfig {
            metadata: Some(proto::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: format!("{name}-host"),
            log_directory: self.logs.path().join(name).display().to_string(),
            dns_config: Some(proto::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            labels: HashMap::from([("app".into(), name.into())]),
            ..Default::default()
        }
    }

    async fn run_pod(&self, name: &str, handler: &str) -> String {
        let config = self.pod_config(name);
        std::fs::create_dir_all(&config.log_directory).unwrap();
        self.client()
            .await
            .run_pod_sandbox(proto::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: handler.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id
    }

    fn container_config(&self, name: &str, script: &str) -> proto::ContainerConfig {
        proto::ContainerConfig {
            metadata: Some(proto::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(proto::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}.log"),
            labels: HashMap::from([("container".into(), name.into())]),
            ..Default::default()
        }
    }

    async fn create(&self, pod: &str, name: &str, script: &str) -> Result<String, tonic::Status> {
        self.client()
            .await
            .create_container(proto::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(self.container_config(name, script)),
                sandbox_config: None,
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    async fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        self.client()
            .await
            .start_container(proto::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map(drop)
    }

    async fn run(&self, pod: &str, name: &str, script: &str) -> String {
        let id = self.create(pod, name, script).await.unwrap();
        self.start_container(&id).await.unwrap();
        id
    }

    async fn status(&self, id: &str) -> proto::ContainerStatus {
        self.client()
            .await
            .container_status(proto::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
    }

    async fn exec(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<proto::ExecSyncResponse, tonic::Status> {
        self.client()
            .await
            .exec_sync(proto::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn out(&self, id: &str, cmd: &[&str]) -> String {
        let response = self.exec(id, cmd, 10).await.unwrap();
        assert_eq!(
            response.exit_code,
            0,
            "{cmd:?}: {}",
            String::from_utf8_lossy(&response.stderr)
        );
        String::from_utf8(response.stdout).unwrap()
    }

    async fn wait_exited(&self, id: &str) -> proto::ContainerStatus {
        for _ in 0..300 {
            let status = self.status(id).await;
            if status.state == proto::ContainerState::ContainerExited as i32 {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("container {id} did not exit");
    }

    async fn remove_pod(&self, pod: &str) {
        let mut client = self.client().await;
        client
            .stop_pod_sandbox(proto::StopPodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .unwrap();
        client
            .remove_pod_sandbox(proto::RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .unwrap();
    }

    /// Nothing of any pod is left: records, mounts, monitor processes.
    fn assert_clean(&self) {
        let root = self.sandbox.path();
        for dir in [
            "state/pods",
            "state/containers",
            "run/pods",
            "run/containers",
        ] {
            let left: Vec<_> = std::fs::read_dir(root.join(dir)).unwrap().collect();
            assert!(left.is_empty(), "{dir} is not empty: {left:?}");
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root_text = root.display().to_string();
        assert!(
            !mounts.contains(&root_text),
            "mounts left under {root_text}"
        );
        let monitors = processes_mentioning(&root_text);
        assert!(monitors.is_empty(), "processes left: {monitors:?}");
    }
}

fn processes_mentioning(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(text) && cmdline.contains("monitor") {
                found.push(cmdline);
            }
        }
    }
    found
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn a_pod_with_containers_runs_under_each_handler() {
    let node = Node::start().await;
    for handler in HANDLERS {
        let pod_name = format!("web-{handler}");
        let pod = node.run_pod(&pod_name, handler).await;
        let status = node
            .client()
            .await
            .pod_sandbox_status(proto::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(status.state, proto::PodSandboxState::SandboxReady as i32);
        assert_eq!(status.runtime_handler, handler);
        assert_eq!(status.labels["app"], pod_name);

        let app = node
            .run(&pod, "app", "trap '' TERM; echo hello; echo oops >&2; printf partial; while true; do sleep 1; done")
            .await;
        let sidecar = node.run(&pod, "sidecar", "exec sleep 1000").await;
        assert_eq!(
            node.status(&app).await.state,
            proto::ContainerState::ContainerRunning as i32
        );

        // Checked from inside: hostname, DNS, shared network namespace, the runtime.
        assert_eq!(
            node.out(&app, &["hostname"]).await.trim(),
            format!("{pod_name}-host")
        );
        let resolv = node.out(&app, &["cat", "/etc/resolv.conf"]).await;
        assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
        assert!(resolv.contains("options ndots:5"), "{resolv}");
        assert_eq!(
            node.out(&app, &["readlink", "/proc/self/ns/net"]).await,
            node.out(&sidecar, &["readlink", "/proc/self/ns/net"]).await,
            "containers of a pod share its network namespace"
        );
        assert_ne!(
            node.out(&app, &["readlink", "/proc/self/ns/mnt"]).await,
            node.out(&sidecar, &["readlink", "/proc/self/ns/mnt"]).await,
        );
        let cgroup = node.out(&app, &["cat", "/proc/self/cgroup"]).await;
        assert!(
            cgroup.contains(&app),
            "the container has its own cgroup: {cgroup}"
        );

        // ExecSync: exit codes, stderr, timeout.
        let failed = node
            .exec(&app, &["sh", "-c", "echo bad >&2; exit 3"], 10)
            .await
            .unwrap();
        assert_eq!(failed.exit_code, 3);
        assert_eq!(failed.stderr, b"bad\n");
        let timeout = node.exec(&app, &["sleep", "30"], 1).await.unwrap_err();
        assert_eq!(
            timeout.code(),
            Code::DeadlineExceeded,
            "{}",
            timeout.message()
        );
        assert!(
            node.out(&app, &["ps"])
                .await
                .lines()
                .all(|l| !l.contains("sleep 30")),
            "the timed-out command was killed"
        );
        let zombies = node
            .out(
                &app,
                &[
                    "sh",
                    "-c",
                    "cat /proc/[0-9]*/status | grep -c '^State:.Z' || true",
                ],
            )
            .await;
        assert_eq!(
            zombies.trim(),
            "0",
            "the killed command was reaped, not left a zombie"
        );

        // Logs in the CRI format.
        let log = PathBuf::from(node.pod_config(&pod_name).log_directory).join("app.log");
        let text = read_log(&log);
        assert!(
            text.lines().any(|l| l.ends_with(" stdout F hello")),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l.ends_with(" stderr F oops")),
            "{text}"
        );

        // Stop: the script ignores SIGTERM, so the timeout ends in SIGKILL.
        node.client()
            .await
            .stop_container(proto::StopContainerRequest {
                container_id: app.clone(),
                timeout: 1,
            })
            .await
            .unwrap();
        let exited = node.status(&app).await;
        assert_eq!(exited.state, proto::ContainerState::ContainerExited as i32);
        assert_eq!(exited.exit_code, 137);
        assert!(exited.finished_at >= exited.started_at);
        assert!(
            read_log(&log)
                .lines()
                .any(|l| l.ends_with(" stdout P partial")),
            "{}",
            read_log(&log)
        );

        // Lists and filters.
        let listed = node
            .client()
            .await
            .list_containers(proto::ListContainersRequest {
                filter: Some(proto::ContainerFilter {
                    pod_sandbox_id: pod.clone(),
                    label_selector: HashMap::from([("container".into(), "sidecar".into())]),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, sidecar);

        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

#[tokio::test]
async fn an_unknown_handler_is_refused_and_nothing_is_made() {
    let node = Node::start().await;
    let error = node
        .client()
        .await
        .run_pod_sandbox(proto::RunPodSandboxRequest {
            config: Some(node.pod_config("nope")),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        error.message(),
        "runtime handler \"kata\" is not configured; configured handlers: crun, runc"
    );
    node.assert_clean();
}

#[tokio::test]
async fn stop_and_remove_of_unknown_ids_succeed() {
    let node = Node::start().await;
    let mut client = node.client().await;
    client
        .stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: "does-not-exist".into(),
        })
        .await
        .unwrap();
    client
        .remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: "does-not-exist".into(),
        })
        .await
        .unwrap();
    client
        .remove_container(proto::RemoveContainerRequest {
            container_id: "does-not-exist".into(),
        })
        .await
        .unwrap();
    let error = client
        .container_status(proto::ContainerStatusRequest {
            container_id: "does-not-exist".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
}

#[tokio::test]
async fn a_runtime_failure_carries_the_runtime_s_own_words() {
    let node = Node::start().await;
    for handler in HANDLERS {
        let pod = node.run_pod(&format!("broken-{handler}"), handler).await;
        let mut config = node.container_config("broken", "");
        config.command = vec!["/no/such/binary".into()];
        let created = node
            .client()
            .await
            .create_container(proto::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config),
                sandbox_config: None,
            })
            .await;
        let error = match created {
            Err(error) => error,
            Ok(response) => node
                .start_container(&response.into_inner().container_id)
                .await
                .unwrap_err(),
        };
        assert!(
            error.message().contains("/no/such/binary"),
            "{handler}: {}",
            error.message()
        );
        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

#[tokio::test]
async fn containers_survive_a_kill_9_of_rcri() {
    let mut node = Node::start().await;
    let pod = node.run_pod("survivor", "").await;
    let long = node.run(&pod, "long", "exec sleep 1000").await;
    let short = node.run(&pod, "short", "sleep 1; exit 42").await;
    let pid_before = node.out(&long, &["sh", "-c", "echo $PPID"]).await;

    let (status, _) = node.server.stop_with(nix::sys::signal::Signal::SIGKILL);
    assert!(!status.success());
    tokio::time::sleep(Duration::from_millis(1500)).await; // `short` exits meanwhile
    node.server = node.sandbox.serve();

    assert_eq!(
        node.status(&long).await.state,
        proto::ContainerState::ContainerRunning as i32
    );
    assert_eq!(
        node.out(&long, &["sh", "-c", "echo $PPID"]).await,
        pid_before
    );
    let short_status = node.wait_exited(&short).await;
    assert_eq!(
        short_status.exit_code, 42,
        "the exit that happened while rcri was down"
    );
    let pods = node
        .client()
        .await
        .list_pod_sandbox(proto::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].id, pod);
    node.remove_pod(&pod).await;
    node.assert_clean();
}
