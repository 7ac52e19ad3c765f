//! Part 7, files in and out (feature `files`): 50 MiB up and down, pyexec against
//! `docker cp` into and out of a running container of the same image (issue 12, item 7).
//!
//! pyexec up is `pyexec --file big.bin` with a script that checks the file's size; down
//! is a script writing 50 MiB, brought back with `--get` into an empty directory. The
//! baseline is `docker cp` of the same file into (and back out of) a container started
//! once with `docker run -d` and kept running. Whole processes, interleaved rep by rep
//! after one untimed warm-up each; the rate is MiB / whole wall time, for both. A second
//! pair of pyexec figures takes a session's own cost off (the same command without the
//! file: an empty upload, a download not asked for), which is what the transfer costs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::Command;

use crate::ctx::{Bench, Role, Served};
use crate::report::{Measured, Report, Value};
use crate::runner::run_collect;
use crate::stats::Summary;

/// The file's size, as the issue asks.
pub const MIB: u64 = 50;
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The daemon's bounds must let 50 MiB in (default 32 MiB) and its tmpfs hold it.
pub const DAEMON_FLAGS: [&str; 4] = ["--max-files-size", "64m", "--tmp-size", "128m"];

/// Checks the uploaded file, so that nothing is measured that did not arrive whole.
fn up_script() -> String {
    format!(
        "import os\nassert os.path.getsize('big.bin') == {}\n",
        MIB << 20
    )
}

/// Writes the file to bring back: a pattern, so that making it costs ~nothing.
fn down_script() -> String {
    format!(
        "open('big.bin', 'wb').write(bytes(range(256)) * ({} // 256))\n",
        MIB << 20
    )
}

/// The wall times of one variant, in seconds.
#[derive(Default)]
struct Series {
    runs: Vec<f64>,
    error: Option<String>,
}

impl Series {
    fn add(&mut self, ran: Result<Duration>, timed: bool) {
        match ran {
            Ok(d) if timed => self.runs.push(d.as_secs_f64()),
            Ok(_) => {}
            Err(e) => {
                self.error.get_or_insert(format!("{e:#}"));
            }
        }
    }

    fn ok(&self) -> bool {
        self.error.is_none()
    }

    fn median(&self) -> Result<f64, String> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        Summary::of(&self.runs)
            .map(|s| s.median)
            .ok_or_else(|| "no samples".into())
    }

    /// MiB/s of the median wall time, `less` seconds taken off first.
    fn rate(&self, less: Result<f64, String>) -> Measured {
        let (wall, less) = (self.median()?, less?);
        let net = wall - less;
        if net <= 0.0 {
            return Err(format!(
                "{wall:.3} s is not above the {less:.3} s taken off"
            ));
        }
        Ok(Value::single(MIB as f64 / net))
    }
}

/// The four pyexec variants and the two `docker cp` ones.
#[derive(Default)]
struct Runs {
    up: Series,
    up_empty: Series,
    down: Series,
    down_none: Series,
    cp_in: Series,
    cp_out: Series,
}

pub async fn run(b: &Bench, report: &mut Report) {
    let reps = b.params.files_reps;
    eprintln!("bench: files, {MIB} MiB up and down vs docker cp, {reps} timed runs each");
    let served = b.daemon_with(Role::Files, 2, Some(1), &DAEMON_FLAGS).await;
    let scratch = prepare(b.dir.path()).map_err(|e| format!("{e:#}"));
    let container = match &b.docker_cli {
        Ok(()) => Baseline::start(b).await.map_err(|e| format!("{e:#}")),
        Err(e) => Err(e.clone()),
    };
    let mut r = Runs::default();
    match (&served, &scratch) {
        (Err(e), _) | (_, Err(e)) => {
            for s in [&mut r.up, &mut r.up_empty, &mut r.down, &mut r.down_none] {
                s.error = Some(e.clone());
            }
        }
        _ => {}
    }
    if let Err(e) = &container {
        r.cp_in.error = Some(e.clone());
        r.cp_out.error = Some(e.clone());
    }
    for rep in 0..=reps {
        let timed = rep > 0;
        if let (Ok(served), Ok(s)) = (&served, &scratch) {
            pyexec_once(b, served, s, &mut r, timed).await;
        }
        if let (Ok(c), Ok(s)) = (&container, &scratch) {
            if r.cp_in.ok() && r.cp_out.ok() {
                r.cp_in.add(c.copy_in(&s.big).await, timed);
                r.cp_out.add(c.copy_out(&s.out).await, timed);
            }
        }
        let what = if timed { "timed" } else { "warm-up" };
        crate::progress(&format!("bench: files, {what} run {rep}/{reps}"));
    }
    crate::progress_done("bench: files done");
    if let Ok(c) = container {
        c.remove().await;
    }
    if let Ok(served) = served {
        if let Err(e) = served.daemon.stop().await {
            report.note(format!("files daemon: {e:#}"));
        }
    }

    let whole = || Ok(0.0);
    report.row(
        format!("files: {MIB} MiB up, MiB/s whole process (median of {reps}) vs `docker cp` in"),
        &r.up.rate(whole()),
        &r.cp_in.rate(whole()),
    );
    report.row(
        format!("files: {MIB} MiB down, MiB/s whole process (median of {reps}) vs `docker cp` out"),
        &r.down.rate(whole()),
        &r.cp_out.rate(whole()),
    );
    report.row(
        format!("files: {MIB} MiB up, MiB/s net of an empty session vs `docker cp` in"),
        &r.up.rate(r.up_empty.median()),
        &r.cp_in.rate(whole()),
    );
    report.row(
        format!("files: {MIB} MiB down, MiB/s net of the session without --get vs `docker cp` out"),
        &r.down.rate(r.down_none.median()),
        &r.cp_out.rate(whole()),
    );
    if let (Ok(e), Ok(n)) = (r.up_empty.median(), r.down_none.median()) {
        report.note(format!(
            "files: a session's own cost, taken off in the net rows: {e:.3} s up (no file), \
             {n:.3} s down (the file written, not asked for)"
        ));
    }
}

/// One rep of the four pyexec variants, each checked.
async fn pyexec_once(b: &Bench, served: &Served, s: &Scratch, r: &mut Runs, timed: bool) {
    if !(r.up.ok() && r.up_empty.ok() && r.down.ok() && r.down_none.ok()) {
        return;
    }
    let mut cmd = served
        .cli
        .command_with(&["--file", "big.bin"], &s.up_script);
    cmd.current_dir(&s.dir);
    r.up.add(timed_run(cmd).await, timed);
    let _ = served.settle(&b.docker).await;

    r.up_empty
        .add(timed_run(served.cli.command(&s.empty_script)).await, timed);
    let _ = served.settle(&b.docker).await;

    let _ = std::fs::remove_file(s.out.join("big.bin"));
    let out = s.out.to_string_lossy();
    let options = ["-q", "--get", "big.bin", "--out-dir", &out];
    let cmd = served.cli.command_with(&options, &s.down_script);
    let ran = timed_run(cmd).await.and_then(|d| {
        check_size(&s.out.join("big.bin"))?;
        Ok(d)
    });
    r.down.add(ran, timed);
    let _ = served.settle(&b.docker).await;

    r.down_none
        .add(timed_run(served.cli.command(&s.down_script)).await, timed);
    let _ = served.settle(&b.docker).await;
}

async fn timed_run(cmd: Command) -> Result<Duration> {
    Ok(run_collect(cmd, None, RUN_TIMEOUT).await?.0)
}

fn check_size(path: &Path) -> Result<()> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("{} was not written", path.display()))?
        .len();
    if size != MIB << 20 {
        bail!("{} has {size} bytes, not {}", path.display(), MIB << 20);
    }
    Ok(())
}

/// The file to send, the scripts, and an output directory, in the scratch directory.
struct Scratch {
    dir: PathBuf,
    big: PathBuf,
    out: PathBuf,
    up_script: PathBuf,
    empty_script: PathBuf,
    down_script: PathBuf,
}

fn prepare(root: &Path) -> Result<Scratch> {
    let dir = root.join("files");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).context("cannot create the files scratch directory")?;
    // Pseudo-random bytes (xorshift64): nothing on either path compresses, but a
    // pattern would still flatter a cache.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..(MIB << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let big = dir.join("big.bin");
    std::fs::write(&big, &data).context("cannot write the 50 MiB file")?;
    let script = |name: &str, text: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
        Ok(p)
    };
    Ok(Scratch {
        up_script: script("up.py", &up_script())?,
        empty_script: script("empty.py", "import os\n")?,
        down_script: script("down.py", &down_script())?,
        dir,
        big,
        out,
    })
}

/// The baseline's container: `docker run -d` of the same image, idle, with the bench's
/// labels (removed by them if the bench is interrupted). Not a tmpfs path: a copy into
/// a tmpfs mount through the archive API "succeeds" but lands hidden under the mount.
struct Baseline {
    id: String,
}

impl Baseline {
    async fn start(b: &Bench) -> Result<Baseline> {
        let out = Command::new("docker")
            .args(["run", "-d", "--rm", "--network", "none", "--label"])
            .arg(format!("{}=true", pyexec::sandbox::LABEL_MANAGED))
            .arg("--label")
            .arg(format!(
                "{}={}",
                pyexec::sandbox::LABEL_INSTANCE,
                b.instance(Role::Baseline)
            ))
            .arg(&b.image)
            .args(["python3", "-c", "import time; time.sleep(3600)"])
            .stdin(Stdio::null())
            .output()
            .await
            .context("cannot run docker")?;
        crate::runner::check_status(out.status, &out.stderr)?;
        Ok(Baseline {
            id: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        })
    }

    async fn copy_in(&self, file: &Path) -> Result<Duration> {
        let mut cmd = Command::new("docker");
        cmd.arg("cp").arg(file).arg(format!("{}:/big.bin", self.id));
        timed_run(cmd).await
    }

    async fn copy_out(&self, dir: &Path) -> Result<Duration> {
        let target = dir.join("big.bin");
        let _ = std::fs::remove_file(&target);
        let mut cmd = Command::new("docker");
        cmd.arg("cp")
            .arg(format!("{}:/big.bin", self.id))
            .arg(&target);
        let d = timed_run(cmd).await?;
        check_size(&target)?;
        Ok(d)
    }

    async fn remove(self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}
