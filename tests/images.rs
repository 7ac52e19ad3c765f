//! Several images: a science image built from Debian packages (numpy, pandas, matplotlib)
//! served beside the default one, picked by name, with a warm pool of its own whose
//! waiting interpreters have preloaded pandas and matplotlib.pyplot.
//!
//! Building the science image takes minutes the first time (1.25 GB from Debian), so it is
//! built once per test process (and skipped when the tag exists: `scripts/test` builds it
//! ahead), and the checks share one daemon.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::process::Command;
use std::sync::Once;

use bytes::Bytes;
use common::{daemon::*, figures::*, processes::*, PYEXEC, PYEXECD};
use pyexec::client::{self, Io, Notice, Request};

/// The science image, as `scripts/test` and docs/operations.md build it.
const SCIENCE: &str = "pyexec/sandbox:science";
const PACKAGES: &str = "python3-numpy,python3-pandas,python3-matplotlib";

/// The plot example, and its data.
const PLOT: &str = include_str!("../examples/plot/plot.py");
const DATA: &str = include_str!("../examples/plot/data.csv");

fn ensure_science_image() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let out = Command::new(PYEXECD)
            .args(["build-image", "--packages", PACKAGES, "--tag", SCIENCE])
            .output()
            .expect("run pyexecd build-image");
        assert!(
            out.status.success(),
            "pyexecd build-image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), SCIENCE);
    });
}

/// What one session gave: its STARTED, exit status, stdout and stderr.
struct Ran {
    warm: bool,
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `script` in the image named `image` through the library, noting STARTED.
fn run_in(d: &Daemon, image: Option<&str>, script: &str) -> Ran {
    let cfg = d.client_config();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let outcome = client::run(
            &cfg,
            Request {
                script: Bytes::from(script.to_string()),
                image: image.map(String::from),
                ..Default::default()
            },
            Io::<tokio::io::Empty, _, _> {
                stdin: None,
                stdout: &mut stdout,
                stderr: &mut stderr,
                control: None,
                notices: Some(tx),
            },
        )
        .await
        .unwrap();
        let mut warm = None;
        while let Ok(n) = rx.try_recv() {
            if let Notice::Started(s) = n {
                warm = Some(s.warm);
            }
        }
        Ran {
            warm: warm.expect("a STARTED notice"),
            code: outcome.exit_code(),
            stdout: String::from_utf8(stdout).unwrap(),
            stderr: String::from_utf8(stderr).unwrap(),
        }
    })
}

/// The plot example as one script: its CSV written where plot.py reads it (what `pyexec
/// --file` will do), then plot.py, then the PNG's size and signature. Its first line
/// notes which modules the waiting interpreter had loaded before the script ran.
fn plot_script() -> String {
    format!(
        "import sys\nPRELOADED = ('pandas' in sys.modules, 'matplotlib.pyplot' in sys.modules)\n\
         open('data.csv', 'w').write({DATA:?})\n\
         exec(compile({PLOT:?}, 'plot.py', 'exec'), {{'__name__': '__main__'}})\n\
         png = open('plot.png', 'rb').read()\n\
         print('preloaded', *PRELOADED)\n\
         print('png', len(png), png[:8].hex())\n"
    )
}

#[test]
fn a_science_image_is_served_by_name_with_a_preloaded_warm_pool() {
    ensure_science_image();
    let d = Daemon::start(&[
        "--extra-image",
        &format!("science={SCIENCE}"),
        "--image-warm",
        "science=1",
        "--preload",
        "science=pandas,matplotlib.pyplot",
    ]);
    wait_pool_ready(&d);
    assert_eq!(
        warm_target(&d),
        2,
        "one default spare and one science spare"
    );

    // The default image is untouched: warm, and nothing of the science image in it.
    let hello = run_in(
        &d,
        None,
        "import sys\nprint('hello', 'pandas' in sys.modules)\n",
    );
    assert!(hello.warm, "the default image's pool serves it");
    assert_eq!((hello.code, hello.stdout.as_str()), (0, "hello False\n"));

    // A science session: the modules are there before the script imports them, and the
    // import prints nothing (no font cache rebuilt, no MPLCONFIGDIR warning).
    let science = run_in(
        &d,
        Some("science"),
        "import sys\nprint('pandas' in sys.modules, 'matplotlib.pyplot' in sys.modules)\n\
         import pandas, matplotlib.pyplot, numpy\nprint(pandas.__version__ > '1')\n",
    );
    assert!(science.warm, "served from the science pool");
    assert_eq!(
        (
            science.code,
            science.stdout.as_str(),
            science.stderr.as_str()
        ),
        (0, "True True\nTrue\n", ""),
    );

    // The plot example, in a spare started after the last session: a real PNG.
    wait_pool_ready(&d);
    let plot = run_in(&d, Some("science"), &plot_script());
    assert_eq!(
        (plot.code, plot.stderr.as_str()),
        (0, ""),
        "{}",
        plot.stdout
    );
    assert!(plot.warm);
    assert!(
        plot.stdout.starts_with("plot.png: 52 weeks"),
        "{}",
        plot.stdout
    );
    assert!(
        plot.stdout.contains("preloaded True True\n"),
        "{}",
        plot.stdout
    );
    let png = plot.stdout.lines().last().unwrap();
    let size: usize = png.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(png.ends_with(" 89504e470d0a1a0a"), "{png}");
    assert!(size > 10_000, "{png}");

    // A name the server does not offer: refused before anything runs, with the names
    // it does offer.
    let out = Command::new(PYEXEC)
        .args(["--server", &d.addr.to_string(), "--image", "nope", "--ca"])
        .arg(d.ca())
        .arg(d.script_file("print('never')"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = stderr_str(&out);
    assert!(
        err.contains("unknown image \"nope\"") && err.contains("default, science"),
        "{err}"
    );
    assert_eq!(stdout_str(&out), "");
    d.stop();
}

/// Without a warm spare and without preloading (a cold container), matplotlib still
/// finds its font cache and says nothing on stderr: the image's prepared home is copied
/// into HOME by the bootstrap.
#[test]
fn a_cold_science_container_imports_matplotlib_silently() {
    ensure_science_image();
    let d = Daemon::start(&[
        "--extra-image",
        &format!("science={SCIENCE}"),
        "--image-warm",
        "science=0",
    ]);
    let ran = run_in(
        &d,
        Some("science"),
        "import os, matplotlib.pyplot, matplotlib\n\
         print(matplotlib.get_cachedir(), sorted(os.listdir(matplotlib.get_cachedir())))\n",
    );
    assert!(!ran.warm);
    assert_eq!(ran.stderr, "", "nothing of the sandbox's making on stderr");
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, "/tmp/.cache/matplotlib ['fontlist-v330.json']\n")
    );
    d.stop();
}
