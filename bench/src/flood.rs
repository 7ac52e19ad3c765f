//! Part 4, stdout throughput: the script writes N MiB (256 by default) in 1 MiB blocks
//! and the bench reads its stdout pipe as fast as it can and discards it.
//!
//! pyexec is the whole `pyexec` binary writing into a pipe; the baseline is
//! `docker run --rm --log-driver none` doing the same. Two figures: the streaming rate
//! (first byte to EOF, which is what the transport can do) and the whole process's wall
//! time (start-up included). The variants alternate, after one untimed 16 MiB warm-up
//! each.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::ctx::{Bench, Served};
use crate::report::{Measured, Report, Value};
use crate::runner::{check_status, drain};
use crate::scripts::flood;
use crate::stats::{mib_per_s, Summary};

const WARM_MIB: u64 = 16;
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// One flood: wall time and streaming rate.
struct Flood {
    wall: Duration,
    mib_s: f64,
}

#[derive(Default)]
struct Series {
    runs: Vec<Flood>,
    error: Option<String>,
}

impl Series {
    fn rate(&self) -> Measured {
        self.summary(|f| f.mib_s)
    }

    fn wall(&self) -> Measured {
        self.summary(|f| f.wall.as_secs_f64())
    }

    fn summary(&self, key: impl Fn(&Flood) -> f64) -> Measured {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let xs: Vec<f64> = self.runs.iter().map(key).collect();
        Summary::of(&xs)
            .map(|s| Value::single(s.median))
            .ok_or_else(|| "no samples".into())
    }
}

pub async fn run(b: &Bench, main: &Result<Served, String>, report: &mut Report) {
    let (mib, reps) = (b.params.stdout_mib, b.params.stdout_reps);
    eprintln!("bench: stdout flood of {mib} MiB, {reps} timed runs per variant");
    let scripts = b
        .script("flood.py", &flood(mib))
        .and_then(|s| Ok((s, b.script("flood_warm.py", &flood(WARM_MIB))?)))
        .map_err(|e| format!("{e:#}"));
    let docker = b.docker_run();
    let mut py = Series::default();
    let mut dk = Series::default();
    // pyexecd's CPU seconds per timed flood, container replacement included.
    let mut cpu = Vec::new();
    match (main, &scripts) {
        (Err(e), _) | (_, Err(e)) => py.error = Some(e.clone()),
        _ => {}
    }
    if let Err(e) = &docker {
        dk.error = Some(e.clone());
    }

    for rep in 0..=reps {
        let (size, name) = if rep == 0 {
            (WARM_MIB, "warm-up")
        } else {
            (mib, "timed")
        };
        if let (Ok(served), Ok((full, warm)), None) = (main, &scripts, &py.error) {
            let script = if rep == 0 { warm } else { full };
            let cpu0 = served.daemon.cpu_time().ok();
            let ran = once(served.cli.command(script), size).await;
            let _ = served.settle(&b.docker).await;
            match ran {
                Ok(f) if rep > 0 => {
                    if let (Some(c0), Ok(c1)) = (cpu0, served.daemon.cpu_time()) {
                        cpu.push((c1 - c0).as_secs_f64());
                    }
                    py.runs.push(f);
                }
                Ok(_) => {}
                Err(e) => py.error = Some(format!("{e:#}")),
            }
        }
        if let (Ok(d), None) = (&docker, &dk.error) {
            match once(d.script_arg(&flood(size), false), size).await {
                Ok(f) if rep > 0 => dk.runs.push(f),
                Ok(_) => {}
                Err(e) => dk.error = Some(format!("{e:#}")),
            }
        }
        crate::progress(&format!("bench: stdout flood, {name} run {rep}/{reps}"));
    }
    crate::progress_done("bench: stdout flood done");

    report.row(
        format!("stdout MiB/s, first byte to EOF ({mib} MiB, median of {reps}) vs `docker run --log-driver none`"),
        &py.rate(),
        &dk.rate(),
    );
    report.row(
        format!("stdout {mib} MiB, whole process wall s (median of {reps})"),
        &py.wall(),
        &dk.wall(),
    );
    if let Some(c) = Summary::of(&cpu) {
        report.note(format!(
            "stdout: pyexecd used {:.2} CPU-s per {mib} MiB flood (median; {:.1} ms per MiB)",
            c.median,
            c.median * 1000.0 / mib as f64
        ));
    }
}

/// Runs one flood of `mib` MiB with stdout to a pipe read at full speed.
async fn once(mut cmd: Command, mib: u64) -> Result<Flood> {
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot spawn")?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let mut err = Vec::new();
    let (drained, status) = tokio::time::timeout(RUN_TIMEOUT, async {
        let (drained, _) = tokio::join!(drain(stdout, None), stderr.read_to_end(&mut err));
        (drained, child.wait().await)
    })
    .await
    .map_err(|_| anyhow!("timed out after {RUN_TIMEOUT:?}"))?;
    let wall = t0.elapsed();
    let drained = drained.context("reading stdout")?;
    check_status(status.context("wait")?, &err)?;
    let want = mib << 20;
    if drained.bytes != want {
        bail!("got {} bytes instead of {want}", drained.bytes);
    }
    Ok(Flood {
        wall,
        mib_s: mib_per_s(drained.bytes, drained.streaming()),
    })
}
