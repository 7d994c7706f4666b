//! Containers whose `rcri monitor` is killed (`kill -9`, as an operator or
//! the OOM killer would): rcri asks the runtime instead, while it runs and
//! when it restarts. Needs root and runc (`make test` installs them).

mod common;

use std::time::{Duration, Instant};

use common::node::Node;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rcri::proto;

/// The pid of the live monitor whose command line names `id` (its
/// `--config …/<id>/monitor.json`).
fn monitor_of(id: &str) -> i32 {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(" monitor ") && cmdline.contains(&format!("/{id}/monitor.json")) {
            found.push(pid);
        }
    }
    assert_eq!(found.len(), 1, "monitors of {id}: {found:?}");
    found[0]
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat[stat.rfind(')').unwrap() + 1..].trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

/// `kill -9 pid`, and waits until it is dead (a zombie counts).
fn kill_9(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "{pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The container's init pid, from the verbose status.
async fn container_pid(node: &Node, id: &str) -> i32 {
    let response = node
        .client()
        .await
        .container_status(proto::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&response.info["info"]).unwrap();
    info["pid"].as_i64().unwrap() as i32
}

async fn pod_status(node: &Node, pod: &str) -> (i32, i32) {
    let response = node
        .client()
        .await
        .pod_sandbox_status(proto::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&response.info["info"]).unwrap();
    (
        response.status.unwrap().state,
        info["pid"].as_i64().unwrap() as i32,
    )
}

/// Polls the status until the container has exited (at most 15 s).
async fn wait_exited(node: &Node, id: &str) -> proto::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = node.status(id).await;
        if status.state == proto::ContainerState::ContainerExited as i32 {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} is still {:?}",
            status.state
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_lost(status: &proto::ContainerStatus) {
    assert_eq!(status.exit_code, 255, "{status:?}");
    assert_eq!(status.reason, "Error");
    assert!(
        status.message.contains("monitor") && status.message.contains("was lost"),
        "{}",
        status.message
    );
    assert!(status.finished_at > 0);
}

async fn stop_container(node: &Node, id: &str, timeout: i64) {
    node.client()
        .await
        .stop_container(proto::StopContainerRequest {
            container_id: id.into(),
            timeout,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_container_whose_monitor_and_process_die_is_reported_exited() {
    let node = Node::start().await;
    let pod = node.run_pod("orphans", "").await;
    let app = node.run(&pod, "app", "exec sleep 1000").await;
    let pid = container_pid(&node, &app).await;

    kill_9(monitor_of(&app));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        node.status(&app).await.state,
        proto::ContainerState::ContainerRunning as i32,
        "the container itself still runs"
    );
    kill_9(pid);
    let status = wait_exited(&node, &app).await;
    assert_lost(&status);
    assert_eq!(node.status(&app).await.message, status.message, "it sticks");

    // The sandbox the same way: the pod is no longer ready.
    let (state, pause) = pod_status(&node, &pod).await;
    assert_eq!(state, proto::PodSandboxState::SandboxReady as i32);
    kill_9(monitor_of(&pod));
    kill_9(pause);
    let deadline = Instant::now() + Duration::from_secs(15);
    while pod_status(&node, &pod).await.0 != proto::PodSandboxState::SandboxNotready as i32 {
        assert!(Instant::now() < deadline, "the pod is still ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    node.remove_pod(&pod).await;
    node.assert_clean();
}

#[tokio::test]
async fn monitors_lost_while_rcri_is_down_are_found_at_restart() {
    let mut node = Node::start().await;
    let pod = node.run_pod("restarted", "").await;
    let gone = node.run(&pod, "gone", "exec sleep 1000").await;
    let kept = node
        .run(
            &pod,
            "kept",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        )
        .await;
    let gone_pid = container_pid(&node, &gone).await;

    let (status, _) = node.server.stop_with(Signal::SIGKILL);
    assert!(!status.success());
    kill_9(monitor_of(&gone));
    kill_9(gone_pid);
    kill_9(monitor_of(&kept));
    node.server = node.sandbox.serve();

    // Recovery has already decided: no polling needed.
    let status = node.status(&gone).await;
    assert_eq!(
        status.state,
        proto::ContainerState::ContainerExited as i32,
        "{status:?}"
    );
    assert_lost(&status);
    assert_eq!(
        node.status(&kept).await.state,
        proto::ContainerState::ContainerRunning as i32
    );
    assert!(
        node.server
            .log_text()
            .contains("its output is no longer logged"),
        "a warning for the container that still runs"
    );

    // A graceful stop sees the exit through the runtime.
    let started = Instant::now();
    stop_container(&node, &kept, 20).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stop did not wait its whole timeout: {:?}",
        started.elapsed()
    );
    let status = node.status(&kept).await;
    assert_eq!(status.state, proto::ContainerState::ContainerExited as i32);
    assert_lost(&status);

    node.remove_pod(&pod).await;
    node.assert_clean();
}

#[tokio::test]
async fn a_container_that_outlives_its_monitor_stays_running_and_can_be_stopped() {
    let node = Node::start().await;
    let pod = node.run_pod("outlived", "").await;
    let app = node.run(&pod, "app", "exec sleep 1000").await;
    let pid = container_pid(&node, &app).await;

    kill_9(monitor_of(&app));
    // Long enough for the runtime to be asked more than once.
    for _ in 0..10 {
        assert_eq!(
            node.status(&app).await.state,
            proto::ContainerState::ContainerRunning as i32
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(alive(pid));
    assert!(
        node.server
            .log_text()
            .contains("its output is no longer logged"),
        "the loss is logged"
    );
    assert_eq!(
        node.out(&app, &["echo", "still here"]).await,
        "still here\n"
    );

    stop_container(&node, &app, 0).await;
    let status = node.status(&app).await;
    assert_eq!(status.state, proto::ContainerState::ContainerExited as i32);
    assert!(!alive(pid));

    node.client()
        .await
        .remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    node.assert_clean();
}
