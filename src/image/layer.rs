//! Layer unpacking: one OCI layer tar into its own, initially empty directory,
//! which later serves as an overlayfs lower directory.
//!
//! Because the layers are stacked by overlayfs and not merged on disk, OCI
//! whiteouts are translated to overlayfs' own form while unpacking:
//! `dir/.wh.name` becomes a 0:0 character device `dir/name`, and
//! `dir/.wh..wh..opq` becomes the xattr `trusted.overlay.opaque=y` on `dir`.
//!
//! Every filesystem operation is relative to a directory fd that was reached
//! from `dest` by opening one component at a time with `O_NOFOLLOW`, so an
//! entry can never make us write through a symlink, whatever the tar holds.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstatat, futimens, makedev,
    mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use sha2::{Digest, Sha256, Sha512};

use super::reference::is_valid_digest;

/// OCI media type of an uncompressed layer.
pub const MEDIA_TYPE_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI media type of a gzip-compressed layer.
pub const MEDIA_TYPE_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI media type of a zstd-compressed layer.
pub const MEDIA_TYPE_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker schema 2 media type of a (gzip-compressed) layer.
pub const MEDIA_TYPE_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    Gzip,
    Zstd,
    /// Decide from the stream's magic bytes (gzip, zstd, else plain tar).
    Detect,
}

impl Compression {
    /// The compression a layer media type implies. Unknown types are refused
    /// rather than guessed, so a caller cannot unpack e.g. an artifact blob.
    pub fn from_media_type(media_type: &str) -> Result<Self, LayerError> {
        // Parameters such as `; charset=...` are not part of the type.
        let mt = media_type.split(';').next().unwrap_or_default().trim();
        let c = match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
            _ => return Err(LayerError::UnsupportedMediaType(media_type.to_string())),
        };
        Ok(c)
    }
}

/// What unpacking a layer produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LayerStats {
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Inodes created (files, directories, links, devices, whiteouts); a
    /// hard link adds none.
    pub inodes: u64,
    /// `sha256:<hex>` of the uncompressed tar stream: the layer's diff_id.
    pub diff_id: String,
}

impl LayerStats {
    /// Checks the unpacked stream against the diff_id from the image config.
    pub fn verify_diff_id(&self, expected: &str) -> Result<(), LayerError> {
        if self.diff_id == expected {
            Ok(())
        } else {
            Err(LayerError::DigestMismatch {
                expected: expected.to_string(),
                actual: self.diff_id.clone(),
            })
        }
    }
}

/// Errors from decompressing, unpacking or verifying a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("reading layer stream: {0}")]
    Read(#[source] io::Error),
    #[error("layer directory {}: {source}", path.display())]
    Dest {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer directory {} is not empty", .0.display())]
    NotEmpty(PathBuf),
    #[error("layer entry {entry:?} escapes the layer directory")]
    Escape { entry: String },
    #[error("layer entry {entry:?}: hard link target {target:?} escapes the layer directory")]
    LinkEscape { entry: String, target: String },
    #[error("layer entry {entry:?}: hard link target {target:?} does not exist in this layer")]
    LinkTargetMissing { entry: String, target: String },
    #[error("layer entry {entry:?}: parent {parent:?} is a symlink, refusing to follow it")]
    ThroughSymlink { entry: String, parent: String },
    #[error("layer entry {entry:?}: parent {parent:?} is not a directory")]
    NotADirectory { entry: String, parent: String },
    #[error("layer entry {entry:?}: directory {dir:?} does not exist in this layer")]
    MissingDirectory { entry: String, dir: String },
    #[error("layer entry {entry:?}: {reason}")]
    InvalidEntry { entry: String, reason: String },
    #[error("layer entry {entry:?}: {op}: {source}")]
    Io {
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("invalid digest {0:?} (want sha256:<64 hex> or sha512:<128 hex>)")]
    InvalidDigest(String),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
}

/// Wraps `reader` in the decompressor `compression` names.
pub fn decompress<'a>(
    reader: impl Read + 'a,
    compression: Compression,
) -> Result<Box<dyn Read + 'a>, LayerError> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(ZstdReader::new(reader)),
        Compression::Detect => {
            let mut reader = reader;
            let mut magic = [0u8; 4];
            let n = read_up_to(&mut reader, &mut magic).map_err(LayerError::Read)?;
            let head = &magic[..n];
            // Put the sniffed bytes back in front of the rest of the stream.
            let whole = io::Cursor::new(magic).take(n as u64).chain(reader);
            if head.starts_with(GZIP_MAGIC) {
                Box::new(flate2::read::MultiGzDecoder::new(whole))
            } else if head.starts_with(ZSTD_MAGIC) {
                Box::new(ZstdReader::new(whole))
            } else {
                Box::new(whole)
            }
        }
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Streaming zstd decoder over all frames of a stream (ruzstd's own streaming
/// decoder stops after the first frame; writers may emit several).
struct ZstdReader<R: Read> {
    src: BufReader<R>,
    frame: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: Read> ZstdReader<R> {
    fn new(r: R) -> Self {
        ZstdReader {
            src: BufReader::new(r),
            frame: ruzstd::decoding::FrameDecoder::new(),
            in_frame: false,
        }
    }

    /// Starts the next frame; false at a clean end of stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        loop {
            if self.src.fill_buf()?.is_empty() {
                return Ok(false);
            }
            match self.frame.reset(&mut self.src) {
                Ok(()) => return Ok(true),
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let want = u64::from(length);
                    let got = io::copy(&mut (&mut self.src).take(want), &mut io::sink())?;
                    if got != want {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }
}

impl<R: Read> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::BlockDecodingStrategy;
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if !self.next_frame()? {
                    return Ok(0);
                }
                self.in_frame = true;
            }
            while self.frame.can_collect() == 0 && !self.frame.is_finished() {
                self.frame
                    .decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            let n = self.frame.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            // Frame fully drained: check its content checksum, if it has one.
            if let (Some(stored), Some(computed)) = (
                self.frame.get_checksum_from_data(),
                self.frame.get_calculated_checksum(),
            ) && stored != computed
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "zstd frame checksum mismatch",
                ));
            }
            self.in_frame = false;
        }
    }
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn digest(&self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.clone().finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.clone().finalize())),
        }
    }
}

/// A reader that hashes everything read through it, to verify a blob (or a
/// decompressed stream) against its digest.
pub struct DigestingReader<R> {
    inner: R,
    hasher: Hasher,
    bytes: u64,
}

impl<R> DigestingReader<R> {
    /// Hashes with sha256.
    pub fn new(inner: R) -> Self {
        DigestingReader {
            inner,
            hasher: Hasher::Sha256(Sha256::new()),
            bytes: 0,
        }
    }

    /// Hashes with the algorithm of `expected` (sha256 or sha512).
    pub fn for_digest(inner: R, expected: &str) -> Result<Self, LayerError> {
        if !is_valid_digest(expected) {
            return Err(LayerError::InvalidDigest(expected.to_string()));
        }
        let hasher = if expected.starts_with("sha512:") {
            Hasher::Sha512(Sha512::new())
        } else {
            Hasher::Sha256(Sha256::new())
        };
        Ok(DigestingReader {
            inner,
            hasher,
            bytes: 0,
        })
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// `algorithm:<hex>` of the bytes read so far.
    pub fn digest(&self) -> String {
        self.hasher.digest()
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> DigestingReader<R> {
    /// Reads whatever is left (a consumer may stop before the end, e.g. at a
    /// tar's end marker), then compares the digest with `expected`. Returns
    /// the total number of bytes.
    pub fn finish(mut self, expected: &str) -> Result<u64, LayerError> {
        io::copy(&mut self, &mut io::sink()).map_err(LayerError::Read)?;
        let actual = self.digest();
        if actual == expected {
            Ok(self.bytes)
        } else {
            Err(LayerError::DigestMismatch {
                expected: expected.to_string(),
                actual,
            })
        }
    }
}

impl<R: Read> Read for DigestingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let data = buf.get(..n).unwrap_or_default();
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        Ok(n)
    }
}

/// Unpacks one layer into `dest`, which must be an existing, empty directory.
/// Returns what was written and the layer's diff_id.
pub fn unpack_layer(
    reader: impl Read,
    compression: Compression,
    dest: &Path,
) -> Result<LayerStats, LayerError> {
    let dest_err = |source| LayerError::Dest {
        path: dest.to_path_buf(),
        source,
    };
    // dest itself may sit below symlinks the host set up; only what the
    // layer creates inside it is opened without following.
    let root = openat(
        nix::fcntl::AT_FDCWD,
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| dest_err(e.into()))?;
    if std::fs::read_dir(dest).map_err(dest_err)?.next().is_some() {
        return Err(LayerError::NotEmpty(dest.to_path_buf()));
    }

    let stream = DigestingReader::new(decompress(reader, compression)?);
    let mut archive = tar::Archive::new(stream);
    let mut unpacker = Unpacker {
        root,
        dest: dest.to_path_buf(),
        stats: LayerStats::default(),
        dir_times: HashMap::new(),
    };
    for entry in archive.entries().map_err(LayerError::Read)? {
        let mut entry = entry.map_err(LayerError::Read)?;
        unpacker.apply(&mut entry)?;
    }
    unpacker.finish_dir_times()?;

    // The diff_id covers the whole stream, including the padding after the
    // tar's end marker that the tar reader leaves unread.
    let mut stream = archive.into_inner();
    io::copy(&mut stream, &mut io::sink()).map_err(LayerError::Read)?;
    let mut stats = unpacker.stats;
    stats.diff_id = stream.digest();
    Ok(stats)
}

/// Entry metadata that applies to whatever kind of inode the entry makes.
struct Meta {
    mode: Mode,
    uid: Uid,
    gid: Gid,
    mtime: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Unpacker {
    root: OwnedFd,
    dest: PathBuf,
    stats: LayerStats,
    /// Directory mtimes are set last: adding children changes them.
    dir_times: HashMap<Vec<Vec<u8>>, TimeSpec>,
}

enum Kind {
    Regular,
    Directory,
    Symlink(Vec<u8>),
    HardLink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// Lexically cleans a tar path: a leading `/`, empty and `.` components are
/// dropped (as Docker does) and `..` is resolved; `None` if it climbs above
/// the root. Symlinks play no part: they are never followed.
fn clean_path(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn io_err<'a>(entry: &'a str, op: &'static str) -> impl FnOnce(Errno) -> LayerError + 'a {
    move |e| LayerError::Io {
        entry: entry.to_string(),
        op,
        source: e.into(),
    }
}

fn invalid(entry: &str, reason: impl Into<String>) -> LayerError {
    LayerError::InvalidEntry {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

/// `secs[.frac]` from a PAX `mtime` record.
fn parse_pax_time(v: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos: i64 = 0;
    for i in 0..9 {
        let d = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        nanos = nanos * 10 + d;
    }
    // A negative time with a fraction counts back from the whole second.
    if secs < 0 && nanos > 0 {
        Some(TimeSpec::new(secs.checked_sub(1)?, 1_000_000_000 - nanos))
    } else {
        Some(TimeSpec::new(secs, nanos))
    }
}

fn set_xattr_fd(fd: BorrowedFd<'_>, key: &str, value: &[u8]) -> io::Result<()> {
    let key = CString::new(key)?;
    // SAFETY: `key` is NUL-terminated and `value` is a live slice whose exact
    // length is passed; the kernel only reads both during the call.
    let rc = unsafe {
        nix::libc::fsetxattr(
            fd.as_raw_fd(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// For inodes we must not open (devices, fifos, symlinks): the parent's fd
/// via /proc plus `lsetxattr`, which does not follow the final component.
fn set_xattr_at(parent: BorrowedFd<'_>, name: &[u8], key: &str, value: &[u8]) -> io::Result<()> {
    let mut path = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    let path = CString::new(path)?;
    let key = CString::new(key)?;
    // SAFETY: both strings are NUL-terminated and `value` is a live slice
    // whose exact length is passed; the kernel only reads them during the call.
    let rc = unsafe {
        nix::libc::lsetxattr(
            path.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn is_whiteout_device(st: &nix::sys::stat::FileStat) -> bool {
    (st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFCHR.bits() && st.st_rdev == 0
}

fn is_dir(st: &nix::sys::stat::FileStat) -> bool {
    (st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR.bits()
}

impl Unpacker {
    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw_path = entry.path_bytes().into_owned();
        let name = lossy(&raw_path);
        let header = entry.header();
        let etype = header.entry_type();
        let kind = match etype {
            tar::EntryType::XGlobalHeader => return Ok(()),
            // Pre-POSIX tars mark directories by a trailing slash only.
            tar::EntryType::Regular
                if header.as_old().linkflag[0] == 0 && raw_path.ends_with(b"/") =>
            {
                Kind::Directory
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                Kind::Regular
            }
            tar::EntryType::Directory => Kind::Directory,
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| invalid(&name, "link without a target"))?;
                if etype == tar::EntryType::Symlink {
                    Kind::Symlink(target)
                } else {
                    Kind::HardLink(target)
                }
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let dev = |r: io::Result<Option<u32>>| {
                    r.map(Option::unwrap_or_default)
                        .map_err(|e| invalid(&name, format!("bad device number: {e}")))
                };
                let (maj, min) = (dev(header.device_major())?, dev(header.device_minor())?);
                if etype == tar::EntryType::Char {
                    Kind::Char(maj, min)
                } else {
                    Kind::Block(maj, min)
                }
            }
            tar::EntryType::Fifo => Kind::Fifo,
            other => {
                return Err(invalid(
                    &name,
                    format!("unsupported entry type {:?}", other.as_byte() as char),
                ));
            }
        };
        let meta = read_meta(entry, &name)?;

        let Some(comps) = clean_path(&raw_path) else {
            return Err(LayerError::Escape { entry: name });
        };
        let Some((&last, parent_comps)) = comps.split_last() else {
            // The layer root itself ("./").
            if !matches!(kind, Kind::Directory) {
                return Err(invalid(&name, "the layer root must be a directory"));
            }
            let root = self.root.try_clone().map_err(|e| LayerError::Io {
                entry: name.clone(),
                op: "dup",
                source: e,
            })?;
            Self::apply_fd_meta(root.as_fd(), &meta, &name, false)?;
            self.dir_times.insert(Vec::new(), meta.mtime);
            return Ok(());
        };

        if last.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parent_comps, last, &meta, &name);
        }

        let parent = self.open_dir_chain(parent_comps, true, &name)?;
        let existing = match fstatat(parent.as_fd(), last, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(io_err(&name, "stat")(e)),
        };
        // A same-named whiteout earlier in this layer means "replace what the
        // lower layers had": a directory put in its place must hide their
        // contents instead of merging with them.
        let replaces_whiteout = existing.as_ref().is_some_and(is_whiteout_device);
        let merge_dir = matches!(kind, Kind::Directory) && existing.as_ref().is_some_and(is_dir);
        if let Some(st) = &existing
            && !merge_dir
        {
            if let Kind::HardLink(t) = &kind
                && clean_path(t).is_some_and(|t| t == comps)
            {
                return Ok(()); // a link to itself: nothing to do
            }
            self.remove(parent.as_fd(), &comps, st, &name)?;
        }

        match kind {
            Kind::Regular => {
                let fd = openat(
                    parent.as_fd(),
                    last,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(io_err(&name, "create file"))?;
                let mut file = File::from(fd);
                let n = io::copy(entry, &mut file).map_err(|e| LayerError::Io {
                    entry: name.clone(),
                    op: "write file",
                    source: e,
                })?;
                self.stats.bytes += n;
                self.stats.inodes += 1;
                Self::apply_fd_meta(file.as_fd(), &meta, &name, true)?;
            }
            Kind::Directory => {
                if !merge_dir {
                    mkdirat(parent.as_fd(), last, Mode::from_bits_truncate(0o700))
                        .map_err(io_err(&name, "mkdir"))?;
                    self.stats.inodes += 1;
                }
                let dir = open_dir_nofollow(parent.as_fd(), last)
                    .map_err(io_err(&name, "open directory"))?;
                Self::apply_fd_meta(dir.as_fd(), &meta, &name, false)?;
                if replaces_whiteout {
                    set_xattr_fd(dir.as_fd(), OVERLAY_OPAQUE_XATTR, b"y").map_err(|e| {
                        LayerError::Io {
                            entry: name.clone(),
                            op: "set opaque xattr",
                            source: e,
                        }
                    })?;
                }
                self.dir_times.insert(owned(&comps), meta.mtime);
            }
            Kind::Symlink(target) => {
                // Stored verbatim: the target is only ever read by the
                // container, never resolved here.
                symlinkat(target.as_slice(), parent.as_fd(), last)
                    .map_err(io_err(&name, "symlink"))?;
                self.stats.inodes += 1;
                Self::apply_at_meta(parent.as_fd(), last, &meta, &name, false)?;
            }
            Kind::HardLink(target) => {
                let Some(tcomps) = clean_path(&target) else {
                    return Err(LayerError::LinkEscape {
                        entry: name,
                        target: lossy(&target),
                    });
                };
                let Some((&tlast, tparent_comps)) = tcomps.split_last() else {
                    return Err(invalid(&name, "hard link to the layer root"));
                };
                let tparent = match self.open_dir_chain(tparent_comps, false, &name) {
                    Err(LayerError::MissingDirectory { .. }) => {
                        return Err(LayerError::LinkTargetMissing {
                            entry: name,
                            target: lossy(&target),
                        });
                    }
                    r => r?,
                };
                // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink.
                match linkat(
                    tparent.as_fd(),
                    tlast,
                    parent.as_fd(),
                    last,
                    AtFlags::empty(),
                ) {
                    Ok(()) => {}
                    Err(Errno::ENOENT) => {
                        return Err(LayerError::LinkTargetMissing {
                            entry: name,
                            target: lossy(&target),
                        });
                    }
                    Err(e) => return Err(io_err(&name, "hard link")(e)),
                }
            }
            Kind::Char(maj, min) | Kind::Block(maj, min) => {
                let flag = if matches!(kind, Kind::Char(..)) {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                let dev = makedev(u64::from(maj), u64::from(min));
                mknodat(parent.as_fd(), last, flag, Mode::empty(), dev)
                    .map_err(io_err(&name, "mknod"))?;
                self.stats.inodes += 1;
                Self::apply_at_meta(parent.as_fd(), last, &meta, &name, true)?;
            }
            Kind::Fifo => {
                mknodat(parent.as_fd(), last, SFlag::S_IFIFO, Mode::empty(), 0)
                    .map_err(io_err(&name, "mkfifo"))?;
                self.stats.inodes += 1;
                Self::apply_at_meta(parent.as_fd(), last, &meta, &name, true)?;
            }
        }
        Ok(())
    }

    /// `dir/.wh.name` and `dir/.wh..wh..opq`, in overlayfs form.
    fn whiteout(
        &mut self,
        parent_comps: &[&[u8]],
        last: &[u8],
        meta: &Meta,
        name: &str,
    ) -> Result<(), LayerError> {
        let dir = self.open_dir_chain(parent_comps, true, name)?;
        if last == WHITEOUT_OPAQUE {
            return set_xattr_fd(dir.as_fd(), OVERLAY_OPAQUE_XATTR, b"y").map_err(|e| {
                LayerError::Io {
                    entry: name.to_string(),
                    op: "set opaque xattr",
                    source: e,
                }
            });
        }
        if last.starts_with(WHITEOUT_META_PREFIX) {
            // Other `.wh..wh.*` names are aufs bookkeeping, not content.
            return Ok(());
        }
        let target = &last[WHITEOUT_PREFIX.len()..];
        if matches!(target, b"" | b"." | b"..") {
            return Err(invalid(name, "whiteout names no file"));
        }
        match fstatat(dir.as_fd(), target, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(io_err(name, "stat")(e)),
            // A whiteout only hides lower layers, never this layer's own
            // entry; a directory made here must still hide the lower one's
            // contents, so it becomes opaque.
            Ok(st) if is_dir(&st) => {
                let d = open_dir_nofollow(dir.as_fd(), target)
                    .map_err(io_err(name, "open directory"))?;
                return set_xattr_fd(d.as_fd(), OVERLAY_OPAQUE_XATTR, b"y").map_err(|e| {
                    LayerError::Io {
                        entry: name.to_string(),
                        op: "set opaque xattr",
                        source: e,
                    }
                });
            }
            Ok(_) => return Ok(()),
        }
        mknodat(dir.as_fd(), target, SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(io_err(name, "mknod whiteout"))?;
        self.stats.inodes += 1;
        fchownat(
            dir.as_fd(),
            target,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io_err(name, "chown"))?;
        Ok(())
    }

    /// Opens `comps` below the root one component at a time, never following
    /// a symlink; missing directories are created (0755) when `create`.
    fn open_dir_chain(
        &mut self,
        comps: &[&[u8]],
        create: bool,
        entry: &str,
    ) -> Result<OwnedFd, LayerError> {
        let mut cur: Option<OwnedFd> = None;
        for (i, &c) in comps.iter().enumerate() {
            let base = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            let next = match open_dir_nofollow(base, c) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    make_parent(base, c, entry, &mut self.stats.inodes)?
                }
                Err(Errno::ENOENT) => {
                    return Err(LayerError::MissingDirectory {
                        entry: entry.to_string(),
                        dir: lossy(&join(&comps[..=i])),
                    });
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let st = fstatat(base, c, AtFlags::AT_SYMLINK_NOFOLLOW).ok();
                    if create && st.as_ref().is_some_and(is_whiteout_device) {
                        // `.wh.x` then `x/y` without an `x/` entry: x is a
                        // new directory that hides the lower layers' x.
                        unlinkat(base, c, UnlinkatFlags::NoRemoveDir)
                            .map_err(io_err(entry, "remove whiteout"))?;
                        let fd = make_parent(base, c, entry, &mut self.stats.inodes)?;
                        set_xattr_fd(fd.as_fd(), OVERLAY_OPAQUE_XATTR, b"y").map_err(|e| {
                            LayerError::Io {
                                entry: entry.to_string(),
                                op: "set opaque xattr",
                                source: e,
                            }
                        })?;
                        fd
                    } else {
                        let parent = lossy(&join(&comps[..=i]));
                        let entry = entry.to_string();
                        let is_link = st.is_some_and(|st| {
                            (st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFLNK.bits()
                        });
                        return Err(if is_link {
                            LayerError::ThroughSymlink { entry, parent }
                        } else {
                            LayerError::NotADirectory { entry, parent }
                        });
                    }
                }
                Err(e) => return Err(io_err(entry, "open parent")(e)),
            };
            cur = Some(next);
        }
        match cur {
            Some(fd) => Ok(fd),
            None => self.root.try_clone().map_err(|e| LayerError::Io {
                entry: entry.to_string(),
                op: "dup",
                source: e,
            }),
        }
    }

    /// Removes an entry an earlier one in this layer created at `comps`.
    fn remove(
        &mut self,
        parent: BorrowedFd<'_>,
        comps: &[&[u8]],
        st: &nix::sys::stat::FileStat,
        entry: &str,
    ) -> Result<(), LayerError> {
        let Some(&last) = comps.last() else {
            return Err(invalid(entry, "cannot replace the layer root"));
        };
        if is_dir(st) {
            // The parent chain was just opened without following symlinks,
            // and remove_dir_all does not follow them below this point.
            let path = self.dest.join(OsStr::from_bytes(&join(comps)));
            std::fs::remove_dir_all(&path).map_err(|e| LayerError::Io {
                entry: entry.to_string(),
                op: "remove replaced directory",
                source: e,
            })?;
        } else {
            unlinkat(parent, last, UnlinkatFlags::NoRemoveDir)
                .map_err(io_err(entry, "remove replaced entry"))?;
            self.stats.inodes = self.stats.inodes.saturating_sub(1);
        }
        Ok(())
    }

    /// Owner, mode, xattrs and (unless a directory) times, through an open fd.
    fn apply_fd_meta(
        fd: BorrowedFd<'_>,
        meta: &Meta,
        entry: &str,
        set_times: bool,
    ) -> Result<(), LayerError> {
        // chown first: it clears setuid/setgid and file capabilities.
        fchown(fd, Some(meta.uid), Some(meta.gid)).map_err(io_err(entry, "chown"))?;
        fchmod(fd, meta.mode).map_err(io_err(entry, "chmod"))?;
        for (k, v) in &meta.xattrs {
            xattr_result(set_xattr_fd(fd, k, v), entry, k)?;
        }
        if set_times {
            futimens(fd, &meta.mtime, &meta.mtime).map_err(io_err(entry, "set times"))?;
        }
        Ok(())
    }

    /// The same for inodes that are not opened: symlinks, devices, fifos.
    fn apply_at_meta(
        parent: BorrowedFd<'_>,
        name: &[u8],
        meta: &Meta,
        entry: &str,
        chmod: bool,
    ) -> Result<(), LayerError> {
        fchownat(
            parent,
            name,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io_err(entry, "chown"))?;
        if chmod {
            // Only for inodes this entry just created and which are not
            // symlinks, so following the final component is harmless.
            fchmodat(parent, name, meta.mode, FchmodatFlags::FollowSymlink)
                .map_err(io_err(entry, "chmod"))?;
        }
        for (k, v) in &meta.xattrs {
            xattr_result(set_xattr_at(parent, name, k, v), entry, k)?;
        }
        utimensat(
            parent,
            name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io_err(entry, "set times"))?;
        Ok(())
    }

    fn finish_dir_times(&mut self) -> Result<(), LayerError> {
        for (comps, t) in std::mem::take(&mut self.dir_times) {
            let refs: Vec<&[u8]> = comps.iter().map(Vec::as_slice).collect();
            // A later entry may have replaced the directory; skip it then.
            let Ok(fd) = self.open_dir_chain(&refs, false, "") else {
                continue;
            };
            let entry = lossy(&join(&refs));
            futimens(fd.as_fd(), &t, &t).map_err(io_err(&entry, "set times"))?;
        }
        Ok(())
    }
}

/// A directory the tar implies but does not list: root-owned 0755.
fn make_parent(
    base: BorrowedFd<'_>,
    name: &[u8],
    entry: &str,
    inodes: &mut u64,
) -> Result<OwnedFd, LayerError> {
    mkdirat(base, name, Mode::from_bits_truncate(0o755)).map_err(io_err(entry, "mkdir parent"))?;
    *inodes += 1;
    let fd = open_dir_nofollow(base, name).map_err(io_err(entry, "open parent"))?;
    // Not subject to the umask.
    fchmod(fd.as_fd(), Mode::from_bits_truncate(0o755)).map_err(io_err(entry, "chmod parent"))?;
    Ok(fd)
}

fn owned(comps: &[&[u8]]) -> Vec<Vec<u8>> {
    comps.iter().map(|c| c.to_vec()).collect()
}

fn open_dir_nofollow(base: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    openat(
        base,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// xattrs the filesystem or our privileges cannot hold (ENOTSUP, EPERM) are
/// skipped with a warning, as Docker does; other failures are errors.
fn xattr_result(r: io::Result<()>, entry: &str, key: &str) -> Result<(), LayerError> {
    match r {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(nix::libc::ENOTSUP | nix::libc::EPERM)
            ) =>
        {
            tracing::warn!(entry, key, error = %e, "skipping xattr from layer");
            Ok(())
        }
        Err(e) => Err(LayerError::Io {
            entry: entry.to_string(),
            op: "set xattr",
            source: e,
        }),
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta, LayerError> {
    let header = entry.header();
    let bad = |what: &str, e: io::Error| invalid(name, format!("bad {what} in header: {e}"));
    let mode = header.mode().map_err(|e| bad("mode", e))?;
    // PAX uid/gid are already folded into the header by the tar reader.
    let uid = header.uid().map_err(|e| bad("uid", e))?;
    let gid = header.gid().map_err(|e| bad("gid", e))?;
    let uid = u32::try_from(uid).map_err(|_| invalid(name, format!("uid {uid} out of range")))?;
    let gid = u32::try_from(gid).map_err(|_| invalid(name, format!("gid {gid} out of range")))?;
    let header_mtime = header.mtime().map_err(|e| bad("mtime", e))?;
    let mut mtime = TimeSpec::new(i64::try_from(header_mtime).unwrap_or(i64::MAX), 0);
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(LayerError::Read)? {
        for ext in pax {
            let ext = ext.map_err(LayerError::Read)?;
            let Ok(key) = ext.key() else { continue };
            if key == "mtime" {
                if let Some(t) = parse_pax_time(ext.value_bytes()) {
                    mtime = t;
                }
            } else if let Some(xkey) = key.strip_prefix(PAX_XATTR_PREFIX) {
                // overlayfs' own xattrs would let a layer redirect or hide
                // paths behind our back; whiteouts must come in OCI form.
                if xkey.starts_with(OVERLAY_XATTR_PREFIX) {
                    tracing::warn!(
                        entry = name,
                        key = xkey,
                        "ignoring overlayfs xattr in layer"
                    );
                    continue;
                }
                xattrs.push((xkey.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(Meta {
        mode: Mode::from_bits_truncate(mode & 0o7777),
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        mtime,
        xattrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use tar::EntryType;

    /// One tar entry to build; paths and link names are written raw, so
    /// tests can produce what a well-behaved tar writer would refuse.
    #[derive(Clone, Debug)]
    struct E {
        path: Vec<u8>,
        kind: EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        data: Vec<u8>,
        link: Option<Vec<u8>>,
        dev: (u32, u32),
        pax: Vec<(String, Vec<u8>)>,
        /// Overrides the type flag byte (the tar crate writes `0` for `\0`).
        raw_flag: Option<u8>,
    }

    impl E {
        fn new(path: &str, kind: EntryType, mode: u32) -> E {
            E {
                path: path.as_bytes().to_vec(),
                kind,
                mode,
                uid: 0,
                gid: 0,
                mtime: 1_500_000_000,
                data: Vec::new(),
                link: None,
                dev: (0, 0),
                pax: Vec::new(),
                raw_flag: None,
            }
        }
        fn file(path: &str, data: &[u8]) -> E {
            let mut e = E::new(path, EntryType::Regular, 0o644);
            e.data = data.to_vec();
            e
        }
        fn dir(path: &str) -> E {
            E::new(path, EntryType::Directory, 0o755)
        }
        fn symlink(path: &str, target: &str) -> E {
            let mut e = E::new(path, EntryType::Symlink, 0o777);
            e.link = Some(target.as_bytes().to_vec());
            e
        }
        fn hardlink(path: &str, target: &str) -> E {
            let mut e = E::new(path, EntryType::Link, 0o644);
            e.link = Some(target.as_bytes().to_vec());
            e
        }
        fn dev(path: &str, kind: EntryType, major: u32, minor: u32) -> E {
            let mut e = E::new(path, kind, 0o666);
            e.dev = (major, minor);
            e
        }
        fn mode(mut self, m: u32) -> E {
            self.mode = m;
            self
        }
        fn owner(mut self, uid: u64, gid: u64) -> E {
            self.uid = uid;
            self.gid = gid;
            self
        }
        fn mtime(mut self, t: u64) -> E {
            self.mtime = t;
            self
        }
        fn pax(mut self, k: &str, v: &[u8]) -> E {
            self.pax.push((k.to_string(), v.to_vec()));
            self
        }
    }

    fn pax_record(k: &str, v: &[u8]) -> Vec<u8> {
        // "<len> <key>=<value>\n", where <len> counts its own digits too.
        let body = 3 + k.len() + v.len(); // ' ', '=', '\n'
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        let mut out = format!("{len} {k}=").into_bytes();
        out.extend_from_slice(v);
        out.push(b'\n');
        out
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut pax = e.pax.clone();
            if e.path.len() >= 100 {
                pax.push(("path".into(), e.path.clone()));
            }
            if !pax.is_empty() {
                let data: Vec<u8> = pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(EntryType::XHeader);
                h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append(&h, data.as_slice()).unwrap();
            }
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(e.kind);
            if let Some(f) = e.raw_flag {
                h.as_old_mut().linkflag[0] = f;
            }
            let n = e.path.len().min(99);
            h.as_old_mut().name[..n].copy_from_slice(&e.path[..n]);
            if let Some(l) = &e.link {
                h.set_link_name_literal(l).unwrap();
            }
            h.set_mode(e.mode);
            h.set_uid(e.uid);
            h.set_gid(e.gid);
            h.set_mtime(e.mtime);
            h.set_size(e.data.len() as u64);
            h.set_device_major(e.dev.0).unwrap();
            h.set_device_minor(e.dev.1).unwrap();
            h.set_cksum();
            b.append(&h, e.data.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn sha256(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    fn unpack(data: &[u8], c: Compression) -> (tempfile::TempDir, Result<LayerStats, LayerError>) {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("layer");
        fs::create_dir(&dest).unwrap();
        let r = unpack_layer(data, c, &dest);
        (tmp, r)
    }

    fn ok(data: &[u8], c: Compression) -> (tempfile::TempDir, PathBuf, LayerStats) {
        let (tmp, r) = unpack(data, c);
        let stats = r.unwrap_or_else(|e| panic!("unpack failed: {e}"));
        let dest = tmp.path().join("layer");
        (tmp, dest, stats)
    }

    fn xattr(path: &Path, key: &str) -> Option<Vec<u8>> {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let k = CString::new(key).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: NUL-terminated strings and a buffer whose length we pass.
        let n = unsafe {
            nix::libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        let n = usize::try_from(n).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    fn lmeta(p: &Path) -> fs::Metadata {
        fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn sample_layer() -> Vec<u8> {
        tar_of(&[
            E::dir("./").mode(0o755).mtime(1_000),
            E::dir("etc/").mtime(1_234_567_890),
            E::file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
                .owner(1000, 1001)
                .mtime(1_600_000_000)
                .pax("mtime", b"1600000000.5")
                .pax("SCHILY.xattr.user.note", b"hello")
                .pax("SCHILY.xattr.trusted.overlay.redirect", b"/evil"),
            E::file("bin/su", b"\x7fELF").mode(0o4755),
            E::file("bin/wall", b"\x7fELF").mode(0o2755).owner(0, 5),
            E::dir("tmp/").mode(0o1777),
            E::symlink("bin/sh", "/bin/busybox"),
            E::hardlink("bin/passwd-link", "etc/passwd"),
            E::dev("dev/null", EntryType::Char, 1, 3),
            E::dev("dev/loop0", EntryType::Block, 7, 0).mode(0o660),
            E::new("run/initctl", EntryType::Fifo, 0o600),
            E::dir("var/lib/").pax("SCHILY.xattr.trusted.rcri-test", b"v"),
        ])
    }

    #[test]
    fn unpacks_every_entry_kind_with_metadata() {
        let tar = sample_layer();
        let (_tmp, d, stats) = ok(&tar, Compression::None);
        assert_eq!(stats.diff_id, sha256(&tar));
        assert_eq!(stats.bytes, 26 + 4 + 4);
        // etc, passwd, bin, su, wall, tmp, sh, dev, null, loop0, run, initctl, var, lib
        assert_eq!(stats.inodes, 14);

        let m = lmeta(&d.join("etc/passwd"));
        assert_eq!(m.permissions().mode() & 0o7777, 0o644);
        assert_eq!((m.uid(), m.gid()), (1000, 1001));
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 500_000_000));
        assert_eq!(
            fs::read(d.join("etc/passwd")).unwrap(),
            b"root:x:0:0::/root:/bin/sh\n"
        );
        assert_eq!(
            xattr(&d.join("etc/passwd"), "user.note").as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(
            xattr(&d.join("etc/passwd"), "trusted.overlay.redirect"),
            None
        );

        // The directory mtime survives the children written into it.
        assert_eq!(lmeta(&d.join("etc")).mtime(), 1_234_567_890);
        assert_eq!(lmeta(&d).mtime(), 1_000);
        assert_eq!(lmeta(&d.join("bin")).permissions().mode() & 0o7777, 0o755);

        assert_eq!(
            lmeta(&d.join("bin/su")).permissions().mode() & 0o7777,
            0o4755
        );
        let wall = lmeta(&d.join("bin/wall"));
        assert_eq!(wall.permissions().mode() & 0o7777, 0o2755);
        assert_eq!(wall.gid(), 5);
        assert_eq!(lmeta(&d.join("tmp")).permissions().mode() & 0o7777, 0o1777);

        assert!(lmeta(&d.join("bin/sh")).file_type().is_symlink());
        assert_eq!(
            fs::read_link(d.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );

        let a = lmeta(&d.join("etc/passwd"));
        let b = lmeta(&d.join("bin/passwd-link"));
        assert_eq!(a.ino(), b.ino());
        assert_eq!(b.nlink(), 2);

        let null = lmeta(&d.join("dev/null"));
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), makedev(1, 3));
        assert_eq!(null.permissions().mode() & 0o7777, 0o666);
        let lp = lmeta(&d.join("dev/loop0"));
        assert!(lp.file_type().is_block_device());
        assert_eq!(lp.rdev(), makedev(7, 0));
        assert_eq!(lp.permissions().mode() & 0o7777, 0o660);
        let fifo = lmeta(&d.join("run/initctl"));
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.permissions().mode() & 0o7777, 0o600);

        assert_eq!(
            xattr(&d.join("var/lib"), "trusted.rcri-test").as_deref(),
            Some(&b"v"[..])
        );
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let tar = tar_of(&[
            E::dir("a/"),
            E::file("a/.wh.gone", b"").owner(0, 0),
            E::file(".wh.rootfile", b""),
            E::file("b/.wh..wh..opq", b""),
            E::dir("c/"),
            E::file("c/.wh..wh..opq", b""),
            E::file("c/kept", b"x"),
            E::file("a/.wh..wh.plnk", b""),
            // Replaced in this layer: the new directory must hide the old.
            E::file(".wh.d", b""),
            E::dir("d/"),
            E::file("d/new", b"n"),
            // The same, with the new directory implied by its child only.
            E::file(".wh.e", b""),
            E::file("e/new", b"n"),
        ]);
        let (_tmp, d, _) = ok(&tar, Compression::None);
        for wh in ["a/gone", "rootfile"] {
            let m = lmeta(&d.join(wh));
            assert!(m.file_type().is_char_device(), "{wh}");
            assert_eq!(m.rdev(), 0, "{wh}");
        }
        assert!(fs::symlink_metadata(d.join("a/.wh.gone")).is_err());
        assert!(fs::symlink_metadata(d.join("a/.wh..wh.plnk")).is_err());
        assert!(fs::symlink_metadata(d.join("b/.wh..wh..opq")).is_err());
        assert_eq!(xattr(&d.join("a"), OVERLAY_OPAQUE_XATTR), None);
        for opq in ["b", "c", "d", "e"] {
            assert!(lmeta(&d.join(opq)).is_dir());
            assert_eq!(
                xattr(&d.join(opq), OVERLAY_OPAQUE_XATTR).as_deref(),
                Some(&b"y"[..])
            );
        }
        assert_eq!(fs::read(d.join("c/kept")).unwrap(), b"x");
        assert_eq!(fs::read(d.join("d/new")).unwrap(), b"n");
    }

    #[test]
    fn whiteout_after_same_layer_entry_does_not_remove_it() {
        let tar = tar_of(&[
            E::file("f", b"mine"),
            E::file(".wh.f", b""),
            E::dir("g/"),
            E::file(".wh.g", b""),
        ]);
        let (_tmp, d, _) = ok(&tar, Compression::None);
        assert_eq!(fs::read(d.join("f")).unwrap(), b"mine");
        assert_eq!(
            xattr(&d.join("g"), OVERLAY_OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
    }

    #[test]
    fn bad_whiteout_names_are_refused() {
        for p in ["a/.wh.", "a/.wh..", "a/.wh..."] {
            let tar = tar_of(&[E::file(p, b"")]);
            let (_tmp, r) = unpack(&tar, Compression::None);
            assert!(
                matches!(r, Err(LayerError::InvalidEntry { .. })),
                "{p}: {r:?}"
            );
        }
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let tar = tar_of(&[
            E::file("x", b"one"),
            E::file("x", b"two"),
            E::dir("d/").mode(0o700),
            E::file("d/f", b""),
            E::dir("d/").mode(0o750),
            E::dir("e/"),
            E::file("e/child", b""),
            E::file("e", b"now a file"),
            E::symlink("s", "x"),
            E::file("s", b"regular"),
            // Old (pre-POSIX) tars mark directories by a trailing slash.
            E {
                raw_flag: Some(0),
                ..E::new("old/", EntryType::Regular, 0o711)
            },
        ]);
        let (_tmp, d, _) = ok(&tar, Compression::None);
        assert_eq!(fs::read(d.join("x")).unwrap(), b"two");
        assert_eq!(lmeta(&d.join("d")).permissions().mode() & 0o7777, 0o750);
        assert!(d.join("d/f").exists());
        assert_eq!(fs::read(d.join("e")).unwrap(), b"now a file");
        assert!(lmeta(&d.join("s")).is_file());
        assert_eq!(fs::read(d.join("x")).unwrap(), b"two");
        let old = lmeta(&d.join("old"));
        assert!(old.is_dir());
        assert_eq!(old.permissions().mode() & 0o7777, 0o711);
    }

    #[test]
    fn compressions_and_detection_agree_on_diff_id() {
        let tar = sample_layer();
        let want = sha256(&tar);
        let gz = gzip(&tar);
        let zs = zstd(&tar);
        for (data, c) in [
            (&tar, Compression::None),
            (&gz, Compression::Gzip),
            (&zs, Compression::Zstd),
            (&tar, Compression::Detect),
            (&gz, Compression::Detect),
            (&zs, Compression::Detect),
        ] {
            let (_tmp, d, stats) = ok(data, c);
            assert_eq!(stats.diff_id, want, "{c:?}");
            stats.verify_diff_id(&want).unwrap();
            assert!(d.join("etc/passwd").is_file());
        }
    }

    #[test]
    fn multi_frame_zstd_and_multi_member_gzip() {
        let tar = sample_layer();
        let (a, b) = tar.split_at(tar.len() / 3);
        let mut zs = zstd(a);
        // A skippable frame between the two data frames.
        zs.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        zs.extend_from_slice(&3u32.to_le_bytes());
        zs.extend_from_slice(b"abc");
        zs.extend_from_slice(&zstd(b));
        let mut gz = gzip(a);
        gz.extend_from_slice(&gzip(b));
        for (data, c) in [(&zs, Compression::Zstd), (&gz, Compression::Gzip)] {
            let (_tmp, _d, stats) = ok(data, c);
            assert_eq!(stats.diff_id, sha256(&tar), "{c:?}");
        }
    }

    #[test]
    fn corrupt_streams_are_errors() {
        let tar = sample_layer();
        let mut zs = zstd(&tar);
        zs.truncate(zs.len() / 2);
        let mut gz = gzip(&tar);
        let mid = gz.len() / 2;
        gz[mid] ^= 0xff;
        // ruzstd writes a content checksum as a frame's last 4 bytes.
        let mut bad_sum = zstd(&tar);
        if let Some(b) = bad_sum.last_mut() {
            *b ^= 0xff;
        }
        for (data, c) in [
            (&zs, Compression::Zstd),
            (&gz, Compression::Gzip),
            (&bad_sum, Compression::Zstd),
        ] {
            let (_tmp, r) = unpack(data, c);
            assert!(r.is_err(), "{c:?}");
        }
    }

    #[test]
    fn media_types() {
        use Compression as C;
        for (mt, c) in [
            (MEDIA_TYPE_OCI_LAYER, C::None),
            (MEDIA_TYPE_OCI_LAYER_GZIP, C::Gzip),
            (MEDIA_TYPE_OCI_LAYER_ZSTD, C::Zstd),
            (MEDIA_TYPE_DOCKER_LAYER, C::Gzip),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                C::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                C::Zstd,
            ),
        ] {
            assert_eq!(Compression::from_media_type(mt).unwrap(), c, "{mt}");
        }
        assert!(matches!(
            Compression::from_media_type("application/vnd.oci.image.config.v1+json"),
            Err(LayerError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn digesting_reader_verifies() {
        let data = b"some blob bytes";
        let good = sha256(data);
        let mut r = DigestingReader::for_digest(&data[..], &good).unwrap();
        let mut first = [0u8; 4];
        r.read_exact(&mut first).unwrap();
        // finish() reads the rest itself.
        assert_eq!(r.finish(&good).unwrap(), data.len() as u64);

        let other = sha256(b"other");
        match DigestingReader::new(&data[..]).finish(&other) {
            Err(LayerError::DigestMismatch { expected, actual }) => {
                assert_eq!(expected, other);
                assert_eq!(actual, good);
            }
            r => panic!("{r:?}"),
        }
        let sha512 = format!("sha512:{}", hex::encode(Sha512::digest(data)));
        DigestingReader::for_digest(&data[..], &sha512)
            .unwrap()
            .finish(&sha512)
            .unwrap();
        assert!(matches!(
            DigestingReader::for_digest(&data[..], "sha256:abc"),
            Err(LayerError::InvalidDigest(_))
        ));
        let stats = LayerStats {
            diff_id: good.clone(),
            ..LayerStats::default()
        };
        assert!(stats.verify_diff_id(&other).is_err());
    }

    #[test]
    fn dest_must_be_empty() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("x"), b"").unwrap();
        let tar = tar_of(&[E::file("f", b"")]);
        assert!(matches!(
            unpack_layer(&tar[..], Compression::None, tmp.path()),
            Err(LayerError::NotEmpty(_))
        ));
    }

    /// Unpacks next to an `outside` directory and checks it is untouched.
    fn unpack_beside_outside(entries: &[E]) -> (tempfile::TempDir, Result<LayerStats, LayerError>) {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"s").unwrap();
        let dest = tmp.path().join("layer");
        fs::create_dir(&dest).unwrap();
        let tar = tar_of(entries);
        let r = unpack_layer(&tar[..], Compression::None, &dest);
        assert_outside_untouched(tmp.path());
        (tmp, r)
    }

    fn assert_outside_untouched(tmp: &Path) {
        let mut top: Vec<_> = fs::read_dir(tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        top.sort();
        assert_eq!(top, ["layer", "outside"]);
        let names: Vec<_> = fs::read_dir(tmp.join("outside"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret"]);
        let m = lmeta(&tmp.join("outside/secret"));
        assert_eq!(m.nlink(), 1, "a hard link to the outside was made");
        assert_eq!(m.permissions().mode() & 0o7777, 0o644);
        assert_eq!(fs::read(tmp.join("outside/secret")).unwrap(), b"s");
    }

    #[test]
    fn dotdot_escapes_are_refused() {
        for p in ["../x", "a/../../x", "./../outside/secret", "/../x"] {
            let (_tmp, r) = unpack_beside_outside(&[E::file(p, b"pwned")]);
            match r {
                Err(LayerError::Escape { entry }) => assert_eq!(entry, p),
                r => panic!("{p}: {r:?}"),
            }
        }
        let e = LayerError::Escape {
            entry: "../../etc/passwd".into(),
        };
        assert_eq!(
            e.to_string(),
            r#"layer entry "../../etc/passwd" escapes the layer directory"#
        );
    }

    #[test]
    fn absolute_and_harmless_dotdot_paths_stay_inside() {
        let (tmp, r) = unpack_beside_outside(&[
            E::file("/abs/file", b"1"),
            E::file("a/../b", b"2"),
            E::file("//c/./d", b"3"),
        ]);
        r.unwrap();
        let d = tmp.path().join("layer");
        assert_eq!(fs::read(d.join("abs/file")).unwrap(), b"1");
        assert_eq!(fs::read(d.join("b")).unwrap(), b"2");
        assert_eq!(fs::read(d.join("c/d")).unwrap(), b"3");
    }

    #[test]
    fn symlink_parents_are_never_followed() {
        let (tmp, r) =
            unpack_beside_outside(&[E::symlink("a", "../outside"), E::file("a/pwned", b"x")]);
        match r {
            Err(LayerError::ThroughSymlink { entry, parent }) => {
                assert_eq!((entry.as_str(), parent.as_str()), ("a/pwned", "a"));
            }
            r => panic!("{r:?}"),
        }
        drop(tmp);
        // The /etc trick, with a directory through the link.
        let (_tmp, r) =
            unpack_beside_outside(&[E::symlink("etc", "/etc"), E::dir("etc/rcri-test-dir/")]);
        assert!(matches!(r, Err(LayerError::ThroughSymlink { .. })), "{r:?}");
        assert!(!Path::new("/etc/rcri-test-dir").exists());
        // A whiteout or opaque marker below a symlink is refused as well.
        for p in ["a/.wh.secret", "a/.wh..wh..opq"] {
            let (_tmp, r) =
                unpack_beside_outside(&[E::symlink("a", "../outside"), E::file(p, b"")]);
            assert!(
                matches!(r, Err(LayerError::ThroughSymlink { .. })),
                "{p}: {r:?}"
            );
        }
        // A file below a regular file.
        let (_tmp, r) = unpack_beside_outside(&[E::file("f", b""), E::file("f/g", b"")]);
        assert!(matches!(r, Err(LayerError::NotADirectory { .. })), "{r:?}");
    }

    #[test]
    fn entries_replace_symlinks_instead_of_writing_through_them() {
        let (tmp, r) = unpack_beside_outside(&[
            E::symlink("f", "../outside/secret"),
            E::file("f", b"inside"),
            E::symlink("d", "../outside"),
            E::dir("d/"),
            E::symlink("n", "../outside/new"),
            E::dev("n", EntryType::Char, 1, 3),
        ]);
        r.unwrap();
        let d = tmp.path().join("layer");
        assert_eq!(fs::read(d.join("f")).unwrap(), b"inside");
        assert!(lmeta(&d.join("d")).is_dir());
        assert!(lmeta(&d.join("n")).file_type().is_char_device());
    }

    #[test]
    fn hard_links_must_stay_inside() {
        let (_tmp, r) = unpack_beside_outside(&[E::hardlink("h", "../../etc/passwd")]);
        match r {
            Err(LayerError::LinkEscape { entry, target }) => {
                assert_eq!((entry.as_str(), target.as_str()), ("h", "../../etc/passwd"));
            }
            r => panic!("{r:?}"),
        }
        let (_tmp, r) =
            unpack_beside_outside(&[E::symlink("s", "../outside"), E::hardlink("h", "s/secret")]);
        assert!(matches!(r, Err(LayerError::ThroughSymlink { .. })), "{r:?}");
        for missing in ["missing", "no/such/dir"] {
            let (_tmp, r) = unpack_beside_outside(&[E::hardlink("h", missing)]);
            assert!(
                matches!(r, Err(LayerError::LinkTargetMissing { .. })),
                "{r:?}"
            );
        }
        // A hard link to a symlink links the symlink, not what it points to.
        let (tmp, r) =
            unpack_beside_outside(&[E::symlink("s", "../outside/secret"), E::hardlink("h", "s")]);
        r.unwrap();
        let h = lmeta(&tmp.path().join("layer/h"));
        assert!(h.file_type().is_symlink());
        assert_eq!(h.nlink(), 2);
    }

    #[test]
    fn symlink_targets_are_stored_verbatim() {
        let (tmp, r) = unpack_beside_outside(&[
            E::symlink("abs", "/etc/passwd"),
            E::symlink("up", "../../../../outside/secret"),
            E::symlink("dangling", "no/such/file"),
        ]);
        r.unwrap();
        let d = tmp.path().join("layer");
        assert_eq!(
            fs::read_link(d.join("abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            fs::read_link(d.join("up")).unwrap(),
            Path::new("../../../../outside/secret")
        );
        assert_eq!(
            fs::read_link(d.join("dangling")).unwrap(),
            Path::new("no/such/file")
        );
    }

    #[test]
    fn long_paths_via_pax() {
        let long = format!("{}/file", "d".repeat(150));
        let tar = tar_of(&[E::file(&long, b"deep")]);
        let (_tmp, d, _) = ok(&tar, Compression::None);
        assert_eq!(fs::read(d.join(&long)).unwrap(), b"deep");
    }

    fn component() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just(".."),
            Just("."),
            Just(""),
            Just("a"),
            Just("b"),
            Just("outside"),
            Just("secret"),
            Just(".wh.a"),
            Just(".wh..wh..opq"),
        ]
    }

    fn rand_path() -> impl Strategy<Value = String> {
        (any::<bool>(), proptest::collection::vec(component(), 1..5))
            .prop_map(|(abs, c)| format!("{}{}", if abs { "/" } else { "" }, c.join("/")))
    }

    fn rand_entry() -> impl Strategy<Value = E> {
        let target = prop_oneof![
            Just("..".to_string()),
            Just("../outside".to_string()),
            Just("../outside/secret".to_string()),
            Just("/".to_string()),
            rand_path(),
        ];
        (0u8..5, rand_path(), target).prop_map(|(k, p, t)| match k {
            0 => E::file(&p, b"data"),
            1 => E::dir(&p),
            2 => E::symlink(&p, &t),
            3 => E::hardlink(&p, &t),
            _ => E::dev(&p, EntryType::Char, 1, 3),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn random_entries_never_write_outside(entries in proptest::collection::vec(rand_entry(), 1..8)) {
            // Any result is fine; the outside must be untouched either way.
            let _ = unpack_beside_outside(&entries);
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            for c in [Compression::Detect, Compression::Gzip, Compression::Zstd] {
                let _ = unpack(&data, c);
            }
        }

        #[test]
        fn pax_times(secs in -10_000i64..4_000_000_000, nanos in 0u32..1_000_000_000) {
            let s = format!("{secs}.{nanos:09}");
            let t = parse_pax_time(s.as_bytes()).unwrap();
            let total = i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec());
            let neg = s.starts_with('-');
            let want = i128::from(secs) * 1_000_000_000
                + if neg { -i128::from(nanos) } else { i128::from(nanos) };
            prop_assert_eq!(total, want);
        }
    }
}
