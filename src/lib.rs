//! pyexec: run untrusted Python scripts in fresh Docker containers, streamed live over TLS 1.3.
//!
//! The daemon (`pyexecd`) is a handful of actix actors: a `listener::Listener` accepts
//! connections and runs TLS handshakes, a `session::Session` per connection speaks the
//! protocol, a `container::ContainerActor` per sandbox owns its Docker attach streams, a
//! `supervisor::Supervisor` caps concurrency and time, and `status::Status` counts.
//! The client (`pyexec`) is a thin binary over `client`.

pub mod bootstrap;
pub mod certs;
pub mod client;
pub mod client_limits;
pub mod config;
pub mod connections;
pub mod container;
pub mod engine;
pub mod image;
pub mod listener;
pub mod messages;
pub mod metrics;
pub mod protocol;
pub mod sandbox;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod status;
pub mod stdin_queue;
pub mod stdio;
pub mod supervisor;
pub mod tcp_memory;
pub mod tls;

/// The Docker Engine helpers, under their old path for the benchmark and the CLI.
pub use engine::docker;
pub mod token_bucket;
