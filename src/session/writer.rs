//! The session's writer task: owns the stream's write half and the two queues in front of it
//! (bounded script output, unbounded control frames), coalesces output into frames and
//! TLS records, and ends with close_notify.

use actix::prelude::*;
use futures::SinkExt;
use tokio::io::WriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;

use super::Stream;
use crate::protocol::{CodecError, DataRun, Frame, FrameCodec, DATA_CHUNK};

/// The writer task is done; `clean` when close_notify went out.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct WriterDone {
    pub(super) clean: bool,
}

/// Takes the chunks of the same stream already waiting behind `first`, up to
/// `DATA_CHUNK` (64 KiB): a flood leaves in full frames instead of Docker's 32 KiB reads,
/// yet no frame is larger than protocol §2 promises, so a control frame never waits long
/// behind data. A chunk of the other stream ends the run and is kept for next.
fn gather(
    stderr: bool,
    first: bytes::Bytes,
    output: &mut mpsc::Receiver<Frame>,
    stashed: &mut Option<Frame>,
) -> DataRun {
    let mut len = first.len();
    let mut parts = vec![first];
    while len < DATA_CHUNK {
        match output.try_recv() {
            Ok(Frame::Stdout(b)) if !stderr && len + b.len() <= DATA_CHUNK => {
                len += b.len();
                parts.push(b);
            }
            Ok(Frame::Stderr(b)) if stderr && len + b.len() <= DATA_CHUNK => {
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
    mut sink: FramedWrite<WriteHalf<Stream>, FrameCodec>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn run_len(run: &DataRun) -> usize {
        run.parts.iter().map(|p| p.len()).sum()
    }

    #[test]
    fn a_run_never_exceeds_a_data_chunk_and_keeps_the_order() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 0..6u8 {
            tx.try_send(Frame::Stdout(Bytes::from(vec![i; 20_000])))
                .unwrap();
        }
        let mut stashed = None;
        let first = Bytes::from(vec![9u8; 20_000]);
        let run = gather(false, first, &mut rx, &mut stashed);
        // 20,000 + 2 × 20,000 fit in 65,536; a third would not.
        assert_eq!(run_len(&run), 60_000);
        assert!(run_len(&run) <= DATA_CHUNK);
        assert_eq!(run.parts[1][0], 0);
        assert_eq!(run.parts[2][0], 1);
        // The chunk that did not fit goes out next, in its own frame.
        assert!(matches!(stashed, Some(Frame::Stdout(ref b)) if b[0] == 2));
    }

    #[test]
    fn the_other_stream_ends_a_run_and_is_kept_for_next() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.try_send(Frame::Stdout(Bytes::from_static(b"b")))
            .unwrap();
        tx.try_send(Frame::Stderr(Bytes::from_static(b"e")))
            .unwrap();
        tx.try_send(Frame::Stdout(Bytes::from_static(b"c")))
            .unwrap();
        let mut stashed = None;
        let run = gather(false, Bytes::from_static(b"a"), &mut rx, &mut stashed);
        assert_eq!(
            run.parts,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        assert!(matches!(stashed, Some(Frame::Stderr(ref b)) if b == "e"));
    }
}
