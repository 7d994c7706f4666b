//! Lost monitors: a container's `rcri monitor` that died (killed by an
//! operator, the OOM killer…) without writing the exit file. Nothing would
//! ever record that container's exit, so it would stay Running forever.
//!
//! A monitor is known by its pid and its start time (field 22 of
//! `/proc/<pid>/stat`), so a reused pid is not taken for it. When no exit
//! file exists and the monitor is gone, the runtime is asked (`state`, bounded
//! in time, at most every [`RECHECK`] per container): a container it reports
//! stopped, or no longer knows, is recorded as exited with code 255 and a
//! message saying the monitor was lost, and an exit file is written so the
//! decision sticks; one it reports running stays Running, with a warning that
//! its output is no longer logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::record::{ContainerRecord, ContainerState, PodRecord, PodState, now_nanos};
use super::{EXIT_POLL, PodError, PodManager, blocking, io_error};
use crate::handler::oci::OciRuntime;
use crate::monitor::{self, ExitRecord};

/// The longest a runtime's `state` may take when asked about a lost monitor's
/// container (a status request waits on it).
const STATE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the runtime is asked again about a container whose monitor is
/// lost but which still runs.
const RECHECK: Duration = Duration::from_secs(2);
/// The exit code recorded when the real one is unknown.
pub(super) const UNKNOWN_EXIT_CODE: i32 = 255;

/// Per container (or pod) id: when the runtime was last asked, and whether
/// the still-running warning was given.
#[derive(Default)]
pub(super) struct LostChecks(std::sync::Mutex<HashMap<String, LostCheck>>);

struct LostCheck {
    asked_at: Instant,
    warned: bool,
}

impl LostChecks {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, LostCheck>> {
        // A panic while holding it leaves only timestamps behind: keep going.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the runtime may be asked about `id` now; if so, notes it.
    fn due(&self, id: &str) -> bool {
        let mut table = self.table();
        let now = Instant::now();
        match table.get_mut(id) {
            Some(check) if now.duration_since(check.asked_at) < RECHECK => false,
            Some(check) => {
                check.asked_at = now;
                true
            }
            None => {
                table.insert(
                    id.to_string(),
                    LostCheck {
                        asked_at: now,
                        warned: false,
                    },
                );
                true
            }
        }
    }

    /// True the first time only.
    fn first_warning(&self, id: &str) -> bool {
        let mut table = self.table();
        match table.get_mut(id) {
            Some(check) => !std::mem::replace(&mut check.warned, true),
            None => true,
        }
    }

    pub(super) fn forget(&self, id: &str) {
        self.table().remove(id);
    }
}

/// `(state, start time)` of a process from its `/proc/<pid>/stat` text.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    // The command name (field 2) is in parentheses and may hold anything.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is the state; field 22 is 19 further.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// The start time of a live (not zombie) process. Blocking, but only reads
/// /proc.
fn live_start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    match parse_stat(&text)? {
        ('Z' | 'X' | 'x', _) => None,
        (_, start) => Some(start),
    }
}

/// The start time of process `pid`, for a new record.
pub(super) async fn start_time_of(pid: i32) -> Option<u64> {
    tokio::task::spawn_blocking(move || live_start_time(pid))
        .await
        .ok()
        .flatten()
}

/// Whether the monitor of `id` still runs. Without a recorded start time
/// (older records) its command line must name `id`. Blocking (/proc only).
pub(super) fn monitor_alive(pid: i32, start_time: Option<u64>, id: &str) -> bool {
    let Some(start) = live_start_time(pid) else {
        return false;
    };
    match start_time {
        Some(recorded) => recorded == start,
        None => std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("monitor") && cmdline.contains(id)
        }),
    }
}

/// What became of a container whose record says it runs.
pub(super) enum Fate {
    /// Its monitor recorded its exit.
    Exited(ExitRecord),
    /// Its monitor still watches it.
    Watched,
    /// Its monitor is gone without recording an exit.
    MonitorLost,
}

/// Looks for the exit file, then for the monitor. Blocking.
fn fate(exit_file: &Path, pid: i32, start_time: Option<u64>, id: &str) -> Fate {
    if let Some(exit) = monitor::read_exit(exit_file) {
        return Fate::Exited(exit);
    }
    if monitor_alive(pid, start_time, id) {
        return Fate::Watched;
    }
    // A monitor writes the exit file before it exits: read again, the exit
    // may have come between the two looks.
    match monitor::read_exit(exit_file) {
        Some(exit) => Fate::Exited(exit),
        None => Fate::MonitorLost,
    }
}

/// What the runtime said about a container whose monitor is lost.
enum RuntimeView {
    /// Stopped, or unknown to the runtime.
    Gone,
    /// Created, running, paused…: the status it reported.
    Alive(String),
    /// No answer (error or timeout).
    Unknown(String),
}

async fn ask_runtime(runtime: &OciRuntime, id: &str) -> RuntimeView {
    match tokio::time::timeout(STATE_TIMEOUT, runtime.state(id)).await {
        Err(_) => RuntimeView::Unknown(format!(
            "runtime handler {:?} ({}) did not answer `state` within {STATE_TIMEOUT:?}",
            runtime.handler,
            runtime.path.display()
        )),
        Ok(Err(e)) => RuntimeView::Unknown(e.to_string()),
        Ok(Ok(None)) => RuntimeView::Gone,
        Ok(Ok(Some(state))) if state.status == "stopped" => RuntimeView::Gone,
        Ok(Ok(Some(state))) => RuntimeView::Alive(state.status),
    }
}

/// Writes an exit file for an exit whose code is unknown. Blocking.
fn write_unknown_exit(path: &Path, finished_at: i64) -> Result<(), PodError> {
    let record = ExitRecord {
        exit_code: UNKNOWN_EXIT_CODE,
        signal: None,
        finished_at_unix_nanos: finished_at,
        oom_killed: false,
    };
    let bytes = serde_json::to_vec(&record).map_err(|e| PodError::Internal(e.to_string()))?;
    crate::fsutil::write_atomic(path, &bytes).map_err(io_error("write", path))
}

/// The message of a container whose monitor was lost.
pub(super) fn lost_message(monitor_pid: i32) -> String {
    format!(
        "the container's monitor (pid {monitor_pid}) was lost, so its exit code is unknown \
         (the runtime reports the container stopped or no longer knows it); output written after the monitor \
         was lost was not logged"
    )
}

impl PodManager {
    fn container_exit_file(&self, id: &str) -> PathBuf {
        self.container_state_dir(id).join("exit.json")
    }

    /// The exit file or the state of the monitor of a container. Off the
    /// async workers.
    pub(super) async fn container_fate(&self, container: &ContainerRecord) -> Fate {
        let exit_file = self.container_exit_file(&container.id);
        let (pid, start, id) = (
            container.monitor_pid,
            container.monitor_start_time,
            container.id.clone(),
        );
        tokio::task::spawn_blocking(move || fate(&exit_file, pid, start, &id))
            .await
            .unwrap_or(Fate::Watched)
    }

    /// A container whose monitor is lost: asks its runtime (bounded, and at
    /// most every RECHECK) and records the exit if it is stopped or gone.
    /// Returns the record, changed or not.
    pub(super) async fn check_lost_container(
        &self,
        container: ContainerRecord,
    ) -> Result<ContainerRecord, PodError> {
        if !self.lost_checks.due(&container.id) {
            return Ok(container);
        }
        let runtime = match self.pod_of(&container).await {
            Ok(pod) => self.runtime_of(&pod),
            Err(e) => Err(e),
        };
        let runtime = match runtime {
            Ok(runtime) => runtime,
            Err(e) => {
                if self.lost_checks.first_warning(&container.id) {
                    tracing::warn!(container = %container.id, monitor_pid = container.monitor_pid, error = %e,
                        "the container's monitor is gone and its runtime cannot be asked about it");
                }
                return Ok(container);
            }
        };
        match ask_runtime(&runtime, &container.id).await {
            RuntimeView::Gone => self.record_lost_exit(container).await,
            RuntimeView::Alive(status) => {
                if self.lost_checks.first_warning(&container.id) {
                    tracing::warn!(container = %container.id, monitor_pid = container.monitor_pid, runtime_status = %status,
                        "the container's monitor is gone but the container still runs: its output is no longer logged and its exit code will be unknown");
                }
                Ok(container)
            }
            RuntimeView::Unknown(why) => {
                tracing::warn!(container = %container.id, monitor_pid = container.monitor_pid, error = %why,
                    "the container's monitor is gone and its runtime cannot tell whether it runs");
                Ok(container)
            }
        }
    }

    /// Records the exit of a container whose monitor was lost: in its record
    /// first (with the message), then as an exit file, so the decision sticks
    /// even if rcri stops between the two.
    async fn record_lost_exit(
        &self,
        mut container: ContainerRecord,
    ) -> Result<ContainerRecord, PodError> {
        let finished_at = now_nanos();
        container.state = ContainerState::Exited;
        container.exit_code = UNKNOWN_EXIT_CODE;
        container.finished_at = finished_at;
        if container.started_at == 0 {
            container.started_at = finished_at;
        }
        container.reason = "Error".into();
        container.message = lost_message(container.monitor_pid);
        self.update_container(&container).await?;
        let exit_file = self.container_exit_file(&container.id);
        blocking(move || write_unknown_exit(&exit_file, finished_at)).await?;
        self.lost_checks.forget(&container.id);
        tracing::warn!(container = %container.id, monitor_pid = container.monitor_pid,
            "the container's monitor was lost and the container is stopped: recorded as exited with an unknown exit code");
        Ok(container)
    }

    /// Waits up to `timeout` for a container to exit: for its exit file
    /// while its monitor watches it; otherwise by asking its runtime, and
    /// then records the (unknown) exit. True once it has exited.
    pub(super) async fn wait_exit_of(
        &self,
        runtime: &OciRuntime,
        container: &ContainerRecord,
        timeout: Duration,
    ) -> bool {
        let exit_file = self.container_exit_file(&container.id);
        if !matches!(self.container_fate(container).await, Fate::MonitorLost) {
            return self.wait_exit(&exit_file, timeout).await;
        }
        if !self
            .wait_stopped_by_runtime(runtime, &container.id, timeout)
            .await
        {
            return false;
        }
        if monitor::read_exit(&exit_file).is_some() {
            return true;
        }
        self.record_lost_exit(container.clone()).await.is_ok()
    }

    /// Polls the runtime until it reports `id` stopped or gone, or `timeout`
    /// passes. Every call is bounded.
    async fn wait_stopped_by_runtime(
        &self,
        runtime: &OciRuntime,
        id: &str,
        timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let answer = tokio::time::timeout_at(deadline, ask_runtime(runtime, id)).await;
            if let Ok(RuntimeView::Gone) = answer {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(EXIT_POLL * 5).await;
        }
    }

    /// Whether the monitor recorded for a container still runs (so it may
    /// be signalled: its pid is not someone else's).
    pub(super) async fn monitor_alive(&self, pid: i32, start_time: Option<u64>, id: &str) -> bool {
        let id = id.to_string();
        tokio::task::spawn_blocking(move || monitor_alive(pid, start_time, &id))
            .await
            .unwrap_or(false)
    }

    /// Folds the pause container's fate into a Ready pod's state: its exit
    /// file, or, if its monitor is lost, what the runtime says.
    pub(super) async fn refresh_pod(&self, id: &str) {
        let pod = {
            let tables = self.tables.lock().await;
            match Self::resolve_pod_id(&tables, id) {
                Some(id) => tables.pods[&id].clone(),
                None => return,
            }
        };
        if pod.state != PodState::Ready {
            return;
        }
        let exit_file = self.pod_state_dir(&pod.id).join("exit.json");
        let fate = {
            let (exit_file, pid, start, id) = (
                exit_file.clone(),
                pod.monitor_pid,
                pod.monitor_start_time,
                pod.id.clone(),
            );
            tokio::task::spawn_blocking(move || fate(&exit_file, pid, start, &id))
                .await
                .unwrap_or(Fate::Watched)
        };
        match fate {
            Fate::Watched => {}
            Fate::Exited(_) => {
                tracing::info!(pod = %pod.id, "the pod's sandbox container has exited: the pod is not ready");
                let _ = self.set_pod_state(&pod.id, PodState::NotReady).await;
            }
            Fate::MonitorLost => self.check_lost_pod(&pod, exit_file).await,
        }
    }

    async fn check_lost_pod(&self, pod: &PodRecord, exit_file: PathBuf) {
        if !self.lost_checks.due(&pod.id) {
            return;
        }
        let runtime = match self.runtime_of(pod) {
            Ok(runtime) => runtime,
            Err(e) => {
                if self.lost_checks.first_warning(&pod.id) {
                    tracing::warn!(pod = %pod.id, monitor_pid = pod.monitor_pid, error = %e,
                        "the sandbox container's monitor is gone and its runtime cannot be asked about it");
                }
                return;
            }
        };
        match ask_runtime(&runtime, &pod.id).await {
            RuntimeView::Gone => {
                let _ = self.set_pod_state(&pod.id, PodState::NotReady).await;
                let finished_at = now_nanos();
                if let Err(e) = blocking(move || write_unknown_exit(&exit_file, finished_at)).await
                {
                    tracing::warn!(pod = %pod.id, error = %e, "cannot record the sandbox container's exit");
                }
                self.lost_checks.forget(&pod.id);
                tracing::warn!(pod = %pod.id, monitor_pid = pod.monitor_pid,
                    "the sandbox container's monitor was lost and the sandbox container is stopped: the pod is not ready");
            }
            RuntimeView::Alive(status) => {
                if self.lost_checks.first_warning(&pod.id) {
                    tracing::warn!(pod = %pod.id, monitor_pid = pod.monitor_pid, runtime_status = %status,
                        "the sandbox container's monitor is gone but the sandbox still runs");
                }
            }
            RuntimeView::Unknown(why) => {
                tracing::warn!(pod = %pod.id, monitor_pid = pod.monitor_pid, error = %why,
                    "the sandbox container's monitor is gone and its runtime cannot tell whether it runs");
            }
        }
    }

    /// Stops a pod's sandbox container whose monitor is lost: waits (up to
    /// `timeout`) for the runtime to report it stopped and records the exit.
    pub(super) async fn wait_pod_stopped(
        &self,
        runtime: &OciRuntime,
        pod: &PodRecord,
        timeout: Duration,
    ) -> bool {
        let exit_file = self.pod_state_dir(&pod.id).join("exit.json");
        if self
            .monitor_alive(pod.monitor_pid, pod.monitor_start_time, &pod.id)
            .await
        {
            return self.wait_exit(&exit_file, timeout).await;
        }
        if !self
            .wait_stopped_by_runtime(runtime, &pod.id, timeout)
            .await
        {
            return false;
        }
        if monitor::read_exit(&exit_file).is_some() {
            return true;
        }
        let finished_at = now_nanos();
        blocking(move || write_unknown_exit(&exit_file, finished_at))
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let text = "1234 (we ird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_stat(text), Some(('S', 987654)));
        assert_eq!(parse_stat("1 (x) Z"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_process_is_alive_under_its_start_time_only() {
        let pid = std::process::id() as i32;
        let start = live_start_time(pid).expect("our own stat");
        assert!(monitor_alive(pid, Some(start), "x"));
        assert!(!monitor_alive(pid, Some(start + 1), "x"));
        assert!(!monitor_alive(0, None, "x"));
        assert!(!monitor_alive(pid, None, "an-id-not-on-our-command-line"));
    }

    #[test]
    fn a_dead_monitor_without_exit_file_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let exit_file = dir.path().join("exit.json");
        assert!(matches!(fate(&exit_file, 0, None, "x"), Fate::MonitorLost));
        write_unknown_exit(&exit_file, 5).unwrap();
        match fate(&exit_file, 0, None, "x") {
            Fate::Exited(exit) => assert_eq!(exit.exit_code, UNKNOWN_EXIT_CODE),
            _ => panic!("the exit file is read first"),
        }
    }

    #[test]
    fn the_runtime_is_asked_again_only_after_recheck() {
        let checks = LostChecks::default();
        assert!(checks.due("a"));
        assert!(!checks.due("a"));
        assert!(checks.due("b"));
        assert!(checks.first_warning("a"));
        assert!(!checks.first_warning("a"));
        checks.forget("a");
        assert!(checks.due("a"));
    }
}
