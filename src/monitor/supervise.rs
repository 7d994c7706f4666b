//! The monitor's process work: signals, the runtime's `create`, the poll
//! loop over the container's output, reaping, and the exit record.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::libc;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, pipe2};

use super::attach::{Hub, Stdin};
use super::log::{CriLogWriter, LogFile, Stream};
use super::runtime::{create_args, error_text, oom_kill_count, oom_killed};
use super::{ExitRecord, MonitorConfig, SyncReply, diag, send_reply};
use crate::tty::SocketPath;

/// One read from a pipe.
const READ_CHUNK: usize = 8192;
/// Output kept while `create` runs, before the log is opened.
const EARLY_CAP: usize = 32 * 1024;
/// How long output is still drained after the init exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// How often a container init that is not our child is checked.
const FOREIGN_INIT_CHECK: Duration = Duration::from_secs(1);
/// How much of the runtime's log is read for its error.
const RUNTIME_LOG_TAIL: u64 = 64 * 1024;
/// Exit statuses kept while the init pid is not known yet.
const REAPED_KEEP: usize = 64;
/// How long the runtime has, after `create` succeeded, to have sent the
/// pty master of a TTY container.
const CONSOLE_WAIT: Duration = Duration::from_secs(5);
/// After the exit, how long attach clients have to take their last output.
const ATTACH_FLUSH: Duration = Duration::from_secs(1);
/// The output descriptors: the stdout and stderr pipes, the pty master, and
/// the start FIFOs' read ends.
const OUTPUTS: usize = 5;
/// Their streams.
const STREAMS: [Stream; OUTPUTS] = [
    Stream::Stdout,
    Stream::Stderr,
    Stream::Stdout,
    Stream::Stdout,
    Stream::Stderr,
];
/// The outputs whose end the monitor waits for after the exit; the start
/// FIFOs after them never end (the monitor holds a writer of each).
const WAITED: usize = 3;
/// The FIFOs rcri passes as `start`'s stdout and stderr (see [`start_fifos`]).
pub const START_FIFOS: [&str; 2] = ["start-stdout", "start-stderr"];
/// The container's stdin FIFO, also given to `start` (see [`stdin_pipe`]).
pub const START_STDIN: &str = "start-stdin";

/// How a child ended.
#[derive(Clone, Copy, Debug)]
struct Ended {
    code: i32,
    signal: Option<i32>,
    at: SystemTime,
}

impl Ended {
    fn from_status(status: WaitStatus) -> Option<(Pid, Ended)> {
        let at = SystemTime::now();
        match status {
            WaitStatus::Exited(pid, code) => Some((
                pid,
                Ended {
                    code,
                    signal: None,
                    at,
                },
            )),
            WaitStatus::Signaled(pid, signal, _) => Some((
                pid,
                Ended {
                    code: 128 + signal as i32,
                    signal: Some(signal as i32),
                    at,
                },
            )),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self.signal {
            Some(signal) => format!("killed by signal {signal}"),
            None => format!("exit status {}", self.code),
        }
    }
}

/// What the signalfd delivered.
#[derive(Default)]
struct Signals {
    child: bool,
    reopen: bool,
}

/// Which descriptors poll found ready.
#[derive(Default)]
struct Ready {
    signal: bool,
    pipes: [bool; OUTPUTS],
    /// The whole poll set, for the attach hub's entries.
    fds: Vec<libc::pollfd>,
}

/// One read from a pipe.
enum Chunk {
    Data(usize),
    Nothing,
    Closed,
}

/// The container after a successful `create`.
struct Created {
    init: Pid,
    early: [Vec<u8>; 2],
    oom_before: Option<u64>,
    /// The pty master of a TTY container.
    master: Option<OwnedFd>,
}

struct Monitor<'a> {
    config: &'a MonitorConfig,
    signals: SignalFd,
    /// Our ends of the container's stdout and stderr pipes, and the pty
    /// master of a TTY container; None after EOF.
    pipes: [Option<OwnedFd>; OUTPUTS],
    /// Attach clients and the container's stdin, once created.
    hub: Option<Hub>,
    /// Children reaped before the init pid was known.
    reaped: Vec<(Pid, Ended)>,
}

pub(super) fn run(config: &MonitorConfig) -> ExitCode {
    let (mut monitor, created) = match start(config) {
        Ok(started) => started,
        Err(error) => {
            diag(format_args!("create failed: {error}"));
            send_reply(&SyncReply::failed(error));
            return ExitCode::FAILURE;
        }
    };
    send_reply(&SyncReply::created(created.init.as_raw()));
    close_stdout();
    diag(format_args!("container created, init pid {}", created.init));
    match monitor.supervise(created) {
        Ok(record) => {
            diag(format_args!(
                "container exited: code {}, signal {:?}, oom killed {}",
                record.exit_code, record.signal, record.oom_killed
            ));
            ExitCode::SUCCESS
        }
        Err(error) => {
            diag(format_args!("{error}"));
            ExitCode::FAILURE
        }
    }
}

/// Everything up to the sync reply: set-up, `create`, the init pid.
fn start(config: &MonitorConfig) -> Result<(Monitor<'_>, Created), String> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("cannot become the child subreaper: {e}"))?;
    let mut mask = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGUSR1,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(signal);
    }
    // Blocked before any child exists, so no SIGCHLD is lost. Children get
    // an empty mask back ([`reset_signals_in_child`]).
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("cannot create a signalfd: {e}"))?;
    let (out_read, out_write) = output_pipe()?;
    let (err_read, err_write) = output_pipe()?;
    let console = if config.terminal {
        Some(ConsoleSocket::bind(&config.bundle)?)
    } else {
        None
    };
    let attach = bind_attach(&config.bundle)?;
    let [start_out, start_err] = start_fifos(&config.bundle)?;
    let fifo = stdin_fifo(config)?;
    // A TTY container reads the pty; otherwise a FIFO we write into.
    let (container_stdin, sink, keeper) = if config.stdin && !config.terminal {
        let [read, write, keeper] = stdin_pipe(&config.bundle)?;
        (Stdio::from(read), Some(write), Some(keeper))
    } else {
        (Stdio::null(), None, None)
    };
    let mut monitor = Monitor {
        config,
        signals,
        pipes: [Some(out_read), Some(err_read), None, None, None],
        hub: None,
        reaped: Vec::new(),
    };
    let mut created = monitor.create(out_write, err_write, container_stdin, console.as_ref())?;
    let mut sink = sink;
    if let Some(master) = &created.master {
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| format!("cannot duplicate the pty master: {e}"))
        };
        if config.stdin {
            sink = Some(dup(master)?);
        }
        monitor.pipes[2] = Some(dup(master)?);
    }
    monitor.pipes[3] = Some(start_out);
    monitor.pipes[4] = Some(start_err);
    let mut stdin = Stdin::new(sink, config.terminal, config.stdin_once, fifo);
    stdin.keep_reader(keeper);
    monitor.hub = Some(Hub::new(Some(attach), stdin, created.master.take()));
    Ok((monitor, created))
}

/// The listening console socket of a TTY container: `console.sock` in the
/// bundle, given to the runtime's `create --console-socket`.
struct ConsoleSocket {
    listener: UnixListener,
    /// The path the runtime connects to (it may go through our descriptor
    /// of the bundle, which this keeps open).
    path: SocketPath,
    file: PathBuf,
}

impl ConsoleSocket {
    fn bind(bundle: &Path) -> Result<ConsoleSocket, String> {
        let file = bundle.join("console.sock");
        let _ = fs::remove_file(&file);
        let ours = SocketPath::new(bundle, "console.sock", None)
            .map_err(|e| format!("cannot open {}: {e}", bundle.display()))?;
        let listener = UnixListener::bind(&ours.path)
            .map_err(|e| format!("cannot listen on {}: {e}", file.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot set up {}: {e}", file.display()))?;
        let path = SocketPath::new(bundle, "console.sock", Some(std::process::id()))
            .map_err(|e| format!("cannot open {}: {e}", bundle.display()))?;
        Ok(ConsoleSocket {
            listener,
            path,
            file,
        })
    }

    /// The pty master the runtime sent during `create`.
    fn receive(&self) -> Result<OwnedFd, String> {
        let fail = |e: &dyn std::fmt::Display| {
            format!(
                "the runtime sent no terminal on {}: {e}",
                self.file.display()
            )
        };
        let deadline = Instant::now() + CONSOLE_WAIT;
        let wait_for = |fd: i32| -> Result<(), String> {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            }];
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
            match poll(&mut fds, ms) {
                Ok(0) => Err(fail(&"timed out")),
                Ok(_) => Ok(()),
                Err(e) => Err(fail(&e)),
            }
        };
        wait_for(self.listener.as_raw_fd())?;
        let (conn, _) = self.listener.accept().map_err(|e| fail(&e))?;
        wait_for(conn.as_raw_fd())?;
        let master = crate::tty::recv_fd(conn.as_fd()).map_err(|e| fail(&e))?;
        set_nonblocking(&master)?;
        let _ = fs::remove_file(&self.file);
        Ok(master)
    }
}

/// Creates and opens the start FIFOs in the bundle: rcri passes their write
/// ends as the stdout and stderr of the runtime's `start`. Some runtimes
/// (runsc, for a pod's second container) give the container the stdio of
/// `start` rather than of `create`; its output then arrives here. Opened
/// read-write and non-blocking: opening never blocks and they never report
/// end-of-file, so the monitor does not wait for them to end.
fn start_fifos(bundle: &Path) -> Result<[OwnedFd; 2], String> {
    let open = |name: &str| {
        let path = bundle.join(name);
        let _ = fs::remove_file(&path);
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
            .map_err(|e| format!("cannot create the FIFO {}: {e}", path.display()))?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map(OwnedFd::from)
            .map_err(|e| format!("cannot open the FIFO {}: {e}", path.display()))
    };
    Ok([open(START_FIFOS[0])?, open(START_FIFOS[1])?])
}

/// The container's stdin, a FIFO (`start-stdin` in the bundle) rather than
/// a pipe so that rcri can give it to `start` as well, for runtimes that
/// take a container's stdio from `start` (runsc). Returns the blocking read
/// end for `create`, our non-blocking write end, and a read end the monitor
/// keeps (never reads) so that writes do not fail while no container holds
/// one yet; end-of-file still comes when our write end closes.
fn stdin_pipe(bundle: &Path) -> Result<[OwnedFd; 3], String> {
    let path = bundle.join(START_STDIN);
    let _ = fs::remove_file(&path);
    nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("cannot create the FIFO {}: {e}", path.display()))?;
    let open = |write: bool| {
        OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map(OwnedFd::from)
            .map_err(|e| format!("cannot open the FIFO {}: {e}", path.display()))
    };
    // Readers first: a non-blocking open for writing needs one.
    let keeper = open(false)?;
    let read = open(false)?;
    let write = open(true)?;
    let flags =
        fcntl(read.as_fd(), FcntlArg::F_GETFL).map_err(|e| format!("cannot read fd flags: {e}"))?;
    fcntl(
        read.as_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) & !OFlag::O_NONBLOCK),
    )
    .map_err(|e| format!("cannot make the stdin FIFO blocking: {e}"))?;
    Ok([read, write, keeper])
}

/// Listens on `attach.sock` in the bundle (see [`super::attach`]).
fn bind_attach(bundle: &Path) -> Result<UnixListener, String> {
    let file = bundle.join("attach.sock");
    let _ = fs::remove_file(&file);
    let path = SocketPath::new(bundle, "attach.sock", None)
        .map_err(|e| format!("cannot open {}: {e}", bundle.display()))?;
    let listener = UnixListener::bind(&path.path)
        .map_err(|e| format!("cannot listen on {}: {e}", file.display()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot set up {}: {e}", file.display()))?;
    Ok(listener)
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), String> {
    let flags =
        fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(|e| format!("cannot read fd flags: {e}"))?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags))
        .map_err(|e| format!("cannot make a descriptor non-blocking: {e}"))?;
    Ok(())
}

/// A pipe for container output: both ends close-on-exec (the write end is
/// handed over through dup2, which clears it), our read end non-blocking.
fn output_pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let (read, write) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("cannot create a pipe: {e}"))?;
    set_nonblocking(&read)?;
    Ok((read, write))
}

/// The stdin FIFO, whose data the monitor passes on to the container's
/// stdin; opened read-write and non-blocking (so opening it never blocks
/// and a writer coming and going does not end it). None without stdin.
fn stdin_fifo(config: &MonitorConfig) -> Result<Option<File>, String> {
    if !config.stdin {
        return Ok(None);
    }
    let fifo = config
        .stdin_fifo
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or("stdin is requested but no stdin_fifo is configured")?;
    match nix::unistd::mkfifo(fifo, Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => {
            return Err(format!(
                "cannot create the stdin FIFO {}: {e}",
                fifo.display()
            ));
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .map_err(|e| format!("cannot open the stdin FIFO {}: {e}", fifo.display()))?;
    let is_fifo = {
        use std::os::unix::fs::FileTypeExt;
        file.metadata()
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false)
    };
    if !is_fifo {
        return Err(format!("{} exists and is not a FIFO", fifo.display()));
    }
    Ok(Some(file))
}

/// Makes the runtime (and so the container's init, which inherits from it)
/// start with no blocked signals and every disposition at its default. Not
/// every runtime resets them (youki 0.7 does not), and a container whose
/// init has SIGTERM blocked, or SIGQUIT ignored because rcri was started by a
/// shell in the background, cannot be stopped by its stop signal.
pub(super) fn reset_signals_in_child(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only
    // calls async-signal-safe functions (sigprocmask, sigaction); it
    // allocates nothing and touches no locks.
    unsafe {
        command.pre_exec(|| {
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            for signal in Signal::iterator() {
                if signal != Signal::SIGKILL && signal != Signal::SIGSTOP {
                    let _ = nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl);
                }
            }
            Ok(())
        });
    }
}

/// Replaces stdout (the sync pipe) with /dev/null so the server sees EOF.
fn close_stdout() {
    let result = File::options()
        .write(true)
        .open("/dev/null")
        .and_then(|null| nix::unistd::dup2_stdout(&null).map_err(io::Error::from));
    if let Err(e) = result {
        diag(format_args!("cannot close the sync pipe: {e}"));
    }
}

impl Monitor<'_> {
    /// Runs `create` and waits for it, keeping early output; then reads the
    /// init pid and the OOM counter.
    fn create(
        &mut self,
        out_write: OwnedFd,
        err_write: OwnedFd,
        stdin: Stdio,
        console: Option<&ConsoleSocket>,
    ) -> Result<Created, String> {
        let config = self.config;
        // Only what the runtime writes now is its error.
        let log_start = fs::metadata(&config.runtime_log)
            .map(|m| m.len())
            .unwrap_or(0);
        let mut command = Command::new(&config.runtime_path);
        command
            .args(create_args(config, console.map(|c| c.path.path.as_path())))
            .stdin(stdin)
            .stdout(Stdio::from(out_write))
            .stderr(Stdio::from(err_write));
        reset_signals_in_child(&mut command);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", config.runtime_path.display()))?;
        // Our copies of the pipes' write ends and of the stdin FIFO go away
        // with the command: only the container holds them now.
        drop(command);
        let create_pid = Pid::from_raw(child.id() as i32);
        drop(child);

        let started = Instant::now();
        let timeout = config.create_timeout_ms.map(Duration::from_millis);
        let mut timed_out = false;
        let mut early = [Vec::new(), Vec::new()];
        let mut buf = [0u8; READ_CHUNK];
        let ended = loop {
            if let Some(at) = self.reaped.iter().position(|(pid, _)| *pid == create_pid) {
                break self.reaped.remove(at).1;
            }
            let left = match timeout {
                Some(limit) if !timed_out => {
                    let left = limit.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        diag(format_args!("create timed out, killing pid {create_pid}"));
                        let _ = kill(create_pid, Signal::SIGKILL);
                        timed_out = true;
                        None
                    } else {
                        Some(left)
                    }
                }
                _ => None,
            };
            let room = early.iter().map(Vec::len).sum::<usize>() < EARLY_CAP;
            let ready = self.wait(room, left)?;
            if ready.signal && self.take_signals().child {
                self.reap();
            }
            for (i, early) in early.iter_mut().enumerate() {
                if ready.pipes[i]
                    && let Chunk::Data(n) = self.read_pipe(i, &mut buf)
                {
                    early.extend_from_slice(&buf[..n]);
                }
            }
        };

        if timed_out {
            return Err(format!(
                "{} create timed out after {} ms",
                config.runtime_path.display(),
                timeout.unwrap_or_default().as_millis()
            ));
        }
        if ended.signal.is_some() || ended.code != 0 {
            let log = read_tail(&config.runtime_log, log_start);
            let text = error_text(&log, &early[1]);
            let mut error = format!(
                "{} create failed ({})",
                config.runtime_path.display(),
                ended.describe()
            );
            if !text.is_empty() {
                error.push_str(": ");
                error.push_str(&text);
            }
            return Err(error);
        }
        let init = read_pid(&config.pid_file)?;
        let master = console.map(ConsoleSocket::receive).transpose()?;
        let oom_before = config.memory_cgroup.as_deref().and_then(oom_kill_count);
        Ok(Created {
            init,
            early,
            oom_before,
            master,
        })
    }

    /// Logs output until the init has exited and the pipes are drained, then
    /// writes the exit record.
    fn supervise(&mut self, created: Created) -> Result<ExitRecord, String> {
        let config = self.config;
        let mut log = CriLogWriter::new(LogFile::new(config.log_path.clone()));
        if let Err(e) = log.get_mut().reopen() {
            diag(format_args!(
                "cannot open the log {}: {e}; output is discarded until a reopen succeeds",
                config.log_path.display()
            ));
        }
        let mut log_failing = false;
        let [early_out, early_err] = &created.early;
        let _ = log.write(Stream::Stdout, early_out);
        let _ = log.write(Stream::Stderr, early_err);
        drop(created.early);

        let init = created.init;
        let mut exit = self.take_reaped(init);
        self.reaped = Vec::new();
        let mut foreign = false;
        if exit.is_none() {
            match waitpid(init, Some(WaitPidFlag::WNOHANG)) {
                Ok(status) => exit = Ended::from_status(status).map(|(_, ended)| ended),
                Err(e) => {
                    diag(format_args!(
                        "the init pid {init} is not our child ({e}); checking it every second"
                    ));
                    foreign = true;
                }
            }
        }
        let mut deadline = exit.map(|_| Instant::now() + DRAIN_AFTER_EXIT);
        let mut buf = [0u8; READ_CHUNK];
        loop {
            if exit.is_some() && self.pipes[..WAITED].iter().all(Option::is_none) {
                break;
            }
            let timeout = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        diag(format_args!(
                            "output still open {} s after the init exited; stopping",
                            DRAIN_AFTER_EXIT.as_secs()
                        ));
                        break;
                    }
                    Some(left)
                }
                None if foreign => Some(FOREIGN_INIT_CHECK),
                None => None,
            };
            let ready = self.wait(true, timeout)?;
            // Signals first: a reopen asked for before some output arrived
            // applies to that output.
            if ready.signal {
                let signals = self.take_signals();
                if signals.reopen {
                    match log.get_mut().reopen() {
                        Ok(()) => log_failing = false,
                        Err(e) => diag(format_args!(
                            "cannot reopen the log {}: {e}",
                            config.log_path.display()
                        )),
                    }
                }
                if signals.child {
                    self.reap();
                    if exit.is_none() {
                        exit = self.take_reaped(init);
                    }
                    self.reaped.clear();
                }
            }
            if let Some(hub) = self.hub.as_mut() {
                hub.dispatch(&ready.fds);
            }
            for (i, stream) in STREAMS.into_iter().enumerate() {
                if !ready.pipes[i] {
                    continue;
                }
                if let Chunk::Data(n) = self.read_pipe(i, &mut buf) {
                    if let Some(hub) = self.hub.as_mut() {
                        hub.broadcast(stream, &buf[..n]);
                    }
                    match log.write(stream, &buf[..n]) {
                        Ok(()) => log_failing = false,
                        Err(e) if !log_failing => {
                            diag(format_args!(
                                "cannot write the log {}: {e}",
                                config.log_path.display()
                            ));
                            log_failing = true;
                        }
                        Err(_) => {}
                    }
                }
            }
            if foreign && exit.is_none() && kill(init, None) == Err(Errno::ESRCH) {
                exit = Some(Ended {
                    code: 255,
                    signal: None,
                    at: SystemTime::now(),
                });
            }
            if exit.is_some() && deadline.is_none() {
                deadline = Some(Instant::now() + DRAIN_AFTER_EXIT);
            }
        }
        // What is left in the start FIFOs.
        for (i, stream) in STREAMS.into_iter().enumerate().skip(WAITED) {
            while let Chunk::Data(n) = self.read_pipe(i, &mut buf) {
                if let Some(hub) = self.hub.as_mut() {
                    hub.broadcast(stream, &buf[..n]);
                }
                let _ = log.write(stream, &buf[..n]);
            }
        }
        if let Err(e) = log.finish() {
            diag(format_args!(
                "cannot write the log {}: {e}",
                config.log_path.display()
            ));
        }
        drop(log);

        let exit = exit.unwrap_or(Ended {
            code: 255,
            signal: None,
            at: SystemTime::now(),
        });
        let oom_after = config.memory_cgroup.as_deref().and_then(oom_kill_count);
        let record = ExitRecord {
            exit_code: exit.code,
            signal: exit.signal,
            finished_at_unix_nanos: unix_nanos(exit.at),
            oom_killed: oom_killed(created.oom_before, oom_after),
        };
        let mut bytes = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        let written = crate::fsutil::write_atomic(&config.exit_file, &bytes).map_err(|e| {
            format!(
                "cannot write the exit file {}: {e}",
                config.exit_file.display()
            )
        });
        let _ = fs::remove_file(config.bundle.join("attach.sock"));
        if let Some(mut hub) = self.hub.take() {
            hub.finish(ATTACH_FLUSH);
        }
        written.map(|()| record)
    }

    /// Polls the signalfd and, if `pipes`, the open pipes; `None` waits
    /// without a time limit.
    fn wait(&mut self, pipes: bool, timeout: Option<Duration>) -> Result<Ready, String> {
        let mut fds = vec![
            libc::pollfd {
                fd: -1,
                events: 0,
                revents: 0,
            };
            1 + OUTPUTS
        ];
        fds[0].fd = self.signals.as_raw_fd();
        fds[0].events = libc::POLLIN;
        if let Some(hub) = self.hub.as_mut() {
            hub.register(&mut fds);
        }
        if pipes {
            for (i, pipe) in self.pipes.iter().enumerate() {
                if let Some(pipe) = pipe {
                    fds[i + 1].fd = pipe.as_raw_fd();
                    fds[i + 1].events = libc::POLLIN;
                }
            }
        }
        let timeout_ms = match timeout {
            // Round up, so a deadline is not polled for again and again.
            Some(t) => i32::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX),
            None => -1,
        };
        loop {
            match poll(&mut fds, timeout_ms) {
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("poll failed: {e}")),
            }
        }
        // A negative fd is never reported, so its revents stays 0.
        let ready = |fd: &libc::pollfd| fd.revents != 0;
        Ok(Ready {
            signal: ready(&fds[0]),
            pipes: std::array::from_fn(|i| ready(&fds[i + 1])),
            fds,
        })
    }

    /// Drains the signalfd.
    fn take_signals(&self) -> Signals {
        let mut signals = Signals::default();
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => signals.child = true,
                Ok(Signal::SIGUSR1) => signals.reopen = true,
                Ok(other) => diag(format_args!(
                    "ignoring {other} from pid {}: containers are stopped through the runtime",
                    info.ssi_pid
                )),
                Err(_) => {}
            }
        }
        signals
    }

    /// Reaps every child that has exited: as the subreaper we inherit every
    /// orphan of the container.
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(status) => {
                    if let Some(ended) = Ended::from_status(status) {
                        if self.reaped.len() == REAPED_KEEP {
                            self.reaped.remove(0);
                        }
                        self.reaped.push(ended);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    diag(format_args!("waitpid failed: {e}"));
                    break;
                }
            }
        }
    }

    fn take_reaped(&mut self, pid: Pid) -> Option<Ended> {
        let at = self.reaped.iter().position(|(p, _)| *p == pid)?;
        Some(self.reaped.remove(at).1)
    }

    /// One read from pipe `i`; closes it at EOF or on an error.
    fn read_pipe(&mut self, i: usize, buf: &mut [u8]) -> Chunk {
        let Some(pipe) = &self.pipes[i] else {
            return Chunk::Closed;
        };
        let result = loop {
            match nix::unistd::read(pipe.as_fd(), buf) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        };
        match result {
            Ok(0) => {
                self.pipes[i] = None;
                Chunk::Closed
            }
            Ok(n) => Chunk::Data(n),
            Err(Errno::EAGAIN) => Chunk::Nothing,
            // A pty master once every slave descriptor is closed.
            Err(Errno::EIO) => {
                self.pipes[i] = None;
                Chunk::Closed
            }
            Err(e) => {
                diag(format_args!("reading container output failed: {e}"));
                self.pipes[i] = None;
                Chunk::Closed
            }
        }
    }
}

/// `poll(2)` over `fds` (nix's `poll` feature is not enabled).
pub(super) fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> nix::Result<usize> {
    // SAFETY: `fds` is an exclusively borrowed slice of initialised pollfd
    // structs and its exact length is passed, so the kernel reads and writes
    // only within it; the call keeps no pointer after it returns.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    Errno::result(n).map(|n| n as usize)
}

/// What the runtime appended to its log since `start` (the last 64 KiB).
fn read_tail(path: &Path, start: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let from = if len < start {
        0 // replaced meanwhile
    } else {
        start.max(len.saturating_sub(RUNTIME_LOG_TAIL))
    };
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let _ = file.take(RUNTIME_LOG_TAIL).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn read_pid(path: &Path) -> Result<Pid, String> {
    let text = fs::read_to_string(path)
        .map_err(|e| format!("cannot read the pid file {}: {e}", path.display()))?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(Pid::from_raw(pid)),
        _ => Err(format!(
            "the pid file {} holds no pid: {:?}",
            path.display(),
            text.trim()
        )),
    }
}

fn unix_nanos(time: SystemTime) -> i64 {
    let nanos = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    i64::try_from(nanos).unwrap_or(i64::MAX)
}
