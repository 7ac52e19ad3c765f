//! The client side of the protocol: connect, send a script, stream its I/O, return its end.
//!
//! Used by the `pyexec` binary (`src/bin/pyexec.rs`), the benchmark and the tests. Generic
//! over the streams, so a caller can hand it the terminal or in-memory buffers alike.
//! This crate does not depend on the daemon: building `pyexec` compiles neither actix nor
//! bollard. The daemon depends on it for what both ends share (`tls`, `units`).

// Unsafe code only where a syscall has no safe wrapper (`stdio`), allowed there with a
// comment.
#![deny(unsafe_code)]

pub mod files;
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

use pyexec_protocol::files::{check_name, check_pattern, FilesHello, FilesOutEnd, FEATURE};
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
    /// Files to put beside the script (feature `files`).
    pub files: Vec<files::FileIn>,
    /// Patterns of result files to bring back after the script (feature `files`).
    pub get: Vec<String>,
    /// Where result files are written (default: the current directory).
    pub out_dir: Option<PathBuf>,
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
    /// Result files saved (feature `files`), in the order they came.
    pub saved: Vec<files::Saved>,
    /// The server's account of the files out: unmatched patterns, skipped names.
    pub files_end: Option<FilesOutEnd>,
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
    /// A local file could not be sent, or a result file not written.
    #[error(transparent)]
    Files(#[from] files::LocalError),
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
            files: None,
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
    // With files, the script waits for WELCOME: a server that does not grant the feature
    // must not run a script whose files never come (protocol §10.2).
    let wants_files = !req.files.is_empty() || !req.get.is_empty();
    let files_hello = if wants_files {
        let bytes = files::check_set(&req.files).map_err(files::LocalError::from)?;
        for pattern in &req.get {
            check_pattern(pattern).map_err(|e| {
                ClientError::Request(format!("--get pattern '{pattern}' refused: {e}"))
            })?;
        }
        Some(FilesHello {
            count: u32::try_from(req.files.len())
                .map_err(|_| ClientError::Request("too many files".into()))?,
            bytes,
            get: req.get.clone(),
        })
    } else {
        None
    };
    let hello = Hello {
        version: PROTOCOL_VERSION,
        script_size: req.script.len() as u64,
        args: req.args,
        name: req.name,
        client: format!("pyexec {}", env!("CARGO_PKG_VERSION")),
        timeout_ms: req.timeout.map(|t| t.as_millis() as u64),
        probe: false,
        features: if wants_files {
            vec![FEATURE.to_string()]
        } else {
            Vec::new()
        },
        files: files_hello,
        image: req.image,
    };
    check_hello(&hello)?;
    let out_dir = files::OutDir::new(req.out_dir.clone().unwrap_or_else(|| PathBuf::from(".")));
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
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<bool>();
    let mut go_tx = wants_files.then_some(go_tx);
    let local_failure = Arc::new(std::sync::Mutex::new(None::<files::LocalError>));
    let uploader = tokio::spawn(upload(
        Upload {
            hello,
            script: req.script,
            files: req.files,
            go: wants_files.then_some(go_rx),
            failure: local_failure.clone(),
        },
        stdin,
        tx.clone(),
        window.clone(),
    ));
    let mut session = String::new();
    let mut stdout_closed = false;
    // Files out: the bound announced, what has come, the file being received.
    let mut refused_files = false;
    let mut out_cap: Option<u64> = None;
    let mut out_total: u64 = 0;
    let mut incoming: Option<files::Incoming> = None;
    let mut saved = Vec::new();
    let mut files_end = None;

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
                if let Some(go) = go_tx.take() {
                    let granted = w.features.iter().any(|f| f == FEATURE);
                    match (granted, w.limits.files) {
                        (true, Some(limits)) => out_cap = Some(limits.files_out_bytes),
                        // Not a byte of the script was sent: cancel, and nothing runs.
                        _ => {
                            refused_files = true;
                            send(Frame::Cancel).await;
                        }
                    }
                    let _ = go.send(out_cap.is_some());
                }
                notify(Notice::Welcome(w));
            }
            Frame::FileOut(header) => {
                let Some(cap) = out_cap.filter(|_| files_end.is_none() && incoming.is_none())
                else {
                    break Err(ClientError::Protocol("unexpected FILE_OUT frame".into()));
                };
                if let Err(e) = check_name(&header.name) {
                    break Err(ClientError::Protocol(format!(
                        "the server sent a file named {:?}, refused: {e}",
                        header.name
                    )));
                }
                out_total = out_total.saturating_add(header.size);
                if out_total > cap {
                    break Err(ClientError::Protocol(format!(
                        "the server sent more than the {cap} bytes of files it announced"
                    )));
                }
                match out_dir.begin(&header.name, header.size) {
                    Ok(f) if header.size == 0 => match f.finish() {
                        Ok(s) => saved.push(s),
                        Err(e) => break Err(e.into()),
                    },
                    Ok(f) => incoming = Some(f),
                    Err(e) => break Err(e.into()),
                }
            }
            Frame::FileOutData(data) => {
                let Some(f) = incoming.as_mut().filter(|f| f.left() >= data.len() as u64) else {
                    break Err(ClientError::Protocol(
                        "FILE_OUT_DATA beyond the file's announced size".into(),
                    ));
                };
                if let Err(e) = f.write(&data) {
                    break Err(e.into());
                }
                if f.left() == 0 {
                    match incoming.take().expect("checked").finish() {
                        Ok(s) => saved.push(s),
                        Err(e) => break Err(e.into()),
                    }
                }
            }
            Frame::FilesOutEnd(end) => {
                if out_cap.is_none() || files_end.is_some() || incoming.is_some() {
                    break Err(ClientError::Protocol("unexpected FILES_OUT_END frame".into()));
                }
                files_end = Some(end);
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
            Frame::End(_) if refused_files => {
                break Err(ClientError::Request(
                    "this server does not take files (it did not grant the files feature); nothing was run".into(),
                ))
            }
            Frame::End(_) if local_failure.lock().is_ok_and(|f| f.is_some()) => {
                let failure = local_failure.lock().ok().and_then(|mut f| f.take());
                break Err(failure.expect("checked").into());
            }
            Frame::End(_) if incoming.is_some() => {
                break Err(ClientError::Protocol(
                    "END in the middle of a result file".into(),
                ))
            }
            Frame::End(end) => {
                break Ok(Outcome {
                    end,
                    session: session.clone(),
                    stdout_closed,
                    saved: std::mem::take(&mut saved),
                    files_end: files_end.take(),
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

/// What the upload task sends before stdin.
struct Upload {
    hello: Hello,
    script: Bytes,
    files: Vec<files::FileIn>,
    /// With files: whether WELCOME granted them; the script waits for it.
    go: Option<tokio::sync::oneshot::Receiver<bool>>,
    /// A local file that could not be read while sending (the session is cancelled).
    failure: Arc<std::sync::Mutex<Option<files::LocalError>>>,
}

/// Takes between 1 and `max` bytes of STDIN window (waiting for at least one).
async fn take_window(window: &Semaphore, max: usize) -> Option<usize> {
    window.acquire().await.ok()?.forget();
    let extra = window.available_permits().min(max.saturating_sub(1));
    if let Ok(more) = window.try_acquire_many(extra as u32) {
        more.forget();
    }
    Some(1 + extra)
}

/// Sends one file as FILE_IN then FILE_IN_DATA frames of at most DATA_CHUNK, within the
/// STDIN window, which file content shares (protocol §10.2): a large file is read a
/// chunk at a time, never held whole.
async fn send_file(
    file: files::FileIn,
    tx: &mpsc::Sender<Frame>,
    window: &Semaphore,
) -> Result<bool, files::LocalError> {
    use std::io::Read;
    let header = pyexec_protocol::files::FileHeader {
        name: file.name.clone(),
        size: file.size,
    };
    if tx.send(Frame::FileIn(header)).await.is_err() {
        return Ok(false);
    }
    let path = match &file.source {
        files::Source::Path(p) => p.display().to_string(),
        files::Source::Bytes(_) => file.name.clone(),
    };
    let read_err = |source| files::LocalError::Read {
        path: path.clone(),
        source,
    };
    let mut reader: Box<dyn Read + Send> = match file.source {
        files::Source::Path(p) => Box::new(std::fs::File::open(&p).map_err(read_err)?),
        files::Source::Bytes(b) => Box::new(std::io::Cursor::new(b)),
    };
    let mut left = file.size;
    while left > 0 {
        let Some(n) = take_window(window, (left as usize).min(DATA_CHUNK)).await else {
            return Ok(false);
        };
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match reader.read(&mut buf[got..]).map_err(read_err)? {
                0 => {
                    return Err(read_err(std::io::Error::other(
                        "it shrank while being sent",
                    )))
                }
                k => got += k,
            }
        }
        left -= n as u64;
        if tx.send(Frame::FileInData(buf.into())).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Sends HELLO and the script, then the files, then stdin as STDIN frames, never more
/// than the server's window allows (the window opens with WELCOME).
async fn upload<I: AsyncRead + Unpin>(
    up: Upload,
    input: Option<I>,
    tx: mpsc::Sender<Frame>,
    window: Arc<Semaphore>,
) {
    let Upload {
        hello,
        mut script,
        files,
        go,
        failure,
    } = up;
    if tx.send(Frame::Hello(hello)).await.is_err() {
        return;
    }
    if let Some(go) = go {
        if go.await != Ok(true) {
            return;
        }
    }
    while !script.is_empty() {
        let chunk = script.split_to(script.len().min(DATA_CHUNK));
        if tx.send(Frame::Script(chunk)).await.is_err() {
            return;
        }
    }
    for file in files {
        match send_file(file, &tx, &window).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                // Nothing runs without all its files: the bootstrap waits for them.
                if let Ok(mut f) = failure.lock() {
                    *f = Some(e);
                }
                let _ = tx.send(Frame::Cancel).await;
                return;
            }
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
