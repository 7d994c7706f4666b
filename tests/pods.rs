//! Pods and containers end to end, under the real runc and crun: the same
//! tests run for each handler. Needs root, runc, crun, docker-registry and
//! busybox-static (`make test` installs them).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use common::node::{HANDLERS, Node, read_log};
use rcri::proto;
use tonic::Code;

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
        "runtime handler \"kata\" is not configured; configured handlers: crun, runc, youki"
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
