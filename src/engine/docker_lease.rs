//! The instance lease on a Docker Engine: a tiny container that runs only while this
//! daemon run's attach connection to it stays open (see `engine::Lease`).
//!
//! Its name is the instance's, so the engine itself makes it unique. The container runs
//! `cat` with `stdin_once`: when the attach connection closes for any reason (the daemon
//! exits or is killed, its host dies, the link breaks), the engine closes `cat`'s stdin and
//! the container exits. So a *running* lease whose label names another run is a live
//! daemon; an exited one is a dead run's, which the new run may replace and whose
//! containers it may sweep.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{AttachContainerOptionsBuilder, CreateContainerOptionsBuilder};
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info};

use super::docker::{is_conflict, is_not_found, remove};
use super::{EngineError, Lease, LeaseError};
use crate::sandbox::{LABEL_INSTANCE, LABEL_LEASE, LABEL_MANAGED};

/// How long a running lease of another run may take to end before the instance counts as
/// taken: a daemon killed a moment ago (a restart) leaves one whose `cat` is just exiting.
const ENDING_GRACE: Duration = Duration::from_secs(3);
const RECHECK: Duration = Duration::from_millis(100);

/// The lease container's name for an instance.
pub fn name(instance: &str) -> String {
    format!("pyexecd-lease.{instance}")
}

fn body(instance: &str, run: &str, image: &str) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec![]),
        cmd: Some(vec!["/bin/cat".into()]),
        user: Some("65534:65534".into()),
        labels: Some(HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_INSTANCE.to_string(), instance.to_string()),
            (LABEL_LEASE.to_string(), run.to_string()),
        ])),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        open_stdin: Some(true),
        // The whole point: our attach closing gives `cat` EOF, and the lease ends.
        stdin_once: Some(true),
        tty: Some(false),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            memory: Some(16 << 20),
            pids_limit: Some(4),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Takes the lease: creates the container, or replaces a dead run's (or this run's own,
/// left from a connection that broke), or reports a live daemon's.
pub async fn take(
    docker: Docker,
    instance: String,
    run: String,
    image: String,
) -> Result<Lease, LeaseError> {
    let name = name(&instance);
    let deadline = Instant::now() + ENDING_GRACE;
    loop {
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        let err = match docker
            .create_container(Some(opts), body(&instance, &run, &image))
            .await
        {
            Ok(_) => break,
            Err(e) if is_conflict(&e) => e,
            Err(e) => return Err(EngineError::from(e).into()),
        };
        debug!(%name, error = %err, "the lease container exists");
        let info = match docker.inspect_container(&name, None).await {
            Ok(info) => info,
            // Removed between our create and this look: try again.
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(EngineError::from(e).into()),
        };
        let holder = info
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_LEASE).cloned());
        let running = info.state.as_ref().and_then(|s| s.running) == Some(true);
        if running && holder.as_deref() != Some(run.as_str()) {
            if Instant::now() < deadline {
                tokio::time::sleep(RECHECK).await;
                continue;
            }
            return Err(LeaseError::Held {
                instance,
                container: name,
            });
        }
        info!(%name, "replacing the lease of an earlier run");
        remove(&docker, &name).await.map_err(EngineError::from)?;
    }

    let attached = async {
        let opts = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdin(true)
            .stdout(true)
            .build();
        let attach = docker.attach_container(&name, Some(opts)).await?;
        docker.start_container(&name, None).await?;
        Ok::<_, bollard::errors::Error>(attach)
    }
    .await;
    let attach = match attached {
        Ok(attach) => attach,
        Err(e) => {
            // A lease that never ran holds nothing; it must not block the next try.
            let _ = remove(&docker, &name).await;
            return Err(EngineError::from(e).into());
        }
    };

    let (release, released) = oneshot::channel::<()>();
    let (lost_tx, lost_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut output = attach.output;
        // Held, never written: dropping it is what ends the lease.
        let input = attach.input;
        tokio::select! {
            // Given up (or its holder dropped): end it now rather than at our exit.
            _ = released => {
                drop(input);
                let _ = remove(&docker, &name).await;
            }
            // The stream ended: the connection broke or the container was stopped.
            _ = async { while output.next().await.is_some() {} } => {
                let _ = lost_tx.send(());
            }
        }
    });
    Ok(Lease {
        // Only a real loss resolves this: a release drops the sender without sending.
        lost: Box::pin(async move {
            if lost_rx.await.is_err() {
                futures::future::pending::<()>().await;
            }
        }),
        release,
    })
}
