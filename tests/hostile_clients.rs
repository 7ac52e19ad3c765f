//! Hostile clients: plaintext, stalled or silent connections, garbage, unknown and
//! oversized frames, lying uploads, slowloris, crowds, readers that stop reading, and
//! disconnects at every phase. The protocol-level ones speak raw TLS 1.3 (tokio-rustls,
//! trusting the daemon's CA) and write frames by hand. Each case ends with a clear answer
//! for the client, a daemon that still runs a hello-world, and nothing left behind: no
//! container, no session, no file descriptor. The raw client also checks the order of
//! the server's frames (protocol §5.2) against a script that writes at once.
//!
//! A TLS 1.2-only client is covered by `tests/tls.rs`
//! (`tls12_client_is_refused_at_the_handshake`) and not repeated here.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{daemon::*, docker::*, figures::*, idle::*, processes::*, raw::*};
use pyexec::protocol::{EndReason, ErrorCode, Frame};
use tokio::io::AsyncWriteExt;

// ---------------------------------------------------------------------------------------
// Before TLS

#[test]
fn plaintext_http_gets_a_tls_alert_and_nothing_else() {
    let d = Daemon::start(&[]);
    let base = idle_baseline(&d);
    let mut sock = std::net::TcpStream::connect(d.addr).unwrap();
    sock.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (reply, _) = read_until_closed(&mut sock, Duration::from_secs(5));
    // docs/protocol.md §1: a TLS decode_error alert record, then the close.
    assert_eq!(reply, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]);
    drop(sock);
    // Failed, not timed out: the TLS failure figure counts both; only the log says which.
    assert!(d.wait_log("TLS handshake failed", Duration::from_secs(5)));
    assert_back_to_idle(&d, base, "after a plaintext client");
    assert_healthy(&d);
    d.stop();
}

#[test]
fn silent_and_stalled_handshakes_are_closed_by_the_handshake_timeout() {
    let d = Daemon::start(&["--handshake-timeout", "1"]);
    let base = idle_baseline(&d);
    let hello = client_hello_bytes(&d);
    let silent = std::thread::spawn({
        let addr = d.addr;
        move || {
            let mut sock = std::net::TcpStream::connect(addr).unwrap();
            let opened = Instant::now();
            let (got, closed) = read_until_closed(&mut sock, Duration::from_secs(5));
            (got, closed - opened)
        }
    });
    let stalled = std::thread::spawn({
        let addr = d.addr;
        move || {
            let mut sock = std::net::TcpStream::connect(addr).unwrap();
            let opened = Instant::now();
            sock.write_all(&hello[..hello.len() / 2]).unwrap();
            let (got, closed) = read_until_closed(&mut sock, Duration::from_secs(5));
            (got, closed - opened)
        }
    });
    for (what, t) in [("silent TCP", silent), ("half a ClientHello", stalled)] {
        let (got, open_for) = t.join().unwrap();
        assert_eq!(got, Vec::<u8>::new(), "{what}: dropped without a byte");
        assert!(
            open_for >= Duration::from_millis(900) && open_for < Duration::from_secs(3),
            "{what}: closed after {open_for:?} with --handshake-timeout 1"
        );
    }
    // Timed out, not failed: the TLS failure figure counts both; only the log says which.
    assert!(wait_until(Duration::from_secs(5), || d
        .log()
        .matches("TLS handshake timed out")
        .count()
        == 2));
    assert_back_to_idle(&d, base, "after stalled handshakes");
    assert_healthy(&d);
    d.stop();
}

#[test]
fn connections_beyond_the_cap_are_closed_at_once() {
    let d = Daemon::start(&["--max-connections", "3", "--handshake-timeout", "10"]);
    let base = idle_baseline(&d);
    let held: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(d.addr).unwrap())
        .collect();
    // The listener counts a connection when it accepts it: make sure all three are in.
    assert!(wait_until(Duration::from_secs(5), || fd_count(d.pid()) >= base + 3));
    let mut extra = std::net::TcpStream::connect(d.addr).unwrap();
    let opened = Instant::now();
    let (got, closed) = read_until_closed(&mut extra, Duration::from_secs(5));
    assert!(got.is_empty());
    assert!(
        closed - opened < Duration::from_secs(1),
        "the fourth connection was closed after {:?}",
        closed - opened
    );
    for mut sock in held {
        // Still open: nothing to read, no EOF.
        sock.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let r = sock.read(&mut b);
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a connection within the cap was closed: {r:?}"
        );
    }
    assert_back_to_idle(&d, base, "after the connection cap");
    assert_healthy(&d);
    d.stop();
}

// ---------------------------------------------------------------------------------------
// Bad frames

/// xorshift64*: reproducible pseudo-random bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn garbage_after_the_handshake_gets_error_protocol_or_a_close() {
    let d = Daemon::start(&["--upload-timeout", "1"]);
    let base = idle_baseline(&d);
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let mut blobs: Vec<(String, Vec<u8>)> = (0..24)
        .map(|i| {
            let n = 1 + (rng.next() % 4096) as usize;
            (format!("random blob {i} ({n} bytes)"), rng.bytes(n))
        })
        .collect();
    blobs.push(("zeros".into(), vec![0; 64]));
    blobs.push(("0xff".into(), vec![0xff; 64]));
    blobs.push((
        "an HTTP request".into(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ));
    blobs.push(("a TLS record inside TLS".into(), client_hello_bytes(&d)));
    blobs.push((
        "HELLO with broken JSON".into(),
        raw_hello("{\"version\":1,"),
    ));
    blobs.push((
        "a short frame, then nothing".into(),
        vec![0, 0, 0, 9, 0x01, b'{'],
    ));
    let rt = runtime();
    let mut errors = 0;
    for (what, blob) in &blobs {
        rt.block_on(async {
            let mut c = Raw::connect(&d).await;
            let sent = Instant::now();
            let _ = c.send_bytes(blob).await; // the server may close mid-write
            let (before, end) = c.until_end(Duration::from_secs(5)).await;
            assert!(
                before.is_empty(),
                "{what}: frames before the end: {before:?}"
            );
            match &end {
                Some(Frame::Error(e)) => {
                    assert!(
                        matches!(e.code, ErrorCode::Protocol | ErrorCode::UploadTimeout),
                        "{what}: {e:?}"
                    );
                    errors += 1;
                }
                None => {}
                other => panic!("{what}: {other:?}"),
            }
            assert!(
                sent.elapsed() < Duration::from_secs(4),
                "{what}: took {:?}",
                sent.elapsed()
            );
        });
    }
    assert!(errors >= blobs.len() / 2, "most got an ERROR: {errors}");
    assert_back_to_idle(&d, base, "after garbage");
    assert_healthy(&d);
    d.stop();
}

#[test]
fn unknown_and_misdirected_frame_types_are_protocol_errors() {
    let d = Daemon::start(&[]);
    let base = idle_baseline(&d);
    let rt = runtime();
    let mut cases: Vec<(String, Vec<u8>, String)> = [0x00u8, 0x09, 0x42, 0x7f, 0x80, 0x8d, 0xff]
        .iter()
        .map(|ty| {
            (
                format!("type 0x{ty:02x}"),
                raw_frame(*ty, &[1, 2]),
                format!("unknown frame type 0x{ty:02x}"),
            )
        })
        .collect();
    cases.push((
        "an empty frame".into(),
        vec![0, 0, 0, 0],
        "empty frame (no type byte)".into(),
    ));
    let server_frames = [
        Frame::Welcome(
            serde_json::from_value(serde_json::json!({
                "version": 1, "server": "me", "session": "1",
                "limits": {"script_size": 1, "timeout_ms": 1, "output_bytes": 1, "stdin_window": 1},
            }))
            .unwrap(),
        ),
        Frame::Stdout(Bytes::from_static(b"hi")),
        Frame::End(
            serde_json::from_value(serde_json::json!({
                "reason": "exited", "exit_code": 0, "duration_ms": 1,
            }))
            .unwrap(),
        ),
        Frame::Cancel,
    ];
    for f in server_frames {
        let mut buf = BytesMut::new();
        f.encode(&mut buf).unwrap();
        let name = f.frame_type().name();
        cases.push((
            format!("{name} first"),
            buf.to_vec(),
            format!("expected HELLO, got {name}"),
        ));
    }
    for (what, bytes, message) in &cases {
        rt.block_on(async {
            let mut c = Raw::connect(&d).await;
            c.send_bytes(bytes).await.unwrap();
            let (before, end) = c.until_end(Duration::from_secs(5)).await;
            assert!(before.is_empty(), "{what}: {before:?}");
            assert_error(&end, ErrorCode::Protocol, message, what);
        });
    }

    // The same in the middle of a running script: the script is stopped, the container
    // removed.
    rt.block_on(async {
        let mut c = Raw::connect(&d).await;
        c.run(&format!(
            "{PRINT_CID}import time\nprint('ready', flush=True)\ntime.sleep(60)\n"
        ))
        .await;
        let (out, id) = c.stdout_until(b"ready\n", Duration::from_secs(15)).await;
        let cid = cid_of(&out);
        c.send_bytes(&raw_frame(0x7f, b"??")).await.unwrap();
        let (_, end) = c.until_end(Duration::from_secs(10)).await;
        assert_error(
            &end,
            ErrorCode::Protocol,
            "unknown frame type 0x7f",
            "mid-run",
        );
        drop(c);
        assert!(d.wait_session_log(&id, "session refused", Duration::from_secs(5)));
        assert_container_gone(&cid, Duration::from_secs(5));
    });
    assert_back_to_idle(&d, base, "after bad frame types");
    assert_healthy(&d);
    d.stop();
}

#[test]
fn oversized_frames_are_refused_before_their_body_arrives() {
    let d = Daemon::start(&["--upload-timeout", "10"]);
    let base = idle_baseline(&d);
    let rt = runtime();
    rt.block_on(async {
        // Only the length prefix: the server must not wait for a body it will never take.
        for len in [131_074u32, 1 << 24, u32::MAX] {
            let mut c = Raw::connect(&d).await;
            let sent = Instant::now();
            c.send_bytes(&len.to_be_bytes()).await.unwrap();
            let (before, end) = c.until_end(Duration::from_secs(5)).await;
            assert!(before.is_empty());
            assert_error(
                &end,
                ErrorCode::Protocol,
                "frame larger than the limit of 131073 bytes",
                &format!("length {len}"),
            );
            assert!(
                sent.elapsed() < Duration::from_secs(2),
                "{:?}",
                sent.elapsed()
            );
        }
        // Mid-upload, after WELCOME.
        let mut c = Raw::connect(&d).await;
        c.hello(100, b"print(1)\n").await;
        c.send_bytes(&131_074u32.to_be_bytes()).await.unwrap();
        let (before, end) = c.until_end(Duration::from_secs(5)).await;
        assert!(
            matches!(before.first(), Some(Frame::Welcome(_))),
            "{before:?}"
        );
        assert_error(
            &end,
            ErrorCode::Protocol,
            "frame larger than the limit of 131073 bytes",
            "mid-upload",
        );
        // The largest frame allowed is taken: a 131072-byte script in one SCRIPT frame.
        let mut script = b"print('big')\n".to_vec();
        script.resize(131_072, b'#');
        let mut c = Raw::connect(&d).await;
        c.send(hello(script.len() as u64)).await;
        c.send_bytes(&raw_frame(0x02, &script)).await.unwrap();
        c.send(Frame::StdinEof).await;
        let (before, end) = c.until_end(Duration::from_secs(15)).await;
        let stdout: Vec<u8> = before
            .iter()
            .filter_map(|f| match f {
                Frame::Stdout(b) => Some(b.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(stdout, b"big\n", "{before:?}");
        assert_end(&end, EndReason::Exited, 0, "after oversized frames");
    });
    assert_back_to_idle(&d, base, "after oversized frames");
    assert_healthy(&d);
    d.stop();
}

#[test]
fn scripts_larger_than_announced_or_allowed_are_refused() {
    let d = Daemon::start(&["--max-script-size", "64k"]);
    let base = idle_baseline(&d);
    let rt = runtime();
    rt.block_on(async {
        for size in [65_537u64, u64::MAX] {
            let mut c = Raw::connect(&d).await;
            c.send(hello(size)).await; // and not one byte of it
            let (before, end) = c.until_end(Duration::from_secs(5)).await;
            assert!(before.is_empty(), "no WELCOME: {before:?}");
            assert_error(
                &end,
                ErrorCode::TooLarge,
                &format!("script too large: {size} bytes, the limit is 64 KiB"),
                "oversized",
            );
        }
        // Announces 10 bytes, sends 20.
        let mut c = Raw::connect(&d).await;
        c.hello(10, b"print(1)\n#########\n").await;
        let (before, end) = c.until_end(Duration::from_secs(5)).await;
        assert!(matches!(before.first(), Some(Frame::Welcome(_))));
        assert_error(
            &end,
            ErrorCode::Protocol,
            "more SCRIPT bytes than the 10 announced",
            "liar",
        );
        // Sends exactly what it announced, then one SCRIPT frame more.
        let mut c = Raw::connect(&d).await;
        c.hello(9, b"print(1)\n").await;
        c.send(Frame::Script(Bytes::from_static(b"x"))).await;
        let (_, end) = c.until_end(Duration::from_secs(10)).await;
        assert_error(
            &end,
            ErrorCode::Protocol,
            "SCRIPT",
            "script after the script",
        );
    });
    // Through the real client: refused with the size named, nothing run.
    let big = format!("print('ran')\n{}", "#".repeat(65_537 - 13));
    assert_eq!(big.len(), 65_537);
    let out = d.run(&big, &[], b"");
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(stdout_str(&out), "");
    assert_eq!(
        stderr_str(&out),
        "pyexec: script too large: 65537 bytes, the limit is 64 KiB\n"
    );
    // Exactly the limit runs.
    let out = d.run(&big[..65_536], &[], b"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr_str(&out));
    assert_eq!(stdout_str(&out), "ran\n");
    assert_back_to_idle(&d, base, "after oversized scripts");
    d.stop();
}

#[test]
fn protocol_violations_end_with_a_clear_error() {
    let d = Daemon::start(&["--upload-timeout", "5"]);
    let base = idle_baseline(&d);
    let rt = runtime();
    let sleeper = "import time\ntime.sleep(30)\n";
    let frame = |f: Frame| {
        let mut b = BytesMut::new();
        f.encode(&mut b).unwrap();
        b.to_vec()
    };
    let script_frames = |s: &str| {
        [
            frame(hello(s.len() as u64)),
            frame(Frame::Script(Bytes::copy_from_slice(s.as_bytes()))),
        ]
        .concat()
    };
    let nested = format!(
        "{{\"version\":1,\"script_size\":1,\"x\":{}{}}}",
        "[".repeat(60_000),
        "]".repeat(60_000)
    );
    let stdin_burst: Vec<u8> = (0..16)
        .flat_map(|_| frame(Frame::Stdin(Bytes::from(vec![b'i'; 65_536]))))
        .collect();
    let cases: Vec<(&str, Vec<u8>, ErrorCode, &str)> = vec![
        (
            "version 2",
            raw_hello(r#"{"version":2,"script_size":1}"#),
            ErrorCode::Version,
            "unsupported protocol version 2; this server speaks 1",
        ),
        (
            "a HELLO without script_size",
            raw_hello(r#"{"version":1}"#),
            ErrorCode::Protocol,
            "HELLO",
        ),
        (
            "a fractional script_size",
            raw_hello(r#"{"version":1,"script_size":1.5}"#),
            ErrorCode::Protocol,
            "HELLO",
        ),
        (
            "a script_size of 1e400",
            raw_hello(r#"{"version":1,"script_size":1e400}"#),
            ErrorCode::Protocol,
            "HELLO",
        ),
        (
            "a lone surrogate in args",
            raw_hello(r#"{"version":1,"script_size":1,"args":["\ud800"]}"#),
            ErrorCode::Protocol,
            "HELLO",
        ),
        (
            "a NUL in args",
            raw_hello(r#"{"version":1,"script_size":1,"args":["a\u0000b"]}"#),
            ErrorCode::TooLarge,
            "argument 1 contains a NUL byte",
        ),
        (
            "a second HELLO",
            [script_frames(sleeper), frame(hello(1))].concat(),
            ErrorCode::Protocol,
            "unexpected HELLO frame",
        ),
        (
            "STDIN before the whole script",
            [
                frame(hello(100)),
                frame(Frame::Stdin(Bytes::from_static(b"x"))),
            ]
            .concat(),
            ErrorCode::Protocol,
            "STDIN before the whole script",
        ),
        (
            "STDIN_EOF twice",
            [
                script_frames(sleeper),
                frame(Frame::StdinEof),
                frame(Frame::StdinEof),
            ]
            .concat(),
            ErrorCode::Protocol,
            "unexpected STDIN_EOF",
        ),
        (
            "STDIN after STDIN_EOF",
            [
                script_frames(sleeper),
                frame(Frame::StdinEof),
                frame(Frame::Stdin(Bytes::from_static(b"x"))),
            ]
            .concat(),
            ErrorCode::Protocol,
            "STDIN after STDIN_EOF",
        ),
        (
            "an empty STDIN frame",
            [script_frames(sleeper), raw_frame(0x03, b"")].concat(),
            ErrorCode::Protocol,
            "STDIN",
        ),
        (
            "SIGNAL 19 (SIGSTOP)",
            [script_frames(sleeper), frame(Frame::Signal(19))].concat(),
            ErrorCode::Protocol,
            "signal 19 may not be sent",
        ),
        (
            "a two-byte SIGNAL",
            [script_frames(sleeper), raw_frame(0x05, &[2, 2])].concat(),
            ErrorCode::Protocol,
            "SIGNAL",
        ),
        (
            "a CANCEL with a payload",
            [script_frames(sleeper), raw_frame(0x06, b"now")].concat(),
            ErrorCode::Protocol,
            "CANCEL",
        ),
        (
            "1 MiB of STDIN without waiting for credit",
            [script_frames(sleeper), stdin_burst].concat(),
            ErrorCode::Protocol,
            "STDIN window of 262144 bytes exceeded",
        ),
    ];
    for (what, bytes, code, message) in &cases {
        rt.block_on(async {
            let mut c = Raw::connect(&d).await;
            let _ = c.send_bytes(bytes).await;
            let (_, end) = c.until_end(Duration::from_secs(10)).await;
            assert_error(&end, *code, message, what);
        });
    }
    // 60000 levels of nesting in an unknown field: ignored as unknown fields are, without
    // recursion (a stack overflow would take the whole daemon down).
    rt.block_on(async {
        let mut c = Raw::connect(&d).await;
        c.send_bytes(&raw_hello(&nested)).await.unwrap();
        c.send(Frame::Script(Bytes::from_static(b"\n"))).await;
        c.send(Frame::StdinEof).await;
        let (_, end) = c.until_end(Duration::from_secs(15)).await;
        assert_end(&end, EndReason::Exited, 0, "deeply nested unknown field");
    });
    assert_back_to_idle(&d, base, "after protocol violations");
    assert_healthy(&d);
    d.stop();
}

// ---------------------------------------------------------------------------------------
// Slow, many, and deaf clients

#[test]
fn slowloris_uploads_end_with_upload_timeout() {
    let d = Daemon::start(&["--upload-timeout", "1", "--session-timeout", "20"]);
    let base = idle_baseline(&d);
    let rt = runtime();
    rt.block_on(async {
        let silent = async {
            let mut c = Raw::connect(&d).await;
            let t = Instant::now();
            let (before, end) = c.until_end(Duration::from_secs(5)).await;
            (before, end, t.elapsed())
        };
        let partial = async {
            let mut c = Raw::connect(&d).await;
            let t = Instant::now();
            c.hello(100, b"print(").await;
            let (before, end) = c.until_end(Duration::from_secs(5)).await;
            (before, end, t.elapsed())
        };
        let dribble = async {
            let mut c = Raw::connect(&d).await;
            let t = Instant::now();
            c.send(hello(1000)).await;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut before = Vec::new();
            let end = loop {
                tokio::select! {
                    got = c.next(Duration::from_secs(5)) => match got {
                        Got::Frame(f) if f.is_terminal() => break Some(f),
                        Got::Frame(f) => before.push(f),
                        _ => break None,
                    },
                    _ = tick.tick() => {
                        let _ = c.send_bytes(&raw_frame(0x02, b"#")).await;
                    }
                }
            };
            (before, end, t.elapsed())
        };
        let (silent, partial, dribble) = tokio::join!(silent, partial, dribble);
        for (what, (before, end, took), welcomed) in [
            ("no HELLO", silent, false),
            ("a partial script", partial, true),
            ("one byte every 100 ms", dribble, true),
        ] {
            assert_error(
                &end,
                ErrorCode::UploadTimeout,
                "no complete script within 1s",
                what,
            );
            assert_eq!(
                matches!(before.first(), Some(Frame::Welcome(_))),
                welcomed,
                "{what}: {before:?}"
            );
            assert!(
                took >= Duration::from_millis(900) && took < Duration::from_secs(3),
                "{what}: ended after {took:?}"
            );
        }
    });
    assert_back_to_idle(&d, base, "after slowloris clients");
    assert_healthy(&d);
    d.stop();
}

#[test]
fn a_crowd_beyond_slots_and_queue_is_served_or_told_busy() {
    let d = Daemon::start(&["--max-sessions", "1", "--max-queue", "2"]);
    let base = idle_baseline(&d);
    let script = "import time\ntime.sleep(1)\nprint('done')\n";
    let clients: Vec<_> = (0..20)
        .map(|_| {
            d.pyexec(script)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let (mut served, mut busy) = (0, 0);
    for (i, mut c) in clients.into_iter().enumerate() {
        let status = wait_timeout(&mut c, Duration::from_secs(40))
            .unwrap_or_else(|| panic!("client {i} hangs"));
        let out = c.wait_with_output().unwrap();
        match status.code() {
            Some(0) => {
                assert_eq!(stdout_str(&out), "done\n", "client {i}");
                served += 1;
            }
            Some(125) => {
                assert_eq!(stdout_str(&out), "", "client {i}");
                let err = stderr_str(&out);
                assert!(
                    err.starts_with("pyexec: server busy: ") && err.lines().count() == 1,
                    "client {i}: {err}"
                );
                busy += 1;
            }
            other => panic!("client {i}: {other:?} {}", stderr_str(&out)),
        }
    }
    assert_eq!(served + busy, 20);
    assert!(
        served >= 3,
        "one running and two queued are served: {served}"
    );
    assert!(busy >= 1, "twenty at once cannot all fit: {busy}");
    assert_back_to_idle(&d, base, "after the crowd");
    assert_healthy(&d);
    d.stop();
}

#[test]
fn a_client_that_stops_reading_a_flood_costs_bounded_memory_and_still_times_out() {
    let d = Daemon::start(&["--session-timeout", "3"]);
    let base = idle_baseline(&d);
    wait_pool_ready(&d);
    let rss_before = vm_rss_kib(d.pid()).expect("the daemon runs");
    let rt = runtime();
    rt.block_on(async {
        let opened = Instant::now();
        let mut c = Raw::connect(&d).await;
        c.run(&format!(
            "{PRINT_CID}import sys\nblock = b'x' * 65536\nwhile True:\n    sys.stdout.buffer.write(block)\n"
        ))
        .await;
        let (out, id) = c.stdout_until(b"\n", Duration::from_secs(15)).await;
        let cid = cid_of(&out);
        // From here on the client reads nothing.
        let mut peak = rss_before;
        let mut gone_after = None;
        while opened.elapsed() < Duration::from_secs(20) {
            peak = peak.max(vm_rss_kib(d.pid()).expect("the daemon runs"));
            if !container_listed(&cid) {
                gone_after = Some(opened.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("daemon RSS: {rss_before} KiB before, at most {peak} KiB while the client did not read");
        assert!(
            peak < 64 * 1024 && peak < rss_before + 32 * 1024,
            "daemon RSS went from {rss_before} KiB to {peak} KiB"
        );
        let gone_after = gone_after.unwrap_or_else(|| {
            panic!(
                "the container was still there {:?} after the connection, with --session-timeout 3\n{}",
                opened.elapsed(),
                d.log()
            )
        });
        assert!(
            gone_after < Duration::from_secs(7),
            "the container went away {gone_after:?} after the connection, with --session-timeout 3"
        );
        assert!(d.wait_session_log(&id, "reason=\"timeout\"", Duration::from_secs(1)));
        // Reading again, the client gets the rest of what was sent and the END.
        let (_, end) = c.until_end(Duration::from_secs(10)).await;
        assert_end(&end, EndReason::Timeout, 124, "deaf client");
    });
    assert_back_to_idle(&d, base, "after a deaf client");
    assert_healthy(&d);
    d.stop();
}

// ---------------------------------------------------------------------------------------
// Disconnects

#[test]
fn disconnects_at_every_phase_leak_nothing() {
    let d = Daemon::start(&["--max-sessions", "1", "--session-timeout", "60"]);
    let base = idle_baseline(&d);
    let rt = runtime();
    let disconnected = |id: &str| {
        assert!(
            d.wait_session_log(id, "client disconnected", Duration::from_secs(5)),
            "session {id} did not log its disconnect\n{}",
            d.log()
        );
    };

    // During the handshake: a FIN before anything, a FIN and a reset mid-ClientHello.
    let hello = client_hello_bytes(&d);
    drop(std::net::TcpStream::connect(d.addr).unwrap());
    let mut sock = std::net::TcpStream::connect(d.addr).unwrap();
    sock.write_all(&hello[..hello.len() / 2]).unwrap();
    drop(sock);
    let mut sock = std::net::TcpStream::connect(d.addr).unwrap();
    sock.write_all(&hello[..hello.len() / 2]).unwrap();
    set_linger_zero(sock.as_raw_fd());
    drop(sock);
    // Failed, not timed out: the TLS failure figure counts both; only the log says which.
    assert!(wait_until(Duration::from_secs(5), || d
        .log()
        .matches("TLS handshake failed")
        .count()
        >= 3));
    assert_back_to_idle(&d, base, "disconnects during the handshake");

    rt.block_on(async {
        // During the upload: a plain close, and a clean close_notify.
        let mut c = Raw::connect(&d).await;
        c.hello(1000, &[b'#'; 100]).await;
        let id = c.welcome().await;
        drop(c);
        disconnected(&id);
        let mut c = Raw::connect(&d).await;
        c.hello(1000, &[b'#'; 100]).await;
        let id = c.welcome().await;
        c.out.shutdown().await.unwrap();
        disconnected(&id);
    });
    assert_back_to_idle(&d, base, "disconnects during the upload");

    rt.block_on(async {
        // While queued: one session holds the only slot, the next waits and leaves.
        let hold = format!("{PRINT_CID}import sys\nsys.stdin.read()\n");
        let mut holder = Raw::connect(&d).await;
        holder.hello(hold.len() as u64, hold.as_bytes()).await;
        let (out, _) = holder.stdout_until(b"\n", Duration::from_secs(15)).await;
        let holder_cid = cid_of(&out);
        let queued_position = |frames: &[Frame]| {
            frames.iter().find_map(|f| match f {
                Frame::Queued(q) => Some(q.position),
                _ => None,
            })
        };
        let mut waiting = Raw::connect(&d).await;
        waiting.run("print('never')\n").await;
        let id = waiting.welcome().await;
        let mut seen = Vec::new();
        while queued_position(&seen).is_none() {
            match waiting.next(Duration::from_secs(10)).await {
                Got::Frame(f) => seen.push(f),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(queued_position(&seen), Some(1));
        drop(waiting);
        disconnected(&id);
        // It left the queue: the next one is first in line, not second.
        let mut next = Raw::connect(&d).await;
        next.run("print('never')\n").await;
        let id = next.welcome().await;
        match next.next(Duration::from_secs(10)).await {
            Got::Frame(Frame::Queued(q)) => assert_eq!(q.position, 1),
            other => panic!("{other:?}"),
        }
        next.reset_on_close();
        drop(next);
        disconnected(&id);
        holder.send(Frame::StdinEof).await;
        let (_, end) = holder.until_end(Duration::from_secs(10)).await;
        assert_end(&end, EndReason::Exited, 0, "the holder");
        drop(holder);
        assert_container_gone(&holder_cid, Duration::from_secs(5));
    });
    assert_back_to_idle(&d, base, "disconnects while queued");

    rt.block_on(async {
        // While running: a FIN, then a reset.
        for reset in [false, true] {
            let mut c = Raw::connect(&d).await;
            c.run(&format!(
                "{PRINT_CID}import time\nprint('ready', flush=True)\ntime.sleep(60)\n"
            ))
            .await;
            let (out, id) = c.stdout_until(b"ready\n", Duration::from_secs(15)).await;
            let cid = cid_of(&out);
            if reset {
                c.reset_on_close();
            }
            drop(c);
            disconnected(&id);
            assert_container_gone(&cid, Duration::from_secs(3));
        }
    });
    assert_back_to_idle(&d, base, "disconnects while running");

    rt.block_on(async {
        // After the script's exit, before reading END.
        let mut c = Raw::connect(&d).await;
        c.run("print('bye')\n").await;
        let id = c.welcome().await;
        assert!(d.wait_session_log(&id, "session ended", Duration::from_secs(15)));
        drop(c);
    });
    assert_back_to_idle(&d, base, "disconnects after the exit");
    assert_healthy(&d);
    d.stop();
}

/// A session stopped while its script is still arriving (Ctrl-C, timeout, shutdown) ends
/// at once: its container holds no script, so there is no end of one to wait for.
#[test]
fn cancel_during_the_upload_ends_at_once() {
    let d = Daemon::start(&["--warm", "1"]);
    wait_pool_ready(&d);
    runtime().block_on(async {
        let mut raw = Raw::connect(&d).await;
        raw.hello(100, b"print(1)\n").await; // 9 of the 100 bytes announced
        raw.welcome().await;
        let asked = Instant::now();
        raw.send(Frame::Cancel).await;
        let (_, end) = raw.until_end(Duration::from_secs(10)).await;
        match end {
            Some(Frame::End(e)) => assert_eq!(e.reason, pyexec::protocol::EndReason::Cancelled),
            other => panic!("expected END cancelled, got {other:?}"),
        }
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "took {:?}",
            asked.elapsed()
        );
    });
    assert_healthy(&d);
    d.stop();
}

/// The server's frames follow protocol §5.2 even when the script writes at once:
/// `WELCOME QUEUED* STARTED (STDOUT | STDERR | STDIN_CREDIT)* END`. Output that Docker
/// delivers right behind the bootstrap's acknowledgement is queued just after STARTED;
/// a writer that took output and control frames fairly once sent it first now and then.
#[test]
fn started_comes_before_the_first_output_even_when_output_is_instant() {
    let d = Daemon::start(&["--warm", "2", "--max-sessions", "2"]);
    let script = "import os\nos.write(1, b'o')\nos.write(2, b'e')\n";
    runtime().block_on(async {
        for i in 0..40 {
            let mut raw = Raw::connect(&d).await;
            raw.run(script).await;
            let (before, end) = raw.until_end(Duration::from_secs(30)).await;
            assert_end(&end, EndReason::Exited, 0, &format!("session {i}"));
            let kinds: Vec<&str> = before
                .iter()
                .map(|f| match f {
                    Frame::Welcome(_) => "W",
                    Frame::Queued(_) => "Q",
                    Frame::Started(_) => "S",
                    Frame::Stdout(_) | Frame::Stderr(_) | Frame::StdinCredit(_) => "o",
                    _ => "?",
                })
                .collect();
            let order = kinds.concat();
            let grammar = order.trim_end_matches('o');
            assert!(
                grammar.starts_with('W')
                    && grammar.ends_with('S')
                    && grammar[1..grammar.len() - 1].chars().all(|c| c == 'Q'),
                "session {i}: frames in the order {order} (W welcome, Q queued, S started, o output)"
            );
            assert!(order.contains('o'), "session {i}: no output in {order}");
        }
    });
    d.stop();
}
