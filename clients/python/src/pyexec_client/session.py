"""Sessions: one connection, one script, live stdin/stdout/stderr (docs/protocol.md §5-§8).

Threads and why:

* the **reader** thread (one per session) reads frames from the moment the connection is
  up until the terminal frame. Output is handed on the moment it arrives, credit and the
  end are seen even while another thread waits, and the server, which stops reading the
  script's output when we stop reading, never stalls because of us;
* the caller's thread uploads the script (pipelined, without waiting for WELCOME, §5.1)
  and sends stdin, blocking only on the STDIN window (§6);
* an optional **feeder** thread sends a given stdin (bytes or a file) so that `run()` can
  wait for the end while stdin is still going out.
"""

import os
import queue
import ssl
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Union

from . import _files
from . import _wire as w
from ._tls import TlsConnection, split_server
from .errors import (
    ConnectionLost,
    FilesRefused,
    ProtocolError,
    PyexecError,
    TimeoutExpired,
    error_from_server,
)

__all__ = [
    "Session",
    "Result",
    "Welcome",
    "Queued",
    "Started",
    "Stdout",
    "Stderr",
    "run",
    "DEFAULT_SERVER",
    "DEFAULT_CA",
]

DEFAULT_SERVER = "localhost:12344"
DEFAULT_CA = "certs/ca.pem"
CLIENT_NAME = "pyexec-client/0.1.0 (python)"


# --- events --------------------------------------------------------------------------


@dataclass(frozen=True)
class Welcome:
    """The server accepted HELLO (§4.2). `limits` is the JSON object as sent (at least
    script_size, timeout_ms, output_bytes and stdin_window)."""

    version: int
    server: str
    session: str
    limits: Dict[str, int]
    #: Features granted for this session (§10.1), e.g. ["files"].
    features: tuple = ()


@dataclass(frozen=True)
class Queued:
    """Every run slot is taken; `position` 1 means next in line (§4.3)."""

    position: int


@dataclass(frozen=True)
class Started:
    """The script has been handed to Python (§4.4)."""

    queued_ms: int
    start_ms: int
    warm: bool = False


@dataclass(frozen=True)
class Stdout:
    """A piece of the script's stdout. Boundaries mean nothing (§2)."""

    data: bytes


@dataclass(frozen=True)
class Stderr:
    """A piece of the script's stderr."""

    data: bytes


@dataclass(frozen=True)
class InputWanted:
    """The script is blocked reading its stdin and nothing unread is waiting there
    (feature `input_wanted`, §10.3): once per wait, after the prompt's Stdout."""


Event = Union[Welcome, Queued, Started, Stdout, Stderr, InputWanted]


@dataclass
class Result:
    """How a session ended: the END frame (§4.5), plus the output if it was captured.

    `exit_code` is what a client should exit with (§9), for every `reason`, known or not.
    `signal` is set only for reason "signal" (and "oom": 9). `stdout`/`stderr` are empty
    unless the session captured them (`run()` does).

    What the script used, as the server measured it, for every `reason`; each is None
    when the server did not report it (an older server, or a container killed whole,
    e.g. on a timeout):

    * `cpu_ms`: CPU time of the script and everything it started, user + system, in ms;
    * `peak_memory_bytes`: the container's peak memory, the sandbox's own interpreter
      (about 10 MiB) included;
    * `output_bytes`: the bytes of stdout and stderr delivered.
    """

    reason: str
    exit_code: int
    duration_ms: int
    message: str = ""
    signal: Optional[int] = None
    session: Optional[str] = None
    stdout: bytes = b""
    stderr: bytes = b""
    started: Optional[Started] = None
    welcome: Optional[Welcome] = field(default=None, repr=False)
    cpu_ms: Optional[int] = None
    peak_memory_bytes: Optional[int] = None
    output_bytes: Optional[int] = None
    #: Result files saved (`get=`): name as sent -> path written, in arrival order.
    files: dict = field(default_factory=dict)
    #: Patterns that matched nothing, and names not sent with why (`get=`).
    unmatched: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    @property
    def ok(self):
        """True if the script exited on its own with status 0."""
        return self.reason == "exited" and self.exit_code == 0


_DONE = object()  # end-of-events marker in the event queue


def _resolve(server, ca):
    """Defaults as the CLI has them: argument, else environment, else the built-in."""
    if server is None:
        server = os.environ.get("PYEXEC_SERVER") or DEFAULT_SERVER
    if ca is None:
        ca = os.environ.get("PYEXEC_CA") or DEFAULT_CA
    return server, os.fspath(ca)


class Session:
    """A running session. Connects, sends HELLO and the script at construction.

    Parameters:
      script      the script, bytes or str (str is sent as UTF-8).
      args        strings that become ``sys.argv[1:]``.
      stdin       None: you feed stdin with `send_stdin()` and end it with `close_stdin()`
                  (until then a script reading stdin waits). bytes/str: sent in the
                  background, then stdin is closed (b"" closes it at once). A binary file
                  object: read in the background until EOF, then stdin is closed.
      server      "host:port"; default $PYEXEC_SERVER, else "localhost:12344". The host part
                  is the name checked against the server's certificate.
      ca          CA certificate file; default $PYEXEC_CA, else "certs/ca.pem".
      name        file name for ``sys.argv[0]`` and tracebacks, e.g. "job.py"; the server
                  uses "main.py" when it is missing or not a plain file name.
      on_stdout, on_stderr   called with each output chunk, in the reader thread, the
                  moment it arrives. Keep them short: while they run nothing is read.
      on_event    called with every event (Welcome, Queued, Started, Stdout, Stderr).
      capture     keep stdout/stderr in the Result (for large or endless output, don't).
      queue_events  whether events are queued for `events()`/`next_event()`. Default: yes,
                  unless a callback is given (then nothing would drain the queue).
      connect_timeout  seconds for TCP connect plus TLS handshake, as the CLI's default.
      files       files to put beside the script (feature `files`, §10.2): a dict name ->
                  bytes (the content) or a path (str or os.PathLike), or a list of paths
                  (each under its own file name). Names are checked as the server checks them.
      get         glob patterns of result files to bring back after the script, e.g.
                  ["plot.png", "results/*.csv"]; saved under `out_dir` (default: the
                  current directory), never outside it, never through a symlink.
                  With files or get, the script waits for WELCOME, and a server that does
                  not grant the feature gets CANCEL: `wait()` raises FilesRefused.

    Raises ConnectionFailed/TlsError when no connection can be made. Everything the
    server says later, ERROR frames included, comes out of `wait()` (and ends `events()`).

    Use it as a context manager: leaving the block cancels a session that has not ended
    and closes the connection, so call `wait()` inside the block.
    """

    def __init__(
        self,
        script,
        args=(),
        *,
        stdin=None,
        server=None,
        ca=None,
        name=None,
        on_stdout: Optional[Callable[[bytes], None]] = None,
        on_stderr: Optional[Callable[[bytes], None]] = None,
        on_event: Optional[Callable[[Event], None]] = None,
        capture=False,
        queue_events=None,
        connect_timeout=10.0,
        files=None,
        get=(),
        out_dir=None,
        image=None,
    ):
        if isinstance(script, str):
            script = script.encode("utf-8")
        script = bytes(script)
        if isinstance(args, (str, bytes)):
            raise TypeError("args must be a sequence of strings, not a single string")
        args = [str(a) for a in args]
        server, ca = _resolve(server, ca)
        host, port = split_server(server, w.DEFAULT_PORT)
        # Checked before connecting: nothing is sent for a set the server would refuse.
        file_list = _files.collect(files) if files else []
        get = list(get or ())
        if isinstance(get, str):
            raise TypeError("get must be a sequence of patterns, not a single string")
        if len(get) > _files.MAX_PATTERNS:
            raise ValueError("too many get patterns: %d, the limit is %d" % (len(get), _files.MAX_PATTERNS))
        for pattern in get:
            _files.check_name(pattern, "get pattern")
        self._wants_files = bool(file_list or get)
        self._input_wanted_granted = False
        self._out_dir = os.fspath(out_dir) if out_dir is not None else "."
        self._files_granted = False
        self._files_refused = False
        self._incoming = None
        self._out_total = 0
        self._saved = {}
        self._files_end = None

        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._on_event = on_event
        self._capture = capture
        if queue_events is None:
            queue_events = on_stdout is None and on_stderr is None and on_event is None
        self._events = queue.Queue() if queue_events else None
        self._events_ended = False
        self._out = bytearray()
        self._err = bytearray()

        # Shared state. _cond guards the window and the ending; its lock is never held
        # while sending, so a blocked sender cannot hold up the reader.
        self._cond = threading.Condition()
        self._window = 0  # STDIN bytes we may still send; 0 until WELCOME (§6)
        self._unacked = 0  # STDIN bytes sent and not yet credited
        self._ended = False  # a terminal frame arrived, or the connection is gone
        self._finished = threading.Event()  # ... and the connection is closed
        self._send_lock = threading.Lock()  # one frame at a time; guards _stop_sending
        self._stop_sending = False
        self._stdin_lock = threading.Lock()  # orders STDIN frames before STDIN_EOF
        self._eof_sent = False
        self._cancel_sent = False

        self.welcome = None  # type: Optional[Welcome]
        self.started = None  # type: Optional[Started]
        self.queue_position = None  # type: Optional[int]
        self._result = None  # type: Optional[Result]
        self._error = None  # type: Optional[BaseException]

        self._conn = TlsConnection(host, port, ca, connect_timeout)
        self._reader = threading.Thread(target=self._read_loop, name="pyexec-reader", daemon=True)
        self._reader.start()

        # HELLO and the script go out at once, without waiting for WELCOME (§5.1 rule 2);
        # the reader is already watching for an early ERROR, which stops the upload.
        hello = {
            "version": w.PROTOCOL_VERSION,
            "script_size": len(script),
            "args": args,
            "client": CLIENT_NAME,
        }
        if name is not None:
            hello["name"] = name
        if image is not None:
            # The server's image of that name (its --extra-image); an unknown name is
            # ERROR image, whose message lists the names it offers.
            hello["image"] = str(image)
        # input_wanted costs nothing to ask for: a server that lacks it simply never sends it.
        hello["features"] = [w.INPUT_WANTED_FEATURE]
        if self._wants_files:
            hello["features"].append(_files.FEATURE)
            hello["files"] = {
                "count": len(file_list),
                "bytes": sum(size for _, size, _ in file_list),
                "get": get,
            }
        self._send(w.encode_json(w.HELLO, hello))
        if self._wants_files:
            # No script byte before WELCOME says the files will come too (§10.2).
            with self._cond:
                while self.welcome is None and not self._ended:
                    self._cond.wait()
            if self._ended:
                return
            if not self._files_granted:
                self._files_refused = True
                self.cancel()
                return
        view = memoryview(script)
        for i in range(0, len(script), w.DATA_CHUNK):
            if not self._send(w.encode_frame(w.SCRIPT, view[i : i + w.DATA_CHUNK])):
                break
        for fname, size, source in file_list:
            if not self._send_file(fname, size, source):
                break

        if stdin is not None:
            if isinstance(stdin, str):
                stdin = stdin.encode("utf-8")
            if isinstance(stdin, (bytes, bytearray, memoryview)) and len(stdin) == 0:
                # No input: STDIN_EOF right after the script, as §5.1 rule 3 advises.
                self.close_stdin()
            else:
                feeder = threading.Thread(
                    target=self._feed, args=(stdin,), name="pyexec-stdin", daemon=True
                )
                feeder.start()

    # --- sending ---------------------------------------------------------------------

    def _send(self, frame):
        """Sends one whole frame; False if nothing may or can be sent any more."""
        with self._send_lock:
            if self._stop_sending:
                return False
            try:
                self._conn.send(frame)
                return True
            except (OSError, ssl.SSLError, ValueError):
                # The reader will see the same broken connection (or has seen the end);
                # the session's outcome is reported from there.
                self._stop_sending = True
                return False

    def send_stdin(self, data):
        """Sends `data` (bytes, or str as UTF-8) to the script's stdin.

        Blocks while the STDIN window is used up (§6) and returns once everything has
        been sent. Returns the number of bytes sent: fewer than given only if the session
        ended first (a script that exits without reading its input is normal). Raises
        ValueError after `close_stdin()`.
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        if threading.current_thread() is self._reader:
            # The reader is the thread that would bring the credit this call may wait for.
            raise RuntimeError("send_stdin() called from a callback; call it from another thread")
        view = memoryview(data).cast("B")
        sent = 0
        with self._stdin_lock:
            if self._eof_sent:
                raise ValueError("stdin is already closed")
            while sent < len(view):
                with self._cond:
                    while self._window == 0 and not self._ended:
                        self._cond.wait()
                    if self._ended:
                        break
                    n = min(self._window, w.DATA_CHUNK, len(view) - sent)
                    self._window -= n
                    self._unacked += n
                if not self._send(w.encode_frame(w.STDIN, view[sent : sent + n])):
                    break
                sent += n
        return sent

    def _take_window(self, want):
        """Up to `want` bytes of STDIN window (at least 1), waiting; 0 once ended."""
        with self._cond:
            while self._window == 0 and not self._ended:
                self._cond.wait()
            if self._ended:
                return 0
            n = min(self._window, want)
            self._window -= n
            self._unacked += n
            return n

    def _send_file(self, fname, size, source):
        """FILE_IN, then the content in FILE_IN_DATA chunks within the STDIN window,
        which file content shares (§10.2); a file is read a chunk at a time."""
        if not self._send(w.encode_json(w.FILE_IN, {"name": fname, "size": size})):
            return False
        f = open(source, "rb") if isinstance(source, str) else None
        try:
            left, pos = size, 0
            while left:
                n = self._take_window(min(left, w.DATA_CHUNK))
                if n == 0:
                    return False
                if f is None:
                    chunk = source[pos : pos + n]
                else:
                    chunk = f.read(n)
                    while len(chunk) < n:
                        more = f.read(n - len(chunk))
                        if not more:
                            self.cancel()
                            raise ValueError("%s shrank while being sent" % source)
                        chunk += more
                if not self._send(w.encode_frame(w.FILE_IN_DATA, chunk)):
                    return False
                left, pos = left - n, pos + n
            return True
        finally:
            if f is not None:
                f.close()

    def _on_file_frame(self, ftype, payload):
        """FILE_OUT, FILE_OUT_DATA, FILES_OUT_END: result files, written only inside
        the output directory (§10.2)."""
        if ftype == w.FILE_OUT:
            if self._incoming is not None or self._files_end is not None:
                raise ProtocolError("unexpected FILE_OUT")
            obj = w.parse_json(payload, "FILE_OUT")
            fname = w.field(obj, "name", "str", "FILE_OUT")
            size = w.field(obj, "size", "int", "FILE_OUT")
            why = _files.name_error(fname)
            if why is not None:
                raise ProtocolError("the server sent a file named %r, refused: %s" % (fname, why))
            self._out_total += size
            cap = self.welcome.limits.get("files_out_bytes", 0)
            if size < 0 or self._out_total > cap:
                raise ProtocolError("the server sent more than the %d bytes of files it announced" % cap)
            self._incoming = _files.Incoming(self._out_dir, fname, size)
        elif ftype == w.FILE_OUT_DATA:
            if self._incoming is None or len(payload) > self._incoming.left or not payload:
                raise ProtocolError("FILE_OUT_DATA beyond the file's announced size")
            self._incoming.write(payload)
        else:
            if self._incoming is not None or self._files_end is not None:
                raise ProtocolError("unexpected FILES_OUT_END")
            obj = w.parse_json(payload, "FILES_OUT_END")
            self._files_end = obj
        if self._incoming is not None and self._incoming.left == 0:
            self._saved[self._incoming.name] = self._incoming.finish()
            self._incoming = None

    def close_stdin(self):
        """Sends STDIN_EOF: the script reads EOF after all stdin sent so far. Idempotent."""
        with self._stdin_lock:
            if not self._eof_sent:
                self._eof_sent = True
                self._send(w.encode_frame(w.STDIN_EOF))

    def signal(self, signum):
        """Sends a signal to the script: one of 1, 2, 3, 9, 10, 12, 15 (Linux numbers).

        Before the script has started, any signal cancels the session (§7). Returns False
        when the session is already over.
        """
        signum = int(signum)
        if signum not in w.ALLOWED_SIGNALS:
            raise ValueError("signal %d may not be sent (allowed: 1, 2, 3, 9, 10, 12, 15)" % signum)
        return self._send(w.encode_frame(w.SIGNAL, bytes([signum])))

    def interrupt(self):
        """SIGINT, as a first Ctrl-C: Python raises KeyboardInterrupt in the script."""
        return self.signal(2)

    def cancel(self):
        """Ends the session: the container is killed, output so far still arrives, then
        END cancelled (exit 130) unless the script had already ended on its own."""
        if self._cancel_sent:
            return True
        self._cancel_sent = True
        return self._send(w.encode_frame(w.CANCEL))

    def _feed(self, source):
        """Feeder thread: sends bytes or a binary file's contents, then STDIN_EOF."""
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                self.send_stdin(source)
            else:
                # read1 returns what is there (a typed line) instead of waiting for a full
                # buffer, so interactive input goes out at once.
                read = getattr(source, "read1", None) or source.read
                while not self._ended:
                    chunk = read(w.DATA_CHUNK)
                    if not chunk:
                        break
                    if self.send_stdin(chunk) < len(chunk):
                        break
        except (OSError, ValueError):
            pass  # our own stdin broke: the script gets EOF
        self.close_stdin()

    # --- receiving -------------------------------------------------------------------

    def _read_loop(self):
        """Reader thread: frames until the terminal one, then the closing handshake."""
        frames = w.FrameReader()
        try:
            while self._result is None and self._error is None:
                try:
                    data = self._conn.recv()
                except ssl.SSLEOFError:
                    data = b""
                if not data:
                    raise ConnectionLost(
                        "the connection closed before the session ended"
                        + (" (in the middle of a frame)" if frames.has_partial() else ""),
                        session=self._session_id(),
                    )
                frames.feed(data)
                for ftype, payload in frames.frames():
                    self._handle(ftype, payload)
                    if self._result is not None or self._error is not None:
                        break  # nothing follows a terminal frame (§5.2)
            graceful = True
        except PyexecError as e:
            self._error, graceful = e, False
        except (OSError, ssl.SSLError) as e:
            self._error = ConnectionLost("connection lost: %s" % e, session=self._session_id())
            graceful = False
        except BaseException as e:  # a callback raised: stop the session, report it
            self._error, graceful = e, False
        self._end()
        if graceful:
            self._conn.close()
        elif isinstance(self._error, ProtocolError) or not isinstance(self._error, PyexecError):
            # The server's data made no sense (or our callback failed): drop the
            # connection, which makes the server kill the script.
            self._conn.abort()
        else:
            self._conn.close(linger=0.1)
        self._finished.set()

    def _end(self):
        """No more frames will be sent, senders waiting for window give up, and the
        event iterators end."""
        with self._send_lock:
            self._stop_sending = True
        with self._cond:
            self._ended = True
            self._cond.notify_all()
        if self._events is not None:
            self._events.put(_DONE)

    def _session_id(self):
        return self.welcome.session if self.welcome is not None else None

    def _handle(self, ftype, payload):
        if ftype in w.FILE_TYPES and self._files_granted and self.welcome is not None:
            try:
                return self._on_file_frame(ftype, payload)
            except OSError as e:
                raise FilesRefused("cannot write a result file: %s" % e, session=self._session_id())
            except ValueError as e:
                raise ProtocolError(str(e), session=self._session_id())
        if ftype == w.INPUT_WANTED and self._input_wanted_granted:
            if payload:
                raise ProtocolError("INPUT_WANTED with a payload of %d bytes" % len(payload))
            return self._emit(InputWanted())
        name = w.SERVER_TYPES.get(ftype)
        if name is None:
            raise ProtocolError(
                "the server sent frame type 0x%02x, which is %s"
                % (ftype, "a client type" if ftype < 0x80 else "unknown in protocol version 1")
            )
        if self.welcome is None and ftype not in (w.WELCOME, w.ERROR, w.END):
            # END without WELCOME exists: the session timed out before HELLO (§5.4).
            raise ProtocolError("the server sent %s before WELCOME" % name)

        if ftype == w.STDOUT or ftype == w.STDERR:
            data = payload
            if ftype == w.STDOUT:
                if self._capture:
                    self._out += data
                if self._on_stdout is not None:
                    self._on_stdout(data)
                self._emit(Stdout(data))
            else:
                if self._capture:
                    self._err += data
                if self._on_stderr is not None:
                    self._on_stderr(data)
                self._emit(Stderr(data))
        elif ftype == w.STDIN_CREDIT:
            n = w.parse_credit(payload)
            with self._cond:
                if n > self._unacked:
                    raise ProtocolError(
                        "STDIN_CREDIT of %d bytes, but only %d bytes are unacknowledged"
                        % (n, self._unacked)
                    )
                self._unacked -= n
                self._window += n
                self._cond.notify_all()
        elif ftype == w.WELCOME:
            if self.welcome is not None:
                raise ProtocolError("a second WELCOME")
            self.welcome = _parse_welcome(payload)
            self._files_granted = self._wants_files and _files.FEATURE in self.welcome.features
            self._input_wanted_granted = w.INPUT_WANTED_FEATURE in self.welcome.features
            with self._cond:
                self._window = self.welcome.limits["stdin_window"]
                self._cond.notify_all()
            self._emit(self.welcome)
        elif ftype == w.QUEUED:
            obj = w.parse_json(payload, "QUEUED")
            position = w.field(obj, "position", "int", "QUEUED")
            if position < 1:
                raise ProtocolError("QUEUED position %d (must be at least 1)" % position)
            self.queue_position = position
            self._emit(Queued(position))
        elif ftype == w.STARTED:
            if self.started is not None:
                raise ProtocolError("a second STARTED")
            obj = w.parse_json(payload, "STARTED")
            self.started = Started(
                queued_ms=w.field(obj, "queued_ms", "int", "STARTED"),
                start_ms=w.field(obj, "start_ms", "int", "STARTED"),
                warm=w.field(obj, "warm", "bool", "STARTED", default=False),
            )
            self.queue_position = None
            self._emit(self.started)
        elif ftype == w.END and self._files_refused:
            self._error = FilesRefused(
                "this server does not take files (it did not grant the files feature); "
                "nothing was run",
                session=self._session_id(),
            )
        elif ftype == w.END:
            if self._incoming is not None:
                self._incoming.discard()
                raise ProtocolError("END in the middle of a result file")
            end = self._files_end or {}
            self._result = _parse_end(
                payload,
                files=dict(self._saved),
                unmatched=list(end.get("unmatched", [])),
                skipped=[
                    (s.get("name"), s.get("reason"))
                    for s in end.get("skipped", [])
                    if isinstance(s, dict)
                ],
                session=self._session_id(),
                stdout=bytes(self._out),
                stderr=bytes(self._err),
                started=self.started,
                welcome=self.welcome,
            )
        elif ftype == w.ERROR:
            obj = w.parse_json(payload, "ERROR")
            code = w.field(obj, "code", "str", "ERROR")
            message = w.field(obj, "message", "str", "ERROR")
            self._error = error_from_server(code, message, session=self._session_id())

    def _emit(self, event):
        if self._on_event is not None:
            self._on_event(event)
        if self._events is not None:
            self._events.put(event)

    # --- waiting ---------------------------------------------------------------------

    def next_event(self, timeout=None):
        """The next event, or None once the session has ended (then call `wait()`).

        Raises TimeoutExpired if nothing arrives within `timeout` seconds (the session
        goes on).
        """
        if self._events is None:
            raise RuntimeError("events are not queued for this session (queue_events=False)")
        if self._events_ended:
            return None
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutExpired("no event within %s s" % timeout, session=self._session_id())
        if item is _DONE:
            self._events_ended = True
            return None
        return item

    def events(self):
        """Iterates over events as they arrive, until the session ends."""
        while True:
            event = self.next_event()
            if event is None:
                return
            yield event

    __iter__ = events

    @property
    def done(self):
        """True once the session has ended and its connection is closed."""
        return self._finished.is_set()

    def wait(self, timeout=None):
        """Waits for the end; returns the Result, or raises what went wrong.

        Raises a ServerError subclass for an ERROR frame, ConnectionLost or ProtocolError
        when the outcome is unknown, TimeoutExpired if `timeout` seconds pass first (the
        session goes on), or whatever a callback raised (the session was then dropped).
        """
        if not self._finished.wait(timeout):
            raise TimeoutExpired(
                "the session did not end within %s s" % timeout, session=self._session_id()
            )
        if self._error is not None:
            raise self._error
        return self._result

    def close(self, timeout=5.0):
        """Cancels the session if it has not ended, and closes the connection."""
        if not self._finished.is_set():
            self.cancel()
            if not self._finished.wait(timeout):
                self._conn.abort()
                self._finished.wait(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


def run(
    script,
    args: Sequence[str] = (),
    stdin=b"",
    *,
    server=None,
    ca=None,
    name=None,
    timeout=None,
    connect_timeout=10.0,
    files=None,
    get=(),
    out_dir=None,
    image=None,
):
    """Runs a script and returns its Result, with stdout and stderr captured.

    `stdin` (bytes, str or a binary file) is sent, then closed. `timeout` bounds the wait
    for the end in seconds on the client's side: when it passes the session is cancelled
    and TimeoutExpired is raised, carrying the output so far. (The server's own session
    limit is not an exception: it gives a Result with reason "timeout", exit code 124.)

    Raises a PyexecError subclass when the script could not run to a known end.
    """
    with Session(
        script,
        args,
        stdin=b"" if stdin is None else stdin,
        server=server,
        ca=ca,
        name=name,
        capture=True,
        queue_events=False,
        connect_timeout=connect_timeout,
        files=files,
        get=get,
        out_dir=out_dir,
        image=image,
    ) as session:
        try:
            return session.wait(timeout)
        except TimeoutExpired:
            pass
        session.cancel()
        try:
            partial = session.wait(5.0)
        except PyexecError:
            partial = None
        raise TimeoutExpired(
            "the session did not end within %s s and was cancelled" % timeout,
            result=partial,
            session=session._session_id(),
        )


#: END's optional counts of what the script used (§4.5), as named on the wire and in Result.
_USAGE_FIELDS = ("cpu_ms", "peak_memory_bytes", "output_bytes")


def _parse_end(payload, **context):
    """END (§4.5) as a Result; `context` fills the fields that do not come from END."""
    obj = w.parse_json(payload, "END")
    usage = {name: _optional_u64(obj, name, "END") for name in _USAGE_FIELDS}
    return Result(
        reason=w.field(obj, "reason", "str", "END"),
        exit_code=w.field(obj, "exit_code", "int", "END"),
        duration_ms=w.field(obj, "duration_ms", "int", "END"),
        message=w.field(obj, "message", "str", "END", default=""),
        # §4: null is accepted for END.signal, and means left out.
        signal=None if obj.get("signal") is None else w.field(obj, "signal", "int", "END"),
        **usage,
        **context,
    )


def _optional_u64(obj, name, what):
    """An optional u64 field: None when left out (or null, as the Rust client reads it)."""
    if obj.get(name) is None:
        return None
    value = w.field(obj, name, "int", what)
    if not 0 <= value < 1 << 64:
        raise ProtocolError("%s field %r is out of range: %r" % (what, name, value))
    return value


def _parse_welcome(payload):
    obj = w.parse_json(payload, "WELCOME")
    version = w.field(obj, "version", "int", "WELCOME")
    if version != w.PROTOCOL_VERSION:
        raise ProtocolError("WELCOME for protocol version %d; this client speaks 1" % version)
    limits = w.field(obj, "limits", "object", "WELCOME")
    for key in ("script_size", "timeout_ms", "output_bytes", "stdin_window"):
        w.field(limits, key, "int", "WELCOME.limits")
    features = obj.get("features") or []
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise ProtocolError("WELCOME field 'features' is not a list of strings")
    return Welcome(
        version=version,
        server=w.field(obj, "server", "str", "WELCOME"),
        session=w.field(obj, "session", "str", "WELCOME"),
        limits=dict(limits),
        features=tuple(features),
    )
