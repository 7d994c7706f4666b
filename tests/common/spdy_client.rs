//! A small SPDY/3.1 client on rcri's own frame codec, for the streaming
//! tests: the HTTP upgrade, opening streams, sending and receiving frames.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use rcri::streaming::spdy::{self, Codec, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use super::split_url;

pub const V4: &str = "v4.channel.k8s.io";
pub const SUCCESS: &str = r#"{"metadata":{},"status":"Success"}"#;

/// Sends the upgrade request; `Ok` with the connection after a 101, else
/// the status code and the body.
pub async fn upgrade(url: &str, protocols: &[&str]) -> Result<SpdyClient, (u16, String)> {
    let (host, path) = split_url(url);
    let mut stream = TcpStream::connect(&host).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for p in protocols {
        request.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    request.push_str("\r\n");
    let (head, rest) = super::http_upgrade(&mut stream, &request).await?;
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: spdy/3.1"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    assert!(
        lower.contains(&format!("x-stream-protocol-version: {}", protocols[0])),
        "{head}"
    );
    Ok(SpdyClient {
        stream,
        codec: Codec::new(),
        buf: rest,
        next_id: 1,
    })
}

pub struct SpdyClient {
    pub stream: TcpStream,
    codec: Codec,
    buf: Vec<u8>,
    next_id: u32,
}

impl SpdyClient {
    pub async fn send(&mut self, frame: Frame) {
        let mut out = Vec::new();
        self.codec.encode(&frame, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// Opens a stream of `kind`; returns its id.
    pub async fn open(&mut self, kind: &str) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        self.send(Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), kind.into())],
        })
        .await;
        id
    }

    /// The next frame; `None` once the server closed the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf).unwrap() {
                return Some(frame);
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk))
                .await
                .expect("the server answers within 30 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

impl SpdyClient {
    /// Sends `data` on stream `id`.
    pub async fn data(&mut self, id: u32, data: &[u8]) {
        self.send(Frame::Data {
            stream_id: id,
            flags: 0,
            data: data.to_vec(),
        })
        .await;
    }

    /// Ends the client's side of stream `id`.
    pub async fn fin(&mut self, id: u32) {
        self.send(Frame::Data {
            stream_id: id,
            flags: spdy::FLAG_FIN,
            data: Vec::new(),
        })
        .await;
    }
}

/// What an interactive session received so far, by stream.
#[derive(Debug, Default)]
pub struct Received {
    pub data: HashMap<u32, Vec<u8>>,
    pub finished: Vec<u32>,
    pub refused: Vec<u32>,
    pub goaway: bool,
    pub closed: bool,
}

impl Received {
    pub fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.data.get(&id).map(Vec::as_slice).unwrap_or_default())
            .into_owned()
    }
}

impl SpdyClient {
    /// Reads frames into `received` until `done` holds or the server
    /// closes the connection; panics after `timeout`.
    pub async fn until(
        &mut self,
        received: &mut Received,
        timeout: Duration,
        done: impl Fn(&Received) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(received) {
            assert!(
                !received.closed,
                "the server closed the connection: {received:?}"
            );
            let frame = tokio::time::timeout_at(deadline, self.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting; got {received:?}"));
            match frame {
                None => received.closed = true,
                Some(Frame::Data {
                    stream_id,
                    flags,
                    data,
                }) => {
                    received.data.entry(stream_id).or_default().extend(data);
                    if flags & spdy::FLAG_FIN != 0 {
                        received.finished.push(stream_id);
                    }
                }
                Some(Frame::RstStream { stream_id, .. }) => received.refused.push(stream_id),
                Some(Frame::GoAway { .. }) => received.goaway = true,
                Some(_) => {}
            }
        }
    }
}

/// An attach (or exec) session's streams, opened as kubectl does.
pub struct Streams {
    pub client: SpdyClient,
    pub error: u32,
    pub stdin: Option<u32>,
    pub stdout: u32,
    pub stderr: Option<u32>,
    pub resize: Option<u32>,
    pub received: Received,
}

pub async fn open_session(url: &str, stdin: bool, tty: bool) -> Streams {
    let mut client = upgrade(url, &[V4]).await.unwrap();
    let error = client.open("error").await;
    let stdin = if stdin {
        Some(client.open("stdin").await)
    } else {
        None
    };
    let stdout = client.open("stdout").await;
    let stderr = if tty {
        None
    } else {
        Some(client.open("stderr").await)
    };
    let resize = if tty {
        Some(client.open("resize").await)
    } else {
        None
    };
    Streams {
        client,
        error,
        stdin,
        stdout,
        stderr,
        resize,
        received: Received::default(),
    }
}

impl Streams {
    pub async fn wait_stdout(&mut self, text: &str) {
        let id = self.stdout;
        self.client
            .until(&mut self.received, Duration::from_secs(20), |r| {
                r.text(id).contains(text)
            })
            .await;
    }

    pub async fn wait_end(&mut self) -> String {
        let error = self.error;
        self.client
            .until(&mut self.received, Duration::from_secs(20), |r| {
                r.finished.contains(&error)
            })
            .await;
        self.received.text(error)
    }

    pub async fn send(&mut self, text: &str) {
        let id = self.stdin.expect("a stdin stream");
        self.client.data(id, text.as_bytes()).await;
    }

    pub async fn resize(&mut self, width: u16, height: u16) {
        let id = self.resize.expect("a resize stream");
        let message = format!("{{\"Width\":{width},\"Height\":{height}}}\n");
        self.client.data(id, message.as_bytes()).await;
    }
}
