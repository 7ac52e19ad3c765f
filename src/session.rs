//! The Session actor: one client connection from the end of its TLS handshake to its close.
//!
//! Reading: the TLS read half is a `FramedRead` stream handled by this actor. It never
//! blocks: stdin is bounded by the credit window the client must respect, not by
//! stalling the socket, so a Ctrl-C or a disconnect is seen at once even when the script
//! does not read its stdin.
//!
//! Writing: a writer task owns the TLS write half behind two channels: a bounded one for
//! script output (its capacity is the backpressure on the container) and an unbounded one
//! for the few control frames. It flushes whenever both are empty, so a prompt without a
//! newline goes out at once while a flood is coalesced into full TLS records, and it ends
//! with `close()`, which sends TLS close_notify before the TCP FIN.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::BytesMut;
use futures::SinkExt;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::{Decoder, FramedRead, FramedWrite};
use tracing::{debug, info, info_span, warn, Span};

use crate::config::{format_duration, format_size, Config};
use crate::container::{
    ContainerActor, ContainerEvent, Finished, Kill, KillCause, Run, ScriptExit, Signal,
};
use crate::listener::ConnectionGuard;
use crate::protocol::{
    CodecError, DataRun, End, EndReason, ErrorCode, ErrorMsg, Frame, FrameCodec, Hello, Limits,
    Queued, Welcome, MAX_FRAME_PAYLOAD, PROTOCOL_VERSION,
};
use crate::sandbox::{bootstrap_request, check_args, new_nonce, script_name};
use crate::status::{
    ByteCounters, ContainerStarted, FirstOutput, Outcome, SessionAccepted, SessionEnded,
    SignalsDropped, Status,
};
use crate::stdin_queue::StdinQueue;
use crate::supervisor::{Admission, Admit, Register, Supervisor, Unregister};
use crate::token_bucket::TokenBucket;

type Tls = TlsStream<TcpStream>;

/// Frames of script output buffered between the container and the socket, per session.
/// Small on purpose: with chunks of at most 64 KiB this caps a session's output buffer.
const OUTPUT_FRAMES: usize = 4;
/// STDIN bytes a client may send ahead of STDIN_CREDIT.
pub const STDIN_WINDOW: u32 = 256 * 1024;
/// After END/ERROR, how long to wait for the client's close before dropping it. Closing
/// while the client still sends would make the kernel answer with a reset, which can
/// destroy the END frame in the client's receive buffer.
const LINGER: Duration = Duration::from_secs(2);
/// Upper bound on ending a session whose client does not read.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on waiting for a killed container to report.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// SIGNAL frames a session may send at once, and then one more per `SIGNAL_EVERY`; the
/// excess is dropped and counted (protocol §7). Each signal is a Docker API request: a
/// flood of them once starved the whole daemon (issue 9). A person's Ctrl-C never gets
/// near this; a second Ctrl-C in our clients is CANCEL, which is not limited.
const SIGNAL_BURST: u32 = 10;
const SIGNAL_EVERY: Duration = Duration::from_millis(200);

/// Signals a client may send, by number (Linux numbering, as in the protocol).
const ALLOWED_SIGNALS: [u8; 7] = [1, 2, 3, 9, 10, 12, 15];

/// Linux signal names by number, for the allowed signals and for messages.
const SIGNAL_NAMES: [&str; 32] = [
    "",
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// The name of a signal a client may send; `None` for any other.
fn signal_name(sig: u8) -> Option<&'static str> {
    ALLOWED_SIGNALS
        .contains(&sig)
        .then(|| SIGNAL_NAMES[sig as usize])
}

/// Name of a signal for messages, for the standard Linux signals.
pub fn describe_signal(sig: i32) -> String {
    match SIGNAL_NAMES.get(sig as usize) {
        Some(name) if !name.is_empty() => format!("signal {sig} ({name})"),
        _ => format!("signal {sig}"),
    }
}

/// The session's decoder: frames until the first protocol error, which it reports once as
/// an item, then it swallows whatever else the client sends. The stream stays open, so
/// the session can deliver its ERROR frame and linger; closing a socket with unread data
/// would make the kernel reset the connection and could destroy that ERROR in transit.
#[derive(Default)]
struct SessionCodec {
    codec: FrameCodec,
    failed: bool,
}

impl Decoder for SessionCodec {
    type Item = Result<Frame, CodecError>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        if self.failed {
            src.clear();
            return Ok(None);
        }
        match self.codec.decode(src) {
            Ok(frame) => Ok(frame.map(Ok)),
            Err(e) if e.is_protocol() => {
                self.failed = true;
                src.clear();
                Ok(Some(Err(e)))
            }
            Err(e) => Err(e),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() => Ok(None),
            None => {
                self.failed = true;
                let left = src.len();
                src.clear();
                Ok(Some(Err(CodecError::Truncated(left))))
            }
        }
    }
}

/// What every session needs from the daemon.
pub struct SessionDeps {
    pub cfg: Arc<Config>,
    pub supervisor: Addr<Supervisor>,
    pub status: Addr<Status>,
    pub bytes: Arc<ByteCounters>,
}

/// The Supervisor's verdict for a queued session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Admitted {
    pub container: Addr<ContainerActor>,
}

/// The session's new place in the queue (1 = next).
#[derive(Message)]
#[rtype(result = "()")]
pub struct QueuePosition(pub u32);

/// Sent by the Supervisor: the session must end.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum SessionStop {
    /// The session's time is up.
    Timeout,
    /// The server is shutting down.
    Shutdown,
    /// The Docker Engine is unreachable: whoever waits would wait in vain.
    Unavailable,
}

/// The writer task is done; `clean` when close_notify went out.
#[derive(Message)]
#[rtype(result = "()")]
struct WriterDone {
    clean: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for HELLO.
    Hello,
    /// HELLO accepted; the script is arriving, the session may be queued or running.
    Active,
    /// END or ERROR has been queued; waiting for the writer and the client's close.
    Closing,
}

pub struct Session {
    id: u64,
    span: Span,
    /// The key for per-client limits and the identity in logs and status.
    client: String,
    deps: Arc<SessionDeps>,
    accepted_at: Instant,
    phase: Phase,
    io: Option<(ReadHalf<Tls>, WriteHalf<Tls>)>,
    control: mpsc::UnboundedSender<Frame>,
    control_rx: Option<mpsc::UnboundedReceiver<Frame>>,
    output: Option<mpsc::Sender<Frame>>,
    output_rx: Option<mpsc::Receiver<Frame>>,
    writer: Option<actix_rt::task::JoinHandle<()>>,
    writer_done: bool,
    read_done: bool,
    hello: Option<Hello>,
    script: BytesMut,
    script_size: u64,
    /// Every announced script byte has arrived (the buffer itself is handed on).
    script_done: bool,
    container: Option<Addr<ContainerActor>>,
    queued_at: Option<Instant>,
    admitted_at: Option<Instant>,
    run_sent: bool,
    running: bool,
    /// Stdin on its way to the script, merged into one buffer (see `stdin_queue`).
    stdin: Arc<StdinQueue>,
    stdin_in_flight: Arc<AtomicU64>,
    stdin_closed: bool,
    stop_cause: Option<KillCause>,
    signal_budget: TokenBucket,
    signals_dropped: u64,
    outcome: Option<Outcome>,
    registered: bool,
    _guard: ConnectionGuard,
}

impl Session {
    pub fn new(
        id: u64,
        peer: SocketAddr,
        stream: Tls,
        deps: Arc<SessionDeps>,
        accepted_at: Instant,
        guard: ConnectionGuard,
    ) -> Self {
        // Who the client is: its certificate's subject under mutual TLS, else its address.
        let client =
            crate::tls::peer_identity(stream.get_ref().1).unwrap_or_else(|| peer.ip().to_string());
        let (control, control_rx) = mpsc::unbounded_channel();
        let (output, output_rx) = mpsc::channel(OUTPUT_FRAMES);
        Session {
            id,
            span: info_span!("session", id, %peer, %client),
            client,
            deps,
            accepted_at,
            phase: Phase::Hello,
            io: Some(tokio::io::split(stream)),
            control,
            control_rx: Some(control_rx),
            output: Some(output),
            output_rx: Some(output_rx),
            writer: None,
            writer_done: false,
            read_done: false,
            hello: None,
            script: BytesMut::new(),
            script_size: 0,
            script_done: false,
            container: None,
            queued_at: None,
            admitted_at: None,
            run_sent: false,
            running: false,
            stdin: Arc::new(StdinQueue::new()),
            stdin_in_flight: Arc::new(AtomicU64::new(0)),
            stdin_closed: false,
            stop_cause: None,
            signal_budget: TokenBucket::new(SIGNAL_BURST, SIGNAL_EVERY, accepted_at),
            signals_dropped: 0,
            outcome: None,
            registered: false,
            _guard: guard,
        }
    }

    fn cfg(&self) -> &Config {
        &self.deps.cfg
    }

    fn send(&self, frame: Frame) {
        let _ = self.control.send(frame);
    }

    /// Ends the session with an ERROR frame: the script could not run (or go on).
    fn fail(&mut self, code: ErrorCode, message: impl Into<String>, ctx: &mut Context<Self>) {
        if self.phase == Phase::Closing {
            return;
        }
        let message = message.into();
        info!(parent: &self.span, code = code.as_str(), %message, "session refused");
        if let Some(c) = &self.container {
            c.do_send(Kill(KillCause::ClientGone));
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
        if self.phase == Phase::Closing {
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
        self.phase = Phase::Closing;
        self.outcome = Some(outcome);
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
        if self.phase == Phase::Closing && self.writer_done {
            if self.read_done {
                ctx.stop();
            } else {
                ctx.run_later(LINGER, |_, ctx| ctx.stop());
            }
        }
    }

    fn unregister(&mut self) {
        if std::mem::take(&mut self.registered) {
            self.deps.supervisor.do_send(Unregister { id: self.id });
        }
    }

    fn duration_ms(&self) -> u64 {
        self.accepted_at.elapsed().as_millis() as u64
    }

    /// Stops the script for `cause`; the session ends when the container reports back.
    fn stop_script(&mut self, cause: KillCause, ctx: &mut Context<Self>) {
        if self.phase == Phase::Closing || self.stop_cause.is_some() {
            return;
        }
        self.stop_cause = Some(cause);
        match (&self.container, self.run_sent) {
            // The script may be running: its end is what the container reports.
            (Some(container), true) => {
                container.do_send(Kill(cause));
                ctx.run_later(KILL_TIMEOUT, move |act, ctx| {
                    warn!(parent: &act.span, "container did not report after a kill");
                    let end = act.end_for_cause(cause);
                    act.end(end, ctx);
                });
            }
            // A container, but no script in it yet: nothing to wait for.
            (Some(container), false) => {
                container.do_send(Kill(cause));
                let end = self.end_for_cause(cause);
                self.end(end, ctx);
            }
            (None, _) => {
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
            KillCause::Cancelled | KillCause::ClientGone => {
                (EndReason::Cancelled, "cancelled by the client".to_string())
            }
            KillCause::Shutdown | KillCause::Discarded => (
                EndReason::Shutdown,
                "the server is shutting down".to_string(),
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
        }
    }

    /// Turns the container's report into the session's last frame.
    fn conclude(&mut self, f: Finished, ctx: &mut Context<Self>) {
        if let (None, Some(err)) = (f.exit_code, &f.error) {
            // Docker failed before the script's end was known: that, not any kill we may
            // have asked for meanwhile, is what the client must hear.
            return self.fail(ErrorCode::Docker, err.clone(), ctx);
        }
        let cause = f.killed.or(if f.exit_code.is_none() {
            self.stop_cause
        } else {
            None
        });
        if let Some(cause) = cause {
            let end = self.end_for_cause(cause);
            return self.end(end, ctx);
        }
        // A Docker error without an exit code has been answered above.
        match f.exit_code {
            Some(_) if f.oom => {
                let end = End {
                    reason: EndReason::Oom,
                    exit_code: exit_code_for(EndReason::Oom, None),
                    signal: Some(9),
                    duration_ms: self.duration_ms(),
                    message: format!(
                        "out of memory (limit {}); the script was killed",
                        format_size(self.cfg().sandbox.memory)
                    ),
                };
                self.end(end, ctx)
            }
            Some(code) => {
                let end = match f.script_exit {
                    Some(exit) => end_for_exit(exit, self.duration_ms()),
                    None => classify_exit(code, self.duration_ms()),
                };
                self.end(end, ctx)
            }
            None => self.fail(ErrorCode::Internal, "the script's status is unknown", ctx),
        }
    }

    fn on_hello(&mut self, hello: Hello, ctx: &mut Context<Self>) {
        if hello.version != PROTOCOL_VERSION {
            return self.fail(
                ErrorCode::Version,
                format!(
                    "unsupported protocol version {}; this server speaks {PROTOCOL_VERSION}",
                    hello.version
                ),
                ctx,
            );
        }
        let max = self.cfg().max_script_size;
        if hello.script_size > max {
            return self.fail(
                ErrorCode::TooLarge,
                format!(
                    "script too large: {} bytes, the limit is {}",
                    hello.script_size,
                    format_size(max)
                ),
                ctx,
            );
        }
        if let Err(e) = check_args(&hello.args) {
            return self.fail(ErrorCode::TooLarge, e.to_string(), ctx);
        }
        if hello.probe && hello.script_size != 0 {
            return self.fail(ErrorCode::Protocol, "a probe carries no script", ctx);
        }
        debug!(parent: &self.span, client = %hello.client, script_size = hello.script_size, args = hello.args.len(), "hello");
        self.script_size = hello.script_size;
        self.script_done = hello.script_size == 0;
        self.script
            .reserve(hello.script_size.min(64 * 1024) as usize);
        self.hello = Some(hello);
        self.phase = Phase::Active;
        let limit = self.time_limit();
        if limit < self.cfg().session_timeout {
            // The client asked for less time than the Supervisor's limit: keep its own timer.
            let left = limit.saturating_sub(self.accepted_at.elapsed());
            ctx.run_later(left, |act, ctx| act.stop_script(KillCause::Timeout, ctx));
        }
        let cfg = self.cfg();
        self.send(Frame::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            server: format!("pyexecd {}", env!("CARGO_PKG_VERSION")),
            session: self.id.to_string(),
            limits: Limits {
                script_size: cfg.max_script_size,
                timeout_ms: limit.as_millis() as u64,
                output_bytes: cfg.output_limit,
                stdin_window: STDIN_WINDOW,
            },
        }));
        if self.hello.as_ref().is_some_and(|h| h.probe) {
            let end = End {
                reason: EndReason::Exited,
                exit_code: 0,
                signal: None,
                duration_ms: self.duration_ms(),
                message: "probe: no script was run".into(),
            };
            self.end_as(end, Outcome::Probe, ctx);
            return;
        }
        let admit = self.deps.supervisor.send(Admit { id: self.id });
        ctx.spawn(admit.into_actor(self).map(|res, act, ctx| match res {
            Ok(Admission::Granted(container)) => act.admitted(container, ctx),
            // `Admitted` may overtake this reply: then the session is no longer queued.
            Ok(Admission::Queued(_)) if act.container.is_some() || act.phase == Phase::Closing => {}
            Ok(Admission::Queued(position)) => {
                act.queued_at = Some(Instant::now());
                debug!(parent: &act.span, position, "queued");
                act.send(Frame::Queued(Queued { position }));
            }
            Ok(Admission::Busy { running, queued }) => act.fail(
                ErrorCode::Busy,
                format!(
                    "server busy: {running} scripts running and {queued} waiting; try again later"
                ),
                ctx,
            ),
            Ok(Admission::Limited(why)) => act.fail(ErrorCode::Limited, why, ctx),
            Ok(Admission::Unavailable(why)) => act.fail(
                ErrorCode::Docker,
                format!("the Docker Engine is unreachable ({why}); try again later"),
                ctx,
            ),
            Ok(Admission::ShuttingDown) => act.stop_script(KillCause::Shutdown, ctx),
            Err(e) => act.fail(
                ErrorCode::Internal,
                format!("supervisor unavailable: {e}"),
                ctx,
            ),
        }));
        self.maybe_run(ctx);
    }

    fn admitted(&mut self, container: Addr<ContainerActor>, ctx: &mut Context<Self>) {
        if self.phase == Phase::Closing {
            // Ended while the verdict was on its way: give the slot straight back.
            container.do_send(Kill(KillCause::ClientGone));
            return;
        }
        self.admitted_at = Some(Instant::now());
        self.container = Some(container);
        if let Some(cause) = self.stop_cause.take() {
            return self.stop_script(cause, ctx);
        }
        self.maybe_run(ctx);
    }

    fn maybe_run(&mut self, ctx: &mut Context<Self>) {
        if self.run_sent || !self.script_done || self.phase != Phase::Active {
            return;
        }
        let (Some(container), Some(hello)) = (&self.container, &self.hello) else {
            return;
        };
        let Some(output) = self.output.take() else {
            return;
        };
        self.run_sent = true;
        let script = std::mem::take(&mut self.script);
        let nonce = new_nonce();
        let request = bootstrap_request(
            &script,
            &script_name(hello.name.as_deref()),
            &hello.args,
            &nonce,
        );
        let admitted_at = self.admitted_at.unwrap_or(self.accepted_at);
        let queued_ms = self.queued_at.map_or(0, |q| {
            admitted_at.saturating_duration_since(q).as_millis() as u64
        });
        container.do_send(Run {
            request,
            nonce,
            admitted_at,
            queued_ms,
            stdin: self.stdin.clone(),
            output,
            control: self.control.clone(),
            stdin_in_flight: self.stdin_in_flight.clone(),
            output_limit: self.cfg().output_limit,
            events: ctx.address().recipient(),
        });
    }

    fn on_frame(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        match (self.phase, frame) {
            (Phase::Closing, _) => {}
            (Phase::Hello, Frame::Hello(hello)) => self.on_hello(hello, ctx),
            (Phase::Hello, other) => self.fail(
                ErrorCode::Protocol,
                format!("expected HELLO, got {}", other.frame_type().name()),
                ctx,
            ),
            (Phase::Active, Frame::Script(chunk)) => {
                if self.script_done
                    || self.script.len() as u64 + chunk.len() as u64 > self.script_size
                {
                    return self.fail(
                        ErrorCode::Protocol,
                        format!("more SCRIPT bytes than the {} announced", self.script_size),
                        ctx,
                    );
                }
                self.deps.bytes.add_in(chunk.len());
                self.script.extend_from_slice(&chunk);
                self.script_done = self.script.len() as u64 == self.script_size;
                self.maybe_run(ctx);
            }
            (Phase::Active, Frame::Stdin(data)) => {
                if !self.script_done || self.stdin_closed {
                    let why = if self.stdin_closed {
                        "STDIN after STDIN_EOF"
                    } else {
                        "STDIN before the whole script"
                    };
                    return self.fail(ErrorCode::Protocol, why, ctx);
                }
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
            (Phase::Active, Frame::StdinEof) => {
                if !self.script_done || self.stdin_closed {
                    return self.fail(ErrorCode::Protocol, "unexpected STDIN_EOF", ctx);
                }
                self.stdin_closed = true;
                self.stdin.close();
            }
            (Phase::Active, Frame::Signal(sig)) => {
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
                match (&self.container, self.running) {
                    (Some(container), true) => container.do_send(Signal(name)),
                    // Nothing runs yet: a terminating signal means "never mind"; the
                    // user-defined ones have no one to reach and are dropped.
                    _ if matches!(sig, 10 | 12) => {}
                    _ => self.stop_script(KillCause::Cancelled, ctx),
                }
            }
            (Phase::Active, Frame::Cancel) => self.stop_script(KillCause::Cancelled, ctx),
            (_, other) => self.fail(
                ErrorCode::Protocol,
                format!("unexpected {} frame", other.frame_type().name()),
                ctx,
            ),
        }
    }
}

/// Maps a reason to the status a client exits with (the table in docs/protocol.md).
pub fn exit_code_for(reason: EndReason, status: Option<i32>) -> i32 {
    match reason {
        EndReason::Exited | EndReason::Signal => status.unwrap_or(1),
        EndReason::Timeout => 124,
        EndReason::Oom | EndReason::OutputLimit => 137,
        EndReason::Cancelled => 130,
        EndReason::Shutdown => 143,
        EndReason::Unknown => 125,
    }
}

/// Reads a container's exit status as a shell does: above 128 means death by a signal.
/// The fallback when the bootstrap's exact report is missing (SIGKILL, which may be the
/// OOM killer, or a container killed whole): docker-init reports a child killed by signal
/// N as 128 + N, so a `sys.exit(137)` would read as SIGKILL here, as in a shell.
pub fn classify_exit(code: i64, duration_ms: u64) -> End {
    let status = code.clamp(0, 255) as i32;
    let exit = if (129..=128 + 64).contains(&status) {
        ScriptExit::Signal(status - 128)
    } else {
        ScriptExit::Code(status)
    };
    end_for_exit(exit, duration_ms)
}

/// The END for a script whose end the bootstrap reported exactly.
pub fn end_for_exit(exit: ScriptExit, duration_ms: u64) -> End {
    match exit {
        ScriptExit::Code(code) => End {
            reason: EndReason::Exited,
            exit_code: code,
            signal: None,
            duration_ms,
            message: String::new(),
        },
        ScriptExit::Signal(sig) => End {
            reason: EndReason::Signal,
            exit_code: 128 + sig,
            signal: Some(sig),
            duration_ms,
            message: format!("killed by {}", describe_signal(sig)),
        },
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        debug!(parent: &self.span, "session started");
        self.deps.status.do_send(SessionAccepted);
        self.deps.supervisor.do_send(Register {
            id: self.id,
            addr: ctx.address(),
            accepted_at: self.accepted_at,
            client: self.client.clone(),
        });
        self.registered = true;
        let (read, write) = self.io.take().expect("io is set in new()");
        ctx.add_stream(FramedRead::new(read, SessionCodec::default()));
        let writer = write_frames(
            FramedWrite::new(write, FrameCodec::new()),
            self.output_rx.take().expect("set in new()"),
            self.control_rx.take().expect("set in new()"),
            ctx.address(),
        );
        self.writer = Some(actix_rt::spawn(writer));
        let upload_timeout = self.cfg().upload_timeout;
        ctx.run_later(upload_timeout, move |act, ctx| {
            if act.phase != Phase::Closing && !act.script_done {
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
        if let Some(writer) = self.writer.take() {
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
        if self.outcome.is_none() {
            info!(parent: &self.span, duration_ms = self.duration_ms(), "client disconnected");
            if let Some(c) = &self.container {
                c.do_send(Kill(KillCause::ClientGone));
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
            Ok(Err(e)) => self.fail(ErrorCode::Protocol, e.to_string(), ctx),
            Err(e) => {
                debug!(parent: &self.span, error = %e, "read failed");
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.read_done = true;
        if self.phase == Phase::Closing {
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
        if self.phase == Phase::Active && self.container.is_none() {
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
            ContainerEvent::Started { latency, warm } => {
                self.running = true;
                debug!(parent: &self.span, latency_ms = latency.as_millis() as u64, warm, "script started");
                self.deps.status.do_send(ContainerStarted { latency });
            }
            ContainerEvent::FirstOutput => {
                self.deps.status.do_send(FirstOutput {
                    latency: self.accepted_at.elapsed(),
                });
            }
            ContainerEvent::Finished(f) => {
                self.container = None;
                self.conclude(f, ctx);
            }
        }
    }
}

impl Handler<WriterDone> for Session {
    type Result = ();
    fn handle(&mut self, msg: WriterDone, ctx: &mut Context<Self>) {
        self.writer_done = true;
        self.writer = None;
        if !msg.clean && self.phase != Phase::Closing {
            // The socket failed: the client is gone.
            return ctx.stop();
        }
        self.maybe_stop(ctx);
    }
}

/// Takes the chunks of the same stream already waiting behind `first`, up to one frame's
/// worth: a flood leaves in frames of up to 128 KiB instead of Docker's 32 KiB reads. A
/// chunk of the other stream ends the run and is kept for next.
fn gather(
    stderr: bool,
    first: bytes::Bytes,
    output: &mut mpsc::Receiver<Frame>,
    stashed: &mut Option<Frame>,
) -> DataRun {
    let mut len = first.len();
    let mut parts = vec![first];
    while len < MAX_FRAME_PAYLOAD {
        match output.try_recv() {
            Ok(Frame::Stdout(b)) if !stderr && len + b.len() <= MAX_FRAME_PAYLOAD => {
                len += b.len();
                parts.push(b);
            }
            Ok(Frame::Stderr(b)) if stderr && len + b.len() <= MAX_FRAME_PAYLOAD => {
                len += b.len();
                parts.push(b);
            }
            Ok(other) => {
                *stashed = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    DataRun { stderr, parts }
}

/// Owns the TLS write half. A queued control frame goes before queued output: STARTED is
/// queued before the script's first byte and must reach the client before it (protocol
/// §5.2), and an output flood must not starve STDIN_CREDIT. (A fair `select!` once let a
/// fast script's first STDOUT overtake STARTED.) A terminal frame, though, is written only
/// after every output frame queued before it: the container reports its end only once its
/// output is queued.
async fn write_frames(
    mut sink: FramedWrite<WriteHalf<Tls>, FrameCodec>,
    mut output: mpsc::Receiver<Frame>,
    mut control: mpsc::UnboundedReceiver<Frame>,
    session: Addr<Session>,
) {
    let result: Result<(), CodecError> = async {
        // An output frame taken while gathering a run of the other stream.
        let mut stashed: Option<Frame> = None;
        loop {
            let frame = match stashed.take() {
                Some(frame) => frame,
                None => tokio::select! {
                    biased;
                    frame = control.recv() => match frame {
                        Some(frame) => frame,
                        None => break,
                    },
                    Some(frame) = output.recv() => frame,
                },
            };
            if frame.is_terminal() {
                while let Ok(pending) = output.try_recv() {
                    sink.feed(pending).await?;
                }
                sink.feed(frame).await?;
                break;
            }
            match frame {
                Frame::Stdout(first) => {
                    let run = gather(false, first, &mut output, &mut stashed);
                    sink.feed(run).await?
                }
                Frame::Stderr(first) => {
                    let run = gather(true, first, &mut output, &mut stashed);
                    sink.feed(run).await?
                }
                frame => sink.feed(frame).await?,
            }
            // A stashed frame (the other stream's, taken while gathering) goes out next:
            // flushing before it would cost a TLS record and a write per stream switch.
            if stashed.is_none() && output.is_empty() && control.is_empty() {
                SinkExt::<Frame>::flush(&mut sink).await?;
            }
        }
        // Flushes, then sends close_notify and shuts the TCP write side.
        SinkExt::<Frame>::close(&mut sink).await
    }
    .await;
    session.do_send(WriterDone {
        clean: result.is_ok(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_like_a_shell() {
        let e = classify_exit(0, 5);
        assert_eq!(
            (e.reason, e.exit_code, e.signal),
            (EndReason::Exited, 0, None)
        );
        let e = classify_exit(3, 5);
        assert_eq!((e.reason, e.exit_code), (EndReason::Exited, 3));
        let e = classify_exit(137, 5);
        assert_eq!(
            (e.reason, e.exit_code, e.signal),
            (EndReason::Signal, 137, Some(9))
        );
        assert_eq!(e.message, "killed by signal 9 (SIGKILL)");
        let e = classify_exit(143, 5);
        assert_eq!(e.signal, Some(15));
        let e = classify_exit(255, 5);
        assert_eq!((e.reason, e.exit_code), (EndReason::Exited, 255));
    }

    #[test]
    fn reasons_map_to_documented_statuses() {
        assert_eq!(exit_code_for(EndReason::Timeout, None), 124);
        assert_eq!(exit_code_for(EndReason::Oom, None), 137);
        assert_eq!(exit_code_for(EndReason::OutputLimit, None), 137);
        assert_eq!(exit_code_for(EndReason::Cancelled, None), 130);
        assert_eq!(exit_code_for(EndReason::Shutdown, None), 143);
        assert_eq!(exit_code_for(EndReason::Exited, Some(7)), 7);
    }

    #[test]
    fn only_listed_signals_may_be_sent() {
        assert_eq!(signal_name(2), Some("SIGINT"));
        assert_eq!(signal_name(19), None);
        assert_eq!(describe_signal(9), "signal 9 (SIGKILL)");
        assert_eq!(describe_signal(40), "signal 40");
    }

    #[test]
    fn session_codec_reports_one_error_then_swallows_the_rest() {
        let mut codec = SessionCodec::default();
        let mut buf = BytesMut::from(&[0u8, 0, 0, 2, 0x7f, 0][..]);
        assert!(matches!(codec.decode(&mut buf), Ok(Some(Err(_)))));
        buf.extend_from_slice(&[0, 0, 0, 1, 0x04]); // even a valid frame is ignored now
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        assert!(buf.is_empty());
        assert!(matches!(codec.decode_eof(&mut buf), Ok(None)));
    }
}
