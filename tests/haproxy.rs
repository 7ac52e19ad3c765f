//! Two real daemons behind Debian's haproxy, run with the shipped
//! `contrib/haproxy/haproxy.cfg` itself (its addresses set through the environment
//! variables it reads): sessions reach both daemons, a daemon killed mid-run costs no new
//! session, and the per-address bound applies to the client behind the balancer.
//!
//! haproxy runs in the foreground as the test's child and is killed and reaped when the
//! test ends, however it ends (`Haproxy`'s Drop); so are the daemons (`Daemon`'s).

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{daemon::*, docker::*, figures::*, processes::*, raw::*, PYEXEC};
use pyexec::protocol::{EndReason, Frame};
use tokio::net::TcpSocket;

const HAPROXY: &str = "/usr/sbin/haproxy";
/// The shipped configuration, used as it is.
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/haproxy/haproxy.cfg");

/// haproxy in the foreground, with its stdout and stderr (tcplog lines, server state
/// changes) collected; killed and reaped on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Haproxy {
    /// Starts haproxy on a free port of 127.0.0.1 in front of `daemons` (two).
    fn start(daemons: [&Daemon; 2]) -> Haproxy {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is missing: scripts/setup installs Debian's haproxy"
        );
        let addr = free_addr();
        let check_port = |d: &Daemon| {
            let metrics: SocketAddr = metrics_addr(d).parse().unwrap();
            assert_eq!(
                metrics.ip(),
                d.addr.ip(),
                "`check port` uses the server's address"
            );
            metrics.port().to_string()
        };
        let env = [
            ("PYEXEC_LB_LISTEN", addr.to_string()),
            ("PYEXECD1", daemons[0].addr.to_string()),
            ("PYEXECD1_CHECK_PORT", check_port(daemons[0])),
            ("PYEXECD2", daemons[1].addr.to_string()),
            ("PYEXECD2_CHECK_PORT", check_port(daemons[1])),
        ];
        let checked = Command::new(HAPROXY)
            .args(["-c", "-f", CONFIG])
            .envs(env.clone())
            .output()
            .unwrap();
        assert!(
            checked.status.success(),
            "haproxy -c: {}{}",
            stdout_str(&checked),
            stderr_str(&checked)
        );
        let mut child = Command::new(HAPROXY)
            .args(["-db", "-f", CONFIG])
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start haproxy");
        let log = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().unwrap(), &log);
        collect(child.stderr.take().unwrap(), &log);
        let ha = Haproxy { child, addr, log };
        assert!(
            wait_until(Duration::from_secs(10), || listening(addr)),
            "haproxy does not listen on {addr}\n{}",
            ha.log()
        );
        ha
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// A `pyexec` aimed at the balancer, trusting `d`'s CA (both daemons share it).
    fn pyexec(&self, d: &Daemon, script: &str) -> Command {
        let mut cmd = Command::new(PYEXEC);
        cmd.arg("--server")
            .arg(self.addr.to_string())
            .arg("--ca")
            .arg(d.ca())
            .arg(d.script_file(script));
        cmd
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends a child's output to `log`, line by line, on a thread.
fn collect(out: impl Read + Send + 'static, log: &Arc<Mutex<String>>) {
    let log = log.clone();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let mut l = log.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
}

/// A port of 127.0.0.1 that nobody listens on right now.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Whether some process listens on `addr` (an IPv4 address), per /proc/net/tcp: asked
/// without connecting, since a probe connection would reach a daemon as a session.
fn listening(addr: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")
        })
}

/// Two daemons with `--proxy-protocol` and `extra`, sharing one certificate (a client
/// trusts one CA, whichever daemon haproxy picks), each with a metrics port of its own,
/// both ready (`/readyz` answers 200).
fn two_daemons(extra: &[&str]) -> (Daemon, Daemon) {
    let first = tempfile::tempdir().unwrap();
    pyexec::certs::generate(first.path(), &[], false).unwrap();
    let second = tempfile::tempdir().unwrap();
    for file in ["ca.pem", "server.pem", "server.key"] {
        std::fs::copy(first.path().join(file), second.path().join(file)).unwrap();
    }
    let args: Vec<&str> = ["--proxy-protocol"].iter().chain(extra).copied().collect();
    let d1 = Daemon::start_in(first, &unique_instance(), &args);
    let d2 = Daemon::start_in(second, &unique_instance(), &args);
    for d in [&d1, &d2] {
        assert!(
            wait_until(Duration::from_secs(30), || http_get(
                &metrics_addr(d),
                "/readyz"
            )
            .starts_with("HTTP/1.1 200")),
            "the daemon did not get ready\n{}",
            d.log()
        );
    }
    (d1, d2)
}

/// The daemon's sessions so far (connections that completed a TLS handshake).
fn accepted(d: &Daemon) -> f64 {
    metrics(d).get("pyexec_accepted_sessions_total")
}

/// Sessions haproxy retried on another server, from its tcplog lines: the retries field
/// (`actconn/feconn/beconn/srv_conn/retries`) says `+N` when the connection was
/// redispatched.
fn redispatched(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(" pyexec pyexecd/"))
        .filter(|l| {
            l.split_whitespace()
                .any(|f| f.matches('/').count() == 4 && f.contains("/+"))
        })
        .count()
}

/// Removes a killed daemon's containers when the test ends, however it ends.
struct Leftovers(String);

impl Drop for Leftovers {
    fn drop(&mut self) {
        remove_containers_of(&self.0);
    }
}

/// A session through the balancer that prints `n` squared; None when it did exactly
/// that, else what went wrong.
fn square(ha: &Haproxy, d: &Daemon, n: u32) -> Option<String> {
    let out: Output = output_with_stdin(&mut ha.pyexec(d, &format!("print({n} * {n})\n")), b"");
    let want = format!("{}\n", n * n);
    (out.status.code() != Some(0) || stdout_str(&out) != want).then(|| {
        format!(
            "session {n}: status {:?}, stdout {:?}, stderr {:?}",
            out.status.code(),
            stdout_str(&out),
            stderr_str(&out)
        )
    })
}

#[test]
fn sessions_reach_both_daemons_and_none_fails_when_one_is_killed() {
    let (d1, d2) = two_daemons(&[]);
    let ha = Haproxy::start([&d1, &d2]);

    // leastconn takes turns among equally loaded servers: sessions one after the other
    // reach both daemons.
    for n in 0..4 {
        assert_eq!(square(&ha, &d1, n), None, "{}", ha.log());
    }
    let (one, two) = (accepted(&d1), accepted(&d2));
    assert!(
        one >= 1.0 && two >= 1.0 && one + two == 4.0,
        "sessions per daemon: {one} and {two}\n{}",
        ha.log()
    );

    // SIGKILL, as a crashed host: its port refuses connections from now on.
    let (_dir, instance) = d1.crash();
    let _leftovers = Leftovers(instance);
    let killed_at = Instant::now();
    let before = accepted(&d2);
    let mut failures = Vec::new();
    let mut sessions = 0;
    // At once, before any health check has run: concurrent sessions, which leastconn
    // spreads over both servers, so some are sent to the dead one and must be retried on
    // the other (observe layer4, option redispatch).
    let burst: Vec<_> = (0..6)
        .map(|n| {
            let mut cmd = ha.pyexec(&d2, &format!("print({n} * {n})\n"));
            thread::spawn(move || (n, output_with_stdin(&mut cmd, b"")))
        })
        .collect();
    for t in burst {
        let (n, out) = t.join().unwrap();
        sessions += 1;
        if out.status.code() != Some(0) || stdout_str(&out) != format!("{}\n", n * n) {
            failures.push(format!(
                "burst {n}: {:?} {}",
                out.status.code(),
                stderr_str(&out)
            ));
        }
    }
    // Then one after another until haproxy has marked the dead daemon down, and a few
    // more after that.
    let mut down_at = None;
    let mut after_down = 0;
    while after_down < 5 {
        if down_at.is_none() && ha.log().contains("pyexecd/pyexecd1 is DOWN") {
            down_at = Some(killed_at.elapsed());
        }
        if down_at.is_some() {
            after_down += 1;
        }
        sessions += 1;
        failures.extend(square(&ha, &d2, 10 + sessions));
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "haproxy did not mark the killed daemon down within 60 s\n{}",
            ha.log()
        );
    }
    let redispatched = redispatched(&ha.log());
    eprintln!(
        "failover: {sessions} sessions after the kill, {} failed, {redispatched} redispatched \
         from the dead daemon; pyexecd1 marked down {:?} after it",
        failures.len(),
        down_at.unwrap()
    );
    assert!(failures.is_empty(), "{failures:#?}\n{}", ha.log());
    // The case this test is for: a session sent to the dead daemon before haproxy knew.
    assert!(
        redispatched >= 1,
        "no session was sent to the killed daemon: the detection window went untested\n{}",
        ha.log()
    );
    assert_eq!(
        accepted(&d2) - before,
        sessions as f64,
        "every session after the kill was served by the survivor"
    );
    assert!(
        !ha.log().contains("pyexecd/pyexecd2 is DOWN"),
        "the survivor was marked down\n{}",
        ha.log()
    );
    drop(ha);
    d2.stop();
}

/// Connects to the balancer from `source` (an address of 127.0.0.0/8), and does the TLS
/// handshake through it.
async fn from(source: &str, ha: &Haproxy, d: &Daemon) -> std::io::Result<Raw> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    let tcp = socket.connect(ha.addr).await?;
    Raw::over(tcp, d).await
}

/// A script that says `ready` and then holds its session until stdin closes.
const HOLD: &str = "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n";

#[test]
fn the_per_address_bound_applies_to_the_client_behind_haproxy() {
    let (d1, d2) = two_daemons(&["--max-connections-per-ip", "1"]);
    let ha = Haproxy::start([&d1, &d2]);
    let rt = runtime();
    let refused = || {
        metrics(&d1).get("pyexec_connections_refused_total")
            + metrics(&d2).get("pyexec_connections_refused_total")
    };
    rt.block_on(async {
        // 127.0.0.2 holds two sessions: leastconn puts the second on the other daemon, so
        // each daemon now has its one connection from that address.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = from("127.0.0.2", &ha, &d1)
                .await
                .expect("TLS through haproxy");
            c.hello(HOLD.len() as u64, HOLD.as_bytes()).await;
            let (_, id) = c.stdout_until(b"ready\n", Duration::from_secs(20)).await;
            held.push((c, id));
        }
        for (d, name) in [(&d1, "pyexecd1"), (&d2, "pyexecd2")] {
            assert_eq!(
                metrics(d).get("pyexec_sessions_running"),
                1.0,
                "{name} holds one of 127.0.0.2's sessions\n{}",
                ha.log()
            );
        }
        let log = format!("{}{}", d1.log(), d2.log());
        for (_, id) in &held {
            assert!(
                log.lines()
                    .any(|l| l.contains(&format!("session{{id={id} peer=127.0.0.2:"))),
                "session {id}'s peer is the client behind haproxy, not haproxy\n{log}"
            );
        }
        // A third from 127.0.0.2 goes to a daemon that already has one: refused.
        assert_eq!(refused(), 0.0);
        let third = from("127.0.0.2", &ha, &d1).await;
        assert!(
            third.is_err(),
            "a third connection from 127.0.0.2 was served"
        );
        assert!(
            wait_until(Duration::from_secs(5), || refused() == 1.0),
            "the refusal is counted by the daemon that refused"
        );
        // Another client, through the same balancer, is served.
        let mut other = from("127.0.0.3", &ha, &d1)
            .await
            .expect("TLS for 127.0.0.3");
        other.run("print('served')\n").await;
        let id = other.welcome().await;
        let (frames, end) = other.until_end(Duration::from_secs(20)).await;
        assert_end(&end, EndReason::Exited, 0, "127.0.0.3's session");
        let stdout: Vec<u8> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Stdout(b) => Some(b.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(stdout, b"served\n", "{frames:?}");
        let log = format!("{}{}", d1.log(), d2.log());
        assert!(
            log.contains(&format!("session{{id={id} peer=127.0.0.3:")),
            "{log}"
        );
        for (mut c, _) in held {
            c.send(Frame::StdinEof).await;
            let (_, end) = c.until_end(Duration::from_secs(20)).await;
            assert_end(&end, EndReason::Exited, 0, "a held session");
        }
    });
    // A refusal is the daemon's answer to one client, not a sign of a sick daemon.
    assert!(
        !ha.log().contains(" is DOWN"),
        "haproxy marked a daemon down\n{}",
        ha.log()
    );
    drop(ha);
    d1.stop();
    d2.stop();
}
