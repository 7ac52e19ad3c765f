//! Part 2, throughput: hello-world sessions per second at a fixed concurrency (4 default).
//!
//! pyexec (`pyexec hello.py` processes against the main daemon, `--max-sessions` ≥ the
//! concurrency) against the Engine's own limit measured the same way (a loop of create,
//! start, wait, remove through the API, pyexec's sandbox settings), and against
//! `docker run` processes.
//!
//! The machine is saturated in both loops (the Engine's create and remove are CPU-bound
//! here), so a change in its load between two long runs moves their ratio by more than
//! the gap being measured. pyexec and the Engine loop therefore run interleaved, in
//! `BLOCKS` blocks each, alternating which goes first (ABBA), and each rate is the total
//! over its blocks. A pyexec block starts with the pool full and is timed until the pool
//! is full again: the containers prepared before it are paid for by the refill after
//! it, and the refill's work is counted, not left to happen off the clock.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;

use crate::ctx::{Bench, Served};
use crate::report::{Measured, Report, Value};
use crate::runner::{expect_output, run_collect};
use crate::scripts::HELLO;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Blocks per variant in the interleaved pyexec / Engine loop comparison.
pub const BLOCKS: usize = 4;

pub async fn run(b: &Bench, main: &Result<Served, String>, report: &mut Report) {
    let p = &b.params;
    let c = p.concurrency;
    eprintln!(
        "bench: throughput at concurrency {c}: {} pyexec and {} Engine API sessions in {BLOCKS} interleaved blocks each, {} docker run sessions",
        p.sessions, p.engine_sessions, p.docker_sessions
    );
    let script = b.script("hello.py", HELLO).map_err(|e| format!("{e:#}"));
    let engine_job = |_| async { b.engine.hello().await.map(|_| ()) };

    let mut pyexec = Tally::new("pyexec");
    let mut engine = Tally::new("Engine API");
    match (main, &script) {
        (Ok(served), Ok(script)) => {
            if (b.params.max_sessions as usize) < c {
                report.note(format!(
                    "throughput: --max-sessions {} is below the concurrency {c}, so pyexec queues",
                    b.params.max_sessions
                ));
            }
            let pyexec_job = |_| async {
                let (_, out) = run_collect(served.cli.command(script), None, RUN_TIMEOUT).await?;
                expect_output(&out, b"hello\n")
            };
            pyexec.warm_up(pyexec_job).await;
            let _ = served.settle(&b.docker).await;
            engine.warm_up(engine_job).await;
            for block in 0..BLOCKS {
                let py_n = share(p.sessions, block);
                let en_n = share(p.engine_sessions, block);
                let refill = || served.settle(&b.docker);
                if block % 2 == 0 {
                    pyexec.block(py_n, c, pyexec_job, refill).await;
                    engine.block(en_n, c, engine_job, idle).await;
                } else {
                    engine.block(en_n, c, engine_job, idle).await;
                    pyexec.block(py_n, c, pyexec_job, refill).await;
                }
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            pyexec.first_error = Some(e.clone());
            engine.warm_up(engine_job).await;
            engine.block(p.engine_sessions, c, engine_job, idle).await;
        }
    }
    pyexec.done();
    engine.done();

    let docker: Measured = match b.docker_run() {
        Ok(d) => {
            let mut t = Tally::new("docker run");
            let job = |_| async {
                let (_, out) =
                    run_collect(d.script_on_stdin(), Some(HELLO.as_bytes()), RUN_TIMEOUT).await?;
                expect_output(&out, b"hello\n")
            };
            t.warm_up(job).await;
            t.block(p.docker_sessions, c, job, idle).await;
            t.done();
            t.rate()
        }
        Err(e) => Err(e),
    };

    report.row(
        format!(
            "throughput, hello-world sessions/s at concurrency {c}: pyexec (n={}) vs Engine API loop (n={}), interleaved",
            p.sessions, p.engine_sessions
        ),
        &pyexec.rate(),
        &engine.rate(),
    );
    report.row(
        format!(
            "throughput, sessions/s at concurrency {c}: pyexec vs `docker run` (n={})",
            p.docker_sessions
        ),
        &pyexec.rate(),
        &docker,
    );
}

/// Block `i`'s part of `n` sessions (the first blocks take the remainder).
pub fn share(n: usize, i: usize) -> usize {
    n / BLOCKS + usize::from(i < n % BLOCKS)
}

/// The end of a block that leaves nothing to wait for.
pub async fn idle() -> Result<(), String> {
    Ok(())
}

/// One variant's sessions and time over its blocks. Any failure makes the figure n/a,
/// with the count and the first error.
pub struct Tally {
    name: &'static str,
    done: usize,
    failed: usize,
    elapsed: Duration,
    first_error: Option<String>,
}

impl Tally {
    pub fn new(name: &'static str) -> Self {
        Tally {
            name,
            done: 0,
            failed: 0,
            elapsed: Duration::ZERO,
            first_error: None,
        }
    }

    /// One untimed job, so that the first block does not pay for cold caches.
    pub async fn warm_up<F, Fut>(&mut self, job: F)
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        if let Err(e) = job(0).await {
            self.first_error
                .get_or_insert_with(|| format!("warm-up failed: {e:#}"));
        }
    }

    /// Runs `n` jobs, `c` at a time, timed, and then `settle` on the clock too: for a
    /// daemon, until its pool is full again (`idle` when there is nothing to wait for).
    pub async fn block<F, Fut, S, SFut>(&mut self, n: usize, c: usize, job: F, settle: S)
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<()>>,
        S: Fn() -> SFut,
        SFut: Future<Output = Result<(), String>>,
    {
        if self.first_error.is_some() {
            return;
        }
        let t0 = Instant::now();
        let mut jobs = futures::stream::iter(0..n).map(&job).buffer_unordered(c);
        while let Some(result) = jobs.next().await {
            self.done += 1;
            if let Err(e) = result {
                self.failed += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            crate::progress(&format!("bench: throughput, {}: {}", self.name, self.done));
        }
        if let Err(e) = settle().await {
            self.first_error
                .get_or_insert_with(|| format!("the pool did not refill: {e}"));
        }
        self.elapsed += t0.elapsed();
    }

    pub fn done(&self) {
        crate::progress_done(&format!(
            "bench: throughput, {}: {} in {:.1} s",
            self.name,
            self.done,
            self.elapsed.as_secs_f64()
        ));
    }

    /// Sessions run so far, failed ones included.
    pub fn sessions(&self) -> usize {
        self.done
    }

    pub fn rate(&self) -> Measured {
        match &self.first_error {
            Some(e) if self.failed > 0 => Err(format!(
                "{} of {} failed, first: {e}",
                self.failed, self.done
            )),
            Some(e) => Err(e.clone()),
            None => Ok(Value::single(self.done as f64 / self.elapsed.as_secs_f64())),
        }
    }
}
