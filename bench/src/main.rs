//! `pyexec-bench`: pyexec against plain Docker, side by side, on the same image and
//! machine (issue 3).
//!
//! It builds and starts its own `pyexecd` (127.0.0.1:0, temporary certificates, instance
//! `bench-<pid>`), measures hello-world latency, throughput, echo round trips, stdout
//! throughput and the daemon's memory against `docker run` and the Engine API, and what
//! several Docker Engines (extra dockerds in network namespaces, over TLS) cost and give,
//! and 50 MiB of files up and down against `docker cp`;
//! prints one table, and removes every container and engine it caused, also on error or
//! Ctrl-C.

mod ctx;
mod daemon;
mod echo;
mod engine;
mod engines;
mod files;
mod flood;
mod hello;
mod machine;
mod memory;
mod opts;
mod report;
mod runner;
mod scripts;
mod setup;
mod stats;
mod throughput;

use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use bollard::Docker;
use clap::Parser;
use futures::FutureExt;
use tokio::signal::unix::{signal, SignalKind};

use crate::ctx::{Bench, Role};
use crate::machine::Machine;
use crate::opts::{Opts, Part};
use crate::report::Report;

#[tokio::main]
async fn main() -> ExitCode {
    let opts = Opts::parse();
    let pid = std::process::id();
    let docker = match pyexec::docker::connect().await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("pyexec-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut report = Report::default();
    // The whole run is one future: on a signal it is dropped, which kills every child
    // process (daemons, clients, docker CLIs); the containers are then removed by label.
    // A panic is turned into an error so that the clean-up below still runs.
    let whole = AssertUnwindSafe(run(&opts, docker.clone(), &mut report)).catch_unwind();
    let outcome = tokio::select! {
        r = whole => Some(r.unwrap_or_else(|_| Err(anyhow::anyhow!("the bench panicked")))),
        name = interrupted() => {
            eprintln!("\npyexec-bench: {name}; cleaning up");
            None
        }
    };
    let removed = engine::sweep(&docker, &ctx::all_instances(pid)).await;
    if removed > 0 {
        eprintln!("bench: removed {removed} leftover containers");
    }
    match outcome {
        Some(Ok(machine)) => {
            print!("{}", report.table());
            match &opts.markdown {
                Some(path) => {
                    let command = std::env::args().collect::<Vec<_>>().join(" ");
                    match std::fs::write(path, report.markdown(&machine, &command)) {
                        Ok(()) => {
                            eprintln!("bench: wrote {}", path.display());
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("pyexec-bench: cannot write {}: {e}", path.display());
                            ExitCode::FAILURE
                        }
                    }
                }
                None => ExitCode::SUCCESS,
            }
        }
        Some(Err(e)) => {
            eprintln!("pyexec-bench: {e:#}");
            ExitCode::FAILURE
        }
        None => {
            report.note("interrupted: the table is incomplete");
            print!("{}", report.table());
            ExitCode::from(130)
        }
    }
}

/// Shows a progress line on a terminal, overwriting the previous one; silent otherwise,
/// so that a log file gets only the final lines.
pub fn progress(line: &str) {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprint!("\r\x1b[K{line}");
    }
}

/// Ends a run of `progress` lines with a line that stays.
pub fn progress_done(line: &str) {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprint!("\r\x1b[K");
    }
    eprintln!("{line}");
}

/// Resolves on SIGINT or SIGTERM with the signal's name.
async fn interrupted() -> &'static str {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("bench: cannot install signal handlers; Ctrl-C will not clean up");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

/// Sets up, runs the selected parts, stops the daemons and checks what they left behind.
/// Failures of single measurements end up in the table; only set-up failures are errors.
async fn run(opts: &Opts, docker: Docker, report: &mut Report) -> Result<Machine> {
    let params = opts.params();
    if opts.bin_dir.is_none() && !opts.no_build {
        setup::build_release().await?;
    }
    let bins = setup::locate(opts.bin_dir.as_deref())?;
    setup::ensure_image(&docker, &bins, &opts.image).await?;
    let machine = Machine::describe(&docker, &opts.image).await;
    let dir = tempfile::Builder::new()
        .prefix("pyexec-bench-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    pyexec::certs::generate(dir.path(), &[], false).context("cannot generate certificates")?;
    let bins = bins.snapshot(dir.path())?;
    let pid = std::process::id();
    let b = Bench {
        warm_supported: setup::supports_warm(&bins).await,
        docker_cli: setup::docker_cli().await,
        engine: engine::Engine::new(
            docker.clone(),
            engine::default_sandbox(&opts.image)?,
            &ctx::instance(pid, Role::Baseline),
        ),
        params,
        bins,
        docker,
        image: opts.image.clone(),
        pid,
        dir,
    };
    eprintln!(
        "bench: pyexecd {} --warm; docker CLI {}",
        if b.warm_supported { "has" } else { "has no" },
        match &b.docker_cli {
            Ok(()) => "ok".to_string(),
            Err(e) => e.clone(),
        }
    );
    if !b.warm_supported {
        report.note(
            "pyexecd has no --warm flag yet: every pyexec session is a cold start, and the \
             --warm rows are n/a",
        );
    }

    let started = Instant::now();
    let uses_main = [Part::Hello, Part::Throughput, Part::Echo, Part::Stdout]
        .iter()
        .any(|p| opts.runs(*p));
    let main = if uses_main {
        b.daemon(Role::Main, b.params.max_sessions, b.params.warm)
            .await
    } else {
        Err("not started".into())
    };
    if opts.runs(Part::Hello) {
        hello::run(&b, &main, report).await;
    }
    if opts.runs(Part::Throughput) {
        throughput::run(&b, &main, report).await;
    }
    if opts.runs(Part::Echo) {
        echo::run(&b, &main, report).await;
    }
    if opts.runs(Part::Stdout) {
        flood::run(&b, &main, report).await;
    }
    if let Ok(m) = main {
        if let Err(e) = m.daemon.stop().await {
            report.note(format!("main daemon: {e:#}"));
        }
    }
    if opts.runs(Part::Memory) {
        memory::run(&b, report).await;
    }
    if opts.runs(Part::Engines) {
        engines::run(&b, report).await;
    }
    if opts.runs(Part::Files) {
        files::run(&b, report).await;
    }
    // Every daemon has been stopped with SIGTERM by now, and every baseline has ended.
    for instance in ctx::all_instances(pid) {
        left_behind(&b, &instance, report).await;
    }
    report.note(format!(
        "the measurements took {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(machine)
}

/// Notes containers a stopped daemon (or a baseline) left behind, its lease included:
/// after a clean SIGTERM there should be none.
async fn left_behind(b: &Bench, instance: &str, report: &mut Report) {
    if let Ok(ids) = pyexec::docker::list_instance(&b.docker, instance).await {
        let all = ids.len();
        if all > 0 {
            report.note(format!(
                "{all} containers of {instance} were still there after it finished"
            ));
        }
    }
}
