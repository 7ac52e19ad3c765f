//! The session's frame decoder: the protocol codec, plus what a session does after the
//! first protocol error (report it once, then swallow the rest; see `SessionCodec`).

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::protocol::{CodecError, Frame, FrameCodec};

/// The session's decoder: frames until the first protocol error, which it reports once as
/// an item, then it swallows whatever else the client sends. The stream stays open, so
/// the session can deliver its ERROR frame and linger; closing a socket with unread data
/// would make the kernel reset the connection and could destroy that ERROR in transit.
#[derive(Default)]
pub(super) struct SessionCodec {
    codec: FrameCodec,
    failed: bool,
}

impl Decoder for SessionCodec {
    type Item = Result<Frame, CodecError>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        if self.failed {
            src.clear();
            return Ok(None);
        }
        match self.codec.decode(src) {
            Ok(frame) => Ok(frame.map(Ok)),
            Err(e) if e.is_protocol() => {
                self.failed = true;
                src.clear();
                Ok(Some(Err(e)))
            }
            Err(e) => Err(e),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() => Ok(None),
            None => {
                self.failed = true;
                let left = src.len();
                src.clear();
                Ok(Some(Err(CodecError::Truncated(left))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_codec_reports_one_error_then_swallows_the_rest() {
        let mut codec = SessionCodec::default();
        let mut buf = BytesMut::from(&[0u8, 0, 0, 2, 0x7f, 0][..]);
        assert!(matches!(codec.decode(&mut buf), Ok(Some(Err(_)))));
        buf.extend_from_slice(&[0, 0, 0, 1, 0x04]); // even a valid frame is ignored now
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        assert!(buf.is_empty());
        assert!(matches!(codec.decode_eof(&mut buf), Ok(None)));
    }
}
