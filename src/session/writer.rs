//! The session's writer task: owns the TLS write half and the two queues in front of it
//! (bounded script output, unbounded control frames), coalesces output into frames and
//! TLS records, and ends with close_notify.

use actix::prelude::*;
use futures::SinkExt;
use tokio::io::WriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;

use super::Tls;
use crate::protocol::{CodecError, DataRun, Frame, FrameCodec, MAX_FRAME_PAYLOAD};

/// The writer task is done; `clean` when close_notify went out.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct WriterDone {
    pub(super) clean: bool,
}

/// Takes the chunks of the same stream already waiting behind `first`, up to one frame's
/// worth: a flood leaves in frames of up to 128 KiB instead of Docker's 32 KiB reads. A
/// chunk of the other stream ends the run and is kept for next.
fn gather(
    stderr: bool,
    first: bytes::Bytes,
    output: &mut mpsc::Receiver<Frame>,
    stashed: &mut Option<Frame>,
) -> DataRun {
    let mut len = first.len();
    let mut parts = vec![first];
    while len < MAX_FRAME_PAYLOAD {
        match output.try_recv() {
            Ok(Frame::Stdout(b)) if !stderr && len + b.len() <= MAX_FRAME_PAYLOAD => {
                len += b.len();
                parts.push(b);
            }
            Ok(Frame::Stderr(b)) if stderr && len + b.len() <= MAX_FRAME_PAYLOAD => {
                len += b.len();
                parts.push(b);
            }
            Ok(other) => {
                *stashed = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    DataRun { stderr, parts }
}

/// Owns the TLS write half. A queued control frame goes before queued output: STARTED is
/// queued before the script's first byte and must reach the client before it (protocol
/// §5.2), and an output flood must not starve STDIN_CREDIT. (A fair `select!` once let a
/// fast script's first STDOUT overtake STARTED.) A terminal frame, though, is written only
/// after every output frame queued before it: the container reports its end only once its
/// output is queued.
pub(super) async fn write_frames(
    mut sink: FramedWrite<WriteHalf<Tls>, FrameCodec>,
    mut output: mpsc::Receiver<Frame>,
    mut control: mpsc::UnboundedReceiver<Frame>,
    done: Recipient<WriterDone>,
) {
    let result: Result<(), CodecError> = async {
        // An output frame taken while gathering a run of the other stream.
        let mut stashed: Option<Frame> = None;
        loop {
            let frame = match stashed.take() {
                Some(frame) => frame,
                None => tokio::select! {
                    biased;
                    frame = control.recv() => match frame {
                        Some(frame) => frame,
                        None => break,
                    },
                    Some(frame) = output.recv() => frame,
                },
            };
            if frame.is_terminal() {
                while let Ok(pending) = output.try_recv() {
                    sink.feed(pending).await?;
                }
                sink.feed(frame).await?;
                break;
            }
            match frame {
                Frame::Stdout(first) => {
                    let run = gather(false, first, &mut output, &mut stashed);
                    sink.feed(run).await?
                }
                Frame::Stderr(first) => {
                    let run = gather(true, first, &mut output, &mut stashed);
                    sink.feed(run).await?
                }
                frame => sink.feed(frame).await?,
            }
            // A stashed frame (the other stream's, taken while gathering) goes out next:
            // flushing before it would cost a TLS record and a write per stream switch.
            if stashed.is_none() && output.is_empty() && control.is_empty() {
                SinkExt::<Frame>::flush(&mut sink).await?;
            }
        }
        // Flushes, then sends close_notify and shuts the TCP write side.
        SinkExt::<Frame>::close(&mut sink).await
    }
    .await;
    done.do_send(WriterDone {
        clean: result.is_ok(),
    });
}
