//! Tests for the SPDY/3.1 frame codec.

use std::collections::BTreeMap;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use proptest::prelude::*;

use super::spdy::*;

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// Encode `frames` with one codec and decode them with another, in order.
fn round_trip(frames: &[Frame]) -> Vec<Frame> {
    let mut tx = Codec::new();
    let mut rx = Codec::new();
    let mut wire = Vec::new();
    for f in frames {
        tx.encode(f, &mut wire).expect("encode");
    }
    let mut out = Vec::new();
    while let Some(f) = rx.decode(&mut wire).expect("decode") {
        out.push(f);
    }
    assert!(wire.is_empty(), "{} bytes left over", wire.len());
    out
}

fn all_frame_kinds() -> Vec<Frame> {
    vec![
        Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: h(&[("streamtype", "error")]),
        },
        Frame::SynStream {
            stream_id: 0x7FFF_FFFF,
            associated_id: 0x7FFF_FFFF,
            priority: 7,
            flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
            headers: h(&[("port", "8080"), ("requestid", "0"), ("x", "a\0b\0c")]),
        },
        Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: h(&[("status", "200"), ("empty", "")]),
        },
        Frame::SynReply {
            stream_id: 3,
            flags: FLAG_FIN,
            headers: Vec::new(),
        },
        Frame::RstStream {
            stream_id: 5,
            status: rst_status::CANCEL,
        },
        Frame::Settings {
            flags: FLAG_SETTINGS_CLEAR_SETTINGS,
            entries: vec![
                (settings_id::INITIAL_WINDOW_SIZE, 0, 65536),
                (
                    settings_id::MAX_CONCURRENT_STREAMS,
                    SETTINGS_FLAG_PERSIST_VALUE,
                    100,
                ),
                (0x00FF_FFFF, 0xFF, u32::MAX),
            ],
        },
        Frame::Settings {
            flags: 0,
            entries: Vec::new(),
        },
        Frame::Ping { id: 1 },
        Frame::Ping { id: u32::MAX },
        Frame::GoAway {
            last_good_stream_id: 7,
            status: goaway_status::PROTOCOL_ERROR,
        },
        Frame::Headers {
            stream_id: 1,
            flags: FLAG_FIN,
            headers: h(&[("trailer", "yes")]),
        },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 0x7FFF_FFFF,
        },
        Frame::WindowUpdate {
            stream_id: 9,
            delta: 1,
        },
        Frame::Data {
            stream_id: 1,
            flags: 0,
            data: b"hello".to_vec(),
        },
        Frame::Data {
            stream_id: 1,
            flags: FLAG_FIN,
            data: Vec::new(),
        },
        Frame::Data {
            stream_id: 3,
            flags: 0,
            data: vec![0xAB; 70_000],
        },
    ]
}

// ---------------------------------------------------------------- dictionary

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

#[test]
fn dictionary_is_the_spdy3_dictionary() {
    assert_eq!(SPDY3_DICTIONARY.len(), 1423);
    assert_eq!(adler32(SPDY3_DICTIONARY), SPDY3_DICTIONARY_ID);
    // The first part is 65 length-prefixed words, "options" to "origin".
    let mut rest = &SPDY3_DICTIONARY[..];
    let mut words = Vec::new();
    while words.last() != Some(&&b"origin"[..]) {
        let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        words.push(&rest[4..4 + n]);
        rest = &rest[4 + n..];
    }
    assert_eq!(words.len(), 65);
    assert_eq!(words[0], b"options");
    assert!(words.contains(&&b"HTTP/1.1"[..]));
    assert!(rest.starts_with(b"100101201202"));
    assert!(rest.ends_with(b",*,enq=0."));
}

// ---------------------------------------------------------------- round trips

#[test]
fn every_frame_kind_round_trips() {
    let frames = all_frame_kinds();
    for f in &frames {
        assert_eq!(round_trip(std::slice::from_ref(f)), vec![f.clone()]);
    }
    // And all of them back to back through one pair of zlib streams.
    assert_eq!(round_trip(&frames), frames);
}

#[test]
fn byte_by_byte_feeding() {
    let frames = all_frame_kinds();
    let mut tx = Codec::new();
    let mut wire = Vec::new();
    for f in &frames {
        tx.encode(f, &mut wire).unwrap();
    }
    let mut rx = Codec::new();
    let mut buf = Vec::new();
    let mut got = Vec::new();
    for &b in &wire {
        buf.push(b);
        if let Some(f) = rx.decode(&mut buf).unwrap() {
            assert!(buf.is_empty(), "a frame must consume exactly its bytes");
            got.push(f);
        }
    }
    assert_eq!(got, frames);
}

#[test]
fn decode_slice_reports_consumed_bytes() {
    let mut tx = Codec::new();
    let mut wire = Vec::new();
    tx.encode(&Frame::Ping { id: 7 }, &mut wire).unwrap();
    let ping_len = wire.len();
    tx.encode(&Frame::Ping { id: 9 }, &mut wire).unwrap();
    let mut rx = Codec::new();
    let (r, used) = rx.decode_slice(&wire);
    assert_eq!(r, Ok(Some(Frame::Ping { id: 7 })));
    assert_eq!(used, ping_len);
    let (r, used) = rx.decode_slice(&wire[ping_len..ping_len + 3]);
    assert_eq!((r, used), (Ok(None), 0));
}

#[test]
fn data_frame_header_matches_encoder() {
    let frame = Frame::Data {
        stream_id: 5,
        flags: FLAG_FIN,
        data: b"xyz".to_vec(),
    };
    let mut wire = Vec::new();
    Codec::new().encode(&frame, &mut wire).unwrap();
    let head = data_frame_header(5, FLAG_FIN, 3).unwrap();
    assert_eq!(&wire[..8], &head);
    assert_eq!(&wire[8..], b"xyz");
    assert!(data_frame_header(0, 0, 1).is_err());
    assert!(data_frame_header(1, 0, 1 << 24).is_err());
}

#[test]
fn header_helpers() {
    let hs = h(&[("a", "1"), ("multi", "x\0y")]);
    assert_eq!(header(&hs, "a"), Some("1"));
    assert_eq!(header(&hs, "b"), None);
    assert_eq!(header_values(&hs, "multi").collect::<Vec<_>>(), ["x", "y"]);
    assert_eq!(header_values(&hs, "none").count(), 0);
}

// ---------------------------------------------------------------- compression state

fn header_frames() -> Vec<Frame> {
    (0..3)
        .map(|i| Frame::SynStream {
            stream_id: 2 * i + 1,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: h(&[("streamtype", "stdout"), ("requestid", &i.to_string())]),
        })
        .collect()
}

/// Each frame's bytes, encoded in order by one codec.
fn encode_each(frames: &[Frame]) -> Vec<Vec<u8>> {
    let mut tx = Codec::new();
    frames
        .iter()
        .map(|f| {
            let mut w = Vec::new();
            tx.encode(f, &mut w).unwrap();
            w
        })
        .collect()
}

#[test]
fn header_compression_is_one_stream_per_connection() {
    let frames = header_frames();
    let wires = encode_each(&frames);
    // Later frames refer back to earlier ones, so they shrink.
    assert!(wires[1].len() < wires[0].len());
    // In order: fine.
    let mut rx = Codec::new();
    for (w, f) in wires.iter().zip(&frames) {
        assert_eq!(rx.decode(&mut w.clone()), Ok(Some(f.clone())));
    }
    // Starting with the second frame: no zlib header, a session error.
    let mut rx = Codec::new();
    let err = rx.decode(&mut wires[1].clone()).unwrap_err();
    assert!(matches!(err, SpdyError::Compression(_)), "{err:?}");
    assert!(err.is_session_error());
    assert_eq!(rx.decode(&mut wires[0].clone()), Err(SpdyError::Poisoned));
    // Skipping a frame whose content a later frame refers back to: the later
    // frame does not decode to what was sent.
    let token = "qwertyuiop0123456789zxcvbnm";
    let frames = [
        Frame::Headers {
            stream_id: 1,
            flags: 0,
            headers: h(&[("streamtype", "error")]),
        },
        Frame::Headers {
            stream_id: 3,
            flags: 0,
            headers: h(&[("x-token", token)]),
        },
        Frame::Headers {
            stream_id: 3,
            flags: 0,
            headers: h(&[("x-token", token)]),
        },
    ];
    let wires = encode_each(&frames);
    let mut rx = Codec::new();
    rx.decode(&mut wires[0].clone()).unwrap();
    let skipped = rx.decode(&mut wires[2].clone());
    assert_ne!(skipped, Ok(Some(frames[2].clone())), "{skipped:?}");
}

/// SYN_STREAM frames produced by C zlib 1.2.13 (Python's `zlib.compressobj`
/// with level 9 and the SPDY/3 dictionary, one sync flush per frame): an
/// independent implementation of the same compression stream.
const GOLDEN: [&str; 3] = [
    "80030001000000280000000100000000000078f9e3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff",
    "800300010000001900000003000000000000c22a054ccc29f9a52500000000ffff",
    "800300010100003a0000000500000000400002e50a48b15d04665b1858180069ce2248346782923fa301866e501905ce4215bab9a5392599e042982109000000ffff",
];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn decodes_frames_from_an_independent_zlib() {
    let expected = [
        Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: h(&[("streamtype", "error")]),
        },
        Frame::SynStream {
            stream_id: 3,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: h(&[("streamtype", "stdout")]),
        },
        Frame::SynStream {
            stream_id: 5,
            associated_id: 0,
            priority: 2,
            flags: FLAG_FIN,
            headers: h(&[
                ("port", "8080"),
                ("requestid", "0"),
                ("streamtype", "data"),
                ("x-multi", "a\0b"),
            ]),
        },
    ];
    let mut rx = Codec::new();
    let mut wire: Vec<u8> = GOLDEN.iter().flat_map(|g| unhex(g)).collect();
    for e in &expected {
        assert_eq!(rx.decode(&mut wire).unwrap().as_ref(), Some(e));
    }
    assert!(wire.is_empty());
}

/// Serialize a header block by hand (count, then length-prefixed strings).
fn raw_block(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = (pairs.len() as u32).to_be_bytes().to_vec();
    for (n, v) in pairs {
        b.extend_from_slice(&(n.len() as u32).to_be_bytes());
        b.extend_from_slice(n);
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v);
    }
    b
}

fn dict_compressor() -> Compress {
    let mut c = Compress::new(Compression::best(), true);
    c.set_dictionary(SPDY3_DICTIONARY).unwrap();
    c
}

/// Compress `raw` on `c` and end with a sync flush.
fn deflate_sync(c: &mut Compress, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 128);
    let mut pos = 0;
    loop {
        let before = c.total_in();
        c.compress_vec(&raw[pos..], &mut out, FlushCompress::Sync)
            .unwrap();
        pos += (c.total_in() - before) as usize;
        if pos == raw.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(1024);
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80, 0x03];
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

fn syn_stream(stream_id: u32, compressed: &[u8]) -> Vec<u8> {
    let mut p = stream_id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0, 0, 0, 0, 0x60, 0]);
    p.extend_from_slice(compressed);
    control(frame_type::SYN_STREAM, 0, &p)
}

#[test]
fn hand_built_syn_stream_decodes() {
    let mut c = dict_compressor();
    let block = raw_block(&[(b"method", b"GET"), (b"url", b"/exec")]);
    let mut wire = syn_stream(1, &deflate_sync(&mut c, &block));
    let block = raw_block(&[(b"method", b"POST")]);
    wire.extend(syn_stream(3, &deflate_sync(&mut c, &block)));
    let mut rx = Codec::new();
    assert_eq!(
        rx.decode(&mut wire),
        Ok(Some(Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 3,
            flags: 0,
            headers: h(&[("method", "GET"), ("url", "/exec")]),
        }))
    );
    assert_eq!(
        rx.decode(&mut wire),
        Ok(Some(Frame::SynStream {
            stream_id: 3,
            associated_id: 0,
            priority: 3,
            flags: 0,
            headers: h(&[("method", "POST")]),
        }))
    );
}

#[test]
fn encoder_output_inflates_with_a_fresh_dictionary_decompressor() {
    let frames = header_frames();
    let wires = encode_each(&frames);
    let mut d = Decompress::new(true);
    for (w, f) in wires.iter().zip(&frames) {
        // SYN_STREAM: 8-byte header, 10 fixed bytes, then the zlib data.
        let z = &w[18..];
        let mut out = Vec::with_capacity(4096);
        let mut pos = 0;
        while pos < z.len() {
            let before = d.total_in();
            match d.decompress_vec(&z[pos..], &mut out, FlushDecompress::Sync) {
                Ok(Status::Ok | Status::BufError) => {}
                Ok(Status::StreamEnd) => panic!("stream ended"),
                Err(e) => {
                    assert_eq!(e.needs_dictionary(), Some(SPDY3_DICTIONARY_ID));
                    d.set_dictionary(SPDY3_DICTIONARY).unwrap();
                }
            }
            pos += (d.total_in() - before) as usize;
        }
        let Frame::SynStream { headers, .. } = f else {
            unreachable!()
        };
        let pairs: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        assert_eq!(out, raw_block(&pairs));
    }
    // The first block starts with a zlib header naming the dictionary.
    let z = &wires[0][18..];
    assert_eq!(z[0] & 0x0F, 8, "deflate");
    assert_ne!(z[1] & 0x20, 0, "FDICT");
    assert_eq!(
        u32::from_be_bytes(z[2..6].try_into().unwrap()),
        SPDY3_DICTIONARY_ID
    );
}

// ---------------------------------------------------------------- malformed input

/// Decode `wire` with a fresh codec.
fn decode_fresh(wire: &[u8]) -> Result<Option<Frame>, SpdyError> {
    Codec::new().decode(&mut wire.to_vec())
}

fn header_error(pairs: &[(&[u8], &[u8])]) -> SpdyError {
    let mut c = dict_compressor();
    let wire = syn_stream(1, &deflate_sync(&mut c, &raw_block(pairs)));
    decode_fresh(&wire).unwrap_err()
}

fn block_error(kind: HeaderBlockError) -> SpdyError {
    SpdyError::HeaderBlock { stream_id: 1, kind }
}

#[test]
fn truncated_frames_need_more_bytes() {
    let mut wire = Vec::new();
    Codec::new()
        .encode(&all_frame_kinds()[1], &mut wire)
        .unwrap();
    for cut in 0..wire.len() {
        let mut part = wire[..cut].to_vec();
        assert_eq!(Codec::new().decode(&mut part), Ok(None), "cut at {cut}");
        assert_eq!(part.len(), cut, "nothing consumed");
    }
}

#[test]
fn oversized_length_is_rejected_before_the_payload_arrives() {
    let limits = Limits {
        max_frame_len: 1024,
        ..Limits::default()
    };
    let mut rx = Codec::with_limits(limits);
    let mut wire = vec![0, 0, 0, 1, 0, 0, 0x04, 0x01];
    let err = rx.decode(&mut wire).unwrap_err();
    assert_eq!(
        err,
        SpdyError::FrameTooLarge {
            length: 1025,
            max: 1024
        }
    );
    assert_eq!(err.rst_status(), rst_status::FRAME_TOO_LARGE);
    assert_eq!(err.goaway_status(), goaway_status::PROTOCOL_ERROR);
    // Control frames too.
    let mut rx = Codec::with_limits(limits);
    let mut wire = vec![0x80, 3, 0, 1, 0, 0xFF, 0xFF, 0xFF];
    assert!(matches!(
        rx.decode(&mut wire),
        Err(SpdyError::FrameTooLarge { .. })
    ));
}

#[test]
fn bad_version() {
    let mut wire = control(frame_type::PING, 0, &[0, 0, 0, 1]);
    wire[1] = 2;
    let err = decode_fresh(&wire[..8]).unwrap_err();
    assert_eq!(err, SpdyError::UnsupportedVersion(2));
    assert_eq!(err.rst_status(), rst_status::UNSUPPORTED_VERSION);
    assert!(err.is_session_error());
}

#[test]
fn zero_length_header_block() {
    assert_eq!(
        decode_fresh(&syn_stream(1, &[])),
        Err(block_error(HeaderBlockError::Empty))
    );
    // A sync flush of nothing inflates to nothing as well.
    let mut c = dict_compressor();
    assert_eq!(
        decode_fresh(&syn_stream(1, &deflate_sync(&mut c, &[]))),
        Err(block_error(HeaderBlockError::Empty))
    );
}

#[test]
fn count_larger_than_data() {
    let mut block = raw_block(&[(b"a", b"b")]);
    block[3] = 2;
    let mut c = dict_compressor();
    let err = decode_fresh(&syn_stream(1, &deflate_sync(&mut c, &block))).unwrap_err();
    assert_eq!(
        err,
        block_error(HeaderBlockError::BadCount {
            count: 2,
            available: 10
        })
    );
    assert_eq!(err.stream_id(), Some(1));
    assert_eq!(err.rst_status(), rst_status::PROTOCOL_ERROR);
    // A huge count is refused without allocating for it.
    let mut c = dict_compressor();
    let block = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];
    assert!(matches!(
        decode_fresh(&syn_stream(1, &deflate_sync(&mut c, &block))),
        Err(SpdyError::HeaderBlock {
            kind: HeaderBlockError::BadCount { .. },
            ..
        })
    ));
}

#[test]
fn truncated_and_trailing_header_blocks() {
    let full = raw_block(&[(b"abc", b"def"), (b"g", b"h")]);
    // Lengths that run past the end (the count still fits).
    let mut block = full.clone();
    block[7] = 40;
    let mut c = dict_compressor();
    assert_eq!(
        decode_fresh(&syn_stream(1, &deflate_sync(&mut c, &block))),
        Err(block_error(HeaderBlockError::Truncated))
    );
    // Shorter than the count field.
    let mut c = dict_compressor();
    assert_eq!(
        decode_fresh(&syn_stream(1, &deflate_sync(&mut c, &[0, 0]))),
        Err(block_error(HeaderBlockError::Truncated))
    );
    let mut block = full;
    block.push(0);
    let mut c = dict_compressor();
    assert_eq!(
        decode_fresh(&syn_stream(1, &deflate_sync(&mut c, &block))),
        Err(block_error(HeaderBlockError::TrailingBytes))
    );
}

#[test]
fn invalid_header_names_and_values() {
    use HeaderBlockError::*;
    assert_eq!(header_error(&[(b"Host", b"x")]), block_error(UppercaseName));
    assert_eq!(header_error(&[(b"", b"x")]), block_error(EmptyName));
    assert_eq!(header_error(&[(b"a\0b", b"x")]), block_error(InvalidName));
    assert_eq!(
        header_error(&[(b"\xff\xfe", b"x")]),
        block_error(InvalidUtf8)
    );
    assert_eq!(header_error(&[(b"a", b"\xc3")]), block_error(InvalidUtf8));
    assert_eq!(
        header_error(&[(b"a", b"1"), (b"a", b"2")]),
        block_error(DuplicateName)
    );
    for v in [&b"\0a"[..], b"a\0", b"a\0\0b", b"\0"] {
        assert_eq!(header_error(&[(b"a", v)]), block_error(InvalidValue));
    }
}

#[test]
fn stream_errors_leave_the_decoder_usable() {
    let mut c = dict_compressor();
    let mut wire = syn_stream(1, &deflate_sync(&mut c, &raw_block(&[(b"A", b"x")])));
    let bad_len = wire.len();
    wire.extend(syn_stream(
        3,
        &deflate_sync(&mut c, &raw_block(&[(b"a", b"x")])),
    ));
    let mut rx = Codec::new();
    let before = wire.len();
    assert_eq!(
        rx.decode(&mut wire),
        Err(block_error(HeaderBlockError::UppercaseName))
    );
    assert_eq!(wire.len(), before - bad_len, "the bad frame is consumed");
    assert!(matches!(
        rx.decode(&mut wire),
        Ok(Some(Frame::SynStream { stream_id: 3, .. }))
    ));
}

#[test]
fn decompression_bomb_is_capped() {
    // 64 MiB of one header value compresses to ~64 KiB.
    let mut c = dict_compressor();
    let mut block = 1u32.to_be_bytes().to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    block.push(b'a');
    block.extend_from_slice(&(64u32 << 20).to_be_bytes());
    let mut compressed = deflate_sync(&mut c, &block);
    let zeros = vec![b'z'; 1 << 20];
    for _ in 0..64 {
        compressed.extend(deflate_sync(&mut c, &zeros));
    }
    assert!(compressed.len() < 1 << 20);
    let err = decode_fresh(&syn_stream(1, &compressed)).unwrap_err();
    assert_eq!(err, SpdyError::HeaderBlockTooLarge { max: 256 * 1024 });
    assert!(err.is_session_error());
    assert_eq!(err.rst_status(), rst_status::FRAME_TOO_LARGE);
}

#[test]
fn garbage_and_foreign_compression_streams() {
    // Not zlib at all.
    let err = decode_fresh(&syn_stream(1, b"\x01\x02\x03\x04garbage")).unwrap_err();
    assert!(matches!(err, SpdyError::Compression(_)), "{err:?}");
    assert_eq!(err.goaway_status(), goaway_status::PROTOCOL_ERROR);
    // zlib with some other dictionary.
    let mut c = Compress::new(Compression::default(), true);
    c.set_dictionary(b"not the spdy dictionary").unwrap();
    let z = deflate_sync(&mut c, &raw_block(&[(b"a", b"b")]));
    let err = decode_fresh(&syn_stream(1, &z)).unwrap_err();
    assert!(
        matches!(&err, SpdyError::Compression(m) if m.contains("dictionary")),
        "{err:?}"
    );
    // A zlib stream that ends (FINISH) instead of flushing.
    let mut c = dict_compressor();
    let mut z = Vec::with_capacity(256);
    c.compress_vec(&raw_block(&[(b"a", b"b")]), &mut z, FlushCompress::Finish)
        .unwrap();
    let err = decode_fresh(&syn_stream(1, &z)).unwrap_err();
    assert!(matches!(err, SpdyError::Compression(_)), "{err:?}");
    // zlib without a dictionary is tolerated.
    let mut c = Compress::new(Compression::default(), true);
    let z = deflate_sync(&mut c, &raw_block(&[(b"a", b"b")]));
    assert!(matches!(
        decode_fresh(&syn_stream(1, &z)),
        Ok(Some(Frame::SynStream { .. }))
    ));
}

#[test]
fn wrong_fixed_lengths_and_zero_stream_ids() {
    let invalid = |frame| move |r: Result<Option<Frame>, SpdyError>| matches!(r, Err(SpdyError::InvalidFrame { frame: f, .. }) if f == frame);
    assert!(invalid("PING")(decode_fresh(&control(
        frame_type::PING,
        0,
        &[0; 5]
    ))));
    assert!(invalid("RST_STREAM")(decode_fresh(&control(
        frame_type::RST_STREAM,
        0,
        &[0, 0, 0, 1]
    ))));
    assert!(invalid("GOAWAY")(decode_fresh(&control(
        frame_type::GOAWAY,
        0,
        &[0; 4]
    ))));
    assert!(invalid("WINDOW_UPDATE")(decode_fresh(&control(
        frame_type::WINDOW_UPDATE,
        0,
        &[0; 12]
    ))));
    assert!(invalid("SETTINGS")(decode_fresh(&control(
        frame_type::SETTINGS,
        0,
        &[0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 1]
    ))));
    assert!(invalid("SETTINGS")(decode_fresh(&control(
        frame_type::SETTINGS,
        0,
        &[0, 0]
    ))));
    assert!(invalid("SYN_STREAM")(decode_fresh(&control(
        frame_type::SYN_STREAM,
        0,
        &[0, 0, 0, 1, 0, 0, 0, 0, 0]
    ))));
    assert!(invalid("SYN_REPLY")(decode_fresh(&control(
        frame_type::SYN_REPLY,
        0,
        &[0, 0, 1]
    ))));
    assert_eq!(
        decode_fresh(&[0, 0, 0, 0, 0, 0, 0, 1]),
        Err(SpdyError::ZeroStreamId { frame: "DATA" })
    );
    assert_eq!(
        decode_fresh(&control(
            frame_type::RST_STREAM,
            0,
            &[0, 0, 0, 0, 0, 0, 0, 1]
        )),
        Err(SpdyError::ZeroStreamId {
            frame: "RST_STREAM"
        })
    );
    assert_eq!(
        decode_fresh(&syn_stream(0, b"whatever")),
        Err(SpdyError::ZeroStreamId {
            frame: "SYN_STREAM"
        })
    );
}

#[test]
fn unknown_control_frames_are_skipped() {
    // NOOP (SPDY/2's type 5) and CREDENTIAL (type 10), then a PING.
    let mut wire = control(5, 0, &[]);
    wire.extend(control(10, 0x7, &[1, 2, 3]));
    wire.extend(control(frame_type::PING, 0, &[0, 0, 0, 3]));
    let mut rx = Codec::new();
    assert_eq!(
        rx.decode(&mut wire),
        Ok(Some(Frame::Unknown {
            frame_type: 5,
            flags: 0,
            length: 0
        }))
    );
    assert_eq!(
        rx.decode(&mut wire),
        Ok(Some(Frame::Unknown {
            frame_type: 10,
            flags: 7,
            length: 3
        }))
    );
    assert_eq!(rx.decode(&mut wire), Ok(Some(Frame::Ping { id: 3 })));
}

#[test]
fn reserved_bits_are_ignored() {
    let wire = control(
        frame_type::WINDOW_UPDATE,
        0,
        &[0x80, 0, 0, 1, 0x80, 0, 0, 2],
    );
    assert_eq!(
        decode_fresh(&wire),
        Ok(Some(Frame::WindowUpdate {
            stream_id: 1,
            delta: 2
        }))
    );
}

#[test]
fn session_errors_poison_the_decoder() {
    let mut rx = Codec::new();
    let mut wire = vec![0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1];
    assert_eq!(rx.decode(&mut wire), Err(SpdyError::UnsupportedVersion(2)));
    assert_eq!(wire.len(), 12, "nothing consumed on a session error");
    let mut ping = control(frame_type::PING, 0, &[0, 0, 0, 1]);
    assert_eq!(rx.decode(&mut ping), Err(SpdyError::Poisoned));
    // The encoder half still works, to send GOAWAY.
    let mut out = Vec::new();
    rx.encode(
        &Frame::GoAway {
            last_good_stream_id: 0,
            status: goaway_status::PROTOCOL_ERROR,
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), 16);
}

// ---------------------------------------------------------------- encoder checks

#[test]
fn encoder_rejects_invalid_frames_without_desync() {
    let mut tx = Codec::new();
    let mut rx = Codec::new();
    let mut wire = b"keep".to_vec();
    let bad = [
        Frame::SynStream {
            stream_id: 0,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: Vec::new(),
        },
        Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 8,
            flags: 0,
            headers: Vec::new(),
        },
        Frame::SynReply {
            stream_id: 1 << 31,
            flags: 0,
            headers: Vec::new(),
        },
        Frame::Headers {
            stream_id: 1,
            flags: 0,
            headers: h(&[("Upper", "x")]),
        },
        Frame::Headers {
            stream_id: 1,
            flags: 0,
            headers: h(&[("a", "x"), ("a", "y")]),
        },
        Frame::Headers {
            stream_id: 1,
            flags: 0,
            headers: h(&[("a", "x\0\0y")]),
        },
        Frame::Headers {
            stream_id: 1,
            flags: 0,
            headers: h(&[("big", &"v".repeat(300 * 1024))]),
        },
        Frame::Settings {
            flags: 0,
            entries: vec![(1 << 24, 0, 0)],
        },
        Frame::WindowUpdate {
            stream_id: 1,
            delta: 1 << 31,
        },
        Frame::Data {
            stream_id: 0,
            flags: 0,
            data: Vec::new(),
        },
        Frame::Unknown {
            frame_type: 5,
            flags: 0,
            length: 0,
        },
    ];
    for f in &bad {
        let err = tx.encode(f, &mut wire).unwrap_err();
        assert!(matches!(err, SpdyError::Encode { .. }), "{f:?}: {err:?}");
        assert_eq!(err.goaway_status(), goaway_status::INTERNAL_ERROR);
        assert_eq!(wire, b"keep", "output untouched");
    }
    wire.clear();
    let good = header_frames();
    for f in &good {
        tx.encode(f, &mut wire).unwrap();
    }
    for f in &good {
        assert_eq!(rx.decode(&mut wire).as_ref(), Ok(&Some(f.clone())));
    }
}

// ---------------------------------------------------------------- properties

fn arb_headers() -> impl Strategy<Value = Headers> {
    let value = prop_oneof![
        Just(String::new()),
        prop::collection::vec("[ -~]{1,12}", 1..4).prop_map(|parts| parts.join("\0")),
    ];
    prop::collection::btree_map("[a-z0-9][a-z0-9:-]{0,15}", value, 0..8)
        .prop_map(|m: BTreeMap<String, String>| m.into_iter().collect())
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let sid = 1..=MAX_STREAM_ID;
    prop_oneof![
        (
            sid.clone(),
            0..=MAX_STREAM_ID,
            0u8..8,
            any::<u8>(),
            arb_headers()
        )
            .prop_map(|(stream_id, associated_id, priority, flags, headers)| {
                Frame::SynStream {
                    stream_id,
                    associated_id,
                    priority,
                    flags,
                    headers,
                }
            }),
        (sid.clone(), any::<u8>(), arb_headers()).prop_map(|(stream_id, flags, headers)| {
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
        }),
        (sid.clone(), any::<u32>())
            .prop_map(|(stream_id, status)| Frame::RstStream { stream_id, status }),
        (
            any::<u8>(),
            prop::collection::vec((0..=0x00FF_FFFFu32, any::<u8>(), any::<u32>()), 0..6)
        )
            .prop_map(|(flags, entries)| Frame::Settings { flags, entries }),
        any::<u32>().prop_map(|id| Frame::Ping { id }),
        (0..=MAX_STREAM_ID, any::<u32>()).prop_map(|(last_good_stream_id, status)| {
            Frame::GoAway {
                last_good_stream_id,
                status,
            }
        }),
        (sid.clone(), any::<u8>(), arb_headers()).prop_map(|(stream_id, flags, headers)| {
            Frame::Headers {
                stream_id,
                flags,
                headers,
            }
        }),
        (0..=MAX_STREAM_ID, 0..=MAX_STREAM_ID)
            .prop_map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
        (sid, any::<u8>(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(
            |(stream_id, flags, data)| Frame::Data {
                stream_id,
                flags,
                data,
            }
        ),
    ]
}

/// Decode until the input runs out or fails; must never panic.
fn drain(rx: &mut Codec, mut buf: Vec<u8>) {
    for _ in 0..10_000 {
        match rx.decode(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) if e.is_session_error() => {
                let _ = (e.goaway_status(), e.rst_status(), e.to_string());
                return;
            }
            Err(_) => {}
        }
    }
    panic!("decoder made no progress");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_frames_round_trip(frames in prop::collection::vec(arb_frame(), 1..12)) {
        prop_assert_eq!(round_trip(&frames), frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        drain(&mut Codec::new(), bytes);
    }

    #[test]
    fn control_frames_with_arbitrary_payloads_never_panic(
        kind in 0u16..12,
        flags in any::<u8>(),
        payload in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        drain(&mut Codec::new(), control(kind, flags, &payload));
    }

    #[test]
    fn corrupted_valid_streams_never_panic(
        frames in prop::collection::vec(arb_frame(), 1..6),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut tx = Codec::new();
        let mut wire = Vec::new();
        for f in &frames {
            tx.encode(f, &mut wire).unwrap();
        }
        for (i, x) in flips {
            let at = i.index(wire.len());
            wire[at] ^= x;
        }
        drain(&mut Codec::new(), wire);
    }

    #[test]
    fn arbitrary_header_blocks_never_panic(
        raw in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut c = dict_compressor();
        let z = deflate_sync(&mut c, &raw);
        drain(&mut Codec::new(), syn_stream(1, &z));
    }
}
