//! Part 1, hello-world wall time: what a user waits for `print("hello")`.
//!
//! Four variants, interleaved in a rotating order so that drift (page cache, the Engine's
//! own state, CPU frequency) hits them all alike, after one untimed warm-up each:
//! - pyexec: the whole `pyexec hello.py` process against the main daemon (warm pool at
//!   its default, when pyexecd has one);
//! - pyexec `--warm 0`: the same against a daemon without a pool (the cold path);
//! - `docker run --rm -i --network none --log-driver none IMAGE python3 -u -`, the script
//!   on stdin, whole process;
//! - the Engine API cold start: create, start, wait, remove with pyexec's own sandbox
//!   settings, i.e. the least any one-container-per-session design can pay.
//!
//! After every sample the bench waits until the daemon is idle again (pool refilled, or
//! the used container removed) and then sleeps 100 ms, so that no sample pays for the
//! background work of the one before.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use pyexec::client::{self, Io, Notice, Request};
use pyexec::protocol::Started;
use tokio::sync::mpsc;

use crate::ctx::{Bench, Role, Served};
use crate::report::{Measured, Report, Value};
use crate::runner::{expect_output, run_collect};
use crate::scripts::HELLO;
use crate::stats::Summary;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const PAUSE: Duration = Duration::from_millis(100);

/// Samples of one variant, or why it stopped being measured.
#[derive(Default)]
struct Series {
    samples: Vec<Duration>,
    /// Engine variant only: create → exit, without the removal.
    to_exit: Vec<Duration>,
    error: Option<String>,
    /// The first time the daemon did not get back to idle in time.
    settle_issue: Option<String>,
}

impl Series {
    fn failed(reason: impl Into<String>) -> Series {
        Series {
            error: Some(reason.into()),
            ..Default::default()
        }
    }

    fn measured(&self) -> Measured {
        match (&self.error, Summary::of_ms(&self.samples)) {
            (Some(e), _) => Err(e.clone()),
            (None, Some(s)) => Ok(Value::spread(s)),
            (None, None) => Err("no samples".into()),
        }
    }
}

pub async fn run(b: &Bench, main: &Result<Served, String>, report: &mut Report) {
    let reps = b.params.hello_reps;
    eprintln!("bench: hello-world, {reps} timed runs per variant (+1 warm-up)");
    let script = match b.script("hello.py", HELLO) {
        Ok(p) => p,
        Err(e) => {
            let reason = format!("{e:#}");
            report.row("hello-world", &Err(reason.clone()), &Err(reason));
            return;
        }
    };
    let cold = if b.warm_supported {
        b.daemon(Role::Cold, b.params.max_sessions, Some(0)).await
    } else {
        Err("pyexecd has no --warm flag".to_string())
    };
    let docker = b.docker_run();

    let mut series: [Series; 4] = [
        main.as_ref()
            .map_or_else(Series::failed, |_| Series::default()),
        cold.as_ref()
            .map_or_else(Series::failed, |_| Series::default()),
        docker
            .as_ref()
            .map_or_else(Series::failed, |_| Series::default()),
        Series::default(),
    ];

    for rep in 0..=reps {
        for k in 0..series.len() {
            let v = (rep + k) % series.len();
            let s = &mut series[v];
            if s.error.is_some() {
                continue;
            }
            let sample = match v {
                0 | 1 => {
                    let served = if v == 0 { main } else { &cold };
                    let Ok(served) = served.as_ref() else {
                        continue;
                    };
                    let ran = pyexec_once(served, &script).await;
                    if let Err(e) = served.settle(&b.docker).await {
                        s.settle_issue.get_or_insert(e);
                    }
                    ran.map(|t| (t, None))
                }
                2 => match docker.as_ref() {
                    Ok(d) => run_collect(d.script_on_stdin(), Some(HELLO.as_bytes()), RUN_TIMEOUT)
                        .await
                        .and_then(|(t, out)| expect_output(&out, b"hello\n").map(|()| (t, None))),
                    Err(_) => continue,
                },
                _ => b.engine.hello().await.map(|r| (r.total, Some(r.to_exit))),
            };
            match sample {
                // rep 0 is the warm-up.
                Ok((t, to_exit)) if rep > 0 => {
                    s.samples.push(t);
                    s.to_exit.extend(to_exit);
                }
                Ok(_) => {}
                Err(e) => s.error = Some(format!("{e:#}")),
            }
            tokio::time::sleep(PAUSE).await;
        }
        crate::progress(&format!("bench: hello-world {rep}/{reps}"));
    }
    crate::progress_done("bench: hello-world done");

    let pyexec_name = match main {
        Ok(m) if m.pool > 0 => format!("pyexec (pool of {})", m.pool),
        Ok(_) if !b.warm_supported => "pyexec (no pool: pyexecd has no --warm)".to_string(),
        _ => "pyexec".to_string(),
    };
    let [warm, warm0, docker_s, engine_s] = &series;
    report.row(
        format!(
            "hello-world wall ms, median / p90 (n={reps}): {pyexec_name} vs `docker run --rm -i`"
        ),
        &warm.measured(),
        &docker_s.measured(),
    );
    report.row(
        format!("hello-world wall ms: {pyexec_name} vs Engine API cold start (create+start+wait+remove)"),
        &warm.measured(),
        &engine_s.measured(),
    );
    report.row(
        "hello-world wall ms: pyexec `--warm 0` vs Engine API cold start",
        &warm0.measured(),
        &engine_s.measured(),
    );
    if let Some(s) = Summary::of_ms(&engine_s.to_exit) {
        report.note(format!(
            "hello-world: the Engine API cold start without its removal (create+start+wait) \
             takes {:.0} / {:.0} ms (median / p90); `docker run --rm` waits for the removal, \
             pyexec's client does not (the daemon removes the container after END).",
            s.median, s.p90
        ));
    }
    for (name, s) in [("pyexec", warm), ("pyexec --warm 0", warm0)] {
        if let Some(issue) = &s.settle_issue {
            report.note(format!("hello-world, {name}: between samples, {issue}"));
        }
    }
    for (name, served) in [
        ("main", main.as_ref().ok()),
        ("--warm 0", cold.as_ref().ok()),
    ] {
        let Some(served) = served else { continue };
        match started_frame(&served.daemon.client_config()).await {
            Ok(st) => report.note(format!(
                "hello-world: a session on the {name} daemon got STARTED with warm={}, \
                 start_ms={}, queued_ms={}",
                st.warm, st.start_ms, st.queued_ms
            )),
            Err(e) => report.note(format!(
                "hello-world: STARTED probe on the {name} daemon failed: {e}"
            )),
        }
        let _ = served.settle(&b.docker).await;
    }
    if let Ok(cold) = cold {
        if let Err(e) = cold.daemon.stop().await {
            report.note(format!("pyexecd --warm 0: {e:#}"));
        }
    }
}

/// One `pyexec hello.py`, whole process; checks that it printed exactly "hello".
async fn pyexec_once(served: &Served, script: &std::path::Path) -> Result<Duration> {
    let (t, out) = run_collect(served.cli.command(script), None, RUN_TIMEOUT).await?;
    expect_output(&out, b"hello\n")?;
    Ok(t)
}

/// Runs one hello-world through the client library to read the STARTED frame, which says
/// whether the container came from the pool: a check that the pool is really used.
pub async fn started_frame(config: &client::ClientConfig) -> Result<Started, String> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let io = Io {
        stdin: None::<tokio::io::Empty>,
        stdout: tokio::io::sink(),
        stderr: tokio::io::sink(),
        control: None,
        notices: Some(tx),
    };
    let req = Request {
        script: Bytes::from_static(HELLO.as_bytes()),
        name: Some("hello.py".into()),
        ..Default::default()
    };
    let outcome = client::run(config, req, io)
        .await
        .map_err(|e| e.to_string())?;
    if outcome.exit_code() != 0 {
        return Err(format!("the session ended with {}", outcome.exit_code()));
    }
    while let Ok(n) = rx.try_recv() {
        if let Notice::Started(st) = n {
            return Ok(st);
        }
    }
    Err("no STARTED frame".into())
}
