//! `rcri exec-wait --pid-file FILE -- RUNTIME ARGS…`: runs a runtime's
//! `exec --detach` and waits for the process it started.
//!
//! A runtime hands a TTY exec's pty master to a console socket only when
//! it detaches (runc refuses `--console-socket` otherwise), and a detached
//! process is no longer the runtime's child, so nobody could learn its exit
//! status. This small helper becomes the child subreaper first: the process
//! is reparented to it when the runtime exits, and it exits with the
//! process's status (128 + N for a signal), or with the runtime's own status
//! when `exec` failed. Single-threaded and short-lived; `rcri serve` spawns
//! it as it would spawn the runtime.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, ExitCode};

use nix::errno::Errno;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

fn status_code(status: WaitStatus) -> Option<(Pid, u8)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, code as u8)),
        WaitStatus::Signaled(pid, signal, _) => Some((pid, 128u8.wrapping_add(signal as u8))),
        _ => None,
    }
}

fn fail(message: std::fmt::Arguments<'_>) -> ExitCode {
    eprintln!("rcri exec-wait: {message}");
    ExitCode::from(255)
}

/// Entry point; `command` is the runtime and its arguments.
pub fn run(pid_file: &Path, command: &[OsString]) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        return fail(format_args!("no runtime command given"));
    };
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        return fail(format_args!("cannot become the child subreaper: {e}"));
    }
    let mut command = Command::new(program);
    command.args(args);
    super::supervise::reset_signals_in_child(&mut command);
    let runtime = match command.spawn() {
        Ok(child) => Pid::from_raw(child.id() as i32),
        Err(e) => {
            return fail(format_args!(
                "cannot run {}: {e}",
                program.to_string_lossy()
            ));
        }
    };
    // Statuses of children reaped before the process's pid was known.
    let mut reaped: Vec<(Pid, u8)> = Vec::new();
    let mut target: Option<Pid> = None;
    loop {
        let status = match waitpid(None, None) {
            Ok(status) => status,
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => {
                return fail(format_args!("the process ended without a known status"));
            }
            Err(e) => return fail(format_args!("waitpid failed: {e}")),
        };
        let Some((pid, code)) = status_code(status) else {
            continue;
        };
        if pid == runtime {
            if code != 0 {
                return ExitCode::from(code);
            }
            let text = std::fs::read_to_string(pid_file).unwrap_or_default();
            match text.trim().parse::<i32>() {
                Ok(pid) if pid > 0 => target = Some(Pid::from_raw(pid)),
                _ => {
                    return fail(format_args!(
                        "the runtime wrote no pid to {}",
                        pid_file.display()
                    ));
                }
            }
            if let Some(&(_, code)) = reaped.iter().find(|(p, _)| Some(*p) == target) {
                return ExitCode::from(code);
            }
        } else if Some(pid) == target {
            return ExitCode::from(code);
        } else if target.is_none() && reaped.len() < 64 {
            reaped.push((pid, code));
        }
    }
}
