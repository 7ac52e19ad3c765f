//! The playground's side of a daemon: HTTPS requests written by hand over TLS with ALPN
//! `http/1.1`, WebSocket sessions (tokio-tungstenite's client) carrying the JSON messages
//! of protocol §13, and the SPKI pin a browser is given to trust the daemon's key.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::daemon::Daemon;
use super::raw::tls_config_as;

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// A TLS 1.3 connection offering the given ALPN protocols: the handshake's failure, or
/// the stream and the protocol the server chose.
pub async fn tls_with_alpn(
    d: &Daemon,
    alpn: &[&[u8]],
) -> std::io::Result<(TlsStream<TcpStream>, Option<Vec<u8>>)> {
    tls_as_with_alpn(d, None, alpn).await
}

/// `tls_with_alpn`, presenting the client certificate of `client` when given.
pub async fn tls_as_with_alpn(
    d: &Daemon,
    client: Option<&str>,
    alpn: &[&[u8]],
) -> std::io::Result<(TlsStream<TcpStream>, Option<Vec<u8>>)> {
    let mut config = (*tls_config_as(d, client)).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(d.addr).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let chosen = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    Ok((tls, chosen))
}

/// An HTTPS connection as a browser's (ALPN `http/1.1`).
pub async fn https(d: &Daemon) -> TlsStream<TcpStream> {
    let (tls, chosen) = tls_with_alpn(d, &[b"http/1.1"]).await.unwrap();
    assert_eq!(chosen.as_deref(), Some(&b"http/1.1"[..]));
    tls
}

/// Sends `request` as is on a new HTTPS connection and reads until the server closes
/// it (or `within` passes): the whole answer as text.
pub async fn exchange(d: &Daemon, request: &[u8], within: Duration) -> String {
    let mut tls = https(d).await;
    // A server refusing an oversized head answers and closes before it has read it all:
    // the rest of the write then fails (broken pipe), and the answer is still to be read.
    let _ = tls.write_all(request).await;
    read_to_close(&mut tls, within).await
}

/// What the server sent until it closed the connection; panics after `within`.
pub async fn read_to_close(tls: &mut TlsStream<TcpStream>, within: Duration) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 16384];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.expect("the server closes the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A GET of `path` with `Connection: close`, as HTTP/1.1.
pub async fn get(d: &Daemon, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    exchange(d, request.as_bytes(), Duration::from_secs(10)).await
}

/// Opens `/ws` as a browser on `https://localhost:PORT` would, with these subprotocols
/// and Origin (`None`: the right one): the WebSocket, or the HTTP status it was refused
/// with.
pub async fn websocket(d: &Daemon, protocols: &str, origin: Option<&str>) -> Result<Ws, u16> {
    websocket_on(https(d).await, d, protocols, origin).await
}

/// `websocket`, over a TLS connection the test made (e.g. with a client certificate).
pub async fn websocket_on(
    tls: TlsStream<TcpStream>,
    d: &Daemon,
    protocols: &str,
    origin: Option<&str>,
) -> Result<Ws, u16> {
    let host = format!("localhost:{}", d.addr.port());
    let mut request = format!("wss://{host}/ws").into_client_request().unwrap();
    let h = request.headers_mut();
    let origin = origin.map_or(format!("https://{host}"), str::to_string);
    h.insert("origin", HeaderValue::from_str(&origin).unwrap());
    if !protocols.is_empty() {
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(protocols).unwrap(),
        );
    }
    match tokio_tungstenite::client_async(request, tls).await {
        Ok((ws, response)) => {
            assert_eq!(
                response.headers().get("sec-websocket-protocol").unwrap(),
                "pyexec.v1"
            );
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

pub async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string())).await.unwrap();
}

/// HELLO and the script, as the playground sends them.
pub async fn start_script(ws: &mut Ws, script: &str) {
    send(
        ws,
        json!({"type": "hello", "version": 1, "script_size": script.len(), "client": "test"}),
    )
    .await;
    send(ws, json!({"type": "script", "data": BASE64.encode(script)})).await;
}

/// The next JSON message, or `None` once the WebSocket is closed.
pub async fn next(ws: &mut Ws, within: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(within, ws.next())
            .await
            .expect("a message in time")
        {
            Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Everything until the terminal message: stdout as text and the `end` or `error`.
pub async fn until_end(ws: &mut Ws, within: Duration) -> (String, Value) {
    let mut stdout = Vec::new();
    while let Some(m) = next(ws, within).await {
        match m["type"].as_str().unwrap() {
            "stdout" => stdout.extend(BASE64.decode(m["data"].as_str().unwrap()).unwrap()),
            "end" | "error" => return (String::from_utf8(stdout).unwrap(), m),
            _ => {}
        }
    }
    panic!("closed before the end; stdout so far {stdout:?}");
}

/// The base64 SHA-256 of the daemon's public key (its SubjectPublicKeyInfo), for
/// Chromium's `--ignore-certificate-errors-spki-list`.
pub fn spki_sha256(d: &Daemon) -> String {
    let pem = std::fs::read(d.dir.path().join("server.pem")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let spki = cert.tbs_certificate.subject_pki.raw;
    BASE64.encode(ring::digest::digest(&ring::digest::SHA256, spki).as_ref())
}
