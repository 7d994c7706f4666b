//! Streaming exec with a TTY (`kubectl exec -it`, `crictl exec -it`) over
//! SPDY/3.1, for runc and crun: the command runs on a terminal, typed input
//! round-trips, resize messages set the window size, closing stdin types
//! EOF, and the exit code reaches the error stream. Needs root, runc, crun,
//! docker-registry and busybox-static (`make test` installs them).

mod common;

use common::node::{HANDLERS, Node};
use common::spdy_client::{SUCCESS, open_session};
use rcri::proto;

async fn exec_tty_url(node: &Node, id: &str, cmd: &[&str]) -> String {
    node.client()
        .await
        .exec(proto::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: true,
            stdin: true,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url
}

#[tokio::test]
async fn exec_with_a_tty_under_each_handler() {
    let node = Node::start().await;
    for handler in HANDLERS {
        let pod = node.run_pod(&format!("exec-tty-{handler}"), handler).await;
        let app = node.run(&pod, "app", "exec sleep 1000").await;

        // An interactive shell: a terminal, resizes before and after the
        // start, the exit code.
        let url = exec_tty_url(&node, &app, &["sh"]).await;
        let mut session = open_session(&url, true, true).await;
        session.resize(100, 40).await;
        session.send("tty; stty size\n").await;
        session.wait_stdout("/dev/pts/").await;
        session.wait_stdout("40 100").await;
        session.resize(132, 50).await;
        session.send("stty size; exit 7\n").await;
        session.wait_stdout("50 132").await;
        let error = session.wait_end().await;
        assert!(error.contains("exit code 7"), "{handler}: {error}");

        // Stdin round trip; closing stdin ends cat (EOF typed on the terminal).
        let url = exec_tty_url(&node, &app, &["cat"]).await;
        let mut session = open_session(&url, true, true).await;
        session.send("round trip\n").await;
        // The terminal echoes the line, then cat writes it back.
        session.wait_stdout("round trip\r\nround trip\r\n").await;
        session.client.fin(session.stdin.unwrap()).await;
        assert_eq!(session.wait_end().await, SUCCESS, "{handler}");

        // A program that does not exist: the runtime's error, not a hang.
        let url = exec_tty_url(&node, &app, &["/no/such/program"]).await;
        let mut session = open_session(&url, true, true).await;
        let error = session.wait_end().await;
        assert!(error.contains("Failure"), "{handler}: {error}");

        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}
