//! Load: hundreds of sessions from dozens of concurrent clients through the real `pyexec`
//! binary, against the real daemon and Docker Engine; and a SIGTERM while every slot and
//! queue place is taken.
//!
//! Under load every session must either complete exactly as it would alone (its own
//! stdout, stderr and exit status, proven by a token unique to it) or be refused as busy;
//! nothing may be lost, mixed up or left behind. The figures are printed (run with
//! `--no-capture` or `--success-output immediate` to see them); docs/security.md quotes
//! them.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::io::{Read, Write};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{daemon::*, figures::*, idle::*, processes::*};

/// Sessions in the load run, and the client threads that run them.
const SESSIONS: usize = 500;
const CLIENTS: usize = 50;
/// Slots and queue places: 4 + 16 = 20 sessions in the daemon at most, so that with 50
/// clients some are always refused as busy.
const MAX_SESSIONS: &str = "4";
const MAX_QUEUE: &str = "16";
/// What a refused client waits before its next session, as "try again later" asks: an
/// exponential back-off with jitter, from 1 s to 8 s, reset by a session that ran. (Without
/// it, refused clients would spin through the sessions in seconds and few would run.)
const BUSY_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(8));
/// A client that takes longer than this has hung (the session timeout is 60 s).
const CLIENT_DEADLINE: Duration = Duration::from_secs(90);

/// Prints a token unique to its session (index and nonce from argv), echoes its stdin in
/// a form derived from it, writes a line of its own to stderr, exits with index % 7.
const ECHO: &str = r#"import sys
i, nonce = sys.argv[1], sys.argv[2]
print('token', i, nonce, flush=True)
data = sys.stdin.read()
print('echo', i, len(data), data.upper(), end='')
sys.stderr.write('stderr %s %s\n' % (i, nonce[::-1]))
sys.exit(int(i) % 7)
"#;

/// A fresh random token, hex.
fn nonce() -> String {
    pyexec::bootstrap::new_nonce()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What one session must produce: stdin to send, then stdout, stderr and status.
struct Expected {
    stdin: String,
    stdout: String,
    stderr: String,
    code: i32,
}

fn expected(i: usize, nonce: &str) -> Expected {
    let stdin = format!("input {i} {nonce}\n");
    Expected {
        stdout: format!(
            "token {i} {nonce}\necho {i} {} {}",
            stdin.len(),
            stdin.to_uppercase()
        ),
        stderr: format!("stderr {i} {}\n", nonce.chars().rev().collect::<String>()),
        code: (i % 7) as i32,
        stdin,
    }
}

#[derive(Debug)]
enum Outcome {
    Completed,
    Busy,
    Error(String),
}

/// Waits for a client's output, killing it if it takes longer than `deadline`.
fn output_within(mut child: Child, deadline: Duration) -> Result<Output, String> {
    let reader = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = reader(Box::new(child.stdout.take().unwrap()));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    let status = wait_timeout(&mut child, deadline);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "the client hung for {deadline:?}; stdout {:?}, stderr {:?}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}

/// Runs session `i` through the real `pyexec` and classifies what it gave.
fn run_session(d: &Daemon, i: usize) -> Outcome {
    let nonce = nonce();
    let want = expected(i, &nonce);
    let mut child = d
        .pyexec(ECHO)
        .arg(i.to_string())
        .arg(&nonce)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pyexec");
    // A few dozen bytes: the pipe takes them at once, whether or not pyexec reads yet.
    // A refused client may have exited already: a broken pipe is then expected.
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(want.stdin.as_bytes());
    drop(stdin);
    let out = match output_within(child, CLIENT_DEADLINE) {
        Ok(out) => out,
        Err(why) => return Outcome::Error(format!("session {i}: {why}")),
    };
    let (code, stdout, stderr) = (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if code == Some(want.code) && stdout == want.stdout && stderr == want.stderr {
        return Outcome::Completed;
    }
    if code == Some(125)
        && stdout.is_empty()
        && stderr.starts_with("pyexec: server busy")
        && stderr.ends_with('\n')
        && stderr.lines().count() == 1
    {
        return Outcome::Busy;
    }
    Outcome::Error(format!(
        "session {i}: status {code:?} (want {}), stdout {stdout:?} (want {:?}), stderr {stderr:?} (want {:?})",
        want.code, want.stdout, want.stderr
    ))
}

/// Samples the daemon's VmRSS every 50 ms on a thread; `stop` returns the peak in KiB.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(u64, usize)>,
}

impl RssSampler {
    fn start(pid: i32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let (mut peak, mut samples) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                if let Some(kib) = vm_rss_kib(pid) {
                    peak = peak.max(kib);
                    samples += 1;
                }
                thread::sleep(Duration::from_millis(50));
            }
            (peak, samples)
        });
        RssSampler { stop, handle }
    }

    /// The peak RSS seen (KiB) and how many samples it was taken from.
    fn stop(self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// CPU time `pid` has used so far (user plus system), from /proc/<pid>/stat.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses: state is the first,
    // utime the 12th and stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[test]
fn five_hundred_sessions_from_fifty_clients_are_each_exact_or_busy() {
    let d = Daemon::start(&[
        "--max-sessions",
        MAX_SESSIONS,
        "--max-queue",
        MAX_QUEUE,
        // The daemon's own default (every free slot warm); the harness would otherwise
        // keep one spare only.
        "--warm",
        MAX_SESSIONS,
    ]);
    let warm = warm_target(&d);
    let base_fds = idle_baseline(&d);
    wait_pool_ready(&d);
    let base_rss = vm_rss_kib(d.pid()).expect("the daemon runs");
    let sampler = RssSampler::start(d.pid());
    let cpu_before = cpu_time(d.pid());

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Outcome, Duration)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    thread::scope(|scope| {
        for _ in 0..CLIENTS {
            scope.spawn(|| {
                let mut backoff = BUSY_BACKOFF.0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= SESSIONS {
                        break;
                    }
                    let t = Instant::now();
                    let outcome = run_session(&d, i);
                    let took = t.elapsed();
                    let busy = matches!(outcome, Outcome::Busy);
                    results.lock().unwrap().push((i, outcome, took));
                    if busy {
                        let jitter =
                            0.75 + 0.5 * f64::from(pyexec::bootstrap::new_nonce()[0]) / 255.0;
                        thread::sleep(backoff.mul_f64(jitter));
                        backoff = (backoff * 2).min(BUSY_BACKOFF.1);
                    } else {
                        backoff = BUSY_BACKOFF.0;
                    }
                }
            });
        }
    });
    let wall = started.elapsed();
    let cpu = cpu_time(d.pid()) - cpu_before;

    // Back to idle: the warm pool's containers only, the descriptors of before, and no
    // session live in the daemon's own account.
    let settled = wait_until(Duration::from_secs(30), || d.containers().len() == warm);
    let containers_left = d.containers().len().saturating_sub(warm);
    wait_until(Duration::from_secs(10), || fd_count(d.pid()) <= base_fds);
    let fds_left = fd_count(d.pid()).saturating_sub(base_fds);
    let mut status = StatusFigures::default();
    wait_until(Duration::from_secs(10), || {
        status = StatusFigures::parse(&status_line(&d));
        status.no_session_left()
    });
    let sessions_left = status.accepted.saturating_sub(status.finished_total());
    let (peak_rss, samples) = sampler.stop();
    let idle_rss = vm_rss_kib(d.pid()).expect("the daemon runs");

    let results = results.into_inner().unwrap();
    let mut seen = vec![0usize; SESSIONS];
    let (mut completed, mut busy, mut errors) = (0usize, 0usize, Vec::new());
    let mut latencies = Vec::new();
    for (i, outcome, took) in &results {
        seen[*i] += 1;
        match outcome {
            Outcome::Completed => {
                completed += 1;
                latencies.push(*took);
            }
            Outcome::Busy => busy += 1,
            Outcome::Error(why) => errors.push(why.clone()),
        }
    }
    latencies.sort();
    let leaks = containers_left + fds_left + sessions_left as usize;
    let warnings: Vec<String> = d
        .log()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect();
    eprintln!(
        "load: {SESSIONS} sessions from {CLIENTS} clients, --max-sessions {MAX_SESSIONS} \
         --max-queue {MAX_QUEUE} --warm {warm}, busy back-off {:?} doubling to {:?}, nproc {}\n\
         load: completed {completed}, busy refusals {busy}, errors {}, leaks {leaks} \
         (containers {containers_left}, fds {fds_left}, sessions {sessions_left})\n\
         load: wall {:.1} s, {:.2} sessions/s, {:.2} completed/s; completed session \
         latency p50 {} ms, p99 {} ms, max {} ms\n\
         load: daemon RSS {base_rss} KiB idle before, peak {peak_rss} KiB ({samples} samples \
         every 50 ms), {idle_rss} KiB idle after; daemon CPU {:.1} s; fds {base_fds} at idle\n\
         load: daemon status {status:?}\n\
         load: daemon warnings {}",
        BUSY_BACKOFF.0,
        BUSY_BACKOFF.1,
        thread::available_parallelism().map_or(0, |n| n.get()),
        errors.len(),
        wall.as_secs_f64(),
        SESSIONS as f64 / wall.as_secs_f64(),
        completed as f64 / wall.as_secs_f64(),
        percentile(&latencies, 0.5).as_millis(),
        percentile(&latencies, 0.99).as_millis(),
        latencies.last().copied().unwrap_or_default().as_millis(),
        cpu.as_secs_f64(),
        warnings.len(),
    );
    for w in warnings.iter().take(20) {
        eprintln!("daemon: {w}");
    }
    for e in errors.iter().take(20) {
        eprintln!("error: {e}");
    }

    assert!(
        errors.is_empty(),
        "{} sessions neither completed exactly nor were refused as busy; first: {}",
        errors.len(),
        errors[0]
    );
    assert!(
        seen.iter().all(|n| *n == 1),
        "every session ran exactly once"
    );
    assert_eq!(completed + busy, SESSIONS, "none lost");
    assert!(completed > 0, "some sessions ran");
    assert!(
        busy > 0,
        "with {CLIENTS} clients for 20 places, some were refused"
    );
    assert!(
        settled && containers_left == 0,
        "{containers_left} containers beyond the warm pool of {warm}: {:?}",
        d.containers()
    );
    assert_fds_settle(&d, base_fds, "after the load run");
    // The daemon's account agrees with the clients': one accepted session per client,
    // each finished, as exited or busy, and nothing else.
    assert_eq!(
        (
            status.accepted,
            status.running,
            status.queued,
            status.finished("exited") as usize,
            status.busy as usize,
            status.finished_total()
        ),
        (SESSIONS as u64, 0, 0, completed, busy, SESSIONS as u64),
        "the daemon's account: {status:?}"
    );
    assert_healthy(&d);
    d.stop();
}

#[test]
fn sigterm_under_load_ends_every_connected_client_with_shutdown() {
    let d = Daemon::start(&[
        "--max-sessions",
        "2",
        "--max-queue",
        "10",
        "--shutdown-grace",
        "1",
    ]);
    const N: usize = 12;
    // Takes longer than the grace, so every running one must be ended by the drain.
    let script = "import time\nprint('ready', flush=True)\ntime.sleep(30)\n";
    let mut clients: Vec<(Child, OutputWatcher)> = (0..N)
        .map(|_| {
            let mut child = d
                .pyexec(script)
                .stdin(Stdio::piped()) // held open until the end
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let out = OutputWatcher::stdout(&mut child);
            (child, out)
        })
        .collect();

    // Evidence that every client is in: two scripts have printed their ready line, and
    // the daemon counts two running and ten queued.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = [false; N];
    while ready.iter().filter(|r| **r).count() < 2 {
        assert!(
            Instant::now() < deadline,
            "two scripts did not start\n{}",
            d.log()
        );
        for (r, (_, out)) in ready.iter_mut().zip(clients.iter_mut()) {
            *r = *r || out.wait_for(b"ready\n", Duration::from_millis(20));
        }
    }
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            last = status_line(&d);
            let s = StatusFigures::parse(&last);
            (s.running, s.queued) == (2, 10)
        }),
        "not two running and ten queued: {last}\n{}",
        d.log()
    );

    d.signal(libc::SIGTERM);
    let sent = Instant::now();
    let mut ended = Vec::new();
    for (i, (mut child, out)) in clients.drain(..).enumerate() {
        let status = wait_timeout(&mut child, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("client {i} did not end after SIGTERM\n{}", d.log()));
        let took = sent.elapsed();
        let err = take_stderr(&mut child);
        let seen = out.rest(Duration::from_secs(2));
        ended.push((i, status.code(), err, seen, took));
    }
    for (i, code, err, seen, took) in &ended {
        assert_eq!(*code, Some(143), "client {i}: {err}");
        assert_eq!(err, "pyexec: the server is shutting down\n", "client {i}");
        let expect_out: &[u8] = if ready[*i] { b"ready\n" } else { b"" };
        assert_eq!(seen, expect_out, "client {i}");
        if ready[*i] {
            // Running ones were given the grace (ended by the drain, not before it).
            assert!(
                *took >= Duration::from_millis(900),
                "client {i} (running) ended {took:?} after SIGTERM, within a 1 s grace"
            );
        }
    }
    let status = d.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "pyexecd exits 0 after the drain");
    eprintln!(
        "sigterm: {} clients ended with 143; the last {:?} after SIGTERM",
        ended.len(),
        ended.iter().map(|e| e.4).max().unwrap_or_default()
    );
}
