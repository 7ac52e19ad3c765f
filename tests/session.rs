//! A session end to end: what a script sees and what the user gets back, byte for byte.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::{daemon::*, docker::*, processes::*, PYEXEC};

#[test]
fn hello_world() {
    let d = Daemon::start(&[]);
    let out = d.run("print('hello, world')\n", &[], b"");
    assert_eq!(stdout_str(&out), "hello, world\n");
    assert_eq!(stderr_str(&out), "");
    assert_eq!(out.status.code(), Some(0));
    d.stop();
}

#[test]
fn exit_codes_are_the_scripts() {
    let d = Daemon::start(&[]);
    let cases: &[(&str, i32, &str)] = &[
        ("import sys; sys.exit(0)", 0, ""),
        ("import sys; sys.exit(42)", 42, ""),
        ("import os; os._exit(7)", 7, ""),
        ("import sys; sys.exit('bye')", 1, "bye\n"),
        ("import sys; sys.exit(255)", 255, ""),
        // Death by signal N is 128 + N, as in a shell.
        (
            "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
            143,
            "signal 15",
        ),
        ("import os; os.kill(os.getpid(), 9)", 137, "signal 9"),
    ];
    for (script, code, err) in cases {
        let out = d.run(script, &[], b"");
        assert_eq!(
            out.status.code(),
            Some(*code),
            "{script}: {}",
            stderr_str(&out)
        );
        assert!(
            stderr_str(&out).contains(err),
            "{script}: {}",
            stderr_str(&out)
        );
    }
    d.stop();
}

#[test]
fn exception_gives_traceback_on_stderr_and_exit_1() {
    let d = Daemon::start(&[]);
    let script = "print('before')\ndef f():\n    raise ValueError('boom')\nf()\n";
    let path = d.script_file(script);
    let out = std::process::Command::new(PYEXEC)
        .arg("--server")
        .arg(d.addr.to_string())
        .arg("--ca")
        .arg(d.ca())
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_str(&out), "before\n");
    let err = stderr_str(&out);
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        err.starts_with("Traceback (most recent call last):\n"),
        "{err}"
    );
    assert!(
        err.contains(&format!("File \"/tmp/{name}\", line 4, in <module>")),
        "{err}"
    );
    assert!(err.ends_with("ValueError: boom\n"), "{err}");
    d.stop();
}

#[test]
fn stdout_and_stderr_stay_apart() {
    let d = Daemon::start(&[]);
    let script = "import sys\nfor i in range(200):\n    print('out', i)\n    print('err', i, file=sys.stderr)\n";
    let out = d.run(script, &[], b"");
    let expect_out: String = (0..200).map(|i| format!("out {i}\n")).collect();
    let expect_err: String = (0..200).map(|i| format!("err {i}\n")).collect();
    assert_eq!(stdout_str(&out), expect_out);
    assert_eq!(stderr_str(&out), expect_err);
    d.stop();
}

#[test]
fn piped_stdin_reaches_the_script_and_ends_with_eof() {
    let d = Daemon::start(&[]);
    let script = "import sys\ndata = sys.stdin.buffer.read()\nprint(len(data), data.count(b'\\n'))\nprint(repr(sys.stdin.read()))\n";
    let input: Vec<u8> = (0..100_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let out = d.run(script, &[], &input);
    let lines = input.iter().filter(|b| **b == b'\n').count();
    assert_eq!(stdout_str(&out), format!("{} {lines}\n''\n", input.len()));
    assert_eq!(out.status.code(), Some(0));
    d.stop();
}

#[test]
fn binary_stdin_arrives_byte_exact() {
    let d = Daemon::start(&[]);
    // 3 MiB of every byte value in a shifting order: many STDIN frames, many credits.
    let input: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let out = d.run(
        "import sys\nsys.stdout.buffer.write(sys.stdin.buffer.read())\n",
        &[],
        &input,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr_str(&out));
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "stdin came back altered");
    d.stop();
}

#[test]
fn empty_stdin_is_immediate_eof() {
    let d = Daemon::start(&[]);
    let out = d.run("import sys\nprint(repr(sys.stdin.read()))\n", &[], b"");
    assert_eq!(stdout_str(&out), "''\n");
    d.stop();
}

/// The defect of the earlier implementation: a prompt without a newline arrived late.
/// Here the prompt must be on the client's stdout before any input is sent.
#[test]
fn prompt_without_newline_arrives_before_input_is_sent() {
    let d = Daemon::start(&[]);
    let script = "name = input('Name: ')\nprint(f'Hello, {name}!')\nage = input('Age: ')\nprint('next year', int(age) + 1)\n";
    let mut child = d
        .pyexec(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = OutputWatcher::stdout(&mut child);
    assert!(
        out.wait_for(b"Name: ", Duration::from_secs(15)),
        "no prompt before input; got {:?}",
        String::from_utf8_lossy(&out.seen)
    );
    assert_eq!(out.seen, b"Name: ", "nothing but the prompt yet");
    stdin.write_all(b"Ada\n").unwrap();
    stdin.flush().unwrap();
    assert!(out.wait_for(b"Age: ", Duration::from_secs(10)));
    assert_eq!(out.seen, b"Name: Hello, Ada!\nAge: ");
    stdin.write_all(b"36\n").unwrap();
    drop(stdin);
    let rest = out.rest(Duration::from_secs(10));
    assert_eq!(rest, b"Name: Hello, Ada!\nAge: next year 37\n");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    d.stop();
}

#[test]
fn binary_output_is_byte_exact() {
    let d = Daemon::start(&[]);
    let script = "import sys\nb = bytes(range(256))\nsys.stdout.buffer.write(b * 64 + b'\\r\\n\\x00')\nsys.stderr.buffer.write(b[::-1] * 3)\n";
    let out = d.run(script, &[], b"");
    let all: Vec<u8> = (0..=255u8).collect();
    let mut expect = all.repeat(64);
    expect.extend_from_slice(b"\r\n\x00");
    assert_eq!(out.stdout, expect);
    let rev: Vec<u8> = (0..=255u8).rev().collect();
    assert_eq!(out.stderr, rev.repeat(3));
    d.stop();
}

/// 50+ MB where every line is different, so loss, duplication or reordering of any chunk
/// shows.
#[test]
fn fifty_megabytes_of_output_arrive_exactly() {
    let d = Daemon::start(&[]);
    let lines = 6_000_000u32; // 9 bytes each: 54 MB
    let script = format!(
        "import sys\nw = sys.stdout.buffer.write\nfor k in range(0, {lines}, 100000):\n    w(b''.join(b'%08d\\n' % i for i in range(k, min(k + 100000, {lines}))))\n"
    );
    let out = d.run(&script, &[], b"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr_str(&out));
    assert_eq!(out.stdout.len(), lines as usize * 9);
    let mut expect = Vec::with_capacity(lines as usize * 9);
    for i in 0..lines {
        writeln!(expect, "{i:08}").unwrap();
    }
    assert!(
        out.stdout == expect,
        "output differs from the expected 54 MB"
    );
    d.stop();
}

#[test]
fn arguments_become_sys_argv() {
    let d = Daemon::start(&[]);
    let script = "import sys, json\nprint(json.dumps(sys.argv[1:], ensure_ascii=False, separators=(',', ':')))\nprint(sys.argv[0].endswith('.py'))\n";
    let args = [
        "one",
        "two words",
        "",
        "-x",
        "--flag=1",
        "ünïcødé ✓",
        "$HOME",
        "'q'",
    ];
    let out = d.run(script, &args, b"");
    let expect = format!("{}\nTrue\n", serde_json::to_string(&args).unwrap());
    assert_eq!(stdout_str(&out), expect);
    d.stop();
}

#[test]
fn unicode_round_trips() {
    let d = Daemon::start(&[]);
    let script = "import sys\nprint('héllo wörld ✓ 🐍 日本語')\nline = sys.stdin.readline()\nprint(line.strip()[::-1])\nprint(len(line.strip()))\n";
    let out = d.run(script, &[], "añb→c🐍\n".as_bytes());
    assert_eq!(stdout_str(&out), "héllo wörld ✓ 🐍 日本語\n🐍c→bña\n6\n");
    d.stop();
}

#[test]
fn script_can_come_from_stdin() {
    let d = Daemon::start(&[]);
    let out = output_with_stdin(
        std::process::Command::new(PYEXEC)
            .arg("--server")
            .arg(d.addr.to_string())
            .arg("--ca")
            .arg(d.ca())
            .arg("-")
            .arg("arg1"),
        b"import sys\nprint(sys.argv[1:], repr(sys.stdin.read()))\n",
    );
    assert_eq!(stdout_str(&out), "['arg1'] ''\n");
    d.stop();
}

#[test]
fn full_standard_library_is_there() {
    let d = Daemon::start(&[]);
    let script = "import json, sqlite3, asyncio, ssl, zoneinfo, decimal, ctypes, hashlib, lzma, bz2, zlib, csv, venv\n\
                  con = sqlite3.connect(':memory:')\n\
                  print(con.execute('select 6*7').fetchone()[0])\n\
                  print(zoneinfo.ZoneInfo('Europe/Paris').key)\n\
                  print(asyncio.run(asyncio.sleep(0, 'ok')))\n";
    let out = d.run(script, &[], b"");
    assert_eq!(
        stdout_str(&out),
        "42\nEurope/Paris\nok\n",
        "{}",
        stderr_str(&out)
    );
    d.stop();
}

/// The sandbox defaults, as the script sees them.
#[test]
fn sandbox_isolation_from_inside() {
    let d = Daemon::start(&[]);
    let script = r#"
import os, socket, errno
print("uid", os.getuid() != 0, os.geteuid() != 0)
print("ifaces", sorted(os.listdir("/sys/class/net")))
try:
    open("/etc/evil", "w")
    print("rootfs writable")
except OSError as e:
    print("rootfs", errno.errorcode[e.errno])
with open("/tmp/scratch", "w") as f:
    f.write("x")
print("tmp ok")
s = socket.socket()
s.settimeout(2)
try:
    s.connect(("10.0.0.1", 80))
    print("network reachable")
except OSError as e:
    print("network", errno.errorcode.get(e.errno, e.errno))
caps = [l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1]
print("caps", int(caps, 16))
print("nnp", [l for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0].split()[1])
"#;
    let out = d.run(script, &[], b"");
    assert_eq!(
        stdout_str(&out),
        "uid True True\nifaces ['lo']\nrootfs EROFS\ntmp ok\nnetwork ENETUNREACH\ncaps 0\nnnp 1\n",
        "{}",
        stderr_str(&out)
    );
    d.stop();
}

#[test]
fn ctrl_c_interrupts_the_script() {
    let d = Daemon::start(&[]);
    let script = "import time, sys\nprint('ready', flush=True)\ntry:\n    time.sleep(30)\nexcept KeyboardInterrupt:\n    print('interrupted')\n    sys.exit(5)\n";
    let (mut child, out) = spawn_ready(&mut d.pyexec(script));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    // Generous: under a loaded CI machine the Engine's kill request has taken over 10 s.
    let status = wait_timeout(&mut child, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the client did not exit\n{}", d.log()));
    assert_eq!(out.rest(Duration::from_secs(1)), b"ready\ninterrupted\n");
    assert_eq!(status.code(), Some(5));
    d.stop();
}

#[test]
fn closed_stdout_cancels_the_session_like_sigpipe() {
    let d = Daemon::start(&[]);
    let mut child = d
        .pyexec(&format!("{PRINT_CID}while True:\n    print('y' * 100)\n"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    drop(out); // like `| head -1`
    let cid = cid_of(first.as_bytes());
    let status = wait_timeout(&mut child, Duration::from_secs(15)).expect("client exits");
    assert_eq!(status.code(), Some(141));
    assert!(wait_until(Duration::from_secs(3), || !container_listed(
        &cid
    )));
    d.stop();
}

/// Each isolation default can be changed, and the change is what the script sees.
#[test]
fn sandbox_settings_are_configurable() {
    let d = Daemon::start(&[
        "--network",
        "--read-only",
        "false",
        "--no-new-privileges",
        "false",
        "--cap-add",
        "CHOWN",
        "--user",
        "1234:1234",
        "--memory",
        "64m",
        "--pids-limit",
        "9",
    ]);
    let script = r#"
import os
status = {l.split(':')[0]: l.split()[1] for l in open('/proc/self/status') if ':' in l}
print("uid", os.getuid(), os.getgid())
print("caps", int(status["CapBnd"], 16) == 1 << 0)
print("nnp", status["NoNewPrivs"])
print("eth0", os.path.exists("/sys/class/net/eth0"))
root = [l.split() for l in open("/proc/self/mounts") if l.split()[1] == "/"][-1]
print("rootfs", root[3].split(",")[0])
print("pids", open("/sys/fs/cgroup/pids/pids.max").read().strip())
print("memory", int(open("/sys/fs/cgroup/memory/memory.limit_in_bytes").read()) >> 20)
"#;
    let out = d.run(script, &[], b"");
    assert_eq!(
        stdout_str(&out),
        "uid 1234 1234\ncaps True\nnnp 0\neth0 True\nrootfs rw\npids 9\nmemory 64\n",
        "{}",
        stderr_str(&out)
    );
    d.stop();
}
