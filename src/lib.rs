//! pyexec: run untrusted Python scripts in fresh Docker containers, streamed live over TLS 1.3.
//!
//! The daemon (`pyexecd`) is a handful of actix actors: a `listener::Listener` accepts
//! connections and runs TLS handshakes, a `session::Session` per connection speaks the
//! protocol, a `container::ContainerActor` per sandbox owns its Docker attach streams, a
//! `supervisor::Supervisor` caps concurrency and time, and `status::Status` counts.
//!
//! The wire protocol is the `pyexec-protocol` crate and the client (the library and the
//! `pyexec` binary) the `pyexec-client` crate, which builds without this one. Both are
//! re-exported here (`protocol`, `client`, `stdio`) so that the daemon, the tests and the
//! benchmark reach either end through one crate.

// Unsafe code only where a syscall has no safe wrapper, allowed there with a comment.
#![deny(unsafe_code)]

pub use pyexec_client as client;
pub use pyexec_client::stdio;
pub use pyexec_protocol as protocol;

pub(crate) mod archive;
pub mod bootstrap;
pub mod certs;
pub(crate) mod client_limits;
pub mod config;
pub(crate) mod connections;
pub(crate) mod container;
pub(crate) mod engine;
pub(crate) mod files_out;
pub mod fleet;
pub mod image;
pub mod image_copy;
pub(crate) mod listener;
pub(crate) mod messages;
pub mod metrics;
pub(crate) mod proxy_protocol;
pub mod sandbox;
pub mod server;
pub(crate) mod session;
pub(crate) mod shutdown;
pub(crate) mod status;
pub(crate) mod stdin_queue;
pub(crate) mod supervisor;
pub mod tcp_memory;
pub mod tls;
pub(crate) mod transport;
pub mod web;

/// The Docker Engine helpers, under their old path for the benchmark and the CLI.
pub use engine::docker;
pub(crate) mod token_bucket;
