//! The Docker Engine's side, asked with the `docker` CLI: the containers a daemon's
//! instance owns, and whether one given container still exists.

use std::process::Command;
use std::time::Duration;

use super::processes::wait_until;

/// IDs of the containers (any state) that carry `instance`'s label.
/// The instance's sandbox containers (its lease container, which every running daemon
/// holds on its engine, left out).
pub fn containers_of(instance: &str) -> Vec<String> {
    listed(instance)
        .into_iter()
        .filter(|(_, lease)| lease.is_empty())
        .map(|(id, _)| id)
        .collect()
}

/// Every container of the instance, its lease included: what a clean-up removes.
pub fn all_containers_of(instance: &str) -> Vec<String> {
    listed(instance).into_iter().map(|(id, _)| id).collect()
}

fn listed(instance: &str) -> Vec<(String, String)> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--no-trunc", "--format"])
        .arg("{{.ID}} {{.Label \"pyexec.lease\"}}")
        .arg("--filter")
        .arg(format!("label=pyexec.instance={instance}"))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (id, lease) = l.split_once(' ').unwrap_or((l, ""));
            (id.to_string(), lease.trim().to_string())
        })
        .collect()
}

/// Removes the instance's containers with their volumes (`-v`: each sandbox's /tmp is
/// one), then any volume of the instance still left.
pub fn remove_containers_of(instance: &str) {
    let ids = all_containers_of(instance);
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&ids)
            .output();
    }
    let volumes = volumes_of(instance);
    if !volumes.is_empty() {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f"])
            .args(&volumes)
            .output();
    }
}

/// Names of the volumes that carry `instance`'s label: a sandbox's /tmp (a tmpfs volume,
/// `SandboxSpec::tmp_mount`) while its container exists; none once every one is removed.
pub fn volumes_of(instance: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["volume", "ls", "-q", "--filter"])
        .arg(format!("label=pyexec.instance={instance}"))
        .output()
        .expect("docker volume ls");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Python that prints `cid <container id>` as the script's first line: the ID as Docker
/// knows it, read from the container's own mount table, so that a test can check that
/// this very container is gone (a warm pool keeps others around).
pub const PRINT_CID: &str = "import re as _re\nprint('cid', _re.search(r'/containers/([0-9a-f]{64})/', open('/proc/self/mountinfo').read()).group(1), flush=True)\n";

/// The container ID from output that starts with `PRINT_CID`'s line.
pub fn cid_of(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let line = text.lines().next().unwrap_or_default();
    let id = line
        .strip_prefix("cid ")
        .unwrap_or_else(|| panic!("no container ID line in {:?}", &text[..text.len().min(200)]));
    assert_eq!(id.len(), 64, "container ID {id:?}");
    id.to_string()
}

/// Whether a container with this full ID is listed by Docker (in any state).
pub fn container_listed(id: &str) -> bool {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("id={id}"))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == id)
}

/// Waits until the container `id` no longer exists.
pub fn assert_container_gone(id: &str, timeout: Duration) {
    assert!(
        wait_until(timeout, || !container_listed(id)),
        "container {id} still exists {timeout:?} later"
    );
}
