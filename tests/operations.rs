//! Running it like a daemon: Prometheus metrics and certificate reload on SIGHUP.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{daemon::*, figures::*, processes::*, PYEXEC};

#[test]
fn prometheus_metrics_follow_what_happens() {
    let d = Daemon::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--max-sessions",
        "1",
        "--max-queue",
        "0",
        "--warm",
        "0",
    ]);
    let addr = metrics_addr(&d);
    let page = http_get(&addr, "/metrics");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("Content-Type: application/openmetrics-text"));
    let before = Metrics::parse(&page);
    assert_eq!(before.get("pyexec_docker_up"), 1.0);
    // The configured bounds, for alerts that compare the live figures with them.
    assert_eq!(before.get("pyexec_capacity{limit=\"max_sessions\"}"), 1.0);
    assert_eq!(before.get("pyexec_capacity{limit=\"max_queue\"}"), 0.0);
    assert_eq!(before.get("pyexec_capacity{limit=\"warm\"}"), 0.0);
    assert_eq!(before.get("pyexec_accepted_sessions_total"), 0.0);

    assert_eq!(d.run("print('x' * 99)\n", &[], b"").status.code(), Some(0));
    // A busy refusal: one holder takes the only slot (free once the first container is gone).
    assert!(wait_until(Duration::from_secs(10), || d
        .containers()
        .is_empty()));
    let (mut holder, _out) =
        spawn_ready(&mut d.pyexec("import sys\nprint('ready', flush=True)\nsys.stdin.read()\n"));
    assert_eq!(d.run("print(1)\n", &[], b"").status.code(), Some(125));
    assert_eq!(metrics(&d).get("pyexec_sessions_running"), 1.0);
    drop(holder.stdin.take());
    assert_eq!(holder.wait().unwrap().code(), Some(0));

    let page = http_get(&addr, "/metrics");
    assert!(page.trim_end().ends_with("# EOF"), "{page}");
    let after = Metrics::parse(&page);
    assert_eq!(after.get("pyexec_accepted_sessions_total"), 3.0);
    assert_eq!(after.get("pyexec_sessions_total{outcome=\"exited\"}"), 2.0);
    assert_eq!(
        after.get("pyexec_sessions_total{outcome=\"error_busy\"}"),
        1.0
    );
    assert_eq!(after.get("pyexec_busy_refusals_total"), 1.0);
    assert!(after.get("pyexec_sent_bytes_total") >= 100.0 + 6.0);
    assert_eq!(after.get("pyexec_container_start_seconds_count"), 2.0);
    assert_eq!(after.get("pyexec_first_output_seconds_count"), 2.0);
    assert_eq!(after.get("pyexec_warm_pool_size"), 0.0);
    assert_eq!(
        after.get(&format!(
            "pyexec_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert_eq!(after.get("pyexec_capacity{limit=\"max_sessions\"}"), 1.0);
    assert_eq!(after.get("pyexec_capacity{limit=\"warm\"}"), 0.0);

    let missing = http_get(&addr, "/nope");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    d.stop();
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_sessions() {
    let d = Daemon::start(&[]);
    let old_ca = d.dir.path().join("old-ca.pem");
    std::fs::copy(d.ca(), &old_ca).unwrap();
    // A session that runs across the reload.
    let (mut running, out) = spawn_ready(
        &mut d.pyexec("import sys\nprint('ready', flush=True)\nprint(sys.stdin.read())\n"),
    );

    // New material from a new CA, written over the files the daemon was started with.
    let fresh = tempfile::tempdir().unwrap();
    let paths = pyexec::certs::generate(fresh.path(), &[], false).unwrap();
    std::fs::copy(&paths.server_cert, d.dir.path().join("server.pem")).unwrap();
    std::fs::copy(&paths.server_key, d.dir.path().join("server.key")).unwrap();
    d.signal(libc::SIGHUP);
    // The operator is told; no figure marks a reload.
    assert!(
        d.wait_log("reloaded the TLS certificate", Duration::from_secs(5)),
        "{}",
        d.log()
    );

    let with = |ca: &std::path::Path| {
        Command::new(PYEXEC)
            .args(["--server", &d.addr.to_string(), "--ca"])
            .arg(ca)
            .arg(d.script_file("print('hi')\n"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert_eq!(
        with(&paths.ca_cert).status.code(),
        Some(0),
        "the new CA is trusted now"
    );
    assert_eq!(
        with(&old_ca).status.code(),
        Some(125),
        "the old certificate is gone"
    );

    // The session that started before the reload is untouched.
    running
        .stdin
        .take()
        .unwrap()
        .write_all(b"still here")
        .unwrap();
    assert_eq!(running.wait().unwrap().code(), Some(0));
    assert_eq!(out.rest(Duration::from_secs(5)), b"ready\nstill here\n");

    // A broken file is refused and the current certificate kept.
    std::fs::write(d.dir.path().join("server.pem"), "not a certificate").unwrap();
    d.signal(libc::SIGHUP);
    assert!(d.wait_log("keeping the current one", Duration::from_secs(5)));
    assert_eq!(with(&paths.ca_cert).status.code(), Some(0));
    d.stop();
}

#[test]
fn json_logs_are_one_object_per_line() {
    let d = Daemon::start(&["--log-format", "json"]);
    assert_eq!(d.run("print(1)\n", &[], b"").status.code(), Some(0));
    assert!(d.wait_log("session ended", Duration::from_secs(5)));
    let log = d.log();
    let mut ended = 0;
    for line in log.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["fields"]["message"] == "session ended" {
            ended += 1;
            assert_eq!(v["fields"]["reason"], "exited");
            assert!(
                v["span"]["peer"]
                    .as_str()
                    .unwrap()
                    .starts_with("127.0.0.1:"),
                "{line}"
            );
        }
    }
    assert_eq!(ended, 1);
    d.stop();
}

/// One address cannot hold every connection place: beyond --max-connections-per-ip its
/// connections are closed before any TLS work, and counted.
#[test]
fn connections_beyond_the_per_address_bound_are_closed_at_once() {
    let d = Daemon::start(&[
        "--max-connections-per-ip",
        "2",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let _a = TcpStream::connect(d.addr).unwrap();
    let _b = TcpStream::connect(d.addr).unwrap();
    let mut third = TcpStream::connect(d.addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    // Closed by the server at once: end of stream (or a reset), not a timeout.
    match third.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the third connection was kept: {other:?}"),
    }
    assert!(
        wait_until(Duration::from_secs(5), || {
            metrics(&d).get("pyexec_connections_refused_total") == 1.0
        }),
        "counted"
    );
    drop((_a, _b));
    d.stop();
}
