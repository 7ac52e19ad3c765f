//! The seam over the container engine: everything the daemon asks of Docker, as one trait.
//!
//! The actors hold an `Arc<dyn Engine>` and never see bollard: `docker.rs` is the one
//! implementation on the Docker Engine API, and the unit tests drive the Supervisor and
//! the ContainerActor against an in-memory engine (`fake.rs`) in milliseconds. An engine
//! has a name, so that several can be driven at once, each with its own health and pool.

pub mod docker;
mod docker_lease;
#[cfg(test)]
pub(crate) mod fake;
pub mod join;

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::Stream;
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

use crate::sandbox::SandboxSpec;

/// A chunk of a container's output, by stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
}

impl Output {
    pub fn bytes(&self) -> &Bytes {
        match self {
            Output::Stdout(b) | Output::Stderr(b) => b,
        }
    }
}

/// The container's output streams, as the engine delivers them.
pub type OutputStream = Pin<Box<dyn Stream<Item = Result<Output, EngineError>> + Send>>;
/// A file of a container as the engine's archive API streams it: a tar archive.
pub type ArchiveStream = Pin<Box<dyn Stream<Item = Result<Bytes, EngineError>> + Send>>;
/// The container's stdin; shutting it down is the script's EOF.
pub type InputSink = Pin<Box<dyn AsyncWrite + Send>>;

/// A created, attached and started container.
pub struct Launched {
    pub id: String,
    pub output: OutputStream,
    pub input: InputSink,
}

/// A launch that failed, with the container's ID if it was created (it must be removed).
#[derive(Debug)]
pub struct LaunchFailed {
    pub id: Option<String>,
    pub error: EngineError,
}

/// What went wrong talking to an engine, sorted by what the caller does about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The engine could not be reached at all: the connection failed, broke or timed
    /// out. The daemon stops sending it work until it answers again.
    #[error("{0}")]
    Unreachable(String),
    /// No such container (404).
    #[error("{0}")]
    NotFound(String),
    /// The container is not in a state for this (409): a kill racing an exit.
    #[error("{0}")]
    Conflict(String),
    /// Any other error the engine answered with.
    #[error("{0}")]
    Api(String),
}

impl EngineError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, EngineError::Unreachable(_))
    }

    /// A container that is already gone or not running: a harmless race with its exit.
    pub fn is_gone(&self) -> bool {
        matches!(self, EngineError::NotFound(_) | EngineError::Conflict(_))
    }
}

pub type EngineResult<T> = BoxFuture<'static, Result<T, EngineError>>;

/// This daemon run's hold on its instance name on one engine.
///
/// Daemons sharing an engine tell their containers apart by instance name, and a daemon
/// removes its instance's containers when it starts. Without a lease, two daemons given
/// the same name (the default) removed each other's running sessions. The lease is
/// something only a live daemon can keep: on Docker, a container that runs while the
/// daemon's attach connection to it stays open, and ends when that connection closes.
pub struct Lease {
    /// Resolves when the engine stops holding the lease for us: the engine died, or the
    /// connection to it broke (the first sign of a dead engine, often before a ping).
    pub lost: BoxFuture<'static, ()>,
    /// Dropping this gives the lease up.
    pub release: oneshot::Sender<()>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

/// Why a lease was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// A live daemon holds this instance name on the engine.
    #[error(
        "another live pyexecd uses the instance name `{instance}` on this engine (its lease \
         container `{container}` is running); give each daemon that shares an engine its \
         own --instance"
    )]
    Held { instance: String, container: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Everything the daemon asks of a container engine. Every method returns a `'static`
/// future, so an actor can spawn it without borrowing the engine.
pub trait Engine: Send + Sync + 'static {
    /// How logs, metrics and errors name this engine.
    fn name(&self) -> &str;
    /// Creates, attaches and starts a container, in that order: an attach after a fast
    /// container's exit would see nothing.
    fn launch(&self, spec: Arc<SandboxSpec>) -> BoxFuture<'static, Result<Launched, LaunchFailed>>;
    /// Waits until the container stops running; its exit status.
    fn wait(&self, id: &str) -> EngineResult<i64>;
    /// Whether the kernel's OOM killer fired in the container.
    fn oom_killed(&self, id: &str) -> EngineResult<bool>;
    /// Sends a signal (`SIGKILL`, `SIGINT`, ...) to the container's main process.
    fn kill(&self, id: &str, signal: &'static str) -> EngineResult<()>;
    /// Streams `path`, a file of the running container's /tmp, as a tar archive read by
    /// the engine itself: how big files out come back (`files_out`), without crossing
    /// the container's output pipes. The archive is the container's: hostile input.
    fn fetch(&self, id: &str, path: &str) -> ArchiveStream;
    /// Removes a container, running or not; one already gone counts as removed.
    fn remove(&self, id: &str) -> EngineResult<()>;
    /// Whether the engine answers.
    fn ping(&self) -> EngineResult<()>;
    /// Removes every container of this instance but its lease, then the instance's
    /// volumes no container uses any more; how many containers there were. Only safe
    /// while holding the lease: another live daemon's are its own.
    fn sweep(&self, instance: &str) -> EngineResult<usize>;
    /// Takes this run's lease on `instance`, with a container of `image`; `run` tells
    /// this run's lease from a dead run's.
    fn take_lease(
        &self,
        instance: &str,
        run: &str,
        image: &str,
    ) -> BoxFuture<'static, Result<Lease, LeaseError>>;
    /// Removes the lease's container (at shutdown, after the last sweep).
    fn release_lease(&self, instance: &str) -> EngineResult<()>;
}

/// The engine the actors share.
pub type SharedEngine = Arc<dyn Engine>;
