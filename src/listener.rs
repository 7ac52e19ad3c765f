//! The Listener actor: accepts TCP connections, bounds them, runs each TLS handshake under
//! a timeout, and starts a Session actor per connection that completes one.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::session::{ConnectionGuard, Session, SessionDeps};
use crate::status::TlsFailed;

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

pub struct Listener {
    listener: Option<TcpListener>,
    acceptor: TlsAcceptor,
    deps: Arc<SessionDeps>,
    open: Arc<AtomicUsize>,
    next_id: u64,
    accepting: Option<SpawnHandle>,
}

impl Listener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, deps: Arc<SessionDeps>) -> Self {
        Listener {
            listener: Some(listener),
            acceptor,
            deps,
            open: Arc::new(AtomicUsize::new(0)),
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
        let Some(guard) = ConnectionGuard::try_new(&self.open, cfg.max_connections) else {
            debug!(%peer, max = cfg.max_connections, "too many connections; closing");
            return;
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
                Ok(Ok(tls)) => {
                    Session::new(id, peer, tls, deps, accepted_at, guard).start();
                }
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
