//! Hostile browsers and HTTP clients on the playground's side of the port (issue 13,
//! item 6): another site's Origin, oversized and slow headers, requests that are not
//! WebSockets, path traversal, HTTP/1.0, an oversized WebSocket message, messages that
//! are no frames. Each gets a clear refusal, and the daemon goes on serving, back to idle.
//! Plaintext HTTP on the TLS port is `hostile_clients.rs`'s first case.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::{daemon::*, idle::*, raw::runtime, web::*};
use futures::SinkExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

const WITHIN: Duration = Duration::from_secs(10);

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

#[test]
fn websocket_requests_from_elsewhere_or_malformed_are_refused() {
    let d = Daemon::start(&[]);
    let base = idle_baseline(&d);
    runtime().block_on(async {
        // Another site's page, or none named.
        for origin in ["https://evil.example", "null", "http://localhost"] {
            assert_eq!(
                websocket(&d, "pyexec.v1", Some(origin)).await.err(),
                Some(403)
            );
        }
        let port = d.addr.port();
        let upgrade = |extra: &str| {
            format!(
                "GET /ws HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
            )
        };
        let no_origin = exchange(
            &d,
            upgrade("Sec-WebSocket-Protocol: pyexec.v1\r\n").as_bytes(),
            WITHIN,
        )
        .await;
        assert_eq!(status_line(&no_origin), "HTTP/1.1 403 Forbidden");
        // Without the subprotocol.
        assert_eq!(websocket(&d, "", None).await.err(), Some(400));
        // A plain GET, a POST and HTTP/1.0 are no WebSocket handshakes.
        let plain = exchange(
            &d,
            format!("GET /ws HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            WITHIN,
        )
        .await;
        assert_eq!(status_line(&plain), "HTTP/1.1 426 Upgrade Required");
        let old = exchange(
            &d,
            upgrade(&format!(
                "Origin: https://localhost:{port}\r\nSec-WebSocket-Protocol: pyexec.v1\r\n"
            ))
            .replace("HTTP/1.1", "HTTP/1.0")
            .as_bytes(),
            WITHIN,
        )
        .await;
        assert!(status_line(&old).ends_with("426 Upgrade Required"), "{old}");
        let post = exchange(
            &d,
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                .as_bytes(),
            WITHIN,
        )
        .await;
        assert_eq!(status_line(&post), "HTTP/1.1 405 Method Not Allowed");
    });
    assert_back_to_idle(&d, base, "after refused WebSockets");
    assert_healthy(&d);
    d.stop();
}

#[test]
fn static_paths_reach_only_the_embedded_files() {
    let d = Daemon::start(&[]);
    runtime().block_on(async {
        for path in [
            "/static/../Cargo.toml",
            "/static/%2e%2e/Cargo.toml",
            "/..%2f..%2fetc%2fpasswd",
            "/static//etc/passwd",
            "/static/app.js/..",
            "/web/app.js",
        ] {
            let answer = get(&d, path).await;
            assert_eq!(status_line(&answer), "HTTP/1.1 404 Not Found", "{path}");
            assert!(answer.contains("content-security-policy"), "{path}");
        }
        // HTTP/1.0 is answered as such.
        let old = exchange(&d, b"GET / HTTP/1.0\r\n\r\n", WITHIN).await;
        assert_eq!(status_line(&old), "HTTP/1.0 200 OK");
        assert_eq!(
            status_line(&get(&d, "/static/app.js?x=1").await),
            "HTTP/1.1 200 OK"
        );
    });
    d.stop();
}

#[test]
fn huge_many_and_slow_headers_are_cut_off() {
    let d = Daemon::start(&["--handshake-timeout", "1"]);
    let base = idle_baseline(&d);
    runtime().block_on(async {
        let huge = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        let answer = exchange(&d, huge.as_bytes(), WITHIN).await;
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..200 {
            many.push_str(&format!("X-{i}: 1\r\n"));
        }
        many.push_str("\r\n");
        let answer = exchange(&d, many.as_bytes(), WITHIN).await;
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        // Headers that trickle in are cut off at the handshake timeout (1 s here).
        let mut slow = https(&d).await;
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let answer = read_to_close(&mut slow, WITHIN).await;
        assert!(started.elapsed() < Duration::from_secs(5), "{answer}");
        assert!(!answer.contains("200 OK"), "{answer}");
    });
    assert_back_to_idle(&d, base, "after header floods");
    assert_healthy(&d);
    d.stop();
}

#[test]
fn websocket_messages_that_are_no_frames_end_the_session_with_a_reason() {
    let d = Daemon::start(&[]);
    let base = idle_baseline(&d);
    runtime().block_on(async {
        // Not JSON.
        let mut ws = websocket(&d, "pyexec.v1", None).await.unwrap();
        ws.send(Message::text("{not json")).await.unwrap();
        let error = next(&mut ws, WITHIN).await.unwrap();
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("error"), Some("protocol"))
        );
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("bad message"),
            "{error}"
        );
        assert!(next(&mut ws, WITHIN).await.is_none(), "then the close");
        // A binary message.
        let mut ws = websocket(&d, "pyexec.v1", None).await.unwrap();
        ws.send(Message::binary(vec![0, 0, 0, 1, 4])).await.unwrap();
        let error = next(&mut ws, WITHIN).await.unwrap();
        assert_eq!(error["code"], "protocol", "{error}");
        // A message the Session refuses is refused with the binary protocol's own words.
        let mut ws = websocket(&d, "pyexec.v1", None).await.unwrap();
        send(&mut ws, json!({"type": "stdin", "data": "YQ=="})).await;
        let (_, error) = until_end(&mut ws, WITHIN).await;
        assert_eq!(error["code"], "protocol");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("expected HELLO"),
            "{error}"
        );
        // A message bomb: 1 MiB in one message is refused before it is buffered whole,
        // mid-script, and the script is stopped.
        let mut ws = websocket(&d, "pyexec.v1", None).await.unwrap();
        start_script(&mut ws, "input()\n").await;
        while next(&mut ws, WITHIN).await.unwrap()["type"] != "started" {}
        let bomb = json!({"type": "stdin", "data": "A".repeat(1 << 20)}).to_string();
        let _ = ws.send(Message::text(bomb)).await;
        while next(&mut ws, WITHIN).await.is_some() {}
    });
    assert!(d.wait_log("client disconnected", WITHIN), "{}", d.log());
    assert_back_to_idle(&d, base, "after bad WebSocket messages");
    assert_healthy(&d);
    d.stop();
}
