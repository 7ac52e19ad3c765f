//! The Python client library (clients/python): its unittest suite against real daemons,
//! and a check that it installs as a package with pip, offline.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{daemon::*, processes::*};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn report(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout_str(out),
        stderr_str(out)
    )
}

/// Runs `python3 -m unittest discover -s clients/python/tests` with three daemons: one with
/// default settings, one with a single run slot and five queue places (queue positions,
/// busy), one with a 2 s session limit (timeouts). The suite skips what it has no daemon
/// for, so every variable set here matters.
#[test]
fn python_client_unittest_suite() {
    let main = Daemon::start(&[]);
    let small = Daemon::start(&["--max-sessions", "1", "--max-queue", "5"]);
    let short = Daemon::start(&["--session-timeout", "2", "--max-sessions", "2"]);

    let out = Command::new("python3")
        .args([
            "-m",
            "unittest",
            "discover",
            "-s",
            "clients/python/tests",
            "-v",
        ])
        .current_dir(repo())
        .env("PYTHONPATH", repo().join("clients/python/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYEXEC_TEST_SERVER", main.addr.to_string())
        .env("PYEXEC_TEST_CA", main.ca())
        .env("PYEXEC_TEST_SERVER_SMALL", small.addr.to_string())
        .env("PYEXEC_TEST_CA_SMALL", small.ca())
        .env("PYEXEC_TEST_SERVER_SHORT", short.addr.to_string())
        .env("PYEXEC_TEST_CA_SHORT", short.ca())
        .env_remove("PYEXEC_SERVER")
        .env_remove("PYEXEC_CA")
        .output()
        .expect("run python3");
    // unittest reports on stderr; shown in full when the test fails (or with --nocapture).
    eprintln!("{}", stderr_str(&out));
    assert!(
        out.status.success(),
        "{}\n--- daemon log (default) ---\n{}\n--- daemon log (small) ---\n{}\n--- daemon log (short) ---\n{}",
        report("python3 -m unittest failed", &out),
        main.log(),
        small.log(),
        short.log()
    );
    let summary = stderr_str(&out);
    assert!(
        !summary.contains("skipped 'no daemon"),
        "tests were skipped for want of a daemon:\n{summary}"
    );

    main.stop();
    small.stop();
    short.stop();
}

/// `pip install` of clients/python into a fresh directory, with no network and no build
/// isolation, then an import from there.
///
/// A PEP 517 build with setuptools older than 70.1 needs the `wheel` package, which the
/// machine's main python3 (pyenv) lacks and Debian's python3 has (python3-wheel). So the
/// build runs with the first interpreter that has both setuptools and wheel; the package
/// is pure Python, and the import is checked with the plain `python3`.
#[test]
fn python_client_installs_with_pip() {
    let builder = ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|py| {
            Command::new(py)
                // setuptools before pip: Debian's pip imports the stdlib distutils,
                // which setuptools refuses to replace once it is loaded.
                .args(["-c", "import setuptools, wheel, pip"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .expect("no python3 with pip, setuptools and wheel (apt-get install python3-wheel)");

    // Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_tree(&repo().join("clients/python"), &src);
    let target = tmp.path().join("target");
    let out = Command::new(builder)
        .args([
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
        ])
        .args(["--disable-pip-version-check", "--target"])
        .arg(&target)
        .arg(&src)
        .output()
        .expect("run pip");
    assert!(
        out.status.success(),
        "{}",
        report(&format!("{builder} -m pip install failed"), &out)
    );

    let out = Command::new("python3")
        .args([
            "-c",
            "import pyexec_client; print(pyexec_client.__file__); print(pyexec_client.__version__)",
        ])
        .current_dir(tmp.path())
        .env("PYTHONPATH", &target)
        .env("PYTHONNOUSERSITE", "1")
        .output()
        .expect("run python3");
    assert!(out.status.success(), "{}", report("import failed", &out));
    let printed = stdout_str(&out);
    let mut lines = printed.lines();
    let file = PathBuf::from(lines.next().unwrap_or_default());
    assert!(
        file.starts_with(&target),
        "imported from {file:?}, not from {target:?}"
    );
    assert_eq!(lines.next(), Some("0.1.0"));

    let out = Command::new("python3")
        .args(["-m", "pyexec_client", "--help"])
        .current_dir(tmp.path())
        .env("PYTHONPATH", &target)
        .output()
        .expect("run python3");
    assert!(out.status.success(), "{}", report("--help failed", &out));
    assert!(stdout_str(&out).contains("SCRIPT"), "{}", stdout_str(&out));
}

/// Copies a directory tree, leaving out what builds and test runs leave behind.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "__pycache__" || name == "build" || name.ends_with(".egg-info") {
            continue;
        }
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&path, &to.join(&*name));
        } else {
            std::fs::copy(&path, to.join(&*name)).unwrap();
        }
    }
}
