//! Property tests for the frame decoder (`pyexec::protocol::FrameCodec`), the first code
//! that touches a hostile peer's bytes: whatever arrives, split however TCP likes, it must
//! never panic, never allocate more than one frame's worth because a length prefix said so
//! (an oversized length fails at once), and valid frames must come back out exactly as
//! they went in, under any chunking.
//!
//! Allocation is measured with a counting global allocator, per thread, so that the
//! numbers hold when the test harness runs tests side by side.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use proptest::test_runner::Config;
use pyexec::protocol::{
    CodecError, EndReason, ErrorCode, Frame, FrameCodec, FrameError, MAX_FRAME_PAYLOAD,
};
use tokio_util::codec::{Decoder, Encoder};

// ---------------------------------------------------------------------------------------
// Allocation accounting

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(by: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + by;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(by: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(by)));
}

// SAFETY: forwards every call to the system allocator unchanged; the bookkeeping only
// touches const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as a fresh block next to the old one: that is the worst case.
        grew(new_size);
        shrank(layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result and the most memory it held at once beyond what was
/// live when it started.
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, peak.saturating_sub(start))
}

/// What one `decode` call may allocate: the body of the largest frame (the codec
/// reserves it once its header is in), and the parsed frame, whose JSON may take a few
/// times its size in Rust values. Nothing a length prefix can push beyond this.
const DECODE_BOUND: usize = 8 * (MAX_FRAME_PAYLOAD + 5);

/// The result of feeding `chunks` through a decoder, as a stream reader would: decode
/// until it needs more, then append the next chunk; stop at the first error.
#[derive(Debug)]
struct Decoded {
    frames: Vec<Frame>,
    error: Option<String>,
    max_alloc: usize,
}

fn decode_chunks(chunks: &[&[u8]]) -> Decoded {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    let mut out = Decoded {
        frames: Vec::new(),
        error: None,
        max_alloc: 0,
    };
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        if !drain(&mut codec, &mut buf, false, &mut out) {
            return out;
        }
    }
    drain(&mut codec, &mut buf, true, &mut out);
    out
}

/// Decodes until the codec needs more bytes (false at the first error).
fn drain(codec: &mut FrameCodec, buf: &mut BytesMut, eof: bool, out: &mut Decoded) -> bool {
    loop {
        let (r, alloc) = peak_during(|| {
            if eof {
                codec.decode_eof(buf)
            } else {
                codec.decode(buf)
            }
        });
        out.max_alloc = out.max_alloc.max(alloc);
        match r {
            Ok(Some(frame)) => out.frames.push(frame),
            Ok(None) => return true,
            Err(e) => {
                out.error = Some(e.to_string());
                return false;
            }
        }
    }
}

/// Frames whose payload is raw bytes or a fixed layout: they re-encode to exactly the
/// bytes they were decoded from (JSON ones may not: key order, spaces, defaults).
fn is_binary(f: &Frame) -> bool {
    // The files frames are JSON too: a body of any other JSON frame with type 0x8b decodes
    // as a FILES_OUT_END of defaults and re-encodes differently (a proptest run drew one).
    !matches!(
        f,
        Frame::Hello(_)
            | Frame::Welcome(_)
            | Frame::Queued(_)
            | Frame::Started(_)
            | Frame::End(_)
            | Frame::Error(_)
            | Frame::FileIn(_)
            | Frame::FileOut(_)
            | Frame::FilesOutEnd(_)
    )
}

/// Splits `data` at the given cut points (taken modulo its length, sorted).
fn split_at<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| {
            if data.is_empty() {
                0
            } else {
                c % (data.len() + 1)
            }
        })
        .collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}

fn encode_all(frames: &[Frame]) -> BytesMut {
    let mut codec = FrameCodec::new();
    let mut wire = BytesMut::new();
    for f in frames {
        codec
            .encode(f.clone(), &mut wire)
            .expect("a valid frame encodes");
    }
    wire
}

// ---------------------------------------------------------------------------------------
// Strategies

fn small_bytes() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..256).prop_map(Bytes::from),
        // Large payloads, up to the limit, cheaply made.
        1 => (any::<u8>(), 0..=MAX_FRAME_PAYLOAD).prop_map(|(b, n)| Bytes::from(vec![b; n])),
    ]
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, control characters and quotes included: what JSON must escape.
    proptest::collection::vec(any::<char>(), 0..40).prop_map(|c| c.into_iter().collect())
}

fn end_reason() -> impl Strategy<Value = EndReason> {
    proptest::sample::select(
        EndReason::ALL
            .iter()
            .copied()
            .chain([EndReason::Unknown])
            .collect::<Vec<_>>(),
    )
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    proptest::sample::select(vec![
        ErrorCode::Busy,
        ErrorCode::Version,
        ErrorCode::TooLarge,
        ErrorCode::Protocol,
        ErrorCode::UploadTimeout,
        ErrorCode::Docker,
        ErrorCode::Shutdown,
        ErrorCode::Limited,
        ErrorCode::Internal,
        ErrorCode::Image,
        ErrorCode::Unknown,
    ])
}

/// JSON frames are built from JSON, as a peer would send them, so that fields added to
/// the structs later take their defaults here.
fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("a well-formed control message")
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u32>(), any::<u64>(), proptest::collection::vec(text(), 0..6), proptest::option::of(text()), text(), proptest::option::of(text()))
            .prop_map(|(version, script_size, args, name, client, image)| Frame::Hello(from_json(
                serde_json::json!({"version": version, "script_size": script_size, "args": args, "name": name, "client": client, "image": image})
            ))),
        small_bytes().prop_map(Frame::Script),
        small_bytes()
            .prop_filter("STDIN frames are never empty", |b| !b.is_empty())
            .prop_map(Frame::Stdin),
        Just(Frame::StdinEof),
        any::<u8>().prop_map(Frame::Signal),
        Just(Frame::Cancel),
        (any::<u32>(), text(), text(), any::<(u64, u64, u64, u32)>()).prop_map(
            |(version, server, session, (s, t, o, w))| Frame::Welcome(from_json(serde_json::json!({
                "version": version, "server": server, "session": session,
                "limits": {"script_size": s, "timeout_ms": t, "output_bytes": o, "stdin_window": w},
            })))
        ),
        any::<u32>().prop_map(|p| Frame::Queued(from_json(serde_json::json!({"position": p})))),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(q, s, w)| Frame::Started(from_json(
            serde_json::json!({"queued_ms": q, "start_ms": s, "warm": w})
        ))),
        small_bytes().prop_map(Frame::Stdout),
        small_bytes().prop_map(Frame::Stderr),
        any::<u32>().prop_map(Frame::StdinCredit),
        (end_reason(), any::<i32>(), proptest::option::of(any::<i32>()), any::<u64>(), text()).prop_map(
            |(reason, exit_code, signal, duration_ms, message)| Frame::End(from_json(serde_json::json!({
                "reason": reason, "exit_code": exit_code, "signal": signal,
                "duration_ms": duration_ms, "message": message,
            })))
        ),
        (error_code(), text()).prop_map(|(code, message)| Frame::Error(from_json(
            serde_json::json!({"code": code, "message": message})
        ))),
    ]
}

/// Bytes shaped like frames, so that the decoder gets past the length check and into
/// the parsers: a length that is often plausible, a type byte that is often real, and
/// a body of any length, well-formed JSON or not.
fn framish() -> impl Strategy<Value = Vec<u8>> {
    let length = prop_oneof![
        4 => 0u32..64,
        2 => 0u32..=(MAX_FRAME_PAYLOAD as u32 + 1),
        1 => Just(MAX_FRAME_PAYLOAD as u32 + 1),
        1 => Just(MAX_FRAME_PAYLOAD as u32 + 2),
        1 => any::<u32>(),
    ];
    let ty = prop_oneof![
        3 => proptest::sample::select(vec![
            0x01u8, 0x02, 0x03, 0x04, 0x05, 0x06, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88,
        ]),
        1 => any::<u8>(),
    ];
    let body = prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..96),
        2 => proptest::sample::select(vec![
            &br#"{"version":1,"script_size":3}"#[..],
            br#"{"reason":"exited","exit_code":0,"duration_ms":1}"#,
            br#"{"code":"busy","message":"x"}"#,
            br#"{"position":1}"#,
            br#"{"queued_ms":0,"start_ms":1}"#,
            br#"{"version":1,"server":"s","session":"1","limits":{"script_size":1,"timeout_ms":1,"output_bytes":1,"stdin_window":1}}"#,
            br#"{"version":1e999,"script_size":-1}"#,
            br#"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]"#,
            br#"{"version":1,"script_size":1,"args":["\ud800"]}"#,
            b"\x00\x00\x00\x04",
        ])
        .prop_map(<[u8]>::to_vec),
    ];
    (length, ty, body, any::<bool>()).prop_map(|(len, ty, body, honest)| {
        // An honest frame's length matches its body; a dishonest one keeps whatever
        // length was drawn.
        let len = if honest { body.len() as u32 + 1 } else { len };
        let mut v = len.to_be_bytes().to_vec();
        v.push(ty);
        v.extend_from_slice(&body);
        v
    })
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Failures are reported with their input; nothing is written into the source tree.
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(config(2000))]

    /// Arbitrary bytes, arbitrarily split: no panic, bounded allocation, and whatever
    /// decodes re-encodes to the same bytes it came from.
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        data in proptest::collection::vec(any::<u8>(), 0..1024),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let d = decode_chunks(&split_at(&data, &cuts));
        prop_assert!(d.max_alloc <= DECODE_BOUND, "one decode allocated {} bytes", d.max_alloc);
        if d.frames.iter().all(is_binary) {
            let wire = encode_all(&d.frames);
            prop_assert!(data.starts_with(&wire), "decoded frames do not re-encode to their input");
        }
    }

    /// Streams of frame-shaped pieces (honest or lying lengths, real or unknown types,
    /// bodies that are nearly JSON): the same guarantees, deeper in the parsers.
    #[test]
    fn frame_shaped_garbage_never_panics_and_stays_bounded(
        pieces in proptest::collection::vec(framish(), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let data = pieces.concat();
        let d = decode_chunks(&split_at(&data, &cuts));
        prop_assert!(d.max_alloc <= DECODE_BOUND, "one decode allocated {} bytes", d.max_alloc);
        if d.error.is_none() && d.frames.iter().all(is_binary) {
            prop_assert_eq!(&encode_all(&d.frames)[..], &data[..]);
        }
    }

    /// Valid frames come back exactly, in order, however the stream is cut.
    #[test]
    fn valid_frames_round_trip_under_any_chunking(
        frames in proptest::collection::vec(frame(), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..24),
    ) {
        let wire = encode_all(&frames);
        let d = decode_chunks(&split_at(&wire, &cuts));
        prop_assert_eq!(d.error, None);
        prop_assert_eq!(d.frames, frames);
        prop_assert!(d.max_alloc <= DECODE_BOUND, "one decode allocated {} bytes", d.max_alloc);
    }

    /// A stream cut inside a frame ends in an error at EOF, never in a wrong frame.
    #[test]
    fn a_stream_cut_inside_a_frame_is_an_error_at_eof(
        frames in proptest::collection::vec(frame(), 1..6),
        cut in any::<usize>(),
        chunks in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let wire = encode_all(&frames);
        let last = encode_all(&frames[frames.len() - 1..]);
        // Somewhere strictly inside the last frame: past its first byte, short of its last.
        let start = wire.len() - last.len();
        let end = start + 1 + cut % (last.len() - 1);
        let d = decode_chunks(&split_at(&wire[..end], &chunks));
        prop_assert_eq!(&d.frames[..], &frames[..frames.len() - 1]);
        let err = d.error.unwrap_or_default();
        prop_assert!(err.contains("connection closed in the middle of a frame"), "{}", err);
    }

    /// Valid streams with a few bytes overwritten: no panic, bounded allocation.
    #[test]
    fn mutated_streams_never_panic_and_stay_bounded(
        frames in proptest::collection::vec(frame(), 1..6),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut wire = encode_all(&frames).to_vec();
        for (at, byte) in edits {
            let n = wire.len();
            wire[at % n] = byte;
        }
        let d = decode_chunks(&split_at(&wire, &cuts));
        prop_assert!(d.max_alloc <= DECODE_BOUND, "one decode allocated {} bytes", d.max_alloc);
    }
}

proptest! {
    #![proptest_config(config(500))]

    /// A length beyond the limit fails as soon as the prefix is in: no wait for a body,
    /// no buffer grown toward the announced size, nothing much allocated.
    #[test]
    fn an_oversized_length_fails_fast_without_allocating(
        len in (MAX_FRAME_PAYLOAD as u32 + 2)..=u32::MAX,
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut buf = BytesMut::with_capacity(256);
        buf.put_u32(len);
        buf.extend_from_slice(&tail);
        let capacity = buf.capacity();
        let mut codec = FrameCodec::new();
        let (r, alloc) = peak_during(|| codec.decode(&mut buf));
        prop_assert!(matches!(r, Err(CodecError::Oversized)), "{:?}", r);
        prop_assert!(alloc <= 4096, "{} bytes allocated to refuse a length of {}", alloc, len);
        prop_assert_eq!(buf.capacity(), capacity, "the buffer grew");
    }

    /// Encoding never produces what the decoder would refuse: a payload beyond the limit
    /// is an error and leaves the destination as it was.
    #[test]
    fn oversized_payloads_are_not_encoded(
        extra in 1usize..512,
        kind in 0u8..4,
        prefix in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let payload = Bytes::from(vec![b'p'; MAX_FRAME_PAYLOAD + extra]);
        let frame = match kind {
            0 => Frame::Script(payload),
            1 => Frame::Stdin(payload),
            2 => Frame::Stdout(payload),
            _ => Frame::Stderr(payload),
        };
        let mut dst = BytesMut::from(&prefix[..]);
        let r = FrameCodec::new().encode(frame, &mut dst);
        prop_assert!(
            matches!(r, Err(CodecError::Frame(FrameError::TooLarge(n))) if n == MAX_FRAME_PAYLOAD + extra),
            "{:?}", r
        );
        prop_assert_eq!(&dst[..], &prefix[..]);
    }
}

/// The accounting itself: a test of allocation bounds that could not see allocations
/// would pass for nothing.
#[test]
fn the_allocation_counter_sees_allocations() {
    let (v, alloc) = peak_during(|| vec![1u8; 1 << 20]);
    assert!(alloc >= 1 << 20, "counted {alloc} bytes for a 1 MiB vector");
    drop(v);
    let mut buf = BytesMut::new();
    buf.put_u32(100_000);
    buf.put_u8(0x84);
    let (r, alloc) = peak_during(|| FrameCodec::new().decode(&mut buf));
    assert!(matches!(r, Ok(None)));
    assert!(
        alloc >= 100_000,
        "the codec reserves a plausible frame's body ({alloc} bytes counted)"
    );
}

/// The smallest case of the property above, kept as a plain test: the stream ends right
/// after a length prefix, before the type byte.
#[test]
fn a_stream_ending_right_after_a_length_prefix_is_truncated() {
    let wire = encode_all(&[Frame::StdinCredit(0)]);
    let d = decode_chunks(&[&wire[..4]]);
    assert!(d.frames.is_empty());
    let err = d.error.unwrap_or_default();
    assert!(
        err.starts_with("connection closed in the middle of a frame"),
        "EOF after a length prefix must be an error, got {err:?}"
    );
}

/// The exact boundary, both ways, byte by byte.
#[test]
fn the_largest_frame_decodes_and_one_byte_more_is_refused() {
    let largest = Frame::Stdout(Bytes::from(vec![7u8; MAX_FRAME_PAYLOAD]));
    let wire = encode_all(std::slice::from_ref(&largest));
    assert_eq!(wire.len(), 4 + 1 + MAX_FRAME_PAYLOAD);
    let one_byte_chunks: Vec<&[u8]> = wire.chunks(1).collect();
    let d = decode_chunks(&one_byte_chunks);
    assert_eq!(d.error, None);
    assert_eq!(d.frames, vec![largest]);

    let mut over = BytesMut::new();
    over.put_u32(MAX_FRAME_PAYLOAD as u32 + 2);
    let d = decode_chunks(&[&over[..]]);
    assert!(d.frames.is_empty());
    assert_eq!(
        d.error.as_deref(),
        Some("frame larger than the limit of 131073 bytes")
    );
}
