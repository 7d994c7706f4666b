//! gVisor through RuntimeClass: a pod whose handler is `runsc` runs as one
//! gVisor sandbox, beside runc and crun pods on the same rcri (the seed
//! scenario). Needs root and runsc from Debian's bookworm-backports, which
//! `make test` installs. runsc's flags come from the handler's config.

mod common;

use common::node::Node;
use common::require_tool;
use rcri::proto;

fn runsc_handler() -> String {
    format!(
        "[handlers.runsc]\nruntime_path = \"{}\"\nruntime_args = [\"--platform=systrap\", \"--network=host\"]\n",
        require_tool("runsc").display()
    )
}

#[tokio::test]
async fn runc_crun_and_runsc_pods_side_by_side() {
    let node = Node::start_with(&runsc_handler()).await;
    let mut pods = Vec::new();
    let mut kernels = Vec::new();
    let mut names = Vec::new();
    for handler in ["", "crun", "runsc"] {
        let name = format!(
            "seed-{}",
            if handler.is_empty() {
                "default"
            } else {
                handler
            }
        );
        let pod = node.run_pod(&name, handler).await;
        let app = node
            .run(
                &pod,
                "app",
                "echo started; echo warned >&2; exec sleep 1000",
            )
            .await;
        let sidecar = node.run(&pod, "sidecar", "exec sleep 1000").await;
        assert_eq!(
            node.status(&app).await.state,
            proto::ContainerState::ContainerRunning as i32
        );
        kernels.push(node.out(&app, &["cat", "/proc/version"]).await);
        assert_eq!(
            node.out(&sidecar, &["cat", "/proc/version"]).await,
            *kernels.last().unwrap(),
            "containers of a pod share its kernel"
        );
        pods.push((pod, app, handler));
        names.push(name);
    }
    let host = std::fs::read_to_string("/proc/version").unwrap();
    assert_eq!(kernels[0], host, "runc sees the host kernel");
    assert_eq!(kernels[1], host, "crun sees the host kernel");
    assert_ne!(kernels[2], host, "runsc does not");
    assert!(
        kernels[2].contains("4.4.0"),
        "gVisor reports its own kernel: {}",
        kernels[2]
    );
    // Every app container's output reaches its CRI log, a gVisor one's too
    // (its stdio comes from `runsc start`, which gets the monitor's FIFOs).
    for name in &names {
        let path = std::path::Path::new(&node.pod_config(name).log_directory).join("app.log");
        let mut log = String::new();
        for _ in 0..250 {
            log = common::node::read_log(&path);
            if log.contains(" stdout F started") && log.contains(" stderr F warned") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(log.contains(" stdout F started"), "{name}: {log:?}");
        assert!(log.contains(" stderr F warned"), "{name}: {log:?}");
    }
    let (_, gvisor_app, _) = &pods[2];

    // Stop a gVisor container on its own: its exit is seen although it runs
    // inside the sandbox process, not as the monitor's child.
    node.client()
        .await
        .stop_container(proto::StopContainerRequest {
            container_id: gvisor_app.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    let stopped = node.status(gvisor_app).await;
    assert_eq!(stopped.state, proto::ContainerState::ContainerExited as i32);

    for (pod, _, _) in &pods {
        node.remove_pod(pod).await;
    }
    node.assert_clean();
}
