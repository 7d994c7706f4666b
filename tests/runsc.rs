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

#[tokio::test]
async fn gvisor_exec_with_a_tty_and_attach_with_stdin() {
    use common::spdy_client::open_session;
    let node = Node::start_with(&runsc_handler()).await;
    let pod = node.run_pod("gvisor-streams", "runsc").await;
    let app = node.run(&pod, "app", "exec sleep 1000").await;

    // exec -it: a terminal whose size follows resize messages, the exit code.
    let url = node
        .client()
        .await
        .exec(proto::ExecRequest {
            container_id: app.clone(),
            cmd: vec!["sh".into()],
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut session = open_session(&url, true, true).await;
    session.resize(90, 30).await;
    session.send("stty size; exit 4\n").await;
    session.wait_stdout("30 90").await;
    let error = session.wait_end().await;
    assert!(error.contains("exit code 4"), "{error}");

    // Attach with stdin to an app container: its stdin, like its output,
    // comes through `runsc start`.
    let mut config = node.container_config("cat", "exec cat");
    config.stdin = true;
    config.stdin_once = true;
    let cat = node
        .client()
        .await
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    node.start_container(&cat).await.unwrap();
    let url = node
        .client()
        .await
        .attach(proto::AttachRequest {
            container_id: cat.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut session = open_session(&url, true, false).await;
    session.send("inside gvisor\n").await;
    session.wait_stdout("inside gvisor\n").await;
    // Not checked here: closing stdin (stdin_once) does not reach a gVisor
    // container as end-of-file yet; runc, crun and youki do see it.
    drop(session);

    node.remove_pod(&pod).await;
    node.assert_clean();
}
