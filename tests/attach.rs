//! TTY containers and Attach, for runc and crun: a TTY container gets a
//! terminal and its output in the CRI log; attach sees a running
//! container's output, feeds its stdin (`stdin_once` closes it), and the
//! RPC refuses what cannot work. Needs root, runc, crun, docker-registry and
//! busybox-static (`make test` installs them).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::node::{HANDLERS, Node, read_log};
use common::spdy_client::{SUCCESS, open_session};
use rcri::proto;
use tonic::Code;

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

async fn attach_url(
    node: &Node,
    id: &str,
    stdin: bool,
    tty: bool,
) -> Result<String, tonic::Status> {
    node.client()
        .await
        .attach(proto::AttachRequest {
            container_id: id.into(),
            stdin,
            tty,
            stdout: true,
            stderr: !tty,
        })
        .await
        .map(|r| r.into_inner().url)
}

#[tokio::test]
async fn attach_sees_output_feeds_stdin_and_stdin_once_closes_it() {
    let node = Node::start().await;
    for handler in HANDLERS {
        let pod = node.run_pod(&format!("attach-{handler}"), handler).await;

        // Output of a running container, both streams.
        let ticker = node
            .run(
                &pod,
                "ticker",
                "i=0; while :; do echo tick $i; echo tock $i >&2; i=$((i+1)); sleep 0.1; done",
            )
            .await;
        let url = attach_url(&node, &ticker, false, false).await.unwrap();
        assert!(url.contains("/attach/"), "{url}");
        let mut session = open_session(&url, false, false).await;
        session.wait_stdout("tick").await;
        let stderr = session.stderr.unwrap();
        session
            .client
            .until(&mut session.received, Duration::from_secs(20), |r| {
                r.text(stderr).contains("tock")
            })
            .await;
        assert!(!session.received.text(session.stdout).contains("tock"));
        drop(session);

        // Stdin round trip; with stdin_once the first attach that closes
        // stdin ends the container's stdin: cat exits.
        let mut config = node.container_config("cat", "exec cat");
        config.stdin = true;
        config.stdin_once = true;
        let cat = create_with(&node, &pod, config).await.unwrap();
        let url = attach_url(&node, &cat, true, false).await.unwrap();
        let mut session = open_session(&url, true, false).await;
        session.send("ping\n").await;
        session.wait_stdout("ping\n").await;
        session.client.fin(session.stdin.unwrap()).await;
        let error = session.wait_end().await;
        assert_eq!(error, SUCCESS, "{handler}");
        let status = node.wait_exited(&cat).await;
        assert_eq!(status.exit_code, 0, "{handler}: cat saw EOF");

        // Refusals.
        let code = |r: Result<String, tonic::Status>| r.unwrap_err().code();
        assert_eq!(
            code(attach_url(&node, "no-such-container", false, false).await),
            Code::NotFound
        );
        assert_eq!(
            code(attach_url(&node, &ticker, true, false).await),
            Code::InvalidArgument,
            "stdin on a container without stdin"
        );
        assert_eq!(
            code(attach_url(&node, &ticker, false, true).await),
            Code::InvalidArgument,
            "tty on a container without one"
        );
        assert_eq!(
            code(attach_url(&node, &cat, false, false).await),
            Code::FailedPrecondition,
            "an exited container"
        );
        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

#[tokio::test]
async fn attach_to_a_tty_container_resizes_and_survives_an_rcri_restart() {
    let mut node = Node::start().await;
    for handler in HANDLERS {
        let pod = node
            .run_pod(&format!("attach-tty-{handler}"), handler)
            .await;
        let mut config = node.container_config("shell", "exec sh");
        config.tty = true;
        config.stdin = true;
        let shell = create_with(&node, &pod, config).await.unwrap();

        let url = attach_url(&node, &shell, true, true).await.unwrap();
        let mut session = open_session(&url, true, true).await;
        session.resize(100, 40).await;
        session.send("stty size; tty\n").await;
        session.wait_stdout("40 100").await;
        session.wait_stdout("/dev/pts/").await;
        drop(session);

        // The monitor owns the attach socket: a new rcri attaches again.
        let (_, log) = node.server.stop_with(nix::sys::signal::Signal::SIGKILL);
        drop(log);
        node.server = node.sandbox.serve();
        let url = attach_url(&node, &shell, true, true).await.unwrap();
        let mut session = open_session(&url, true, true).await;
        session.resize(120, 50).await;
        session.send("stty size; exit 0\n").await;
        session.wait_stdout("50 120").await;
        assert_eq!(session.wait_end().await, SUCCESS);
        node.wait_exited(&shell).await;
        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

#[tokio::test]
async fn attach_over_websocket() {
    use common::spdy_client::SUCCESS;
    use common::ws_client::{self, WsClient};
    let node = Node::start().await;
    let pod = node.run_pod("attach-ws", "runc").await;
    let mut config = node.container_config("cat", "exec cat");
    config.stdin = true;
    config.stdin_once = true;
    let cat = create_with(&node, &pod, config).await.unwrap();
    let url = attach_url(&node, &cat, true, false).await.unwrap();
    let mut client = WsClient::connect(&url, &["v5.channel.k8s.io"])
        .await
        .unwrap();
    client.send_channel(0, b"over websocket\n").await;
    // v5 closes the stdin channel with [255, 0]: stdin_once ends cat.
    client.send(ws_client::BINARY, &[255, 0]).await;
    let mut channels: std::collections::HashMap<u8, Vec<u8>> = Default::default();
    while let Some(frame) = client.recv().await {
        if frame.opcode == ws_client::BINARY
            && let Some((channel, data)) = frame.payload.split_first()
        {
            channels
                .entry(*channel)
                .or_default()
                .extend_from_slice(data);
        }
    }
    let mut text =
        |c: u8| String::from_utf8_lossy(&channels.remove(&c).unwrap_or_default()).into_owned();
    assert_eq!(text(1), "over websocket\n");
    assert_eq!(text(3), SUCCESS);
    assert_eq!(node.wait_exited(&cat).await.exit_code, 0);
    node.remove_pod(&pod).await;
    node.assert_clean();
}
