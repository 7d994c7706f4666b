//! A node for pod tests: rcri with runc (default), crun and youki, a registry
//! with a busybox image already pulled, and helpers for the CRI calls tests
//! make.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::registry::{ImageBuilder, TestRegistry};
use super::{Sandbox, Server, require_tool};
use rcri::proto::{self, runtime_service_client::RuntimeServiceClient};
use tonic::transport::Channel;

/// The runc-compatible runtimes every lifecycle test runs under.
pub const HANDLERS: [&str; 3] = ["runc", "crun", "youki"];

pub struct Node {
    pub sandbox: Sandbox,
    pub server: Server,
    _registry: TestRegistry,
    pub image: String,
    pub logs: tempfile::TempDir,
}

impl Node {
    /// rcri with runc (default), crun and youki, and a pulled busybox image.
    pub async fn start() -> Node {
        Self::start_with("").await
    }

    /// Like `start`, with more configuration (e.g. other handlers) appended.
    pub async fn start_with(extra_config: &str) -> Node {
        let registry = TestRegistry::start();
        let sandbox = Sandbox::new();
        sandbox.write_config(&format!(
            "default_handler = \"runc\"\n[handlers.runc]\nruntime_path = \"{}\"\n[handlers.crun]\nruntime_path = \"{}\"\n[handlers.youki]\nruntime_path = \"{}\"\n{extra_config}",
            require_tool("runc").display(),
            require_tool("crun").display(),
            require_tool("youki").display()
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

    pub async fn client(&self) -> RuntimeServiceClient<Channel> {
        self.server.runtime().await
    }

    pub fn pod_config(&self, name: &str) -> proto::PodSandboxConfig {
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

    pub async fn run_pod(&self, name: &str, handler: &str) -> String {
        self.run_pod_with(self.pod_config(name), handler).await
    }

    /// Runs a pod from a config the test adjusted (see `pod_config`).
    pub async fn run_pod_with(&self, config: proto::PodSandboxConfig, handler: &str) -> String {
        std::fs::create_dir_all(&config.log_directory).unwrap();
        self.client()
            .await
            .run_pod_sandbox(proto::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: handler.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox on {handler:?}: {}", e.message()))
            .into_inner()
            .pod_sandbox_id
    }

    pub fn container_config(&self, name: &str, script: &str) -> proto::ContainerConfig {
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

    pub async fn create(
        &self,
        pod: &str,
        name: &str,
        script: &str,
    ) -> Result<String, tonic::Status> {
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

    pub async fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        self.client()
            .await
            .start_container(proto::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map(drop)
    }

    pub async fn run(&self, pod: &str, name: &str, script: &str) -> String {
        let id = self.create(pod, name, script).await.unwrap();
        self.start_container(&id).await.unwrap();
        id
    }

    pub async fn status(&self, id: &str) -> proto::ContainerStatus {
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

    pub async fn exec(
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

    pub async fn out(&self, id: &str, cmd: &[&str]) -> String {
        let response = self.exec(id, cmd, 10).await.unwrap();
        assert_eq!(
            response.exit_code,
            0,
            "{cmd:?}: {}",
            String::from_utf8_lossy(&response.stderr)
        );
        String::from_utf8(response.stdout).unwrap()
    }

    pub async fn wait_exited(&self, id: &str) -> proto::ContainerStatus {
        for _ in 0..300 {
            let status = self.status(id).await;
            if status.state == proto::ContainerState::ContainerExited as i32 {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("container {id} did not exit");
    }

    pub async fn remove_pod(&self, pod: &str) {
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
    pub fn assert_clean(&self) {
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

pub fn processes_mentioning(text: &str) -> Vec<String> {
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

pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Node {
    /// Pushes `image` to the node's registry as `test/<name>:1`, pulls it and
    /// returns its reference, for a container config's `image`.
    pub async fn add_image(&self, name: &str, image: &ImageBuilder) -> String {
        let repo = format!("test/{name}");
        self._registry.push(&repo, "1", &image.build_oci()).await;
        let reference = self._registry.reference(&repo, "1");
        self.server
            .images()
            .await
            .pull_image(proto::PullImageRequest {
                image: Some(proto::ImageSpec {
                    image: reference.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        reference
    }
}

/// The container's security context, created if absent.
pub fn security(config: &mut proto::ContainerConfig) -> &mut proto::LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The pod's security context, created if absent.
pub fn pod_security(
    config: &mut proto::PodSandboxConfig,
) -> &mut proto::LinuxSandboxSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}
