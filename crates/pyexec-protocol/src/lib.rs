//! The pyexec wire protocol: typed frames (`frame`), their tokio-util codec (`codec`), the
//! limits on a `HELLO`'s arguments (`args`) and the exit status of a session's end (`exit`).
//!
//! `docs/protocol.md` is the normative description; this crate is its executable twin,
//! shared by the daemon and the clients. Parsing lives in `frame.rs` and touches no I/O,
//! so it can be unit-tested and fuzzed byte by byte; `codec.rs` only adds the length
//! prefix and the size bound.

#![deny(unsafe_code)]

pub mod args;
pub mod codec;
pub mod exit;
pub mod files;
pub mod frame;

pub use args::{check_args, ArgsError, MAX_ARGS, MAX_ARGS_BYTES};
pub use codec::{CodecError, DataRun, FrameCodec};
pub use exit::exit_code_for;
pub use frame::{
    grant, End, EndReason, ErrorCode, ErrorMsg, Frame, FrameError, FrameType, Hello, Limits,
    Queued, Started, Usage, Welcome, HEADER_LEN,
};

/// Feature `input_wanted` (protocol §10.3): the server sends `INPUT_WANTED` when the
/// script is blocked reading a stdin that holds nothing unread.
pub const INPUT_WANTED: &str = "input_wanted";

/// The protocol version this build speaks. Sent in `HELLO` and `WELCOME`.
pub const PROTOCOL_VERSION: u32 = 1;

/// ALPN identifier offered by clients and required by nothing: it lets a TLS-terminating
/// proxy or a packet capture tell pyexec traffic apart.
pub const ALPN: &[u8] = b"pyexec/1";

/// Largest frame body (type byte excluded) either side may send. Bounds every buffer
/// on both ends: a peer announcing more is cut off before anything is allocated.
pub const MAX_FRAME_PAYLOAD: usize = 128 * 1024;

/// Largest chunk a sender should put in one data frame (SCRIPT, STDIN, STDOUT, STDERR).
/// Smaller than `MAX_FRAME_PAYLOAD` so that control frames never wait long behind data.
pub const DATA_CHUNK: usize = 64 * 1024;

/// STDIN payload bytes a client may send ahead of `STDIN_CREDIT` (announced in `WELCOME`
/// as `limits.stdin_window`; fixed in version 1).
pub const STDIN_WINDOW: u32 = 256 * 1024;
