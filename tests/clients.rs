//! Who may connect, and how much each may do: mutual TLS and per-client limits.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{daemon::*, figures::*, processes::*, PYEXEC, PYEXECD};

/// A daemon requiring client certificates from its own CA, with certificates issued for
/// `names` through the real `pyexecd gen-certs --client`.
fn mtls_daemon(names: &[&str], extra: &[&str]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    pyexec::certs::generate(dir.path(), &[], false).unwrap();
    let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let mut gen = Command::new(PYEXECD);
    gen.arg("gen-certs").arg("--dir").arg(dir.path());
    for n in names {
        gen.args(["--client", n]);
    }
    let out = gen.output().unwrap();
    assert!(out.status.success(), "{}", stderr_str(&out));
    assert_eq!(
        std::fs::read(dir.path().join("ca.pem")).unwrap(),
        ca_before,
        "issuing client certificates keeps the CA"
    );
    let ca = dir.path().join("ca.pem");
    let mut args = vec!["--client-ca", ca.to_str().unwrap()];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_in(dir, &unique_instance(), &args)
}

fn identity(d: &Daemon, name: &str) -> (PathBuf, PathBuf) {
    (
        d.dir.path().join(format!("client-{name}.pem")),
        d.dir.path().join(format!("client-{name}.key")),
    )
}

/// A `pyexec` command for `script`, presenting `name`'s certificate if given.
fn pyexec_as(d: &Daemon, name: Option<&str>, script: &str) -> Command {
    let mut cmd = Command::new(PYEXEC);
    cmd.args(["--server", &d.addr.to_string(), "--ca"])
        .arg(d.ca());
    if let Some(name) = name {
        let (cert, key) = identity(d, name);
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    cmd.arg(d.script_file(script));
    cmd
}

fn run_as(d: &Daemon, name: Option<&str>, script: &str) -> Output {
    pyexec_as(d, name, script)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Starts a session as `name` that holds until its stdin closes; returns once it runs.
fn hold_as(d: &Daemon, name: &str) -> std::process::Child {
    spawn_ready(&mut pyexec_as(
        d,
        Some(name),
        "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n",
    ))
    .0
}

#[test]
fn client_certificate_is_required_and_its_subject_is_the_identity() {
    let d = mtls_daemon(&["alice"], &[]);
    let anonymous = run_as(&d, None, "print('hi')\n");
    assert_eq!(anonymous.status.code(), Some(125));
    assert!(
        stderr_str(&anonymous).starts_with("pyexec: "),
        "{}",
        stderr_str(&anonymous)
    );
    assert_eq!(stdout_str(&anonymous), "");

    let alice = run_as(&d, Some("alice"), "print('hi alice')\n");
    assert_eq!(alice.status.code(), Some(0), "{}", stderr_str(&alice));
    assert_eq!(stdout_str(&alice), "hi alice\n");
    // The identity in the session's own log lines is what is checked here.
    assert!(
        d.wait_log("client=CN=alice", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    // The daemon logs the end before it sends END, but its log reaches the harness on a
    // thread of its own, which may not have read that line when the client is done.
    assert!(
        wait_until(Duration::from_secs(5), || d.log().lines().any(|l| l
            .contains("session ended")
            && l.contains("client=CN=alice"))),
        "{}",
        d.log()
    );

    // A running session shows up, by identity, in the status snapshot.
    let mut holder = hold_as(&d, "alice");
    let snapshot = status(&d);
    assert_eq!(
        snapshot.clients,
        [("CN=alice".to_string(), 1)],
        "{snapshot:?}\n{}",
        d.log()
    );
    drop(holder.stdin.take());
    assert_eq!(holder.wait().unwrap().code(), Some(0));
    d.stop();
}

#[test]
fn certificate_from_another_ca_is_refused() {
    let d = mtls_daemon(&["alice"], &[]);
    let other = tempfile::tempdir().unwrap();
    pyexec::certs::generate(other.path(), &[], false).unwrap();
    let (cert, key) = pyexec::certs::issue_client(other.path(), "mallory", false).unwrap();
    let out = Command::new(PYEXEC)
        .args(["--server", &d.addr.to_string(), "--ca"])
        .arg(d.ca())
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg(d.script_file("print('never')\n"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(stdout_str(&out), "");
    // No log line names the refused subject: it never got as far as a session.
    assert!(
        d.log().lines().all(|l| !l.contains("mallory")),
        "never a session"
    );
    d.stop();
}

#[test]
fn per_client_session_limit_applies_to_each_identity_separately() {
    let d = mtls_daemon(&["alice", "bob"], &["--max-sessions-per-client", "1"]);
    let mut first = hold_as(&d, "alice");

    let second = run_as(&d, Some("alice"), "print('second')\n");
    assert_eq!(second.status.code(), Some(125));
    assert!(
        stderr_str(&second).starts_with("pyexec: per-client limit reached: CN=alice already has 1 sessions (--max-sessions-per-client 1)"),
        "{}",
        stderr_str(&second)
    );
    let bob = run_as(&d, Some("bob"), "print('bob runs')\n");
    assert_eq!(stdout_str(&bob), "bob runs\n", "{}", stderr_str(&bob));

    drop(first.stdin.take());
    assert_eq!(first.wait().unwrap().code(), Some(0));
    let again = run_as(&d, Some("alice"), "print('alice again')\n");
    assert_eq!(
        stdout_str(&again),
        "alice again\n",
        "{}",
        stderr_str(&again)
    );
    d.stop();
}

#[test]
fn rate_limit_per_address_without_mtls() {
    let d = Daemon::start(&["--rate", "2"]);
    for i in 0..2 {
        let out = d.run(&format!("print({i})\n"), &[], b"");
        assert_eq!(out.status.code(), Some(0), "{}", stderr_str(&out));
    }
    let out = d.run("print('third')\n", &[], b"");
    assert_eq!(out.status.code(), Some(125));
    let err = stderr_str(&out);
    assert!(
        err.starts_with("pyexec: rate limit reached: 127.0.0.1 started 2 sessions in the last minute (--rate 2); try again in "),
        "{err}"
    );
    d.stop();
}
