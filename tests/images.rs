//! Several images: a science image built from Debian packages (numpy, pandas, matplotlib)
//! served beside the default one, picked by name, with a warm pool of its own whose
//! waiting interpreters have preloaded pandas and matplotlib.pyplot.
//!
//! Building the science image takes minutes the first time (1.25 GB from Debian), so it is
//! built once per test process (and skipped when the tag exists: `scripts/test` builds it
//! ahead), and the checks share one daemon.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::process::Command;
use std::sync::Once;

use bytes::Bytes;
use common::{daemon::*, figures::*, processes::*, PYEXEC, PYEXECD};
use pyexec::client::{self, Io, Notice, Request};

/// The science image, as `scripts/test` and docs/operations.md build it.
const SCIENCE: &str = "pyexec/sandbox:science";
const PACKAGES: &str = "python3-numpy,python3-pandas,python3-matplotlib";

/// The plot example, and its data.
const PLOT: &str = include_str!("../examples/plot/plot.py");
const DATA: &str = include_str!("../examples/plot/data.csv");

fn ensure_science_image() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let out = Command::new(PYEXECD)
            .args(["build-image", "--packages", PACKAGES, "--tag", SCIENCE])
            .output()
            .expect("run pyexecd build-image");
        assert!(
            out.status.success(),
            "pyexecd build-image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), SCIENCE);
    });
}

/// What one session gave: its STARTED, exit status, stdout and stderr.
struct Ran {
    warm: bool,
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `script` in the image named `image` through the library, noting STARTED.
fn run_in(d: &Daemon, image: Option<&str>, script: &str) -> Ran {
    let cfg = d.client_config();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let outcome = client::run(
            &cfg,
            Request {
                script: Bytes::from(script.to_string()),
                image: image.map(String::from),
                ..Default::default()
            },
            Io::<tokio::io::Empty, _, _> {
                stdin: None,
                stdout: &mut stdout,
                stderr: &mut stderr,
                control: None,
                notices: Some(tx),
            },
        )
        .await
        .unwrap();
        let mut warm = None;
        while let Ok(n) = rx.try_recv() {
            if let Notice::Started(s) = n {
                warm = Some(s.warm);
            }
        }
        Ran {
            warm: warm.expect("a STARTED notice"),
            code: outcome.exit_code(),
            stdout: String::from_utf8(stdout).unwrap(),
            stderr: String::from_utf8(stderr).unwrap(),
        }
    })
}

/// The plot example as one script: its CSV written where plot.py reads it (what `pyexec
/// --file` will do), then plot.py, then the PNG's size and signature. Its first line
/// notes which modules the waiting interpreter had loaded before the script ran.
fn plot_script() -> String {
    format!(
        "import sys\nPRELOADED = ('pandas' in sys.modules, 'matplotlib.pyplot' in sys.modules)\n\
         open('data.csv', 'w').write({DATA:?})\n\
         exec(compile({PLOT:?}, 'plot.py', 'exec'), {{'__name__': '__main__'}})\n\
         png = open('plot.png', 'rb').read()\n\
         print('preloaded', *PRELOADED)\n\
         print('png', len(png), png[:8].hex())\n"
    )
}

#[test]
fn a_science_image_is_served_by_name_with_a_preloaded_warm_pool() {
    ensure_science_image();
    let d = Daemon::start(&[
        "--extra-image",
        &format!("science={SCIENCE}"),
        "--image-warm",
        "science=1",
        "--preload",
        "science=pandas,matplotlib.pyplot",
    ]);
    wait_pool_ready(&d);
    assert_eq!(
        warm_target(&d),
        2,
        "one default spare and one science spare"
    );

    // The default image is untouched: warm, and nothing of the science image in it.
    let hello = run_in(
        &d,
        None,
        "import sys\nprint('hello', 'pandas' in sys.modules)\n",
    );
    assert!(hello.warm, "the default image's pool serves it");
    assert_eq!((hello.code, hello.stdout.as_str()), (0, "hello False\n"));

    // A science session: the modules are there before the script imports them, and the
    // import prints nothing (no font cache rebuilt, no MPLCONFIGDIR warning).
    let science = run_in(
        &d,
        Some("science"),
        "import sys\nprint('pandas' in sys.modules, 'matplotlib.pyplot' in sys.modules)\n\
         import pandas, matplotlib.pyplot, numpy\nprint(pandas.__version__ > '1')\n",
    );
    assert!(science.warm, "served from the science pool");
    assert_eq!(
        (
            science.code,
            science.stdout.as_str(),
            science.stderr.as_str()
        ),
        (0, "True True\nTrue\n", ""),
    );

    // The plot example, in a spare started after the last session: a real PNG.
    wait_pool_ready(&d);
    let plot = run_in(&d, Some("science"), &plot_script());
    assert_eq!(
        (plot.code, plot.stderr.as_str()),
        (0, ""),
        "{}",
        plot.stdout
    );
    assert!(plot.warm);
    assert!(
        plot.stdout.starts_with("plot.png: 52 weeks"),
        "{}",
        plot.stdout
    );
    assert!(
        plot.stdout.contains("preloaded True True\n"),
        "{}",
        plot.stdout
    );
    let png = plot.stdout.lines().last().unwrap();
    let size: usize = png.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(png.ends_with(" 89504e470d0a1a0a"), "{png}");
    assert!(size > 10_000, "{png}");

    // A name the server does not offer: refused before anything runs, with the names
    // it does offer.
    let out = Command::new(PYEXEC)
        .args(["--server", &d.addr.to_string(), "--image", "nope", "--ca"])
        .arg(d.ca())
        .arg(d.script_file("print('never')"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = stderr_str(&out);
    assert!(
        err.contains("unknown image \"nope\"") && err.contains("default, science"),
        "{err}"
    );
    assert_eq!(stdout_str(&out), "");
    d.stop();
}

/// Without a warm spare and without preloading (a cold container), matplotlib still
/// finds its font cache and says nothing on stderr: the image's prepared home is copied
/// into HOME by the bootstrap.
#[test]
fn a_cold_science_container_imports_matplotlib_silently() {
    ensure_science_image();
    let d = Daemon::start(&[
        "--extra-image",
        &format!("science={SCIENCE}"),
        "--image-warm",
        "science=0",
    ]);
    let ran = run_in(
        &d,
        Some("science"),
        "import os, matplotlib.pyplot, matplotlib\n\
         print(matplotlib.get_cachedir(), sorted(os.listdir(matplotlib.get_cachedir())))\n",
    );
    assert!(!ran.warm);
    assert_eq!(ran.stderr, "", "nothing of the sandbox's making on stderr");
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, "/tmp/.cache/matplotlib ['fontlist-v330.json']\n")
    );
    d.stop();
}

/// The real CLI on `script` in the science image, with `options`.
fn cli_command(d: &Daemon, options: &[&str], script: &str) -> Command {
    let mut cmd = Command::new(PYEXEC);
    cmd.args([
        "--server",
        &d.addr.to_string(),
        "--image",
        "science",
        "--ca",
    ])
    .arg(d.ca())
    .args(options)
    .arg(d.script_file(script));
    cmd
}

/// Runs the real CLI on `script` in the science image, in `cwd`, with `options`.
fn cli(d: &Daemon, cwd: &std::path::Path, options: &[&str], script: &str) -> std::process::Output {
    cli_command(d, options, script)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// A preloading container forks its small waiting parent before it imports anything, the
/// script runs in the process that preloaded, and that process ends without tearing the
/// preloaded modules down (`_quick_exit` in the bootstrap). Everything a script can see of
/// its end must still be what `python3 script.py` gives: statuses, SystemExit's message,
/// a KeyboardInterrupt's signal, tracebacks, threads joined, atexit callbacks, `__del__`
/// and an unclosed file flushed (and sent back with `--get`), a forked child's own status;
/// and the parent's reports still hold: CPU time without the preload's, stdin, Ctrl-C,
/// files after a timeout, and INPUT_WANTED.
#[test]
fn a_preloaded_session_ends_as_python3_would() {
    ensure_science_image();
    let d = Daemon::start(&[
        "--extra-image",
        &format!("science={SCIENCE}"),
        "--image-warm",
        "science=2",
        "--preload",
        "science=pandas,matplotlib.pyplot",
    ]);
    wait_pool_ready(&d);
    let work = tempfile::tempdir().unwrap();
    let run = |options: &[&str], script: &str| {
        let out = cli(&d, work.path(), options, script);
        (out.status.code(), stdout_str(&out), stderr_str(&out))
    };

    // Exit statuses, as Python computes them.
    for (script, code, stderr_ends) in [
        ("import sys\nsys.exit(3)\n", 3, ""),
        ("import sys\nsys.exit(256 + 7)\n", 7, ""),
        ("import sys\nsys.exit('bye')\n", 1, "bye\n"),
        (
            "import pandas\nraise KeyboardInterrupt\n",
            130,
            "KeyboardInterrupt\n",
        ),
        (
            "def f():\n    1/0\nf()\n",
            1,
            "ZeroDivisionError: division by zero\n",
        ),
        ("import sys\nsys.stdout.write('no newline')\n", 0, ""),
        ("import sys\nprint('x')\nsys.stdout.close()\n", 0, ""),
        ("import sys\nsys.exit(2**40 + 9)\n", 9, ""),
    ] {
        let (status, stdout, stderr) = run(&[], script);
        assert_eq!(status, Some(code), "{script:?}: {stdout} {stderr}");
        assert!(stderr.ends_with(stderr_ends), "{script:?}: {stderr}");
        if code == 1 && stderr_ends.starts_with("Zero") {
            assert!(
                stderr.starts_with("Traceback (most recent call last):\n  File \"/tmp/"),
                "the bootstrap's frame is cut: {stderr}"
            );
        }
        if script.contains("no newline") {
            assert_eq!(stdout, "no newline", "flushed at exit");
        }
    }

    // The end in Python's order: threads joined, atexit callbacks, then the globals of
    // __main__ released (a __del__ runs, an unclosed file is flushed and comes back).
    let (status, stdout, stderr) = run(
        &["-q", "--get", "out.txt"],
        "import atexit, threading, time\n\
         f = open('out.txt', 'w')\nf.write('kept')\n\
         class D:\n    def __del__(self):\n        print('del ran', flush=True)\n\
         d = D()\n\
         atexit.register(print, 'atexit ran')\n\
         threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n",
    );
    assert_eq!(
        (status, stdout.as_str(), stderr.as_str()),
        (Some(0), "thread done\natexit ran\ndel ran\n", "")
    );
    assert_eq!(std::fs::read(work.path().join("out.txt")).unwrap(), b"kept");

    // Callbacks registered before the script (logging's, imported by matplotlib in the
    // preload) still run at its end; a file written in a frame of the uncaught exception
    // is flushed. Then: a daemon thread still running sees no globals vanish.
    let (status, stdout, stderr) = run(
        &["-q", "--get", "log.txt", "--get", "partial.txt"],
        r#"import logging, logging.handlers
h = logging.handlers.MemoryHandler(100, target=logging.FileHandler("log.txt"))
logging.getLogger().addHandler(h)
logging.getLogger().warning("flushed at exit")
def main():
    f = open("partial.txt", "w")
    f.write("partial data")
    raise ValueError("the end")
main()
"#,
    );
    assert_eq!(status, Some(1), "{stdout} {stderr}");
    assert!(stderr.ends_with("ValueError: the end\n"), "{stderr}");
    assert!(!stderr.contains("NoneType"), "{stderr}");
    assert_eq!(
        std::fs::read(work.path().join("log.txt")).unwrap(),
        b"flushed at exit\n"
    );
    assert_eq!(
        std::fs::read(work.path().join("partial.txt")).unwrap(),
        b"partial data"
    );
    let (status, stdout, stderr) = run(
        &[],
        r#"import threading, time
def tick():
    return 1
def loop():
    while True:
        tick()
        time.sleep(0.001)
threading.Thread(target=loop, daemon=True).start()
time.sleep(0.05)
print("bye")
"#,
    );
    assert_eq!(
        (status, stdout.as_str(), stderr.as_str()),
        (Some(0), "bye\n", "")
    );

    // A child the script forks ends with its own status.
    let (status, stdout, _) = run(
        &[],
        "import os, sys\npid = os.fork()\nif pid == 0:\n    sys.exit(5)\n\
         print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n",
    );
    assert_eq!((status, stdout.as_str()), (Some(0), "5\n"));

    // The script's orphans go to docker-init, which reaps them (the parent adopts the
    // script's process as a subreaper, and stops being one at once): no zombie is left
    // to count against the pids limit.
    let (status, stdout, stderr) = run(
        &[],
        r#"import os, time
for _ in range(30):
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            os._exit(0)
        os._exit(0)
    os.waitpid(pid, 0)
def zombies():
    n = 0
    for p in filter(str.isdigit, os.listdir('/proc')):
        try:
            st = open(f'/proc/{p}/stat').read()
        except OSError:
            continue
        n += st.rsplit(')', 1)[1].split()[0] == 'Z'
    return n
t = time.monotonic()
while zombies() and time.monotonic() - t < 5:
    time.sleep(0.05)
print('zombies', zombies())
"#,
    );
    assert_eq!(
        (status, stdout.as_str()),
        (Some(0), "zombies 0\n"),
        "{stderr}"
    );

    // The CPU time is the script's: a 1 s busy loop, not the seconds of preloading.
    let (status, _, stderr) = run(
        &["--stats"],
        "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0:\n    pass\n",
    );
    assert_eq!(status, Some(0), "{stderr}");
    // "pyexec: cpu 1.015s, ..." (or "987ms").
    let figure = stderr
        .split("cpu ")
        .nth(1)
        .and_then(|s| s.split(',').next());
    let cpu_ms = match figure {
        Some(f) if f.ends_with("ms") => f.trim_end_matches("ms").parse::<f64>().ok(),
        Some(f) => f
            .trim_end_matches('s')
            .parse::<f64>()
            .ok()
            .map(|s| s * 1000.0),
        None => None,
    }
    .unwrap_or_else(|| panic!("no cpu figure in {stderr:?}"));
    assert!((950.0..=1600.0).contains(&cpu_ms), "{stderr}");

    // Stdin reaches the script.
    let mut child = cli_command(&d, &[], "print('got', input())\n")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        (out.status.code(), stdout_str(&out).as_str()),
        (Some(0), "got hi\n")
    );

    // Ctrl-C at the client reaches the script as KeyboardInterrupt.
    let mut child = cli_command(
        &d,
        &[],
        "import time\nprint('ready', flush=True)\ntime.sleep(60)\n",
    )
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "ready\n");
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr_str(&out));
    assert!(
        stderr_str(&out).contains("KeyboardInterrupt"),
        "{}",
        stderr_str(&out)
    );

    // Files still come back when the server stops the script for its time limit. (The
    // limit counts from the connection: a spare still preloading under load would eat a
    // short one before the script ran, so a ready spare is awaited first.)
    wait_pool_ready(&d);
    let (status, _, stderr) = run(
        &["-q", "--timeout", "6s", "--get", "result.txt"],
        "import time\nopen('result.txt', 'w').write('late')\ntime.sleep(60)\n",
    );
    assert_eq!(status, Some(124), "{stderr}");
    assert_eq!(
        std::fs::read(work.path().join("result.txt")).unwrap(),
        b"late"
    );

    // INPUT_WANTED comes from the small parent, after the prompt.
    let stdout = input_wanted_session(&d, "x = input('name? ')\nprint('hello', x)\n", "bob");
    assert_eq!(stdout, "name? [wanted]hello bob\n");
    d.stop();
}

/// A raw science session that asks for INPUT_WANTED and answers the first with `line`;
/// its stdout with "[wanted]" where the frame came.
fn input_wanted_session(d: &Daemon, script: &str, line: &str) -> String {
    use common::raw::{runtime, Got, Raw};
    use pyexec::protocol::{Frame, INPUT_WANTED};
    runtime().block_on(async {
        let mut c = Raw::connect(d).await;
        c.send(Frame::Hello(
            serde_json::from_value(serde_json::json!({
                "version": 1,
                "script_size": script.len(),
                "client": "images test",
                "image": "science",
                "features": [INPUT_WANTED],
            }))
            .unwrap(),
        ))
        .await;
        c.send(Frame::Script(Bytes::copy_from_slice(script.as_bytes())))
            .await;
        let mut stdout = String::new();
        loop {
            match c.next(std::time::Duration::from_secs(30)).await {
                Got::Frame(Frame::Stdout(b)) => stdout.push_str(&String::from_utf8_lossy(&b)),
                Got::Frame(Frame::InputWanted) => {
                    stdout.push_str("[wanted]");
                    c.send(Frame::Stdin(format!("{line}\n").into())).await;
                }
                Got::Frame(Frame::End(end)) => {
                    assert_eq!(end.exit_code, 0, "{stdout}");
                    return stdout;
                }
                Got::Frame(f) if f.is_terminal() => panic!("ended with {f:?}"),
                Got::Frame(_) => {}
                other => panic!("the connection ended early: {other:?}"),
            }
        }
    })
}
