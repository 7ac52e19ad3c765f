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
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::docker::{is_conflict, is_not_found, remove};
use crate::protocol::{Frame, DATA_CHUNK};
use crate::sandbox::SandboxSpec;
use crate::status::ByteCounters;

type AttachOutput = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;
type AttachInput = Pin<Box<dyn AsyncWrite + Send>>;

/// After the container has exited, output that does not arrive within this long is taken
/// to be all there is. Docker normally ends the attach stream promptly once stdin is
/// closed (which we do on exit); this only bounds the case where it does not.
const DRAIN_IDLE: Duration = Duration::from_millis(1500);

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

/// What the session sends towards the script's stdin.
#[derive(Debug)]
pub enum StdinMsg {
    Data(Bytes),
    Eof,
}

/// Hands a script to the container and wires its streams to a session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Run {
    /// The bootstrap request (`sandbox::bootstrap_request`).
    pub request: Bytes,
    pub stdin: mpsc::UnboundedReceiver<StdinMsg>,
    /// Bounded: this is where backpressure from a slow client comes from.
    pub output: mpsc::Sender<Frame>,
    /// Unbounded control path to the client, used for STDIN_CREDIT.
    pub control: mpsc::UnboundedSender<Frame>,
    /// STDIN bytes the client has sent that have not been written to the container yet.
    pub stdin_in_flight: Arc<AtomicU64>,
    pub output_limit: u64,
    pub events: Recipient<ContainerEvent>,
}

/// Deliver a signal (SIGINT for Ctrl-C) to the script.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Signal(pub String);

/// Stop the script now and end the container.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kill(pub KillCause);

/// What a session hears from its container.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum ContainerEvent {
    /// The script has been handed to Python.
    Started { latency: Duration, warm: bool },
    /// The script is over and all its output has been queued for the client.
    Finished(Finished),
}

#[derive(Debug, Clone, Default)]
pub struct Finished {
    /// The container's exit status, when it ran and was waited for.
    pub exit_code: Option<i64>,
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
}

/// Sent to the owner when the container is started and waiting for its script.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ContainerReady {
    pub key: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Launching,
    Ready,
    Running,
    Exited,
    Removing,
}

/// Everything the actor needs from its creator.
#[derive(Clone)]
pub struct ContainerDeps {
    pub docker: Docker,
    pub spec: Arc<SandboxSpec>,
    pub bytes: Arc<ByteCounters>,
    pub gone: Recipient<ContainerGone>,
    pub ready: Option<Recipient<ContainerReady>>,
}

pub struct ContainerActor {
    deps: ContainerDeps,
    key: u64,
    warm: bool,
    id: Option<String>,
    phase: Phase,
    attach: Option<(AttachOutput, AttachInput)>,
    pending: Option<Run>,
    events: Option<Recipient<ContainerEvent>>,
    launched_at: Instant,
    run_at: Option<Instant>,
    exited_tx: watch::Sender<bool>,
    exit_code: Option<i64>,
    error: Option<String>,
    output_done: bool,
    pump: Option<SpawnHandle>,
    killed: Option<KillCause>,
    kill_requested: Option<KillCause>,
    finished: bool,
    leaked: bool,
}

impl ContainerActor {
    /// `warm` marks a container started ahead of demand (reported in STARTED).
    pub fn new(deps: ContainerDeps, key: u64, warm: bool) -> Self {
        ContainerActor {
            deps,
            key,
            warm,
            id: None,
            phase: Phase::Launching,
            attach: None,
            pending: None,
            events: None,
            launched_at: Instant::now(),
            run_at: None,
            exited_tx: watch::channel(false).0,
            exit_code: None,
            error: None,
            output_done: false,
            pump: None,
            killed: None,
            kill_requested: None,
            finished: false,
            leaked: false,
        }
    }

    fn short_id(&self) -> &str {
        self.id.as_deref().map_or("-", |id| &id[..id.len().min(12)])
    }

    fn launched(
        &mut self,
        id: String,
        attach: (AttachOutput, AttachInput),
        ctx: &mut Context<Self>,
    ) {
        debug!(container = %&id[..12], ms = self.launched_at.elapsed().as_millis() as u64, "container started");
        self.id = Some(id.clone());
        self.attach = Some(attach);
        self.phase = Phase::Ready;
        // Polled from now on, i.e. after start: a wait first polled after the exit still
        // answers with the default condition.
        let wait = wait_exit(self.deps.docker.clone(), id);
        ctx.spawn(
            wait.into_actor(self)
                .map(|res, act, ctx| act.exited(res, ctx)),
        );
        if let Some(cause) = self.kill_requested {
            self.killed = Some(cause);
            return self.remove(ctx);
        }
        if let Some(ready) = &self.deps.ready {
            ready.do_send(ContainerReady { key: self.key });
        }
        if let Some(run) = self.pending.take() {
            self.begin(run, ctx);
        }
    }

    fn launch_failed(
        &mut self,
        id: Option<String>,
        err: bollard::errors::Error,
        ctx: &mut Context<Self>,
    ) {
        warn!(error = %err, "cannot start a sandbox container");
        self.id = id;
        self.error = Some(format!("cannot start a sandbox container: {err}"));
        self.finish(ctx);
    }

    fn begin(&mut self, run: Run, ctx: &mut Context<Self>) {
        let Some((output, input)) = self.attach.take() else {
            // The container is already gone (it died while warm): report it as failed.
            self.events = Some(run.events);
            self.error.get_or_insert_with(|| {
                "the sandbox container exited before its script arrived".into()
            });
            return self.finish(ctx);
        };
        self.phase = Phase::Running;
        self.events = Some(run.events);

        let addr = ctx.address();
        let stdin = pump_stdin(
            input,
            run.request,
            run.stdin,
            run.control,
            run.stdin_in_flight,
            self.exited_tx.subscribe(),
            addr,
        );
        ctx.spawn(stdin.into_actor(self));

        let pump = pump_output(
            output,
            run.output,
            self.exited_tx.subscribe(),
            run.output_limit,
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
        match res {
            Ok(code) => self.exit_code = Some(code),
            Err(e) => {
                self.error
                    .get_or_insert(format!("lost track of the container: {e}"));
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
            // A warm container that died before it was used: nobody is waiting on it.
            Phase::Ready => {
                self.attach = None;
                if self.pending.is_none() && self.events.is_none() {
                    self.error.get_or_insert_with(|| {
                        "the sandbox container exited before its script arrived".into()
                    });
                    self.finish(ctx);
                }
            }
            _ => {}
        }
    }

    fn output_ended(&mut self, end: PumpEnd, ctx: &mut Context<Self>) {
        self.pump = None;
        self.output_done = true;
        match end {
            PumpEnd::Eof | PumpEnd::Drained => {}
            PumpEnd::Limit => self.kill(KillCause::OutputLimit, ctx),
            PumpEnd::ClientGone => self.kill(KillCause::ClientGone, ctx),
            PumpEnd::Failed(e) => {
                self.error
                    .get_or_insert(format!("lost the container's output: {e}"));
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
            Phase::Running => {
                if self.killed.is_some() {
                    return;
                }
                self.killed = Some(cause);
                let docker = self.deps.docker.clone();
                let id = self.id.clone().unwrap_or_default();
                let opts = KillContainerOptionsBuilder::default()
                    .signal("SIGKILL")
                    .build();
                let fut = async move { docker.kill_container(&id, Some(opts)).await };
                ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
                    Ok(()) => {}
                    // It had exited on its own just before: its own status stands.
                    Err(e) if is_conflict(&e) || is_not_found(&e) => {
                        if act.exit_code.is_some() && act.killed != Some(KillCause::OutputLimit) {
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

    /// Reports the outcome (once) and removes the container.
    fn finish(&mut self, ctx: &mut Context<Self>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let oom_possible = self.exit_code == Some(137) && self.killed.is_none();
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
        if let Some(events) = self
            .events
            .take()
            .or_else(|| self.pending.take().map(|r| r.events))
        {
            events.do_send(ContainerEvent::Finished(Finished {
                exit_code: self.exit_code,
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
        let docker = self.deps.docker.clone();
        let spec = self.deps.spec.clone();
        ctx.spawn(
            launch(docker, spec)
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok((id, attach)) => act.launched(id, attach, ctx),
                    Err((id, e)) => act.launch_failed(id, e, ctx),
                }),
        );
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
        });
    }
}

impl Handler<Run> for ContainerActor {
    type Result = ();

    fn handle(&mut self, run: Run, ctx: &mut Context<Self>) {
        self.run_at = Some(Instant::now());
        match self.phase {
            Phase::Launching => self.pending = Some(run),
            Phase::Ready => self.begin(run, ctx),
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
        let docker = self.deps.docker.clone();
        let id = self.id.clone().unwrap_or_default();
        let opts = KillContainerOptionsBuilder::default().signal(&sig).build();
        ctx.spawn(
            async move {
                match docker.kill_container(&id, Some(opts)).await {
                    Ok(()) => debug!(signal = %sig, "signal forwarded"),
                    Err(e) => debug!(error = %e, signal = %sig, "signal not delivered"),
                }
            }
            .into_actor(self),
        );
    }
}

impl Handler<Kill> for ContainerActor {
    type Result = ();

    fn handle(&mut self, Kill(cause): Kill, ctx: &mut Context<Self>) {
        self.kill(cause, ctx);
    }
}

/// Sent by the stdin pump once the bootstrap has the script.
#[derive(Message)]
#[rtype(result = "()")]
struct Delivered;

impl Handler<Delivered> for ContainerActor {
    type Result = ();

    fn handle(&mut self, _: Delivered, _: &mut Context<Self>) {
        // From whichever came last: the container being asked for, or the script.
        let since = self
            .run_at
            .map_or(self.launched_at, |r| r.max(self.launched_at));
        if let Some(events) = &self.events {
            events.do_send(ContainerEvent::Started {
                latency: since.elapsed(),
                warm: self.warm,
            });
        }
    }
}

/// Create, attach, start: in that order, or early output is lost.
async fn launch(
    docker: Docker,
    spec: Arc<SandboxSpec>,
) -> Result<(String, (AttachOutput, AttachInput)), (Option<String>, bollard::errors::Error)> {
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().build()),
            spec.create_body(),
        )
        .await
        .map_err(|e| (None, e))?;
    let id = created.id;
    let opts = AttachContainerOptionsBuilder::default()
        .stream(true)
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .build();
    let attach = match docker.attach_container(&id, Some(opts)).await {
        Ok(a) => a,
        Err(e) => return Err((Some(id), e)),
    };
    if let Err(e) = docker.start_container(&id, None).await {
        return Err((Some(id), e));
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

/// Writes the bootstrap request, then the client's stdin as it comes, acknowledging each
/// chunk with STDIN_CREDIT once the container has taken it.
async fn pump_stdin(
    mut input: AttachInput,
    request: Bytes,
    mut stdin: mpsc::UnboundedReceiver<StdinMsg>,
    control: mpsc::UnboundedSender<Frame>,
    in_flight: Arc<AtomicU64>,
    mut exited: watch::Receiver<bool>,
    actor: Addr<ContainerActor>,
) {
    if input.write_all(&request).await.is_err() || input.flush().await.is_err() {
        return;
    }
    drop(request);
    actor.do_send(Delivered);
    loop {
        let msg = tokio::select! {
            msg = stdin.recv() => msg,
            // Once the script is gone, closing stdin lets Docker end the attach stream,
            // which is how the output pump learns that it has everything.
            _ = exited.wait_for(|e| *e) => None,
        };
        match msg {
            Some(StdinMsg::Data(data)) => {
                let n = data.len();
                if input.write_all(&data).await.is_err() || input.flush().await.is_err() {
                    break;
                }
                in_flight.fetch_sub(n as u64, Ordering::Relaxed);
                // Chunks are at most one frame, so the count fits.
                let _ = control.send(Frame::StdinCredit(n as u32));
            }
            Some(StdinMsg::Eof) | None => break,
        }
    }
    let _ = input.shutdown().await;
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
}

/// Moves the container's output into the session's bounded channel, chunk by chunk, with
/// no copy: each Docker frame is sliced, never re-buffered.
async fn pump_output(
    mut output: AttachOutput,
    tx: mpsc::Sender<Frame>,
    mut exited: watch::Receiver<bool>,
    limit: u64,
    bytes: Arc<ByteCounters>,
) -> PumpEnd {
    let mut total: u64 = 0;
    loop {
        let item = if *exited.borrow() {
            match tokio::time::timeout(DRAIN_IDLE, output.next()).await {
                Ok(item) => item,
                Err(_) => return PumpEnd::Drained,
            }
        } else {
            tokio::select! {
                item = output.next() => item,
                changed = exited.changed() => {
                    if changed.is_err() {
                        return PumpEnd::Drained;
                    }
                    continue;
                }
            }
        };
        let (mut data, stderr) = match item {
            None => return PumpEnd::Eof,
            Some(Err(e)) => return PumpEnd::Failed(e.to_string()),
            Some(Ok(LogOutput::StdOut { message })) | Some(Ok(LogOutput::Console { message })) => {
                (message, false)
            }
            Some(Ok(LogOutput::StdErr { message })) => (message, true),
            Some(Ok(LogOutput::StdIn { .. })) => continue,
        };
        let room = limit.saturating_sub(total);
        let over = data.len() as u64 > room;
        if over {
            data.truncate(room as usize);
        }
        total += data.len() as u64;
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(DATA_CHUNK));
            let n = chunk.len();
            let frame = if stderr {
                Frame::Stderr(chunk)
            } else {
                Frame::Stdout(chunk)
            };
            if tx.send(frame).await.is_err() {
                return PumpEnd::ClientGone;
            }
            bytes.add_out(n);
        }
        if over {
            return PumpEnd::Limit;
        }
    }
}
