//! One regular file out of the tar stream of an engine's archive API (`Engine::fetch`),
//! parsed with no I/O.
//!
//! The archive is made by the engine from the script's container, so it is read as
//! hostile: exactly one entry, a regular file owned by the script's uid (the engine reads
//! as root: `sandbox::script_uid`), of exactly the size the bootstrap announced
//! (the client was told that size before the first byte), with no more than a few
//! extended headers of bounded size before it, and nothing but zero blocks after it. A
//! symbolic link, a directory or a device in its place is refused, not followed. Content
//! comes out as slices of the input, never gathered.

use bytes::{Buf, Bytes, BytesMut};

const BLOCK: usize = 512;
/// Extended headers (PAX `x`/`g`, GNU long names `L`/`K`) taken before the file: Docker
/// writes one PAX header for a name that is long or not ASCII.
const MAX_EXTENDED: u32 = 4;
/// Largest extended header taken: a path of `MAX_PATH_LEN` and its records fit easily.
const MAX_EXTENDED_SIZE: u64 = 64 << 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchiveError {
    #[error("the archive holds a {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("the archive's file belongs to uid {0}, not the script's")]
    Owner(u64),
    #[error("the archive's file has {found} bytes, {expected} were announced")]
    Size { expected: u64, found: u64 },
    #[error("a tar header with a bad checksum")]
    Checksum,
    #[error("a tar header with a bad number field")]
    Number,
    #[error("too many or too large extended tar headers")]
    Extended,
    #[error("the archive holds more than the one file")]
    Extra,
    #[error("the archive ended before its file did")]
    Truncated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Gathering a header block in `head`.
    Header,
    /// Skipping an extended header's data blocks: this many bytes left.
    Skip(u64),
    /// The file's content: this many bytes left, then `pad` bytes of padding.
    Content { left: u64, pad: u64 },
    /// Padding after the content: this many bytes left.
    Pad(u64),
    /// The file is whole: only zero bytes may follow.
    After,
}

/// Parses the archive of one file of `expected` bytes.
#[derive(Debug)]
pub struct ArchiveFile {
    expected: u64,
    owner: u32,
    state: State,
    head: BytesMut,
    extended: u32,
}

impl ArchiveFile {
    /// The archive of a file of `expected` bytes that uid `owner` owns.
    pub fn new(expected: u64, owner: u32) -> Self {
        ArchiveFile {
            expected,
            owner,
            state: State::Header,
            head: BytesMut::with_capacity(BLOCK),
            extended: 0,
        }
    }

    /// The file's content that `data` holds, in order, as slices of it.
    pub fn feed(&mut self, mut data: Bytes) -> Result<Vec<Bytes>, ArchiveError> {
        let mut out = Vec::new();
        while !data.is_empty() {
            match self.state {
                State::Header => {
                    let n = (BLOCK - self.head.len()).min(data.len());
                    self.head.extend_from_slice(&data.split_to(n));
                    if self.head.len() == BLOCK {
                        self.state = self.header()?;
                        self.head.clear();
                    }
                }
                State::Skip(left) => {
                    let n = left.min(data.len() as u64);
                    data.advance(n as usize);
                    self.state = match left - n {
                        0 => State::Header,
                        rest => State::Skip(rest),
                    };
                }
                State::Content { left, pad } => {
                    let n = left.min(data.len() as u64);
                    out.push(data.split_to(n as usize));
                    self.state = match (left - n, pad) {
                        (0, 0) => State::After,
                        (0, pad) => State::Pad(pad),
                        (rest, pad) => State::Content { left: rest, pad },
                    };
                }
                State::Pad(left) => {
                    let n = left.min(data.len() as u64);
                    data.advance(n as usize);
                    self.state = match left - n {
                        0 => State::After,
                        rest => State::Pad(rest),
                    };
                }
                State::After => {
                    // The end-of-archive blocks: zeros. Anything else is a second entry.
                    if data.iter().any(|&b| b != 0) {
                        return Err(ArchiveError::Extra);
                    }
                    data.clear();
                }
            }
        }
        Ok(out)
    }

    /// Checks, once the stream has ended, that the whole file came.
    pub fn finish(&self) -> Result<(), ArchiveError> {
        match self.state {
            State::Pad(_) | State::After => Ok(()),
            _ => Err(ArchiveError::Truncated),
        }
    }

    /// A whole header block in `head`: the state it leads to.
    fn header(&mut self) -> Result<State, ArchiveError> {
        let h = &self.head[..];
        if h.iter().all(|&b| b == 0) {
            // The end-of-archive marker before any file.
            return Err(ArchiveError::Truncated);
        }
        let stored = number(&h[148..156])?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| if (148..156).contains(&i) { b' ' } else { b } as u64)
            .sum();
        if stored != sum {
            return Err(ArchiveError::Checksum);
        }
        let size = number(&h[124..136])?;
        match h[156] {
            b'0' | 0 => {
                let uid = number(&h[108..116])?;
                if uid != self.owner as u64 {
                    return Err(ArchiveError::Owner(uid));
                }
                if size != self.expected {
                    return Err(ArchiveError::Size {
                        expected: self.expected,
                        found: size,
                    });
                }
                let pad = padding(size);
                Ok(match size {
                    0 => State::After,
                    left => State::Content { left, pad },
                })
            }
            b'x' | b'g' | b'L' | b'K' => {
                self.extended += 1;
                if self.extended > MAX_EXTENDED || size > MAX_EXTENDED_SIZE {
                    return Err(ArchiveError::Extended);
                }
                Ok(match size + padding(size) {
                    0 => State::Header,
                    n => State::Skip(n),
                })
            }
            b'1' => Err(ArchiveError::NotRegular("hard link")),
            b'2' => Err(ArchiveError::NotRegular("symbolic link")),
            b'3' | b'4' => Err(ArchiveError::NotRegular("device")),
            b'5' => Err(ArchiveError::NotRegular("directory")),
            b'6' => Err(ArchiveError::NotRegular("FIFO")),
            _ => Err(ArchiveError::NotRegular("entry of an unknown type")),
        }
    }
}

/// Bytes of zeros that round `size` up to whole blocks.
fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// A tar number field: octal digits, space- or NUL-terminated, or base-256 (GNU) when
/// its first byte has the high bit set.
fn number(field: &[u8]) -> Result<u64, ArchiveError> {
    if field[0] & 0x80 != 0 {
        let mut n: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            n = n
                .checked_mul(256)
                .and_then(|n| n.checked_add(b as u64))
                .ok_or(ArchiveError::Number)?;
        }
        return Ok(n);
    }
    let digits = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| b != b' ' && b != 0);
    let mut n: u64 = 0;
    for &b in digits {
        if !(b'0'..=b'7').contains(&b) {
            return Err(ArchiveError::Number);
        }
        n = n
            .checked_mul(8)
            .and_then(|n| n.checked_add((b - b'0') as u64))
            .ok_or(ArchiveError::Number)?;
    }
    Ok(n)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The script's uid in these tests (the default `--user`'s).
    pub(crate) const UID: u32 = 65534;

    /// A header block of `kind` with `size`, name `name`, owned by `UID`, checksum set.
    fn header(name: &str, kind: u8, size: u64) -> Vec<u8> {
        header_of(name, kind, size, UID)
    }

    fn header_of(name: &str, kind: u8, size: u64, uid: u32) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(format!("{uid:07o}\0").as_bytes());
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    pub(crate) fn entry(name: &str, kind: u8, content: &[u8]) -> Vec<u8> {
        let mut v = header(name, kind, content.len() as u64);
        v.extend_from_slice(content);
        v.resize(v.len() + padding(content.len() as u64) as usize, 0);
        v
    }

    /// Docker's shape: a PAX header (here for a non-ASCII name), the file, two zero blocks.
    pub(crate) fn archive(content: &[u8]) -> Vec<u8> {
        let mut v = entry("PaxHeaders/x", b'x', "30 path=données-été.csv\n".as_bytes());
        v.extend(entry("donn?es-?t?.csv", b'0', content));
        v.extend([0u8; 2 * BLOCK]);
        v
    }

    fn parse(expected: u64, parts: &[&[u8]]) -> Result<Vec<u8>, ArchiveError> {
        let mut p = ArchiveFile::new(expected, UID);
        let mut out = Vec::new();
        for part in parts {
            for b in p.feed(Bytes::copy_from_slice(part))? {
                out.extend_from_slice(&b);
            }
        }
        p.finish()?;
        Ok(out)
    }

    #[test]
    fn an_archive_cut_at_every_byte_gives_the_same_file() {
        let content: Vec<u8> = (0..1500u32).map(|i| (i % 251) as u8).collect();
        let a = archive(&content);
        for cut in 0..=a.len() {
            assert_eq!(
                parse(1500, &[&a[..cut], &a[cut..]]).unwrap(),
                content,
                "cut at {cut}"
            );
        }
        // Block-sized files have no padding; empty ones no content.
        let whole = vec![9u8; 2 * BLOCK];
        assert_eq!(parse(1024, &[&archive(&whole)]).unwrap(), whole);
        assert_eq!(parse(0, &[&archive(b"")]).unwrap(), b"");
    }

    #[test]
    fn an_archive_without_its_end_blocks_still_counts_once_the_file_is_whole() {
        // Docker closes the stream with them, but the file is what was asked for.
        let a = entry("f", b'0', b"abc");
        assert_eq!(parse(3, &[&a]).unwrap(), b"abc");
        assert_eq!(parse(3, &[&a[..BLOCK + 3]]).unwrap(), b"abc");
    }

    #[test]
    fn anything_but_one_regular_file_of_the_announced_size_is_refused() {
        let link = entry("plot.png", b'2', b"");
        assert_eq!(
            parse(0, &[&link]).unwrap_err(),
            ArchiveError::NotRegular("symbolic link")
        );
        for (kind, what) in [
            (b'1', "hard link"),
            (b'3', "device"),
            (b'5', "directory"),
            (b'6', "FIFO"),
            (b'S', "entry of an unknown type"),
        ] {
            assert_eq!(
                parse(0, &[&entry("x", kind, b"")]).unwrap_err(),
                ArchiveError::NotRegular(what)
            );
        }
        assert_eq!(
            parse(4, &[&archive(b"abc")]).unwrap_err(),
            ArchiveError::Size {
                expected: 4,
                found: 3
            }
        );
        // A root-only file of the image, reached through a link in a directory of the
        // path (the engine reads as root): refused by its owner.
        let mut shadow = header_of("shadow", b'0', 3, 0);
        shadow.extend_from_slice(b"abc");
        assert_eq!(parse(3, &[&shadow]).unwrap_err(), ArchiveError::Owner(0));
        let mut two = entry("a", b'0', b"abc");
        two.extend(entry("b", b'0', b"def"));
        assert_eq!(parse(3, &[&two]).unwrap_err(), ArchiveError::Extra);
        let a = archive(b"abcdef");
        let cut = a.len() - 2 * BLOCK - BLOCK + 3;
        assert_eq!(parse(6, &[&a[..cut]]).unwrap_err(), ArchiveError::Truncated);
        assert_eq!(parse(6, &[&[]]).unwrap_err(), ArchiveError::Truncated);
        assert_eq!(
            parse(0, &[&[0u8; 2 * BLOCK]]).unwrap_err(),
            ArchiveError::Truncated
        );
    }

    #[test]
    fn broken_headers_are_refused_before_anything_is_taken() {
        let mut bad = archive(b"abc");
        bad[2 * BLOCK + 200] ^= 1; // inside the file's header (after the PAX one)
        let mut p = ArchiveFile::new(3, UID);
        p.feed(Bytes::copy_from_slice(&bad[..2 * BLOCK])).unwrap();
        assert_eq!(
            p.feed(Bytes::copy_from_slice(&bad[2 * BLOCK..3 * BLOCK]))
                .unwrap_err(),
            ArchiveError::Checksum
        );
        // Extended headers: bounded in number and in size.
        let mut many = Vec::new();
        for _ in 0..=MAX_EXTENDED {
            many.extend(entry("PaxHeaders/x", b'x', b"12 a=bcdefg\n"));
        }
        assert_eq!(parse(0, &[&many]).unwrap_err(), ArchiveError::Extended);
        let huge = header("PaxHeaders/x", b'x', MAX_EXTENDED_SIZE + 1);
        assert_eq!(parse(0, &[&huge]).unwrap_err(), ArchiveError::Extended);
    }

    #[test]
    fn number_fields_read_octal_and_base_256() {
        assert_eq!(number(b"00000000017\0").unwrap(), 15);
        assert_eq!(number(b"     17 \0\0\0\0").unwrap(), 15);
        assert_eq!(
            number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap(),
            256
        );
        assert_eq!(number(b"0000000009\0\0").unwrap_err(), ArchiveError::Number);
        assert_eq!(
            number(&[0xff; 12]).unwrap_err(),
            ArchiveError::Number,
            "over u64"
        );
    }
}
