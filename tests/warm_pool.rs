//! The warm pool and the in-process bootstrap: as fast as they are, a session must not be
//! able to tell them from a cold start or from `python3 script.py`.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use common::{daemon::*, docker::*, figures::*, processes::*, PYEXEC};
use pyexec::client::{self, Io, Notice, Request};

/// Scripts whose every observable (stdout, stderr, status) must be the same wherever
/// they run. Each reads argv and stdin, so those paths are covered too.
const PROBES: &[(&str, &str)] = &[
    (
        "introspection",
        r#"import sys, os
print(__name__, __file__, __package__, __spec__, __cached__)
print(type(__loader__).__name__, __loader__.name)
print(sys.argv, sys.path[0], os.getcwd())
print(sys.flags.unbuffered, sys.flags.isolated, sys.flags.no_site, sys.flags.ignore_environment)
print(sorted(globals()))
print(repr(sys.stdin.read()))
import __main__; print(__main__ is sys.modules['__main__'], __main__.__dict__ is globals())
"#,
    ),
    (
        "modules loaded at start",
        "import sys\nprint(sorted(sys.modules))\nprint(sorted(sys.modules['__main__'].__dict__))\n",
    ),
    ("exit status", "import sys\nprint('x')\nsys.exit(42)\n"),
    ("exit 137 by choice", "import sys\nsys.exit(137)\n"),
    ("exit message", "import sys\nsys.exit('it went wrong')\n"),
    (
        "traceback",
        "def inner():\n    raise KeyError('k')\ndef outer():\n    inner()\nouter()\n",
    ),
    (
        "chained traceback",
        "try:\n    1/0\nexcept ZeroDivisionError as e:\n    raise ValueError('again') from e\n",
    ),
    ("syntax error", "print('never'\n"),
    (
        "keyboard interrupt",
        "import os, signal\nprint('before', flush=True)\nos.kill(os.getpid(), signal.SIGINT)\nimport time; time.sleep(5)\n",
    ),
    ("death by signal", "import os\nos.kill(os.getpid(), 15)\n"),
    (
        "atexit and threads",
        "import atexit, threading, time\natexit.register(lambda: print('atexit ran'))\nt = threading.Thread(target=lambda: (time.sleep(0.2), print('thread done')))\nt.start()\nprint('main done')\n",
    ),
    (
        "pickle of __main__ class",
        "import pickle\nclass P:\n    pass\np = pickle.loads(pickle.dumps(P()))\nprint(type(p).__module__, type(p).__qualname__)\n",
    ),
    (
        "warnings",
        "import warnings\nwarnings.warn('careful', DeprecationWarning)\nprint('ok')\n",
    ),
];

const PROBE_ARGS: [&str; 2] = ["first arg", "-x"];
const PROBE_STDIN: &[u8] = b"some input\n";

/// `python3 -u /tmp/probe.py` in a plain container of the same image: the reference.
fn reference(script: &str) -> Output {
    let mut cmd = Command::new("docker");
    cmd.args([
        "run",
        "--rm",
        "-i",
        "--init",
        "--network",
        "none",
        "--log-driver",
        "none",
    ])
    .args([
        "--user",
        "65534:65534",
        "-w",
        "/tmp",
        "-e",
        "HOME=/tmp",
        "-e",
        "LANG=C.UTF-8",
    ])
    .args([
        "-e",
        "PYTHONDONTWRITEBYTECODE=1",
        "--label",
        "pyexec.instance=test-reference",
    ])
    .arg(pyexec::config::DEFAULT_IMAGE)
    .args([
        "sh",
        "-c",
        "printf '%s' \"$0\" > /tmp/probe.py && exec python3 -u probe.py \"$@\"",
    ])
    .arg(script)
    .args(PROBE_ARGS);
    output_with_stdin(&mut cmd, PROBE_STDIN)
}

fn through(d: &Daemon, script: &str) -> Output {
    let path = d.dir.path().join("probe.py");
    std::fs::write(&path, script).unwrap();
    let mut cmd = Command::new(PYEXEC);
    cmd.args(["--server", &d.addr.to_string(), "--ca"])
        .arg(d.ca())
        .arg(&path)
        .args(PROBE_ARGS);
    output_with_stdin(&mut cmd, PROBE_STDIN)
}

/// Compares everything but `pyexec`'s own one-line notes (prefixed `pyexec: `), which a
/// shell would print in its own words ("Terminated").
fn same(name: &str, how: &str, got: &Output, want: &Output) {
    let script_stderr: String = String::from_utf8_lossy(&got.stderr)
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("pyexec: "))
        .collect();
    assert_eq!(
        (
            got.status.code(),
            String::from_utf8_lossy(&got.stdout),
            script_stderr.into()
        ),
        (
            want.status.code(),
            String::from_utf8_lossy(&want.stdout),
            String::from_utf8_lossy(&want.stderr)
        ),
        "probe '{name}' through {how} differs from python3 probe.py"
    );
}

/// Warm in-process, warm exec and cold: all three give exactly what `python3 -u probe.py`
/// gives in a plain container of the same image.
#[test]
fn every_way_of_running_matches_python3_script_py() {
    let inprocess = Daemon::start(&["--warm", "2"]);
    let exec = Daemon::start(&["--warm", "2", "--bootstrap", "exec"]);
    let cold = Daemon::start(&["--warm", "0"]);
    for (name, script) in PROBES {
        let want = reference(script);
        same(
            name,
            "a warm in-process container",
            &through(&inprocess, script),
            &want,
        );
        same(
            name,
            "a warm exec container",
            &through(&exec, script),
            &want,
        );
        same(name, "a cold container", &through(&cold, script), &want);
    }
    inprocess.stop();
    exec.stop();
    cold.stop();
}

/// Runs `script` through the library and returns the STARTED notice with the outcome.
fn run_noting_start(d: &Daemon, script: &str) -> (pyexec::protocol::Started, i32) {
    let cfg = d.client_config();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let outcome = client::run(
            &cfg,
            Request {
                script: Bytes::from(script.to_string()),
                ..Default::default()
            },
            Io::<tokio::io::Empty, _, _> {
                stdin: None,
                stdout: tokio::io::sink(),
                stderr: tokio::io::sink(),
                control: None,
                notices: Some(tx),
            },
        )
        .await
        .unwrap();
        let mut started = None;
        while let Ok(n) = rx.try_recv() {
            if let Notice::Started(s) = n {
                started = Some(s);
            }
        }
        (started.expect("a STARTED notice"), outcome.exit_code())
    })
}

#[test]
fn pool_sessions_report_warm_and_cold_ones_do_not() {
    let warm = Daemon::start(&["--warm", "1"]);
    wait_pool_ready(&warm);
    let (started, code) = run_noting_start(&warm, "print(1)");
    assert!(started.warm, "served from the pool");
    assert_eq!(code, 0);
    warm.stop();

    let cold = Daemon::start(&["--warm", "0"]);
    let (started, code) = run_noting_start(&cold, "print(1)");
    assert!(!started.warm);
    assert_eq!(code, 0);
    cold.stop();
}

/// Nothing of one session is visible to the next: a file left in /tmp, an environment
/// change, a background process.
#[test]
fn a_spare_never_carries_anything_from_an_earlier_session() {
    let d = Daemon::start(&["--max-sessions", "1", "--warm", "1"]);
    let first = d.run(
        &format!("{PRINT_CID}import subprocess\nopen('/tmp/secret', 'w').write('s3cret')\nsubprocess.Popen(['sleep', '30'])\n"),
        &[],
        b"",
    );
    assert_eq!(first.status.code(), Some(0), "{}", stderr_str(&first));
    let second = d.run(
        &format!("{PRINT_CID}import os, subprocess\nprint(os.path.exists('/tmp/secret'))\nprint(sorted(open(f'/proc/{{p}}/comm').read().strip() for p in os.listdir('/proc') if p.isdigit()))\n"),
        &[],
        b"",
    );
    assert_eq!(second.status.code(), Some(0), "{}", stderr_str(&second));
    assert_ne!(
        cid_of(&first.stdout),
        cid_of(&second.stdout),
        "a fresh container"
    );
    let text = stdout_str(&second);
    let mut lines = text.lines().skip(1);
    assert_eq!(lines.next(), Some("False"));
    let procs = lines.next().unwrap();
    assert!(
        !procs.contains("sleep"),
        "no process of the first session: {procs}"
    );
    d.stop();
}

/// A spare killed from outside is noticed and replaced, and the session that would have
/// had it still runs.
#[test]
fn a_killed_spare_is_replaced_and_the_next_session_still_succeeds() {
    let d = Daemon::start(&["--max-sessions", "2", "--warm", "1"]);
    wait_pool_ready(&d);
    let spare = d.containers();
    assert_eq!(spare.len(), 1);
    let killed = Command::new("docker")
        .args(["kill", &spare[0]])
        .output()
        .unwrap();
    assert!(killed.status.success());
    // At once, before the daemon may have noticed: whichever way, the script runs.
    let out = d.run(&format!("{PRINT_CID}print('still fine')\n"), &[], b"");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stderr_str(&out),
        d.log()
    );
    assert!(stdout_str(&out).ends_with("still fine\n"));
    assert_ne!(cid_of(&out.stdout), spare[0], "not the dead one");
    assert!(wait_until(Duration::from_secs(10), || !container_listed(
        &spare[0]
    )));
    // And the pool recovers to one spare.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let now = d.containers();
            now.len() == 1 && now[0] != spare[0]
        }),
        "{:?}",
        d.containers()
    );
    d.stop();
}

/// The same limits apply to spares as to cold containers.
#[test]
fn limits_hold_in_spares() {
    let d = Daemon::start(&["--warm", "1", "--memory", "64m", "--pids-limit", "16"]);
    wait_pool_ready(&d);
    let out = d.run("x = bytearray(200 * 1024 * 1024)\n", &[], b"");
    assert_eq!(out.status.code(), Some(137));
    assert!(
        stderr_str(&out).contains("out of memory (limit 64 MiB)"),
        "{}",
        stderr_str(&out)
    );
    // The spare that session took has been replaced: the next one runs in a spare too.
    wait_pool_ready(&d);
    let out = d.run(
        "import subprocess\nps = []\ntry:\n    for _ in range(64):\n        ps.append(subprocess.Popen(['sleep', '5']))\nexcept OSError as e:\n    print('refused after', len(ps))\n",
        &[],
        b"",
    );
    let text = stdout_str(&out);
    let n: usize = text
        .trim()
        .strip_prefix("refused after ")
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap();
    assert!(n < 16, "pids limit applies: {n}");
    d.stop();
}
