//! Part 3, echo round trip: the latency of interactive use once the script runs.
//!
//! One session of a script that echoes every line; the bench writes a line, waits for
//! it to come back, and times that, line after line. pyexec is driven through the real
//! `pyexec` binary with pipes (what a user's program piping into `pyexec` sees, client
//! start-up excluded since timing starts once the script says "ready"); the baseline is
//! `docker run --rm -i` with the same script and the same pipes. Ten untimed lines warm
//! each path up first.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::ctx::{Bench, Served};
use crate::report::{Measured, Report, Value};
use crate::runner::{check_status, finish};
use crate::scripts::ECHO;
use crate::stats::Summary;

const WARM_LINES: usize = 10;
const LINE_TIMEOUT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(b: &Bench, main: &Result<Served, String>, report: &mut Report) {
    let lines = b.params.echo_lines;
    eprintln!("bench: echo round trip, {lines} lines per variant");
    let pyexec: Measured = match (main, b.script("echo.py", ECHO)) {
        (Ok(served), Ok(script)) => {
            let _ = served.settle(&b.docker).await;
            let r = measure(served.cli.command(&script), lines).await;
            let _ = served.settle(&b.docker).await;
            r
        }
        (Err(e), _) => Err(e.clone()),
        (_, Err(e)) => Err(format!("{e:#}")),
    };
    let docker: Measured = match b.docker_run() {
        Ok(d) => measure(d.script_arg(ECHO, true), lines).await,
        Err(e) => Err(e),
    };
    report.row(
        format!("echo round trip ms, median / p90 ({lines} lines, `pyexec` binary with pipes) vs `docker run -i`"),
        &pyexec,
        &docker,
    );
}

async fn measure(cmd: Command, lines: usize) -> Measured {
    match echo_session(cmd, lines).await {
        Ok(samples) => Summary::of_ms(&samples)
            .map(Value::spread)
            .ok_or_else(|| "no samples".into()),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// Runs the echo script and returns the timed round trips.
async fn echo_session(mut cmd: Command, lines: usize) -> Result<Vec<Duration>> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot spawn")?;
    let mut input = child.stdin.take().context("no stdin pipe")?;
    let mut output = BufReader::new(child.stdout.take().context("no stdout pipe")?);
    let mut stderr = child.stderr.take().context("no stderr pipe")?;

    let mut got = String::new();
    tokio::time::timeout(START_TIMEOUT, output.read_line(&mut got))
        .await
        .map_err(|_| anyhow!("the script did not start within {START_TIMEOUT:?}"))??;
    if got != "ready\n" {
        let mut err = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stderr.read_to_end(&mut err)).await;
        let status = child.wait().await?;
        check_status(status, &err)?;
        bail!("the script said {got:?} instead of ready");
    }

    let mut samples = Vec::with_capacity(lines);
    for i in 0..WARM_LINES + lines {
        let line = format!("{i:06} the quick brown fox jumps over the lazy dog\n");
        got.clear();
        let t0 = Instant::now();
        input.write_all(line.as_bytes()).await.context("write")?;
        input.flush().await.context("flush")?;
        tokio::time::timeout(LINE_TIMEOUT, output.read_line(&mut got))
            .await
            .map_err(|_| anyhow!("line {i} did not come back within {LINE_TIMEOUT:?}"))?
            .context("read")?;
        let t = t0.elapsed();
        if got != line {
            bail!("line {i} came back as {got:?}");
        }
        if i >= WARM_LINES {
            samples.push(t);
        }
    }
    drop(input);
    finish(
        child,
        stderr,
        Duration::from_secs(30),
        "the script did not end after stdin closed",
    )
    .await?;
    Ok(samples)
}
