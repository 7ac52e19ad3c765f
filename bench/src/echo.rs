//! Part 3, echo round trip: the latency of interactive use once the script runs.
//!
//! Two sessions of a script that echoes every line run side by side: pyexec through the
//! real `pyexec` binary with pipes (what a user's program piping into `pyexec` sees), and
//! `docker run --rm -i` with the same script and the same pipes. Once both say "ready"
//! (client start-up is not timed), the bench writes a line to one, waits for it to come
//! back, times that, then does the same with the other, alternating which goes first.
//! Interleaving line by line gives both the same machine: on a shared VM, two runs
//! minutes apart differ by more than the gap being measured. Ten untimed lines warm each
//! path up first.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

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
    eprintln!("bench: echo round trip, {lines} lines per variant, interleaved");
    let pyexec_cmd = match (main, b.script("echo.py", ECHO)) {
        (Ok(served), Ok(script)) => {
            let _ = served.settle(&b.docker).await;
            Ok(served.cli.command(&script))
        }
        (Err(e), _) => Err(e.clone()),
        (_, Err(e)) => Err(format!("{e:#}")),
    };
    let docker_cmd = b.docker_run().map(|d| d.script_arg(ECHO, true));
    let (pyexec, docker) = measure(pyexec_cmd, docker_cmd, lines).await;
    if let Ok(served) = main {
        let _ = served.settle(&b.docker).await;
    }
    report.row(
        format!("echo round trip ms, median / p90 ({lines} lines each, interleaved, `pyexec` binary with pipes) vs `docker run -i`"),
        &pyexec,
        &docker,
    );
}

/// Runs whichever variants could start, interleaved; each one's summary or error.
async fn measure(
    pyexec: Result<Command, String>,
    docker: Result<Command, String>,
    lines: usize,
) -> (Measured, Measured) {
    let mut py = start(pyexec).await;
    let mut dk = start(docker).await;
    let mut samples = [Vec::with_capacity(lines), Vec::with_capacity(lines)];
    for i in 0..WARM_LINES + lines {
        let line = format!("{i:06} the quick brown fox jumps over the lazy dog\n");
        for k in [i % 2, 1 - i % 2] {
            let session = if k == 0 { &mut py } else { &mut dk };
            let Ok(s) = session else { continue };
            match s.round_trip(i, &line).await {
                Ok(t) if i >= WARM_LINES => samples[k].push(t),
                Ok(_) => {}
                Err(e) => *session = Err(format!("{e:#}")),
            }
        }
    }
    let [py_samples, dk_samples] = samples;
    (
        summarize(end(py).await, &py_samples),
        summarize(end(dk).await, &dk_samples),
    )
}

fn summarize(ended: Result<(), String>, samples: &[Duration]) -> Measured {
    ended?;
    Summary::of_ms(samples)
        .map(Value::spread)
        .ok_or_else(|| "no samples".into())
}

async fn start(cmd: Result<Command, String>) -> Result<Echo, String> {
    Echo::start(cmd?).await.map_err(|e| format!("{e:#}"))
}

async fn end(session: Result<Echo, String>) -> Result<(), String> {
    session?.end().await.map_err(|e| format!("{e:#}"))
}

/// One running echo script and its pipes.
struct Echo {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    stderr: ChildStderr,
    got: String,
}

impl Echo {
    /// Spawns the script and waits for its "ready".
    async fn start(mut cmd: Command) -> Result<Echo> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot spawn")?;
        let input = child.stdin.take().context("no stdin pipe")?;
        let mut output = BufReader::new(child.stdout.take().context("no stdout pipe")?);
        let mut stderr = child.stderr.take().context("no stderr pipe")?;
        let mut got = String::new();
        tokio::time::timeout(START_TIMEOUT, output.read_line(&mut got))
            .await
            .map_err(|_| anyhow!("the script did not start within {START_TIMEOUT:?}"))??;
        if got != "ready\n" {
            let mut err = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stderr.read_to_end(&mut err)).await;
            let status = child.wait().await?;
            check_status(status, &err)?;
            bail!("the script said {got:?} instead of ready");
        }
        Ok(Echo {
            child,
            input,
            output,
            stderr,
            got,
        })
    }

    /// Writes `line` and times until it is back.
    async fn round_trip(&mut self, i: usize, line: &str) -> Result<Duration> {
        self.got.clear();
        let t0 = Instant::now();
        self.input
            .write_all(line.as_bytes())
            .await
            .context("write")?;
        self.input.flush().await.context("flush")?;
        tokio::time::timeout(LINE_TIMEOUT, self.output.read_line(&mut self.got))
            .await
            .map_err(|_| anyhow!("line {i} did not come back within {LINE_TIMEOUT:?}"))?
            .context("read")?;
        let t = t0.elapsed();
        if self.got != line {
            bail!("line {i} came back as {:?}", self.got);
        }
        Ok(t)
    }

    /// Closes stdin and expects the script to end cleanly.
    async fn end(self) -> Result<()> {
        drop(self.input);
        finish(
            self.child,
            self.stderr,
            Duration::from_secs(30),
            "the script did not end after stdin closed",
        )
        .await
    }
}
