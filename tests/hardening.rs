//! The holes found by attacking the daemon (issue 9), each reproduced as the attacker did
//! it, against the real daemon: a client that vanishes at the worst moment must give its
//! run slot back, a SIGNAL flood must cost one Docker request at a time, stdin sent as
//! one-byte frames must cost its window and no more, and a flood of metrics connections
//! must not take the daemon's descriptors. Socket memory is in `tests/tcp_memory.rs`.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{daemon::*, figures::*, idle::*, processes::*, raw::*};
use pyexec::protocol::{EndReason, ErrorCode, Frame};

fn encode(frames: impl IntoIterator<Item = Frame>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for f in frames {
        f.encode(&mut buf).unwrap();
    }
    buf.to_vec()
}

/// Samples the daemon's descriptor count every few milliseconds until stopped; the peak.
struct FdPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FdPeak {
    fn watch(pid: i32) -> FdPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(0));
        let thread = thread::spawn({
            let (stop, peak) = (stop.clone(), peak.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(fd_count(pid), Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(5));
                }
            }
        });
        FdPeak {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

/// Issue 9, hole 1, as reproduced: `--max-sessions 2`, then 40 clients that send HELLO
/// and the script and vanish with a reset, 50 ms apart. The Supervisor's grant raced the
/// session's stop; the container it handed out was dropped unseen and its slot was gone
/// for good, so every later session queued until it timed out. Then the other moments a
/// verdict can be in flight: a queued session admitted just as it leaves.
#[test]
fn clients_that_vanish_right_after_hello_give_every_slot_back() {
    let d = Daemon::start(&["--max-sessions", "2", "--warm", "2", "--rate", "200"]);
    let base = idle_baseline(&d);
    let rt = runtime();
    rt.block_on(async {
        let script = "print('never seen')\n";
        for i in 0..40 {
            let mut c = Raw::connect(&d).await;
            let mut bytes = encode([hello(script.len() as u64)]);
            // Every other client leaves mid-upload instead.
            let sent = if i % 2 == 0 { script.len() } else { 3 };
            bytes.extend(encode([Frame::Script(Bytes::copy_from_slice(
                &script.as_bytes()[..sent],
            ))]));
            c.send_bytes(&bytes).await.unwrap();
            c.reset_on_close();
            drop(c);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // `running` back to 0, every session accounted for, the pool back to its size.
    assert_back_to_idle(&d, base, "40 resets right after HELLO");
    assert_healthy(&d);

    // A queued session whose turn comes as it leaves: one holder, one waiting; the holder
    // ends and the waiting one resets at once, with a few different gaps.
    rt.block_on(async {
        for gap_ms in [0u64, 1, 2, 5, 10, 20] {
            let hold = "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n";
            let mut holder = Raw::connect(&d).await;
            holder.hello(hold.len() as u64, hold.as_bytes()).await;
            holder
                .stdout_until(b"ready\n", Duration::from_secs(15))
                .await;
            let mut second = Raw::connect(&d).await;
            second.hello(hold.len() as u64, hold.as_bytes()).await;
            second
                .stdout_until(b"ready\n", Duration::from_secs(15))
                .await;
            let mut waiting = Raw::connect(&d).await;
            waiting.run("print('x')\n").await;
            loop {
                match waiting.next(Duration::from_secs(10)).await {
                    Got::Frame(Frame::Queued(_)) => break,
                    Got::Frame(_) => {}
                    other => panic!("{other:?}"),
                }
            }
            holder.send(Frame::StdinEof).await;
            tokio::time::sleep(Duration::from_millis(gap_ms)).await;
            waiting.reset_on_close();
            drop(waiting);
            let (_, end) = holder.until_end(Duration::from_secs(10)).await;
            assert_end(&end, EndReason::Exited, 0, "the holder");
            second.send(Frame::StdinEof).await;
            let (_, end) = second.until_end(Duration::from_secs(10)).await;
            assert_end(&end, EndReason::Exited, 0, "the second holder");
        }
    });
    assert_back_to_idle(&d, base, "queued sessions that left as their turn came");
    assert_healthy(&d);
    d.stop();
}

/// Issue 9, hole 2: a script that ignores SIGUSR1 while its client sends 20,000 SIGNAL
/// frames (100 KB). Each was a Docker kill request, all in flight at once: 7,537
/// descriptors, 339 MB, another client's hello 31.7 s. Now at most one request is in
/// flight per session, repeats are merged, and frames over the rate are dropped and
/// counted (protocol §7).
#[test]
fn a_signal_flood_costs_one_request_at_a_time_and_is_rate_limited() {
    let d = Daemon::start(&["--metrics-listen", "127.0.0.1:0", "--max-sessions", "2"]);
    let base = idle_baseline(&d);
    let script = "import signal, sys, time\n\
                  got = 0\n\
                  def on_usr1(*_):\n    global got\n    got += 1\n\
                  signal.signal(signal.SIGUSR1, on_usr1)\n\
                  print('ready', flush=True)\n\
                  sys.stdin.read()\n\
                  time.sleep(0.5)\n\
                  print('got', got)\n";
    const FLOOD: usize = 20_000;
    let peak = FdPeak::watch(d.pid());
    let started = Instant::now();
    let (stdout, end) = runtime().block_on(async {
        let mut c = Raw::connect(&d).await;
        c.hello(script.len() as u64, script.as_bytes()).await;
        let (mut out, _) = c.stdout_until(b"ready\n", Duration::from_secs(15)).await;
        let flood = encode(std::iter::repeat_n(Frame::Signal(10), FLOOD));
        assert_eq!(flood.len(), FLOOD * 6);
        c.send_bytes(&flood).await.unwrap();
        // Another client is served while the flood is handled.
        let other = d.run("print('hello, world')\n", &[], b"");
        assert_eq!(stdout_str(&other), "hello, world\n", "{}", d.log());
        c.send(Frame::StdinEof).await;
        let (frames, end) = c.until_end(Duration::from_secs(30)).await;
        for f in frames {
            if let Frame::Stdout(b) = f {
                out.extend_from_slice(&b);
            }
        }
        (String::from_utf8_lossy(&out).into_owned(), end)
    });
    let elapsed = started.elapsed();
    let peak = peak.finish();
    assert_end(&end, EndReason::Exited, 0, "the flooded script");
    let got: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("got "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {stdout:?}"));
    // A burst of 10, then 5 a second (one more for the tick in progress).
    let allowed = 10 + 5 * elapsed.as_secs() + 6;
    assert!(
        (1..=allowed).contains(&got),
        "the script got {got} SIGUSR1 in {elapsed:?}; at most {allowed} may pass"
    );
    assert!(
        peak < base + 40,
        "the daemon held {peak} descriptors during the flood, {base} idle"
    );
    let dropped = metrics(&d).get("pyexec_signals_dropped_total") as u64;
    assert!(
        dropped + allowed >= FLOOD as u64 && dropped < FLOOD as u64,
        "{dropped} of {FLOOD} SIGNAL frames counted as dropped"
    );
    eprintln!(
        "signal flood: {got} delivered, {dropped} dropped, fd peak {peak} (idle {base}), {elapsed:?}"
    );
    assert_back_to_idle(&d, base, "after the signal flood");
    assert_healthy(&d);
    d.stop();
}

/// Issue 9, hole 4: four queued sessions each send their whole stdin window as 262,144
/// one-byte STDIN frames. Queued one message per frame, that held about 10 MiB per
/// session; merged into one buffer, a session holds its window plus a constant.
#[test]
fn stdin_as_one_byte_frames_costs_the_window_not_a_message_per_frame() {
    let d = Daemon::start(&["--max-sessions", "1", "--warm", "1"]);
    let base = idle_baseline(&d);
    const WINDOW: usize = 256 * 1024;
    const SESSIONS: usize = 4;
    let status_in = |d: &Daemon| status(d).bytes_in;
    let rt = runtime();
    rt.block_on(async {
        let hold = "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n";
        let mut holder = Raw::connect(&d).await;
        holder.hello(hold.len() as u64, hold.as_bytes()).await;
        holder
            .stdout_until(b"ready\n", Duration::from_secs(15))
            .await;
        let before_in = status_in(&d);
        let rss_before = vm_rss_kib(d.pid()).expect("the daemon runs");
        let script = "import sys\nprint(len(sys.stdin.buffer.read()))\n";
        let flood = encode(std::iter::repeat_n(
            Frame::Stdin(Bytes::from_static(b"a")),
            WINDOW,
        ));
        let mut queued = Vec::new();
        for _ in 0..SESSIONS {
            let mut c = Raw::connect(&d).await;
            c.hello(script.len() as u64, script.as_bytes()).await;
            c.send_bytes(&flood).await.unwrap();
            queued.push(c);
        }
        // Every byte has been taken in by its session (the count is per frame decoded).
        let want = before_in + (SESSIONS * (WINDOW + script.len())) as u64;
        assert!(
            wait_until(Duration::from_secs(30), || status_in(&d) >= want),
            "the daemon did not take in the {SESSIONS} windows: {} of {want}",
            status_in(&d)
        );
        let grown = vm_rss_kib(d.pid())
            .expect("the daemon runs")
            .saturating_sub(rss_before);
        eprintln!("{SESSIONS} windows of one-byte frames: RSS grew by {grown} KiB");
        // Their windows are 1 MiB together; the old queue held ~40 MiB.
        assert!(
            grown < 12 * 1024,
            "RSS grew by {grown} KiB for {SESSIONS} queued windows of one-byte frames"
        );
        // Nothing was lost on the way: each script gets its whole window.
        holder.send(Frame::StdinEof).await;
        let (_, end) = holder.until_end(Duration::from_secs(10)).await;
        assert_end(&end, EndReason::Exited, 0, "the holder");
        for mut c in queued {
            c.send(Frame::StdinEof).await;
            let (frames, end) = c.until_end(Duration::from_secs(30)).await;
            assert_end(&end, EndReason::Exited, 0, "a queued session");
            let out: Vec<u8> = frames
                .into_iter()
                .filter_map(|f| match f {
                    Frame::Stdout(b) => Some(b.to_vec()),
                    _ => None,
                })
                .flatten()
                .collect();
            assert_eq!(String::from_utf8_lossy(&out), format!("{WINDOW}\n"));
        }
    });
    assert_back_to_idle(&d, base, "after the one-byte stdin windows");
    d.stop();
}

/// One byte over the window is still refused, whatever the frame sizes.
#[test]
fn one_byte_over_the_stdin_window_is_a_protocol_error() {
    let d = Daemon::start(&[]);
    runtime().block_on(async {
        let script = "import time\ntime.sleep(30)\n";
        let mut c = Raw::connect(&d).await;
        c.hello(script.len() as u64, script.as_bytes()).await;
        let mut frames: Vec<Frame> = (0..1024)
            .map(|_| Frame::Stdin(Bytes::from_static(&[b'a'; 256])))
            .collect();
        frames.push(Frame::Stdin(Bytes::from_static(b"!")));
        c.send_bytes(&encode(frames)).await.unwrap();
        let (_, end) = c.until_end(Duration::from_secs(15)).await;
        assert_error(&end, ErrorCode::Protocol, "STDIN window", "window + 1");
    });
    assert_healthy(&d);
    d.stop();
}

/// Found by reading: the metrics listener had no cap on connections, each of which may
/// live 5 s. A flood of idle ones now costs at most `MAX_CONNECTIONS` descriptors, and a
/// scrape after the flood is answered.
#[test]
fn a_flood_of_idle_metrics_connections_is_capped() {
    let d = Daemon::start(&["--metrics-listen", "127.0.0.1:0"]);
    let base = idle_baseline(&d);
    let addr = metrics_addr(&d);
    let mut idle = Vec::new();
    for _ in 0..300 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(b"GET /metr"); // never finished
        idle.push(s);
    }
    // Give the daemon time to accept them all: it takes each, and closes past the cap.
    // Its debug log is the only count of these refusals (pyexec_connections_refused_total
    // counts the session listener's).
    assert!(wait_until(Duration::from_secs(5), || {
        d.log().matches("metrics connection refused").count() >= 300 - 16 - 2
    }));
    let held = fd_count(d.pid());
    assert!(
        held <= base + pyexec::metrics::MAX_CONNECTIONS + 2,
        "the daemon holds {held} descriptors with 300 idle metrics connections, {base} idle"
    );
    drop(idle);
    let page = http_get(&addr, "/metrics");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert_fds_settle(&d, base, "after the metrics flood");
    assert_healthy(&d);
    d.stop();
}
