//! `--proxy-protocol` against the real daemon: a PROXY v2 header written by hand, then real
//! TLS and a real session. The header's client address is the session's peer, and the
//! per-address bound applies to it; LOCAL keeps the socket's peer; every malformed,
//! oversized, old-version, truncated or trickled header is refused, counted and leaks
//! nothing; without the flag a PROXY header is garbage to TLS, as before.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use common::{daemon::*, figures::*, idle::*, processes::*, raw::*};
use pyexec::protocol::EndReason;
use tokio::net::TcpStream;

/// The v2 signature, written out here rather than taken from the daemon's parser.
const SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A PROXY v2 header (version 2, command PROXY, TCP) for a client at `src`, bound for
/// the daemon's port 12344, with `tlv` bytes after the addresses.
fn proxy_header(src: SocketAddr, tlv: &[u8]) -> Vec<u8> {
    let (family, mut body) = match src.ip() {
        IpAddr::V4(ip) => (0x11, [ip.octets(), [127, 0, 0, 1]].concat()),
        IpAddr::V6(ip) => (0x21, [ip.octets(), [0; 16]].concat()),
    };
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&12344u16.to_be_bytes());
    body.extend_from_slice(tlv);
    header(0x21, family, &body)
}

/// A header with any version-and-command and family bytes, and its body.
fn header(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.extend_from_slice(&[ver_cmd, family]);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

/// A LOCAL header: the balancer's own connection (its health check).
fn local_header() -> Vec<u8> {
    header(0x20, 0x00, &[])
}

/// Connects, writes `header`, and does the TLS handshake behind it.
async fn proxied(d: &Daemon, header: &[u8]) -> std::io::Result<Raw> {
    use tokio::io::AsyncWriteExt;
    let mut tcp = TcpStream::connect(d.addr).await?;
    tcp.write_all(header).await?;
    Raw::over(tcp, d).await
}

/// A script that says `ready` and then holds its session until stdin closes.
const HOLD: &str = "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n";

/// Runs a hello-world over a proxied connection and checks its END: the daemon serves.
async fn assert_serves(d: &Daemon, header: &[u8], what: &str) -> String {
    let mut c = proxied(d, header)
        .await
        .unwrap_or_else(|e| panic!("{what}: TLS handshake failed: {e}\n{}", d.log()));
    c.run("print('hello, world')\n").await;
    let id = c.welcome().await;
    let (_, end) = c.until_end(Duration::from_secs(20)).await;
    assert_end(&end, EndReason::Exited, 0, what);
    id
}

#[test]
fn the_headers_client_address_is_the_peer_and_bears_the_per_address_bound() {
    let d = Daemon::start(&["--proxy-protocol", "--max-connections-per-ip", "1"]);
    let rt = runtime();
    let alice = proxy_header("203.0.113.7:40000".parse().unwrap(), &[]);
    // Alice holds a session: her one place.
    let mut held = rt.block_on(async {
        let mut held = proxied(&d, &alice).await.unwrap();
        held.hello(HOLD.len() as u64, HOLD.as_bytes()).await;
        let (_, id) = held.stdout_until(b"ready\n", Duration::from_secs(20)).await;
        assert!(
            d.wait_session_log(&id, "peer=203.0.113.7:40000", Duration::from_secs(5)),
            "the session's peer is the header's client\n{}",
            d.log()
        );
        held
    });
    // Per-client figures see her too (without --client-ca the identity is the address).
    let mut clients = Vec::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            clients = status(&d).clients;
            clients == [("203.0.113.7".to_string(), 1)]
        }),
        "clients in the status line: {clients:?}"
    );

    // Every socket comes from 127.0.0.1; only the header tells Alice from Bob. A second
    // connection claiming Alice's address is refused before TLS ...
    let refused_before = metrics(&d).get("pyexec_connections_refused_total");
    let again = proxy_header("203.0.113.7:40001".parse().unwrap(), &[]);
    assert!(
        rt.block_on(proxied(&d, &again)).is_err(),
        "a second connection from Alice's address was served"
    );
    assert!(
        wait_until(Duration::from_secs(5), || metrics(&d)
            .get("pyexec_connections_refused_total")
            == refused_before + 1.0),
        "the refusal is counted"
    );
    rt.block_on(async {
        // ... while Bob, over IPv4 or IPv6 and with TLVs after the addresses, is served.
        let bob = proxy_header("203.0.113.8:5000".parse().unwrap(), &[]);
        let bob = assert_serves(&d, &bob, "Bob").await;
        assert!(d.wait_session_log(&bob, "peer=203.0.113.8:5000", Duration::from_secs(5)));
        let alpn_and_noop = [
            &[0x01, 0x00, 0x08][..],
            b"pyexec/1",
            &[0x04, 0x00, 0x02, 0, 0],
        ]
        .concat();
        let carol = proxy_header("[2001:db8::7]:6000".parse().unwrap(), &alpn_and_noop);
        let carol = assert_serves(&d, &carol, "Carol over IPv6, with TLVs").await;
        assert!(d.wait_session_log(&carol, "peer=[2001:db8::7]:6000", Duration::from_secs(5)));
        // LOCAL (a balancer's health check) keeps the socket's peer.
        let local = assert_serves(&d, &local_header(), "LOCAL").await;
        assert!(d.wait_session_log(&local, "peer=127.0.0.1:", Duration::from_secs(5)));

        // Alice's session ends ...
        held.send(pyexec::protocol::Frame::StdinEof).await;
        let (_, end) = held.until_end(Duration::from_secs(20)).await;
        assert_end(&end, EndReason::Exited, 0, "Alice's held session");
    });
    drop(held);
    // ... and her place is free again once it has gone.
    assert!(
        wait_until(Duration::from_secs(10), || rt
            .block_on(proxied(&d, &again))
            .is_ok()),
        "Alice's place was not given back\n{}",
        d.log()
    );
    assert_no_session_left(&d, "after the proxied sessions");
    d.stop();
}

/// Sends `bytes` on a fresh connection, then stays silent (or trickles, see `trickle`),
/// and measures how long the daemon keeps it open: what it sent back, and when it closed.
fn open_for(addr: SocketAddr, bytes: Vec<u8>, trickle: Option<Duration>) -> (Vec<u8>, Duration) {
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    let opened = Instant::now();
    match trickle {
        None => sock.write_all(&bytes).unwrap(),
        Some(every) => {
            let mut writer = sock.try_clone().unwrap();
            thread::spawn(move || {
                for b in bytes {
                    // Fails once the daemon has closed: the point of the case.
                    if writer.write_all(&[b]).is_err() {
                        return;
                    }
                    thread::sleep(every);
                }
            });
        }
    }
    let (got, closed) = read_until_closed(&mut sock, Duration::from_secs(10));
    (got, closed - opened)
}

#[test]
fn bad_headers_are_refused_counted_and_leak_nothing() {
    let d = Daemon::start(&["--proxy-protocol", "--handshake-timeout", "2"]);
    let base = idle_baseline(&d);
    let failures_before = metrics(&d).get("pyexec_tls_handshake_failures_total");
    let client: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    let valid = proxy_header(client, &[]);
    let mut oversize = header(0x21, 0x11, &[]);
    oversize[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    let at_once: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a TLS ClientHello, no header",
            client_hello_bytes(&d),
            "no PROXY protocol v2 signature",
        ),
        (
            "HTTP",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            "no PROXY protocol v2 signature",
        ),
        (
            "a v1 header",
            b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 12344\r\n".to_vec(),
            "v1 (text) header",
        ),
        (
            "version 1 in a v2 header",
            [&valid[..12], &[0x11], &valid[13..]].concat(),
            "version 1;",
        ),
        (
            "an unknown command",
            header(0x22, 0x11, &valid[16..]),
            "unknown PROXY protocol command 0x2",
        ),
        // Refused on its length field: the 65,535 bytes it announces never come.
        (
            "a length over the bound",
            oversize,
            "over the 552-byte bound",
        ),
        (
            "UNIX on PROXY",
            header(0x21, 0x31, &[0; 216]),
            "family and transport 0x31",
        ),
        (
            "UNSPEC on PROXY",
            header(0x21, 0x00, &[]),
            "family and transport 0x00",
        ),
        (
            "UDP on PROXY",
            header(0x21, 0x12, &valid[16..]),
            "family and transport 0x12",
        ),
        (
            "IPv4 addresses under IPv6's family",
            header(0x21, 0x21, &valid[16..]),
            "12 bytes, 36 needed",
        ),
    ];
    let silent: Vec<(&str, Vec<u8>, Option<Duration>, &str)> = vec![
        ("nothing at all", vec![], None, "no whole PROXY header"),
        (
            "the fixed part, then silence",
            valid[..16].to_vec(),
            None,
            "no whole PROXY header",
        ),
        // A whole header at one byte per 250 ms would take 7 s: one deadline covers it.
        (
            "a header trickled in",
            valid.clone(),
            Some(Duration::from_millis(250)),
            "no whole PROXY header",
        ),
    ];
    let addr = d.addr;
    let slow: Vec<_> = silent
        .iter()
        .map(|(what, bytes, trickle, _)| {
            let (bytes, trickle) = (bytes.clone(), *trickle);
            (*what, thread::spawn(move || open_for(addr, bytes, trickle)))
        })
        .collect();
    for (what, bytes, _) in &at_once {
        let (got, open) = open_for(addr, bytes.clone(), None);
        assert!(got.is_empty(), "{what}: closed without a byte, got {got:?}");
        assert!(
            open < Duration::from_secs(1),
            "{what}: refused after {open:?}, not at once"
        );
    }
    for (what, t) in slow {
        let (got, open) = t.join().unwrap();
        assert!(got.is_empty(), "{what}: closed without a byte, got {got:?}");
        assert!(
            open >= Duration::from_millis(1900) && open < Duration::from_secs(4),
            "{what}: closed after {open:?} with --handshake-timeout 2"
        );
    }
    let cut = {
        // A header cut short by the client's FIN.
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.write_all(&valid[..20]).unwrap();
        sock.shutdown(std::net::Shutdown::Write).unwrap();
        read_until_closed(&mut sock, Duration::from_secs(5)).0
    };
    assert!(cut.is_empty());
    let cases = at_once.len() + silent.len() + 1;
    assert!(
        wait_until(Duration::from_secs(5), || metrics(&d)
            .get("pyexec_tls_handshake_failures_total")
            == failures_before + cases as f64),
        "every refusal counted as a failed handshake: {} of {cases}",
        metrics(&d).get("pyexec_tls_handshake_failures_total") - failures_before
    );
    // Which refusal each was: only the debug log says. The counter can move before the
    // log line reaches the test's reader of the daemon's stderr, so the lines are awaited.
    let reasons: Vec<&str> = at_once
        .iter()
        .map(|c| c.2)
        .chain(silent.iter().map(|c| c.3))
        .chain(["PROXY header cut short after 20 bytes"])
        .collect();
    wait_until(Duration::from_secs(5), || {
        let log = d.log();
        reasons.iter().all(|r| log.contains(r))
    });
    let log = d.log();
    for reason in reasons {
        assert!(
            log.contains(reason),
            "no refusal saying {reason:?} in the log\n{log}"
        );
    }
    assert_eq!(metrics(&d).get("pyexec_accepted_sessions_total"), 0.0);
    assert_back_to_idle(&d, base, "after the bad headers");
    runtime().block_on(assert_serves(
        &d,
        &valid,
        "a valid header after the bad ones",
    ));
    d.stop();
}

#[test]
fn without_the_flag_a_proxy_header_is_garbage_to_tls() {
    let d = Daemon::start(&[]);
    let base = idle_baseline(&d);
    let header = proxy_header("203.0.113.7:40000".parse().unwrap(), &[]);
    let rt = runtime();
    let refused = rt.block_on(proxied(&d, &header));
    assert!(
        refused.is_err(),
        "the handshake behind a PROXY header succeeded"
    );
    // As any non-TLS bytes: a TLS alert, the close, and a failed handshake counted.
    let (reply, _) = open_for(d.addr, [header, client_hello_bytes(&d)].concat(), None);
    assert_eq!(reply.first(), Some(&0x15), "a TLS alert record: {reply:?}");
    assert!(wait_until(Duration::from_secs(5), || metrics(&d)
        .get("pyexec_tls_handshake_failures_total")
        == 2.0));
    assert!(d.log().contains("TLS handshake failed"));
    assert!(!d.log().contains("203.0.113.7"), "the header was believed");
    assert_eq!(metrics(&d).get("pyexec_accepted_sessions_total"), 0.0);
    assert_back_to_idle(&d, base, "after PROXY headers without the flag");
    assert_healthy(&d);
    d.stop();
}
