//! The daemon's figures: its SIGUSR1 status line, its Prometheus page, and what a test
//! learns from them (the warm pool's size, whether every session has ended).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::daemon::Daemon;
use super::processes::wait_until;

/// A plain HTTP/1.1 GET (the metrics endpoint); the whole response, headers included.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// How many warm containers the daemon keeps (`warm=N` in its "listening" line; 0 when
/// the daemon has no pool).
pub fn warm_target(d: &Daemon) -> usize {
    // The log is read on a thread of its own: the line may lag behind the start.
    assert!(d.wait_log(" listening", Duration::from_secs(10)));
    let log = d.log();
    log.lines()
        .find(|l| l.contains(" listening"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("warm=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Waits until the warm pool holds started containers (a session then does not pay for
/// a container start inside a short time limit).
pub fn wait_pool_ready(d: &Daemon) {
    let warm = warm_target(d);
    assert!(
        wait_until(Duration::from_secs(30), || d
            .log()
            .matches("container started")
            .count()
            >= warm),
        "the warm pool did not fill\n{}",
        d.log()
    );
}

/// Asks the daemon for a status snapshot (SIGUSR1) and returns that log line.
pub fn status_line(d: &Daemon) -> String {
    let count = |log: &str| log.matches("status: uptime=").count();
    let before = count(&d.log());
    d.signal(libc::SIGUSR1);
    assert!(
        wait_until(Duration::from_secs(5), || count(&d.log()) > before),
        "no status line after SIGUSR1"
    );
    let log = d.log();
    log.lines()
        .rfind(|l| l.contains("status: uptime="))
        .unwrap()
        .to_string()
}

/// The daemon's own account: every session it accepted has ended (its actor reported
/// its outcome), and none is running or queued.
pub fn assert_no_session_left(d: &Daemon, what: &str) {
    let number = |line: &str, key: &str| -> Option<u64> {
        let rest = line.split(&format!(" {key}=")).nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let settled = |line: &str| {
        let finished: Option<u64> = line
            .split(" finished=[")
            .nth(1)
            .and_then(|r| r.split(']').next())
            .map(|list| {
                list.split(',')
                    .filter_map(|kv| kv.split('=').nth(1)?.parse::<u64>().ok())
                    .sum()
            });
        matches!(
            (number(line, "accepted"), finished, number(line, "running"), number(line, "queued")),
            (Some(a), Some(f), Some(0), Some(0)) if a == f
        )
    };
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        last = status_line(d);
        settled(&last)
    });
    assert!(
        ok,
        "{what}: sessions still live in the daemon's account: {last}"
    );
}

/// The figures of a SIGUSR1 status line (`status_line`) that a test counts with.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StatusFigures {
    pub accepted: u64,
    pub running: u64,
    pub queued: u64,
    pub warm: u64,
    pub warm_hits: u64,
    pub warm_misses: u64,
    pub busy: u64,
    /// `finished=[exited=3,error_busy=2]` as pairs, in the line's order.
    pub finished: Vec<(String, u64)>,
}

impl StatusFigures {
    pub fn parse(line: &str) -> StatusFigures {
        let number = |key: &str| -> u64 {
            line.split(&format!(" {key}="))
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {key}= in the status line: {line}"))
        };
        let finished = line
            .split(" finished=[")
            .nth(1)
            .and_then(|r| r.split(']').next())
            .unwrap_or_else(|| panic!("no finished=[...] in the status line: {line}"))
            .split(',')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("key=value");
                (k.to_string(), v.parse().expect("a count"))
            })
            .collect();
        StatusFigures {
            accepted: number("accepted"),
            running: number("running"),
            queued: number("queued"),
            warm: number("warm"),
            warm_hits: number("warm_hits"),
            warm_misses: number("warm_misses"),
            busy: number("busy"),
            finished,
        }
    }

    /// How many sessions ended with this outcome label (`exited`, `error_busy`, ...).
    pub fn finished(&self, label: &str) -> u64 {
        self.finished
            .iter()
            .filter(|(k, _)| k == label)
            .map(|(_, v)| v)
            .sum()
    }

    pub fn finished_total(&self) -> u64 {
        self.finished.iter().map(|(_, v)| v).sum()
    }
}
