//! Loopback TCP socket buffers and `--memory` (issue 9, item 3): on cgroup v1 they are not
//! charged to the container's memory cgroup, so pyexecd bounds them itself with
//! `--tcp-memory` (`src/tcp_memory.rs`). These tests run a script that fills loopback TCP
//! pairs it never reads, against the real daemon and Engine.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::path::Path;
use std::process::Command;

use common::{daemon::*, processes::*, PYEXECD};

const MIB: u64 = 1 << 20;

/// On cgroup v2, socket memory is charged to the memory cgroup and pyexecd writes nothing;
/// what these tests check (the v1 file, the write) does not exist there.
fn skip_on_cgroup_v2() -> bool {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if v2 {
        eprintln!(
            "skipped: this host uses cgroup v2 (/sys/fs/cgroup/cgroup.controllers exists), \
             where socket buffers are charged to --memory and pyexecd writes no TCP limit"
        );
    }
    v2
}

/// The host's TCP memory in bytes (`/proc/net/sockstat`, `TCP: ... mem N`, in pages).
fn host_tcp_mem() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap();
    tcp_mem_pages(&text) * page_size()
}

fn tcp_mem_pages(sockstat: &str) -> u64 {
    let line = sockstat
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .expect("a TCP line in /proc/net/sockstat");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let at = fields.iter().position(|f| *f == "mem").expect("TCP mem");
    fields[at + 1].parse().unwrap()
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

/// Opens 60 loopback TCP pairs, sends into each without blocking until the kernel says
/// no, and never reads. Prints one line of `key=value` figures: its own memory cgroup's TCP
/// limit and peak usage as it reads them (the container's cgroupfs shows its own cgroup),
/// the bytes queued, and the host's TCP memory (global, in pages) before and at the peak.
const FILL_LOOPBACK: &str = r#"
import socket

def cg(name):
    try:
        return open("/sys/fs/cgroup/memory/" + name).read().strip()
    except OSError as e:
        return "error:" + (e.strerror or str(e)).replace(" ", "_")

def host_tcp_pages():
    for line in open("/proc/net/sockstat"):
        if line.startswith("TCP:"):
            f = line.split()
            return int(f[f.index("mem") + 1])

before = host_tcp_pages()
limit = cg("memory.kmem.tcp.limit_in_bytes")
pairs, queued, refused = [], 0, 0
chunk = b"x" * 65536
for _ in range(60):
    try:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
        listener.close()
    except OSError:
        refused += 1
        continue
    client.setblocking(False)
    pairs.append((client, server))
    while True:
        try:
            queued += client.send(chunk)
        except OSError:
            break
print(
    "limit=%s queued=%d pairs=%d refused=%d max_usage=%s host_before=%d host_peak=%d"
    % (limit, queued, len(pairs), refused, cg("memory.kmem.tcp.max_usage_in_bytes"),
       before, host_tcp_pages()),
    flush=True,
)
"#;

/// The `key=value` figures of the script's line.
fn figure(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .to_string()
}

#[test]
fn loopback_tcp_buffers_are_bounded_by_tcp_memory() {
    if skip_on_cgroup_v2() {
        return;
    }
    let limit = 16 * MIB;
    // A warm spare and a cold start: both are bounded before they get their script.
    for warm in ["1", "0"] {
        let d = Daemon::start(&["--memory", "64m", "--tcp-memory", "16m", "--warm", warm]);
        assert!(
            d.wait_log(
                "TCP socket memory: bounded to 16 MiB per container",
                std::time::Duration::from_secs(5)
            ),
            "the start-up log says how TCP memory is bounded:\n{}",
            d.log()
        );
        let host_before = host_tcp_mem();
        let out = d.run(FILL_LOOPBACK, &[], b"");
        let host_after = host_tcp_mem();
        assert_eq!(out.status.code(), Some(0), "{}", stderr_str(&out));
        let line = stdout_str(&out);
        let queued: u64 = figure(&line, "queued").parse().unwrap();
        let pages = page_size();
        let in_pages = |key| figure(&line, key).parse::<u64>().unwrap() * pages / MIB;
        eprintln!(
            "--warm {warm}: queued {:.1} MiB into {} loopback pairs ({} refused); \
             the container's kmem.tcp max usage {} bytes; host TCP memory (sockstat, \
             shared with whatever else runs) {} MiB before the run, {} MiB when the script \
             started, {} MiB at its peak, {} MiB after the run",
            queued as f64 / MIB as f64,
            figure(&line, "pairs"),
            figure(&line, "refused"),
            figure(&line, "max_usage"),
            host_before / MIB,
            in_pages("host_before"),
            in_pages("host_peak"),
            host_after / MIB,
        );
        assert_eq!(
            figure(&line, "limit"),
            limit.to_string(),
            "the container's own memory.kmem.tcp.limit_in_bytes"
        );
        // Unbounded, the same script queued 224 MiB here. The kernel lets each socket
        // have a minimum even under pressure, hence the slack.
        assert!(
            queued < 2 * limit + 8 * MIB,
            "queued {queued} bytes with a {limit}-byte TCP memory limit ({line})"
        );
        d.stop();
    }
}

/// Fail closed: a container whose limit does not take runs no script. The write is made
/// to fail for real with a value the kernel cannot hold (2^63 bytes, above its page
/// counter's maximum): the kernel clamps it, the read-back differs, and that is the same
/// path as any failed write (a missing cgroup, a permission error).
#[test]
fn a_container_whose_limit_does_not_take_runs_no_script() {
    if skip_on_cgroup_v2() {
        return;
    }
    let d = Daemon::start(&["--warm", "0", "--tcp-memory", "8589934592g"]);
    let out = d.run("print('the script ran')\n", &[], b"");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        !stdout_str(&out).contains("the script ran"),
        "{}",
        stdout_str(&out)
    );
    assert!(
        stderr_str(&out).contains("cannot bound the container's TCP socket memory"),
        "the client is told why: {}",
        stderr_str(&out)
    );
    assert!(
        wait_until(std::time::Duration::from_secs(5), || {
            d.log().lines().any(|l| {
                l.contains("WARN")
                    && l.contains("/memory.kmem.tcp.limit_in_bytes")
                    && l.contains("wrote 9223372036854775808 but it reads")
            })
        }),
        "a warning names the path and the error:\n{}",
        d.log()
    );
    d.stop(); // and checks that no container is left
}

/// `check-config` says how TCP memory is bounded, and a bad value names its origin.
#[test]
fn check_config_reports_the_tcp_memory_guard() {
    let dir = tempfile::tempdir().unwrap();
    let check = |args: &[&str], envs: &[(&str, &str)]| {
        let mut cmd = Command::new(PYEXECD);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PYEXECD_") {
                cmd.env_remove(name);
            }
        }
        cmd.env_remove("DOCKER_HOST")
            .arg("check-config")
            .args(args)
            .envs(envs.iter().copied())
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = check(&[], &[]);
    assert!(out.status.success(), "{}", stderr_str(&out));
    let text = stdout_str(&out);
    assert!(
        text.lines()
            .any(|l| l.starts_with("tcp_memory ") && l.contains("\"16m\"")),
        "{text}"
    );
    // Bounded here (root, cgroup v1 or v2); a warning where this process cannot write the
    // containers' cgroups (not root, cgroupfs read-only).
    assert!(
        text.contains("# TCP socket memory: bounded")
            || text.contains("# warning: TCP socket memory: NOT bounded"),
        "{text}"
    );

    let out = check(&["--tcp-memory", "0"], &[]);
    assert!(out.status.success(), "{}", stderr_str(&out));
    assert!(
        stdout_str(&out).contains("# warning: TCP socket memory: NOT bounded: tcp_memory is 0"),
        "{}",
        stdout_str(&out)
    );

    let out = check(&[], &[("DOCKER_HOST", "tcp://192.0.2.1:2376")]);
    assert!(out.status.success(), "{}", stderr_str(&out));
    assert!(
        stdout_str(&out).contains("# warning: TCP socket memory: NOT bounded: the Docker Engine"),
        "{}",
        stdout_str(&out)
    );

    let out = check(&[], &[("PYEXECD_TCP_MEMORY", "64k")]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr_str(&out).contains("PYEXECD_TCP_MEMORY: must be at least 1m"),
        "{}",
        stderr_str(&out)
    );
}
