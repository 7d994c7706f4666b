//! The runc command line, which runc, crun, runsc and youki all speak: one
//! thin async wrapper for every `oci` handler.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use crate::config::Handler;

/// Verbs other than `create` are quick; a runtime that hangs longer is broken.
pub const VERB_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{handler} runtime ({path}) cannot be run: {source}", path = path.display())]
    Spawn {
        handler: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{handler} runtime ({path}) `{verb}` for {id} failed ({status}): {stderr}", path = path.display())]
    Failed {
        handler: String,
        path: PathBuf,
        verb: String,
        id: String,
        status: String,
        stderr: String,
    },
    #[error("{handler} runtime `{verb}` for {id} did not finish within {timeout:?}")]
    Timeout {
        handler: String,
        verb: String,
        id: String,
        timeout: Duration,
    },
    #[error(
        "{handler} runtime ({path}) `state {id}` printed something that is not a container state: {output:?}",
        path = path.display()
    )]
    BadState {
        handler: String,
        path: PathBuf,
        id: String,
        output: String,
    },
}

/// The stdio given to `start` (see [`OciRuntime::start`]).
#[derive(Debug)]
pub struct StartStdio {
    /// The container's stdin FIFO, if it has a stdin.
    pub stdin: Option<std::fs::File>,
    pub stdout: std::fs::File,
    pub stderr: std::fs::File,
}

/// What `RUNTIME state ID` reports.
#[derive(Debug, Clone, Deserialize)]
pub struct RuntimeState {
    pub status: String,
    #[serde(default)]
    pub pid: i64,
}

/// One handler's runtime binary with its global flags.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    pub handler: String,
    pub path: PathBuf,
    /// `runtime_args` then `--root ROOT`: put before every verb.
    pub global_args: Vec<String>,
    /// How long `create` may take.
    pub create_timeout: Duration,
}

impl OciRuntime {
    pub fn new(handler: &Handler) -> OciRuntime {
        let mut global_args = handler.runtime_args.clone();
        global_args.push("--root".to_string());
        global_args.push(handler.runtime_root.display().to_string());
        OciRuntime {
            handler: handler.name.clone(),
            path: handler.runtime_path.clone(),
            global_args,
            create_timeout: handler.create_timeout,
        }
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.path);
        command.args(&self.global_args).kill_on_drop(true);
        command
    }

    /// Runs one verb (its arguments include the id) to completion; a non-zero
    /// exit carries the runtime's stderr.
    async fn run(
        &self,
        verb: &str,
        args: &[&str],
        id: &str,
        timeout: Duration,
    ) -> Result<Output, RuntimeError> {
        let mut command = self.command();
        command
            .arg(verb)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = match tokio::time::timeout(timeout, command.output()).await {
            Err(_) => {
                return Err(RuntimeError::Timeout {
                    handler: self.handler.clone(),
                    verb: verb.to_string(),
                    id: id.to_string(),
                    timeout,
                });
            }
            Ok(Err(source)) => {
                return Err(RuntimeError::Spawn {
                    handler: self.handler.clone(),
                    path: self.path.clone(),
                    source,
                });
            }
            Ok(Ok(output)) => output,
        };
        if !output.status.success() {
            return Err(RuntimeError::Failed {
                handler: self.handler.clone(),
                path: self.path.clone(),
                verb: verb.to_string(),
                id: id.to_string(),
                status: output.status.to_string(),
                stderr: runtime_message(&output.stderr),
            });
        }
        Ok(output)
    }

    /// Starts a created container.
    ///
    /// `start`'s own stdout and stderr are never a pipe read until
    /// end-of-file: some runtimes (runsc for a pod's second container) hand
    /// `start`'s stdio to the container, so such a pipe would stay open as
    /// long as the container runs. With `stdio` (the monitor's start FIFOs)
    /// they go there, so such a container's output reaches its log and its
    /// stdin is the one attach feeds; the runtime's own messages then go to
    /// its `--log` file `output`, read back for the error text. Without,
    /// both go to `output`.
    pub async fn start(
        &self,
        id: &str,
        output: &Path,
        stdio: Option<StartStdio>,
    ) -> Result<(), RuntimeError> {
        let spawn_error = |source| RuntimeError::Spawn {
            handler: self.handler.clone(),
            path: self.path.clone(),
            source,
        };
        let file = tokio::fs::File::create(output)
            .await
            .map_err(spawn_error)?
            .into_std()
            .await;
        let mut command = self.command();
        let with_fifos = stdio.is_some();
        match stdio {
            Some(stdio) => {
                drop(file);
                command
                    .arg("--log")
                    .arg(output)
                    .arg("start")
                    .arg(id)
                    .stdin(stdio.stdin.map_or_else(Stdio::null, Stdio::from))
                    .stdout(stdio.stdout)
                    .stderr(stdio.stderr);
            }
            None => {
                let stderr = file.try_clone().map_err(spawn_error)?;
                command
                    .arg("start")
                    .arg(id)
                    .stdin(Stdio::null())
                    .stdout(file)
                    .stderr(stderr);
            }
        }
        let status = match tokio::time::timeout(VERB_TIMEOUT, command.status()).await {
            Err(_) => {
                return Err(RuntimeError::Timeout {
                    handler: self.handler.clone(),
                    verb: "start".into(),
                    id: id.to_string(),
                    timeout: VERB_TIMEOUT,
                });
            }
            Ok(status) => status.map_err(spawn_error)?,
        };
        if !status.success() {
            let text = tokio::fs::read(output).await.unwrap_or_default();
            let stderr = if with_fifos {
                let text = crate::monitor::runtime_error_text(&String::from_utf8_lossy(&text), b"");
                if text.is_empty() {
                    "(no error output; see the container's log)".to_string()
                } else {
                    text
                }
            } else {
                runtime_message(&text)
            };
            return Err(RuntimeError::Failed {
                handler: self.handler.clone(),
                path: self.path.clone(),
                verb: "start".into(),
                id: id.to_string(),
                status: status.to_string(),
                stderr,
            });
        }
        Ok(())
    }

    /// Sends `signal` to the container's init (or, with `all`, every process).
    pub async fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), RuntimeError> {
        let args: Vec<&str> = if all {
            vec!["--all", id, signal]
        } else {
            vec![id, signal]
        };
        self.run("kill", &args, id, VERB_TIMEOUT).await.map(drop)
    }

    /// Deletes the container; with `force` a running one is killed first.
    /// A container the runtime does not know is already deleted.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let args: Vec<&str> = if force { vec!["--force", id] } else { vec![id] };
        match self.run("delete", &args, id, VERB_TIMEOUT).await {
            Err(RuntimeError::Failed { ref stderr, .. }) if is_not_exist(stderr) => Ok(()),
            other => other.map(drop),
        }
    }

    /// The runtime's view of the container; `None` if it does not know it.
    pub async fn state(&self, id: &str) -> Result<Option<RuntimeState>, RuntimeError> {
        match self.run("state", &[id], id, VERB_TIMEOUT).await {
            Ok(output) => serde_json::from_slice(&output.stdout)
                .map(Some)
                .map_err(|_| RuntimeError::BadState {
                    handler: self.handler.clone(),
                    path: self.path.clone(),
                    id: id.to_string(),
                    output: String::from_utf8_lossy(&output.stdout)
                        .chars()
                        .take(200)
                        .collect(),
                }),
            Err(RuntimeError::Failed { ref stderr, .. }) if is_not_exist(stderr) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A command running `exec --process FILE --pid-file PID ID`.
    pub fn exec_command(&self, id: &str, process_json: &Path, pid_file: &Path) -> Command {
        let mut command = self.command();
        command.args(exec_args(id, process_json, pid_file, None));
        command
    }

    /// The runtime and every argument of `exec --detach --process FILE
    /// --pid-file PID --console-socket SOCKET ID`, for a TTY exec run under
    /// a waiter (see `rcri exec-wait`).
    pub fn detached_exec_argv(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        console_socket: &Path,
    ) -> Vec<std::ffi::OsString> {
        let mut argv = vec![self.path.clone().into_os_string()];
        argv.extend(self.global_args.iter().map(Into::into));
        argv.extend(exec_args(id, process_json, pid_file, Some(console_socket)));
        argv
    }
}

fn exec_args(
    id: &str,
    process_json: &Path,
    pid_file: &Path,
    console_socket: Option<&Path>,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["exec".into()];
    if console_socket.is_some() {
        args.push("--detach".into());
    }
    args.push("--process".into());
    args.push(process_json.into());
    args.push("--pid-file".into());
    args.push(pid_file.into());
    if let Some(socket) = console_socket {
        args.push("--console-socket".into());
        args.push(socket.into());
    }
    args.push(id.into());
    args
}

fn is_not_exist(stderr: &str) -> bool {
    let lower = stderr.to_ascii_lowercase();
    lower.contains("does not exist")
        || lower.contains("not found")
        || lower.contains("no such file")
}

/// The runtime's own words: runc and crun log JSON lines with a `msg`, or
/// plain text.
pub fn runtime_message(stderr: &[u8]) -> String {
    let text = crate::monitor::strip_terminal_escapes(&String::from_utf8_lossy(stderr));
    let messages: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            value.get("msg")?.as_str().map(str::to_string)
        })
        .collect();
    let message = if messages.is_empty() {
        text.trim().to_string()
    } else {
        messages.join("; ")
    };
    if message.is_empty() {
        "(no error output)".to_string()
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_messages_from_json_or_text() {
        assert_eq!(
            runtime_message(br#"{"level":"error","msg":"container_linux.go: starting: exec: \"nope\": not found","time":"x"}"#),
            "container_linux.go: starting: exec: \"nope\": not found"
        );
        assert_eq!(runtime_message(b"  plain failure\n"), "plain failure");
        assert_eq!(
            runtime_message(
                b"\x1b[2m2026-11-28T05:35:53Z\x1b[0m \x1b[31mERROR\x1b[0m failed to prepare rootfs"
            ),
            "2026-11-28T05:35:53Z ERROR failed to prepare rootfs"
        );
        assert_eq!(runtime_message(b""), "(no error output)");
    }

    #[test]
    fn not_exist_messages() {
        assert!(is_not_exist("container \"x\" does not exist"));
        assert!(is_not_exist("Error: container not found"));
        assert!(!is_not_exist("permission denied"));
    }
}
