//! The actor protocol: every message between the daemon's actors, the enums they share,
//! and the handles through which actors know each other. No actor lives here.
//!
//! Actors never hold another actor's `Addr`: a session knows its container as a
//! `ContainerHandle` and the Supervisor knows a session as a `SessionHandle`, both sets of
//! `Recipient`s of the messages below. An actor module imports this module, the engine
//! seam, the protocol and the status, never another actor module, so each actor can be
//! read (and tested) on its own. `docs/architecture.md` has the graph and a table.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::bootstrap::NONCE_LEN;
use crate::client_limits::Refusal;
use crate::engine::EngineError;
use crate::protocol::{Frame, Usage};
use crate::stdin_queue::StdinQueue;

// ---- Shared vocabulary ------------------------------------------------------------------

/// Why the server stopped a script itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillCause {
    Timeout,
    Cancelled,
    Shutdown,
    OutputLimit,
    /// The client disconnected (or its session ended first); nobody will read the result.
    ClientGone,
    /// The container was a warm spare nobody needs any more.
    Discarded,
    /// The engine failed under the running script (its output stream broke): the script
    /// is stopped because its session can no longer be served.
    EngineFailed,
    /// The engine running the container was found dead (no answer, its connection
    /// broken): nothing can be asked of it, so the container is given up at once, its
    /// removal left to the sweep when the engine comes back.
    EngineLost,
}

impl KillCause {
    /// Whether the files the session asked for still come back (protocol §10.2): for
    /// every stop of the server's own but a cancel, and those whose client is gone.
    pub fn leaves_files(self) -> bool {
        matches!(
            self,
            KillCause::Timeout | KillCause::OutputLimit | KillCause::Shutdown
        )
    }
}

/// How the script's process ended (defined with the trailer that reports it).
pub use crate::bootstrap::ScriptExit;

/// Why a container could not serve its session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerFailure {
    /// The engine would not create, attach or start it.
    #[error("cannot start a sandbox container: {0}")]
    Start(EngineError),
    /// It died before accepting its script, as often as a replacement was tried.
    #[error("the sandbox container failed before running the script: {0}")]
    Bootstrap(String),
    /// The engine stopped answering while the script ran.
    #[error("lost the connection to the Docker Engine `{engine}`: {error}")]
    Lost {
        engine: Arc<str>,
        error: EngineError,
    },
    /// A kill the server asked for was refused.
    #[error("cannot stop the script: {0}")]
    Kill(EngineError),
    /// The container was already ending when the session's script came.
    #[error("the sandbox container is no longer available")]
    Gone,
}

/// The container's account of a session's script, sent once, after all of its output
/// has been queued for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// The script ended on its own (or by a signal the client sent).
    Exited {
        /// The container's exit status (128 + N for death by signal N).
        status: i64,
        /// The script's own end, when the bootstrap reported it: this tells
        /// `sys.exit(137)` from death by SIGKILL, which the status cannot.
        exact: Option<ScriptExit>,
        /// The kernel's OOM killer fired in the container.
        oom: bool,
        /// What it used (protocol §4.5).
        usage: Usage,
    },
    /// The server stopped the script, and why.
    Killed(KillCause),
    /// The engine failed before the script's end was known.
    Failed(ContainerFailure),
    /// The container ended without a status (it was stopped before the script ran).
    Unknown,
}

// ---- Session → Supervisor ---------------------------------------------------------------

/// How a session reaches the Supervisor.
#[derive(Clone)]
pub struct SupervisorHandle {
    pub register: Recipient<Register>,
    pub unregister: Recipient<Unregister>,
    pub admit: Recipient<Admit>,
}

/// How the Supervisor reaches a session.
#[derive(Clone)]
pub struct SessionHandle {
    pub admitted: Recipient<Admitted>,
    pub position: Recipient<QueuePosition>,
    pub stop: Recipient<SessionStop>,
    /// For a container's failure that it could not report itself (see `ContainerGone`).
    pub events: Recipient<ContainerEvent>,
}

/// A session introduces itself when it starts: from now on its time runs.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    pub id: u64,
    pub session: SessionHandle,
    pub accepted_at: Instant,
    /// Certificate subject or IP address: the key of per-client limits.
    pub client: String,
}

/// A session is over (its container may still be being removed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    pub id: u64,
}

/// A session with a valid HELLO asks to run.
#[derive(Message)]
#[rtype(result = "Admission")]
pub struct Admit {
    pub id: u64,
    /// The image to run in: an index into `Config::images` (0 is the default).
    pub image: usize,
}

#[derive(Debug, MessageResponse)]
pub enum Admission {
    /// Run now, in this container.
    Granted(ContainerHandle),
    /// Wait; `Admitted` follows when a slot frees.
    Queued(u32),
    /// Every slot and queue place is taken.
    Busy { running: usize, queued: usize },
    /// This client is over one of its own limits.
    Limited(Refusal),
    /// The engine is unreachable.
    Unavailable(EngineError),
    /// The server is draining.
    ShuttingDown,
}

// ---- Supervisor → Session ---------------------------------------------------------------

/// The Supervisor's verdict for a queued session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Admitted {
    pub container: ContainerHandle,
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
    /// The engine is unreachable: whoever waits would wait in vain.
    Unavailable,
}

// ---- Session → Container ----------------------------------------------------------------

/// How a session (and the Supervisor) reach a container.
#[derive(Clone)]
pub struct ContainerHandle {
    pub run: Recipient<Run>,
    pub signal: Recipient<Signal>,
    pub kill: Recipient<Kill>,
}

impl std::fmt::Debug for ContainerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContainerHandle")
    }
}

/// Hands a script to the container and wires its streams to a session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Run {
    /// The bootstrap request (`bootstrap::request`).
    pub request: Bytes,
    /// The nonce inside `request`, which marks the bootstrap's trailer.
    pub nonce: [u8; NONCE_LEN],
    /// When the session was admitted, and how long it had queued: for STARTED.
    pub admitted_at: Instant,
    pub queued_ms: u64,
    pub stdin: Arc<StdinQueue>,
    /// Bounded: this is where backpressure from a slow client comes from.
    pub output: mpsc::Sender<Frame>,
    /// Unbounded control path to the client, used for STARTED and STDIN_CREDIT.
    pub control: mpsc::UnboundedSender<Frame>,
    /// STDIN bytes the client has sent that have not been written to the container yet.
    pub stdin_in_flight: Arc<AtomicU64>,
    pub output_limit: u64,
    pub events: Recipient<ContainerEvent>,
    /// Feature `files`: file records follow the request on stdin, so stdin is pumped from
    /// the request on, before the ACK (the bootstrap acknowledges once they are in).
    pub files_in: bool,
    /// Feature `files`: the caps (bytes, count) of the files-out stream that follows the
    /// stdout trailer; `None` when no file is asked for.
    pub files_out: Option<(u64, u32)>,
    /// Feature `input_wanted` granted: INPUT_WANTED frames go to the client (§10.3).
    pub input_wanted: bool,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Run({} bytes)", self.request.len())
    }
}

/// Deliver a signal (SIGINT for Ctrl-C) to the script, by name.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Signal(pub &'static str);

/// Stop the script now and end the container.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kill(pub KillCause);

// ---- Container → Session ----------------------------------------------------------------

/// What a session hears from its container.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum ContainerEvent {
    /// The script has been handed to Python (STARTED is already queued for the client).
    Started {
        latency: Duration,
        warm: bool,
        /// The engine it runs on, for per-engine figures.
        engine: Arc<str>,
    },
    /// The script's first output is on its way to the client.
    FirstOutput,
    /// The script is over and all its output has been queued for the client.
    Finished(Finished),
}

// ---- Container → Supervisor -------------------------------------------------------------

/// Sent to the owner once, when the container is removed (or could not be).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ContainerGone {
    pub key: u64,
    /// The container's ID if it was created but its removal failed: retry later.
    pub leaked: Option<String>,
    /// Set when the engine could not be reached: the owner stops launching until it can.
    pub unreachable: Option<EngineError>,
    /// The container failed before its session's script started (its launch failed, or
    /// its engine was lost): the owner places the session on another engine, once (the
    /// session sends its script again), or passes the failure on. Nobody else tells it.
    pub unreported: Option<ContainerFailure>,
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

/// A container whose removal failed, handed to the owner for a later retry: the ID of a
/// container that slot `key` replaced.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Orphaned {
    pub key: u64,
    pub id: String,
}

// ---- Server → Supervisor ----------------------------------------------------------------

/// Stop admitting; let running sessions go on for `grace`, then end them; signal `done`
/// once every session has ended and every container is removed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    pub grace: Duration,
    pub done: oneshot::Sender<()>,
}

/// End every remaining session now (a second SIGTERM during the drain).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DrainNow;
