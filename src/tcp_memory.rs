//! Owns the bound on each sandbox's kernel TCP socket buffer memory: `TcpMemGuard`,
//! decided once at start-up (`detect`) and applied to every container after it starts and
//! before it is handed a script (`apply`).
//!
//! Why it exists (issue 9, item 3): on cgroup v1, TCP socket buffers are not charged to a
//! container's memory cgroup (pipes and AF_UNIX sockets are). A script limited to
//! `--memory 64m` queued 640 MiB of host kernel memory into 60 loopback TCP pairs it never
//! read (224 MiB with `tests/tcp_memory.rs`'s script), and 200 pairs reached the host's `net.ipv4.tcp_mem` hard limit, slowing every
//! other TCP user on the host. Docker's `HostConfig.KernelMemoryTCP` is accepted by Engine
//! 20.10 but not applied (the container's `memory.kmem.tcp.limit_in_bytes` stays
//! unlimited), so pyexecd writes that file itself, on the Engine's host, into the
//! container's memory cgroup. The bootstrap is then waiting for its script on stdin and
//! has opened no socket, so every socket the script makes is charged and bounded: past the
//! limit, sends fail with `EAGAIN` (or block) instead of growing host memory. The bound is
//! not exact: each connection still gets about 70 KiB past it (docs/security.md §6.9).
//!
//! On cgroup v2, socket memory is charged to the container's `memory.max` already, so
//! `--memory` bounds it and nothing is written.
//!
//! Fail closed: when the guard is `CgroupV1` and the write fails for a container, `apply`
//! returns an error and the container is treated as a failed launch: it never gets a
//! script.

use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use bollard::Docker;

use crate::config::format_size;

/// Where the cgroup hierarchies are mounted on a standard host.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// The cgroup v1 file that bounds a memory cgroup's TCP socket buffers.
pub const LIMIT_FILE: &str = "memory.kmem.tcp.limit_in_bytes";

/// How each sandbox's TCP socket buffer memory is bounded on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpMemGuard {
    /// cgroup v1: `limit` bytes are written into each container's `LIMIT_FILE`, in its
    /// memory cgroup under `root` (the memory hierarchy's mount point).
    CgroupV1 { root: PathBuf, limit: u64 },
    /// cgroup v2: socket buffers are charged to the container's memory limit already.
    ChargedToMemory,
    /// `--tcp-memory 0`: the operator turned the bound off.
    Disabled,
    /// Nothing this process can write bounds it; why. Containers still run.
    Unavailable(String),
}

/// A container whose TCP memory could not be bounded; it must not run a script.
#[derive(Debug, thiserror::Error)]
#[error("cannot bound the container's TCP socket memory: {path}: {reason}")]
pub struct TcpMemError {
    /// The file written, or what was searched for the container's memory cgroup.
    pub path: String,
    pub reason: String,
}

impl TcpMemGuard {
    /// Decides from this process's view of the host, without contacting the Engine:
    /// `limit` is `--tcp-memory` and the Engine is the one `DOCKER_HOST` names (the local
    /// socket when unset).
    pub fn detect(limit: u64) -> TcpMemGuard {
        let endpoint = std::env::var("DOCKER_HOST").unwrap_or_default();
        Self::detect_in(limit, &endpoint, Path::new(CGROUP_MOUNT))
    }

    /// `detect` with the Engine's endpoint (empty: the local default) and the cgroup mount
    /// point given, for tests.
    // geteuid(2) (for the message only) has no safe wrapper in std.
    #[allow(unsafe_code)]
    pub fn detect_in(limit: u64, endpoint: &str, cgroup_mount: &Path) -> TcpMemGuard {
        use TcpMemGuard::*;
        if limit == 0 {
            return Disabled;
        }
        if !(endpoint.is_empty() || endpoint.starts_with("unix://")) {
            return Unavailable(format!(
                "the Docker Engine is not on this host's local socket (DOCKER_HOST={endpoint}), \
                 so its containers' cgroups are out of reach; bound it on the Engine's host"
            ));
        }
        if let Ok(controllers) = std::fs::read_to_string(cgroup_mount.join("cgroup.controllers")) {
            return if controllers.split_whitespace().any(|c| c == "memory") {
                ChargedToMemory
            } else {
                Unavailable(format!(
                    "cgroup v2 without the memory controller ({} lists: {})",
                    cgroup_mount.join("cgroup.controllers").display(),
                    controllers.trim()
                ))
            };
        }
        let root = cgroup_mount.join("memory");
        let file = root.join(LIMIT_FILE);
        if !file.exists() {
            return Unavailable(format!(
                "{} does not exist: no cgroup v1 memory hierarchy there, or a kernel without \
                 kernel-memory accounting",
                file.display()
            ));
        }
        if read_only(&root) {
            return Unavailable(format!(
                "{} is mounted read-only: this process does not see the host's cgroups \
                 (pyexecd in a container, or systemd's ProtectControlGroups)",
                root.display()
            ));
        }
        if !writable(&file) {
            return Unavailable(format!(
                "{} is not writable by this process (uid {}): only root, or CAP_DAC_OVERRIDE, \
                 may write containers' cgroup files",
                file.display(),
                // SAFETY: geteuid has no preconditions and cannot fail.
                unsafe { libc::geteuid() }
            ));
        }
        CgroupV1 { root, limit }
    }

    /// True when each container's TCP memory is bounded (by its own limit or its memory's).
    pub fn is_bounded(&self) -> bool {
        matches!(
            self,
            TcpMemGuard::CgroupV1 { .. } | TcpMemGuard::ChargedToMemory
        )
    }

    /// Bounds one started container, before it is reported ready or given its script.
    /// Only `CgroupV1` does anything; an error there means the container must not run.
    pub async fn apply(&self, docker: &Docker, id: &str) -> Result<(), TcpMemError> {
        let TcpMemGuard::CgroupV1 { root, limit } = self else {
            return Ok(());
        };
        // cgroupfs is in memory: these synchronous stats, reads and writes do not block.
        let dir = match find_by_id(root, id) {
            Some(dir) => dir,
            None => find_by_pid(docker, root, id).await?,
        };
        write_limit(&dir, *limit)?;
        tracing::debug!(cgroup = %dir.display(), limit = *limit, "bounded TCP socket memory");
        Ok(())
    }
}

impl fmt::Display for TcpMemGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TcpMemGuard::CgroupV1 { root, limit } => write!(
                f,
                "bounded to {} per container (cgroup v1: {LIMIT_FILE} of each container's \
                 memory cgroup under {})",
                format_size(*limit),
                root.display()
            ),
            TcpMemGuard::ChargedToMemory => write!(
                f,
                "bounded by each container's memory limit (cgroup v2 charges socket buffers \
                 to it; tcp_memory is not used)"
            ),
            TcpMemGuard::Disabled => write!(
                f,
                "NOT bounded: tcp_memory is 0; a script can queue host kernel memory into \
                 loopback TCP sockets beyond its memory limit"
            ),
            TcpMemGuard::Unavailable(why) => write!(
                f,
                "NOT bounded: {why}; a script can queue host kernel memory into loopback TCP \
                 sockets beyond its memory limit"
            ),
        }
    }
}

// statvfs(3) has no safe wrapper in std.
#[allow(unsafe_code)]
fn read_only(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path and a zeroed struct for statvfs to fill.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        libc::statvfs(c.as_ptr(), &mut st) == 0 && st.f_flag & libc::ST_RDONLY != 0
    }
}

// access(2) has no safe wrapper in std.
#[allow(unsafe_code)]
fn writable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// The container's memory cgroup where Docker puts it by default: `docker/<id>` with the
/// cgroupfs driver, `system.slice/docker-<id>.scope` with the systemd driver. Both names
/// carry the full 64-character ID, so a directory found here is this container's and no
/// other's. This costs two `stat`s and no Engine request, so it is tried first.
pub fn find_by_id(root: &Path, id: &str) -> Option<PathBuf> {
    [
        root.join("docker").join(id),
        root.join("system.slice").join(format!("docker-{id}.scope")),
    ]
    .into_iter()
    .find(|dir| dir.join(LIMIT_FILE).is_file())
}

/// The memory cgroup of the container's init process, as `/proc/PID/cgroup` names it: this
/// also finds containers under a `--cgroup-parent` the Engine was configured with. The path
/// must end in a component naming the container's ID, so a PID from another PID namespace
/// (or reused since) cannot send the write to some other cgroup.
async fn find_by_pid(docker: &Docker, root: &Path, id: &str) -> Result<PathBuf, TcpMemError> {
    let not_found = |reason: String| TcpMemError {
        path: format!(
            "{} or {}",
            root.join("docker").join(id).display(),
            root.join("system.slice")
                .join(format!("docker-{id}.scope"))
                .display()
        ),
        reason,
    };
    let pid = docker
        .inspect_container(id, None)
        .await
        .map_err(|e| {
            not_found(format!(
                "neither exists, and inspecting the container failed: {e}"
            ))
        })?
        .state
        .and_then(|s| s.pid)
        .filter(|pid| *pid > 0)
        .ok_or_else(|| not_found("neither exists, and the container has no process".into()))?;
    let proc_file = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&proc_file).map_err(|e| TcpMemError {
        path: proc_file.clone(),
        reason: format!("no memory cgroup in the default places, and {e}"),
    })?;
    let dir = memory_cgroup(&text, id)
        .map(|rel| root.join(rel.trim_start_matches('/')))
        .filter(|dir| dir.join(LIMIT_FILE).is_file())
        .ok_or_else(|| TcpMemError {
            path: proc_file,
            reason: format!(
                "names no memory cgroup of container {id} under {}",
                root.display()
            ),
        })?;
    Ok(dir)
}

/// The memory hierarchy's path in a `/proc/PID/cgroup` text, when its last component names
/// the container `id` (`…/<id>` or `…/docker-<id>.scope`).
pub fn memory_cgroup<'a>(proc_cgroup: &'a str, id: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if !controllers.split(',').any(|c| c == "memory") {
            return None;
        }
        let last = path.rsplit('/').next()?;
        (last == id || last == format!("docker-{id}.scope")).then_some(path)
    })
}

/// Writes the limit and reads it back: the kernel keeps whole pages, so the value read is
/// `limit` rounded down to a page, and anything else means the write did not take.
pub fn write_limit(dir: &Path, limit: u64) -> Result<(), TcpMemError> {
    let file = dir.join(LIMIT_FILE);
    let err = |reason: String| TcpMemError {
        path: file.display().to_string(),
        reason,
    };
    std::fs::write(&file, limit.to_string()).map_err(|e| err(format!("write failed: {e}")))?;
    let read = std::fs::read_to_string(&file).map_err(|e| err(format!("read-back failed: {e}")))?;
    let page = page_size();
    let expected = limit / page * page;
    match read.trim().parse::<u64>() {
        Ok(n) if n == expected || n == limit => Ok(()),
        _ => Err(err(format!("wrote {limit} but it reads {:?}", read.trim()))),
    }
}

// sysconf(3) has no safe wrapper in std.
#[allow(unsafe_code)]
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "2031ed4803037a8a1d413bf4bf4841b3cbd2cf4c8bce9a865c900b4e145f6c6a";

    fn v1_mount() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let memory = dir.path().join("memory");
        std::fs::create_dir_all(&memory).unwrap();
        std::fs::write(memory.join(LIMIT_FILE), "9223372036854771712\n").unwrap();
        dir
    }

    #[test]
    fn detection_follows_the_host() {
        let v1 = v1_mount();
        assert_eq!(
            TcpMemGuard::detect_in(16 << 20, "", v1.path()),
            TcpMemGuard::CgroupV1 {
                root: v1.path().join("memory"),
                limit: 16 << 20
            }
        );
        assert!(matches!(
            TcpMemGuard::detect_in(16 << 20, "unix:///var/run/docker.sock", v1.path()),
            TcpMemGuard::CgroupV1 { .. }
        ));
        assert_eq!(
            TcpMemGuard::detect_in(0, "", v1.path()),
            TcpMemGuard::Disabled
        );
        let remote = TcpMemGuard::detect_in(16 << 20, "tcp://10.0.0.1:2376", v1.path());
        assert!(
            matches!(&remote, TcpMemGuard::Unavailable(why) if why.contains("DOCKER_HOST=tcp://10.0.0.1:2376")),
            "{remote:?}"
        );
        assert!(!remote.is_bounded());

        let none = tempfile::tempdir().unwrap();
        let missing = TcpMemGuard::detect_in(16 << 20, "", none.path());
        assert!(
            matches!(&missing, TcpMemGuard::Unavailable(why) if why.contains(LIMIT_FILE)),
            "{missing:?}"
        );

        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        let guard = TcpMemGuard::detect_in(16 << 20, "", v2.path());
        assert_eq!(guard, TcpMemGuard::ChargedToMemory);
        assert!(guard.is_bounded() && guard.to_string().contains("cgroup v2"));
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu pids\n").unwrap();
        assert!(matches!(
            TcpMemGuard::detect_in(16 << 20, "", v2.path()),
            TcpMemGuard::Unavailable(_)
        ));
    }

    #[test]
    fn the_memory_cgroup_is_found_by_id_under_either_driver() {
        let v1 = v1_mount();
        let root = v1.path().join("memory");
        assert_eq!(find_by_id(&root, ID), None);
        for dir in [
            root.join("docker").join(ID),
            root.join("system.slice").join(format!("docker-{ID}.scope")),
        ] {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(LIMIT_FILE), "0").unwrap();
            assert_eq!(find_by_id(&root, ID).as_ref(), Some(&dir));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn proc_cgroup_names_the_container_or_is_not_trusted() {
        let cgroupfs = format!("5:devices:/docker/{ID}\n4:memory:/docker/{ID}\n0::/docker/{ID}\n");
        assert_eq!(
            memory_cgroup(&cgroupfs, ID),
            Some(format!("/docker/{ID}").as_str())
        );
        let parent = format!("4:memory:/pyexec/{ID}\n");
        assert_eq!(
            memory_cgroup(&parent, ID),
            Some(format!("/pyexec/{ID}").as_str())
        );
        let systemd = format!("7:cpu,memory:/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            memory_cgroup(&systemd, ID),
            Some(format!("/system.slice/docker-{ID}.scope").as_str())
        );
        // Another process (another PID namespace, or a reused PID): never trusted.
        assert_eq!(memory_cgroup("4:memory:/user.slice\n", ID), None);
        assert_eq!(
            memory_cgroup(&format!("4:memory:/docker/{ID}x\n"), ID),
            None
        );
        assert_eq!(memory_cgroup(&format!("3:cpu:/docker/{ID}\n"), ID), None);
    }

    #[test]
    fn the_limit_is_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LIMIT_FILE), "").unwrap();
        write_limit(dir.path(), 16 << 20).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LIMIT_FILE)).unwrap(),
            "16777216"
        );
        let err = write_limit(&dir.path().join("gone"), 16 << 20).unwrap_err();
        assert!(
            err.to_string()
                .contains("gone/memory.kmem.tcp.limit_in_bytes: write failed"),
            "{err}"
        );
    }
}
