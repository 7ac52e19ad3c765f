//! The bootstrap's files-out stream (feature `files`, protocol §10.2), parsed into the
//! frames that carry it to the client; pure. The bootstrap writes it on stdout right
//! after its trailer, once the script has ended:
//!
//! ```text
//! b"F" u32 name_len u64 size name content[size]   a file
//! b"A" u32 name_len u64 size name                 a file to fetch (`Item::Fetch`)
//! b"U" u32 len pattern                            a pattern that matched nothing
//! b"K" u32 name_len u32 reason_len name reason    a match that was not sent, and why
//! b"Z"                                            the end
//! ```
//!
//! The container is the script's: everything here is checked as hostile input. Names go
//! through the protocol's `check_name`, totals through the announced caps, and every
//! length is bounded before anything is buffered; content is sliced, never gathered.
//!
//! `A` is for big files, when the server allows it (`bootstrap::FLAG_FETCH`): the
//! bootstrap names the file instead of copying it through its stdout, the container's
//! output pipes and Docker's attach stream, and the pump fetches it from the engine's
//! archive API (`archive.rs`), as `docker cp` would, while the bootstrap waits.

use bytes::{Buf, Bytes, BytesMut};

use crate::protocol::files::{check_name, FileHeader, FilesOutEnd, Skipped, MAX_PATH_LEN};
use crate::protocol::{Frame, DATA_CHUNK};

/// Longest reason text for a skipped file.
const MAX_REASON: usize = 256;

/// Bytes of names and reasons, as JSON, that `FILES_OUT_END` lists; past them, entries are
/// counted in its message instead. A frame holds at most 128 KiB: 1000 skipped files with
/// long names (a script can make them) encoded past it, the writer failed, and the
/// client never got its END.
const MAX_LISTED: usize = 64 << 10;

/// What the bootstrap's stream broke.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilesOutError {
    #[error("unknown record tag 0x{0:02x}")]
    Tag(u8),
    #[error("a name or text of {0} bytes")]
    Length(usize),
    #[error("name refused: {0}")]
    Name(String),
    #[error("files out over the cap of {0} bytes")]
    OverBytes(u64),
    #[error("more files out than the cap of {0}")]
    OverCount(u32),
    #[error("bytes after the end")]
    AfterEnd,
}

#[derive(Debug)]
enum State {
    /// Gathering a record's head (tag included) in `head`.
    Head,
    /// Content of the current file: this many bytes still to come.
    Content(u64),
    /// `Z` seen.
    Done,
}

/// What the stream gives: frames for the client, or a file for the pump to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Frame(Frame),
    /// Fetch this file of the container's /tmp (its name checked, counted in the caps)
    /// and send it as `FILE_OUT` and its data, here in the stream's order.
    Fetch(FileHeader),
}

/// Turns the stream into `FILE_OUT`, `FILE_OUT_DATA` and, at its end, `FILES_OUT_END`.
#[derive(Debug)]
pub struct FilesOut {
    state: State,
    head: BytesMut,
    end: FilesOutEnd,
    bytes: u64,
    count: u32,
    cap_bytes: u64,
    cap_count: u32,
    /// `K` records seen (bounded by `cap_count`).
    k_records: u32,
    /// JSON bytes listed in `end` so far, and the entries left out past `MAX_LISTED`.
    listed: usize,
    unlisted: u32,
    /// What followed an `A` record, parsed by `resume` once the file is fetched: the
    /// fetch can still add to the end's skipped list, or end the files.
    rest: Bytes,
}

impl FilesOut {
    pub fn new(cap_bytes: u64, cap_count: u32) -> Self {
        FilesOut {
            state: State::Head,
            head: BytesMut::new(),
            end: FilesOutEnd::default(),
            bytes: 0,
            count: 0,
            cap_bytes,
            cap_count,
            k_records: 0,
            listed: 0,
            unlisted: 0,
            rest: Bytes::new(),
        }
    }

    pub fn done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// A fetched file that could not be sent, listed in `FILES_OUT_END` as skipped. Each
    /// was an `A` record, of which there are at most `cap_count`.
    pub fn skip(&mut self, name: String, mut reason: String) {
        if reason.len() > MAX_REASON {
            let mut at = MAX_REASON;
            while !reason.is_char_boundary(at) {
                at -= 1;
            }
            reason.truncate(at);
        }
        self.list_skipped(Skipped { name, reason });
    }

    /// Whether `texts`, as JSON, still fit in the end's list; counted if they do.
    fn fits(&mut self, texts: &[&str]) -> bool {
        let size: usize = texts
            .iter()
            .map(|t| serde_json::to_string(t).map_or(usize::MAX / 4, |j| j.len()))
            .sum();
        if self.listed.saturating_add(size) > MAX_LISTED {
            self.unlisted += 1;
            return false;
        }
        self.listed += size;
        true
    }

    fn list_skipped(&mut self, skipped: Skipped) {
        if self.fits(&[&skipped.name, &skipped.reason]) {
            self.end.skipped.push(skipped);
        }
    }

    /// The items that `data` completes, in order. Content is cut into frames of at most
    /// `DATA_CHUNK`, each a slice of `data`. An `Item::Fetch` is always the last: the rest
    /// waits for `resume`.
    pub fn feed(&mut self, mut data: Bytes) -> Result<Vec<Item>, FilesOutError> {
        if !self.rest.is_empty() {
            let mut joined = BytesMut::from(&std::mem::take(&mut self.rest)[..]);
            joined.extend_from_slice(&data);
            data = joined.freeze();
        }
        let mut frames = Vec::new();
        while !data.is_empty() {
            match self.state {
                State::Done => return Err(FilesOutError::AfterEnd),
                State::Content(left) => {
                    let n = (left.min(DATA_CHUNK as u64) as usize).min(data.len());
                    frames.push(Item::Frame(Frame::FileOutData(data.split_to(n))));
                    self.state = match left - n as u64 {
                        0 => State::Head,
                        rest => State::Content(rest),
                    };
                }
                State::Head => {
                    // Take one byte at a time into the head until it is whole: heads are
                    // small, and a head cut anywhere by a pipe read parses the same.
                    self.head.extend_from_slice(&data.split_to(1));
                    match self.parse_head()? {
                        Some(fetch @ Item::Fetch(_)) => {
                            frames.push(fetch);
                            self.rest = data;
                            break;
                        }
                        Some(item) => frames.push(item),
                        None => {}
                    }
                }
            }
        }
        Ok(frames)
    }

    /// The items after a fetched file's record.
    pub fn resume(&mut self) -> Result<Vec<Item>, FilesOutError> {
        self.feed(Bytes::new())
    }

    /// A whole head in `self.head` gives its item (or none, for the records that only
    /// add to `FILES_OUT_END`); `Ok(None)` too while more bytes are needed.
    fn parse_head(&mut self) -> Result<Option<Item>, FilesOutError> {
        let h = &self.head[..];
        let need = |n: usize| h.len() < n;
        let len_at = |at: usize| -> Result<usize, FilesOutError> {
            let n = u32::from_be_bytes(h[at..at + 4].try_into().expect("4 bytes")) as usize;
            if n > MAX_PATH_LEN.max(MAX_REASON) {
                return Err(FilesOutError::Length(n));
            }
            Ok(n)
        };
        let text = |bytes: &[u8]| -> Result<String, FilesOutError> {
            String::from_utf8(bytes.to_vec()).map_err(|_| FilesOutError::Name("not UTF-8".into()))
        };
        let name = |bytes: &[u8]| -> Result<String, FilesOutError> {
            let name = text(bytes)?;
            check_name(&name).map_err(|e| FilesOutError::Name(format!("{name:?}: {e}")))?;
            Ok(name)
        };
        let frame = match h[0] {
            b'Z' => {
                self.state = State::Done;
                if self.unlisted > 0 && self.end.message.is_empty() {
                    self.end.message = format!(
                        "{} more skipped files or unmatched patterns, not listed",
                        self.unlisted
                    );
                }
                let end = std::mem::take(&mut self.end);
                Some(Item::Frame(Frame::FilesOutEnd(end)))
            }
            tag @ (b'F' | b'A') => {
                if need(5) {
                    return Ok(None);
                }
                // Refused from its four bytes, before anything more is buffered.
                let n = len_at(1)?;
                if need(13 + n) {
                    return Ok(None);
                }
                let size = (&h[5..13]).get_u64();
                let name = name(&h[13..13 + n])?;
                self.count += 1;
                if self.count > self.cap_count {
                    return Err(FilesOutError::OverCount(self.cap_count));
                }
                self.bytes = self.bytes.saturating_add(size);
                if self.bytes > self.cap_bytes {
                    return Err(FilesOutError::OverBytes(self.cap_bytes));
                }
                let header = FileHeader { name, size };
                if tag == b'A' {
                    Some(Item::Fetch(header))
                } else {
                    if size > 0 {
                        self.state = State::Content(size);
                    }
                    Some(Item::Frame(Frame::FileOut(header)))
                }
            }
            b'U' => {
                if need(5) {
                    return Ok(None);
                }
                let n = len_at(1)?;
                if need(5 + n) {
                    return Ok(None);
                }
                let pattern = name(&h[5..5 + n])?;
                if self.fits(&[&pattern]) {
                    self.end.unmatched.push(pattern);
                }
                None
            }
            b'K' => {
                if need(9) {
                    return Ok(None);
                }
                let (n, r) = (len_at(1)?, len_at(5)?);
                if need(9 + n + r) {
                    return Ok(None);
                }
                let skipped = Skipped {
                    name: name(&h[9..9 + n])?,
                    reason: text(&h[9 + n..9 + n + r])?,
                };
                // As many as there are files allowed: the list cannot grow without bound.
                // (Fetches that failed, `skip`, are counted apart: they cannot push the
                // bootstrap's own list over.)
                self.k_records += 1;
                if self.k_records > self.cap_count {
                    return Err(FilesOutError::OverCount(self.cap_count));
                }
                self.list_skipped(skipped);
                None
            }
            tag => return Err(FilesOutError::Tag(tag)),
        };
        self.head.clear();
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, content: &[u8]) -> Vec<u8> {
        let mut v = vec![b'F'];
        v.extend_from_slice(&(name.len() as u32).to_be_bytes());
        v.extend_from_slice(&(content.len() as u64).to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(content);
        v
    }

    fn text_record(tag: u8, parts: &[&str]) -> Vec<u8> {
        let mut v = vec![tag];
        for p in parts {
            v.extend_from_slice(&(p.len() as u32).to_be_bytes());
        }
        for p in parts {
            v.extend_from_slice(p.as_bytes());
        }
        v
    }

    fn stream() -> Vec<u8> {
        let mut s = file("plot.png", b"\x89PNG");
        s.extend(file("r/empty.csv", b""));
        s.extend(text_record(b'U', &["*.svg"]));
        s.extend(text_record(b'K', &["link.png", "a symbolic link"]));
        s.push(b'Z');
        s
    }

    fn expected() -> Vec<Frame> {
        vec![
            Frame::FileOut(FileHeader {
                name: "plot.png".into(),
                size: 4,
            }),
            Frame::FileOutData(Bytes::from_static(b"\x89PNG")),
            Frame::FileOut(FileHeader {
                name: "r/empty.csv".into(),
                size: 0,
            }),
            Frame::FilesOutEnd(FilesOutEnd {
                unmatched: vec!["*.svg".into()],
                skipped: vec![Skipped {
                    name: "link.png".into(),
                    reason: "a symbolic link".into(),
                }],
                message: String::new(),
            }),
        ]
    }

    /// Merges data frames that a cut split, so that streams cut differently compare.
    fn merged(items: Vec<Item>) -> Vec<Frame> {
        let mut out: Vec<Frame> = Vec::new();
        for item in items {
            let Item::Frame(f) = item else {
                panic!("a fetch in a stream without one: {item:?}")
            };
            match (out.last_mut(), f) {
                (Some(Frame::FileOutData(a)), Frame::FileOutData(b)) => {
                    let mut joined = BytesMut::from(&a[..]);
                    joined.extend_from_slice(&b);
                    *a = joined.freeze();
                }
                (_, f) => out.push(f),
            }
        }
        out
    }

    #[test]
    fn a_stream_cut_at_every_byte_parses_the_same() {
        let s = stream();
        for cut in 0..=s.len() {
            let mut p = FilesOut::new(100, 10);
            let mut frames = p.feed(Bytes::copy_from_slice(&s[..cut])).unwrap();
            frames.extend(p.feed(Bytes::copy_from_slice(&s[cut..])).unwrap());
            assert_eq!(merged(frames), expected(), "cut at {cut}");
            assert!(p.done());
        }
    }

    #[test]
    fn content_comes_in_chunks_of_at_most_data_chunk() {
        let big = vec![7u8; DATA_CHUNK * 2 + 5];
        let mut s = file("big.bin", &big);
        s.push(b'Z');
        let frames = FilesOut::new(1 << 20, 1).feed(Bytes::from(s)).unwrap();
        let sizes: Vec<usize> = frames
            .iter()
            .filter_map(|f| match f {
                Item::Frame(Frame::FileOutData(b)) => Some(b.len()),
                _ => None,
            })
            .collect();
        assert_eq!(sizes, [DATA_CHUNK, DATA_CHUNK, 5]);
    }

    #[test]
    fn a_file_to_fetch_comes_in_its_place_and_counts_in_the_caps() {
        let mut s = file("a.txt", b"x");
        s.push(b'A');
        s.extend_from_slice(&5u32.to_be_bytes());
        s.extend_from_slice(&(40u64 << 20).to_be_bytes());
        s.extend_from_slice(b"b.bin");
        s.extend(file("c.txt", b""));
        s.push(b'Z');
        // Cut anywhere, the fetch comes last of its batch and the rest waits for
        // `resume`, so that what the fetch adds (a skip) is in the end.
        let fetch = FileHeader {
            name: "b.bin".into(),
            size: 40 << 20,
        };
        let expected = vec![
            Item::Frame(Frame::FileOut(FileHeader {
                name: "a.txt".into(),
                size: 1,
            })),
            Item::Frame(Frame::FileOutData(Bytes::from_static(b"x"))),
            Item::Fetch(fetch.clone()),
            Item::Frame(Frame::FileOut(FileHeader {
                name: "c.txt".into(),
                size: 0,
            })),
            Item::Frame(Frame::FilesOutEnd(FilesOutEnd {
                skipped: vec![Skipped {
                    name: "b.bin".into(),
                    reason: "gone".into(),
                }],
                ..Default::default()
            })),
        ];
        for cut in 0..=s.len() {
            let mut p = FilesOut::new(41 << 20, 3);
            let mut all = Vec::new();
            for part in [&s[..cut], &s[cut..]] {
                let mut batch = p.feed(Bytes::copy_from_slice(part)).unwrap();
                while let Some(Item::Fetch(h)) = batch.last().cloned() {
                    all.extend(batch);
                    p.skip(h.name, "gone".into());
                    batch = p.resume().unwrap();
                }
                assert!(!batch.iter().any(|i| matches!(i, Item::Fetch(_))));
                all.extend(batch);
            }
            assert!(p.done());
            assert_eq!(all, expected, "cut at {cut}");
        }
        let over = |bytes, count| {
            let mut p = FilesOut::new(bytes, count);
            p.feed(Bytes::from(s.clone()))?;
            p.resume()
        };
        assert_eq!(
            over(40 << 20, 3).unwrap_err(),
            FilesOutError::OverBytes(40 << 20)
        );
        assert_eq!(over(41 << 20, 1).unwrap_err(), FilesOutError::OverCount(1));
        let mut hostile = vec![b'A'];
        hostile.extend_from_slice(&6u32.to_be_bytes());
        hostile.extend_from_slice(&1u64.to_be_bytes());
        hostile.extend_from_slice(b"../etc");
        assert!(matches!(
            FilesOut::new(10, 10).feed(Bytes::from(hostile)),
            Err(FilesOutError::Name(_))
        ));
    }

    /// 1000 skipped files with 200-byte names (any script can make them) once encoded
    /// past the 128 KiB a frame holds: the list stops at `MAX_LISTED`, the rest counted.
    #[test]
    fn the_end_stays_within_a_frame_whatever_is_skipped() {
        let mut s = Vec::new();
        let long = "x".repeat(200);
        for i in 0..1000 {
            s.extend(text_record(
                b'K',
                &[&format!("d/{long}{i}"), "over the server's cap"],
            ));
        }
        s.extend(text_record(b'U', &["*.svg"]));
        s.push(b'Z');
        let mut p = FilesOut::new(1 << 20, 1000);
        let items = p.feed(Bytes::from(s)).unwrap();
        let Some(Item::Frame(Frame::FilesOutEnd(end))) = items.last() else {
            panic!("{:?}", items.last())
        };
        let json = serde_json::to_vec(end).unwrap();
        assert!(json.len() < 100_000, "{} bytes", json.len());
        assert!(
            end.skipped.len() > 200,
            "as many as fit: {}",
            end.skipped.len()
        );
        let left = 1000 + 1 - end.skipped.len() - end.unmatched.len();
        assert_eq!(
            end.message,
            format!("{left} more skipped files or unmatched patterns, not listed")
        );
        // A failed fetch's reason is cut like the bootstrap's.
        let mut p = FilesOut::new(10, 10);
        p.skip("a".into(), "é".repeat(400));
        assert!(p.end.skipped[0].reason.len() <= MAX_REASON);
    }

    #[test]
    fn a_hostile_stream_is_refused() {
        let over = |s: Vec<u8>, bytes, count| FilesOut::new(bytes, count).feed(Bytes::from(s));
        assert_eq!(
            over(file("../etc/passwd", b"x"), 10, 10).unwrap_err(),
            FilesOutError::Name("\"../etc/passwd\": a '..' component".into())
        );
        assert!(matches!(
            over(file("/etc/x", b""), 10, 10),
            Err(FilesOutError::Name(_))
        ));
        assert_eq!(
            over(file("a", b"12345"), 4, 10).unwrap_err(),
            FilesOutError::OverBytes(4)
        );
        let mut two = file("a", b"");
        two.extend(file("b", b""));
        assert_eq!(over(two, 4, 1).unwrap_err(), FilesOutError::OverCount(1));
        // A length that would make us buffer: refused from its four bytes.
        let mut huge = vec![b'F'];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(over(huge, 10, 10), Err(FilesOutError::Length(_))));
        assert_eq!(
            over(vec![b'?'], 1, 1).unwrap_err(),
            FilesOutError::Tag(b'?')
        );
        assert_eq!(
            over(vec![b'Z', b'F'], 1, 1).unwrap_err(),
            FilesOutError::AfterEnd
        );
    }
}
