//! The remotecommand session for attach, over any transport ([`Connection`]).
//!
//! The client opens the same channels as for exec (`error`, `stdin`,
//! `stdout`, `stderr`, `resize`; a TTY attach has no stderr). Once the
//! error stream and the requested stdio streams are open, the session
//! connects to the container monitor's attach socket
//! ([`crate::monitor::attach`]): the container's output goes out on stdout
//! and stderr, stdin and resize events go to the monitor. The monitor owns
//! the container's stdio, so attaching works across restarts of rcri.
//!
//! The session ends when the container exits (the monitor closes the
//! socket; the error stream then reports success) or when the client goes
//! away (its stdin counts as closed, which ends the container's stdin if it
//! has `stdin_once`).

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;

use super::AttachRequest;
use super::exec::{Outcome, Protocol, Streams, error_stream_payload};
use super::session::{ClientEvent, Connection, ServerEvent};
use crate::monitor::attach::{
    self as frames, TAG_CLOSE_STDIN, TAG_RESIZE, TAG_STDERR, TAG_STDIN, TAG_STDOUT,
};

/// The client must open its streams within this time.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Resize messages not yet complete are capped at this.
const MAX_RESIZE_BUFFER: usize = 4096;

/// A terminal size as the resize stream carries it: `{"Width":80,"Height":24}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Takes every complete size message off `buf` (clients send a stream of
/// JSON objects, usually newline-separated). Garbage is dropped.
pub fn parse_sizes(buf: &mut Vec<u8>) -> Vec<TerminalSize> {
    let mut sizes = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(buf).into_iter::<TerminalSize>();
    let mut used = 0;
    loop {
        match stream.next() {
            Some(Ok(size)) => {
                sizes.push(size);
                used = stream.byte_offset();
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(_)) => {
                used = buf.len();
                break;
            }
            None => {
                used = buf.len();
                break;
            }
        }
    }
    buf.drain(..used);
    if buf.len() > MAX_RESIZE_BUFFER {
        buf.clear();
    }
    sizes
}

/// Connects to the monitor's attach socket of the container whose run
/// directory is `dir` (the path may be too long for a socket address, so it
/// goes through a descriptor of the directory, off the async workers).
async fn connect_monitor(dir: PathBuf) -> std::io::Result<UnixStream> {
    let stream = tokio::task::spawn_blocking(move || {
        let path = crate::tty::SocketPath::new(&dir, "attach.sock", None)?;
        let stream = std::os::unix::net::UnixStream::connect(&path.path)?;
        stream.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(stream)
    })
    .await
    .map_err(std::io::Error::other)??;
    UnixStream::from_std(stream)
}

async fn send_frame(monitor: &mut OwnedWriteHalf, tag: u8, payload: &[u8]) -> bool {
    let mut frame = Vec::with_capacity(payload.len() + frames::HEADER);
    for chunk in payload.chunks(frames::MAX_FRAME).chain(
        // An empty payload still makes one frame.
        payload.is_empty().then_some(&[][..]),
    ) {
        frames::encode(tag, chunk, &mut frame);
    }
    monitor.write_all(&frame).await.is_ok()
}

/// Serves one attach session until the container exits or the client
/// goes away. `dir` is the container's run directory. Never panics on
/// client input.
pub async fn serve(mut conn: Connection, protocol: Protocol, request: AttachRequest, dir: PathBuf) {
    let mut streams = Streams::default();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    let mut early: Vec<ClientEvent> = Vec::new();
    // Under a TTY there is no separate stderr.
    while !streams.ready(
        request.stdin,
        request.stdout,
        request.stderr && !request.tty,
    ) {
        let event = match tokio::time::timeout_at(deadline, conn.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => return conn.close().await,
            Err(_) => {
                tracing::info!("streaming attach: the client did not open its streams in time");
                return conn.close().await;
            }
        };
        match event {
            ClientEvent::Open { id, headers } => {
                let answer = accept(&mut streams, id, &headers);
                if conn.out.send(answer).await.is_err() {
                    return conn.close().await;
                }
            }
            // Stdin or a resize sent before every stream is open.
            other => early.push(other),
        }
    }

    let outcome = match connect_monitor(dir).await {
        Ok(monitor) => pump(&mut conn, &request, &mut streams, monitor, early).await,
        Err(e) => Some(Outcome::Failed(format!(
            "cannot attach to container {}: it is not running ({e})",
            request.container_id
        ))),
    };
    if let Some(outcome) = outcome {
        if let Some(id) = streams.error
            && let Some(text) = error_stream_payload(protocol, &[], &outcome)
        {
            let _ = conn
                .out
                .send(ServerEvent::Data {
                    id,
                    data: text.into_bytes(),
                })
                .await;
        }
        for id in streams.all() {
            let _ = conn.out.send(ServerEvent::Finish { id }).await;
        }
    }
    conn.close().await;
}

/// Takes stream `id` into its free slot, or refuses it.
fn accept(streams: &mut Streams, id: u32, headers: &[(String, String)]) -> ServerEvent {
    let kind = headers
        .iter()
        .find(|(name, _)| name == "streamtype")
        .map(|(_, value)| value.as_str())
        .unwrap_or_default();
    match streams.slot(kind) {
        Some(slot) if slot.is_none() => {
            *slot = Some(id);
            ServerEvent::Accept { id }
        }
        _ => {
            tracing::info!(streamtype = %kind, "streaming attach: refusing a stream");
            ServerEvent::Refuse { id }
        }
    }
}

/// Moves data between the client and the monitor. `Some` when the
/// container's output ended (the session ends normally), `None` when the
/// client went away.
async fn pump(
    conn: &mut Connection,
    request: &AttachRequest,
    streams: &mut Streams,
    monitor: UnixStream,
    early: Vec<ClientEvent>,
) -> Option<Outcome> {
    let (mut from_monitor, mut to_monitor) = monitor.into_split();
    let out = conn.out.clone();
    let stdout = streams.stdout.filter(|_| request.stdout);
    // Under a TTY everything the container writes is on stdout.
    let stderr = streams.stderr.filter(|_| request.stderr && !request.tty);
    let mut output = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 32 * 1024];
        loop {
            loop {
                let frame = match frames::decode(&mut buf) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => return Outcome::Failed(format!("attach socket: {e}")),
                };
                let id = match frame.0 {
                    TAG_STDOUT => stdout,
                    TAG_STDERR => stderr,
                    _ => None,
                };
                if let Some(id) = id {
                    // Waiting here is the back-pressure toward the monitor,
                    // which disconnects us if we fall too far behind.
                    if out
                        .send(ServerEvent::Data { id, data: frame.1 })
                        .await
                        .is_err()
                    {
                        return Outcome::Exited(0);
                    }
                }
            }
            match from_monitor.read(&mut chunk).await {
                Ok(0) => return Outcome::Exited(0),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Outcome::Failed(format!("attach socket: {e}")),
            }
        }
    });

    let mut stdin_open = request.stdin && streams.stdin.is_some();
    let mut resize_buf = Vec::new();
    let mut early = early.into_iter();
    let outcome = loop {
        let event = match early.next() {
            Some(event) => Some(event),
            None => tokio::select! {
                done = &mut output => {
                    break Some(done.unwrap_or_else(|_| Outcome::Failed("the attach task failed".into())));
                }
                event = conn.events.recv() => event,
            },
        };
        let Some(event) = event else {
            break None;
        };
        let ok = match event {
            // A stream opened late, e.g. the resize stream.
            ClientEvent::Open { id, headers } => {
                let answer = accept(streams, id, &headers);
                conn.out.send(answer).await.is_ok()
            }
            ClientEvent::Data { id, data } if Some(id) == streams.stdin && stdin_open => {
                send_frame(&mut to_monitor, TAG_STDIN, &data).await
            }
            ClientEvent::Fin { id } | ClientEvent::Reset { id }
                if Some(id) == streams.stdin && stdin_open =>
            {
                stdin_open = false;
                send_frame(&mut to_monitor, TAG_CLOSE_STDIN, &[]).await
            }
            ClientEvent::Data { id, data } if Some(id) == streams.resize => {
                resize_buf.extend_from_slice(&data);
                let mut ok = true;
                for size in parse_sizes(&mut resize_buf) {
                    let payload = frames::resize_payload(size.width, size.height);
                    ok &= send_frame(&mut to_monitor, TAG_RESIZE, &payload).await;
                }
                ok
            }
            _ => true,
        };
        if !ok {
            // The monitor went away: the container has exited.
            break Some(
                (&mut output)
                    .await
                    .unwrap_or_else(|_| Outcome::Failed("the attach task failed".into())),
            );
        }
    };
    if outcome.is_none() {
        // The client left: that ends its stdin too (stdin_once).
        if stdin_open {
            let _ = send_frame(&mut to_monitor, TAG_CLOSE_STDIN, &[]).await;
        }
        output.abort();
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_messages_are_parsed_across_chunks() {
        let mut buf = br#"{"Width":80,"Height":24}"#.to_vec();
        buf.extend_from_slice(b"\n{\"Width\":100,");
        let sizes = parse_sizes(&mut buf);
        assert_eq!(
            sizes,
            [TerminalSize {
                width: 80,
                height: 24
            }]
        );
        buf.extend_from_slice(b"\"Height\":40}\n");
        assert_eq!(
            parse_sizes(&mut buf),
            [TerminalSize {
                width: 100,
                height: 40
            }]
        );
        assert!(buf.trim_ascii().is_empty());
        let mut garbage = b"nonsense{".to_vec();
        assert!(parse_sizes(&mut garbage).is_empty());
        assert!(garbage.is_empty());
    }
}
