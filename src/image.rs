//! The sandbox image: making sure it exists, building the default one from Debian packages
//! with mmdebstrap (no registry needed), or pulling any other.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::{body_try_stream, Docker};
use futures::StreamExt;
use tokio_util::io::ReaderStream;
use tracing::info;

use crate::config::DEFAULT_IMAGE;
use crate::docker::is_not_found;

/// Debian packages in the default image. `python3` (not `python3-minimal`) brings the
/// whole standard library: json, sqlite3, asyncio, ssl, ...; tzdata makes `zoneinfo`
/// work; distutils and lib2to3 are the pieces Debian splits off.
pub const PACKAGES: &str = "python3,python3-distutils,python3-lib2to3,tzdata";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("Docker Engine API: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error(
        "mmdebstrap is not installed; it builds the sandbox image without a registry \
         (install it with `apt-get install mmdebstrap`, or run scripts/serve)"
    )]
    NoMmdebstrap,
    #[error("mmdebstrap failed ({0}); its output is above")]
    Mmdebstrap(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot pull {image}: {source} (without a registry, use the default image)")]
    Pull {
        image: String,
        source: bollard::errors::Error,
    },
    #[error("the build finished but {0} is not in Docker")]
    Missing(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

pub async fn exists(docker: &Docker, image: &str) -> Result<bool, ImageError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Makes sure `image` is there: builds the default image, pulls any other.
pub async fn ensure(docker: &Docker, image: &str) -> Result<(), ImageError> {
    if exists(docker, image).await? {
        return Ok(());
    }
    if image == DEFAULT_IMAGE {
        info!(
            image,
            "sandbox image not found; building it from Debian packages (about a minute)"
        );
        build(docker, image, "bookworm").await
    } else {
        info!(image, "sandbox image not found; pulling it");
        pull(docker, image).await
    }
}

async fn pull(docker: &Docker, image: &str) -> Result<(), ImageError> {
    let opts = CreateImageOptionsBuilder::default()
        .from_image(image)
        .build();
    let mut progress = docker.create_image(Some(opts), None, None);
    while let Some(step) = progress.next().await {
        step.map_err(|source| ImageError::Pull {
            image: image.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Splits `repo:tag` (a `:` inside a registry host's port does not count).
fn split_tag(image: &str) -> (&str, &str) {
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => (&image[..i], &image[i + 1..]),
        _ => (image, "latest"),
    }
}

/// Holds an exclusive lock so that two builds (two daemons, two test processes) never run
/// at once; the second waits, then finds the image and does nothing.
struct BuildLock {
    _file: File,
}

impl BuildLock {
    // flock(2) has no safe wrapper in std.
    #[allow(unsafe_code)]
    async fn acquire() -> Result<Self, ImageError> {
        let path = std::env::temp_dir().join("pyexec-build-image.lock");
        let file =
            File::create(&path).map_err(io_err(format!("cannot open {}", path.display())))?;
        tokio::task::spawn_blocking(move || {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            match unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } {
                0 => Ok(BuildLock { _file: file }),
                _ => Err(io_err("cannot lock the image build")(
                    std::io::Error::last_os_error(),
                )),
            }
        })
        .await
        .expect("the lock task does not panic")
    }
}

/// Builds `tag` from Debian `suite` with mmdebstrap and imports it. Quick and without
/// effect when the image already exists.
pub async fn build(docker: &Docker, tag: &str, suite: &str) -> Result<(), ImageError> {
    let _lock = BuildLock::acquire().await?;
    if exists(docker, tag).await? {
        return Ok(());
    }
    if which("mmdebstrap").is_none() {
        return Err(ImageError::NoMmdebstrap);
    }
    let dir = tempfile::Builder::new()
        .prefix("pyexec-image-")
        .tempdir()
        .map_err(io_err("cannot create a temporary directory"))?;
    let tar = dir.path().join("rootfs.tar");
    let started = std::time::Instant::now();
    // No mirror argument: mmdebstrap then uses the host's apt sources, which on our
    // machines point at a reachable mirror.
    let status = tokio::process::Command::new("mmdebstrap")
        .args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            suite,
        ])
        .arg(&tar)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .await
        .map_err(io_err("cannot run mmdebstrap"))?;
    if !status.success() {
        return Err(ImageError::Mmdebstrap(status.to_string()));
    }
    info!(
        secs = started.elapsed().as_secs(),
        "root filesystem built; importing it"
    );
    import(docker, &tar, tag).await?;
    if !exists(docker, tag).await? {
        return Err(ImageError::Missing(tag.to_string()));
    }
    info!(
        image = tag,
        secs = started.elapsed().as_secs(),
        "sandbox image ready"
    );
    Ok(())
}

async fn import(docker: &Docker, tar: &Path, image: &str) -> Result<(), ImageError> {
    let file = tokio::fs::File::open(tar)
        .await
        .map_err(io_err(format!("cannot open {}", tar.display())))?;
    let (repo, tag) = split_tag(image);
    let opts = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repo)
        .tag(tag)
        .changes(vec![
            "ENV PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
            "ENV LANG=C.UTF-8".to_string(),
            "CMD [\"python3\"]".to_string(),
        ])
        .build();
    let body = body_try_stream(ReaderStream::with_capacity(file, 1 << 20));
    let mut progress = docker.create_image(Some(opts), Some(body), None);
    while let Some(step) = progress.next().await {
        step?;
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_at_the_last_colon_outside_a_host() {
        assert_eq!(
            split_tag("pyexec/sandbox:bookworm-1"),
            ("pyexec/sandbox", "bookworm-1")
        );
        assert_eq!(split_tag("python"), ("python", "latest"));
        assert_eq!(split_tag("reg:5000/py"), ("reg:5000/py", "latest"));
        assert_eq!(split_tag("reg:5000/py:3"), ("reg:5000/py", "3"));
    }
}
