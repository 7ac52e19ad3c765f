# pyexec bootstrap: the main process of every sandbox container (under docker-init).
#
# Started before its script is known (that is what makes a warm pool possible), it reads
# exactly one request from stdin, never a byte more, so that everything after it on stdin
# belongs to the script:
#   b"PYX5" | u32 script_len | u32 name_len | u32 args_len | nonce (16 bytes)
#   | u32 files | u32 get_len | u64 get_cap | u32 get_count | u32 flags | u32 keep_s
#   | script | name | args (NUL-separated) | get patterns (NUL-separated)
#   then `files` records: u32 name_len | u64 size | name | content
# It writes the script to /tmp/<name> (tracebacks and inspect read it from there) and the
# files beside it, writes one ACK byte (0x06) to stdout, which the server strips and takes
# as "the script and its files are in", and forks. The child runs the script with the semantics of `python3 -u /tmp/<name> args`:
#   - mode "exec": by exec'ing a fresh interpreter, which is exact by construction;
#   - mode "inprocess" (default): in this interpreter, already started, which saves a
#     whole interpreter start-up per session. sys.argv, sys.path[0], a fresh __main__
#     module with __file__ and __loader__, and the exit status (SystemExit, uncaught
#     exceptions, KeyboardInterrupt ending by SIGINT) are what `python3 script.py` gives,
#     because the script's exceptions propagate out of this program into the
#     interpreter's own handling; the one frame this program adds is cut from tracebacks.
# The parent forwards signals to the child, waits for it, and writes a trailer, the nonce
# followed by b"E" + exit status or b"S" + signal number, then the script's CPU time (µs)
# and the container's peak memory (bytes) read from its cgroup, to stdout and stderr. The
# server ends the session on seeing it on both streams: Docker reports a container's exit
# tens of milliseconds after the fact, the trailer is there at once, and each stream being
# in order, everything the script wrote comes before it.
# With get patterns (feature `files`), the parent then kills every process the script left
# (nothing may change a file or write to the pipes any more), and after the stdout trailer
# writes the files-out stream that `src/files_out.rs` parses: the regular files matching
# the patterns, found without following any symlink (lstat, then O_NOFOLLOW at every step
# from /tmp down), within the caps; then the patterns that matched nothing and the names
# that were not sent, with why; then b"Z". With flag 2 (`FLAG_FETCH`), a file of at least
# _FETCH_MIN bytes is named (b"A") instead of copied: the server fetches it from /tmp
# through the engine's archive API, ~1.3x faster than these pipes and Docker's attach
# stream for 50 MiB, and the parent then waits, keeping /tmp (a volume that lives as long
# as the container runs), until the server kills or removes the container: the fetches
# go at the client's pace. (keep_s, the session's time limit and then some, only bounds
# a server that died meanwhile.) Files of 8 GiB and more are copied: the archive's
# header then carries its size elsewhere.
# When the server stops the script itself
# (timeout, output limit, shutdown) and files are wanted, it sends SIGPWR first: the
# parent kills the script's tree and goes on as after any end (`_stop_for_files`).
# With flag 1 (feature `input_wanted`, protocol §10.3), the script's stdin is a pipe of
# ours that a thread fills from the container's stdin, and another thread writes the
# nonce + b"W" marker to stdout each time the script blocks reading it (`_iw_*` below).
# Only modules a fresh interpreter has loaded already are used (os, sys, _signal,
# _frozen_importlib_external, builtins): importing `signal` alone costs
# ~10 ms (enum), and the script would find modules loaded that python3 had not loaded.
# `gc` (built in, not loaded at start-up) is taken out of sys.modules again after use.
#
# Two costs of a few milliseconds per session are avoided:
#   - an interpreter's first compile() sets up the compiler's AST types (~1.3 ms in the
#     sandbox image), so one empty compile runs while the container waits for its script;
#   - a forked child that tears down objects it shares with its parent copies every page
#     it touches: its finalization took ~7 ms against ~2 ms for a fresh process, and
#     gc.freeze() before the fork halves that, because the exit's collections then skip
#     the objects that already existed (the one trace it leaves: gc.get_freeze_count()).
#
# While it waits, two things prepare the container for its script, both before the ACK:
#   - the image's prepared home, /usr/share/pyexec/home when the image has one (`pyexecd
#     build-image` puts matplotlib's font cache there), is copied into HOME (/tmp, a
#     fresh tmpfs): matplotlib then neither rebuilds its font cache (~1 s) nor warns on
#     stderr that it has no writable config dir;
#   - in-process mode with `preload MOD,MOD` after `-c`: those modules are imported, with
#     stdout and stderr on /dev/null, so that nothing they print reaches the script's
#     streams (or comes before the ACK); one that fails to import is left for the
#     script's own import to report. With matplotlib among them, a throwaway figure is
#     drawn too (see below). The processes are then laid out differently (`_PRELOADED`
#     below): a small parent forked before the preload waits and reports, the preloaded
#     interpreter runs the script in a process of its own, and its end skips tearing the
#     preloaded modules down (`_quick_exit`).
import os, sys

def _seed_home(src, dst):
    try:
        entries = list(os.scandir(src))
    except OSError:
        return  # no prepared home in this image
    for entry in entries:
        target = dst + "/" + entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                os.mkdir(target, 0o700)
                _seed_home(entry.path, target)
            elif entry.is_file(follow_symlinks=False):
                fin = os.open(entry.path, os.O_RDONLY)
                fout = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                while True:
                    chunk = os.read(fin, 1 << 16)
                    if not chunk:
                        break
                    os.write(fout, chunk)
                os.close(fin)
                os.close(fout)
        except OSError:
            pass

_seed_home("/usr/share/pyexec/home", "/tmp")
del _seed_home

_PRELOADED = sys.argv[1:2] == ["preload"]

def _preload(modules):
    # Imports `modules` (MOD,MOD) with stdout and stderr on /dev/null, and draws the
    # throwaway figure.
    _saved = (os.dup(1), os.dup(2))
    _null = os.open("/dev/null", os.O_WRONLY)
    os.dup2(_null, 1)
    os.dup2(_null, 2)
    for _module in modules.split(","):
        try:
            __import__(_module)
        except BaseException:
            pass
    # A first figure pays for fonts, text layout, date ticks and the PNG writer, ~4x the
    # drawing itself: with matplotlib preloaded, one throwaway figure is drawn the way a
    # script draws its own (pyplot, the default size and dpi, dates, a twin axis, bars,
    # non-ASCII labels, a title, a legend, tight layout, a PNG), and with pandas a CSV
    # with dates read. pyplot is left as found: the figure is closed, and the next one a
    # script makes is figure 1 again.
    if "matplotlib" in sys.modules:
        try:
            import io
            _plt = sys.modules.get("matplotlib.pyplot")
            _x = [0, 1, 2]
            if "pandas" in sys.modules:
                _x = sys.modules["pandas"].read_csv(
                    io.StringIO("d,v\n2025-01-05,1.5\n2025-06-01,2\n2025-12-28,3\n"),
                    parse_dates=["d"])["d"]
            if _plt is None:  # matplotlib alone: a figure off pyplot, which is not loaded
                from matplotlib.figure import Figure as _Figure
                _fig = _Figure()
                del _Figure
            else:
                _fig = _plt.figure()
            _ax = _fig.add_subplot()
            _ax.plot(_x, [1.5, 2, 3], color="tab:red", label="a (\u00b0C)")
            _ax.set_ylabel("temperature (\u00b0C) \u2013 \u00b5")
            _twin = _ax.twinx()
            _twin.bar(_x, [1, 2, 3], width=5, color="tab:blue", alpha=0.3, label="b")
            _twin.set_ylabel("rainfall (mm)")
            _ax.set_xlabel("date")
            _ax.set_title("Weekly temperature and rainfall")
            _ax.legend()
            _ax.grid(True)
            _fig.autofmt_xdate()
            _fig.tight_layout()
            _fig.savefig(io.BytesIO(), format="png")
            if _plt is not None:
                _plt.close("all")
            del _x, _fig, _ax, _twin, _plt
        except BaseException:
            pass
    for _fd, _orig in zip((1, 2), _saved):
        os.dup2(_orig, _fd)
        os.close(_orig)
    os.close(_null)

def _read_exact(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            os._exit(0)  # the server went away before handing over a script
        buf += chunk
    return bytes(buf)

def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

def _receive_file():
    # Names were checked by the server (relative, no '..', no empty component), and the
    # tmpfs is fresh: still, every step is O_NOFOLLOW and the file O_EXCL.
    head = _read_exact(12)
    size = int.from_bytes(head[4:12], "big")
    name = _read_exact(int.from_bytes(head[:4], "big")).decode()
    parts = name.split("/")
    try:
        dfd = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o755, dir_fd=dfd)
            except FileExistsError:
                pass
            sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
            os.close(dfd)
            dfd = sub
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                     dir_fd=dfd)
        os.close(dfd)
        while size:
            chunk = os.read(0, min(size, 1 << 16))
            if not chunk:
                os._exit(0)  # the server went away mid-file
            _write_all(fd, chunk)
            size -= len(chunk)
        os.close(fd)
    except OSError as e:
        os.write(2, ("pyexec: cannot write file %s: %s\n" % (name, e.strerror)).encode())
        os._exit(125)

def _receive():
    head = _read_exact(60)
    if head[:4] != b"PYX5":
        os.write(2, b"pyexec bootstrap: bad request header\n")
        os._exit(125)
    script = _read_exact(int.from_bytes(head[4:8], "big"))
    name = _read_exact(int.from_bytes(head[8:12], "big")).decode()
    n = int.from_bytes(head[12:16], "big")
    args = _read_exact(n).split(b"\0") if n else []
    n = int.from_bytes(head[36:40], "big")
    get = _read_exact(n).decode().split("\0") if n else []
    os.chdir("/tmp")
    path = "/tmp/" + name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    _write_all(fd, script)
    os.close(fd)
    for _ in range(int.from_bytes(head[32:36], "big")):
        _receive_file()
    os.write(1, b"\x06")
    cap = (int.from_bytes(head[40:48], "big"), int.from_bytes(head[48:52], "big"),
           int.from_bytes(head[56:60], "big"))
    return script, name, path, args, head[16:32], (get, cap), int.from_bytes(head[52:56], "big")

import _signal
_FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT,
              _signal.SIGUSR1, _signal.SIGUSR2)
_child = 0

def _forward(sig, frame):
    if _child:
        try:
            os.kill(_child, sig)
        except ProcessLookupError:
            pass

def _forward_signals():
    for sig in _FORWARDED:
        _signal.signal(sig, _forward)

# What the script uses, from the container's cgroup (v1, else v2): the CPU time of every
# process in it, and its peak memory. Read by the parent only; None when unreadable.
def _cgroup_number(path, key=None):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            words = os.read(fd, 4096).split()
        finally:
            os.close(fd)
        return int(words[words.index(key) + 1] if key else words[0])
    except (OSError, ValueError, IndexError):
        return None

def _cpu_ns():
    ns = _cgroup_number("/sys/fs/cgroup/cpuacct/cpuacct.usage")
    if ns is None:
        us = _cgroup_number("/sys/fs/cgroup/cpu.stat", b"usage_usec")
        ns = None if us is None else us * 1000
    return ns

def _peak_memory():
    peak = _cgroup_number("/sys/fs/cgroup/memory/memory.max_usage_in_bytes")
    return _cgroup_number("/sys/fs/cgroup/memory.peak") if peak is None else peak

def _name_ok(rel):
    # The server's rules (check_name): UTF-8, no control character, at most 1024 bytes.
    try:
        size = len(rel.encode())
    except UnicodeEncodeError:
        return "a name that is not UTF-8"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in rel):
        return "a name with a control character"
    return "a name longer than 1024 bytes" if size > 1024 else None

def _walk(dfd, prefix, comps):
    # Matches one pattern component by component from an open directory, never following
    # a symlink: directories are entered with O_NOFOLLOW, files judged by lstat.
    import fnmatch, stat
    comp = comps[0]
    if any(c in comp for c in "*?["):
        try:
            names = sorted(os.listdir(dfd))
        except OSError:
            return
        hidden = comp.startswith(".")
        names = [n for n in names if fnmatch.fnmatchcase(n, comp)
                 and (hidden or not n.startswith("."))]
    else:
        names = [comp]
    for n in names:
        try:
            st = os.stat(n, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            continue
        rel = prefix + n
        if len(comps) == 1:
            mode = st.st_mode
            if stat.S_ISREG(mode):
                yield rel, None
            elif stat.S_ISLNK(mode):
                yield rel, "a symbolic link (not followed)"
            elif stat.S_ISDIR(mode):
                yield rel, "a directory"
            elif stat.S_ISFIFO(mode):
                yield rel, "a FIFO"
            else:
                yield rel, "not a regular file"
        elif stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(n, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
            except OSError:
                continue
            try:
                yield from _walk(sub, rel + "/", comps[1:])
            finally:
                os.close(sub)

def _open_nofollow(rel):
    # O_NOFOLLOW at every step from /tmp: a path swapped for a symlink fails with ELOOP.
    parts = rel.split("/")
    dfd = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
            os.close(dfd)
            dfd = sub
        # O_NONBLOCK: a FIFO named like a requested file cannot stall us.
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
    finally:
        os.close(dfd)

# Below this size a file is copied through stdout: a fetch costs the engine ~60 ms before
# its first byte (it mounts the container's root and volumes for each request), and the
# two ways were even between 8 and 24 MiB here (docs/performance.md §4.5).
_FETCH_MIN = 16 << 20

def _send_files(patterns, caps, flags):
    # Whether a file was named for the server to fetch: the caller must then wait.
    import stat
    cap_bytes, cap_count, _ = caps
    found, skipped, unmatched, seen, named = [], [], [], set(), False
    for pattern in patterns:
        matched = False
        root = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)
        try:
            for rel, why in _walk(root, "", pattern.split("/")):
                matched = True
                if rel not in seen:
                    seen.add(rel)
                    why = why or _name_ok(rel)
                    (skipped.append((rel, why)) if why else found.append(rel))
        finally:
            os.close(root)
        if not matched:
            unmatched.append(pattern)
    total, count = 0, 0
    for rel in found:
        try:
            fd = _open_nofollow(rel)
        except OSError as e:
            skipped.append((rel, "cannot be opened (%s)" % e.strerror))
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                skipped.append((rel, "not a regular file"))
                continue
            size = st.st_size
            if total + size > cap_bytes or count + 1 > cap_count:
                skipped.append((rel, "%d bytes, over the server's cap on files out (%d bytes, %d files)"
                                % (size, cap_bytes, cap_count)))
                continue
            total, count = total + size, count + 1
            name = rel.encode()
            if flags & 2 and _FETCH_MIN <= size < 1 << 33:
                _write_all(1, b"A" + len(name).to_bytes(4, "big") + size.to_bytes(8, "big") + name)
                named = True
                continue
            _write_all(1, b"F" + len(name).to_bytes(4, "big") + size.to_bytes(8, "big") + name)
            left = size
            while left:
                chunk = os.read(fd, min(left, 1 << 16)) or bytes(min(left, 1 << 16))
                _write_all(1, chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
    for pattern in unmatched:
        p = pattern.encode()
        _write_all(1, b"U" + len(p).to_bytes(4, "big") + p)
    # Names whose own encoding is refused are not sent at all, not even as skipped.
    for rel, why in skipped[:cap_count]:
        if _name_ok(rel) is None:
            n, w = rel.encode(), why[:200].encode()
            _write_all(1, b"K" + len(n).to_bytes(4, "big") + len(w).to_bytes(4, "big") + n + w)
    _write_all(1, b"Z")
    return named

def _stop_for_files(sig, frame):
    # The server stops the script (timeout, output limit, shutdown) but wants its files
    # first (feature `files`, protocol §10.2): SIGPWR, which is never forwarded, kills the
    # script's whole tree here instead of the container dying under us; waitpid then
    # returns and the trailer and files go out as after any end, within the server's
    # grace (it sends SIGKILL after). kill(-1) spares init and us; repeated, it is a no-op.
    try:
        os.kill(-1, 9)
    except OSError:
        pass

def _take_stop_signal():
    # In the parent only: the script keeps the default disposition of SIGPWR.
    _signal.signal(_signal.SIGPWR, _stop_for_files)

# Feature `input_wanted` (protocol §10.3): "the script waits for input" is observed, not
# guessed. The script's fd 0 is a pipe of ours; a forwarder thread copies the container's
# stdin into it and counts what it wrote. A watcher thread looks every _IW_PERIOD at every
# thread of every other process in the container: one sleeping in a read-family syscall
# (its /proc/PID/task/TID/syscall) on a descriptor that is our pipe (/proc/PID/fd/N) is
# waiting for input, and the pipe is then empty (a reader sleeps only in an empty pipe).
# The marker goes out once per wait: again only once the forwarder has written more since
# the last one (so a script that reads its line and blocks again between two looks is
# still seen). select/poll/epoll are not reads: a script that only polls stdin is not
# reported. Both threads block the forwarded signals: those must reach the main thread,
# which is in waitpid.
# A look costs ~90-270 µs of container CPU (docs/performance.md §4.6; the goals are 1% of
# a CPU and 50 ms). Scripts mostly block right after a prompt, i.e. soon after the start
# or after their last input: for _IW_FAST_LOOKS looks after either, every _IW_FAST; then,
# while the script goes on without input, every _IW_PERIOD, which keeps a long computation
# under ~0.7% and still reports within ~40 ms plus the frame's way.
_IW_FAST, _IW_FAST_LOOKS, _IW_PERIOD = 0.02, 10, 0.04
_IW_READS = {"x86_64": (0, 17, 19, 275, 295, 327),  # read pread64 readv splice preadv preadv2
             "aarch64": (63, 65, 67, 69, 76, 286)}.get(os.uname().machine, ())

def _iw_pipe(flags):
    # Before the fork: the pipe for the script's stdin, or None without the flag.
    return os.pipe() if flags & 1 else None

def _iw_keep(pipe, flags):
    # A preloading bootstrap makes the pipe before the flags are known: `pipe`, or None
    # with both ends closed when the session did not ask for the feature.
    if flags & 1:
        return pipe
    os.close(pipe[0])
    os.close(pipe[1])
    return None

def _iw_child(pipe):
    # In the script's process: the pipe becomes its stdin; the write end is not its own,
    # so EOF reaches it when the container's stdin ends.
    if pipe:
        os.dup2(pipe[0], 0)
        os.close(pipe[0])
        os.close(pipe[1])

def _iw_forward(w, state):
    _signal.pthread_sigmask(_signal.SIG_BLOCK, _FORWARDED)
    try:
        while True:
            data = os.read(0, 65536)
            if not data:
                break
            _write_all(w, data)
            state[0] += len(data)  # after the write: its reader is awake by then
    except OSError:
        pass  # the script closed its stdin, or died: nothing more to give it
    os.close(w)

def _iw_blocked(link, me):
    # Whether a thread of another process sleeps reading the pipe named `link`.
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            tids = os.listdir("/proc/" + pid + "/task")
        except OSError:
            continue  # gone meanwhile
        for tid in tids:
            try:
                fd = os.open("/proc/%s/task/%s/syscall" % (pid, tid), os.O_RDONLY)
                try:
                    words = os.read(fd, 128).split()
                finally:
                    os.close(fd)
                # "running" (not int) and syscalls other than reads are not waiting.
                if (len(words) > 1 and int(words[0]) in _IW_READS
                        and os.readlink("/proc/%s/fd/%d" % (pid, int(words[1], 16))) == link):
                    return True
            except (OSError, ValueError):
                pass  # gone, or not a descriptor: not waiting on us
    return False

def _iw_watch(link, nonce, state, stop, done):
    _signal.pthread_sigmask(_signal.SIG_BLOCK, _FORWARDED)
    me, told = str(os.getpid()), None
    marker = nonce + b"W" + bytes(17)  # as long as a trailer (bootstrap.rs TRAILER_LEN)
    seen, looks = 0, 0  # input forwarded at the last look, and looks since it changed
    try:
        while not stop.acquire(True, _IW_FAST if looks < _IW_FAST_LOOKS else _IW_PERIOD):
            written = state[0]  # read before looking: input in flight is not a new wait
            looks = 0 if written != seen else looks + 1
            seen = written
            if written != told and _iw_blocked(link, me):
                told = written
                _write_all(1, marker)  # < PIPE_BUF: no script write lands inside it
    except OSError:
        pass
    done.release()

def _iw_parent(pipe, nonce):
    # In the parent: starts both threads; returns what stops the watcher, which must run
    # before the trailer (nothing may follow it on stdout but the files-out stream).
    if not pipe:
        return lambda: None
    import _thread
    r, w = pipe
    state, stop, done = [0], _thread.allocate_lock(), _thread.allocate_lock()
    stop.acquire()
    done.acquire()
    _thread.start_new_thread(_iw_forward, (w, state))
    link = "pipe:[%d]" % os.fstat(r).st_ino
    os.close(r)
    _thread.start_new_thread(_iw_watch, (link, nonce, state, stop, done))
    def _stop():
        stop.release()
        done.acquire()
    return _stop

def _report(child, nonce, get, flags, iw, cpu_at_start):
    # The parent: wait, then report. Nothing here touches the script's streams except the
    # trailer, written at once: each pipe keeps its order, and the server finds a trailer
    # that Docker delivers glued to earlier output or split across two reads. (Waiting
    # for the pipes to drain first, through the fcntl extension module, cost ~1 ms.)
    if get[0]:
        _take_stop_signal()
    iw_stop = _iw_parent(iw, nonce)
    _, status = os.waitpid(child, 0)
    iw_stop()
    if os.WIFSIGNALED(status):
        kind, value, code = b"S", os.WTERMSIG(status), 128 + os.WTERMSIG(status)
    else:
        kind, value = b"E", os.WEXITSTATUS(status)
        code = value
    # The trailer: nonce, E/S + status or signal, then the CPU time in µs and the peak
    # memory in bytes (u64 big-endian each, all ones when unknown).
    cpu_now, unknown = _cpu_ns(), (1 << 64) - 1
    cpu_us = unknown if None in (cpu_at_start, cpu_now) else (cpu_now - cpu_at_start) // 1000
    peak = _peak_memory()
    trailer = (nonce + kind + bytes([value & 0xFF]) + cpu_us.to_bytes(8, "big")
               + (unknown if peak is None else peak).to_bytes(8, "big"))
    if get[0]:
        # Whatever the script left running dies now (kill(-1) spares init and us): no
        # process can swap a file for a symlink or write into the stream from here on.
        try:
            os.kill(-1, 9)
        except OSError:
            pass
    named = False
    for fd in (1, 2):
        try:
            os.write(fd, trailer)
            if fd == 1 and get[0]:
                named = _send_files(*get, flags)
        except OSError:
            pass
    if named:
        import time
        time.sleep(get[1][2])
    os._exit(code)

# What a preloading bootstrap's script process tells its parent, in two messages, each a
# u32 length and its body (a length, not EOF: a process the preload forked may hold the
# pipe open): first its own pid (u32), once it exists; then, once the request is in:
# nonce (16) | flags u32 | get cap u64 | get count u32 | keep_s u32 | CPU at the start
# (ns, u64, all ones when unknown) | get patterns (NUL-separated).
def _tell_parent(fd, body):
    _write_all(fd, len(body).to_bytes(4, "big") + body)

def _request_details(nonce, get, flags, cpu_at_start):
    patterns, (cap_bytes, cap_count, keep) = get
    cpu = (1 << 64) - 1 if cpu_at_start is None else cpu_at_start
    return (nonce + flags.to_bytes(4, "big") + cap_bytes.to_bytes(8, "big")
            + cap_count.to_bytes(4, "big") + keep.to_bytes(4, "big") + cpu.to_bytes(8, "big")
            + "\0".join(patterns).encode())

def _hear_child(fd):
    # One message's body; None when the child ended first.
    def exact(n):
        data = b""
        while len(data) < n:
            chunk = os.read(fd, n - len(data))
            if not chunk:
                return None
            data += chunk
        return data
    head = exact(4)
    return None if head is None else exact(int.from_bytes(head, "big"))

def _details(data):
    if data is None or len(data) < 44:
        return None  # the child ended before its script (the server went away)
    cpu = int.from_bytes(data[36:44], "big")
    patterns = data[44:].decode().split("\0") if len(data) > 44 else []
    get = (patterns, (int.from_bytes(data[20:28], "big"), int.from_bytes(data[28:32], "big"),
                      int.from_bytes(data[32:36], "big")))
    return (data[:16], get, int.from_bytes(data[16:20], "big"),
            None if cpu == (1 << 64) - 1 else cpu)

def _subreaper(on):
    # PR_SET_CHILD_SUBREAPER: the grandchild the preloader forks becomes our child when
    # the preloader exits, so that we can wait for it; turned off again once it is ours,
    # so that the script's orphans go to docker-init, which reaps them. False where it
    # cannot be had.
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl(36, int(on), 0, 0, 0) == 0
    except Exception:
        return False

def _ended(pid):
    # This parent's exit when its child ended before its script: the child's status, or
    # 128 + the signal that killed it.
    _, status = os.waitpid(pid, 0)
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))

# A preloaded interpreter (pandas, matplotlib...) took ~65 ms to tear down at exit, all of
# it spent on modules the script did not load, and the trailer waited for it. So once the
# script has ended and everything Python does first at exit is done (joining threads, every
# atexit callback: this one is registered before the preload, so it runs last, after
# logging's and multiprocessing's too), what a script can see of the rest is done here as
# CPython's finalization does it: sys.last_* dropped (a traceback keeps its frames alive),
# cyclic garbage collected, the globals of __main__ and of the script's own modules (files
# under /tmp) cleared (underscore names first), garbage collected again, stdout and stderr
# flushed. Then the process exits with the status Python would give. The preloaded modules
# are left as they are: Python does not promise to finalize what still exists at exit
# either. With another thread still running (a daemon thread would see the globals go),
# or on any failure here, the interpreter's own finalization runs instead.
def _quick_exit(state):
    ending = state.get("ending")
    if ending is None or len(sys._current_frames()) > 1:
        return  # not the script's end (atexit._run_exitfuncs() called early), or threads
    try:
        import gc
        for name in ("last_type", "last_value", "last_traceback", "last_exc"):
            if hasattr(sys, name):
                setattr(sys, name, None)
        gc.collect()
        mine = [m for n, m in list(sys.modules.items()) if n not in state["keep"]
                and str(getattr(m, "__file__", None) or "").startswith("/tmp/")]
        for module in mine[::-1] + [state["main"]]:
            d = getattr(module, "__dict__", None)
            if type(d) is not dict:
                continue
            for key in [k for k in d if k[:1] == "_" and k[1:2] != "_"]:
                d[key] = None
            for key in [k for k in d if k != "__builtins__"]:
                d[key] = None
        del mine, module, d
        gc.collect()
        failed = False
        for stream in (sys.stdout, sys.stderr):
            # As CPython: streams that are None or closed are skipped; a failure to
            # flush stdout is reported on stderr; either failing makes the status 120.
            if stream is None or getattr(stream, "closed", False):
                continue
            try:
                stream.flush()
            except Exception as e:
                failed = True
                if stream is sys.stdout:
                    try:
                        import traceback
                        sys.stderr.write("Exception ignored in: %r\n" % (stream,)
                                         + "".join(traceback.format_exception(e)))
                        sys.stderr.flush()
                    except Exception:
                        pass
        if ending == "SIGINT":
            # A KeyboardInterrupt that ended the script ends the process by SIGINT.
            _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
            os.kill(os.getpid(), _signal.SIGINT)
        os._exit(120 if failed else ending & 0xFF)
    except BaseException:
        return

import gc
if _PRELOADED:
    # With modules to preload, the process that waits and reports must not be the one that
    # preloads, nor share its pages with the script's: forked from a ~150 MB interpreter
    # at the session's start, the script's process copied each page it touched (~4,700
    # page faults, 60-130 ms more for a first plot), and its CPU clock would count the
    # preload if it had done it. So this small parent forks before the modules are
    # imported; its child preloads, forks the script's process-to-be and exits, which
    # leaves every page to that one process; this parent, a subreaper, inherits it and
    # waits for it. While the pool waits, a collection writes to every tracked object (the
    # write faults are taken then, not during the script), and only then is it READY.
    _iw, _ctl = os.pipe(), os.pipe()
    _SUBREAPER = _subreaper(True)
    _child = os.fork()
    if _child:
        os.close(_ctl[1])
        _forward_signals()
        _runner = _hear_child(_ctl[0])
        if _runner is None:
            _ended(_child)
        _preloader, _child = _child, int.from_bytes(_runner, "big")
        if _preloader != _child:
            os.waitpid(_preloader, 0)  # gone once it forked: the script's process is ours
            _subreaper(False)
        _heard = _details(_hear_child(_ctl[0]))
        if _heard is None:
            _ended(_child)
        _nonce, _get, _flags, _cpu_at_start = _heard
        _iw = _iw_keep(_iw, _flags)
        _report(_child, _nonce, _get, _flags, _iw, _cpu_at_start)
    os.close(_ctl[0])
    import atexit
    _EXIT = {}
    atexit.register(_quick_exit, _EXIT)
    del atexit
    _preload(sys.argv[2])
    if _SUBREAPER and os.fork():
        os._exit(0)
    _tell_parent(_ctl[1], os.getpid().to_bytes(4, "big"))
    # matplotlib forgets its open fonts in a forked child (os.register_at_fork): the
    # default one is opened again here, or the script's first figure reads it anew.
    _fm = sys.modules.get("matplotlib.font_manager")
    if _fm is not None:
        try:
            _fm.get_font(_fm.findfont(_fm.FontProperties()))
        except Exception:
            pass
    del _fm
    gc.collect()
    gc.freeze()  # the collections at the script's end then skip the preload
    compile("", "<pyexec bootstrap>", "exec")
    # READY (bootstrap.rs): the server counts this container as a warm spare only now, so
    # a session is never handed one still importing.
    os.write(1, b"\x05")
    _script, _name, _path, _args, _nonce, _get, _flags = _receive()
    _iw = _iw_keep(_iw, _flags)
    _tell_parent(_ctl[1], _request_details(_nonce, _get, _flags, _cpu_ns()))
    os.close(_ctl[1])
    _cpu_at_start = None
    del _ctl, _SUBREAPER
else:
    compile("", "<pyexec bootstrap>", "exec")
    _script, _name, _path, _args, _nonce, _get, _flags = _receive()
    _forward_signals()
    _iw = _iw_pipe(_flags)
    _cpu_at_start = _cpu_ns()
    gc.freeze()
    _child = os.fork()
    if _child:
        del _script
        _report(_child, _nonce, _get, _flags, _iw, _cpu_at_start)
del sys.modules["gc"], gc

# The child: the script's process, with a fresh interpreter's signal dispositions.
_nonce = None
_iw_child(_iw)
_signal.signal(_signal.SIGINT, _signal.default_int_handler)
for _sig in _FORWARDED[1:]:
    _signal.signal(_sig, _signal.SIG_DFL)

if sys.argv[1:] == ["exec"]:
    # A relative path gives sys.argv[0] == name, as `python3 name` would.
    os.execv(sys.executable, [sys.executable, "-u", _name] + _args)

import builtins
from _frozen_importlib_external import SourceFileLoader  # = importlib.machinery's

sys.argv[:] = [_name] + [os.fsdecode(a) for a in _args]
if hasattr(sys, "orig_argv"):
    sys.orig_argv[:] = [sys.orig_argv[0], "-u", _name] + sys.argv[1:]
sys.path[0] = "/tmp"  # the script's directory, where `-c` would have put ''

def _cut_bootstrap(excepthook=sys.excepthook, boot=sys._getframe().f_code):
    def hook(kind, value, tb):
        while tb is not None and tb.tb_frame.f_code is boot:
            tb = tb.tb_next
        # The display reads the exception's own __traceback__, not only this argument.
        if isinstance(value, BaseException):
            value.__traceback__ = tb
        excepthook(kind, value, tb)
    return hook

sys.excepthook = _cut_bootstrap()
_main = type(sys)("__main__")
_main.__file__ = _path
_main.__cached__ = None
_main.__builtins__ = builtins
_main.__annotations__ = {}
_main.__loader__ = SourceFileLoader("__main__", _path)
sys.modules["__main__"] = _main
_code = compile(_script, _path, "exec", dont_inherit=True)

if _PRELOADED:
    _EXIT["keep"] = set(sys.modules) - {"__main__"}
    _EXIT["main"] = _main
del _script, _args, _receive, _read_exact, _cut_bootstrap, _forward, _child, _sig, _FORWARDED
del _cgroup_number, _cpu_ns, _peak_memory, _cpu_at_start, _get
del _write_all, _receive_file, _name_ok, _walk, _open_nofollow, _send_files, _FETCH_MIN
del _stop_for_files, _take_stop_signal
del _flags, _iw, _IW_FAST, _IW_FAST_LOOKS, _IW_PERIOD, _IW_READS, _iw_pipe, _iw_keep, _iw_child, _iw_forward, _iw_blocked
del _iw_watch, _iw_parent, _report, _tell_parent, _hear_child, _forward_signals, _preload
del _subreaper, _ended, _request_details, _details, _quick_exit
if not _PRELOADED:
    exec(_code, _main.__dict__)
else:
    # The script's end, for _quick_exit: its exceptions propagate unchanged.
    try:
        exec(_code, _main.__dict__)
    except SystemExit as _e:
        # CPython's rule: None is 0; an int is the status (as a C long, then an int); any
        # other value (printed) is 1.
        _c = _e.code
        _EXIT["ending"] = (0 if _c is None else (_c if -(1 << 63) <= _c < (1 << 63) else -1)
                           if isinstance(_c, int) else 1)
        del _e, _c
        raise
    except KeyboardInterrupt:
        _EXIT["ending"] = "SIGINT"
        raise
    except BaseException:
        _EXIT["ending"] = 1
        raise
    else:
        _EXIT["ending"] = 0
