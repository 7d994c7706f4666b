//! `rcri monitor`: the small process that watches one container.
//!
//! `rcri serve` starts one monitor per container (the pod's pause container
//! included) with `rcri monitor --config FILE`, stdin on `/dev/null`, stdout
//! on a pipe the server reads (the *sync pipe*) and stderr on the monitor's
//! own log file. The monitor:
//!
//! 1. becomes the child subreaper and takes SIGCHLD, SIGUSR1, SIGTERM, SIGINT
//!    and SIGHUP through a signalfd (TERM, INT and HUP are ignored: the server
//!    stops containers through the runtime, never by killing monitors);
//! 2. runs `RUNTIME [runtime_args] --log RUNTIME_LOG create --bundle BUNDLE
//!    --pid-file PID_FILE ID` with the container's stdout and stderr on two
//!    pipes it holds, so the container's init inherits them and, once the
//!    runtime exits, becomes the monitor's child. A TTY container gets
//!    `--console-socket BUNDLE/console.sock` instead: the runtime sends the
//!    pty master there, and its output is the container's stdout;
//! 3. answers on the sync pipe with one JSON line, [`SyncReply`]:
//!    `{"ok":true,"pid":N}` or `{"ok":false,"error":"…"}` (then exits 1), and
//!    closes it;
//! 4. writes the container's output to `log_path` (also what arrives on the
//!    FIFOs `BUNDLE/start-stdout` and `BUNDLE/start-stderr`, which rcri gives
//!    the runtime's `start` as stdout and stderr: runsc hands a pod's second
//!    container the stdio of `start`) in the CRI format
//!    ([`log`]), reopening the file on SIGUSR1 (ReopenContainerLog), and
//!    serves attach clients and the container's stdin on
//!    `BUNDLE/attach.sock` ([`attach`]);
//! 5. when the init exits, drains the pipes (at most 2 s more), then writes
//!    the [`ExitRecord`] atomically to `exit_file` and exits 0.
//!
//! It is single-threaded, uses no async runtime and holds at most a few
//! dozen KiB of buffers, so it costs little per container and keeps working
//! while `rcri serve` is down or restarting.

pub mod attach;
pub mod exec_wait;
pub mod log;
mod runtime;
mod supervise;

pub use runtime::error_text as runtime_error_text;
pub use runtime::strip_terminal_escapes;
pub use supervise::{START_FIFOS, START_STDIN};

#[cfg(test)]
mod tests;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// What `rcri serve` tells a monitor to do, written as JSON to the file
/// given with `--config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorConfig {
    pub container_id: String,
    /// The OCI runtime binary (runc, crun, runsc, youki…).
    pub runtime_path: PathBuf,
    /// Global flags placed before the verb, e.g. `["--root", "/run/rcri/runtimes/runc"]`.
    #[serde(default)]
    pub runtime_args: Vec<String>,
    /// The bundle directory holding `config.json`.
    pub bundle: PathBuf,
    pub pid_file: PathBuf,
    /// Passed as the runtime's global `--log` flag; its errors are read from here.
    pub runtime_log: PathBuf,
    /// The CRI log file (`log_directory` + `log_path`); empty discards the output.
    #[serde(default)]
    pub log_path: PathBuf,
    /// Where the [`ExitRecord`] is written once the container has exited.
    pub exit_file: PathBuf,
    /// A TTY container (the spec's `process.terminal`): `create` gets a
    /// console socket and the monitor holds the pty master.
    #[serde(default)]
    pub terminal: bool,
    /// Give the container a stdin, fed by attach clients and the FIFO
    /// `stdin_fifo` (created if needed).
    #[serde(default)]
    pub stdin: bool,
    /// Close the container's stdin once the first attach client is done
    /// with it.
    #[serde(default)]
    pub stdin_once: bool,
    /// A FIFO whose data goes to the container's stdin when `stdin` is set.
    #[serde(default)]
    pub stdin_fifo: Option<PathBuf>,
    /// The container's memory cgroup directory (v1 `/sys/fs/cgroup/memory/…`
    /// or a v2 directory), read for OOM kills.
    #[serde(default)]
    pub memory_cgroup: Option<PathBuf>,
    /// Kill `create` (SIGKILL) and fail if it has not exited after this long.
    /// None waits for as long as it takes.
    #[serde(default)]
    pub create_timeout_ms: Option<u64>,
}

impl MonitorConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<MonitorConfig, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read the monitor config {}: {e}", path.display()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("invalid monitor config {}: {e}", path.display()))
    }

    /// Writes the config to `path` atomically.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        bytes.push(b'\n');
        crate::fsutil::write_atomic(path, &bytes)
    }
}

/// The one line a monitor writes on its stdout (the sync pipe) before
/// closing it: `{"ok":true,"pid":1234}` or `{"ok":false,"error":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReply {
    pub ok: bool,
    /// The container's init pid, when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Why the container could not be created, when not `ok`: the runtime's
    /// own error messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SyncReply {
    pub fn created(pid: i32) -> SyncReply {
        SyncReply {
            ok: true,
            pid: Some(pid),
            error: None,
        }
    }

    pub fn failed(error: impl Into<String>) -> SyncReply {
        SyncReply {
            ok: false,
            pid: None,
            error: Some(error.into()),
        }
    }

    /// Parses the line read from the sync pipe.
    pub fn parse(line: &str) -> Result<SyncReply, String> {
        serde_json::from_str(line.trim())
            .map_err(|e| format!("invalid reply from the monitor {line:?}: {e}"))
    }

    /// The init pid, or the error text.
    pub fn into_result(self) -> Result<i32, String> {
        match (self.ok, self.pid, self.error) {
            (true, Some(pid), _) => Ok(pid),
            (true, None, _) => Err("the monitor reported success without a pid".to_string()),
            (false, _, error) => Err(error.unwrap_or_else(|| "unknown error".to_string())),
        }
    }
}

/// How the container ended, written by the monitor to `exit_file`:
/// `{"exit_code":137,"signal":9,"finished_at_unix_nanos":…,"oom_killed":false}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit status, or 128 + the signal number when killed by a signal
    /// (255 when the init was not the monitor's child and its status is unknown).
    pub exit_code: i32,
    /// The signal that killed the init, if one did.
    pub signal: Option<i32>,
    /// When the monitor reaped the init, in nanoseconds since the epoch.
    pub finished_at_unix_nanos: i64,
    /// Whether the kernel OOM killer killed a process of the container's memory cgroup.
    pub oom_killed: bool,
}

impl ExitRecord {
    /// `finished_at_unix_nanos` as a time.
    pub fn finished_at(&self) -> SystemTime {
        let nanos = u64::try_from(self.finished_at_unix_nanos).unwrap_or(0);
        SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos)
    }
}

/// The exit record at `path`, if the monitor has written one.
pub fn read_exit(path: &Path) -> Option<ExitRecord> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Entry point of `rcri monitor --config FILE`. Exits 0 once the container
/// has exited and its exit file is written; 1 if the container could not be
/// created (after the failure reply) or the exit could not be recorded.
pub fn run(config: &Path) -> ExitCode {
    let config = match MonitorConfig::load(config) {
        Ok(config) => config,
        Err(error) => {
            diag(format_args!("{error}"));
            send_reply(&SyncReply::failed(error));
            return ExitCode::FAILURE;
        }
    };
    set_diag_id(&config.container_id);
    supervise::run(&config)
}

/// Writes the sync line on stdout. Errors (the server went away) are only
/// noted: the container still has to be watched.
fn send_reply(reply: &SyncReply) {
    let mut line = serde_json::to_vec(reply).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    line.push(b'\n');
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_all(&line).and_then(|()| stdout.flush()) {
        diag(format_args!("cannot write the sync reply: {e}"));
    }
}

static DIAG_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn set_diag_id(id: &str) {
    let _ = DIAG_ID.set(id.to_string());
}

/// A line on the monitor's own log (its stderr).
fn diag(message: std::fmt::Arguments<'_>) {
    let id = DIAG_ID.get().map(String::as_str).unwrap_or("-");
    let now = log::format_timestamp(SystemTime::now());
    let mut stderr = io::stderr().lock();
    let _ = writeln!(stderr, "{now} rcri monitor {id}: {message}");
}
