//! The Session actor: one client connection from the end of its TLS handshake to its close.
//!
//! Reading: the TLS read half is a `FramedRead` stream handled by this actor. It never
//! blocks: stdin is bounded by the credit window the client must respect, not by
//! stalling the socket, so a Ctrl-C or a disconnect is seen at once even when the script
//! does not read its stdin.
//!
//! Writing: a writer task (`writer.rs`) owns the TLS write half behind two channels: a
//! bounded one for script output (its capacity is the backpressure on the container) and
//! an unbounded one for the few control frames.
//!
//! The Session knows the Supervisor and its container only through the recipients in
//! `messages`; its states are the enums of `state.rs`.

mod codec;
pub mod exit;
mod files;
mod hello;
mod state;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::io::ReadHalf;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, info, info_span, warn, Span};

use crate::bootstrap;
use crate::config::{format_duration, format_size, Config};
use crate::connections::ConnectionGuard;
use crate::messages::{
    Admitted, ContainerEvent, ContainerHandle, Finished, Kill, KillCause, QueuePosition, Register,
    Run, SessionHandle, SessionStop, Signal, SupervisorHandle, Unregister,
};
use crate::protocol::{
    CodecError, End, EndReason, ErrorCode, ErrorMsg, Frame, FrameCodec, FrameError, Hello, Queued,
    STDIN_WINDOW,
};
use crate::sandbox::{script_name, script_uid};
use crate::status::{
    ByteCounters, ContainerStarted, FirstOutput, Outcome, ScriptUsage, SessionAccepted,
    SessionEnded, SignalsDropped, Status,
};
use crate::stdin_queue::StdinQueue;
use crate::token_bucket::TokenBucket;
use crate::transport::{Io, Protocol, Transport};
use codec::SessionCodec;
use exit::{classify_exit, end_for_exit, exit_code_for, signal_name, ALLOWED_SIGNALS};
use state::{FilesIn, Handover, Phase, Slot, Start, Stdin, Upload, Writer};
use writer::{write_frames, WriterDone};

/// The connection's byte stream: TLS, or the WebSocket bridge's pipe.
type Stream = Box<dyn Io>;

/// Frames of script output buffered between the container and the socket, per session.
/// Small on purpose: with chunks of at most 64 KiB this caps a session's output buffer.
const OUTPUT_FRAMES: usize = 4;
/// After END/ERROR, how long to wait for the client's close before dropping it. Closing
/// while the client still sends would make the kernel answer with a reset, which can
/// destroy the END frame in the client's receive buffer.
const LINGER: Duration = Duration::from_secs(2);
/// Upper bound on ending a session whose client does not read.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on waiting for a killed container to report.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// SIGNAL frames a session may send at once, and then one more per `SIGNAL_EVERY`; the
/// excess is dropped and counted (protocol §7). Each signal is an engine request: a
/// flood of them once starved the whole daemon (issue 9). A person's Ctrl-C never gets
/// near this; a second Ctrl-C in our clients is CANCEL, which is not limited.
const SIGNAL_BURST: u32 = 10;
const SIGNAL_EVERY: Duration = Duration::from_millis(200);

/// What every session needs from the daemon.
pub struct SessionDeps {
    pub cfg: Arc<Config>,
    pub supervisor: SupervisorHandle,
    pub status: Addr<Status>,
    pub bytes: Arc<ByteCounters>,
}

/// Big files out are fetched through the engine (`bootstrap::FLAG_FETCH`) only when the
/// script's uid is known, which the fetch checks each file's owner against.
fn fetch_flag(user: &str) -> u32 {
    match script_uid(user) {
        Some(_) => bootstrap::FLAG_FETCH,
        None => 0,
    }
}

/// Starts a Session actor for a connection whose TLS handshake completed (or for a
/// WebSocket, through its bridge).
pub fn start(
    id: u64,
    peer: SocketAddr,
    stream: Transport,
    deps: Arc<SessionDeps>,
    accepted_at: Instant,
    guard: ConnectionGuard,
) {
    Session::new(id, peer, stream, deps, accepted_at, guard).start();
}

pub struct Session {
    id: u64,
    span: Span,
    /// The key for per-client limits and the identity in logs and status.
    client: String,
    deps: Arc<SessionDeps>,
    accepted_at: Instant,
    phase: Phase,
    io: Option<Stream>,
    protocol: Protocol,
    control: mpsc::UnboundedSender<Frame>,
    control_rx: Option<mpsc::UnboundedReceiver<Frame>>,
    output: Option<mpsc::Sender<Frame>>,
    output_rx: Option<mpsc::Receiver<Frame>>,
    writer: Writer,
    /// The client has closed its side (or it broke).
    read_done: bool,
    hello: Option<Hello>,
    upload: Upload,
    /// The files after the script (feature `files`).
    files: FilesIn,
    slot: Slot,
    /// Stdin on its way to the script, merged into one buffer (see `stdin_queue`).
    stdin: Arc<StdinQueue>,
    stdin_in_flight: Arc<AtomicU64>,
    stdin_state: Stdin,
    /// Why the server is stopping the script, once it is.
    stop_cause: Option<KillCause>,
    signal_budget: TokenBucket,
    signals_dropped: u64,
    _guard: ConnectionGuard,
}

impl Session {
    fn new(
        id: u64,
        peer: SocketAddr,
        stream: Transport,
        deps: Arc<SessionDeps>,
        accepted_at: Instant,
        guard: ConnectionGuard,
    ) -> Self {
        let Transport {
            io,
            client,
            protocol,
        } = stream;
        let (control, control_rx) = mpsc::unbounded_channel();
        let (output, output_rx) = mpsc::channel(OUTPUT_FRAMES);
        Session {
            id,
            span: info_span!("session", id, %peer, %client, protocol = protocol.label()),
            client,
            deps,
            accepted_at,
            phase: Phase::Hello,
            io: Some(io),
            protocol,
            control,
            control_rx: Some(control_rx),
            output: Some(output),
            output_rx: Some(output_rx),
            writer: Writer::NotStarted,
            read_done: false,
            hello: None,
            upload: Upload::NotAnnounced,
            files: FilesIn::NotGranted,
            slot: Slot::Waiting { queued_at: None },
            stdin: Arc::new(StdinQueue::new()),
            stdin_in_flight: Arc::new(AtomicU64::new(0)),
            stdin_state: Stdin::Open,
            stop_cause: None,
            signal_budget: TokenBucket::new(SIGNAL_BURST, SIGNAL_EVERY, accepted_at),
            signals_dropped: 0,
            _guard: guard,
        }
    }

    fn cfg(&self) -> &Config {
        &self.deps.cfg
    }

    fn closing(&self) -> bool {
        matches!(self.phase, Phase::Closing(_))
    }

    fn send(&self, frame: Frame) {
        let _ = self.control.send(frame);
    }

    fn session_handle(&self, ctx: &Context<Self>) -> SessionHandle {
        let me = ctx.address();
        SessionHandle {
            admitted: me.clone().recipient(),
            position: me.clone().recipient(),
            stop: me.clone().recipient(),
            events: me.recipient(),
        }
    }

    /// Ends the session with an ERROR frame: the script could not run (or go on).
    fn fail(&mut self, code: ErrorCode, message: impl Into<String>, ctx: &mut Context<Self>) {
        if self.closing() {
            return;
        }
        let message = message.into();
        info!(parent: &self.span, code = code.as_str(), %message, "session refused");
        if let Some(c) = self.slot.container() {
            c.kill.do_send(Kill(KillCause::ClientGone));
        }
        self.send(Frame::Error(ErrorMsg::new(code, message)));
        self.close(Outcome::Error(code), ctx);
    }

    /// Ends the session with an END frame.
    fn end(&mut self, end: End, ctx: &mut Context<Self>) {
        let outcome = Outcome::End(end.reason);
        self.end_as(end, outcome, ctx);
    }

    /// Ends the session with an END frame, counted in the status as `outcome`.
    fn end_as(&mut self, end: End, outcome: Outcome, ctx: &mut Context<Self>) {
        if self.closing() {
            return;
        }
        info!(
            parent: &self.span,
            reason = end.reason.as_str(),
            exit_code = end.exit_code,
            duration_ms = end.duration_ms,
            "session ended"
        );
        self.send(Frame::End(end));
        self.close(outcome, ctx);
    }

    /// The terminal frame is queued: the outcome is final and is counted now, before the
    /// client can have read it, so a status dump the client asks for next includes it.
    fn close(&mut self, outcome: Outcome, ctx: &mut Context<Self>) {
        self.phase = Phase::Closing(outcome);
        self.deps.status.do_send(SessionEnded(outcome));
        // Nothing else will be written: the writer ends after the terminal frame.
        self.output = None;
        self.unregister();
        ctx.run_later(CLOSE_TIMEOUT, |act, ctx| {
            debug!(parent: &act.span, "client did not take the end of the session in time");
            ctx.stop();
        });
        self.maybe_stop(ctx);
    }

    fn maybe_stop(&mut self, ctx: &mut Context<Self>) {
        if self.closing() && matches!(self.writer, Writer::Done) {
            if self.read_done {
                ctx.stop();
            } else {
                ctx.run_later(LINGER, |_, ctx| ctx.stop());
            }
        }
    }

    /// Tells the Supervisor the session is over. Sent at the close and again when the
    /// actor stops (a client that vanished mid-session); the second is a no-op there.
    fn unregister(&self) {
        self.deps
            .supervisor
            .unregister
            .do_send(Unregister { id: self.id });
    }

    fn duration_ms(&self) -> u64 {
        self.accepted_at.elapsed().as_millis() as u64
    }

    /// Stops the script for `cause`; the session ends when the container reports back.
    fn stop_script(&mut self, cause: KillCause, ctx: &mut Context<Self>) {
        if self.closing() || self.stop_cause.is_some() {
            return;
        }
        self.stop_cause = Some(cause);
        match &self.slot {
            // The script may be running: its end is what the container reports.
            Slot::Running { container, .. } => {
                container.kill.do_send(Kill(cause));
                ctx.run_later(KILL_TIMEOUT, move |act, ctx| {
                    warn!(parent: &act.span, "container did not report after a kill");
                    let end = act.end_for_cause(cause);
                    act.end(end, ctx);
                });
            }
            // A container, but no script in it yet: nothing to wait for.
            Slot::Held { container, .. } => {
                container.kill.do_send(Kill(cause));
                let end = self.end_for_cause(cause);
                self.end(end, ctx);
            }
            Slot::Waiting { .. } | Slot::Released => {
                let end = self.end_for_cause(cause);
                self.end(end, ctx);
            }
        }
    }

    /// The session's time limit: the server's, or the client's if it asked for less.
    fn time_limit(&self) -> Duration {
        let asked = self
            .hello
            .as_ref()
            .and_then(|h| h.timeout_ms)
            .filter(|ms| *ms > 0) // 0: no limit of the client's own
            .map(Duration::from_millis);
        match asked {
            Some(t) if t < self.cfg().session_timeout => t,
            _ => self.cfg().session_timeout,
        }
    }

    fn end_for_cause(&self, cause: KillCause) -> End {
        let (reason, message) = match cause {
            KillCause::Timeout => (
                EndReason::Timeout,
                format!(
                    "session timed out after {}",
                    format_duration(self.time_limit())
                ),
            ),
            KillCause::Cancelled | KillCause::ClientGone | KillCause::EngineFailed => {
                (EndReason::Cancelled, "cancelled by the client".to_string())
            }
            KillCause::Shutdown | KillCause::Discarded => (
                EndReason::Shutdown,
                "the server is shutting down".to_string(),
            ),
            // Only when the engine's loss raced the script's own end; see protocol §8.
            KillCause::EngineLost => (
                EndReason::Unknown,
                "the engine running the script was lost".to_string(),
            ),
            KillCause::OutputLimit => (
                EndReason::OutputLimit,
                format!(
                    "output limit of {} reached; the script was stopped",
                    format_size(self.cfg().output_limit)
                ),
            ),
        };
        End {
            reason,
            exit_code: exit_code_for(reason, None),
            signal: None,
            duration_ms: self.duration_ms(),
            message,
            usage: Default::default(),
        }
    }

    /// Turns the container's report into the session's last frame.
    fn conclude(&mut self, finished: Finished, ctx: &mut Context<Self>) {
        let end = match finished {
            // The engine failed before the script's end was known: that, not any kill we
            // may have asked for meanwhile, is what the client must hear.
            Finished::Failed(failure) => {
                return self.fail(ErrorCode::Docker, failure.to_string(), ctx)
            }
            Finished::Killed(cause) => self.end_for_cause(cause),
            Finished::Exited {
                status,
                exact,
                oom,
                usage,
            } => {
                let mut end = match (oom, exact) {
                    (true, _) => End {
                        reason: EndReason::Oom,
                        exit_code: exit_code_for(EndReason::Oom, None),
                        signal: Some(9),
                        duration_ms: self.duration_ms(),
                        message: format!(
                            "out of memory (limit {}); the script was killed",
                            format_size(self.cfg().sandbox.memory)
                        ),
                        usage: Default::default(),
                    },
                    (false, Some(exit)) => end_for_exit(exit, self.duration_ms()),
                    (false, None) => classify_exit(status, self.duration_ms()),
                };
                end.usage = usage;
                self.deps.status.do_send(ScriptUsage(usage));
                end
            }
            // Stopped before the script ran: the reason is ours.
            Finished::Unknown => match self.stop_cause {
                Some(cause) => self.end_for_cause(cause),
                None => {
                    return self.fail(ErrorCode::Internal, "the script's status is unknown", ctx)
                }
            },
        };
        self.end(end, ctx);
    }

    /// Hands the script to the container once both are there.
    fn maybe_run(&mut self, ctx: &mut Context<Self>) {
        if self.phase != Phase::Active || !matches!(self.upload, Upload::Complete(_)) {
            return;
        }
        let (Slot::Held { .. }, Some(hello)) = (&self.slot, &self.hello) else {
            return;
        };
        let Some(output) = self.output.take() else {
            return;
        };
        let Upload::Complete(script) = std::mem::replace(&mut self.upload, Upload::HandedOver)
        else {
            unreachable!("checked above");
        };
        let Slot::Held {
            container,
            admitted_at,
            queued_ms,
        } = std::mem::replace(&mut self.slot, Slot::Released)
        else {
            unreachable!("checked above");
        };
        let nonce = bootstrap::new_nonce();
        let files = files::request(hello, self.cfg(), self.time_limit());
        let input_wanted = hello::granted(hello, crate::protocol::INPUT_WANTED);
        let request = bootstrap::request(
            &script,
            &script_name(hello.name.as_deref()),
            &hello.args,
            &nonce,
            &files,
            // Without the feature the bootstrap does not watch at all: it costs nothing.
            if input_wanted {
                bootstrap::FLAG_INPUT_WANTED
            } else {
                0
            } | fetch_flag(&self.cfg().sandbox.user),
        );
        let handover = Handover {
            request,
            nonce,
            admitted_at,
            queued_ms,
            output,
            files_in: files.count > 0,
            files_out: (!files.get.is_empty()).then_some((files.get_cap, files.get_count)),
            input_wanted,
        };
        container.run.do_send(self.run_of(&handover, ctx));
        self.slot = Slot::Running {
            container,
            start: Start::Pending(Box::new(handover)),
        };
    }

    fn run_of(&self, h: &Handover, ctx: &Context<Self>) -> Run {
        Run {
            request: h.request.clone(),
            nonce: h.nonce,
            admitted_at: h.admitted_at,
            queued_ms: h.queued_ms,
            stdin: self.stdin.clone(),
            output: h.output.clone(),
            control: self.control.clone(),
            stdin_in_flight: self.stdin_in_flight.clone(),
            output_limit: self.cfg().output_limit,
            events: ctx.address().recipient(),
            files_in: h.files_in,
            files_out: h.files_out,
            input_wanted: h.input_wanted,
        }
    }

    /// The Supervisor moved the session to a container on another engine, because its
    /// container failed before the script started (the client sees nothing of it).
    pub(super) fn replaced(&mut self, container: ContainerHandle, ctx: &mut Context<Self>) {
        match std::mem::replace(&mut self.slot, Slot::Released) {
            Slot::Held {
                admitted_at,
                queued_ms,
                ..
            } => {
                self.slot = Slot::Held {
                    container,
                    admitted_at,
                    queued_ms,
                }
            }
            // Files already streamed to the failed container are gone from the queue:
            // they cannot be sent again, so the session ends (nothing ran).
            Slot::Running {
                start: Start::Pending(handover),
                ..
            } if handover.files_in => {
                container.kill.do_send(Kill(KillCause::Discarded));
                self.fail(
                    ErrorCode::Docker,
                    "the sandbox failed while the files were being sent; try again",
                    ctx,
                );
            }
            Slot::Running {
                start: Start::Pending(handover),
                ..
            } => {
                container.run.do_send(self.run_of(&handover, ctx));
                self.slot = Slot::Running {
                    container,
                    start: Start::Pending(handover),
                };
            }
            // Too late: nothing to move. The container is not ours to keep.
            other => {
                self.slot = other;
                container.kill.do_send(Kill(KillCause::Discarded));
            }
        }
    }

    fn on_script(&mut self, chunk: bytes::Bytes, ctx: &mut Context<Self>) {
        let Upload::Arriving { script, size } = &mut self.upload else {
            let size = self.hello.as_ref().map_or(0, |h| h.script_size);
            return self.fail(
                ErrorCode::Protocol,
                format!("more SCRIPT bytes than the {size} announced"),
                ctx,
            );
        };
        if script.len() as u64 + chunk.len() as u64 > *size {
            let size = *size;
            return self.fail(
                ErrorCode::Protocol,
                format!("more SCRIPT bytes than the {size} announced"),
                ctx,
            );
        }
        self.deps.bytes.add_in(chunk.len());
        script.extend_from_slice(&chunk);
        if script.len() as u64 == *size {
            let script = std::mem::take(script).freeze();
            self.upload = Upload::Complete(script);
            self.maybe_run(ctx);
        }
    }

    /// The script and every announced file have arrived: stdin may follow.
    fn uploaded(&self) -> bool {
        self.upload.complete() && !matches!(self.files, FilesIn::Arriving { .. })
    }

    fn on_stdin(&mut self, data: bytes::Bytes, ctx: &mut Context<Self>) {
        if !self.uploaded() || self.stdin_state == Stdin::Closed {
            let why = if self.stdin_state == Stdin::Closed {
                "STDIN after STDIN_EOF"
            } else if self.upload.complete() {
                "STDIN before every announced file"
            } else {
                "STDIN before the whole script"
            };
            return self.fail(ErrorCode::Protocol, why, ctx);
        }
        self.push_stdin(data, ctx);
    }

    /// Queues bytes for the container's stdin (STDIN, and file content, which shares the
    /// window): one bound on what the daemon holds, whatever frames brought them.
    pub(super) fn push_stdin(&mut self, data: bytes::Bytes, ctx: &mut Context<Self>) {
        let n = data.len() as u64;
        let in_flight = self.stdin_in_flight.fetch_add(n, Ordering::Relaxed) + n;
        if in_flight > STDIN_WINDOW as u64 {
            return self.fail(
                ErrorCode::Protocol,
                format!("STDIN window of {STDIN_WINDOW} bytes exceeded"),
                ctx,
            );
        }
        self.deps.bytes.add_in(data.len());
        self.stdin.push(&data);
    }

    fn on_signal(&mut self, sig: u8, ctx: &mut Context<Self>) {
        let Some(name) = signal_name(sig) else {
            return self.fail(
                ErrorCode::Protocol,
                format!(
                    "signal {sig} may not be sent (allowed: {})",
                    ALLOWED_SIGNALS.map(|n| n.to_string()).join(", ")
                ),
                ctx,
            );
        };
        if !self.signal_budget.take(Instant::now()) {
            self.signals_dropped += 1;
            return;
        }
        match &self.slot {
            Slot::Running {
                container,
                start: Start::Started,
            } => container.signal.do_send(Signal(name)),
            // Nothing runs yet: a terminating signal means "never mind"; the
            // user-defined ones have no one to reach and are dropped.
            _ if matches!(sig, 10 | 12) => {}
            _ => self.stop_script(KillCause::Cancelled, ctx),
        }
    }

    fn on_frame(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        match (self.phase, frame) {
            (Phase::Closing(_), _) => {}
            (Phase::Hello, Frame::Hello(hello)) => self.on_hello(hello, ctx),
            (Phase::Hello, other) => self.fail(
                ErrorCode::Protocol,
                format!("expected HELLO, got {}", other.frame_type().name()),
                ctx,
            ),
            (Phase::Active, Frame::Script(chunk)) => self.on_script(chunk, ctx),
            (Phase::Active, Frame::Stdin(data)) => self.on_stdin(data, ctx),
            (Phase::Active, Frame::FileIn(header)) => self.on_file_in(header, ctx),
            (Phase::Active, Frame::FileInData(data)) => self.on_file_in_data(data, ctx),
            (Phase::Active, Frame::StdinEof) => {
                if !self.uploaded() || self.stdin_state == Stdin::Closed {
                    return self.fail(ErrorCode::Protocol, "unexpected STDIN_EOF", ctx);
                }
                self.stdin_state = Stdin::Closed;
                self.stdin.close();
            }
            (Phase::Active, Frame::Signal(sig)) => self.on_signal(sig, ctx),
            (Phase::Active, Frame::Cancel) => self.stop_script(KillCause::Cancelled, ctx),
            (_, other) => self.fail(
                ErrorCode::Protocol,
                format!("unexpected {} frame", other.frame_type().name()),
                ctx,
            ),
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        debug!(parent: &self.span, "session started");
        self.deps.status.do_send(SessionAccepted(self.protocol));
        self.deps.supervisor.register.do_send(Register {
            id: self.id,
            session: self.session_handle(ctx),
            accepted_at: self.accepted_at,
            client: self.client.clone(),
        });
        let (read, write): (ReadHalf<Stream>, _) =
            tokio::io::split(self.io.take().expect("io is set in new()"));
        ctx.add_stream(FramedRead::new(read, SessionCodec::default()));
        let writer = write_frames(
            FramedWrite::new(write, FrameCodec::new()),
            self.output_rx.take().expect("set in new()"),
            self.control_rx.take().expect("set in new()"),
            ctx.address().recipient(),
        );
        self.writer = Writer::Running(actix_rt::spawn(writer));
        let upload_timeout = self.cfg().upload_timeout;
        ctx.run_later(upload_timeout, move |act, ctx| {
            if !act.closing() && !act.upload.complete() {
                act.fail(
                    ErrorCode::UploadTimeout,
                    format!(
                        "no complete script within {}",
                        format_duration(upload_timeout)
                    ),
                    ctx,
                );
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Writer::Running(writer) = std::mem::replace(&mut self.writer, Writer::Done) {
            writer.abort();
        }
        // As a dropped channel once did: the script's stdin ends with its session.
        self.stdin.close();
        if self.signals_dropped > 0 {
            info!(parent: &self.span, dropped = self.signals_dropped, "SIGNAL frames over the rate limit were dropped");
            self.deps
                .status
                .do_send(SignalsDropped(self.signals_dropped));
        }
        if !self.closing() {
            info!(parent: &self.span, duration_ms = self.duration_ms(), "client disconnected");
            if let Some(c) = self.slot.container() {
                c.kill.do_send(Kill(KillCause::ClientGone));
            }
            self.deps
                .status
                .do_send(SessionEnded(Outcome::Disconnected));
        }
        self.unregister();
    }
}

impl StreamHandler<Result<Result<Frame, CodecError>, CodecError>> for Session {
    fn handle(
        &mut self,
        item: Result<Result<Frame, CodecError>, CodecError>,
        ctx: &mut Context<Self>,
    ) {
        match item {
            Ok(Ok(frame)) => self.on_frame(frame, ctx),
            // Protocol §3: any first frame but HELLO is answered "expected HELLO, got …",
            // an unknown type byte included.
            Ok(Err(e @ CodecError::Frame(FrameError::UnknownType(_))))
                if self.phase == Phase::Hello =>
            {
                self.fail(ErrorCode::Protocol, format!("expected HELLO, got {e}"), ctx)
            }
            Ok(Err(e)) => self.fail(ErrorCode::Protocol, e.to_string(), ctx),
            Err(e) => {
                debug!(parent: &self.span, error = %e, "read failed");
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.read_done = true;
        if self.closing() {
            self.maybe_stop(ctx);
        } else {
            // The client is gone mid-session: nobody to tell, stop everything now.
            ctx.stop();
        }
    }
}

impl Handler<Admitted> for Session {
    type Result = ();
    fn handle(&mut self, msg: Admitted, ctx: &mut Context<Self>) {
        self.admitted(msg.container, ctx);
    }
}

impl Handler<QueuePosition> for Session {
    type Result = ();
    fn handle(&mut self, QueuePosition(position): QueuePosition, _: &mut Context<Self>) {
        if self.phase == Phase::Active && matches!(self.slot, Slot::Waiting { .. }) {
            self.send(Frame::Queued(Queued { position }));
        }
    }
}

impl Handler<SessionStop> for Session {
    type Result = ();
    fn handle(&mut self, msg: SessionStop, ctx: &mut Context<Self>) {
        let cause = match msg {
            SessionStop::Timeout => KillCause::Timeout,
            SessionStop::Shutdown => KillCause::Shutdown,
            SessionStop::Unavailable => {
                return self.fail(
                    ErrorCode::Docker,
                    "the Docker Engine is unreachable; try again later",
                    ctx,
                )
            }
        };
        if self.phase == Phase::Hello && msg == SessionStop::Shutdown {
            // No HELLO yet: there is no session to end, only a connection to refuse.
            return self.fail(ErrorCode::Shutdown, "the server is shutting down", ctx);
        }
        self.stop_script(cause, ctx);
    }
}

impl Handler<ContainerEvent> for Session {
    type Result = ();
    fn handle(&mut self, event: ContainerEvent, ctx: &mut Context<Self>) {
        match event {
            // The container has already queued the STARTED frame (ahead of any
            // STDIN_CREDIT); here it is only noted.
            ContainerEvent::Started {
                latency,
                warm,
                engine,
            } => {
                if let Slot::Running { start, .. } = &mut self.slot {
                    // Drops the copy of the output sender and the script.
                    *start = Start::Started;
                }
                debug!(parent: &self.span, latency_ms = latency.as_millis() as u64, warm, %engine, "script started");
                self.deps
                    .status
                    .do_send(ContainerStarted { latency, engine });
            }
            ContainerEvent::FirstOutput => {
                self.deps.status.do_send(FirstOutput {
                    latency: self.accepted_at.elapsed(),
                });
            }
            ContainerEvent::Finished(f) => {
                self.slot = Slot::Released;
                self.conclude(f, ctx);
            }
        }
    }
}

impl Handler<WriterDone> for Session {
    type Result = ();
    fn handle(&mut self, msg: WriterDone, ctx: &mut Context<Self>) {
        self.writer = Writer::Done;
        if !msg.clean && !self.closing() {
            // The socket failed: the client is gone.
            return ctx.stop();
        }
        self.maybe_stop(ctx);
    }
}
