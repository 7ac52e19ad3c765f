//! Extra Docker Engines on this machine, for the multi-engine tests and the benchmark: each
//! one a `dockerd` in a network namespace of its own, reached over a veth pair at
//! `tcp://ADDR:2376` with mutual TLS, exactly as `pyexecd --engine URL --engine-cert-path
//! DIR` expects a remote host. The recipe is the one in the verified facts ("Several Docker
//! Engines on one machine"); each step below says what it prevents.
//!
//! One engine's traces all carry its name, `pyxt-<pid>-<n>` (the pid of the process that
//! started it, a test or the benchmark, and a counter): the namespace, the directory under
//! the temp dir that holds its certificates, data root, exec root, socket and log, the
//! cgroup parent of its containers, and so every process's command line. `Drop` removes
//! them all, even after a panic; `sweep_stale` removes those of processes that died before
//! their `Drop` could run.
//!
//! The host end of the veth is `pyxv<block>`, where the block is one /30 of 10.231.0.0/16:
//! creating the link reserves the block (the kernel refuses a second link of that name),
//! so parallel processes never share addresses.
//!
//! Everything here is blocking and panics on a failed step, as a test wants; an async
//! caller runs it on a blocking thread. The certificates come from the `pyexecd` binary
//! the caller names (`pyexecd gen-certs`, the tool the documentation tells an engine
//! host's administrator to use), so this crate does not depend on the daemon's code.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

/// Every name the harness gives starts with this; `scripts/test` looks for it after a run.
pub const PREFIX: &str = "pyxt-";
/// The Engine's TLS port, as on a real host.
pub const PORT: u16 = 2376;
/// The client name in the certificates: the daemon under test is the engines' client.
const CLIENT: &str = "pyexecd";
/// 10.231.0.0/16 in /30 blocks: block `b` is 10.231.(b/64).(4*(b%64)), host end `.1`,
/// engine end `.2`.
const BLOCKS: u32 = 16384;
/// Bound on one start (or restart) until the Engine answers over TLS. 0.3 to 1.5 s here
/// (measured); the bound is for two cores busy with parallel tests or a benchmark.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one TLS ping: an Engine that accepts but never answers must not hang a test.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on killing an engine's processes, on unmounting, on removing cgroups.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How to start an engine: `EngineOptions::new(PYEXECD)` is the usual one (certificates
/// that match, no images at all).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The `pyexecd` binary whose `gen-certs` makes the engine's and the client's
    /// certificates.
    pyexecd: PathBuf,
    foreign_ca: bool,
    image: Option<String>,
    storage_driver: Option<String>,
}

impl EngineOptions {
    /// Certificates made by `pyexecd` (the daemon under test or measured).
    pub fn new(pyexecd: impl Into<PathBuf>) -> Self {
        EngineOptions {
            pyexecd: pyexecd.into(),
            foreign_ca: false,
            image: None,
            storage_driver: None,
        }
    }

    /// `cert_path()` gets a client certificate and `ca.pem` from a CA of its own, not the
    /// one that signed the engine's server certificate: the engine presents a certificate
    /// from another CA, and refuses the client's too.
    pub fn foreign_ca(mut self) -> Self {
        self.foreign_ca = true;
        self
    }

    /// Copies `image` from the system engine once the engine runs (see
    /// `load_image_from_system`). Without it the engine has no images at all, and the
    /// daemon under test must bring the sandbox image itself.
    pub fn with_image(mut self, image: &str) -> Self {
        self.image = Some(image.to_string());
        self
    }

    /// dockerd's `storage-driver` (in its config file). Without it dockerd picks one for
    /// the file system under the temp dir, which may not be the system engine's: a
    /// comparison of the two would then measure their storage drivers.
    pub fn storage_driver(mut self, driver: &str) -> Self {
        self.storage_driver = Some(driver.to_string());
        self
    }
}

/// A running extra Docker Engine. Dropping it removes every trace of it.
pub struct RemoteEngine {
    name: String,
    dir: PathBuf,
    /// Host end of the veth pair, once reserved.
    veth: Option<String>,
    addr: Ipv4Addr,
    dockerd: Option<Child>,
    start_time: Duration,
    /// Shim sockets removed after kills, for `Footprint` to check.
    shim_sockets: Arc<Mutex<Vec<PathBuf>>>,
}

impl RemoteEngine {
    /// Creates the namespace, the veth pair, the certificates, starts dockerd and waits
    /// until it answers over TLS with the client certificates. Panics with the dockerd log's
    /// tail when it does not.
    pub fn start(opts: EngineOptions) -> RemoteEngine {
        sweep_stale();
        let name = next_name();
        let dir = std::env::temp_dir().join(&name);
        // The value exists before the first step, so its `Drop` undoes whatever steps a
        // panic in `start` left done.
        let mut engine = RemoteEngine {
            name,
            dir,
            veth: None,
            addr: Ipv4Addr::UNSPECIFIED,
            dockerd: None,
            start_time: Duration::ZERO,
            shim_sockets: Arc::default(),
        };
        // A directory left by a dead process that had our pid is swept already; one left
        // by this process cannot exist (names are never reused within a process).
        fs::create_dir_all(engine.dir.join("certs"))
            .unwrap_or_else(|e| panic!("create {}: {e}", engine.dir.display()));
        run(Command::new("ip").args(["netns", "add", &engine.name]));
        engine.network();
        engine.certificates(&opts.pyexecd, opts.foreign_ca);
        // A config file of our own: without `--config-file` dockerd reads the system engine's
        // /etc/docker/daemon.json, whose settings (storage driver, hosts) are not ours.
        let config = match &opts.storage_driver {
            Some(driver) => format!("{{\"storage-driver\": \"{driver}\"}}\n"),
            None => "{}\n".to_string(),
        };
        fs::write(engine.dir.join("daemon.json"), config).expect("write daemon.json");
        engine.spawn_dockerd();
        if let Some(image) = &opts.image {
            engine.load_image_from_system(image);
        }
        engine
    }

    /// `pyxt-<pid>-<n>`: the namespace, the cgroup parent and the engine's directory name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL for `pyexecd --engine`: `tcp://ADDR:2376`.
    pub fn url(&self) -> String {
        format!("tcp://{}:{PORT}", self.addr)
    }

    /// The directory for `pyexecd --engine-cert-path` or `DOCKER_CERT_PATH`: `ca.pem`,
    /// `cert.pem`, `key.pem` (the client certificate, CN=pyexecd).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("client")
    }

    /// The engine's own Unix socket, for the test's own checks with the docker CLI (it
    /// needs no TLS and works while the veth is cut).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The directory holding everything of this engine (certificates, data and exec root,
    /// socket, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// dockerd's log so far, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// The last `n` lines of dockerd's log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// How long the last start (or restart) took, from spawning dockerd until it answered
    /// over TLS.
    pub fn start_time(&self) -> Duration {
        self.start_time
    }

    /// A `docker` CLI command aimed at the engine's Unix socket.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket().display()));
        cmd
    }

    /// A `docker` CLI command aimed at `tcp://ADDR:2376` with `--tlsverify` and the client
    /// certificates in `cert_path` (Docker's layout, through `DOCKER_CERT_PATH`).
    pub fn docker_tls_with(&self, cert_path: &Path) -> Command {
        let mut cmd = Command::new("docker");
        // The caller's DOCKER_HOST or DOCKER_TLS_VERIFY must not change what is asked.
        cmd.env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env("DOCKER_CERT_PATH", cert_path)
            .args(["-H", &self.url(), "--tlsverify"]);
        cmd
    }

    /// `docker_tls_with(self.cert_path())`.
    pub fn docker_tls(&self) -> Command {
        self.docker_tls_with(&self.cert_path())
    }

    /// Whether the engine answers over TLS right now, to a client it accepts.
    pub fn answers_tls(&self) -> bool {
        self.ping_with(&self.accepted_cert_path()).is_ok()
    }

    /// One bounded `docker version` over TLS with the certificates in `cert_path`: the
    /// server version, or the CLI's error (or a timeout).
    pub fn ping_with(&self, cert_path: &Path) -> Result<String, String> {
        let mut cmd = self.docker_tls_with(cert_path);
        cmd.args(["version", "--format", "{{.Server.Version}}"]);
        output_within(&mut cmd, PING_TIMEOUT).and_then(|out| {
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        })
    }

    /// `docker save IMAGE | docker -H unix://SOCK load`: copies an image of the system
    /// engine (it must be there) into this one. About 10 s for the sandbox image.
    pub fn load_image_from_system(&self, image: &str) {
        let started = Instant::now();
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn docker save");
        let load = self
            .docker()
            .arg("load")
            .stdin(save.stdout.take().expect("save's stdout is piped"))
            .output()
            .expect("run docker load");
        let saved = save.wait_with_output().expect("wait for docker save");
        assert!(
            saved.status.success() && load.status.success(),
            "copying {image} into engine {} failed: save: {}; load: {}\n{}",
            self.name,
            String::from_utf8_lossy(&saved.stderr).trim(),
            String::from_utf8_lossy(&load.stderr).trim(),
            self.log_tail(20)
        );
        eprintln!(
            "engine {}: {image} copied from the system engine in {:.1?}",
            self.name,
            started.elapsed()
        );
    }

    /// Kills the engine as a dead host would: SIGKILL to dockerd, its containerd and shims
    /// and every container process, at once; mounts and files stay, as on a host that lost
    /// power (but the shims' sockets outside its directory go, see
    /// `kill_engine_processes`). The TLS endpoint refuses connections afterwards (the veth
    /// stays up).
    pub fn kill_hard(&mut self) {
        let sockets = kill_engine_processes(&self.name);
        // Never panics: `Drop` calls this (a lock is poisoned only by a panic while held).
        if let Ok(mut removed) = self.shim_sockets.lock() {
            removed.extend(sockets);
        }
        if let Some(mut child) = self.dockerd.take() {
            // Reaps dockerd, or it stays a zombie while the test runs.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Cuts the engine off the network without a word, as a broken link or a firewall
    /// would: every packet in or out of the namespace's `eth0` is dropped, so nothing is
    /// refused or reset, and connections already open just stop answering. dockerd and
    /// its containers go on running. `mend` undoes it; the rules go with the namespace.
    pub fn cut(&self) {
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            run(Command::new("ip").args([
                "netns", "exec", &self.name, "iptables", "-I", chain, dir, "eth0", "-j", "DROP",
            ]));
        }
    }

    /// Lets packets through again after `cut`.
    pub fn mend(&self) {
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            run(Command::new("ip").args([
                "netns", "exec", &self.name, "iptables", "-D", chain, dir, "eth0", "-j", "DROP",
            ]));
        }
    }

    /// Starts the same dockerd again (after `kill_hard`), as the host does after a reboot,
    /// and waits until it answers over TLS; the old containers show `Exited (255)`.
    ///
    /// The reboot part: mounts, the exec root and the pidfile (on a real host, under the
    /// tmpfs /run) are gone; the data root stays. Without it the restart fails: the killed containerd
    /// stays a zombie here (pid 1 of this machine does not reap orphans), dockerd finds
    /// its pid in `exec/containerd/containerd.pid` alive, waits for it to answer, and
    /// gives up with "timeout waiting for containerd to start".
    pub fn restart(&mut self) {
        assert!(self.dockerd.is_none(), "restart() only after kill_hard()");
        unmount_all(&self.name);
        let exec = self.dir.join("exec");
        if let Err(e) = fs::remove_dir_all(&exec) {
            panic!("remove {} for the restart: {e}", exec.display());
        }
        // dockerd's own pidfile (under /run on a real host, so gone after a reboot): should
        // its pid be reused by then, dockerd would refuse to start ("pid file found").
        let _ = fs::remove_file(self.dir.join("docker.pid"));
        self.spawn_dockerd();
    }

    /// What `Drop` must remove, for checking that it did (see `Footprint::leftovers`).
    pub fn footprint(&self) -> Footprint {
        Footprint {
            name: self.name.clone(),
            dir: self.dir.clone(),
            veth: self.veth.clone(),
            shim_sockets: self.shim_sockets.clone(),
        }
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// Reserves a /30 block by creating the veth pair named after it, moves its peer into
    /// the namespace, and brings up both ends and the namespace's `lo`.
    fn network(&mut self) {
        check_range_is_ours();
        let first = block_hint(&self.name);
        for i in 0..BLOCKS {
            let block = (first + i) % BLOCKS;
            let veth = format!("pyxv{block}");
            // The peer is created inside the namespace at once: a host-side peer name
            // would be one more name that parallel processes could collide on.
            let out = Command::new("ip")
                .args(["link", "add", &veth, "type", "veth", "peer", "name", "eth0"])
                .args(["netns", &self.name])
                .output()
                .expect("run ip link add");
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                // Another engine (of any process) holds this block: try the next.
                if err.contains("File exists") {
                    continue;
                }
                panic!("ip link add {veth}: {}", err.trim());
            }
            self.veth = Some(veth.clone());
            let host = block_addr(block, 1);
            self.addr = block_addr(block, 2);
            run(Command::new("ip").args(["addr", "add", &format!("{host}/30"), "dev", &veth]));
            run(Command::new("ip").args(["link", "set", &veth, "up"]));
            let ns = ["-n", self.name.as_str()];
            let engine_addr = format!("{}/30", self.addr);
            run(Command::new("ip")
                .args(ns)
                .args(["addr", "add", &engine_addr, "dev", "eth0"]));
            run(Command::new("ip")
                .args(ns)
                .args(["link", "set", "eth0", "up"]));
            // Without `lo` up, dockerd's own loopback connections in the namespace fail.
            run(Command::new("ip")
                .args(ns)
                .args(["link", "set", "lo", "up"]));
            return;
        }
        panic!("every /30 block of 10.231.0.0/16 is taken by a pyxv* link");
    }

    /// `pyexecd gen-certs`: the server certificate for the engine's address in `certs/`,
    /// and the client's directory in Docker's layout in `client/`, from the same CA or,
    /// with `foreign_ca`, from a CA of its own (`foreign/`).
    fn certificates(&self, pyexecd: &Path, foreign_ca: bool) {
        let server_dir = self.dir.join("certs");
        gen_certs(pyexecd, &server_dir, &[&self.addr.to_string()], CLIENT);
        if foreign_ca {
            let foreign = self.dir.join("foreign");
            gen_certs(pyexecd, &foreign, &[], CLIENT);
            docker_layout(&foreign, &self.cert_path());
            // The harness itself still needs a client the engine accepts, to see it ready.
            docker_layout(&server_dir, &self.accepted_cert_path());
        } else {
            docker_layout(&server_dir, &self.cert_path());
        }
    }

    /// Client certificates (Docker's layout) that the engine accepts: `cert_path()`,
    /// unless that holds a foreign CA's.
    pub fn accepted_cert_path(&self) -> PathBuf {
        if self.dir.join("foreign").exists() {
            self.dir.join("accepted-client")
        } else {
            self.cert_path()
        }
    }

    /// Starts dockerd in the namespace (appending to its log) and waits until it answers
    /// over TLS; panics with the log's tail if it exits or does not answer in time.
    fn spawn_dockerd(&mut self) {
        let d = &self.dir;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .expect("open the dockerd log");
        let mut log_err = log.try_clone().expect("clone the log file");
        let _ = writeln!(log_err, "---- harness: starting dockerd ----");
        let path = |p: &str| d.join(p).into_os_string();
        let started = Instant::now();
        let child = Command::new("nsenter")
            // `--net` only: `ip netns exec` would also remount /sys, and dockerd then dies
            // with "Devices cgroup isn't mounted".
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg("dockerd")
            // Each of these is shared with the system engine by default: two daemons on one
            // data root, exec root or pidfile corrupt each other or refuse to start.
            .arg("--config-file")
            .arg(path("daemon.json"))
            .arg("--data-root")
            .arg(path("data"))
            .arg("--exec-root")
            .arg(path("exec"))
            .arg("--pidfile")
            .arg(path("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(["-H", &self.url(), "--tlsverify"])
            .arg("--tlscacert")
            .arg(path("certs/ca.pem"))
            .arg("--tlscert")
            .arg(path("certs/server.pem"))
            .arg("--tlskey")
            .arg(path("certs/server.key"))
            // No docker0 bridge and no iptables rules: they would change the host's
            // networking, which the system engine owns.
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            // Its containers' cgroups sit under /NAME, which is how `kill_hard` finds their
            // processes once the shims are dead.
            .arg("--cgroup-parent")
            .arg(format!("/{}", self.name))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("spawn nsenter dockerd");
        self.dockerd = Some(child);
        let deadline = started + START_TIMEOUT;
        loop {
            let ping = self.ping_with(&self.accepted_cert_path());
            if ping.is_ok() {
                break;
            }
            if let Some(status) = self
                .dockerd
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "dockerd of engine {} exited ({status}) before answering\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "dockerd of engine {} did not answer over TLS within {START_TIMEOUT:?}: {}\n{}",
                self.name,
                ping.unwrap_err(),
                self.log_tail(30)
            );
            thread::sleep(Duration::from_millis(50));
        }
        self.start_time = started.elapsed();
    }
}

impl Drop for RemoteEngine {
    /// Removes everything, on every path: never panics (a panic while unwinding would
    /// abort the process and leave it all behind), it reports what it could not do.
    fn drop(&mut self) {
        if thread::panicking() && self.log_file().exists() {
            eprintln!(
                "---- engine {} ({}): dockerd log tail ----\n{}",
                self.name,
                self.url(),
                self.log_tail(30)
            );
        }
        self.kill_hard();
        if let Some(veth) = &self.veth {
            // Deleting one end deletes the pair; the namespace would take it along too,
            // but only once the kernel frees the namespace, which can lag.
            let _ = Command::new("ip").args(["link", "del", veth]).output();
        }
        remove_engine(&self.name, &self.dir);
    }
}

/// What an engine left on the machine, checked after its `Drop`.
#[derive(Debug, Clone)]
pub struct Footprint {
    name: String,
    dir: PathBuf,
    veth: Option<String>,
    shim_sockets: Arc<Mutex<Vec<PathBuf>>>,
}

impl Footprint {
    /// Everything of the engine still there, one line each: the namespace, the veth, a
    /// process (dockerd, containerd, a shim, a container's), a mount under its
    /// directory, the directory, a cgroup. Empty when it is all gone.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        if Path::new("/run/netns").join(&self.name).exists() {
            left.push(format!("network namespace {}", self.name));
        }
        if let Some(veth) = &self.veth {
            if Path::new("/sys/class/net").join(veth).exists() {
                left.push(format!("veth {veth}"));
            }
        }
        for pid in engine_pids(&self.name) {
            left.push(format!("process {pid}: {}", cmdline(pid).join(" ")));
        }
        for m in mounts_of(&self.name) {
            left.push(format!("mount {m}"));
        }
        if self.dir.exists() {
            left.push(format!("directory {}", self.dir.display()));
        }
        for c in cgroups_of(&self.name) {
            left.push(format!("cgroup {}", c.display()));
        }
        for socket in self.removed_shim_sockets() {
            if socket.exists() {
                left.push(format!("shim socket {}", socket.display()));
            }
        }
        left
    }

    /// The shim sockets that kills of this engine removed so far (one per container that
    /// was running).
    pub fn removed_shim_sockets(&self) -> Vec<PathBuf> {
        self.shim_sockets.lock().unwrap().clone()
    }
}

/// Removes what earlier processes (tests, benchmarks) that died left behind: every
/// `pyxt-<pid>-*` namespace, directory, process, mount and cgroup whose pid is no longer
/// alive (or is this process's, from an earlier process with the same pid). Runs once per
/// process; `RemoteEngine::start` calls it.
pub fn sweep_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut names: Vec<String> = Vec::new();
        if let Ok(entries) = fs::read_dir("/run/netns") {
            names.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into()),
            );
        }
        if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
            names.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into()),
            );
        }
        // A dockerd whose namespace and directory are gone still holds its name.
        for pid in all_pids() {
            for arg in cmdline(pid) {
                names.extend(arg.split('/').map(str::to_string));
            }
        }
        names.sort();
        names.dedup();
        let me = std::process::id();
        for name in names {
            let Some(pid) = owner_pid(&name) else {
                continue;
            };
            if pid == me || !alive(pid) {
                eprintln!("engines: sweeping {name}, left by dead process {pid}");
                let dir = std::env::temp_dir().join(&name);
                kill_engine_processes(&name);
                remove_engine(&name, &dir);
            }
        }
    });
}

/// The pid in a `pyxt-<pid>-<n>` name.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let found = unsafe { libc::kill(pid as i32, 0) } == 0;
    // EPERM: it exists, under a user we may not signal.
    found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// `pyxt-<pid>-<n>`, ≤ 15 characters (pid ≤ 4194304 has 7 digits): short enough for an
/// interface name, should a test want one after it.
fn next_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where to start looking for a free block: spread by pid and counter, so that parallel
/// processes rarely probe the same blocks.
fn block_hint(name: &str) -> u32 {
    let (pid, n) = name[PREFIX.len()..].split_once('-').unwrap();
    let (pid, n): (u32, u32) = (pid.parse().unwrap(), n.parse().unwrap());
    (pid.wrapping_mul(97).wrapping_add(n.wrapping_mul(7))) % BLOCKS
}

/// Address `host` (1 or 2) of /30 block `block` in 10.231.0.0/16.
fn block_addr(block: u32, host: u32) -> Ipv4Addr {
    let offset = block * 4 + host;
    Ipv4Addr::new(10, 231, (offset >> 8) as u8, (offset & 0xff) as u8)
}

/// Panics if some interface not made by this harness has an address in 10.231.0.0/16:
/// the engines' addresses would then shadow (or be shadowed by) a real network.
fn check_range_is_ours() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let out = run(Command::new("ip").args(["-o", "-4", "addr", "show"]));
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut fields = line.split_whitespace();
            let dev = fields.nth(1).unwrap_or_default();
            if line.contains(" 10.231.") && !dev.starts_with("pyxv") {
                panic!(
                    "10.231.0.0/16 is in use on this host ({line}); the engine harness needs it"
                );
            }
        }
    });
}

/// Copies `gen-certs`' CA and client certificate from `from` into `to` as `ca.pem`,
/// `cert.pem` and `key.pem`: the layout `DOCKER_CERT_PATH` and `--engine-cert-path` read.
fn docker_layout(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for (src, dst) in [
        ("ca.pem".to_string(), "ca.pem"),
        (format!("client-{CLIENT}.pem"), "cert.pem"),
        (format!("client-{CLIENT}.key"), "key.pem"),
    ] {
        fs::copy(from.join(&src), to.join(dst))
            .unwrap_or_else(|e| panic!("copy {src} into {}: {e}", to.display()));
    }
}

fn gen_certs(pyexecd: &Path, dir: &Path, hosts: &[&str], client: &str) {
    let mut cmd = Command::new(pyexecd);
    cmd.arg("gen-certs").arg("--dir").arg(dir);
    for host in hosts {
        cmd.args(["--host", host]);
    }
    cmd.args(["--client", client]);
    run(&mut cmd);
}

/// Runs `cmd` and panics with its stderr unless it succeeds.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// Waits for `child` to exit, at most `timeout`: its status, or `None` on timeout.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` with a deadline (killing it after), its output collected.
fn output_within(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {cmd:?}: {e}"))?;
    // Small outputs only (a version, an error line): they fit in the pipes, so waiting
    // before reading cannot deadlock.
    if wait_timeout(&mut child, timeout).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("no answer within {timeout:?}"));
    }
    child.wait_with_output().map_err(|e| e.to_string())
}

/// SIGKILLs every process of engine `name` until none is left: dockerd, containerd and
/// the shims (their command lines name the engine's directory) and the container
/// processes (their cgroups sit under `/name`). All in one pass and then again: dockerd
/// restarts a containerd that died before it, and a containerd starts shims.
///
/// Then removes the shims' sockets and returns their paths: a shim listens on
/// `/run/containerd/s/<hash>`, outside the engine's directories, and only removes it when
/// it exits cleanly, so every killed container would leave one there.
fn kill_engine_processes(name: &str) -> Vec<PathBuf> {
    let deadline = Instant::now() + CLEANUP_TIMEOUT;
    let mut sockets = Vec::new();
    loop {
        let pids = engine_pids(name);
        if pids.is_empty() {
            break;
        }
        for &pid in &pids {
            sockets.extend(shim_sockets(pid));
        }
        for &pid in &pids {
            // SAFETY: kill(2) on a process that names this engine's directory or sits in its
            // cgroups: ours.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if Instant::now() > deadline {
            eprintln!("engines: processes of {name} survive SIGKILL: {pids:?}");
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    // A shim holds its socket on more than one descriptor, and a later pass may see it again.
    sockets.sort();
    sockets.dedup();
    for socket in &sockets {
        let _ = fs::remove_file(socket);
    }
    sockets
}

/// Where shim sockets live (containerd's state dir, whatever the engine's exec root).
const SHIM_SOCKETS: &str = "/run/containerd/s/";

/// The Unix sockets under `SHIM_SOCKETS` that process `pid` holds open (none unless it is
/// a shim): its descriptors' socket inodes, looked up in its network namespace's table.
fn shim_sockets(pid: u32) -> Vec<PathBuf> {
    if !cmdline(pid)
        .first()
        .is_some_and(|a| a.contains("containerd-shim"))
    {
        return Vec::new();
    }
    let mut inodes = Vec::new();
    if let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(link) = fs::read_link(fd.path()) {
                let link = link.to_string_lossy().into_owned();
                if let Some(inode) = link
                    .strip_prefix("socket:[")
                    .and_then(|l| l.strip_suffix(']'))
                {
                    inodes.push(inode.to_string());
                }
            }
        }
    }
    // Columns: Num RefCount Protocol Flags Type St Inode [Path].
    let table = fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    table
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let (inode, path) = (cols.get(6)?, cols.get(7)?);
            (inodes.iter().any(|i| i == inode) && path.starts_with(SHIM_SOCKETS))
                .then(|| PathBuf::from(path))
        })
        .collect()
}

/// Live processes of engine `name`: a command-line argument has `name` as a path
/// component, or a cgroup path is `/name` or under it. Zombies are dead already (their
/// parent reaps them), and this process never counts.
fn engine_pids(name: &str) -> Vec<u32> {
    let me = std::process::id();
    let cgroup_dir = format!("/{name}");
    let cgroup_below = format!("/{name}/");
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me && !is_zombie(pid))
        .filter(|&pid| {
            cmdline(pid)
                .iter()
                .any(|arg| arg.split('/').any(|part| part == name))
                || fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.splitn(3, ':').nth(2))
                    .any(|path| path == cgroup_dir || path.starts_with(&cgroup_below))
        })
        .collect()
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn is_zombie(pid: u32) -> bool {
    // The state follows the command name in parentheses, which may itself hold spaces.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Mount points with `name` as a path component (in this process's mount namespace, which
/// dockerd shares: `nsenter --net` changes only the network namespace).
fn mounts_of(name: &str) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.split('/').any(|part| part == name))
        // /run/netns/NAME is the namespace itself: `ip netns del` removes it.
        .filter(|p| !p.starts_with("/run/netns/"))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(raw: &str) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap();
            out.push(u8::from_str_radix(oct, 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup directories `/name` (and below) in every mounted cgroup hierarchy, deepest
/// first.
fn cgroups_of(name: &str) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut dirs = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !right.starts_with("cgroup") {
            continue;
        }
        if let Some(mnt) = left.split(' ').nth(4) {
            let top = Path::new(&unescape_mount_path(mnt)).join(name);
            collect_dirs(&top, &mut dirs);
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    out.push(dir.to_path_buf());
    for e in entries.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_dirs(&e.path(), out);
        }
    }
}

/// Unmounts everything under engine `name`'s directory, deepest first. The mounts stay
/// after a kill (the data root bound on itself, overlay `merged` dirs, `nsfs` under
/// exec/netns). Lazily, so a mount still busy detaches anyway; again until none is left,
/// for mounts stacked on one point.
fn unmount_all(name: &str) {
    let deadline = Instant::now() + CLEANUP_TIMEOUT;
    loop {
        let mut mounts = mounts_of(name);
        if mounts.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("engines: mounts of {name} stay: {mounts:?}");
            return;
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.matches('/').count()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).output();
        }
    }
}

/// Everything of engine `name` but its processes (kill those first): mounts under its
/// directory deepest first, the directory, its cgroups, its namespace. Reports, never
/// panics.
fn remove_engine(name: &str, dir: &Path) {
    let deadline = Instant::now() + CLEANUP_TIMEOUT;
    // A mounted directory cannot be removed.
    unmount_all(name);
    if dir.exists() {
        if let Err(e) = fs::remove_dir_all(dir) {
            eprintln!("engines: remove {}: {e}", dir.display());
        }
    }
    // Empty cgroups left by killed containers: each is a directory in every hierarchy,
    // which the Engine's cleanup never reached. rmdir fails while a process is still
    // leaving, hence the retries.
    loop {
        let left: Vec<PathBuf> = cgroups_of(name)
            .into_iter()
            .filter(|c| fs::remove_dir(c).is_err())
            .collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("engines: cgroups of {name} stay: {left:?}");
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    if Path::new("/run/netns").join(name).exists() {
        let out = Command::new("ip").args(["netns", "del", name]).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "engines: ip netns del {name}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("engines: ip netns del {name}: {e}"),
        }
    }
}
