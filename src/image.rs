//! The sandbox image: making sure it exists, building one from Debian packages with
//! mmdebstrap (no registry needed; more packages and a pip requirements file on request,
//! with matplotlib's font cache built in), or pulling any other.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::{body_try_stream, Docker};
use futures::StreamExt;
use tokio::io::AsyncBufReadExt;
use tokio_util::io::ReaderStream;
use tracing::info;

use crate::config::{BuildImageArgs, ConfigError, DEFAULT_IMAGE};
use crate::docker::is_not_found;

/// Debian packages in the default image. `python3` (not `python3-minimal`) brings the
/// whole standard library: json, sqlite3, asyncio, ssl, ...; tzdata makes `zoneinfo`
/// work; distutils and lib2to3 are the pieces Debian splits off.
pub const PACKAGES: &str = "python3,python3-distutils,python3-lib2to3,tzdata";

/// The image's prepared home: what the bootstrap copies into HOME (/tmp) before the
/// script (see `bootstrap.py`). A read-only root filesystem leaves matplotlib no
/// writable config dir: it then rebuilds its font cache in every container (about a
/// second) and warns on the script's stderr. Its cache, built here at build time and
/// copied into a writable HOME, avoids both.
pub const PREPARED_HOME: &str = "/usr/share/pyexec/home";

/// What goes into an image besides Debian's python3.
#[derive(Debug, Clone, Default)]
pub struct Recipe {
    /// Debian suite to build from.
    pub suite: String,
    /// More Debian packages (`python3-numpy`).
    pub packages: Vec<String>,
    /// A pip requirements file, installed from the package index at build time.
    pub pip: Option<PathBuf>,
    /// The host's CA bundle, which pip uses in the new root (see `mmdebstrap_args`).
    pub host_ca: Option<PathBuf>,
}

/// Debian's bundle of the CAs the host trusts, local additions included.
const HOST_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

impl Recipe {
    /// The default image's recipe.
    pub fn default_image() -> Self {
        Recipe {
            suite: "bookworm".into(),
            ..Default::default()
        }
    }

    fn plain(&self) -> bool {
        self.packages.is_empty() && self.pip.is_none()
    }

    /// The steps a build reports, in order.
    fn steps(&self) -> Vec<&'static str> {
        let mut steps = vec!["Debian packages (mmdebstrap)"];
        if self.pip.is_some() {
            steps.push("pip requirements");
        }
        if !self.plain() {
            steps.push("matplotlib font cache");
        }
        steps.push("import into Docker");
        steps
    }

    /// mmdebstrap's arguments, writing the root filesystem to `tar`. Each customize
    /// hook first echoes an `I: pyexec step N/M: ...` line, so the build's log counts
    /// its steps.
    fn mmdebstrap_args(&self, tar: &Path) -> Vec<OsString> {
        let steps = self.steps();
        let total = steps.len();
        let mut include = PACKAGES.to_string();
        for p in &self.packages {
            include.push(',');
            include.push_str(p);
        }
        if self.pip.is_some() {
            include.push_str(",python3-pip");
        }
        let mut args: Vec<OsString> = vec![
            "--variant=minbase".into(),
            format!("--include={include}").into(),
            "--dpkgopt=path-exclude=/usr/share/doc/*".into(),
            "--dpkgopt=path-exclude=/usr/share/man/*".into(),
            "--dpkgopt=path-exclude=/usr/share/info/*".into(),
            "--dpkgopt=path-exclude=/usr/share/locale/*".into(),
        ];
        // Hooks run in order after the packages are in; `$1` is the root filesystem.
        let mut hooks: Vec<OsString> = Vec::new();
        let mut step = 1;
        let mut announce = |hooks: &mut Vec<OsString>| {
            step += 1;
            hooks.push(
                format!(
                    "echo 'I: pyexec step {step}/{total}: {}' >&2",
                    steps[step - 1]
                )
                .into(),
            );
        };
        if let Some(pip) = &self.pip {
            announce(&mut hooks);
            let copy_in = |file: &Path| {
                let mut copy = OsString::from("copy-in ");
                copy.push(file.as_os_str());
                copy.push(" /tmp");
                copy
            };
            hooks.push(copy_in(pip));
            let name = pip
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // pip in the new root trusts what this host trusts: a host behind a proxy
            // that re-signs TLS (or with a private index) has its CA in its own bundle,
            // not in the Debian bundle of the new root, and pip would fail to verify.
            let cert = match &self.host_ca {
                Some(ca) => {
                    hooks.push(copy_in(ca));
                    let file = ca.file_name().map(|n| n.to_string_lossy().into_owned());
                    format!(" --cert '/tmp/{}'", file.unwrap_or_default())
                }
                None => String::new(),
            };
            // Debian marks its python3 as externally managed; the image is ours. No
            // cache: it would only make the image bigger. The host's certificate
            // variables name host paths, which in the new root are its own Debian
            // bundle, and requests lets REQUESTS_CA_BUNDLE win over --cert: unset.
            hooks.push(
                format!(
                    "chroot \"$1\" env -u REQUESTS_CA_BUNDLE -u CURL_CA_BUNDLE -u SSL_CERT_FILE \
                     -u SSL_CERT_DIR -u PIP_CERT python3 -m pip install --no-cache-dir \
                     --break-system-packages --root-user-action=ignore \
                     --disable-pip-version-check --progress-bar off{cert} -r '/tmp/{name}' >&2 \
                     && rm -f \"$1/tmp/{name}\""
                )
                .into(),
            );
            if let Some(file) = self.host_ca.as_deref().and_then(Path::file_name) {
                hooks.push(format!("rm -f \"$1/tmp/{}\"", file.to_string_lossy()).into());
            }
        }
        if !self.plain() {
            announce(&mut hooks);
            // Built as the scripts will find it: HOME is the prepared home, which the
            // bootstrap copies into the container's HOME. Nothing is left when the
            // image has no matplotlib.
            hooks.push(
                format!(
                    "mkdir -p \"$1{PREPARED_HOME}\" && chroot \"$1\" env HOME={PREPARED_HOME} \
                     python3 -c 'import importlib.util; \
                     importlib.util.find_spec(\"matplotlib\") and __import__(\"matplotlib.font_manager\")' \
                     && find \"$1/usr/share/pyexec\" -depth -type d -empty -delete"
                )
                .into(),
            );
        }
        for hook in hooks {
            let mut arg = OsString::from("--customize-hook=");
            arg.push(hook);
            args.push(arg);
        }
        args.push(self.suite.clone().into());
        args.push(tar.into());
        args
    }
}

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
    #[error(
        "cannot pull {image}: {source} (without a registry, build it here: `pyexecd \
         build-image --packages PKG,PKG --tag {image}`, or copy it from another engine)"
    )]
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
        build(docker, image, &Recipe::default_image()).await
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

impl Recipe {
    /// The recipe `build-image`'s arguments ask for, or why they cannot make one.
    pub fn from_args(args: &BuildImageArgs) -> Result<Recipe, ConfigError> {
        let err = |flag, reason: String| ConfigError {
            flag,
            reason,
            at: None,
        };
        let custom = !args.packages.is_empty() || args.pip.is_some();
        if custom && args.tag == DEFAULT_IMAGE {
            return Err(err(
                "tag",
                format!(
                    "an image with more packages needs a tag of its own (e.g. \
                     pyexec/sandbox:science), not the default {DEFAULT_IMAGE}"
                ),
            ));
        }
        // A Debian package name: what apt accepts, and nothing a shell would read.
        if let Some(bad) = args.packages.iter().find(|p| {
            p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
        }) {
            return Err(err(
                "packages",
                format!("`{bad}` is not a Debian package name"),
            ));
        }
        if let Some(pip) = &args.pip {
            if !pip.is_file() {
                return Err(err("pip", format!("{} is not a file", pip.display())));
            }
            let name = pip.file_name().map(|n| n.to_string_lossy().into_owned());
            if !name.is_some_and(|n| {
                n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            }) {
                return Err(err(
                    "pip",
                    format!(
                        "{}: use a plain file name (letters, digits, . _ -)",
                        pip.display()
                    ),
                ));
            }
        }
        Ok(Recipe {
            suite: args.suite.clone(),
            packages: args.packages.clone(),
            pip: args.pip.clone(),
            host_ca: Some(PathBuf::from(HOST_CA)).filter(|ca| ca.is_file()),
        })
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

/// Builds `tag` from `recipe` with mmdebstrap and imports it. Quick and without effect
/// when the image already exists: an image is never rebuilt under the same tag (a
/// changed recipe gets a new tag). Progress goes to the log, one line per step and per
/// line of mmdebstrap's output, and the import's bytes every quarter.
pub async fn build(docker: &Docker, tag: &str, recipe: &Recipe) -> Result<(), ImageError> {
    let _lock = BuildLock::acquire().await?;
    if exists(docker, tag).await? {
        info!(image = tag, "image already present; nothing to build");
        return Ok(());
    }
    if which("mmdebstrap").is_none() {
        return Err(ImageError::NoMmdebstrap);
    }
    if let Some(pip) = &recipe.pip {
        if !pip.is_file() {
            return Err(io_err(format!("cannot read {}", pip.display()))(
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("pyexec-image-")
        .tempdir()
        .map_err(io_err("cannot create a temporary directory"))?;
    let tar = dir.path().join("rootfs.tar");
    let started = Instant::now();
    let steps = recipe.steps();
    let total = steps.len();
    info!(
        image = tag,
        packages = %recipe.packages.join(","),
        pip = %recipe.pip.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
        "building: {}",
        steps.iter().enumerate().map(|(i, s)| format!("{}/{total} {s}", i + 1)).collect::<Vec<_>>().join(", ")
    );
    info!("step 1/{total}: {}", steps[0]);
    // No mirror argument: mmdebstrap then uses the host's apt sources, which on our
    // machines point at a reachable mirror.
    let mut child = tokio::process::Command::new("mmdebstrap")
        .args(recipe.mmdebstrap_args(&tar))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io_err("cannot run mmdebstrap"))?;
    // Its lines, counted under the step they belong to; the hooks announce theirs.
    let mut step = 1;
    if let Some(stderr) = child.stderr.take() {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(n) = line
                .strip_prefix("I: pyexec step ")
                .and_then(|rest| rest.split('/').next())
                .and_then(|n| n.parse().ok())
            {
                step = n;
            }
            info!(
                secs = started.elapsed().as_secs(),
                "step {step}/{total}: {line}"
            );
        }
    }
    let status = child
        .wait()
        .await
        .map_err(io_err("cannot run mmdebstrap"))?;
    if !status.success() {
        return Err(ImageError::Mmdebstrap(status.to_string()));
    }
    let size = std::fs::metadata(&tar).map(|m| m.len()).unwrap_or(0);
    info!(
        secs = started.elapsed().as_secs(),
        mb = size / 1_000_000,
        "step {total}/{total}: {}",
        steps[total - 1]
    );
    import(docker, &tar, tag, size).await?;
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

async fn import(docker: &Docker, tar: &Path, image: &str, size: u64) -> Result<(), ImageError> {
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
    // The bytes sent, logged at each quarter: a big image takes a while to import.
    let mut sent = 0u64;
    let mut quarter = 0;
    let counted = ReaderStream::with_capacity(file, 1 << 20).inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            sent += chunk.len() as u64;
            let now = (sent * 4).checked_div(size).unwrap_or(0);
            if now > quarter && now < 4 {
                quarter = now;
                info!(mb = sent / 1_000_000, of_mb = size / 1_000_000, "importing");
            }
        }
    });
    let body = body_try_stream(counted);
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
    fn a_recipe_with_packages_builds_the_font_cache_and_counts_its_steps() {
        let plain = Recipe::default_image();
        assert_eq!(plain.steps().len(), 2);
        let args: Vec<String> = plain
            .mmdebstrap_args(Path::new("/x.tar"))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(!args.iter().any(|a| a.starts_with("--customize-hook")));
        assert_eq!(args[args.len() - 2..], ["bookworm", "/x.tar"]);
        let science = Recipe {
            packages: vec!["python3-pandas".into()],
            pip: Some("/r/requirements.txt".into()),
            host_ca: Some("/etc/ssl/certs/ca-certificates.crt".into()),
            ..plain
        };
        assert_eq!(science.steps().len(), 4);
        let args: Vec<String> = science
            .mmdebstrap_args(Path::new("/x.tar"))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args[1].ends_with(",python3-pandas,python3-pip"),
            "{}",
            args[1]
        );
        let hooks: Vec<&String> = args
            .iter()
            .filter(|a| a.starts_with("--customize-hook"))
            .collect();
        assert!(hooks[0].contains("step 2/4: pip requirements"));
        assert!(hooks[1].ends_with("copy-in /r/requirements.txt /tmp"));
        assert!(hooks[2].ends_with("copy-in /etc/ssl/certs/ca-certificates.crt /tmp"));
        assert!(hooks[3].contains("--cert '/tmp/ca-certificates.crt' -r '/tmp/requirements.txt'"));
        assert!(hooks[4].contains("rm -f \"$1/tmp/ca-certificates.crt\""));
        assert!(hooks[5].contains("step 3/4: matplotlib font cache"));
        assert!(hooks[6].contains(&format!("HOME={PREPARED_HOME}")));
    }

    #[test]
    fn build_image_arguments_are_checked_before_anything_runs() {
        let args = |tag: &str, packages: &[&str]| BuildImageArgs {
            tag: tag.into(),
            suite: "bookworm".into(),
            packages: packages.iter().map(|p| p.to_string()).collect(),
            pip: None,
        };
        let err = Recipe::from_args(&args(DEFAULT_IMAGE, &["python3-numpy"])).unwrap_err();
        assert_eq!(err.flag, "tag");
        let err = Recipe::from_args(&args("x:1", &["python3-numpy; rm -rf /"])).unwrap_err();
        assert_eq!(err.flag, "packages");
        let recipe = Recipe::from_args(&args("x:1", &["python3-numpy", "python3-pandas"])).unwrap();
        assert_eq!(recipe.packages.len(), 2);
        assert!(Recipe::from_args(&args(DEFAULT_IMAGE, &[]))
            .unwrap()
            .plain());
        let mut missing = args("x:1", &[]);
        missing.pip = Some("/nonexistent/requirements.txt".into());
        assert_eq!(Recipe::from_args(&missing).unwrap_err().flag, "pip");
    }

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
