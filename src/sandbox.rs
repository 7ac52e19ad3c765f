//! What a sandbox container is: its Docker create body, its command and its labels.
//!
//! Pure data, no I/O: the ContainerActor sends what this module builds. Every isolation
//! setting lives here, in one place, so that `docs/security.md` can point at it.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, MountVolumeOptions,
    MountVolumeOptionsDriverConfig, ResourcesUlimits,
};

use crate::config::images::ImageConfig;
use crate::config::{BootstrapMode, SandboxConfig};

/// Label carried by every container this project creates.
pub const LABEL_MANAGED: &str = "pyexec.managed";
/// Label naming the daemon instance that owns the container.
pub const LABEL_INSTANCE: &str = "pyexec.instance";
/// Label of an instance's lease container (see `engine::Lease`): the run that holds it.
pub const LABEL_LEASE: &str = "pyexec.lease";

/// The bootstrap program (see `src/bootstrap.py`; its wire format is in `bootstrap.rs`).
pub const BOOTSTRAP: &str = include_str!("bootstrap.py");

/// Size of the container's /dev/shm.
pub const SHM_SIZE: u64 = 16 << 20;

/// Script name used when the client gives none, or one that is not a plain file name.
pub const DEFAULT_SCRIPT_NAME: &str = "main.py";

/// The limits on the arguments are the protocol's (§4.1): the client checks them too.
pub use crate::protocol::check_args;

/// A complete specification for sandbox containers of one daemon and one image.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// `config.image` is this spec's image tag.
    pub config: SandboxConfig,
    pub instance: String,
    /// Modules the waiting interpreter imports before its script (in-process mode).
    pub preload: Vec<String>,
}

impl SandboxSpec {
    /// The spec of the default image (`--image`), without preloading.
    pub fn new(config: SandboxConfig, instance: String) -> Self {
        SandboxSpec {
            config,
            instance,
            preload: Vec::new(),
        }
    }

    /// The spec of one served image: the same isolation, that image and its preload.
    pub fn for_image(config: &SandboxConfig, instance: &str, image: &ImageConfig) -> Self {
        SandboxSpec {
            config: SandboxConfig {
                image: image.tag.clone(),
                ..config.clone()
            },
            instance: instance.to_string(),
            preload: image.preload.clone(),
        }
    }

    /// Whether the bootstrap imports modules before it waits for its script, and says
    /// READY when done (`bootstrap::await_ready`).
    pub fn preloads(&self) -> bool {
        self.config.bootstrap == BootstrapMode::Inprocess && !self.preload.is_empty()
    }

    /// The container's command. In-process mode starts the interpreter exactly as
    /// `python3 -u script.py` would (site and all), since the script will run in it; exec
    /// mode starts a minimal one that only reads the request and execs the real thing.
    pub fn command(&self) -> Vec<String> {
        let mut cmd: Vec<String> = vec!["python3".into()];
        match self.config.bootstrap {
            BootstrapMode::Inprocess => {
                cmd.extend(["-u".into(), "-c".into(), BOOTSTRAP.into()]);
                // Checked module names only (`config::images`): the bootstrap imports them.
                if !self.preload.is_empty() {
                    cmd.extend(["preload".into(), self.preload.join(",")]);
                }
            }
            BootstrapMode::Exec => cmd.extend([
                "-I".into(),
                "-S".into(),
                "-c".into(),
                BOOTSTRAP.into(),
                "exec".into(),
            ]),
        }
        cmd
    }

    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
        ])
    }

    /// The create body. The container starts the bootstrap, which blocks until the
    /// server sends the script over stdin: this is what lets a container be created,
    /// attached and started before its script is known.
    pub fn create_body(&self) -> ContainerCreateBody {
        let c = &self.config;
        ContainerCreateBody {
            image: Some(c.image.clone()),
            // Reset any ENTRYPOINT of a registry image such as python:3.12-slim.
            entrypoint: Some(vec![]),
            cmd: Some(self.command()),
            env: Some(
                [
                    "PATH=/usr/local/bin:/usr/bin:/bin".into(),
                    "HOME=/tmp".into(),
                    "LANG=C.UTF-8".into(),
                    "PYTHONDONTWRITEBYTECODE=1".into(),
                ]
                .into_iter()
                .chain(thread_pools(c.cpus))
                .collect(),
            ),
            user: Some(c.user.clone()),
            working_dir: Some("/tmp".into()),
            hostname: Some("sandbox".into()),
            labels: Some(self.labels()),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            // With stdin_once, closing our end of the attach gives the script EOF.
            stdin_once: Some(true),
            tty: Some(false),
            // Leaves only `lo`, and is twice as fast to set up as `NetworkMode: none`.
            network_disabled: Some(!c.network),
            host_config: Some(HostConfig {
                memory: Some(c.memory as i64),
                memory_swap: Some(c.memory as i64),
                nano_cpus: Some((c.cpus * 1e9) as i64),
                pids_limit: Some(c.pids_limit),
                readonly_rootfs: Some(c.read_only),
                mounts: Some(vec![self.tmp_mount()]),
                // Docker's default /dev/shm is 64 MiB outside --tmp-size; multiprocessing
                // needs a little of it, so it is kept, but small.
                shm_size: Some(SHM_SIZE.min(c.tmp_size) as i64),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: (!c.cap_add.is_empty()).then(|| c.cap_add.clone()),
                security_opt: c
                    .no_new_privileges
                    .then(|| vec!["no-new-privileges".into()]),
                init: Some(c.init),
                ulimits: Some(vec![
                    ResourcesUlimits {
                        name: Some("nofile".into()),
                        soft: Some(1024),
                        hard: Some(1024),
                    },
                    ResourcesUlimits {
                        name: Some("core".into()),
                        soft: Some(0),
                        hard: Some(0),
                    },
                ]),
                log_config: Some(HostConfigLogConfig {
                    typ: Some(c.log_driver.clone()),
                    config: None,
                }),
                runtime: c.runtime.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

impl SandboxSpec {
    /// The script's /tmp: a tmpfs, `--tmp-size` big, charged to the container's memory
    /// cgroup, noexec. Made as an anonymous volume of the `local` driver rather than with
    /// `HostConfig.Tmpfs`: Docker's archive API (`Engine::fetch`) reads a volume, but not a
    /// tmpfs mounted inside the container's own mount namespace ("Could not find the
    /// file" on Engine 20.10), and that API is how big files come back at `docker cp`'s
    /// speed. Anonymous, so the container's removal (`v=true`) removes it; labelled like
    /// the container, so the start-up sweep finds one a crash left behind. `no_copy`:
    /// nothing of the image's /tmp is copied in.
    fn tmp_mount(&self) -> Mount {
        let options = HashMap::from([
            ("type".to_string(), "tmpfs".to_string()),
            ("device".to_string(), "tmpfs".to_string()),
            (
                "o".to_string(),
                format!(
                    "size={},mode=1777,nosuid,nodev,noexec",
                    self.config.tmp_size
                ),
            ),
        ]);
        Mount {
            target: Some("/tmp".into()),
            typ: Some(MountType::VOLUME),
            read_only: Some(false),
            volume_options: Some(MountVolumeOptions {
                no_copy: Some(true),
                labels: Some(self.labels()),
                driver_config: Some(MountVolumeOptionsDriverConfig {
                    name: Some("local".into()),
                    options: Some(options),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The uid the script runs as, when `--user` gives it by number (the default does): a file
/// fetched out of the container (`Engine::fetch`) must be owned by it. The archive API
/// reads as root, and follows symlinks in the path's directories (inside the container's
/// root): without this check, a bootstrap the script had subverted could name
/// `e/shadow`, with `e` a link to `/etc`, and be sent a file the script cannot read.
pub fn script_uid(user: &str) -> Option<u32> {
    user.split(':').next()?.parse().ok()
}

/// The file name the script is written to: the client's name when it is a plain,
/// harmless file name, so that `sys.argv[0]` and tracebacks read as they would locally.
/// Not a hidden file, and not one starting with `-`, which `python3 -u NAME` would read
/// as an option.
pub fn script_name(requested: Option<&str>) -> String {
    match requested {
        Some(n)
            if !n.is_empty()
                && n.len() <= 64
                && !n.starts_with(['.', '-'])
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) =>
        {
            n.to_string()
        }
        _ => DEFAULT_SCRIPT_NAME.to_string(),
    }
}

/// Numerical libraries size their thread pools by the host's CPUs, not by the container's
/// CPU quota: with `--cpus 1` on this two-core host, numpy's OpenBLAS started two workers
/// that spin on `sched_yield` between jobs, and the CFS quota then throttled the script's
/// own thread (a matplotlib plot's timings swung by 2-3x). So the pools get as many threads
/// as the quota has whole CPUs (at least one). (`cpus` is above 0 by config; a 0, no
/// quota to Docker, would leave the pools alone.)
fn thread_pools(cpus: f64) -> Vec<String> {
    if cpus <= 0.0 {
        return Vec::new();
    }
    let n = (cpus.floor() as u64).max(1);
    ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"]
        .iter()
        .map(|k| format!("{k}={n}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SandboxSpec {
        SandboxSpec::new(
            SandboxConfig {
                image: "img".into(),
                memory: 256 << 20,
                tcp_memory: 16 << 20,
                pids_limit: 64,
                cpus: 1.0,
                tmp_size: 64 << 20,
                user: "65534:65534".into(),
                network: false,
                read_only: true,
                runtime: None,
                bootstrap: BootstrapMode::Inprocess,
                cap_add: Vec::new(),
                no_new_privileges: true,
                init: true,
                log_driver: "none".into(),
            },
            "test".into(),
        )
    }

    #[test]
    fn thread_pools_follow_the_cpu_quota() {
        assert_eq!(
            thread_pools(1.0),
            ["OPENBLAS_NUM_THREADS=1", "OMP_NUM_THREADS=1"]
        );
        assert_eq!(thread_pools(2.5)[0], "OPENBLAS_NUM_THREADS=2");
        assert_eq!(thread_pools(0.5)[1], "OMP_NUM_THREADS=1");
        assert!(thread_pools(0.0).is_empty(), "no quota: the host's CPUs");
        let env = spec().create_body().env.unwrap();
        assert!(
            env.contains(&"OPENBLAS_NUM_THREADS=1".to_string()),
            "{env:?}"
        );
    }

    #[test]
    fn create_body_isolates_by_default() {
        let body = spec().create_body();
        let host = body.host_config.as_ref().unwrap();
        assert_eq!(body.network_disabled, Some(true));
        assert_eq!(host.memory, host.memory_swap, "no swap on top of memory");
        assert_eq!(host.cap_drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.init, Some(true));
        assert_eq!(
            host.log_config.as_ref().unwrap().typ.as_deref(),
            Some("none")
        );
        assert_eq!(body.stdin_once, Some(true));
        assert_eq!(body.user.as_deref(), Some("65534:65534"));
        assert_eq!(body.labels.unwrap()[LABEL_INSTANCE], "test");
        assert_eq!(
            host.tmpfs, None,
            "/tmp is a tmpfs volume, which the archive API reads"
        );
        let tmp = &host.mounts.as_ref().unwrap()[0];
        assert_eq!(tmp.target.as_deref(), Some("/tmp"));
        assert_eq!(tmp.typ, Some(MountType::VOLUME));
        assert_eq!(tmp.source, None, "anonymous: removed with the container");
        let vol = tmp.volume_options.as_ref().unwrap();
        assert_eq!(vol.labels.as_ref().unwrap()[LABEL_INSTANCE], "test");
        let driver = vol
            .driver_config
            .as_ref()
            .unwrap()
            .options
            .as_ref()
            .unwrap();
        assert_eq!(driver["type"], "tmpfs");
        assert_eq!(
            driver["o"],
            format!("size={},mode=1777,nosuid,nodev,noexec", 64 << 20)
        );
        assert_eq!(host.shm_size, Some(16 << 20));
        assert_eq!(host.cap_add, None);
        assert_eq!(
            host.security_opt.as_deref(),
            Some(&["no-new-privileges".to_string()][..])
        );
    }

    #[test]
    fn preloading_is_an_argument_of_the_in_process_bootstrap() {
        let image = ImageConfig {
            name: "science".into(),
            tag: "sci:1".into(),
            warm: 1,
            preload: vec!["pandas".into(), "matplotlib.pyplot".into()],
        };
        let s = SandboxSpec::for_image(&spec().config, "test", &image);
        assert_eq!(s.create_body().image.as_deref(), Some("sci:1"));
        assert_eq!(
            s.command()[4..],
            [
                "preload".to_string(),
                "pandas,matplotlib.pyplot".to_string()
            ]
        );
        assert_eq!(spec().command().len(), 4, "nothing to preload, no argument");
    }

    #[test]
    fn the_script_uid_is_known_only_when_given_by_number() {
        assert_eq!(script_uid("65534:65534"), Some(65534));
        assert_eq!(script_uid("1000"), Some(1000));
        assert_eq!(script_uid("nobody"), None);
        assert_eq!(script_uid("nobody:nogroup"), None);
        assert_eq!(script_uid(""), None);
    }

    #[test]
    fn script_names_are_sanitised() {
        assert_eq!(script_name(Some("hello.py")), "hello.py");
        assert_eq!(script_name(Some("../etc/passwd")), DEFAULT_SCRIPT_NAME);
        assert_eq!(script_name(Some(".bashrc")), DEFAULT_SCRIPT_NAME);
        assert_eq!(script_name(Some("-c")), DEFAULT_SCRIPT_NAME);
        assert_eq!(script_name(Some("my-script.py")), "my-script.py");
        assert_eq!(script_name(Some("a b.py")), DEFAULT_SCRIPT_NAME);
        assert_eq!(script_name(None), DEFAULT_SCRIPT_NAME);
    }
}
