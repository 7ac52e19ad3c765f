//! The Prometheus endpoint, `GET /metrics` over plain HTTP, answered from the Status actor;
//! and `/healthz` and `/readyz` for load balancers.
//!
//! A deliberately tiny HTTP/1.1 responder (one request per connection, bounded request
//! size and time) instead of a web framework: a scraper needs nothing more, and nothing
//! more means nothing more to attack on a port that may be reachable by the network.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::status::{Encode, IsReady, Status};

/// Largest request head accepted; a scraper's is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// Longest a client may take to send its request and read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections answered at once; more are closed as soon as they are accepted. Without
/// it, a flood of idle connections (each kept up to `REQUEST_TIMEOUT`) could take every
/// file descriptor the daemon has, sessions' included (issue 9). A scraper needs one.
pub const MAX_CONNECTIONS: usize = 16;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, status: Addr<Status>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    debug!(%peer, "metrics connection refused: {MAX_CONNECTIONS} already open");
                    drop(stream);
                    continue;
                };
                let status = status.clone();
                actix_rt::spawn(async move {
                    match tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, status)).await {
                        Ok(Err(e)) => debug!(%peer, error = %e, "metrics request failed"),
                        Err(_) => debug!(%peer, "metrics request timed out"),
                        Ok(Ok(())) => {}
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The request line's method and path, once the head is complete.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut parts = text.lines().next()?.split_whitespace();
    Some((parts.next()?, parts.next()?))
}

async fn answer(mut stream: TcpStream, status: Addr<Status>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
    }
    match request_line(&head) {
        Some(("GET", path)) if path == "/metrics" || path.starts_with("/metrics?") => {
            let body = status.send(Encode).await.unwrap_or_default();
            respond(&mut stream, "200 OK", CONTENT_TYPE, &body).await
        }
        // For load balancers: /healthz, the process answers (its actors included);
        // /readyz, it should get sessions (the engine answers, the warm pool has filled).
        Some(("GET", path @ ("/healthz" | "/readyz"))) => {
            let (code, body) = match (path, status.send(IsReady).await) {
                (_, Err(_)) => ("503 Service Unavailable", "stopping\n".to_string()),
                ("/healthz", Ok(_)) => ("200 OK", "ok\n".to_string()),
                (_, Ok(Ok(()))) => ("200 OK", "ready\n".to_string()),
                (_, Ok(Err(why))) => ("503 Service Unavailable", format!("not ready: {why}\n")),
            };
            respond(&mut stream, code, "text/plain", &body).await
        }
        Some(("GET", "/")) => {
            respond(
                &mut stream,
                "200 OK",
                "text/plain",
                "pyexecd: metrics at /metrics, /healthz, /readyz\n",
            )
            .await
        }
        Some((_, _)) => respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
        None => {
            respond(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                "bad request\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(request_line(b"\xff\xfe"), None);
        assert_eq!(request_line(b"GET\r\n\r\n"), None);
    }
}
