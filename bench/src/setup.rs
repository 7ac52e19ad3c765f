//! Everything a run needs before measuring: the release binaries, the sandbox image, TLS
//! material for the daemons, and the Docker Engine connection.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use bollard::Docker;
use tokio::process::Command;

/// Where `pyexecd` and `pyexec` are.
#[derive(Debug, Clone)]
pub struct Bins {
    pub pyexecd: PathBuf,
    pub pyexec: PathBuf,
}

/// The workspace root, as seen when the bench was compiled.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds the release binaries, `pyexecd` of the `pyexec` package and `pyexec` of
/// `pyexec-client` (a no-op when they are up to date), so that the daemon measured is the
/// one the bench was compiled against and not a stale leftover. `cargo run` has released
/// its lock by the time we run, so a nested cargo works.
pub async fn build_release() -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let args = [
        "build",
        "--release",
        "-p",
        "pyexec",
        "-p",
        "pyexec-client",
        "--bins",
    ];
    eprintln!("bench: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .status()
        .await
        .with_context(|| format!("cannot run {}", PathBuf::from(&cargo).display()))?;
    if !status.success() {
        bail!(
            "building pyexec failed ({status}); fix the build, or pass --no-build to \
             measure the binaries already in target/release"
        );
    }
    Ok(())
}

/// Finds the binaries in `dir`, by default the directory of this executable (which is
/// `target/release` under `cargo run --release`).
pub fn locate(dir: Option<&Path>) -> Result<Bins> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot find the bench's own executable")?
            .parent()
            .map(Path::to_path_buf)
            .context("the bench's executable has no directory")?,
    };
    let find = |name: &str| {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(anyhow::anyhow!(
                "{} is missing; build it with `cargo build --release --bins` \
                 (or point --bin-dir at a directory holding pyexecd and pyexec)",
                p.display()
            ))
        }
    };
    Ok(Bins {
        pyexecd: find("pyexecd")?,
        pyexec: find("pyexec")?,
    })
}

impl Bins {
    /// Copies both binaries into `dir` and returns the copies, so that a `cargo build`
    /// running meanwhile (the workspace is shared) cannot swap them in the middle of a run.
    pub fn snapshot(&self, dir: &Path) -> Result<Bins> {
        let copy = |from: &Path| {
            let to = dir.join(from.file_name().unwrap_or_default());
            std::fs::copy(from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
            anyhow::Ok(to)
        };
        Ok(Bins {
            pyexecd: copy(&self.pyexecd)?,
            pyexec: copy(&self.pyexec)?,
        })
    }
}

/// Makes sure the sandbox image exists: the default one is built with
/// `pyexecd build-image` (about a minute, no registry), any other must be there already.
pub async fn ensure_image(docker: &Docker, bins: &Bins, image: &str) -> Result<()> {
    if pyexec::image::exists(docker, image).await? {
        return Ok(());
    }
    if image != pyexec::config::DEFAULT_IMAGE {
        bail!("image {image} is not in Docker; pull or build it first");
    }
    eprintln!("bench: {image} is absent; building it with pyexecd build-image");
    let status = Command::new(&bins.pyexecd)
        .arg("build-image")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .await
        .with_context(|| format!("cannot run {}", bins.pyexecd.display()))?;
    if !status.success() {
        bail!("pyexecd build-image failed ({status}); its output is above");
    }
    Ok(())
}

/// True when this pyexecd has the `--warm` flag (the warm pool of issue 3).
pub async fn supports_warm(bins: &Bins) -> bool {
    match Command::new(&bins.pyexecd).arg("--help").output().await {
        Ok(out) => String::from_utf8_lossy(&out.stdout).contains("--warm"),
        Err(_) => false,
    }
}

/// True when the `docker` CLI can talk to the engine (needed for the `docker run` rows).
pub async fn docker_cli() -> Result<(), String> {
    match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
        .await
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "docker CLI failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("no docker CLI: {e}")),
    }
}
