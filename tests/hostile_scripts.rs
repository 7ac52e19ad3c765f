//! Hostile scripts: what a script can do to its sandbox, its session and the server, and
//! what the user is told. Each case ends with a clear status and `pyexec:` message for the
//! client, a server that still runs a hello-world, and no container left (`d.stop()`).
//!
//! Limits are kept short (`--session-timeout 3`, `--output-limit 1m`, `--memory 64m`) so
//! that the battery runs in seconds; CPU hogs get `--cpus 0.5` so that they leave the
//! other tests of a 2-core machine some room.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{daemon::*, docker::*, figures::*, idle::*, processes::*};

/// Runs `script` with `args` and no stdin; returns the output and how long it took.
fn timed_run(d: &Daemon, script: &str, args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = d.run(script, args, b"");
    (out, started.elapsed())
}

/// Runs every `(script, args)` at once, each in its own session; returns the outputs and
/// durations in the same order. Sessions are independent, so there is no reason to make
/// a 2-core machine start their containers one after the other.
fn run_all(d: &Daemon, cases: &[(&str, Vec<String>)]) -> Vec<(Output, Duration)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(script, args)| {
                scope.spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    timed_run(d, script, &args)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// One line of context for assertion messages.
fn show(out: &Output) -> String {
    let cut = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned();
    format!(
        "status {:?}, stdout {:?}, stderr {:?}",
        out.status.code(),
        cut(&out.stdout),
        cut(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------
// Processes

#[test]
fn fork_bomb_hits_the_pids_limit_and_the_script_carries_on() {
    let d = Daemon::start(&["--cpus", "0.5"]);
    // Children sleep; the parent forks until the kernel says no, then reports and exits
    // with the children still there. The container (hence the children) goes with it.
    let script = format!(
        "{PRINT_CID}import errno, os, time
n = 0
while True:
    try:
        pid = os.fork()
    except OSError as e:
        print('fork refused after', n, errno.errorcode[e.errno], flush=True)
        break
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    n += 1
print('parent goes on')
"
    );
    let (out, took) = timed_run(&d, &script, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let cid = cid_of(&out.stdout);
    let text = stdout_str(&out);
    let line = text.lines().nth(1).unwrap_or_default();
    let n: usize = line
        .strip_prefix("fork refused after ")
        .and_then(|rest| rest.strip_suffix(" EAGAIN"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {text:?}"));
    assert!(
        (1..64).contains(&n),
        "{n} forks succeeded; the pids limit is 64"
    );
    assert!(text.ends_with("parent goes on\n"), "{text:?}");
    assert_eq!(stderr_str(&out), "");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_container_gone(&cid, Duration::from_secs(5));
    assert_healthy(&d);
    d.stop();
}

/// A child that ignores SIGTERM (and every other catchable signal), runs in a session of
/// its own and keeps the script's stdout open must not keep the session alive once the
/// main process has exited; and it dies with its container.
#[test]
fn child_that_ignores_sigterm_does_not_outlive_the_session() {
    let d = Daemon::start(&["--session-timeout", "20"]);
    let script = format!(
        "{PRINT_CID}import subprocess, sys
child = '''
import os, signal, sys, time
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE):
    signal.signal(s, signal.SIG_IGN)
print('child ready', flush=True)
sys.stderr.write('x')
sys.stderr.flush()
while True:
    time.sleep(1)
'''
p = subprocess.Popen([sys.executable, '-c', child], start_new_session=True, stderr=subprocess.PIPE)
assert p.stderr.read(1) == b'x'
print('main exits')
"
    );
    let (out, took) = timed_run(&d, &script, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let cid = cid_of(&out.stdout);
    let text = stdout_str(&out);
    assert_eq!(
        text.split_once('\n').map(|(_, rest)| rest),
        Some("child ready\nmain exits\n")
    );
    assert_eq!(stderr_str(&out), "");
    assert!(
        took < Duration::from_secs(10),
        "the session waited for the child: {took:?}"
    );
    assert_container_gone(&cid, Duration::from_secs(5));
    assert_healthy(&d);
    d.stop();
}

#[test]
fn os_system_and_subprocess_work() {
    let d = Daemon::start(&[]);
    let script = r#"import multiprocessing, os, subprocess, sys
subprocess.run(['python3', '-c', 'print(1)'])
print('system', os.system('echo hi'))
print(subprocess.run('echo $((6*7))', shell=True, capture_output=True).stdout.decode().strip())
print('rc', subprocess.run(['sh', '-c', 'exit 3']).returncode)
print(subprocess.check_output('printf "a\\nb\\n" | wc -l', shell=True).decode().strip())
print('child status', subprocess.run([sys.executable, '-c', 'import sys; sys.stderr.write("from the child\\n"); sys.exit(5)']).returncode)
with multiprocessing.Pool(2) as pool:
    print(pool.map(abs, [-1, -2, -3]))
"#;
    let out = d.run(script, &[], b"");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        stdout_str(&out),
        "1\nhi\nsystem 0\n42\nrc 3\n2\nchild status 5\n[1, 2, 3]\n"
    );
    assert_eq!(stderr_str(&out), "from the child\n");
    assert_healthy(&d);
    d.stop();
}

// ---------------------------------------------------------------------------------------
// Memory

/// One huge allocation and slow growth are killed by the kernel and reported as out of
/// memory; a child that allocates is killed alone, and the script's own status stands.
#[test]
fn memory_bombs_are_killed_as_out_of_memory() {
    let d = Daemon::start(&["--memory", "64m"]);
    let huge = "print('allocating', flush=True)\nb = bytearray(1 << 30)\nprint('survived')\n";
    let growth = "hoard = []\nwhile True:\n    hoard.append(b'm' * (1 << 20))\n    if len(hoard) % 8 == 0:\n        print(len(hoard), 'MiB', flush=True)\n";
    let child = "import subprocess, sys\nr = subprocess.run([sys.executable, '-c', 'b = bytearray(1 << 30)'])\nprint('child', r.returncode)\n";
    let outs = run_all(&d, &[(huge, vec![]), (growth, vec![]), (child, vec![])]);
    let oom = "pyexec: out of memory (limit 64 MiB); the script was killed\n";

    let (out, _) = &outs[0];
    assert_eq!(
        out.status.code(),
        Some(137),
        "one huge allocation: {}",
        show(out)
    );
    assert_eq!(stdout_str(out), "allocating\n");
    assert_eq!(stderr_str(out), oom);

    let (out, _) = &outs[1];
    assert_eq!(out.status.code(), Some(137), "slow growth: {}", show(out));
    let text = stdout_str(out);
    let last: usize = text
        .lines()
        .last()
        .and_then(|l| l.strip_suffix(" MiB"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no progress before the kill: {text:?}"));
    assert!(
        (8..=64).contains(&last),
        "grew to {last} MiB under a 64 MiB limit"
    );
    assert_eq!(stderr_str(out), oom);

    let (out, _) = &outs[2];
    assert_eq!(
        out.status.code(),
        Some(0),
        "a child that allocates: {}",
        show(out)
    );
    assert_eq!(stdout_str(out), "child -9\n");
    assert_eq!(stderr_str(out), "");
    assert_healthy(&d);
    d.stop();
}

// ---------------------------------------------------------------------------------------
// Time

/// Scripts that never end on their own, run at once: each gets 124 and the timeout
/// message, about when the limit is up.
#[test]
fn scripts_that_never_end_stop_at_the_session_timeout() {
    // The time limit counts from the accept: with a warm container for each case, a slow
    // container start on a busy machine does not eat it.
    let d = Daemon::start(&["--session-timeout", "3", "--cpus", "0.5", "--warm", "4"]);
    wait_pool_ready(&d);
    let cases: &[(&str, &str, &str)] = &[
        (
            "spinning threads that ignore SIGTERM and SIGINT",
            "import signal, threading\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ndef spin():\n    while True:\n        pass\nfor _ in range(3):\n    threading.Thread(target=spin, daemon=True).start()\nprint('spinning', flush=True)\nspin()\n",
            "spinning\n",
        ),
        (
            "a fork bomb whose every process forks forever",
            "import os\nprint('bombing', flush=True)\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
            "bombing\n",
        ),
        (
            "a script that stops itself with SIGSTOP",
            "import os, signal\nprint('stopping', flush=True)\nos.kill(os.getpid(), signal.SIGSTOP)\nprint('resumed')\n",
            "stopping\n",
        ),
        (
            "a script reading a stdin that never ends",
            "import sys\nprint('waiting', flush=True)\nsys.stdin.read()\nprint('never')\n",
            "waiting\n",
        ),
    ];
    // Started one after the other, each once its script is seen running (so that a slow
    // container start cannot eat the time limit), and all running at once.
    let mut running = Vec::new();
    for (name, script, expect_out) in cases {
        let started = Instant::now();
        let mut child = d
            .pyexec(script)
            .stdin(Stdio::piped()) // held open: the stdin reader never sees EOF
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut out = OutputWatcher::stdout(&mut child);
        assert!(
            out.wait_for(expect_out.as_bytes(), Duration::from_secs(15)),
            "{name}: the script did not start; got {:?}\n{}",
            String::from_utf8_lossy(&out.seen),
            d.log()
        );
        running.push((name, child, stdin, out, started));
    }
    for ((name, mut child, stdin, out, started), (_, _, expect_out)) in
        running.into_iter().zip(cases)
    {
        let status = wait_timeout(&mut child, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{name}: the client did not end"));
        let took = started.elapsed();
        drop(stdin);
        let err = take_stderr(&mut child);
        let seen = out.rest(Duration::from_secs(2));
        assert_eq!(status.code(), Some(124), "{name}: {err}");
        assert_eq!(String::from_utf8_lossy(&seen), *expect_out, "{name}");
        assert_eq!(err, "pyexec: session timed out after 3s\n", "{name}");
        assert!(
            took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
            "{name}: ended after {took:?}"
        );
    }
    assert_healthy(&d);
    d.stop();
}

// ---------------------------------------------------------------------------------------
// Output

const LIMIT: usize = 1 << 20;
const LIMIT_MESSAGE: &str = "pyexec: output limit of 1 MiB reached; the script was stopped\n";

/// A flood: its name, its script, and the byte patterns it repeats on stdout and stderr.
type Flood<'a> = (&'a str, &'a str, &'a [u8], &'a [u8]);

/// Runs floods side by side and checks each: 137, the message last on stderr, and exactly
/// `LIMIT` bytes of the script's output in all, each stream a prefix of what the script
/// wrote to it.
fn check_floods(d: &Daemon, floods: &[Flood]) {
    let runs: Vec<(&str, Vec<String>)> = floods.iter().map(|f| (f.1, vec![])).collect();
    for ((name, _, out_pattern, err_pattern), (out, took)) in floods.iter().zip(run_all(d, &runs)) {
        assert_eq!(out.status.code(), Some(137), "{name}: {}", show(&out));
        let err = out
            .stderr
            .strip_suffix(LIMIT_MESSAGE.as_bytes())
            .unwrap_or_else(|| panic!("{name}: no output-limit message last: {}", show(&out)));
        // When the script's stderr was cut mid-line, pyexec starts its note on a new line:
        // that newline is pyexec's, not the script's.
        let err = match err {
            [.., before, b'\n']
                if *before != b'\n' && out.stdout.len() + err.len() == LIMIT + 1 =>
            {
                &err[..err.len() - 1]
            }
            _ => err,
        };
        assert_eq!(
            out.stdout.len() + err.len(),
            LIMIT,
            "{name}: stdout {} + stderr {} bytes delivered",
            out.stdout.len(),
            err.len()
        );
        for (stream, got, pattern) in [
            ("stdout", &out.stdout[..], out_pattern),
            ("stderr", err, err_pattern),
        ] {
            let expect: Vec<u8> = pattern.iter().copied().cycle().take(got.len()).collect();
            assert!(
                got == &expect[..],
                "{name}: {stream} is not what the script wrote"
            );
        }
        // A 1 GiB line would take far longer than this if it were not cut short.
        assert!(took < Duration::from_secs(15), "{name}: took {took:?}");
    }
}

#[test]
fn stdout_floods_stop_at_exactly_the_output_limit() {
    let d = Daemon::start(&["--output-limit", "1m"]);
    let line = [&[b'y'; 99][..], b"\n"].concat();
    check_floods(
        &d,
        &[
            ("lines on stdout", "while True:\n    print('y' * 99)\n", &line, b""),
            (
                "stdout without newlines",
                "import sys\nwhile True:\n    sys.stdout.write('x' * 1000)\n",
                b"x",
                b"",
            ),
            (
                "a single 1 GiB line on stdout",
                "import sys\nchunk = b'z' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.buffer.write(chunk)\nsys.stdout.buffer.write(b'\\n')\n",
                b"z",
                b"",
            ),
        ],
    );
    // Writing exactly the limit is allowed (docs/protocol.md, section 8.2).
    let out = d.run(
        "import sys\nsys.stdout.buffer.write(b'w' * (1 << 20))\n",
        &[],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(out.stdout.len(), LIMIT);
    assert_eq!(stderr_str(&out), "");
    assert_healthy(&d);
    d.stop();
}

#[test]
fn stderr_floods_stop_at_exactly_the_output_limit() {
    let d = Daemon::start(&["--output-limit", "1m"]);
    let line = [&[b'e'; 99][..], b"\n"].concat();
    check_floods(
        &d,
        &[
            (
                "lines on stderr",
                "import sys\nwhile True:\n    sys.stderr.write('e' * 99 + '\\n')\n",
                b"",
                &line,
            ),
            (
                "one 64 MiB write(2) on stderr",
                "import os\nos.write(2, b'q' * (64 << 20))\nprint('after')\n",
                b"",
                b"q",
            ),
            (
                "stdout and stderr at once, without newlines",
                "import sys, threading\ndef flood(stream, byte):\n    while True:\n        stream.write(byte * 4096)\nthreading.Thread(target=flood, args=(sys.stderr.buffer, b'E'), daemon=True).start()\nflood(sys.stdout.buffer, b'O')\n",
                b"O",
                b"E",
            ),
        ],
    );
    assert_healthy(&d);
    d.stop();
}

/// Bytes from a 64-bit LCG, the same here and in the script.
fn lcg_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

#[test]
fn binary_garbage_on_stdout_and_stderr_is_byte_exact() {
    let d = Daemon::start(&[]);
    // Each stream starts with 0x06 (the bootstrap's own ACK byte), then every byte value,
    // terminal escapes, invalid UTF-8, something shaped like Docker's stream header, and
    // pseudo-random bytes written in pseudo-random chunk sizes, the streams interleaved.
    let script = r#"import sys
def lcg(seed, n):
    x, out = seed, bytearray()
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        out.append(x >> 56)
    return bytes(out)
nasty = b'\x1b[2J\x1b]0;title\x07\r\x00\xff\xfe\xed\xa0\x80\xc0\xaf\x01\x00\x00\x00\x00\x00\x00\x05hello\x02\x00\x00\x00\xff\xff\xff\xff'
out = b'\x06' + bytes(range(256)) + nasty + lcg(1, 200000)
err = b'\x06' + bytes(range(255, -1, -1)) + nasty + lcg(2, 300000)
sizes = lcg(3, 100000)
i = j = k = 0
while i < len(out) or j < len(err):
    n = sizes[k % len(sizes)] * 37 + 1
    k += 1
    if i < len(out):
        sys.stdout.buffer.write(out[i:i + n]); i += n
    if j < len(err):
        sys.stderr.buffer.write(err[j:j + n // 2 + 1]); j += n // 2 + 1
"#;
    let nasty: &[u8] = b"\x1b[2J\x1b]0;title\x07\r\x00\xff\xfe\xed\xa0\x80\xc0\xaf\x01\x00\x00\x00\x00\x00\x00\x05hello\x02\x00\x00\x00\xff\xff\xff\xff";
    let mut expect_out = vec![0x06];
    expect_out.extend(0..=255u8);
    expect_out.extend_from_slice(nasty);
    expect_out.extend(lcg_bytes(1, 200_000));
    let mut expect_err = vec![0x06];
    expect_err.extend((0..=255u8).rev());
    expect_err.extend_from_slice(nasty);
    expect_err.extend(lcg_bytes(2, 300_000));
    let out = d.run(script, &[], b"");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(out.stdout.len(), expect_out.len(), "stdout length");
    assert!(out.stdout == expect_out, "stdout differs");
    assert_eq!(out.stderr.len(), expect_err.len(), "stderr length");
    assert!(out.stderr == expect_err, "stderr differs");
    assert_healthy(&d);
    d.stop();
}

#[test]
fn closing_its_own_stdout_and_going_on_is_harmless() {
    let d = Daemon::start(&[]);
    let script = "import os, sys\nprint('before', flush=True)\nos.close(1)\ntry:\n    print('after', flush=True)\nexcept OSError as e:\n    sys.stderr.write('print failed: %s\\n' % e.strerror)\nsys.stderr.write('still here\\n')\n";
    let out = d.run(script, &[], b"");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(stdout_str(&out), "before\n");
    assert_eq!(
        stderr_str(&out),
        "print failed: Bad file descriptor\nstill here\n"
    );
    // All three standard streams closed, then a status of its own.
    let script = "import os\nprint('bye', flush=True)\nfor fd in (0, 1, 2):\n    os.close(fd)\nos._exit(4)\n";
    let out = d.run(script, &[], b"ignored input\n");
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert_eq!(stdout_str(&out), "bye\n");
    assert_eq!(stderr_str(&out), "");
    assert_healthy(&d);
    d.stop();
}

// ---------------------------------------------------------------------------------------
// Stdin

#[test]
fn script_reading_stdin_forever_gets_eof_when_the_client_closes_it() {
    let d = Daemon::start(&[]);
    let script = "import sys\nprint('ready', flush=True)\nn = 0\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)\n    n += 1\neofs = sum(1 for _ in range(100) if sys.stdin.read() == '')\nprint('lines', n, 'eofs', eofs)\n";
    let (mut child, mut out) = spawn_ready(d.pyexec(script).stderr(Stdio::piped()));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first\n").unwrap();
    assert!(out.wait_for(b"FIRST\n", Duration::from_secs(10)));
    stdin.write_all(b"second\n").unwrap();
    assert!(out.wait_for(b"SECOND\n", Duration::from_secs(10)));
    drop(stdin);
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("ends after EOF");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        out.rest(Duration::from_secs(2)),
        b"ready\nFIRST\nSECOND\nlines 2 eofs 100\n"
    );
    assert_healthy(&d);
    d.stop();
}

// ---------------------------------------------------------------------------------------
// Signals

#[test]
fn scripts_killing_themselves_report_128_plus_the_signal() {
    let d = Daemon::start(&[]);
    let by_kill = |sig: i32| {
        format!("import os, signal\nsignal.signal({sig}, signal.SIG_DFL)\nos.kill(os.getpid(), {sig})\nprint('alive')\n")
    };
    let killed = |sig: i32, name: &str| format!("pyexec: killed by signal {sig} ({name})\n");
    let mut cases: Vec<(&str, String, i32, String)> = vec![
        (
            "a real segfault",
            "import ctypes\nctypes.string_at(0)\nprint('alive')\n".into(),
            139,
            killed(11, "SIGSEGV"),
        ),
        (
            "os.abort()",
            "import os\nos.abort()\nprint('alive')\n".into(),
            134,
            killed(6, "SIGABRT"),
        ),
        (
            "SIGKILL",
            "import os\nos.kill(os.getpid(), 9)\nprint('alive')\n".into(),
            137,
            killed(9, "SIGKILL"),
        ),
    ];
    for (sig, name) in [
        (15, "SIGTERM"),
        (1, "SIGHUP"),
        (3, "SIGQUIT"),
        (10, "SIGUSR1"),
        (7, "SIGBUS"),
        (8, "SIGFPE"),
        (14, "SIGALRM"),
    ] {
        cases.push((name, by_kill(sig), 128 + sig, killed(sig, name)));
    }
    // As a shell would: no comment on an interrupt or a broken pipe.
    cases.push(("SIGINT", by_kill(2), 130, String::new()));
    cases.push(("SIGPIPE", by_kill(13), 141, String::new()));
    let runs: Vec<(&str, Vec<String>)> = cases.iter().map(|c| (c.1.as_str(), vec![])).collect();
    let outs = run_all(&d, &runs);
    for ((name, _, code, message), (out, _)) in cases.iter().zip(outs) {
        assert_eq!(out.status.code(), Some(*code), "{name}: {}", show(&out));
        assert_eq!(stdout_str(&out), "", "{name}");
        assert_eq!(stderr_str(&out), *message, "{name}");
    }
    assert_healthy(&d);
    d.stop();
}

// ---------------------------------------------------------------------------------------
// The sandbox

#[test]
fn filling_tmp_gives_enospc_and_the_script_goes_on() {
    let d = Daemon::start(&["--tmp-size", "8m", "--max-files-size", "1m"]);
    let script = "import errno, os\nn = 0\nchunk = b'\\0' * (1 << 20)\ntry:\n    with open('/tmp/fill', 'wb', buffering=0) as f:\n        while True:\n            f.write(chunk)\n            n += 1\nexcept OSError as e:\n    print('full after', n, 'MiB:', errno.errorcode[e.errno], flush=True)\nos.remove('/tmp/fill')\nwith open('/tmp/after', 'w') as f:\n    f.write('ok')\nprint('recovered', open('/tmp/after').read())\n";
    let out = d.run(script, &[], b"");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = stdout_str(&out);
    let n: usize = text
        .strip_prefix("full after ")
        .and_then(|t| t.split_once(" MiB: ENOSPC\nrecovered ok\n"))
        .filter(|(_, rest)| rest.is_empty())
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", show(&out)));
    assert!(n <= 8, "wrote {n} MiB into an 8 MiB /tmp");
    assert_eq!(stderr_str(&out), "");
    assert_healthy(&d);
    d.stop();
}

#[test]
fn nothing_outside_tmp_is_writable() {
    let d = Daemon::start(&[]);
    let script = r#"import errno, os
def attempt(f):
    try:
        f()
        return 'WRITABLE'
    except OSError as e:
        return errno.errorcode[e.errno]
for d in ['/', '/etc', '/usr', '/usr/local/lib', '/var', '/var/tmp', '/home', '/opt', '/run', '/srv', '/sys']:
    print('create', d, attempt(lambda: open(os.path.join(d, 'pyexec-probe'), 'w')))
print('mkdir /etc', attempt(lambda: os.mkdir('/etc/pyexec-probe')))
for f in ['/etc/passwd', '/usr/bin/python3', '/proc/sys/kernel/hostname']:
    r = attempt(lambda: open(f, 'a'))
    print('modify', f, 'refused' if r in ('EROFS', 'EACCES') else r)
open('/tmp/probe', 'w').write('x')
print('tmp', open('/tmp/probe').read())
"#;
    let out = d.run(script, &[], b"");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let mut expect = String::new();
    for dir in [
        "/",
        "/etc",
        "/usr",
        "/usr/local/lib",
        "/var",
        "/var/tmp",
        "/home",
        "/opt",
        "/run",
        "/srv",
        "/sys",
    ] {
        expect.push_str(&format!("create {dir} EROFS\n"));
    }
    expect.push_str("mkdir /etc EROFS\n");
    for f in [
        "/etc/passwd",
        "/usr/bin/python3",
        "/proc/sys/kernel/hostname",
    ] {
        expect.push_str(&format!("modify {f} refused\n"));
    }
    expect.push_str("tmp x\n");
    assert_eq!(stdout_str(&out), expect, "{}", stderr_str(&out));
    assert_healthy(&d);
    d.stop();
}

#[test]
fn becoming_root_is_refused() {
    let d = Daemon::start(&[]);
    let script = r#"import ctypes, errno, os, shutil, subprocess
def attempt(f):
    try:
        f()
        return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
print('uid', os.getuid(), os.geteuid(), os.getgid())
print('setuid', attempt(lambda: os.setuid(0)))
print('seteuid', attempt(lambda: os.seteuid(0)))
print('setgid', attempt(lambda: os.setgid(0)))
print('setgroups', attempt(lambda: os.setgroups([0])))
print('chroot', attempt(lambda: os.chroot('/tmp')))
print('mknod', attempt(lambda: os.mknod('/tmp/mem', 0o600 | 0o020000, os.makedev(1, 1))))
libc = ctypes.CDLL(None, use_errno=True)
def call(f, *args):
    return errno.errorcode[ctypes.get_errno()] if f(*args) == -1 else 'ok'
print('unshare user namespace', call(libc.unshare, 0x10000000))
print('mount', call(libc.mount, b'none', b'/tmp', b'tmpfs', 0, None))
print('sudo', shutil.which('sudo'))
su = subprocess.run(['su', '-c', 'id -u', 'root'], stdin=subprocess.DEVNULL, capture_output=True) if shutil.which('su') else None
print('su refused', su is None or (su.returncode != 0 and su.stdout.strip() != b'0'))
with open('/tmp/evil', 'w') as f:
    f.write('#!/bin/sh\necho pwned\n')
os.chmod('/tmp/evil', 0o4755)
print('exec from /tmp', attempt(lambda: subprocess.run(['/tmp/evil'])))
status = dict(l.split(':\t') for l in open('/proc/self/status').read().splitlines() if ':\t' in l)
print('caps', status['CapEff'], status['CapPrm'], status['CapBnd'], 'nnp', status['NoNewPrivs'])
"#;
    let out = d.run(script, &[], b"");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        stdout_str(&out),
        "uid 65534 65534 65534\n\
         setuid EPERM\nseteuid EPERM\nsetgid EPERM\nsetgroups EPERM\nchroot EPERM\nmknod EPERM\n\
         unshare user namespace EPERM\nmount EPERM\nsudo None\nsu refused True\n\
         exec from /tmp EACCES\n\
         caps 0000000000000000 0000000000000000 0000000000000000 nnp 1\n",
        "{}",
        stderr_str(&out)
    );
    assert_healthy(&d);
    d.stop();
}

#[test]
fn network_is_loopback_only() {
    let d = Daemon::start(&[]);
    // The outside addresses are documentation ranges (RFC 5737, RFC 3849), and they are
    // only tried once the script has seen that no route leaves the container, so that no
    // packet could leave this machine even if the sandbox had a network.
    let script = r#"import errno, os, socket, sys
def err(e):
    return errno.errorcode.get(e.errno, str(e.errno))
ifaces = sorted(os.listdir('/sys/class/net'))
routes4 = [l for l in open('/proc/net/route').read().splitlines()[1:] if l.strip()]
routes6 = [l for l in open('/proc/net/ipv6_route').read().splitlines() if l.split()[-1] != 'lo']
print('ifaces', ifaces, 'routes', len(routes4), len(routes6), flush=True)
if ifaces != ['lo'] or routes4 or routes6:
    sys.exit('a network is there: not trying outside addresses')
for family, addr in [(socket.AF_INET, ('192.0.2.1', 80)), (socket.AF_INET6, ('2001:db8::1', 80))]:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(addr)
        print('connect', addr[0], 'CONNECTED')
    except OSError as e:
        print('connect', addr[0], err(e))
try:
    socket.getaddrinfo('example.com', 80)
    print('dns resolved')
except socket.gaierror:
    print('dns fails')
for name, args in [('raw', (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)), ('packet', (socket.AF_PACKET, socket.SOCK_RAW))]:
    try:
        socket.socket(*args)
        print(name, 'ok')
    except OSError as e:
        print(name, err(e))
server = socket.socket()
server.bind(('127.0.0.1', 0))
server.listen()
client = socket.create_connection(server.getsockname())
conn, _ = server.accept()
client.sendall(b'ping')
print('loopback', conn.recv(4).decode())
"#;
    let out = d.run(script, &[], b"");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        stdout_str(&out),
        "ifaces ['lo'] routes 0 0\n\
         connect 192.0.2.1 ENETUNREACH\nconnect 2001:db8::1 ENETUNREACH\n\
         dns fails\nraw EPERM\npacket EPERM\nloopback ping\n",
        "{}",
        stderr_str(&out)
    );
    assert_healthy(&d);
    d.stop();
}

// ---------------------------------------------------------------------------------------
// Arguments

/// Writes its arguments back, NUL-separated, so that a test can compare them exactly.
const ECHO_ARGV: &str = "import sys\nsys.stdout.write('\\0'.join(sys.argv[1:]))\n";

#[test]
fn arguments_at_and_beyond_the_limits() {
    let d = Daemon::start(&[]);
    // Exactly at both limits: 4096 arguments, 65536 bytes counted with their NULs.
    let at_limit: Vec<String> = (0..4096).map(|i| format!("{i:015}")).collect();
    let outs = run_all(
        &d,
        &[
            (ECHO_ARGV, at_limit.clone()),
            (ECHO_ARGV, vec![String::new(); 4097]),
            (ECHO_ARGV, vec!["a".repeat(65536)]),
        ],
    );
    let (out, _) = &outs[0];
    assert_eq!(out.status.code(), Some(0), "{}", show(out));
    assert!(stdout_str(out) == at_limit.join("\0"), "argv differs");
    for ((out, _), message) in outs[1..].iter().zip([
        "pyexec: too many arguments (4097, the limit is 4096)\n",
        "pyexec: arguments too large (65537 bytes, the limit is 65536)\n",
    ]) {
        assert_eq!(out.status.code(), Some(125), "{}", show(out));
        assert_eq!(stdout_str(out), "");
        assert_eq!(stderr_str(out), message);
    }
    assert_healthy(&d);
    d.stop();
}

/// Arguments far beyond the limit, and beyond what one frame can carry: refused at once
/// with the arguments named, not after a timeout with a message about something else.
#[test]
fn arguments_too_large_for_one_frame_are_refused_at_once() {
    let d = Daemon::start(&["--upload-timeout", "2", "--session-timeout", "4"]);
    let huge = "b".repeat(100_000);
    let (out, took) = timed_run(&d, ECHO_ARGV, &[&huge, &huge, &huge]);
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    assert_eq!(stdout_str(&out), "");
    assert!(
        stderr_str(&out).starts_with("pyexec: arguments too large"),
        "{}",
        show(&out)
    );
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_healthy(&d);
    d.stop();
}

/// Made of the character that JSON escapes most expensively (U+0001 becomes `\u0001`,
/// six bytes): within the frame limit once encoded, arguments run byte for byte; within
/// the raw 64 KiB limit but not the encoded one, the client refuses at once, saying so.
#[test]
fn allowed_arguments_run_whatever_their_characters() {
    let d = Daemon::start(&["--upload-timeout", "2", "--session-timeout", "4"]);
    let control = "\u{1}".repeat(20_000);
    let out = d.run(ECHO_ARGV, &[&control], b"");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(stdout_str(&out) == control, "argv differs");
    let too_much = "\u{1}".repeat(65535);
    let (out, took) = timed_run(&d, ECHO_ARGV, &[&too_much]);
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    assert!(
        stderr_str(&out).starts_with("pyexec: arguments too large to send"),
        "{}",
        show(&out)
    );
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_healthy(&d);
    d.stop();
}
