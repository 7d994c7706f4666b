//! `rcri monitor` driven as `rcri serve` drives it, with a scripted fake OCI
//! runtime: `/bin/sh fake-runtime.sh [global flags] create …` sources the
//! test's `create.sh` from the bundle, which starts a background "container"
//! on the monitor's pipes, writes its pid and exits. (The runtime is run
//! through /bin/sh so no freshly written file is ever exec'd: that avoids
//! ETXTBSY races between parallel tests.)

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rcri::monitor::{ExitRecord, MonitorConfig, SyncReply, read_exit};

const RCRI: &str = env!("CARGO_BIN_EXE_rcri");

const FAKE_RUNTIME: &str = r#"
# A fake OCI runtime: [--root DIR] --log FILE create --bundle B --pid-file P ID
args="$*"
log= bundle= pidfile= verb= id=
while [ $# -gt 0 ]; do
    case "$1" in
        --root) shift 2 ;;
        --log) log=$2; shift 2 ;;
        --bundle) bundle=$2; shift 2 ;;
        --pid-file) pidfile=$2; shift 2 ;;
        create) verb=create; shift ;;
        *) id=$1; shift ;;
    esac
done
printf '%s\n' "$args" > "$bundle/argv"
[ "$verb" = create ] || { echo "fake runtime: only create" >&2; exit 2; }
# A background job's stdin is /dev/null unless redirected from another fd.
exec 3<&0
. "$bundle/create.sh"
"#;

struct Harness {
    dir: tempfile::TempDir,
    config: MonitorConfig,
}

impl Harness {
    /// A monitor config whose `create` runs `create_sh` (sourced, with
    /// `$bundle`, `$pidfile`, `$log` and `$id` set).
    fn new(create_sh: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let bundle = root.join("bundle");
        fs::create_dir(&bundle).unwrap();
        fs::create_dir(root.join("logs")).unwrap();
        fs::write(root.join("fake-runtime.sh"), FAKE_RUNTIME).unwrap();
        fs::write(bundle.join("create.sh"), create_sh).unwrap();
        let config = MonitorConfig {
            container_id: "ctr-1".into(),
            runtime_path: "/bin/sh".into(),
            runtime_args: vec![
                root.join("fake-runtime.sh").display().to_string(),
                "--root".into(),
                root.join("runtime-root").display().to_string(),
            ],
            pid_file: bundle.join("pid"),
            runtime_log: bundle.join("runtime.log"),
            bundle,
            log_path: root.join("logs").join("0.log"),
            exit_file: root.join("exit.json"),
            ..MonitorConfig::default()
        };
        Harness { dir, config }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn bundle_file(&self, name: &str) -> PathBuf {
        self.config.bundle.join(name)
    }

    /// Starts the monitor as the server does: own process group, stdin on
    /// /dev/null, stdout on a pipe, stderr on a file.
    fn spawn(&self) -> Monitor {
        let config_path = self.path("monitor.json");
        self.config.save(&config_path).unwrap();
        self.spawn_with_config_file(&config_path)
    }

    fn spawn_with_config_file(&self, config_path: &Path) -> Monitor {
        let stderr = fs::File::create(self.path("monitor.stderr")).unwrap();
        let mut child = Command::new(RCRI)
            .arg("monitor")
            .arg("--config")
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap();
        let sync = BufReader::new(child.stdout.take().unwrap());
        Monitor { child, sync }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.config.log_path).unwrap_or_default()
    }

    fn monitor_stderr(&self) -> String {
        fs::read_to_string(self.path("monitor.stderr")).unwrap_or_default()
    }

    fn exit_record(&self) -> ExitRecord {
        read_exit(&self.config.exit_file)
            .unwrap_or_else(|| panic!("no exit record; monitor stderr:\n{}", self.monitor_stderr()))
    }
}

struct Monitor {
    child: Child,
    sync: BufReader<ChildStdout>,
}

impl Monitor {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The sync line, then checks that the pipe is closed right after it.
    fn reply(&mut self) -> SyncReply {
        let mut line = String::new();
        self.sync.read_line(&mut line).unwrap();
        assert!(line.ends_with('\n'), "one whole line: {line:?}");
        let reply = SyncReply::parse(&line).unwrap();
        let mut rest = Vec::new();
        self.sync.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "nothing after the sync line: {rest:?}");
        reply
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the monitor did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The log records as (stream, tag, content), checking the timestamps.
fn records(log: &str) -> Vec<(String, String, String)> {
    log.split_terminator('\n')
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let stamp = parts.next().unwrap();
            assert_eq!(
                stamp.len(),
                "2023-11-14T22:13:20.123456789Z".len(),
                "{line:?}"
            );
            assert!(
                stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
                "{line:?}"
            );
            let stream = parts.next().unwrap().to_string();
            let tag = parts.next().unwrap().to_string();
            let content = parts.next().unwrap_or_else(|| panic!("{line:?}"));
            (stream, tag, content.to_string())
        })
        .collect()
}

/// The (tag, content) records of one stream, in order.
fn stream(log: &str, name: &str) -> Vec<(String, String)> {
    records(log)
        .into_iter()
        .filter(|(s, _, _)| s == name)
        .map(|(_, tag, content)| (tag, content))
        .collect()
}

fn tc(tag: &str, content: &str) -> (String, String) {
    (tag.to_string(), content.to_string())
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[test]
fn creates_the_container_logs_its_output_and_records_its_exit() {
    let h = Harness::new(
        "sh -c 'echo out; echo err >&2; printf partial; sleep 0.3; exit 7' <&3 &\n\
         echo $! > \"$pidfile\"\n\
         exit 0\n",
    );
    let before = now_nanos();
    let mut monitor = h.spawn();
    let reply = monitor.reply();
    let pid = reply
        .clone()
        .into_result()
        .unwrap_or_else(|e| panic!("{e}"));
    let written: i32 = fs::read_to_string(&h.config.pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, written);
    assert_eq!(
        serde_json::to_string(&reply).unwrap(),
        format!("{{\"ok\":true,\"pid\":{pid}}}")
    );

    let status = monitor.wait(Duration::from_secs(10));
    assert!(status.success(), "{status:?}: {}", h.monitor_stderr());

    let argv = fs::read_to_string(h.bundle_file("argv")).unwrap();
    assert_eq!(
        argv.trim_end(),
        format!(
            "--root {} --log {} create --bundle {} --pid-file {} ctr-1",
            h.path("runtime-root").display(),
            h.config.runtime_log.display(),
            h.config.bundle.display(),
            h.config.pid_file.display()
        )
    );

    let log = h.log();
    assert_eq!(
        stream(&log, "stdout"),
        [tc("F", "out"), tc("P", "partial")],
        "{log}"
    );
    assert_eq!(stream(&log, "stderr"), [tc("F", "err")], "{log}");

    let record = h.exit_record();
    assert_eq!(record.exit_code, 7);
    assert_eq!(record.signal, None);
    assert!(!record.oom_killed);
    assert!(
        (before..=now_nanos()).contains(&record.finished_at_unix_nanos),
        "{record:?}"
    );
    let raw = fs::read_to_string(&h.config.exit_file).unwrap();
    assert!(raw.contains("\"signal\":null"), "{raw}");
    let leftovers: Vec<_> = fs::read_dir(h.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_container_killed_by_a_signal_exits_with_128_plus_the_signal() {
    let h = Harness::new("sh -c 'sleep 0.1; kill -KILL $$' <&3 &\necho $! > \"$pidfile\"\n");
    let mut monitor = h.spawn();
    assert!(monitor.reply().ok);
    assert!(monitor.wait(Duration::from_secs(10)).success());
    let record = h.exit_record();
    assert_eq!((record.exit_code, record.signal), (137, Some(9)));
    assert!(!record.oom_killed);
}

#[test]
fn a_failing_create_reports_the_runtime_error_and_exits_1() {
    let h = Harness::new(
        "echo '{\"level\":\"warning\",\"msg\":\"meh\"}' >> \"$log\"\n\
         echo '{\"level\":\"error\",\"msg\":\"boom: no such bundle\"}' >> \"$log\"\n\
         echo 'see the runtime log' >&2\n\
         exit 1\n",
    );
    // What an earlier invocation left in the runtime log is not this error.
    fs::write(
        &h.config.runtime_log,
        "{\"level\":\"error\",\"msg\":\"an old failure\"}\n",
    )
    .unwrap();
    let mut monitor = h.spawn();
    let reply = monitor.reply();
    assert!(!reply.ok);
    let error = reply.error.unwrap();
    assert!(error.contains("boom: no such bundle"), "{error}");
    assert!(error.contains("see the runtime log"), "{error}");
    assert!(error.contains("exit status 1"), "{error}");
    assert!(
        !error.contains("meh") && !error.contains("old failure"),
        "{error}"
    );
    let status = monitor.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    assert!(!h.config.exit_file.exists());
    assert!(
        h.monitor_stderr().contains("boom"),
        "{}",
        h.monitor_stderr()
    );
}

#[test]
fn a_missing_runtime_binary_is_reported() {
    let mut h = Harness::new("exit 0\n");
    h.config.runtime_path = h.path("no-such-runtime");
    h.config.runtime_args.clear();
    let mut monitor = h.spawn();
    let error = monitor.reply().into_result().unwrap_err();
    assert!(error.contains("no-such-runtime"), "{error}");
    assert_eq!(monitor.wait(Duration::from_secs(10)).code(), Some(1));
}

#[test]
fn a_runtime_sending_no_terminal_and_bad_configs_are_refused_with_a_reason() {
    // A TTY container whose runtime never sends the pty master.
    let mut h = Harness::new("echo 1 > \"$pidfile\"\n");
    h.config.terminal = true;
    let mut monitor = h.spawn();
    let error = monitor.reply().into_result().unwrap_err();
    assert!(error.contains("sent no terminal"), "{error}");
    assert_eq!(monitor.wait(Duration::from_secs(10)).code(), Some(1));
    assert!(
        fs::read_to_string(h.bundle_file("argv"))
            .unwrap()
            .contains("--console-socket"),
        "the runtime got a console socket"
    );

    let bad = h.path("bad.json");
    fs::write(&bad, "{\"container_id\": 3}").unwrap();
    let mut monitor = h.spawn_with_config_file(&bad);
    let error = monitor.reply().into_result().unwrap_err();
    assert!(error.contains("invalid monitor config"), "{error}");
    assert_eq!(monitor.wait(Duration::from_secs(10)).code(), Some(1));
}

#[test]
fn a_hanging_create_is_killed_after_the_timeout() {
    let mut h = Harness::new("exec sleep 30\n");
    h.config.create_timeout_ms = Some(300);
    let start = Instant::now();
    let mut monitor = h.spawn();
    let error = monitor.reply().into_result().unwrap_err();
    assert!(error.contains("timed out"), "{error}");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(monitor.wait(Duration::from_secs(10)).code(), Some(1));
}

#[test]
fn sigusr1_reopens_the_log_after_rotation() {
    let h = Harness::new(
        "sh -c \"echo one; while [ ! -e '$bundle/go' ]; do sleep 0.02; done; echo two\" <&3 &\n\
         echo $! > \"$pidfile\"\n",
    );
    let mut monitor = h.spawn();
    assert!(monitor.reply().ok);
    wait_for("the first line", Duration::from_secs(10), || {
        h.log().contains("one")
    });
    let rotated = h.path("logs/0.log.1");
    fs::rename(&h.config.log_path, &rotated).unwrap();
    monitor.signal(Signal::SIGUSR1);
    fs::write(h.bundle_file("go"), "").unwrap();
    assert!(monitor.wait(Duration::from_secs(10)).success());
    let old = fs::read_to_string(&rotated).unwrap();
    assert_eq!(stream(&old, "stdout"), [tc("F", "one")], "{old}");
    let new = h.log();
    assert_eq!(stream(&new, "stdout"), [tc("F", "two")], "{new}");
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&h.config.log_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777 & !0o640, 0, "mode {mode:o}");
    assert_eq!(h.exit_record().exit_code, 0);
}

#[test]
fn sigterm_sigint_and_sighup_do_not_stop_the_monitor() {
    let h = Harness::new(
        "sh -c \"while [ ! -e '$bundle/go' ]; do sleep 0.02; done; exit 3\" <&3 &\n\
         echo $! > \"$pidfile\"\n",
    );
    let mut monitor = h.spawn();
    assert!(monitor.reply().ok);
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        monitor.signal(signal);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        monitor.child.try_wait().unwrap().is_none(),
        "the monitor died: {}",
        h.monitor_stderr()
    );
    fs::write(h.bundle_file("go"), "").unwrap();
    assert!(monitor.wait(Duration::from_secs(10)).success());
    assert_eq!(h.exit_record().exit_code, 3);
    assert!(h.monitor_stderr().contains("ignoring SIGTERM"));
}

#[test]
fn the_container_gets_an_empty_signal_mask_and_the_stdin_fifo() {
    let mut h = Harness::new(
        "sh -c 'grep SigBlk /proc/self/status; read line; echo \"got:$line\"' <&3 &\n\
         echo $! > \"$pidfile\"\n",
    );
    h.config.stdin = true;
    h.config.stdin_fifo = Some(h.path("stdin"));
    let mut monitor = h.spawn();
    assert!(monitor.reply().ok);
    let mut fifo = fs::OpenOptions::new()
        .write(true)
        .open(h.path("stdin"))
        .unwrap();
    fifo.write_all(b"hello\n").unwrap();
    drop(fifo);
    assert!(monitor.wait(Duration::from_secs(10)).success());
    let log = h.log();
    assert_eq!(
        stream(&log, "stdout"),
        [tc("F", "SigBlk:\t0000000000000000"), tc("F", "got:hello")],
        "{log}"
    );
}

#[test]
fn a_long_line_is_cut_into_p_records_of_16_kib() {
    let h = Harness::new(
        "sh -c 'head -c 40000 /dev/zero | tr \"\\0\" x; echo; echo short' <&3 &\n\
         echo $! > \"$pidfile\"\n",
    );
    let mut monitor = h.spawn();
    assert!(monitor.reply().ok);
    assert!(monitor.wait(Duration::from_secs(10)).success());
    let log = h.log();
    let lens: Vec<(String, usize)> = stream(&log, "stdout")
        .into_iter()
        .map(|(tag, content)| (tag, content.len()))
        .collect();
    assert_eq!(
        lens,
        [
            ("P".to_string(), 16384),
            ("P".to_string(), 16384),
            ("F".to_string(), 40000 - 2 * 16384),
            ("F".to_string(), 5),
        ]
    );
}

#[test]
fn output_held_open_after_the_init_exits_is_drained_for_at_most_2_s() {
    let h = Harness::new(
        "sh -c \"sleep 20 & echo \\$! > '$bundle/leftover'; echo bye; exit 4\" <&3 &\n\
         echo $! > \"$pidfile\"\n",
    );
    let start = Instant::now();
    let mut monitor = h.spawn();
    assert!(monitor.reply().ok);
    let status = monitor.wait(Duration::from_secs(10));
    let elapsed = start.elapsed();
    if let Ok(pid) = fs::read_to_string(h.bundle_file("leftover")) {
        let _ = kill(Pid::from_raw(pid.trim().parse().unwrap()), Signal::SIGKILL);
    }
    assert!(status.success());
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(6)).contains(&elapsed),
        "{elapsed:?}"
    );
    assert_eq!(h.exit_record().exit_code, 4);
    assert_eq!(stream(&h.log(), "stdout"), [tc("F", "bye")]);
}

#[test]
fn an_init_that_is_not_our_child_is_watched_until_it_is_gone() {
    // The "container" is a child of the test, so the monitor cannot wait
    // for it: it checks the pid every second and records an unknown exit.
    let mut foreign = Command::new("sleep").arg("0.5").spawn().unwrap();
    let h = Harness::new(&format!("echo {} > \"$pidfile\"\n", foreign.id()));
    let mut monitor = h.spawn();
    assert_eq!(monitor.reply().into_result(), Ok(foreign.id() as i32));
    foreign.wait().unwrap();
    assert!(monitor.wait(Duration::from_secs(10)).success());
    let record = h.exit_record();
    assert_eq!((record.exit_code, record.signal), (255, None));
    assert!(h.monitor_stderr().contains("not our child"));
}

#[test]
fn an_empty_log_path_discards_output_and_oom_kills_are_read_from_the_cgroup() {
    let mut h = Harness::new(
        "sh -c \"echo ignored; while [ ! -e '$bundle/go' ]; do sleep 0.02; done; \
         printf 'oom 1\\noom_kill 1\\n' > '$bundle/cgroup/memory.events'; kill -KILL \\$\\$\" <&3 &\n\
         echo $! > \"$pidfile\"\n",
    );
    let cgroup = h.bundle_file("cgroup");
    fs::create_dir(&cgroup).unwrap();
    fs::write(cgroup.join("memory.events"), "oom 0\noom_kill 0\n").unwrap();
    h.config.memory_cgroup = Some(cgroup);
    h.config.log_path = PathBuf::new();
    let mut monitor = h.spawn();
    // The baseline is read before the reply; the "OOM kill" happens after.
    assert!(monitor.reply().ok);
    fs::write(h.bundle_file("go"), "").unwrap();
    assert!(monitor.wait(Duration::from_secs(10)).success());
    let record = h.exit_record();
    assert_eq!((record.exit_code, record.oom_killed), (137, true));
    assert!(fs::read_dir(h.path("logs")).unwrap().next().is_none());
}
