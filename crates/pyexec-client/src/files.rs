//! The local side of feature `files` (protocol §10.2): the files to send, read from
//! `--file` and `--dir` with every name checked and nothing but regular files taken; and
//! the result files written only inside the output directory, never through a symlink.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use pyexec_protocol::files::{check_name, FileHeader, FileSet, FilesError};

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    Path(PathBuf),
    Bytes(Bytes),
}

/// One file to send: its name beside the script, its size, its bytes.
#[derive(Debug, Clone)]
pub struct FileIn {
    pub name: String,
    pub size: u64,
    pub source: Source,
}

/// Why a local file cannot be sent or a result file cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{path}: {reason}")]
    Refused { path: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Set(#[from] FilesError),
}

fn refused(path: &Path, reason: impl Into<String>) -> LocalError {
    LocalError::Refused {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// What a non-regular file is, for the refusal that names it.
fn kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "a symbolic link (links are not followed)"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// `--file PATH[=NAME]`: the file at PATH, named NAME (default: its file name). An
/// argument that names an existing file is a PATH even if it holds a `=`.
pub fn file_arg(arg: &OsStr) -> Result<FileIn, LocalError> {
    let whole = Path::new(arg);
    let (path, name) = match arg.to_str().and_then(|s| s.rsplit_once('=')) {
        Some((path, name)) if !whole.exists() => (PathBuf::from(path), Some(name.to_string())),
        _ => (whole.to_path_buf(), None),
    };
    let meta = std::fs::metadata(&path).map_err(|source| LocalError::Read {
        path: path.display().to_string(),
        source,
    })?;
    if !meta.is_file() {
        return Err(refused(&path, kind(meta.file_type())));
    }
    let name = match name {
        Some(name) => name,
        None => path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| refused(&path, "the file name is not UTF-8"))?
            .to_string(),
    };
    check_name(&name).map_err(|e| refused(&path, format!("name '{name}' refused: {e}")))?;
    Ok(FileIn {
        name,
        size: meta.len(),
        source: Source::Path(path),
    })
}

/// `--dir DIR`: every regular file under DIR, named `DIR's name/relative path` (for `.`
/// and other names without a last component, the relative path alone). A symlink, FIFO,
/// device or socket anywhere inside is refused, naming it: it is not followed, and
/// nothing is sent.
pub fn dir_files(dir: &Path) -> Result<Vec<FileIn>, LocalError> {
    let meta = std::fs::metadata(dir).map_err(|source| LocalError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(refused(dir, "not a directory"));
    }
    let prefix = match dir.file_name() {
        Some(n) => Some(
            n.to_str()
                .ok_or_else(|| refused(dir, "the directory name is not UTF-8"))?
                .to_string(),
        ),
        None => None,
    };
    let mut out = Vec::new();
    walk(dir, prefix, &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, prefix: Option<String>, out: &mut Vec<FileIn>) -> Result<(), LocalError> {
    let read = |source| LocalError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(read)?
        .collect::<Result<_, _>>()
        .map_err(read)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let component = entry
            .file_name()
            .to_str()
            .ok_or_else(|| refused(&path, "the file name is not UTF-8"))?
            .to_string();
        let name = match &prefix {
            Some(p) => format!("{p}/{component}"),
            None => component,
        };
        // lstat: a symlink is seen as one, never as what it points to.
        let meta = std::fs::symlink_metadata(&path).map_err(|source| LocalError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let ft = meta.file_type();
        if ft.is_dir() {
            walk(&path, Some(name), out)?;
        } else if ft.is_file() {
            check_name(&name).map_err(|e| refused(&path, format!("name refused: {e}")))?;
            out.push(FileIn {
                name,
                size: meta.len(),
                source: Source::Path(path),
            });
        } else {
            return Err(refused(&path, kind(ft)));
        }
    }
    Ok(())
}

/// Checks a whole set (names, no name twice, no file that is another's directory) and
/// returns its total size, before anything is sent.
pub fn check_set(files: &[FileIn]) -> Result<u64, FilesError> {
    let mut set = FileSet::new(u32::MAX, u64::MAX);
    for f in files {
        set.add(&FileHeader {
            name: f.name.clone(),
            size: f.size,
        })?;
    }
    Ok(set.bytes)
}

/// A file saved from the server: its name as sent, where it is, its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The output directory: result files are written under it and nowhere else.
#[derive(Debug, Clone)]
pub struct OutDir {
    root: PathBuf,
}

/// A result file being received: written to a temporary file beside its final place,
/// renamed over it once complete (a symlink already there is replaced, not written
/// through), removed if the session ends first.
#[derive(Debug)]
pub struct Incoming {
    name: String,
    temp: PathBuf,
    target: PathBuf,
    file: Option<File>,
    left: u64,
    size: u64,
}

impl OutDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        OutDir { root: root.into() }
    }

    /// Starts `name`, which the caller has checked with `check_name` (no `..`, not
    /// absolute). Each directory on the way is created or must be a real directory: a
    /// symlink there is refused, not followed.
    pub fn begin(&self, name: &str, size: u64) -> Result<Incoming, LocalError> {
        check_name(name).map_err(|e| refused(Path::new(name), format!("refused: {e}")))?;
        let mut dir = self.root.clone();
        let mut parts: Vec<&str> = name.split('/').collect();
        let base = parts.pop().expect("a checked name has a component");
        for part in parts {
            dir.push(part);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(m) => {
                    return Err(refused(
                        &dir,
                        format!(
                            "{} where a directory is needed; not written through",
                            kind(m.file_type())
                        ),
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&dir)
                    .map_err(|source| LocalError::Write {
                        path: dir.display().to_string(),
                        source,
                    })?,
                Err(source) => {
                    return Err(LocalError::Write {
                        path: dir.display().to_string(),
                        source,
                    })
                }
            }
        }
        let target = dir.join(base);
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            return Err(refused(&target, "a directory is there"));
        }
        let temp = dir.join(temp_name(
            base,
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed),
        ));
        // O_EXCL and O_NOFOLLOW: a fresh file of ours, never one someone planted.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(|source| LocalError::Write {
                path: temp.display().to_string(),
                source,
            })?;
        Ok(Incoming {
            name: name.to_string(),
            temp,
            target,
            file: Some(file),
            left: size,
            size,
        })
    }
}

impl Incoming {
    /// Bytes still due.
    pub fn left(&self) -> u64 {
        self.left
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), LocalError> {
        let file = self.file.as_mut().expect("open until finished");
        self.left -= data.len() as u64;
        file.write_all(data).map_err(|source| LocalError::Write {
            path: self.target.display().to_string(),
            source,
        })
    }

    /// All bytes are in: the file takes its final name.
    pub fn finish(mut self) -> Result<Saved, LocalError> {
        drop(self.file.take());
        std::fs::rename(&self.temp, &self.target).map_err(|source| LocalError::Write {
            path: self.target.display().to_string(),
            source,
        })?;
        Ok(Saved {
            name: std::mem::take(&mut self.name),
            path: self.target.clone(),
            size: self.size,
        })
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Longest file name most file systems take (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// The temporary name `base` is written under before the rename: hidden, ours, and never
/// longer than `NAME_MAX`, which a 250-byte name plus the suffix was (the file could not
/// be saved at all: "File name too long"). The name's start is kept, cut on a character
/// boundary, so that a user who sees a left-over temporary file knows whose it was.
fn temp_name(base: &str, pid: u32, seq: u64) -> String {
    let suffix = format!(".pyexec-{pid}-{seq}.part");
    let mut keep = base.len().min(NAME_MAX - 1 - suffix.len());
    while !base.is_char_boundary(keep) {
        keep -= 1;
    }
    format!(".{}{suffix}", &base[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_fit_name_max_whatever_the_name() {
        assert_eq!(temp_name("plot.png", 12, 3), ".plot.png.pyexec-12-3.part");
        for base in ["x".repeat(255), "é".repeat(127), "📈".repeat(63)] {
            let t = temp_name(&base, u32::MAX, u64::MAX);
            assert!(t.len() <= NAME_MAX, "{} bytes", t.len());
            assert!(t.starts_with('.') && t.ends_with(".part"));
        }
    }

    #[test]
    fn a_dir_with_a_symlink_or_fifo_is_refused_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("data");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("a.csv"), b"1,2").unwrap();
        std::fs::write(d.join("sub/b.txt"), b"b").unwrap();
        let files = dir_files(&d).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["data/a.csv", "data/sub/b.txt"]);
        assert_eq!(check_set(&files).unwrap(), 4);

        std::os::unix::fs::symlink("/etc/passwd", d.join("sub/link")).unwrap();
        let err = dir_files(&d).unwrap_err().to_string();
        assert!(
            err.contains("sub/link") && err.contains("symbolic link"),
            "{err}"
        );
        std::fs::remove_file(d.join("sub/link")).unwrap();

        let fifo = d.join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        #[allow(unsafe_code)] // mkfifo has no std wrapper; a test-only call
        let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(made, 0);
        let err = dir_files(&d).unwrap_err().to_string();
        assert!(err.contains("pipe") && err.contains("FIFO"), "{err}");
    }

    #[test]
    fn a_non_utf8_name_in_a_dir_is_refused_naming_it() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir().unwrap();
        let name = OsStr::from_bytes(b"caf\xe9.txt");
        std::fs::write(tmp.path().join(name), b"x").unwrap();
        let err = dir_files(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("caf") && err.contains("not UTF-8"), "{err}");
    }

    #[test]
    fn file_args_take_a_name_and_refuse_traversal() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("h.py");
        std::fs::write(&p, b"x = 1\n").unwrap();
        let f = file_arg(p.as_os_str()).unwrap();
        assert_eq!((f.name.as_str(), f.size), ("h.py", 6));
        let arg = format!("{}=lib/helper.py", p.display());
        assert_eq!(file_arg(OsStr::new(&arg)).unwrap().name, "lib/helper.py");
        let arg = format!("{}=../up.py", p.display());
        let err = file_arg(OsStr::new(&arg)).unwrap_err().to_string();
        assert!(err.contains("'..'"), "{err}");
    }

    #[test]
    fn results_are_written_inside_the_dir_and_never_through_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let out = OutDir::new(tmp.path());
        let mut f = out.begin("r/a.csv", 3).unwrap();
        f.write(b"abc").unwrap();
        assert_eq!(f.left(), 0);
        let saved = f.finish().unwrap();
        assert_eq!(std::fs::read(&saved.path).unwrap(), b"abc");
        assert_eq!(saved.path, tmp.path().join("r/a.csv"));

        // An existing symlink at the name is replaced, its target untouched.
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join("plot.png")).unwrap();
        let mut f = out.begin("plot.png", 1).unwrap();
        f.write(b"P").unwrap();
        f.finish().unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(tmp.path().join("plot.png"))
            .unwrap()
            .file_type()
            .is_symlink());

        // A symlinked directory on the way is refused, not followed.
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), tmp.path().join("link")).unwrap();
        let err = out.begin("link/x", 1).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);

        // Names a hostile server might send.
        for bad in ["../x", "/etc/x", "a/../../x"] {
            assert!(out.begin(bad, 1).is_err(), "{bad}");
        }
        // An unfinished file leaves nothing behind.
        let f = out.begin("half.bin", 10).unwrap();
        drop(f);
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.contains("half")), "{names:?}");
    }
}
