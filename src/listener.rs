//! The Listener actor: accepts TCP connections, bounds them (in all and per address), reads
//! the PROXY protocol header with `--proxy-protocol`, runs each TLS handshake under a
//! timeout, and hands each connection that completes one to `ListenerDeps::start_session`
//! (which the server wires to the Session actor).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout_at;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::connections::{ConnectionGuard, Connections, Place, Refused};
use crate::proxy_protocol::{self, HeaderError, Origin, Parsed};
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
pub type StartSession =
    Arc<dyn Fn(u64, SocketAddr, TlsStream<TcpStream>, Instant, ConnectionGuard) + Send + Sync>;

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

/// A connection's account in `Connections` while it handshakes.
enum Counted {
    /// In all and for the socket's peer, at accept.
    Both(ConnectionGuard),
    /// In all only: its address is in the PROXY header still to come.
    AwaitingHeader(Place),
}

/// Why a connection ended before its session started.
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error("PROXY header refused: {0}")]
    Header(#[from] HeaderError),
    #[error("PROXY header cut short after {0} bytes")]
    Truncated(usize),
    #[error("reading the PROXY header: {0}")]
    HeaderIo(std::io::Error),
    #[error("no whole PROXY header within the handshake timeout")]
    HeaderTimeout,
    #[error("too many connections from the client's address ({0:?})")]
    Refused(Refused),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("TLS handshake timed out")]
    TlsTimeout,
}

impl Handler<Accepted> for Listener {
    type Result = ();

    fn handle(&mut self, Accepted(stream, socket_peer): Accepted, _: &mut Context<Self>) {
        let accepted_at = Instant::now();
        let cfg = &self.deps.cfg;
        // Behind a balancer every socket comes from the balancer: only the total is known
        // here, and it bounds a flood of connections that never send their header.
        let counted = if cfg.proxy_protocol {
            Place::try_new(&self.open, cfg.max_connections).map(Counted::AwaitingHeader)
        } else {
            ConnectionGuard::try_new(
                &self.open,
                socket_peer.ip(),
                cfg.max_connections,
                cfg.max_connections_per_ip,
            )
            .map(Counted::Both)
        };
        let counted = match counted {
            Ok(counted) => counted,
            Err(bound) => {
                debug!(peer = %socket_peer, ?bound, "too many connections; closing");
                self.deps.status.do_send(ConnectionRefused);
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        self.next_id += 1;
        let id = self.next_id;
        let acceptor = self.acceptor.clone();
        let deps = self.deps.clone();
        // Detached from this actor, so that the accept loop never waits on a header or a
        // handshake: one under way finishes even after StopAccepting, and its session is
        // then told that the server is shutting down.
        actix_rt::spawn(async move {
            match handshake(stream, socket_peer, counted, acceptor, &deps.cfg).await {
                Ok((peer, tls, guard)) => (deps.start_session)(id, peer, tls, accepted_at, guard),
                Err(Failed::Refused(bound)) => {
                    debug!(peer = %socket_peer, ?bound, "too many connections from the PROXY header's client; closing");
                    deps.status.do_send(ConnectionRefused);
                }
                Err(e) => {
                    debug!(peer = %socket_peer, error = %e, "connection closed before its session");
                    deps.status.do_send(TlsFailed);
                }
            }
        });
    }
}

/// The PROXY header if one is due, the per-address bound on the address it gives, then the
/// TLS handshake, all within one `--handshake-timeout` from now: the session's peer, its
/// stream and its place among the connections.
async fn handshake(
    mut stream: TcpStream,
    socket_peer: SocketAddr,
    counted: Counted,
    acceptor: TlsAcceptor,
    cfg: &Config,
) -> Result<(SocketAddr, TlsStream<TcpStream>, ConnectionGuard), Failed> {
    let deadline = tokio::time::Instant::now() + cfg.handshake_timeout;
    let (peer, guard) = match counted {
        Counted::Both(guard) => (socket_peer, guard),
        Counted::AwaitingHeader(place) => {
            // One deadline for header and handshake: a header trickled in byte by byte
            // cannot hold the connection longer than a slow handshake could.
            let origin = timeout_at(deadline, read_proxy_header(&mut stream))
                .await
                .map_err(|_| Failed::HeaderTimeout)??;
            let peer = origin.peer(socket_peer);
            let guard = place
                .for_address(peer.ip(), cfg.max_connections_per_ip)
                .map_err(Failed::Refused)?;
            (peer, guard)
        }
    };
    let tls = timeout_at(deadline, acceptor.accept(stream))
        .await
        .map_err(|_| Failed::TlsTimeout)?
        .map_err(Failed::Tls)?;
    Ok((peer, tls, guard))
}

/// Reads a PROXY v2 header and not one byte more: never past what `parse` says is missing
/// (the 16 fixed bytes, then the length they announce), so that the ClientHello behind it
/// stays in the socket for rustls. Parsed again after every read, so that garbage is
/// refused on its first bytes. The buffer is `MAX_HEADER` long: `parse` refuses a longer
/// header on its length field, before its body is read.
async fn read_proxy_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Origin, Failed> {
    let mut buf = [0u8; proxy_protocol::MAX_HEADER];
    let mut have = 0;
    loop {
        match proxy_protocol::parse(&buf[..have])? {
            Parsed::Complete { origin, .. } => return Ok(origin),
            Parsed::Incomplete { need } => match stream.read(&mut buf[have..need]).await {
                Ok(0) => return Err(Failed::Truncated(have)),
                Ok(n) => have += n,
                Err(e) => return Err(Failed::HeaderIo(e)),
            },
        }
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
    use tokio::io::AsyncWriteExt;

    /// A PROXY v2 header for TCP over IPv4 from 203.0.113.7:40000, with a 4-byte TLV.
    fn header() -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x10".to_vec();
        h.extend_from_slice(&[203, 0, 113, 7, 10, 0, 0, 1]);
        h.extend_from_slice(&40000u16.to_be_bytes());
        h.extend_from_slice(&12344u16.to_be_bytes());
        h.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]);
        h
    }

    #[tokio::test]
    async fn the_header_is_read_and_not_one_byte_of_what_follows() {
        let mut data = header();
        data.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0xc8]); // a ClientHello's start
        let mut rest: &[u8] = &data;
        let origin = read_proxy_header(&mut rest).await.unwrap();
        assert_eq!(origin, Origin::Client("203.0.113.7:40000".parse().unwrap()));
        assert_eq!(rest, [0x16, 0x03, 0x01, 0x00, 0xc8], "left for rustls");
    }

    #[tokio::test]
    async fn a_header_arriving_byte_by_byte_is_read_whole() {
        // A one-byte pipe: every read returns at most one byte.
        let (mut tx, mut rx) = tokio::io::duplex(1);
        let mut data = header();
        data.push(0x16);
        let writer = tokio::spawn(async move {
            tx.write_all(&data).await.unwrap();
            tx
        });
        let origin = read_proxy_header(&mut rx).await.unwrap();
        assert_eq!(origin, Origin::Client("203.0.113.7:40000".parse().unwrap()));
        drop(writer.await.unwrap());
        let mut after = Vec::new();
        rx.read_to_end(&mut after).await.unwrap();
        assert_eq!(after, [0x16]);
    }

    #[tokio::test]
    async fn an_end_of_stream_inside_the_header_is_a_truncation() {
        let h = header();
        for cut in [0, 5, 16, h.len() - 1] {
            let mut part: &[u8] = &h[..cut];
            match read_proxy_header(&mut part).await {
                Err(Failed::Truncated(n)) => assert_eq!(n, cut),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn garbage_is_refused_on_its_first_byte_without_waiting_for_more() {
        // The writer stays open and silent: the refusal must not wait for 16 bytes.
        let (mut tx, mut rx) = tokio::io::duplex(64);
        tx.write_all(&[0x16, 0x03]).await.unwrap();
        let refused = read_proxy_header(&mut rx).await;
        assert!(
            matches!(refused, Err(Failed::Header(HeaderError::Signature))),
            "{refused:?}"
        );
        drop(tx);
    }
}
