//! Feature `files` against the real daemon, Docker and TLS: files in beside the script,
//! result files out, and the hostile cases of both (names, symlinks, FIFOs, bounds). The
//! client-side cases of a hostile server are in crates/pyexec-client/tests/scripted_server.rs.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{daemon::*, figures::*, idle::*, processes::*, raw::*, PYEXEC};
use pyexec::protocol::files::FilesOutEnd;
use pyexec::protocol::{EndReason, Frame};

/// `pyexec OPTIONS SCRIPT` against `d`, stdin closed, from `cwd`.
fn pyexec(d: &Daemon, cwd: &Path, options: &[&str], script: &str) -> Output {
    let path = d.script_file(script);
    Command::new(PYEXEC)
        .current_dir(cwd)
        .arg("--server")
        .arg(d_addr(d))
        .arg("--ca")
        .arg(d.ca())
        .args(options)
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn d_addr(d: &Daemon) -> String {
    d.client_config().server
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout_str(out),
        stderr_str(out)
    )
}

#[test]
fn files_in_land_beside_the_script_and_results_come_back() {
    let d = Daemon::start(&[]);
    let base = idle_baseline(&d);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(w.join("helper.py"), "def greet(n):\n    return f'hi {n}'\n").unwrap();
    std::fs::create_dir_all(w.join("data/sub")).unwrap();
    std::fs::write(w.join("data/a.csv"), "x,y\n1,2\n").unwrap();
    std::fs::write(w.join("data/sub/b.txt"), "bee").unwrap();
    let out_dir = w.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let script = "import helper, os\n\
        print(helper.greet(open('data/a.csv').read().splitlines()[1]))\n\
        print(open('data/sub/b.txt').read(), os.getcwd())\n\
        os.makedirs('results')\n\
        open('results/r1.csv', 'w').write('1\\n')\n\
        open('results/r2.csv', 'w').write('22\\n')\n\
        open('plot.png', 'wb').write(bytes(range(256)) * 1000)\n";
    let out = pyexec(
        &d,
        w,
        &[
            "--file",
            "helper.py",
            "--dir",
            "data",
            "--get",
            "plot.png",
            "--get",
            "results/*.csv",
            "--get",
            "*.svg",
            "--out-dir",
            out_dir.to_str().unwrap(),
        ],
        script,
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(stdout_str(&out), "hi 1,2\nbee /tmp\n");
    assert_eq!(
        std::fs::read(out_dir.join("plot.png")).unwrap(),
        (0..=255u8).collect::<Vec<_>>().repeat(1000)
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("results/r2.csv")).unwrap(),
        "22\n"
    );
    let err = stderr_str(&out);
    assert_eq!(err.matches("pyexec: saved ").count(), 3, "{err}");
    assert!(err.contains("--get *.svg: no file matched"), "{err}");
    assert_back_to_idle(&d, base, "after files in and out");
    d.stop();
}

/// Waits until the daemon's log has said `n` times that it fetched a file out from the
/// engine (its log reaches the test a moment after the client's exit), and checks that
/// it said so no more.
fn assert_fetched(d: &Daemon, n: usize) {
    const LINE: &str = "a file out fetched from the engine";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while d.log().matches(LINE).count() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.log().matches(LINE).count(), n, "{}", d.log());
}

/// Files of 16 MiB and more come back through the engine's archive API (as `docker cp`
/// reads them), not through the container's output: byte for byte, in a subdirectory
/// and under a name that needs a PAX header, in their place beside small files sent the
/// ordinary way; a symlink is still never followed; and each sandbox's /tmp, a volume, is
/// removed with its container (`stop` checks).
#[test]
fn big_files_come_back_whole_through_the_engine_archive() {
    let d = Daemon::start(&[]);
    let base = idle_baseline(&d);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let script = "import hashlib, os, random\n\
        r = random.Random(7)\n\
        os.makedirs('résultats')\n\
        files = (('big.bin', 20 << 20), ('résultats/données 📈.bin', (16 << 20) + 1),\n\
                 ('résultats/small.txt', 5))\n\
        for name, size in files: data = r.randbytes(size); open(name, 'wb').write(data); \
            print(name, hashlib.sha256(data).hexdigest())\n\
        os.symlink('big.bin', 'link.bin')\n";
    let out = pyexec(
        &d,
        w,
        &[
            "--get",
            "big.bin",
            "--get",
            "résultats/*",
            "--get",
            "link.bin",
        ],
        script,
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    for line in stdout_str(&out).lines() {
        let (name, sum) = line.rsplit_once(' ').unwrap();
        let saved = std::fs::read(w.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let digest = ring::digest::digest(&ring::digest::SHA256, &saved);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, sum, "{name}, {} bytes", saved.len());
    }
    let err = stderr_str(&out);
    assert_eq!(err.matches("pyexec: saved ").count(), 3, "{err}");
    assert!(
        err.contains("link.bin not brought back: a symbolic link"),
        "{err}"
    );
    assert!(!w.join("link.bin").exists());
    // The two big ones were fetched, the small one was not.
    assert_fetched(&d, 2);
    assert!(
        d.log()
            .contains("a file out fetched from the engine bytes=16777217"),
        "{}",
        d.log()
    );
    assert_back_to_idle(&d, base, "after files fetched");
    d.stop();
}

/// The bootstrap waits while its big files are fetched (it keeps /tmp alive): a script
/// killed by signal 9, whose end the daemon confirms by the container's exit (an OOM kill
/// looks the same), and one stopped for its time limit, end at once with their files all
/// the same. (The first ended only at the session's time limit, status 124.)
#[test]
fn a_big_file_comes_back_after_a_kill_or_a_timeout_without_a_wait() {
    let d = Daemon::start(&[]);
    let base = idle_baseline(&d);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let write = "import os\nopen('big.bin', 'wb').write(bytes(range(256)) * (17 << 12))\n";
    let big = (0..=255u8).collect::<Vec<_>>().repeat(17 << 12);

    let started = std::time::Instant::now();
    let killed = format!("{write}os.kill(os.getpid(), 9)\n");
    let out = pyexec(&d, w, &["--get", "big.bin"], &killed);
    assert_eq!(out.status.code(), Some(137), "{}", show(&out));
    assert!(
        std::fs::read(w.join("big.bin")).unwrap() == big,
        "the file, whole"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    std::fs::remove_file(w.join("big.bin")).unwrap();

    let stuck = format!("{write}import time\nprint('ready', flush=True)\ntime.sleep(600)\n");
    let out = pyexec(&d, w, &["--timeout", "2s", "--get", "big.bin"], &stuck);
    assert_eq!(out.status.code(), Some(124), "{}", show(&out));
    assert!(
        std::fs::read(w.join("big.bin")).unwrap() == big,
        "the file, whole"
    );
    assert_fetched(&d, 2);
    // Sent within the grace, and the container gone at once, not when the grace ran out.
    assert!(
        !d.log().contains("files not all sent within the grace"),
        "{}",
        d.log()
    );
    assert_back_to_idle(&d, base, "after a kill and a timeout with big files");
    d.stop();
}

/// `ln -s /etc/shadow plot.png`: nothing comes back but the reason; a FIFO named like a
/// requested file neither blocks nor is sent; and a process the script left behind
/// cannot swap a file for a symlink afterwards (it is killed first).
#[test]
fn a_symlink_or_fifo_the_script_made_is_never_followed() {
    let d = Daemon::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let script = "import os\n\
        os.symlink('/etc/shadow', 'plot.png')\n\
        os.symlink('/etc', 'dir')\n\
        os.mkfifo('data.csv')\n";
    let out = pyexec(
        &d,
        work.path(),
        &[
            "--get",
            "plot.png",
            "--get",
            "data.csv",
            "--get",
            "dir/passwd",
        ],
        script,
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let err = stderr_str(&out);
    assert!(
        err.contains("plot.png not brought back: a symbolic link"),
        "{err}"
    );
    assert!(err.contains("data.csv not brought back: a FIFO"), "{err}");
    assert!(err.contains("--get dir/passwd: no file matched"), "{err}");
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        0,
        "nothing written"
    );
    assert_healthy(&d);
    d.stop();
}

#[test]
fn hostile_file_sets_are_refused_before_anything_runs() {
    let d = Daemon::start(&["--max-files", "50", "--max-files-size", "1m"]);
    let base = idle_baseline(&d);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // The script would leave a mark in its output: nothing may run on a refusal.
    let script = "print('ran')\n";

    // A symlink inside --dir: refused by the client, naming it.
    std::fs::create_dir(w.join("tree")).unwrap();
    std::fs::write(w.join("tree/ok.txt"), "ok").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", w.join("tree/link")).unwrap();
    let out = pyexec(&d, w, &["--dir", "tree"], script);
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    assert!(stderr_str(&out).contains("tree/link"), "{}", show(&out));
    assert!(stderr_str(&out).contains("symbolic link"), "{}", show(&out));
    std::fs::remove_file(w.join("tree/link")).unwrap();

    // A name with '..'.
    let out = pyexec(&d, w, &["--file", "tree/ok.txt=../escape.txt"], script);
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    assert!(stderr_str(&out).contains("'..'"), "{}", show(&out));

    // More files than the server takes (100,000 tiny ones would be refused the same way,
    // from HELLO's count alone): the server's bound, before any is sent.
    std::fs::create_dir(w.join("many")).unwrap();
    for i in 0..51 {
        std::fs::write(w.join(format!("many/{i}")), "x").unwrap();
    }
    let out = pyexec(&d, w, &["--dir", "many"], script);
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    assert!(
        stderr_str(&out).contains("too many files: 51, the limit is 50"),
        "{}",
        show(&out)
    );

    // Over the size bound by one byte.
    std::fs::write(w.join("big.bin"), vec![0u8; (1 << 20) + 1]).unwrap();
    let out = pyexec(&d, w, &["--file", "big.bin"], script);
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    assert!(
        stderr_str(&out).contains("files too large"),
        "{}",
        show(&out)
    );

    assert_eq!(stdout_str(&out), "");
    assert_back_to_idle(&d, base, "after refused file sets");
    assert_healthy(&d);
    d.stop();
}

/// A file of exactly the bound goes in whole, streamed (1 MiB through a 256 KiB window).
#[test]
fn a_file_at_the_size_bound_arrives_whole() {
    let d = Daemon::start(&["--max-files-size", "1m"]);
    let work = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(work.path().join("blob.bin"), &data).unwrap();
    let script =
        "import hashlib\nprint(hashlib.sha256(open('blob.bin','rb').read()).hexdigest())\n";
    let out = pyexec(&d, work.path(), &["--file", "blob.bin"], script);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let expected = {
        use std::io::Write;
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&data).unwrap();
        let o = child.wait_with_output().unwrap();
        String::from_utf8(o.stdout).unwrap()[..64].to_string()
    };
    assert_eq!(stdout_str(&out).trim(), expected);
    d.stop();
}

/// One raw session asking for `get` (feature `files`): HELLO with `extra` fields, the
/// script, STDIN_EOF; `during` runs once the script printed `ready`. Returns the files
/// that came back, FILES_OUT_END if it came, and the terminal frame.
fn files_session(
    d: &Daemon,
    script: &str,
    get: &[&str],
    extra: serde_json::Value,
    during: impl FnOnce(&mut Raw) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>,
) -> Back {
    runtime().block_on(async {
        let mut raw = Raw::connect(d).await;
        let mut hello = serde_json::json!({
            "version": 1,
            "script_size": script.len(),
            "client": "files test",
            "features": ["files"],
            "files": {"get": get},
        });
        for (k, v) in extra.as_object().unwrap() {
            hello[k] = v.clone();
        }
        raw.send_bytes(&raw_hello(&hello.to_string()))
            .await
            .unwrap();
        raw.welcome().await;
        raw.send(Frame::Script(bytes::Bytes::copy_from_slice(
            script.as_bytes(),
        )))
        .await;
        raw.send(Frame::StdinEof).await;
        raw.stdout_until(b"ready", Duration::from_secs(20)).await;
        during(&mut raw).await;
        let (frames, terminal) = raw.until_end(Duration::from_secs(20)).await;
        let (mut files, mut end) = (Vec::<(String, Vec<u8>)>::new(), None);
        for f in frames {
            match f {
                Frame::FileOut(h) => files.push((h.name, Vec::new())),
                Frame::FileOutData(b) => files.last_mut().unwrap().1.extend_from_slice(&b),
                Frame::FilesOutEnd(e) => end = Some(e),
                _ => {}
            }
        }
        Back {
            files,
            end,
            terminal,
        }
    })
}

/// What came back of a `files_session`.
struct Back {
    /// The files, name and content, in order.
    files: Vec<(String, Vec<u8>)>,
    end: Option<FilesOutEnd>,
    terminal: Option<Frame>,
}

/// Writes the result, says `ready`, then outlives any limit (and a child process too).
const STUCK: &str = "import os, subprocess, time\n\
    open('result.txt', 'w').write('kept')\n\
    subprocess.Popen(['sleep', '600'])\n\
    print('ready', flush=True)\n\
    time.sleep(600)\n";

/// The files come back when the server stops the script for its time limit: the
/// bootstrap kills the script's tree and sends them within the grace, then END timeout.
#[test]
fn files_come_back_after_a_timeout() {
    let d = Daemon::start(&[]);
    let base = idle_baseline(&d);
    let started = std::time::Instant::now();
    let Back {
        files,
        end,
        terminal,
    } = files_session(
        &d,
        STUCK,
        &["result.txt", "none.*"],
        serde_json::json!({"timeout_ms": 3000}),
        |_| Box::pin(async {}),
    );
    assert_end(&terminal, EndReason::Timeout, 124, "timeout");
    assert_eq!(files, [("result.txt".to_string(), b"kept".to_vec())]);
    let end = end.expect("FILES_OUT_END before END");
    assert_eq!(end.unmatched, ["none.*"]);
    assert_eq!(end.message, "");
    // The time limit, plus at most the grace: a timeout still ends promptly.
    assert!(
        started.elapsed() < Duration::from_secs(3 + 2 + 3),
        "{:?}",
        started.elapsed()
    );
    assert_back_to_idle(&d, base, "after a timeout with files");

    // The CLI saves it, and exits with the timeout's status.
    let work = tempfile::tempdir().unwrap();
    let out = pyexec(
        &d,
        work.path(),
        &["--timeout", "2s", "--get", "result.txt"],
        STUCK,
    );
    assert_eq!(out.status.code(), Some(124), "{}", show(&out));
    assert_eq!(
        std::fs::read(work.path().join("result.txt")).unwrap(),
        b"kept"
    );
    d.stop();
}

/// The same after the output limit: the rest of the flood is discarded, the files come.
#[test]
fn files_come_back_after_the_output_limit() {
    let d = Daemon::start(&["--output-limit", "1m"]);
    let script = "import sys\n\
        open('result.txt', 'w').write('kept')\n\
        print('ready', flush=True)\n\
        while True:\n    sys.stdout.write('x' * 65536)\n";
    let Back {
        files,
        end,
        terminal,
    } = files_session(&d, script, &["result.txt"], serde_json::json!({}), |_| {
        Box::pin(async {})
    });
    assert_end(&terminal, EndReason::OutputLimit, 137, "output limit");
    assert_eq!(files, [("result.txt".to_string(), b"kept".to_vec())]);
    assert!(end.is_some(), "FILES_OUT_END before END");
    assert_healthy(&d);
    d.stop();
}

/// A shutdown ends the script after its grace; the files still come back.
#[test]
fn files_come_back_after_a_shutdown() {
    let d = Daemon::start(&["--shutdown-grace", "1"]);
    let pid = d.pid();
    let Back {
        files,
        end,
        terminal,
    } = files_session(
        &d,
        STUCK,
        &["result.txt"],
        serde_json::json!({}),
        move |_| {
            Box::pin(async move {
                unsafe { libc::kill(pid, libc::SIGTERM) };
            })
        },
    );
    assert_end(&terminal, EndReason::Shutdown, 143, "shutdown");
    assert_eq!(files, [("result.txt".to_string(), b"kept".to_vec())]);
    assert!(end.is_some(), "FILES_OUT_END before END");
    let exit = d.wait_exit(Duration::from_secs(20));
    assert!(exit.success(), "pyexecd exits 0 after a drain: {exit:?}");
}

/// CANCEL is the one end that brings nothing back: no file, no FILES_OUT_END.
#[test]
fn a_cancelled_script_returns_no_files() {
    let d = Daemon::start(&[]);
    let base = idle_baseline(&d);
    let Back {
        files,
        end,
        terminal,
    } = files_session(&d, STUCK, &["result.txt"], serde_json::json!({}), |raw| {
        Box::pin(async move { raw.send(Frame::Cancel).await })
    });
    assert!(
        matches!(&terminal, Some(Frame::End(e)) if e.reason == EndReason::Cancelled),
        "{terminal:?}"
    );
    assert!(files.is_empty() && end.is_none(), "{files:?} {end:?}");
    assert_back_to_idle(&d, base, "after a cancel with files");
    d.stop();
}

/// `--dir` of 100,000 tiny files: refused by the count bound from HELLO alone, before
/// any byte of them or of the script is sent; no script reached a container.
#[test]
fn a_hundred_thousand_files_in_are_refused_before_anything_runs() {
    let d = Daemon::start(&[]);
    let base = idle_baseline(&d);
    let before = metrics(&d);
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("many");
    std::fs::create_dir(&tree).unwrap();
    for i in 0..100_000 {
        std::fs::File::create(tree.join(i.to_string())).unwrap();
    }
    let out = pyexec(&d, work.path(), &["--dir", "many"], "print('ran')\n");
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    assert!(
        stderr_str(&out).contains("too many files: 100000, the limit is 1000"),
        "{}",
        show(&out)
    );
    assert_eq!(stdout_str(&out), "");
    let after = metrics(&d);
    for figure in [
        "pyexec_container_start_seconds_count",
        "pyexec_received_bytes_total",
    ] {
        assert_eq!(after.get(figure), before.get(figure), "{figure}");
    }
    assert_back_to_idle(&d, base, "after 100,000 files refused");
    d.stop();
}

/// A script that makes 100,000 files, then `--get '*'`: at most the announced count come
/// back, the rest is said to be over the cap, the session ends cleanly, and the daemon's
/// memory stays bounded (the stream is parsed as it comes, never gathered).
#[test]
fn a_hundred_thousand_files_out_stay_within_the_caps() {
    let d = Daemon::start(&["--max-files", "300"]);
    let base = idle_baseline(&d);
    let rss_before = vm_rss_kib(d.pid()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let script = "import os\n\
        for i in range(100000):\n    os.close(os.open('f%06d' % i, os.O_CREAT | os.O_WRONLY))\n\
        print('made', len(os.listdir('.')))\n";
    let out = pyexec(&d, work.path(), &["-q", "--get", "*"], script);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    // The script itself is in /tmp too: 100,001 names.
    assert_eq!(stdout_str(&out), "made 100001\n");
    let saved = std::fs::read_dir(work.path()).unwrap().count();
    assert_eq!(saved, 300, "the announced count, no more");
    let rss_after = vm_rss_kib(d.pid()).unwrap();
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the daemon grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert_back_to_idle(&d, base, "after 100,000 files out");
    assert_healthy(&d);
    d.stop();
}

/// A sparse 10 GiB file: skipped by the size cap from its `fstat`, never read (the
/// session ends at once), nothing written.
/// Files over the count cap with long names, which any script can make, are listed in
/// FILES_OUT_END as skipped: 700 of ~250 bytes each once encoded past the 128 KiB a frame
/// holds, the daemon's writer failed and the client never got its END. The list now
/// stops short of that and says how many more there were.
#[test]
fn many_long_skipped_names_still_end_the_session_cleanly() {
    let d = Daemon::start(&["--max-files", "800"]);
    let base = idle_baseline(&d);
    let work = tempfile::tempdir().unwrap();
    let script = "import os\n\
        for i in range(1500):\n    os.close(os.open('%04d' % i + 'x' * 240, os.O_CREAT | os.O_WRONLY))\n";
    let out = pyexec(&d, work.path(), &["--get", "[0-9]*"], script);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let saved = std::fs::read_dir(work.path()).unwrap().count();
    assert_eq!(saved, 800, "the announced count");
    let err = stderr_str(&out);
    let listed = err.matches("not brought back: ").count();
    assert!(
        (100..700).contains(&listed),
        "{listed} listed\n{}",
        &err[err.len().saturating_sub(400)..]
    );
    assert!(
        err.contains(&format!(
            "{} more skipped files or unmatched patterns, not listed",
            700 - listed
        )),
        "{}",
        &err[err.len().saturating_sub(400)..]
    );
    assert_back_to_idle(&d, base, "after many long skipped names");
    d.stop();
}

#[test]
fn a_sparse_ten_gib_file_is_skipped_without_being_read() {
    let d = Daemon::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let script = "f = open('big.bin', 'wb')\nf.truncate(10 << 30)\nf.close()\n\
        open('small.txt', 'w').write('ok')\n";
    let started = std::time::Instant::now();
    let out = pyexec(
        &d,
        work.path(),
        &["--get", "big.bin", "--get", "small.txt"],
        script,
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let err = stderr_str(&out);
    assert!(
        err.contains("big.bin not brought back: 10737418240 bytes, over the server's cap"),
        "{err}"
    );
    assert!(!work.path().join("big.bin").exists());
    assert_eq!(std::fs::read(work.path().join("small.txt")).unwrap(), b"ok");
    assert_healthy(&d);
    d.stop();
}

/// Odd Unicode (an emoji, a combining accent, right-to-left text, a non-BMP letter) goes
/// in and comes back byte for byte; a newline in a name is refused going in (nothing
/// runs) and is never sent coming out (nor echoed into the client's messages).
#[test]
fn odd_unicode_names_round_trip_and_newlines_never_pass() {
    let d = Daemon::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let names = [
        "données/résumé 📈.csv",
        "e\u{301}te\u{301}.txt",
        "עברית.txt",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    ];
    std::fs::write(w.join("src.bin"), "content").unwrap();
    let mut options = Vec::new();
    for n in names {
        options.push("--file".to_string());
        options.push(format!("src.bin={n}"));
        options.push("--get".to_string());
        options.push(format!("{n}.out"));
    }
    let out_dir = w.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    options.extend(["--out-dir".to_string(), out_dir.display().to_string()]);
    options.extend(["--get".to_string(), "*".to_string()]);
    let script = "import os, sys\n\
        for n in sys.argv[1:]:\n    open(n + '.out', 'w').write(open(n).read() + '!')\n\
        open('bad\\nname.txt', 'w').write('x')\n";
    let mut args: Vec<&str> = options.iter().map(String::as_str).collect();
    let path = d.script_file(script);
    args.push(path.to_str().unwrap());
    args.extend(names);
    let out = Command::new(PYEXEC)
        .current_dir(w)
        .arg("--server")
        .arg(d_addr(&d))
        .arg("--ca")
        .arg(d.ca())
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    for n in names {
        assert_eq!(
            std::fs::read(out_dir.join(format!("{n}.out"))).unwrap(),
            b"content!",
            "{n}"
        );
    }
    let err = stderr_str(&out);
    assert!(
        !err.contains("bad\nname"),
        "a newline reached the messages: {err}"
    );
    assert!(!out_dir.join("bad\nname.txt").exists());

    // Going in, a newline is refused by the client before anything runs.
    let out = pyexec(&d, w, &["--file", "src.bin=a\nb.csv"], "print('ran')\n");
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    assert!(
        stderr_str(&out).contains("control character"),
        "{}",
        show(&out)
    );
    assert_eq!(stdout_str(&out), "");
    assert_healthy(&d);
    d.stop();
}
