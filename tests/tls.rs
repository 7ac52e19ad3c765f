//! Who gets past the handshake: TLS 1.3 clients that trust our CA, and nobody else.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::{daemon::*, processes::*, PYEXEC};
use rustls::pki_types::ServerName;

fn tls12_only_config(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pyexec::tls::load_certs(ca).unwrap() {
        roots.add(cert).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(pyexec::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[test]
fn tls12_client_is_refused_at_the_handshake() {
    let d = Daemon::start(&[]);
    let mut conn = rustls::ClientConnection::new(
        tls12_only_config(&d.ca()),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut sock = TcpStream::connect(d.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let err = conn
        .complete_io(&mut sock)
        .expect_err("TLS 1.2 handshake must fail");
    let text = err.to_string();
    assert!(
        text.contains("ProtocolVersion") || text.contains("protocol version"),
        "expected a protocol_version alert, got: {text}"
    );
    assert!(!conn.is_handshaking() || conn.protocol_version().is_none());
    d.stop();
}

#[test]
fn plaintext_client_gets_no_session() {
    let d = Daemon::start(&[]);
    let mut sock = TcpStream::connect(d.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A plaintext pyexec HELLO frame, as a confused client might send it.
    let hello = br#"{"version":1,"script_size":11}"#;
    let mut frame = ((hello.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(0x01);
    frame.extend_from_slice(hello);
    sock.write_all(&frame).unwrap();
    let mut reply = Vec::new();
    let _ = sock.read_to_end(&mut reply);
    // At most a TLS alert record (content type 21), never a pyexec frame.
    assert!(
        reply.is_empty() || reply[0] == 21,
        "unexpected reply to plaintext: {reply:?}"
    );
    // And a real client is still served.
    assert_eq!(d.run("print('ok')\n", &[], b"").status.code(), Some(0));
    d.stop();
}

#[test]
fn client_trusting_another_ca_fails_with_125() {
    let d = Daemon::start(&[]);
    let other = tempfile::tempdir().unwrap();
    let paths = pyexec::certs::generate(other.path(), &[], false).unwrap();
    let out = std::process::Command::new(PYEXEC)
        .args(["--server", &d.addr.to_string(), "--ca"])
        .arg(&paths.ca_cert)
        .arg(d.script_file("print('never')\n"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(stdout_str(&out), "");
    let err = stderr_str(&out);
    assert!(err.starts_with("pyexec: TLS handshake with"), "{err}");
    assert!(err.contains("certificate"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    d.stop();
}

#[test]
fn unreachable_server_and_missing_ca_give_125() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("s.py");
    std::fs::write(&script, "print(1)\n").unwrap();
    let paths = pyexec::certs::generate(dir.path(), &[], false).unwrap();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new(PYEXEC)
        .args(["--server", &format!("127.0.0.1:{port}"), "--ca"])
        .arg(&paths.ca_cert)
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr_str(&out).starts_with("pyexec: cannot connect to 127.0.0.1:"),
        "{}",
        stderr_str(&out)
    );

    let out = std::process::Command::new(PYEXEC)
        .args(["--server", "127.0.0.1:1", "--ca", "/nonexistent/ca.pem"])
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr_str(&out).contains("/nonexistent/ca.pem"),
        "{}",
        stderr_str(&out)
    );
}

/// `--ca system`: the system's trusted CAs, from SSL_CERT_FILE or the distribution's
/// bundle; our own CA is trusted exactly when that bundle holds it.
#[test]
fn ca_system_trusts_the_system_bundle_and_nothing_else() {
    let d = Daemon::start(&[]);
    let other = tempfile::tempdir().unwrap();
    let other_ca = pyexec::certs::generate(other.path(), &[], false)
        .unwrap()
        .ca_cert;
    // A bundle like the system's: several CAs, ours among them.
    let bundle = other.path().join("bundle.pem");
    let mut pem = std::fs::read(&other_ca).unwrap();
    pem.extend(std::fs::read(d.ca()).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let script = d.script_file("print('trusted')\n");
    let run = |ca: &str, bundle: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(PYEXEC);
        cmd.args(["--server", &d.addr.to_string()])
            .env("PYEXEC_CA", ca)
            .env_remove("SSL_CERT_FILE")
            .arg(&script);
        if let Some(b) = bundle {
            cmd.env("SSL_CERT_FILE", b);
        }
        cmd.output().unwrap()
    };

    let out = run("system", Some(&bundle));
    assert_eq!(out.status.code(), Some(0), "{}", stderr_str(&out));
    assert_eq!(stdout_str(&out), "trusted\n");

    // A bundle without our CA: the handshake fails on the certificate.
    let out = run("system", Some(&other_ca));
    assert_eq!(out.status.code(), Some(125));
    let err = stderr_str(&out);
    assert!(err.starts_with("pyexec: TLS handshake with"), "{err}");
    assert!(err.contains("certificate"), "{err}");

    // SSL_CERT_FILE naming nothing: said, with the path.
    let out = run(
        "system",
        Some(std::path::Path::new("/nonexistent/bundle.pem")),
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr_str(&out).contains("/nonexistent/bundle.pem"),
        "{}",
        stderr_str(&out)
    );
    assert_eq!(stderr_str(&out).lines().count(), 1, "{}", stderr_str(&out));

    // The host's own bundle (or none): a private CA is not in it either way.
    let out = run("system", None);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr_str(&out);
    assert!(
        err.contains("certificate") || err.contains("no system certificate bundle"),
        "{err}"
    );
    assert!(!err.contains("give the server's CA certificate"), "{err}");
    d.stop();
}
