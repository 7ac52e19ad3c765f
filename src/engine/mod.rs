//! The seam over the container engine: everything the daemon asks of Docker, as one trait.
//!
//! The actors hold an `Arc<dyn Engine>` and never see bollard: `docker.rs` is the one
//! implementation on the Docker Engine API, and the unit tests drive the Supervisor and
//! the ContainerActor against an in-memory engine (`fake.rs`) in milliseconds. An engine
//! has a name, so that several can be driven at once, each with its own health and pool.

pub mod docker;
#[cfg(test)]
pub(crate) mod fake;

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::Stream;
use tokio::io::AsyncWrite;

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
    /// Removes a container, running or not; one already gone counts as removed.
    fn remove(&self, id: &str) -> EngineResult<()>;
    /// Whether the engine answers.
    fn ping(&self) -> EngineResult<()>;
    /// IDs of every container carrying this daemon instance's label. Today the daemon
    /// only sweeps them (`sweep`); telling its own leftovers from a live peer's on a
    /// shared engine (issue 11) starts from this list.
    #[allow(dead_code)]
    fn list_instance(&self, instance: &str) -> EngineResult<Vec<String>>;
    /// Removes every container of this instance; how many there were.
    fn sweep(&self, instance: &str) -> EngineResult<usize>;
    /// Whether the image is present on this engine. The start-up path ensures the image
    /// through `image::ensure`; this is for engines that join later (issue 11).
    #[allow(dead_code)]
    fn image_present(&self, image: &str) -> EngineResult<bool>;
}

/// The engine the actors share.
pub type SharedEngine = Arc<dyn Engine>;
