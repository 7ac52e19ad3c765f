//! The daemon as an operator sees it: start-up, status dump, drain, leftovers, bad setups.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{daemon::*, docker::*, figures::*, processes::*, PYEXECD};

#[test]
fn sigusr1_logs_a_status_snapshot() {
    let d = Daemon::start(&[]);
    assert_eq!(d.run("print(1)\n", &[], b"").status.code(), Some(0));
    assert_eq!(
        d.run("import sys; sys.exit(3)\n", &[], b"").status.code(),
        Some(3)
    );
    // The line's wording is what this test checks, so it reads the log itself.
    d.signal(libc::SIGUSR1);
    assert!(
        d.wait_log("status: uptime=", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    let log = d.log();
    let line = log.lines().find(|l| l.contains("status: uptime=")).unwrap();
    for field in [
        "accepted=2",
        "running=",
        "queued=0",
        "finished=[exited=2]",
        "busy=0",
        "tls_failures=0",
        "bytes_in=",
        "bytes_out=2",
        "start_p50=",
        "start_p99=",
    ] {
        assert!(line.contains(field), "missing {field} in {line}");
    }
    assert!(
        !line.contains("start_p50=-"),
        "start latency was measured: {line}"
    );
    // The harness's one parser of this line reads the same figures from it.
    let figures = StatusFigures::parse(line);
    assert_eq!(
        (
            figures.accepted,
            figures.queued,
            figures.finished.as_slice(),
            figures.busy,
            figures.tls_failures,
            figures.bytes_out
        ),
        (2, 0, &[("exited".to_string(), 2)][..], 0, 0, 2),
        "{line}"
    );
    // The daemon is still serving after the dump.
    assert_eq!(d.run("print(2)\n", &[], b"").status.code(), Some(0));
    d.stop();
}

#[test]
fn sigterm_drains_lets_short_sessions_finish_and_ends_the_rest() {
    let d = Daemon::start(&["--shutdown-grace", "2"]);
    let spawn = |script: &str| {
        d.pyexec(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut short = spawn("import sys, time\nprint('ready', flush=True)\nsys.stdin.read()\ntime.sleep(0.5)\nprint('done')\n");
    let mut long = spawn("import time\nprint('ready', flush=True)\ntime.sleep(60)\n");
    let mut short_out = OutputWatcher::stdout(&mut short);
    let mut long_out = OutputWatcher::stdout(&mut long);
    assert!(short_out.wait_for(b"ready\n", Duration::from_secs(15)));
    assert!(long_out.wait_for(b"ready\n", Duration::from_secs(15)));

    d.signal(libc::SIGTERM);
    // The operator is told; no figure marks the drain.
    assert!(d.wait_log("draining", Duration::from_secs(5)));
    drop(short.stdin.take()); // the short one may now finish, within the grace
                              // New connections are no longer accepted.
    assert!(
        wait_until(Duration::from_secs(5), || std::net::TcpStream::connect(
            d.addr
        )
        .is_err()),
        "still accepting after SIGTERM"
    );

    let status = wait_timeout(&mut short, Duration::from_secs(10)).expect("short client exits");
    assert_eq!(status.code(), Some(0));
    assert_eq!(short_out.rest(Duration::from_secs(1)), b"ready\ndone\n");

    let started = Instant::now();
    let status = wait_timeout(&mut long, Duration::from_secs(15)).expect("long client exits");
    assert_eq!(status.code(), Some(143), "ended with reason shutdown");
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut long.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(err, "pyexec: the server is shutting down\n");

    let exit = d.stop();
    assert!(exit.success(), "pyexecd exits 0 after a drain: {exit:?}");
}

#[test]
fn leftovers_of_a_crashed_run_are_removed_at_start() {
    let d = Daemon::start(&[]);
    let (mut child, _out) =
        spawn_ready(&mut d.pyexec("import time\nprint('ready', flush=True)\ntime.sleep(60)\n"));
    let (dir, instance) = d.crash();
    let orphans = containers_of(&instance);
    assert!(
        !orphans.is_empty(),
        "the crash left the session's container"
    );
    let _ = child.kill();
    // A volume no container uses, as a removal without `-v` leaves one; and another
    // instance's, which is not this daemon's to remove.
    let volume = |instance: &str| {
        let out = Command::new("docker")
            .args([
                "volume",
                "create",
                "--label",
                "pyexec.managed=true",
                "--label",
            ])
            .arg(format!("pyexec.instance={instance}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_str(&out));
        stdout_str(&out).trim().to_string()
    };
    let dangling = volume(&instance);
    let other_instance = unique_instance();
    let others = volume(&other_instance);
    let old_volumes = volumes_of(&instance);
    assert!(
        old_volumes.len() > orphans.len(),
        "{old_volumes:?}: a /tmp per container, and one more"
    );

    let d = Daemon::start_in(dir, &instance, &[]);
    // Removed before the daemon said it was listening (its own spares are new ones).
    for id in &orphans {
        assert!(!container_listed(id), "leftover {id} still there");
    }
    let now = volumes_of(&instance);
    for v in &old_volumes {
        assert!(
            !now.contains(v),
            "volume {v} still there (dangling: {dangling})"
        );
    }
    assert_eq!(
        volumes_of(&other_instance),
        [others],
        "another instance's kept"
    );
    remove_containers_of(&other_instance);
    // The operator is told (no figure counts leftovers removed at start).
    assert!(d
        .log()
        .contains("removed containers left by an earlier run"));
    assert_eq!(d.run("print('fresh')\n", &[], b"").status.code(), Some(0));
    d.stop();
}

#[test]
fn unreachable_docker_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    pyexec::certs::generate(dir.path(), &[], false).unwrap();
    let out = Command::new(PYEXECD)
        .args(["--listen", "127.0.0.1:0", "--instance", "unreachable"])
        .arg("--cert")
        .arg(dir.path().join("server.pem"))
        .arg("--key")
        .arg(dir.path().join("server.key"))
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr_str(&out);
    assert!(
        err.contains("cannot reach the Docker Engine (unix:///nonexistent/docker.sock)"),
        "{err}"
    );
    assert_eq!(stdout_str(&out), "", "never claimed to listen");
}

#[test]
fn explicit_certificate_paths_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(PYEXECD)
        .args(["--listen", "127.0.0.1:0", "--instance", "nocert"])
        .arg("--cert")
        .arg(dir.path().join("missing.pem"))
        .arg("--key")
        .arg(dir.path().join("missing.key"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "a configuration error, not a crash"
    );
    assert!(
        stderr_str(&out).contains("missing.pem does not exist"),
        "{}",
        stderr_str(&out)
    );
    assert!(
        !dir.path().join("missing.pem").exists(),
        "nothing generated"
    );
}

#[test]
fn default_certificates_are_generated_on_first_start() {
    ensure_image();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(PYEXECD)
        .args(["--listen", "127.0.0.1:0", "--instance"])
        .arg(format!("defcerts-{}", std::process::id()))
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = OutputWatcher::stdout(&mut child);
    assert!(out.wait_for(b"listening on", Duration::from_secs(30)));
    for f in ["ca.pem", "ca.key", "server.pem", "server.key"] {
        assert!(dir.path().join("certs").join(f).exists(), "{f} generated");
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_timeout(&mut child, Duration::from_secs(15)).unwrap();
    assert!(status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("ca=certs/ca.pem"),
        "logs where the CA is: {err}"
    );
}

/// `pyexecd gen-certs --dir DIR EXTRA...`, run to its end.
fn gen_certs(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(PYEXECD)
        .arg("gen-certs")
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn gen_certs_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let gen = |extra: &[&str]| gen_certs(dir.path(), extra);
    let first = gen(&["--host", "pyexec.example.org", "--host", "10.1.2.3"]);
    assert!(first.status.success(), "{}", stderr_str(&first));
    let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let again = gen(&[]);
    assert!(!again.status.success());
    assert!(stderr_str(&again).contains("already exists (use --force to overwrite)"));
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
    let forced = gen(&["--force"]);
    assert!(forced.status.success());
    assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
}

#[test]
fn build_image_is_quick_when_the_image_exists_and_prints_the_tag_last() {
    ensure_image();
    let started = Instant::now();
    let out = Command::new(PYEXECD).arg("build-image").output().unwrap();
    assert!(out.status.success(), "{}", stderr_str(&out));
    assert_eq!(
        stdout_str(&out).lines().last(),
        Some(pyexec::config::DEFAULT_IMAGE)
    );
    assert!(started.elapsed() < Duration::from_secs(10), "no rebuild");
}

#[test]
fn check_config_shows_every_value_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pyexecd.toml");
    std::fs::write(
        &file,
        "max_sessions = 3\nsession_timeout = \"90s\"\nnetwork = false\n",
    )
    .unwrap();
    let out = Command::new(PYEXECD)
        .args(["check-config", "--session-timeout", "30", "--config"])
        .arg(&file)
        .env("PYEXECD_MAX_QUEUE", "5")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_str(&out));
    let text = stdout_str(&out);
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
            .to_string()
    };
    assert!(
        line("max_sessions").contains("\"3\"")
            && line("max_sessions").contains(&format!("# file {}", file.display()))
    );
    assert!(
        line("session_timeout").contains("\"30\"") && line("session_timeout").ends_with("# flag"),
        "flags beat the file"
    );
    assert!(
        line("max_queue").contains("\"5\"")
            && line("max_queue").ends_with("# env PYEXECD_MAX_QUEUE")
    );
    assert!(line("listen").contains("\"0.0.0.0:12344\"") && line("listen").ends_with("# default"));
    assert!(text.contains("# configuration is valid"));
}

#[test]
fn a_bad_config_value_exits_64_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pyexecd.toml");
    std::fs::write(&file, "max_sessions = 2\nsession_timeout = \"soon\"\n").unwrap();
    for args in [&["check-config"][..], &[][..]] {
        let out = Command::new(PYEXECD)
            .args(args)
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = stderr_str(&out);
        assert!(
            err.contains(&format!(
                "{}: key `session_timeout`: invalid value 'soon'",
                file.display()
            )),
            "{err}"
        );
        assert_eq!(stdout_str(&out), "", "never started");
    }
    let out = Command::new(PYEXECD)
        .args(["--max-sessions", "0"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "a bad flag is a usage error too"
    );
}

#[test]
fn the_config_file_configures_a_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    pyexec::certs::generate(dir.path(), &[], false).unwrap();
    let file = dir.path().join("pyexecd.toml");
    std::fs::write(&file, "session_timeout = 2\noutput_limit = \"64k\"\n").unwrap();
    let file = file.to_str().unwrap().to_string();
    let d = Daemon::start_in(dir, &unique_instance(), &["--config", &file]);
    let out = d.run("import sys\nsys.stdout.write('x' * 100000)\n", &[], b"");
    assert_eq!(out.status.code(), Some(137));
    assert_eq!(out.stdout.len(), 64 * 1024, "output_limit from the file");
    let out = d.run("while True:\n    pass\n", &[], b"");
    assert_eq!(
        out.status.code(),
        Some(124),
        "session_timeout from the file"
    );
    d.stop();
}

#[test]
fn gen_certs_keep_ca_renews_the_server_certificate_only() {
    let dir = tempfile::tempdir().unwrap();
    let gen = |extra: &[&str]| gen_certs(dir.path(), extra);
    assert!(gen(&[]).status.success());
    let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
    let (ca, cert) = (read("ca.pem"), read("server.pem"));
    let renewed = gen(&["--keep-ca", "--host", "renewed.example"]);
    assert!(renewed.status.success(), "{}", stderr_str(&renewed));
    assert!(stdout_str(&renewed).contains("(renewed)"));
    assert_eq!(read("ca.pem"), ca, "clients keep trusting the same CA");
    assert_ne!(read("server.pem"), cert);
    pyexec::tls::server_config(
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
        None,
    )
    .unwrap();
}
