//! Child processes and what `/proc` says about them: waiting with a deadline, watching a
//! client's output as it comes, feeding stdin, and a process's descriptors and memory.

use std::io::{Read, Write};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` until it holds or `timeout` passes. For conditions that have no event
/// to wait on (a container disappearing from `docker ps`).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Reads a child's stdout on a thread and hands over bytes as they arrive, so a test can
/// wait for a given output (a prompt) before it acts.
pub struct OutputWatcher {
    rx: mpsc::Receiver<Vec<u8>>,
    pub seen: Vec<u8>,
}

impl OutputWatcher {
    pub fn new(mut out: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        OutputWatcher {
            rx,
            seen: Vec::new(),
        }
    }

    pub fn stdout(child: &mut Child) -> Self {
        let out: ChildStdout = child.stdout.take().unwrap();
        Self::new(out)
    }

    /// Waits until the output so far ends with... contains `needle`.
    pub fn wait_for(&mut self, needle: &[u8], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.seen.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(_) => return false,
            }
        }
    }

    /// Everything until the stream ends.
    pub fn rest(mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(_) => return self.seen,
            }
        }
    }
}

/// Spawns `cmd` (a `pyexec` whose script prints `ready` once it runs) with stdin and
/// stdout piped, and returns once `ready` has arrived: the client and a watcher on its
/// stdout.
pub fn spawn_ready(cmd: &mut Command) -> (Child, OutputWatcher) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = OutputWatcher::stdout(&mut child);
    assert!(
        out.wait_for(b"ready\n", Duration::from_secs(15)),
        "the script did not say ready within 15 s: {:?}",
        String::from_utf8_lossy(&out.seen)
    );
    (child, out)
}

/// Runs `cmd` with `stdin` fed to it (from a thread, so that a child that writes before it
/// reads cannot deadlock) and its stdout and stderr collected.
pub fn output_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

/// All of a piped child's stderr, read to its end (call it once the child has ended).
pub fn take_stderr(child: &mut Child) -> String {
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_string(&mut err)
        .unwrap();
    err
}

pub fn stdout_str(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_str(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Number of file descriptors `pid` has open right now (entries of /proc/<pid>/fd).
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// The resident set size of `pid` in KiB (VmRSS in /proc/<pid>/status), or `None` once
/// the process is gone.
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
