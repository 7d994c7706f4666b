//! WebSocket (RFC 6455) for the streaming server: the handshake, a frame
//! codec, and two ways to use a connection.
//!
//! * [`connect_channels`]: the Kubernetes channel protocols
//!   (`v5.channel.k8s.io`, `v4.channel.k8s.io`, `channel.k8s.io`, and their
//!   `base64.` variants) as a [`Connection`]. Every message carries one
//!   channel: binary messages start with the channel number, base64 ones
//!   (text) with the channel as an ASCII digit followed by base64 data. The
//!   channels exist from the start, so the adapter opens them itself; v5
//!   adds the message `[255, channel]` by which the client closes a channel.
//! * [`byte_stream`]: binary messages as a plain byte stream, for SPDY
//!   tunnelled over WebSocket (`SPDY/3.1+portforward.k8s.io`, what
//!   `crictl port-forward --transport websocket` speaks).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::session::{ClientEvent, Connection, ServerEvent, StreamHeaders};

/// The GUID RFC 6455 appends to the client's key.
const HANDSHAKE_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// A client message (all its fragments) may not be larger than this.
pub const MAX_MESSAGE: usize = 4 << 20;
/// The v5 message that closes a channel starts with this byte.
const STREAM_CLOSE: u8 = 255;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 32 * 1024;
/// Events queued towards the session.
const EVENT_QUEUE: usize = 8;
/// Events queued towards the writer.
const OUT_QUEUE: usize = 8;
/// After the session ended the client may still send for this long.
const LINGER: Duration = Duration::from_secs(1);

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    use sha1::Digest;
    let mut hasher = sha1::Sha1::new();
    hasher.update(key.trim().as_bytes());
    hasher.update(HANDSHAKE_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(hasher.finalize())
}

/// Frame opcodes.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Close codes we send.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
}

/// One frame as it was on the wire (unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// A broken frame: the connection ends with this close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct WsError {
    pub code: u16,
    pub reason: String,
}

fn ws_error(code: u16, reason: impl Into<String>) -> WsError {
    WsError {
        code,
        reason: reason.into(),
    }
}

/// Decodes the next client frame from the front of `buf`, removing it;
/// `Ok(None)` until a whole frame is there. Client frames must be masked.
pub fn decode_frame(buf: &mut Vec<u8>) -> Result<Option<WsFrame>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(ws_error(
            close_code::PROTOCOL_ERROR,
            "reserved bits set without an extension",
        ));
    }
    let fin = b0 & 0x80 != 0;
    let op = b0 & 0x0F;
    if b1 & 0x80 == 0 {
        return Err(ws_error(
            close_code::PROTOCOL_ERROR,
            "client frames must be masked",
        ));
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(bytes), 10)
        }
        n => (u64::from(n), 2),
    };
    let is_control = op & 0x8 != 0;
    match op {
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {}
        opcode::CLOSE | opcode::PING | opcode::PONG => {
            if !fin || len > 125 {
                return Err(ws_error(
                    close_code::PROTOCOL_ERROR,
                    "control frames must be whole and at most 125 bytes",
                ));
            }
        }
        other => {
            return Err(ws_error(
                close_code::PROTOCOL_ERROR,
                format!("unknown opcode {other:#x}"),
            ));
        }
    }
    if len > MAX_MESSAGE as u64 {
        return Err(ws_error(
            close_code::TOO_BIG,
            format!("a frame of {len} bytes is over the limit of {MAX_MESSAGE}"),
        ));
    }
    let len = len as usize;
    if buf.len() < at + 4 + len {
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    at += 4;
    let mut payload = buf[at..at + len].to_vec();
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
    buf.drain(..at + len);
    debug_assert!(!is_control || payload.len() <= 125);
    Ok(Some(WsFrame {
        fin,
        opcode: op,
        payload,
    }))
}

/// Appends a whole, unmasked server frame to `out`.
pub fn encode_frame(op: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | op);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// A close frame's payload: the code and a short reason.
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    // Control payloads are at most 125 bytes; cut at a character boundary.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// A whole client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

/// Joins fragments into messages and answers control frames.
#[derive(Debug, Default)]
pub struct MessageReader {
    partial: Option<(u8, Vec<u8>)>,
}

/// What the reader made of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Message(Message),
    /// The client pinged: answer with a pong carrying this payload.
    Ping(Vec<u8>),
    /// The client closed the connection.
    Close,
    /// A fragment, or a pong: nothing to do yet.
    Nothing,
}

impl MessageReader {
    pub fn push(&mut self, frame: WsFrame) -> Result<Received, WsError> {
        match frame.opcode {
            opcode::PING => return Ok(Received::Ping(frame.payload)),
            opcode::PONG => return Ok(Received::Nothing),
            opcode::CLOSE => return Ok(Received::Close),
            _ => {}
        }
        let (op, mut data) = match (frame.opcode, self.partial.take()) {
            (opcode::CONTINUATION, Some((op, mut data))) => {
                data.extend_from_slice(&frame.payload);
                (op, data)
            }
            (opcode::CONTINUATION, None) => {
                return Err(ws_error(
                    close_code::PROTOCOL_ERROR,
                    "a continuation frame without a message to continue",
                ));
            }
            (_, Some(_)) => {
                return Err(ws_error(
                    close_code::PROTOCOL_ERROR,
                    "a new message before the last one was finished",
                ));
            }
            (op, None) => (op, frame.payload),
        };
        if data.len() > MAX_MESSAGE {
            return Err(ws_error(
                close_code::TOO_BIG,
                format!("a message over the limit of {MAX_MESSAGE} bytes"),
            ));
        }
        if !frame.fin {
            self.partial = Some((op, std::mem::take(&mut data)));
            return Ok(Received::Nothing);
        }
        Ok(Received::Message(match op {
            opcode::TEXT => Message::Text(data),
            _ => Message::Binary(data),
        }))
    }
}

/// The Kubernetes channel protocols over WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelProtocol {
    /// `v5.channel.k8s.io`: binary, with channel close messages.
    V5,
    /// `v4.channel.k8s.io`: binary, JSON status on the error channel.
    V4,
    /// `v4.base64.channel.k8s.io`.
    V4Base64,
    /// `channel.k8s.io` (or no protocol named): binary, text errors.
    V1,
    /// `base64.channel.k8s.io`.
    V1Base64,
}

impl ChannelProtocol {
    /// Best first.
    pub const ALL: [ChannelProtocol; 5] = [
        ChannelProtocol::V5,
        ChannelProtocol::V4,
        ChannelProtocol::V4Base64,
        ChannelProtocol::V1,
        ChannelProtocol::V1Base64,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ChannelProtocol::V5 => "v5.channel.k8s.io",
            ChannelProtocol::V4 => "v4.channel.k8s.io",
            ChannelProtocol::V4Base64 => "v4.base64.channel.k8s.io",
            ChannelProtocol::V1 => "channel.k8s.io",
            ChannelProtocol::V1Base64 => "base64.channel.k8s.io",
        }
    }

    pub fn base64(self) -> bool {
        matches!(self, ChannelProtocol::V4Base64 | ChannelProtocol::V1Base64)
    }

    /// Whether the error channel carries a JSON status (else plain text).
    pub fn json_status(self) -> bool {
        matches!(
            self,
            ChannelProtocol::V5 | ChannelProtocol::V4 | ChannelProtocol::V4Base64
        )
    }
}

/// Picks the best channel protocol the client offered; a client that
/// offers none gets `channel.k8s.io`, as the kubelet does.
pub fn negotiate_channels(offered: &[&str]) -> Option<ChannelProtocol> {
    if offered.is_empty() {
        return Some(ChannelProtocol::V1);
    }
    ChannelProtocol::ALL
        .into_iter()
        .find(|p| offered.contains(&p.name()))
}

/// What a channel-protocol message means for the session.
pub fn channel_events(
    protocol: ChannelProtocol,
    message: Message,
) -> Result<Vec<ClientEvent>, WsError> {
    let data = match message {
        Message::Binary(data) if !protocol.base64() => data,
        Message::Text(text) if protocol.base64() => {
            let Some((&digit, rest)) = text.split_first() else {
                return Ok(Vec::new());
            };
            let data = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|e| {
                    ws_error(close_code::INVALID_PAYLOAD, format!("bad base64 data: {e}"))
                })?;
            let mut message = vec![digit.wrapping_sub(b'0')];
            message.extend(data);
            message
        }
        _ => {
            return Err(ws_error(
                close_code::UNSUPPORTED_DATA,
                format!(
                    "{} carries {} messages only",
                    protocol.name(),
                    if protocol.base64() { "text" } else { "binary" }
                ),
            ));
        }
    };
    Ok(match data.split_first() {
        None => Vec::new(),
        Some((&STREAM_CLOSE, rest)) if protocol == ChannelProtocol::V5 => match rest {
            [channel] => vec![ClientEvent::Fin {
                id: u32::from(*channel),
            }],
            _ => {
                return Err(ws_error(
                    close_code::PROTOCOL_ERROR,
                    "a channel close message must name exactly one channel",
                ));
            }
        },
        Some((_, [])) => Vec::new(),
        Some((&channel, rest)) => vec![ClientEvent::Data {
            id: u32::from(channel),
            data: rest.to_vec(),
        }],
    })
}

/// Shared by the reader and writer tasks: when traffic last passed.
type Activity = Arc<watch::Sender<Instant>>;

/// What the reader asks the writer to send.
enum Control {
    Pong(Vec<u8>),
    Close(u16, String),
}

/// Serves a channel protocol as a [`Connection`]. `channels` are opened for
/// the session at once, in order; the stream id is the channel number.
pub fn connect_channels<S>(
    stream: S,
    leftover: Vec<u8>,
    protocol: ChannelProtocol,
    channels: Vec<(u32, StreamHeaders)>,
    idle_timeout: Duration,
) -> Connection
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let (out, mut out_rx) = mpsc::channel::<ServerEvent>(OUT_QUEUE);
    let (frames_tx, frames_rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let (activity_tx, activity_rx) = watch::channel(Instant::now());
    let activity: Activity = Arc::new(activity_tx);
    let (control_tx, control_rx) = mpsc::unbounded_channel::<Control>();

    let reader = {
        let activity = activity.clone();
        tokio::spawn(async move {
            for (id, headers) in channels {
                if events_tx
                    .send(ClientEvent::Open { id, headers })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            read_messages(rd, leftover, &control_tx, &activity, |message| {
                let result = channel_events(protocol, message);
                let events_tx = events_tx.clone();
                async move {
                    for event in result? {
                        // Waiting here is the back-pressure towards the client.
                        let _ = events_tx.send(event).await;
                    }
                    Ok(())
                }
            })
            .await;
        })
    };

    // Session events become frames.
    let translate = tokio::spawn(async move {
        while let Some(event) = out_rx.recv().await {
            let ServerEvent::Data { id, data } = event else {
                // Channels are implicit: nothing to accept, refuse or finish.
                continue;
            };
            let Ok(channel) = u8::try_from(id) else {
                continue;
            };
            let mut frame = Vec::with_capacity(data.len() + 10);
            if protocol.base64() {
                let mut text = vec![b'0' + channel];
                text.extend(
                    base64::engine::general_purpose::STANDARD
                        .encode(&data)
                        .bytes(),
                );
                encode_frame(opcode::TEXT, &text, &mut frame);
            } else {
                let mut message = Vec::with_capacity(data.len() + 1);
                message.push(channel);
                message.extend_from_slice(&data);
                encode_frame(opcode::BINARY, &message, &mut frame);
            }
            if frames_tx.send(frame).await.is_err() {
                break;
            }
        }
    });

    let done = tokio::spawn(write_frames(
        wr,
        frames_rx,
        control_rx,
        [translate, reader],
        activity,
        activity_rx,
        idle_timeout,
    ));
    Connection { events, out, done }
}

/// Binary messages as a byte stream (for SPDY over WebSocket): what the
/// client sends comes out of the returned stream, what is written to it
/// goes to the client as binary messages. The connection ends when the
/// returned stream is dropped or the client closes.
pub fn byte_stream<S>(stream: S, leftover: Vec<u8>, idle_timeout: Duration) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut ours_rd, ours_wr) = tokio::io::split(ours);
    let ours_wr = Arc::new(tokio::sync::Mutex::new(ours_wr));
    let (rd, wr) = tokio::io::split(stream);
    let (frames_tx, frames_rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let (activity_tx, activity_rx) = watch::channel(Instant::now());
    let activity: Activity = Arc::new(activity_tx);
    let (control_tx, control_rx) = mpsc::unbounded_channel::<Control>();

    let reader = {
        let activity = activity.clone();
        tokio::spawn(async move {
            read_messages(rd, leftover, &control_tx, &activity, |message| {
                let ours_wr = ours_wr.clone();
                async move {
                    match message {
                        Message::Binary(data) => {
                            let _ = ours_wr.lock().await.write_all(&data).await;
                            Ok(())
                        }
                        Message::Text(_) => Err(ws_error(
                            close_code::UNSUPPORTED_DATA,
                            "SPDY over WebSocket carries binary messages only",
                        )),
                    }
                }
            })
            .await;
            // The client is gone: the SPDY side sees the end of its input.
            let _ = ours_wr.lock().await.shutdown().await;
        })
    };

    let translate = tokio::spawn(async move {
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let n = match ours_rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut frame = Vec::with_capacity(n + 10);
            encode_frame(opcode::BINARY, &chunk[..n], &mut frame);
            if frames_tx.send(frame).await.is_err() {
                break;
            }
        }
    });

    tokio::spawn(write_frames(
        wr,
        frames_rx,
        control_rx,
        [translate, reader],
        activity,
        activity_rx,
        idle_timeout,
    ));
    theirs
}

/// Reads frames until the client closes or breaks the protocol, answering
/// pings, and hands each whole message to `on_message`.
async fn read_messages<R, F, Fut>(
    mut rd: R,
    mut buf: Vec<u8>,
    control: &mpsc::UnboundedSender<Control>,
    activity: &Activity,
    mut on_message: F,
) where
    R: AsyncRead + Unpin,
    F: FnMut(Message) -> Fut,
    Fut: std::future::Future<Output = Result<(), WsError>>,
{
    let mut messages = MessageReader::default();
    loop {
        let received = match decode_frame(&mut buf).and_then(|frame| match frame {
            Some(frame) => messages.push(frame).map(Some),
            None => Ok(None),
        }) {
            Ok(Some(received)) => received,
            Ok(None) => {
                buf.reserve(READ_CHUNK);
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
            Err(e) => {
                tracing::info!(error = %e, "streaming: malformed WebSocket frame; closing");
                let _ = control.send(Control::Close(e.code, e.reason));
                return;
            }
        };
        activity.send_replace(Instant::now());
        match received {
            Received::Message(message) => {
                if let Err(e) = on_message(message).await {
                    tracing::info!(error = %e, "streaming: unexpected WebSocket message; closing");
                    let _ = control.send(Control::Close(e.code, e.reason));
                    return;
                }
            }
            Received::Ping(payload) => {
                let _ = control.send(Control::Pong(payload));
            }
            Received::Close => {
                let _ = control.send(Control::Close(close_code::NORMAL, String::new()));
                return;
            }
            Received::Nothing => {}
        }
    }
}

/// Writes frames until the producer is done (then a normal close), the
/// reader asks for a close, or the connection was idle too long; then gives
/// the reader a moment to see the client's last frames and stops it.
async fn write_frames<W: AsyncWrite + Unpin>(
    wr: W,
    frames: mpsc::Receiver<Vec<u8>>,
    control: mpsc::UnboundedReceiver<Control>,
    [producer, mut reader]: [tokio::task::JoinHandle<()>; 2],
    activity: Activity,
    activity_rx: watch::Receiver<Instant>,
    idle_timeout: Duration,
) {
    write_until_closed(
        wr,
        frames,
        control,
        producer,
        activity,
        activity_rx,
        idle_timeout,
    )
    .await;
    if tokio::time::timeout(LINGER, &mut reader).await.is_err() {
        reader.abort();
    }
}

async fn write_until_closed<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut frames: mpsc::Receiver<Vec<u8>>,
    mut control: mpsc::UnboundedReceiver<Control>,
    producer: tokio::task::JoinHandle<()>,
    activity: Activity,
    activity_rx: watch::Receiver<Instant>,
    idle_timeout: Duration,
) {
    let mut control_open = true;
    let (code, reason) = loop {
        let idle_at = *activity_rx.borrow() + idle_timeout;
        tokio::select! {
            biased;
            request = control.recv(), if control_open => match request {
                Some(Control::Close(code, reason)) => break (code, reason),
                Some(Control::Pong(payload)) => {
                    let mut frame = Vec::new();
                    encode_frame(opcode::PONG, &payload, &mut frame);
                    if wr.write_all(&frame).await.is_err() {
                        producer.abort();
                        return;
                    }
                }
                None => control_open = false,
            },
            frame = frames.recv() => match frame {
                Some(frame) => {
                    activity.send_replace(Instant::now());
                    if wr.write_all(&frame).await.is_err() {
                        producer.abort();
                        return;
                    }
                }
                None => break (close_code::NORMAL, String::new()),
            },
            _ = tokio::time::sleep_until(idle_at) => {
                if *activity_rx.borrow() + idle_timeout <= Instant::now() {
                    tracing::info!(?idle_timeout, "streaming: idle timeout; closing the WebSocket");
                    break (close_code::NORMAL, "idle timeout".to_string());
                }
            }
        }
    };
    producer.abort();
    let mut frame = Vec::new();
    encode_frame(opcode::CLOSE, &close_payload(code, &reason), &mut frame);
    let _ = wr.write_all(&frame).await;
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![if fin { 0x80 } else { 0 } | op];
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
        out
    }

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_decode_in_pieces_and_sizes() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let wire = masked(opcode::BINARY, true, &payload);
            let mut buf = Vec::new();
            for (i, byte) in wire.iter().enumerate() {
                buf.push(*byte);
                let decoded = decode_frame(&mut buf).unwrap();
                if i + 1 < wire.len() {
                    assert_eq!(decoded, None);
                } else {
                    assert_eq!(decoded.unwrap().payload, payload);
                }
                if len > 1000 && i < wire.len() - 2 {
                    // Skip ahead for big frames; byte-wise checks of the
                    // head are enough.
                    if i > 20 {
                        buf.extend_from_slice(&wire[i + 1..wire.len() - 1]);
                        let last = wire[wire.len() - 1];
                        assert_eq!(decode_frame(&mut buf).unwrap(), None);
                        buf.push(last);
                        assert_eq!(decode_frame(&mut buf).unwrap().unwrap().payload, payload);
                        break;
                    }
                }
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn broken_frames_are_refused_with_a_close_code() {
        let unmasked = [0x82, 0x01, 0x07];
        assert_eq!(
            decode_frame(&mut unmasked.to_vec()).unwrap_err().code,
            close_code::PROTOCOL_ERROR
        );
        let reserved = masked(opcode::BINARY | 0x40, true, b"x");
        assert!(decode_frame(&mut reserved.to_vec()).is_err());
        let bad_opcode = masked(0x3, true, b"x");
        assert!(decode_frame(&mut bad_opcode.to_vec()).is_err());
        let long_ping = masked(opcode::PING, true, &[0; 126]);
        assert!(decode_frame(&mut long_ping.to_vec()).is_err());
        let fragmented_close = masked(opcode::CLOSE, false, b"");
        assert!(decode_frame(&mut fragmented_close.to_vec()).is_err());
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&(u64::MAX).to_be_bytes());
        assert_eq!(
            decode_frame(&mut huge).unwrap_err().code,
            close_code::TOO_BIG
        );
    }

    #[test]
    fn fragments_join_and_control_frames_interleave() {
        let mut reader = MessageReader::default();
        let mut buf = masked(opcode::TEXT, false, b"ab");
        buf.extend(masked(opcode::PING, true, b"p"));
        buf.extend(masked(opcode::CONTINUATION, true, b"cd"));
        let mut got = Vec::new();
        while let Some(frame) = decode_frame(&mut buf).unwrap() {
            got.push(reader.push(frame).unwrap());
        }
        assert_eq!(
            got,
            [
                Received::Nothing,
                Received::Ping(b"p".to_vec()),
                Received::Message(Message::Text(b"abcd".to_vec()))
            ]
        );
        let mut reader = MessageReader::default();
        let stray = WsFrame {
            fin: true,
            opcode: opcode::CONTINUATION,
            payload: vec![],
        };
        assert!(reader.push(stray).is_err());
    }

    #[test]
    fn server_frames_use_the_shortest_length() {
        for (len, head) in [(5usize, 2usize), (126, 4), (70_000, 10)] {
            let mut out = Vec::new();
            encode_frame(opcode::BINARY, &vec![1; len], &mut out);
            assert_eq!(out.len(), head + len);
            assert_eq!(out[0], 0x82);
        }
        assert_eq!(close_payload(1000, &"é".repeat(100)).len(), 124);
    }

    #[test]
    fn negotiation_prefers_v5_and_defaults_to_channel_k8s_io() {
        assert_eq!(
            negotiate_channels(&["v4.channel.k8s.io", "v5.channel.k8s.io"]),
            Some(ChannelProtocol::V5)
        );
        assert_eq!(
            negotiate_channels(&["base64.channel.k8s.io"]),
            Some(ChannelProtocol::V1Base64)
        );
        assert_eq!(negotiate_channels(&[]), Some(ChannelProtocol::V1));
        assert_eq!(negotiate_channels(&["v9.channel.k8s.io"]), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096)) {
            let mut buf = bytes;
            let mut reader = MessageReader::default();
            while let Ok(Some(frame)) = decode_frame(&mut buf) {
                if reader.push(frame).is_err() {
                    break;
                }
            }
        }

        #[test]
        fn masked_frames_round_trip(op in proptest::sample::select(vec![opcode::TEXT, opcode::BINARY]), payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..70_000)) {
            let mut buf = masked(op, true, &payload);
            let frame = decode_frame(&mut buf).unwrap().unwrap();
            proptest::prop_assert_eq!(frame.payload, payload);
            proptest::prop_assert!(buf.is_empty());
        }
    }
}
