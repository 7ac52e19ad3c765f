//! The daemon's figures, from its own account: the Prometheus page it serves at
//! `/metrics` (every harness daemon serves one) and the status line it logs on SIGUSR1.
//! Each has one parser here, `Metrics` and `StatusFigures`; a figure is never read from
//! the wording of other log lines.
//!
//! The helpers here read `/metrics`: the warm pool's size and how full it is, whether
//! every session has ended. The status line is for tests that check the dump itself or
//! what only it carries (the sessions per client identity).

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

/// The address of the daemon's metrics endpoint (`--metrics-listen`). The daemon chose
/// the port, and its start-up log line is the only place that says which.
pub fn metrics_addr(d: &Daemon) -> String {
    const MARK: &str = "metrics at http://";
    assert!(
        d.wait_log(MARK, Duration::from_secs(5)),
        "no metrics endpoint (--metrics-listen)\n{}",
        d.log()
    );
    let log = d.log();
    let line = log.lines().find(|l| l.contains(MARK)).unwrap();
    let url = line.split(MARK).nth(1).unwrap();
    url.split('/').next().unwrap().to_string()
}

/// A scrape of the daemon's `/metrics`, parsed; it must answer 200.
pub fn metrics(d: &Daemon) -> Metrics {
    let page = http_get(&metrics_addr(d), "/metrics");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    Metrics::parse(&page)
}

/// The samples of one Prometheus (OpenMetrics) text page, by name and labels as the page
/// writes them: `pyexec_sessions_running`, `pyexec_capacity{limit="warm"}`. This is the
/// one parser of that page.
#[derive(Debug, Clone)]
pub struct Metrics {
    samples: Vec<(String, f64)>,
    page: String,
}

impl Metrics {
    /// Parses a page, or a whole HTTP response (its head is skipped).
    pub fn parse(page: &str) -> Metrics {
        let body = page.split_once("\r\n\r\n").map_or(page, |(_, body)| body);
        let samples = body
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                // The labels may hold spaces; they end at the first `}` outside quotes.
                let name_end = match l.find(['{', ' ']) {
                    Some(i) if l[i..].starts_with('{') => {
                        let mut quoted = Quoted::default();
                        i + l[i..]
                            .char_indices()
                            .find(|&(_, c)| !quoted.step(c) && c == '}')
                            .unwrap_or_else(|| panic!("unclosed labels: {l}"))
                            .0
                            + 1
                    }
                    Some(i) => i,
                    None => panic!("a sample without a value: {l}"),
                };
                let value = l[name_end..]
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("a sample without a value: {l}"));
                (l[..name_end].to_string(), value)
            })
            .collect();
        Metrics {
            samples,
            page: page.to_string(),
        }
    }

    /// The value of one sample, `name` or `name{labels}` exactly as the page writes it.
    pub fn get(&self, sample: &str) -> f64 {
        self.samples
            .iter()
            .find(|(name, _)| name == sample)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no sample {sample} in\n{}", self.page))
    }

    /// The value of a sample of a labelled counter, which the page lists from its first
    /// increment on: absent, it is 0.
    pub fn count(&self, sample: &str) -> f64 {
        self.samples
            .iter()
            .find(|(name, _)| name == sample)
            .map_or(0.0, |(_, v)| *v)
    }

    /// The sum of every sample of `family`, whatever its labels
    /// (`pyexec_sessions_total` over all outcomes).
    pub fn sum(&self, family: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(name, _)| {
                name == family
                    || name
                        .strip_prefix(family)
                        .is_some_and(|labels| labels.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// How many warm containers the daemon keeps (0 when it has no pool): the configured
/// bound it exports, after the daemon's own adjustment (never more than its slots).
pub fn warm_target(d: &Daemon) -> usize {
    metrics(d).get("pyexec_capacity{limit=\"warm\"}") as usize
}

/// Waits until the warm pool holds as many ready containers as it keeps (a session then
/// does not pay for a container start inside a short time limit).
pub fn wait_pool_ready(d: &Daemon) {
    let warm = warm_target(d);
    let mut ready = 0;
    assert!(
        wait_until(Duration::from_secs(30), || {
            ready = metrics(d).get("pyexec_warm_pool_size") as usize;
            ready >= warm
        }),
        "the warm pool did not fill: {ready} of {warm} ready\n{}",
        d.log()
    );
}

/// The daemon's own account: every session it accepted has ended (its actor reported
/// its outcome), and none is running or queued.
pub fn assert_no_session_left(d: &Daemon, what: &str) {
    let mut last = (0.0, 0.0, 0.0, 0.0);
    let ok = wait_until(Duration::from_secs(10), || {
        let m = metrics(d);
        last = (
            m.get("pyexec_accepted_sessions_total"),
            m.sum("pyexec_sessions_total"),
            m.get("pyexec_sessions_running"),
            m.get("pyexec_sessions_queued"),
        );
        let (accepted, ended, running, queued) = last;
        running == 0.0 && queued == 0.0 && ended == accepted
    });
    let (accepted, ended, running, queued) = last;
    assert!(
        ok,
        "{what}: sessions still live in the daemon's account: {accepted} accepted, \
         {ended} ended, {running} running, {queued} queued"
    );
}

/// Asks the daemon for a status snapshot (SIGUSR1) and returns that log line.
pub fn status_line(d: &Daemon) -> String {
    let count = |log: &str| log.matches(STATUS_MARK).count();
    let before = count(&d.log());
    d.signal(libc::SIGUSR1);
    assert!(
        wait_until(Duration::from_secs(5), || count(&d.log()) > before),
        "no status line after SIGUSR1"
    );
    let log = d.log();
    log.lines()
        .rfind(|l| l.contains(STATUS_MARK))
        .unwrap()
        .to_string()
}

/// A status snapshot (SIGUSR1), parsed.
pub fn status(d: &Daemon) -> StatusFigures {
    StatusFigures::parse(&status_line(d))
}

/// Where the snapshot starts in the status log line (`status.rs`, `Snapshot`'s Display).
const STATUS_MARK: &str = "status: uptime=";

/// The figures of a SIGUSR1 status line (`status_line`) that a test counts with. This is
/// the one parser of that line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StatusFigures {
    pub accepted: u64,
    pub running: u64,
    pub queued: u64,
    pub warm: u64,
    pub warm_hits: u64,
    pub warm_misses: u64,
    /// Active sessions per client identity, `clients=["CN=alice":1]` as pairs, names
    /// unquoted (the line lists the 20 busiest; the rest are a count this leaves out).
    pub clients: Vec<(String, u64)>,
    /// `finished=[exited=3,error_busy=2]` as pairs, in the line's order.
    pub finished: Vec<(String, u64)>,
    pub busy: u64,
    pub tls_failures: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl StatusFigures {
    /// Parses the `key=value` fields after `status: `; a list value is `[...]`, whose
    /// client names are quoted as Rust's `Debug` quotes them. Panics, quoting the line,
    /// when a figure is missing or malformed.
    pub fn parse(line: &str) -> StatusFigures {
        let start = line
            .find(STATUS_MARK)
            .unwrap_or_else(|| panic!("not a status line: {line}"));
        let fields = fields(&line[start + "status: ".len()..])
            .unwrap_or_else(|| panic!("a malformed status line: {line}"));
        let value = |key: &str| -> &str {
            fields
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("no {key}= in the status line: {line}"))
        };
        let number = |key: &str| -> u64 {
            value(key)
                .parse()
                .unwrap_or_else(|_| panic!("{key}= is not a count in the status line: {line}"))
        };
        let list = |key: &str| -> Vec<&str> {
            value(key)
                .strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .and_then(list_items)
                .unwrap_or_else(|| panic!("{key}= is not a [list] in the status line: {line}"))
        };
        let clients = list("clients")
            .into_iter()
            .filter(|item| !item.starts_with('+')) // "+3 more"
            .map(|item| {
                let (name, n) = item
                    .rsplit_once(':')
                    .and_then(|(name, n)| Some((unquote(name)?, n.parse().ok()?)))
                    .unwrap_or_else(|| panic!("client {item:?} in the status line: {line}"));
                (name, n)
            })
            .collect();
        let finished = list("finished")
            .into_iter()
            .map(|item| {
                item.split_once('=')
                    .and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                    .unwrap_or_else(|| panic!("outcome {item:?} in the status line: {line}"))
            })
            .collect();
        StatusFigures {
            accepted: number("accepted"),
            running: number("running"),
            queued: number("queued"),
            warm: number("warm"),
            warm_hits: number("warm_hits"),
            warm_misses: number("warm_misses"),
            clients,
            finished,
            busy: number("busy"),
            tls_failures: number("tls_failures"),
            bytes_in: number("bytes_in"),
            bytes_out: number("bytes_out"),
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

    /// Every session the daemon accepted has ended, and none is running or queued.
    pub fn no_session_left(&self) -> bool {
        self.running == 0 && self.queued == 0 && self.finished_total() == self.accepted
    }
}

/// Splits `key=value key=[a,b] ...` into pairs; a `[...]` value runs to its closing
/// bracket, brackets and spaces inside quoted names included.
fn fields(text: &str) -> Option<Vec<(&str, &str)>> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let len = if after.starts_with('[') {
            let mut quoted = Quoted::default();
            after
                .char_indices()
                .find(|&(_, c)| !quoted.step(c) && c == ']')?
                .0
                + 1
        } else {
            after.find(' ').unwrap_or(after.len())
        };
        out.push((key, &after[..len]));
        rest = after[len..].trim_start();
    }
    Some(out)
}

/// The comma-separated items of a list's inside; commas in quoted names do not split.
fn list_items(inside: &str) -> Option<Vec<&str>> {
    let mut items = Vec::new();
    let mut quoted = Quoted::default();
    let mut from = 0;
    for (i, c) in inside.char_indices() {
        if !quoted.step(c) && c == ',' {
            items.push(&inside[from..i]);
            from = i + 1;
        }
    }
    if quoted.open {
        return None;
    }
    if !inside.is_empty() {
        items.push(&inside[from..]);
    }
    Some(items)
}

/// Tracks whether a scan is inside a `Debug`-quoted string.
#[derive(Default)]
struct Quoted {
    open: bool,
    escaped: bool,
}

impl Quoted {
    /// Takes the next character; true while it belongs to a quoted string (its quotes
    /// included).
    fn step(&mut self, c: char) -> bool {
        if self.escaped {
            self.escaped = false;
            true
        } else if self.open {
            match c {
                '\\' => self.escaped = true,
                '"' => self.open = false,
                _ => {}
            }
            true
        } else if c == '"' {
            self.open = true;
            true
        } else {
            false
        }
    }
}

/// A name as `Debug` quotes it, back to the name (the escapes a subject can need).
fn unquote(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            '0' => out.push('\0'),
            'u' => {
                let hex: String = chars.by_ref().skip(1).take_while(|c| *c != '}').collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            other => out.push(other), // \\ \" \'
        }
    }
    Some(out)
}
