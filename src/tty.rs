//! Terminal and unix-socket helpers shared by the monitor (TTY containers,
//! the attach socket) and the streaming server (exec with a TTY).
//!
//! A runtime given `--console-socket PATH` connects to PATH and sends the
//! pty master it created as SCM_RIGHTS ancillary data (the message text is
//! the terminal's name, which we ignore).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open};
use nix::libc;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::sys::stat::Mode;

/// The longest path a `sockaddr_un` holds (108 bytes with the NUL).
const SUN_PATH_MAX: usize = 107;

/// Receives one file descriptor sent with SCM_RIGHTS on `socket` (one
/// `recvmsg`; EAGAIN passes through for non-blocking sockets). Extra
/// descriptors in the message are closed.
pub fn recv_fd(socket: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut data = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received: Vec<OwnedFd> = Vec::new();
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in our table for
                // this message; nothing else owns it, so we take ownership
                // (it is closed when dropped).
                received.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if received.is_empty() {
        let what = if message.bytes == 0 {
            "the peer closed the socket without sending a terminal"
        } else {
            "the message carried no file descriptor"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidData, what));
    }
    Ok(received.swap_remove(0))
}

/// Sets the window size of the terminal `fd` (TIOCSWINSZ); the foreground
/// process group gets SIGWINCH.
pub fn set_window_size(fd: BorrowedFd<'_>, width: u16, height: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which
    // points to a live, initialised local for the whole call; `fd` is a
    // valid open descriptor borrowed for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A socket address for `dir/name` that fits a `sockaddr_un`.
///
/// Container directories can be deeper than the 107 bytes a socket path may
/// have, so a path that is too long goes through the directory's descriptor
/// instead: `/proc/self/fd/N/name` (or `/proc/PID/fd/N/name` for another
/// process, e.g. the runtime connecting to our console socket). The
/// descriptor must stay open while the path is used.
pub struct SocketPath {
    pub path: PathBuf,
    _dir: Option<OwnedFd>,
}

impl SocketPath {
    /// `pid`: the process whose descriptor table the path names (`None`:
    /// whoever resolves it, through `/proc/self`).
    pub fn new(dir: &Path, name: &str, pid: Option<u32>) -> io::Result<SocketPath> {
        let plain = dir.join(name);
        if plain.as_os_str().len() <= SUN_PATH_MAX {
            return Ok(SocketPath {
                path: plain,
                _dir: None,
            });
        }
        let fd = open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let who = pid.map_or_else(|| "self".to_string(), |pid| pid.to_string());
        Ok(SocketPath {
            path: PathBuf::from(format!("/proc/{who}/fd/{}/{name}", fd.as_raw_fd())),
            _dir: Some(fd),
        })
    }
}
