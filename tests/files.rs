//! Feature `files` against the real daemon, Docker and TLS: files in beside the script,
//! result files out, and the hostile cases of both (names, symlinks, FIFOs, bounds). The
//! client-side cases of a hostile server are in crates/pyexec-client/tests/scripted_server.rs.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{daemon::*, idle::*, processes::*, PYEXEC};

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
