//! The remotecommand session for exec, with or without a TTY, over any
//! transport ([`Connection`]).
//!
//! The client opens one stream per channel (header `streamtype`: `error`,
//! `stdin`, `stdout`, `stderr`, `resize`); the server accepts each. Once the
//! error stream and the requested stdio streams are open, the command runs
//! through the pod's runtime: stdin data goes to the process (the client's
//! end of stdin closes its stdin), its stdout and stderr go out as data. When
//! it exits, the error stream carries the outcome (v4: a JSON
//! `metav1.Status`; older versions: the error text, nothing on success),
//! every stream is finished and the connection closed.
//!
//! With a TTY, the runtime gets `--console-socket` (a socket rcri listens on
//! in the container's run directory) and sends the pty master there: the
//! process's output comes from the master on the stdout stream (there is no
//! stderr), stdin goes to the master, and `{"Width":W,"Height":H}` messages
//! on the resize stream set the window size. When the client closes stdin
//! the terminal gets the EOF character (^D).
//!
//! Back-pressure: output is read from the process only as fast as the
//! connection takes it, and stdin is read from the connection only as fast
//! as the process takes it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixListener;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::ExecRequest;
use super::attach::{TerminalSize, parse_sizes};
use super::session::{ClientEvent, Connection, ServerEvent};
use crate::pod::{PodManager, PreparedExec};

/// The client must open its streams within this time.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Output still buffered after the process exited must drain within this time.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Output is read from the process in chunks of at most this size.
const CHUNK: usize = 32 * 1024;
/// Stdin data received before the process starts is capped at this.
const MAX_EARLY_STDIN: usize = 1 << 20;

/// The remotecommand protocol versions, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V4,
    V3,
    V2,
    V1,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [Protocol::V4, Protocol::V3, Protocol::V2, Protocol::V1];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::V4 => "v4.channel.k8s.io",
            Protocol::V3 => "v3.channel.k8s.io",
            Protocol::V2 => "v2.channel.k8s.io",
            Protocol::V1 => "channel.k8s.io",
        }
    }
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Failed(String),
}

/// What the error stream carries for `outcome` under `protocol`; `None`
/// for nothing.
pub fn error_stream_payload(
    protocol: Protocol,
    cmd: &[String],
    outcome: &Outcome,
) -> Option<String> {
    let (message, reason, code) = match outcome {
        Outcome::Exited(0) => {
            return (protocol == Protocol::V4)
                .then(|| r#"{"metadata":{},"status":"Success"}"#.to_string());
        }
        Outcome::Exited(code) => (
            format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                cmd.join(" ")
            ),
            "NonZeroExitCode",
            Some(*code),
        ),
        Outcome::Failed(message) => (message.clone(), "InternalError", None),
    };
    if protocol != Protocol::V4 {
        return Some(message);
    }
    // Field order as metav1.Status marshals: metadata, status, message,
    // reason, details, code.
    #[derive(serde::Serialize)]
    struct Status<'a> {
        metadata: Empty,
        status: &'a str,
        message: &'a str,
        reason: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        details: Option<Details>,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
    }
    #[derive(serde::Serialize)]
    struct Empty {}
    #[derive(serde::Serialize)]
    struct Details {
        causes: [Cause; 1],
    }
    #[derive(serde::Serialize)]
    struct Cause {
        reason: &'static str,
        message: String,
    }
    let status = Status {
        metadata: Empty {},
        status: "Failure",
        message: &message,
        reason,
        details: code.map(|code| Details {
            causes: [Cause {
                reason: "ExitCode",
                message: code.to_string(),
            }],
        }),
        code: code.is_none().then_some(500),
    };
    serde_json::to_string(&status).ok()
}

/// The streams the client opened, by type (exec and attach alike).
#[derive(Debug, Default)]
pub(super) struct Streams {
    pub(super) error: Option<u32>,
    pub(super) stdin: Option<u32>,
    pub(super) stdout: Option<u32>,
    pub(super) stderr: Option<u32>,
    pub(super) resize: Option<u32>,
}

impl Streams {
    /// Whether the error stream and each wanted stdio stream are open.
    pub(super) fn ready(&self, stdin: bool, stdout: bool, stderr: bool) -> bool {
        self.error.is_some()
            && (!stdin || self.stdin.is_some())
            && (!stdout || self.stdout.is_some())
            && (!stderr || self.stderr.is_some())
    }

    pub(super) fn slot(&mut self, kind: &str) -> Option<&mut Option<u32>> {
        match kind {
            "error" => Some(&mut self.error),
            "stdin" => Some(&mut self.stdin),
            "stdout" => Some(&mut self.stdout),
            "stderr" => Some(&mut self.stderr),
            "resize" => Some(&mut self.resize),
            _ => None,
        }
    }

    pub(super) fn all(&self) -> impl Iterator<Item = u32> {
        [
            self.error,
            self.stdin,
            self.stdout,
            self.stderr,
            self.resize,
        ]
        .into_iter()
        .flatten()
    }
}

/// The running command: its stdin queue, and its outcome.
struct Running {
    stdin: Option<mpsc::Sender<Vec<u8>>>,
    /// The pty master, with a TTY.
    terminal: Option<Arc<AsyncFd<OwnedFd>>>,
    cancel: Option<oneshot::Sender<()>>,
    done: oneshot::Receiver<Outcome>,
}

/// Serves one exec session until the command ends or the client goes away.
/// Never panics on client input.
pub async fn serve(
    mut conn: Connection,
    protocol: Protocol,
    request: ExecRequest,
    pods: Arc<PodManager>,
) {
    let out = conn.out.clone();
    let mut streams = Streams::default();
    let mut early_stdin: Vec<Vec<u8>> = Vec::new();
    let mut early_len = 0usize;
    let mut stdin_closed = false;
    let mut running: Option<Running> = None;
    let mut resize_buf = Vec::new();
    let mut early_size: Option<TerminalSize> = None;
    let creation_deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;

    let outcome: Option<Outcome> = loop {
        let event = match running.as_mut() {
            None => match tokio::time::timeout_at(creation_deadline, conn.events.recv()).await {
                Ok(event) => event,
                Err(_) => {
                    tracing::info!("streaming exec: the client did not open its streams in time");
                    break None;
                }
            },
            Some(run) => {
                tokio::select! {
                    outcome = &mut run.done => {
                        break Some(outcome.unwrap_or_else(|_| Outcome::Failed("the exec task ended unexpectedly".into())));
                    }
                    event = conn.events.recv() => event,
                }
            }
        };
        let Some(event) = event else {
            break None;
        };
        match event {
            ClientEvent::Open { id, headers } => {
                let kind = headers
                    .iter()
                    .find(|(name, _)| name == "streamtype")
                    .map(|(_, value)| value.as_str())
                    .unwrap_or_default();
                match streams.slot(kind) {
                    Some(slot) if slot.is_none() => {
                        *slot = Some(id);
                        let _ = out.send(ServerEvent::Accept { id }).await;
                    }
                    _ => {
                        tracing::info!(streamtype = %kind, "streaming exec: refusing a stream");
                        let _ = out.send(ServerEvent::Refuse { id }).await;
                    }
                }
            }
            ClientEvent::Data { id, data } if Some(id) == streams.stdin && !stdin_closed => {
                match running.as_ref().and_then(|r| r.stdin.as_ref()) {
                    // The process may have closed its stdin: drop the data.
                    Some(tx) => {
                        let _ = tx.send(data).await;
                    }
                    None if running.is_none() => {
                        early_len += data.len();
                        if early_len > MAX_EARLY_STDIN {
                            tracing::info!(
                                "streaming exec: too much stdin before the streams were open"
                            );
                            break None;
                        }
                        early_stdin.push(data);
                    }
                    None => {}
                }
            }
            ClientEvent::Data { id, data } if Some(id) == streams.resize => {
                resize_buf.extend_from_slice(&data);
                for size in parse_sizes(&mut resize_buf) {
                    match running.as_ref().and_then(|r| r.terminal.as_ref()) {
                        Some(master) => resize(master, size),
                        None => early_size = Some(size),
                    }
                }
            }
            ClientEvent::Fin { id } | ClientEvent::Reset { id } if Some(id) == streams.stdin => {
                stdin_closed = true;
                if let Some(run) = running.as_mut() {
                    run.stdin = None;
                }
            }
            _ => {}
        }
        if running.is_none() && streams.ready(request.stdin, request.stdout, request.stderr) {
            let run = start(&request, &streams, &pods, out.clone()).await;
            let mut run = match run {
                Ok(run) => run,
                Err(message) => break Some(Outcome::Failed(message)),
            };
            if let Some(tx) = run.stdin.as_ref() {
                for data in early_stdin.drain(..) {
                    let _ = tx.send(data).await;
                }
            }
            if stdin_closed {
                run.stdin = None;
            }
            if let (Some(master), Some(size)) = (run.terminal.as_ref(), early_size.take()) {
                resize(master, size);
            }
            running = Some(run);
        }
    };

    match outcome {
        Some(outcome) => {
            if let Some(id) = streams.error
                && let Some(text) = error_stream_payload(protocol, &request.cmd, &outcome)
            {
                let _ = out
                    .send(ServerEvent::Data {
                        id,
                        data: text.into_bytes(),
                    })
                    .await;
            }
            for id in streams.all() {
                let _ = out.send(ServerEvent::Finish { id }).await;
            }
        }
        None => {
            // The client went away or broke the protocol: stop the command.
            if let Some(mut run) = running.take() {
                if let Some(cancel) = run.cancel.take() {
                    let _ = cancel.send(());
                }
                let _ = run.done.await;
            }
        }
    }
    drop(out);
    conn.close().await;
}

/// Spawns the command and the tasks that pump its stdio.
async fn start(
    request: &ExecRequest,
    streams: &Streams,
    pods: &Arc<PodManager>,
    out: mpsc::Sender<ServerEvent>,
) -> Result<Running, String> {
    if request.tty {
        return start_tty(request, streams, pods, out).await;
    }
    let mut prepared = pods
        .prepare_exec(&request.container_id, request.cmd.clone(), false)
        .await
        .map_err(|e| e.to_string())?;
    let null = std::process::Stdio::null;
    let piped = std::process::Stdio::piped;
    prepared
        .command
        .stdin(if request.stdin { piped() } else { null() })
        .stdout(if request.stdout { piped() } else { null() })
        .stderr(if request.stderr { piped() } else { null() });
    let mut child = match prepared.command.spawn() {
        Ok(child) => child,
        Err(e) => {
            prepared.cleanup().await;
            return Err(format!(
                "cannot run the runtime {}: {e}",
                prepared.runtime_path.display()
            ));
        }
    };
    let mut pumps = Vec::new();
    for (pipe, stream_id) in [
        (child.stdout.take().map(Pipe::Out), streams.stdout),
        (child.stderr.take().map(Pipe::Err), streams.stderr),
    ] {
        if let (Some(pipe), Some(stream_id)) = (pipe, stream_id) {
            pumps.push(tokio::spawn(pump_output(pipe, stream_id, out.clone())));
        }
    }
    let stdin = child.stdin.take().map(|mut pipe| {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if pipe.write_all(&data).await.is_err() {
                    break;
                }
            }
            // Dropping the pipe closes the process's stdin.
        });
        tx
    });
    let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(async move {
        let outcome = wait(&mut child, &prepared, pumps, cancel_rx).await;
        prepared.cleanup().await;
        let _ = done_tx.send(outcome);
    });
    Ok(Running {
        stdin,
        terminal: None,
        cancel: Some(cancel_tx),
        done: done_rx,
    })
}

/// How long the runtime may take to send the pty master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Spawns the command with a terminal and the tasks that pump it.
async fn start_tty(
    request: &ExecRequest,
    streams: &Streams,
    pods: &Arc<PodManager>,
    out: mpsc::Sender<ServerEvent>,
) -> Result<Running, String> {
    let null = std::process::Stdio::null;
    let mut prepared = pods
        .prepare_exec(&request.container_id, request.cmd.clone(), true)
        .await
        .map_err(|e| e.to_string())?;
    let Some(listener) = prepared.console.take() else {
        prepared.cleanup().await;
        return Err("no console socket was prepared".into());
    };
    prepared
        .command
        .stdin(null())
        .stdout(null())
        .stderr(std::process::Stdio::piped());
    let mut child = match prepared.command.spawn() {
        Ok(child) => child,
        Err(e) => {
            prepared.cleanup().await;
            return Err(format!(
                "cannot run the runtime {}: {e}",
                prepared.runtime_path.display()
            ));
        }
    };
    let mut pumps = Vec::new();
    // The runtime's own errors (a missing program…) show on the terminal's stream.
    if let (Some(pipe), Some(id)) = (child.stderr.take(), streams.stdout) {
        pumps.push(tokio::spawn(pump_output(Pipe::Err(pipe), id, out.clone())));
    }
    let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel();
    let received = tokio::select! {
        master = tokio::time::timeout(CONSOLE_TIMEOUT, receive_master(&listener)) => {
            Some(master.unwrap_or_else(|_| Err(io::Error::other("timed out"))))
        }
        // The runtime failed before it made a terminal.
        _ = child.wait() => None,
    };
    drop(listener);
    let master = match received {
        Some(Ok(master)) => master,
        Some(Err(e)) => {
            let _ = child.kill().await;
            prepared.cleanup().await;
            return Err(format!(
                "the runtime {} sent no terminal: {e}",
                prepared.runtime_path.display()
            ));
        }
        None => {
            tokio::spawn(async move {
                let outcome = wait(&mut child, &prepared, pumps, cancel_rx).await;
                prepared.cleanup().await;
                let _ = done_tx.send(outcome);
            });
            return Ok(Running {
                stdin: None,
                terminal: None,
                cancel: Some(cancel_tx),
                done: done_rx,
            });
        }
    };
    // SAFETY: `master` is an owned, open descriptor that the AsyncFd owns
    // from now on; nothing else closes or replaces it while registered.
    let registered = set_nonblocking(&master)
        .and_then(|()| unsafe { AsyncFd::register(master) }.map_err(|e| e.into_parts().1));
    let master = match registered {
        Ok(master) => Arc::new(master),
        Err(e) => {
            let _ = child.kill().await;
            prepared.cleanup().await;
            return Err(format!("cannot use the terminal: {e}"));
        }
    };
    pumps.push(tokio::spawn(pump_terminal(
        master.clone(),
        streams.stdout,
        out.clone(),
    )));
    let stdin = request.stdin.then(|| {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        let master = master.clone();
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if write_master(&master, &data).await.is_err() {
                    return;
                }
            }
            // The client closed stdin: type the EOF character.
            let _ = write_master(&master, b"\x04").await;
        });
        tx
    });
    tokio::spawn(async move {
        let outcome = wait(&mut child, &prepared, pumps, cancel_rx).await;
        prepared.cleanup().await;
        let _ = done_tx.send(outcome);
    });
    Ok(Running {
        stdin,
        terminal: Some(master),
        cancel: Some(cancel_tx),
        done: done_rx,
    })
}

/// Accepts the runtime's connection and receives the pty master, without
/// blocking a worker: `recvmsg` runs only once the socket is readable.
async fn receive_master(listener: &UnixListener) -> io::Result<OwnedFd> {
    let (stream, _) = listener.accept().await?;
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || crate::tty::recv_fd(stream.as_fd())) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL)?;
    fcntl(
        fd.as_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

fn resize(master: &AsyncFd<OwnedFd>, size: TerminalSize) {
    if let Err(e) = crate::tty::set_window_size(master.get_ref().as_fd(), size.width, size.height) {
        tracing::info!(error = %e, "streaming exec: cannot resize the terminal");
    }
}

async fn write_master(master: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = master.writable().await?;
        match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

/// The terminal's output to stream `stdout` (read and dropped without one,
/// so the process never blocks on a full terminal). Ends when the last
/// process holding the terminal exits (the master then reads EIO).
async fn pump_terminal(
    master: Arc<AsyncFd<OwnedFd>>,
    stdout: Option<u32>,
    out: mpsc::Sender<ServerEvent>,
) {
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let n = loop {
            let Ok(mut guard) = master.readable().await else {
                return;
            };
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), &mut chunk).map_err(io::Error::from))
            {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => break n,
                Err(_would_block) => {}
            }
        };
        chunk.truncate(n);
        if let Some(id) = stdout
            && out
                .send(ServerEvent::Data { id, data: chunk })
                .await
                .is_err()
        {
            return;
        }
    }
}

enum Pipe {
    Out(tokio::process::ChildStdout),
    Err(tokio::process::ChildStderr),
}

async fn pump_output(mut pipe: Pipe, stream_id: u32, out: mpsc::Sender<ServerEvent>) {
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let n = match &mut pipe {
            Pipe::Out(p) => p.read(&mut chunk).await,
            Pipe::Err(p) => p.read(&mut chunk).await,
        };
        let n = match n {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        chunk.truncate(n);
        let frame = ServerEvent::Data {
            id: stream_id,
            data: chunk,
        };
        // Waiting here is the back-pressure: no more is read from the
        // process until the writer has taken this frame.
        if out.send(frame).await.is_err() {
            return;
        }
    }
}

async fn wait(
    child: &mut tokio::process::Child,
    prepared: &PreparedExec,
    mut pumps: Vec<tokio::task::JoinHandle<()>>,
    cancel: oneshot::Receiver<()>,
) -> Outcome {
    let status = tokio::select! {
        status = child.wait() => status,
        _ = cancel => {
            // Kill the command itself first, so the runtime reaps it and no
            // process stays behind in the container; then the runtime.
            // The runtime may not have written the pid file yet when the
            // client leaves right after the start: wait for it a little.
            for _ in 0..100 {
                if let Ok(pid) = tokio::fs::read_to_string(&prepared.pid_file).await
                    && let Ok(pid) = pid.trim().parse::<i32>()
                    && pid > 0
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    break;
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if tokio::time::timeout(Duration::from_secs(2), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            for pump in pumps {
                pump.abort();
            }
            return Outcome::Failed("the client went away".into());
        }
    };
    let drained = async {
        for pump in pumps.iter_mut() {
            let _ = pump.await;
        }
    };
    if tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, drained)
        .await
        .is_err()
    {
        // Something in the container still holds the output open.
        for pump in &pumps {
            pump.abort();
        }
    }
    match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            Outcome::Exited(
                status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(255),
            )
        }
        Err(e) => Outcome::Failed(format!("waiting for the command failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_status_shapes_match_kubernetes() {
        let cmd = vec!["sh".to_string(), "-c".to_string(), "exit 3".to_string()];
        assert_eq!(
            error_stream_payload(Protocol::V4, &cmd, &Outcome::Exited(0)).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        assert_eq!(
            error_stream_payload(Protocol::V4, &cmd, &Outcome::Exited(3)).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        assert_eq!(
            error_stream_payload(Protocol::V3, &cmd, &Outcome::Exited(0)),
            None
        );
        assert_eq!(
            error_stream_payload(Protocol::V2, &cmd, &Outcome::Exited(3)).unwrap(),
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
    }
}
