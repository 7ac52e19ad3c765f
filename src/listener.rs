//! The Listener actor: accepts TCP connections, bounds them (in all and per address), runs
//! each TLS handshake under a timeout, and hands each connection that completes one to
//! `ListenerDeps::start_session` (which the server wires to the Session actor).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::connections::{ConnectionGuard, Connections};
use crate::status::{ConnectionRefused, Status, TlsFailed};

/// Use new TLS settings for connections from now on (SIGHUP); sessions carry on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetAcceptor(pub TlsAcceptor);

/// Stop accepting; sockets already accepted carry on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAccepting;

#[derive(Message)]
#[rtype(result = "()")]
struct Accepted(TcpStream, SocketAddr);

/// Starts a session for a connection whose handshake completed: id, peer, stream, when
/// it was accepted, and its place among the open connections.
pub type StartSession = Arc<
    dyn Fn(u64, SocketAddr, tokio_rustls::server::TlsStream<TcpStream>, Instant, ConnectionGuard)
        + Send
        + Sync,
>;

/// What the Listener needs from the daemon.
#[derive(Clone)]
pub struct ListenerDeps {
    pub cfg: Arc<Config>,
    pub status: Addr<Status>,
    pub start_session: StartSession,
}

pub struct Listener {
    listener: Option<TcpListener>,
    acceptor: TlsAcceptor,
    deps: ListenerDeps,
    open: Arc<Mutex<Connections>>,
    next_id: u64,
    accepting: Option<SpawnHandle>,
}

impl Listener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, deps: ListenerDeps) -> Self {
        Listener {
            listener: Some(listener),
            acceptor,
            deps,
            open: Arc::new(Mutex::new(Connections::default())),
            next_id: 0,
            accepting: None,
        }
    }
}

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let listener = self.listener.take().expect("listener is set in new()");
        let me = ctx.address();
        let accept = async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => me.do_send(Accepted(stream, peer)),
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning on the error.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        };
        self.accepting = Some(ctx.spawn(accept.into_actor(self)));
    }
}

impl Handler<Accepted> for Listener {
    type Result = ();

    fn handle(&mut self, Accepted(stream, peer): Accepted, _: &mut Context<Self>) {
        let accepted_at = Instant::now();
        let cfg = &self.deps.cfg;
        let guard = match ConnectionGuard::try_new(
            &self.open,
            peer.ip(),
            cfg.max_connections,
            cfg.max_connections_per_ip,
        ) {
            Ok(guard) => guard,
            Err(bound) => {
                debug!(%peer, ?bound, "too many connections; closing");
                self.deps.status.do_send(ConnectionRefused);
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        self.next_id += 1;
        let id = self.next_id;
        let acceptor = self.acceptor.clone();
        let deps = self.deps.clone();
        let timeout = cfg.handshake_timeout;
        // Detached from this actor: a handshake under way finishes even after StopAccepting,
        // and its session is then told that the server is shutting down.
        actix_rt::spawn(async move {
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => (deps.start_session)(id, peer, tls, accepted_at, guard),
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    deps.status.do_send(TlsFailed);
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    deps.status.do_send(TlsFailed);
                }
            }
        });
    }
}

impl Handler<SetAcceptor> for Listener {
    type Result = ();

    fn handle(&mut self, SetAcceptor(acceptor): SetAcceptor, _: &mut Context<Self>) {
        self.acceptor = acceptor;
    }
}

impl Handler<StopAccepting> for Listener {
    type Result = ();

    fn handle(&mut self, _: StopAccepting, ctx: &mut Context<Self>) {
        if let Some(handle) = self.accepting.take() {
            ctx.cancel_future(handle);
            info!("stopped accepting connections");
        }
    }
}
