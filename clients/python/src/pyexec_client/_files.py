"""Feature `files` (docs/protocol.md §10.2), the local side: name checks, the files to
send, and result files written only inside the output directory.

The name rules are the protocol's, the same as the Rust client's and the server's, so a
name this module lets through is one the server takes, and a hostile server's `../x` or
`/etc/x` is refused for the same reasons.
"""

import itertools
import os
import stat

FEATURE = "files"
MAX_PATH_LEN = 1024
MAX_COMPONENT_LEN = 255
MAX_PATTERNS = 64

_seq = itertools.count()


def name_error(name):
    """Why `name` (str) is refused as a file name or pattern, or None if it is not."""
    if not isinstance(name, str):
        return "not a string"
    if not name:
        return "empty name"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8"
    if "\0" in name:
        return "a NUL byte"
    # Control characters as Rust's char::is_control: C0, DEL and C1.
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        return "a control character"
    if name.startswith("/"):
        return "an absolute path"
    if len(encoded) > MAX_PATH_LEN:
        return "longer than %d bytes" % MAX_PATH_LEN
    for part in name.split("/"):
        if part in ("", "."):
            return "an empty or '.' component"
        if part == "..":
            return "a '..' component"
        if len(part.encode("utf-8")) > MAX_COMPONENT_LEN:
            return "a component longer than %d bytes" % MAX_COMPONENT_LEN
    return None


def check_name(name, what="file name"):
    why = name_error(name)
    if why is not None:
        raise ValueError("%s %r refused: %s" % (what, name, why))


def collect(files):
    """`files=` as a list of (name, size, source), source bytes or a path; checked.

    A dict maps names to bytes (the content) or to a path (str or os.PathLike). A list
    holds paths, each sent under its own file name.
    """
    if isinstance(files, dict):
        items = list(files.items())
    else:
        items = [(os.path.basename(os.fspath(p)), p) for p in files]
    out, names, dirs = [], set(), set()
    for name, value in items:
        check_name(name)
        if isinstance(value, (bytes, bytearray, memoryview)):
            source, size = bytes(value), len(value)
        else:
            path = os.fspath(value)
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError("%s: not a regular file" % path)
            source, size = path, st.st_size
        if name in names:
            raise ValueError("file %r given twice" % name)
        parts = name.split("/")
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if name in dirs or any(p in names for p in parents):
            raise ValueError("file %r is also a directory of another file" % name)
        names.add(name)
        dirs.update(parents)
        out.append((name, size, source))
    return out


NAME_MAX = 255


def temp_name(base, pid, seq):
    """The hidden name a result is written under before the rename, never longer than
    NAME_MAX bytes: with the whole name in it, a legal 244-byte name could not be saved
    ("File name too long"). The name's start is kept, cut on a character boundary."""
    suffix = ".pyexec-%d-%d.part" % (pid, seq)
    raw = base.encode()[: NAME_MAX - 1 - len(suffix)]
    return "." + raw.decode(errors="ignore") + suffix


class Incoming:
    """A result file being received: a new temporary file beside the target (O_EXCL,
    O_NOFOLLOW), renamed over it when complete, so a symlink already at the name is
    replaced, never written through; removed if the session ends first."""

    def __init__(self, root, name, size):
        check_name(name, "the server sent a file name that is")
        directory = root
        parts = name.split("/")
        for part in parts[:-1]:
            directory = os.path.join(directory, part)
            try:
                st = os.lstat(directory)
            except FileNotFoundError:
                os.mkdir(directory)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise ValueError(
                    "%s is not a real directory (a symlink or a file): not written through"
                    % directory
                )
        self.name, self.size, self.left = name, size, size
        self.target = os.path.join(directory, parts[-1])
        self.temp = os.path.join(directory, temp_name(parts[-1], os.getpid(), next(_seq)))
        self.fd = os.open(
            self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644
        )

    def write(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        self.left -= len(data)

    def finish(self):
        os.close(self.fd)
        self.fd = None
        os.replace(self.temp, self.target)
        return self.target

    def discard(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            try:
                os.unlink(self.temp)
            except OSError:
                pass
