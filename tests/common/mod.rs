//! Test harness: starts the real `pyexecd` on a free port against the real Docker Engine,
//! with real TLS material, and drives it with the real `pyexec` binary.
//!
//! One module per purpose:
//!
//! | module      | what it holds                                                          |
//! |-------------|------------------------------------------------------------------------|
//! | `daemon`    | `Daemon`: start, drive, stop or crash a `pyexecd`; its log             |
//! | `processes` | child processes and `/proc`: waits, output watchers, descriptors, RSS  |
//! | `docker`    | the Engine's side: a daemon's containers, whether one container exists |
//! | `engines`   | extra Docker Engines on this machine, each in a network namespace      |
//! | `figures`   | the daemon's figures: `/metrics` and the SIGUSR1 line, one parser each |
//! | `idle`      | back to idle after a hostile case: containers, descriptors, sessions   |
//! | `raw`       | the raw protocol client over real TLS, for frames no real client sends |
//! | `web`       | the playground: HTTPS by hand, WebSocket sessions, the key pin for Chromium |
//!
//! Every daemon gets its own instance name, so its containers carry their own label; the
//! harness removes whatever carries that label when the daemon is dropped, even when the
//! test failed, and the tests that check for leaks look at that label only.
//!
//! Each test binary compiles this module on its own and uses a part of it, so a test file
//! declares it with `#[allow(dead_code)]` on that one line. What no binary uses at all is
//! deleted, not allowed. To find it, count each unused item over every binary (an item
//! counted as many times as there are binaries is dead):
//!
//! ```text
//! for t in $(grep -l '^mod common;' tests/*.rs | xargs basename -s .rs); do
//!     cargo rustc -q --test "$t" --message-format=short -- --force-warn dead_code 2>&1
//! done | grep -o 'tests/common/.*never.*' | sort | uniq -c | sort -rn
//! ```

pub mod daemon;
pub mod docker;
pub mod engines;
pub mod figures;
pub mod idle;
pub mod processes;
pub mod raw;
pub mod web;

/// The daemon under test, as Cargo built it for this test run.
pub const PYEXECD: &str = env!("CARGO_BIN_EXE_pyexecd");
/// `pyexec` belongs to the `pyexec-client` package, so Cargo defines no
/// `CARGO_BIN_EXE_pyexec` for these tests: it is the file beside `pyexecd`, in the same
/// target directory and profile. `cargo build` at the root builds both (both packages
/// are default members), and so does a `cargo test` or `cargo nextest run` of the whole
/// workspace (for the client's own integration tests); `scripts/test` builds both first.
pub const PYEXEC: &str = beside_pyexecd();

/// `PYEXECD` without its final `d`: `.../target/debug/pyexec`.
const fn beside_pyexecd() -> &'static str {
    let (path, d) = PYEXECD.as_bytes().split_at(PYEXECD.len() - 1);
    assert!(d[0] == b'd', "CARGO_BIN_EXE_pyexecd ends with pyexecd");
    match std::str::from_utf8(path) {
        Ok(path) => path,
        Err(_) => panic!("CARGO_BIN_EXE_pyexecd is UTF-8"),
    }
}
