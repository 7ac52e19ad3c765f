//! The Docker Engine API side: the "best cold start" baseline, counting an instance's
//! containers (to wait for a warm pool to refill), and label-based clean-up.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bollard::models::{ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use pyexec::config::SandboxConfig;
use pyexec::sandbox::SandboxSpec;

/// The sandbox settings pyexecd would use with its defaults (and `PYEXECD_*` environment,
/// which the daemons the bench starts inherit too), for `image`.
pub fn default_sandbox(image: &str) -> Result<SandboxConfig> {
    let cli = <pyexec::config::Cli as clap::Parser>::try_parse_from(["pyexecd", "--image", image])
        .context("cannot build pyexecd's default configuration")?;
    Ok(cli.serve.resolve()?.sandbox)
}

/// Times of one cold start.
#[derive(Debug, Clone, Copy)]
pub struct ColdRun {
    /// create → start → wait → remove: the whole life of a one-shot container.
    pub total: Duration,
    /// create → start → wait: until the script's exit is known (removal excluded).
    pub to_exit: Duration,
}

/// Runs the hello-world as directly as the Engine allows: one container with pyexec's
/// own isolation settings (`SandboxSpec::create_body`, so no network, log driver none,
/// the same limits), but with the script as the command and nothing attached. This is
/// the floor any per-session container design pays.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    body: ContainerCreateBody,
}

impl Engine {
    pub fn new(docker: Docker, sandbox: SandboxConfig, instance: &str) -> Engine {
        let mut body = SandboxSpec::new(sandbox, instance.to_string()).create_body();
        body.cmd = Some(vec![
            "python3".into(),
            "-c".into(),
            "print(\"hello\")".into(),
        ]);
        body.attach_stdin = Some(false);
        body.attach_stdout = Some(false);
        body.attach_stderr = Some(false);
        body.open_stdin = Some(false);
        body.stdin_once = Some(false);
        Engine { docker, body }
    }

    pub async fn hello(&self) -> Result<ColdRun> {
        let t0 = Instant::now();
        let id = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().build()),
                self.body.clone(),
            )
            .await
            .context("create")?
            .id;
        let ran = self.start_and_wait(&id).await;
        let to_exit = t0.elapsed();
        let removed = pyexec::docker::remove(&self.docker, &id).await;
        let total = t0.elapsed();
        let code = ran?;
        removed.context("remove")?;
        if code != 0 {
            bail!("the container exited with {code}");
        }
        Ok(ColdRun { total, to_exit })
    }

    async fn start_and_wait(&self, id: &str) -> Result<i64> {
        self.docker
            .start_container(id, None)
            .await
            .context("start")?;
        // Polled only after the start: the default condition answers even after the exit.
        match self.docker.wait_container(id, None).next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(anyhow!("wait: {e}")),
            None => Err(anyhow!("wait: no status")),
        }
    }
}

/// Waits until `instance` has exactly `target` containers, all running: a warm pool
/// refilled (target = pool size) or the last session's container removed (target 0).
/// Returns what was seen last if `timeout` passes first.
pub async fn settle(
    docker: &Docker,
    instance: &str,
    target: usize,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut seen: Option<(Vec<String>, Instant)> = None;
    loop {
        let now = Instant::now();
        match running_ids(docker, instance).await {
            Ok((all, running)) if all == target && running.len() == target => match &seen {
                Some((ids, since)) if *ids == running => {
                    if now.duration_since(*since) >= STABLE {
                        return Ok(());
                    }
                }
                _ => seen = Some((running, now)),
            },
            Ok((all, running)) if now >= deadline => {
                return Err(format!(
                    "{instance} had {all} containers ({} running) instead of \
                     {target} running after {timeout:?}",
                    running.len()
                ))
            }
            Err(e) => return Err(format!("cannot list containers: {e}")),
            Ok(_) => seen = None,
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How long `settle` must see the same containers running. Right after a session, the
/// container it used can still be running (the daemon reports the end from the
/// bootstrap's trailer, before Docker sees the exit) while its replacement is not created
/// yet: the count matched for a moment, and the next timed run waited ~200 ms for a
/// container (the files bench's download, measured after a 12 ms session). A replacement
/// is ready within ~20 ms of Docker calling it running.
const STABLE: Duration = Duration::from_millis(150);

/// Containers of `instance` but its lease (the daemon's claim on the instance name, which
/// lives as long as the daemon): how many, and the IDs of the running ones, sorted.
async fn running_ids(docker: &Docker, instance: &str) -> Result<(usize, Vec<String>)> {
    let list: Vec<_> = pyexec::docker::instance_containers(docker, instance)
        .await?
        .into_iter()
        .filter(|c| !is_lease(c))
        .collect();
    let mut running: Vec<String> = list
        .iter()
        .filter(|c| c.state == Some(ContainerSummaryStateEnum::RUNNING))
        .filter_map(|c| c.id.clone())
        .collect();
    running.sort();
    Ok((list.len(), running))
}

fn is_lease(c: &ContainerSummary) -> bool {
    c.labels
        .as_ref()
        .is_some_and(|l| l.contains_key(pyexec::sandbox::LABEL_LEASE))
}

/// Removes every container of these instances, leases included (their daemons are gone
/// by then: a killed daemon leaves its lease behind); returns how many there were.
pub async fn sweep(docker: &Docker, instances: &[String]) -> usize {
    let mut removed = 0;
    for instance in instances {
        let ids = match pyexec::docker::list_instance(docker, instance).await {
            Ok(ids) => ids,
            Err(e) => {
                eprintln!("bench: cannot list the containers of {instance}: {e}");
                continue;
            }
        };
        for id in ids {
            match pyexec::docker::remove(docker, &id).await {
                Ok(()) => removed += 1,
                Err(e) => eprintln!("bench: cannot remove container {id} of {instance}: {e}"),
            }
        }
    }
    removed
}
