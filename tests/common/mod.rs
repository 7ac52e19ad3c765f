//! Test harness: starts the real `pyexecd` on a free port against the real Docker Engine,
//! with real TLS material, and drives it with the real `pyexec` binary.
//!
//! Every daemon gets its own instance name, so its containers carry their own label; the
//! harness removes whatever carries that label when the daemon is dropped, even when the
//! test failed, and the tests that check for leaks look at that label only.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

pub const PYEXECD: &str = env!("CARGO_BIN_EXE_pyexecd");
pub const PYEXEC: &str = env!("CARGO_BIN_EXE_pyexec");

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

fn unique_instance() -> String {
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
        let dir = tempfile::tempdir().unwrap();
        pyexec::certs::generate(dir.path(), &[], false).unwrap();
        Self::start_in(dir, &unique_instance(), extra)
    }

    /// Starts a daemon with the given instance name and TLS material in `dir`.
    pub fn start_in(dir: tempfile::TempDir, instance: &str, extra: &[&str]) -> Daemon {
        ensure_image();
        let mut child = Command::new(PYEXECD)
            .args(["--listen", "127.0.0.1:0", "--instance", instance])
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
        let mut child = self
            .pyexec(script)
            .args(args)
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
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.instance.is_empty() {
            remove_containers_of(&self.instance);
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

pub fn stdout_str(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_str(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
