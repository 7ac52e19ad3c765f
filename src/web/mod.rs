//! The playground: HTTPS on the daemon's own port, for TLS clients that chose ALPN
//! `http/1.1` (browsers). `GET /` serves the page and `/static/` its files, all embedded
//! in the binary (`assets`); `/ws` is a WebSocket carrying one session as JSON messages
//! (`mapping`), bridged to the binary protocol over an in-memory pipe (`bridge`) and
//! handed to the same Session actor as a binary client, so every limit, per-client
//! limit, metric and rule of the session applies unchanged. `http` answers requests with
//! hyper (no parser of ours) under bounds; `tokens` checks `--tokens`.
//!
//! Not an actor: the Session is started through `WebDeps::start_session`, which the
//! server wires, so this module never names an actor module.

mod assets;
mod bridge;
mod http;
pub mod mapping;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::Config;
use crate::connections::ConnectionGuard;
use crate::tls::HTTP_ALPN;
use crate::transport::Transport;
pub use tokens::{Tokens, TokensError};

/// Starts a session over a transport: id, peer, transport, when its clock starts, and the
/// connection's place among the open connections.
pub type StartSession =
    Arc<dyn Fn(u64, SocketAddr, Transport, Instant, ConnectionGuard) + Send + Sync>;

/// What the web side needs from the daemon.
pub struct WebDeps {
    pub cfg: Arc<Config>,
    /// `--tokens`: when set, `/ws` needs one of them.
    pub tokens: Option<Arc<Tokens>>,
    pub start_session: StartSession,
}

/// Whether the client chose HTTPS in its handshake. A client offering no ALPN, or
/// `pyexec/1`, gets frames as before.
pub fn wants_http(tls: &TlsStream<TcpStream>) -> bool {
    tls.get_ref().1.alpn_protocol() == Some(HTTP_ALPN)
}

/// Serves one HTTPS connection (and the WebSocket it may become) on a task of its own.
pub fn serve(
    id: u64,
    peer: SocketAddr,
    tls: TlsStream<TcpStream>,
    guard: ConnectionGuard,
    deps: Arc<WebDeps>,
) {
    actix_rt::spawn(http::serve_connection(id, peer, tls, guard, deps));
}
