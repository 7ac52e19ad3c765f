//! A running `pyexecd`: started on a free port with TLS material of its own, driven with
//! the real `pyexec`, stopped (or crashed) at the end, its containers removed even when
//! the test failed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use super::docker::{
    all_containers_of, cid_of, containers_of, remove_containers_of, volumes_of, PRINT_CID,
};
use super::processes::{output_with_stdin, wait_timeout, wait_until, OutputWatcher};
use super::{PYEXEC, PYEXECD};

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
    /// full pool at once would slow two cores down for nothing. Unless the test sets
    /// `--metrics-listen`, the daemon serves `/metrics` on a free port of its own: the
    /// harness reads the daemon's figures there (`figures.rs`), not in its log.
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
        let mut defaults = Vec::new();
        for (flag, value) in [("--warm", "1"), ("--metrics-listen", "127.0.0.1:0")] {
            if !extra.contains(&flag) {
                defaults.extend([flag, value]);
            }
        }
        let mut child = Command::new(PYEXECD)
            .args(["--listen", "127.0.0.1:0", "--instance", instance])
            .args(defaults)
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
        // The address the daemon chose for port 0: its one machine-readable stdout line is
        // the only place that says it.
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

    /// Everything the daemon has logged so far (its stderr).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle`; false after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }

    /// Waits for a log line of session `id` that contains `needle`. For what one session
    /// did (its refusal, its disconnect, its end reason): the figures count sessions, only
    /// the log says which one. Never for a figure (see `figures.rs`).
    pub fn wait_session_log(&self, id: &str, needle: &str, timeout: Duration) -> bool {
        let tag = format!("session{{id={id} ");
        wait_until(timeout, || {
            self.log()
                .lines()
                .any(|l| l.contains(&tag) && l.contains(needle))
        })
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
        self.assert_no_volumes_left();
        status
    }

    /// Every sandbox's /tmp is a volume of the instance, removed with its container: none
    /// may outlive them. (The lease container has none.)
    fn assert_no_volumes_left(&self) {
        assert_eq!(
            volumes_of(&self.instance),
            Vec::<String>::new(),
            "volumes left behind\n{}",
            self.log()
        );
    }

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
        self.assert_no_volumes_left();
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
        // A failing test's own message often shows only what the client saw (say, "the
        // Docker Engine `local` is out of service"); the daemon's log says why. Printed
        // here once, for every test, rather than in each assertion's message.
        if thread::panicking() {
            if let Ok(log) = self.log.lock() {
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(80)..];
                eprintln!(
                    "--- the daemon's log, last {} lines ---\n{}",
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
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
                if all_containers_of(&self.instance).is_empty()
                    && volumes_of(&self.instance).is_empty()
                {
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
