//! TTY containers and Attach, for runc and crun: a TTY container gets a
//! terminal and its output in the CRI log; attach sees a running
//! container's output, feeds its stdin (`stdin_once` closes it), and the
//! RPC refuses what cannot work. Needs root, runc, crun, docker-registry and
//! busybox-static (`make test` installs them).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::node::{HANDLERS, Node, read_log};
use rcri::proto;

fn log_path(node: &Node, pod_name: &str, container: &str) -> PathBuf {
    PathBuf::from(node.pod_config(pod_name).log_directory).join(format!("{container}.log"))
}

async fn wait_for_log(path: &std::path::Path, text: &str) -> String {
    for _ in 0..250 {
        let log = read_log(path);
        if log.contains(text) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{text:?} never reached {}: {}",
        path.display(),
        read_log(path)
    );
}

async fn create_with(
    node: &Node,
    pod: &str,
    config: proto::ContainerConfig,
) -> Result<String, tonic::Status> {
    let id = node
        .client()
        .await
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: None,
        })
        .await?
        .into_inner()
        .container_id;
    node.start_container(&id).await?;
    Ok(id)
}

#[tokio::test]
async fn tty_containers_get_a_terminal_and_log_its_output() {
    let node = Node::start().await;
    for handler in HANDLERS {
        let pod_name = format!("tty-{handler}");
        let pod = node.run_pod(&pod_name, handler).await;
        let mut config = node.container_config(
            "app",
            "tty; test -t 0 && test -t 1 && echo stdio-is-a-terminal; \
             while [ ! -e /tmp/go ]; do sleep 0.05; done; echo late; exec sleep 1000",
        );
        config.tty = true;
        let id = create_with(&node, &pod, config).await.unwrap();
        let log = wait_for_log(&log_path(&node, &pod_name, "app"), "stdio-is-a-terminal").await;
        assert!(log.contains(" stdout F /dev/pts/"), "{handler}: {log}");
        assert!(
            !log.contains(" stderr "),
            "{handler}: a TTY has only stdout: {log}"
        );
        // Output a TTY container writes later still arrives; exec works.
        node.out(&id, &["touch", "/tmp/go"]).await;
        wait_for_log(&log_path(&node, &pod_name, "app"), "stdout F late").await;
        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}
