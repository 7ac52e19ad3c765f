//! A raw protocol client for hostile tests: real TLS 1.3 (tokio-rustls, trusting the
//! daemon's CA), frames written by hand whatever they contain, and the checks that read
//! the server's answer.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use pyexec::protocol::{EndReason, ErrorCode, ErrorMsg, Frame, FrameCodec};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::os::fd::AsRawFd;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::FramedRead;

use super::daemon::Daemon;

pub type Tls = TlsStream<TcpStream>;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What reading the next frame gave.
#[derive(Debug)]
pub enum Got {
    Frame(Frame),
    /// A clean end of stream (close_notify or EOF at a frame boundary).
    Closed,
    /// A reset, a TLS error or a frame the codec refused.
    Broken(String),
}

/// A raw protocol connection: frames are written by hand, whatever they contain.
pub struct Raw {
    pub frames: FramedRead<ReadHalf<Tls>, FrameCodec>,
    pub out: WriteHalf<Tls>,
    pub fd: i32,
}

impl Raw {
    pub async fn connect(d: &Daemon) -> Raw {
        let tcp = TcpStream::connect(d.addr).await.unwrap();
        Self::over(tcp, d).await.expect("TLS handshake")
    }

    /// The TLS handshake over a connection the test opened itself: from a source address
    /// of its choosing, through a load balancer, or after bytes of its own (a PROXY
    /// header). Trusts `d`'s CA. The handshake's failure is returned.
    pub async fn over(tcp: TcpStream, d: &Daemon) -> std::io::Result<Raw> {
        let fd = tcp.as_raw_fd();
        let connector = TlsConnector::from(tls_config(d));
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        let (read, out) = tokio::io::split(tls);
        Ok(Raw {
            frames: FramedRead::new(read, FrameCodec::new()),
            out,
            fd,
        })
    }

    /// Writes raw bytes; the server may already have closed, so errors are returned.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes).await?;
        self.out.flush().await
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf).unwrap();
        self.send_bytes(&buf).await.expect("send a frame");
    }

    /// HELLO announcing `size` bytes, then `script` (which may be shorter: a partial upload).
    pub async fn hello(&mut self, size: u64, script: &[u8]) {
        self.send(hello(size)).await;
        for chunk in script.chunks(65536) {
            self.send(Frame::Script(Bytes::copy_from_slice(chunk)))
                .await;
        }
    }

    /// A whole script with no stdin.
    pub async fn run(&mut self, script: &str) {
        self.hello(script.len() as u64, script.as_bytes()).await;
        self.send(Frame::StdinEof).await;
    }

    pub async fn next(&mut self, within: Duration) -> Got {
        match tokio::time::timeout(within, self.frames.next()).await {
            Err(_) => panic!("no frame and no close within {within:?}"),
            Ok(None) => Got::Closed,
            Ok(Some(Ok(frame))) => Got::Frame(frame),
            Ok(Some(Err(e))) => Got::Broken(e.to_string()),
        }
    }

    /// Reads until the terminal frame or the end of the connection: the frames before
    /// it, and the terminal frame if there was one.
    pub async fn until_end(&mut self, within: Duration) -> (Vec<Frame>, Option<Frame>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Got::Frame(f) if f.is_terminal() => return (before, Some(f)),
                Got::Frame(f) => before.push(f),
                Got::Closed => return (before, None),
                Got::Broken(why) => {
                    eprintln!("the connection broke: {why}");
                    return (before, None);
                }
            }
        }
    }

    /// Reads until the script's stdout contains `needle`; returns the stdout so far and
    /// the session's id (from WELCOME).
    pub async fn stdout_until(&mut self, needle: &[u8], within: Duration) -> (Vec<u8>, String) {
        let deadline = tokio::time::Instant::now() + within;
        let (mut out, mut id) = (Vec::new(), String::new());
        while !out.windows(needle.len()).any(|w| w == needle) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Got::Frame(Frame::Welcome(w)) => id = w.session,
                Got::Frame(Frame::Stdout(b)) => out.extend_from_slice(&b),
                Got::Frame(f) if f.is_terminal() => panic!("ended early: {f:?}"),
                Got::Frame(_) => {}
                other => panic!("connection ended early: {other:?}"),
            }
        }
        (out, id)
    }

    /// Reads WELCOME (the first frame); returns the session's id.
    pub async fn welcome(&mut self) -> String {
        match self.next(Duration::from_secs(10)).await {
            Got::Frame(Frame::Welcome(w)) => w.session,
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }

    /// Makes the next close a reset (SO_LINGER 0) instead of a FIN.
    pub fn reset_on_close(&self) {
        set_linger_zero(self.fd);
    }
}

/// A TLS 1.3 client configuration trusting the daemon's CA and offering ALPN `pyexec/1`,
/// as the reference client's, built here with rustls alone.
pub fn tls_config(d: &Daemon) -> Arc<rustls::ClientConfig> {
    tls_config_as(d, None)
}

/// `tls_config`, presenting the client certificate `client-NAME.pem` of the daemon's
/// directory (`pyexecd gen-certs --client NAME`) when a name is given.
pub fn tls_config_as(d: &Daemon, client: Option<&str>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(d.ca()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(name) => {
            let dir = d.dir.path();
            let chain = CertificateDer::pem_file_iter(dir.join(format!("client-{name}.pem")))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(
                dir.join(format!("client-{name}.key")),
            )
            .unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"pyexec/1".to_vec()];
    Arc::new(config)
}

pub fn set_linger_zero(fd: i32) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER)");
}

/// Built from JSON, as a peer would send it, so that fields added later take their
/// defaults here too.
pub fn hello(size: u64) -> Frame {
    Frame::Hello(
        serde_json::from_value(serde_json::json!({
            "version": 1,
            "script_size": size,
            "client": "hostile test",
        }))
        .unwrap(),
    )
}

/// A frame with any type byte and payload: `u32` length (type byte included), type, body.
pub fn raw_frame(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(ty);
    v.extend_from_slice(payload);
    v
}

/// A HELLO whose JSON is given verbatim.
pub fn raw_hello(json: &str) -> Vec<u8> {
    raw_frame(0x01, json.as_bytes())
}

pub fn assert_error(terminal: &Option<Frame>, code: ErrorCode, message: &str, what: &str) {
    match terminal {
        Some(Frame::Error(ErrorMsg {
            code: c,
            message: m,
        })) => {
            assert_eq!(*c, code, "{what}: {m}");
            assert!(
                m.contains(message),
                "{what}: message {m:?} does not contain {message:?}"
            );
        }
        other => panic!("{what}: expected ERROR {code:?}, got {other:?}"),
    }
}

/// The terminal frame is END with this reason and exit code.
pub fn assert_end(terminal: &Option<Frame>, reason: EndReason, exit_code: i32, what: &str) {
    assert!(
        matches!(terminal, Some(Frame::End(e)) if e.reason == reason && e.exit_code == exit_code),
        "{what}: expected END {reason:?} {exit_code}, got {terminal:?}"
    );
}

/// The ClientHello a real TLS 1.3 client would send, as bytes on the wire.
pub fn client_hello_bytes(d: &Daemon) -> Vec<u8> {
    let mut conn =
        rustls::ClientConnection::new(tls_config(d), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    assert!(out.len() > 100 && out[0] == 0x16, "a handshake record");
    out
}

/// Reads a plain TCP socket until it is closed (EOF or reset); returns what came and when
/// the close came. Panics if it is still open after `within`.
pub fn read_until_closed(sock: &mut std::net::TcpStream, within: Duration) -> (Vec<u8>, Instant) {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return (got, Instant::now()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (got, Instant::now())
            }
            Err(e) => panic!("still open after {within:?} ({e}); got {got:?}"),
        }
    }
}
