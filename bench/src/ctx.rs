//! What every measurement shares: the parameters, the binaries, the Engine connection, a
//! scratch directory (certificates, scripts, daemon logs), and the instance names that
//! label every container the bench causes, so that clean-up can find them all.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use bollard::Docker;

use crate::daemon::Daemon;
use crate::engine::{self, Engine};
use crate::opts::Params;
use crate::runner::{DockerRun, PyexecCli};
use crate::setup::Bins;

/// Who a container belongs to; each role has its own instance label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The daemon of hello, throughput, echo and stdout (warm pool at its default).
    Main,
    /// The `--warm 0` daemon of the hello-world comparison.
    Cold,
    /// The daemon of the memory figures (`--warm 0`, `--max-sessions` ≥ N).
    Memory,
    /// A daemon with its default pool, for the idle memory with a pool.
    Pool,
    /// Containers of the baselines (`docker run`, Engine API).
    Baseline,
    /// Several engines: a daemon on `--engine unix:///var/run/docker.sock`, warm pool.
    Local,
    /// Several engines: a daemon on one remote engine over TLS, warm pool.
    Remote,
    /// `Local` with `--warm 0`.
    LocalCold,
    /// `Remote` with `--warm 0`.
    RemoteCold,
    /// Several engines: daemons over the local engine and 1, 2 or 3 engines in all.
    Engines1,
    Engines2,
    Engines3,
    /// The files part: a daemon whose bounds take 50 MiB in.
    Files,
}

impl Role {
    const ALL: [Role; 13] = [
        Role::Main,
        Role::Cold,
        Role::Memory,
        Role::Pool,
        Role::Baseline,
        Role::Local,
        Role::Remote,
        Role::LocalCold,
        Role::RemoteCold,
        Role::Engines1,
        Role::Engines2,
        Role::Engines3,
        Role::Files,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Role::Main => "",
            Role::Cold => "-cold",
            Role::Memory => "-mem",
            Role::Pool => "-pool",
            Role::Baseline => "-base",
            Role::Local => "-local",
            Role::Remote => "-remote",
            Role::LocalCold => "-local-cold",
            Role::RemoteCold => "-remote-cold",
            Role::Engines1 => "-engines1",
            Role::Engines2 => "-engines2",
            Role::Engines3 => "-engines3",
            Role::Files => "-files",
        }
    }
}

/// `bench-<pid>` plus the role's suffix.
pub fn instance(pid: u32, role: Role) -> String {
    format!("bench-{pid}{}", role.suffix())
}

pub fn all_instances(pid: u32) -> Vec<String> {
    Role::ALL.iter().map(|r| instance(pid, *r)).collect()
}

pub struct Bench {
    pub params: Params,
    pub bins: Bins,
    pub docker: Docker,
    pub image: String,
    pub pid: u32,
    /// pyexecd has `--warm`.
    pub warm_supported: bool,
    /// The `docker` CLI works (else the reason it does not).
    pub docker_cli: Result<(), String>,
    pub engine: Engine,
    /// Certificates (`pyexec::certs::generate`), scripts and daemon logs; removed at the end.
    pub dir: tempfile::TempDir,
}

/// A daemon and what the bench needs to drive it.
pub struct Served {
    pub daemon: Daemon,
    pub cli: PyexecCli,
    /// Containers it keeps running while idle (its warm pool; 0 without one).
    pub pool: usize,
}

impl Served {
    /// Waits until the daemon is idle again: its pool refilled, or with no pool the last
    /// session's container removed. A timeout is returned as an observation, not an error.
    pub async fn settle(&self, docker: &Docker) -> Result<(), String> {
        engine::settle(
            docker,
            &self.daemon.instance,
            self.pool,
            Duration::from_secs(10),
        )
        .await
    }
}

impl Bench {
    pub fn instance(&self, role: Role) -> String {
        instance(self.pid, role)
    }

    /// Writes a script into the scratch directory.
    pub fn script(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    pub fn docker_run(&self) -> Result<DockerRun, String> {
        self.docker_cli.clone()?;
        Ok(DockerRun {
            image: self.image.clone(),
            instance: self.instance(Role::Baseline),
        })
    }

    /// Starts a daemon for `role`. `warm` is passed as `--warm` when given; a daemon
    /// without that flag is refused when a pool size was asked for explicitly, except
    /// for the main daemon, which then runs with whatever pyexecd does by default.
    pub async fn daemon(
        &self,
        role: Role,
        max_sessions: u32,
        warm: Option<u32>,
    ) -> Result<Served, String> {
        self.daemon_with(role, max_sessions, warm, &[]).await
    }

    /// `daemon`, with more flags of pyexecd's.
    pub async fn daemon_with(
        &self,
        role: Role,
        max_sessions: u32,
        warm: Option<u32>,
        flags: &[&str],
    ) -> Result<Served, String> {
        let mut extra = vec!["--max-sessions".to_string(), max_sessions.to_string()];
        extra.extend(flags.iter().map(|f| f.to_string()));
        extra.extend(["--image".to_string(), self.image.clone()]);
        let pool = match (warm, self.warm_supported) {
            (warm, true) => {
                if let Some(w) = warm {
                    extra.extend(["--warm".to_string(), w.to_string()]);
                }
                pyexec::config::warm_pool_size(warm, max_sessions) as usize
            }
            (Some(_), false) if role != Role::Main => {
                return Err("pyexecd has no --warm flag".into())
            }
            (_, false) => 0,
        };
        let name = self.instance(role);
        eprintln!("bench: starting pyexecd {name} {}", extra.join(" "));
        let daemon = Daemon::start(&self.bins, self.dir.path(), &name, &extra)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let served = Served {
            cli: PyexecCli::new(&self.bins.pyexec, &daemon),
            daemon,
            pool,
        };
        if pool > 0 {
            if let Err(e) = served.settle(&self.docker).await {
                eprintln!("bench: warning: {e}");
            }
        }
        Ok(served)
    }
}
