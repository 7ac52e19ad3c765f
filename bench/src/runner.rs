//! The two command lines being compared, and running them as a user would: the real
//! `pyexec` binary against a daemon, and the `docker run` CLI on the same image.
//!
//! Every child is killed when its handle is dropped, so an interrupted bench leaves no
//! client behind (the containers are then removed by label).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, Command};

use crate::daemon::Daemon;

/// `pyexec --server ADDR --ca CA SCRIPT`, as in the README.
#[derive(Debug, Clone)]
pub struct PyexecCli {
    bin: PathBuf,
    server: String,
    ca: PathBuf,
}

impl PyexecCli {
    pub fn new(bin: &Path, daemon: &Daemon) -> Self {
        PyexecCli {
            bin: bin.to_path_buf(),
            server: daemon.addr.to_string(),
            ca: daemon.ca.clone(),
        }
    }

    pub fn command(&self, script: &Path) -> Command {
        self.command_with(&[], script)
    }

    /// `pyexec --server ADDR --ca CA OPTIONS SCRIPT`: options go before the script, as
    /// whatever follows it is the script's own arguments.
    pub fn command_with(&self, options: &[&str], script: &Path) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--server")
            .arg(&self.server)
            .arg("--ca")
            .arg(&self.ca)
            .args(options)
            .arg(script)
            .kill_on_drop(true);
        cmd
    }
}

/// `docker run --rm --network none --log-driver none IMAGE python3 -u ...`: what a user
/// would type to run a script in a throw-away container. Its containers carry the
/// bench's labels so that an interrupted run can still remove them.
#[derive(Debug, Clone)]
pub struct DockerRun {
    pub image: String,
    pub instance: String,
}

impl DockerRun {
    fn base(&self, interactive: bool) -> Command {
        let mut cmd = Command::new("docker");
        cmd.args(["run", "--rm"]);
        if interactive {
            cmd.arg("-i");
        }
        cmd.args(["--network", "none", "--log-driver", "none"])
            .arg("--label")
            .arg(format!("{}=true", pyexec::sandbox::LABEL_MANAGED))
            .arg("--label")
            .arg(format!(
                "{}={}",
                pyexec::sandbox::LABEL_INSTANCE,
                self.instance
            ))
            .arg(&self.image)
            .kill_on_drop(true);
        cmd
    }

    /// `docker run --rm -i ... python3 -u -`: the script comes on stdin.
    pub fn script_on_stdin(&self) -> Command {
        let mut cmd = self.base(true);
        cmd.args(["python3", "-u", "-"]);
        cmd
    }

    /// `docker run --rm [-i] ... python3 -u -c SCRIPT`: stdin stays free for the script.
    pub fn script_arg(&self, script: &str, interactive: bool) -> Command {
        let mut cmd = self.base(interactive);
        cmd.args(["python3", "-u", "-c", script]);
        cmd
    }
}

/// Runs a command to its end, feeding `input` on stdin (or /dev/null), and returns the
/// wall time from spawn to exit and its stdout. A non-zero exit is an error carrying the
/// last line of stderr.
pub async fn run_collect(
    mut cmd: Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<(Duration, Vec<u8>)> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("cannot spawn")?;
    let stdin = child.stdin.take();
    let feed = async move {
        if let (Some(mut w), Some(data)) = (stdin, input) {
            // An early exit closes the pipe; the exit status tells what happened.
            let _ = w.write_all(data).await;
        }
    };
    let ran = tokio::time::timeout(timeout, async {
        let ((), out) = tokio::join!(feed, child.wait_with_output());
        out
    })
    .await
    .map_err(|_| anyhow!("timed out after {timeout:?}"))?
    .context("cannot wait")?;
    let elapsed = t0.elapsed();
    check_status(ran.status, &ran.stderr)?;
    Ok((elapsed, ran.stdout))
}

/// Waits at most `timeout` for a child whose stdin is closed: reads its stderr to the
/// end, reaps it, and turns a failed exit into an error (`stuck` says what did not end).
pub async fn finish(
    mut child: Child,
    mut stderr: ChildStderr,
    timeout: Duration,
    stuck: &str,
) -> Result<()> {
    let mut err = Vec::new();
    let status = tokio::time::timeout(timeout, async {
        let _ = stderr.read_to_end(&mut err).await;
        child.wait().await
    })
    .await
    .map_err(|_| anyhow!("{stuck}"))??;
    check_status(status, &err)
}

/// An error for a failed exit, with the last line of stderr.
pub fn check_status(status: std::process::ExitStatus, stderr: &[u8]) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(stderr);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    bail!("{status}: {last}")
}

/// Checks that a run printed exactly `want`.
pub fn expect_output(got: &[u8], want: &[u8]) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        bail!(
            "unexpected output {:?} (wanted {:?})",
            String::from_utf8_lossy(&got[..got.len().min(80)]),
            String::from_utf8_lossy(want)
        )
    }
}

/// How a stream was read to its end.
#[derive(Debug, Clone, Copy)]
pub struct Drained {
    pub bytes: u64,
    /// When the first byte arrived (None: nothing did).
    pub first: Option<Instant>,
    pub end: Instant,
}

impl Drained {
    /// The time from the first byte to the end of the stream.
    pub fn streaming(&self) -> Duration {
        self.first.map_or(Duration::ZERO, |f| self.end - f)
    }
}

/// Reads a stream to its end and discards it. With `pace`, reads at most `chunk` bytes
/// and then sleeps `pause` each time: a deliberately slow reader.
pub async fn drain<R: AsyncRead + Unpin>(
    mut r: R,
    pace: Option<(usize, Duration)>,
) -> std::io::Result<Drained> {
    let chunk = pace.map_or(256 << 10, |(c, _)| c);
    let mut buf = vec![0u8; chunk];
    let mut bytes = 0u64;
    let mut first = None;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(Drained {
                bytes,
                first,
                end: Instant::now(),
            });
        }
        first.get_or_insert_with(Instant::now);
        bytes += n as u64;
        if let Some((_, pause)) = pace {
            tokio::time::sleep(pause).await;
        }
    }
}
