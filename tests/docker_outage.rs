//! Losing the Docker Engine while serving, and getting it back: through a socket proxy the
//! test can cut and restore, never by stopping the machine's Docker.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{daemon::*, docker::*, figures::*, processes::*};

const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// A Unix socket that forwards every connection to the real Docker socket, until cut.
struct DockerProxy {
    path: PathBuf,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
}

impl DockerProxy {
    fn start(dir: &Path) -> Self {
        let path = dir.join("docker-proxy.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    drop(client); // refused: the Engine is "down"
                    continue;
                }
                let Ok(engine) = UnixStream::connect(DOCKER_SOCKET) else {
                    continue;
                };
                {
                    let mut c = conns2.lock().unwrap();
                    c.push(client.try_clone().unwrap());
                    c.push(engine.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), engine.try_clone().unwrap());
                pipe(engine, client);
            }
        });
        DockerProxy { path, up, conns }
    }

    fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Breaks every open connection and refuses new ones.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn pipe(mut from: UnixStream, mut to: UnixStream) {
    thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// 1 while the daemon finds the Engine answering, 0 once it has lost it.
fn docker_up(d: &Daemon) -> f64 {
    metrics(d).get("pyexec_docker_up")
}

#[test]
fn losing_docker_fails_sessions_clearly_and_the_server_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    pyexec::certs::generate(dir.path(), &[], false).unwrap();
    let proxy = DockerProxy::start(dir.path());
    let host = proxy.docker_host();
    let d = Daemon::start_with_env(
        dir,
        &unique_instance(),
        &["--warm", "1"],
        &[("DOCKER_HOST", host.as_str())],
    );
    assert_eq!(d.run("print('before')\n", &[], b"").status.code(), Some(0));
    // A load balancer sees a ready daemon once its pool is warm.
    let readyz = || http_get(&metrics_addr(&d), "/readyz");
    assert!(
        wait_until(Duration::from_secs(15), || readyz()
            .starts_with("HTTP/1.1 200 OK")),
        "{}",
        readyz()
    );

    // A session running when the Engine goes away.
    let (mut running, _out, cid) = d.spawn_with_cid("import time\ntime.sleep(60)\n");

    proxy.cut();
    let status = wait_timeout(&mut running, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the running session did not end\n{}", d.log()));
    assert_eq!(status.code(), Some(125));
    let err = take_stderr(&mut running);
    assert!(err.starts_with("pyexec: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // A new client is refused at once, with a clear reason, once the daemon knows.
    assert!(
        wait_until(Duration::from_secs(15), || docker_up(&d) == 0.0),
        "the daemon did not notice the Engine was gone\n{}",
        d.log()
    );
    // A load balancer takes it out of rotation; it is still alive.
    let page = readyz();
    assert!(page.starts_with("HTTP/1.1 503"), "{page}");
    assert!(
        page.ends_with("not ready: no engine is in service\n"),
        "{page}"
    );
    let health = http_get(&metrics_addr(&d), "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200 OK") && health.ends_with("ok\n"),
        "{health}"
    );
    let started = Instant::now();
    let refused = d.run("print('during')\n", &[], b"");
    assert_eq!(refused.status.code(), Some(125));
    assert!(
        stderr_str(&refused).starts_with("pyexec: the Docker Engine is unreachable"),
        "{}",
        stderr_str(&refused)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );

    proxy.restore();
    assert!(
        wait_until(Duration::from_secs(15), || docker_up(&d) == 1.0),
        "the daemon did not notice the Engine was back\n{}",
        d.log()
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            d.run("print('after')\n", &[], b"").status.code() == Some(0)
        }),
        "sessions run again after the Engine is back\n{}",
        d.log()
    );
    // Ready again once the pool has refilled.
    assert!(
        wait_until(Duration::from_secs(30), || readyz()
            .starts_with("HTTP/1.1 200 OK")),
        "{}",
        readyz()
    );
    // The container that was running during the cut is cleaned up once the Engine is back.
    assert!(
        wait_until(Duration::from_secs(20), || !container_listed(&cid)),
        "container of the interrupted session still there"
    );
    d.stop();
}

/// A container killed from outside (`docker kill`): the client gets the signal's status.
#[test]
fn a_container_killed_from_outside_gives_the_signals_status() {
    let d = Daemon::start(&[]);
    for (signal, status, note) in [
        ("KILL", 137, "pyexec: killed by signal 9 (SIGKILL)\n"),
        ("TERM", 143, "pyexec: killed by signal 15 (SIGTERM)\n"),
    ] {
        let (mut child, _out, cid) = d.spawn_with_cid("import time\ntime.sleep(60)\n");
        let killed = std::process::Command::new("docker")
            .args(["kill", "--signal", signal, &cid])
            .output()
            .unwrap();
        assert!(killed.status.success(), "{}", stderr_str(&killed));
        let exit = wait_timeout(&mut child, Duration::from_secs(15)).expect("the client ends");
        assert_eq!(exit.code(), Some(status), "docker kill --signal {signal}");
        let err = take_stderr(&mut child);
        assert_eq!(err, note);
        assert!(wait_until(Duration::from_secs(10), || !container_listed(
            &cid
        )));
    }
    d.stop();
}
