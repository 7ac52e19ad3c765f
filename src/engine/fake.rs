//! An in-memory `Engine` for the unit tests of the Supervisor and the ContainerActor: no
//! Docker, no sockets, no threads, so a test runs in milliseconds (and under tokio's
//! paused clock, its timers are instant).
//!
//! Each launched container is a tokio task speaking the bootstrap's wire format
//! (`bootstrap.rs`) over in-memory pipes: it reads the request, answers the ACK, plays the
//! script, writes the trailer on both streams and exits; `wait` resolves with its status.
//! The script is a tiny language, one command per line:
//!
//! | line             | what the simulated script does                                   |
//! |------------------|------------------------------------------------------------------|
//! | `print TEXT`     | writes `TEXT\n` to stdout                                        |
//! | `eprint TEXT`    | writes `TEXT\n` to stderr                                        |
//! | `exit N`         | ends with status N (trailer `E` N)                               |
//! | `sleep`          | waits for a signal; SIGKILL ends the container, others the script |
//! | `echo-stdin`     | copies stdin to stdout until EOF                                 |
//! | `oom`            | is OOM-killed: trailer `S` 9, status 137, `oom_killed` true      |
//! | `die-before-ack` | (first line) exits with status 1 before the ACK, a message on stderr |
//!
//! A script that runs out of lines exits with 0. The knobs (`set_up`, `fail_launches`,
//! `fail_waits`, `die_unused`) make the engine misbehave; `state` tells what it was asked
//! and what is left, and `until` awaits a condition on it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc as fmpsc;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, DuplexStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{Engine, EngineError, EngineResult, LaunchFailed, Launched, Lease, LeaseError, Output};
use crate::bootstrap::{ACK, NONCE_LEN};
use crate::sandbox::SandboxSpec;

/// What every fake script's trailer says it used: 2.5 ms of CPU, 12 MiB at the peak.
pub(crate) const FAKE_CPU_US: u64 = 2500;
pub(crate) const FAKE_PEAK_MEMORY: u64 = 12 << 20;

/// What the fake engine was asked, and what is left of its containers.
#[derive(Debug, Clone, Default)]
pub(crate) struct FakeState {
    /// When each launch was asked (failed ones included), on tokio's clock.
    pub launches: Vec<Instant>,
    /// Every kill request that reached a container: its ID and the signal.
    pub kills: Vec<(String, &'static str)>,
    /// Containers removed (each counted once).
    pub removed: Vec<String>,
    /// Successful pings.
    pub pings: usize,
    /// Containers created and not removed: what a test asserts is empty at its end.
    pub present: Vec<String>,
    /// Of those, the ones whose bootstrap waits for its script.
    pub idle: Vec<String>,
    /// The image of every container created, by ID.
    pub images: BTreeMap<String, String>,
}

impl FakeState {
    /// Idle containers of `image`: the spares of that image's pool.
    pub fn idle_of(&self, image: &str) -> usize {
        self.idle
            .iter()
            .filter(|id| self.images.get(*id).is_some_and(|i| i == image))
            .count()
    }
}

struct Container {
    /// Signals for its main process (SIGKILL ends it at once).
    signals: mpsc::UnboundedSender<&'static str>,
    /// Its exit status, once it has exited; `None` while it runs (or was never started).
    exit: watch::Receiver<Option<i64>>,
    oom: bool,
    /// The bootstrap has not received a request yet.
    idle: bool,
}

#[derive(Default)]
struct Inner {
    up: bool,
    /// Launches that fail after the create, with an API error.
    failing_launches: usize,
    /// Containers that exit at once after their start, unused, as if killed from outside.
    dying_spares: usize,
    /// How long a launch takes to answer, on tokio's clock.
    launch_delay: Duration,
    /// How long after its end a container's exit is reported (and `wait` answers).
    exit_delay: Duration,
    next_id: u64,
    containers: BTreeMap<String, Container>,
    state: FakeState,
    /// The run holding the instance lease, and how to tell it the lease is lost.
    lease: Option<(String, Option<oneshot::Sender<()>>)>,
}

/// See the module's documentation. Its clones are the same engine.
#[derive(Clone)]
pub(crate) struct FakeEngine(Arc<Shared>);

struct Shared {
    name: String,
    inner: Mutex<Inner>,
    /// Bumped on every change to what `state` reports, so that `until` wakes.
    changed: watch::Sender<u64>,
    /// While set, every wait (those pending too) answers this error.
    wait_error: watch::Sender<Option<EngineError>>,
}

fn unreachable_error() -> EngineError {
    EngineError::Unreachable("fake engine: connection refused".into())
}

fn not_found(id: &str) -> EngineError {
    EngineError::NotFound(format!("fake engine: no such container: {id}"))
}

impl FakeEngine {
    pub(crate) fn new() -> Self {
        Self::named("fake")
    }

    /// An engine of its own, named for the multi-engine tests.
    pub(crate) fn named(name: &str) -> Self {
        FakeEngine(Arc::new(Shared {
            name: name.to_string(),
            inner: Mutex::new(Inner {
                up: true,
                exit_delay: Duration::from_millis(10),
                ..Inner::default()
            }),
            changed: watch::channel(0).0,
            wait_error: watch::channel(None).0,
        }))
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.0.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.0.changed.send_modify(|n| *n += 1);
    }

    /// Up: it answers. Down: every call fails with `EngineError::Unreachable` (the
    /// containers already started go on, as they would behind a broken socket).
    pub(crate) fn set_up(&self, up: bool) {
        let mut inner = self.inner();
        inner.up = up;
        if !up {
            // The lease's connection breaks with the engine, as on Docker.
            if let Some((_, lost)) = inner.lease.as_mut() {
                if let Some(lost) = lost.take() {
                    let _ = lost.send(());
                }
            }
        }
    }

    /// Makes a live daemon of another run hold the instance lease.
    pub(crate) fn hold_lease_elsewhere(&self) {
        self.inner().lease = Some(("another run".into(), None));
    }

    /// The next `n` launches fail with an API error after the create (`usize::MAX`:
    /// every one); the created container is left for the caller to remove.
    pub(crate) fn fail_launches(&self, n: usize) {
        self.inner().failing_launches = n;
    }

    /// Every wait, pending or to come, answers `error` (or its status again, for `None`).
    pub(crate) fn fail_waits(&self, error: Option<EngineError>) {
        self.0.wait_error.send_replace(error);
    }

    /// The next `n` containers exit (status 137) right after their start, before they
    /// read anything: spares that die unused.
    pub(crate) fn die_unused(&self, n: usize) {
        self.inner().dying_spares = n;
    }

    /// Launches answer after `delay` (zero by default: at once). With a delay, a script a
    /// session sends right after its admission reaches the container before the launch
    /// has failed or succeeded, as it does with a real Engine.
    pub(crate) fn set_launch_delay(&self, delay: Duration) {
        self.inner().launch_delay = delay;
    }

    /// Containers' exits are reported `delay` after their attach streams end. Docker
    /// reports an exit tens of milliseconds after the fact, so the default is 10 ms; zero
    /// makes a fast script's exit race its output.
    pub(crate) fn set_exit_delay(&self, delay: Duration) {
        self.inner().exit_delay = delay;
    }

    /// What the engine was asked so far, and what is left.
    pub(crate) fn state(&self) -> FakeState {
        let inner = self.inner();
        let mut state = inner.state.clone();
        state.present = inner.containers.keys().cloned().collect();
        state.idle = (inner.containers.iter())
            .filter(|(_, c)| c.idle)
            .map(|(id, _)| id.clone())
            .collect();
        state
    }

    /// Waits until `cond` holds for the state; returns that state. Panics if it does not
    /// within five minutes of tokio's clock (an instant when the clock is paused).
    pub(crate) async fn until(&self, cond: impl Fn(&FakeState) -> bool) -> FakeState {
        let mut changed = self.0.changed.subscribe();
        let wait = async {
            loop {
                let state = self.state();
                if cond(&state) {
                    return state;
                }
                changed
                    .changed()
                    .await
                    .expect("the engine outlives its tests");
            }
        };
        match tokio::time::timeout(Duration::from_secs(300), wait).await {
            Ok(state) => state,
            Err(_) => panic!("the engine never got there; it is at {:?}", self.state()),
        }
    }

    /// The container's entry, if the engine is up and the container exists.
    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Container) -> T) -> Result<T, EngineError> {
        let mut inner = self.inner();
        if !inner.up {
            return Err(unreachable_error());
        }
        inner
            .containers
            .get_mut(id)
            .map(f)
            .ok_or_else(|| not_found(id))
    }

    fn launch_now(&self, image: &str, preloads: bool) -> Result<Launched, LaunchFailed> {
        let mut inner = self.inner();
        inner.state.launches.push(Instant::now());
        if !inner.up {
            drop(inner);
            self.bump();
            return Err(LaunchFailed {
                id: None,
                error: unreachable_error(),
            });
        }
        inner.next_id += 1;
        let id = format!("fake{:04}", inner.next_id);
        inner.state.images.insert(id.clone(), image.to_string());
        let (signals, signals_rx) = mpsc::unbounded_channel();
        let (exit_tx, exit) = watch::channel(None);
        let mut container = Container {
            signals,
            exit,
            oom: false,
            idle: false,
        };
        if inner.failing_launches > 0 {
            inner.failing_launches -= 1;
            // Created, never started: it holds nothing but its entry.
            inner.containers.insert(id.clone(), container);
            drop(inner);
            self.bump();
            return Err(LaunchFailed {
                id: Some(id),
                error: EngineError::Api("fake engine: cannot start the container".into()),
            });
        }
        let dies_unused = inner.dying_spares > 0;
        inner.dying_spares = inner.dying_spares.saturating_sub(1);
        container.idle = !dies_unused;
        inner.containers.insert(id.clone(), container);
        drop(inner);

        let (input, stdin) = tokio::io::duplex(64 << 10);
        let (out, output) = fmpsc::unbounded();
        let proc = Process {
            engine: self.clone(),
            id: id.clone(),
            out,
        };
        if preloads && !dies_unused {
            // As the real bootstrap does once its preload modules are imported.
            proc.write(false, Bytes::from_static(&[crate::bootstrap::READY]));
        }
        tokio::spawn(proc.run(stdin, signals_rx, exit_tx, dies_unused));
        self.bump();
        Ok(Launched {
            id,
            output: Box::pin(output),
            input: Box::pin(input),
        })
    }
}

impl Engine for FakeEngine {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn launch(&self, spec: Arc<SandboxSpec>) -> BoxFuture<'static, Result<Launched, LaunchFailed>> {
        let delay = self.inner().launch_delay;
        let result = self.launch_now(&spec.config.image, spec.preloads());
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            result
        })
    }

    fn wait(&self, id: &str) -> EngineResult<i64> {
        let exit = self.with(id, |c| c.exit.clone());
        let mut failure = self.0.wait_error.subscribe();
        Box::pin(async move {
            let mut exit = exit?;
            tokio::select! {
                status = exit.wait_for(Option::is_some) => match status {
                    Ok(status) => Ok(status.expect("waited for a status")),
                    Err(_) => Err(EngineError::Api("fake engine: the wait broke".into())),
                },
                error = failure.wait_for(Option::is_some) => {
                    Err(error.expect("the engine outlives its waits").clone().expect("an error"))
                }
            }
        })
    }

    fn oom_killed(&self, id: &str) -> EngineResult<bool> {
        let result = self.with(id, |c| c.oom);
        Box::pin(async move { result })
    }

    fn kill(&self, id: &str, signal: &'static str) -> EngineResult<()> {
        let result = self.with(id, |c| {
            let running = c.exit.borrow().is_none();
            if running && c.signals.send(signal).is_ok() {
                Ok(())
            } else {
                Err(EngineError::Conflict(format!(
                    "fake engine: container {id} is not running"
                )))
            }
        });
        let result = result.and_then(|r| r);
        if result.is_ok() {
            self.inner().state.kills.push((id.to_string(), signal));
            self.bump();
        }
        Box::pin(async move { result })
    }

    /// The fake has no file system: every fetch fails, as one from a container that
    /// died would.
    fn fetch(&self, id: &str, _path: &str) -> super::ArchiveStream {
        let error = EngineError::NotFound(format!("fake engine: no archive of {id}"));
        Box::pin(futures::stream::once(async move { Err(error) }))
    }

    fn remove(&self, id: &str) -> EngineResult<()> {
        let result = {
            let mut inner = self.inner();
            if !inner.up {
                Err(unreachable_error())
            } else {
                // Forced: a running container is killed first. One already gone counts
                // as removed.
                if let Some(c) = inner.containers.remove(id) {
                    let _ = c.signals.send("SIGKILL");
                    inner.state.removed.push(id.to_string());
                }
                Ok(())
            }
        };
        self.bump();
        Box::pin(async move { result })
    }

    fn ping(&self) -> EngineResult<()> {
        let result = match self.inner().up {
            true => Ok(()),
            false => Err(unreachable_error()),
        };
        let engine = self.clone();
        Box::pin(async move {
            if result.is_ok() {
                engine.inner().state.pings += 1;
                engine.bump();
            }
            result
        })
    }

    fn sweep(&self, _: &str) -> EngineResult<usize> {
        let engine = self.clone();
        let inner = self.inner();
        let list = match inner.up {
            true => Ok(inner.containers.keys().cloned().collect::<Vec<_>>()),
            false => Err(unreachable_error()),
        };
        drop(inner);
        Box::pin(async move {
            let ids = list?;
            for id in &ids {
                engine.remove(id).await?;
            }
            Ok(ids.len())
        })
    }

    fn take_lease(
        &self,
        instance: &str,
        run: &str,
        _: &str,
    ) -> BoxFuture<'static, Result<Lease, LeaseError>> {
        let mut inner = self.inner();
        let held_elsewhere = matches!(&inner.lease, Some((holder, _)) if holder != run);
        let result = if !inner.up {
            Err(unreachable_error().into())
        } else if held_elsewhere {
            Err(LeaseError::Held {
                instance: instance.to_string(),
                container: format!("lease.{instance}"),
            })
        } else {
            let (lost_tx, lost_rx) = oneshot::channel();
            let (release, released) = oneshot::channel::<()>();
            inner.lease = Some((run.to_string(), Some(lost_tx)));
            let (engine, run) = (self.clone(), run.to_string());
            tokio::spawn(async move {
                let _ = released.await;
                let mut inner = engine.inner();
                if matches!(&inner.lease, Some((holder, _)) if *holder == run) {
                    inner.lease = None;
                }
            });
            Ok(Lease {
                lost: Box::pin(async move {
                    if lost_rx.await.is_err() {
                        futures::future::pending::<()>().await;
                    }
                }),
                release,
            })
        };
        Box::pin(async move { result })
    }

    fn release_lease(&self, _: &str) -> EngineResult<()> {
        self.inner().lease = None;
        Box::pin(async { Ok(()) })
    }
}

/// How the simulated script ended.
enum End {
    Code(u8),
    Signal(u8),
}

fn signal_number(name: &str) -> u8 {
    match name {
        "SIGHUP" => 1,
        "SIGINT" => 2,
        "SIGQUIT" => 3,
        "SIGKILL" => 9,
        "SIGUSR1" => 10,
        "SIGUSR2" => 12,
        _ => 15,
    }
}

/// One container's main process: the simulated bootstrap and its script.
struct Process {
    engine: FakeEngine,
    id: String,
    out: fmpsc::UnboundedSender<Result<Output, EngineError>>,
}

impl Process {
    fn write(&self, stderr: bool, data: impl Into<Bytes>) {
        let data = data.into();
        let item = match stderr {
            false => Output::Stdout(data),
            true => Output::Stderr(data),
        };
        let _ = self.out.unbounded_send(Ok(item));
    }

    async fn run(
        self,
        stdin: DuplexStream,
        mut signals: mpsc::UnboundedReceiver<&'static str>,
        exit: watch::Sender<Option<i64>>,
        dies_unused: bool,
    ) {
        let (script_signals, script_signals_rx) = mpsc::unbounded_channel();
        let status = if dies_unused {
            137
        } else {
            let main = self.bootstrap(stdin, script_signals_rx);
            tokio::pin!(main);
            loop {
                tokio::select! {
                    status = &mut main => break status,
                    signal = signals.recv() => match signal {
                        Some("SIGKILL") | None => break 137,
                        Some(other) => { let _ = script_signals.send(other); }
                    },
                }
            }
        };
        // Its end closes the attach streams, then the engine reports the exit.
        let Process { engine, id, out } = self;
        drop(out);
        let delay = engine.inner().exit_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(c) = engine.inner().containers.get_mut(&id) {
            c.idle = false;
        }
        exit.send_replace(Some(status));
        engine.bump();
    }

    /// Reads the request as `src/bootstrap.py` does, answers the ACK, plays the script
    /// and writes the trailer on both streams; the container's exit status.
    async fn bootstrap(
        &self,
        mut stdin: DuplexStream,
        signals: mpsc::UnboundedReceiver<&'static str>,
    ) -> i64 {
        let mut head = [0u8; crate::bootstrap::REQUEST_HEAD];
        if stdin.read_exact(&mut head).await.is_err() {
            return 0; // the server went away before handing over a script
        }
        if let Some(c) = self.engine.inner().containers.get_mut(&self.id) {
            c.idle = false;
        }
        self.engine.bump();
        if &head[..4] != b"PYX5" {
            self.write(true, &b"pyexec bootstrap: bad request header\n"[..]);
            return 125;
        }
        let len = |at: usize| u32::from_be_bytes(head[at..at + 4].try_into().unwrap()) as usize;
        // The fake takes no files: script, name, args and get patterns.
        let mut body = vec![0u8; len(4) + len(8) + len(12) + len(36)];
        if stdin.read_exact(&mut body).await.is_err() {
            return 0;
        }
        let nonce: [u8; NONCE_LEN] = head[16..32].try_into().unwrap();
        let script = String::from_utf8_lossy(&body[..len(4)]).into_owned();
        if script.lines().next() == Some("die-before-ack") {
            self.write(true, &b"Traceback: the bootstrap died\n"[..]);
            return 1;
        }
        self.write(false, vec![ACK]);
        let end = self.play(&script, stdin, signals).await;
        let (kind, value, status) = match end {
            End::Code(c) => (b'E', c, c as i64),
            End::Signal(s) => (b'S', s, 128 + s as i64),
        };
        let mut trailer = nonce.to_vec();
        trailer.extend_from_slice(&[kind, value]);
        trailer.extend_from_slice(&FAKE_CPU_US.to_be_bytes());
        trailer.extend_from_slice(&FAKE_PEAK_MEMORY.to_be_bytes());
        self.write(false, trailer.clone());
        self.write(true, trailer);
        status
    }

    async fn play(
        &self,
        script: &str,
        mut stdin: DuplexStream,
        mut signals: mpsc::UnboundedReceiver<&'static str>,
    ) -> End {
        for line in script.lines() {
            let (command, text) = line.split_once(' ').unwrap_or((line, ""));
            match command {
                "print" => self.write(false, format!("{text}\n")),
                "eprint" => self.write(true, format!("{text}\n")),
                "exit" => return End::Code(text.parse().expect("exit N")),
                "sleep" => {
                    let signal = signals.recv().await.unwrap_or("SIGKILL");
                    return End::Signal(signal_number(signal));
                }
                "echo-stdin" => {
                    let mut buf = vec![0u8; 16 << 10];
                    while let Ok(n @ 1..) = stdin.read(&mut buf).await {
                        self.write(false, buf[..n].to_vec());
                    }
                }
                "oom" => {
                    if let Some(c) = self.engine.inner().containers.get_mut(&self.id) {
                        c.oom = true;
                    }
                    return End::Signal(9);
                }
                other => panic!("the fake engine's scripts have no command {other:?}"),
            }
        }
        End::Code(0)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use futures::StreamExt;

    use super::*;
    use crate::bootstrap::{hand_over, request, ScriptExit, Trailers};
    use crate::config::Cli;

    fn spec() -> Arc<SandboxSpec> {
        let cfg = Cli::try_parse_from(["pyexecd"])
            .unwrap()
            .serve
            .resolve()
            .unwrap();
        Arc::new(SandboxSpec::new(cfg.sandbox, cfg.instance))
    }

    /// Launches a container and runs `script` in it as the ContainerActor would: the
    /// script's stdout and stderr (trailers cut off), what the trailers said, the status.
    async fn run(engine: &FakeEngine, script: &str) -> (String, String, ScriptExit, i64) {
        let Ok(Launched { id, input, output }) = engine.launch(spec()).await else {
            panic!("the launch failed");
        };
        let nonce = *b"0123456789abcdef";
        let req = request(
            script.as_bytes(),
            "main.py",
            &["x".into()],
            &nonce,
            &Default::default(),
            0,
        );
        let (_input, rest, first) = hand_over(input, output, req).await.unwrap();
        let items: Vec<_> = futures::stream::iter(first.into_iter().map(Ok))
            .chain(rest)
            .collect()
            .await;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for item in items {
            match item.unwrap() {
                Output::Stdout(b) => out.extend_from_slice(&b),
                Output::Stderr(b) => err.extend_from_slice(&b),
            }
        }
        let trailers = Trailers::new(&nonce);
        let (at_out, exit) = trailers.find_end(&out).expect("a trailer on stdout");
        let (at_err, exit_err) = trailers.find_end(&err).expect("a trailer on stderr");
        assert_eq!(exit, exit_err);
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        let status = engine.wait(&id).await.unwrap();
        engine.remove(&id).await.unwrap();
        (
            text(&out[..at_out]),
            text(&err[..at_err]),
            exit.exit,
            status,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn it_speaks_the_bootstrap_wire_format() {
        let engine = FakeEngine::new();
        let (out, err, exit, status) = run(&engine, "print hi\neprint oops\nexit 3").await;
        assert_eq!((out.as_str(), err.as_str()), ("hi\n", "oops\n"));
        assert_eq!((exit, status), (ScriptExit::Code(3), 3));

        let (_, _, exit, status) = run(&engine, "oom").await;
        assert_eq!((exit, status), (ScriptExit::Signal(9), 137));
        let state = engine.state();
        assert!(state.present.is_empty() && state.removed.len() == 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_that_dies_before_the_ack_reports_why() {
        let engine = FakeEngine::new();
        let Ok(Launched { id, input, output }) = engine.launch(spec()).await else {
            panic!("the launch failed");
        };
        let req = request(
            b"die-before-ack",
            "main.py",
            &[],
            &[0; NONCE_LEN],
            &Default::default(),
            0,
        );
        let why = hand_over(input, output, req).await.err().unwrap();
        assert_eq!(why, "Traceback: the bootstrap died");
        assert_eq!(engine.wait(&id).await, Ok(1));
    }

    #[tokio::test(start_paused = true)]
    async fn knobs() {
        let engine = FakeEngine::new();
        engine.fail_launches(1);
        let failed = engine.launch(spec()).await.err().unwrap();
        assert!(matches!(failed.error, EngineError::Api(_)));
        assert_eq!(
            engine.state().present,
            [failed.id.unwrap()],
            "created, not started"
        );

        let launched = engine.launch(spec()).await.ok().unwrap();
        assert_eq!(engine.state().idle, std::slice::from_ref(&launched.id));
        let broken = EngineError::Api("broken".into());
        let wait = engine.wait(&launched.id);
        engine.fail_waits(Some(broken.clone()));
        assert_eq!(wait.await, Err(broken));
        engine.fail_waits(None);
        // An exit is reported 10 ms late by default, at once without the delay.
        engine.set_exit_delay(Duration::ZERO);
        let t0 = Instant::now();
        engine.kill(&launched.id, "SIGKILL").await.unwrap();
        assert_eq!(engine.wait(&launched.id).await, Ok(137));
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert!(engine
            .kill(&launched.id, "SIGKILL")
            .await
            .unwrap_err()
            .is_gone());

        engine.set_up(false);
        assert!(engine.ping().await.unwrap_err().is_unreachable());
        assert!(engine
            .remove(&launched.id)
            .await
            .unwrap_err()
            .is_unreachable());
        engine.set_up(true);
        assert_eq!(engine.sweep("pyexecd").await, Ok(2));
        assert!(engine.state().present.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn spares_that_die_unused_and_slow_launches() {
        let engine = FakeEngine::new();
        engine.die_unused(1);
        engine.set_launch_delay(Duration::from_millis(50));
        let t0 = Instant::now();
        let launched = engine.launch(spec()).await.ok().unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(50));
        assert_eq!(engine.wait(&launched.id).await, Ok(137));
        let state = engine
            .until(|s| s.launches.len() == 1 && s.idle.is_empty())
            .await;
        assert_eq!(state.present, [launched.id]);
        let next = engine.launch(spec()).await.ok().unwrap();
        assert_eq!(engine.state().idle, [next.id], "only the first one dies");
    }
}
