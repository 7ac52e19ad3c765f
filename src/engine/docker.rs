//! The Engine on the Docker Engine API (bollard): connecting, the container calls the
//! daemon makes, and sweeping up containers a crashed run left behind. The only module of
//! the daemon that calls bollard for sessions (`image.rs` builds and pulls images).

use std::collections::HashMap;
use std::sync::Arc;

use bollard::container::LogOutput;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::StreamExt;

use super::{Engine, EngineError, EngineResult, LaunchFailed, Launched, Output};
use crate::sandbox::{SandboxSpec, LABEL_INSTANCE, LABEL_MANAGED};
use crate::tcp_memory::TcpMemGuard;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker Engine ({endpoint}): {source}")]
    Unreachable {
        endpoint: String,
        source: bollard::errors::Error,
    },
    #[error("Docker Engine API: {0}")]
    Api(#[from] bollard::errors::Error),
}

fn endpoint() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string())
}

/// Connects as the `docker` CLI would (`DOCKER_HOST` or the local socket) and pings,
/// because bollard's connect is lazy and would otherwise report nothing until the
/// first session.
pub async fn connect() -> Result<Docker, DockerError> {
    let unreachable = |source| DockerError::Unreachable {
        endpoint: endpoint(),
        source,
    };
    let docker = Docker::connect_with_local_defaults().map_err(unreachable)?;
    docker.ping().await.map_err(unreachable)?;
    Ok(docker)
}

/// True for the Engine's "no such container" answer.
pub fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// True when the Engine could not be reached at all (as opposed to answering with an
/// error): the connection failed, broke, or timed out.
pub fn is_unreachable(err: &bollard::errors::Error) -> bool {
    use bollard::errors::Error::*;
    matches!(
        err,
        IOError { .. }
            | HyperResponseError { .. }
            | HyperLegacyError { .. }
            | HttpClientError { .. }
            | SocketNotFoundError(_)
            | RequestTimeoutError
    )
}

/// True for "container is not running" (409), which a kill racing an exit gets.
pub fn is_conflict(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

/// Sends `signal` (a name such as `SIGKILL` or `SIGINT`) to a container's main process.
pub async fn kill(docker: &Docker, id: &str, signal: &str) -> Result<(), bollard::errors::Error> {
    let opts = KillContainerOptionsBuilder::default()
        .signal(signal)
        .build();
    docker.kill_container(id, Some(opts)).await
}

/// Removes a container and its anonymous volumes, running or not. A container that is
/// already gone, or whose removal is already in progress (409: another removal, e.g. by
/// a daemon that was killed mid-way, is under way), counts as removed.
pub async fn remove(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(opts)).await {
        Err(e) if !is_not_found(&e) && !is_conflict(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Every container (running or not) carrying this instance's label, as Docker lists it.
pub async fn instance_containers(
    docker: &Docker,
    instance: &str,
) -> Result<Vec<ContainerSummary>, DockerError> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            format!("{LABEL_MANAGED}=true"),
            format!("{LABEL_INSTANCE}={instance}"),
        ],
    )]);
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    Ok(docker.list_containers(Some(opts)).await?)
}

/// IDs of every container (running or not) carrying this instance's label.
pub async fn list_instance(docker: &Docker, instance: &str) -> Result<Vec<String>, DockerError> {
    Ok(instance_containers(docker, instance)
        .await?
        .into_iter()
        .filter_map(|c| c.id)
        .collect())
}

/// Removes every container of this instance; returns how many there were.
pub async fn sweep(docker: &Docker, instance: &str) -> Result<usize, DockerError> {
    let ids = list_instance(docker, instance).await?;
    let removals = ids.iter().map(|id| remove(docker, id));
    for result in futures::future::join_all(removals).await {
        result?;
    }
    Ok(ids.len())
}

impl From<bollard::errors::Error> for EngineError {
    fn from(e: bollard::errors::Error) -> Self {
        let text = e.to_string();
        if is_unreachable(&e) {
            EngineError::Unreachable(text)
        } else if is_not_found(&e) {
            EngineError::NotFound(text)
        } else if is_conflict(&e) {
            EngineError::Conflict(text)
        } else {
            EngineError::Api(text)
        }
    }
}

/// One Docker Engine, reached through bollard.
#[derive(Clone)]
pub struct DockerEngine {
    name: String,
    docker: Docker,
    /// How this engine's host bounds a container's TCP socket memory.
    tcp_memory: Arc<TcpMemGuard>,
}

impl DockerEngine {
    pub fn new(name: impl Into<String>, docker: Docker, tcp_memory: Arc<TcpMemGuard>) -> Self {
        DockerEngine {
            name: name.into(),
            docker,
            tcp_memory,
        }
    }

    /// The bollard client, for the image builder.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }
}

impl Engine for DockerEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn launch(&self, spec: Arc<SandboxSpec>) -> BoxFuture<'static, Result<Launched, LaunchFailed>> {
        let (docker, tcp_memory) = (self.docker.clone(), self.tcp_memory.clone());
        Box::pin(launch(docker, spec, tcp_memory))
    }

    fn wait(&self, id: &str) -> EngineResult<i64> {
        let (docker, id) = (self.docker.clone(), id.to_string());
        Box::pin(async move {
            // Polled from the first poll on: a wait with the default condition first
            // polled after the exit still answers (`next-exit` would hang).
            let mut wait = docker.wait_container(&id, None);
            match wait.next().await {
                Some(Ok(resp)) => Ok(resp.status_code),
                // A non-zero status is an error in bollard.
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    Ok(code)
                }
                Some(Err(e)) => Err(e.into()),
                None => Err(EngineError::Api("the wait ended without a status".into())),
            }
        })
    }

    fn oom_killed(&self, id: &str) -> EngineResult<bool> {
        let (docker, id) = (self.docker.clone(), id.to_string());
        Box::pin(async move {
            let info = docker.inspect_container(&id, None).await?;
            Ok(info.state.and_then(|s| s.oom_killed).unwrap_or(false))
        })
    }

    fn kill(&self, id: &str, signal: &'static str) -> EngineResult<()> {
        let (docker, id) = (self.docker.clone(), id.to_string());
        Box::pin(async move { Ok(kill(&docker, &id, signal).await?) })
    }

    fn remove(&self, id: &str) -> EngineResult<()> {
        let (docker, id) = (self.docker.clone(), id.to_string());
        Box::pin(async move { Ok(remove(&docker, &id).await?) })
    }

    fn ping(&self) -> EngineResult<()> {
        let docker = self.docker.clone();
        Box::pin(async move {
            docker.ping().await?;
            Ok(())
        })
    }

    fn list_instance(&self, instance: &str) -> EngineResult<Vec<String>> {
        let (docker, instance) = (self.docker.clone(), instance.to_string());
        Box::pin(async move { list_instance(&docker, &instance).await.map_err(flatten) })
    }

    fn sweep(&self, instance: &str) -> EngineResult<usize> {
        let (docker, instance) = (self.docker.clone(), instance.to_string());
        Box::pin(async move { sweep(&docker, &instance).await.map_err(flatten) })
    }

    fn image_present(&self, image: &str) -> EngineResult<bool> {
        let (docker, image) = (self.docker.clone(), image.to_string());
        Box::pin(async move {
            match docker.inspect_image(&image).await {
                Ok(_) => Ok(true),
                Err(e) if is_not_found(&e) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }
}

fn flatten(e: DockerError) -> EngineError {
    match e {
        DockerError::Unreachable { source, .. } | DockerError::Api(source) => source.into(),
    }
}

/// Create, attach, start: in that order, or early output is lost. Then bound its TCP
/// socket memory, before the container is reported ready or handed a script: one whose
/// bound cannot be set fails to launch (fail closed) and runs no script.
async fn launch(
    docker: Docker,
    spec: Arc<SandboxSpec>,
    tcp_memory: Arc<TcpMemGuard>,
) -> Result<Launched, LaunchFailed> {
    let failed = |id: Option<&String>, e: bollard::errors::Error| LaunchFailed {
        id: id.cloned(),
        error: e.into(),
    };
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().build()),
            spec.create_body(),
        )
        .await
        .map_err(|e| failed(None, e))?;
    let id = created.id;
    let opts = AttachContainerOptionsBuilder::default()
        .stream(true)
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .build();
    let attach = docker
        .attach_container(&id, Some(opts))
        .await
        .map_err(|e| failed(Some(&id), e))?;
    docker
        .start_container(&id, None)
        .await
        .map_err(|e| failed(Some(&id), e))?;
    if let Err(e) = tcp_memory.apply(&docker, &id).await {
        return Err(LaunchFailed {
            id: Some(id),
            error: EngineError::Api(e.to_string()),
        });
    }
    // With tty=false, stdout and stderr arrive apart; the attach's own echo of stdin is
    // not output.
    let output = attach.output.filter_map(|item| {
        futures::future::ready(match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                Some(Ok(Output::Stdout(message)))
            }
            Ok(LogOutput::StdErr { message }) => Some(Ok(Output::Stderr(message))),
            Ok(LogOutput::StdIn { .. }) => None,
            Err(e) => Some(Err(EngineError::from(e))),
        })
    });
    Ok(Launched {
        id,
        output: Box::pin(output),
        input: attach.input,
    })
}
