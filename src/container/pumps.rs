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

use crate::archive::ArchiveFile;
use crate::bootstrap::{Marker, ScriptEnd, Trailers, TRAILER_LEN};
use crate::engine::{ArchiveStream, EngineError, InputSink, Output, OutputStream};
use crate::files_out::{FilesOut, Item};
use crate::messages::ContainerEvent;
use crate::protocol::files::{FileHeader, FilesOutEnd};
use crate::protocol::{Frame, DATA_CHUNK, STDIN_WINDOW};
use crate::status::ByteCounters;
use crate::stdin_queue::StdinQueue;

/// After the container has exited, output that does not arrive within this long is taken
/// to be all there is. Docker normally ends the attach stream promptly once stdin is
/// closed (which we do on exit); this only bounds the case where it does not.
const DRAIN_IDLE: Duration = Duration::from_millis(1500);

/// A fetch of a file (`fetch_file`) that brings nothing for this long has failed: the
/// engine answers a running container's archive at once, and streams it at memory speed.
const FETCH_IDLE: Duration = Duration::from_secs(10);

/// How the pump fetches the files the bootstrap names (`Item::Fetch`).
pub struct Fetch {
    /// Opens the engine's archive of a file of the container (`Engine::fetch`).
    pub open: Box<dyn Fn(&str) -> ArchiveStream + Send>,
    /// The uid each file must belong to (`sandbox::script_uid`); `None` when the script's
    /// user is a name, and then nothing is fetched.
    pub owner: Option<u32>,
}

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
/// the pump ends only once that stream has ended too. The files it names rather than
/// sends come through `Fetch`, in their place in the stream.
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
    files: Option<(FilesOut, Fetch)>,
    input_wanted: bool,
) -> PumpEnd {
    let (mut files, fetch) = match files {
        Some((parser, fetch)) => (Some(parser), Some(fetch)),
        None => (None, None),
    };
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
                if let Err(end) = files_out(&tx, &mut files, data, fetch.as_ref()).await {
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
            if let Err(end) = files_out(&tx, &mut files, after, fetch.as_ref()).await {
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
    fetch: Option<&Fetch>,
) -> Result<(), PumpEnd> {
    let Some(parser) = files.as_mut().filter(|f| !f.done()) else {
        return Ok(()); // no files asked for, or after their end: a left-behind process
    };
    if data.is_empty() {
        return Ok(());
    }
    let mut batch = parser.feed(data);
    loop {
        let items = match batch {
            Ok(items) => items,
            Err(e) => {
                let message = format!("the sandbox's files were refused: {e}");
                return end_files(tx, files, &message).await;
            }
        };
        // A fetch is the last of its batch (`FilesOut::feed`): the rest is parsed after it.
        let fetched = matches!(items.last(), Some(Item::Fetch(_)));
        for item in items {
            match (item, fetch) {
                (Item::Frame(frame), _) => tx.send(frame).await.map_err(|_| PumpEnd::ClientGone)?,
                (Item::Fetch(header), Some(fetch)) => fetch_file(tx, files, header, fetch).await?,
                (Item::Fetch(_), None) => {
                    return end_files(tx, files, "the sandbox named a file it was to send").await
                }
            }
        }
        match files.as_mut().filter(|f| !f.done()) {
            Some(parser) if fetched => batch = parser.resume(),
            _ => return Ok(()),
        }
    }
}

/// Fetches a file the bootstrap named from the engine's archive API and sends it as
/// `FILE_OUT` and its data, as if the bootstrap had. A fetch that fails before the file's
/// first byte lists it as skipped, with why, and the rest go on; one that breaks off
/// half-way ends the files there (the client drops the partial file, as when a
/// bootstrap dies mid-file).
async fn fetch_file(
    tx: &mpsc::Sender<Frame>,
    files: &mut Option<FilesOut>,
    header: FileHeader,
    fetch: &Fetch,
) -> Result<(), PumpEnd> {
    let (name, size) = (header.name.clone(), header.size);
    let Some(owner) = fetch.owner else {
        let reason = "cannot be fetched (the sandbox's user is not given by number)";
        if let Some(parser) = files.as_mut() {
            parser.skip(name, reason.into());
        }
        return Ok(());
    };
    let (mut archive, since) = (ArchiveFile::new(size, owner), std::time::Instant::now());
    let mut stream = (fetch.open)(&format!("/tmp/{name}"));
    // The client is told of the file with its first byte, once the archive's header has
    // been checked: a refused archive costs it nothing. `None` once told.
    let mut untold = Some(header);
    let failure = loop {
        let next = match tokio::time::timeout(FETCH_IDLE, stream.next()).await {
            Ok(next) => next,
            Err(_) => break format!("the engine sent nothing for {FETCH_IDLE:?}"),
        };
        let chunks = match next {
            None => match archive.finish() {
                Ok(()) => {
                    // An empty file has no chunk to carry its header.
                    if let Some(header) = untold.take() {
                        let frame = Frame::FileOut(header);
                        tx.send(frame).await.map_err(|_| PumpEnd::ClientGone)?;
                    }
                    let ms = since.elapsed().as_millis() as u64;
                    tracing::info!(bytes = size, ms, "a file out fetched from the engine");
                    return Ok(());
                }
                Err(e) => break e.to_string(),
            },
            Some(Err(e)) => break e.to_string(),
            Some(Ok(data)) => match archive.feed(data) {
                Ok(chunks) => chunks,
                Err(e) => break e.to_string(),
            },
        };
        for mut chunk in chunks {
            if let Some(header) = untold.take() {
                let frame = Frame::FileOut(header);
                tx.send(frame).await.map_err(|_| PumpEnd::ClientGone)?;
            }
            while !chunk.is_empty() {
                let part = chunk.split_to(chunk.len().min(DATA_CHUNK));
                let frame = Frame::FileOutData(part);
                tx.send(frame).await.map_err(|_| PumpEnd::ClientGone)?;
            }
        }
    };
    tracing::debug!(file = %name, %failure, "cannot fetch a file out");
    match (untold, files.as_mut()) {
        (Some(_), Some(parser)) => {
            parser.skip(name, format!("cannot be fetched ({failure})"));
            Ok(())
        }
        _ => {
            let message = format!("the file {name} broke off: {failure}");
            end_files(tx, files, &message).await
        }
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
        files: Option<(FilesOut, Fetch)>,
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

    fn no_fetch() -> Fetch {
        Fetch {
            open: Box::new(|path| panic!("nothing to fetch, yet {path} was")),
            owner: Some(crate::archive::tests::UID),
        }
    }

    /// A fetch that gives `archive` for `/tmp/big.bin` in 700-byte pieces, then `tail`.
    fn fetch_of(archive: Vec<u8>, tail: Option<EngineError>) -> Fetch {
        Fetch {
            open: Box::new(move |path| {
                assert_eq!(path, "/tmp/big.bin");
                let pieces: Vec<Result<Bytes, EngineError>> = archive
                    .chunks(700)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .chain(tail.clone().map(Err))
                    .collect();
                Box::pin(futures::stream::iter(pieces))
            }),
            owner: Some(crate::archive::tests::UID),
        }
    }

    fn fetch_record(name: &str, size: u64) -> Vec<u8> {
        let mut v = vec![b'A'];
        v.extend_from_slice(&(name.len() as u32).to_be_bytes());
        v.extend_from_slice(&size.to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v
    }

    /// Files before and after the named one, and the named one in its place.
    fn stream_with_a_fetch(size: u64) -> Vec<Result<Output, EngineError>> {
        let mut first = trailer(b'E', 0);
        let mut stream = files_stream("a.txt", b"A");
        stream.pop(); // its `Z`
        stream.extend(fetch_record("big.bin", size));
        stream.extend(files_stream("c.txt", b"C"));
        first.extend(stream);
        vec![out(&first), err(&trailer(b'E', 0))]
    }

    /// (name, content) per file sent, and the FILES_OUT_END.
    fn files_sent(frames: Vec<Frame>) -> (Vec<(String, Vec<u8>)>, FilesOutEnd) {
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for f in frames {
            match f {
                Frame::FileOut(h) => files.push((h.name, Vec::new())),
                Frame::FileOutData(b) => files.last_mut().unwrap().1.extend_from_slice(&b),
                Frame::FilesOutEnd(end) => return (files, end),
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("no FILES_OUT_END after {files:?}")
    }

    #[tokio::test]
    async fn a_named_file_is_fetched_and_sent_in_its_place() {
        let content: Vec<u8> = (0..DATA_CHUNK as u32 + 3000).map(|i| i as u8).collect();
        let tar = crate::archive::tests::archive(&content);
        let (_, _, frames, end) = pump_files(
            stream_with_a_fetch(content.len() as u64),
            1 << 20,
            Some((FilesOut::new(1 << 20, 10), fetch_of(tar, None))),
        )
        .await;
        assert!(matches!(end, PumpEnd::Trailer(_)), "{end:?}");
        let (files, end) = files_sent(frames);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.txt", "big.bin", "c.txt"]);
        assert!(files[1].1 == content, "the fetched file, byte for byte");
        assert!(end.skipped.is_empty() && end.message.is_empty(), "{end:?}");
    }

    /// A symbolic link where the file was (the archive is the container's, hostile):
    /// skipped with its reason, never sent; the files after it still come.
    #[tokio::test]
    async fn a_fetch_refused_before_its_first_byte_skips_the_file_only() {
        let link = crate::archive::tests::entry("big.bin", b'2', b"");
        for fetch in [
            fetch_of(link, None),
            fetch_of(
                Vec::new(),
                Some(EngineError::NotFound("no such file".into())),
            ),
        ] {
            let (_, _, frames, end) = pump_files(
                stream_with_a_fetch(5),
                1 << 20,
                Some((FilesOut::new(1 << 20, 10), fetch)),
            )
            .await;
            assert!(matches!(end, PumpEnd::Trailer(_)), "{end:?}");
            let (files, end) = files_sent(frames);
            let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["a.txt", "c.txt"]);
            assert_eq!(end.skipped.len(), 1, "{end:?}");
            assert_eq!(end.skipped[0].name, "big.bin");
            assert!(
                end.skipped[0].reason.starts_with("cannot be fetched ("),
                "{end:?}"
            );
        }
    }

    /// An archive that breaks off mid-file ends the files with why: the client has the
    /// file's header and part of it, and drops it.
    #[tokio::test]
    async fn a_fetch_that_breaks_off_ends_the_files_with_why() {
        let content = vec![7u8; 5000];
        let mut tar = crate::archive::tests::archive(&content);
        tar.truncate(3000);
        let broken = EngineError::Unreachable("connection reset".into());
        let (_, _, frames, end) = pump_files(
            stream_with_a_fetch(5000),
            1 << 20,
            Some((FilesOut::new(1 << 20, 10), fetch_of(tar, Some(broken)))),
        )
        .await;
        assert!(matches!(end, PumpEnd::Trailer(_)), "{end:?}");
        let (files, end) = files_sent(frames);
        assert_eq!(files.len(), 2, "a.txt, then part of big.bin: {files:?}");
        assert!(files[1].1.len() < 5000);
        assert_eq!(
            end.message, "the file big.bin broke off: connection reset",
            "{end:?}"
        );
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
                Some((FilesOut::new(1 << 20, 10), no_fetch())),
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
            Some((FilesOut::new(1 << 20, 10), no_fetch())),
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
