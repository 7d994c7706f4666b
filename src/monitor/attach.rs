//! The attach socket and the container's stdin, inside the monitor.
//!
//! The monitor listens on `attach.sock` in the container's run directory
//! (the bundle). Up to [`MAX_CLIENTS`] clients at once (rcri's Attach
//! sessions) each get the container's output from the moment they connect,
//! and may send stdin and window sizes. Because the socket lives with the
//! monitor, attaching works across restarts of `rcri serve`.
//!
//! Both directions carry frames:
//!
//! ```text
//! tag (1 byte) | length (u32, big endian) | payload (length bytes, at most 64 KiB)
//! ```
//!
//! - monitor → client: [`TAG_STDOUT`], [`TAG_STDERR`] (a TTY container's
//!   output is all stdout). The monitor closes the connection once the
//!   container has exited and its output is drained.
//! - client → monitor: [`TAG_STDIN`] data; [`TAG_CLOSE_STDIN`] (the client
//!   is done with stdin: with `stdin_once` the container's stdin is closed);
//!   [`TAG_RESIZE`] with width and height as two big-endian u16 (TTY only).
//!   Unknown tags are ignored; an oversized frame ends the connection.
//!
//! The container's stdin (when the config asks for one) is a FIFO
//! (`start-stdin` in the bundle, which rcri also gives to `start`), or the
//! pty master for a TTY container; the monitor writes into it what attach
//! clients send and what is written to the `stdin_fifo`. With `stdin_once`,
//! the first client that closes its stdin (or leaves after sending some)
//! closes the container's stdin for good: a pipe gets EOF, a terminal gets
//! the EOF character (^D), as a user typing it would.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;

use super::diag;
use super::log::Stream;

pub const TAG_STDIN: u8 = 0;
pub const TAG_STDOUT: u8 = 1;
pub const TAG_STDERR: u8 = 2;
pub const TAG_CLOSE_STDIN: u8 = 3;
pub const TAG_RESIZE: u8 = 4;
/// The largest payload of one frame.
pub const MAX_FRAME: usize = 64 * 1024;
/// The frame header: tag and length.
pub const HEADER: usize = 5;

/// Clients attached at once; more are closed at once.
const MAX_CLIENTS: usize = 8;
/// Output queued for one client. A client that falls this far behind is
/// disconnected rather than served with holes: the container and its log
/// must never wait for it, and a cut connection is visible to the user
/// where silently dropped output is not.
const CLIENT_QUEUE: usize = 256 * 1024;
/// Stdin held for a container that does not read it; sources are read no
/// further until it drains.
const STDIN_QUEUE: usize = 64 * 1024;

/// Appends one frame.
pub fn encode(tag: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Takes the first complete frame off `buf`: `Ok(None)` if more bytes are
/// needed, `Err` for a frame larger than [`MAX_FRAME`].
pub fn decode(buf: &mut Vec<u8>) -> Result<Option<(u8, Vec<u8>)>, String> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_FRAME {
        return Err(format!("frame of {len} bytes is larger than {MAX_FRAME}"));
    }
    if buf.len() < HEADER + len {
        return Ok(None);
    }
    let tag = buf[0];
    let payload = buf[HEADER..HEADER + len].to_vec();
    buf.drain(..HEADER + len);
    Ok(Some((tag, payload)))
}

/// The payload of a [`TAG_RESIZE`] frame.
pub fn resize_payload(width: u16, height: u16) -> [u8; 4] {
    let [w0, w1] = width.to_be_bytes();
    let [h0, h1] = height.to_be_bytes();
    [w0, w1, h0, h1]
}

/// The container's stdin as the monitor feeds it.
pub(super) struct Stdin {
    /// Our end: the pipe's write end or a dup of the pty master; None once
    /// closed (or when the container has no stdin).
    sink: Option<OwnedFd>,
    terminal: bool,
    pending: Vec<u8>,
    /// Close once `pending` is written.
    closing: bool,
    once: bool,
    /// The stdin FIFO, opened read-write (it never reports EOF).
    fifo: Option<File>,
    /// A read end of the container's stdin FIFO, held so writes succeed
    /// before the container opened it.
    _reader: Option<OwnedFd>,
}

impl Stdin {
    pub(super) fn new(
        sink: Option<OwnedFd>,
        terminal: bool,
        once: bool,
        fifo: Option<File>,
    ) -> Stdin {
        Stdin {
            sink,
            terminal,
            pending: Vec::new(),
            closing: false,
            once,
            fifo,
            _reader: None,
        }
    }

    pub(super) fn keep_reader(&mut self, reader: Option<OwnedFd>) {
        self._reader = reader;
    }

    fn room(&self) -> bool {
        self.pending.len() < STDIN_QUEUE
    }

    fn open(&self) -> bool {
        self.sink.is_some() && !self.closing
    }

    fn push(&mut self, data: &[u8]) {
        if self.open() {
            self.pending.extend_from_slice(data);
            self.flush();
        }
    }

    fn close(&mut self) {
        if self.sink.is_some() && !self.closing {
            diag(format_args!("closing the container's stdin (stdin_once)"));
            self.closing = true;
            self.fifo = None;
            self.flush();
        }
    }

    /// Writes what it can without blocking.
    fn flush(&mut self) {
        let Some(sink) = &self.sink else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            match nix::unistd::write(sink, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(e) => {
                    // The container closed its stdin or exited.
                    if e != Errno::EPIPE && e != Errno::EIO {
                        diag(format_args!("writing the container's stdin failed: {e}"));
                    }
                    self.sink = None;
                    self.pending.clear();
                    return;
                }
            }
        }
        if self.closing {
            if self.terminal {
                // VEOF: ends a read of the line discipline in canonical mode.
                let _ = nix::unistd::write(sink, b"\x04");
            }
            self.sink = None;
        }
    }
}

struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    sent_stdin: bool,
    dead: bool,
}

/// The attach listener, its clients and the container's stdin.
pub(super) struct Hub {
    listener: Option<UnixListener>,
    clients: Vec<Client>,
    stdin: Stdin,
    /// The pty master of a TTY container, for resizes.
    terminal: Option<OwnedFd>,
    /// Where this hub's entries start in the poll set.
    base: usize,
}

impl Hub {
    pub(super) fn new(
        listener: Option<UnixListener>,
        stdin: Stdin,
        terminal: Option<OwnedFd>,
    ) -> Hub {
        Hub {
            listener,
            clients: Vec::new(),
            stdin,
            terminal,
            base: 0,
        }
    }

    /// Adds this hub's descriptors to the poll set: the listener, the FIFO,
    /// the stdin sink, then each client (always the same number of entries
    /// for the same clients; -1 for nothing to wait for).
    pub(super) fn register(&mut self, fds: &mut Vec<libc::pollfd>) {
        self.clients.retain(|c| !c.dead);
        self.base = fds.len();
        let entry = |fd: Option<i32>, events: libc::c_short| libc::pollfd {
            fd: fd.unwrap_or(-1),
            events,
            revents: 0,
        };
        let room = self.stdin.room();
        fds.push(entry(
            self.listener.as_ref().map(|l| l.as_raw_fd()),
            libc::POLLIN,
        ));
        fds.push(entry(
            self.stdin
                .fifo
                .as_ref()
                .filter(|_| room)
                .map(|f| f.as_raw_fd()),
            libc::POLLIN,
        ));
        fds.push(entry(
            self.stdin
                .sink
                .as_ref()
                .filter(|_| !self.stdin.pending.is_empty())
                .map(|s| s.as_raw_fd()),
            libc::POLLOUT,
        ));
        for client in &self.clients {
            let mut events = 0;
            // A full stdin queue stops reading clients: back-pressure.
            if room {
                events |= libc::POLLIN;
            }
            if !client.output.is_empty() {
                events |= libc::POLLOUT;
            }
            fds.push(entry(Some(client.stream.as_raw_fd()), events));
        }
    }

    /// Handles what poll reported for the entries [`Hub::register`] added.
    pub(super) fn dispatch(&mut self, fds: &[libc::pollfd]) {
        let Some(mine) = fds.get(self.base..) else {
            return;
        };
        let ready = |i: usize| mine.get(i).map(|f| f.revents).unwrap_or(0);
        if ready(2) != 0 {
            self.stdin.flush();
        }
        if ready(1) != 0 {
            self.read_fifo();
        }
        for i in 0..self.clients.len() {
            let revents = ready(3 + i);
            if revents == 0 {
                continue;
            }
            if revents & libc::POLLOUT != 0 {
                write_client(&mut self.clients[i]);
            }
            if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                self.read_client(i);
            }
        }
        if ready(0) != 0 {
            self.accept();
        }
    }

    fn accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    diag(format_args!("attach: accept failed: {e}"));
                    return;
                }
            };
            if self.clients.iter().filter(|c| !c.dead).count() >= MAX_CLIENTS {
                diag(format_args!(
                    "attach: {MAX_CLIENTS} clients are attached already; refusing another"
                ));
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                diag(format_args!("attach: {e}"));
                continue;
            }
            self.clients.push(Client {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                sent_stdin: false,
                dead: false,
            });
        }
    }

    fn read_fifo(&mut self) {
        let Some(fifo) = self.stdin.fifo.as_mut() else {
            return;
        };
        let mut buf = [0u8; 8192];
        match fifo.read(&mut buf) {
            Ok(0) => self.stdin.fifo = None,
            Ok(n) => self.stdin.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                diag(format_args!("reading the stdin FIFO failed: {e}"));
                self.stdin.fifo = None;
            }
        }
    }

    fn read_client(&mut self, i: usize) {
        let mut buf = [0u8; 16 * 1024];
        let client = &mut self.clients[i];
        let gone = match client.stream.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                client.input.extend_from_slice(&buf[..n]);
                false
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
            Err(_) => true,
        };
        loop {
            let frame = match decode(&mut self.clients[i].input) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    diag(format_args!("attach: {e}; disconnecting the client"));
                    self.drop_client(i);
                    return;
                }
            };
            match frame {
                (TAG_STDIN, data) => {
                    self.clients[i].sent_stdin = true;
                    self.stdin.push(&data);
                }
                (TAG_CLOSE_STDIN, _) if self.stdin.once => self.stdin.close(),
                (TAG_RESIZE, size) if size.len() == 4 => {
                    let width = u16::from_be_bytes([size[0], size[1]]);
                    let height = u16::from_be_bytes([size[2], size[3]]);
                    if let Some(master) = &self.terminal
                        && let Err(e) = crate::tty::set_window_size(master.as_fd(), width, height)
                    {
                        diag(format_args!("attach: resizing the terminal failed: {e}"));
                    }
                }
                _ => {}
            }
        }
        if gone {
            self.drop_client(i);
        }
    }

    fn drop_client(&mut self, i: usize) {
        let client = &mut self.clients[i];
        if client.dead {
            return;
        }
        client.dead = true;
        let _ = client.stream.shutdown(std::net::Shutdown::Both);
        if client.sent_stdin && self.stdin.once {
            self.stdin.close();
        }
    }

    /// Queues container output for every client.
    pub(super) fn broadcast(&mut self, stream: Stream, data: &[u8]) {
        let tag = match stream {
            Stream::Stdout => TAG_STDOUT,
            Stream::Stderr => TAG_STDERR,
        };
        for i in 0..self.clients.len() {
            let client = &mut self.clients[i];
            if client.dead {
                continue;
            }
            if client.output.len() + HEADER + data.len() > CLIENT_QUEUE {
                diag(format_args!(
                    "attach: a client is {} KiB behind; disconnecting it",
                    client.output.len() / 1024
                ));
                self.drop_client(i);
                continue;
            }
            encode(tag, data, &mut client.output);
            write_client(client);
        }
    }

    /// Once the container is gone: gives clients up to `within` to take
    /// their queued output, then closes every connection and the stdin.
    pub(super) fn finish(&mut self, within: Duration) {
        self.listener = None;
        self.stdin = Stdin::new(None, false, false, None);
        let deadline = Instant::now() + within;
        loop {
            self.clients.retain(|c| !c.dead && !c.output.is_empty());
            if self.clients.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut fds: Vec<libc::pollfd> = self
                .clients
                .iter()
                .map(|c| libc::pollfd {
                    fd: c.stream.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                })
                .collect();
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            if super::supervise::poll(&mut fds, ms).is_err() {
                break;
            }
            for (client, fd) in self.clients.iter_mut().zip(&fds) {
                if fd.revents != 0 {
                    write_client(client);
                }
            }
        }
        self.clients.clear();
    }
}

fn write_client(client: &mut Client) {
    while !client.output.is_empty() {
        match client.stream.write(&client.output) {
            Ok(0) => {
                client.dead = true;
                return;
            }
            Ok(n) => {
                client.output.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                client.dead = true;
                client.output.clear();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversize_is_refused() {
        let mut buf = Vec::new();
        encode(TAG_STDOUT, b"hello", &mut buf);
        encode(TAG_RESIZE, &resize_payload(80, 24), &mut buf);
        let mut partial = buf[..3].to_vec();
        assert_eq!(decode(&mut partial), Ok(None));
        assert_eq!(decode(&mut buf), Ok(Some((TAG_STDOUT, b"hello".to_vec()))));
        assert_eq!(decode(&mut buf), Ok(Some((TAG_RESIZE, vec![0, 80, 0, 24]))));
        assert!(buf.is_empty());
        let mut big = vec![TAG_STDIN];
        big.extend_from_slice(&((MAX_FRAME as u32) + 1).to_be_bytes());
        assert!(decode(&mut big).is_err());
    }
}
