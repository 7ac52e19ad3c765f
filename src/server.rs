//! Wiring of the daemon: start-up checks, the actors, the signal loop and the drain.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::certs::{self, CertError};
use crate::config::Config;
use crate::container;
use crate::engine::join::{self, JoinDeps};
use crate::engine::SharedEngine;
use crate::fleet::{self, FleetError, Member};
use crate::listener::{Listener, ListenerDeps, SetAcceptor, StopAccepting};
use crate::messages::{Drain, DrainNow, SupervisorHandle};
use crate::sandbox::SandboxSpec;
use crate::session::{self, SessionDeps};
use crate::shutdown::{SignalEvent, Signals};
use crate::status::{ByteCounters, Capacity, Dump, Status};
use crate::supervisor::{EngineStart, Supervisor};
use crate::tls::{self, TlsError};
use crate::transport::{Protocol, Transport};
use crate::web::{self, Tokens, TokensError, WebDeps};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Engines(#[from] FleetError),
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0} does not exist (it is only generated when --cert and --key are left at their defaults)")]
    MissingFile(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Tokens(#[from] TokensError),
}

/// Raises the soft open-files limit to the hard one: every session holds a TLS socket and
/// a Docker attach connection, and the usual soft limit of 1024 is reached early.
// getrlimit/setrlimit have no safe wrapper in std.
#[allow(unsafe_code)]
fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

struct Ready {
    members: Vec<Member>,
    engines: Vec<EngineStart>,
    join: JoinDeps,
    acceptor: TlsAcceptor,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    tokens: Option<Arc<Tokens>>,
}

async fn prepare(cfg: &Config) -> Result<Ready, ServeError> {
    let members = fleet::members(cfg)?;
    let join = JoinDeps {
        instance: cfg.instance.clone(),
        run: crate::bootstrap::new_nonce()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        image: cfg.sandbox.image.clone(),
        sync: fleet::image_sync(
            &members,
            &cfg.images.iter().map(|i| i.tag.clone()).collect::<Vec<_>>(),
        ),
    };

    if let Some(dir) = cfg.certs_to_generate() {
        let paths = certs::generate(dir, &[], false)?;
        info!(
            ca = %paths.ca_cert.display(),
            "generated a CA and a server certificate; clients need the CA certificate"
        );
    }
    for path in [&cfg.cert, &cfg.key] {
        if !path.exists() {
            return Err(ServeError::MissingFile(path.display().to_string()));
        }
    }
    let acceptor = TlsAcceptor::from(tls::server_config(
        &cfg.cert,
        &cfg.key,
        cfg.client_ca.as_deref(),
    )?);
    let tokens = match &cfg.tokens {
        Some(path) => Some(Arc::new(Tokens::load(path)?)),
        None => None,
    };

    // Last: the engines may take a while (an image to build or copy), and what is
    // checked above must fail fast.
    let engines = fleet::start(cfg, &members, &join).await?;

    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })
    };
    let listener = bind(cfg.listen).await?;
    let metrics = match cfg.metrics_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    Ok(Ready {
        members,
        engines,
        join,
        acceptor,
        listener,
        metrics,
        tokens,
    })
}

/// SIGHUP: new connections get the certificate, key and client CA as they are on disk
/// now; running sessions are not touched. A file that does not load leaves the current
/// settings in place.
fn reload_tls(cfg: &Config, listener: &Addr<Listener>) {
    match tls::server_config(&cfg.cert, &cfg.key, cfg.client_ca.as_deref()) {
        Ok(config) => {
            listener.do_send(SetAcceptor(TlsAcceptor::from(config)));
            info!(cert = %cfg.cert.display(), "reloaded the TLS certificate and key");
        }
        Err(e) => {
            warn!(error = %e, "cannot reload the TLS certificate; keeping the current one");
        }
    }
}

/// Serves until SIGTERM or SIGINT, then drains. Must run inside an actix `System`.
pub async fn run(cfg: Config) -> Result<(), ServeError> {
    let mut signals = Signals::new().map_err(ServeError::Signals)?;
    raise_nofile_limit();
    let cfg = Arc::new(cfg);

    let ready = tokio::select! {
        ready = prepare(&cfg) => ready?,
        name = signals.terminated() => {
            info!(signal = name, "interrupted during start-up");
            return Ok(());
        }
    };
    let local = ready
        .listener
        .local_addr()
        .map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;

    let bytes = Arc::new(ByteCounters::default());
    let capacity = Capacity {
        max_sessions: cfg.max_sessions,
        warm: cfg.warm_total(),
        max_queue: cfg.max_queue,
    };
    let status = Status::new(bytes.clone(), capacity).start();
    // One spec per served image, indexed as `Config::images`.
    let specs: Vec<Arc<SandboxSpec>> = cfg
        .images
        .iter()
        .map(|image| Arc::new(SandboxSpec::for_image(&cfg.sandbox, &cfg.instance, image)))
        .collect();
    for m in &ready.members {
        let name = m.spec.name.as_str();
        info!(engine = name, url = %m.spec.url, max_sessions = m.spec.max_sessions, warm = m.spec.warm, "engine configured");
        if m.tcp_memory.is_bounded() {
            info!(engine = name, "TCP socket memory: {}", m.tcp_memory);
        } else {
            warn!(engine = name, "TCP socket memory: {}", m.tcp_memory);
        }
    }
    let engines: Vec<SharedEngine> = ready.members.iter().map(|m| m.engine.clone()).collect();
    let supervisor = Supervisor::create(|ctx| {
        let owner = container::Owner {
            gone: ctx.address().recipient(),
            ready: ctx.address().recipient(),
            orphaned: ctx.address().recipient(),
        };
        let spawn = Box::new(container::spawner(&engines, specs, bytes.clone(), owner));
        Supervisor::new(
            cfg.clone(),
            ready.engines,
            ready.join,
            spawn,
            status.clone(),
        )
    });
    let session_deps = Arc::new(SessionDeps {
        cfg: cfg.clone(),
        supervisor: SupervisorHandle {
            register: supervisor.clone().recipient(),
            unregister: supervisor.clone().recipient(),
            admit: supervisor.clone().recipient(),
        },
        status: status.clone(),
        bytes,
    });
    let start_session: web::StartSession =
        Arc::new(move |id, peer, transport, accepted_at, guard| {
            session::start(
                id,
                peer,
                transport,
                session_deps.clone(),
                accepted_at,
                guard,
            )
        });
    let web_deps = Arc::new(WebDeps {
        cfg: cfg.clone(),
        tokens: ready.tokens,
        start_session: start_session.clone(),
    });
    let listener_deps = ListenerDeps {
        cfg: cfg.clone(),
        status: status.clone(),
        // ALPN decides: `http/1.1` is a browser (HTTPS and the WebSocket), anything else
        // the binary protocol, as before.
        start_session: Arc::new(move |id, peer, tls, accepted_at, guard| {
            if web::wants_http(&tls) {
                return web::serve(id, peer, tls, guard, web_deps.clone());
            }
            // Who the client is: its certificate's subject under mutual TLS, else its
            // address.
            let client =
                tls::peer_identity(tls.get_ref().1).unwrap_or_else(|| peer.ip().to_string());
            let transport = Transport {
                io: Box::new(tls),
                client,
                protocol: Protocol::Binary,
            };
            start_session(id, peer, transport, accepted_at, guard)
        }),
    };
    let listener = Listener::new(ready.listener, ready.acceptor, listener_deps).start();
    if let Some(metrics) = ready.metrics {
        if let Ok(addr) = metrics.local_addr() {
            info!(%addr, "metrics at http://{addr}/metrics");
        }
        actix_rt::spawn(crate::metrics::serve(metrics, status.clone()));
    }

    info!(
        addr = %local,
        image = %cfg.sandbox.image,
        images = %cfg.images.iter().map(|i| format!("{}={}", i.name, i.tag)).collect::<Vec<_>>().join(" "),
        max_sessions = cfg.max_sessions,
        warm = cfg.warm,
        max_queue = cfg.max_queue,
        "listening"
    );
    // One machine-readable line on stdout, for scripts and tests that start us on port 0.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {local}");
    let _ = out.flush();
    drop(out);

    let signal = loop {
        match signals.next().await {
            SignalEvent::Dump => status.do_send(Dump),
            SignalEvent::Reload => reload_tls(&cfg, &listener),
            SignalEvent::Terminate(name) => break name,
        }
    };

    info!(
        signal,
        grace_s = cfg.shutdown_grace.as_secs_f64(),
        "shutting down"
    );
    let _ = listener.send(StopAccepting).await;
    let (done_tx, mut done) = oneshot::channel();
    supervisor.do_send(Drain {
        grace: cfg.shutdown_grace,
        done: done_tx,
    });
    let deadline = tokio::time::sleep(cfg.shutdown_grace + Duration::from_secs(15));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut done => break,
            name = signals.terminated() => {
                info!(signal = name, "second signal: ending every session now");
                supervisor.do_send(DrainNow);
            }
            _ = &mut deadline => {
                warn!("drain did not finish in time; removing what is left");
                break;
            }
        }
    }
    status.do_send(Dump);
    // Each engine bounded in time: a dead one must not hold the exit up.
    let cleanups = engines.iter().map(|engine| {
        let instance = cfg.instance.clone();
        async move {
            let work = async {
                match engine.sweep(&instance).await {
                    Ok(0) => {}
                    Ok(n) => warn!(
                        engine = engine.name(),
                        count = n,
                        "removed containers still present after the drain"
                    ),
                    Err(e) => {
                        warn!(engine = engine.name(), error = %e, "cannot check for leftover containers")
                    }
                }
                let _ = engine.release_lease(&instance).await;
            };
            if tokio::time::timeout(join::PING_TIMEOUT * 3, work).await.is_err() {
                warn!(engine = engine.name(), "engine did not answer the final clean-up");
            }
        }
    });
    futures::future::join_all(cleanups).await;
    info!("shutdown complete");
    Ok(())
}
