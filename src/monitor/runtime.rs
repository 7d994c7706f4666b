//! Pure helpers around the OCI runtime and the cgroup: the `create` command
//! line, the runtime's error text, the OOM-kill counter.

use std::ffi::OsString;
use std::path::Path;

use super::MonitorConfig;

/// Longest error text put in a failure reply.
pub(super) const ERROR_CAP: usize = 4096;

/// The arguments after the runtime binary: the global flags, `--log`, then
/// `create --bundle B --pid-file P [--console-socket S] ID`.
pub(super) fn create_args(config: &MonitorConfig, console_socket: Option<&Path>) -> Vec<OsString> {
    let mut args: Vec<OsString> = config.runtime_args.iter().map(OsString::from).collect();
    args.push("--log".into());
    args.push(config.runtime_log.clone().into_os_string());
    args.push("create".into());
    args.push("--bundle".into());
    args.push(config.bundle.clone().into_os_string());
    args.push("--pid-file".into());
    args.push(config.pid_file.clone().into_os_string());
    if let Some(socket) = console_socket {
        args.push("--console-socket".into());
        args.push(socket.as_os_str().to_owned());
    }
    args.push(config.container_id.clone().into());
    args
}

/// One message of the runtime's log, with its level when the line had one.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    level: Option<String>,
    msg: String,
}

/// The runtime's error text from its `--log` content and what it wrote on
/// stderr: the messages of level error/fatal/panic and the lines that are
/// not structured at all, then the stderr text unless it only repeats them.
/// Only when neither exists are lower-level messages used. Empty if the
/// runtime said nothing.
pub fn error_text(runtime_log: &str, stderr: &[u8]) -> String {
    let runtime_log = strip_terminal_escapes(runtime_log);
    let entries: Vec<Entry> = runtime_log
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(parse_line)
        .filter(|entry| !entry.msg.is_empty())
        .collect();
    let mut parts: Vec<&str> = entries
        .iter()
        .filter(|e| match e.level.as_deref() {
            None => true,
            Some(level) => matches!(level, "error" | "fatal" | "panic"),
        })
        .map(|e| e.msg.as_str())
        .collect();
    let stderr = strip_terminal_escapes(&String::from_utf8_lossy(stderr));
    let stderr = stderr.trim();
    if parts.is_empty() && stderr.is_empty() {
        parts = entries.iter().map(|e| e.msg.as_str()).collect();
    }
    let mut text = parts.join("; ");
    if !stderr.is_empty() && !text.contains(stderr) {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(stderr);
    }
    truncate(text, ERROR_CAP)
}

/// `text` without terminal escape sequences: youki colours its errors even
/// when they go to a file or a pipe, and colour codes only garble a gRPC
/// message or a log line.
pub fn strip_terminal_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // CSI: parameters and intermediates up to a final byte @..~; any
        // other escape is two characters long.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// A runtime log line: JSON (`{"level":"error","msg":"…"}`, runc/crun/youki
/// with `--log-format json`), logfmt (`time="…" level=error msg="…"`, runc's
/// default text format), or anything else taken as it is.
fn parse_line(line: &str) -> Entry {
    if line.starts_with('{')
        && let Ok(serde_json::Value::Object(map)) = serde_json::from_str(line)
    {
        let text = |key: &str| map.get(key).and_then(|v| v.as_str()).map(str::to_string);
        if let Some(msg) = text("msg").or_else(|| text("message")) {
            return Entry {
                level: text("level").map(|l| l.to_ascii_lowercase()),
                msg,
            };
        }
    }
    if let Some(msg) = logfmt_value(line, "msg") {
        return Entry {
            level: logfmt_value(line, "level").map(|l| l.to_ascii_lowercase()),
            msg,
        };
    }
    Entry {
        level: None,
        msg: line.to_string(),
    }
}

/// The value of `key=value` or `key="quoted value"` in a logfmt line.
fn logfmt_value(line: &str, key: &str) -> Option<String> {
    let mut rest = line;
    loop {
        let at = rest.find(key)?;
        let preceded_ok = at == 0 || rest.as_bytes()[at - 1] == b' ';
        let after = &rest[at + key.len()..];
        if preceded_ok && let Some(value) = after.strip_prefix('=') {
            return Some(match value.strip_prefix('"') {
                Some(quoted) => unquote(quoted),
                None => value.split(' ').next().unwrap_or("").to_string(),
            });
        }
        rest = after;
    }
}

/// The content of a Go-quoted string up to its closing quote.
fn unquote(quoted: &str) -> String {
    let mut out = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    out
}

fn truncate(mut text: String, cap: usize) -> String {
    if text.len() > cap {
        let mut end = cap;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// The `oom_kill` counter of a memory cgroup: `memory.events` (v2) or
/// `memory.oom_control` (v1, kernel 4.13+). None if neither can be read.
pub(super) fn oom_kill_count(cgroup: &Path) -> Option<u64> {
    ["memory.events", "memory.oom_control"]
        .iter()
        .find_map(|name| std::fs::read_to_string(cgroup.join(name)).ok())
        .and_then(|text| parse_oom_kill(&text))
}

/// The `oom_kill N` line of `memory.events` or `memory.oom_control`.
pub(super) fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some("oom_kill"), Some(n)) => n.parse().ok(),
            _ => None,
        }
    })
}

/// Whether the OOM killer struck the cgroup between the two readings.
pub(super) fn oom_killed(before: Option<u64>, after: Option<u64>) -> bool {
    match (before, after) {
        (Some(before), Some(after)) => after > before,
        (None, Some(after)) => after > 0,
        (_, None) => false,
    }
}
