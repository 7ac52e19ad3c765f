//! The bootstrap's wire format, both ways: the one request the in-container bootstrap
//! (`src/bootstrap.py`) reads from stdin, the ACK byte it answers with, and the markers it
//! writes on its output, each a per-session nonce then a kind: the trailer (`E` + status
//! or `S` + signal, then the script's CPU time and peak memory) on both streams when the
//! script ends, and the input-wanted marker (`W`, feature `input_wanted`) on stdout.
//! Pure, but for `hand_over`, which speaks it over the attach streams.

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::engine::{InputSink, Output, OutputStream};

/// How the script's process ended, as its parent in the container saw it and the trailer
/// reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptExit {
    Code(i32),
    Signal(i32),
}

/// Everything a trailer says: how the script ended, and what it used according to the
/// container's cgroup (`None` where the bootstrap could not read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptEnd {
    pub exit: ScriptExit,
    /// CPU time of every process in the container since the script was received, µs.
    pub cpu_us: Option<u64>,
    /// The container's peak memory, bytes.
    pub peak_memory: Option<u64>,
}

/// A whole trailer: the nonce, `E`/`S` and its byte, then two u64 (CPU µs, peak bytes).
/// The input-wanted marker has the same length (`W` and 17 zero bytes), so that the
/// search for a marker cut across two frames is one rule for both.
pub const TRAILER_LEN: usize = NONCE_LEN + 2 + 8 + 8;

/// What the bootstrap said with a nonce-tagged marker on an output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// The script ended (the trailer).
    End(ScriptEnd),
    /// The script is blocked reading an empty stdin (feature `input_wanted`, §10.3).
    InputWanted,
}

/// Request flag: watch for the script blocking on stdin, and say so with a `W` marker.
pub const FLAG_INPUT_WANTED: u32 = 1;

/// Request flag: name big files out (`A` records, `files_out.rs`) for the server to fetch
/// through the engine's archive API, rather than copying them through stdout; the
/// bootstrap then waits to be removed.
pub const FLAG_FETCH: u32 = 2;

/// Length of the nonce that marks the bootstrap's end-of-script trailer.
pub const NONCE_LEN: usize = 16;

/// The byte the bootstrap writes to stdout once it has the script.
pub const ACK: u8 = 0x06;

/// Written alone on stdout by a bootstrap started with `preload`, once the modules are
/// imported and before it reads its request (`await_ready`).
pub const READY: u8 = 0x05;

/// Stderr that may arrive before the ACK on stdout, kept: it is the script's (Docker
/// copies the two streams independently, so under load the script's first stderr can
/// overtake the bootstrap's ACK), or, if no ACK comes, the bootstrap's error message.
const MAX_EARLY_STDERR: usize = 4 << 20;

/// A fresh, unguessable nonce for one session's trailer.
pub fn new_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .expect("the system's random number generator works");
    nonce
}

/// What a session asks of the bootstrap besides its script (feature `files`, protocol
/// §10.2): how many file records follow the request on stdin, and which files to send
/// back after the script, within `get_cap` bytes and `get_count` files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilesRequest {
    pub count: u32,
    pub get: Vec<String>,
    pub get_cap: u64,
    pub get_count: u32,
    /// Seconds the bootstrap keeps /tmp at most once it has named files for the server
    /// to fetch (`FLAG_FETCH`): the session's time limit and then some, after which the
    /// server has ended the session whatever happened. It is normally killed long before;
    /// this bounds a container whose daemon died.
    pub keep_s: u32,
}

/// The one request the bootstrap reads from stdin. `args` must have passed `check_args`,
/// the `get` patterns `check_pattern`.
pub fn request(
    script: &[u8],
    name: &str,
    args: &[String],
    nonce: &[u8; NONCE_LEN],
    files: &FilesRequest,
    flags: u32,
) -> Bytes {
    let joined = |items: &[String]| -> usize {
        items
            .iter()
            .map(|a| a.len() + 1)
            .sum::<usize>()
            .saturating_sub(1)
    };
    let (args_len, get_len) = (joined(args), joined(&files.get));
    let mut buf =
        BytesMut::with_capacity(REQUEST_HEAD + script.len() + name.len() + args_len + get_len);
    buf.put_slice(b"PYX5");
    // Bounded by the script size limit (< 4 GiB, checked in config) and MAX_ARGS_BYTES.
    buf.put_u32(u32::try_from(script.len()).expect("script size is bounded by config"));
    buf.put_u32(name.len() as u32);
    buf.put_u32(args_len as u32);
    buf.put_slice(nonce);
    buf.put_u32(files.count);
    // At most MAX_PATTERNS patterns of at most MAX_PATH_LEN bytes each.
    buf.put_u32(get_len as u32);
    buf.put_u64(files.get_cap);
    buf.put_u32(files.get_count);
    buf.put_u32(flags);
    buf.put_u32(files.keep_s);
    buf.put_slice(script);
    buf.put_slice(name.as_bytes());
    for list in [args, &files.get[..]] {
        for (i, a) in list.iter().enumerate() {
            if i > 0 {
                buf.put_u8(0);
            }
            buf.put_slice(a.as_bytes());
        }
    }
    buf.freeze()
}

/// Length of the request's fixed head: magic, three lengths, the nonce, the file count,
/// the patterns' length, the cap of files out in bytes and in files, the flags, the time
/// /tmp is kept for fetches.
pub const REQUEST_HEAD: usize = 4 + 12 + NONCE_LEN + 4 + 4 + 8 + 4 + 4 + 4;

/// The head of one file record on the bootstrap's stdin, after the request (feature
/// `files`): `u32` name length, `u64` size, the name; `size` bytes of content follow.
pub fn file_record(name: &str, size: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(12 + name.len());
    // Names are at most MAX_PATH_LEN bytes (checked by `check_name`).
    buf.put_u32(name.len() as u32);
    buf.put_u64(size);
    buf.put_slice(name.as_bytes());
    buf.freeze()
}

/// Writes the bootstrap request and waits for the ACK. Returns the streams and the output
/// to deliver first: stderr that overtook the ACK, and whatever followed the ACK in its
/// frame. The error is why the container cannot take the script (it is then replaced).
pub async fn hand_over(
    input: InputSink,
    output: OutputStream,
    request: Bytes,
) -> Result<(InputSink, OutputStream, Vec<Output>), String> {
    let input = write_request(input, request).await?;
    let (output, early) = await_ack(output).await?;
    Ok((input, output, early))
}

/// Writes the bootstrap request, and nothing else.
pub async fn write_request(mut input: InputSink, request: Bytes) -> Result<InputSink, String> {
    match async {
        input.write_all(&request).await?;
        input.flush().await
    }
    .await
    {
        Ok(()) => Ok(input),
        Err(e) => Err(format!("cannot write the script: {e}")),
    }
}

/// Waits for the bootstrap's ACK (see `hand_over`).
pub async fn await_ack(output: OutputStream) -> Result<(OutputStream, Vec<Output>), String> {
    await_byte(output, ACK).await
}

/// Waits for a preloading bootstrap's READY: only then is the container a warm spare (a
/// session handed it earlier would wait for the imports). Stderr before it is the image's
/// own (its imports), returned for the caller to drop or log, never the script's.
pub async fn await_ready(output: OutputStream) -> Result<(OutputStream, Vec<Output>), String> {
    await_byte(output, READY).await
}

/// Reads until a stdout chunk that starts with `byte`: the stream, and what came with or
/// before it (stderr, and stdout after the byte in the same chunk).
async fn await_byte(
    mut output: OutputStream,
    byte: u8,
) -> Result<(OutputStream, Vec<Output>), String> {
    let (mut early, mut early_len) = (Vec::new(), 0usize);
    loop {
        match output.next().await {
            Some(Ok(Output::Stdout(mut message))) if message.first() == Some(&byte) => {
                let rest = message.split_off(1);
                if !rest.is_empty() {
                    early.push(Output::Stdout(rest));
                }
                return Ok((output, early));
            }
            Some(Ok(Output::Stderr(message))) => {
                early_len += message.len();
                if early_len > MAX_EARLY_STDERR {
                    return Err("too much stderr before the script was accepted".into());
                }
                early.push(Output::Stderr(message));
            }
            Some(Ok(Output::Stdout(_))) => {
                return Err("the sandbox image's python3 did not run the bootstrap".into())
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => {
                let errors: Vec<u8> = early
                    .iter()
                    .flat_map(|item| item.bytes().iter().copied())
                    .take(2048)
                    .collect();
                let text = String::from_utf8_lossy(&errors);
                return Err(match text.trim() {
                    "" => "its output closed before the script was accepted".into(),
                    text => text.to_string(),
                });
            }
        }
    }
}

/// Finds the bootstrap's markers in each output stream: the trailer (nonce, then `E` +
/// status or `S` + signal) and the input-wanted marker (nonce, then `W`). Each is one
/// write of fewer than PIPE_BUF bytes, so no other write lands inside it, but a frame
/// boundary may still cut it (see `partial_tail`). The script cannot forge one: it never
/// learns the nonce (the bootstrap drops it in the script's process before running it).
pub struct Trailers {
    finder: memchr::memmem::Finder<'static>,
    stdout: Option<ScriptEnd>,
    stderr: Option<ScriptEnd>,
}

impl Trailers {
    pub fn new(nonce: &[u8; NONCE_LEN]) -> Self {
        Trailers {
            finder: memchr::memmem::Finder::new(nonce).into_owned(),
            stdout: None,
            stderr: None,
        }
    }

    /// Where the first marker starts in `data`, and what it says; `None` until all of it
    /// is there (a cut marker's start is held back by the pump, see `partial_tail`).
    pub fn find(&self, data: &[u8]) -> Option<(usize, Marker)> {
        let at = self.finder.find(data)?;
        let body = data.get(at + NONCE_LEN..at + TRAILER_LEN)?;
        let exit = match body[..2] {
            [b'E', code] => ScriptExit::Code(code as i32),
            [b'S', sig] => ScriptExit::Signal(sig as i32),
            [b'W', _] => return Some((at, Marker::InputWanted)),
            _ => return None,
        };
        let number = |bytes: &[u8]| match u64::from_be_bytes(bytes.try_into().expect("8 bytes")) {
            u64::MAX => None,
            n => Some(n),
        };
        Some((
            at,
            Marker::End(ScriptEnd {
                exit,
                cpu_us: number(&body[2..10]),
                peak_memory: number(&body[10..18]),
            }),
        ))
    }

    /// The trailer in `data` (the first marker, which must be one), for callers that
    /// take no input-wanted marker.
    pub fn find_end(&self, data: &[u8]) -> Option<(usize, ScriptEnd)> {
        match self.find(data)? {
            (at, Marker::End(end)) => Some((at, end)),
            (_, Marker::InputWanted) => None,
        }
    }

    /// How many bytes at the end of `data` could be the start of a trailer cut in two
    /// (the longest such suffix; 0 when none is).
    pub fn partial_tail(&self, data: &[u8]) -> usize {
        let nonce = self.finder.needle();
        let longest = (TRAILER_LEN - 1).min(data.len());
        (1..=longest)
            .rev()
            .find(|&k| {
                let tail = &data[data.len() - k..];
                let n = k.min(NONCE_LEN);
                tail[..n] == nonce[..n]
                    && (k <= NONCE_LEN || matches!(tail[NONCE_LEN], b'E' | b'S' | b'W'))
            })
            .unwrap_or(0)
    }

    /// Whether this stream has carried its trailer already.
    pub fn seen(&self, stderr: bool) -> bool {
        if stderr {
            self.stderr.is_some()
        } else {
            self.stdout.is_some()
        }
    }

    /// Notes a trailer on one stream; returns the script's end once both have one.
    pub fn record(&mut self, stderr: bool, end: ScriptEnd) -> Option<ScriptEnd> {
        if stderr {
            self.stderr = Some(end);
        } else {
            self.stdout = Some(end);
        }
        self.stdout.and(self.stderr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let nonce = [7u8; NONCE_LEN];
        let files = FilesRequest {
            count: 2,
            get: vec!["a.png".into(), "r/*.csv".into()],
            get_cap: 1 << 20,
            get_count: 9,
            keep_s: 75,
        };
        let req = request(
            b"print(1)\n",
            "a.py",
            &["x".into(), "".into(), "z".into()],
            &nonce,
            &files,
            FLAG_INPUT_WANTED,
        );
        let u32_at = |at: usize| u32::from_be_bytes(req[at..at + 4].try_into().unwrap());
        assert_eq!(&req[..4], b"PYX5");
        assert_eq!(u32_at(4), 9);
        assert_eq!(u32_at(8), 4);
        assert_eq!(u32_at(12), 4);
        assert_eq!(&req[16..32], &nonce);
        assert_eq!(u32_at(32), 2, "file records to follow");
        assert_eq!(u32_at(36), 13, "patterns' length");
        assert_eq!(u64::from_be_bytes(req[40..48].try_into().unwrap()), 1 << 20);
        assert_eq!(u32_at(48), 9);
        assert_eq!(u32_at(52), FLAG_INPUT_WANTED, "flags");
        assert_eq!(u32_at(56), 75, "seconds /tmp is kept for fetches");
        assert_eq!(REQUEST_HEAD, 60);
        assert_eq!(&req[60..], b"print(1)\na.pyx\0\0za.png\0r/*.csv");
        assert_ne!(new_nonce(), new_nonce());
        let none = request(b"", "m.py", &[], &nonce, &FilesRequest::default(), 0);
        assert_eq!(none.len(), REQUEST_HEAD + 4);
        assert_eq!(&none[12..16], &[0, 0, 0, 0]);
        assert_eq!(&none[52..56], &[0, 0, 0, 0], "no flags");
        let record = file_record("d/x.csv", 3);
        assert_eq!(&record[..], b"\0\0\0\x07\0\0\0\0\0\0\0\x03d/x.csv");
    }

    /// The input-wanted marker is found like the trailer, cut or whole, and told apart
    /// from it; a `W` after something that is not the nonce is the script's output.
    #[test]
    fn the_input_wanted_marker_is_found_and_cut_like_the_trailer() {
        let nonce = *b"0123456789abcdef";
        let t = Trailers::new(&nonce);
        let mut marker = nonce.to_vec();
        marker.push(b'W');
        marker.resize(TRAILER_LEN, 0);
        let mut data = b"Name: ".to_vec();
        data.extend_from_slice(&marker);
        assert_eq!(t.find(&data), Some((6, Marker::InputWanted)));
        assert_eq!(t.find_end(&data), None, "not a trailer");
        for cut in 1..marker.len() {
            assert_eq!(
                t.partial_tail(&data[..6 + cut]),
                cut,
                "cut after {cut} bytes"
            );
            assert_eq!(t.find(&data[..6 + cut]), None);
        }
        let mut forged = b"0123456789abcdeX".to_vec();
        forged.extend_from_slice(&marker[NONCE_LEN..]);
        assert_eq!(t.find(&forged), None);
    }

    /// Docker copies stdout and stderr apart: the script's first stderr can come before the
    /// bootstrap's ACK on stdout. It is the script's, and must not be lost.
    #[tokio::test]
    async fn stderr_that_overtakes_the_ack_is_kept_in_order() {
        let items = vec![
            Ok(Output::Stderr(Bytes::from_static(b"early"))),
            Ok(Output::Stdout(Bytes::from_static(b"\x06hi"))),
            Ok(Output::Stderr(Bytes::from_static(b"late"))),
        ];
        let output: OutputStream = Box::pin(futures::stream::iter(items));
        let input: InputSink = Box::pin(tokio::io::sink());
        let (_, mut rest, first) = hand_over(input, output, Bytes::from_static(b"req"))
            .await
            .unwrap();
        let first: Vec<Vec<u8>> = first.iter().map(|o| o.bytes().to_vec()).collect();
        assert_eq!(first, [b"early".to_vec(), b"hi".to_vec()]);
        assert!(matches!(rest.next().await, Some(Ok(Output::Stderr(_)))));
    }

    #[tokio::test]
    async fn a_bootstrap_that_dies_reports_its_stderr() {
        let items = vec![Ok(Output::Stderr(Bytes::from_static(b"Traceback: boom\n")))];
        let output: OutputStream = Box::pin(futures::stream::iter(items));
        let input: InputSink = Box::pin(tokio::io::sink());
        let err = hand_over(input, output, Bytes::from_static(b"req"))
            .await
            .err()
            .unwrap();
        assert_eq!(err, "Traceback: boom");
    }
}
