//! The harness for extra Docker Engines (`common/engines.rs`) does what the multi-engine
//! tests rely on: engines start in parallel, answer over mutual TLS only to their own
//! client certificates, die like a host that lost power, come back, and leave nothing.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use common::daemon::ensure_image;
use common::engines::{EngineOptions, Footprint, RemoteEngine};
use common::processes::wait_until;
use common::PYEXECD;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The processes among an engine's leftovers.
fn processes(footprint: &Footprint) -> Vec<String> {
    footprint
        .leftovers()
        .into_iter()
        .filter(|l| l.starts_with("process "))
        .collect()
}

#[test]
fn two_engines_answer_over_tls_die_like_a_host_come_back_and_leave_nothing() {
    let started = Instant::now();
    let (mut a, b) = thread::scope(|s| {
        let a = s.spawn(|| RemoteEngine::start(EngineOptions::new(PYEXECD)));
        let b = s.spawn(|| RemoteEngine::start(EngineOptions::new(PYEXECD)));
        (a.join().unwrap(), b.join().unwrap())
    });
    eprintln!(
        "two engines started in parallel in {:.2?} (dockerd until TLS answered: {} {:.2?}, {} {:.2?})",
        started.elapsed(),
        a.name(),
        a.start_time(),
        b.name(),
        b.start_time()
    );
    assert_ne!(a.url(), b.url());
    assert!(a.url().starts_with("tcp://10.231.") && a.url().ends_with(":2376"));

    for engine in [&a, &b] {
        // The whole TLS path, as `docker` and the daemon under test use it.
        let out = engine
            .docker_tls()
            .args(["info", "--format", "{{.DockerRootDir}} {{.Images}}"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {}", engine.url(), text(&out));
        // This very engine answered (not the system one), and it has no images at all.
        let data_root = engine.dir().join("data");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{} 0", data_root.display())
        );
        let out = engine.docker().args(["info"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }

    // A client certificate from the other engine's CA is refused.
    let refused = a.ping_with(&b.cert_path()).unwrap_err();
    assert!(refused.contains("certificate"), "{refused}");

    let a_footprint = a.footprint();
    a.kill_hard();
    // The listening socket died with dockerd: refused at once, no timeout.
    let ping = Instant::now();
    assert!(
        !a.answers_tls(),
        "{} still answers after kill_hard",
        a.url()
    );
    assert!(
        ping.elapsed() < Duration::from_secs(5),
        "{:?}",
        ping.elapsed()
    );
    assert_eq!(processes(&a_footprint), Vec::<String>::new());
    assert!(
        b.answers_tls(),
        "killing {} took {} down",
        a.name(),
        b.name()
    );

    a.restart();
    eprintln!("{} restarted in {:.2?}", a.name(), a.start_time());
    assert!(a.answers_tls());

    let footprints = [a.footprint(), b.footprint()];
    let dropping = Instant::now();
    drop(a);
    drop(b);
    eprintln!("two engines removed in {:.2?}", dropping.elapsed());
    for footprint in footprints {
        assert_eq!(footprint.leftovers(), Vec::<String>::new());
    }
}

#[test]
fn an_engine_with_a_foreign_ca_is_refused_by_the_client_it_was_given() {
    let engine = RemoteEngine::start(EngineOptions::new(PYEXECD).foreign_ca());
    // What the daemon under test gets: a ca.pem that did not sign the engine's
    // certificate (and a client certificate the engine does not know).
    let refused = engine.ping_with(&engine.cert_path()).unwrap_err();
    assert!(refused.contains("certificate"), "{refused}");
    // The engine itself runs: a client it accepts gets an answer.
    assert_ne!(engine.cert_path(), engine.accepted_cert_path());
    assert!(engine.answers_tls());
    let footprint = engine.footprint();
    drop(engine);
    assert_eq!(footprint.leftovers(), Vec::<String>::new());
}

#[test]
fn a_container_dies_with_its_engine_and_shows_exited_after_the_restart() {
    ensure_image();
    let image = pyexec::config::DEFAULT_IMAGE;
    let mut engine = RemoteEngine::start(EngineOptions::new(PYEXECD).with_image(image));
    // The imported image has no config: the command names its binary by path.
    let out = engine
        .docker_tls()
        .args(["run", "-d", "--network", "none", image, "/bin/sleep", "600"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = engine
        .docker()
        .args(["inspect", "--format", "{{.State.Pid}}", &id])
        .output()
        .unwrap();
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroup.contains(&format!(":/{}/", engine.name())),
        "the container is not under the engine's cgroup parent:\n{cgroup}"
    );

    let footprint = engine.footprint();
    engine.kill_hard();
    // The container's process dies with the host too (the shim that watched it is gone).
    assert!(
        wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
        }),
        "container process {pid} survived kill_hard"
    );
    assert_eq!(processes(&footprint), Vec::<String>::new());
    // Its shim's socket, outside the engine's directory, went with it.
    let sockets = footprint.removed_shim_sockets();
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    assert!(!sockets[0].exists(), "{sockets:?}");

    engine.restart();
    eprintln!("{} restarted in {:.2?}", engine.name(), engine.start_time());
    let out = engine
        .docker()
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("id={id}"),
            "--format",
            "{{.Status}}",
        ])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.starts_with("Exited (255)"), "{status:?}");

    drop(engine);
    assert_eq!(footprint.leftovers(), Vec::<String>::new());
}
