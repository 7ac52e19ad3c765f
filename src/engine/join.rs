//! Bringing an engine into service, at start-up and whenever it comes back: it answers,
//! it has the sandbox image (copied from another engine if not), this run holds the
//! instance's lease on it, and what an earlier run of this instance left there is gone.
//!
//! The order matters. The lease container is made from the sandbox image, so the image
//! comes first; and only the lease's holder may sweep, because on a shared engine the
//! instance's containers could be a live daemon's.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::{EngineError, Lease, LeaseError, SharedEngine};

/// Makes sure the engine at this index has the sandbox image, copying it from another
/// engine when it lacks it (wired in `server.rs` to the image copy; a no-op in unit
/// tests). The error says what failed, for the log.
pub type ImageSync = Arc<dyn Fn(usize) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// How long a ping may take before the engine counts as not answering.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// What joining needs besides the engine.
#[derive(Clone)]
pub struct JoinDeps {
    pub instance: String,
    /// This run's ID: tells this run's lease from a dead run's.
    pub run: String,
    pub image: String,
    pub sync: ImageSync,
}

/// Why an engine could not be brought into service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("it does not answer: {0}")]
    Unreachable(EngineError),
    #[error("cannot put the sandbox image on it: {0}")]
    Image(String),
    #[error(transparent)]
    Lease(LeaseError),
    #[error("cannot remove an earlier run's containers: {0}")]
    Sweep(EngineError),
}

impl JoinError {
    /// As the Supervisor records an engine that is down.
    pub fn as_engine_error(&self) -> EngineError {
        match self {
            JoinError::Unreachable(e) | JoinError::Sweep(e) => e.clone(),
            other => EngineError::Api(other.to_string()),
        }
    }
}

/// Pings with a bound: a blackholed host would otherwise hold the caller until the
/// transport's own timeout.
pub async fn ping(engine: &SharedEngine) -> Result<(), EngineError> {
    match tokio::time::timeout(PING_TIMEOUT, engine.ping()).await {
        Ok(result) => result,
        Err(_) => Err(EngineError::Unreachable(format!(
            "no answer to a ping within {} s",
            PING_TIMEOUT.as_secs()
        ))),
    }
}

/// Joins engine `index`; on success, the lease that keeps it ours and the number of an
/// earlier run's containers removed.
pub async fn join(
    engine: SharedEngine,
    index: usize,
    deps: JoinDeps,
) -> Result<(Lease, usize), JoinError> {
    ping(&engine).await.map_err(JoinError::Unreachable)?;
    (deps.sync)(index).await.map_err(JoinError::Image)?;
    let lease = engine
        .take_lease(&deps.instance, &deps.run, &deps.image)
        .await
        .map_err(|e| match e {
            LeaseError::Engine(e) if e.is_unreachable() => JoinError::Unreachable(e),
            other => JoinError::Lease(other),
        })?;
    let swept = engine
        .sweep(&deps.instance)
        .await
        .map_err(JoinError::Sweep)?;
    Ok((lease, swept))
}
