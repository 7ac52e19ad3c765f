//! One HTTPS connection: hyper's HTTP/1.1 server under bounds, the routes (`/`, the
//! embedded files, `/ws`) and the checks a WebSocket must pass before it becomes a
//! session (upgrade headers, same Origin, subprotocol, token).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::debug;

use super::{assets, bridge, WebDeps};
use crate::connections::ConnectionGuard;
use crate::transport::{Protocol, Transport};

/// Largest request head (request line and headers) read: past it, 431. hyper's floor is
/// 8 KiB; a browser's WebSocket request is under 2 KiB.
const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in one request; a browser sends about 15.
const MAX_HEADERS: usize = 64;
/// Longest an HTTPS connection serves plain requests, however busy: a browser opens
/// another for more. A WebSocket leaves this bound when it is upgraded (its session has
/// its own time limit).
const CONNECTION_LIFE: Duration = Duration::from_secs(60);

/// The subprotocol a playground client offers, and the server answers with.
pub(super) const SUBPROTOCOL: &str = "pyexec.v1";
/// The prefix of the subprotocol that carries a bearer token: `pyexec.token.<TOKEN>`.
pub(super) const TOKEN_PREFIX: &str = "pyexec.token.";

/// Headers on every answer. The CSP allows this origin only: no inline script or style,
/// no eval, no framing (clickjacking), and the WebSocket only to ourselves.
const SECURITY_HEADERS: [(&str, &str); 6] = [
    (
        "content-security-policy",
        "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cache-control", "no-cache"),
];

/// What every request of one connection shares.
struct Conn {
    id: u64,
    peer: SocketAddr,
    /// A verified client certificate's subject, under `--client-ca`.
    certificate: Option<String>,
    /// The connection's place among the open ones, handed to the session of its
    /// WebSocket (one per connection: after the upgrade it speaks no more HTTP).
    guard: Mutex<Option<ConnectionGuard>>,
    deps: Arc<WebDeps>,
}

pub(super) async fn serve_connection(
    id: u64,
    peer: SocketAddr,
    tls: TlsStream<TcpStream>,
    guard: ConnectionGuard,
    deps: Arc<WebDeps>,
) {
    let conn_deps = deps.clone();
    let conn = Arc::new(Conn {
        id,
        peer,
        certificate: crate::tls::peer_identity(tls.get_ref().1),
        guard: Mutex::new(Some(guard)),
        deps,
    });
    let service = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(answer(req, &conn)) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Longest a client may take to send a request head, the first or the next on a
        // kept-alive connection: the handshake's bound, so a slow-headers client holds
        // its place no longer than a slow handshake could.
        .header_read_timeout(conn_deps.cfg.handshake_timeout)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS);
    let served = builder
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    match tokio::time::timeout(CONNECTION_LIFE, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "HTTPS connection failed"),
        Err(_) => debug!(%peer, "HTTPS connection closed after its lifetime"),
    }
}

fn answer(req: Request<Incoming>, conn: &Conn) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/ws" {
        return websocket(req, conn);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET here\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match assets::find(path) {
        Some(asset) => {
            let mut r = with_headers(StatusCode::OK, asset.body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            );
            r
        }
        None => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn with_headers(status: StatusCode, body: &'static [u8]) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body)));
    *r.status_mut() = status;
    for (name, value) in SECURITY_HEADERS {
        r.headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = with_headers(status, text.as_bytes());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Why a request to `/ws` is not made a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Not a WebSocket handshake (a plain GET, HTTP/1.0, another method).
    NotUpgrade,
    /// A WebSocket version other than 13.
    Version,
    /// No `Sec-WebSocket-Key`.
    NoKey,
    /// No Origin, or another site's: a page elsewhere must not drive a session with
    /// the visitor's client certificate or address.
    Origin,
    /// `pyexec.v1` was not offered.
    Subprotocol,
    /// `--tokens` is set and no valid token came.
    Token,
}

impl Refusal {
    fn response(self) -> Response<Full<Bytes>> {
        let (status, text) = match self {
            Refusal::NotUpgrade => (
                StatusCode::UPGRADE_REQUIRED,
                "/ws is a WebSocket (HTTP/1.1 GET with Upgrade: websocket)\n",
            ),
            Refusal::Version => (StatusCode::BAD_REQUEST, "WebSocket version 13 only\n"),
            Refusal::NoKey => (StatusCode::BAD_REQUEST, "no Sec-WebSocket-Key\n"),
            Refusal::Origin => (StatusCode::FORBIDDEN, "cross-origin WebSocket refused\n"),
            Refusal::Subprotocol => (StatusCode::BAD_REQUEST, "offer the subprotocol pyexec.v1\n"),
            Refusal::Token => (StatusCode::UNAUTHORIZED, "a valid token is needed\n"),
        };
        let mut r = plain(status, text);
        // A refused handshake ends its connection: whoever sent it is not a browser
        // loading the page, and gets no second try on the same place.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        match self {
            Refusal::NotUpgrade => {
                r.headers_mut()
                    .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            Refusal::Version => {
                r.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            _ => {}
        }
        r
    }
}

/// Whether a header's comma-separated values include `word`, ignoring case.
fn has_token(headers: &HeaderMap, name: header::HeaderName, word: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(word)))
            .unwrap_or(false)
    })
}

/// The offered subprotocols, in order.
fn subprotocols(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Maps a presented token to a client identity, or refuses it.
pub(super) type Identify<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The WebSocket handshake's checks, pure: the accept key and the client's identity.
/// `identify` maps a presented token to an identity (`None` without `--tokens`).
pub(super) fn check_upgrade(
    version: Version,
    method: &Method,
    headers: &HeaderMap,
    identify: Option<Identify<'_>>,
) -> Result<(String, Option<String>), Refusal> {
    let upgrade = version == Version::HTTP_11
        && method == Method::GET
        && has_token(headers, header::CONNECTION, "upgrade")
        && has_token(headers, header::UPGRADE, "websocket");
    if !upgrade {
        return Err(Refusal::NotUpgrade);
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
        return Err(Refusal::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(Refusal::NoKey)?;
    // Same origin: the page's scheme, host and port are what the browser put in Host.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    match (host, origin) {
        (Some(host), Some(origin)) if origin.eq_ignore_ascii_case(&format!("https://{host}")) => {}
        _ => return Err(Refusal::Origin),
    }
    let offered = subprotocols(headers);
    if !offered.contains(&SUBPROTOCOL) {
        return Err(Refusal::Subprotocol);
    }
    let identity = match identify {
        None => None,
        Some(identify) => {
            // Every offered token is tried; the first valid one names the client.
            let found = offered
                .iter()
                .filter_map(|p| p.strip_prefix(TOKEN_PREFIX))
                .find_map(identify);
            Some(found.ok_or(Refusal::Token)?)
        }
    };
    Ok((derive_accept_key(key.as_bytes()), identity))
}

fn websocket(mut req: Request<Incoming>, conn: &Conn) -> Response<Full<Bytes>> {
    let identify = |token: &str| conn.deps.tokens.as_ref().and_then(|t| t.identify(token));
    let checked = check_upgrade(
        req.version(),
        req.method(),
        req.headers(),
        conn.deps
            .tokens
            .is_some()
            .then_some(&identify as Identify<'_>),
    );
    let (accept, token_identity) = match checked {
        Ok(ok) => ok,
        Err(refusal) => {
            debug!(peer = %conn.peer, ?refusal, "WebSocket refused");
            return refusal.response();
        }
    };
    let Some(guard) = conn.guard.lock().expect("never poisoned").take() else {
        // A second upgrade on one connection cannot happen: after the first, hyper
        // hands the connection over and reads no more requests.
        return plain(StatusCode::CONFLICT, "one WebSocket per connection\n");
    };
    // Who the client is: its token's name, else its certificate's subject, else its
    // address; the key of its per-client limits.
    let client = token_identity
        .or_else(|| conn.certificate.clone())
        .unwrap_or_else(|| conn.peer.ip().to_string());
    let upgrade = hyper::upgrade::on(&mut req);
    let (id, peer, deps) = (conn.id, conn.peer, conn.deps.clone());
    // The session's clock starts with the WebSocket's request, as a binary one's with
    // its TCP accept.
    let accepted_at = Instant::now();
    actix_rt::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return debug!(%peer, error = %e, "WebSocket upgrade failed"),
        };
        let (session_end, bridge_end) = tokio::io::duplex(bridge::PIPE_BYTES);
        let transport = Transport {
            io: Box::new(session_end),
            client,
            protocol: Protocol::WebSocket,
        };
        (deps.start_session)(id, peer, transport, accepted_at, guard);
        bridge::run(TokioIo::new(upgraded), bridge_end, &deps.cfg).await;
    });
    let mut r = with_headers(StatusCode::SWITCHING_PROTOCOLS, b"");
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const GOOD: [(&str, &str); 7] = [
        ("host", "localhost:12344"),
        ("origin", "https://localhost:12344"),
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-protocol", "pyexec.v1"),
    ];

    fn check(h: &HeaderMap) -> Result<(String, Option<String>), Refusal> {
        check_upgrade(Version::HTTP_11, &Method::GET, h, None)
    }

    fn without(name: &str) -> HeaderMap {
        let pairs: Vec<_> = GOOD.iter().copied().filter(|(k, _)| *k != name).collect();
        request(&pairs)
    }

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut h = without(name);
        h.insert(
            header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn a_browsers_handshake_gets_rfc_6455s_accept_key() {
        let (accept, identity) = check(&request(&GOOD)).unwrap();
        // The example of RFC 6455 §1.3.
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(identity, None);
    }

    #[test]
    fn what_is_not_a_websocket_handshake_is_refused_by_name() {
        let h = request(&GOOD);
        assert_eq!(
            check_upgrade(Version::HTTP_10, &Method::GET, &h, None),
            Err(Refusal::NotUpgrade)
        );
        assert_eq!(
            check_upgrade(Version::HTTP_11, &Method::POST, &h, None),
            Err(Refusal::NotUpgrade)
        );
        assert_eq!(check(&without("upgrade")), Err(Refusal::NotUpgrade));
        assert_eq!(
            check(&with("connection", "close")),
            Err(Refusal::NotUpgrade)
        );
        assert_eq!(
            check(&with("sec-websocket-version", "8")),
            Err(Refusal::Version)
        );
        assert_eq!(check(&without("sec-websocket-key")), Err(Refusal::NoKey));
        assert_eq!(
            check(&without("sec-websocket-protocol")),
            Err(Refusal::Subprotocol)
        );
        assert_eq!(
            check(&with("sec-websocket-protocol", "chat, pyexec.v2")),
            Err(Refusal::Subprotocol)
        );
    }

    #[test]
    fn only_the_same_origin_may_open_a_session() {
        assert_eq!(check(&without("origin")), Err(Refusal::Origin));
        assert_eq!(check(&without("host")), Err(Refusal::Origin));
        for other in [
            "https://evil.example",
            "http://localhost:12344",
            "https://localhost:12345",
            "https://localhost:12344.evil.example",
            "null",
        ] {
            assert_eq!(
                check(&with("origin", other)),
                Err(Refusal::Origin),
                "{other}"
            );
        }
        assert!(check(&with("origin", "HTTPS://LOCALHOST:12344")).is_ok());
    }

    #[test]
    fn with_tokens_a_valid_one_names_the_client_and_no_other_gets_in() {
        let identify = |t: &str| (t == "sesame-sesame-sesame").then(|| "token:ali".to_string());
        let run = |protocols: &str| {
            check_upgrade(
                Version::HTTP_11,
                &Method::GET,
                &with("sec-websocket-protocol", protocols),
                Some(&identify),
            )
        };
        assert_eq!(
            run("pyexec.v1, pyexec.token.sesame-sesame-sesame")
                .unwrap()
                .1,
            Some("token:ali".to_string())
        );
        assert_eq!(run("pyexec.v1"), Err(Refusal::Token));
        assert_eq!(run("pyexec.v1, pyexec.token.wrong"), Err(Refusal::Token));
        assert_eq!(run("pyexec.v1, pyexec.token."), Err(Refusal::Token));
        // The token alone, without the protocol, is still refused for the protocol.
        assert_eq!(
            run("pyexec.token.sesame-sesame-sesame"),
            Err(Refusal::Subprotocol)
        );
    }
}
