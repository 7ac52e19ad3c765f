//! The container's two pumps: the session's stdin into the container, and the container's
//! output into the session's bounded channel. Each is a future the ContainerActor spawns;
//! neither knows the actor, so each is unit-tested on in-memory streams.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, watch};

use crate::bootstrap::{Marker, ScriptEnd, Trailers, TRAILER_LEN};
use crate::engine::{EngineError, InputSink, Output, OutputStream};
use crate::files_out::FilesOut;
use crate::messages::ContainerEvent;
use crate::protocol::files::FilesOutEnd;
use crate::protocol::{Frame, DATA_CHUNK, STDIN_WINDOW};
use crate::status::ByteCounters;
use crate::stdin_queue::StdinQueue;

/// After the container has exited, output that does not arrive within this long is taken
/// to be all there is. Docker normally ends the attach stream promptly once stdin is
/// closed (which we do on exit); this only bounds the case where it does not.
const DRAIN_IDLE: Duration = Duration::from_millis(1500);

/// STDIN_CREDIT is sent once this much stdin has been taken since the last one: not a
/// frame per line (an echo's round trip would pay for it), yet a quarter of the window,
/// so a client streaming stdin never waits on it.
const CREDIT_BATCH: u64 = STDIN_WINDOW as u64 / 4;

/// Writes the client's stdin as it comes, acknowledging it with STDIN_CREDIT once the
/// container has taken it.
pub async fn pump_stdin(
    mut input: InputSink,
    stdin: Arc<StdinQueue>,
    control: mpsc::UnboundedSender<Frame>,
    in_flight: Arc<AtomicU64>,
    mut exited: watch::Receiver<bool>,
) {
    let mut owed: u64 = 0;
    loop {
        let msg = tokio::select! {
            msg = stdin.next() => msg,
            // Once the script is gone, closing stdin lets Docker end the attach stream,
            // which is how the output pump learns that it has everything.
            _ = exited.wait_for(|e| *e) => None,
        };
        match msg {
            Some((data, n)) => {
                if input.write_all(&data).await.is_err() || input.flush().await.is_err() {
                    break;
                }
                // Only the client's bytes: a file record's head was never in its window.
                in_flight.fetch_sub(n as u64, Ordering::Relaxed);
                owed += n as u64;
                if owed >= CREDIT_BATCH {
                    // At most a window's worth, so the count fits.
                    let _ = control.send(Frame::StdinCredit(owed as u32));
                    owed = 0;
                }
            }
            None => break,
        }
    }
    let _ = input.shutdown().await;
}

#[derive(Debug)]
pub enum PumpEnd {
    /// Docker closed the output stream.
    Eof,
    /// The container exited and no more output came for `DRAIN_IDLE`.
    Drained,
    /// The output limit was reached; the rest was discarded.
    Limit,
    /// The session's output channel is closed.
    ClientGone,
    /// The engine's output stream broke.
    Failed(EngineError),
    /// Both streams carried the bootstrap's trailer: the script is over.
    Trailer(ScriptEnd),
}

/// Output that may be the start of a trailer split across two Docker frames is held back
/// this long at most before it is sent as the output it then must be.
const HOLD_MAX: Duration = Duration::from_millis(10);

enum Next {
    Item(Option<Result<Output, EngineError>>),
    /// The exit was signalled; look again (with the drain's idle bound from now on).
    Exited,
    /// The container exited and no more output came for `DRAIN_IDLE`.
    Drained,
    /// Held-back bytes have waited long enough.
    HoldExpired,
}

async fn next_output(output: &mut OutputStream, exited: &mut watch::Receiver<bool>) -> Next {
    if *exited.borrow() {
        return match tokio::time::timeout(DRAIN_IDLE, output.next()).await {
            Ok(item) => Next::Item(item),
            Err(_) => Next::Drained,
        };
    }
    tokio::select! {
        item = output.next() => Next::Item(item),
        changed = exited.changed() => match changed {
            Ok(()) => Next::Exited,
            Err(_) => Next::Drained,
        },
    }
}

/// What reaching the output limit does to the pump.
#[derive(Debug)]
pub enum AtLimit {
    /// The pump ends with `PumpEnd::Limit`, and the container is killed.
    Stop,
    /// Files are wanted (feature `files`): the pump goes on, discarding the script's
    /// output, to carry the files the bootstrap sends once told to stop (protocol
    /// §10.2). The container is told through this, once; ending the pump here instead
    /// lost every file of a script stopped by the limit.
    Discard(Option<oneshot::Sender<()>>),
}

/// Where forwarded output stands against the session's limit, and who is told of it.
pub struct Sent {
    total: u64,
    limit: u64,
    at_limit: AtLimit,
    /// Told of the first byte, once: straight from here, so that the event is queued
    /// before the `Finished` that follows the pump's end, however short the script.
    first: Option<Recipient<ContainerEvent>>,
    /// Bytes handed to the session so far, for the END's `output_bytes`.
    delivered: Arc<AtomicU64>,
    /// The daemon's byte counters (`pyexec_sent_bytes`).
    bytes: Arc<ByteCounters>,
}

impl Sent {
    pub fn new(
        limit: u64,
        first: Option<Recipient<ContainerEvent>>,
        bytes: Arc<ByteCounters>,
        delivered: Arc<AtomicU64>,
    ) -> Self {
        Sent {
            total: 0,
            limit,
            at_limit: AtLimit::Stop,
            first,
            delivered,
            bytes,
        }
    }

    /// Reaching the limit does `at_limit` instead of ending the pump.
    pub fn at_limit(mut self, at_limit: AtLimit) -> Self {
        self.at_limit = at_limit;
        self
    }
}

/// Sends `data` to the session in frames of at most `DATA_CHUNK`, within the output limit.
async fn forward(
    tx: &mpsc::Sender<Frame>,
    mut data: Bytes,
    stderr: bool,
    sent: &mut Sent,
) -> Result<(), PumpEnd> {
    let room = sent.limit.saturating_sub(sent.total);
    let over = data.len() as u64 > room;
    if over {
        data.truncate(room as usize);
    }
    sent.total += data.len() as u64;
    if !data.is_empty() {
        if let Some(first) = sent.first.take() {
            first.do_send(ContainerEvent::FirstOutput);
        }
    }
    while !data.is_empty() {
        let chunk = data.split_to(data.len().min(DATA_CHUNK));
        let n = chunk.len();
        let frame = if stderr {
            Frame::Stderr(chunk)
        } else {
            Frame::Stdout(chunk)
        };
        if tx.send(frame).await.is_err() {
            return Err(PumpEnd::ClientGone);
        }
        sent.bytes.add_out(n);
        sent.delivered.fetch_add(n as u64, Ordering::Relaxed);
    }
    match (&mut sent.at_limit, over) {
        (_, false) => Ok(()),
        (AtLimit::Stop, true) => Err(PumpEnd::Limit),
        (AtLimit::Discard(tell), true) => {
            if let Some(tell) = tell.take() {
                let _ = tell.send(());
            }
            Ok(())
        }
    }
}

/// Moves the container's output into the session's bounded channel, chunk by chunk, with
/// no copy: each Docker frame is sliced, never re-buffered (but for the rare bytes held
/// back as a possible trailer start), and the bootstrap's trailer is cut out.
///
/// With `files` (feature `files`), stdout after its trailer is the bootstrap's files-out
/// stream: parsed into frames for the same channel (so it has the same backpressure), and
/// the pump ends only once that stream has ended too.
///
/// With `input_wanted` (feature `input_wanted`), each input-wanted marker on stdout
/// becomes an INPUT_WANTED frame, in its place among the output (after the prompt the
/// script wrote before blocking); without it the marker is cut out and dropped.
pub async fn pump_output(
    mut output: OutputStream,
    tx: mpsc::Sender<Frame>,
    mut exited: watch::Receiver<bool>,
    mut trailers: Trailers,
    mut sent: Sent,
    mut files: Option<FilesOut>,
    input_wanted: bool,
) -> PumpEnd {
    let mut held: Option<(Bytes, bool, tokio::time::Instant)> = None;
    // Both trailers seen, the files-out stream not ended yet.
    let mut script_end: Option<ScriptEnd> = None;
    loop {
        let hold_until = held.as_ref().map(|(_, _, since)| *since + HOLD_MAX);
        let next = tokio::select! {
            biased;
            _ = tokio::time::sleep_until(hold_until.unwrap_or_else(tokio::time::Instant::now)),
                if hold_until.is_some() => Next::HoldExpired,
            next = next_output(&mut output, &mut exited) => next,
        };
        let (mut data, stderr) = match next {
            Next::HoldExpired => {
                let (data, stderr, _) = held.take().expect("a hold expired");
                if let Err(end) = forward(&tx, data, stderr, &mut sent).await {
                    return end;
                }
                continue;
            }
            Next::Exited => continue,
            // The files-out stream was cut short (the bootstrap died): what came is sent,
            // and the client hears why the rest did not.
            Next::Drained | Next::Item(None) if script_end.is_some() => {
                let _ = end_files(&tx, &mut files, "the sandbox stopped sending files").await;
                return PumpEnd::Trailer(script_end.expect("checked"));
            }
            Next::Drained => return PumpEnd::Drained,
            Next::Item(None) => return PumpEnd::Eof,
            Next::Item(Some(Err(e))) => return PumpEnd::Failed(e),
            Next::Item(Some(Ok(Output::Stdout(message)))) => (message, false),
            Next::Item(Some(Ok(Output::Stderr(message)))) => (message, true),
        };
        if let Some((before, was_stderr, _)) = held.take() {
            if was_stderr == stderr {
                let mut joined = BytesMut::with_capacity(before.len() + data.len());
                joined.extend_from_slice(&before);
                joined.extend_from_slice(&data);
                data = joined.freeze();
            } else if let Err(end) = forward(&tx, before, was_stderr, &mut sent).await {
                return end;
            }
        }
        if trailers.seen(stderr) {
            if !stderr {
                if let Err(end) = files_out(&tx, &mut files, data).await {
                    return end;
                }
                if let (Some(end), true) = (script_end, files_ended(&files)) {
                    return PumpEnd::Trailer(end);
                }
            }
            continue; // written after the script ended, by a process it left behind
        }
        let mut ended = None;
        let mut after = Bytes::new();
        // Input-wanted markers first: the output before each is sent, then the frame.
        while let Some((at, Marker::InputWanted)) = trailers.find(&data) {
            let mut rest = data.split_off(at);
            rest.advance(TRAILER_LEN);
            if let Err(end) = forward(&tx, data, stderr, &mut sent).await {
                return end;
            }
            // Only a granted session hears of it: an old client never meets the type.
            if input_wanted && tx.send(Frame::InputWanted).await.is_err() {
                return PumpEnd::ClientGone;
            }
            data = rest;
        }
        if let Some((at, Marker::End(exit))) = trailers.find(&data) {
            after = data.split_off(at);
            after.advance(TRAILER_LEN);
            ended = Some(trailers.record(stderr, exit));
        } else {
            let keep = trailers.partial_tail(&data);
            if keep > 0 {
                let tail = data.split_off(data.len() - keep);
                held = Some((tail, stderr, tokio::time::Instant::now()));
            }
        }
        if let Err(end) = forward(&tx, data, stderr, &mut sent).await {
            return end;
        }
        if ended.is_some() && !stderr {
            if let Err(end) = files_out(&tx, &mut files, after).await {
                return end;
            }
        }
        if let Some(Some(end)) = ended {
            if files_ended(&files) {
                return PumpEnd::Trailer(end);
            }
            script_end = Some(end);
        }
    }
}

/// Whether the files-out stream is over (or was never asked for).
fn files_ended(files: &Option<FilesOut>) -> bool {
    files.as_ref().is_none_or(|f| f.done())
}

/// Feeds the bootstrap's files-out stream to its parser and its frames to the client. A
/// stream that breaks the rules ends the files there, with the reason for the client.
async fn files_out(
    tx: &mpsc::Sender<Frame>,
    files: &mut Option<FilesOut>,
    data: Bytes,
) -> Result<(), PumpEnd> {
    let Some(parser) = files.as_mut().filter(|f| !f.done()) else {
        return Ok(()); // no files asked for, or after their end: a left-behind process
    };
    if data.is_empty() {
        return Ok(());
    }
    match parser.feed(data) {
        Ok(frames) => {
            for frame in frames {
                tx.send(frame).await.map_err(|_| PumpEnd::ClientGone)?;
            }
            Ok(())
        }
        Err(e) => end_files(tx, files, &format!("the sandbox's files were refused: {e}")).await,
    }
}

/// Ends the files out early with `message`: a FILES_OUT_END the client always gets
/// once it asked for files and the script ended (protocol §10.2).
async fn end_files(
    tx: &mpsc::Sender<Frame>,
    files: &mut Option<FilesOut>,
    message: &str,
) -> Result<(), PumpEnd> {
    if files_ended(files) {
        return Ok(());
    }
    *files = None;
    let end = FilesOutEnd {
        message: message.to_string(),
        ..Default::default()
    };
    tx.send(Frame::FilesOutEnd(end))
        .await
        .map_err(|_| PumpEnd::ClientGone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::{ScriptExit, NONCE_LEN};

    const NONCE: [u8; NONCE_LEN] = *b"0123456789abcdef";

    fn out(data: &[u8]) -> Result<Output, EngineError> {
        Ok(Output::Stdout(Bytes::copy_from_slice(data)))
    }

    fn err(data: &[u8]) -> Result<Output, EngineError> {
        Ok(Output::Stderr(Bytes::copy_from_slice(data)))
    }

    /// Runs the pump over `items` (then a stream that never ends) and collects what it
    /// forwards per stream, with how it ended.
    async fn pump(
        items: Vec<Result<Output, EngineError>>,
        limit: u64,
    ) -> (Vec<u8>, Vec<u8>, PumpEnd) {
        let (stdout, stderr, _, end) = pump_files(items, limit, None).await;
        (stdout, stderr, end)
    }

    /// `pump`, with a files-out stream expected after the stdout trailer: also returns
    /// the file frames forwarded.
    async fn pump_files(
        items: Vec<Result<Output, EngineError>>,
        limit: u64,
        files: Option<FilesOut>,
    ) -> (Vec<u8>, Vec<u8>, Vec<Frame>, PumpEnd) {
        let output: OutputStream =
            Box::pin(futures::stream::iter(items).chain(futures::stream::pending()));
        let (tx, mut rx) = mpsc::channel(1024);
        let (_exited_tx, exited) = watch::channel(false);
        let end = tokio::time::timeout(
            Duration::from_millis(300),
            pump_output(
                output,
                tx,
                exited,
                Trailers::new(&NONCE),
                Sent::new(
                    limit,
                    None,
                    Arc::new(ByteCounters::default()),
                    Arc::new(AtomicU64::new(0)),
                ),
                files,
                false,
            ),
        )
        .await
        .unwrap_or(PumpEnd::Drained);
        let (mut stdout, mut stderr, mut file_frames) = (Vec::new(), Vec::new(), Vec::new());
        while let Ok(frame) = rx.try_recv() {
            match frame {
                Frame::Stdout(b) => stdout.extend_from_slice(&b),
                Frame::Stderr(b) => stderr.extend_from_slice(&b),
                other => file_frames.push(other),
            }
        }
        (stdout, stderr, file_frames, end)
    }

    /// The pump over `items` with feature `input_wanted` as given: every frame it sends,
    /// in order, and how it ended.
    async fn pump_frames(
        items: Vec<Result<Output, EngineError>>,
        input_wanted: bool,
    ) -> (Vec<Frame>, PumpEnd) {
        let output: OutputStream =
            Box::pin(futures::stream::iter(items).chain(futures::stream::pending()));
        let (tx, mut rx) = mpsc::channel(1024);
        let (_exited_tx, exited) = watch::channel(false);
        let sent = Sent::new(
            u64::MAX,
            None,
            Arc::new(ByteCounters::default()),
            Arc::new(AtomicU64::new(0)),
        );
        let pump = pump_output(
            output,
            tx,
            exited,
            Trailers::new(&NONCE),
            sent,
            None,
            input_wanted,
        );
        let end = tokio::time::timeout(Duration::from_millis(300), pump)
            .await
            .unwrap_or(PumpEnd::Drained);
        let mut frames = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            frames.push(frame);
        }
        (frames, end)
    }

    fn wanted() -> Vec<u8> {
        let mut marker = NONCE.to_vec();
        marker.push(b'W');
        marker.resize(TRAILER_LEN, 0);
        marker
    }

    /// The marker becomes INPUT_WANTED right after the prompt written before it, and
    /// never reaches the client as output, whole or cut across two frames.
    #[tokio::test]
    async fn input_wanted_markers_become_frames_in_their_place() {
        let marker = wanted();
        let mut first = b"Name: ".to_vec();
        first.extend_from_slice(&marker[..5]);
        let mut second = marker[5..].to_vec();
        second.extend_from_slice(b"Age: ");
        second.extend_from_slice(&marker);
        second.extend_from_slice(&trailer(b'E', 0));
        let (frames, end) = pump_frames(
            vec![out(&first), out(&second), err(&trailer(b'E', 0))],
            true,
        )
        .await;
        assert!(matches!(end, PumpEnd::Trailer(_)), "{end:?}");
        let expected = [
            Frame::Stdout(Bytes::from_static(b"Name: ")),
            Frame::InputWanted,
            Frame::Stdout(Bytes::from_static(b"Age: ")),
            Frame::InputWanted,
        ];
        assert_eq!(frames, expected);
    }

    /// A session that did not ask for the feature never sees the frame (nor the marker).
    #[tokio::test]
    async fn input_wanted_markers_are_dropped_when_not_granted() {
        let mut data = b"a".to_vec();
        data.extend_from_slice(&wanted());
        data.extend_from_slice(b"b");
        let (frames, _) = pump_frames(vec![out(&data)], false).await;
        let stdout: Vec<u8> = frames
            .iter()
            .flat_map(|f| match f {
                Frame::Stdout(b) => b.to_vec(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(stdout, b"ab");
    }

    fn files_stream(name: &str, content: &[u8]) -> Vec<u8> {
        let mut v = vec![b'F'];
        v.extend_from_slice(&(name.len() as u32).to_be_bytes());
        v.extend_from_slice(&(content.len() as u64).to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(content);
        v.push(b'Z');
        v
    }

    /// The files-out stream follows the stdout trailer; the pump ends after its end,
    /// whichever stream's trailer came last, and the script's output is untouched.
    #[tokio::test]
    async fn files_after_the_trailer_are_forwarded_then_the_pump_ends() {
        let stream = files_stream("plot.png", b"PNG!");
        for cut in 0..stream.len() {
            let mut first = b"out".to_vec();
            first.extend(trailer(b'E', 0));
            first.extend_from_slice(&stream[..cut]);
            let (stdout, _, frames, end) = pump_files(
                vec![out(&first), err(&trailer(b'E', 0)), out(&stream[cut..])],
                1 << 20,
                Some(FilesOut::new(1 << 20, 10)),
            )
            .await;
            assert_eq!(stdout, b"out", "cut at {cut}");
            assert!(matches!(end, PumpEnd::Trailer(_)), "cut at {cut}: {end:?}");
            assert_eq!(
                frames.first().map(|f| f.frame_type().name()),
                Some("FILE_OUT")
            );
            assert!(matches!(frames.last(), Some(Frame::FilesOutEnd(e)) if e.message.is_empty()));
            let content: Vec<u8> = frames
                .iter()
                .filter_map(|f| match f {
                    Frame::FileOutData(b) => Some(b.to_vec()),
                    _ => None,
                })
                .flatten()
                .collect();
            assert_eq!(content, b"PNG!", "cut at {cut}");
        }
    }

    /// A hostile files stream (a traversal name) ends the files with a reason, and the
    /// script's end is still reported.
    #[tokio::test]
    async fn a_refused_files_stream_ends_with_a_message() {
        let mut first = trailer(b'E', 1);
        first.extend(files_stream("../escape", b"x"));
        let (_, _, frames, end) = pump_files(
            vec![out(&first), err(&trailer(b'E', 1))],
            1 << 20,
            Some(FilesOut::new(1 << 20, 10)),
        )
        .await;
        assert!(matches!(end, PumpEnd::Trailer(_)), "{end:?}");
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert!(
            matches!(&frames[0], Frame::FilesOutEnd(e) if e.message.contains("'..'")),
            "{frames:?}"
        );
    }

    /// A whole trailer, as the bootstrap writes it: 1.5 ms of CPU, 12 MiB at the peak.
    fn trailer(kind: u8, value: u8) -> Vec<u8> {
        let mut t = NONCE.to_vec();
        t.extend_from_slice(&[kind, value]);
        t.extend_from_slice(&1500u64.to_be_bytes());
        t.extend_from_slice(&(12u64 << 20).to_be_bytes());
        t
    }

    #[tokio::test]
    async fn trailer_on_both_streams_ends_the_pump_and_is_cut_out() {
        let mut last = b"bye".to_vec();
        last.extend(trailer(b'E', 3));
        last.extend_from_slice(b"left behind");
        let (stdout, stderr, end) = pump(
            vec![out(b"hello "), out(&last), err(&trailer(b'E', 3))],
            1 << 20,
        )
        .await;
        assert_eq!(stdout, b"hello bye");
        assert_eq!(stderr, b"");
        assert!(
            matches!(
                end,
                PumpEnd::Trailer(ScriptEnd {
                    exit: ScriptExit::Code(3),
                    cpu_us: Some(1500),
                    peak_memory: Some(p),
                }) if p == 12 << 20
            ),
            "{end:?}"
        );
    }

    #[tokio::test]
    async fn a_trailer_cut_across_frames_is_still_found_and_never_leaks() {
        let t = trailer(b'S', 9);
        for cut in 1..t.len() {
            let mut first = b"data".to_vec();
            first.extend_from_slice(&t[..cut]);
            let (stdout, _, end) = pump(
                vec![out(&first), out(&t[cut..]), err(&trailer(b'S', 9))],
                1 << 20,
            )
            .await;
            assert_eq!(stdout, b"data", "cut at {cut}");
            assert!(
                matches!(
                    end,
                    PumpEnd::Trailer(ScriptEnd {
                        exit: ScriptExit::Signal(9),
                        ..
                    })
                ),
                "cut at {cut}: {end:?}"
            );
        }
    }

    #[tokio::test]
    async fn bytes_that_only_look_like_a_trailer_start_are_sent_soon_after() {
        // Ends with the nonce's first byte, and nothing follows: held, then sent.
        let (stdout, _, end) = pump(vec![out(b"Name: 0")], 1 << 20).await;
        assert_eq!(stdout, b"Name: 0");
        assert!(matches!(end, PumpEnd::Drained), "{end:?}");
        // And when other output follows, it is joined in order.
        let (stdout, _, _) = pump(vec![out(b"x01"), out(b"2y")], 1 << 20).await;
        assert_eq!(stdout, b"x012y");
    }

    #[tokio::test]
    async fn output_limit_is_exact() {
        let (stdout, _, end) = pump(vec![out(&[b'a'; 700]), out(&[b'b'; 700])], 1000).await;
        assert_eq!(stdout.len(), 1000);
        assert!(matches!(end, PumpEnd::Limit));
    }
}
