//! `pyexec`: run a Python script on a pyexecd server as if it ran here.
//!
//! Everything on stdout and stderr is the script's, byte for byte, except pyexec's own
//! messages: one line each on stderr, prefixed `pyexec: `. Those are of four kinds:
//! errors (always printed; pyexec exits 125), notes (suppressed by `--quiet`), the queue
//! position, which is shown only on a terminal and cleared when the script starts, and
//! the `--stats` line, printed only when asked for and then even with `--quiet`.

#![deny(unsafe_code)]

use std::ffi::OsString;
use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, ValueHint};
use pyexec_client::stdio::{RawOut, Stdin};
use pyexec_client::units::{format_duration, format_size, parse_duration};
use pyexec_client::{self as client, tls};
use pyexec_client::{ClientConfig, ClientError, Control, Io, Notice, Request};
use pyexec_protocol::exit::{self, exit_code_for};
use pyexec_protocol::{EndReason, Welcome};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

const EXAMPLES: &str = "\
Examples:
  pyexec hello.py                      run hello.py on the server (localhost:12344)
  pyexec job.py --verbose 3            everything after the script is sys.argv[1:]
  echo 'print(2 + 2)' | pyexec -       read the script itself from stdin
  pyexec filter.py < in.csv > out.csv  stdin, stdout and stderr are the script's
  pyexec --timeout 30s slow.py         stop the script after 30 s (exit status 124)
  pyexec --image science plot.py       run in the server's image named science
  pyexec --stats job.py                then one line on stderr: CPU time, peak memory, output
  pyexec --version                     this client's version and the server's

'pyexec --help' shows more: mutual TLS, environment variables, the exit status table.";

const LONG_HELP: &str = "\
Examples:
  pyexec hello.py                      run hello.py on the server (localhost:12344)
  pyexec job.py --verbose 3            everything after the script is sys.argv[1:]
  echo 'print(2 + 2)' | pyexec -       read the script itself from stdin
  pyexec filter.py < in.csv > out.csv  stdin, stdout and stderr are the script's
  pyexec --timeout 30s slow.py         stop the script after 30 s (exit status 124)
  pyexec --image science plot.py       run in the server's image named science
                                       (its names: pyexecd --extra-image NAME=TAG)
  pyexec -q job.py 2> job.err          job.err gets the script's stderr and nothing else
                                       (unless pyexec itself fails: exit status 125)
  pyexec --stats job.py                after the script, on stderr:
                                       pyexec: cpu 1.02s, peak memory 104.3 MiB, output 12 bytes
  pyexec --server build1:12344 --ca ca.pem job.py
                                       a server elsewhere, trusting its CA
  pyexec --cert me.pem --key me.key job.py
                                       a server that requires mutual TLS: present a client
                                       certificate (pyexecd gen-certs --client NAME issues one)
  pyexec --version                     this client's version and the server's
  pyexec --completions bash > ~/.local/share/bash-completion/completions/pyexec
  pyexec --completions zsh > ~/.zfunc/_pyexec     (with fpath+=~/.zfunc in ~/.zshrc)
  pyexec --completions fish > ~/.config/fish/completions/pyexec.fish

Environment (a flag wins over its variable):
  PYEXEC_SERVER           server to connect to, as --server (default localhost:12344)
  PYEXEC_CA               CA certificate, as --ca (default certs/ca.pem; `system`: the system's CAs)
  PYEXEC_CERT             client certificate for mutual TLS, as --cert
  PYEXEC_KEY              its private key, as --key
  PYEXEC_TIMEOUT          time limit, as --timeout (--timeout 0 lifts it for one run)
  PYEXEC_CONNECT_TIMEOUT  as --connect-timeout
  PYEXEC_IMAGE            the server's image to run in, as --image

Interaction:
  Ctrl-C sends SIGINT to the script (Python raises KeyboardInterrupt); a second Ctrl-C
  cancels the session (exit status 130); a third exits at once. While every run slot
  on the server is taken, a terminal on stderr shows the queue position on one line,
  which is cleared when the script starts; nothing is shown when stderr is a file or a
  pipe, or with --quiet.

Output:
  The script's stdout and stderr go to pyexec's stdout and stderr byte for byte, never
  mixed. pyexec's own messages go to stderr only, one line each, prefixed 'pyexec: '.
  --quiet leaves only the errors that make pyexec exit with 125, and the --stats line
  when --stats asks for it.

Exit status:
  N        the script's own (sys.exit(N); an uncaught exception gives 1)
  128+N    the script died of signal N (137 for SIGKILL)
  137      out of memory (the kernel killed the script), or the output limit was reached
  124      the session timed out (--timeout, or the server's own limit)
  130      the session was cancelled (second Ctrl-C)
  141      pyexec's stdout was closed (e.g. pyexec x.py | head -1), as SIGPIPE would
  143      the server shut down before the script finished
  125      the script could not be run: usage error, unreadable script, cannot connect,
           TLS or CA failure, server busy, script too large, protocol error, Docker
           failure on the server";

#[derive(Debug, Parser)]
#[command(
    name = "pyexec",
    about = "Run a Python script on a pyexecd server, with live stdin, stdout and stderr",
    after_help = EXAMPLES,
    after_long_help = LONG_HELP,
    disable_version_flag = true,
    override_usage = "pyexec [OPTIONS] SCRIPT [ARGS]...\n       pyexec --version\n       pyexec --completions SHELL"
)]
struct Args {
    /// Server to connect to.
    #[arg(
        long,
        env = "PYEXEC_SERVER",
        default_value = client::DEFAULT_SERVER,
        value_name = "HOST:PORT",
        value_hint = ValueHint::Hostname
    )]
    server: String,
    /// CA certificate(s) that signed the server's certificate (a PEM file or bundle), or
    /// `system` for the system's trusted CAs (SSL_CERT_FILE, else the distribution's
    /// bundle), for a server with a certificate from a public CA.
    #[arg(
        long,
        env = "PYEXEC_CA",
        default_value = client::DEFAULT_CA,
        value_name = "FILE",
        value_hint = ValueHint::FilePath
    )]
    ca: PathBuf,
    /// Client certificate (PEM), for servers that require mutual TLS.
    #[arg(
        long,
        env = "PYEXEC_CERT",
        requires = "key",
        value_name = "FILE",
        value_hint = ValueHint::FilePath
    )]
    cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(
        long,
        env = "PYEXEC_KEY",
        requires = "cert",
        value_name = "FILE",
        value_hint = ValueHint::FilePath
    )]
    key: Option<PathBuf>,
    /// Stop the script after this long (e.g. 10, 90s, 2m, 500ms); exit status 124.
    ///
    /// Counted by the server from the moment it accepts the connection, so time
    /// spent waiting in its queue counts too. The server applies the shorter of this
    /// and its own limit (see --version). 0 means no limit of pyexec's own (to
    /// override PYEXEC_TIMEOUT for one run).
    #[arg(
        long,
        env = "PYEXEC_TIMEOUT",
        value_name = "T",
        value_parser = parse_duration,
        verbatim_doc_comment
    )]
    timeout: Option<Duration>,
    /// Run in the server's image of this name (e.g. `science`) instead of its default.
    ///
    /// The names are the server operator's (pyexecd --extra-image NAME=TAG); a name the
    /// server does not offer is an error that lists the ones it does (exit status 125).
    #[arg(long, env = "PYEXEC_IMAGE", value_name = "NAME", verbatim_doc_comment)]
    image: Option<String>,
    /// Bound on connecting and the TLS handshake.
    #[arg(
        long,
        env = "PYEXEC_CONNECT_TIMEOUT",
        default_value = "10",
        value_name = "T",
        value_parser = parse_duration
    )]
    connect_timeout: Duration,
    /// Print none of pyexec's own notes, only its errors (exit status 125).
    ///
    /// Suppressed:
    ///   - the queue position (shown only when stderr is a terminal anyway);
    ///   - the note on why a script that did not exit by itself ended: "killed by
    ///     signal 9 (SIGKILL)", "session timed out after 10s", out of memory, output
    ///     limit reached, cancelled, server shutting down (the exit status tells);
    ///   - the "reading the script from the terminal" hint of `pyexec -`;
    ///   - the "cannot reach server" line of --version.
    ///
    /// Never suppressed: the script's own output, every error that makes pyexec
    /// exit with 125 (one line on stderr, prefixed 'pyexec: '), and the --stats line.
    #[arg(short, long, verbatim_doc_comment)]
    quiet: bool,
    /// After the session, print what the script used on one line on stderr.
    ///
    ///   pyexec: cpu 1.02s, peak memory 104.3 MiB, output 12 bytes
    ///
    /// cpu: CPU time (user + system) of the script and everything it started;
    /// peak memory: the container's peak, the sandbox's own interpreter (~10 MiB)
    /// included; output: the bytes of stdout and stderr delivered. All three as the
    /// server measured them. A '?' stands for a value the server did not report (an
    /// older server, or a container killed whole, e.g. on a timeout).
    ///
    /// Printed whenever the session got to its end, whatever the script's fate (an
    /// error, a signal, a timeout, out of memory), after pyexec's note on that fate;
    /// not when the script could not be run (exit status 125). --quiet does not hide
    /// it. Stdout is never touched.
    #[arg(long, verbatim_doc_comment)]
    stats: bool,
    /// Put a file beside the script, in its working directory (repeatable); =NAME gives
    /// it another name there (e.g. --file ~/data/2024.csv=data.csv).
    #[arg(long = "file", value_name = "PATH[=NAME]", value_hint = ValueHint::FilePath)]
    files: Vec<OsString>,
    /// Put a whole directory tree beside the script, under the directory's own name
    /// (`.`: its contents at the top). Symlinks, FIFOs and devices inside are refused.
    #[arg(long = "dir", value_name = "DIR", value_hint = ValueHint::DirPath)]
    dirs: Vec<PathBuf>,
    /// After the script, bring back the files matching PATTERN (repeatable): a glob
    /// relative to the script's working directory, e.g. plot.png or 'results/*.csv'.
    #[arg(long = "get", value_name = "PATTERN")]
    get: Vec<String>,
    /// Where --get writes the files it brings back (default: the current directory).
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    out_dir: Option<PathBuf>,
    /// Print pyexec's version, then ask the server for its own.
    ///
    /// Prints `pyexec <version>`, then on a second line
    ///   server <HOST:PORT>: <its version> (protocol, time limit, script and output limits)
    /// If the server cannot be reached within --connect-timeout, the reason goes to
    /// stderr instead (unless --quiet); the exit status is 0 either way.
    #[arg(short = 'V', long, verbatim_doc_comment)]
    version: bool,
    /// Print a completion script for SHELL on stdout and exit.
    #[arg(long, value_name = "SHELL")]
    completions: Option<clap_complete::Shell>,
    /// The script (`-`: read it from stdin), then its arguments (`sys.argv[1:]`).
    ///
    /// Everything after SCRIPT is the script's, even what looks like one of pyexec's
    /// flags: `pyexec job.py --help` passes --help to job.py. A script read from stdin
    /// gets no stdin of its own.
    #[arg(
        value_names = ["SCRIPT", "ARGS"],
        num_args = 1..,
        trailing_var_arg = true,
        required_unless_present_any = ["version", "completions"],
        value_hint = ValueHint::FilePath,
        verbatim_doc_comment
    )]
    command: Vec<OsString>,
}

/// Writes to stdout, ignoring a closed pipe (`pyexec --version | head -0`).
fn print_out(line: impl Display) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// One line on stderr, prefixed `pyexec: `. Newlines inside would break the promise of
/// one line per message, so they become spaces.
fn print_err(message: impl Display) {
    let text = message.to_string().replace(['\r', '\n'], " ");
    let _ = writeln!(std::io::stderr().lock(), "pyexec: {}", text.trim_end());
}

/// Prints an error and exits 125. Only for use before any queue line can be shown.
fn fail(message: impl Display) -> ! {
    print_err(message);
    std::process::exit(exit::CANNOT_RUN);
}

/// How the queue position is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueStyle {
    /// Not at all: stderr is not a terminal, or `--quiet`.
    Hidden,
    /// One line, rewritten in place and erased when the script starts.
    InPlace,
    /// A new line per change, for terminals that cannot erase (`TERM=dumb`).
    Lines,
}

/// pyexec's own messages on stderr, and the state of the queue line.
struct Messages {
    quiet: bool,
    queue: QueueStyle,
    state: Mutex<MessageState>,
}

#[derive(Debug, Default)]
struct MessageState {
    /// The queue line is on the terminal, without a newline, and must be erased before
    /// anything else is written.
    shown: bool,
    /// The position last shown, so that an unchanged one is not shown again.
    position: Option<u32>,
    /// The script started (or the session ended): no more queue lines.
    over: bool,
    /// The script's last output on the stream(s) our notes share ended without a
    /// newline: a note must start on a line of its own.
    mid_line: bool,
}

/// Erases the current terminal line: back to its start, then clear to its end.
const ERASE_LINE: &str = "\r\x1b[K";

impl Messages {
    fn new(quiet: bool) -> Self {
        let queue = if quiet || !std::io::stderr().is_terminal() {
            QueueStyle::Hidden
        } else if std::env::var_os("TERM").is_some_and(|t| t == "dumb") {
            QueueStyle::Lines
        } else {
            QueueStyle::InPlace
        };
        Messages {
            quiet,
            queue,
            state: Mutex::new(MessageState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MessageState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn erase(state: &mut MessageState) {
        if state.shown {
            let _ = std::io::stderr().lock().write_all(ERASE_LINE.as_bytes());
            state.shown = false;
        }
    }

    /// The session's place in the server's queue.
    fn queued(&self, position: u32) {
        if self.queue == QueueStyle::Hidden {
            return;
        }
        let mut state = self.lock();
        if state.over || state.position == Some(position) {
            return;
        }
        state.position = Some(position);
        let text = format!("pyexec: waiting for a free slot (position {position} in the queue)");
        let mut err = std::io::stderr().lock();
        if self.queue == QueueStyle::InPlace {
            let _ = write!(err, "{ERASE_LINE}{text}");
            state.shown = true;
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
    }

    /// The script started, wrote something, or the session is over: erase the queue
    /// line and show no other.
    fn over(&self) {
        let mut state = self.lock();
        state.over = true;
        Self::erase(&mut state);
    }

    /// A note: suppressed by `--quiet`.
    fn note(&self, message: impl Display) {
        if !self.quiet {
            self.always(message);
        }
    }

    /// An error (pyexec exits 125): always printed, on a line of its own.
    fn error(&self, message: impl Display) {
        self.always(message);
    }

    /// A line the user asked for (`--stats`): printed even with `--quiet`.
    fn asked_for(&self, message: impl Display) {
        self.always(message);
    }

    /// Any message: on a line of its own, after erasing the queue line.
    fn always(&self, message: impl Display) {
        self.over();
        if std::mem::take(&mut self.lock().mid_line) {
            let _ = std::io::stderr().lock().write_all(b"\n");
        }
        print_err(message);
    }

    /// The script wrote `last` as the final byte of a write to a stream our notes share.
    fn wrote(&self, last: u8) {
        self.lock().mid_line = last != b'\n';
    }
}

/// The script's stdout or stderr: erases the queue line before the first byte, and notes
/// whether the output ends mid-line where our own messages go too.
struct Output<W> {
    inner: W,
    messages: Arc<Messages>,
    written: bool,
    /// This stream and our messages end up in the same place: stderr always; stdout when
    /// both are the terminal.
    shares_messages: bool,
}

impl<W> Output<W> {
    fn new(inner: W, messages: Arc<Messages>, shares_messages: bool) -> Self {
        Output {
            inner,
            messages,
            written: false,
            shares_messages,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Output<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !self.written {
            self.written = true;
            self.messages.over();
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            if n > 0 && self.shares_messages {
                self.messages.wrote(buf[n - 1]);
            }
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Parses the command line. Usage errors exit 125 with one line, like every other
/// reason the script could not be run (clap's own 2 could be mistaken for the script's).
fn parse_args() -> Args {
    let e = match Args::try_parse() {
        Ok(args) => return args,
        Err(e) => e,
    };
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let rendered = e.render().to_string();
    let message = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    if e.kind() == ErrorKind::MissingRequiredArgument && message.contains("<SCRIPT>") {
        fail("no script given (usage: pyexec [OPTIONS] SCRIPT [ARGS]...; see pyexec --help)");
    }
    fail(format!("{message} (see pyexec --help)"))
}

/// Reads the script; the name is the file name, shown as `sys.argv[0]` and in tracebacks.
fn read_script(path: &Path, messages: &Messages) -> (Bytes, Option<String>) {
    if path == Path::new("-") {
        if std::io::stdin().is_terminal() {
            messages.note("reading the script from the terminal; end it with Ctrl-D");
        }
        let mut buf = Vec::new();
        if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf) {
            fail(format!("cannot read the script from stdin: {e}"));
        }
        return (buf.into(), None);
    }
    if path.is_dir() {
        fail(format!("{} is a directory, not a script", path.display()));
    }
    match std::fs::read(path) {
        Ok(data) => {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string);
            (data.into(), name)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fail(format!("cannot open {}: no such file", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            fail(format!("cannot read {}: permission denied", path.display()))
        }
        Err(e) => fail(format!("cannot read {}: {e}", path.display())),
    }
}

/// One worker: a session is one connection, and with a single worker the stdin reader,
/// the frame writer and the frame reader hand work to each other without waking another
/// thread. Multi-threaded all the same, for `block_in_place` (see `pyexec_client::stdio`).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("cannot start: {e}")))
}

fn main() {
    let args = parse_args();
    if let Some(shell) = args.completions {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Args::command(), "pyexec", &mut script);
        let _ = std::io::stdout().lock().write_all(&script);
        return;
    }
    let messages = Arc::new(Messages::new(args.quiet));
    let cfg = ClientConfig {
        server: args.server,
        ca: args.ca,
        connect_timeout: args.connect_timeout,
        identity: args
            .cert
            .zip(args.key)
            .map(|(cert, key)| tls::Identity { cert, key }),
    };
    if args.version {
        version(&cfg, &messages);
        return;
    }
    let mut command = args.command.into_iter();
    let path = PathBuf::from(
        command
            .next()
            .expect("clap requires SCRIPT unless --version or --completions"),
    );
    let script_args: Vec<String> = command
        .enumerate()
        .map(|(i, a)| {
            a.into_string()
                .unwrap_or_else(|_| fail(format!("argument {} is not valid UTF-8", i + 1)))
        })
        .collect();
    let from_stdin = path == Path::new("-");
    let (script, name) = read_script(&path, &messages);
    let mut files = Vec::new();
    for arg in &args.files {
        files.push(client::files::file_arg(arg).unwrap_or_else(|e| fail(e)));
    }
    let script_name = name.clone().unwrap_or_else(|| "main.py".into());
    for dir in &args.dirs {
        let tree = client::files::dir_files(dir).unwrap_or_else(|e| fail(e));
        // `--dir .` beside `main.py` holds the script itself: it is there already.
        files.extend(tree.into_iter().filter(|f| f.name != script_name));
    }
    if let Some(out) = &args.out_dir {
        if !out.is_dir() {
            fail(format!("--out-dir {}: not a directory", out.display()));
        }
    }
    let request = Request {
        files,
        get: args.get,
        out_dir: args.out_dir,
        script,
        name,
        args: script_args,
        // 0 is "no limit of our own"; a limit under 1 ms would be 0 ms on the wire.
        timeout: args
            .timeout
            .filter(|t| !t.is_zero())
            .map(|t| t.max(Duration::from_millis(1))),
        image: args.image.clone(),
    };

    // Kept alive until exit: dropping a runtime waits for its blocking tasks, and the
    // stdin reader may be blocked on a terminal or pipe forever.
    let rt = runtime();
    // Spawned rather than run by block_on itself: block_on polls its future on this
    // (main) thread, and every hand-over between it and the tasks it spawns on the
    // worker would cost a thread wake-up, two per line of an echo.
    let code = rt
        .block_on(rt.spawn(session(cfg, request, from_stdin, args.stats, messages)))
        .unwrap_or(exit::CANNOT_RUN);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // Exit without waiting for a stdin read that may block on the terminal forever.
    std::process::exit(code);
}

/// `--version`: ours, then the server's. Exit status 0 even if the server is unreachable.
fn version(cfg: &ClientConfig, messages: &Messages) {
    print_out(format_args!("pyexec {}", env!("CARGO_PKG_VERSION")));
    match runtime().block_on(client::probe(cfg)) {
        Ok(welcome) => print_out(format_args!(
            "server {}: {}",
            cfg.server,
            describe_server(&welcome)
        )),
        Err(e) => messages.note(format_args!(
            "cannot reach server {}: {}",
            cfg.server,
            unreachable_reason(&e, cfg)
        )),
    }
}

/// `pyexecd 0.1.0 (protocol 1, time limit 60s, script limit 1 MiB, output limit 1 GiB)`.
fn describe_server(w: &Welcome) -> String {
    format!(
        "{} (protocol {}, time limit {}, script limit {}, output limit {})",
        w.server,
        w.version,
        format_duration(Duration::from_millis(w.limits.timeout_ms)),
        format_size(w.limits.script_size),
        format_size(w.limits.output_bytes)
    )
}

/// Why a probe failed, without repeating the server's address.
fn unreachable_reason(e: &ClientError, cfg: &ClientConfig) -> String {
    match e {
        ClientError::Connect { source, .. } => source.to_string(),
        ClientError::ConnectTimeout(_) => "timed out".into(),
        ClientError::Tls { source, .. } => format!("TLS handshake failed: {source}"),
        other => describe_error(other, cfg),
    }
}

/// The one-line message for an error that stops the session, with a hint where the
/// usual cause is a missing setting.
fn describe_error(e: &ClientError, cfg: &ClientConfig) -> String {
    match e {
        ClientError::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            format!("{e}; is pyexecd running there? (--server, PYEXEC_SERVER)")
        }
        ClientError::Config(_) if !tls::is_system_ca(&cfg.ca) && !cfg.ca.exists() => {
            format!("{e}; give the server's CA certificate with --ca or PYEXEC_CA")
        }
        _ => e.to_string(),
    }
}

async fn session(
    cfg: ClientConfig,
    request: Request,
    script_from_stdin: bool,
    stats: bool,
    messages: Arc<Messages>,
) -> i32 {
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let on_third = messages.clone();
    tokio::spawn(async move {
        let mut presses = 0;
        while tokio::signal::ctrl_c().await.is_ok() {
            presses += 1;
            let c = match presses {
                1 => Control::Interrupt,
                2 => Control::Cancel,
                _ => {
                    on_third.over();
                    std::process::exit(exit_code_for(EndReason::Cancelled, None))
                }
            };
            if control_tx.send(c).is_err() {
                break;
            }
        }
    });

    let (notice_tx, mut notice_rx) = mpsc::unbounded_channel();
    let shown = messages.clone();
    tokio::spawn(async move {
        while let Some(notice) = notice_rx.recv().await {
            match notice {
                Notice::Queued(position) => shown.queued(position),
                Notice::Started(_) => shown.over(),
                Notice::Welcome(_) => {}
            }
        }
    });

    let io = Io {
        stdin: (!script_from_stdin).then(Stdin::open),
        stdout: Output::new(
            RawOut::new(1),
            messages.clone(),
            std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
        ),
        stderr: Output::new(RawOut::new(2), messages.clone(), true),
        control: Some(control_rx),
        notices: Some(notice_tx),
    };
    let result = client::run(&cfg, request, io).await;
    messages.over();
    match result {
        Ok(outcome) => {
            for f in &outcome.saved {
                messages.note(format_args!(
                    "saved {} ({})",
                    f.path.display(),
                    format_size(f.size)
                ));
            }
            if let Some(files_end) = &outcome.files_end {
                for pattern in &files_end.unmatched {
                    messages.note(format_args!("--get {pattern}: no file matched"));
                }
                for s in &files_end.skipped {
                    messages.note(format_args!("{} not brought back: {}", s.name, s.reason));
                }
                if !files_end.message.is_empty() {
                    messages.note(&files_end.message);
                }
            }
            let end = &outcome.end;
            let self_evident = match end.reason {
                EndReason::Exited => true,
                // A Ctrl-C the user just pressed, or a closed pipe, needs no comment.
                EndReason::Signal => matches!(end.signal, Some(exit::SIGINT | exit::SIGPIPE)),
                _ => outcome.stdout_closed,
            };
            if !self_evident && !end.message.is_empty() {
                messages.note(&end.message);
            }
            if stats {
                messages.asked_for(client::describe_usage(&end.usage));
            }
            outcome.exit_code()
        }
        Err(e) => {
            messages.error(describe_error(&e, &cfg));
            exit::CANNOT_RUN
        }
    }
}
