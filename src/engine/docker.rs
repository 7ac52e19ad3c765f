//! The Engine on the Docker Engine API (bollard): connecting, the container calls the
//! daemon makes, and sweeping up containers a crashed run left behind. The only module of
//! the daemon that calls bollard for sessions (`image.rs` builds and pulls images).

use std::collections::HashMap;
use std::sync::Arc;

use bollard::container::LogOutput;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder,
    DownloadFromContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::StreamExt;

use super::{
    ArchiveStream, Engine, EngineError, EngineResult, LaunchFailed, Launched, Lease, LeaseError,
    Output,
};
use crate::config::engines::{EngineSpec, EngineUrl};
use crate::sandbox::{SandboxSpec, LABEL_INSTANCE, LABEL_LEASE, LABEL_MANAGED};
use crate::tcp_memory::TcpMemGuard;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker Engine ({endpoint}): {source}")]
    Unreachable {
        endpoint: String,
        source: bollard::errors::Error,
    },
    /// The engine was reached but the TLS handshake failed: its certificate is not from
    /// the CA in the cert directory, it refused ours, or it does not speak TLS at all.
    /// Configuration, not an outage: retrying cannot cure it.
    #[error("engine {endpoint}: TLS failed: {reason}")]
    Tls { endpoint: String, reason: String },
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

/// How long one request to a tcp engine may take to be answered (its headers: a stream
/// such as an attach or a wait then lasts as long as it must). A dead host is found by
/// the health pings long before; this only bounds a call made just before it died.
pub const TCP_TIMEOUT: u64 = 30;

/// A client for one configured engine, without contacting it (bollard is lazy).
pub fn client(spec: &EngineSpec) -> Result<Docker, DockerError> {
    let endpoint = spec.url.to_string();
    let unreachable = |source| DockerError::Unreachable {
        endpoint: endpoint.clone(),
        source,
    };
    match &spec.url {
        EngineUrl::Default => Docker::connect_with_local_defaults().map_err(unreachable),
        EngineUrl::Unix(path) => {
            Docker::connect_with_unix(&path.to_string_lossy(), 120, bollard::API_DEFAULT_VERSION)
                .map_err(unreachable)
        }
        EngineUrl::Tcp { host, port } => {
            let dir = spec
                .cert_path
                .as_deref()
                .expect("config checks that tcp engines have certificates");
            Docker::connect_with_ssl(
                &format!("{host}:{port}"),
                &dir.join("key.pem"),
                &dir.join("cert.pem"),
                &dir.join("ca.pem"),
                TCP_TIMEOUT,
                bollard::API_DEFAULT_VERSION,
            )
            .map_err(|e| DockerError::Tls {
                endpoint: endpoint.clone(),
                reason: format!("cannot load the certificates in {}: {e}", dir.display()),
            })
        }
    }
}

/// Pings a configured engine and sorts a failure: a TLS failure is `Tls`.
pub async fn check(spec: &EngineSpec, docker: &Docker) -> Result<(), DockerError> {
    match docker.ping().await {
        Ok(_) => Ok(()),
        Err(e) => match tls_failure(&e) {
            Some(reason) => Err(DockerError::Tls {
                endpoint: spec.url.to_string(),
                reason,
            }),
            None => Err(DockerError::Unreachable {
                endpoint: spec.url.to_string(),
                source: e,
            }),
        },
    }
}

/// The TLS error behind a failed request, if that is what it was. rustls reports through
/// `io::Error`s that hyper wraps; the chain is walked rather than the text matched.
pub fn tls_failure(err: &bollard::errors::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(explain_tls(tls));
        }
        // io::Errors nest (the connector's wraps tokio-rustls's), and an io::Error's
        // `source` skips the one inside: unwrap them by hand.
        let mut io = e.downcast_ref::<std::io::Error>();
        while let Some(inner) = io.and_then(|io| io.get_ref()) {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(explain_tls(tls));
            }
            io = inner.downcast_ref::<std::io::Error>();
        }
        source = e.source();
    }
    None
}

fn explain_tls(e: &rustls::Error) -> String {
    use rustls::Error::*;
    match e {
        InvalidCertificate(why) => format!(
            "the engine's certificate is not accepted ({why:?}): it is not signed by the CA \
             in ca.pem, or not issued for this address"
        ),
        InvalidMessage(_) | InappropriateMessage { .. } | InappropriateHandshakeMessage { .. } => {
            format!("the engine does not speak TLS here ({e}); is it listening with --tlsverify?")
        }
        AlertReceived(alert) => format!(
            "the engine refused the handshake ({alert:?}): it does not accept cert.pem \
             (not signed by the CA it trusts?)"
        ),
        other => other.to_string(),
    }
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

/// Removes every container of this instance but its lease (`docker_lease.rs`); returns
/// how many there were. Only safe while holding the lease.
pub async fn sweep(docker: &Docker, instance: &str) -> Result<usize, DockerError> {
    let ids: Vec<String> = instance_containers(docker, instance)
        .await?
        .into_iter()
        .filter(|c| {
            !c.labels
                .as_ref()
                .is_some_and(|l| l.contains_key(LABEL_LEASE))
        })
        .filter_map(|c| c.id)
        .collect();
    let removals = ids.iter().map(|id| remove(docker, id));
    for result in futures::future::join_all(removals).await {
        result?;
    }
    sweep_volumes(docker, instance).await?;
    Ok(ids.len())
}

/// Removes the instance's volumes (a sandbox's /tmp, `SandboxSpec::tmp_mount`) that no
/// container uses: a container's removal takes its volume with it (`v=true`), so only a
/// removal that failed half-way, or one by hand without `-v`, leaves one. In use (409)
/// or already gone (404) counts as done.
async fn sweep_volumes(docker: &Docker, instance: &str) -> Result<(), DockerError> {
    let filters = HashMap::from([
        (
            "label".to_string(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_INSTANCE}={instance}"),
            ],
        ),
        ("dangling".to_string(), vec!["true".to_string()]),
    ]);
    let opts = ListVolumesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let volumes = docker.list_volumes(Some(opts)).await?.volumes;
    for v in volumes.unwrap_or_default() {
        match docker
            .remove_volume(
                &v.name,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            Err(e) if !is_not_found(&e) && !is_conflict(&e) => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
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

    fn fetch(&self, id: &str, path: &str) -> ArchiveStream {
        let opts = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let stream = self.docker.download_from_container(id, Some(opts));
        Box::pin(stream.map(|item| item.map_err(EngineError::from)))
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

    fn sweep(&self, instance: &str) -> EngineResult<usize> {
        let (docker, instance) = (self.docker.clone(), instance.to_string());
        Box::pin(async move { sweep(&docker, &instance).await.map_err(flatten) })
    }

    fn take_lease(
        &self,
        instance: &str,
        run: &str,
        image: &str,
    ) -> BoxFuture<'static, Result<Lease, LeaseError>> {
        Box::pin(super::docker_lease::take(
            self.docker.clone(),
            instance.to_string(),
            run.to_string(),
            image.to_string(),
        ))
    }

    fn release_lease(&self, instance: &str) -> EngineResult<()> {
        let (docker, name) = (self.docker.clone(), super::docker_lease::name(instance));
        Box::pin(async move { Ok(remove(&docker, &name).await?) })
    }
}

fn flatten(e: DockerError) -> EngineError {
    match e {
        DockerError::Unreachable { source, .. } | DockerError::Api(source) => source.into(),
        DockerError::Tls { endpoint, reason } => {
            EngineError::Unreachable(format!("{endpoint}: TLS failed: {reason}"))
        }
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
