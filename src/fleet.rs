//! The engines at start-up: a client for each configured engine, the first contact (a
//! TLS failure is configuration and stops the start), every served image on one engine
//! (found, built or pulled) and then on every other (copied over the Engine API, no
//! registry), and each engine's first join. Also the image sync the Supervisor runs when
//! an engine comes back.

use std::path::Path;
use std::sync::Arc;

use bollard::Docker;
use futures::FutureExt;
use tracing::{info, warn};

use crate::config::engines::{EngineSpec, EngineUrl};
use crate::config::Config;
use crate::engine::docker::{self, DockerEngine, DockerError};
use crate::engine::join::{self, ImageSync, JoinDeps, JoinError};
use crate::engine::{EngineError, LeaseError, SharedEngine};
use crate::image::{self, ImageError};
use crate::image_copy::{self, EngineRef, Ensured, LogProgress};
use crate::supervisor::EngineStart;
use crate::tcp_memory::{TcpMemGuard, CGROUP_MOUNT};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Configuration: the engine's TLS does not work with the given certificates.
    #[error("{origin}: {source}")]
    Tls { origin: String, source: DockerError },
    /// A socket engine's socket is not there: as if the engine were not running.
    #[error("{0}")]
    NoSocket(DockerError),
    /// No engine answered at all.
    #[error("no engine answers: {0}")]
    NoneReachable(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Another live daemon uses this instance name on an engine.
    #[error("engine {engine}: {source}")]
    Taken { engine: String, source: LeaseError },
}

/// One configured engine and its client.
#[derive(Clone)]
pub(crate) struct Member {
    pub(crate) spec: EngineSpec,
    pub(crate) docker: Docker,
    pub(crate) engine: SharedEngine,
    /// How this engine's containers' TCP socket memory is bounded, for the start-up log.
    pub(crate) tcp_memory: Arc<TcpMemGuard>,
}

/// A client for every configured engine, each bounding TCP socket memory as its host
/// allows (only a local engine's cgroups are in reach).
pub(crate) fn members(cfg: &Config) -> Result<Vec<Member>, FleetError> {
    cfg.engines
        .iter()
        .map(|spec| {
            let docker = docker::client(spec).map_err(|source| match source {
                DockerError::Tls { .. } => FleetError::Tls {
                    origin: spec.origin.clone(),
                    source,
                },
                other => FleetError::NoSocket(other),
            })?;
            let tcp_memory = Arc::new(match &spec.url {
                EngineUrl::Tcp { .. } => TcpMemGuard::detect_in(
                    cfg.sandbox.tcp_memory,
                    &spec.url.to_string(),
                    Path::new(CGROUP_MOUNT),
                ),
                EngineUrl::Unix(path) => TcpMemGuard::detect_in(
                    cfg.sandbox.tcp_memory,
                    &format!("unix://{}", path.display()),
                    Path::new(CGROUP_MOUNT),
                ),
                EngineUrl::Default => TcpMemGuard::detect(cfg.sandbox.tcp_memory),
            });
            let engine: SharedEngine = Arc::new(DockerEngine::new(
                spec.name.clone(),
                docker.clone(),
                tcp_memory.clone(),
            ));
            Ok(Member {
                spec: spec.clone(),
                docker,
                engine,
                tcp_memory,
            })
        })
        .collect()
}

/// The image sync the Supervisor runs for engine `i` when it joins, for every served
/// image in turn: each is taken from the first other engine that has it, and copied when
/// `i` lacks it or has another build under the same tag. With no other engine to copy
/// from, `i` makes it itself. A session may ask for any served image on any engine, so an
/// engine without one of them must not take sessions.
pub(crate) fn image_sync(members: &[Member], images: &[String]) -> ImageSync {
    let members: Arc<Vec<(String, Docker)>> = Arc::new(
        members
            .iter()
            .map(|m| (m.spec.name.clone(), m.docker.clone()))
            .collect(),
    );
    let images: Arc<Vec<String>> = Arc::new(images.to_vec());
    Arc::new(move |i| {
        let (members, images) = (members.clone(), images.clone());
        async move {
            for image in images.iter() {
                sync_one(&members, i, image).await?;
            }
            Ok(())
        }
        .boxed()
    })
}

/// Spares of one image for engine `i` of `count`: the image's pool split evenly, the
/// first engines taking one more when it does not divide.
fn share(warm: usize, i: usize, count: usize) -> usize {
    warm / count + usize::from(i < warm % count)
}

async fn sync_one(members: &[(String, Docker)], i: usize, image: &str) -> Result<(), String> {
    let (name, target) = &members[i];
    for (j, (source_name, source)) in members.iter().enumerate() {
        if j == i || !matches!(image::exists(source, image).await, Ok(true)) {
            continue;
        }
        // A load may take minutes on a slow link; the engine's usual timeout is for
        // calls answered at once.
        let target = target.clone().with_timeout(image_copy::LOAD_WAIT);
        let mut progress = LogProgress::default();
        return match image_copy::ensure_on(
            EngineRef::new(source_name, source),
            EngineRef::new(name, &target),
            image,
            &mut progress,
        )
        .await
        {
            Ok(Ensured::AlreadyThere { .. }) => Ok(()),
            Ok(Ensured::Copied(report)) => {
                info!(
                    engine = %name,
                    from = %source_name,
                    image,
                    mb = report.bytes / 1_000_000,
                    secs = report.elapsed.as_secs_f64(),
                    "copied the sandbox image"
                );
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
    }
    image::ensure(target, image)
        .await
        .map_err(|e| e.to_string())
}

/// How many times a start-up join is tried before the engine starts out of service: the
/// Engine answers a container start with a passing error now and then under load ("cannot
/// start a stopped process"), and the lease is a container start.
const JOIN_TRIES: u32 = 3;

/// `join::join`, tried again after a short pause when it failed for a reason that may
/// pass (not a lease a live daemon holds, not an engine that does not answer).
async fn join_with_retries(
    m: &Member,
    i: usize,
    deps: &JoinDeps,
) -> Result<(crate::engine::Lease, usize), JoinError> {
    let mut tries = 1;
    loop {
        match join::join(m.engine.clone(), i, deps.clone()).await {
            Err(e @ (JoinError::Lease(LeaseError::Engine(_)) | JoinError::Sweep(_)))
                if tries < JOIN_TRIES =>
            {
                warn!(engine = %m.spec.name, error = %e, try_ = tries, "joining the engine failed; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(250 * tries as u64)).await;
                tries += 1;
            }
            other => return other,
        }
    }
}

/// Contacts every engine, puts the image on one, then joins each (which copies the
/// image to it). Engines that do not answer start out of service and are tried again
/// by the Supervisor; a TLS failure or an instance name held by a live daemon stops
/// the start.
pub(crate) async fn start(
    cfg: &Config,
    members: &[Member],
    deps: &JoinDeps,
) -> Result<Vec<EngineStart>, FleetError> {
    let mut reachable = Vec::new();
    let mut first_error = None;
    for m in members {
        match docker::check(&m.spec, &m.docker).await {
            Ok(()) => reachable.push(true),
            Err(source @ DockerError::Tls { .. }) => {
                return Err(FleetError::Tls {
                    origin: m.spec.origin.clone(),
                    source,
                })
            }
            Err(e) => {
                warn!(engine = %m.spec.name, error = %e, "engine does not answer; it is tried again in the background");
                first_error.get_or_insert(e.to_string());
                reachable.push(false);
            }
        }
    }
    let Some(home) = reachable.iter().position(|r| *r) else {
        return Err(FleetError::NoneReachable(first_error.unwrap_or_default()));
    };
    // Each image on one engine first: one that has it, else the first that answers
    // builds (or pulls) it. The joins below copy it to the others.
    for served in &cfg.images {
        let mut found = false;
        for m in members
            .iter()
            .zip(&reachable)
            .filter(|(_, r)| **r)
            .map(|(m, _)| m)
        {
            if matches!(image::exists(&m.docker, &served.tag).await, Ok(true)) {
                found = true;
                break;
            }
        }
        if !found {
            image::ensure(&members[home].docker, &served.tag).await?;
        }
    }

    let mut started = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let joined = match reachable[i] {
            false => Err(EngineError::Unreachable(
                first_error.clone().unwrap_or_default(),
            )),
            true => match join_with_retries(m, i, deps).await {
                Ok((lease, swept)) => {
                    if swept > 0 {
                        warn!(engine = %m.spec.name, count = swept, instance = %cfg.instance, "removed containers left by an earlier run");
                    }
                    Ok(lease)
                }
                Err(JoinError::Lease(source @ LeaseError::Held { .. })) => {
                    return Err(FleetError::Taken {
                        engine: m.spec.name.clone(),
                        source,
                    })
                }
                Err(e) => {
                    warn!(engine = %m.spec.name, error = %e, "engine cannot be brought into service yet");
                    Err(e.as_engine_error())
                }
            },
        };
        // The default image's spares are the engine's own setting; an extra image's
        // pool is split among the engines.
        let mut warm = vec![m.spec.warm];
        warm.extend(
            cfg.images[1..]
                .iter()
                .map(|image| share(image.warm, i, members.len()).min(m.spec.max_sessions)),
        );
        started.push(EngineStart {
            engine: m.engine.clone(),
            max_sessions: m.spec.max_sessions,
            warm,
            joined,
        });
    }
    if started.iter().all(|s| s.joined.is_err()) {
        return Err(FleetError::NoneReachable(
            "no engine could be brought into service".into(),
        ));
    }
    Ok(started)
}

/// What `check-config` found out about one engine.
#[derive(Debug)]
pub struct Probe {
    pub name: String,
    pub url: String,
    pub outcome: ProbeOutcome,
}

#[derive(Debug)]
pub enum ProbeOutcome {
    /// It answered: its version, and the served images it lacks (by tag).
    Answered {
        version: String,
        tls: bool,
        missing: Vec<String>,
    },
    /// Configuration: its TLS does not work with the given certificates.
    Tls(String),
    /// It does not answer now (it may later).
    Unreachable(String),
}

impl Probe {
    /// A problem that makes the configuration invalid.
    pub fn problem(&self) -> Option<String> {
        match &self.outcome {
            ProbeOutcome::Tls(why) => Some(format!("engine {} ({}): {why}", self.name, self.url)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            ProbeOutcome::Answered {
                version,
                tls,
                missing,
            } => write!(
                f,
                "engine {} ({}): reachable{}, Docker Engine {version}, {}",
                self.name,
                self.url,
                if *tls { ", TLS accepted" } else { "" },
                match missing.len() {
                    0 => "sandbox image present".to_string(),
                    _ => format!(
                        "sandbox image absent (built or copied at start): {}",
                        missing.join(", ")
                    ),
                }
            ),
            ProbeOutcome::Tls(why) => {
                write!(f, "error: engine {} ({}): {why}", self.name, self.url)
            }
            ProbeOutcome::Unreachable(why) => write!(
                f,
                "warning: engine {} ({}): does not answer ({why}); the daemon would try it \
                 again in the background",
                self.name, self.url
            ),
        }
    }
}

/// How long `check-config` waits for one engine: an unroutable address must not hang it.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Contacts every configured engine, as `check-config` reports it.
pub async fn probe_all(cfg: &Config) -> Vec<Probe> {
    let mut probes = Vec::new();
    for spec in &cfg.engines {
        let outcome = match tokio::time::timeout(PROBE_TIMEOUT, probe(cfg, spec)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                ProbeOutcome::Unreachable(format!("no answer within {} s", PROBE_TIMEOUT.as_secs()))
            }
        };
        probes.push(Probe {
            name: spec.name.clone(),
            url: spec.url.to_string(),
            outcome,
        });
    }
    probes
}

async fn probe(cfg: &Config, spec: &EngineSpec) -> ProbeOutcome {
    let client = match docker::client(spec) {
        Err(e) => return ProbeOutcome::Tls(e.to_string()),
        Ok(client) => client,
    };
    match docker::check(spec, &client).await {
        Err(DockerError::Tls { reason, .. }) => ProbeOutcome::Tls(reason),
        Err(e) => ProbeOutcome::Unreachable(e.to_string()),
        Ok(()) => ProbeOutcome::Answered {
            version: match client.version().await {
                Ok(v) => v.version.unwrap_or_else(|| "?".into()),
                Err(e) => format!("? ({e})"),
            },
            tls: spec.url.is_tcp(),
            missing: {
                let mut missing = Vec::new();
                for served in &cfg.images {
                    if !matches!(image::exists(&client, &served.tag).await, Ok(true)) {
                        missing.push(served.tag.clone());
                    }
                }
                missing
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn an_image_s_pool_is_split_over_the_engines() {
        let split = |warm, count| {
            (0..count)
                .map(|i| share(warm, i, count))
                .collect::<Vec<_>>()
        };
        assert_eq!(split(1, 3), [1, 0, 0]);
        assert_eq!(split(4, 3), [2, 1, 1]);
        assert_eq!(split(0, 2), [0, 0]);
        assert_eq!(split(2, 1), [2]);
    }
}
