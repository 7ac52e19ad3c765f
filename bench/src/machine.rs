//! What the numbers were measured on: date, CPUs, memory, kernel, Docker, image, source.
//! Every field falls back to "unknown" rather than failing the run.

use std::process::Command;

use bollard::Docker;

#[derive(Debug, Clone)]
pub struct Machine {
    pub date: String,
    pub nproc: usize,
    pub cpu: String,
    pub memory: String,
    pub kernel: String,
    /// 1, 5 and 15 minute load averages when the run started: a busy machine skews
    /// every figure.
    pub load: String,
    pub docker: String,
    pub image: String,
    pub source: String,
}

impl Machine {
    pub async fn describe(docker: &Docker, image: &str) -> Machine {
        let docker_version = match docker.version().await {
            Ok(v) => format!(
                "Engine {} (API {}), {}",
                v.version.as_deref().unwrap_or("?"),
                v.api_version.as_deref().unwrap_or("?"),
                storage_driver(docker).await
            ),
            Err(e) => format!("unknown ({e})"),
        };
        let image_desc = match docker.inspect_image(image).await {
            Ok(i) => format!(
                "{image} ({}, {} MB)",
                i.id.as_deref()
                    .map(|id| id.trim_start_matches("sha256:").chars().take(12).collect())
                    .unwrap_or_else(|| "?".to_string()),
                i.size.unwrap_or(0) / 1_000_000
            ),
            Err(e) => format!("{image} (cannot inspect: {e})"),
        };
        Machine {
            date: now_utc(),
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu: cpu_model(),
            memory: mem_total(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            load: std::fs::read_to_string("/proc/loadavg")
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|_| "unknown".into()),
            docker: docker_version,
            image: image_desc,
            source: source_revision(),
        }
    }
}

async fn storage_driver(docker: &Docker) -> String {
    match docker.info().await {
        Ok(i) => format!(
            "storage driver {}, cgroup {}",
            i.driver.as_deref().unwrap_or("?"),
            i.cgroup_version
                .map_or_else(|| "?".to_string(), |v| format!("v{v}"))
        ),
        Err(_) => "info unavailable".into(),
    }
}

fn now_utc() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| format!("({})", m.trim()))
        })
        .unwrap_or_default()
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1} GiB", kib as f64 / (1u64 << 20) as f64))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The git revision of the source tree the bench was built from, marked when dirty.
fn source_revision() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            format!(
                "{rev}{}",
                if dirty {
                    " (with uncommitted changes)"
                } else {
                    ""
                }
            )
        }
        None => "unknown revision".into(),
    }
}
