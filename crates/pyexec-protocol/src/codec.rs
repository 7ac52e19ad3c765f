//! The tokio-util codec that turns a byte stream into `Frame`s and back, with a size bound.

use std::io;

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{put_raw, Frame, FrameError, FrameType};
use crate::MAX_FRAME_PAYLOAD;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The length prefix announces more than `MAX_FRAME_PAYLOAD`: refused before any of
    /// it is buffered, so a hostile peer cannot make us allocate.
    #[error("frame larger than the limit of {} bytes", MAX_FRAME_PAYLOAD + 1)]
    Oversized,
    /// The stream ended in the middle of a frame (with this many bytes of it buffered).
    #[error("connection closed in the middle of a frame ({0} bytes of it received)")]
    Truncated(usize),
}

impl CodecError {
    /// Errors that mean the peer broke the protocol, as opposed to the transport failing.
    pub fn is_protocol(&self) -> bool {
        !matches!(self, CodecError::Io(_))
    }
}

/// Length-prefixed typed frames: `u32` big-endian length, then the frame body.
///
/// The prefix is read in place and consumed only with its whole frame, so that at the end
/// of the stream any leftover byte, prefix included, is a truncated frame.
#[derive(Debug, Default)]
pub struct FrameCodec;

impl FrameCodec {
    pub fn new() -> Self {
        FrameCodec
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(prefix) = src.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("four bytes")) as usize;
        if len > MAX_FRAME_PAYLOAD + 1 {
            return Err(CodecError::Oversized);
        }
        if src.len() < 4 + len {
            // Room for the rest of this frame, never more than the bound above.
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let body = src.split_to(len).freeze();
        Ok(Some(Frame::parse(body)?))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::Truncated(src.len())),
        }
    }
}

/// Several chunks of one output stream sent as a single STDOUT or STDERR frame: fewer
/// frames, TLS records and client writes for a flood, each byte still copied only once,
/// straight into the write buffer. The parts must add up to at most `MAX_FRAME_PAYLOAD`.
#[derive(Debug)]
pub struct DataRun {
    pub stderr: bool,
    pub parts: Vec<bytes::Bytes>,
}

impl Encoder<DataRun> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, run: DataRun, dst: &mut BytesMut) -> Result<(), CodecError> {
        let ty = if run.stderr {
            FrameType::Stderr
        } else {
            FrameType::Stdout
        };
        Ok(put_raw(dst, ty as u8, &run.parts)?)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        frame.encode(dst).map_err(CodecError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{ErrorCode, ErrorMsg};
    use bytes::{BufMut, Bytes};

    fn encode_all(frames: &[Frame]) -> BytesMut {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        for f in frames {
            codec.encode(f.clone(), &mut buf).unwrap();
        }
        buf
    }

    #[test]
    fn a_data_run_decodes_as_one_frame_of_all_its_parts() {
        let mut buf = BytesMut::new();
        let run = DataRun {
            stderr: true,
            parts: vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cde")],
        };
        FrameCodec::new().encode(run, &mut buf).unwrap();
        assert_eq!(
            FrameCodec::new().decode(&mut buf).unwrap(),
            Some(Frame::Stderr(Bytes::from_static(b"abcde")))
        );
        let too_big = DataRun {
            stderr: false,
            parts: vec![
                Bytes::from(vec![0u8; MAX_FRAME_PAYLOAD]),
                Bytes::from_static(b"x"),
            ],
        };
        assert!(FrameCodec::new().encode(too_big, &mut buf).is_err());
    }

    #[test]
    fn round_trip_through_the_codec() {
        let frames = vec![
            Frame::Stdout(Bytes::from_static(b"Name: ")),
            Frame::StdinCredit(7),
            Frame::Error(ErrorMsg::new(ErrorCode::TooLarge, "script too large")),
        ];
        let mut buf = encode_all(&frames);
        let mut codec = FrameCodec::new();
        let mut out = Vec::new();
        while let Some(f) = codec.decode_eof(&mut buf).unwrap() {
            out.push(f);
        }
        assert_eq!(out, frames);
    }

    #[test]
    fn frames_split_at_every_byte_boundary_decode_the_same() {
        let frames = vec![
            Frame::Stdin(Bytes::from_static(b"hello\n")),
            Frame::StdinEof,
            Frame::Signal(2),
        ];
        let wire = encode_all(&frames);
        for cut in 0..wire.len() {
            let mut codec = FrameCodec::new();
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut out = Vec::new();
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
            assert_eq!(out, frames, "cut at {cut}");
        }
    }

    /// The `files` feature's frames (§10.2), cut at every byte: each boundary decodes
    /// the same, and a stream that ends inside any of them is a truncated frame.
    #[test]
    fn file_frames_split_at_every_byte_boundary_decode_the_same() {
        use crate::files::{FileHeader, FilesOutEnd};
        let frames = vec![
            Frame::FileIn(FileHeader {
                name: "data.csv".into(),
                size: 5,
            }),
            Frame::FileInData(Bytes::from_static(b"1,2\n")),
            Frame::FileInData(Bytes::from_static(b"x")),
            Frame::FileOut(FileHeader {
                name: "out/plot.png".into(),
                size: 3,
            }),
            Frame::FileOutData(Bytes::from_static(b"\x89PN")),
            Frame::FilesOutEnd(FilesOutEnd {
                unmatched: vec!["*.svg".into()],
                ..Default::default()
            }),
        ];
        let wire = encode_all(&frames);
        for cut in 0..wire.len() {
            let mut codec = FrameCodec::new();
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut out = Vec::new();
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
            if !buf.is_empty() {
                let mut tail = buf.clone();
                assert!(
                    matches!(codec.decode_eof(&mut tail), Err(CodecError::Truncated(_))),
                    "cut at {cut}"
                );
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
            assert_eq!(out, frames, "cut at {cut}");
        }
    }

    #[test]
    fn truncated_frame_at_eof_is_an_error() {
        let wire = encode_all(&[Frame::Stdout(Bytes::from_static(b"abcdef"))]);
        let mut buf = BytesMut::from(&wire[..wire.len() - 2]);
        let mut codec = FrameCodec::new();
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(CodecError::Truncated(n)) if n == wire.len() - 2
        ));
        // Also when only the length prefix made it.
        let mut buf = BytesMut::from(&wire[..4]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(CodecError::Truncated(4))
        ));
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_buffering() {
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_FRAME_PAYLOAD + 2) as u32);
        buf.put_u8(0x84);
        let err = FrameCodec::new().decode(&mut buf).unwrap_err();
        assert!(matches!(err, CodecError::Oversized), "{err}");
        assert!(err.is_protocol());
    }

    #[test]
    fn largest_allowed_frame_is_accepted() {
        let frame = Frame::Stdout(Bytes::from(vec![7u8; MAX_FRAME_PAYLOAD]));
        let mut buf = encode_all(std::slice::from_ref(&frame));
        assert_eq!(FrameCodec::new().decode(&mut buf).unwrap(), Some(frame));
    }

    #[test]
    fn unknown_frame_type_is_a_protocol_error() {
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(&[0x7f, 1, 2]);
        let err = FrameCodec::new().decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            CodecError::Frame(FrameError::UnknownType(0x7f))
        ));
    }

    #[test]
    fn zero_length_frame_is_a_protocol_error() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        let err = FrameCodec::new().decode(&mut buf).unwrap_err();
        assert!(matches!(err, CodecError::Frame(FrameError::Empty)));
    }
}
