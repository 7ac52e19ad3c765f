//! Frames of the pyexec protocol and their byte layout, with no I/O.
//!
//! A frame on the wire is `u32 length (big-endian) | u8 type | payload`, where `length`
//! counts the type byte and the payload. Data frames carry raw bytes; control frames
//! carry one UTF-8 JSON object. Keeping the hot path (stdout, stderr, stdin) free of any
//! encoding means a chunk from Docker goes to TLS with one header in front and nothing
//! else; keeping control frames in JSON means a client in any language needs nothing but
//! its standard library, and unknown fields can be added without a version bump.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::files::{FileHeader, FilesHello, FilesLimits, FilesOutEnd};
use crate::MAX_FRAME_PAYLOAD;

/// Size of the length prefix plus the type byte.
pub const HEADER_LEN: usize = 5;

/// The type byte of each frame. Client-to-server types are below 0x80, server-to-client
/// types at or above it, so a frame sent the wrong way round is recognisably an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    Script = 0x02,
    Stdin = 0x03,
    StdinEof = 0x04,
    Signal = 0x05,
    Cancel = 0x06,
    /// Feature `files` (§10.2): a file's header, then its bytes.
    FileIn = 0x07,
    FileInData = 0x08,
    Welcome = 0x81,
    Queued = 0x82,
    Started = 0x83,
    Stdout = 0x84,
    Stderr = 0x85,
    StdinCredit = 0x86,
    End = 0x87,
    Error = 0x88,
    /// Feature `files` (§10.2): a result file's header, its bytes, the end of them all.
    FileOut = 0x89,
    FileOutData = 0x8a,
    FilesOutEnd = 0x8b,
    /// Feature `input_wanted` (§10.3): the script is blocked reading an empty stdin.
    InputWanted = 0x8c,
}

impl FrameType {
    pub fn from_byte(b: u8) -> Option<Self> {
        use FrameType::*;
        Some(match b {
            0x01 => Hello,
            0x02 => Script,
            0x03 => Stdin,
            0x04 => StdinEof,
            0x05 => Signal,
            0x06 => Cancel,
            0x07 => FileIn,
            0x08 => FileInData,
            0x81 => Welcome,
            0x82 => Queued,
            0x83 => Started,
            0x84 => Stdout,
            0x85 => Stderr,
            0x86 => StdinCredit,
            0x87 => End,
            0x88 => Error,
            0x89 => FileOut,
            0x8a => FileOutData,
            0x8b => FilesOutEnd,
            0x8c => InputWanted,
            _ => return None,
        })
    }

    /// The name used in `docs/protocol.md` and in error messages.
    pub fn name(self) -> &'static str {
        use FrameType::*;
        match self {
            Hello => "HELLO",
            Script => "SCRIPT",
            Stdin => "STDIN",
            StdinEof => "STDIN_EOF",
            Signal => "SIGNAL",
            Cancel => "CANCEL",
            FileIn => "FILE_IN",
            FileInData => "FILE_IN_DATA",
            Welcome => "WELCOME",
            Queued => "QUEUED",
            Started => "STARTED",
            Stdout => "STDOUT",
            Stderr => "STDERR",
            StdinCredit => "STDIN_CREDIT",
            End => "END",
            Error => "ERROR",
            FileOut => "FILE_OUT",
            FileOutData => "FILE_OUT_DATA",
            FilesOutEnd => "FILES_OUT_END",
            InputWanted => "INPUT_WANTED",
        }
    }
}

/// First frame from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub version: u32,
    /// Exact number of script bytes that follow in SCRIPT frames. Announced up front so
    /// that the server can refuse an oversized script before a byte of it is read.
    pub script_size: u64,
    /// Becomes `sys.argv[1:]`.
    #[serde(default)]
    pub args: Vec<String>,
    /// File name of the script (`hello.py`), so that `sys.argv[0]` and tracebacks read
    /// as they would locally. Optional; the server falls back to `main.py`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free-form client identification for the server's log, e.g. `pyexec 0.1.0`.
    #[serde(default)]
    pub client: String,
    /// A shorter time limit the client asks for (milliseconds from accept); the server
    /// applies the smaller of this and its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Only ask who the server is: it answers WELCOME, then END, and runs nothing.
    /// `script_size` must be 0.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probe: bool,
    /// Optional features the client can take (protocol §10.1), e.g. `files`. The server
    /// grants a subset in WELCOME and sends a feature's frames only once granted, so a
    /// client that asks for nothing never sees a frame type it does not know.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Feature `files` (§10.2): the files that follow the script, and the patterns of
    /// those to send back. Read only when the feature is granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesHello>,
    /// The image to run in, by the name the server gives it (`science`); none is the
    /// server's default image. An unknown name is `ERROR image`, listing the names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// The server's limits for this session, announced in WELCOME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub script_size: u64,
    pub timeout_ms: u64,
    pub output_bytes: u64,
    /// Bytes of STDIN the client may have sent beyond those acknowledged by STDIN_CREDIT.
    pub stdin_window: u32,
    /// Feature `files` (§10.2): present only when it is granted.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesLimits>,
}

/// The server accepted HELLO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub version: u32,
    pub server: String,
    pub session: String,
    pub limits: Limits,
    /// The features of HELLO that the server grants for this session (§10.1); absent
    /// from an older server, which grants none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// The features a session may negotiate (protocol §10.1): what the server grants is the
/// part of HELLO's list that it implements, in HELLO's order.
pub fn grant(asked: &[String], offered: &[&str]) -> Vec<String> {
    let mut granted: Vec<String> = Vec::new();
    for feature in asked {
        if offered.contains(&feature.as_str()) && !granted.contains(feature) {
            granted.push(feature.clone());
        }
    }
    granted
}

/// The session waits for a free slot; `position` 1 means next in line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub position: u32,
}

/// The script has been handed to Python.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// Time spent waiting in the queue.
    pub queued_ms: u64,
    /// Time from the session's admission to the script being handed over.
    pub start_ms: u64,
    /// Whether the container came from the warm pool.
    #[serde(default)]
    pub warm: bool,
}

/// Why a session ended. Unknown values from a newer server parse as `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The script exited on its own; `exit_code` is its status.
    Exited,
    /// The script was killed by signal `signal`; `exit_code` is 128 + signal.
    Signal,
    /// The session reached its time limit.
    Timeout,
    /// The script wrote more than `limits.output_bytes` and was stopped.
    OutputLimit,
    /// The container ran out of memory and the kernel killed the script.
    Oom,
    /// The client cancelled the session (CANCEL, or a signal before the script started).
    Cancelled,
    /// The server is shutting down.
    Shutdown,
    #[serde(other)]
    Unknown,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Exited => "exited",
            EndReason::Signal => "signal",
            EndReason::Timeout => "timeout",
            EndReason::OutputLimit => "output_limit",
            EndReason::Oom => "oom",
            EndReason::Cancelled => "cancelled",
            EndReason::Shutdown => "shutdown",
            EndReason::Unknown => "unknown",
        }
    }

    pub const ALL: [EndReason; 7] = [
        EndReason::Exited,
        EndReason::Signal,
        EndReason::Timeout,
        EndReason::OutputLimit,
        EndReason::Oom,
        EndReason::Cancelled,
        EndReason::Shutdown,
    ];
}

/// Last frame of a session that got as far as being admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    pub reason: EndReason,
    /// The status a client should exit with (see the table in `docs/protocol.md`).
    pub exit_code: i32,
    /// The signal that killed the script, when `reason` is `signal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Milliseconds from the server accepting the connection to this frame.
    pub duration_ms: u64,
    /// Human-readable explanation; empty for a script that exited on its own.
    #[serde(default)]
    pub message: String,
    /// What the script used (§4.5): absent fields are unknown.
    #[serde(flatten)]
    pub usage: Usage,
}

/// What a script used, reported in `END` (protocol §4.5). Each field is optional: a
/// server that cannot tell (the container was killed whole, an older server) leaves it
/// out, and clients that do not know the fields ignore them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time of the script and everything it started, user + system, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// Peak memory of the script's container, in bytes (the sandbox's own interpreter,
    /// about 10 MiB, included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// Bytes of stdout and stderr delivered to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
}

/// What went wrong when the script could not be run (or could not go on running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Every slot and every queue place is taken.
    Busy,
    /// The client speaks a protocol version the server does not.
    Version,
    /// The script or its arguments exceed the server's limits.
    TooLarge,
    /// The peer broke the protocol (bad frame, wrong order, window exceeded).
    Protocol,
    /// The client was too slow to send its script.
    UploadTimeout,
    /// The Docker Engine failed or is unreachable.
    Docker,
    /// The server is shutting down and takes no new sessions.
    Shutdown,
    /// The client is not allowed to start another session now.
    Limited,
    /// A bug or an unexpected condition in the server.
    Internal,
    /// `HELLO.image` names no image this server offers.
    Image,
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Busy => "busy",
            ErrorCode::Version => "version",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Protocol => "protocol",
            ErrorCode::UploadTimeout => "upload_timeout",
            ErrorCode::Docker => "docker",
            ErrorCode::Shutdown => "shutdown",
            ErrorCode::Limited => "limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Image => "image",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// A terminal error: the connection closes after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    #[serde(default)]
    pub message: String,
}

impl ErrorMsg {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorMsg {
            code,
            message: message.into(),
        }
    }
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Script(Bytes),
    Stdin(Bytes),
    StdinEof,
    Signal(u8),
    Cancel,
    Welcome(Welcome),
    Queued(Queued),
    Started(Started),
    Stdout(Bytes),
    Stderr(Bytes),
    StdinCredit(u32),
    End(End),
    Error(ErrorMsg),
    FileIn(FileHeader),
    FileInData(Bytes),
    FileOut(FileHeader),
    FileOutData(Bytes),
    FilesOutEnd(FilesOutEnd),
    InputWanted,
}

/// A frame that is well delimited but whose content is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("empty frame (no type byte)")]
    Empty,
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("{frame} frame: {reason}")]
    BadPayload { frame: &'static str, reason: String },
    #[error("frame payload of {0} bytes exceeds the limit of {max}", max = MAX_FRAME_PAYLOAD)]
    TooLarge(usize),
}

fn bad(ty: FrameType, reason: impl Into<String>) -> FrameError {
    FrameError::BadPayload {
        frame: ty.name(),
        reason: reason.into(),
    }
}

fn json<T: for<'de> Deserialize<'de>>(ty: FrameType, payload: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(payload).map_err(|e| bad(ty, e.to_string()))
}

fn empty(ty: FrameType, payload: &[u8]) -> Result<(), FrameError> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err(bad(
            ty,
            format!("expected no payload, got {} bytes", payload.len()),
        ))
    }
}

impl Frame {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Script(_) => FrameType::Script,
            Frame::Stdin(_) => FrameType::Stdin,
            Frame::StdinEof => FrameType::StdinEof,
            Frame::Signal(_) => FrameType::Signal,
            Frame::Cancel => FrameType::Cancel,
            Frame::Welcome(_) => FrameType::Welcome,
            Frame::Queued(_) => FrameType::Queued,
            Frame::Started(_) => FrameType::Started,
            Frame::Stdout(_) => FrameType::Stdout,
            Frame::Stderr(_) => FrameType::Stderr,
            Frame::StdinCredit(_) => FrameType::StdinCredit,
            Frame::End(_) => FrameType::End,
            Frame::Error(_) => FrameType::Error,
            Frame::FileIn(_) => FrameType::FileIn,
            Frame::FileInData(_) => FrameType::FileInData,
            Frame::FileOut(_) => FrameType::FileOut,
            Frame::FileOutData(_) => FrameType::FileOutData,
            Frame::FilesOutEnd(_) => FrameType::FilesOutEnd,
            Frame::InputWanted => FrameType::InputWanted,
        }
    }

    /// END and ERROR are the last frames a server sends.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Frame::End(_) | Frame::Error(_))
    }

    /// Parses one frame body (the bytes after the length prefix). Data payloads are
    /// sliced out of `body` without copying.
    pub fn parse(mut body: Bytes) -> Result<Frame, FrameError> {
        if body.is_empty() {
            return Err(FrameError::Empty);
        }
        let ty_byte = body[0];
        let ty = FrameType::from_byte(ty_byte).ok_or(FrameError::UnknownType(ty_byte))?;
        let payload = body.split_off(1);
        if payload.len() > MAX_FRAME_PAYLOAD {
            return Err(FrameError::TooLarge(payload.len()));
        }
        Ok(match ty {
            FrameType::Hello => Frame::Hello(json(ty, &payload)?),
            FrameType::Script => Frame::Script(payload),
            FrameType::Stdin => {
                if payload.is_empty() {
                    return Err(bad(ty, "empty STDIN frame (use STDIN_EOF to close stdin)"));
                }
                Frame::Stdin(payload)
            }
            FrameType::StdinEof => {
                empty(ty, &payload)?;
                Frame::StdinEof
            }
            FrameType::Signal => match payload[..] {
                [sig] => Frame::Signal(sig),
                _ => return Err(bad(ty, "expected exactly one byte, the signal number")),
            },
            FrameType::Cancel => {
                empty(ty, &payload)?;
                Frame::Cancel
            }
            FrameType::Welcome => Frame::Welcome(json(ty, &payload)?),
            FrameType::Queued => Frame::Queued(json(ty, &payload)?),
            FrameType::Started => Frame::Started(json(ty, &payload)?),
            FrameType::Stdout => Frame::Stdout(payload),
            FrameType::Stderr => Frame::Stderr(payload),
            FrameType::StdinCredit => match payload[..] {
                [a, b, c, d] => Frame::StdinCredit(u32::from_be_bytes([a, b, c, d])),
                _ => return Err(bad(ty, "expected a 4-byte big-endian count")),
            },
            FrameType::End => Frame::End(json(ty, &payload)?),
            FrameType::Error => Frame::Error(json(ty, &payload)?),
            FrameType::FileIn => Frame::FileIn(json(ty, &payload)?),
            FrameType::FileOut => Frame::FileOut(json(ty, &payload)?),
            FrameType::FilesOutEnd => Frame::FilesOutEnd(json(ty, &payload)?),
            // Empty data frames would carry nothing and could be sent forever.
            FrameType::FileInData | FrameType::FileOutData if payload.is_empty() => {
                return Err(bad(ty, "empty data frame"))
            }
            FrameType::FileInData => Frame::FileInData(payload),
            FrameType::FileOutData => Frame::FileOutData(payload),
            FrameType::InputWanted => {
                empty(ty, &payload)?;
                Frame::InputWanted
            }
        })
    }

    /// Appends the whole frame, length prefix included, to `dst`.
    ///
    /// Fails without touching `dst` when the payload would exceed `MAX_FRAME_PAYLOAD`,
    /// so a bug on our side can never put an unreadable frame on the wire.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        let ty = self.frame_type() as u8;
        let raw = |dst: &mut BytesMut, payload: &[u8]| put_raw(dst, ty, &[payload]);
        match self {
            Frame::Script(b)
            | Frame::Stdin(b)
            | Frame::Stdout(b)
            | Frame::Stderr(b)
            | Frame::FileInData(b)
            | Frame::FileOutData(b) => raw(dst, b),
            Frame::StdinEof | Frame::Cancel | Frame::InputWanted => raw(dst, &[]),
            Frame::Signal(sig) => raw(dst, &[*sig]),
            Frame::StdinCredit(n) => raw(dst, &n.to_be_bytes()),
            Frame::Hello(v) => encode_json(dst, ty, v),
            Frame::Welcome(v) => encode_json(dst, ty, v),
            Frame::Queued(v) => encode_json(dst, ty, v),
            Frame::Started(v) => encode_json(dst, ty, v),
            Frame::End(v) => encode_json(dst, ty, v),
            Frame::Error(v) => encode_json(dst, ty, v),
            Frame::FileIn(v) | Frame::FileOut(v) => encode_json(dst, ty, v),
            Frame::FilesOutEnd(v) => encode_json(dst, ty, v),
        }
    }
}

/// Appends one frame of type `ty` whose payload is `parts` laid end to end: the one place
/// a raw frame's header is written (`DataRun` merges output chunks through it too).
pub(crate) fn put_raw<P: AsRef<[u8]>>(
    dst: &mut BytesMut,
    ty: u8,
    parts: &[P],
) -> Result<(), FrameError> {
    let len: usize = parts.iter().map(|p| p.as_ref().len()).sum();
    if len > MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    dst.reserve(HEADER_LEN + len);
    // Cannot truncate: bounded by MAX_FRAME_PAYLOAD just above.
    dst.put_u32(len as u32 + 1);
    dst.put_u8(ty);
    for part in parts {
        dst.extend_from_slice(part.as_ref());
    }
    Ok(())
}

fn encode_json<T: Serialize>(dst: &mut BytesMut, ty: u8, value: &T) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_u32(0); // patched below, once the payload length is known
    dst.put_u8(ty);
    let written = serde_json::to_writer((&mut *dst).writer(), value);
    let payload_len = dst.len() - start - HEADER_LEN;
    if let Err(e) = written {
        dst.truncate(start);
        return Err(FrameError::BadPayload {
            frame: "control",
            reason: e.to_string(),
        });
    }
    if payload_len > MAX_FRAME_PAYLOAD {
        dst.truncate(start);
        return Err(FrameError::TooLarge(payload_len));
    }
    dst[start..start + 4].copy_from_slice(&(payload_len as u32 + 1).to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                version: 1,
                script_size: 12,
                args: vec!["a".into(), "ü b".into()],
                name: Some("hello.py".into()),
                client: "test".into(),
                timeout_ms: Some(5000),
                probe: false,
                features: vec!["files".into()],
                files: Some(FilesHello {
                    count: 2,
                    bytes: 10,
                    get: vec!["plot.png".into()],
                }),
                image: Some("science".into()),
            }),
            Frame::FileIn(FileHeader {
                name: "data/a.csv".into(),
                size: 3,
            }),
            Frame::FileInData(Bytes::from_static(b"1,2")),
            Frame::Script(Bytes::from_static(b"print('hi')\n")),
            Frame::Stdin(Bytes::from_static(b"\x00\xffline\n")),
            Frame::StdinEof,
            Frame::Signal(2),
            Frame::Cancel,
            Frame::Welcome(Welcome {
                version: 1,
                server: "pyexecd 0.1.0".into(),
                session: "7".into(),
                limits: Limits {
                    script_size: 1 << 20,
                    timeout_ms: 60_000,
                    output_bytes: 1 << 30,
                    stdin_window: 1 << 18,
                    files: Some(FilesLimits {
                        files_in_bytes: 32 << 20,
                        files_in_count: 1000,
                        file_path_len: 1024,
                        files_out_bytes: 64 << 20,
                        files_out_count: 1000,
                    }),
                },
                features: vec!["files".into()],
            }),
            Frame::FileOut(FileHeader {
                name: "plot.png".into(),
                size: 2,
            }),
            Frame::FileOutData(Bytes::from_static(b"\x89P")),
            Frame::FilesOutEnd(FilesOutEnd {
                unmatched: vec!["*.svg".into()],
                skipped: vec![crate::files::Skipped {
                    name: "link.png".into(),
                    reason: "a symbolic link".into(),
                }],
                message: String::new(),
            }),
            Frame::Queued(Queued { position: 3 }),
            Frame::Started(Started {
                queued_ms: 5,
                start_ms: 100,
                warm: true,
            }),
            Frame::Stdout(Bytes::from_static(b"Name: ")),
            Frame::Stderr(Bytes::from((0..=255u8).collect::<Vec<_>>())),
            Frame::StdinCredit(65_536),
            Frame::InputWanted,
            Frame::End(End {
                reason: EndReason::Signal,
                exit_code: 137,
                signal: Some(9),
                duration_ms: 1234,
                message: "killed by signal 9 (SIGKILL)".into(),
                usage: Usage {
                    cpu_ms: Some(1020),
                    peak_memory_bytes: Some(110 << 20),
                    output_bytes: Some(6),
                },
            }),
            Frame::Error(ErrorMsg::new(ErrorCode::Busy, "server busy")),
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in samples() {
            let mut buf = BytesMut::new();
            frame.encode(&mut buf).unwrap();
            let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
            assert_eq!(len, buf.len() - 4, "length prefix of {frame:?}");
            assert_eq!(buf[4], frame.frame_type() as u8);
            let parsed = Frame::parse(buf.split_off(4).freeze()).unwrap();
            assert_eq!(parsed, frame);
        }
    }

    #[test]
    fn unknown_type_is_rejected() {
        assert_eq!(
            Frame::parse(Bytes::from_static(&[0x42, 1, 2])),
            Err(FrameError::UnknownType(0x42))
        );
        assert_eq!(Frame::parse(Bytes::new()), Err(FrameError::Empty));
    }

    #[test]
    fn malformed_payloads_are_rejected() {
        let cases: &[&[u8]] = &[
            &[0x01, b'{'],       // HELLO with broken JSON
            &[0x01, b'{', b'}'], // HELLO without required fields
            &[0x03],             // empty STDIN
            &[0x04, 0],          // STDIN_EOF with payload
            &[0x05],             // SIGNAL without number
            &[0x05, 2, 2],       // SIGNAL with two bytes
            &[0x86, 0, 1],       // short STDIN_CREDIT
            &[0x87, b'[', b']'], // END that is not an object
            &[0x07, b'{', b'}'], // FILE_IN without name and size
            &[0x08],             // empty FILE_IN_DATA
            &[0x8a],             // empty FILE_OUT_DATA
            &[0x89, b'{', b'}'], // FILE_OUT without name and size
            &[0x8b, b'1'],       // FILES_OUT_END that is not an object
            &[0x8c, 0],          // INPUT_WANTED with a payload
        ];
        for case in cases {
            let err = Frame::parse(Bytes::copy_from_slice(case)).unwrap_err();
            assert!(
                matches!(err, FrameError::BadPayload { .. }),
                "{case:?}: {err}"
            );
        }
    }

    #[test]
    fn unknown_json_fields_and_values_are_tolerated() {
        let body = br#"{"reason":"meteor","exit_code":1,"duration_ms":3,"new_field":true}"#;
        let mut frame = vec![0x87];
        frame.extend_from_slice(body);
        match Frame::parse(Bytes::from(frame)).unwrap() {
            Frame::End(end) => {
                assert_eq!(end.reason, EndReason::Unknown);
                assert_eq!(end.message, "");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_payload_is_not_encoded() {
        let mut buf = BytesMut::new();
        let big = Frame::Stdout(Bytes::from(vec![0u8; MAX_FRAME_PAYLOAD + 1]));
        assert_eq!(
            big.encode(&mut buf),
            Err(FrameError::TooLarge(MAX_FRAME_PAYLOAD + 1))
        );
        assert!(buf.is_empty());
        let hello = Frame::Hello(Hello {
            version: 1,
            script_size: 0,
            args: vec!["x".repeat(MAX_FRAME_PAYLOAD)],
            name: None,
            client: String::new(),
            timeout_ms: None,
            probe: false,
            features: Vec::new(),
            files: None,
            image: None,
        });
        assert!(matches!(
            hello.encode(&mut buf),
            Err(FrameError::TooLarge(_))
        ));
        assert!(buf.is_empty());
    }
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[test]
    fn usage_is_optional_both_ways() {
        // An older server's END: no usage fields, all unknown.
        let end: End = serde_json::from_str(
            r#"{"reason":"exited","exit_code":0,"duration_ms":5,"message":""}"#,
        )
        .unwrap();
        assert_eq!(end.usage, Usage::default());
        // Unknown fields are left out of the JSON, not sent as null.
        let json = serde_json::to_string(&end).unwrap();
        assert!(!json.contains("cpu_ms") && !json.contains("null"), "{json}");
        let end = End {
            usage: Usage {
                cpu_ms: Some(7),
                ..Usage::default()
            },
            ..end
        };
        assert!(serde_json::to_string(&end)
            .unwrap()
            .contains(r#""cpu_ms":7"#));
    }

    #[test]
    fn features_granted_are_those_asked_and_offered_in_the_clients_order() {
        let asked: Vec<String> = ["input_wanted", "files", "nope", "files"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            grant(&asked, &["files", "input_wanted"]),
            ["input_wanted", "files"]
        );
        assert!(grant(&asked, &[]).is_empty());
        assert!(grant(&[], &["files"]).is_empty());
        // An old peer's JSON has no field: it reads as none.
        let w: Welcome = serde_json::from_str(
            r#"{"version":1,"server":"s","session":"1","limits":{"script_size":1,"timeout_ms":1,"output_bytes":1,"stdin_window":1}}"#,
        )
        .unwrap();
        assert!(w.features.is_empty());
        assert_eq!(w.limits.files, None, "no files bounds from an old server");
        // Without the feature, WELCOME carries no files bounds at all.
        let json = serde_json::to_string(&w).unwrap();
        assert!(!json.contains("files"), "{json}");
        let with: Limits = serde_json::from_str(
            r#"{"script_size":1,"timeout_ms":1,"output_bytes":1,"stdin_window":1,"files_in_bytes":5,"files_in_count":2,"file_path_len":1024,"files_out_bytes":7,"files_out_count":2}"#,
        )
        .unwrap();
        assert_eq!(with.files.map(|f| f.files_out_bytes), Some(7));
        // An old client's HELLO has no files: none are announced.
        let h: Hello = serde_json::from_str(r#"{"version":1,"script_size":0}"#).unwrap();
        assert_eq!(h.files, None);
    }
}
