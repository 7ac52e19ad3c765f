//! Test harness: starts the real `pyexecd` on a free port against the real Docker Engine,
//! with real TLS material, and drives it with the real `pyexec` binary.
//!
//! Every daemon gets its own instance name, so its containers carry their own label; the
//! harness removes whatever carries that label when the daemon is dropped, even when the
//! test failed, and the tests that check for leaks look at that label only.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

pub mod raw;

pub const PYEXECD: &str = env!("CARGO_BIN_EXE_pyexecd");
/// `pyexec` belongs to the `pyexec-client` package, so Cargo defines no
/// `CARGO_BIN_EXE_pyexec` for these tests: it is the file beside `pyexecd`, in the same
/// target directory and profile. `cargo build` at the root builds both (both packages
/// are default members), and so does a `cargo test` or `cargo nextest run` of the whole
/// workspace (for the client's own integration tests); `scripts/test` builds both first.
pub const PYEXEC: &str = beside_pyexecd();

/// `PYEXECD` without its final `d`: `.../target/debug/pyexec`.
const fn beside_pyexecd() -> &'static str {
    let (path, d) = PYEXECD.as_bytes().split_at(PYEXECD.len() - 1);
    assert!(d[0] == b'd', "CARGO_BIN_EXE_pyexecd ends with pyexecd");
    match std::str::from_utf8(path) {
        Ok(path) => path,
        Err(_) => panic!("CARGO_BIN_EXE_pyexecd is UTF-8"),
    }
}

/// Builds the default sandbox image once per test process (quick when it exists; the
/// build itself takes a lock, so parallel test processes do not build twice).
pub fn ensure_image() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let out = Command::new(PYEXECD)
            .arg("build-image")
            .output()
            .expect("run pyexecd build-image");
        assert!(
            out.status.success(),
            "pyexecd build-image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A fresh instance name, for tests that must know it before the daemon starts.
pub fn unique_instance() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running `pyexecd` and everything a test needs to talk to it.
pub struct Daemon {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub instance: String,
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn start(extra: &[&str]) -> Daemon {
        Self::start_as(&unique_instance(), extra)
    }

    /// Starts a daemon with a given instance name (see `unique_instance`).
    pub fn start_as(instance: &str, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        pyexec::certs::generate(dir.path(), &[], false).unwrap();
        Self::start_in(dir, instance, extra)
    }

    /// Starts a daemon with the given instance name and TLS material in `dir`. Unless the
    /// test sets `--warm`, the pool holds one container: dozens of daemons each warming a
    /// full pool at once would slow two cores down for nothing.
    pub fn start_in(dir: tempfile::TempDir, instance: &str, extra: &[&str]) -> Daemon {
        Self::start_with_env(dir, instance, extra, &[])
    }

    /// `start_in` with extra environment variables for the daemon (e.g. `DOCKER_HOST`).
    pub fn start_with_env(
        dir: tempfile::TempDir,
        instance: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Daemon {
        ensure_image();
        let warm: &[&str] = if extra.contains(&"--warm") {
            &[]
        } else {
            &["--warm", "1"]
        };
        let mut child = Command::new(PYEXECD)
            .args(["--listen", "127.0.0.1:0", "--instance", instance])
            .args(warm)
            .envs(envs.iter().copied())
            .arg("--cert")
            .arg(dir.path().join("server.pem"))
            .arg("--key")
            .arg(dir.path().join("server.key"))
            .args(extra)
            .env("RUST_LOG", "info,pyexec=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pyexecd");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let addr = match first.trim().strip_prefix("listening on ") {
            Some(a) => a.parse().unwrap(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                thread::sleep(Duration::from_millis(100));
                panic!("pyexecd did not start: {first:?}\n{}", log.lock().unwrap());
            }
        };
        Daemon {
            child: Some(child),
            addr,
            instance: instance.to_string(),
            dir,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn client_config(&self) -> pyexec::client::ClientConfig {
        pyexec::client::ClientConfig::new(self.addr.to_string(), self.ca())
    }

    /// A `pyexec` command aimed at this daemon, running `script` (written to a file).
    pub fn pyexec(&self, script: &str) -> Command {
        let path = self.script_file(script);
        let mut cmd = Command::new(PYEXEC);
        cmd.arg("--server")
            .arg(self.addr.to_string())
            .arg("--ca")
            .arg(self.ca())
            .arg(path);
        cmd
    }

    /// Starts `pyexec` on `PRINT_CID` followed by `script`, with stdin, stdout and stderr
    /// piped, and waits for the container-ID line: the client, a watcher on its stdout
    /// (that line included), and the ID of the container running the script.
    pub fn spawn_with_cid(&self, script: &str) -> (Child, OutputWatcher, String) {
        let mut child = self
            .pyexec(&format!("{PRINT_CID}{script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = OutputWatcher::stdout(&mut child);
        assert!(
            out.wait_for(b"\n", Duration::from_secs(15)),
            "no container-ID line within 15 s\n{}",
            self.log()
        );
        let cid = cid_of(&out.seen);
        (child, out, cid)
    }

    /// Writes a script into the daemon's scratch directory and returns its path.
    pub fn script_file(&self, script: &str) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = self
            .dir
            .path()
            .join(format!("script{}.py", NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&path, script).unwrap();
        path
    }

    /// Runs `script` with `args`, feeding `stdin` and closing it.
    pub fn run(&self, script: &str, args: &[&str], stdin: &[u8]) -> Output {
        output_with_stdin(self.pyexec(script).args(args), stdin)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle`; false after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// IDs of the containers (any state) this daemon's instance owns right now.
    pub fn containers(&self) -> Vec<String> {
        containers_of(&self.instance)
    }

    /// SIGTERM, wait for a clean exit, and check that nothing was left behind.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().unwrap();
        let status = wait_timeout(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("pyexecd did not exit after SIGTERM\n{}", self.log());
        });
        assert_eq!(
            self.containers(),
            Vec::<String>::new(),
            "containers left behind"
        );
        status
    }

    /// Kills the daemon with SIGKILL, leaving its containers where they are, and hands
    /// back its TLS directory and instance name so that a test can start it again.
    pub fn crash(mut self) -> (tempfile::TempDir, String) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        // The next daemon of this instance owns the leftovers now (and the test cleans up
        // through it); this one must not remove them on drop.
        let instance = std::mem::take(&mut self.instance);
        (dir, instance)
    }
}

impl Drop for Daemon {
    /// Runs when a test failed (a passing one calls `stop`): the daemon is asked to drain,
    /// which also finishes the container starts it has under way, and killed if it does
    /// not. Then whatever carries its label is removed, until nothing does: a start the
    /// Engine completes after the daemon died would otherwise leave a container behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if wait_timeout(&mut child, Duration::from_secs(20)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if !self.instance.is_empty() {
            let mut clean_looks = 0;
            let deadline = Instant::now() + Duration::from_secs(10);
            while clean_looks < 3 && Instant::now() < deadline {
                if containers_of(&self.instance).is_empty() {
                    clean_looks += 1;
                } else {
                    clean_looks = 0;
                    remove_containers_of(&self.instance);
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

pub fn containers_of(instance: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("label=pyexec.instance={instance}"))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn remove_containers_of(instance: &str) {
    let ids = containers_of(instance);
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .arg("rm")
            .arg("-f")
            .args(&ids)
            .output();
    }
}

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

/// A plain HTTP/1.1 GET (the metrics endpoint); the whole response, headers included.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

pub fn stdout_str(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_str(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---- Helpers for the hostile battery (tests/hostile_*.rs) ----

/// Number of file descriptors `pid` has open right now (entries of /proc/<pid>/fd).
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// The resident set size of `pid` in KiB (VmRSS in /proc/<pid>/status).
pub fn vm_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Waits until the daemon has at most `baseline` descriptors open; on failure the
/// message lists what is open, for the report.
pub fn assert_fds_settle(d: &Daemon, baseline: usize, what: &str) {
    let settled = wait_until(Duration::from_secs(10), || fd_count(d.pid()) <= baseline);
    if !settled {
        let open: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| {
                        let target = std::fs::read_link(e.path()).unwrap_or_default();
                        format!(
                            "{} -> {}",
                            e.file_name().to_string_lossy(),
                            target.display()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        panic!(
            "{what}: the daemon holds {} descriptors, {baseline} before:\n{}\n{}",
            fd_count(d.pid()),
            open.join("\n"),
            d.log()
        );
    }
}

/// The daemon still serves: a hello-world right now succeeds, byte for byte. The daemon's
/// warnings so far go to the test's stderr (shown when a test fails, or with
/// `--success-output`).
pub fn assert_healthy(d: &Daemon) {
    for line in d.log().lines() {
        if line.contains(" WARN ") || line.contains(" ERROR ") {
            eprintln!("daemon: {line}");
        }
    }
    let out = d.run("print('hello, world')\n", &[], b"");
    assert_eq!(
        (
            out.status.code(),
            stdout_str(&out).as_str(),
            stderr_str(&out).as_str()
        ),
        (Some(0), "hello, world\n", ""),
        "hello-world after the hostile case\n{}",
        d.log()
    );
}

/// Python that prints `cid <container id>` as the script's first line: the ID as Docker
/// knows it, read from the container's own mount table, so that a test can check that
/// this very container is gone (a warm pool keeps others around).
pub const PRINT_CID: &str = "import re as _re\nprint('cid', _re.search(r'/containers/([0-9a-f]{64})/', open('/proc/self/mountinfo').read()).group(1), flush=True)\n";

/// The container ID from output that starts with `PRINT_CID`'s line.
pub fn cid_of(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let line = text.lines().next().unwrap_or_default();
    let id = line
        .strip_prefix("cid ")
        .unwrap_or_else(|| panic!("no container ID line in {:?}", &text[..text.len().min(200)]));
    assert_eq!(id.len(), 64, "container ID {id:?}");
    id.to_string()
}

/// Whether a container with this full ID is listed by Docker (in any state).
pub fn container_listed(id: &str) -> bool {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("id={id}"))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == id)
}

/// Waits until the container `id` no longer exists.
pub fn assert_container_gone(id: &str, timeout: Duration) {
    assert!(
        wait_until(timeout, || !container_listed(id)),
        "container {id} still exists {timeout:?} later"
    );
}

/// How many warm containers the daemon keeps (`warm=N` in its "listening" line; 0 when
/// the daemon has no pool).
pub fn warm_target(d: &Daemon) -> usize {
    // The log is read on a thread of its own: the line may lag behind the start.
    assert!(d.wait_log(" listening", Duration::from_secs(10)));
    let log = d.log();
    log.lines()
        .find(|l| l.contains(" listening"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("warm=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Waits until the daemon is idle (as many containers as its warm pool holds, and a
/// descriptor count that no longer moves) and returns that descriptor count: the
/// baseline a leak check compares against.
pub fn idle_baseline(d: &Daemon) -> usize {
    let warm = warm_target(d);
    assert!(
        wait_until(Duration::from_secs(30), || d.containers().len() == warm),
        "the daemon did not settle to {warm} containers: {:?}",
        d.containers()
    );
    let mut last = fd_count(d.pid());
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && stable_since.elapsed() < Duration::from_millis(500) {
        thread::sleep(Duration::from_millis(50));
        let now = fd_count(d.pid());
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    last
}

/// Waits for the daemon to be back to idle after a group of sessions: its containers
/// back to the warm pool's size and its descriptors back to `baseline`.
pub fn assert_back_to_idle(d: &Daemon, baseline: usize, what: &str) {
    let warm = warm_target(d);
    assert!(
        wait_until(Duration::from_secs(15), || d.containers().len() == warm),
        "{what}: {} containers, the warm pool holds {warm}\n{}",
        d.containers().len(),
        d.log()
    );
    assert_fds_settle(d, baseline, what);
    assert_no_session_left(d, what);
}

/// Waits for a log line of session `id` that contains `needle`.
pub fn wait_session_log(d: &Daemon, id: &str, needle: &str, timeout: Duration) -> bool {
    let tag = format!("session{{id={id} ");
    wait_until(timeout, || {
        d.log()
            .lines()
            .any(|l| l.contains(&tag) && l.contains(needle))
    })
}

/// Waits until the warm pool holds started containers (a session then does not pay for
/// a container start inside a short time limit).
pub fn wait_pool_ready(d: &Daemon) {
    let warm = warm_target(d);
    assert!(
        wait_until(Duration::from_secs(30), || d
            .log()
            .matches("container started")
            .count()
            >= warm),
        "the warm pool did not fill\n{}",
        d.log()
    );
}

/// Asks the daemon for a status snapshot (SIGUSR1) and returns that log line.
pub fn status_line(d: &Daemon) -> String {
    let count = |log: &str| log.matches("status: uptime=").count();
    let before = count(&d.log());
    d.signal(libc::SIGUSR1);
    assert!(
        wait_until(Duration::from_secs(5), || count(&d.log()) > before),
        "no status line after SIGUSR1"
    );
    let log = d.log();
    log.lines()
        .rfind(|l| l.contains("status: uptime="))
        .unwrap()
        .to_string()
}

/// The daemon's own account: every session it accepted has ended (its actor reported
/// its outcome), and none is running or queued.
pub fn assert_no_session_left(d: &Daemon, what: &str) {
    let number = |line: &str, key: &str| -> Option<u64> {
        let rest = line.split(&format!(" {key}=")).nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let settled = |line: &str| {
        let finished: Option<u64> = line
            .split(" finished=[")
            .nth(1)
            .and_then(|r| r.split(']').next())
            .map(|list| {
                list.split(',')
                    .filter_map(|kv| kv.split('=').nth(1)?.parse::<u64>().ok())
                    .sum()
            });
        matches!(
            (number(line, "accepted"), finished, number(line, "running"), number(line, "queued")),
            (Some(a), Some(f), Some(0), Some(0)) if a == f
        )
    };
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        last = status_line(d);
        settled(&last)
    });
    assert!(
        ok,
        "{what}: sessions still live in the daemon's account: {last}"
    );
}

// ---- Helpers for the load tests (tests/load.rs) ----

impl Daemon {
    /// Waits for the daemon to exit by itself (after a signal the test sent), without
    /// signalling it again as `stop` does (a second SIGTERM would end the drain at once),
    /// and checks that nothing was left behind.
    pub fn wait_exit(mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let status = wait_timeout(&mut child, timeout).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pyexecd did not exit within {timeout:?}\n{}", self.log());
        });
        assert_eq!(
            self.containers(),
            Vec::<String>::new(),
            "containers left behind\n{}",
            self.log()
        );
        status
    }
}

/// The resident set size of `pid` in KiB, or `None` once the process is gone.
pub fn try_vm_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The figures of a SIGUSR1 status line (`status_line`) that a test counts with.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StatusFigures {
    pub accepted: u64,
    pub running: u64,
    pub queued: u64,
    pub warm: u64,
    pub warm_hits: u64,
    pub warm_misses: u64,
    pub busy: u64,
    /// `finished=[exited=3,error_busy=2]` as pairs, in the line's order.
    pub finished: Vec<(String, u64)>,
}

impl StatusFigures {
    pub fn parse(line: &str) -> StatusFigures {
        let number = |key: &str| -> u64 {
            line.split(&format!(" {key}="))
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {key}= in the status line: {line}"))
        };
        let finished = line
            .split(" finished=[")
            .nth(1)
            .and_then(|r| r.split(']').next())
            .unwrap_or_else(|| panic!("no finished=[...] in the status line: {line}"))
            .split(',')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("key=value");
                (k.to_string(), v.parse().expect("a count"))
            })
            .collect();
        StatusFigures {
            accepted: number("accepted"),
            running: number("running"),
            queued: number("queued"),
            warm: number("warm"),
            warm_hits: number("warm_hits"),
            warm_misses: number("warm_misses"),
            busy: number("busy"),
            finished,
        }
    }

    /// How many sessions ended with this outcome label (`exited`, `error_busy`, ...).
    pub fn finished(&self, label: &str) -> u64 {
        self.finished
            .iter()
            .filter(|(k, _)| k == label)
            .map(|(_, v)| v)
            .sum()
    }

    pub fn finished_total(&self) -> u64 {
        self.finished.iter().map(|(_, v)| v).sum()
    }
}
