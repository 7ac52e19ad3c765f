//! `pyexec`: run a Python script on a pyexecd server as if it ran here.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use pyexec::client::{self, ClientConfig, Control, Io, Notice, Request};
use pyexec::config::parse_duration;
use pyexec::protocol::EndReason;
use tokio::sync::mpsc;

/// Exit status when the script could not be run at all.
const EXIT_CANNOT_RUN: i32 = 125;

const EXAMPLES: &str = "\
Examples:
  pyexec hello.py                      run hello.py on the server at localhost:12344
  pyexec --server build1:12344 --ca ca.pem job.py --verbose 3
                                       arguments after the script become sys.argv[1:]
  echo 'print(2 + 2)' | pyexec -       read the script itself from stdin
  pyexec filter.py < in.csv > out.csv  stdin and stdout are the script's

Exit status: the script's own; 128+N if it died of signal N (137 when killed, out of
memory included); 124 if the session timed out; 125 if it could not be run at all.";

#[derive(Debug, Parser)]
#[command(
    name = "pyexec",
    version,
    about = "Run a Python script on a pyexecd server, with live stdin, stdout and stderr",
    after_help = EXAMPLES
)]
struct Args {
    /// Server to connect to.
    #[arg(long, env = "PYEXEC_SERVER", default_value = client::DEFAULT_SERVER)]
    server: String,
    /// CA certificate that signed the server's certificate.
    #[arg(long, env = "PYEXEC_CA", default_value = client::DEFAULT_CA)]
    ca: PathBuf,
    /// Client certificate (PEM), for servers that require mutual TLS.
    #[arg(long, env = "PYEXEC_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(long, env = "PYEXEC_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// Bound on connecting and the TLS handshake.
    #[arg(long, default_value = "10", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// The script to run; `-` reads it from stdin.
    script: PathBuf,
    /// Arguments for the script (`sys.argv[1:]`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("pyexec: {message}");
    std::process::exit(EXIT_CANNOT_RUN);
}

fn read_script(path: &Path) -> (Bytes, Option<String>) {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf) {
            fail(format!("cannot read the script from stdin: {e}"));
        }
        return (buf.into(), None);
    }
    match std::fs::read(path) {
        Ok(data) => {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string);
            (data.into(), name)
        }
        Err(e) => fail(format!("cannot read {}: {e}", path.display())),
    }
}

fn main() {
    let args = Args::parse();
    let script_args: Vec<String> = args
        .args
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            a.into_string()
                .unwrap_or_else(|_| fail(format!("argument {} is not valid UTF-8", i + 1)))
        })
        .collect();
    let from_stdin = args.script == Path::new("-");
    let (script, name) = read_script(&args.script);
    let cfg = ClientConfig {
        server: args.server,
        ca: args.ca,
        connect_timeout: args.connect_timeout,
        identity: args
            .cert
            .zip(args.key)
            .map(|(cert, key)| pyexec::tls::Identity { cert, key }),
    };
    let request = Request {
        script,
        name,
        args: script_args,
        timeout: None,
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("cannot start: {e}")));
    let code = rt.block_on(session(cfg, request, from_stdin));
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // Exit without waiting for a stdin read that may block on the terminal forever.
    std::process::exit(code);
}

async fn session(cfg: ClientConfig, request: Request, script_from_stdin: bool) -> i32 {
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut presses = 0;
        while tokio::signal::ctrl_c().await.is_ok() {
            presses += 1;
            let c = match presses {
                1 => Control::Interrupt,
                2 => Control::Cancel,
                _ => std::process::exit(130),
            };
            if control_tx.send(c).is_err() {
                break;
            }
        }
    });

    let (notice_tx, mut notice_rx) = mpsc::unbounded_channel();
    let interactive = std::io::stderr().is_terminal();
    tokio::spawn(async move {
        while let Some(notice) = notice_rx.recv().await {
            if let (Notice::Queued(position), true) = (notice, interactive) {
                eprintln!("pyexec: waiting for a free slot (position {position} in the queue)");
            }
        }
    });

    let io = Io {
        stdin: (!script_from_stdin).then(tokio::io::stdin),
        stdout: tokio::io::stdout(),
        stderr: tokio::io::stderr(),
        control: Some(control_rx),
        notices: Some(notice_tx),
    };
    match client::run(&cfg, request, io).await {
        Ok(outcome) => {
            let end = &outcome.end;
            let quiet = match end.reason {
                EndReason::Exited => true,
                // A Ctrl-C the user just pressed, or a closed pipe, needs no comment.
                EndReason::Signal => matches!(end.signal, Some(2) | Some(13)),
                _ => outcome.stdout_closed,
            };
            if !quiet && !end.message.is_empty() {
                eprintln!("pyexec: {}", end.message);
            }
            outcome.exit_code()
        }
        Err(e) => {
            eprintln!("pyexec: {e}");
            EXIT_CANNOT_RUN
        }
    }
}
