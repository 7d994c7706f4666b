//! Streaming exec over SPDY/3.1 against the real server, with the small
//! SPDY client of `common::spdy_client` on rcri's frame codec. Needs root, runc, crun,
//! docker-registry and busybox-static (`make test` installs them).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::node::{HANDLERS, Node};
use common::processes_with;
use common::spdy_client::{SUCCESS, SpdyClient, V4, split_url, upgrade};
use rcri::proto;
use rcri::streaming::spdy::{self, Frame};
use tokio::io::AsyncWriteExt;
use tonic::Code;

#[derive(Debug, Default)]
struct Session {
    stdout: String,
    stderr: String,
    error: String,
    replies: usize,
    /// Server streams that ended with FIN.
    finished: usize,
    goaway: bool,
    window_updates: usize,
}

/// Runs one exec session: opens error, stdout, stderr (and stdin if
/// `stdin` is given, sending it then FIN), and collects everything.
async fn run_session(url: &str, stdin: Option<&[u8]>) -> Session {
    let mut client = upgrade(url, &[V4]).await.unwrap();
    let error = client.open("error").await;
    let stdin_id = match stdin {
        Some(_) => Some(client.open("stdin").await),
        None => None,
    };
    let stdout = client.open("stdout").await;
    let stderr = client.open("stderr").await;
    if let (Some(id), Some(data)) = (stdin_id, stdin) {
        client
            .send(Frame::Data {
                stream_id: id,
                flags: 0,
                data: data.to_vec(),
            })
            .await;
        client
            .send(Frame::Data {
                stream_id: id,
                flags: spdy::FLAG_FIN,
                data: Vec::new(),
            })
            .await;
    }
    client.send(Frame::Ping { id: 1 }).await;
    let mut session = Session::default();
    let mut data: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut pong = false;
    while let Some(frame) = client.recv().await {
        match frame {
            Frame::SynReply { .. } => session.replies += 1,
            Frame::Data {
                stream_id,
                flags,
                data: bytes,
            } => {
                data.entry(stream_id).or_default().extend(bytes);
                if flags & spdy::FLAG_FIN != 0 {
                    session.finished += 1;
                }
            }
            Frame::Ping { id: 1 } => pong = true,
            Frame::GoAway { .. } => session.goaway = true,
            // The server announces the stdin it consumed.
            Frame::WindowUpdate { .. } => session.window_updates += 1,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert!(pong, "PING is answered");
    let mut text = |id: u32| String::from_utf8(data.remove(&id).unwrap_or_default()).unwrap();
    session.stdout = text(stdout);
    session.stderr = text(stderr);
    session.error = text(error);
    session
}

async fn exec_url(
    node: &Node,
    container: &str,
    cmd: &[&str],
    stdin: bool,
) -> Result<String, tonic::Status> {
    node.client()
        .await
        .exec(proto::ExecRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin,
            stdout: true,
            stderr: true,
        })
        .await
        .map(|r| r.into_inner().url)
}

#[tokio::test]
async fn exec_streams_over_spdy_under_each_handler() {
    let node = Node::start().await;
    for handler in HANDLERS {
        let pod = node.run_pod(&format!("exec-{handler}"), handler).await;
        let app = node.run(&pod, "app", "exec sleep 1000").await;

        let url = exec_url(
            &node,
            &app,
            &["sh", "-c", "echo hello; echo err >&2"],
            false,
        )
        .await
        .unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let session = run_session(&url, None).await;
        assert_eq!(session.stdout, "hello\n", "{handler}: {session:?}");
        assert_eq!(session.stderr, "err\n", "{handler}: {session:?}");
        assert_eq!(session.error, SUCCESS, "{handler}: {session:?}");
        assert_eq!(session.replies, 3, "{handler}: {session:?}");
        assert_eq!(session.finished, 3, "{handler}: {session:?}");
        assert!(session.goaway, "{handler}: {session:?}");

        // A token works once.
        assert_eq!(upgrade(&url, &[V4]).await.err().map(|e| e.0), Some(404));

        let url = exec_url(&node, &app, &["sh", "-c", "exit 3"], false)
            .await
            .unwrap();
        let session = run_session(&url, None).await;
        assert_eq!(
            session.error,
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#,
            "{handler}"
        );

        let url = exec_url(&node, &app, &["cat"], true).await.unwrap();
        let input = "line one\nline two\n".repeat(1000);
        let session = run_session(&url, Some(input.as_bytes())).await;
        assert_eq!(session.stdout, input, "{handler}");
        assert_eq!(session.error, SUCCESS, "{handler}");
        assert!(session.window_updates > 0, "consumed stdin is announced");

        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

#[tokio::test]
async fn exec_urls_and_requests_are_checked() {
    let node = Node::start().await;
    let pod = node.run_pod("exec-checks", "runc").await;
    let app = node.run(&pod, "app", "exec sleep 1000").await;

    let url = exec_url(&node, &app, &["true"], false).await.unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    let wrong = format!("{base}/0123456789abcdef0123456789abcdef");
    assert_eq!(upgrade(&wrong, &[V4]).await.err().map(|e| e.0), Some(404));
    let (host, _) = split_url(&url);
    assert_eq!(
        upgrade(&format!("http://{host}/other"), &[V4])
            .await
            .err()
            .map(|e| e.0),
        Some(404)
    );
    // The wrong token did not use up the right one.
    let (code, body) = upgrade(&url, &["v9.channel.k8s.io"]).await.err().unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("unable to negotiate protocol"), "{body}");

    // An older protocol is chosen when it is the best offered.
    let url = exec_url(&node, &app, &["true"], false).await.unwrap();
    let client = upgrade(&url, &["v2.channel.k8s.io", "channel.k8s.io"]).await;
    assert!(client.is_ok());
    drop(client);

    let mut client = node.client().await;
    let mut request = proto::ExecRequest {
        container_id: app.clone(),
        cmd: vec!["sh".into()],
        tty: true,
        stdin: true,
        stdout: true,
        stderr: false,
    };
    // A TTY exec is accepted (tests/streaming_tty.rs runs it).
    let url = client.exec(request.clone()).await.unwrap().into_inner().url;
    assert!(url.contains("/exec/"), "{url}");
    request.tty = false;
    request.stdin = false;
    request.stdout = false;
    let error = client.exec(request.clone()).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    request.stdout = true;
    request.container_id = "nope".into();
    let error = client.exec(request).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");

    node.remove_pod(&pod).await;
    node.assert_clean();
}

#[tokio::test]
async fn broken_clients_end_the_session_and_the_command() {
    let node = Node::start().await;
    let pod = node.run_pod("exec-broken", "runc").await;
    let app = node.run(&pod, "app", "exec sleep 1000").await;

    // A malformed frame (SPDY version 2) gets GOAWAY with PROTOCOL_ERROR.
    let url = exec_url(&node, &app, &["true"], false).await.unwrap();
    let mut client = upgrade(&url, &[V4]).await.unwrap();
    client
        .stream
        .write_all(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1])
        .await
        .unwrap();
    assert_eq!(
        client.recv().await,
        Some(Frame::GoAway {
            last_good_stream_id: 0,
            status: spdy::goaway_status::PROTOCOL_ERROR
        })
    );
    assert_eq!(
        client.recv().await,
        None,
        "the server closes the connection"
    );

    // A client that goes away mid-command: the command is killed.
    // A duration of this run's own, so no other run's process is mistaken for it.
    let marker = format!("{}", 700_000 + std::process::id() % 100_000);
    let sleeping = format!("sleep {marker}");
    let url = exec_url(&node, &app, &["sleep", &marker], false)
        .await
        .unwrap();
    let mut client = upgrade(&url, &[V4]).await.unwrap();
    for kind in ["error", "stdout", "stderr"] {
        client.open(kind).await;
    }
    let mut running = false;
    for _ in 0..200 {
        if !processes_with(&sleeping).is_empty() {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(running, "the command started");
    drop(client);
    let mut gone = false;
    for _ in 0..250 {
        if processes_with(&sleeping).is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "left: {:?}", processes_with(&sleeping));

    // Large output streams through in order.
    let url = exec_url(
        &node,
        &app,
        &["sh", "-c", "seq 1 300000; echo done >&2"],
        false,
    )
    .await
    .unwrap();
    let session = run_session(&url, None).await;
    let expected: String = (1..=300000).map(|i| format!("{i}\n")).collect();
    assert!(session.stdout == expected, "{} bytes", session.stdout.len());
    assert_eq!(session.stderr, "done\n");
    assert_eq!(session.error, SUCCESS);

    node.remove_pod(&pod).await;
    node.assert_clean();
}

/// The next frame, or `None` if none arrives within `wait`.
async fn recv_within(client: &mut SpdyClient, wait: Duration) -> Option<Option<Frame>> {
    tokio::time::timeout(wait, client.recv()).await.ok()
}

#[tokio::test]
async fn flow_control_is_honoured_once_the_client_does_it() {
    let node = Node::start().await;
    let pod = node.run_pod("exec-flow", "runc").await;
    let app = node.run(&pod, "app", "exec sleep 1000").await;

    let url = exec_url(&node, &app, &["seq", "1", "100000"], false)
        .await
        .unwrap();
    let mut client = upgrade(&url, &[V4]).await.unwrap();
    // A small initial window: the server may send at most this per stream
    // until the client grants more.
    client
        .send(Frame::Settings {
            flags: 0,
            entries: vec![(spdy::settings_id::INITIAL_WINDOW_SIZE, 0, 1000)],
        })
        .await;
    let error = client.open("error").await;
    let stdout = client.open("stdout").await;
    client.open("stderr").await;
    let (mut received, mut granted, mut stalls) = (0usize, 1000usize, 0);
    let mut error_text = Vec::new();
    loop {
        match recv_within(&mut client, Duration::from_millis(300)).await {
            Some(Some(Frame::Data {
                stream_id, data, ..
            })) if stream_id == stdout => {
                received += data.len();
                assert!(
                    received <= granted,
                    "{received} bytes sent, {granted} granted"
                );
            }
            Some(Some(Frame::Data {
                stream_id, data, ..
            })) if stream_id == error => error_text.extend(data),
            Some(Some(Frame::GoAway { .. })) | Some(None) => break,
            Some(Some(_)) => {}
            None => {
                // Stalled: the window is used up. Grant more.
                assert_eq!(received, granted, "the server stalls only on a full window");
                stalls += 1;
                for stream_id in [stdout, 0] {
                    client
                        .send(Frame::WindowUpdate {
                            stream_id,
                            delta: 200_000,
                        })
                        .await;
                }
                granted += 200_000;
            }
        }
    }
    let expected: usize = (1..=100000).map(|i: u32| i.to_string().len() + 1).sum();
    assert_eq!(received, expected);
    assert!(stalls >= 1, "the small window held the output back");
    assert_eq!(String::from_utf8(error_text).unwrap(), SUCCESS);

    node.remove_pod(&pod).await;
    node.assert_clean();
}

#[tokio::test]
async fn idle_sessions_end_after_the_idle_timeout() {
    let node = Node::start_with("[streaming]\nidle_timeout = \"2s\"\n").await;
    let pod = node.run_pod("exec-idle", "runc").await;
    let app = node.run(&pod, "app", "exec sleep 1000").await;
    let marker = format!("{}", 800_000 + std::process::id() % 100_000);
    let sleeping = format!("sleep {marker}");
    let url = exec_url(&node, &app, &["sleep", &marker], false)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut client = upgrade(&url, &[V4]).await.unwrap();
    for kind in ["error", "stdout", "stderr"] {
        client.open(kind).await;
    }
    let mut goaway = false;
    while let Some(frame) = client.recv().await {
        goaway |= matches!(frame, Frame::GoAway { .. });
    }
    let elapsed = started.elapsed();
    assert!(goaway, "the server says goodbye");
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(20),
        "{elapsed:?}"
    );
    let mut gone = false;
    for _ in 0..250 {
        if processes_with(&sleeping).is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the idle session's command is stopped");
    node.remove_pod(&pod).await;
    node.assert_clean();
}
