//! END's resource report (protocol §4.5), against the real daemon and the real cgroup: a
//! one-second busy loop reports about a second of CPU, a 100 MiB allocation at least
//! 100 MiB of peak memory, and the output bytes are counted exactly. A script killed on
//! its timeout leaves the cgroup readings out rather than guessing.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::{daemon::*, figures::*, raw::*};
use pyexec::protocol::{End, Frame, Usage};

fn end_of(d: &Daemon, script: &str) -> (End, Vec<u8>) {
    runtime().block_on(async {
        let mut c = Raw::connect(d).await;
        c.run(script).await;
        let (frames, end) = c.until_end(Duration::from_secs(30)).await;
        let out = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Stdout(b) | Frame::Stderr(b) => Some(b.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        match end {
            Some(Frame::End(end)) => (end, out),
            other => panic!("expected END, got {other:?}"),
        }
    })
}

#[test]
fn end_reports_cpu_time_peak_memory_and_output() {
    let d = Daemon::start(&["--memory", "256m"]);
    // About one second of CPU in the script itself.
    let (end, out) = end_of(
        &d,
        "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0:\n    pass\nprint('done')\n",
    );
    assert_eq!(out, b"done\n");
    let Usage {
        cpu_ms,
        peak_memory_bytes,
        output_bytes,
    } = end.usage;
    let cpu_ms = cpu_ms.expect("cpu_ms in END");
    assert!(
        (950..=1600).contains(&cpu_ms),
        "a 1 s busy loop reported {cpu_ms} ms of CPU"
    );
    assert_eq!(output_bytes, Some(5));
    assert!(peak_memory_bytes.is_some_and(|p| p > 1 << 20));

    // 100 MiB, touched, then freed: the peak still shows it.
    let (end, _) = end_of(
        &d,
        "b = bytearray(100 << 20)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\ndel b\n",
    );
    let peak = end
        .usage
        .peak_memory_bytes
        .expect("peak_memory_bytes in END");
    assert!(peak >= 100 << 20, "peak memory {peak} bytes for 100 MiB");
    assert!(end.usage.cpu_ms.is_some());
    assert_eq!(end.usage.output_bytes, Some(0));
    d.stop();
}

#[test]
fn a_script_killed_on_its_timeout_reports_no_cgroup_readings() {
    let d = Daemon::start(&["--session-timeout", "2"]);
    wait_pool_ready(&d);
    let (end, out) = end_of(&d, "print('x', flush=True)\nimport time\ntime.sleep(60)\n");
    assert_eq!(out, b"x\n");
    assert_eq!(end.exit_code, 124, "{end:?}");
    assert_eq!(end.usage.cpu_ms, None);
    assert_eq!(end.usage.peak_memory_bytes, None);
    d.stop();
}

#[test]
fn metrics_have_histograms_of_cpu_time_and_peak_memory() {
    let d = Daemon::start(&[]);
    let before = metrics(&d);
    let _ = end_of(&d, "print(sum(range(10**6)))\n");
    let after = metrics(&d);
    for name in [
        "pyexec_script_cpu_seconds_count",
        "pyexec_script_peak_memory_bytes_count",
    ] {
        assert_eq!(
            after.get(name) - before.get(name),
            1.0,
            "{name} counts the session"
        );
    }
    d.stop();
}
