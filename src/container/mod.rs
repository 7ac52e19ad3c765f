//! The ContainerActor: one sandbox container from creation to removal, and its attach streams.
//!
//! It creates, attaches and starts the container before it knows the script (the
//! bootstrap waits on stdin), so the same actor serves a cold start and a warm pool.
//! Once given a `Run`, it pumps the session's stdin into the container and the
//! container's output into the session's bounded output channel (`pumps.rs`): when the
//! client reads slowly the channel fills, the pump stops reading the attach stream, the
//! engine's buffers fill and the script blocks on write. Nothing grows. Whatever happens,
//! the actor ends by removing its container and telling its owner that the slot is free.
//!
//! It knows the engine only through the `Engine` seam and its peers only through the
//! recipients in `ContainerDeps` and `Run`.

mod pumps;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::StreamExt;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use crate::bootstrap::{await_ack, hand_over, write_request, ScriptEnd, Trailers};
use crate::engine::{
    EngineError, InputSink, LaunchFailed, Launched, Output, OutputStream, SharedEngine,
};
use crate::files_out::FilesOut;
use crate::messages::{
    ContainerEvent, ContainerFailure, ContainerGone, ContainerHandle, ContainerReady, Finished,
    Kill, KillCause, Orphaned, Run, ScriptExit, Signal,
};
use crate::protocol::{Frame, Started, Usage};
use crate::sandbox::{script_uid, SandboxSpec};
use crate::status::ByteCounters;
use pumps::{pump_output, pump_stdin, AtLimit, Fetch, PumpEnd, Sent};

/// After a kill, output still on its way is forwarded for this long at most. Past it the
/// attach connection is closed: Docker does not report a container's exit while its copy
/// of the output is blocked on a client that does not read.
const KILL_DRAIN: Duration = Duration::from_millis(500);

/// With files wanted (feature `files`), how long the bootstrap has, once told to stop the
/// script (timeout, output limit, shutdown), to send the files before the container is
/// killed: bounded, so that a slow client or a huge file set cannot stretch a timeout.
const FILES_GRACE: Duration = Duration::from_secs(2);

/// How long after a first "no" the engine is asked again whether a SIGKILL was the OOM
/// killer's.
const OOM_RECHECK: Duration = Duration::from_millis(200);

/// A container that dies before it has accepted its script is replaced, transparently,
/// this many times in all before the session is told that the engine failed.
const MAX_LAUNCHES: u32 = 3;

/// Everything the actor needs from its creator.
#[derive(Clone)]
pub struct ContainerDeps {
    pub engine: SharedEngine,
    pub spec: Arc<SandboxSpec>,
    pub bytes: Arc<ByteCounters>,
    pub gone: Recipient<ContainerGone>,
    pub ready: Recipient<ContainerReady>,
    pub orphaned: Recipient<Orphaned>,
}

/// Where every container reports, whatever its engine.
#[derive(Clone)]
pub struct Owner {
    pub gone: Recipient<ContainerGone>,
    pub ready: Recipient<ContainerReady>,
    pub orphaned: Recipient<Orphaned>,
}

/// The Supervisor's spawner: a container of slot `key` on engine number `engine` of
/// `engines`, of image number `image` of `specs`, started ahead of demand when `warm`.
pub fn spawner(
    engines: &[SharedEngine],
    specs: Vec<Arc<SandboxSpec>>,
    bytes: Arc<ByteCounters>,
    owner: Owner,
) -> impl Fn(u64, usize, usize, bool) -> ContainerHandle {
    let deps: Vec<ContainerDeps> = engines
        .iter()
        .map(|engine| ContainerDeps {
            engine: engine.clone(),
            spec: specs[0].clone(),
            bytes: bytes.clone(),
            gone: owner.gone.clone(),
            ready: owner.ready.clone(),
            orphaned: owner.orphaned.clone(),
        })
        .collect();
    move |key, engine, image, warm| {
        let deps = ContainerDeps {
            spec: specs[image].clone(),
            ..deps[engine].clone()
        };
        spawn(deps, key, warm)
    }
}

/// Starts a container actor; what the Supervisor's spawner calls.
pub fn spawn(deps: ContainerDeps, key: u64, warm: bool) -> ContainerHandle {
    let addr = ContainerActor::new(deps, key, warm).start();
    ContainerHandle {
        run: addr.clone().recipient(),
        signal: addr.clone().recipient(),
        kill: addr.recipient(),
    }
}

/// Where the container is in its life.
enum Phase {
    /// Creating, attaching, starting.
    Launching,
    /// Started; the bootstrap imports the image's preload modules (the task awaits its
    /// READY on the output stream, `input` waits here).
    Preloading { task: SpawnHandle, input: InputSink },
    /// Started, the bootstrap waiting for its script on the attach streams held here.
    Ready {
        output: OutputStream,
        input: InputSink,
    },
    /// The script is being written; waiting for the bootstrap's ACK.
    Handover(SpawnHandle),
    /// The script runs; its output is pumped until `output_done`.
    Running,
    /// The container has exited; the last output may still be on its way.
    Exited,
    /// The outcome is being reported (the engine may be asked whether it was an OOM kill).
    Finishing,
    /// Being removed; then the actor stops.
    Removing,
    /// The removal was answered: `removed` unless it failed (the owner retries later).
    Gone { removed: bool },
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Launching => "launching",
            Phase::Preloading { .. } => "preloading",
            Phase::Ready { .. } => "ready",
            Phase::Handover(_) => "handover",
            Phase::Running => "running",
            Phase::Exited => "exited",
            Phase::Finishing => "finishing",
            Phase::Removing => "removing",
            Phase::Gone { .. } => "gone",
        }
    }
}

/// Whether, and why, the server is stopping the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    No,
    /// Asked while the container was being launched: carried out once it is started.
    Asked(KillCause),
    /// The server stopped (or is stopping) the script.
    Killed(KillCause),
    /// The server is stopping the script, files wanted: the bootstrap was told (SIGPWR)
    /// to kill the script and send the files; SIGKILL follows after `FILES_GRACE`.
    Collecting(KillCause),
}

/// Signals on their way to the script. At most one engine kill request is in flight per
/// container: a client that floods SIGNAL frames once had one request per frame in flight
/// at once (thousands of sockets, hundreds of MB, other sessions starved; issue 9).
#[derive(Debug, Default)]
enum Signals {
    #[default]
    Idle,
    /// A request is in flight; these follow it, each once, in the order first asked.
    /// Repeats of a waiting signal are merged, so this holds at most one of each name.
    Sending { next: Vec<&'static str> },
}

pub struct ContainerActor {
    deps: ContainerDeps,
    key: u64,
    /// Started ahead of demand (reported in STARTED); false again after a replacement.
    warm: bool,
    launches: u32,
    id: Option<String>,
    phase: Phase,
    /// The session's request, kept until the bootstrap has accepted the script, so that a
    /// replacement container can take it over.
    run: Option<Run>,
    /// The session's events, once its script runs (taken by the one report).
    events: Option<Recipient<ContainerEvent>>,
    launched_at: Instant,
    run_at: Option<Instant>,
    /// The session asked for files out: a stop for a timeout, the output limit or a
    /// shutdown lets the bootstrap send them first (`stop_for_files`).
    files_wanted: bool,
    exited_tx: watch::Sender<bool>,
    /// The container's exit status, and the script's own end if the bootstrap told it.
    status: Option<i64>,
    exact: Option<ScriptExit>,
    failure: Option<ContainerFailure>,
    /// What the bootstrap's trailer said the script used.
    measured: Option<ScriptEnd>,
    /// Output bytes the pump has handed to the session.
    delivered: Arc<AtomicU64>,
    output_done: bool,
    /// The create-attach-start under way, cancelled if the engine is lost meanwhile.
    launching: Option<SpawnHandle>,
    wait: Option<SpawnHandle>,
    pump: Option<SpawnHandle>,
    stdin_pump: Option<SpawnHandle>,
    stop: Stop,
    signals: Signals,
    unreachable: Option<EngineError>,
    /// The outcome has gone to a session.
    reported: bool,
    /// A failure nobody could be told of (no script had come): for the owner.
    unreported: Option<ContainerFailure>,
}

impl ContainerActor {
    /// `warm` marks a container started ahead of demand (reported in STARTED).
    pub fn new(deps: ContainerDeps, key: u64, warm: bool) -> Self {
        ContainerActor {
            deps,
            key,
            warm,
            launches: 0,
            id: None,
            phase: Phase::Launching,
            run: None,
            events: None,
            launched_at: Instant::now(),
            run_at: None,
            files_wanted: false,
            exited_tx: watch::channel(false).0,
            status: None,
            exact: None,
            failure: None,
            measured: None,
            delivered: Arc::new(AtomicU64::new(0)),
            output_done: false,
            launching: None,
            wait: None,
            pump: None,
            stdin_pump: None,
            stop: Stop::No,
            signals: Signals::Idle,
            unreachable: None,
            reported: false,
            unreported: None,
        }
    }

    fn short_id(&self) -> &str {
        self.id.as_deref().map_or("-", |id| &id[..id.len().min(12)])
    }

    fn killed(&self) -> Option<KillCause> {
        match self.stop {
            Stop::Killed(cause) | Stop::Collecting(cause) => Some(cause),
            _ => None,
        }
    }

    fn launch(&mut self, ctx: &mut Context<Self>) {
        self.launches += 1;
        self.phase = Phase::Launching;
        self.launched_at = Instant::now();
        let fut = self.deps.engine.launch(self.deps.spec.clone());
        self.launching = Some(ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            act.launching = None;
            match res {
                Ok(launched) => act.launched(launched, ctx),
                Err(failed) => act.launch_failed(failed, ctx),
            }
        })));
    }

    fn launched(&mut self, launched: Launched, ctx: &mut Context<Self>) {
        let Launched { id, output, input } = launched;
        self.id = Some(id.clone());
        debug!(container = %self.short_id(), ms = self.launched_at.elapsed().as_millis() as u64, "container started");
        self.phase = match self.deps.spec.preloads() {
            true => {
                let launch = self.launches;
                let fut = crate::bootstrap::await_ready(output);
                let task = ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                    // Stale: the container was replaced, or is ending, meanwhile.
                    if act.launches == launch && matches!(act.phase, Phase::Preloading { .. }) {
                        act.preloaded(res, ctx);
                    }
                }));
                Phase::Preloading { task, input }
            }
            false => Phase::Ready { output, input },
        };
        // Polled from now on, i.e. after start: a wait first polled after the exit still
        // answers with the default condition.
        let wait = self.deps.engine.wait(&id);
        self.wait = Some(
            ctx.spawn(
                wait.into_actor(self)
                    .map(|res, act, ctx| act.exited(res, ctx)),
            ),
        );
        if let Stop::Asked(cause) = self.stop {
            self.stop = Stop::Killed(cause);
            return self.finish(ctx);
        }
        if !matches!(self.phase, Phase::Preloading { .. }) {
            self.waiting(ctx);
        }
    }

    /// The preloading bootstrap said READY (or died first).
    fn preloaded(
        &mut self,
        res: Result<(OutputStream, Vec<Output>), String>,
        ctx: &mut Context<Self>,
    ) {
        let Phase::Preloading { input, .. } = std::mem::replace(&mut self.phase, Phase::Launching)
        else {
            return;
        };
        match res {
            Ok((output, noise)) => {
                if !noise.is_empty() {
                    // The image's own import noise is not the script's to see.
                    debug!(
                        container = self.short_id(),
                        chunks = noise.len(),
                        "output while preloading, dropped"
                    );
                }
                debug!(
                    container = self.short_id(),
                    ms = self.launched_at.elapsed().as_millis() as u64,
                    "preloaded"
                );
                self.phase = Phase::Ready { output, input };
                self.waiting(ctx);
            }
            Err(reason) => {
                self.phase = Phase::Ready {
                    output: Box::pin(futures::stream::empty()),
                    input,
                };
                self.replace(format!("it failed while preloading: {reason}"), ctx);
            }
        }
    }

    /// Ready for a script: the one it was given meanwhile, or the owner hears so.
    fn waiting(&mut self, ctx: &mut Context<Self>) {
        // Also for a cold start: the owner counts it as the engine starting containers.
        self.deps.ready.do_send(ContainerReady {
            key: self.key,
            ready: true,
        });
        if self.run.is_some() {
            self.hand_over(ctx);
        }
    }

    fn launch_failed(&mut self, failed: LaunchFailed, ctx: &mut Context<Self>) {
        warn!(engine = self.deps.engine.name(), error = %failed.error, "cannot start a sandbox container");
        if failed.error.is_unreachable() {
            self.unreachable = Some(failed.error.clone());
        }
        self.id = failed.id;
        self.failure = Some(ContainerFailure::Start(failed.error));
        self.finish(ctx);
    }

    /// Writes the script and waits for the bootstrap's ACK, keeping the session's
    /// request until then.
    fn hand_over(&mut self, ctx: &mut Context<Self>) {
        let Some(request) = self.run.as_ref().map(|r| r.request.clone()) else {
            return;
        };
        let phase = std::mem::replace(&mut self.phase, Phase::Launching);
        let Phase::Ready { output, input } = phase else {
            self.phase = phase;
            return;
        };
        if self.run.as_ref().is_some_and(|r| r.files_in) {
            return self.hand_over_with_files(input, output, request, ctx);
        }
        let fut = hand_over(input, output, request);
        let task = ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok((input, output, first)) => act.running(Some(input), output, first, ctx),
            Err(reason) => act.replace(reason, ctx),
        }));
        self.phase = Phase::Handover(task);
    }

    /// Feature `files`: the file records follow the request on stdin and the bootstrap
    /// acknowledges once they are in, so the stdin pump starts right after the request,
    /// streaming them (and then the script's stdin) as the client sends them: a 50 MiB
    /// file never sits whole in the daemon.
    fn hand_over_with_files(
        &mut self,
        input: InputSink,
        output: OutputStream,
        request: bytes::Bytes,
        ctx: &mut Context<Self>,
    ) {
        let fut = write_request(input, request);
        let task = ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let input = match res {
                Ok(input) => input,
                Err(reason) => return act.replace(reason, ctx),
            };
            let Some(run) = act.run.as_ref() else { return };
            let stdin = pump_stdin(
                input,
                run.stdin.clone(),
                run.control.clone(),
                run.stdin_in_flight.clone(),
                act.exited_tx.subscribe(),
            );
            act.stdin_pump = Some(ctx.spawn(stdin.into_actor(act)));
            let ack = await_ack(output);
            let task = ctx.spawn(ack.into_actor(act).map(|res, act, ctx| match res {
                Ok((output, first)) => act.running(None, output, first, ctx),
                Err(reason) => act.replace(reason, ctx),
            }));
            act.phase = Phase::Handover(task);
        }));
        self.phase = Phase::Handover(task);
    }

    /// The container died (or misbehaved) before accepting its script: start another one
    /// for the same request, unless that has failed too often already.
    fn replace(&mut self, reason: String, ctx: &mut Context<Self>) {
        if self.stop != Stop::No {
            return self.finish(ctx);
        }
        // Files already streamed into this container cannot be sent again: the client's
        // bytes are gone from the queue. The session hears of the failure instead.
        let streamed = self.stdin_pump.is_some() && self.run.as_ref().is_some_and(|r| r.files_in);
        if self.launches >= MAX_LAUNCHES || streamed {
            self.failure = Some(ContainerFailure::Bootstrap(reason));
            return self.finish(ctx);
        }
        info!(container = self.short_id(), %reason, "sandbox container lost before its script started; replacing it");
        if let Some(handle) = self.wait.take() {
            ctx.cancel_future(handle);
        }
        match std::mem::replace(&mut self.phase, Phase::Launching) {
            Phase::Handover(task) | Phase::Preloading { task, .. } => {
                ctx.cancel_future(task);
            }
            _ => {}
        }
        if let Some(id) = self.id.take() {
            let removal = self.deps.engine.remove(&id);
            let orphaned = self.deps.orphaned.clone();
            let key = self.key;
            actix_rt::spawn(async move {
                if removal.await.is_err() {
                    orphaned.do_send(Orphaned { key, id });
                }
            });
        }
        self.exited_tx = watch::channel(false).0;
        self.status = None;
        self.failure = None;
        self.warm = false;
        self.launch(ctx);
    }

    /// The script is in: wire the session's streams and start pumping.
    fn running(
        &mut self,
        input: Option<InputSink>,
        output: OutputStream,
        first: Vec<Output>,
        ctx: &mut Context<Self>,
    ) {
        let Some(run) = self.run.take() else { return };
        // An exit seen during the hand-over (a script shorter than the ACK's way back):
        // the output is drained from here on, as after any exit.
        self.phase = match self.status {
            Some(_) => Phase::Exited,
            None => Phase::Running,
        };
        let since = self
            .run_at
            .map_or(self.launched_at, |r| r.max(self.launched_at));
        // On the control path before any STDIN_CREDIT the stdin pump may send.
        let _ = run.control.send(Frame::Started(Started {
            queued_ms: run.queued_ms,
            start_ms: run.admitted_at.elapsed().as_millis() as u64,
            warm: self.warm,
        }));
        run.events.do_send(ContainerEvent::Started {
            latency: since.elapsed(),
            warm: self.warm,
            engine: self.deps.engine.name().into(),
        });
        self.events = Some(run.events);

        // With files in, the stdin pump runs already (`hand_over_with_files`).
        if let Some(input) = input {
            let stdin = pump_stdin(
                input,
                run.stdin,
                run.control,
                run.stdin_in_flight,
                self.exited_tx.subscribe(),
            );
            self.stdin_pump = Some(ctx.spawn(stdin.into_actor(self)));
        }

        let mut sent = Sent::new(
            run.output_limit,
            self.events.clone(),
            self.deps.bytes.clone(),
            self.delivered.clone(),
        );
        self.files_wanted = run.files_out.is_some();
        if self.files_wanted {
            sent = sent.at_limit(self.limit_notice(ctx));
        }
        let output = futures::stream::iter(first.into_iter().map(Ok)).chain(output);
        let pump = pump_output(
            Box::pin(output),
            run.output,
            self.exited_tx.subscribe(),
            Trailers::new(&run.nonce),
            sent,
            run.files_out
                .map(|(bytes, count)| (FilesOut::new(bytes, count), self.fetch())),
            run.input_wanted,
        );
        self.pump = Some(
            ctx.spawn(
                pump.into_actor(self)
                    .map(|end, act, ctx| act.output_ended(end, ctx)),
            ),
        );
    }

    /// How the pump fetches the files the bootstrap names: from this container, through
    /// its engine's archive API.
    fn fetch(&self) -> Fetch {
        let (engine, id) = (
            self.deps.engine.clone(),
            self.id.clone().unwrap_or_default(),
        );
        Fetch {
            open: Box::new(move |path| engine.fetch(&id, path)),
            owner: script_uid(&self.deps.spec.config.user),
        }
    }

    /// Files wanted: the pump goes on past the output limit, and says so through this.
    fn limit_notice(&mut self, ctx: &mut Context<Self>) -> AtLimit {
        let (tell, told) = oneshot::channel();
        ctx.spawn(told.into_actor(self).map(|res, act, ctx| {
            if res.is_ok() {
                act.kill(KillCause::OutputLimit, ctx);
            }
        }));
        AtLimit::Discard(Some(tell))
    }

    fn exited(&mut self, res: Result<i64, EngineError>, ctx: &mut Context<Self>) {
        self.wait = None;
        match res {
            Ok(code) => self.status = Some(code),
            Err(e) => {
                self.failure.get_or_insert(self.lost(e));
            }
        }
        debug!(container = self.short_id(), code = ?self.status, "container exited");
        let _ = self.exited_tx.send(true);
        match self.phase {
            Phase::Running => {
                self.phase = Phase::Exited;
                if self.output_done {
                    self.finish(ctx);
                }
            }
            // The exit may come before the ACK is read, though the bootstrap took the
            // script (a short script, a busy actor): the hand-over's own result decides.
            // Without an ACK it fails on the closed output, and the container is
            // replaced then; replacing it here ran such a script twice.
            Phase::Handover(_) => {}
            // A spare that died unused (killed from outside, the engine restarted):
            // replace it in place, so that a session the Supervisor handed it to in the
            // meantime is served all the same.
            Phase::Ready { .. } | Phase::Preloading { .. } => {
                warn!(container = self.short_id(), code = ?self.status, "warm container died unused; replacing it");
                self.deps.ready.do_send(ContainerReady {
                    key: self.key,
                    ready: false,
                });
                let reason = format!("it exited with status {:?} while waiting", self.status);
                self.replace(reason, ctx);
            }
            _ => {}
        }
    }

    fn output_ended(&mut self, end: PumpEnd, ctx: &mut Context<Self>) {
        self.pump = None;
        self.output_done = true;
        match end {
            PumpEnd::Eof | PumpEnd::Drained => {}
            // Death by SIGKILL may be the OOM killer: only the engine can tell, once the
            // container has exited, so that case takes the slow path.
            PumpEnd::Trailer(end) if end.exit == ScriptExit::Signal(9) => {
                self.measured = Some(end);
                if self.files_wanted {
                    self.release_bootstrap(ctx);
                }
            }
            PumpEnd::Trailer(end) => {
                self.measured = Some(end);
                let exit = end.exit;
                self.exact = Some(exit);
                self.status = Some(match exit {
                    ScriptExit::Code(c) => c as i64,
                    ScriptExit::Signal(n) => 128 + n as i64,
                });
                if let Some(wait) = self.wait.take() {
                    ctx.cancel_future(wait);
                }
                let _ = self.exited_tx.send(true);
                return self.finish(ctx);
            }
            PumpEnd::Limit => self.kill(KillCause::OutputLimit, ctx),
            PumpEnd::ClientGone => self.kill(KillCause::ClientGone, ctx),
            PumpEnd::Failed(e) => {
                self.failure.get_or_insert(self.lost(e));
                self.kill(KillCause::EngineFailed, ctx);
            }
        }
        if matches!(self.phase, Phase::Exited) {
            self.finish(ctx);
        }
    }

    fn kill(&mut self, cause: KillCause, ctx: &mut Context<Self>) {
        match self.phase {
            Phase::Launching => {
                if self.stop == Stop::No {
                    self.stop = Stop::Asked(cause);
                }
            }
            Phase::Ready { .. } | Phase::Preloading { .. } => {
                if self.killed().is_none() {
                    self.stop = Stop::Killed(cause);
                }
                self.finish(ctx);
            }
            Phase::Handover(_) | Phase::Running => {
                if self.killed().is_some() {
                    return;
                }
                if matches!(self.phase, Phase::Handover(_)) {
                    // The script never started: nothing to wait for.
                    self.stop = Stop::Killed(cause);
                    return self.finish(ctx);
                }
                if self.files_wanted && cause.leaves_files() {
                    return self.stop_for_files(cause, ctx);
                }
                self.hard_kill(cause, ctx);
            }
            Phase::Exited => {
                // Output is stuck behind a client that does not read: stop waiting for it.
                if let Some(pump) = self.pump.take() {
                    ctx.cancel_future(pump);
                    self.output_done = true;
                }
                self.finish(ctx);
            }
            Phase::Finishing | Phase::Removing | Phase::Gone { .. } => {}
        }
    }

    /// The files out have ended, and the bootstrap may be waiting to be removed (it keeps
    /// /tmp alive while files are fetched from it, `files_out`): here the container's
    /// exit is awaited (it tells an OOM kill), so it is killed now, not as a stop of the
    /// script (its end is known), or the session waited out its time limit (a script
    /// killed by signal 9 with a big file asked for ended at 60 s, status 124).
    fn release_bootstrap(&mut self, ctx: &mut Context<Self>) {
        let fut = self
            .deps
            .engine
            .kill(self.id.as_deref().unwrap_or_default(), "SIGKILL");
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            // Gone already: it had nothing to wait for.
            Ok(()) => {}
            Err(e) if e.is_gone() => {}
            // Its exit would come only at the time limit: end now, as a kill that fails
            // does (`hard_kill`); the removal tries again.
            Err(e) => {
                warn!(container = act.short_id(), error = %e, "cannot release the bootstrap");
                act.failure.get_or_insert(ContainerFailure::Kill(e));
                act.finish(ctx);
            }
        }));
    }

    /// SIGKILL to the container: the script and the bootstrap die at once.
    fn hard_kill(&mut self, cause: KillCause, ctx: &mut Context<Self>) {
        self.stop = Stop::Killed(cause);
        let fut = self
            .deps
            .engine
            .kill(self.id.as_deref().unwrap_or_default(), "SIGKILL");
        ctx.run_later(KILL_DRAIN, |act, ctx| act.close_attach(ctx));
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(()) => {}
            // It had exited on its own just before: its own status stands.
            Err(e) if e.is_gone() => {
                if cause != KillCause::OutputLimit {
                    act.stop = Stop::No;
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot kill container");
                act.failure.get_or_insert(ContainerFailure::Kill(e));
                act.finish(ctx);
            }
        }));
    }

    /// Files wanted: SIGPWR to the container, which docker-init hands to the bootstrap
    /// alone (it does not forward it to the script); the bootstrap kills the script's
    /// tree, writes its trailer and sends the files, and the pump carries them as after
    /// any end. Whatever is not done after `FILES_GRACE` ends by SIGKILL, so a timeout
    /// still ends within the grace.
    fn stop_for_files(&mut self, cause: KillCause, ctx: &mut Context<Self>) {
        self.stop = Stop::Collecting(cause);
        debug!(
            container = self.short_id(),
            ?cause,
            "stopping the script; files first"
        );
        let fut = self
            .deps
            .engine
            .kill(self.id.as_deref().unwrap_or_default(), "SIGPWR");
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(()) => {}
            // It had exited on its own just before: as for a SIGKILL (`hard_kill`).
            Err(e) if e.is_gone() => {
                if cause != KillCause::OutputLimit {
                    act.stop = Stop::No;
                }
            }
            Err(e) => {
                debug!(error = %e, "cannot tell the bootstrap to stop; killing");
                act.hard_kill(cause, ctx);
            }
        }));
        ctx.run_later(FILES_GRACE, move |act, ctx| {
            let done = matches!(
                act.phase,
                Phase::Finishing | Phase::Removing | Phase::Gone { .. }
            );
            if !done && act.stop == Stop::Collecting(cause) {
                debug!(
                    container = act.short_id(),
                    "files not all sent within the grace"
                );
                act.hard_kill(cause, ctx);
                if matches!(act.phase, Phase::Exited) {
                    act.close_attach(ctx);
                }
            }
        });
    }

    /// Stops both pumps, which closes the attach connection.
    fn close_attach(&mut self, ctx: &mut Context<Self>) {
        for handle in [self.pump.take(), self.stdin_pump.take()]
            .into_iter()
            .flatten()
        {
            ctx.cancel_future(handle);
        }
        if !self.output_done {
            self.output_done = true;
            if matches!(self.phase, Phase::Exited) {
                self.finish(ctx);
            }
        }
    }

    /// Reports the outcome (once) and removes the container.
    fn finish(&mut self, ctx: &mut Context<Self>) {
        if matches!(
            self.phase,
            Phase::Finishing | Phase::Removing | Phase::Gone { .. }
        ) {
            return;
        }
        if let Phase::Preloading { task, .. } = &self.phase {
            ctx.cancel_future(*task);
        }
        // Dropping a Ready phase's streams closes our ends of the attach.
        self.phase = Phase::Finishing;
        let oom_possible =
            self.status == Some(137) && self.killed().is_none() && self.exact.is_none();
        match (oom_possible, self.id.clone()) {
            (true, Some(id)) => {
                let engine = self.deps.engine.clone();
                let fut = async move {
                    // The engine learns of the OOM kill from an event that can trail the
                    // exit its wait reported: look once more, shortly, before calling a
                    // SIGKILL "killed by signal 9" (seen once under a full test suite).
                    match engine.oom_killed(&id).await {
                        Ok(false) => {
                            tokio::time::sleep(OOM_RECHECK).await;
                            engine.oom_killed(&id).await
                        }
                        other => other,
                    }
                };
                ctx.wait(fut.into_actor(self).map(|res, act, ctx| {
                    act.report(res.unwrap_or(false));
                    act.remove(ctx);
                }));
            }
            _ => {
                self.report(false);
                self.remove(ctx);
            }
        }
    }

    /// What the script used: the bootstrap's cgroup readings (none when the container
    /// ended without its trailer) and the output the pump delivered.
    fn usage(&self) -> Usage {
        Usage {
            cpu_ms: self.measured.and_then(|m| m.cpu_us).map(|us| us / 1000),
            peak_memory_bytes: self.measured.and_then(|m| m.peak_memory),
            output_bytes: Some(self.delivered.load(Ordering::Relaxed)),
        }
    }

    /// What the session is told: an engine failure before the script's end was known
    /// wins over a kill asked for meanwhile; a kill wins over the status it caused.
    fn outcome(&self, oom: bool) -> Finished {
        match (self.status, &self.failure, self.killed()) {
            (None, Some(failure), _) => Finished::Failed(failure.clone()),
            (_, _, Some(cause)) => Finished::Killed(cause),
            (Some(status), _, None) => Finished::Exited {
                status,
                exact: self.exact,
                oom,
                usage: self.usage(),
            },
            (None, None, None) => Finished::Unknown,
        }
    }

    /// Tells the session how its script ended, once. A failure before the script started
    /// goes to the owner instead (`ContainerGone::unreported`, with the script if it had
    /// come), which places the session on another engine once before it hears of it.
    fn report(&mut self, oom: bool) {
        if self.reported {
            return;
        }
        if self.events.is_none() && self.relocatable() {
            if let Some(failure) = self.failure.clone() {
                self.unreported = Some(failure);
                return;
            }
        }
        let events = self
            .events
            .take()
            .or_else(|| self.run.take().map(|r| r.events));
        match (events, self.outcome(oom)) {
            (Some(events), outcome) => {
                self.reported = true;
                events.do_send(ContainerEvent::Finished(outcome));
            }
            (None, Finished::Failed(failure)) => self.unreported = Some(failure),
            (None, _) => {}
        }
    }

    fn remove(&mut self, ctx: &mut Context<Self>) {
        self.phase = Phase::Removing;
        let Some(id) = self.id.clone() else {
            self.phase = Phase::Gone { removed: true };
            return ctx.stop();
        };
        let fut = self.deps.engine.remove(&id);
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| {
            if let Err(e) = &res {
                warn!(container = act.short_id(), error = %e, "cannot remove container; will retry");
            }
            act.phase = Phase::Gone {
                removed: res.is_ok(),
            };
            ctx.stop();
        }));
    }

    /// Sends one kill request; the next waiting signal goes when it has been answered.
    fn send_signal(&mut self, sig: &'static str, ctx: &mut Context<Self>) {
        if !matches!(self.signals, Signals::Sending { .. }) {
            self.signals = Signals::Sending { next: Vec::new() };
        }
        let fut = self
            .deps
            .engine
            .kill(self.id.as_deref().unwrap_or_default(), sig);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(()) => debug!(signal = sig, "signal forwarded"),
                Err(e) => debug!(error = %e, signal = sig, "signal not delivered"),
            }
            let next = match &mut act.signals {
                Signals::Sending { next } if !next.is_empty() => Some(next.remove(0)),
                _ => None,
            };
            match next {
                Some(sig) if matches!(act.phase, Phase::Running) && act.killed().is_none() => {
                    act.send_signal(sig, ctx)
                }
                _ => act.signals = Signals::Idle,
            }
        }));
    }

    /// The engine is out of service: nothing can be asked of it (a call could hang until
    /// the transport's timeout), so everything stops here, now. The session hears at
    /// once; the container is left for the sweep when the engine comes back.
    fn abandon(&mut self, ctx: &mut Context<Self>) {
        if matches!(self.phase, Phase::Removing | Phase::Gone { .. }) {
            return;
        }
        for handle in [
            self.launching.take(),
            self.wait.take(),
            self.pump.take(),
            self.stdin_pump.take(),
        ]
        .into_iter()
        .flatten()
        {
            ctx.cancel_future(handle);
        }
        if let Phase::Handover(task) = std::mem::replace(&mut self.phase, Phase::Finishing) {
            ctx.cancel_future(task);
        }
        // A script whose end is known keeps it; otherwise the engine's loss is the news.
        if self.status.is_none() {
            self.stop = Stop::Killed(KillCause::EngineLost);
            self.failure.get_or_insert(
                self.lost(EngineError::Unreachable("it is out of service".to_string())),
            );
        }
        self.report(false);
        self.phase = Phase::Gone { removed: false };
        ctx.stop();
    }

    fn lost(&self, error: EngineError) -> ContainerFailure {
        ContainerFailure::Lost {
            engine: self.deps.engine.name().into(),
            error,
        }
    }

    /// Whether a failure before the script started may be retried elsewhere: not when the
    /// server itself stopped the container for its session (a timeout, a cancel).
    fn relocatable(&self) -> bool {
        matches!(
            self.stop,
            Stop::No | Stop::Asked(KillCause::EngineLost) | Stop::Killed(KillCause::EngineLost)
        )
    }
}

impl Actor for ContainerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.launch(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // A container whose removal failed (or never ran) is handed back for a retry.
        let leaked = match self.phase {
            Phase::Gone { removed: true } => None,
            _ => self.id.clone(),
        };
        self.report(false);
        self.deps.gone.do_send(ContainerGone {
            key: self.key,
            leaked,
            unreachable: self.unreachable.take(),
            unreported: self.unreported.take(),
        });
    }
}

impl Handler<Run> for ContainerActor {
    type Result = ();

    fn handle(&mut self, run: Run, ctx: &mut Context<Self>) {
        self.run_at = Some(Instant::now());
        match self.phase {
            // Handed over once the container is started (and has preloaded).
            Phase::Launching | Phase::Preloading { .. } if self.run.is_none() => {
                self.run = Some(run)
            }
            Phase::Ready { .. } if self.run.is_none() => {
                self.run = Some(run);
                self.hand_over(ctx);
            }
            // Ending before it ever ran a script: the script goes back to the owner with
            // the failure (see `report`), to be placed elsewhere.
            Phase::Finishing | Phase::Removing
                if self.run.is_none() && self.events.is_none() && !self.reported =>
            {
                self.run = Some(run);
                self.failure.get_or_insert(ContainerFailure::Gone);
            }
            _ => {
                debug!(
                    phase = self.phase.name(),
                    "a script came for a container that cannot take it"
                );
                run.events
                    .do_send(ContainerEvent::Finished(Finished::Failed(
                        ContainerFailure::Gone,
                    )));
            }
        }
    }
}

impl Handler<Signal> for ContainerActor {
    type Result = ();

    fn handle(&mut self, Signal(sig): Signal, ctx: &mut Context<Self>) {
        if !matches!(self.phase, Phase::Running) || self.killed().is_some() {
            return;
        }
        match &mut self.signals {
            Signals::Idle => self.send_signal(sig, ctx),
            Signals::Sending { next } if !next.contains(&sig) => next.push(sig),
            Signals::Sending { .. } => debug!(signal = sig, "signal merged with a waiting one"),
        }
    }
}

impl Handler<Kill> for ContainerActor {
    type Result = ();

    fn handle(&mut self, Kill(cause): Kill, ctx: &mut Context<Self>) {
        match cause {
            KillCause::EngineLost => self.abandon(ctx),
            cause => self.kill(cause, ctx),
        }
    }
}
