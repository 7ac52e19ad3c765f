//! The playground (issue 13): one port for both protocols by ALPN, WebSocket sessions
//! carrying the JSON messages of protocol §13 through the same Session as binary ones,
//! bearer tokens with per-client limits, and the page itself driven by Debian's headless
//! Chromium through selenium (`tests/web/playground.py`).
//!
//! Every browser process runs in a process group of its own, which is killed on every
//! path (`Browser`'s drop), the leftover check included.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use common::{daemon::*, figures::*, idle::*, processes::*, raw::runtime, web::*};
use serde_json::json;
use tokio::io::AsyncWriteExt;

const WITHIN: Duration = Duration::from_secs(20);

/// The selenium script and every process it starts (chromedriver, Chromium), in one
/// process group: dropped, the whole group is killed, on success, failure and panic alike.
struct Browser {
    child: Child,
    profile: tempfile::TempDir,
}

impl Browser {
    fn run(d: &Daemon, screenshot: &std::path::Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new("/usr/bin/python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/web/playground.py"
            ))
            .arg(format!("https://localhost:{}/", d.addr.port()))
            .arg(spki_sha256(d))
            .arg(profile.path())
            .arg(screenshot)
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tests/web/playground.py (scripts/setup installs python3-selenium)");
        Browser { child, profile }
    }

    /// The pids of processes still using this run's Chromium profile: a Chromium that left
    /// the group would still name its profile directory on its command line.
    fn stragglers(&self) -> Vec<i32> {
        let marker = self.profile.path().to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = self.child.id() as i32;
        // SAFETY: kill(2) on the process group this test created, and on pids it found
        // running with its own profile directory.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-group, libc::SIGKILL);
            for pid in self.stragglers() {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

#[test]
fn the_playground_works_in_a_real_browser() {
    let d = Daemon::start(&["--max-sessions", "2", "--warm", "2"]);
    // PYEXEC_SCREENSHOT=docs/playground.png refreshes the README's picture.
    let shot = std::env::var_os("PYEXEC_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| d.dir.path().join("playground.png"));
    let mut browser = Browser::run(&d, &shot);
    let stdout = OutputWatcher::stdout(&mut browser.child);
    let status = wait_timeout(&mut browser.child, Duration::from_secs(180));
    let out = String::from_utf8_lossy(&stdout.rest(Duration::from_secs(5))).into_owned();
    let err = take_stderr(&mut browser.child);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{out}\n{err}\n{}",
        d.log()
    );
    assert!(out.contains("12 passed, 0 failed"), "{out}");
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a screenshot"
    );
    drop(browser);
    assert_healthy(&d);
    d.stop();
}

#[test]
fn a_websocket_session_is_a_session_like_any_other() {
    let d = Daemon::start(&[]);
    runtime().block_on(async {
        let mut ws = websocket(&d, "pyexec.v1", None).await.unwrap();
        start_script(
            &mut ws,
            "import sys\nline = input('? ')\nprint(line[::-1])\nsys.exit(7)\n",
        )
        .await;
        let welcome = next(&mut ws, WITHIN).await.unwrap();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["limits"]["stdin_window"], 262144);
        send(&mut ws, json!({"type": "stdin", "data": "YWJjCg=="})).await; // "abc\n"
        send(&mut ws, json!({"type": "stdin_eof"})).await;
        let (stdout, end) = until_end(&mut ws, WITHIN).await;
        assert_eq!(stdout, "? cba\n");
        assert_eq!(end["type"], "end");
        assert_eq!(
            (end["reason"].as_str(), end["exit_code"].as_i64()),
            (Some("exited"), Some(7))
        );
        assert!(end["cpu_ms"].is_u64() && end["output_bytes"] == 6, "{end}");
        // The server closes the WebSocket after the end.
        assert!(next(&mut ws, WITHIN).await.is_none());
    });
    // The binary protocol on the same port, and both counted by protocol.
    let out = d.run("print('bin')", &[], b"");
    assert_eq!(stdout_str(&out), "bin\n");
    let m = metrics(&d);
    assert_eq!(
        m.get("pyexec_accepted_sessions_by_protocol_total{protocol=\"websocket\"}"),
        1.0
    );
    assert_eq!(
        m.get("pyexec_accepted_sessions_by_protocol_total{protocol=\"binary\"}"),
        1.0
    );
    d.stop();
}

#[test]
fn alpn_chooses_the_protocol_on_one_port() {
    let d = Daemon::start(&[]);
    runtime().block_on(async {
        // Offering both, a client gets frames: the server prefers pyexec/1.
        let (_, chosen) = tls_with_alpn(&d, &[b"http/1.1", b"pyexec/1"])
            .await
            .unwrap();
        assert_eq!(chosen.as_deref(), Some(&b"pyexec/1"[..]));
        let (_, chosen) = tls_with_alpn(&d, &[]).await.unwrap();
        assert_eq!(chosen, None, "no ALPN: the binary protocol, as before");
        // HTTP/2 alone is not spoken: the handshake fails (no_application_protocol).
        let refused = tls_with_alpn(&d, &[b"h2"]).await;
        assert!(refused.is_err(), "h2 alone must be refused");
        // http/1.1 gets the page, with its security headers.
        let page = get(&d, "/").await;
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(
            page.contains("content-security-policy: default-src 'self'"),
            "{page}"
        );
        assert!(page.contains("<textarea id=\"code\""));
        let js = get(&d, "/static/codemirror.js").await;
        assert!(js.contains("content-type: text/javascript") && js.contains("CodeMirror"));
    });
    d.stop();
}

#[test]
fn with_tokens_a_browser_needs_one_and_its_limits_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    pyexec::certs::generate(dir.path(), &[], false).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "# the class\nalice alice-token-0123456789\nbob bob-token-0123456789ab\n",
    )
    .unwrap();
    let tokens = tokens.to_str().unwrap().to_string();
    let d = Daemon::start_in(
        dir,
        &unique_instance(),
        &["--tokens", &tokens, "--max-sessions-per-client", "1"],
    );
    runtime().block_on(async {
        assert_eq!(websocket(&d, "pyexec.v1", None).await.err(), Some(401));
        assert_eq!(
            websocket(&d, "pyexec.v1, pyexec.token.alice-token-0123456780", None)
                .await
                .err(),
            Some(401)
        );
        // Alice's first session holds her one place.
        let alice = "pyexec.v1, pyexec.token.alice-token-0123456789";
        let mut first = websocket(&d, alice, None).await.unwrap();
        start_script(&mut first, "input()\n").await;
        while next(&mut first, WITHIN).await.unwrap()["type"] != "started" {}
        // Her second, from the same address, is refused by her limit...
        let mut second = websocket(&d, alice, None).await.unwrap();
        start_script(&mut second, "print(1)\n").await;
        let (_, refused) = until_end(&mut second, WITHIN).await;
        assert_eq!(refused["code"], "limited", "{refused}");
        assert!(
            refused["message"].as_str().unwrap().contains("token:alice"),
            "{refused}"
        );
        // ...while Bob, from the same address, runs.
        let bob = "pyexec.v1, pyexec.token.bob-token-0123456789ab";
        let mut third = websocket(&d, bob, None).await.unwrap();
        start_script(&mut third, "print('bob')\n").await;
        let (out, end) = until_end(&mut third, WITHIN).await;
        assert_eq!(
            (out.as_str(), end["exit_code"].as_i64()),
            ("bob\n", Some(0))
        );
        send(&mut first, json!({"type": "cancel"})).await;
        let (_, end) = until_end(&mut first, WITHIN).await;
        assert_eq!(end["reason"], "cancelled");
    });
    // The binary protocol does not take tokens: --client-ca guards it (docs/security.md).
    assert_eq!(stdout_str(&d.run("print(2)", &[], b"")), "2\n");
    d.stop();
}

#[test]
fn check_config_refuses_a_bad_tokens_file_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, "alice short-secret\n").unwrap();
    let out = Command::new(common::PYEXECD)
        .arg("check-config")
        .arg("--tokens")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = stderr_str(&out);
    assert!(err.contains(&format!("{}:1:", path.display())), "{err}");
    assert!(!err.contains("short-secret"), "{err}");
}

/// `--client-ca` applies to browsers as to any client: without a certificate there is no
/// page, with one a WebSocket session runs and its identity is the certificate's subject.
#[test]
fn client_ca_applies_to_browsers_too() {
    let dir = tempfile::tempdir().unwrap();
    pyexec::certs::generate(dir.path(), &[], false).unwrap();
    pyexec::certs::issue_client(dir.path(), "browser", false).unwrap();
    let ca = dir.path().join("ca.pem").display().to_string();
    let d = Daemon::start_in(
        dir,
        &unique_instance(),
        &["--client-ca", &ca, "--max-sessions-per-client", "1"],
    );
    runtime().block_on(async {
        // No certificate: the handshake fails on the first read (TLS 1.3), no page.
        match tls_as_with_alpn(&d, None, &[b"http/1.1"]).await {
            Err(_) => {}
            Ok((mut tls, _)) => {
                tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    .await
                    .ok();
                let page = read_to_close(&mut tls, WITHIN).await;
                assert!(
                    !page.contains("HTTP/1.1 200"),
                    "a page without a certificate: {page}"
                );
            }
        }
        // With one: a session, counted for CN=browser.
        let (tls, chosen) = tls_as_with_alpn(&d, Some("browser"), &[b"http/1.1"])
            .await
            .unwrap();
        assert_eq!(chosen.as_deref(), Some(&b"http/1.1"[..]));
        let mut ws = websocket_on(tls, &d, "pyexec.v1", None).await.unwrap();
        start_script(&mut ws, "input()\nprint('ok')\n").await;
        let welcome = next(&mut ws, WITHIN).await.unwrap();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert!(
            wait_until(WITHIN, || status_line(&d).contains("\"CN=browser\":1")),
            "the browser's identity is its certificate's subject: {}",
            status_line(&d)
        );
        send(&mut ws, json!({"type": "stdin", "data": "Cg=="})).await; // "\n"
        let (stdout, end) = until_end(&mut ws, WITHIN).await;
        assert_eq!(stdout, "ok\n");
        assert_eq!(end["exit_code"], 0, "{end}");
    });
    d.stop();
}

/// Feature `files` over the WebSocket (protocol §13.4): a file in beside the script, a
/// result file out, the patterns that matched nothing, all as JSON messages in the
/// order of §10.2; and the order rule the Session keeps for a browser as for frames.
#[test]
fn a_websocket_session_sends_files_and_gets_them_back() {
    let d = Daemon::start(&[]);
    runtime().block_on(async {
        let script = "rows = open('data/in.csv').read().split()\n\
                      open('out.txt', 'w').write(str(sum(int(r.split(',')[1]) for r in rows[1:])))\n";
        let csv = "a,b\nx,2\ny,40\n";
        let mut ws = websocket(&d, "pyexec.v1", None).await.unwrap();
        send(
            &mut ws,
            json!({"type": "hello", "version": 1, "script_size": script.len(), "client": "test",
                   "features": ["files"],
                   "files": {"count": 1, "bytes": csv.len(), "get": ["out.txt", "none*"]}}),
        )
        .await;
        // The browser waits for welcome before its script (§10.2): it grants `files`.
        let welcome = next(&mut ws, WITHIN).await.unwrap();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["features"], json!(["files"]), "{welcome}");
        assert!(welcome["limits"]["files_in_bytes"].is_u64(), "{welcome}");
        send(&mut ws, json!({"type": "script", "data": BASE64.encode(script)})).await;
        send(
            &mut ws,
            json!({"type": "file_in", "name": "data/in.csv", "size": csv.len()}),
        )
        .await;
        send(
            &mut ws,
            json!({"type": "file_in_data", "data": BASE64.encode(csv)}),
        )
        .await;
        send(&mut ws, json!({"type": "stdin_eof"})).await;
        let mut seen = Vec::new();
        let mut content = Vec::new();
        let end = loop {
            let m = next(&mut ws, WITHIN).await.expect("a message before the end");
            let kind = m["type"].as_str().unwrap().to_string();
            match kind.as_str() {
                "file_out" => assert_eq!(m, json!({"type": "file_out", "name": "out.txt", "size": 2})),
                "file_out_data" => {
                    content.extend(BASE64.decode(m["data"].as_str().unwrap()).unwrap())
                }
                "files_out_end" => assert_eq!(
                    (&m["unmatched"], &m["skipped"]),
                    (&json!(["none*"]), &json!([])),
                    "{m}"
                ),
                "end" | "error" => break m,
                _ => {}
            }
            seen.push(kind);
        };
        assert_eq!((end["type"].as_str(), end["exit_code"].as_i64()), (Some("end"), Some(0)), "{end}");
        assert_eq!(content, b"42");
        // FILE_OUT, its data, FILES_OUT_END, then END: nothing of the files after the end.
        let files: Vec<_> = seen.iter().filter(|k| k.starts_with("file")).collect();
        assert_eq!(files, ["file_out", "file_out_data", "files_out_end"], "{seen:?}");

        // stdin before every announced file is the Session's protocol error, as for frames.
        let mut ws = websocket(&d, "pyexec.v1", None).await.unwrap();
        send(
            &mut ws,
            json!({"type": "hello", "version": 1, "script_size": 9, "features": ["files"],
                   "files": {"count": 1, "bytes": 1}}),
        )
        .await;
        assert_eq!(next(&mut ws, WITHIN).await.unwrap()["type"], "welcome");
        send(&mut ws, json!({"type": "script", "data": BASE64.encode("print(1)\n")})).await;
        send(&mut ws, json!({"type": "stdin", "data": "Cg=="})).await;
        let (_, error) = until_end(&mut ws, WITHIN).await;
        assert_eq!(error["code"], "protocol", "{error}");
        assert!(
            error["message"].as_str().unwrap().contains("STDIN before every announced file"),
            "{error}"
        );
    });
    assert_healthy(&d);
    d.stop();
}
