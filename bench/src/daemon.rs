//! A `pyexecd` started by the bench: on 127.0.0.1:0 with temporary certificates and its
//! own instance label, its log in a file (a full stderr pipe would stall it), and its
//! memory read from `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::setup::Bins;

/// How long start-up may take (Docker ping, sweep, image check, bind).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a drain after SIGTERM may take before the daemon is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Daemon {
    /// Killed (SIGKILL) when dropped, e.g. when the bench is interrupted; the bench then
    /// removes the containers by label.
    child: Child,
    pid: i32,
    pub addr: SocketAddr,
    pub instance: String,
    pub ca: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `pyexecd` with the certificates in `tls` (see `pyexec::certs::generate`)
    /// and waits for its `listening on ADDR` line.
    pub async fn start(
        bins: &Bins,
        tls: &Path,
        instance: &str,
        extra: &[String],
    ) -> Result<Daemon> {
        let certs = pyexec::certs::CertPaths::in_dir(tls);
        let log = tls.join(format!("{instance}.log"));
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(&bins.pyexecd)
            .args(["--listen", "127.0.0.1:0", "--instance", instance])
            .arg("--cert")
            .arg(&certs.server_cert)
            .arg("--key")
            .arg(&certs.server_key)
            // Not what is measured; generous so that the slow reader of the memory
            // measurement is never cut off.
            .args(["--session-timeout", "300"])
            .args(extra)
            // The daemon's own default log filter, whatever the caller's environment says.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bins.pyexecd.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("pyexecd exited at once"))? as i32;
        let stdout = child.stdout.take().context("pyexecd has no stdout")?;
        let mut lines = BufReader::new(stdout);
        let mut first = String::new();
        let read = tokio::time::timeout(START_TIMEOUT, lines.read_line(&mut first)).await;
        let addr = match read {
            Ok(Ok(_)) => first
                .trim()
                .strip_prefix("listening on ")
                .and_then(|a| a.parse::<SocketAddr>().ok()),
            _ => None,
        };
        let Some(addr) = addr else {
            let _ = child.start_kill();
            let _ = child.wait().await;
            bail!(
                "pyexecd {} did not start (first line {first:?}); its log ends with:\n{}",
                extra.join(" "),
                tail(&log, 10)
            );
        };
        // Keep reading stdout so that the daemon never blocks on a full pipe.
        tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = lines.read_to_end(&mut sink).await;
        });
        Ok(Daemon {
            child,
            pid,
            addr,
            instance: instance.to_string(),
            ca: certs.ca_cert,
            log,
        })
    }

    /// Resident memory in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid)
    }

    /// CPU time the daemon has used so far.
    pub fn cpu_time(&self) -> Result<Duration> {
        cpu_time(self.pid)
    }

    pub fn client_config(&self) -> pyexec::client::ClientConfig {
        pyexec::client::ClientConfig::new(self.addr.to_string(), &self.ca)
    }

    /// The last lines of the daemon's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// SIGTERM and wait for the drain; SIGKILL if it takes too long.
    pub async fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child, which has not been waited for yet.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => bail!(
                "pyexecd {} exited with {status} after SIGTERM; its log ends with:\n{}",
                self.instance,
                self.log_tail(5)
            ),
            Ok(Err(e)) => bail!("cannot wait for pyexecd {}: {e}", self.instance),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                bail!(
                    "pyexecd {} did not exit within {STOP_TIMEOUT:?} of SIGTERM",
                    self.instance
                )
            }
        }
    }
}

/// CPU time (user + system) the process has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: i32) -> Result<std::time::Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("cannot parse {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = fields
        .get(11..13)
        .and_then(|f| Some(f[0].parse::<u64>().ok()? + f[1].parse::<u64>().ok()?))
        .ok_or_else(|| anyhow!("cannot parse {path}"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(std::time::Duration::from_millis(ticks * 1000 / hz))
}

pub fn rss_kib(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in {path}"))
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
