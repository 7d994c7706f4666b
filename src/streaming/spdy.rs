//! SPDY/3.1 framing: a pure codec (no I/O) for the streaming server.
//!
//! The kubelet and crictl speak SPDY/3.1 to the streaming server for exec,
//! attach and port-forward. This module turns bytes into [`Frame`]s and back.
//! It knows the wire layout of every SPDY/3.1 frame and the compressed
//! name/value header blocks, and nothing about streams, flow control or
//! sessions; those belong to the layer above.
//!
//! Wire layout (all integers big-endian):
//!
//! ```text
//! control frame: |1| version (15) | type (16) | flags (8) | length (24) | payload
//! data frame:    |0| stream id (31)           | flags (8) | length (24) | data
//! ```
//!
//! Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are compressed with one
//! zlib stream per direction that lasts for the whole connection, primed with
//! the SPDY/3 dictionary ([`SPDY3_DICTIONARY`]); every frame ends with a zlib
//! sync flush. Hence a [`Codec`] holds state and frames carrying headers must
//! be encoded and decoded in connection order.
//!
//! Errors: a [`SpdyError`] is either a *stream* error ([`SpdyError::stream_id`]
//! is `Some`: the frame was consumed, the codec stays usable, answer with
//! RST_STREAM and [`SpdyError::rst_status`]) or a *session* error (answer with
//! GOAWAY and [`SpdyError::goaway_status`], then close the connection; the
//! decoder refuses further input).

use std::collections::HashSet;
use std::fmt;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The protocol version carried by every control frame.
pub const VERSION: u16 = 3;

/// Largest value of the 24-bit length field.
pub const MAX_FRAME_PAYLOAD: u32 = 0x00FF_FFFF;

/// Largest 31-bit stream id (and WINDOW_UPDATE delta).
pub const MAX_STREAM_ID: u32 = 0x7FFF_FFFF;

/// Size of a control or data frame header.
pub const FRAME_HEADER_LEN: usize = 8;

/// Control frame type codes.
pub mod frame_type {
    /// SYN_STREAM.
    pub const SYN_STREAM: u16 = 1;
    /// SYN_REPLY.
    pub const SYN_REPLY: u16 = 2;
    /// RST_STREAM.
    pub const RST_STREAM: u16 = 3;
    /// SETTINGS.
    pub const SETTINGS: u16 = 4;
    /// PING.
    pub const PING: u16 = 6;
    /// GOAWAY.
    pub const GOAWAY: u16 = 7;
    /// HEADERS.
    pub const HEADERS: u16 = 8;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u16 = 9;
}

/// FLAG_FIN on SYN_STREAM, SYN_REPLY, HEADERS and DATA.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// FLAG_SETTINGS_CLEAR_SETTINGS on SETTINGS.
pub const FLAG_SETTINGS_CLEAR_SETTINGS: u8 = 0x01;
/// FLAG_SETTINGS_PERSIST_VALUE on one SETTINGS entry.
pub const SETTINGS_FLAG_PERSIST_VALUE: u8 = 0x01;
/// FLAG_SETTINGS_PERSISTED on one SETTINGS entry.
pub const SETTINGS_FLAG_PERSISTED: u8 = 0x02;

/// SETTINGS entry ids.
pub mod settings_id {
    /// SETTINGS_UPLOAD_BANDWIDTH.
    pub const UPLOAD_BANDWIDTH: u32 = 1;
    /// SETTINGS_DOWNLOAD_BANDWIDTH.
    pub const DOWNLOAD_BANDWIDTH: u32 = 2;
    /// SETTINGS_ROUND_TRIP_TIME.
    pub const ROUND_TRIP_TIME: u32 = 3;
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u32 = 4;
    /// SETTINGS_CURRENT_CWND.
    pub const CURRENT_CWND: u32 = 5;
    /// SETTINGS_DOWNLOAD_RETRANS_RATE.
    pub const DOWNLOAD_RETRANS_RATE: u32 = 6;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u32 = 7;
    /// SETTINGS_CLIENT_CERTIFICATE_VECTOR_SIZE.
    pub const CLIENT_CERTIFICATE_VECTOR_SIZE: u32 = 8;
}

/// RST_STREAM status codes.
pub mod rst_status {
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INVALID_STREAM.
    pub const INVALID_STREAM: u32 = 2;
    /// REFUSED_STREAM.
    pub const REFUSED_STREAM: u32 = 3;
    /// UNSUPPORTED_VERSION.
    pub const UNSUPPORTED_VERSION: u32 = 4;
    /// CANCEL.
    pub const CANCEL: u32 = 5;
    /// INTERNAL_ERROR.
    pub const INTERNAL_ERROR: u32 = 6;
    /// FLOW_CONTROL_ERROR.
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    /// STREAM_IN_USE.
    pub const STREAM_IN_USE: u32 = 8;
    /// STREAM_ALREADY_CLOSED.
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    /// INVALID_CREDENTIALS (SPDY/3 only).
    pub const INVALID_CREDENTIALS: u32 = 10;
    /// FRAME_TOO_LARGE.
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes.
pub mod goaway_status {
    /// OK: a normal session teardown.
    pub const OK: u32 = 0;
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INTERNAL_ERROR.
    pub const INTERNAL_ERROR: u32 = 2;
}

/// The zlib dictionary for SPDY/3 header compression, from the SPDY Protocol
/// Draft 3 (draft-mbelshe-httpbis-spdy-00), section 2.6.10.1 "Compression".
/// It is protocol data and must be byte-exact: 1423 bytes, the length-prefixed
/// names first, then a run of common values, with no trailing NUL.
#[rustfmt::skip]
pub const SPDY3_DICTIONARY: &[u8; 1423] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\
    \x00\x00\x00\x03put\x00\x00\x00\x06delete\x00\x00\x00\x05trace\
    \x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-charset\
    \x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\
    \x00\x00\x00\x0daccept-ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\
    \x00\x00\x00\x0dauthorization\x00\x00\x00\x0dcache-control\
    \x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\
    \x00\x00\x00\x10content-encoding\x00\x00\x00\x10content-language\
    \x00\x00\x00\x0econtent-length\x00\x00\x00\x10content-location\
    \x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\
    \x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\
    \x00\x00\x00\x06expect\x00\x00\x00\x07expires\x00\x00\x00\x04from\
    \x00\x00\x00\x04host\x00\x00\x00\x08if-match\x00\x00\x00\x11if-modified-since\
    \x00\x00\x00\x0dif-none-match\x00\x00\x00\x08if-range\
    \x00\x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\
    \x00\x00\x00\x08location\x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\
    \x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authorization\
    \x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0bretry-after\
    \x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\
    \x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\
    \x00\x00\x00\x0auser-agent\x00\x00\x00\x04vary\x00\x00\x00\x03via\
    \x00\x00\x00\x07warning\x00\x00\x00\x10www-authenticate\x00\x00\x00\x06method\
    \x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\x06200 OK\
    \x00\x00\x00\x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\
    \x00\x00\x00\x06public\x00\x00\x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\
    \x00\x00\x00\x06origin\
    1001012012022052063003023033043053063074024054064074084094104114124134144154\
    16417502504505203 Non-Authoritative Information204 No Content301 Moved Perma\
    nently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal \
    Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Ju\
    n Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTch\
    unked,text/html,image/png,image/jpg,image/gif,application/xml,application/xh\
    tml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcha\
    rset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
/// Adler-32 of [`SPDY3_DICTIONARY`], the DICTID a peer's zlib header names.
pub const SPDY3_DICTIONARY_ID: u32 = 0xE3C6_A7C2;

/// A decoded header block: `(name, value)` pairs in wire order. Names are
/// lowercase and unique; a header with several values carries them in one
/// value separated by NUL bytes, exactly as on the wire (see [`header_values`]).
pub type Headers = Vec<(String, String)>;

/// The value of header `name`, as on the wire (several values NUL-separated).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The values of header `name`, split at the NUL separators.
pub fn header_values<'a>(headers: &'a Headers, name: &str) -> impl Iterator<Item = &'a str> {
    header(headers, name)
        .into_iter()
        .flat_map(|v| v.split('\0'))
}

/// One SPDY/3.1 frame.
///
/// Flags are the raw flag byte ([`FLAG_FIN`], [`FLAG_UNIDIRECTIONAL`], ...).
/// Stream ids, associated ids and window deltas are 31-bit; the encoder
/// rejects larger values and the decoder masks the reserved bit away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// SYN_STREAM: open a stream.
    SynStream {
        /// The new stream, non-zero.
        stream_id: u32,
        /// The stream this one is associated with (0 for none).
        associated_id: u32,
        /// Priority 0 (highest) to 7.
        priority: u8,
        /// [`FLAG_FIN`], [`FLAG_UNIDIRECTIONAL`].
        flags: u8,
        /// The request headers.
        headers: Headers,
    },
    /// SYN_REPLY: accept a stream.
    SynReply {
        /// The stream, non-zero.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// The reply headers.
        headers: Headers,
    },
    /// RST_STREAM: abort a stream.
    RstStream {
        /// The stream, non-zero.
        stream_id: u32,
        /// One of [`rst_status`].
        status: u32,
    },
    /// SETTINGS.
    Settings {
        /// [`FLAG_SETTINGS_CLEAR_SETTINGS`].
        flags: u8,
        /// `(id (24-bit, see [`settings_id`]), flags, value)`.
        entries: Vec<(u32, u8, u32)>,
    },
    /// PING.
    Ping {
        /// Opaque id (odd from clients, even from servers).
        id: u32,
    },
    /// GOAWAY: the session ends.
    GoAway {
        /// The last stream the sender accepted.
        last_good_stream_id: u32,
        /// One of [`goaway_status`].
        status: u32,
    },
    /// HEADERS: more headers for an open stream.
    Headers {
        /// The stream, non-zero.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// The additional headers.
        headers: Headers,
    },
    /// WINDOW_UPDATE (stream 0 is the session window in SPDY/3.1).
    WindowUpdate {
        /// The stream, or 0 for the session.
        stream_id: u32,
        /// Bytes added to the send window, 31-bit.
        delta: u32,
    },
    /// A DATA frame.
    Data {
        /// The stream, non-zero.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// The payload.
        data: Vec<u8>,
    },
    /// A control frame of a type this codec does not know (NOOP, CREDENTIAL,
    /// future types). Its payload was skipped; receivers must ignore it.
    Unknown {
        /// The control frame type.
        frame_type: u16,
        /// Its flags.
        flags: u8,
        /// The length of the skipped payload.
        length: u32,
    },
}

impl Frame {
    /// The stream the frame belongs to, if it is a stream frame.
    pub fn stream_id(&self) -> Option<u32> {
        match self {
            Frame::SynStream { stream_id, .. }
            | Frame::SynReply { stream_id, .. }
            | Frame::RstStream { stream_id, .. }
            | Frame::Headers { stream_id, .. }
            | Frame::WindowUpdate { stream_id, .. }
            | Frame::Data { stream_id, .. } => Some(*stream_id),
            Frame::Settings { .. }
            | Frame::Ping { .. }
            | Frame::GoAway { .. }
            | Frame::Unknown { .. } => None,
        }
    }

    /// Whether FLAG_FIN is set on a frame that can carry it.
    pub fn is_fin(&self) -> bool {
        match self {
            Frame::SynStream { flags, .. }
            | Frame::SynReply { flags, .. }
            | Frame::Headers { flags, .. }
            | Frame::Data { flags, .. } => flags & FLAG_FIN != 0,
            _ => false,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Frame::SynStream { .. } => "SYN_STREAM",
            Frame::SynReply { .. } => "SYN_REPLY",
            Frame::RstStream { .. } => "RST_STREAM",
            Frame::Settings { .. } => "SETTINGS",
            Frame::Ping { .. } => "PING",
            Frame::GoAway { .. } => "GOAWAY",
            Frame::Headers { .. } => "HEADERS",
            Frame::WindowUpdate { .. } => "WINDOW_UPDATE",
            Frame::Data { .. } => "DATA",
            Frame::Unknown { .. } => "unknown",
        }
    }
}

/// What is wrong with a name/value header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderBlockError {
    /// The block decompressed to nothing (not even the count).
    #[error("empty header block")]
    Empty,
    /// The block ended inside a count, a length, a name or a value.
    #[error("truncated header block")]
    Truncated,
    /// The count promises more headers than the block can hold.
    #[error("header count {count} does not fit in {available} bytes")]
    BadCount {
        /// The declared number of headers.
        count: u32,
        /// Bytes left after the count.
        available: usize,
    },
    /// Bytes follow the last header.
    #[error("trailing bytes after the last header")]
    TrailingBytes,
    /// A zero-length header name.
    #[error("empty header name")]
    EmptyName,
    /// A header name with an uppercase letter.
    #[error("header name is not lowercase")]
    UppercaseName,
    /// A header name with a NUL or another control character.
    #[error("header name contains a control character")]
    InvalidName,
    /// A name or value that is not UTF-8.
    #[error("header name or value is not valid UTF-8")]
    InvalidUtf8,
    /// The same name twice (several values must share one NUL-separated value).
    #[error("duplicate header name")]
    DuplicateName,
    /// A value that starts or ends with NUL or has two NULs in a row.
    #[error("header value has an empty NUL-separated part")]
    InvalidValue,
    /// More headers, or longer ones, than the configured limit.
    #[error("header block too large")]
    TooLarge,
}

/// An error from encoding or decoding SPDY frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpdyError {
    /// A control frame with a version other than 3.
    #[error("unsupported SPDY version {0}")]
    UnsupportedVersion(u16),
    /// A frame longer than the configured limit.
    #[error("frame length {length} exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The declared payload length.
        length: u32,
        /// The limit.
        max: u32,
    },
    /// A control frame whose length does not fit its type.
    #[error("invalid {frame} frame: {reason}")]
    InvalidFrame {
        /// The frame type.
        frame: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A stream frame on stream 0.
    #[error("{frame} frame on stream 0")]
    ZeroStreamId {
        /// The frame type.
        frame: &'static str,
    },
    /// The shared zlib stream is broken (bad data, wrong dictionary, ended).
    #[error("header compression error: {0}")]
    Compression(String),
    /// A header block inflates past the configured limit (a decompression bomb).
    #[error("decompressed header block exceeds {max} bytes")]
    HeaderBlockTooLarge {
        /// The limit.
        max: usize,
    },
    /// A header block that decompressed fine but is malformed: a stream error.
    #[error("invalid header block on stream {stream_id}: {kind}")]
    HeaderBlock {
        /// The stream whose SYN_STREAM/SYN_REPLY/HEADERS carried it.
        stream_id: u32,
        /// What is wrong.
        kind: HeaderBlockError,
    },
    /// A frame that cannot be encoded (a field out of range, invalid headers).
    #[error("cannot encode {frame} frame: {reason}")]
    Encode {
        /// The frame type.
        frame: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The codec direction failed earlier and its zlib state is unusable.
    #[error("SPDY codec is unusable after an earlier session error")]
    Poisoned,
}

impl SpdyError {
    /// `Some(stream)` for a stream error: the frame was consumed and the codec
    /// is still usable; answer with RST_STREAM. `None` for a session error.
    pub fn stream_id(&self) -> Option<u32> {
        match self {
            SpdyError::HeaderBlock { stream_id, .. } => Some(*stream_id),
            _ => None,
        }
    }

    /// Whether the session must end (GOAWAY, then close).
    pub fn is_session_error(&self) -> bool {
        self.stream_id().is_none()
    }

    /// The GOAWAY status to send for this error.
    pub fn goaway_status(&self) -> u32 {
        match self {
            SpdyError::Encode { .. } | SpdyError::Poisoned => goaway_status::INTERNAL_ERROR,
            _ => goaway_status::PROTOCOL_ERROR,
        }
    }

    /// The RST_STREAM status to send for this error.
    pub fn rst_status(&self) -> u32 {
        match self {
            SpdyError::UnsupportedVersion(_) => rst_status::UNSUPPORTED_VERSION,
            SpdyError::FrameTooLarge { .. }
            | SpdyError::HeaderBlockTooLarge { .. }
            | SpdyError::HeaderBlock {
                kind: HeaderBlockError::TooLarge,
                ..
            } => rst_status::FRAME_TOO_LARGE,
            SpdyError::Encode { .. } | SpdyError::Poisoned => rst_status::INTERNAL_ERROR,
            _ => rst_status::PROTOCOL_ERROR,
        }
    }
}

/// Limits the decoder enforces against hostile peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted frame payload (the 24-bit length field caps it at
    /// [`MAX_FRAME_PAYLOAD`]); larger frames are a session error.
    pub max_frame_len: u32,
    /// Largest decompressed header block, received or sent.
    pub max_header_block: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: MAX_FRAME_PAYLOAD,
            max_header_block: 256 * 1024,
        }
    }
}

/// The bytes of a DATA frame header, for writing a payload without copying
/// it into a frame first.
pub fn data_frame_header(stream_id: u32, flags: u8, len: usize) -> Result<[u8; 8], SpdyError> {
    if stream_id == 0 {
        return Err(encode_err("DATA", "stream id 0"));
    }
    if stream_id > MAX_STREAM_ID {
        return Err(encode_err("DATA", "stream id over 31 bits"));
    }
    if len > MAX_FRAME_PAYLOAD as usize {
        return Err(encode_err("DATA", "payload over 16 MiB"));
    }
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&stream_id.to_be_bytes());
    h[4..].copy_from_slice(&(len as u32).to_be_bytes());
    h[4] = flags;
    Ok(h)
}

fn encode_err(frame: &'static str, reason: impl Into<String>) -> SpdyError {
    SpdyError::Encode {
        frame,
        reason: reason.into(),
    }
}

/// The sending half: serializes frames, compressing header blocks with the
/// connection's outgoing zlib stream.
pub struct FrameEncoder {
    deflate: Compress,
    max_header_block: usize,
    poisoned: bool,
}

impl fmt::Debug for FrameEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameEncoder")
            .field("compressed_in", &self.deflate.total_in())
            .field("compressed_out", &self.deflate.total_out())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl FrameEncoder {
    /// A new encoder for one connection.
    pub fn new(limits: Limits) -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // Setting a dictionary on a fresh stream cannot fail; should it ever,
        // every header frame reports it as a compression error instead.
        let poisoned = deflate.set_dictionary(SPDY3_DICTIONARY).is_err();
        FrameEncoder {
            deflate,
            max_header_block: limits.max_header_block,
            poisoned,
        }
    }

    /// Append `frame` to `out`. On error `out` is left as it was; after a
    /// session error ([`SpdyError::Poisoned`] from then on) the connection's
    /// header compression is out of step and it must be closed.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let start = out.len();
        let r = self.encode_inner(frame, out);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    fn encode_inner(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let name = frame.name();
        let stream = |id: u32| -> Result<u32, SpdyError> {
            if id == 0 {
                Err(encode_err(name, "stream id 0"))
            } else if id > MAX_STREAM_ID {
                Err(encode_err(name, "stream id over 31 bits"))
            } else {
                Ok(id)
            }
        };
        let bits31 = |v: u32, what: &str| -> Result<u32, SpdyError> {
            if v > MAX_STREAM_ID {
                Err(encode_err(name, format!("{what} over 31 bits")))
            } else {
                Ok(v)
            }
        };
        match frame {
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                flags,
                headers,
            } => {
                let sid = stream(*stream_id)?;
                let assoc = bits31(*associated_id, "associated stream id")?;
                if *priority > 7 {
                    return Err(encode_err(name, "priority over 7"));
                }
                let mut fixed = [0u8; 10];
                fixed[..4].copy_from_slice(&sid.to_be_bytes());
                fixed[4..8].copy_from_slice(&assoc.to_be_bytes());
                fixed[8] = priority << 5;
                // fixed[9] is the SPDY/3 credential slot, unused in 3.1.
                self.encode_with_headers(name, frame_type::SYN_STREAM, *flags, &fixed, headers, out)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                let sid = stream(*stream_id)?;
                self.encode_with_headers(
                    name,
                    frame_type::SYN_REPLY,
                    *flags,
                    &sid.to_be_bytes(),
                    headers,
                    out,
                )
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let sid = stream(*stream_id)?;
                self.encode_with_headers(
                    name,
                    frame_type::HEADERS,
                    *flags,
                    &sid.to_be_bytes(),
                    headers,
                    out,
                )
            }
            Frame::RstStream { stream_id, status } => {
                let sid = stream(*stream_id)?;
                control_header(out, frame_type::RST_STREAM, 0, 8);
                out.extend_from_slice(&sid.to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
                Ok(())
            }
            Frame::Settings { flags, entries } => {
                let len = entries
                    .len()
                    .checked_mul(8)
                    .and_then(|n| n.checked_add(4))
                    .filter(|&n| n <= MAX_FRAME_PAYLOAD as usize)
                    .ok_or_else(|| encode_err(name, "too many entries"))?;
                if entries.iter().any(|&(id, _, _)| id > 0x00FF_FFFF) {
                    return Err(encode_err(name, "setting id over 24 bits"));
                }
                control_header(out, frame_type::SETTINGS, *flags, len as u32);
                out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for &(id, eflags, value) in entries {
                    out.extend_from_slice(&(id | (u32::from(eflags) << 24)).to_be_bytes());
                    out.extend_from_slice(&value.to_be_bytes());
                }
                Ok(())
            }
            Frame::Ping { id } => {
                control_header(out, frame_type::PING, 0, 4);
                out.extend_from_slice(&id.to_be_bytes());
                Ok(())
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let last = bits31(*last_good_stream_id, "last good stream id")?;
                control_header(out, frame_type::GOAWAY, 0, 8);
                out.extend_from_slice(&last.to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
                Ok(())
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let sid = bits31(*stream_id, "stream id")?;
                let delta = bits31(*delta, "delta")?;
                control_header(out, frame_type::WINDOW_UPDATE, 0, 8);
                out.extend_from_slice(&sid.to_be_bytes());
                out.extend_from_slice(&delta.to_be_bytes());
                Ok(())
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                out.extend_from_slice(&data_frame_header(*stream_id, *flags, data.len())?);
                out.extend_from_slice(data);
                Ok(())
            }
            Frame::Unknown { .. } => Err(encode_err(name, "unknown frames cannot be sent")),
        }
    }

    fn encode_with_headers(
        &mut self,
        name: &'static str,
        kind: u16,
        flags: u8,
        fixed: &[u8],
        headers: &Headers,
        out: &mut Vec<u8>,
    ) -> Result<(), SpdyError> {
        if self.poisoned {
            return Err(SpdyError::Poisoned);
        }
        // Validate and serialize before touching the zlib stream, so that a
        // refused frame leaves the compression state in step with the peer.
        let block = serialize_block(headers, self.max_header_block)
            .map_err(|kind| encode_err(name, kind.to_string()))?;
        let start = out.len();
        control_header(out, kind, flags, 0);
        out.extend_from_slice(fixed);
        if let Err(e) = self.deflate_block(&block, out) {
            self.poisoned = true;
            return Err(e);
        }
        let len = out.len() - start - FRAME_HEADER_LEN;
        if len > MAX_FRAME_PAYLOAD as usize {
            self.poisoned = true;
            return Err(encode_err(name, "compressed header block over 16 MiB"));
        }
        let len_bytes = (len as u32).to_be_bytes();
        out[start + 5..start + 8].copy_from_slice(&len_bytes[1..]);
        Ok(())
    }

    fn deflate_block(&mut self, block: &[u8], out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let mut pos = 0;
        loop {
            out.reserve(block.len() - pos + 64);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&block[pos..], out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            pos += (self.deflate.total_in() - before) as usize;
            // The sync flush is complete once zlib leaves output space unused.
            if pos >= block.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

fn control_header(out: &mut Vec<u8>, kind: u16, flags: u8, len: u32) {
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
}

/// Serialize a header block: a 32-bit count, then each name and value with a
/// 32-bit length prefix. Enforces what the decoder checks.
fn serialize_block(headers: &Headers, max: usize) -> Result<Vec<u8>, HeaderBlockError> {
    let mut size: usize = 4;
    let mut seen = HashSet::with_capacity(headers.len());
    for (name, value) in headers {
        check_name(name)?;
        check_value(value)?;
        if !seen.insert(name.as_str()) {
            return Err(HeaderBlockError::DuplicateName);
        }
        size = size.saturating_add(8 + name.len() + value.len());
    }
    if size > max || headers.len() > u32::MAX as usize {
        return Err(HeaderBlockError::TooLarge);
    }
    let mut block = Vec::with_capacity(size);
    block.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        block.extend_from_slice(&(name.len() as u32).to_be_bytes());
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(&(value.len() as u32).to_be_bytes());
        block.extend_from_slice(value.as_bytes());
    }
    Ok(block)
}

fn check_name(name: &str) -> Result<(), HeaderBlockError> {
    if name.is_empty() {
        return Err(HeaderBlockError::EmptyName);
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(HeaderBlockError::UppercaseName);
    }
    if name.chars().any(char::is_control) {
        return Err(HeaderBlockError::InvalidName);
    }
    Ok(())
}

fn check_value(value: &str) -> Result<(), HeaderBlockError> {
    if !value.is_empty()
        && (value.starts_with('\0') || value.ends_with('\0') || value.contains("\0\0"))
    {
        return Err(HeaderBlockError::InvalidValue);
    }
    Ok(())
}

/// Parse a decompressed header block.
fn parse_block(block: &[u8]) -> Result<Headers, HeaderBlockError> {
    if block.is_empty() {
        return Err(HeaderBlockError::Empty);
    }
    let mut rest = block;
    let count = take_u32(&mut rest)?;
    // Every header needs at least its two length fields.
    if u64::from(count) * 8 > rest.len() as u64 {
        return Err(HeaderBlockError::BadCount {
            count,
            available: rest.len(),
        });
    }
    let mut headers = Vec::with_capacity(count as usize);
    let mut seen = HashSet::with_capacity(count as usize);
    for _ in 0..count {
        let name = take_str(&mut rest)?;
        check_name(name)?;
        let value = take_str(&mut rest)?;
        check_value(value)?;
        if !seen.insert(name) {
            return Err(HeaderBlockError::DuplicateName);
        }
        headers.push((name.to_owned(), value.to_owned()));
    }
    if !rest.is_empty() {
        return Err(HeaderBlockError::TrailingBytes);
    }
    Ok(headers)
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, HeaderBlockError> {
    let (head, tail) = rest
        .split_first_chunk::<4>()
        .ok_or(HeaderBlockError::Truncated)?;
    *rest = tail;
    Ok(u32::from_be_bytes(*head))
}

fn take_str<'a>(rest: &mut &'a [u8]) -> Result<&'a str, HeaderBlockError> {
    let len = take_u32(rest)? as usize;
    if len > rest.len() {
        return Err(HeaderBlockError::Truncated);
    }
    let (s, tail) = rest.split_at(len);
    *rest = tail;
    std::str::from_utf8(s).map_err(|_| HeaderBlockError::InvalidUtf8)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The receiving half: parses frames, inflating header blocks with the
/// connection's incoming zlib stream.
pub struct FrameDecoder {
    inflate: Decompress,
    limits: Limits,
    dictionary_set: bool,
    poisoned: bool,
}

impl fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("limits", &self.limits)
            .field("compressed_in", &self.inflate.total_in())
            .field("decompressed_out", &self.inflate.total_out())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl FrameDecoder {
    /// A new decoder for one connection.
    pub fn new(limits: Limits) -> Self {
        FrameDecoder {
            inflate: Decompress::new(true),
            limits,
            dictionary_set: false,
            poisoned: false,
        }
    }

    /// Decode one frame from the front of `buf` and remove its bytes.
    /// `Ok(None)`: more bytes are needed (nothing is removed).
    /// On a stream error ([`SpdyError::stream_id`]) the frame's bytes are
    /// removed too; on a session error nothing is, and the decoder is done.
    pub fn decode(&mut self, buf: &mut Vec<u8>) -> Result<Option<Frame>, SpdyError> {
        let (result, used) = self.decode_slice(buf);
        buf.drain(..used);
        result
    }

    /// Like [`decode`](Self::decode) for callers that manage their own
    /// buffer: returns the result and how many bytes of `buf` it used, which
    /// the caller must discard before the next call.
    pub fn decode_slice(&mut self, buf: &[u8]) -> (Result<Option<Frame>, SpdyError>, usize) {
        if self.poisoned {
            return (Err(SpdyError::Poisoned), 0);
        }
        match self.decode_inner(buf) {
            Ok(None) => (Ok(None), 0),
            Ok(Some((frame, used))) => (Ok(Some(frame)), used),
            Err((e, used)) => {
                if e.is_session_error() {
                    self.poisoned = true;
                    (Err(e), 0)
                } else {
                    (Err(e), used)
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn decode_inner(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, (SpdyError, usize)> {
        let Some(head) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let word0 = be32(head, 0);
        let flags = head[4];
        let length = be32(head, 4) & 0x00FF_FFFF;
        let control = word0 & 0x8000_0000 != 0;
        // Reject a bad header before waiting for (and buffering) its payload.
        if control {
            let version = ((word0 >> 16) & 0x7FFF) as u16;
            if version != VERSION {
                return Err((SpdyError::UnsupportedVersion(version), 0));
            }
        } else if word0 == 0 {
            return Err((SpdyError::ZeroStreamId { frame: "DATA" }, 0));
        }
        if length > self.limits.max_frame_len {
            return Err((
                SpdyError::FrameTooLarge {
                    length,
                    max: self.limits.max_frame_len,
                },
                0,
            ));
        }
        let total = FRAME_HEADER_LEN + length as usize;
        let Some(payload) = buf.get(FRAME_HEADER_LEN..total) else {
            return Ok(None);
        };
        let frame = if control {
            self.control_frame((word0 & 0xFFFF) as u16, flags, payload)
        } else {
            Ok(Frame::Data {
                stream_id: word0 & MAX_STREAM_ID,
                flags,
                data: payload.to_vec(),
            })
        };
        match frame {
            Ok(f) => Ok(Some((f, total))),
            Err(e) => Err((e, total)),
        }
    }

    fn control_frame(&mut self, kind: u16, flags: u8, p: &[u8]) -> Result<Frame, SpdyError> {
        let invalid = |frame, reason| SpdyError::InvalidFrame { frame, reason };
        let exact = |frame, len: usize| {
            if p.len() == len {
                Ok(())
            } else {
                Err(invalid(frame, "wrong length"))
            }
        };
        let nonzero = |frame, id: u32| {
            if id == 0 {
                Err(SpdyError::ZeroStreamId { frame })
            } else {
                Ok(id)
            }
        };
        Ok(match kind {
            frame_type::SYN_STREAM => {
                if p.len() < 10 {
                    return Err(invalid("SYN_STREAM", "shorter than 10 bytes"));
                }
                let stream_id = nonzero("SYN_STREAM", be32(p, 0) & MAX_STREAM_ID)?;
                let headers = self.header_block(stream_id, &p[10..])?;
                Frame::SynStream {
                    stream_id,
                    associated_id: be32(p, 4) & MAX_STREAM_ID,
                    priority: p[8] >> 5,
                    flags,
                    headers,
                }
            }
            frame_type::SYN_REPLY | frame_type::HEADERS => {
                let name = if kind == frame_type::SYN_REPLY {
                    "SYN_REPLY"
                } else {
                    "HEADERS"
                };
                if p.len() < 4 {
                    return Err(invalid(name, "shorter than 4 bytes"));
                }
                let stream_id = nonzero(name, be32(p, 0) & MAX_STREAM_ID)?;
                let headers = self.header_block(stream_id, &p[4..])?;
                if kind == frame_type::SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            frame_type::RST_STREAM => {
                exact("RST_STREAM", 8)?;
                Frame::RstStream {
                    stream_id: nonzero("RST_STREAM", be32(p, 0) & MAX_STREAM_ID)?,
                    status: be32(p, 4),
                }
            }
            frame_type::SETTINGS => {
                if p.len() < 4 {
                    return Err(invalid("SETTINGS", "shorter than 4 bytes"));
                }
                let n = be32(p, 0) as usize;
                if n.checked_mul(8).and_then(|b| b.checked_add(4)) != Some(p.len()) {
                    return Err(invalid("SETTINGS", "length does not match the entry count"));
                }
                let entries = p[4..]
                    .chunks_exact(8)
                    .map(|e| (be32(e, 0) & 0x00FF_FFFF, e[0], be32(e, 4)))
                    .collect();
                Frame::Settings { flags, entries }
            }
            frame_type::PING => {
                exact("PING", 4)?;
                Frame::Ping { id: be32(p, 0) }
            }
            frame_type::GOAWAY => {
                exact("GOAWAY", 8)?;
                Frame::GoAway {
                    last_good_stream_id: be32(p, 0) & MAX_STREAM_ID,
                    status: be32(p, 4),
                }
            }
            frame_type::WINDOW_UPDATE => {
                exact("WINDOW_UPDATE", 8)?;
                Frame::WindowUpdate {
                    stream_id: be32(p, 0) & MAX_STREAM_ID,
                    delta: be32(p, 4) & MAX_STREAM_ID,
                }
            }
            _ => Frame::Unknown {
                frame_type: kind,
                flags,
                length: p.len() as u32,
            },
        })
    }

    fn header_block(&mut self, stream_id: u32, compressed: &[u8]) -> Result<Headers, SpdyError> {
        let block = self.inflate_block(compressed)?;
        parse_block(&block).map_err(|kind| SpdyError::HeaderBlock { stream_id, kind })
    }

    /// Inflate one frame's share of the incoming zlib stream, which the peer
    /// ended with a sync flush, so all of it can be produced now.
    fn inflate_block(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let max = self.limits.max_header_block;
        let mut out = Vec::new();
        let mut chunk = [0u8; 8192];
        let mut pos = 0;
        loop {
            let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
            let res = self
                .inflate
                .decompress(&input[pos..], &mut chunk, FlushDecompress::Sync);
            let consumed = (self.inflate.total_in() - in0) as usize;
            let produced = (self.inflate.total_out() - out0) as usize;
            pos += consumed;
            if out.len() + produced > max {
                return Err(SpdyError::HeaderBlockTooLarge { max });
            }
            out.extend_from_slice(&chunk[..produced]);
            match res {
                Err(e) => match e.needs_dictionary() {
                    Some(id) if !self.dictionary_set => {
                        if id != SPDY3_DICTIONARY_ID {
                            return Err(SpdyError::Compression(format!(
                                "peer compresses with unknown dictionary {id:#010x}"
                            )));
                        }
                        self.inflate
                            .set_dictionary(SPDY3_DICTIONARY)
                            .map_err(|e| SpdyError::Compression(e.to_string()))?;
                        self.dictionary_set = true;
                    }
                    _ => return Err(SpdyError::Compression(e.to_string())),
                },
                Ok(Status::StreamEnd) => {
                    return Err(SpdyError::Compression(
                        "peer ended the header compression stream".into(),
                    ));
                }
                Ok(Status::Ok | Status::BufError) => {
                    let done = pos >= input.len() && produced < chunk.len();
                    if done || (consumed == 0 && produced == 0) {
                        break;
                    }
                }
            }
        }
        if pos < input.len() {
            return Err(SpdyError::Compression(
                "header block has undecodable trailing data".into(),
            ));
        }
        Ok(out)
    }
}

/// Both halves of one connection's framing. Use [`Codec::into_split`] when
/// reading and writing happen in different tasks.
#[derive(Debug)]
pub struct Codec {
    encoder: FrameEncoder,
    decoder: FrameDecoder,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

impl Codec {
    /// A codec with the default [`Limits`].
    pub fn new() -> Self {
        Codec::with_limits(Limits::default())
    }

    /// A codec with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        Codec {
            encoder: FrameEncoder::new(limits),
            decoder: FrameDecoder::new(limits),
        }
    }

    /// See [`FrameEncoder::encode`].
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        self.encoder.encode(frame, out)
    }

    /// See [`FrameDecoder::decode`].
    pub fn decode(&mut self, buf: &mut Vec<u8>) -> Result<Option<Frame>, SpdyError> {
        self.decoder.decode(buf)
    }

    /// See [`FrameDecoder::decode_slice`].
    pub fn decode_slice(&mut self, buf: &[u8]) -> (Result<Option<Frame>, SpdyError>, usize) {
        self.decoder.decode_slice(buf)
    }

    /// The sending and receiving halves.
    pub fn into_split(self) -> (FrameEncoder, FrameDecoder) {
        (self.encoder, self.decoder)
    }
}
