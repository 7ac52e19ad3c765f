//! Back to idle after a hostile case: the daemon holds as many containers as its warm
//! pool, the descriptors it held before, no session in its own account, and it still
//! serves.

use std::thread;
use std::time::{Duration, Instant};

use super::daemon::Daemon;
use super::figures::{assert_no_session_left, warm_target};
use super::processes::{fd_count, stderr_str, stdout_str, wait_until};

/// Waits until the daemon has at most `baseline` descriptors open; on failure the
/// message lists what is open, for the report.
pub fn assert_fds_settle(d: &Daemon, baseline: usize, what: &str) {
    let settled = wait_until(Duration::from_secs(10), || fd_count(d.pid()) <= baseline);
    if !settled {
        let open: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| {
                        let target = std::fs::read_link(e.path()).unwrap_or_default();
                        format!(
                            "{} -> {}",
                            e.file_name().to_string_lossy(),
                            target.display()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        panic!(
            "{what}: the daemon holds {} descriptors, {baseline} before:\n{}\n{}",
            fd_count(d.pid()),
            open.join("\n"),
            d.log()
        );
    }
}

/// The daemon still serves: a hello-world right now succeeds, byte for byte. The daemon's
/// warnings so far go to the test's stderr (shown when a test fails, or with
/// `--success-output`).
pub fn assert_healthy(d: &Daemon) {
    for line in d.log().lines() {
        if line.contains(" WARN ") || line.contains(" ERROR ") {
            eprintln!("daemon: {line}");
        }
    }
    let out = d.run("print('hello, world')\n", &[], b"");
    assert_eq!(
        (
            out.status.code(),
            stdout_str(&out).as_str(),
            stderr_str(&out).as_str()
        ),
        (Some(0), "hello, world\n", ""),
        "hello-world after the hostile case\n{}",
        d.log()
    );
}

/// Waits until the daemon is idle (as many containers as its warm pool holds, and a
/// descriptor count that no longer moves) and returns that descriptor count: the
/// baseline a leak check compares against.
pub fn idle_baseline(d: &Daemon) -> usize {
    let warm = warm_target(d);
    assert!(
        wait_until(Duration::from_secs(30), || d.containers().len() == warm),
        "the daemon did not settle to {warm} containers: {:?}",
        d.containers()
    );
    let mut last = fd_count(d.pid());
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && stable_since.elapsed() < Duration::from_millis(500) {
        thread::sleep(Duration::from_millis(50));
        let now = fd_count(d.pid());
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    last
}

/// Waits for the daemon to be back to idle after a group of sessions: its containers
/// back to the warm pool's size and its descriptors back to `baseline`.
pub fn assert_back_to_idle(d: &Daemon, baseline: usize, what: &str) {
    let warm = warm_target(d);
    assert!(
        wait_until(Duration::from_secs(15), || d.containers().len() == warm),
        "{what}: {} containers, the warm pool holds {warm}\n{}",
        d.containers().len(),
        d.log()
    );
    assert_fds_settle(d, baseline, what);
    assert_no_session_left(d, what);
}
