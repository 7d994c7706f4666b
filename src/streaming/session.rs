//! A streaming connection seen without its transport.
//!
//! Exec, attach and port-forward sessions deal only in streams the client
//! opens (each with its headers, e.g. `streamtype: stdout` or `port: 80`),
//! data on them, and what the server answers. The transports translate:
//! SPDY/3.1 maps streams to SYN_STREAM/SYN_REPLY/DATA/RST_STREAM frames;
//! WebSocket maps them to numbered channels that all exist from the start.
//!
//! A session reads [`ClientEvent`]s from [`Connection::events`] (`None`: the
//! client went away, broke the protocol or stayed idle too long) and sends
//! [`ServerEvent`]s to [`Connection::out`]. Both channels are bounded: the
//! transport reads no more from the socket until the session took the last
//! event, and the session waits while the socket is slow. When the session
//! is done it calls [`Connection::close`], which ends the connection cleanly
//! (SPDY: GOAWAY; WebSocket: a close frame) after everything queued is sent.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Headers of a stream, names in lowercase.
pub type StreamHeaders = Vec<(String, String)>;

/// Something the client did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The client opened stream `id`; the session answers [`ServerEvent::
    /// Accept`] or [`ServerEvent::Refuse`].
    Open { id: u32, headers: StreamHeaders },
    /// Data on stream `id` (never empty).
    Data { id: u32, data: Vec<u8> },
    /// The client will send no more data on stream `id`.
    Fin { id: u32 },
    /// The client abandoned stream `id`.
    Reset { id: u32 },
}

/// Something the server does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// Accept stream `id` that the client opened.
    Accept { id: u32 },
    /// Refuse stream `id` that the client opened.
    Refuse { id: u32 },
    /// Data on stream `id`.
    Data { id: u32, data: Vec<u8> },
    /// The server will send no more data on stream `id`.
    Finish { id: u32 },
    /// The server abandons stream `id`.
    Reset { id: u32 },
}

/// A session's end of an upgraded connection.
pub struct Connection {
    /// What the client does; `None` once it is gone.
    pub events: mpsc::Receiver<ClientEvent>,
    /// What the server does.
    pub out: mpsc::Sender<ServerEvent>,
    /// Finishes the connection once `out` is dropped.
    pub(crate) done: JoinHandle<()>,
}

impl Connection {
    /// Sends everything queued, ends the connection cleanly and waits until
    /// the transport let go of the socket.
    pub async fn close(self) {
        let Connection { events, out, done } = self;
        drop(out);
        drop(events);
        let _ = done.await;
    }
}
