//! Part 5, pyexecd's memory (VmRSS), against the targets: idle at most 20 MiB,
//! at most 256 KiB per running session, under 64 MiB while one client reads a 256 MiB
//! flood slowly.
//!
//! A daemon of its own with `--max-sessions` ≥ N and no pool (`--warm 0` where the flag
//! exists), so that "idle" and "per session" mean what they say; then, when pyexecd has a
//! pool, a second daemon with its default pool for the idle figure users will see.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::future::join_all;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin};

use crate::ctx::{Bench, Role, Served};
use crate::daemon::Daemon;
use crate::report::{Measured, Report, Value};
use crate::runner::{check_status, drain, finish};
use crate::scripts::{flood, BLOCK};
use crate::stats::{mib_per_s, Summary};

/// The slow reader: 64 KiB every 10 ms, about 6.5 MB/s.
const SLOW_CHUNK: usize = 64 << 10;
const SLOW_PAUSE: Duration = Duration::from_millis(10);
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

const IDLE_TARGET_MIB: f64 = 20.0;
const SESSION_TARGET_KIB: f64 = 256.0;
const FLOOD_TARGET_MIB: f64 = 64.0;

pub async fn run(b: &Bench, report: &mut Report) {
    let n = b.params.mem_sessions;
    let max = b.params.max_sessions.max(n as u32);
    eprintln!(
        "bench: memory: idle, {n} blocked sessions, slow reader of a {} MiB flood",
        b.params.flood_mib
    );
    let warm = b.warm_supported.then_some(0);
    let served = b.daemon(Role::Memory, max, warm).await;

    let (idle, per_session, peak) = match &served {
        Ok(s) => measure(b, s, report).await,
        Err(e) => (Err(e.clone()), Err(e.clone()), Err(e.clone())),
    };
    if let Ok(s) = served {
        if let Err(e) = s.daemon.stop().await {
            report.note(format!("memory daemon: {e:#}"));
        }
    }
    let idle_name = if b.warm_supported {
        "--warm 0"
    } else {
        "no pool"
    };
    report.row(
        format!("pyexecd RSS idle after start, MiB ({idle_name})"),
        &idle,
        &Ok(Value::target("≤", IDLE_TARGET_MIB)),
    );

    let pooled: Measured = if b.warm_supported {
        match b.daemon(Role::Pool, b.params.max_sessions, None).await {
            Ok(s) => {
                let r = idle_rss(&s.daemon).await;
                if let Err(e) = s.daemon.stop().await {
                    report.note(format!("pool daemon: {e:#}"));
                }
                r.map(|kib| Value::single(kib / 1024.0))
            }
            Err(e) => Err(e),
        }
    } else {
        Err("pyexecd has no --warm flag".into())
    };
    report.row(
        format!(
            "pyexecd RSS idle with its default pool (--max-sessions {}), MiB",
            b.params.max_sessions
        ),
        &pooled,
        &Ok(Value::target("≤", IDLE_TARGET_MIB)),
    );
    report.row(
        format!("pyexecd RSS per running session, KiB ((RSS with {n} sessions blocked on stdin - idle) / {n})"),
        &per_session,
        &Ok(Value::target("≤", SESSION_TARGET_KIB)),
    );
    report.row(
        format!(
            "pyexecd peak RSS, MiB, one client reading a {} MiB flood at 64 KiB / 10 ms (sampled every 50 ms)",
            b.params.flood_mib
        ),
        &peak,
        &Ok(Value::target("<", FLOOD_TARGET_MIB)),
    );
}

async fn measure(b: &Bench, s: &Served, report: &mut Report) -> (Measured, Measured, Measured) {
    let idle = idle_rss(&s.daemon).await;
    let per_session = match (&idle, b.script("block.py", BLOCK)) {
        (Ok(idle), Ok(script)) => {
            let n = b.params.mem_sessions;
            match held_sessions(s, &script, n).await {
                Ok(with_n) => {
                    report.note(format!(
                        "memory: RSS {:.1} MiB idle, {:.1} MiB with {n} sessions blocked on stdin",
                        idle / 1024.0,
                        with_n / 1024.0
                    ));
                    Ok(Value::single((with_n - idle) / n as f64))
                }
                Err(e) => Err(format!("{e:#}")),
            }
        }
        (Err(e), _) => Err(e.clone()),
        (_, Err(e)) => Err(format!("{e:#}")),
    };
    if let Err(e) = s.settle(&b.docker).await {
        report.note(format!("memory: after the held sessions, {e}"));
    }
    if let Ok(after) = idle_rss(&s.daemon).await {
        report.note(format!(
            "memory: RSS {:.1} MiB once those sessions had ended and their containers were removed",
            after / 1024.0
        ));
    }

    let mib = b.params.flood_mib;
    let peak = match b.script("flood_slow.py", &flood(mib)) {
        Ok(script) => match slow_flood(s, &script, mib).await {
            Ok((peak_kib, rate)) => {
                report.note(format!(
                    "memory: the slow reader got the whole {mib} MiB at {rate:.1} MiB/s"
                ));
                Ok(Value::single(peak_kib as f64 / 1024.0))
            }
            Err(e) => Err(format!("{e:#}")),
        },
        Err(e) => Err(format!("{e:#}")),
    };
    let _ = s.settle(&b.docker).await;
    (
        idle.map(|kib| Value::single(kib / 1024.0)),
        per_session,
        peak,
    )
}

/// RSS once the daemon has settled: one second after it went idle, median of 5 samples
/// 100 ms apart, in KiB.
async fn idle_rss(d: &Daemon) -> Result<f64, String> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    rss_median(d).await
}

async fn rss_median(d: &Daemon) -> Result<f64, String> {
    let mut xs = Vec::new();
    for _ in 0..5 {
        xs.push(d.rss_kib().map_err(|e| format!("{e:#}"))? as f64);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Summary::of(&xs).map_or(0.0, |s| s.median))
}

/// Opens `n` sessions that block on stdin, measures the RSS while all of them run, then
/// closes their stdin and checks that they all ended well. Returns the RSS in KiB.
async fn held_sessions(s: &Served, script: &std::path::Path, n: usize) -> Result<f64> {
    let mut held: Vec<(Child, ChildStdin)> = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let mut child = s
            .cli
            .command(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot spawn pyexec")?;
        let stdin = child.stdin.take().context("no stdin pipe")?;
        readers.push(BufReader::new(
            child.stdout.take().context("no stdout pipe")?,
        ));
        held.push((child, stdin));
    }
    let ready = join_all(readers.iter_mut().map(|r| async move {
        let mut line = String::new();
        match tokio::time::timeout(Duration::from_secs(60), r.read_line(&mut line)).await {
            Ok(Ok(_)) if line == "ready\n" => Ok(()),
            Ok(_) => Err(anyhow!("a session said {line:?} instead of ready")),
            Err(_) => Err(anyhow!("a session did not start within 60 s")),
        }
    }))
    .await;
    ready.into_iter().collect::<Result<Vec<()>>>()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_median(&s.daemon).await.map_err(|e| anyhow!(e))?;

    let ends = join_all(held.into_iter().map(|(mut child, stdin)| async move {
        drop(stdin);
        let stderr = child.stderr.take().context("no stderr pipe")?;
        finish(
            child,
            stderr,
            Duration::from_secs(30),
            "a session did not end after its stdin closed",
        )
        .await
    }))
    .await;
    ends.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(rss)
}

/// Runs the flood with a deliberately slow reader while sampling the daemon's RSS;
/// returns the peak in KiB and the reader's rate in MiB/s.
async fn slow_flood(s: &Served, script: &std::path::Path, mib: u64) -> Result<(u64, f64)> {
    let mut child = s
        .cli
        .command(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot spawn pyexec")?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let t0 = Instant::now();
    let reading = drain(stdout, Some((SLOW_CHUNK, SLOW_PAUSE)));
    tokio::pin!(reading);
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let mut peak = 0u64;
    let drained = loop {
        tokio::select! {
            r = &mut reading => break r.context("reading stdout")?,
            _ = tick.tick() => {
                peak = peak.max(s.daemon.rss_kib()?);
                crate::progress(&format!(
                    "bench: slow reader, {:.0} s, peak RSS {:.1} MiB",
                    t0.elapsed().as_secs_f64(),
                    peak as f64 / 1024.0
                ));
            }
        }
    };
    crate::progress_done(&format!(
        "bench: slow reader done in {:.0} s",
        t0.elapsed().as_secs_f64()
    ));
    peak = peak.max(s.daemon.rss_kib()?);
    let mut err = Vec::new();
    let _ = stderr.read_to_end(&mut err).await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .map_err(|_| anyhow!("pyexec did not exit after the flood"))??;
    check_status(status, &err)?;
    if drained.bytes != mib << 20 {
        bail!("got {} bytes instead of {}", drained.bytes, mib << 20);
    }
    Ok((peak, mib_per_s(drained.bytes, drained.end - t0)))
}
