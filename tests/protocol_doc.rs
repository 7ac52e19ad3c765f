//! What docs/protocol.md promises and a client written from it alone relies on, checked
//! against the real daemon: frame sizes (§2), the answer to a wrong first frame (§3), a
//! stream that ends inside a frame (§2, §5.1), the order of STARTED (§5.2), and a HELLO
//! that cannot fit in one frame (§4.1).

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{daemon::*, idle::*, raw::*};
use pyexec::protocol::{ErrorCode, Frame, DATA_CHUNK};
use tokio::io::AsyncWriteExt;

/// §2: the server never sends STDOUT/STDERR frames larger than 65536 bytes, even when it
/// merges a flood's pieces; and STARTED comes before the first byte (§5.2).
#[test]
fn output_frames_stay_within_a_data_chunk_and_follow_started() {
    let d = Daemon::start(&[]);
    runtime().block_on(async {
        let mut c = Raw::connect(&d).await;
        c.run("import sys\nsys.stdout.write('x' * (4 << 20))\nsys.stderr.write('y' * (1 << 20))\n")
            .await;
        let (frames, end) = c.until_end(Duration::from_secs(60)).await;
        assert!(matches!(end, Some(Frame::End(_))), "{end:?}");
        let mut started = false;
        let (mut out, mut err, mut largest) = (0usize, 0usize, 0usize);
        for f in &frames {
            match f {
                Frame::Started(_) => started = true,
                Frame::Stdout(b) | Frame::Stderr(b) => {
                    assert!(started, "output before STARTED");
                    largest = largest.max(b.len());
                    if matches!(f, Frame::Stdout(_)) {
                        out += b.len()
                    } else {
                        err += b.len()
                    }
                }
                Frame::StdinCredit(_) => assert!(started, "STDIN_CREDIT before STARTED"),
                _ => {}
            }
        }
        assert_eq!((out, err), (4 << 20, 1 << 20));
        assert!(
            largest <= DATA_CHUNK,
            "a {largest}-byte output frame; §2 promises at most {DATA_CHUNK}"
        );
        // Merging does happen: a 4 MiB flood does not leave in Docker's small reads.
        assert_eq!(largest, DATA_CHUNK, "full frames for a flood");
    });
    d.stop();
}

/// §3: any first frame but HELLO is answered "expected HELLO, got …", an unknown type
/// byte included.
#[test]
fn an_unknown_first_frame_is_answered_expected_hello() {
    let d = Daemon::start(&[]);
    runtime().block_on(async {
        let mut c = Raw::connect(&d).await;
        c.send_bytes(&raw_frame(0x7f, b"??")).await.unwrap();
        let (_, end) = c.until_end(Duration::from_secs(5)).await;
        assert_error(
            &end,
            ErrorCode::Protocol,
            "expected HELLO, got unknown frame type 0x7f",
            "unknown first frame",
        );
    });
    d.stop();
}

/// §2 and §5.1 rule 6: a client that half-closes inside a frame reads ERROR protocol,
/// and its script is stopped.
#[test]
fn a_stream_that_ends_inside_a_frame_gets_error_protocol() {
    let d = Daemon::start(&[]);
    let base = idle_baseline(&d);
    runtime().block_on(async {
        let mut c = Raw::connect(&d).await;
        let script = "import time\nprint('ready', flush=True)\ntime.sleep(60)\n";
        c.run(script).await;
        c.stdout_until(b"ready\n", Duration::from_secs(15)).await;
        // Half of a STDIN frame's header, then close_notify and FIN on our side only.
        c.send_bytes(&[0, 0, 0]).await.unwrap();
        c.out.shutdown().await.unwrap();
        let (_, end) = c.until_end(Duration::from_secs(10)).await;
        assert_error(
            &end,
            ErrorCode::Protocol,
            "connection closed in the middle of a frame (3 bytes of it received)",
            "half-closed inside a frame",
        );
    });
    assert_back_to_idle(&d, base, "after a stream cut inside a frame");
    d.stop();
}

/// §4.1: arguments within the limits whose JSON does not fit in one frame are refused as
/// an oversized frame, before anything runs.
#[test]
fn a_hello_too_large_for_one_frame_is_refused_as_oversized() {
    let d = Daemon::start(&[]);
    let base = idle_baseline(&d);
    // 60,000 bytes of arguments (within 65,536), six times that as JSON escapes.
    let args = vec!["\u{1f}".repeat(1000); 60];
    let json = serde_json::json!({"version": 1, "script_size": 1, "args": args}).to_string();
    assert!(json.len() > pyexec::protocol::MAX_FRAME_PAYLOAD);
    runtime().block_on(async {
        let mut c = Raw::connect(&d).await;
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&raw_hello(&json));
        // The server refuses at the prefix; the rest may meet a closed connection.
        let _ = c.send_bytes(&wire).await;
        let (_, end) = c.until_end(Duration::from_secs(5)).await;
        assert_error(
            &end,
            ErrorCode::Protocol,
            "frame larger than the limit of 131073 bytes",
            "an oversized HELLO",
        );
    });
    assert_back_to_idle(&d, base, "after an oversized HELLO");
    d.stop();
}
