//! Extra Docker Engines on this machine, each a `dockerd` in a network namespace of its
//! own behind mutual TLS: the harness lives in the workspace crate `pyexec-testbed`
//! (`crates/pyexec-testbed`), which the benchmark uses too. Start one with
//! `RemoteEngine::start(EngineOptions::new(PYEXECD))`: the daemon under test makes the
//! certificates (`pyexecd gen-certs`).

// Only the multi-engine tests use it; every test binary compiles `common` (see its docs).
#[allow(unused_imports)]
pub use pyexec_testbed::*;
