//! The `pyexec` command line as a user meets it: `--timeout`, `--quiet`, `--version`,
//! `--completions`, `--help`, usage errors, the queue notice on a terminal (and never
//! elsewhere). Against the real daemon where a server is involved.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{daemon::*, docker::*, figures::*, processes::*, PYEXEC};

/// The environment variables `pyexec` reads: cleared so that the caller's own settings
/// cannot change what a test sees.
const PYEXEC_ENV: &[&str] = &[
    "PYEXEC_SERVER",
    "PYEXEC_CA",
    "PYEXEC_CERT",
    "PYEXEC_KEY",
    "PYEXEC_TIMEOUT",
    "PYEXEC_CONNECT_TIMEOUT",
];

/// `pyexec` with `args` and no server-related environment.
fn pyexec(args: &[&str]) -> Command {
    let mut cmd = Command::new(PYEXEC);
    for var in PYEXEC_ENV {
        cmd.env_remove(var);
    }
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// `d.pyexec(script)` with the flags before the script and no stray environment.
fn pyexec_on(d: &Daemon, flags: &[&str], script: &str) -> Command {
    let mut cmd = pyexec(&["--server", &d.addr.to_string(), "--ca"]);
    cmd.arg(d.ca()).args(flags).arg(d.script_file(script));
    cmd
}

fn output(mut cmd: Command) -> Output {
    cmd.output().unwrap()
}

/// An address where nobody listens.
fn dead_server() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// Asserts that `out` is a failure to run: status 125, nothing on stdout, exactly one
/// line on stderr that starts with `prefix`.
fn assert_cannot_run(out: &Output, prefix: &str) {
    let err = stderr_str(out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(stdout_str(out), "");
    assert!(err.starts_with(prefix), "want {prefix:?}, got {err:?}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.ends_with('\n'), "{err:?}");
}

// ---- --timeout ----

#[test]
fn timeout_ends_the_session_with_124_and_removes_its_container() {
    let d = Daemon::start(&[]);
    let script = format!("{PRINT_CID}import time\ntime.sleep(30)\n");
    let started = Instant::now();
    let out = output(pyexec_on(&d, &["--timeout", "2"], &script));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(124), "{}", stderr_str(&out));
    assert_eq!(stderr_str(&out), "pyexec: session timed out after 2s\n");
    assert!(
        took >= Duration::from_millis(1950) && took < Duration::from_secs(3),
        "ended after {took:?}"
    );
    let cid = cid_of(&out.stdout);
    assert_container_gone(&cid, Duration::from_secs(5));
    d.stop();
}

#[test]
fn timeout_from_the_environment_and_its_units() {
    let d = Daemon::start(&[]);
    let script = format!("{PRINT_CID}import time\ntime.sleep(30)\n");
    // PYEXEC_TIMEOUT with a unit, and --quiet: the exit status alone tells.
    let mut cmd = pyexec_on(&d, &["-q"], &script);
    cmd.env("PYEXEC_TIMEOUT", "1500ms");
    let started = Instant::now();
    let out = output(cmd);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(124), "{}", stderr_str(&out));
    assert_eq!(stderr_str(&out), "");
    assert!(
        took >= Duration::from_millis(1450) && took < Duration::from_millis(2500),
        "ended after {took:?}"
    );
    assert_container_gone(&cid_of(&out.stdout), Duration::from_secs(5));

    // A limit under a second is named the way it was given, as the client names the
    // server's limits.
    let out = output(pyexec_on(&d, &["--timeout", "750ms"], &script));
    assert_eq!(out.status.code(), Some(124), "{}", stderr_str(&out));
    assert_eq!(stderr_str(&out), "pyexec: session timed out after 750ms\n");

    // A flag wins over the variable; 0 lifts pyexec's own limit.
    let mut cmd = pyexec_on(
        &d,
        &["--timeout", "0"],
        "import time\ntime.sleep(1.5)\nprint('slept')\n",
    );
    cmd.env("PYEXEC_TIMEOUT", "0.5s");
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_str(&out));
    assert_eq!(stdout_str(&out), "slept\n");

    // Minutes are accepted (and here never reached).
    let out = output(pyexec_on(&d, &["--timeout", "2m"], "print('quick')\n"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr_str(&out));
    assert_eq!(stdout_str(&out), "quick\n");
    d.stop();
}

#[test]
fn server_limit_wins_when_shorter_than_timeout() {
    let d = Daemon::start(&["--session-timeout", "2"]);
    let started = Instant::now();
    let out = output(pyexec_on(
        &d,
        &["--timeout", "1m"],
        "import time\ntime.sleep(30)\n",
    ));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(124), "{}", stderr_str(&out));
    assert_eq!(stderr_str(&out), "pyexec: session timed out after 2s\n");
    assert!(took < Duration::from_secs(3), "ended after {took:?}");
    d.stop();
}

#[test]
fn bad_timeout_is_a_usage_error() {
    for value in ["soon", "5 parsecs", "-1", ""] {
        let out = output(pyexec(&[&format!("--timeout={value}"), "x.py"]));
        assert_cannot_run(&out, "pyexec: invalid value");
        assert!(
            stderr_str(&out).contains("--timeout"),
            "{}",
            stderr_str(&out)
        );
    }
    let mut cmd = pyexec(&["x.py"]);
    cmd.env("PYEXEC_TIMEOUT", "later");
    assert_cannot_run(&output(cmd), "pyexec: invalid value 'later'");
}

// ---- --quiet ----

const KILLS_ITSELF: &str = "import os, sys\nprint('out', flush=True)\nprint('err', file=sys.stderr, flush=True)\nos.kill(os.getpid(), 9)\n";

#[test]
fn quiet_suppresses_notes_but_not_the_script_nor_errors() {
    let d = Daemon::start(&[]);
    // Without --quiet: the script's output, then pyexec's note on how it ended.
    let out = output(pyexec_on(&d, &[], KILLS_ITSELF));
    assert_eq!(out.status.code(), Some(137));
    assert_eq!(stdout_str(&out), "out\n");
    assert_eq!(
        stderr_str(&out),
        "err\npyexec: killed by signal 9 (SIGKILL)\n"
    );
    // With it: the script's output only, byte for byte; the status still tells.
    for flag in ["-q", "--quiet"] {
        let out = output(pyexec_on(&d, &[flag], KILLS_ITSELF));
        assert_eq!(out.status.code(), Some(137));
        assert_eq!(stdout_str(&out), "out\n");
        assert_eq!(stderr_str(&out), "err\n");
    }
    // Everything after the script is the script's, pyexec's own flags included.
    let mut cmd = pyexec_on(&d, &[], "import sys\nprint(sys.argv[1:])\n");
    cmd.args(["--help", "-q", "--timeout", "1", "-V", "--", "-"]);
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_str(&out));
    assert_eq!(
        stdout_str(&out),
        "['--help', '-q', '--timeout', '1', '-V', '--', '-']\n"
    );
    // An ordinary exit is never commented on, quiet or not.
    let out = output(pyexec_on(&d, &[], "import sys\nsys.exit(3)\n"));
    assert_eq!((out.status.code(), stderr_str(&out)), (Some(3), "".into()));

    // Errors that stop pyexec are printed all the same: one line, status 125.
    let out = output(pyexec_on(&d, &["-q"], &"x".repeat(2 << 20)));
    assert_cannot_run(&out, "pyexec: script too large");
    let mut cmd = pyexec(&["-q", "--server", &dead_server(), "--ca"]);
    cmd.arg(d.ca()).arg(d.script_file("print(1)\n"));
    assert_cannot_run(&output(cmd), "pyexec: cannot connect to 127.0.0.1:");
    assert_cannot_run(
        &output(pyexec(&["-q", "/nonexistent/x.py"])),
        "pyexec: cannot open /nonexistent/x.py: no such file",
    );
    assert_cannot_run(&output(pyexec(&["-q"])), "pyexec: no script given");
    d.stop();
}

// ---- --version ----

#[test]
fn version_shows_the_client_and_the_server() {
    let d = Daemon::start(&["--session-timeout", "90s", "--max-script-size", "2m"]);
    let want = format!(
        "pyexec {v}\nserver {addr}: pyexecd {v} (protocol 1, time limit 90s, script limit 2 MiB, output limit 1 GiB)\n",
        v = env!("CARGO_PKG_VERSION"),
        addr = d.addr
    );
    for flag in ["--version", "-V"] {
        let mut cmd = pyexec(&[flag, "--server", &d.addr.to_string(), "--ca"]);
        cmd.arg(d.ca());
        let out = output(cmd);
        assert_eq!(out.status.code(), Some(0), "{}", stderr_str(&out));
        assert_eq!(stdout_str(&out), want);
        assert_eq!(stderr_str(&out), "");
    }
    // The same through the environment; a probe runs nothing.
    let mut cmd = pyexec(&["--version"]);
    cmd.env("PYEXEC_SERVER", d.addr.to_string())
        .env("PYEXEC_CA", d.ca());
    assert_eq!(stdout_str(&output(cmd)), want);
    d.stop();
}

#[test]
fn version_works_when_the_server_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let paths = pyexec::certs::generate(dir.path(), &[], false).unwrap();
    let server = dead_server();
    let mut cmd = pyexec(&["--version", "--server", &server, "--ca"]);
    cmd.arg(&paths.ca_cert);
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout_str(&out),
        format!("pyexec {}\n", env!("CARGO_PKG_VERSION"))
    );
    let err = stderr_str(&out);
    assert!(
        err.starts_with(&format!("pyexec: cannot reach server {server}: ")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    // --quiet: the version, and nothing else.
    let mut cmd = pyexec(&["-V", "-q", "--server", &server, "--ca"]);
    cmd.arg(&paths.ca_cert);
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout_str(&out),
        format!("pyexec {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(stderr_str(&out), "");

    // No CA at all: still the version, and a hint where the CA goes.
    let out = output(pyexec(&[
        "--version",
        "--server",
        &server,
        "--ca",
        "/nonexistent/ca.pem",
    ]));
    assert_eq!(out.status.code(), Some(0));
    let err = stderr_str(&out);
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    assert!(err.contains("--ca or PYEXEC_CA"), "{err}");
}

// ---- --completions, --help, usage ----

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = output(pyexec(&["--completions", shell]));
        assert_eq!(out.status.code(), Some(0), "{}", stderr_str(&out));
        assert_eq!(stderr_str(&out), "");
        let script = stdout_str(&out);
        assert!(script.len() > 200, "{shell}: {script}");
        assert!(script.contains("pyexec"), "{shell}: {script}");
        for flag in ["server", "timeout", "quiet", "completions"] {
            assert!(script.contains(flag), "{shell} lacks {flag}: {script}");
        }
    }
    let bash = stdout_str(&output(pyexec(&["--completions", "bash"])));
    assert!(bash.contains("--server"), "{bash}");
    assert!(bash.contains("complete -F"), "{bash}");
    assert_cannot_run(
        &output(pyexec(&["--completions", "tcsh"])),
        "pyexec: invalid value 'tcsh'",
    );
}

#[test]
fn help_covers_flags_environment_and_exit_statuses() {
    let out = output(pyexec(&["--help"]));
    assert_eq!(out.status.code(), Some(0));
    let help = stdout_str(&out);
    for needle in [
        "--server",
        "--ca",
        "--cert",
        "--key",
        "--timeout",
        "--connect-timeout",
        "--quiet",
        "--version",
        "--completions",
        "PYEXEC_SERVER",
        "PYEXEC_CA",
        "PYEXEC_CERT",
        "PYEXEC_KEY",
        "PYEXEC_TIMEOUT",
        "Examples:",
        "Exit status:",
        "124",
        "125",
        "137",
        "141",
        "143",
        "Ctrl-C",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    let out = output(pyexec(&["-h"]));
    assert_eq!(out.status.code(), Some(0));
    let short = stdout_str(&out);
    assert!(
        short.contains("--timeout") && short.contains("--help"),
        "{short}"
    );
    assert!(short.len() < help.len());
}

#[test]
fn usage_errors_exit_125_with_one_line() {
    assert_cannot_run(
        &output(pyexec(&[])),
        "pyexec: no script given (usage: pyexec [OPTIONS] SCRIPT [ARGS]...",
    );
    assert_cannot_run(
        &output(pyexec(&["--bogus", "x.py"])),
        "pyexec: unexpected argument '--bogus'",
    );
    assert_cannot_run(
        &output(pyexec(&["--cert", "me.pem", "x.py"])),
        "pyexec: the following required arguments were not provided: --key",
    );
    // After the script, everything is the script's, --help and --bogus included: they
    // reach the server (dead here), not the parser.
    assert_cannot_run(
        &output(pyexec(&[
            "--server",
            &dead_server(),
            "-",
            "--help",
            "--bogus",
        ])),
        "pyexec: ",
    );
}

#[test]
fn unreadable_scripts_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    assert_cannot_run(
        &output(pyexec(&[dir.path().to_str().unwrap()])),
        &format!(
            "pyexec: {} is a directory, not a script",
            dir.path().display()
        ),
    );
    let missing = dir.path().join("missing.py");
    assert_cannot_run(
        &output(pyexec(&[missing.to_str().unwrap()])),
        &format!("pyexec: cannot open {}: no such file", missing.display()),
    );
}

#[test]
fn refused_connection_suggests_checking_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let paths = pyexec::certs::generate(dir.path(), &[], false).unwrap();
    let script = dir.path().join("s.py");
    std::fs::write(&script, "print(1)\n").unwrap();
    let mut cmd = pyexec(&["--server", &dead_server(), "--ca"]);
    cmd.arg(&paths.ca_cert).arg(&script);
    let out = output(cmd);
    assert_cannot_run(&out, "pyexec: cannot connect to 127.0.0.1:");
    assert!(
        stderr_str(&out).contains("is pyexecd running there?"),
        "{}",
        stderr_str(&out)
    );
}

// ---- the queue notice ----

/// A pseudo-terminal: the master end to read, the slave end to give a child as stderr.
fn openpty() -> (File, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two fresh descriptors, which we then own.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are open and owned by nobody else.
    unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// A script that says `ready` and runs until its stdin closes.
const HOLD: &str = "import sys\nprint('ready', flush=True)\nsys.stdin.read()\nprint('bye')\n";

/// A running `HOLD` session: stdin and stdout are pipes, stderr is the test's choice.
struct Holder {
    child: Child,
    out: OutputWatcher,
    what: &'static str,
}

impl Holder {
    fn start(d: &Daemon, what: &'static str, flags: &[&str], stderr: Stdio, term: &str) -> Self {
        let mut cmd = pyexec_on(d, flags, HOLD);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("TERM", term);
        let mut child = cmd.spawn().unwrap();
        let out = OutputWatcher::stdout(&mut child);
        Holder { child, out, what }
    }

    /// Waits until the script runs.
    fn wait_ready(&mut self) {
        assert!(
            self.out.wait_for(b"ready\n", Duration::from_secs(30)),
            "{} never ran",
            self.what
        );
    }

    /// Closes stdin, checks that the script ran to its end, and returns pyexec's stderr
    /// (empty when it was not a pipe).
    fn release(mut self) -> String {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().unwrap();
        let stdout = self.out.rest(Duration::from_secs(5));
        assert_eq!(
            (out.status.code(), String::from_utf8_lossy(&stdout).as_ref()),
            (Some(0), "ready\nbye\n"),
            "{}: {}",
            self.what,
            stderr_str(&out)
        );
        stderr_str(&out)
    }
}

/// How many sessions wait in the daemon's queue right now. While the first session holds
/// the only slot nobody leaves the queue, so a rise means the newest one is in it.
fn queued_count(d: &Daemon) -> usize {
    metrics(d).get("pyexec_sessions_queued") as usize
}

fn notice(position: u32) -> String {
    format!("pyexec: waiting for a free slot (position {position} in the queue)")
}

const ERASE: &str = "\r\x1b[K";

#[test]
fn queue_notice_on_a_terminal_follows_the_position_and_is_erased_at_start() {
    let d = Daemon::start(&["--max-sessions", "1", "--warm", "0"]);
    let mut first = Holder::start(&d, "first", &[], Stdio::piped(), "xterm");
    first.wait_ready();

    let (tty_b, slave_b) = openpty();
    let second = Holder::start(&d, "second", &[], slave_b.into(), "xterm");
    let mut tty_b = OutputWatcher::new(tty_b);
    assert!(
        tty_b.wait_for(notice(1).as_bytes(), Duration::from_secs(20)),
        "no notice on the terminal: {:?}\n{}",
        String::from_utf8_lossy(&tty_b.seen),
        d.log()
    );
    let (tty_c, slave_c) = openpty();
    let mut third = Holder::start(&d, "third", &[], slave_c.into(), "xterm");
    let mut tty_c = OutputWatcher::new(tty_c);
    assert!(
        tty_c.wait_for(notice(2).as_bytes(), Duration::from_secs(20)),
        "{:?}",
        String::from_utf8_lossy(&tty_c.seen)
    );

    // The first ends: the second runs (its notice is erased), the third moves up.
    assert_eq!(first.release(), "");
    let mut second = second;
    second.wait_ready();
    assert!(
        tty_c.wait_for(notice(1).as_bytes(), Duration::from_secs(20)),
        "{:?}",
        String::from_utf8_lossy(&tty_c.seen)
    );
    assert!(second.release().is_empty());
    third.wait_ready();
    assert!(third.release().is_empty());

    // Every notice rewrites the same line, and the line is gone when the script runs.
    let b = String::from_utf8_lossy(&tty_b.rest(Duration::from_secs(5))).into_owned();
    assert_eq!(b, format!("{ERASE}{}{ERASE}", notice(1)));
    let c = String::from_utf8_lossy(&tty_c.rest(Duration::from_secs(5))).into_owned();
    assert_eq!(
        c,
        format!("{ERASE}{}{ERASE}{}{ERASE}", notice(2), notice(1))
    );
    d.stop();
}

#[test]
fn queue_notice_never_on_a_pipe_nor_with_quiet() {
    let d = Daemon::start(&["--max-sessions", "1", "--warm", "0"]);
    let mut first = Holder::start(&d, "first", &[], Stdio::piped(), "xterm");
    first.wait_ready();

    // stderr a pipe: queued, yet nothing on stderr.
    let before = queued_count(&d);
    let mut piped = Holder::start(&d, "piped", &[], Stdio::piped(), "xterm");
    assert!(
        wait_until(Duration::from_secs(20), || queued_count(&d) > before),
        "the session was not queued\n{}",
        d.log()
    );
    // A terminal with --quiet: queued, yet nothing on the terminal.
    let (tty_q, slave_q) = openpty();
    let before = queued_count(&d);
    let mut quiet = Holder::start(&d, "quiet", &["--quiet"], slave_q.into(), "xterm");
    let tty_q = OutputWatcher::new(tty_q);
    assert!(
        wait_until(Duration::from_secs(20), || queued_count(&d) > before),
        "the quiet session was not queued\n{}",
        d.log()
    );
    // A dumb terminal: one plain line per position, nothing to erase.
    let (tty_dumb, slave_dumb) = openpty();
    let mut dumb = Holder::start(&d, "dumb", &[], slave_dumb.into(), "dumb");
    let mut tty_dumb = OutputWatcher::new(tty_dumb);
    assert!(
        tty_dumb.wait_for(notice(3).as_bytes(), Duration::from_secs(20)),
        "{:?}",
        String::from_utf8_lossy(&tty_dumb.seen)
    );

    assert_eq!(first.release(), "");
    piped.wait_ready();
    assert_eq!(piped.release(), "", "a pipe never gets the notice");
    quiet.wait_ready();
    assert!(quiet.release().is_empty());
    dumb.wait_ready();
    assert!(dumb.release().is_empty());

    let q = tty_q.rest(Duration::from_secs(5));
    assert_eq!(String::from_utf8_lossy(&q), "", "--quiet on a terminal");
    // The terminal turns "\n" into "\r\n".
    let text = String::from_utf8_lossy(&tty_dumb.rest(Duration::from_secs(5))).into_owned();
    assert_eq!(
        text,
        format!("{}\r\n{}\r\n{}\r\n", notice(3), notice(2), notice(1))
    );
    d.stop();
}

/// pyexec's own note starts on a line of its own even when the script's stderr ended
/// mid-line, as it does in a file (and on a terminal, where stdout counts too).
#[test]
fn notes_never_glue_onto_the_scripts_last_line() {
    let d = Daemon::start(&[]);
    let out = d.run(
        "import os, sys\nsys.stderr.write('partial')\nsys.stderr.flush()\nos.kill(os.getpid(), 15)\n",
        &[],
        b"",
    );
    assert_eq!(out.status.code(), Some(143));
    assert_eq!(
        stderr_str(&out),
        "partial\npyexec: killed by signal 15 (SIGTERM)\n"
    );
    let out = d.run("import os\nos.kill(os.getpid(), 15)\n", &[], b"");
    assert_eq!(
        stderr_str(&out),
        "pyexec: killed by signal 15 (SIGTERM)\n",
        "no blank line"
    );
    d.stop();
}

// ---- stdin of every kind ----

/// `pyexec` reads a pipe or socket on its runtime's own thread and anything else on
/// tokio's blocking pool (`pyexec::stdio`): each kind must reach the script whole, then
/// end of file.
#[test]
fn stdin_from_a_file_a_pipe_a_socket_or_a_terminal_reaches_the_script_whole() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    let d = Daemon::start(&[]);
    let echo = "import sys\nd = sys.stdin.buffer.read()\nsys.stdout.buffer.write(d)\nprint('|eof', len(d), file=sys.stderr)\n";
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let check = |kind: &str, out: Output| {
        assert_eq!(out.status.code(), Some(0), "{kind}: {}", stderr_str(&out));
        assert!(
            out.stdout == data,
            "{kind}: {} bytes back",
            out.stdout.len()
        );
        assert_eq!(stderr_str(&out), format!("|eof {}\n", data.len()), "{kind}");
    };

    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&data).unwrap();
    std::io::Seek::rewind(&mut file).unwrap();
    let mut cmd = pyexec_on(&d, &[], echo);
    check("file", cmd.stdin(Stdio::from(file)).output().unwrap());

    check(
        "pipe",
        output_with_stdin(&mut pyexec_on(&d, &[], echo), &data),
    );

    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let feeder = std::thread::spawn({
        let data = data.clone();
        move || {
            ours.write_all(&data).unwrap();
            // Half-close: the script must see end of file while the socket stays open.
            ours.shutdown(std::net::Shutdown::Write).unwrap();
            ours
        }
    });
    let mut cmd = pyexec_on(&d, &[], echo);
    check(
        "socket",
        cmd.stdin(Stdio::from(OwnedFd::from(theirs)))
            .output()
            .unwrap(),
    );
    drop(feeder.join().unwrap());

    // A terminal in canonical mode: a line, then Ctrl-D at the start of a line is EOF.
    let (mut master, slave) = openpty();
    master.write_all(b"typed line\n\x04").unwrap();
    let out = pyexec_on(&d, &[], echo)
        .stdin(Stdio::from(slave))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "tty: {}", stderr_str(&out));
    assert_eq!(out.stdout, b"typed line\n");
    assert_eq!(stderr_str(&out), "|eof 11\n");
}
