//! The CRI container log format, as the kubelet reads it:
//!
//! ```text
//! 2023-11-14T22:13:20.123456789Z stdout F a whole line
//! 2023-11-14T22:13:20.123456790Z stderr P the first 16 KiB of a long line
//! 2023-11-14T22:13:20.123456791Z stderr F the rest of it
//! ```
//!
//! One record per line of output: the timestamp (RFC 3339, UTC, always nine
//! fractional digits), the stream, `F` for a line ended by a newline (the
//! newline itself is not part of the content) or `P` for a piece of a line
//! that continues in the next record, then the content. A line longer than
//! the maximum is cut into `P` records of exactly the maximum, the last piece
//! being `F`. Output that ends without a newline (the stream closed) is
//! written as a final `P`, as containerd and conmon do, so that `kubectl logs`
//! shows exactly what the container wrote.
//!
//! [`CriLogWriter`] is pure: it formats into any [`Write`], and the clock can
//! be replaced, so every rule above is unit-tested. [`LogFile`] is the sink
//! the monitor uses: a file opened in append mode that can be reopened after
//! the kubelet rotates it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest content of one record, as the kubelet and containerd use by
/// default (`max_container_log_line_size`).
pub const MAX_LINE: usize = 16 * 1024;

/// Which of the container's output streams a piece of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The stream's name in a log record.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

#[derive(Clone, Copy)]
enum Tag {
    Full,
    Partial,
}

impl Tag {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            Tag::Full => b"F",
            Tag::Partial => b"P",
        }
    }
}

/// Turns raw container output into CRI log records.
///
/// Output is buffered per stream until a newline completes the line (one `F`
/// record) or the buffered piece would exceed the maximum (a `P` record of
/// exactly the maximum). At most `max_line` bytes are held per stream, plus
/// one record being assembled.
pub struct CriLogWriter<W: Write> {
    out: W,
    max_line: usize,
    pending: [Vec<u8>; 2],
    record: Vec<u8>,
    clock: fn() -> SystemTime,
}

impl<W: Write> CriLogWriter<W> {
    pub fn new(out: W) -> Self {
        CriLogWriter {
            out,
            max_line: MAX_LINE,
            pending: [Vec::new(), Vec::new()],
            record: Vec::new(),
            clock: SystemTime::now,
        }
    }

    /// Uses another maximum record content length (at least 1 byte).
    pub fn with_max_line(mut self, max_line: usize) -> Self {
        self.max_line = max_line.max(1);
        self
    }

    /// Uses another clock for the records' timestamps (tests).
    pub fn with_clock(mut self, clock: fn() -> SystemTime) -> Self {
        self.clock = clock;
        self
    }

    /// Adds output of `stream`, writing every record it completes.
    ///
    /// Writing is best effort: a record the sink refuses is lost, the rest
    /// is still processed, and the first error is returned.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> io::Result<()> {
        let i = stream.index();
        let mut result = Ok(());
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(newline) => {
                    let mut line = &data[..newline];
                    data = &data[newline + 1..];
                    // Cut what does not fit into P records of exactly the maximum.
                    while self.pending[i].len() + line.len() > self.max_line {
                        let take = self.max_line - self.pending[i].len();
                        let (head, tail) = line.split_at(take);
                        keep_first(&mut result, self.emit(stream, Tag::Partial, head));
                        line = tail;
                    }
                    keep_first(&mut result, self.emit(stream, Tag::Full, line));
                }
                None => {
                    // No newline: buffer, emitting a full buffer only once more
                    // content arrives (a line of exactly the maximum stays one F).
                    while !data.is_empty() {
                        if self.pending[i].len() == self.max_line {
                            keep_first(&mut result, self.emit(stream, Tag::Partial, &[]));
                        }
                        let take = (self.max_line - self.pending[i].len()).min(data.len());
                        self.pending[i].extend_from_slice(&data[..take]);
                        data = &data[take..];
                    }
                }
            }
        }
        result
    }

    /// Writes what is buffered for `stream` as a final `P` record: the
    /// stream ended without a newline.
    pub fn flush_partial(&mut self, stream: Stream) -> io::Result<()> {
        if self.pending[stream.index()].is_empty() {
            return Ok(());
        }
        self.emit(stream, Tag::Partial, &[])
    }

    /// [`flush_partial`](Self::flush_partial) for both streams, then flushes
    /// the sink.
    pub fn finish(&mut self) -> io::Result<()> {
        let mut result = self.flush_partial(Stream::Stdout);
        keep_first(&mut result, self.flush_partial(Stream::Stderr));
        keep_first(&mut result, self.out.flush());
        result
    }

    /// Bytes buffered for `stream`, waiting for the rest of their line.
    pub fn pending(&self, stream: Stream) -> &[u8] {
        &self.pending[stream.index()]
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    /// Writes one record: the buffered bytes of `stream` followed by `tail`.
    /// The buffer is emptied whether or not the sink takes the record.
    fn emit(&mut self, stream: Stream, tag: Tag, tail: &[u8]) -> io::Result<()> {
        let pending = &mut self.pending[stream.index()];
        self.record.clear();
        push_timestamp(&mut self.record, (self.clock)());
        self.record.push(b' ');
        self.record.extend_from_slice(stream.as_str().as_bytes());
        self.record.push(b' ');
        self.record.extend_from_slice(tag.as_bytes());
        self.record.push(b' ');
        self.record.extend_from_slice(pending);
        self.record.extend_from_slice(tail);
        self.record.push(b'\n');
        pending.clear();
        self.out.write_all(&self.record)
    }
}

fn keep_first(result: &mut io::Result<()>, next: io::Result<()>) {
    if result.is_ok() {
        *result = next;
    }
}

/// The log file the monitor appends records to.
///
/// An empty path discards everything. [`reopen`](Self::reopen) opens the
/// path anew (the kubelet renames the file to rotate it, then asks for a
/// reopen); until a first successful open, writes are discarded, so output
/// keeps being drained even when the file cannot be opened.
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
}

impl LogFile {
    /// A sink for `path`, not opened yet.
    pub fn new(path: PathBuf) -> Self {
        LogFile { path, file: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether records currently go to a file.
    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Opens the path (append, create, mode 0640). On failure the previous
    /// file, if any, stays in use.
    pub fn reopen(&mut self) -> io::Result<()> {
        if self.path.as_os_str().is_empty() {
            return Ok(());
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&self.path)?;
        self.file = Some(file);
        Ok(())
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(file) => file.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// `time` as RFC 3339 in UTC with nanoseconds, e.g.
/// `2023-11-14T22:13:20.123456789Z`. Times before 1970 are written as the
/// epoch.
pub fn format_timestamp(time: SystemTime) -> String {
    let mut out = Vec::with_capacity(30);
    push_timestamp(&mut out, time);
    // Only ASCII digits and separators were pushed.
    String::from_utf8(out).unwrap_or_default()
}

fn push_timestamp(out: &mut Vec<u8>, time: SystemTime) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since_epoch.subsec_nanos()
    );
}

/// The proleptic Gregorian date `days` days after 1970-01-01.
///
/// Days are counted in 400-year eras of 146 097 days starting on a 1 March,
/// so that the leap day falls at the end of each year of the era.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // 0000-03-01 is 719 468 days before 1970-01-01.
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097; // 0..=146096
    // Year of the era: remove the leap days accumulated before this day
    // (one per 4 years, except per 100, except per 400).
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: lengths 31 30 31 30 31 31 30 31 30 31 31 28/29
    // follow 153 days per 5 months.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}
