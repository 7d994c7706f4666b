//! SPDY/3.1 as a [`Connection`]: a reader task turns frames into
//! [`ClientEvent`]s, a writer task turns [`ServerEvent`]s into frames.
//!
//! Flow control: the Go SPDY library the kubelet and crictl use neither
//! sends WINDOW_UPDATE nor honours ours, so a server that waited for window
//! would stall them after 64 KiB. The send windows are therefore enforced
//! only once the client has shown that it does flow control (sent a
//! WINDOW_UPDATE or an initial window size); we always announce what we
//! consumed. Back-pressure itself comes from TCP and the bounded channels.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::session::{ClientEvent, Connection, ServerEvent};
use super::spdy::{
    Codec, FLAG_FIN, Frame, FrameDecoder, FrameEncoder, goaway_status, rst_status, settings_id,
};

/// Events queued towards the session; small, so a slow session slows the
/// reading of the socket.
const EVENT_QUEUE: usize = 8;
/// Events queued towards the writer.
const OUT_QUEUE: usize = 8;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 32 * 1024;
/// The initial window of every stream and of the session in SPDY/3.1.
const DEFAULT_WINDOW: i64 = 64 * 1024;
/// After the session ended, the client may still send for this long before
/// the socket is closed (closing with unread data would reset it and could
/// lose the last frames we sent).
const LINGER: Duration = Duration::from_secs(1);

/// What the reader tells the writer.
enum Control {
    /// Send this frame (PING reply, RST_STREAM, WINDOW_UPDATE).
    Send(Frame),
    /// The client granted `delta` more bytes on a stream (0: the session).
    Window { stream_id: u32, delta: u32 },
    /// The client set the initial window of its streams.
    InitialWindow(u32),
    /// The client broke the protocol: GOAWAY with this status and stop.
    Fatal(u32),
}

/// Serves SPDY/3.1 on an upgraded connection; `leftover` is what arrived
/// after the HTTP request head. The connection ends when the client goes,
/// when the session closes it, or after `idle_timeout` without a frame
/// either way.
pub fn connect<S>(stream: S, leftover: Vec<u8>, idle_timeout: Duration) -> Connection
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let (encoder, decoder) = Codec::new().into_split();
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let (out, out_rx) = mpsc::channel(OUT_QUEUE);
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let last_stream = Arc::new(AtomicU32::new(0));
    let (activity_tx, activity_rx) = watch::channel(Instant::now());
    let activity_tx = Arc::new(activity_tx);
    let reader = tokio::spawn(read_frames(
        rd,
        decoder,
        leftover,
        events_tx,
        ctl_tx,
        last_stream.clone(),
        activity_tx.clone(),
    ));
    let writer = Writer {
        wr,
        encoder,
        buf: Vec::new(),
        last_stream,
        activity: activity_tx,
        enforce_windows: false,
        initial_window: DEFAULT_WINDOW,
        session_window: DEFAULT_WINDOW,
        stream_windows: HashMap::new(),
    };
    let done = tokio::spawn(async move {
        writer.run(out_rx, ctl_rx, activity_rx, idle_timeout).await;
        let mut reader = reader;
        if tokio::time::timeout(LINGER, &mut reader).await.is_err() {
            reader.abort();
        }
    });
    Connection { events, out, done }
}

async fn read_frames<S: AsyncRead>(
    mut rd: ReadHalf<S>,
    mut decoder: FrameDecoder,
    mut buf: Vec<u8>,
    events: mpsc::Sender<ClientEvent>,
    ctl: mpsc::UnboundedSender<Control>,
    last_stream: Arc<AtomicU32>,
    activity: Arc<watch::Sender<Instant>>,
) {
    // Once the session stopped listening, frames are read and dropped so the
    // client can finish; `send` then fails at once.
    loop {
        let frame = match decoder.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                buf.reserve(READ_CHUNK);
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
            Err(e) if e.is_session_error() => {
                tracing::info!(error = %e, "streaming: malformed SPDY frame; closing the session");
                let _ = ctl.send(Control::Fatal(e.goaway_status()));
                return;
            }
            Err(e) => {
                if let Some(stream_id) = e.stream_id().filter(|id| *id != 0) {
                    let _ = ctl.send(Control::Send(Frame::RstStream {
                        stream_id,
                        status: e.rst_status(),
                    }));
                }
                continue;
            }
        };
        activity.send_replace(Instant::now());
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                last_stream.fetch_max(stream_id, Ordering::Relaxed);
                let _ = events
                    .send(ClientEvent::Open {
                        id: stream_id,
                        headers,
                    })
                    .await;
                if flags & FLAG_FIN != 0 {
                    let _ = events.send(ClientEvent::Fin { id: stream_id }).await;
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let len = data.len() as u32;
                if len > 0 {
                    // Waiting here is the back-pressure towards the client.
                    let _ = events
                        .send(ClientEvent::Data {
                            id: stream_id,
                            data,
                        })
                        .await;
                    for id in [stream_id, 0] {
                        let _ = ctl.send(Control::Send(Frame::WindowUpdate {
                            stream_id: id,
                            delta: len,
                        }));
                    }
                }
                if flags & FLAG_FIN != 0 {
                    let _ = events.send(ClientEvent::Fin { id: stream_id }).await;
                }
            }
            Frame::RstStream { stream_id, .. } => {
                let _ = events.send(ClientEvent::Reset { id: stream_id }).await;
            }
            Frame::Settings { entries, .. } => {
                for (id, _, value) in entries {
                    if id == settings_id::INITIAL_WINDOW_SIZE {
                        let _ = ctl.send(Control::InitialWindow(value));
                    }
                }
            }
            Frame::Ping { id } => {
                let _ = ctl.send(Control::Send(Frame::Ping { id }));
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let _ = ctl.send(Control::Window { stream_id, delta });
            }
            Frame::GoAway { .. } => return,
            // A client never sends SYN_REPLY; HEADERS carry nothing we use.
            Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Unknown { .. } => {}
        }
    }
}

struct Writer<S> {
    wr: WriteHalf<S>,
    encoder: FrameEncoder,
    buf: Vec<u8>,
    last_stream: Arc<AtomicU32>,
    activity: Arc<watch::Sender<Instant>>,
    enforce_windows: bool,
    initial_window: i64,
    session_window: i64,
    stream_windows: HashMap<u32, i64>,
}

impl<S: AsyncWrite> Writer<S> {
    async fn run(
        mut self,
        mut out: mpsc::Receiver<ServerEvent>,
        mut ctl: mpsc::UnboundedReceiver<Control>,
        activity: watch::Receiver<Instant>,
        idle_timeout: Duration,
    ) {
        let mut ctl_open = true;
        // Data waiting for the client's window.
        let mut pending: Option<(u32, Vec<u8>)> = None;
        let status = loop {
            while let Some((id, data)) = pending.take() {
                let room = self.room(id);
                if room == 0 {
                    pending = Some((id, data));
                    break;
                }
                let (now, later) = if room >= data.len() {
                    (data, Vec::new())
                } else {
                    (data[..room].to_vec(), data[room..].to_vec())
                };
                if !self.send_data(id, now).await {
                    return;
                }
                if !later.is_empty() {
                    pending = Some((id, later));
                }
            }
            let idle_at = *activity.borrow() + idle_timeout;
            // Control first: a GOAWAY for a protocol error must win over the
            // session's ordinary end that the same error causes.
            tokio::select! {
                biased;
                control = ctl.recv(), if ctl_open => match control {
                    Some(Control::Send(frame)) => {
                        if !self.send(&frame).await {
                            return;
                        }
                    }
                    Some(Control::Window { stream_id, delta }) => {
                        self.enforce_windows = true;
                        let window = match stream_id {
                            0 => &mut self.session_window,
                            id => self.stream_windows.entry(id).or_insert(self.initial_window),
                        };
                        *window = window.saturating_add(i64::from(delta));
                    }
                    Some(Control::InitialWindow(size)) => {
                        self.enforce_windows = true;
                        let change = i64::from(size) - self.initial_window;
                        self.initial_window = i64::from(size);
                        for window in self.stream_windows.values_mut() {
                            *window += change;
                        }
                    }
                    Some(Control::Fatal(status)) => break status,
                    None => ctl_open = false,
                },
                event = out.recv(), if pending.is_none() => match event {
                    Some(ServerEvent::Data { id, data }) => pending = Some((id, data)),
                    Some(event) => {
                        if !self.send(&event_frame(event)).await {
                            return;
                        }
                    }
                    None => break goaway_status::OK,
                },
                _ = tokio::time::sleep_until(idle_at) => {
                    if *activity.borrow() + idle_timeout <= Instant::now() {
                        tracing::info!(?idle_timeout, "streaming: idle timeout; closing the session");
                        break goaway_status::OK;
                    }
                }
            }
        };
        let last_good_stream_id = self.last_stream.load(Ordering::Relaxed);
        self.send(&Frame::GoAway {
            last_good_stream_id,
            status,
        })
        .await;
        let _ = self.wr.shutdown().await;
    }

    /// How much data stream `id` may send now.
    fn room(&self, id: u32) -> usize {
        if !self.enforce_windows {
            return usize::MAX;
        }
        let stream = self
            .stream_windows
            .get(&id)
            .copied()
            .unwrap_or(self.initial_window);
        stream.min(self.session_window).max(0) as usize
    }

    async fn send_data(&mut self, id: u32, data: Vec<u8>) -> bool {
        let len = data.len() as i64;
        self.session_window -= len;
        *self.stream_windows.entry(id).or_insert(self.initial_window) -= len;
        self.send(&Frame::Data {
            stream_id: id,
            flags: 0,
            data,
        })
        .await
    }

    async fn send(&mut self, frame: &Frame) -> bool {
        self.buf.clear();
        if let Err(e) = self.encoder.encode(frame, &mut self.buf) {
            tracing::warn!(error = %e, "streaming: cannot encode a SPDY frame; closing");
            return false;
        }
        if let Frame::RstStream { stream_id, .. } = frame {
            self.stream_windows.remove(stream_id);
        }
        self.activity.send_replace(Instant::now());
        self.wr.write_all(&self.buf).await.is_ok()
    }
}

fn event_frame(event: ServerEvent) -> Frame {
    match event {
        ServerEvent::Accept { id } => Frame::SynReply {
            stream_id: id,
            flags: 0,
            headers: Vec::new(),
        },
        ServerEvent::Refuse { id } => Frame::RstStream {
            stream_id: id,
            status: rst_status::REFUSED_STREAM,
        },
        ServerEvent::Data { id, data } => Frame::Data {
            stream_id: id,
            flags: 0,
            data,
        },
        ServerEvent::Finish { id } => Frame::Data {
            stream_id: id,
            flags: FLAG_FIN,
            data: Vec::new(),
        },
        ServerEvent::Reset { id } => Frame::RstStream {
            stream_id: id,
            status: rst_status::CANCEL,
        },
    }
}
