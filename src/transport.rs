//! What a session runs over: a byte stream carrying binary frames (the TLS stream itself,
//! or the WebSocket bridge's in-memory pipe), who the client is, and which protocol it
//! spoke on the wire (a metrics label). The Session actor sees only this, so both
//! protocols share its state machine, limits and per-client limits.

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream a session can own: split into halves, read and written from tasks.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Which protocol a client speaks on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The binary framed protocol over TLS (ALPN `pyexec/1`, or none).
    Binary,
    /// JSON messages over a WebSocket (ALPN `http/1.1`, path `/ws`), bridged to frames.
    WebSocket,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Binary => "binary",
            Protocol::WebSocket => "websocket",
        }
    }
}

/// One connection, ready for a session.
pub struct Transport {
    pub io: Box<dyn Io>,
    /// The key for per-client limits and the identity in logs: a bearer token's name, a
    /// client certificate's subject, or the peer's IP address.
    pub client: String,
    pub protocol: Protocol,
}
