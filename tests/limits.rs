//! The Supervisor's bounds: time, concurrency, the queue, output, script size; and what a
//! client going away leaves behind (nothing).

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{daemon::*, docker::*, figures::*, processes::*};
use pyexec::client::{self, Io, Notice, Request};

#[test]
fn session_timeout_gives_124_within_a_second_of_the_limit() {
    let d = Daemon::start(&["--session-timeout", "2"]);
    let started = Instant::now();
    let out = d.run(
        "print('spinning', flush=True)\nwhile True:\n    pass\n",
        &[],
        b"",
    );
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(124), "{}", stderr_str(&out));
    assert_eq!(stdout_str(&out), "spinning\n");
    assert!(
        stderr_str(&out).contains("pyexec: session timed out after 2s"),
        "{}",
        stderr_str(&out)
    );
    assert!(
        took >= Duration::from_millis(1950) && took < Duration::from_secs(3),
        "ended after {took:?}"
    );
    d.stop();
}

/// Watches `docker events` for this daemon's containers and reports the most that
/// existed at once: an observation independent of the daemon's own bookkeeping.
struct ContainerCensus {
    child: std::process::Child,
    rx: mpsc::Receiver<String>,
}

impl ContainerCensus {
    fn start(instance: &str) -> Self {
        let mut child = Command::new("docker")
            .args([
                "events",
                "--format",
                "{{.Action}} {{index .Actor.Attributes \"pyexec.lease\"}}",
                "--filter",
                "type=container",
            ])
            .arg("--filter")
            .arg(format!("label=pyexec.instance={instance}"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // The daemon's lease container is not a sandbox: not counted.
                let (action, lease) = line.split_once(' ').unwrap_or((&line, ""));
                if !lease.trim().is_empty() {
                    continue;
                }
                if tx.send(action.to_string()).is_err() {
                    break;
                }
            }
        });
        ContainerCensus { child, rx }
    }

    /// Reads events until at least `created` containers were created and all of them are
    /// gone again (call it after the daemon has stopped); returns the peak number alive at
    /// once and the number created. Start the census before the daemon, so that it sees
    /// every container, warm spares included.
    fn finish(mut self, at_least: usize) -> (usize, usize) {
        let (mut alive, mut peak, mut created, mut destroyed) = (0usize, 0usize, 0usize, 0usize);
        while created < at_least || destroyed < created {
            let action = self
                .rx
                .recv_timeout(Duration::from_secs(60))
                .expect("docker events stalled");
            match action.as_str() {
                "create" => {
                    alive += 1;
                    created += 1;
                    peak = peak.max(alive);
                }
                "destroy" => {
                    alive -= 1;
                    destroyed += 1;
                }
                _ => {}
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        (peak, created)
    }
}

#[test]
fn concurrency_cap_holds_and_every_queued_client_finishes() {
    let instance = unique_instance();
    let census = ContainerCensus::start(&instance);
    let d = Daemon::start_as(
        &instance,
        &["--max-sessions", "2", "--max-queue", "10", "--warm", "2"],
    );
    let clients: Vec<_> = (0..6)
        .map(|i| {
            d.pyexec(&format!(
                "{PRINT_CID}import time\ntime.sleep(0.4)\nprint('done {i}')\n"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for (i, c) in clients.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "client {i}: {}",
            stderr_str(&out)
        );
        let cid = cid_of(&out.stdout);
        assert!(stdout_str(&out).ends_with(&format!("\ndone {i}\n")));
        assert!(
            seen.insert(cid.clone()),
            "container {cid} served two sessions"
        );
    }
    d.stop();
    let (peak, created) = census.finish(6);
    assert!(created >= 6, "one container per session");
    assert_eq!(
        peak, 2,
        "at most --max-sessions containers at once, spares included"
    );
}

/// Runs a session through the client library on a thread; reports notices as they come.
fn session_in_background(
    d: &Daemon,
    script: &str,
) -> (
    mpsc::Receiver<Notice>,
    tokio::sync::mpsc::Sender<Bytes>,
    thread::JoinHandle<Result<client::Outcome, client::ClientError>>,
) {
    let cfg = d.client_config();
    let script = Bytes::from(script.to_string());
    let (notice_tx, notice_rx) = mpsc::channel();
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let handle = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Some(n) = nrx.recv().await {
                    if notice_tx.send(n).is_err() {
                        break;
                    }
                }
            });
            let chunks = futures::stream::poll_fn(move |cx| {
                stdin_rx
                    .poll_recv(cx)
                    .map(|chunk| chunk.map(Ok::<_, std::io::Error>))
            });
            let stdin = tokio_util::io::StreamReader::new(Box::pin(chunks));
            client::run(
                &cfg,
                Request {
                    script,
                    ..Default::default()
                },
                Io {
                    stdin: Some(stdin),
                    stdout: tokio::io::sink(),
                    stderr: tokio::io::sink(),
                    control: None,
                    notices: Some(ntx),
                },
            )
            .await
        })
    });
    (notice_rx, stdin_tx, handle)
}

fn wait_notice(rx: &mpsc::Receiver<Notice>, want: impl Fn(&Notice) -> bool) -> Notice {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = rx.recv_timeout(left).expect("expected notice did not come");
        if want(&n) {
            return n;
        }
    }
}

/// Holders read stdin until EOF, so the test decides when each one ends.
const HOLD: &str = "import sys\nsys.stdin.read()\n";

#[test]
fn queued_clients_are_told_their_position_and_run_in_order() {
    let d = Daemon::start(&["--max-sessions", "1", "--max-queue", "5"]);
    let (n1, in1, h1) = session_in_background(&d, HOLD);
    wait_notice(&n1, |n| matches!(n, Notice::Started(_)));
    let (n2, in2, h2) = session_in_background(&d, HOLD);
    wait_notice(&n2, |n| matches!(n, Notice::Queued(1)));
    let (n3, in3, h3) = session_in_background(&d, HOLD);
    wait_notice(&n3, |n| matches!(n, Notice::Queued(2)));

    drop(in1); // the first ends: the second runs, the third moves up
    assert_eq!(h1.join().unwrap().unwrap().exit_code(), 0);
    wait_notice(&n2, |n| matches!(n, Notice::Started(_)));
    wait_notice(&n3, |n| matches!(n, Notice::Queued(1)));
    drop(in2);
    assert_eq!(h2.join().unwrap().unwrap().exit_code(), 0);
    wait_notice(&n3, |n| matches!(n, Notice::Started(_)));
    drop(in3);
    assert_eq!(h3.join().unwrap().unwrap().exit_code(), 0);
    d.stop();
}

#[test]
fn full_queue_refuses_with_server_busy() {
    // No warm pool: with one, the spare that refills the freed slot would race the
    // check below that the slot is free again (the container count would rarely be 0).
    let d = Daemon::start(&["--max-sessions", "1", "--max-queue", "0", "--warm", "0"]);
    let (n1, in1, h1) = session_in_background(&d, HOLD);
    wait_notice(&n1, |n| matches!(n, Notice::Started(_)));
    let started = Instant::now();
    let out = d.run("print('never')\n", &[], b"");
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(stdout_str(&out), "");
    assert!(
        stderr_str(&out).starts_with("pyexec: server busy"),
        "{}",
        stderr_str(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );
    drop(in1);
    assert_eq!(h1.join().unwrap().unwrap().exit_code(), 0);
    // The slot is free again once the container is removed (slots count containers).
    assert!(wait_until(Duration::from_secs(15), || d
        .containers()
        .is_empty()));
    assert_eq!(d.run("print('now')\n", &[], b"").status.code(), Some(0));
    d.stop();
}

#[test]
fn output_limit_stops_the_script() {
    let d = Daemon::start(&["--output-limit", "1m"]);
    let out = d.run(
        "import sys\nwhile True:\n    sys.stdout.write('x' * 1000)\n",
        &[],
        b"",
    );
    assert_eq!(out.status.code(), Some(137), "{}", stderr_str(&out));
    assert_eq!(out.stdout.len(), 1 << 20, "exactly the limit is delivered");
    assert!(
        stderr_str(&out).contains("output limit of 1 MiB reached"),
        "{}",
        stderr_str(&out)
    );
    d.stop();
}

#[test]
fn oversized_script_is_refused_before_anything_runs() {
    let instance = unique_instance();
    let census = ContainerCensus::start(&instance);
    let d = Daemon::start_as(&instance, &["--warm", "0"]);
    let big = format!("# {}\nprint('ran')\n", "x".repeat(1 << 20));
    let out = d.run(&big, &[], b"");
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(stdout_str(&out), "");
    assert!(
        stderr_str(&out).contains("script too large") && stderr_str(&out).contains("1 MiB"),
        "{}",
        stderr_str(&out)
    );
    // The next session's container is the first one this daemon ever made.
    assert_eq!(d.run("print(1)\n", &[], b"").status.code(), Some(0));
    d.stop();
    let (_, created) = census.finish(1);
    assert_eq!(created, 1);
}

#[test]
fn killed_client_leaves_no_container_two_seconds_later() {
    let d = Daemon::start(&[]);
    let (mut child, _out, cid) = d.spawn_with_cid("import time\ntime.sleep(50)\n");
    assert!(container_listed(&cid));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || !container_listed(&cid)),
        "container still there 2 s after the client died"
    );
    assert!(
        wait_until(Duration::from_secs(2), || {
            metrics(&d).count("pyexec_sessions_total{outcome=\"disconnected\"}") == 1.0
        }),
        "the daemon did not end the session as a disconnect\n{}",
        d.log()
    );
    d.stop();
}

#[test]
fn second_ctrl_c_cancels_the_session() {
    let d = Daemon::start(&[]);
    // Ignores SIGINT, so only the cancel can end it.
    let (mut child, _out, cid) = d.spawn_with_cid(
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(50)\n",
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    // Two separate presses, not one merged signal: the first has reached the script.
    // (Only the log says a signal was forwarded: no figure counts them.)
    // Generous: under a loaded CI machine the Engine's kill request has taken over 10 s.
    assert!(
        d.wait_log("signal forwarded", Duration::from_secs(30)),
        "{}",
        d.log()
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("client exits");
    assert_eq!(status.code(), Some(130));
    assert!(wait_until(Duration::from_secs(2), || !container_listed(
        &cid
    )));
    d.stop();
}
