//! Connecting to the Docker Engine and sweeping up containers a crashed run left behind.

use std::collections::HashMap;

use bollard::models::ContainerSummary;
use bollard::query_parameters::{
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;

use crate::sandbox::{LABEL_INSTANCE, LABEL_MANAGED};

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
