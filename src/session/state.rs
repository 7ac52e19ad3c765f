//! The states a session moves through, as enums that carry their data, so that a
//! combination the protocol cannot reach (a script handed over twice, a container with
//! no admission, a closing session still counted as live) cannot be written.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::bootstrap::NONCE_LEN;
use crate::messages::ContainerHandle;
use crate::protocol::files::FileSet;
use crate::protocol::Frame;
use crate::status::Outcome;

/// Where the conversation with the client stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for HELLO.
    Hello,
    /// HELLO accepted; the script is arriving, the session may be queued or running.
    Active,
    /// END or ERROR has been queued and counted as this outcome; waiting for the writer
    /// and the client's close.
    Closing(Outcome),
}

/// The script's bytes, from HELLO to the container.
#[derive(Debug)]
pub(super) enum Upload {
    /// No HELLO yet.
    NotAnnounced,
    /// `size` bytes announced; `script` holds those received so far.
    Arriving { script: BytesMut, size: u64 },
    /// Every announced byte has arrived.
    Complete(Bytes),
    /// Given to the container in `Run`.
    HandedOver,
}

impl Upload {
    pub(super) fn complete(&self) -> bool {
        matches!(self, Upload::Complete(_) | Upload::HandedOver)
    }
}

/// The session's run slot, as granted by the Supervisor.
pub(super) enum Slot {
    /// No container: not asked yet, queued since `queued_at`, or refused.
    Waiting { queued_at: Option<Instant> },
    /// A container is ours; the script has not been handed to it yet.
    Held {
        container: ContainerHandle,
        admitted_at: Instant,
        queued_ms: u64,
    },
    /// `Run` has been sent.
    Running {
        container: ContainerHandle,
        start: Start,
    },
    /// The container has reported the script's end.
    Released,
}

impl Slot {
    pub(super) fn container(&self) -> Option<&ContainerHandle> {
        match self {
            Slot::Held { container, .. } | Slot::Running { container, .. } => Some(container),
            Slot::Waiting { .. } | Slot::Released => None,
        }
    }
}

/// Whether the script is in its container yet.
pub(super) enum Start {
    /// Not yet: what it takes to send the script again, to the container on another
    /// engine that the Supervisor hands over if this one fails to start.
    Pending(Box<Handover>),
    /// The container said the script is in (STARTED has gone to the client).
    Started,
}

/// A `Run` that can be made again.
pub(super) struct Handover {
    pub request: Bytes,
    pub nonce: [u8; NONCE_LEN],
    pub admitted_at: Instant,
    pub queued_ms: u64,
    /// A copy of the output channel's sender, dropped at STARTED.
    pub output: mpsc::Sender<Frame>,
    /// Feature `files`: file records follow the request; files out asked for, with caps.
    pub files_in: bool,
    pub files_out: Option<(u64, u32)>,
    /// Feature `input_wanted` granted: the pump turns the bootstrap's markers into frames.
    pub input_wanted: bool,
}

/// The files the client sends after its script (feature `files`).
#[derive(Debug)]
pub(super) enum FilesIn {
    /// The feature was not granted: FILE_IN frames are unknown frames.
    NotGranted,
    /// `left` FILE_IN headers still to come; `current` bytes of the last one's content.
    Arriving {
        set: FileSet,
        left: u32,
        current: u64,
    },
    /// Every announced file has arrived (or none was announced).
    Complete,
}

/// The client's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stdin {
    Open,
    /// STDIN_EOF has come: no more STDIN.
    Closed,
}

/// The writer task.
pub(super) enum Writer {
    NotStarted,
    Running(actix_rt::task::JoinHandle<()>),
    /// It has ended (after the terminal frame, or because the socket failed).
    Done,
}
