//! Port-forward over SPDY/3.1 against the real server, into TCP servers in
//! runc and crun pods, with a small SPDY client written here on top of
//! rcri's frame codec. Needs root, runc, crun, docker-registry and
//! busybox-static (`make test` installs them).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::node::{HANDLERS, Node};
use common::split_url;
use rcri::proto;
use rcri::streaming::spdy::{Codec, FLAG_FIN, Frame, FrameDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;
use tonic::Code;

const PORTFORWARD: &str = "portforward.k8s.io";

/// Two echo servers: 8080 echoes, 8081 greets with `second:` then echoes.
/// Each serves any number of connections, one process per connection.
const SERVERS: &str = "printf '#!/bin/sh\\necho second:\\nexec cat\\n' > /tmp/greet; chmod +x /tmp/greet; \
     busybox nc -ll -p 8080 -e cat & busybox nc -ll -p 8081 -e /tmp/greet & wait";

/// A SPDY client whose writes never wait for its reads (a writer task), so
/// that echoing large data cannot deadlock it.
struct Client {
    frames: mpsc::UnboundedSender<Frame>,
    rd: OwnedReadHalf,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    next_id: u32,
    next_request: u32,
    /// What the server did, per stream.
    data: BTreeMap<u32, Vec<u8>>,
    replied: BTreeSet<u32>,
    finished: BTreeSet<u32>,
    reset: BTreeSet<u32>,
    /// rcri's log, shown when it does not answer.
    log: std::path::PathBuf,
}

/// Sends the upgrade request; the client after a 101, else the status code
/// and the body.
async fn upgrade(node: &Node, url: &str, protocol: &str) -> Result<Client, (u16, String)> {
    let (host, path) = split_url(url);
    let mut stream = TcpStream::connect(&host).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\r\n"
    );
    let (head, rest) = common::http_upgrade(&mut stream, &request).await?;
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("x-stream-protocol-version: {protocol}")),
        "{head}"
    );
    let (rd, mut wr) = stream.into_split();
    let (mut encoder, decoder) = Codec::new().into_split();
    let (frames, mut queue) = mpsc::unbounded_channel::<Frame>();
    tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(frame) = queue.recv().await {
            out.clear();
            encoder.encode(&frame, &mut out).unwrap();
            if wr.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    Ok(Client {
        frames,
        rd,
        decoder,
        buf: rest,
        next_id: 1,
        next_request: 0,
        data: BTreeMap::new(),
        replied: BTreeSet::new(),
        finished: BTreeSet::new(),
        reset: BTreeSet::new(),
        log: node.server.log.clone(),
    })
}

/// The streams of one forwarded connection.
#[derive(Debug, Clone, Copy)]
struct Forward {
    error: u32,
    data: u32,
}

impl Client {
    fn send(&self, frame: Frame) {
        self.frames.send(frame).unwrap();
    }

    fn open(&mut self, headers: Vec<(&str, String)>) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        self.send(Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: headers
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
        });
        id
    }

    /// Opens the error and data streams of a connection to `port`, as
    /// client-go does (the error stream's client side ends at once).
    fn forward(&mut self, port: u16) -> Forward {
        let request = self.next_request.to_string();
        self.next_request += 1;
        let headers = |kind: &str| {
            vec![
                ("streamtype", kind.to_string()),
                ("port", port.to_string()),
                ("requestid", request.clone()),
            ]
        };
        let error = self.open(headers("error"));
        self.fin(error);
        let data = self.open(headers("data"));
        Forward { error, data }
    }

    fn write(&self, id: u32, bytes: &[u8]) {
        for chunk in bytes.chunks(16 * 1024) {
            self.send(Frame::Data {
                stream_id: id,
                flags: 0,
                data: chunk.to_vec(),
            });
        }
    }

    fn fin(&self, id: u32) {
        self.send(Frame::Data {
            stream_id: id,
            flags: FLAG_FIN,
            data: Vec::new(),
        });
    }

    /// Reads frames until `done` holds; false if the server closed first.
    async fn until(&mut self, done: impl Fn(&Client) -> bool) -> bool {
        while !done(self) {
            let frame = loop {
                if let Some(frame) = self.decoder.decode(&mut self.buf).unwrap() {
                    break frame;
                }
                let mut chunk = [0u8; 32 * 1024];
                let Ok(read) =
                    tokio::time::timeout(Duration::from_secs(30), self.rd.read(&mut chunk)).await
                else {
                    panic!(
                        "no answer within 30 s; so far {:?} replied, {:?} finished, data {:?}; rcri's log:\n{}",
                        self.replied,
                        self.finished,
                        self.data
                            .keys()
                            .map(|id| (id, self.text(*id)))
                            .collect::<Vec<_>>(),
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                };
                let n = read.unwrap_or(0);
                if n == 0 {
                    return false;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            };
            match frame {
                Frame::SynReply { stream_id, .. } => {
                    self.replied.insert(stream_id);
                }
                Frame::Data {
                    stream_id,
                    flags,
                    data,
                } => {
                    assert!(
                        !self.finished.contains(&stream_id),
                        "data after FIN on {stream_id}"
                    );
                    self.data.entry(stream_id).or_default().extend(data);
                    if flags & FLAG_FIN != 0 {
                        self.finished.insert(stream_id);
                    }
                }
                Frame::RstStream { stream_id, .. } => {
                    self.reset.insert(stream_id);
                }
                Frame::WindowUpdate { .. } | Frame::Ping { .. } | Frame::Settings { .. } => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
        true
    }

    fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.data.get(&id).map(Vec::as_slice).unwrap_or_default())
            .into_owned()
    }

    fn done(&self, f: Forward) -> bool {
        self.finished.contains(&f.error) && self.finished.contains(&f.data)
    }
}

async fn port_forward_url(node: &Node, pod: &str, ports: &[i32]) -> Result<String, tonic::Status> {
    node.client()
        .await
        .port_forward(proto::PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: ports.to_vec(),
        })
        .await
        .map(|r| r.into_inner().url)
}

/// Waits until the pod's container listens on every one of `ports`.
async fn wait_listening(node: &Node, container: &str, ports: &[u16]) {
    for _ in 0..250 {
        let tables = node
            .out(container, &["cat", "/proc/net/tcp", "/proc/net/tcp6"])
            .await;
        // Local address `…:PORT` (hex) in state 0A (LISTEN).
        let listening = ports.iter().all(|port| {
            tables.lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 3
                    && fields[1].ends_with(&format!(":{port:04X}"))
                    && fields[3] == "0A"
            })
        });
        if listening {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the pod does not listen on {ports:?}");
}

/// Streaming connections rcri holds: its TCP sockets.
fn socket_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

/// rcri's threads that connect inside pods' namespaces: each lives only
/// for one connect.
fn dial_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim() == "rcri-netns-dial")
        })
        .count()
}

#[tokio::test]
async fn port_forward_into_pods_under_each_handler() {
    let node = Node::start().await;
    let pid = node.server.pid();
    for handler in HANDLERS {
        let pod = node.run_pod(&format!("pf-{handler}"), handler).await;
        let app = node.run(&pod, "app", SERVERS).await;
        wait_listening(&node, &app, &[8080, 8081]).await;
        let sockets = socket_count(pid);

        let url = port_forward_url(&node, &pod, &[]).await.unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        assert!(url.contains("/portforward/"), "{url}");
        let mut client = upgrade(&node, &url, PORTFORWARD).await.unwrap();

        // Two connections to 8080 and one to 8081 at once, one of them
        // carrying 2 MiB each way.
        let a = client.forward(8080);
        let b = client.forward(8081);
        let c = client.forward(8080);
        let big: Vec<u8> = (0..2 << 20).map(|i| (i % 251) as u8).collect();
        client.write(a.data, &big);
        client.write(b.data, b"to b\n");
        client.write(c.data, b"to c\n");
        let echoed = client
            .until(|cl| {
                cl.data.get(&a.data).map_or(0, Vec::len) == big.len()
                    && cl.text(b.data) == "second:\nto b\n"
                    && cl.text(c.data) == "to c\n"
            })
            .await;
        assert!(echoed, "{handler}: the server closed the connection");
        assert!(
            client.data[&a.data] == big,
            "{handler}: 2 MiB echoed in order"
        );
        for f in [a, b, c] {
            assert!(client.replied.contains(&f.error) && client.replied.contains(&f.data));
        }
        // FIN half-closes: cat sees end-of-file, exits, the data stream
        // ends, then the error stream, empty.
        for f in [a, b, c] {
            client.fin(f.data);
        }
        assert!(
            client
                .until(|cl| [a, b, c].iter().all(|f| cl.done(*f)))
                .await
        );
        for f in [a, b, c] {
            assert_eq!(client.text(f.error), "", "{handler}");
        }
        assert!(client.reset.is_empty(), "{handler}: {:?}", client.reset);

        // Nothing listens on 8082: the error stream says so.
        let d = client.forward(8082);
        assert!(client.until(|cl| cl.done(d)).await);
        let message = client.text(d.error);
        assert!(
            message.contains(&format!(
                "port 8082 of pod {}: cannot connect to port 8082 inside the pod's network namespace: 127.0.0.1:8082: connection refused",
                &pod[..12]
            )),
            "{handler}: {message}"
        );

        // The same session serves more connections afterwards.
        let e = client.forward(8080);
        client.write(e.data, b"again\n");
        assert!(client.until(|cl| cl.text(e.data) == "again\n").await);

        // The client going away closes everything.
        drop(client);
        let mut back = false;
        for _ in 0..250 {
            if socket_count(pid) <= sockets {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            back,
            "{handler}: rcri holds {} sockets, {sockets} before",
            socket_count(pid)
        );

        assert_eq!(dial_threads(pid), 0, "{handler}");

        // A token works once.
        assert_eq!(
            upgrade(&node, &url, PORTFORWARD).await.err().map(|e| e.0),
            Some(404)
        );
        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}

#[tokio::test]
async fn port_forward_requests_and_urls_are_checked() {
    let node = Node::start().await;
    let pid = node.server.pid();
    let pod = node.run_pod("pf-checks", "runc").await;
    let app = node.run(&pod, "app", SERVERS).await;
    wait_listening(&node, &app, &[8080, 8081]).await;

    let mut client = node.client().await;
    let request = |pod: &str, port: Vec<i32>| proto::PortForwardRequest {
        pod_sandbox_id: pod.into(),
        port,
    };
    let error = client
        .port_forward(request("0123456789abcdef", vec![]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    assert!(error.message().contains("0123456789abcdef"), "{error:?}");
    let error = client
        .port_forward(request(&pod, vec![70000]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");

    // Wrong tokens and paths are 404; a wrong protocol 403.
    let url = port_forward_url(&node, &pod, &[8080]).await.unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    let wrong = format!("{base}/0123456789abcdef0123456789abcdef");
    assert_eq!(
        upgrade(&node, &wrong, PORTFORWARD).await.err().map(|e| e.0),
        Some(404)
    );
    let (code, body) = upgrade(&node, &url, "v4.channel.k8s.io")
        .await
        .err()
        .unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("portforward.k8s.io"), "{body}");
    // An exec URL's token is not a port-forward one, nor the reverse.
    let (host, path) = split_url(&url);
    let token = path.rsplit('/').next().unwrap();
    let as_exec = format!("http://{host}/exec/{token}");
    assert_eq!(
        upgrade(&node, &as_exec, "v4.channel.k8s.io")
            .await
            .err()
            .map(|e| e.0),
        Some(404)
    );

    // Only the requested ports are forwarded.
    let url = port_forward_url(&node, &pod, &[8080]).await.unwrap();
    let mut session = upgrade(&node, &url, PORTFORWARD).await.unwrap();
    let ok = session.forward(8080);
    let refused = session.forward(8081);
    session.write(ok.data, b"allowed\n");
    assert!(
        session
            .until(|cl| cl.text(ok.data) == "allowed\n" && cl.done(refused))
            .await
    );
    assert_eq!(
        session.text(refused.error),
        "port 8081 was not requested: this URL forwards only port(s) 8080"
    );
    drop(session);

    // A stopped pod cannot be forwarded into.
    node.client()
        .await
        .stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let error = client
        .port_forward(request(&pod, vec![]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(error.message().contains("is not ready"), "{error:?}");

    // The threads that entered the pod's namespace are gone.
    assert_eq!(dial_threads(pid), 0);
    node.remove_pod(&pod).await;
    node.assert_clean();
}
