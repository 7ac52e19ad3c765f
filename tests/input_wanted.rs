//! Feature `input_wanted` (protocol §10.3) against the real daemon, Docker and the real
//! bootstrap: INPUT_WANTED comes once per wait for stdin, after the prompt, before any
//! input is sent (the client here answers only what it is told is wanted, so a missing
//! signal hangs the script and fails the test); never for computing, sleeping, writing,
//! reading other pipes or a `select` with a timeout; for a subprocess and a thread
//! reading stdin; never to a client that did not ask; and within the latency goal.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{daemon::*, idle::*, raw::*};
use pyexec::protocol::{Frame, INPUT_WANTED};

/// What a session showed: its stdout, and at each INPUT_WANTED the stdout so far and the
/// wall-clock time it arrived (seconds since the epoch).
struct Seen {
    stdout: Vec<u8>,
    wanted: Vec<(Vec<u8>, f64)>,
    granted: bool,
    exit_code: i32,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Runs `script`, asking for the feature when `ask`; stdin stays open, and each
/// INPUT_WANTED is answered with the next of `lines` (then with STDIN_EOF), never before.
fn session(d: &Daemon, script: &str, ask: bool, lines: &[&str]) -> Seen {
    runtime().block_on(async {
        let mut c = Raw::connect(d).await;
        let features: &[&str] = if ask { &[INPUT_WANTED] } else { &[] };
        c.send(Frame::Hello(
            serde_json::from_value(serde_json::json!({
                "version": 1,
                "script_size": script.len(),
                "client": "input_wanted test",
                "features": features,
            }))
            .unwrap(),
        ))
        .await;
        c.send(Frame::Script(Bytes::copy_from_slice(script.as_bytes())))
            .await;
        let mut seen = Seen {
            stdout: Vec::new(),
            wanted: Vec::new(),
            granted: false,
            exit_code: -1,
        };
        let mut lines = lines.iter();
        loop {
            match c.next(Duration::from_secs(30)).await {
                Got::Frame(Frame::Welcome(w)) => {
                    seen.granted = w.features.iter().any(|f| f == INPUT_WANTED)
                }
                Got::Frame(Frame::Stdout(b)) => seen.stdout.extend_from_slice(&b),
                Got::Frame(Frame::InputWanted) => {
                    seen.wanted.push((seen.stdout.clone(), now()));
                    match lines.next() {
                        Some(line) => c.send(Frame::Stdin(format!("{line}\n").into())).await,
                        None => c.send(Frame::StdinEof).await,
                    }
                }
                Got::Frame(Frame::End(end)) => {
                    seen.exit_code = end.exit_code;
                    return seen;
                }
                Got::Frame(Frame::Stderr(b)) => eprint!("{}", String::from_utf8_lossy(&b)),
                Got::Frame(f) if f.is_terminal() => panic!("ended with {f:?}"),
                Got::Frame(_) => {}
                other => panic!("the connection ended early: {other:?}"),
            }
        }
    })
}

/// The stdout each INPUT_WANTED came after, as text.
fn before_each(seen: &Seen) -> Vec<String> {
    seen.wanted
        .iter()
        .map(|(out, _)| String::from_utf8_lossy(out).into_owned())
        .collect()
}

const SPIN: &str = "import time\n\
def spin(s):\n    t = time.monotonic()\n    while time.monotonic() - t < s:\n        pass\n";

#[test]
fn each_wait_for_stdin_is_signalled_once_and_nothing_else_is() {
    let d = Daemon::start(&[]);
    let base = idle_baseline(&d);

    // Three input() calls with ~200 ms of computing before each: exactly three signals,
    // each after its own prompt, each before its line was sent (the client sends a line
    // only when told: a missing signal would hang the script until the test's timeout).
    let script = format!(
        "{SPIN}spin(0.2)\na = input('a? ')\nspin(0.2)\nb = input('b? ')\nspin(0.2)\n\
         c = input('c? ')\nprint('=' + a + b + c)\n"
    );
    let seen = session(&d, &script, true, &["1", "2", "3"]);
    assert!(seen.granted, "WELCOME grants input_wanted");
    assert_eq!(seen.exit_code, 0);
    assert_eq!(before_each(&seen), ["a? ", "a? b? ", "a? b? c? "]);
    assert_eq!(seen.stdout, b"a? b? c? =123\n");

    // Lines read back to back (no time between a read and the next block for a periodic
    // look to see the script running): still one signal per line.
    let seen = session(
        &d,
        "import sys\nfor i in range(5):\n    sys.stdin.readline()\nprint('done')\n",
        true,
        &["a", "b", "c", "d", "e"],
    );
    assert_eq!(seen.wanted.len(), 5, "{:?}", before_each(&seen));
    assert_eq!(seen.stdout, b"done\n");

    // Computing, sleeping, writing, a thread sleeping, a subprocess fed through a pipe of
    // its own, reading a file: no signal, though stdin stays open all along.
    let busy = format!(
        "{SPIN}import subprocess, threading\nspin(0.3)\ntime.sleep(0.3)\n\
         for i in range(2000):\n    print(i)\n\
         t = threading.Thread(target=time.sleep, args=(0.3,))\nt.start()\nt.join()\n\
         r = subprocess.run(['cat'], input=b'x' * 200000, capture_output=True)\n\
         print(len(r.stdout), len(open('/etc/passwd').read()) > 0)\n\
         subprocess.run(['sleep', '0.3'])\n"
    );
    let seen = session(&d, &busy, true, &[]);
    assert_eq!(seen.exit_code, 0);
    assert!(seen.wanted.is_empty(), "{:?}", before_each(&seen));
    assert!(String::from_utf8_lossy(&seen.stdout).ends_with("200000 True\n"));

    // select with a timeout is not a read (§10.3): no signal while it waits; the input()
    // after it is.
    let seen = session(
        &d,
        "import select, sys\nr, _, _ = select.select([sys.stdin], [], [], 0.5)\n\
         print('timeout' if not r else 'ready', flush=True)\nprint(input('> '))\n",
        true,
        &["x"],
    );
    assert_eq!(before_each(&seen), ["timeout\n> "]);
    assert_eq!(seen.stdout, b"timeout\n> x\n");

    // A subprocess reading the inherited stdin counts, and so does a thread in input()
    // while the main thread computes.
    let seen = session(
        &d,
        &format!(
            "{SPIN}import subprocess, threading\nprint('one', flush=True)\n\
             subprocess.run(['head', '-n1'])\nprint('two', flush=True)\n\
             t = threading.Thread(target=lambda: print('got', input()))\nt.start()\n\
             spin(0.3)\nt.join()\n"
        ),
        true,
        &["from head", "from thread"],
    );
    assert_eq!(before_each(&seen), ["one\n", "one\nfrom head\ntwo\n"]);
    assert_eq!(seen.stdout, b"one\nfrom head\ntwo\ngot from thread\n");

    // After EOF nothing can block on stdin: the second input() fails at once, unsignalled.
    let seen = session(
        &d,
        "for i in range(2):\n    try:\n        input()\n    except EOFError:\n        print('eof')\n",
        true,
        &[],
    );
    assert_eq!(seen.wanted.len(), 1);
    assert_eq!(seen.stdout, b"eof\neof\n");

    // A client that did not ask never sees the frame: the script just waits for its line.
    let seen = runtime().block_on(async {
        let mut c = Raw::connect(&d).await;
        let script = b"print(input('? ')[::-1])";
        c.hello(script.len() as u64, script).await;
        let (out, _) = c.stdout_until(b"? ", Duration::from_secs(30)).await;
        assert_eq!(out, b"? ");
        c.send(Frame::Stdin("abc\n".into())).await;
        c.until_end(Duration::from_secs(30)).await
    });
    assert!(!seen.0.iter().any(|f| matches!(f, Frame::InputWanted)));
    let out: Vec<u8> = seen
        .0
        .iter()
        .filter_map(|f| match f {
            Frame::Stdout(b) => Some(b.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(out, b"cba\n");

    assert_back_to_idle(&d, base, "after the input_wanted sessions");
    d.stop();
}

/// From the script blocking (its prompt carries the time just before input()) to the
/// frame reaching this client: the goal is 50 ms (docs/performance.md).
#[test]
fn the_signal_comes_within_the_latency_goal() {
    let d = Daemon::start(&[]);
    let base = idle_baseline(&d);
    let n = 20;
    let script = format!(
        "import time\nfor i in range({n}):\n    time.sleep(0.02)\n    input('%.6f;' % time.time())\n"
    );
    let lines = vec!["x"; n];
    let seen = session(&d, &script, true, &lines);
    assert_eq!(seen.exit_code, 0);
    assert_eq!(seen.wanted.len(), n);
    let mut lat: Vec<f64> = seen
        .wanted
        .iter()
        .map(|(out, at)| {
            let text = String::from_utf8_lossy(out);
            let prompt = text.trim_end_matches(';').rsplit(';').next().unwrap();
            (at - prompt.parse::<f64>().unwrap()) * 1000.0
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    eprintln!(
        "input_wanted latency over {n} waits: median {:.1} ms, max {:.1} ms",
        lat[n / 2],
        lat[n - 1]
    );
    // The goal is 50 ms; the bound leaves room for a loaded test machine.
    assert!(lat[n / 2] <= 50.0, "median {:.1} ms", lat[n / 2]);
    assert!(lat[n - 1] <= 150.0, "max {:.1} ms", lat[n - 1]);
    assert_back_to_idle(&d, base, "after the latency run");
    d.stop();
}

/// The watcher's cost (docs/performance.md): the container's CPU time (END `cpu_ms`, from
/// its cgroup) for a script that sleeps and one that computes for 2 s, with and without
/// the feature. A figure, not a check: `cargo test --test input_wanted -- --ignored`.
#[test]
#[ignore]
fn cost_of_watching() {
    let d = Daemon::start(&[]);
    let cpu = |script: &str, ask: bool| -> u64 {
        let seen = runtime().block_on(async {
            let mut c = Raw::connect(&d).await;
            let features: &[&str] = if ask { &[INPUT_WANTED] } else { &[] };
            c.send(Frame::Hello(
                serde_json::from_value(serde_json::json!({
                    "version": 1, "script_size": script.len(), "features": features,
                }))
                .unwrap(),
            ))
            .await;
            c.send(Frame::Script(Bytes::copy_from_slice(script.as_bytes())))
                .await;
            c.until_end(Duration::from_secs(30)).await
        });
        match seen.1 {
            Some(Frame::End(end)) => end.usage.cpu_ms.unwrap(),
            other => panic!("{other:?}"),
        }
    };
    let sleep = "import time\ntime.sleep(2)\n";
    let sleep6 = "import time\ntime.sleep(6)\n";
    let busy = format!("{SPIN}spin(2)\n");
    for round in 0..3 {
        let (s0, s1) = (cpu(sleep, false), cpu(sleep, true));
        let (b0, b1) = (cpu(&busy, false), cpu(&busy, true));
        let (l0, l1) = (cpu(sleep6, false), cpu(sleep6, true));
        let (p0, p1) = (cpu("pass\n", false), cpu("pass\n", true));
        eprintln!("round {round}: sleep 6 s: {l0} ms without, {l1} ms with; pass: {p0} ms without, {p1} ms with");
        eprintln!(
            "round {round}: sleep 2 s: {s0} ms CPU without, {s1} ms with; \
             busy 2 s: {b0} ms without, {b1} ms with"
        );
    }
    d.stop();
}
