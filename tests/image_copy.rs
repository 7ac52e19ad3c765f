//! Copying the sandbox image from the system engine to a second, empty Docker Engine
//! started here (a `dockerd` in a network namespace of its own): the copy lands with the
//! same ID, a second `ensure_on` sends nothing, a missing image is named, a dropped copy
//! tags nothing and leaks no connection, and a target killed mid-way is named as such.
//! Also measures the copy against `docker save | docker load`.
//!
//! Needs root, `dockerd`, `ip` and `nsenter`; skipped (with a line saying why) without
//! them. The engine helper is private to this file until the shared one in
//! `tests/common/` takes over.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::query_parameters::RemoveImageOptionsBuilder;
use bollard::Docker;
use pyexec::config::DEFAULT_IMAGE;
use pyexec::image_copy::{
    self, CopyProgress, CopyReport, EngineRef, Ensured, ImageCopyError, LogProgress,
};

/// A second Docker Engine: its own netns, data root, exec root, pidfile, config and
/// socket, all under one temporary directory. Dropping it kills and removes all of it.
struct SecondEngine {
    dir: PathBuf,
    netns: String,
    dockerd: Option<Child>,
}

impl SecondEngine {
    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn start(name: &str) -> SecondEngine {
        let netns = format!("pyexec-{name}-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("pyexec-engine-{name}-{}", std::process::id()));
        // The guard exists before the first resource does, so a failure at any step
        // below still cleans up what the steps before it made.
        let mut engine = SecondEngine {
            dir,
            netns,
            dockerd: None,
        };
        std::fs::create_dir_all(&engine.dir).unwrap();
        // Its own config: /etc/docker/daemon.json names the system engine's data root
        // and fuse-overlayfs, which would collide.
        std::fs::write(engine.dir.join("daemon.json"), "{}").unwrap();
        run("ip", &["netns", "add", &engine.netns]);
        let log = std::fs::File::create(engine.dir.join("dockerd.log")).unwrap();
        let (d, sock) = (&engine.dir, engine.socket());
        // nsenter, not `ip netns exec`: the latter remounts /sys and dockerd then dies
        // ("Devices cgroup isn't mounted").
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", engine.netns))
            .arg("dockerd")
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        engine.dockerd = Some(child);
        engine
    }

    /// A client, once the engine answers (about 2 s).
    async fn connect(&self) -> Docker {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(docker) = Docker::connect_with_unix(
                self.socket().to_str().unwrap(),
                120,
                bollard::API_DEFAULT_VERSION,
            ) {
                if docker.ping().await.is_ok() {
                    return docker;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the second engine did not answer; see {}",
                self.dir.join("dockerd.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, as a dead host would: its containerd lives on until the drop.
    fn kill_dockerd(&mut self) {
        // Taken, so that the drop does not signal a pid that may be reused by now.
        if let Some(mut child) = self.dockerd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        if let Some(mut child) = self.dockerd.take() {
            // SIGTERM first: dockerd then stops its own containerd.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // A dockerd killed hard leaves its containerd (own process group) running: kill
        // every process whose command line names this engine's directory.
        for pid in pids_naming(&self.dir) {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        // Mounts outlive a killed engine (the data root bound on itself, overlay dirs,
        // nsfs under exec/netns): unmount deepest first, or the removal fails with EBUSY.
        let mut mounts = mounts_under(&self.dir);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .stderr(Stdio::null())
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?}: {status}");
}

fn pids_naming(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn missing_tools() -> Option<String> {
    // Only root may create network namespaces and run dockerd.
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        return Some("not root".into());
    }
    for tool in ["dockerd", "ip", "nsenter", "docker"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("no {tool}"));
        }
    }
    None
}

/// Counts the bytes the copy reports, for a test that acts mid-copy.
struct Watch(Arc<AtomicU64>);

impl CopyProgress for Watch {
    fn start(&mut self, _: &str, _: &str, _: &str, _: u64) {}
    fn update(&mut self, bytes: u64) {
        self.0.store(bytes, Ordering::Relaxed);
    }
    fn finish(&mut self, _: &CopyReport) {}
}

/// Runs a copy until `at_bytes` have moved. Then, without `then`, drops it mid-stream and
/// returns None; with `then`, runs it and returns how the copy ends. Some(result) also
/// when the copy ended before `at_bytes`.
async fn copy_until(
    from: EngineRef<'_>,
    to: EngineRef<'_>,
    at_bytes: u64,
    then: Option<Box<dyn FnOnce()>>,
) -> Option<Result<CopyReport, ImageCopyError>> {
    let seen = Arc::new(AtomicU64::new(0));
    let mut watch = Watch(seen.clone());
    let copy = image_copy::copy(from, to, DEFAULT_IMAGE, &mut watch);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            done = &mut copy => return Some(done),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                if seen.load(Ordering::Relaxed) >= at_bytes {
                    break;
                }
            }
        }
    }
    let then = then?;
    then();
    // Bounded, so that a copy that never notices hangs no test run.
    let ended = tokio::time::timeout(Duration::from_secs(30), copy).await;
    Some(ended.expect("the copy ends within 30 s of the action"))
}

async fn image_id(docker: &Docker, image: &str) -> Option<String> {
    docker.inspect_image(image).await.ok().and_then(|i| i.id)
}

async fn remove_image(docker: &Docker, image: &str) {
    let opts = RemoveImageOptionsBuilder::default().force(true).build();
    let _ = docker.remove_image(image, Some(opts), None).await;
}

#[tokio::test]
async fn the_sandbox_image_streams_to_an_engine_that_lacks_it() {
    if let Some(why) = missing_tools() {
        eprintln!("skipped: {why}");
        return;
    }
    // The copy's progress lines, shown with --nocapture.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,bollard=warn,hyper=warn")
        .with_test_writer()
        .try_init();
    let system = pyexec::docker::connect().await.expect("the system engine");
    pyexec::image::ensure(&system, DEFAULT_IMAGE)
        .await
        .expect("the sandbox image on the system engine");
    let src_id = image_id(&system, DEFAULT_IMAGE).await.unwrap();

    let mut engine = SecondEngine::start("imgcopy");
    let second = engine.connect().await;
    let from = EngineRef::new("system", &system);
    let to = EngineRef::new("second", &second);
    assert_eq!(
        image_id(&second, DEFAULT_IMAGE).await,
        None,
        "a fresh engine"
    );

    // A copy lands under the source's ID.
    let report = image_copy::copy(from, to, DEFAULT_IMAGE, &mut LogProgress::default())
        .await
        .expect("copy");
    assert_eq!(report.id, src_id);
    assert_eq!(image_id(&second, DEFAULT_IMAGE).await, Some(src_id.clone()));
    assert!(report.bytes > 100_000_000, "{report:?}");

    // Present with the same ID: nothing is sent.
    let t = Instant::now();
    let again = image_copy::ensure_on(from, to, DEFAULT_IMAGE, &mut LogProgress::default())
        .await
        .expect("ensure_on");
    assert!(
        matches!(again, Ensured::AlreadyThere { ref id } if *id == src_id),
        "{again:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // A missing image is named, with the engine that lacks it.
    let missing = "pyexec/no-such-image:0";
    let err = image_copy::copy(from, to, missing, &mut LogProgress::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageCopyError::NotFound { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(missing) && text.contains("system"), "{text}");

    // Figures against `docker save | docker load`, in the same run. The first copy above
    // warmed both engines (the source's page cache, the new engine's first layers), so
    // neither side below pays for that.
    remove_image(&second, DEFAULT_IMAGE).await;
    assert_eq!(image_id(&second, DEFAULT_IMAGE).await, None);
    let t = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker save {DEFAULT_IMAGE} | docker -H unix://{} load -q >/dev/null",
            engine.socket().display()
        ))
        .status()
        .unwrap();
    let cli = t.elapsed();
    assert!(status.success());
    assert_eq!(image_id(&second, DEFAULT_IMAGE).await, Some(src_id.clone()));
    remove_image(&second, DEFAULT_IMAGE).await;
    let ours = image_copy::copy(from, to, DEFAULT_IMAGE, &mut LogProgress::default())
        .await
        .expect("the timed copy");
    eprintln!(
        "figures: image_copy::copy {:.1} MB in {:.2} s (streamed in {:.2} s) = {:.1} MB/s; \
         docker save | docker load {:.2} s; ratio copy/cli {:.2}",
        ours.bytes as f64 / 1e6,
        ours.elapsed.as_secs_f64(),
        ours.streamed.as_secs_f64(),
        ours.mb_per_sec(),
        cli.as_secs_f64(),
        ours.elapsed.as_secs_f64() / cli.as_secs_f64()
    );

    // A copy dropped mid-stream: no tag on the target, no connection left open.
    remove_image(&second, DEFAULT_IMAGE).await;
    // Both clients' pools hold their idle connections already (inspect, remove).
    let _ = image_id(&system, DEFAULT_IMAGE).await;
    let fds = open_fds();
    let dropped = copy_until(from, to, 40_000_000, None).await;
    assert!(dropped.is_none(), "the copy was still running: {dropped:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        image_id(&second, DEFAULT_IMAGE).await,
        None,
        "a half-loaded tag"
    );
    assert!(
        open_fds() <= fds,
        "descriptors: {fds} before, {} after the dropped copy",
        open_fds()
    );
    // And the target takes the next copy as if nothing had happened.
    image_copy::copy(from, to, DEFAULT_IMAGE, &mut LogProgress::default())
        .await
        .expect("a copy after a dropped one");
    assert_eq!(image_id(&second, DEFAULT_IMAGE).await, Some(src_id.clone()));

    // The target dies mid-copy: the error says which engine closed the connection.
    remove_image(&second, DEFAULT_IMAGE).await;
    let pid = engine.dockerd.as_ref().unwrap().id();
    let kill: Box<dyn FnOnce()> = Box::new(move || {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    let killed = copy_until(from, to, 40_000_000, Some(kill))
        .await
        .expect("the copy ends once its target is gone");
    engine.kill_dockerd();
    let err = killed.unwrap_err();
    assert!(
        matches!(err, ImageCopyError::TargetClosed { ref engine, .. } if engine == "second"),
        "{err:?}"
    );
    eprintln!("target killed mid-copy: {err}");
}
