//! Several Docker Engines behind one daemon, each a real `dockerd` in a network namespace
//! of the test's own (`common/engines.rs`) reached over mutual TLS: the image copied to
//! engines that lack it, sessions spread over every engine, an engine killed under load
//! and brought back, engines whose TLS is wrong refused at start, and two daemons on one
//! engine that never touch each other's containers.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::engines::{EngineOptions, RemoteEngine};
use common::{daemon::*, figures::*, processes::*, PYEXECD};

const IMAGE: &str = "pyexec/sandbox:bookworm-1";

/// An `[[engine]]` table for the config file.
fn table(name: &str, url: &str, cert_path: Option<&Path>, max_sessions: usize) -> String {
    let cert = cert_path.map_or(String::new(), |p| {
        format!("cert_path = \"{}\"\n", p.display())
    });
    format!(
        "[[engine]]\nname = \"{name}\"\nurl = \"{url}\"\n{cert}max_sessions = {max_sessions}\n\n"
    )
}

/// A daemon over the engines of `tables`, started with `extra`.
fn daemon_over(tables: &str, extra: &[&str]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    pyexec::certs::generate(dir.path(), &[], false).unwrap();
    let config = dir.path().join("pyexecd.toml");
    std::fs::write(&config, tables).unwrap();
    let config = config.display().to_string();
    let mut args = vec!["--config", config.as_str()];
    args.extend_from_slice(extra);
    Daemon::start_in(dir, &unique_instance(), &args)
}

fn engine_up(d: &Daemon, name: &str) -> f64 {
    metrics(d).get(&format!("pyexec_engine_up{{engine=\"{name}\"}}"))
}

fn started_on(d: &Daemon, name: &str) -> f64 {
    metrics(d).count(&format!(
        "pyexec_engine_sessions_started_total{{engine=\"{name}\"}}"
    ))
}

/// The IDs of the containers of `instance` on a remote engine, its lease included.
fn remote_containers(engine: &RemoteEngine, instance: &str) -> Vec<String> {
    let out = engine
        .docker()
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("label=pyexec.instance={instance}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn has_image(engine: &RemoteEngine) -> bool {
    engine
        .docker()
        .args(["image", "inspect", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// How one session watched by `watch_ends` ended: its exit code, how long after the
/// event it ended, its stderr and its stdout.
type Ended = (Option<i32>, Duration, String, String);

/// Waits for each session at once, each on its own thread so that each one's end is timed
/// from `since` (at most `limit` each).
fn watch_ends(
    sessions: Vec<(std::process::Child, OutputWatcher)>,
    since: Instant,
    limit: Duration,
) -> Vec<Ended> {
    thread::scope(|s| {
        let watchers: Vec<_> = sessions
            .into_iter()
            .map(|(mut child, out)| {
                s.spawn(move || {
                    let status = wait_timeout(&mut child, limit);
                    let took = since.elapsed();
                    let err = take_stderr(&mut child);
                    let stdout =
                        String::from_utf8_lossy(&out.rest(Duration::from_secs(5))).into_owned();
                    (status.and_then(|s| s.code()), took, err, stdout)
                })
            })
            .collect();
        watchers.into_iter().map(|w| w.join().unwrap()).collect()
    })
}

/// After an engine is back: four sessions, some of them on it, then the daemon stops and
/// leaves nothing of its own there.
fn used_again_and_left_clean(d: Daemon, remote: &RemoteEngine) {
    let used = started_on(&d, "remote");
    let children: Vec<_> = (0..4)
        .map(|_| {
            d.pyexec("import time\ntime.sleep(1)\nprint('again')\n")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(stdout_str(&out), "again\n");
    }
    assert!(started_on(&d, "remote") > used, "the engine is used again");
    let instance = d.instance.clone();
    d.stop();
    assert!(
        remote_containers(remote, &instance).is_empty(),
        "the daemon leaves nothing on the engine"
    );
}

/// Two engines that start without the image get it from the daemon, and a burst of
/// sessions runs on every engine with exact output.
#[test]
fn the_image_is_copied_and_sessions_spread_over_every_engine() {
    ensure_image();
    let (a, b) = thread::scope(|s| {
        let a = s.spawn(|| RemoteEngine::start(EngineOptions::new(PYEXECD)));
        let b = s.spawn(|| RemoteEngine::start(EngineOptions::new(PYEXECD)));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(
        !has_image(&a) && !has_image(&b),
        "fresh engines have no image"
    );
    let tables = table("local", "unix:///var/run/docker.sock", None, 2)
        + &table("a", &a.url(), Some(&a.cert_path()), 2)
        + &table("b", &b.url(), Some(&b.cert_path()), 2);
    let started = Instant::now();
    let d = daemon_over(&tables, &["--max-sessions", "6", "--warm", "3"]);
    eprintln!(
        "start with two image copies: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(has_image(&a) && has_image(&b), "{}", d.log());
    assert!(d.log().contains("copied the sandbox image"), "{}", d.log());
    for name in ["local", "a", "b"] {
        assert_eq!(engine_up(&d, name), 1.0, "{name}");
    }

    // Six at once fill every engine's two slots.
    let children: Vec<_> = (0..6)
        .map(|i| {
            d.pyexec(&format!(
                "import time\ntime.sleep(1.5)\nprint('session {i}')\n"
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr_str(&out));
        assert_eq!(stdout_str(&out), format!("session {i}\n"));
    }
    for name in ["local", "a", "b"] {
        assert!(started_on(&d, name) >= 1.0, "nothing ran on {name}");
    }
    let dump = status_line(&d);
    assert!(
        d.log().contains("engine=a state=up"),
        "a line per engine in the SIGUSR1 dump\n{dump}\n{}",
        d.log()
    );
    d.stop();
}

/// An engine killed as a dead host would be, under load: its sessions end within
/// seconds with the documented outcome (exit 125, one clear line), the other engine's
/// sessions finish with exact output, new sessions succeed, and once the engine is
/// back it is swept of the dead run's containers and used again.
#[test]
fn an_engine_killed_under_load_fails_over_and_is_used_again_when_back() {
    ensure_image();
    let mut remote = RemoteEngine::start(EngineOptions::new(PYEXECD).with_image(IMAGE));
    let tables = table("local", "unix:///var/run/docker.sock", None, 2)
        + &table("remote", &remote.url(), Some(&remote.cert_path()), 4);
    let d = daemon_over(&tables, &["--max-sessions", "6", "--warm", "6"]);
    wait_pool_ready(&d);

    // Six long sessions: two fill the local engine, four the remote one.
    let script = "import time\nprint('ready', flush=True)\ntime.sleep(6)\nprint('done')\n";
    let sessions: Vec<_> = (0..6)
        .map(|_| spawn_ready(d.pyexec(script).stderr(Stdio::piped())))
        .collect();
    assert_eq!(started_on(&d, "local") as usize, 2);
    assert_eq!(started_on(&d, "remote") as usize, 4);
    let before = remote_containers(&remote, &d.instance);

    let killed_at = Instant::now();
    remote.kill_hard();
    // Each session watched on its own thread, so that each one's end is timed.
    let ends = watch_ends(sessions, killed_at, Duration::from_secs(20));
    let (mut lost, mut finished) = (0, 0);
    let slowest = ends.iter().filter(|e| e.0 == Some(125)).map(|e| e.1).max();
    eprintln!("sessions on the killed engine ended within {slowest:?} of the kill");
    for (code, took, err, stdout) in ends {
        match code {
            Some(125) => {
                lost += 1;
                assert!(
                    took < Duration::from_secs(8),
                    "ended {took:?} after the kill"
                );
                assert!(err.contains("Docker Engine `remote`"), "{err}");
                assert_eq!(err.lines().count(), 1, "{err}");
            }
            Some(0) => {
                finished += 1;
                assert_eq!(stdout, "ready\ndone\n", "exact output");
            }
            other => panic!("unexpected status {other:?}: {err}\n{}", d.log()),
        }
    }
    assert_eq!((lost, finished), (4, 2));
    assert!(wait_until(Duration::from_secs(10), || engine_up(
        &d, "remote"
    ) == 0.0));

    // New sessions all succeed, on the engine left; the daemon stays ready.
    for i in 0..4 {
        let out = d.run(&format!("print({i} * 2)\n"), &[], b"");
        assert_eq!(out.status.code(), Some(0), "{}", stderr_str(&out));
        assert_eq!(stdout_str(&out), format!("{}\n", i * 2));
    }
    assert!(http_get(&metrics_addr(&d), "/readyz").starts_with("HTTP/1.1 200"));

    // Back: joined again, the dead run's containers swept, and used.
    remote.restart();
    assert!(
        wait_until(Duration::from_secs(30), || engine_up(&d, "remote") == 1.0),
        "{}",
        d.log()
    );
    let now = remote_containers(&remote, &d.instance);
    for id in &before {
        assert!(!now.contains(id), "leftover {id} of the dead run");
    }
    used_again_and_left_clean(d, &remote);
}

/// An engine cut off the network without a reset (packets dropped both ways, dockerd and
/// its containers still running): its sessions end with a clear error, it is declared
/// down by its pings alone, the other engine serves meanwhile, and once the link is back
/// it joins again (its old lease and the cut-off run's containers, still running there,
/// swept) and is used.
#[test]
fn an_engine_cut_off_without_a_reset_is_lost_and_joins_again_when_the_link_is_back() {
    ensure_image();
    let remote = RemoteEngine::start(EngineOptions::new(PYEXECD).with_image(IMAGE));
    let tables = table("local", "unix:///var/run/docker.sock", None, 2)
        + &table("remote", &remote.url(), Some(&remote.cert_path()), 2);
    let d = daemon_over(&tables, &["--max-sessions", "4", "--warm", "4"]);
    wait_pool_ready(&d);

    // Two long sessions on each engine.
    let script = "import time\nprint('ready', flush=True)\ntime.sleep(8)\nprint('done')\n";
    let sessions: Vec<_> = (0..4)
        .map(|_| spawn_ready(d.pyexec(script).stderr(Stdio::piped())))
        .collect();
    assert_eq!(started_on(&d, "remote") as usize, 2);
    let before = remote_containers(&remote, &d.instance);

    let cut_at = Instant::now();
    remote.cut();
    let ends = watch_ends(sessions, cut_at, Duration::from_secs(40));
    let (mut lost, mut finished) = (0, 0);
    for (code, took, err, stdout) in ends {
        match code {
            Some(125) => {
                lost += 1;
                eprintln!("a session on the cut engine ended {took:?} after the cut");
                // Two pings of 3 s that get no answer, 2 s apart: well within 20 s.
                assert!(
                    took < Duration::from_secs(20),
                    "ended {took:?} after the cut"
                );
                assert!(err.contains("Docker Engine `remote`"), "{err}");
            }
            Some(0) => {
                finished += 1;
                assert_eq!(stdout, "ready\ndone\n", "exact output");
            }
            other => panic!("unexpected status {other:?}: {err}\n{}", d.log()),
        }
    }
    assert_eq!((lost, finished), (2, 2), "{}", d.log());
    assert!(wait_until(Duration::from_secs(20), || engine_up(
        &d, "remote"
    ) == 0.0));

    // Meanwhile the engine left serves every session.
    for i in 0..3 {
        let out = d.run(&format!("print({i} + 1)\n"), &[], b"");
        assert_eq!(out.status.code(), Some(0), "{}", stderr_str(&out));
        assert_eq!(stdout_str(&out), format!("{}\n", i + 1));
    }

    // The link is back: joined again, what the cut-off run left there swept, and used.
    remote.mend();
    assert!(
        wait_until(Duration::from_secs(60), || engine_up(&d, "remote") == 1.0),
        "{}",
        d.log()
    );
    let now = remote_containers(&remote, &d.instance);
    for id in &before {
        assert!(!now.contains(id), "leftover {id} of the cut-off run");
    }
    used_again_and_left_clean(d, &remote);
}

fn pyexecd(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    pyexec::certs::generate(dir.path(), &[], false).unwrap();
    Command::new(PYEXECD)
        .args(["--listen", "127.0.0.1:0", "--instance", &unique_instance()])
        .arg("--cert")
        .arg(dir.path().join("server.pem"))
        .arg("--key")
        .arg(dir.path().join("server.key"))
        .args(args)
        .output()
        .unwrap()
}

/// An engine whose certificate comes from another CA is refused: the daemon does not
/// start (exit 64, naming the engine), and check-config says so too.
#[test]
fn an_engine_with_a_certificate_from_another_ca_is_refused() {
    let engine = RemoteEngine::start(EngineOptions::new(PYEXECD).foreign_ca());
    let url = engine.url();
    let certs = engine.cert_path().display().to_string();
    let args = [
        "--engine",
        url.as_str(),
        "--engine-cert-path",
        certs.as_str(),
    ];
    let out = pyexecd(&args);
    assert_eq!(out.status.code(), Some(64), "{}", stderr_str(&out));
    let err = stderr_str(&out);
    assert!(err.contains(&format!("--engine {url}")), "{err}");
    assert!(err.contains("TLS failed"), "{err}");
    assert!(err.contains("certificate"), "{err}");
    assert_eq!(stdout_str(&out), "", "never claimed to listen");

    let mut check = vec!["check-config"];
    check.extend_from_slice(&args);
    let out = Command::new(PYEXECD).args(&check).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", stdout_str(&out));
    assert!(
        stdout_str(&out).contains(&format!(
            "# error: engine {}",
            url.trim_start_matches("tcp://")
        )),
        "{}",
        stdout_str(&out)
    );
}

/// check-config contacts each engine: reachable, TLS accepted, its version, the image.
#[test]
fn check_config_probes_every_engine() {
    let engine = RemoteEngine::start(EngineOptions::new(PYEXECD));
    let url = engine.url();
    let certs = engine.cert_path().display().to_string();
    let out = Command::new(PYEXECD)
        .args(["check-config", "--engine", "unix:///var/run/docker.sock"])
        .args(["--engine", &url, "--engine-cert-path", &certs])
        .output()
        .unwrap();
    let text = stdout_str(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr_str(&out));
    assert!(
        text.contains(
            "# engine local (unix:///var/run/docker.sock): reachable, Docker Engine 20.10"
        ),
        "{text}"
    );
    let name = url.trim_start_matches("tcp://");
    assert!(
        text.contains(&format!(
            "# engine {name} ({url}): reachable, TLS accepted, Docker Engine "
        )),
        "{text}"
    );
    assert!(text.contains("sandbox image absent"), "{text}");
}

/// Plain HTTP where TLS was asked, an URL that does not parse, a missing certificate
/// file: each exits 64 and names the key.
#[test]
fn bad_engine_settings_exit_64_naming_the_key() {
    // Something that answers plain HTTP on a TCP port.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let certs = tempfile::tempdir().unwrap();
    pyexec::certs::generate(certs.path(), &[], false).unwrap();
    pyexec::certs::issue_client(certs.path(), "pyexecd", false).unwrap();
    std::fs::copy(
        certs.path().join("client-pyexecd.pem"),
        certs.path().join("cert.pem"),
    )
    .unwrap();
    std::fs::copy(
        certs.path().join("client-pyexecd.key"),
        certs.path().join("key.pem"),
    )
    .unwrap();
    let dir = certs.path().display().to_string();
    let plain = format!("tcp://127.0.0.1:{port}");
    let out = pyexecd(&["--engine", &plain, "--engine-cert-path", &dir]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr_str(&out));
    assert!(
        stderr_str(&out).contains(&format!("--engine {plain}: engine {plain}: TLS failed")),
        "{}",
        stderr_str(&out)
    );

    let out = pyexecd(&["--engine", "http://10.0.0.1:2375"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr_str(&out).contains("invalid --engine: `http://10.0.0.1:2375`"),
        "{}",
        stderr_str(&out)
    );

    std::fs::remove_file(certs.path().join("key.pem")).unwrap();
    let out = pyexecd(&["--engine", &plain, "--engine-cert-path", &dir]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr_str(&out).contains("invalid --engine-cert-path")
            && stderr_str(&out).contains("key.pem does not exist"),
        "{}",
        stderr_str(&out)
    );
}

/// Two daemons with the same instance name on one engine: the second refuses to start
/// and says why; the first one's running session is untouched.
#[test]
fn a_second_daemon_with_the_same_instance_refuses_to_start() {
    let d = Daemon::start(&[]);
    let (mut running, mut out) = spawn_ready(
        d.pyexec(
            "import sys\nprint('ready', flush=True)\nprint(sys.stdin.readline().upper(), end='')\n",
        )
        .stdin(Stdio::piped()),
    );
    let dir = tempfile::tempdir().unwrap();
    pyexec::certs::generate(dir.path(), &[], false).unwrap();
    let second = Command::new(PYEXECD)
        .args(["--listen", "127.0.0.1:0", "--instance", &d.instance])
        .arg("--cert")
        .arg(dir.path().join("server.pem"))
        .arg("--key")
        .arg(dir.path().join("server.key"))
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(64), "{}", stderr_str(&second));
    assert!(
        stderr_str(&second).contains(&format!(
            "another live pyexecd uses the instance name `{}`",
            d.instance
        )),
        "{}",
        stderr_str(&second)
    );
    running
        .stdin
        .take()
        .unwrap()
        .write_all(b"still here\n")
        .unwrap();
    assert!(out.wait_for(b"STILL HERE\n", Duration::from_secs(10)));
    assert_eq!(
        wait_timeout(&mut running, Duration::from_secs(10)).map(|s| s.code()),
        Some(Some(0))
    );
    d.stop();
}
