//! Part 6, several engines (issue 11): what a remote Docker Engine over mutual TLS costs a
//! session against the local socket, and sessions per second with 1, 2 and 3 engines.
//!
//! The extra engines are real `dockerd`s in network namespaces of the bench's own, made
//! by `pyexec-testbed` (the harness of the multi-engine tests): reached over a veth pair
//! at `tcp://ADDR:2376` with mutual TLS as a remote host would be, with the system
//! engine's storage driver, and the sandbox image copied from the system engine. They
//! share this machine's cores with the system engine, so they measure the hop (TLS, TCP,
//! another dockerd and containerd), not the capacity another host would add.
//!
//! - latency: four daemons of the same binary, `--engine unix:///var/run/docker.sock` and
//!   `--engine tcp://ADDR:2376 --engine-cert-path DIR`, each with its default warm pool
//!   and with `--warm 0`. One `pyexec hello.py` on each in a rotating order, the daemon
//!   back to idle and a pause between samples, as the hello part does.
//! - throughput: daemons over the local engine alone, with one remote engine, and with
//!   two (`[[engine]]` tables, the pool split evenly), in blocks of ABC CBA ABC CBA at the
//!   throughput part's concurrency, each block timed until every engine's pool is full
//!   again. The daemon's CPU time (from /proc) over the blocks gives what a session costs
//!   the daemon itself, for the scaling model in docs/performance.md. (The machine's CPU
//!   is not a useful figure here: the bench's clients and every engine share it, and so
//!   does whatever else runs on a shared machine.)

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bollard::Docker;
use pyexec_testbed::{EngineOptions, RemoteEngine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ctx::{Bench, Role};
use crate::daemon::Daemon;
use crate::engine;
use crate::report::{num, Measured, Report, Value};
use crate::runner::{expect_output, run_collect, PyexecCli};
use crate::scripts::HELLO;
use crate::stats::Summary;
use crate::throughput::{share, Tally, BLOCKS};

/// Remote engines started: the third engine of the throughput comparison is the second.
const REMOTE: usize = 2;
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const PAUSE: Duration = Duration::from_millis(100);
/// Bound on an engine getting back to idle (pool refilled, used containers removed).
const SETTLE: Duration = Duration::from_secs(20);
const LOCAL_URL: &str = "unix:///var/run/docker.sock";
const STEPS: usize = 5;

/// One engine a daemon may drive.
#[derive(Clone)]
struct Target {
    /// Its name in the daemon's config and metrics.
    name: String,
    url: String,
    cert_path: Option<PathBuf>,
    /// The bench's own connection, for counting containers: the system engine's, or the
    /// remote engine's Unix socket (no TLS needed for that).
    docker: Docker,
}

/// A daemon over some engines, and the spares each engine holds when the daemon is idle.
struct Multi {
    daemon: Daemon,
    cli: PyexecCli,
    engines: Vec<(Target, usize)>,
    metrics: SocketAddr,
}

impl Multi {
    /// Waits until every engine is idle again: its pool full, the used containers removed.
    async fn settle(&self) -> Result<(), String> {
        for (target, pool) in &self.engines {
            engine::settle(&target.docker, &self.daemon.instance, *pool, SETTLE)
                .await
                .map_err(|e| format!("engine {}: {e}", target.name))?;
        }
        Ok(())
    }

    async fn hello(&self, script: &Path) -> Result<Duration> {
        let (t, out) = run_collect(self.cli.command(script), None, RUN_TIMEOUT).await?;
        expect_output(&out, b"hello\n")?;
        Ok(t)
    }
}

fn step(n: usize, what: &str) {
    eprintln!("bench: engines [{n}/{STEPS}] {what}");
}

pub async fn run(b: &Bench, report: &mut Report) {
    let reps = b.params.hello_reps;
    let c = b.params.concurrency;
    let rows = [
        format!(
            "several engines, warm hello-world wall ms, median / p90 (n={reps}): remote engine over TLS vs local socket"
        ),
        "several engines, `--warm 0` hello-world wall ms: remote engine over TLS vs local socket".to_string(),
        format!("several engines, sessions/s at concurrency {c}: 2 engines (local + 1 remote) vs 1 (local)"),
        format!("several engines, sessions/s at concurrency {c}: 3 engines (local + 2 remote) vs 1 (local)"),
    ];
    if let Some(missing) = missing_prerequisite() {
        eprintln!("bench: engines part skipped: {missing}");
        for row in rows {
            report.row(row, &Err(missing.clone()), &Err(missing.clone()));
        }
        return;
    }
    let script = match b.script("hello.py", HELLO) {
        Ok(p) => p,
        Err(e) => {
            let reason = format!("{e:#}");
            for row in rows {
                report.row(row, &Err(reason.clone()), &Err(reason.clone()));
            }
            return;
        }
    };

    let driver = b.docker.info().await.ok().and_then(|i| i.driver);
    step(
        1,
        &format!(
            "starting {REMOTE} Docker Engines in network namespaces (storage driver {}, image copied from the system engine)",
            driver.as_deref().unwrap_or("dockerd's choice")
        ),
    );
    let started = Instant::now();
    let remotes = match start_engines(b, driver.as_deref()).await {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("extra engines did not start: {e}");
            for row in rows {
                report.row(row, &Err(reason.clone()), &Err(reason.clone()));
            }
            return;
        }
    };
    eprintln!(
        "bench: engines: {} up in {:.1} s",
        remotes
            .iter()
            .map(|r| format!("{} at {}", r.name(), r.url()))
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64()
    );
    match targets(b, &remotes).await {
        Ok(targets) => measure(b, &targets, &script, &rows, report).await,
        Err(e) => {
            for row in rows {
                report.row(row, &Err(e.clone()), &Err(e.clone()));
            }
        }
    }
    step(STEPS, "removing the extra engines");
    // Blocking (kills, unmounts, `ip netns del`): off the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || drop(remotes)).await;
}

/// The system engine and the remote ones as the daemons and the bench reach them; notes
/// each remote engine's version and storage driver.
async fn targets(b: &Bench, remotes: &[RemoteEngine]) -> Result<Vec<Target>, String> {
    let mut all = vec![Target {
        name: "local".into(),
        url: LOCAL_URL.into(),
        cert_path: None,
        docker: b.docker.clone(),
    }];
    for (i, r) in remotes.iter().enumerate() {
        let socket = r.socket();
        let docker = Docker::connect_with_unix(
            &socket.display().to_string(),
            120,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
        all.push(Target {
            name: format!("r{}", i + 1),
            url: r.url(),
            cert_path: Some(r.cert_path()),
            docker,
        });
    }
    Ok(all)
}

async fn measure(b: &Bench, t: &[Target], script: &Path, rows: &[String; 4], report: &mut Report) {
    for target in t {
        let info = target.docker.info().await;
        let version = target.docker.version().await;
        report.note(format!(
            "engines: {} ({}): Engine {}, storage driver {}",
            target.name,
            target.url,
            version
                .ok()
                .and_then(|v| v.version)
                .unwrap_or_else(|| "?".into()),
            info.ok()
                .and_then(|i| i.driver)
                .unwrap_or_else(|| "?".into()),
        ));
    }

    step(
        2,
        "starting 4 daemons: local and remote engine, warm pool and --warm 0",
    );
    let max = b.params.max_sessions;
    let pool = pyexec::config::warm_pool_size(b.params.warm, max) as usize;
    let warm = b.params.warm.map(|w| w.min(max));
    let (local, remote) = (&t[0], &t[1]);
    let daemons = [
        start(b, Role::Local, &[(local, warm)], false).await,
        start(b, Role::Remote, &[(remote, warm)], false).await,
        start(b, Role::LocalCold, &[(local, Some(0))], false).await,
        start(b, Role::RemoteCold, &[(remote, Some(0))], false).await,
    ];
    let series = latency(&daemons, script, b.params.hello_reps).await;
    report.row(
        format!("{} (pool of {pool} each)", rows[0]),
        &series[1].measured(),
        &series[0].measured(),
    );
    report.row(
        rows[1].clone(),
        &series[3].measured(),
        &series[2].measured(),
    );
    for (s, name) in series
        .iter()
        .zip(["local", "remote", "local --warm 0", "remote --warm 0"])
    {
        if let Some(issue) = &s.settle_issue {
            report.note(format!("engines, {name}: between samples, {issue}"));
        }
    }
    for (d, name) in daemons
        .iter()
        .zip(["local", "remote", "local --warm 0", "remote --warm 0"])
    {
        let Ok(d) = d else { continue };
        match crate::hello::started_frame(&d.daemon.client_config()).await {
            Ok(st) => report.note(format!(
                "engines: a session on the {name} daemon got STARTED with warm={}, start_ms={}",
                st.warm, st.start_ms
            )),
            Err(e) => report.note(format!("engines: STARTED probe on {name} failed: {e}")),
        }
        let _ = d.settle().await;
    }
    stop_all(daemons, report).await;

    step(
        4,
        &format!(
            "sessions per second with 1, 2 and 3 engines: {} sessions each in {BLOCKS} interleaved blocks at concurrency {}",
            b.params.sessions, b.params.concurrency
        ),
    );
    let runs = throughput(b, t, script).await;
    for (k, row) in rows[2..].iter().enumerate() {
        report.row(
            format!("{row}, n={} each, interleaved", b.params.sessions),
            &runs.variants[k + 1].tally.rate(),
            &runs.variants[0].tally.rate(),
        );
    }
    for v in &runs.variants {
        let n = v.tally.sessions().max(1) as f64;
        let mut line = format!("engines: {} engine(s): ", v.engines);
        match v.daemon_cpu {
            Some(cpu) => {
                let _ = write!(line, "pyexecd {} CPU-ms per session", num(ms(cpu) / n));
            }
            None => line.push_str("pyexecd CPU n/a"),
        }
        if !v.spread.is_empty() {
            let _ = write!(line, "; sessions started per engine: {}", v.spread);
        }
        report.note(line);
    }
    report.note(
        "engines: every engine runs on this machine's cores, so more engines add no \
         capacity here; see docs/performance.md for what N hosts give",
    );
    stop_all(runs.daemons, report).await;
}

/// Starts a daemon over `engines`, each with its `--warm` (None: pyexecd's default).
/// One engine with a pool given as flags (`--engine`, `--engine-cert-path`, `--warm`), as
/// a user would; several as `[[engine]]` tables, each with its own certificates.
async fn start(
    b: &Bench,
    role: Role,
    engines: &[(&Target, Option<u32>)],
    tables: bool,
) -> Result<Multi, String> {
    let max = b.params.max_sessions;
    let name = b.instance(role);
    let metrics = free_port().map_err(|e| format!("{e:#}"))?;
    let mut extra: Vec<String> = vec![
        "--max-sessions".into(),
        max.to_string(),
        "--image".into(),
        b.image.clone(),
        "--metrics-listen".into(),
        metrics.to_string(),
    ];
    if tables {
        let mut toml = String::new();
        for (target, warm) in engines {
            let _ = writeln!(
                toml,
                "[[engine]]\nname = \"{}\"\nurl = \"{}\"",
                target.name, target.url
            );
            if let Some(p) = &target.cert_path {
                let _ = writeln!(toml, "cert_path = \"{}\"", p.display());
            }
            if let Some(w) = warm {
                let _ = writeln!(toml, "warm = {w}");
            }
            toml.push('\n');
        }
        let path = b
            .script(&format!("{name}.toml"), &toml)
            .map_err(|e| format!("{e:#}"))?;
        extra.extend(["--config".into(), path.display().to_string()]);
    } else {
        for (target, warm) in engines {
            extra.extend(["--engine".into(), target.url.clone()]);
            if let Some(p) = &target.cert_path {
                extra.extend(["--engine-cert-path".into(), p.display().to_string()]);
            }
            if let Some(w) = warm {
                extra.extend(["--warm".into(), w.to_string()]);
            }
        }
    }
    eprintln!("bench: starting pyexecd {name} {}", extra.join(" "));
    let daemon = Daemon::start(&b.bins, b.dir.path(), &name, &extra)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let count = engines.len() as u32;
    let multi = Multi {
        cli: PyexecCli::new(&b.bins.pyexec, &daemon),
        daemon,
        engines: engines
            .iter()
            .map(|(target, warm)| {
                // pyexecd's split: the global pool evenly over the engines, at most each
                // engine's own cap (`config/engines.rs`).
                let pool = match warm {
                    Some(w) => *w,
                    None => pyexec::config::warm_pool_size(None, max).div_ceil(count),
                }
                .min(max);
                ((*target).clone(), pool as usize)
            })
            .collect(),
        metrics,
    };
    if let Err(e) = multi.settle().await {
        eprintln!("bench: warning: {name}: {e}");
    }
    Ok(multi)
}

/// Samples of one latency variant.
#[derive(Default)]
struct Series {
    samples: Vec<Duration>,
    error: Option<String>,
    settle_issue: Option<String>,
}

impl Series {
    fn measured(&self) -> Measured {
        match (&self.error, Summary::of_ms(&self.samples)) {
            (Some(e), _) => Err(e.clone()),
            (None, Some(s)) => Ok(Value::spread(s)),
            (None, None) => Err("no samples".into()),
        }
    }
}

/// One hello-world per daemon and round, the order rotating, after one untimed round.
async fn latency(daemons: &[Result<Multi, String>; 4], script: &Path, reps: usize) -> [Series; 4] {
    step(
        3,
        &format!("hello-world on each of the 4 daemons, {reps} timed rounds (+1 warm-up)"),
    );
    let mut series: [Series; 4] = Default::default();
    for (s, d) in series.iter_mut().zip(daemons) {
        if let Err(e) = d {
            s.error = Some(e.clone());
        }
    }
    for rep in 0..=reps {
        for k in 0..daemons.len() {
            let v = (rep + k) % daemons.len();
            let (Ok(d), s) = (&daemons[v], &mut series[v]) else {
                continue;
            };
            if s.error.is_some() {
                continue;
            }
            let ran = d.hello(script).await;
            if let Err(e) = d.settle().await {
                s.settle_issue.get_or_insert(e);
            }
            match ran {
                Ok(t) if rep > 0 => s.samples.push(t),
                Ok(_) => {}
                Err(e) => s.error = Some(format!("{e:#}")),
            }
            tokio::time::sleep(PAUSE).await;
        }
        crate::progress(&format!("bench: engines, hello-world {rep}/{reps}"));
    }
    crate::progress_done(&format!("bench: engines, hello-world: {reps} rounds done"));
    series
}

/// One engine count of the throughput comparison.
struct Variant {
    engines: usize,
    tally: Tally,
    daemon_cpu: Option<Duration>,
    /// `name=count` of `pyexec_engine_sessions_started_total` after the blocks.
    spread: String,
}

struct Throughput {
    variants: Vec<Variant>,
    daemons: Vec<Result<Multi, String>>,
}

async fn throughput(b: &Bench, t: &[Target], script: &Path) -> Throughput {
    let c = b.params.concurrency;
    let names = ["1 engine", "2 engines", "3 engines"];
    let roles = [Role::Engines1, Role::Engines2, Role::Engines3];
    let mut daemons = Vec::new();
    let mut variants = Vec::new();
    for (n, (name, role)) in names.into_iter().zip(roles).enumerate() {
        // The pool split over the engines explicitly, the first ones taking the
        // remainder. pyexecd's own split rounds up (8 over 3 engines: 3 each), and then
        // its global --max-sessions keeps one of them a spare short, whichever fills last.
        let pool = pyexec::config::warm_pool_size(b.params.warm, b.params.max_sessions);
        let count = n as u32 + 1;
        let engines: Vec<_> = t[..=n]
            .iter()
            .zip(0..)
            .map(|(target, i)| (target, Some(pool / count + u32::from(i < pool % count))))
            .collect();
        let d = start(b, role, &engines, true).await;
        let mut tally = Tally::new(name);
        match &d {
            Ok(d) => {
                tally
                    .warm_up(|_| async { d.hello(script).await.map(|_| ()) })
                    .await;
                let _ = d.settle().await;
            }
            Err(e) => tally.warm_up(|_| async { Err(anyhow!("{e}")) }).await,
        }
        daemons.push(d);
        variants.push(Variant {
            engines: n + 1,
            tally,
            daemon_cpu: Some(Duration::ZERO),
            spread: String::new(),
        });
    }
    for block in 0..BLOCKS {
        let n = share(b.params.sessions, block);
        let order: Vec<usize> = if block % 2 == 0 {
            (0..variants.len()).collect()
        } else {
            (0..variants.len()).rev().collect()
        };
        for v in order {
            let (Ok(d), var) = (&daemons[v], &mut variants[v]) else {
                continue;
            };
            let cpu0 = d.daemon.cpu_time().ok();
            let job = |_| async { d.hello(script).await.map(|_| ()) };
            var.tally.block(n, c, job, || d.settle()).await;
            var.daemon_cpu = sum(var.daemon_cpu, cpu0, d.daemon.cpu_time().ok());
        }
    }
    for (var, d) in variants.iter_mut().zip(&daemons) {
        var.tally.done();
        if let Ok(d) = d {
            var.spread = match scrape(d.metrics).await {
                Ok(text) => d
                    .engines
                    .iter()
                    .map(|(target, _)| {
                        let key = format!(
                            "pyexec_engine_sessions_started_total{{engine=\"{}\"}}",
                            target.name
                        );
                        format!(
                            "{}={}",
                            target.name,
                            metric(&text, &key).map_or("?".into(), num)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                Err(e) => format!("n/a ({e:#})"),
            };
        }
    }
    Throughput { variants, daemons }
}

/// `total + (after - before)`, or None once any reading is missing.
fn sum(
    total: Option<Duration>,
    before: Option<Duration>,
    after: Option<Duration>,
) -> Option<Duration> {
    Some(total? + after?.checked_sub(before?)?)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn stop_all(daemons: impl IntoIterator<Item = Result<Multi, String>>, report: &mut Report) {
    for d in daemons.into_iter().flatten() {
        let name = d.daemon.instance.clone();
        if let Err(e) = d.daemon.stop().await {
            report.note(format!("engines: {name}: {e:#}"));
        }
    }
}

/// Starts the remote engines in parallel. `RemoteEngine::start` blocks and panics on a
/// failed step (after undoing what it did); a panic becomes the error here, and the
/// engines that did start are removed.
async fn start_engines(b: &Bench, driver: Option<&str>) -> Result<Vec<RemoteEngine>, String> {
    let handles: Vec<_> = (0..REMOTE)
        .map(|_| {
            let mut opts = EngineOptions::new(&b.bins.pyexecd).with_image(&b.image);
            if let Some(d) = driver {
                opts = opts.storage_driver(d);
            }
            tokio::task::spawn_blocking(move || RemoteEngine::start(opts))
        })
        .collect();
    let mut engines = Vec::new();
    let mut error = None;
    for h in handles {
        match h.await {
            Ok(e) => engines.push(e),
            Err(e) => {
                let why = match e.try_into_panic() {
                    Ok(p) => p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".into()),
                    Err(e) => e.to_string(),
                };
                error.get_or_insert(why);
            }
        }
    }
    match error {
        None => Ok(engines),
        Some(e) => {
            let _ = tokio::task::spawn_blocking(move || drop(engines)).await;
            Err(e)
        }
    }
}

/// Why the extra engines cannot be started here, if they cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root: it starts dockerds in network namespaces".into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in ["ip", "nsenter", "dockerd"] {
        if !std::env::split_paths(&path).any(|d| d.join(tool).is_file()) {
            return Some(format!(
                "`{tool}` is not on PATH (scripts/setup installs it)"
            ));
        }
    }
    None
}

/// A free port on 127.0.0.1 for a daemon's metrics listener (free when asked; the daemon
/// binds it a moment later).
fn free_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?)
}

/// `GET /metrics` from a daemon's metrics listener.
async fn scrape(addr: SocketAddr) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
        .await
        .map_err(|_| anyhow!("no answer from {addr}"))??;
    Ok(text)
}

/// The value of the series `key` (name and labels, exactly as exposed).
fn metric(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines() {
        let text = "# TYPE x counter\nx_total{engine=\"local\"} 12\nx_total{engine=\"r1\"} 3\n";
        assert_eq!(metric(text, "x_total{engine=\"r1\"}"), Some(3.0));
        assert_eq!(metric(text, "x_total{engine=\"r2\"}"), None);
    }
}
