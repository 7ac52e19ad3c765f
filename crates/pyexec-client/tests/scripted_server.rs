//! The `pyexec` binary against a scripted server: how it turns the end of a session into
//! its exit status and its notes (protocol §9), with no daemon and no Docker, including
//! ends the real daemon never sends (a reason newer than this client). The tests against
//! the real daemon are in the repository's `tests/`.
//!
//! These tests are also why a `cargo test` or `cargo nextest run` of the workspace builds
//! the `pyexec` binary, which the daemon's integration tests run from beside `pyexecd`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use pyexec_protocol::exit;
use pyexec_protocol::files::{FileHeader, FilesLimits, FilesOutEnd, Skipped};
use pyexec_protocol::{
    End, EndReason, ErrorCode, ErrorMsg, Frame, FrameCodec, FrameType, Limits, Started, Usage,
    Welcome, PROTOCOL_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;

const PYEXEC: &str = env!("CARGO_BIN_EXE_pyexec");

/// A server that takes one connection, reads the client's HELLO, answers with `reply`
/// (raw bytes, so that it can send what this build would never encode), closes its side
/// with TLS close_notify, then reads whatever else the client sends until it closes.
struct ScriptedServer {
    dir: tempfile::TempDir,
    server: String,
    thread: JoinHandle<()>,
}

impl ScriptedServer {
    fn start(reply: Vec<u8>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        // The self-signed certificate is its own CA.
        std::fs::write(dir.path().join("ca.pem"), certified.cert.pem()).unwrap();
        let key = dir.path().join("server.key");
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(pyexec_client::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                pyexec_client::tls::load_certs(&dir.path().join("ca.pem")).unwrap(),
                pyexec_client::tls::load_key(&key).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let server = format!("localhost:{}", listener.local_addr().unwrap().port());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let (tcp, _) = listener.accept().await.unwrap();
                let tls = acceptor.accept(tcp).await.unwrap();
                let mut framed = Framed::new(tls, FrameCodec::new());
                let first = framed.next().await.unwrap().unwrap();
                assert_eq!(first.frame_type(), FrameType::Hello);
                let stream = framed.get_mut();
                stream.write_all(&reply).await.unwrap();
                stream.shutdown().await.unwrap();
                let _ = tokio::time::timeout(Duration::from_secs(10), async {
                    while let Some(Ok(_)) = framed.next().await {}
                })
                .await;
            });
        });
        ScriptedServer {
            dir,
            server,
            thread,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Runs `pyexec` on a one-line script against this server, stdin closed.
    fn run(self) -> Output {
        self.run_with(&[])
    }

    /// The same, with these options before the script.
    fn run_with(self, options: &[&str]) -> Output {
        let script = self.dir.path().join("job.py");
        std::fs::write(&script, "print('never run: the server is scripted')\n").unwrap();
        let out = pyexec(&self.server, &self.ca(), options, &script);
        self.thread.join().expect("the scripted server failed");
        out
    }
}

fn pyexec(server: &str, ca: &Path, options: &[&str], script: &Path) -> Output {
    Command::new(PYEXEC)
        .args(["--server", server, "--ca"])
        .arg(ca)
        .args(options)
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for frame in frames {
        frame.encode(&mut buf).unwrap();
    }
    buf.to_vec()
}

/// A control frame with a JSON body written by hand.
fn raw(ty: FrameType, json: &str) -> Vec<u8> {
    let len = u32::try_from(json.len() + 1).unwrap();
    let mut out = len.to_be_bytes().to_vec();
    out.push(ty as u8);
    out.extend_from_slice(json.as_bytes());
    out
}

fn welcome() -> Frame {
    Frame::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        server: "scripted".into(),
        session: "s-1".into(),
        limits: Limits {
            script_size: 1 << 20,
            timeout_ms: 60_000,
            output_bytes: 1 << 30,
            stdin_window: 65536,
            files: None,
        },
        features: Vec::new(),
    })
}

/// A WELCOME that grants feature `files`, with small bounds.
fn welcome_with_files() -> Frame {
    let Frame::Welcome(mut w) = welcome() else {
        unreachable!()
    };
    w.features = vec!["files".into()];
    w.limits.files = Some(FilesLimits {
        files_in_bytes: 1 << 20,
        files_in_count: 10,
        file_path_len: 1024,
        files_out_bytes: 100,
        files_out_count: 10,
    });
    Frame::Welcome(w)
}

fn file_out(name: &str, content: &[u8]) -> Vec<Frame> {
    let mut frames = vec![Frame::FileOut(FileHeader {
        name: name.into(),
        size: content.len() as u64,
    })];
    if !content.is_empty() {
        frames.push(Frame::FileOutData(bytes::Bytes::copy_from_slice(content)));
    }
    frames
}

/// Every file under `dir`, as paths relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.strip_prefix(dir).unwrap().display().to_string();
        if path.is_dir() {
            out.extend(tree(&path).into_iter().map(|n| format!("{name}/{n}")));
        } else {
            out.push(name);
        }
    }
    out.sort();
    out
}

/// A hostile server that sends `../x` or `/etc/x` as a result file: refused with a clear
/// error (125), and not a byte is written anywhere, inside the output directory or out.
#[test]
fn a_hostile_servers_traversal_names_are_refused_and_nothing_is_written() {
    for name in ["../x", "/etc/x", "a/../../x", "ok/../../../x"] {
        let base = tempfile::tempdir().unwrap();
        let out_dir = base.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let mut frames = vec![welcome_with_files(), started()];
        frames.extend(file_out(name, b"pwned"));
        frames.push(end(EndReason::Exited, 0, None, ""));
        let out = ScriptedServer::start(encode(&frames)).run_with(&[
            "--get",
            "x",
            "--out-dir",
            out_dir.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(125), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("refused") && stderr(&out).contains(name),
            "{name}: {}",
            stderr(&out)
        );
        assert_eq!(tree(base.path()), Vec::<String>::new(), "{name}");
    }
}

/// Files the server sends are saved inside --out-dir, one line each on stderr; a pattern
/// that matched nothing and a skipped name are said once, and are not errors.
#[test]
fn result_files_are_saved_and_reported() {
    let base = tempfile::tempdir().unwrap();
    let mut frames = vec![welcome_with_files(), started()];
    frames.extend(file_out("plot.png", b"PNG"));
    frames.extend(file_out("results/a.csv", b"1,2\n"));
    frames.push(Frame::FilesOutEnd(FilesOutEnd {
        unmatched: vec!["*.svg".into()],
        skipped: vec![Skipped {
            name: "link.png".into(),
            reason: "a symbolic link (not followed)".into(),
        }],
        message: String::new(),
    }));
    frames.push(end(EndReason::Exited, 0, None, ""));
    let out = ScriptedServer::start(encode(&frames)).run_with(&[
        "--get",
        "plot.png",
        "--get",
        "results/*.csv",
        "--out-dir",
        base.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(tree(base.path()), ["plot.png", "results/a.csv"]);
    assert_eq!(std::fs::read(base.path().join("plot.png")).unwrap(), b"PNG");
    let err = stderr(&out);
    assert_eq!(err.matches("pyexec: saved ").count(), 2, "{err}");
    assert!(err.contains("--get *.svg: no file matched"), "{err}");
    assert!(
        err.contains("link.png not brought back: a symbolic link"),
        "{err}"
    );

    // -q: the same files, no lines.
    let base = tempfile::tempdir().unwrap();
    let out = ScriptedServer::start(encode(&frames)).run_with(&[
        "-q",
        "--get",
        "plot.png",
        "--out-dir",
        base.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    assert_eq!(tree(base.path()), ["plot.png", "results/a.csv"]);
}

/// More bytes of files than WELCOME announced: a protocol error, and the partial file
/// is not left behind.
#[test]
fn result_files_over_the_announced_cap_are_refused() {
    let base = tempfile::tempdir().unwrap();
    let mut frames = vec![welcome_with_files(), started()];
    frames.extend(file_out("big.bin", &[0u8; 101]));
    frames.push(end(EndReason::Exited, 0, None, ""));
    let out = ScriptedServer::start(encode(&frames)).run_with(&[
        "--get",
        "*.bin",
        "--out-dir",
        base.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("100 bytes"), "{}", stderr(&out));
    assert_eq!(tree(base.path()), Vec::<String>::new());
}

/// A server that does not grant `files` (an older one): the client refuses to go on,
/// says why, and cancels before a byte of the script was sent.
#[test]
fn a_server_without_files_is_refused_clearly() {
    let out = ScriptedServer::start(encode(&[
        welcome(),
        end(EndReason::Cancelled, 130, None, "cancelled by the client"),
    ]))
    .run_with(&["--get", "plot.png"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("this server does not take files"),
        "{}",
        stderr(&out)
    );
}

fn started() -> Frame {
    Frame::Started(Started {
        queued_ms: 0,
        start_ms: 1,
        warm: true,
    })
}

fn end(reason: EndReason, exit_code: i32, signal: Option<i32>, message: &str) -> Frame {
    Frame::End(End {
        reason,
        exit_code,
        signal,
        duration_ms: 5,
        message: message.into(),
        usage: Default::default(),
    })
}

fn end_with_usage(reason: EndReason, exit_code: i32, signal: Option<i32>, message: &str) -> Frame {
    let Frame::End(end) = end(reason, exit_code, signal, message) else {
        unreachable!()
    };
    Frame::End(End {
        usage: Usage {
            cpu_ms: Some(1020),
            peak_memory_bytes: Some(109_366_477),
            output_bytes: Some(12),
        },
        ..end
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_exit_status_is_the_one_in_end() {
    let out = ScriptedServer::start(encode(&[
        welcome(),
        started(),
        Frame::Stdout("out\n".into()),
        end(EndReason::Exited, 3, None, ""),
    ]))
    .run();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(stderr(&out), "");
}

#[test]
fn an_end_whose_reason_this_client_does_not_know_still_gives_its_exit_status() {
    let mut reply = encode(&[welcome(), started()]);
    reply.extend(raw(
        FrameType::End,
        r#"{"reason":"hibernated","exit_code":77,"duration_ms":5,"message":"the script was hibernated"}"#,
    ));
    let out = ScriptedServer::start(reply).run();
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert_eq!(stderr(&out), "pyexec: the script was hibernated\n");
}

#[test]
fn a_death_by_sigint_goes_without_a_note_other_signals_with_one() {
    let sigint = exit::SIGINT;
    let out = ScriptedServer::start(encode(&[
        welcome(),
        started(),
        end(
            EndReason::Signal,
            exit::killed_by(sigint),
            Some(sigint),
            "killed by signal 2 (SIGINT)",
        ),
    ]))
    .run();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");

    let out = ScriptedServer::start(encode(&[
        welcome(),
        started(),
        end(
            EndReason::Signal,
            exit::killed_by(9),
            Some(9),
            "killed by signal 9 (SIGKILL)",
        ),
    ]))
    .run();
    assert_eq!(out.status.code(), Some(137));
    assert_eq!(stderr(&out), "pyexec: killed by signal 9 (SIGKILL)\n");
}

#[test]
fn an_error_or_a_connection_closed_before_the_end_is_cannot_run() {
    let out = ScriptedServer::start(encode(&[Frame::Error(ErrorMsg::new(
        ErrorCode::Busy,
        "the server is busy (8 running, 32 queued)",
    ))]))
    .run();
    assert_eq!(out.status.code(), Some(exit::CANNOT_RUN));
    assert_eq!(
        stderr(&out),
        "pyexec: the server is busy (8 running, 32 queued)\n"
    );

    let out = ScriptedServer::start(encode(&[welcome(), started()])).run();
    assert_eq!(out.status.code(), Some(exit::CANNOT_RUN));
    assert!(
        stderr(&out).contains("closed the connection before the session ended"),
        "{}",
        stderr(&out)
    );
}

// ---- --stats ----

/// The stats line for `end_with_usage`.
const STATS: &str = "pyexec: cpu 1.02s, peak memory 104.3 MiB, output 12 bytes\n";

#[test]
fn stats_prints_the_usage_in_end_on_one_stderr_line() {
    // The fields as the server puts them in END's JSON (protocol §4.5).
    let mut reply = encode(&[welcome(), started(), Frame::Stdout("out\n".into())]);
    reply.extend(raw(
        FrameType::End,
        r#"{"reason":"exited","exit_code":0,"duration_ms":5,"message":"","cpu_ms":1020,"peak_memory_bytes":109366477,"output_bytes":12}"#,
    ));
    let out = ScriptedServer::start(reply).run_with(&["--stats"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(stderr(&out), STATS);
}

#[test]
fn stats_marks_what_the_server_did_not_report() {
    // An older server: no usage at all.
    let out = ScriptedServer::start(encode(&[
        welcome(),
        started(),
        end(EndReason::Exited, 0, None, ""),
    ]))
    .run_with(&["--stats"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "pyexec: cpu ?, peak memory ?, output ?\n");

    // A container killed whole on a timeout: only what the daemon counted itself.
    let mut reply = encode(&[welcome(), started()]);
    reply.extend(raw(
        FrameType::End,
        r#"{"reason":"timeout","exit_code":124,"duration_ms":2000,"message":"session timed out after 2s","output_bytes":0}"#,
    ));
    let out = ScriptedServer::start(reply).run_with(&["--stats"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "pyexec: session timed out after 2s\npyexec: cpu ?, peak memory ?, output 0 bytes\n"
    );
}

#[test]
fn without_stats_nothing_is_printed_and_with_it_stdout_is_untouched() {
    // Output that ends mid-line on both streams: the stats line starts a line of its own
    // on stderr, and stdout is the same bytes with or without --stats.
    let frames = || {
        encode(&[
            welcome(),
            started(),
            Frame::Stdout(b"\x00binary\r\nno newline".to_vec().into()),
            Frame::Stderr("err, no newline".into()),
            end_with_usage(EndReason::Exited, 2, None, ""),
        ])
    };
    let plain = ScriptedServer::start(frames()).run();
    assert_eq!(plain.status.code(), Some(2), "{}", stderr(&plain));
    assert_eq!(stderr(&plain), "err, no newline");

    let stats = ScriptedServer::start(frames()).run_with(&["--stats"]);
    assert_eq!(stats.status.code(), Some(2), "{}", stderr(&stats));
    assert_eq!(stats.stdout, plain.stdout);
    assert_eq!(plain.stdout, b"\x00binary\r\nno newline");
    assert_eq!(stderr(&stats), format!("err, no newline\n{STATS}"));
}

#[test]
fn stats_comes_after_the_note_on_a_killed_script_and_quiet_keeps_it() {
    let frames = || {
        encode(&[
            welcome(),
            started(),
            end_with_usage(
                EndReason::Signal,
                exit::killed_by(9),
                Some(9),
                "killed by signal 9 (SIGKILL)",
            ),
        ])
    };
    let out = ScriptedServer::start(frames()).run_with(&["--stats"]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!("pyexec: killed by signal 9 (SIGKILL)\n{STATS}")
    );

    // --quiet drops the note, not the line the user asked for.
    let out = ScriptedServer::start(frames()).run_with(&["-q", "--stats"]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert_eq!(stderr(&out), STATS);
}

#[test]
fn no_stats_line_when_the_script_could_not_run() {
    let out = ScriptedServer::start(encode(&[Frame::Error(ErrorMsg::new(
        ErrorCode::Busy,
        "the server is busy (8 running, 32 queued)",
    ))]))
    .run_with(&["--stats"]);
    assert_eq!(out.status.code(), Some(exit::CANNOT_RUN));
    assert_eq!(
        stderr(&out),
        "pyexec: the server is busy (8 running, 32 queued)\n"
    );
}
