//! Streaming exec over WebSocket (the Kubernetes channel protocols) against
//! the real server, with a WebSocket client written here. Needs root, runc,
//! crun, docker-registry and busybox-static (`make test` installs them).

mod common;

use std::collections::HashMap;

use base64::Engine;
use common::node::{HANDLERS, Node};
use common::processes_with;
use common::ws_client::{self, WsClient};
use rcri::proto;

const SUCCESS: &str = r#"{"metadata":{},"status":"Success"}"#;
const V5: &str = "v5.channel.k8s.io";

async fn exec_url(node: &Node, container: &str, cmd: &[&str], stdin: bool) -> String {
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
        .unwrap()
        .into_inner()
        .url
}

#[derive(Debug, Default)]
struct Session {
    channels: HashMap<u8, Vec<u8>>,
    close_code: Option<u16>,
    pongs: usize,
}

impl Session {
    fn text(&self, channel: u8) -> String {
        String::from_utf8(self.channels.get(&channel).cloned().unwrap_or_default()).unwrap()
    }
}

/// Reads everything until the server closes; base64 protocols are decoded.
async fn collect(client: &mut WsClient, base64: bool) -> Session {
    let mut session = Session::default();
    while let Some(frame) = client.recv().await {
        match frame.opcode {
            ws_client::BINARY if !base64 => {
                let (channel, data) = frame.payload.split_first().unwrap();
                session
                    .channels
                    .entry(*channel)
                    .or_default()
                    .extend_from_slice(data);
            }
            ws_client::TEXT if base64 => {
                let (digit, data) = frame.payload.split_first().unwrap();
                let data = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap();
                session
                    .channels
                    .entry(digit - b'0')
                    .or_default()
                    .extend(data);
            }
            ws_client::PONG => session.pongs += 1,
            ws_client::CLOSE => {
                session.close_code = frame
                    .payload
                    .get(..2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]));
            }
            other => panic!("unexpected frame {other:#x}: {frame:?}"),
        }
    }
    session
}

#[tokio::test]
async fn exec_over_websocket_under_each_handler() {
    let node = Node::start().await;
    for handler in HANDLERS {
        let pod = node.run_pod(&format!("ws-{handler}"), handler).await;
        let app = node.run(&pod, "app", "exec sleep 1000").await;

        // v5: output by channel, the status on channel 3, a normal close.
        let url = exec_url(
            &node,
            &app,
            &["sh", "-c", "echo hello; echo err >&2"],
            false,
        )
        .await;
        let mut client = WsClient::connect(&url, &[V5, "v4.channel.k8s.io"])
            .await
            .unwrap();
        assert_eq!(client.protocol.as_deref(), Some(V5));
        client.send(ws_client::PING, b"hb").await;
        let session = collect(&mut client, false).await;
        assert_eq!(session.text(1), "hello\n", "{handler}: {session:?}");
        assert_eq!(session.text(2), "err\n", "{handler}: {session:?}");
        assert_eq!(session.text(3), SUCCESS, "{handler}: {session:?}");
        assert_eq!(session.close_code, Some(1000), "{handler}");
        assert_eq!(session.pongs, 1, "{handler}: heartbeats are answered");

        // A token works once, whatever the transport.
        let (code, _) = WsClient::connect(&url, &[V5]).await.err().unwrap();
        assert_eq!(code, 404);

        // A non-zero exit is a v4 JSON status.
        let url = exec_url(&node, &app, &["sh", "-c", "exit 3"], false).await;
        let mut client = WsClient::connect(&url, &[V5]).await.unwrap();
        let session = collect(&mut client, false).await;
        assert!(
            session.text(3).contains(r#""reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}"#),
            "{handler}: {session:?}"
        );

        // stdin round trip; v5 closes the stdin channel with [255, 0].
        let url = exec_url(&node, &app, &["cat"], true).await;
        let mut client = WsClient::connect(&url, &[V5]).await.unwrap();
        let input = "line one\nline two\n".repeat(1000);
        for chunk in input.as_bytes().chunks(4000) {
            client.send_channel(0, chunk).await;
        }
        client.send(ws_client::BINARY, &[255, 0]).await;
        let session = collect(&mut client, false).await;
        assert_eq!(session.text(1), input, "{handler}");
        assert_eq!(session.text(3), SUCCESS, "{handler}");

        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

#[tokio::test]
async fn older_websocket_protocols_and_refusals() {
    let node = Node::start().await;
    let pod = node.run_pod("ws-old", "runc").await;
    let app = node.run(&pod, "app", "exec sleep 1000").await;

    // base64.channel.k8s.io: text frames, the channel as a digit; errors
    // are plain text before v4.
    let url = exec_url(&node, &app, &["sh", "-c", "echo out; exit 2"], false).await;
    let mut client = WsClient::connect(&url, &["base64.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(client.protocol.as_deref(), Some("base64.channel.k8s.io"));
    let session = collect(&mut client, true).await;
    assert_eq!(session.text(1), "out\n");
    assert_eq!(
        session.text(3),
        "command terminated with non-zero exit code: error executing command [sh -c echo out; exit 2], exit code 2"
    );

    // v4.channel.k8s.io: binary frames, JSON status.
    let url = exec_url(&node, &app, &["true"], false).await;
    let mut client = WsClient::connect(&url, &["v4.channel.k8s.io"])
        .await
        .unwrap();
    let session = collect(&mut client, false).await;
    assert_eq!(session.text(3), SUCCESS);

    // No subprotocol named: channel.k8s.io, and none named in the answer.
    let url = exec_url(&node, &app, &["echo", "plain"], false).await;
    let mut client = WsClient::connect(&url, &[]).await.unwrap();
    assert_eq!(client.protocol, None);
    let session = collect(&mut client, false).await;
    assert_eq!(session.text(1), "plain\n");
    assert_eq!(session.text(3), "");

    // An unknown subprotocol: 403 naming what the server accepts.
    let url = exec_url(&node, &app, &["true"], false).await;
    let (code, body) = WsClient::connect(&url, &["v9.channel.k8s.io"])
        .await
        .err()
        .unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("v5.channel.k8s.io"), "{body}");

    // A broken frame (unmasked) closes with 1002 and stops the command.
    // A duration of this run's own, so no other run's process is mistaken for it.
    let marker = format!("{}", 600_000 + std::process::id() % 100_000);
    let url = exec_url(&node, &app, &["sleep", &marker], false).await;
    let mut client = WsClient::connect(&url, &[V5]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    use tokio::io::AsyncWriteExt;
    client.stream.write_all(&[0x82, 0x01, 0x00]).await.unwrap();
    let session = collect(&mut client, false).await;
    assert_eq!(session.close_code, Some(1002), "{session:?}");
    let mut gone = false;
    for _ in 0..250 {
        if processes_with(&format!("sleep {marker}")).is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone, "the command of a broken session is killed");

    // Large output streams through in order.
    let url = exec_url(&node, &app, &["seq", "1", "300000"], false).await;
    let mut client = WsClient::connect(&url, &[V5]).await.unwrap();
    let session = collect(&mut client, false).await;
    let expected: String = (1..=300000).map(|i| format!("{i}\n")).collect();
    assert!(
        session.text(1) == expected,
        "{} bytes",
        session.text(1).len()
    );

    node.remove_pod(&pod).await;
    node.assert_clean();
}

#[tokio::test]
async fn the_streaming_server_serves_tls_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let node = Node::start_with(&format!(
        "[streaming]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        cert_file.display(),
        key_file.display()
    ))
    .await;
    let pod = node.run_pod("ws-tls", "runc").await;
    let app = node.run(&pod, "app", "exec sleep 1000").await;

    let url = exec_url(&node, &app, &["echo", "over tls"], false).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let (host, _) = ws_client::split_url(&url);

    // Plain HTTP to the TLS port gets no answer but a closed connection.
    let mut plain = tokio::net::TcpStream::connect(&host).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain
        .write_all(b"GET /exec/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        plain.read_to_end(&mut answer),
    )
    .await
    .expect("the server closes a connection that is not TLS");
    assert!(!answer.starts_with(b"HTTP/1.1 101"));

    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let mut client = WsClient::connect_over(Box::new(tls), &url, &[V5])
        .await
        .unwrap();
    let session = collect(&mut client, false).await;
    assert_eq!(session.text(1), "over tls\n");
    assert_eq!(session.text(3), SUCCESS);

    node.remove_pod(&pod).await;
    node.assert_clean();
}

/// Port-forward over WebSocket as client-go does it: SPDY frames tunnelled
/// in binary messages.
#[tokio::test]
async fn port_forward_tunnels_spdy_over_websocket() {
    use rcri::streaming::spdy::{Codec, Frame};
    let node = Node::start().await;
    let pod = node.run_pod("ws-pf", "runc").await;
    node.run(&pod, "echo", "exec busybox nc -ll -p 8080 -e cat")
        .await;
    let url = node
        .client()
        .await
        .port_forward(proto::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    // Only the tunnelling subprotocol is spoken on this route.
    let (code, _) = WsClient::connect(&url, &[V5]).await.err().unwrap();
    assert_eq!(code, 403);
    let url = node
        .client()
        .await
        .port_forward(proto::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let protocol = "SPDY/3.1+portforward.k8s.io";
    let mut client = WsClient::connect(&url, &[protocol]).await.unwrap();
    assert_eq!(client.protocol.as_deref(), Some(protocol));
    let mut codec = Codec::new();
    let headers = |kind: &str| {
        vec![
            ("streamtype".to_string(), kind.to_string()),
            ("port".to_string(), "8080".to_string()),
            ("requestid".to_string(), "0".to_string()),
        ]
    };
    let mut wire = Vec::new();
    for (stream_id, kind) in [(1, "error"), (3, "data")] {
        codec
            .encode(
                &Frame::SynStream {
                    stream_id,
                    associated_id: 0,
                    priority: 0,
                    flags: 0,
                    headers: headers(kind),
                },
                &mut wire,
            )
            .unwrap();
    }
    codec
        .encode(
            &Frame::Data {
                stream_id: 3,
                flags: 0,
                data: b"through the tunnel\n".to_vec(),
            },
            &mut wire,
        )
        .unwrap();
    // Split across messages: the tunnel is a byte stream.
    let (first, second) = wire.split_at(wire.len() / 2);
    client.send(ws_client::BINARY, first).await;
    client.send(ws_client::BINARY, second).await;

    let mut bytes = Vec::new();
    let mut echoed = Vec::new();
    let mut replies = 0;
    while echoed.len() < b"through the tunnel\n".len() {
        let frame = client.recv().await.expect("the tunnel stays open");
        assert_eq!(frame.opcode, ws_client::BINARY, "{frame:?}");
        bytes.extend(frame.payload);
        while let Some(frame) = codec.decode(&mut bytes).unwrap() {
            match frame {
                Frame::SynReply { .. } => replies += 1,
                Frame::Data {
                    stream_id: 3, data, ..
                } => echoed.extend(data),
                Frame::WindowUpdate { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(replies, 2);
    assert_eq!(echoed, b"through the tunnel\n");
    drop(client);

    node.remove_pod(&pod).await;
    node.assert_clean();
}
