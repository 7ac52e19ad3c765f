//! The `files` feature's rules, with no I/O (protocol §10.2): which file names and
//! `get` patterns are acceptable, and the running account of a file set against the
//! bounds announced in `WELCOME`. Both ends use the same functions, so a name the
//! client lets through is a name the server takes, and a hostile server's name is
//! refused by the client for the same reasons.

use serde::{Deserialize, Serialize};

/// The feature's name in `HELLO.features` / `WELCOME.features`.
pub const FEATURE: &str = "files";

/// Longest path, in UTF-8 bytes, for a file in or out (fixed in version 1).
pub const MAX_PATH_LEN: usize = 1024;
/// Longest single component: what Linux file systems take (NAME_MAX).
pub const MAX_COMPONENT_LEN: usize = 255;
/// Most `get` patterns a session may give.
pub const MAX_PATTERNS: usize = 64;

/// `HELLO.files`: what the client will send, announced before any of it, so that the
/// server refuses an oversized set before anything runs; and what it wants back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesHello {
    /// Number of `FILE_IN` frames that follow the script.
    #[serde(default)]
    pub count: u32,
    /// Sum of their `size` fields.
    #[serde(default)]
    pub bytes: u64,
    /// Globs, relative to the script's working directory, of files to send back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub get: Vec<String>,
}

/// The `files` bounds, in `WELCOME.limits` when the feature is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesLimits {
    /// Largest total of file bytes in.
    pub files_in_bytes: u64,
    /// Most files in.
    pub files_in_count: u32,
    /// Longest path (UTF-8 bytes), in and out.
    pub file_path_len: u32,
    /// Largest total of file bytes out.
    pub files_out_bytes: u64,
    /// Most files out.
    pub files_out_count: u32,
}

/// `FILE_IN` (C→S) and `FILE_OUT` (S→C): one file's header; its `size` bytes follow in
/// `FILE_IN_DATA` / `FILE_OUT_DATA` frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    /// Relative path, `/`-separated, checked by `check_name`.
    pub name: String,
    pub size: u64,
}

/// A file the server did not send back, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// `FILES_OUT_END` (S→C): the files out are complete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesOutEnd {
    /// Patterns that matched no regular file.
    #[serde(default)]
    pub unmatched: Vec<String>,
    /// Matching names that were not sent (a symlink, a FIFO, over the cap).
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// Why no file was collected at all, when none was (e.g. the container was killed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Why a file name (or a pattern) is refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("an absolute path")]
    Absolute,
    #[error("a '..' component")]
    DotDot,
    #[error("an empty or '.' component")]
    EmptyComponent,
    #[error("a NUL byte")]
    Nul,
    #[error("a control character")]
    Control,
    #[error("longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("a component longer than {MAX_COMPONENT_LEN} bytes")]
    ComponentTooLong,
    #[error("not UTF-8")]
    NotUtf8,
}

/// Checks a relative file path: `/`-separated components, none empty, `.` or `..`; no
/// NUL or control character (a newline in a name would forge lines in a log or in the
/// client's per-file messages); at most `MAX_PATH_LEN` bytes, each component at most
/// `MAX_COMPONENT_LEN`. Being a `&str`, it is UTF-8 already (see `check_name_bytes`).
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.contains('\0') {
        return Err(NameError::Nul);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control);
    }
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    if name.len() > MAX_PATH_LEN {
        return Err(NameError::TooLong);
    }
    for component in name.split('/') {
        match component {
            "" | "." => return Err(NameError::EmptyComponent),
            ".." => return Err(NameError::DotDot),
            c if c.len() > MAX_COMPONENT_LEN => return Err(NameError::ComponentTooLong),
            _ => {}
        }
    }
    Ok(())
}

/// `check_name` for raw bytes (a name read from a local directory): refuses non-UTF-8.
pub fn check_name_bytes(name: &[u8]) -> Result<&str, NameError> {
    let name = std::str::from_utf8(name).map_err(|_| NameError::NotUtf8)?;
    check_name(name).map(|()| name)
}

/// A `get` pattern obeys the name rules (glob characters are ordinary characters there).
pub fn check_pattern(pattern: &str) -> Result<(), NameError> {
    check_name(pattern)
}

/// Why a file set breaks a bound or a rule.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FilesError {
    #[error("file name '{}' refused: {reason}", .name.escape_debug())]
    Name { name: String, reason: NameError },
    #[error("too many files: {count}, the limit is {limit}")]
    TooMany { count: u64, limit: u32 },
    #[error("files too large: {bytes} bytes in all, the limit is {limit}")]
    TooLarge { bytes: u64, limit: u64 },
    #[error("file '{0}' given twice")]
    Duplicate(String),
    #[error("file '{0}' is also a directory of another file")]
    FileAndDirectory(String),
    #[error("too many get patterns: {0}, the limit is {MAX_PATTERNS}")]
    TooManyPatterns(usize),
    #[error("get pattern '{}' refused: {reason}", .pattern.escape_debug())]
    Pattern { pattern: String, reason: NameError },
}

/// Checks what `HELLO.files` announces against the bounds.
pub fn check_announced(hello: &FilesHello, limits: &FilesLimits) -> Result<(), FilesError> {
    if hello.count > limits.files_in_count {
        return Err(FilesError::TooMany {
            count: hello.count as u64,
            limit: limits.files_in_count,
        });
    }
    if hello.bytes > limits.files_in_bytes {
        return Err(FilesError::TooLarge {
            bytes: hello.bytes,
            limit: limits.files_in_bytes,
        });
    }
    if hello.get.len() > MAX_PATTERNS {
        return Err(FilesError::TooManyPatterns(hello.get.len()));
    }
    for pattern in &hello.get {
        check_pattern(pattern).map_err(|reason| FilesError::Pattern {
            pattern: pattern.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// The running account of a file set, one header at a time: every name checked, no name
/// twice, no name that is also another's directory, count and bytes within `count_limit`
/// and `bytes_limit`. The sender checks its whole set with it before connecting, the
/// receiver each header as it comes; memory is one entry per file, bounded by the count.
#[derive(Debug, Default)]
pub struct FileSet {
    names: std::collections::BTreeSet<String>,
    dirs: std::collections::BTreeSet<String>,
    pub count: u64,
    pub bytes: u64,
    count_limit: u32,
    bytes_limit: u64,
}

impl FileSet {
    pub fn new(count_limit: u32, bytes_limit: u64) -> Self {
        FileSet {
            count_limit,
            bytes_limit,
            ..FileSet::default()
        }
    }

    pub fn add(&mut self, header: &FileHeader) -> Result<(), FilesError> {
        let name = &header.name;
        check_name(name).map_err(|reason| FilesError::Name {
            name: name.clone(),
            reason,
        })?;
        if self.count + 1 > self.count_limit as u64 {
            return Err(FilesError::TooMany {
                count: self.count + 1,
                limit: self.count_limit,
            });
        }
        let bytes = self.bytes.saturating_add(header.size);
        if bytes > self.bytes_limit {
            return Err(FilesError::TooLarge {
                bytes,
                limit: self.bytes_limit,
            });
        }
        if self.names.contains(name) {
            return Err(FilesError::Duplicate(name.clone()));
        }
        if self.dirs.contains(name) {
            return Err(FilesError::FileAndDirectory(name.clone()));
        }
        let mut parents = Vec::new();
        let mut at = 0;
        while let Some(i) = name[at..].find('/') {
            let dir = &name[..at + i];
            if self.names.contains(dir) {
                return Err(FilesError::FileAndDirectory(dir.to_string()));
            }
            parents.push(dir.to_string());
            at += i + 1;
        }
        self.dirs.extend(parents);
        self.names.insert(name.clone());
        self.count += 1;
        self.bytes = bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_refused_and_why() {
        let long_component = "a".repeat(256);
        let long_path = vec!["a"; 600].join("/");
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            ("/etc/passwd", NameError::Absolute),
            ("../x", NameError::DotDot),
            ("a/../../x", NameError::DotDot),
            ("a//b", NameError::EmptyComponent),
            ("a/", NameError::EmptyComponent),
            ("./a", NameError::EmptyComponent),
            ("a\0b", NameError::Nul),
            ("a\nb", NameError::Control),
            (&long_component, NameError::ComponentTooLong),
            (&long_path, NameError::TooLong),
        ];
        for (name, why) in cases {
            assert_eq!(check_name(name).as_ref(), Err(why), "{name:?}");
        }
        for ok in [
            "data.csv",
            "results/out.csv",
            "ünï côdé.txt",
            "a..b",
            ".hidden",
        ] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_name_bytes(b"caf\xe9.txt"), Err(NameError::NotUtf8));
        assert_eq!(check_name_bytes(b"ok.txt"), Ok("ok.txt"));
    }

    fn h(name: &str, size: u64) -> FileHeader {
        FileHeader {
            name: name.into(),
            size,
        }
    }

    #[test]
    fn a_file_set_within_and_just_over_its_bounds() {
        let mut set = FileSet::new(2, 10);
        assert_eq!(set.add(&h("a/b.txt", 4)), Ok(()));
        assert_eq!(set.add(&h("c.txt", 6)), Ok(()));
        assert_eq!(
            set.add(&h("d.txt", 0)),
            Err(FilesError::TooMany { count: 3, limit: 2 })
        );
        let mut set = FileSet::new(5, 10);
        set.add(&h("a", 10)).unwrap();
        assert_eq!(
            set.add(&h("b", 1)),
            Err(FilesError::TooLarge {
                bytes: 11,
                limit: 10
            })
        );
        // A huge size cannot wrap the total round.
        assert!(matches!(
            set.add(&h("c", u64::MAX)),
            Err(FilesError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_name_twice_or_a_file_that_is_a_directory_is_refused() {
        let mut set = FileSet::new(10, 100);
        set.add(&h("d/x", 1)).unwrap();
        assert_eq!(
            set.add(&h("d/x", 1)),
            Err(FilesError::Duplicate("d/x".into()))
        );
        assert_eq!(
            set.add(&h("d", 1)),
            Err(FilesError::FileAndDirectory("d".into()))
        );
        set.add(&h("f", 1)).unwrap();
        assert_eq!(
            set.add(&h("f/y", 1)),
            Err(FilesError::FileAndDirectory("f".into()))
        );
        assert!(matches!(
            set.add(&h("../up", 1)),
            Err(FilesError::Name {
                reason: NameError::DotDot,
                ..
            })
        ));
    }

    #[test]
    fn announced_sets_are_checked_against_the_limits() {
        let limits = FilesLimits {
            files_in_bytes: 100,
            files_in_count: 3,
            file_path_len: MAX_PATH_LEN as u32,
            files_out_bytes: 1000,
            files_out_count: 3,
        };
        let ok = FilesHello {
            count: 3,
            bytes: 100,
            get: vec!["plot.png".into(), "results/*.csv".into()],
        };
        assert_eq!(check_announced(&ok, &limits), Ok(()));
        let many = FilesHello {
            count: 100_000,
            ..ok.clone()
        };
        assert!(matches!(
            check_announced(&many, &limits),
            Err(FilesError::TooMany { .. })
        ));
        let big = FilesHello {
            bytes: 101,
            ..ok.clone()
        };
        assert!(matches!(
            check_announced(&big, &limits),
            Err(FilesError::TooLarge { .. })
        ));
        let bad = FilesHello {
            get: vec!["/etc/*".into()],
            ..ok
        };
        assert!(matches!(
            check_announced(&bad, &limits),
            Err(FilesError::Pattern { .. })
        ));
    }
}
