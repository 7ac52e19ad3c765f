//! Command line: which parts to run and how many repetitions. Every count has a full
//! default (a few minutes in all) and a `--quick` default (about a minute); an explicit
//! value wins over both.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Part {
    /// hello-world wall time: pyexec vs docker run vs an Engine API cold start
    Hello,
    /// hello-world sessions per second at a fixed concurrency
    Throughput,
    /// per-line round trip of an echo script
    Echo,
    /// stdout throughput of a 256 MiB flood
    Stdout,
    /// pyexecd's memory: idle, per running session, under a slow reader
    Memory,
    /// several Docker Engines: a remote engine over TLS against the local socket, and
    /// sessions per second with 1, 2 and 3 engines (needs root: it starts dockerds in
    /// network namespaces)
    Engines,
    /// 50 MiB up and down (feature `files`) vs `docker cp` into and out of a container
    Files,
}

#[derive(Debug, Parser)]
#[command(
    name = "pyexec-bench",
    about = "Measures pyexec against plain Docker on the same image and machine",
    after_help = "Prints progress on stderr and the table on stdout. Run it as\n  \
                  cargo run --release -p pyexec-bench -- --quick --markdown bench.md"
)]
pub struct Opts {
    /// Parts to run (comma-separated); all by default.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Vec<Part>,
    /// Fewer repetitions everywhere: about a minute instead of a few.
    #[arg(long)]
    pub quick: bool,
    /// Also write the table, with a header describing the machine, to this file.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Directory holding pyexecd and pyexec (default: next to this binary, after
    /// building them with `cargo build --release -p pyexec -p pyexec-client --bins`).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Do not build pyexec first; measure the binaries already there.
    #[arg(long)]
    pub no_build: bool,
    /// Sandbox image for pyexec and the baselines alike.
    #[arg(long, default_value = pyexec::config::DEFAULT_IMAGE)]
    pub image: String,
    /// --max-sessions of the daemon used for hello, throughput, echo and stdout.
    #[arg(long, default_value_t = 8)]
    pub max_sessions: u32,
    /// --warm of that daemon (default: pyexecd's own default, which is --max-sessions).
    /// Ignored, with a note, when pyexecd has no --warm flag.
    #[arg(long)]
    pub warm: Option<u32>,
    /// Timed hello-world runs per variant, in the hello and engines parts [full 20, quick 5].
    #[arg(long)]
    pub hello_reps: Option<usize>,
    /// Concurrency of the throughput loops.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// pyexec sessions in the throughput loop, and per engine count in the engines part
    /// [full 200, quick 40].
    #[arg(long)]
    pub sessions: Option<usize>,
    /// Engine API create-start-wait-remove cycles in the throughput loop [full 200, quick 40].
    #[arg(long)]
    pub engine_sessions: Option<usize>,
    /// `docker run` processes in the throughput loop [full 40, quick 12].
    #[arg(long)]
    pub docker_sessions: Option<usize>,
    /// Timed echo round trips per variant [full 500, quick 200].
    #[arg(long)]
    pub echo_lines: Option<usize>,
    /// MiB the stdout flood writes [full 256, quick 64].
    #[arg(long)]
    pub stdout_mib: Option<u64>,
    /// Timed stdout floods per variant [full 3, quick 1].
    #[arg(long)]
    pub stdout_reps: Option<usize>,
    /// Sessions held open for the per-session memory figure [full 16, quick 16].
    #[arg(long)]
    pub mem_sessions: Option<usize>,
    /// MiB of the flood read slowly (64 KiB every 10 ms, ~6 MB/s) for the peak-memory
    /// figure [full 256, quick 32].
    #[arg(long)]
    pub flood_mib: Option<u64>,
    /// Timed 50 MiB uploads and downloads per variant in the files part [full 5, quick 3].
    #[arg(long)]
    pub files_reps: Option<usize>,
}

/// The counts of one run, defaults resolved.
#[derive(Debug, Clone)]
pub struct Params {
    pub max_sessions: u32,
    pub warm: Option<u32>,
    pub hello_reps: usize,
    pub concurrency: usize,
    pub sessions: usize,
    pub engine_sessions: usize,
    pub docker_sessions: usize,
    pub echo_lines: usize,
    pub stdout_mib: u64,
    pub stdout_reps: usize,
    pub mem_sessions: usize,
    pub flood_mib: u64,
    pub files_reps: usize,
}

impl Opts {
    pub fn params(&self) -> Params {
        let pick = |given: Option<usize>, full: usize, quick: usize| {
            given
                .unwrap_or(if self.quick { quick } else { full })
                .max(1)
        };
        let pick_mib = |given: Option<u64>, full: u64, quick: u64| {
            given
                .unwrap_or(if self.quick { quick } else { full })
                .max(1)
        };
        Params {
            max_sessions: self.max_sessions.max(1),
            warm: self.warm,
            hello_reps: pick(self.hello_reps, 20, 5),
            concurrency: self.concurrency.max(1),
            sessions: pick(self.sessions, 200, 40),
            engine_sessions: pick(self.engine_sessions, 200, 40),
            docker_sessions: pick(self.docker_sessions, 40, 12),
            echo_lines: pick(self.echo_lines, 500, 200),
            stdout_mib: pick_mib(self.stdout_mib, 256, 64),
            stdout_reps: pick(self.stdout_reps, 3, 1),
            mem_sessions: pick(self.mem_sessions, 16, 16),
            flood_mib: pick_mib(self.flood_mib, 256, 32),
            files_reps: pick(self.files_reps, 5, 3),
        }
    }

    pub fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}
