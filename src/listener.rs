//! The Listener actor: accepts TCP connections, bounds them (in all and per address), runs
//! each TLS handshake under a timeout, and starts a Session actor per connection that
//! completes one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::session::{Session, SessionDeps};
use crate::status::{ConnectionRefused, TlsFailed};

/// Open connections, in all and per peer address: checked before any TLS work, so one
/// host re-opening idle sockets cannot take every place.
#[derive(Debug, Default)]
pub struct Connections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Which bound a connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerAddress,
}

/// One open connection in `Connections`, released on drop (with its session).
pub struct ConnectionGuard {
    shared: Arc<Mutex<Connections>>,
    ip: IpAddr,
}

impl ConnectionGuard {
    /// Counts one more connection from `ip`, unless a bound (0: none) is reached.
    pub fn try_new(
        shared: &Arc<Mutex<Connections>>,
        ip: IpAddr,
        max: usize,
        max_per_ip: usize,
    ) -> Result<Self, Refused> {
        let mut c = shared
            .lock()
            .expect("never poisoned: no panics under the lock");
        if c.total >= max {
            return Err(Refused::Total);
        }
        let mine = c.per_ip.entry(ip).or_default();
        if max_per_ip > 0 && *mine >= max_per_ip {
            return Err(Refused::PerAddress);
        }
        *mine += 1;
        c.total += 1;
        Ok(ConnectionGuard {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut c = self.shared.lock().expect("never poisoned");
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

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
    open: Arc<Mutex<Connections>>,
    next_id: u64,
    accepting: Option<SpawnHandle>,
}

impl Listener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, deps: Arc<SessionDeps>) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_bounds_in_all_and_per_address() {
        let shared = Arc::new(Mutex::new(Connections::default()));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = ConnectionGuard::try_new(&shared, a, 3, 2).unwrap();
        let _second = ConnectionGuard::try_new(&shared, a, 3, 2).unwrap();
        assert_eq!(
            ConnectionGuard::try_new(&shared, a, 3, 2).err(),
            Some(Refused::PerAddress)
        );
        let _other = ConnectionGuard::try_new(&shared, b, 3, 2).unwrap();
        assert_eq!(
            ConnectionGuard::try_new(&shared, b, 3, 2).err(),
            Some(Refused::Total)
        );
        drop(first);
        assert!(ConnectionGuard::try_new(&shared, a, 3, 2).is_ok());
        assert!(
            ConnectionGuard::try_new(&shared, a, 5, 0).is_ok(),
            "0: no per-address bound"
        );
    }
}
