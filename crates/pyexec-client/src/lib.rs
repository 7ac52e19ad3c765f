//! The client side of the protocol: connect, send a script, stream its I/O, return its end.
//!
//! Used by the `pyexec` binary (`src/bin/pyexec.rs`), the benchmark and the tests. Generic
//! over the streams, so a caller can hand it the terminal or in-memory buffers alike.
//! This crate does not depend on the daemon: building `pyexec` compiles neither actix nor
//! bollard. The daemon depends on it for what both ends share (`tls`, `units`).

// Unsafe code only where a syscall has no safe wrapper (`stdio`), allowed there with a
// comment.
#![deny(unsafe_code)]

pub mod stdio;
pub mod tls;
pub mod units;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_util::codec::{FramedRead, FramedWrite};

use pyexec_protocol::{
    exit, CodecError, End, ErrorMsg, Frame, FrameCodec, Hello, Started, Usage, Welcome, DATA_CHUNK,
    HEADER_LEN, MAX_FRAME_PAYLOAD, PROTOCOL_VERSION,
};

use crate::tls::TlsError;

pub const DEFAULT_SERVER: &str = "localhost:12344";
pub const DEFAULT_CA: &str = "certs/ca.pem";

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port`; the host is also the name the server's certificate must carry.
    pub server: String,
    /// PEM file with the CA certificate(s) to trust, or `tls::SYSTEM_CA` for the system's.
    pub ca: PathBuf,
    /// Bound on TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Client certificate and key, for servers that require mutual TLS.
    pub identity: Option<tls::Identity>,
}

impl ClientConfig {
    pub fn new(server: impl Into<String>, ca: impl Into<PathBuf>) -> Self {
        ClientConfig {
            server: server.into(),
            ca: ca.into(),
            connect_timeout: Duration::from_secs(10),
            identity: None,
        }
    }
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub script: Bytes,
    /// File name shown as `sys.argv[0]` and in tracebacks (e.g. `hello.py`).
    pub name: Option<String>,
    /// `sys.argv[1:]`.
    pub args: Vec<String>,
    /// A time limit shorter than the server's, enforced by the server.
    pub timeout: Option<Duration>,
    /// The server's image to run in, by name; `None` is its default.
    pub image: Option<String>,
}

/// Requests from the user while the script runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Send SIGINT to the script (first Ctrl-C).
    Interrupt,
    /// End the session (second Ctrl-C).
    Cancel,
}

/// Things the caller may want to show while the session runs.
#[derive(Debug, Clone)]
pub enum Notice {
    Welcome(Welcome),
    Queued(u32),
    Started(Started),
}

/// The streams and channels of one run.
pub struct Io<I, O, E> {
    /// The script's stdin; `None` gives the script EOF at once.
    pub stdin: Option<I>,
    pub stdout: O,
    pub stderr: E,
    pub control: Option<mpsc::UnboundedReceiver<Control>>,
    pub notices: Option<mpsc::UnboundedSender<Notice>>,
}

/// How the session ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The server's `END`, with what the script used (`end.usage`, protocol §4.5).
    pub end: End,
    pub session: String,
    /// Our stdout was closed by its reader (EPIPE); the session was cancelled then.
    pub stdout_closed: bool,
}

impl Outcome {
    /// The status `pyexec` exits with (protocol §9): the server's `END.exit_code`, or
    /// `exit::STDOUT_CLOSED` when our stdout was closed, as a local process would.
    pub fn exit_code(&self) -> i32 {
        if self.stdout_closed {
            exit::STDOUT_CLOSED
        } else {
            self.end.exit_code
        }
    }
}

/// What the script used, as `pyexec --stats` prints it (after its `pyexec: ` prefix):
/// `cpu 1.02s, peak memory 104.3 MiB, output 12 bytes`. Always the three parts in this
/// order; `?` stands for a value the server did not report (an older server, or one that
/// could not tell, e.g. after killing the container on a timeout).
pub fn describe_usage(usage: &Usage) -> String {
    fn or_unknown(value: Option<u64>, format: impl Fn(u64) -> String) -> String {
        value.map_or_else(|| "?".to_string(), format)
    }
    let duration = |ms| units::format_duration(Duration::from_millis(ms));
    format!(
        "cpu {}, peak memory {}, output {}",
        or_unknown(usage.cpu_ms, duration),
        or_unknown(usage.peak_memory_bytes, units::format_size_approx),
        or_unknown(usage.output_bytes, units::format_size_approx),
    )
}

/// Why the script could not be run (the CLI exits `exit::CANNOT_RUN`, 125, for all of
/// these).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {server}: {source}")]
    Connect {
        server: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to {0}")]
    ConnectTimeout(String),
    #[error("invalid server address '{0}' (expected HOST:PORT)")]
    BadServer(String),
    #[error(transparent)]
    Config(#[from] TlsError),
    #[error("TLS handshake with {server} failed: {source}")]
    Tls {
        server: String,
        source: std::io::Error,
    },
    /// The server refused or aborted the session with an ERROR frame.
    #[error("{}", .0.message)]
    Server(ErrorMsg),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The request itself cannot be sent (e.g. arguments over the limits).
    #[error("{0}")]
    Request(String),
    #[error("connection lost: {0}")]
    Io(std::io::Error),
}

impl From<CodecError> for ClientError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(e) => ClientError::Io(e),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

fn host_of(server: &str) -> Option<&str> {
    let (host, port) = server.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Opens a TLS 1.3 connection to the server.
pub async fn connect(cfg: &ClientConfig) -> Result<Tls, ClientError> {
    let host = host_of(&cfg.server).ok_or_else(|| ClientError::BadServer(cfg.server.clone()))?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| ClientError::BadServer(cfg.server.clone()))?;
    let connector = TlsConnector::from(tls::client_config(&cfg.ca, cfg.identity.as_ref())?);
    let server = cfg.server.clone();
    let connecting = async {
        let tcp = TcpStream::connect(&cfg.server)
            .await
            .map_err(|source| ClientError::Connect {
                server: server.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(name, tcp)
            .await
            .map_err(|source| ClientError::Tls {
                server: server.clone(),
                source,
            })
    };
    tokio::time::timeout(cfg.connect_timeout, connecting)
        .await
        .map_err(|_| ClientError::ConnectTimeout(cfg.server.clone()))?
}

/// Checks what the server would refuse anyway, before connecting: clearer, and nothing
/// is sent in vain.
fn check_hello(hello: &Hello) -> Result<(), ClientError> {
    pyexec_protocol::check_args(&hello.args).map_err(|e| ClientError::Request(e.to_string()))?;
    let mut encoded = bytes::BytesMut::new();
    Frame::Hello(hello.clone())
        .encode(&mut encoded)
        .map_err(|_| {
            ClientError::Request(format!(
                "arguments too large to send: encoded, they exceed the frame limit of {} bytes",
                MAX_FRAME_PAYLOAD
            ))
        })?;
    Ok(())
}

/// Asks the server who it is (a HELLO with `probe`): returns its WELCOME. Runs nothing.
pub async fn probe(cfg: &ClientConfig) -> Result<Welcome, ClientError> {
    let stream = connect(cfg).await?;
    let mut framed = tokio_util::codec::Framed::new(stream, FrameCodec::new());
    framed
        .send(Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            script_size: 0,
            args: Vec::new(),
            name: None,
            client: format!("pyexec {}", env!("CARGO_PKG_VERSION")),
            timeout_ms: None,
            probe: true,
            features: Vec::new(),
            image: None,
        }))
        .await?;
    let mut welcome = None;
    while let Some(frame) = framed.next().await {
        match frame? {
            Frame::Welcome(w) => welcome = Some(w),
            Frame::End(_) => break,
            Frame::Error(e) => return Err(ClientError::Server(e)),
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected {} frame in answer to a probe",
                    other.frame_type().name()
                )))
            }
        }
    }
    let _ = SinkExt::<Frame>::close(&mut framed).await;
    welcome.ok_or_else(|| ClientError::Protocol("no WELCOME in answer to a probe".into()))
}

/// Runs one script to its end.
pub async fn run<I, O, E>(
    cfg: &ClientConfig,
    req: Request,
    io: Io<I, O, E>,
) -> Result<Outcome, ClientError>
where
    I: AsyncRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    // Pipelined: HELLO and the whole script go out before the server has answered, from a
    // task of their own so that an early ERROR is read while the upload is still going.
    let hello = Hello {
        version: PROTOCOL_VERSION,
        script_size: req.script.len() as u64,
        args: req.args,
        name: req.name,
        client: format!("pyexec {}", env!("CARGO_PKG_VERSION")),
        timeout_ms: req.timeout.map(|t| t.as_millis() as u64),
        probe: false,
        features: Vec::new(),
        image: req.image,
    };
    check_hello(&hello)?;
    let stream = connect(cfg).await?;
    let (read, write) = tokio::io::split(stream);
    // Room for two of the largest frames, so that a flood is read without regrowing.
    let mut frames = FramedRead::with_capacity(
        read,
        FrameCodec::new(),
        2 * (MAX_FRAME_PAYLOAD + HEADER_LEN),
    );
    let (tx, rx) = mpsc::channel::<Frame>(16);
    let mut writer = tokio::spawn(write_frames(FramedWrite::new(write, FrameCodec::new()), rx));
    let mut writer_done = false;

    let Io {
        stdin,
        mut stdout,
        mut stderr,
        mut control,
        notices,
    } = io;
    let notify = |n| {
        if let Some(tx) = &notices {
            let _ = tx.send(n);
        }
    };
    let send = |frame| {
        let tx = tx.clone();
        async move { tx.send(frame).await.is_ok() }
    };
    let window = Arc::new(Semaphore::new(0));
    let mut window_size = 0usize;
    let uploader = tokio::spawn(upload(hello, req.script, stdin, tx.clone(), window.clone()));
    let mut session = String::new();
    let mut stdout_closed = false;

    let result = loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            // The connection cannot carry what we send: no END will come.
            written = &mut writer, if !writer_done => {
                writer_done = true;
                match written {
                    Ok(Err(e)) => break Err(e.into()),
                    _ => continue,
                }
            }
            Some(c) = async { match control.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                let frame = match c {
                    Control::Interrupt => Frame::Signal(exit::SIGINT as u8),
                    Control::Cancel => Frame::Cancel,
                };
                send(frame).await;
                continue;
            }
        };
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => break Err(e.into()),
            None => {
                break Err(ClientError::Protocol(
                    "the server closed the connection before the session ended".into(),
                ))
            }
        };
        match frame {
            Frame::Welcome(w) => {
                session = w.session.clone();
                window_size = w.limits.stdin_window as usize;
                window.add_permits(window_size);
                notify(Notice::Welcome(w));
            }
            Frame::Queued(q) => notify(Notice::Queued(q.position)),
            Frame::Started(s) => notify(Notice::Started(s)),
            Frame::Stdout(data) => {
                if stdout_closed {
                    continue;
                }
                if let Err(e) = write_now(&mut stdout, &data).await {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        stdout_closed = true;
                        send(Frame::Cancel).await;
                    } else {
                        break Err(ClientError::Io(e));
                    }
                }
            }
            Frame::Stderr(data) => {
                let _ = write_now(&mut stderr, &data).await;
            }
            Frame::StdinCredit(n) => {
                if window.available_permits() + n as usize > window_size {
                    break Err(ClientError::Protocol(format!(
                        "STDIN_CREDIT of {n} bytes for stdin never sent"
                    )));
                }
                window.add_permits(n as usize)
            }
            Frame::End(end) => {
                break Ok(Outcome {
                    end,
                    session: session.clone(),
                    stdout_closed,
                })
            }
            Frame::Error(e) => break Err(ClientError::Server(e)),
            other => {
                break Err(ClientError::Protocol(format!(
                    "unexpected {} frame from the server",
                    other.frame_type().name()
                )))
            }
        }
    };

    uploader.abort();
    // Closing the last sender makes the writer send close_notify; then wait for the
    // server's close so that nothing is cut off by a reset.
    drop(tx);
    if !writer_done {
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }
    if result.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = frames.next().await {}
        })
        .await;
    }
    result
}

async fn write_now<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    w.write_all(data).await?;
    w.flush().await
}

/// Sends HELLO and the script, then stdin as STDIN frames, never more than the server's
/// window allows (the window opens with WELCOME).
async fn upload<I: AsyncRead + Unpin>(
    hello: Hello,
    mut script: Bytes,
    input: Option<I>,
    tx: mpsc::Sender<Frame>,
    window: Arc<Semaphore>,
) {
    if tx.send(Frame::Hello(hello)).await.is_err() {
        return;
    }
    while !script.is_empty() {
        let chunk = script.split_to(script.len().min(DATA_CHUNK));
        if tx.send(Frame::Script(chunk)).await.is_err() {
            return;
        }
    }
    let Some(mut input) = input else {
        let _ = tx.send(Frame::StdinEof).await;
        return;
    };
    // Read straight into the buffer the frame will carry: no copy per chunk, and the
    // space comes back for reuse once the frame before has been written.
    let mut buf = BytesMut::with_capacity(DATA_CHUNK);
    loop {
        // Take what the window allows (at least one byte) before reading, so that a
        // chunk once read can always be sent.
        let Ok(first) = window.acquire().await else {
            return;
        };
        first.forget();
        let extra = window.available_permits().min(DATA_CHUNK - 1);
        if let Ok(more) = window.try_acquire_many(extra as u32) {
            more.forget();
        }
        let cap = 1 + extra;
        buf.reserve(cap);
        let n = match input.read_buf(&mut (&mut buf).limit(cap)).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(Frame::StdinEof).await;
                return;
            }
            Ok(n) => n,
        };
        window.add_permits(cap - n);
        if tx.send(Frame::Stdin(buf.split().freeze())).await.is_err() {
            return;
        }
    }
}

/// Writes frames in order, flushing whenever nothing else is waiting, and closes the TLS
/// stream (close_notify) once every sender is gone.
async fn write_frames(
    mut sink: FramedWrite<tokio::io::WriteHalf<Tls>, FrameCodec>,
    mut rx: mpsc::Receiver<Frame>,
) -> Result<(), CodecError> {
    while let Some(frame) = rx.recv().await {
        sink.feed(frame).await?;
        if rx.is_empty() {
            SinkExt::<Frame>::flush(&mut sink).await?;
        }
    }
    SinkExt::<Frame>::close(&mut sink).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        assert_eq!(host_of("localhost:12344"), Some("localhost"));
        assert_eq!(host_of("[::1]:12344"), Some("::1"));
        assert_eq!(host_of("10.0.0.1:1"), Some("10.0.0.1"));
        assert_eq!(host_of("localhost"), None);
        assert_eq!(host_of(":12344"), None);
        assert_eq!(host_of("h:99999"), None);
    }

    #[test]
    fn usage_lines() {
        let usage = Usage {
            cpu_ms: Some(1020),
            peak_memory_bytes: Some(109_366_477),
            output_bytes: Some(12),
        };
        assert_eq!(
            describe_usage(&usage),
            "cpu 1.02s, peak memory 104.3 MiB, output 12 bytes"
        );
        assert_eq!(
            describe_usage(&Usage::default()),
            "cpu ?, peak memory ?, output ?"
        );
        let usage = Usage {
            cpu_ms: Some(7),
            peak_memory_bytes: None,
            output_bytes: Some(0),
        };
        assert_eq!(
            describe_usage(&usage),
            "cpu 7ms, peak memory ?, output 0 bytes"
        );
    }
}
