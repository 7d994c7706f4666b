use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::log::{CriLogWriter, LogFile, MAX_LINE, Stream, format_timestamp};
use super::runtime::{create_args, error_text, oom_killed, parse_oom_kill};
use super::{ExitRecord, MonitorConfig, SyncReply, read_exit};

const T0: &str = "2023-11-14T22:13:20.123456789Z";

fn fixed_clock() -> SystemTime {
    UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)
}

fn writer() -> CriLogWriter<Vec<u8>> {
    CriLogWriter::new(Vec::new()).with_clock(fixed_clock)
}

/// The records written so far as (stream, tag, content), checking that every
/// record carries the fixed timestamp.
fn records(w: &CriLogWriter<Vec<u8>>) -> Vec<(String, String, String)> {
    let text = String::from_utf8(w.get_ref().clone()).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
    text.split_terminator('\n')
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            assert_eq!(parts.next(), Some(T0), "{line:?}");
            let stream = parts.next().unwrap().to_string();
            let tag = parts.next().unwrap().to_string();
            let content = parts
                .next()
                .unwrap_or_else(|| panic!("{line:?}"))
                .to_string();
            (stream, tag, content)
        })
        .collect()
}

fn rec(stream: &str, tag: &str, content: &str) -> (String, String, String) {
    (stream.to_string(), tag.to_string(), content.to_string())
}

#[test]
fn a_full_line_is_one_f_record() {
    let mut w = writer();
    w.write(Stream::Stdout, b"hello world\n").unwrap();
    assert_eq!(
        String::from_utf8(w.get_ref().clone()).unwrap(),
        format!("{T0} stdout F hello world\n")
    );
}

#[test]
fn several_lines_in_one_chunk_and_empty_lines() {
    let mut w = writer();
    w.write(Stream::Stdout, b"one\ntwo\n\nthree\n").unwrap();
    assert_eq!(
        records(&w),
        vec![
            rec("stdout", "F", "one"),
            rec("stdout", "F", "two"),
            rec("stdout", "F", ""),
            rec("stdout", "F", "three"),
        ]
    );
}

#[test]
fn a_line_split_across_chunks_is_buffered_into_one_f_record() {
    let mut w = writer();
    w.write(Stream::Stdout, b"hel").unwrap();
    w.write(Stream::Stdout, b"lo wo").unwrap();
    assert!(w.get_ref().is_empty(), "nothing written before the newline");
    assert_eq!(w.pending(Stream::Stdout), b"hello wo");
    w.write(Stream::Stdout, b"rld\nnext").unwrap();
    assert_eq!(records(&w), vec![rec("stdout", "F", "hello world")]);
    assert_eq!(w.pending(Stream::Stdout), b"next");
}

#[test]
fn streams_are_tagged_and_buffered_separately() {
    let mut w = writer();
    w.write(Stream::Stdout, b"out-").unwrap();
    w.write(Stream::Stderr, b"err line\n").unwrap();
    w.write(Stream::Stdout, b"line\n").unwrap();
    assert_eq!(
        records(&w),
        vec![
            rec("stderr", "F", "err line"),
            rec("stdout", "F", "out-line")
        ]
    );
}

#[test]
fn a_long_line_becomes_p_records_of_the_maximum_then_f() {
    let mut w = writer();
    let line = vec![b'x'; 2 * MAX_LINE + 100];
    w.write(Stream::Stderr, &line).unwrap();
    w.write(Stream::Stderr, b"\n").unwrap();
    let got = records(&w);
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], rec("stderr", "P", &"x".repeat(MAX_LINE)));
    assert_eq!(got[1], rec("stderr", "P", &"x".repeat(MAX_LINE)));
    assert_eq!(got[2], rec("stderr", "F", &"x".repeat(100)));
}

#[test]
fn long_lines_are_cut_the_same_whatever_the_chunking() {
    let input: Vec<u8> = b"abcdefghij\nklm\nnopqrstuvwxyz0123456789\n\ntail".to_vec();
    let mut whole = writer().with_max_line(4);
    whole.write(Stream::Stdout, &input).unwrap();
    whole.finish().unwrap();
    for chunk in 1..input.len() {
        let mut pieces = writer().with_max_line(4);
        for piece in input.chunks(chunk) {
            pieces.write(Stream::Stdout, piece).unwrap();
        }
        pieces.finish().unwrap();
        assert_eq!(records(&pieces), records(&whole), "chunks of {chunk}");
    }
    let got = records(&whole);
    assert_eq!(
        got[..4],
        [
            rec("stdout", "P", "abcd"),
            rec("stdout", "P", "efgh"),
            rec("stdout", "F", "ij"),
            rec("stdout", "F", "klm"),
        ]
    );
    assert_eq!(got.last().unwrap(), &rec("stdout", "P", "tail"));
}

#[test]
fn a_line_of_exactly_the_maximum_is_one_f_record() {
    let mut w = writer().with_max_line(4);
    w.write(Stream::Stdout, b"abcd").unwrap();
    w.write(Stream::Stdout, b"\n").unwrap();
    w.write(Stream::Stdout, b"efgh\n").unwrap();
    assert_eq!(
        records(&w),
        vec![rec("stdout", "F", "abcd"), rec("stdout", "F", "efgh")]
    );
}

#[test]
fn output_ending_without_a_newline_is_flushed_as_p() {
    let mut w = writer();
    w.write(Stream::Stdout, b"done\npartial").unwrap();
    w.flush_partial(Stream::Stderr).unwrap(); // nothing buffered there
    w.finish().unwrap();
    assert_eq!(
        records(&w),
        vec![rec("stdout", "F", "done"), rec("stdout", "P", "partial")]
    );
    w.finish().unwrap();
    assert_eq!(records(&w).len(), 2, "a second finish writes nothing");
}

#[test]
fn content_is_kept_byte_for_byte() {
    let mut w = writer();
    w.write(Stream::Stdout, b"tab\there  two  spaces\r\n")
        .unwrap();
    assert_eq!(
        records(&w),
        vec![rec("stdout", "F", "tab\there  two  spaces\r")]
    );
}

/// A sink that refuses every other write.
struct Flaky {
    calls: usize,
    taken: Vec<u8>,
}

impl std::io::Write for Flaky {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.calls += 1;
        if self.calls % 2 == 1 {
            return Err(std::io::Error::other("disk full"));
        }
        self.taken.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_sink_loses_records_but_not_the_rest() {
    let mut w = CriLogWriter::new(Flaky {
        calls: 0,
        taken: Vec::new(),
    })
    .with_clock(fixed_clock);
    assert!(w.write(Stream::Stdout, b"lost\nkept\n").is_err());
    assert!(w.pending(Stream::Stdout).is_empty());
    let taken = String::from_utf8(w.into_inner().taken).unwrap();
    assert_eq!(taken, format!("{T0} stdout F kept\n"));
}

#[test]
fn timestamps_are_rfc3339_utc_with_nanoseconds() {
    let at = |secs: u64, nanos: u32| format_timestamp(UNIX_EPOCH + Duration::new(secs, nanos));
    assert_eq!(at(1_700_000_000, 123_456_789), T0);
    assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
    assert_eq!(at(0, 5), "1970-01-01T00:00:00.000000005Z");
    assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
    assert_eq!(
        at(951_868_799, 999_999_999),
        "2000-02-29T23:59:59.999999999Z"
    );
    assert_eq!(at(1_709_251_199, 0), "2024-02-29T23:59:59.000000000Z");
    assert_eq!(at(1_735_689_599, 0), "2024-12-31T23:59:59.000000000Z");
    assert_eq!(at(1_735_689_600, 0), "2025-01-01T00:00:00.000000000Z");
    assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000000Z");
    assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000000000Z");
    assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000000000Z");
    // Before the epoch: clamped.
    assert_eq!(
        format_timestamp(UNIX_EPOCH - Duration::from_secs(10)),
        "1970-01-01T00:00:00.000000000Z"
    );
}

#[test]
fn every_day_of_four_centuries_follows_the_previous() {
    // The calendar from 1970 to 2370: each day's date is the successor of
    // the one before, with the Gregorian leap rules.
    let leap = |y: u32| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let mut date = (1970u32, 1u32, 1u32);
    for day in 0..146_097u64 {
        let stamp = format_timestamp(UNIX_EPOCH + Duration::from_secs(day * 86_400));
        assert_eq!(
            &stamp[..10],
            format!("{:04}-{:02}-{:02}", date.0, date.1, date.2),
            "day {day}"
        );
        let month_len = match date.1 {
            2 if leap(date.0) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        date = if date.2 < month_len {
            (date.0, date.1, date.2 + 1)
        } else if date.1 < 12 {
            (date.0, date.1 + 1, 1)
        } else {
            (date.0 + 1, 1, 1)
        };
    }
}

#[test]
fn the_real_clock_gives_well_formed_records() {
    let mut w = CriLogWriter::new(Vec::new());
    w.write(Stream::Stdout, b"x\n").unwrap();
    let text = String::from_utf8(w.into_inner()).unwrap();
    let (stamp, rest) = text.split_once(' ').unwrap();
    assert_eq!(rest, "stdout F x\n");
    assert_eq!(stamp.len(), T0.len());
    assert!(
        stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "{stamp}"
    );
    assert!(stamp > "2020", "{stamp}");
}

#[test]
fn reopen_writes_to_the_new_file_after_a_rename() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.log");
    let mut w = CriLogWriter::new(LogFile::new(path.clone())).with_clock(fixed_clock);
    w.write(Stream::Stdout, b"dropped: not open yet\n").unwrap();
    w.get_mut().reopen().unwrap();
    assert!(w.get_ref().is_open());
    w.write(Stream::Stdout, b"first\nsecond ha").unwrap();
    let rotated = dir.path().join("0.log.20231114-221320");
    std::fs::rename(&path, &rotated).unwrap();
    w.write(Stream::Stdout, b"lf\n").unwrap(); // still the old file
    w.get_mut().reopen().unwrap();
    w.write(Stream::Stderr, b"third\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap(),
        format!("{T0} stdout F first\n{T0} stdout F second half\n")
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{T0} stderr F third\n")
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o640, 0, "mode {mode:o}");
}

#[test]
fn a_failed_reopen_keeps_the_old_file_and_an_empty_path_discards() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("0.log");
    let mut file = LogFile::new(path.clone());
    assert!(file.reopen().is_err(), "the directory does not exist");
    assert!(!file.is_open());
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    file.reopen().unwrap();
    std::fs::remove_dir_all(dir.path().join("sub")).unwrap();
    assert!(file.reopen().is_err());
    assert!(file.is_open(), "the old file is still used");

    let mut discard = CriLogWriter::new(LogFile::new(PathBuf::new()));
    discard.get_mut().reopen().unwrap();
    assert!(!discard.get_ref().is_open());
    discard.write(Stream::Stdout, b"gone\n").unwrap();
}

fn config() -> MonitorConfig {
    MonitorConfig {
        container_id: "c1".into(),
        runtime_path: "/usr/sbin/runc".into(),
        runtime_args: vec!["--root".into(), "/run/rcri/runtimes/runc".into()],
        bundle: "/b".into(),
        pid_file: "/b/pid".into(),
        runtime_log: "/b/runtime.log".into(),
        log_path: "/var/log/pods/p/c/0.log".into(),
        exit_file: "/s/exit.json".into(),
        ..MonitorConfig::default()
    }
}

#[test]
fn create_puts_global_flags_and_log_before_the_verb() {
    let args: Vec<String> = create_args(&config(), None)
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "--root",
            "/run/rcri/runtimes/runc",
            "--log",
            "/b/runtime.log",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/b/pid",
            "c1"
        ]
    );
}

#[test]
fn config_round_trips_and_optional_fields_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("monitor.json");
    let mut full = config();
    full.stdin = true;
    full.stdin_fifo = Some("/s/stdin".into());
    full.memory_cgroup = Some("/sys/fs/cgroup/memory/x".into());
    full.create_timeout_ms = Some(5000);
    full.save(&path).unwrap();
    assert_eq!(MonitorConfig::load(&path).unwrap(), full);

    let minimal = r#"{"container_id":"c1","runtime_path":"/usr/sbin/runc","bundle":"/b",
        "pid_file":"/b/pid","runtime_log":"/b/runtime.log","exit_file":"/s/exit.json"}"#;
    let parsed: MonitorConfig = serde_json::from_str(minimal).unwrap();
    assert!(parsed.runtime_args.is_empty() && parsed.log_path.as_os_str().is_empty());
    assert!(!parsed.terminal && !parsed.stdin && parsed.memory_cgroup.is_none());

    let err = MonitorConfig::load(Path::new("/nonexistent/monitor.json")).unwrap_err();
    assert!(err.contains("/nonexistent/monitor.json"), "{err}");
}

#[test]
fn sync_reply_lines() {
    assert_eq!(
        serde_json::to_string(&SyncReply::created(42)).unwrap(),
        r#"{"ok":true,"pid":42}"#
    );
    assert_eq!(
        serde_json::to_string(&SyncReply::failed("boom \"x\"")).unwrap(),
        r#"{"ok":false,"error":"boom \"x\""}"#
    );
    assert_eq!(
        SyncReply::parse("{\"ok\":true,\"pid\":7}\n")
            .unwrap()
            .into_result(),
        Ok(7)
    );
    assert_eq!(
        SyncReply::parse(r#"{"ok":false,"error":"no"}"#)
            .unwrap()
            .into_result(),
        Err("no".to_string())
    );
    assert!(SyncReply::parse("garbage").is_err());
}

#[test]
fn exit_records_round_trip_and_bad_files_read_as_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exit.json");
    assert_eq!(read_exit(&path), None);
    let record = ExitRecord {
        exit_code: 137,
        signal: Some(9),
        finished_at_unix_nanos: 1_700_000_000_123_456_789,
        oom_killed: true,
    };
    let json = serde_json::to_string(&record).unwrap();
    assert_eq!(
        json,
        r#"{"exit_code":137,"signal":9,"finished_at_unix_nanos":1700000000123456789,"oom_killed":true}"#
    );
    std::fs::write(&path, &json).unwrap();
    assert_eq!(read_exit(&path), Some(record));
    assert_eq!(record.finished_at(), fixed_clock());
    std::fs::write(
        &path,
        r#"{"exit_code":0,"signal":null,"finished_at_unix_nanos":1,"oom_killed":false}"#,
    )
    .unwrap();
    assert_eq!(read_exit(&path).unwrap().signal, None);
    std::fs::write(&path, "{\"exit_code\":").unwrap();
    assert_eq!(read_exit(&path), None);
}

#[test]
fn runtime_errors_come_from_json_logfmt_or_raw_lines() {
    let json = concat!(
        r#"{"level":"warning","msg":"cgroup v1 is deprecated","time":"2024-01-01T00:00:00Z"}"#,
        "\n",
        r#"{"level":"error","msg":"runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH","time":"2024-01-01T00:00:00Z"}"#,
        "\n"
    );
    assert_eq!(
        error_text(json, b""),
        "runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH"
    );
    let logfmt = "time=\"2024-01-01T00:00:00Z\" level=info msg=\"hello\"\n\
                  time=\"2024-01-01T00:00:00Z\" level=error msg=\"bad \\\"bundle\\\"\\n path\"\n";
    assert_eq!(error_text(logfmt, b""), "bad \"bundle\"\n path");
    assert_eq!(
        error_text("crun: open `/b/config.json`: No such file\n", b""),
        "crun: open `/b/config.json`: No such file"
    );
}

#[test]
fn runtime_stderr_is_added_unless_it_repeats_the_log() {
    let log = "{\"level\":\"error\",\"msg\":\"boom\"}\n";
    assert_eq!(error_text(log, b"boom\n"), "boom");
    assert_eq!(error_text(log, b"something else\n"), "boom; something else");
    assert_eq!(error_text("", b"  only stderr \n"), "only stderr");
    assert_eq!(error_text("", b""), "");
    // Only warnings and nothing else: they are better than nothing.
    assert_eq!(
        error_text("{\"level\":\"warning\",\"msg\":\"w\"}\n", b""),
        "w"
    );
    // A huge error is capped.
    let huge = "e".repeat(10_000);
    let text = error_text(&huge, b"");
    assert!(text.len() <= 4100 && text.ends_with('…'), "{}", text.len());
}

#[test]
fn oom_kill_counters_of_both_cgroup_versions() {
    let v2 = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n";
    let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n";
    assert_eq!(parse_oom_kill(v2), Some(1));
    assert_eq!(parse_oom_kill(v1), Some(4));
    assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None);
    assert!(oom_killed(Some(0), Some(1)));
    assert!(!oom_killed(Some(2), Some(2)));
    assert!(oom_killed(None, Some(1)));
    assert!(!oom_killed(None, Some(0)));
    assert!(!oom_killed(Some(0), None));
}

#[test]
fn oom_kill_count_reads_the_cgroup_files() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(super::runtime::oom_kill_count(dir.path()), None);
    std::fs::write(
        dir.path().join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    .unwrap();
    assert_eq!(super::runtime::oom_kill_count(dir.path()), Some(2));
    std::fs::write(dir.path().join("memory.events"), "oom 1\noom_kill 5\n").unwrap();
    assert_eq!(super::runtime::oom_kill_count(dir.path()), Some(5));
}
