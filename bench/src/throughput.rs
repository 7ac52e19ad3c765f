//! Part 2, throughput: hello-world sessions per second at a fixed concurrency (4 default).
//!
//! pyexec (`pyexec hello.py` processes against the main daemon, `--max-sessions` ≥ the
//! concurrency) against the Engine's own limit measured the same way (a loop of create,
//! start, wait, remove through the API, pyexec's sandbox settings), and against
//! `docker run` processes. The three loops run back to back, each after one untimed
//! warm-up run and with the daemon idle (pool refilled) at its start.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;

use crate::ctx::{Bench, Served};
use crate::report::{Measured, Report, Value};
use crate::runner::{expect_output, run_collect};
use crate::scripts::HELLO;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(b: &Bench, main: &Result<Served, String>, report: &mut Report) {
    let p = &b.params;
    let c = p.concurrency;
    eprintln!(
        "bench: throughput at concurrency {c}: {} pyexec, {} Engine API, {} docker run sessions",
        p.sessions, p.engine_sessions, p.docker_sessions
    );
    let script = b.script("hello.py", HELLO).map_err(|e| format!("{e:#}"));

    let pyexec: Measured = match (main, &script) {
        (Ok(served), Ok(script)) => {
            if (b.params.max_sessions as usize) < c {
                report.note(format!(
                    "throughput: --max-sessions {} is below the concurrency {c}, so pyexec queues",
                    b.params.max_sessions
                ));
            }
            let one = || async {
                let (_, out) = run_collect(served.cli.command(script), None, RUN_TIMEOUT).await?;
                expect_output(&out, b"hello\n")
            };
            let _ = served.settle(&b.docker).await;
            let rate = rate("pyexec", p.sessions, c, |_| one()).await;
            let _ = served.settle(&b.docker).await;
            rate
        }
        (Err(e), _) | (_, Err(e)) => Err(e.clone()),
    };

    let engine = rate("Engine API", p.engine_sessions, c, |_| async {
        b.engine.hello().await.map(|_| ())
    })
    .await;

    let docker: Measured = match b.docker_run() {
        Ok(d) => {
            rate("docker run", p.docker_sessions, c, |_| async {
                let (_, out) =
                    run_collect(d.script_on_stdin(), Some(HELLO.as_bytes()), RUN_TIMEOUT).await?;
                expect_output(&out, b"hello\n")
            })
            .await
        }
        Err(e) => Err(e),
    };

    report.row(
        format!(
            "throughput, hello-world sessions/s at concurrency {c}: pyexec (n={}) vs Engine API loop (n={})",
            p.sessions, p.engine_sessions
        ),
        &pyexec,
        &engine,
    );
    report.row(
        format!(
            "throughput, sessions/s at concurrency {c}: pyexec vs `docker run` (n={})",
            p.docker_sessions
        ),
        &pyexec,
        &docker,
    );
}

/// Runs `n` jobs, `c` at a time, after one untimed warm-up; sessions per second. Any
/// failure makes the figure n/a, with the count and the first error.
async fn rate<F, Fut>(name: &str, n: usize, c: usize, job: F) -> Measured
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    if let Err(e) = job(0).await {
        return Err(format!("warm-up failed: {e:#}"));
    }
    let t0 = Instant::now();
    let mut done = 0usize;
    let mut failed = 0usize;
    let mut first_error = None;
    let mut jobs = futures::stream::iter(0..n).map(&job).buffer_unordered(c);
    while let Some(result) = jobs.next().await {
        done += 1;
        if let Err(e) = result {
            failed += 1;
            first_error.get_or_insert_with(|| format!("{e:#}"));
        }
        crate::progress(&format!("bench: throughput, {name}: {done}/{n}"));
    }
    let elapsed = t0.elapsed();
    crate::progress_done(&format!(
        "bench: throughput, {name}: {done} in {:.1} s",
        elapsed.as_secs_f64()
    ));
    match first_error {
        Some(e) => Err(format!("{failed} of {n} failed, first: {e}")),
        None => Ok(Value::single(n as f64 / elapsed.as_secs_f64())),
    }
}
