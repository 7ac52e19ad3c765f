//! The ContainerActor: one sandbox container from creation to removal, and its attach streams.
//!
//! It creates, attaches and starts the container before it knows the script (the
//! bootstrap waits on stdin), so the same actor serves a cold start and a warm pool.
//! Once given a `Run`, it pumps the session's stdin into the container and the
//! container's output into the session's bounded output channel: when the client reads
//! slowly the channel fills, the pump stops reading the attach stream, Docker's buffers
//! fill and the script blocks on write. Nothing grows. Whatever happens, the actor ends
//! by removing its container and telling its owner (the Supervisor) that the slot is free.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bollard::container::LogOutput;
use bollard::query_parameters::{AttachContainerOptionsBuilder, CreateContainerOptionsBuilder};
use bollard::Docker;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::docker::{is_conflict, is_not_found, remove};
use crate::protocol::{Frame, Started, DATA_CHUNK};
use crate::sandbox::{SandboxSpec, NONCE_LEN};
use crate::status::ByteCounters;
use crate::stdin_queue::StdinQueue;

type AttachOutput = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;
type AttachInput = Pin<Box<dyn AsyncWrite + Send>>;

/// After the container has exited, output that does not arrive within this long is taken
/// to be all there is. Docker normally ends the attach stream promptly once stdin is
/// closed (which we do on exit); this only bounds the case where it does not.
const DRAIN_IDLE: Duration = Duration::from_millis(1500);

/// After a kill, output still on its way is forwarded for this long at most. Past it the
/// attach connection is closed: Docker does not report a container's exit while its copy
/// of the output is blocked on a client that does not read.
const KILL_DRAIN: Duration = Duration::from_millis(500);

/// Why the server stopped a script itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillCause {
    Timeout,
    Cancelled,
    Shutdown,
    OutputLimit,
    /// The client disconnected; nobody will read the result.
    ClientGone,
    /// The container was a warm spare nobody needs any more.
    Discarded,
}

/// Hands a script to the container and wires its streams to a session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Run {
    /// The bootstrap request (`sandbox::bootstrap_request`).
    pub request: Bytes,
    /// The nonce inside `request`, which marks the bootstrap's trailer.
    pub nonce: [u8; NONCE_LEN],
    /// When the session was admitted, and how long it had queued: for STARTED.
    pub admitted_at: Instant,
    pub queued_ms: u64,
    pub stdin: Arc<StdinQueue>,
    /// Bounded: this is where backpressure from a slow client comes from.
    pub output: mpsc::Sender<Frame>,
    /// Unbounded control path to the client, used for STDIN_CREDIT.
    pub control: mpsc::UnboundedSender<Frame>,
    /// STDIN bytes the client has sent that have not been written to the container yet.
    pub stdin_in_flight: Arc<AtomicU64>,
    pub output_limit: u64,
    pub events: Recipient<ContainerEvent>,
}

/// Deliver a signal (SIGINT for Ctrl-C) to the script, by name.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Signal(pub &'static str);

/// Signals on their way to the script. At most one Docker kill request is in flight per
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

/// Stop the script now and end the container.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kill(pub KillCause);

/// What a session hears from its container.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum ContainerEvent {
    /// The script has been handed to Python (STARTED is already queued for the client).
    Started { latency: Duration, warm: bool },
    /// The script's first output is on its way to the client.
    FirstOutput,
    /// The script is over and all its output has been queued for the client.
    Finished(Finished),
}

/// How the script's process ended, as its parent in the container saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptExit {
    Code(i32),
    Signal(i32),
}

#[derive(Debug, Clone, Default)]
pub struct Finished {
    /// The container's exit status, when it ran and was waited for (128 + N for a signal).
    pub exit_code: Option<i64>,
    /// The script's own end, when the bootstrap reported it: this tells `sys.exit(137)`
    /// from death by SIGKILL, which the container's status cannot.
    pub script_exit: Option<ScriptExit>,
    /// The kernel's OOM killer fired in the container.
    pub oom: bool,
    /// The server killed the script, and why.
    pub killed: Option<KillCause>,
    /// Docker failed; the script's fate is unknown.
    pub error: Option<String>,
}

/// Sent to the owner once, when the container is removed (or could not be).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ContainerGone {
    pub key: u64,
    /// The container's ID if it was created but its removal failed: retry later.
    pub leaked: Option<String>,
    /// Set when the Engine could not be reached: the owner stops launching until it can.
    pub unreachable: Option<String>,
}

/// Sent to the owner when the container is started and waiting for its script (`ready`),
/// and when a spare that died is being replaced (`!ready`): it is then a container being
/// started again, no longer one to count as ready.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ContainerReady {
    pub key: u64,
    pub ready: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Creating, attaching, starting.
    Launching,
    /// Started, the bootstrap waiting for its script.
    Ready,
    /// The script is being written; waiting for the bootstrap's ACK.
    Handover,
    Running,
    /// The container has exited; the last output may still be on its way.
    Exited,
    Removing,
}

/// A container that dies before it has accepted its script is replaced, transparently,
/// this many times in all before the session is told that Docker failed.
const MAX_LAUNCHES: u32 = 3;

/// A container whose removal failed, handed to the owner for a later retry.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Orphaned(pub String);

/// Everything the actor needs from its creator.
#[derive(Clone)]
pub struct ContainerDeps {
    pub docker: Docker,
    pub spec: Arc<SandboxSpec>,
    pub bytes: Arc<ByteCounters>,
    pub gone: Recipient<ContainerGone>,
    pub ready: Recipient<ContainerReady>,
    pub orphaned: Recipient<Orphaned>,
    /// Bounds each container's TCP socket memory between its start and its script.
    pub tcp_memory: Arc<crate::tcp_memory::TcpMemGuard>,
}

pub struct ContainerActor {
    deps: ContainerDeps,
    key: u64,
    /// Started ahead of demand (reported in STARTED); false again after a replacement.
    warm: bool,
    launches: u32,
    id: Option<String>,
    phase: Phase,
    attach: Option<(AttachOutput, AttachInput)>,
    /// The session's request, kept until the bootstrap has accepted the script, so that a
    /// replacement container can take it over.
    run: Option<Run>,
    events: Option<Recipient<ContainerEvent>>,
    launched_at: Instant,
    run_at: Option<Instant>,
    exited_tx: watch::Sender<bool>,
    exit_code: Option<i64>,
    script_exit: Option<ScriptExit>,
    error: Option<String>,
    output_done: bool,
    wait: Option<SpawnHandle>,
    handover: Option<SpawnHandle>,
    pump: Option<SpawnHandle>,
    stdin_pump: Option<SpawnHandle>,
    killed: Option<KillCause>,
    kill_requested: Option<KillCause>,
    signals: Signals,
    finished: bool,
    leaked: bool,
    unreachable: Option<String>,
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
            attach: None,
            run: None,
            events: None,
            launched_at: Instant::now(),
            run_at: None,
            exited_tx: watch::channel(false).0,
            exit_code: None,
            script_exit: None,
            error: None,
            output_done: false,
            wait: None,
            handover: None,
            pump: None,
            stdin_pump: None,
            killed: None,
            kill_requested: None,
            signals: Signals::Idle,
            finished: false,
            leaked: false,
            unreachable: None,
        }
    }

    fn short_id(&self) -> &str {
        self.id.as_deref().map_or("-", |id| &id[..id.len().min(12)])
    }

    fn launch(&mut self, ctx: &mut Context<Self>) {
        self.launches += 1;
        self.phase = Phase::Launching;
        self.launched_at = Instant::now();
        let fut = launch(
            self.deps.docker.clone(),
            self.deps.spec.clone(),
            self.deps.tcp_memory.clone(),
        );
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok((id, attach)) => act.launched(id, attach, ctx),
            Err((id, e)) => act.launch_failed(id, e, ctx),
        }));
    }

    fn launched(
        &mut self,
        id: String,
        attach: (AttachOutput, AttachInput),
        ctx: &mut Context<Self>,
    ) {
        self.id = Some(id.clone());
        debug!(container = %self.short_id(), ms = self.launched_at.elapsed().as_millis() as u64, "container started");
        self.attach = Some(attach);
        self.phase = Phase::Ready;
        // Polled from now on, i.e. after start: a wait first polled after the exit still
        // answers with the default condition.
        let wait = wait_exit(self.deps.docker.clone(), id);
        self.wait = Some(
            ctx.spawn(
                wait.into_actor(self)
                    .map(|res, act, ctx| act.exited(res, ctx)),
            ),
        );
        if let Some(cause) = self.kill_requested {
            self.killed = Some(cause);
            return self.finish(ctx);
        }
        if self.run.is_some() {
            self.hand_over(ctx);
        } else {
            self.deps.ready.do_send(ContainerReady {
                key: self.key,
                ready: true,
            });
        }
    }

    fn launch_failed(&mut self, id: Option<String>, err: LaunchError, ctx: &mut Context<Self>) {
        warn!(error = %err, "cannot start a sandbox container");
        if matches!(&err, LaunchError::Engine(e) if crate::docker::is_unreachable(e)) {
            self.unreachable = Some(err.to_string());
        }
        self.id = id;
        self.error = Some(format!("cannot start a sandbox container: {err}"));
        self.finish(ctx);
    }

    /// Writes the script and waits for the bootstrap's ACK, keeping the session's
    /// request until then.
    fn hand_over(&mut self, ctx: &mut Context<Self>) {
        let (Some((output, input)), Some(run)) = (self.attach.take(), self.run.as_ref()) else {
            return;
        };
        self.phase = Phase::Handover;
        let fut = hand_over(input, output, run.request.clone());
        self.handover = Some(ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            act.handover = None;
            match res {
                Ok((input, output, first)) => act.running(input, output, first, ctx),
                Err(reason) => act.replace(reason, ctx),
            }
        })));
    }

    /// The container died (or misbehaved) before accepting its script: start another one
    /// for the same request, unless that has failed too often already.
    fn replace(&mut self, reason: String, ctx: &mut Context<Self>) {
        if self.killed.is_some() || self.kill_requested.is_some() {
            return self.finish(ctx);
        }
        if self.launches >= MAX_LAUNCHES {
            self.error = Some(format!(
                "the sandbox container failed before running the script: {reason}"
            ));
            return self.finish(ctx);
        }
        info!(container = self.short_id(), %reason, "sandbox container lost before its script started; replacing it");
        for handle in [self.wait.take(), self.handover.take()]
            .into_iter()
            .flatten()
        {
            ctx.cancel_future(handle);
        }
        self.attach = None;
        if let Some(id) = self.id.take() {
            let docker = self.deps.docker.clone();
            let orphaned = self.deps.orphaned.clone();
            actix_rt::spawn(async move {
                if remove(&docker, &id).await.is_err() {
                    orphaned.do_send(Orphaned(id));
                }
            });
        }
        self.exited_tx = watch::channel(false).0;
        self.exit_code = None;
        self.error = None;
        self.warm = false;
        self.launch(ctx);
    }

    /// The script is in: wire the session's streams and start pumping.
    fn running(
        &mut self,
        input: AttachInput,
        output: AttachOutput,
        first: Vec<LogOutput>,
        ctx: &mut Context<Self>,
    ) {
        let Some(run) = self.run.take() else { return };
        self.phase = Phase::Running;
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
        });
        self.events = Some(run.events);

        let stdin = pump_stdin(
            input,
            run.stdin,
            run.control,
            run.stdin_in_flight,
            self.exited_tx.subscribe(),
        );
        self.stdin_pump = Some(ctx.spawn(stdin.into_actor(self)));

        let output = futures::stream::iter(first.into_iter().map(Ok)).chain(output);
        let pump = pump_output(
            Box::pin(output),
            run.output,
            self.exited_tx.subscribe(),
            run.output_limit,
            Trailers::new(&run.nonce),
            self.events.clone(),
            self.deps.bytes.clone(),
        );
        self.pump = Some(
            ctx.spawn(
                pump.into_actor(self)
                    .map(|end, act, ctx| act.output_ended(end, ctx)),
            ),
        );
    }

    fn exited(&mut self, res: Result<i64, String>, ctx: &mut Context<Self>) {
        self.wait = None;
        match res {
            Ok(code) => self.exit_code = Some(code),
            Err(e) => {
                self.error
                    .get_or_insert(format!("lost the connection to the Docker Engine: {e}"));
            }
        }
        debug!(container = self.short_id(), code = ?self.exit_code, "container exited");
        let _ = self.exited_tx.send(true);
        match self.phase {
            Phase::Running => {
                self.phase = Phase::Exited;
                if self.output_done {
                    self.finish(ctx);
                }
            }
            Phase::Handover => {
                let reason = format!("it exited with status {:?} first", self.exit_code);
                self.replace(reason, ctx);
            }
            // A spare that died unused (killed from outside, Docker restarted): replace
            // it in place, so that a session the Supervisor handed it to in the meantime
            // is served all the same.
            Phase::Ready => {
                warn!(container = self.short_id(), code = ?self.exit_code, "warm container died unused; replacing it");
                self.deps.ready.do_send(ContainerReady {
                    key: self.key,
                    ready: false,
                });
                let reason = format!("it exited with status {:?} while waiting", self.exit_code);
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
            // Death by SIGKILL may be the OOM killer: only the Engine can tell, once the
            // container has exited, so that case takes the slow path.
            PumpEnd::Trailer(ScriptExit::Signal(9)) => {}
            PumpEnd::Trailer(exit) => {
                self.script_exit = Some(exit);
                self.exit_code = Some(match exit {
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
                self.error
                    .get_or_insert(format!("lost the connection to the Docker Engine: {e}"));
                self.kill(KillCause::ClientGone, ctx);
            }
        }
        if self.phase == Phase::Exited {
            self.finish(ctx);
        }
    }

    fn kill(&mut self, cause: KillCause, ctx: &mut Context<Self>) {
        match self.phase {
            Phase::Launching => {
                self.kill_requested.get_or_insert(cause);
            }
            Phase::Ready => {
                self.killed.get_or_insert(cause);
                self.finish(ctx);
            }
            Phase::Handover | Phase::Running => {
                if self.killed.is_some() {
                    return;
                }
                self.killed = Some(cause);
                if self.phase == Phase::Handover {
                    // The script never started: nothing to wait for.
                    return self.finish(ctx);
                }
                let docker = self.deps.docker.clone();
                let id = self.id.clone().unwrap_or_default();
                let fut = async move { crate::docker::kill(&docker, &id, "SIGKILL").await };
                ctx.run_later(KILL_DRAIN, |act, ctx| act.close_attach(ctx));
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
                    Ok(()) => {}
                    // It had exited on its own just before: its own status stands.
                    Err(e) if is_conflict(&e) || is_not_found(&e) => {
                        if cause != KillCause::OutputLimit {
                            act.killed = None;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot kill container");
                        act.error
                            .get_or_insert(format!("cannot stop the script: {e}"));
                        act.finish(ctx);
                    }
                }));
            }
            Phase::Exited => {
                // Output is stuck behind a client that does not read: stop waiting for it.
                if let Some(pump) = self.pump.take() {
                    ctx.cancel_future(pump);
                    self.output_done = true;
                }
                self.finish(ctx);
            }
            Phase::Removing => {}
        }
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
            if self.phase == Phase::Exited {
                self.finish(ctx);
            }
        }
    }

    /// Reports the outcome (once) and removes the container.
    fn finish(&mut self, ctx: &mut Context<Self>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let oom_possible =
            self.exit_code == Some(137) && self.killed.is_none() && self.script_exit.is_none();
        match (oom_possible, self.id.clone()) {
            (true, Some(id)) => {
                let docker = self.deps.docker.clone();
                let fut = async move { docker.inspect_container(&id, None).await };
                ctx.wait(fut.into_actor(self).map(|res, act, ctx| {
                    let oom = res
                        .ok()
                        .and_then(|i| i.state)
                        .and_then(|s| s.oom_killed)
                        .unwrap_or(false);
                    act.report(oom);
                    act.remove(ctx);
                }));
            }
            _ => {
                self.report(false);
                self.remove(ctx);
            }
        }
    }

    fn report(&mut self, oom: bool) {
        let events = self
            .events
            .take()
            .or_else(|| self.run.take().map(|r| r.events));
        if let Some(events) = events {
            events.do_send(ContainerEvent::Finished(Finished {
                exit_code: self.exit_code,
                script_exit: self.script_exit,
                oom,
                killed: self.killed,
                error: self.error.clone(),
            }));
        }
    }

    fn remove(&mut self, ctx: &mut Context<Self>) {
        if self.phase == Phase::Removing {
            return;
        }
        self.phase = Phase::Removing;
        // Closing our ends of the attach stops the pumps' I/O at once.
        self.attach = None;
        let Some(id) = self.id.clone() else {
            return ctx.stop();
        };
        let docker = self.deps.docker.clone();
        let fut = async move { remove(&docker, &id).await };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| {
            if let Err(e) = res {
                warn!(container = act.short_id(), error = %e, "cannot remove container; will retry");
                act.leaked = true;
            }
            ctx.stop();
        }));
    }
}

impl Actor for ContainerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.launch(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // A container whose removal failed (or never ran) is handed back for a retry.
        let leaked = if self.leaked || self.phase != Phase::Removing {
            self.id.clone()
        } else {
            None
        };
        self.report(false);
        self.deps.gone.do_send(ContainerGone {
            key: self.key,
            leaked,
            unreachable: self.unreachable.take(),
        });
    }
}

impl Handler<Run> for ContainerActor {
    type Result = ();

    fn handle(&mut self, run: Run, ctx: &mut Context<Self>) {
        self.run_at = Some(Instant::now());
        match self.phase {
            Phase::Launching if self.run.is_none() => self.run = Some(run),
            Phase::Ready if self.run.is_none() => {
                self.run = Some(run);
                self.hand_over(ctx);
            }
            _ => {
                run.events.do_send(ContainerEvent::Finished(Finished {
                    error: Some("the sandbox container is no longer available".into()),
                    ..Default::default()
                }));
            }
        }
    }
}

impl Handler<Signal> for ContainerActor {
    type Result = ();

    fn handle(&mut self, Signal(sig): Signal, ctx: &mut Context<Self>) {
        if self.phase != Phase::Running || self.killed.is_some() {
            return;
        }
        match &mut self.signals {
            Signals::Idle => self.send_signal(sig, ctx),
            Signals::Sending { next } if !next.contains(&sig) => next.push(sig),
            Signals::Sending { .. } => debug!(signal = sig, "signal merged with a waiting one"),
        }
    }
}

impl ContainerActor {
    /// Sends one kill request; the next waiting signal goes when it has been answered.
    fn send_signal(&mut self, sig: &'static str, ctx: &mut Context<Self>) {
        if !matches!(self.signals, Signals::Sending { .. }) {
            self.signals = Signals::Sending { next: Vec::new() };
        }
        let docker = self.deps.docker.clone();
        let id = self.id.clone().unwrap_or_default();
        let fut = async move { crate::docker::kill(&docker, &id, sig).await };
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
                Some(sig) if act.phase == Phase::Running && act.killed.is_none() => {
                    act.send_signal(sig, ctx)
                }
                _ => act.signals = Signals::Idle,
            }
        }));
    }
}

impl Handler<Kill> for ContainerActor {
    type Result = ();

    fn handle(&mut self, Kill(cause): Kill, ctx: &mut Context<Self>) {
        self.kill(cause, ctx);
    }
}

/// Why a container could not be made ready.
#[derive(Debug, thiserror::Error)]
enum LaunchError {
    #[error(transparent)]
    Engine(#[from] bollard::errors::Error),
    /// Fail closed: a container whose TCP memory cannot be bounded runs no script.
    #[error(transparent)]
    TcpMemory(#[from] crate::tcp_memory::TcpMemError),
}

/// Create, attach, start: in that order, or early output is lost. Then bound its TCP
/// socket memory, before the container is reported ready or handed a script.
async fn launch(
    docker: Docker,
    spec: Arc<SandboxSpec>,
    tcp_memory: Arc<crate::tcp_memory::TcpMemGuard>,
) -> Result<(String, (AttachOutput, AttachInput)), (Option<String>, LaunchError)> {
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().build()),
            spec.create_body(),
        )
        .await
        .map_err(|e| (None, e.into()))?;
    let id = created.id;
    let opts = AttachContainerOptionsBuilder::default()
        .stream(true)
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .build();
    let attach = match docker.attach_container(&id, Some(opts)).await {
        Ok(a) => a,
        Err(e) => return Err((Some(id), e.into())),
    };
    if let Err(e) = docker.start_container(&id, None).await {
        return Err((Some(id), e.into()));
    }
    if let Err(e) = tcp_memory.apply(&docker, &id).await {
        return Err((Some(id), e.into()));
    }
    Ok((id, (attach.output, attach.input)))
}

/// Waits for the container to stop running; a non-zero status is an `Err` in bollard.
async fn wait_exit(docker: Docker, id: String) -> Result<i64, String> {
    let mut wait = docker.wait_container(&id, None);
    match wait.next().await {
        Some(Ok(resp)) => Ok(resp.status_code),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the wait ended without a status".into()),
    }
}

/// The byte the bootstrap writes to stdout once it has the script.
const ACK: u8 = 0x06;

/// Stderr that may arrive before the ACK on stdout, kept: it is the script's (Docker
/// copies the two streams independently, so under load the script's first stderr can
/// overtake the bootstrap's ACK), or, if no ACK comes, the bootstrap's error message.
const MAX_EARLY_STDERR: usize = 4 << 20;

/// Writes the bootstrap request and waits for the ACK. Returns the streams and the output
/// to deliver first: stderr that overtook the ACK, and whatever followed the ACK in its
/// Docker frame.
async fn hand_over(
    mut input: AttachInput,
    mut output: AttachOutput,
    request: Bytes,
) -> Result<(AttachInput, AttachOutput, Vec<LogOutput>), String> {
    if let Err(e) = async {
        input.write_all(&request).await?;
        input.flush().await
    }
    .await
    {
        return Err(format!("cannot write the script: {e}"));
    }
    drop(request);
    let (mut early, mut early_len) = (Vec::new(), 0usize);
    loop {
        match output.next().await {
            Some(Ok(LogOutput::StdOut { mut message })) if message.first() == Some(&ACK) => {
                let rest = message.split_off(1);
                if !rest.is_empty() {
                    early.push(LogOutput::StdOut { message: rest });
                }
                return Ok((input, output, early));
            }
            Some(Ok(LogOutput::StdErr { message })) => {
                early_len += message.len();
                if early_len > MAX_EARLY_STDERR {
                    return Err("too much stderr before the script was accepted".into());
                }
                early.push(LogOutput::StdErr { message });
            }
            Some(Ok(LogOutput::StdIn { .. })) => {}
            Some(Ok(_)) => {
                return Err("the sandbox image's python3 did not run the bootstrap".into())
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => {
                let errors: Vec<u8> = early
                    .iter()
                    .flat_map(|item| item.as_ref().iter().copied())
                    .take(2048)
                    .collect();
                let text = String::from_utf8_lossy(&errors);
                return Err(match text.trim() {
                    "" => "its output closed before the script was accepted".into(),
                    text => text.to_string(),
                });
            }
        }
    }
}

/// STDIN_CREDIT is sent once this much stdin has been taken since the last one: not a
/// frame per line (an echo's round trip would pay for it), yet a quarter of the window,
/// so a client streaming stdin never waits on it.
const CREDIT_BATCH: u64 = crate::session::STDIN_WINDOW as u64 / 4;

/// Writes the client's stdin as it comes, acknowledging it with STDIN_CREDIT once the
/// container has taken it.
async fn pump_stdin(
    mut input: AttachInput,
    stdin: Arc<StdinQueue>,
    control: mpsc::UnboundedSender<Frame>,
    in_flight: Arc<AtomicU64>,
    mut exited: watch::Receiver<bool>,
) {
    let mut owed: u64 = 0;
    loop {
        let msg = tokio::select! {
            msg = stdin.next() => msg,
            // Once the script is gone, closing stdin lets Docker end the attach stream,
            // which is how the output pump learns that it has everything.
            _ = exited.wait_for(|e| *e) => None,
        };
        match msg {
            Some(data) => {
                let n = data.len();
                if input.write_all(&data).await.is_err() || input.flush().await.is_err() {
                    break;
                }
                in_flight.fetch_sub(n as u64, Ordering::Relaxed);
                owed += n as u64;
                if owed >= CREDIT_BATCH {
                    // At most a window's worth, so the count fits.
                    let _ = control.send(Frame::StdinCredit(owed as u32));
                    owed = 0;
                }
            }
            None => break,
        }
    }
    let _ = input.shutdown().await;
}

/// Finds the bootstrap's trailer (nonce, then `E` + status or `S` + signal) in each output
/// stream. The bootstrap writes it with one write into drained pipes, so it arrives
/// within one Docker frame.
struct Trailers {
    finder: memchr::memmem::Finder<'static>,
    stdout: Option<ScriptExit>,
    stderr: Option<ScriptExit>,
}

impl Trailers {
    fn new(nonce: &[u8; NONCE_LEN]) -> Self {
        Trailers {
            finder: memchr::memmem::Finder::new(nonce).into_owned(),
            stdout: None,
            stderr: None,
        }
    }

    /// Where the trailer starts in `data`, and what it says.
    fn find(&self, data: &[u8]) -> Option<(usize, ScriptExit)> {
        let at = self.finder.find(data)?;
        let exit = match data.get(at + NONCE_LEN..at + NONCE_LEN + 2)? {
            [b'E', code] => ScriptExit::Code(*code as i32),
            [b'S', sig] => ScriptExit::Signal(*sig as i32),
            _ => return None,
        };
        Some((at, exit))
    }

    /// How many bytes at the end of `data` could be the start of a trailer cut in two
    /// (the longest such suffix; 0 when none is).
    fn partial_tail(&self, data: &[u8]) -> usize {
        let nonce = self.finder.needle();
        let longest = (NONCE_LEN + 1).min(data.len());
        (1..=longest)
            .rev()
            .find(|&k| {
                let tail = &data[data.len() - k..];
                if k <= NONCE_LEN {
                    tail == &nonce[..k]
                } else {
                    tail[..NONCE_LEN] == *nonce && matches!(tail[NONCE_LEN], b'E' | b'S')
                }
            })
            .unwrap_or(0)
    }

    fn seen(&self, stderr: bool) -> bool {
        if stderr {
            self.stderr.is_some()
        } else {
            self.stdout.is_some()
        }
    }

    /// Notes a trailer on one stream; returns the script's end once both have one.
    fn record(&mut self, stderr: bool, exit: ScriptExit) -> Option<ScriptExit> {
        if stderr {
            self.stderr = Some(exit);
        } else {
            self.stdout = Some(exit);
        }
        self.stdout.and(self.stderr)
    }
}

#[derive(Debug)]
enum PumpEnd {
    /// Docker closed the output stream.
    Eof,
    /// The container exited and no more output came for `DRAIN_IDLE`.
    Drained,
    /// The output limit was reached; the rest was discarded.
    Limit,
    /// The session's output channel is closed.
    ClientGone,
    Failed(String),
    /// Both streams carried the bootstrap's trailer: the script is over.
    Trailer(ScriptExit),
}

/// Output that may be the start of a trailer split across two Docker frames is held back
/// this long at most before it is sent as the output it then must be.
const HOLD_MAX: Duration = Duration::from_millis(10);

enum Next {
    Item(Option<Result<LogOutput, bollard::errors::Error>>),
    /// The exit was signalled; look again (with the drain's idle bound from now on).
    Exited,
    /// The container exited and no more output came for `DRAIN_IDLE`.
    Drained,
    /// Held-back bytes have waited long enough.
    HoldExpired,
}

async fn next_output(output: &mut AttachOutput, exited: &mut watch::Receiver<bool>) -> Next {
    if *exited.borrow() {
        return match tokio::time::timeout(DRAIN_IDLE, output.next()).await {
            Ok(item) => Next::Item(item),
            Err(_) => Next::Drained,
        };
    }
    tokio::select! {
        item = output.next() => Next::Item(item),
        changed = exited.changed() => match changed {
            Ok(()) => Next::Exited,
            Err(_) => Next::Drained,
        },
    }
}

/// Where forwarded output stands against the session's limit.
struct Sent {
    total: u64,
    limit: u64,
    /// Told of the first byte, once: straight from here, so that the event is queued
    /// before the `Finished` that follows the pump's end, however short the script.
    first: Option<Recipient<ContainerEvent>>,
}

/// Sends `data` to the session in frames of at most `DATA_CHUNK`, within the output limit.
async fn forward(
    tx: &mpsc::Sender<Frame>,
    mut data: Bytes,
    stderr: bool,
    sent: &mut Sent,
    bytes: &ByteCounters,
) -> Result<(), PumpEnd> {
    let room = sent.limit.saturating_sub(sent.total);
    let over = data.len() as u64 > room;
    if over {
        data.truncate(room as usize);
    }
    sent.total += data.len() as u64;
    if !data.is_empty() {
        if let Some(first) = sent.first.take() {
            first.do_send(ContainerEvent::FirstOutput);
        }
    }
    while !data.is_empty() {
        let chunk = data.split_to(data.len().min(DATA_CHUNK));
        let n = chunk.len();
        let frame = if stderr {
            Frame::Stderr(chunk)
        } else {
            Frame::Stdout(chunk)
        };
        if tx.send(frame).await.is_err() {
            return Err(PumpEnd::ClientGone);
        }
        bytes.add_out(n);
    }
    if over {
        return Err(PumpEnd::Limit);
    }
    Ok(())
}

/// Moves the container's output into the session's bounded channel, chunk by chunk, with
/// no copy: each Docker frame is sliced, never re-buffered (but for the rare bytes held
/// back as a possible trailer start), and the bootstrap's trailer is cut out.
async fn pump_output(
    mut output: AttachOutput,
    tx: mpsc::Sender<Frame>,
    mut exited: watch::Receiver<bool>,
    limit: u64,
    mut trailers: Trailers,
    first: Option<Recipient<ContainerEvent>>,
    bytes: Arc<ByteCounters>,
) -> PumpEnd {
    let mut sent = Sent {
        total: 0,
        limit,
        first,
    };
    let mut held: Option<(Bytes, bool, tokio::time::Instant)> = None;
    loop {
        let hold_until = held.as_ref().map(|(_, _, since)| *since + HOLD_MAX);
        let next = tokio::select! {
            biased;
            _ = tokio::time::sleep_until(hold_until.unwrap_or_else(tokio::time::Instant::now)),
                if hold_until.is_some() => Next::HoldExpired,
            next = next_output(&mut output, &mut exited) => next,
        };
        let (mut data, stderr) = match next {
            Next::HoldExpired => {
                let (data, stderr, _) = held.take().expect("a hold expired");
                if let Err(end) = forward(&tx, data, stderr, &mut sent, &bytes).await {
                    return end;
                }
                continue;
            }
            Next::Exited => continue,
            Next::Drained => return PumpEnd::Drained,
            Next::Item(None) => return PumpEnd::Eof,
            Next::Item(Some(Err(e))) => return PumpEnd::Failed(e.to_string()),
            Next::Item(Some(Ok(LogOutput::StdOut { message })))
            | Next::Item(Some(Ok(LogOutput::Console { message }))) => (message, false),
            Next::Item(Some(Ok(LogOutput::StdErr { message }))) => (message, true),
            Next::Item(Some(Ok(LogOutput::StdIn { .. }))) => continue,
        };
        if let Some((before, was_stderr, _)) = held.take() {
            if was_stderr == stderr {
                let mut joined = BytesMut::with_capacity(before.len() + data.len());
                joined.extend_from_slice(&before);
                joined.extend_from_slice(&data);
                data = joined.freeze();
            } else if let Err(end) = forward(&tx, before, was_stderr, &mut sent, &bytes).await {
                return end;
            }
        }
        if trailers.seen(stderr) {
            continue; // written after the script ended, by a process it left behind
        }
        let mut ended = None;
        if let Some((at, exit)) = trailers.find(&data) {
            data.truncate(at);
            ended = Some(trailers.record(stderr, exit));
        } else {
            let keep = trailers.partial_tail(&data);
            if keep > 0 {
                let tail = data.split_off(data.len() - keep);
                held = Some((tail, stderr, tokio::time::Instant::now()));
            }
        }
        if let Err(end) = forward(&tx, data, stderr, &mut sent, &bytes).await {
            return end;
        }
        if let Some(Some(exit)) = ended {
            return PumpEnd::Trailer(exit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; NONCE_LEN] = *b"0123456789abcdef";

    fn out(data: &[u8]) -> Result<LogOutput, bollard::errors::Error> {
        Ok(LogOutput::StdOut {
            message: Bytes::copy_from_slice(data),
        })
    }

    fn err(data: &[u8]) -> Result<LogOutput, bollard::errors::Error> {
        Ok(LogOutput::StdErr {
            message: Bytes::copy_from_slice(data),
        })
    }

    /// Runs the pump over `items` (then a stream that never ends) and collects what it
    /// forwards per stream, with how it ended.
    async fn pump(
        items: Vec<Result<LogOutput, bollard::errors::Error>>,
        limit: u64,
    ) -> (Vec<u8>, Vec<u8>, PumpEnd) {
        let output: AttachOutput =
            Box::pin(futures::stream::iter(items).chain(futures::stream::pending()));
        let (tx, mut rx) = mpsc::channel(1024);
        let (_exited_tx, exited) = watch::channel(false);
        let end = tokio::time::timeout(
            Duration::from_millis(300),
            pump_output(
                output,
                tx,
                exited,
                limit,
                Trailers::new(&NONCE),
                None,
                Arc::new(ByteCounters::default()),
            ),
        )
        .await
        .unwrap_or(PumpEnd::Drained);
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Ok(frame) = rx.try_recv() {
            match frame {
                Frame::Stdout(b) => stdout.extend_from_slice(&b),
                Frame::Stderr(b) => stderr.extend_from_slice(&b),
                other => panic!("{other:?}"),
            }
        }
        (stdout, stderr, end)
    }

    fn trailer(kind: u8, value: u8) -> Vec<u8> {
        let mut t = NONCE.to_vec();
        t.extend_from_slice(&[kind, value]);
        t
    }

    #[tokio::test]
    async fn trailer_on_both_streams_ends_the_pump_and_is_cut_out() {
        let mut last = b"bye".to_vec();
        last.extend(trailer(b'E', 3));
        last.extend_from_slice(b"left behind");
        let (stdout, stderr, end) = pump(
            vec![out(b"hello "), out(&last), err(&trailer(b'E', 3))],
            1 << 20,
        )
        .await;
        assert_eq!(stdout, b"hello bye");
        assert_eq!(stderr, b"");
        assert!(
            matches!(end, PumpEnd::Trailer(ScriptExit::Code(3))),
            "{end:?}"
        );
    }

    #[tokio::test]
    async fn a_trailer_cut_across_frames_is_still_found_and_never_leaks() {
        let t = trailer(b'S', 9);
        for cut in 1..t.len() {
            let mut first = b"data".to_vec();
            first.extend_from_slice(&t[..cut]);
            let (stdout, _, end) = pump(
                vec![out(&first), out(&t[cut..]), err(&trailer(b'S', 9))],
                1 << 20,
            )
            .await;
            assert_eq!(stdout, b"data", "cut at {cut}");
            assert!(
                matches!(end, PumpEnd::Trailer(ScriptExit::Signal(9))),
                "cut at {cut}: {end:?}"
            );
        }
    }

    #[tokio::test]
    async fn bytes_that_only_look_like_a_trailer_start_are_sent_soon_after() {
        // Ends with the nonce's first byte, and nothing follows: held, then sent.
        let (stdout, _, end) = pump(vec![out(b"Name: 0")], 1 << 20).await;
        assert_eq!(stdout, b"Name: 0");
        assert!(matches!(end, PumpEnd::Drained), "{end:?}");
        // And when other output follows, it is joined in order.
        let (stdout, _, _) = pump(vec![out(b"x01"), out(b"2y")], 1 << 20).await;
        assert_eq!(stdout, b"x012y");
    }

    /// Docker copies stdout and stderr apart: the script's first stderr can come before the
    /// bootstrap's ACK on stdout. It is the script's, and must not be lost.
    #[tokio::test]
    async fn stderr_that_overtakes_the_ack_is_kept_in_order() {
        let items = vec![err(b"early"), out(b"\x06hi"), err(b"late")];
        let output: AttachOutput = Box::pin(futures::stream::iter(items));
        let input: AttachInput = Box::pin(tokio::io::sink());
        let (_, mut rest, first) = hand_over(input, output, Bytes::from_static(b"req"))
            .await
            .unwrap();
        let first: Vec<Vec<u8>> = first.iter().map(|o| o.as_ref().to_vec()).collect();
        assert_eq!(first, [b"early".to_vec(), b"hi".to_vec()]);
        assert!(matches!(
            rest.next().await,
            Some(Ok(LogOutput::StdErr { .. }))
        ));
    }

    #[tokio::test]
    async fn output_limit_is_exact() {
        let (stdout, _, end) = pump(vec![out(&[b'a'; 700]), out(&[b'b'; 700])], 1000).await;
        assert_eq!(stdout.len(), 1000);
        assert!(matches!(end, PumpEnd::Limit));
    }
}
