//! A small WebSocket client for the streaming tests, written here: the
//! upgrade request, masked frames out, frames in.
#![allow(dead_code)]

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub use super::split_url;

/// A byte stream to the server: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

pub struct WsClient {
    pub stream: Box<dyn Io>,
    buf: Vec<u8>,
    /// The subprotocol the server chose, if it named one.
    pub protocol: Option<String>,
}

impl WsClient {
    /// Upgrades `url` offering `protocols`; `Err` carries the status code
    /// and body of a refusal.
    pub async fn connect(url: &str, protocols: &[&str]) -> Result<WsClient, (u16, String)> {
        let (host, _) = split_url(url);
        let stream = TcpStream::connect(&host).await.unwrap();
        Self::connect_over(Box::new(stream), url, protocols).await
    }

    /// Like `connect`, over a stream the caller opened (e.g. TLS).
    pub async fn connect_over(
        mut stream: Box<dyn Io>,
        url: &str,
        protocols: &[&str],
    ) -> Result<WsClient, (u16, String)> {
        let (host, path) = split_url(url);
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        );
        if !protocols.is_empty() {
            request.push_str(&format!(
                "Sec-WebSocket-Protocol: {}\r\n",
                protocols.join(", ")
            ));
        }
        request.push_str("\r\n");
        let (head, rest) = super::http_upgrade(&mut stream, &request).await?;
        let header = |name: &str| {
            head.split("\r\n").find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        // RFC 6455's example key has this answer.
        assert_eq!(
            header("sec-websocket-accept").as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        assert!(
            header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
            "{head}"
        );
        Ok(WsClient {
            stream,
            buf: rest,
            protocol: header("sec-websocket-protocol"),
        })
    }

    /// Sends a raw frame, masked as a client must.
    pub async fn send_frame(&mut self, first_byte: u8, payload: &[u8]) {
        let mask = [0xA1, 0xB2, 0xC3, 0xD4];
        let mut out = vec![first_byte];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await.unwrap();
    }

    /// Sends one whole message.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.send_frame(0x80 | opcode, payload).await;
    }

    /// Sends `data` on binary channel `channel`.
    pub async fn send_channel(&mut self, channel: u8, data: &[u8]) {
        let mut message = vec![channel];
        message.extend_from_slice(data);
        self.send(BINARY, &message).await;
    }

    /// The next frame; `None` once the server closed the TCP connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.parse() {
                return Some(frame);
            }
            let mut chunk = [0u8; 16384];
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

    fn parse(&mut self) -> Option<Frame> {
        let buf = &self.buf;
        if buf.len() < 2 {
            return None;
        }
        assert_eq!(buf[0] & 0x80, 0x80, "the server sends whole frames");
        assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
        let (len, at) = match buf[1] & 0x7F {
            126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
            127 if buf.len() >= 10 => (
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if buf.len() < at + len {
            return None;
        }
        let frame = Frame {
            opcode: buf[0] & 0x0F,
            payload: buf[at..at + len].to_vec(),
        };
        self.buf.drain(..at + len);
        Some(frame)
    }
}
