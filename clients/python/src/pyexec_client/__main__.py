"""`python -m pyexec_client [--server HOST:PORT] [--ca FILE] [--stats] SCRIPT [ARGS...]`

A small twin of the `pyexec` CLI: the script's stdout and stderr go to ours byte for byte,
our stdin goes to the script live, Ctrl-C sends SIGINT (a second one cancels, a third
gives up locally), and the exit status is the server's END.exit_code, or 125 when the
script could not be run (docs/protocol.md §9). Our own messages go to stderr, prefixed
"pyexec:". `--stats` adds pyexec's line on what the script used, in the same format.
"""

import argparse
import os
import signal
import sys

from .errors import PyexecError, TimeoutExpired
from .session import Queued, Session, Started

EXIT_COULD_NOT_RUN = 125
EXIT_CANCELLED = 130
EXIT_BROKEN_PIPE = 141


class _FdReader:
    """Our stdin as raw os.read() calls. Why not sys.stdin.buffer: the feeder thread may
    still be blocked in a read when we exit, and a daemon thread holding the buffered
    reader's lock makes interpreter shutdown abort."""

    def __init__(self, fd):
        self._fd = fd

    def read1(self, n):
        return os.read(self._fd, n)


def _say(text):
    sys.stderr.write("pyexec: %s\n" % text)
    sys.stderr.flush()


def format_duration(ms):
    """As `pyexec` writes durations, to the millisecond: 0s, 7ms, 1.02s, 60s."""
    if ms % 1000 == 0:
        return "%ds" % (ms // 1000)
    if ms < 1000:
        return "%dms" % ms
    return "%s.%ss" % (ms // 1000, ("%03d" % (ms % 1000)).rstrip("0"))


def format_size_approx(n):
    """As `pyexec` writes measured sizes: 12 bytes, 1 byte, 3.5 KiB, 104.3 MiB, 1.0 GiB
    (a tenth of the largest unit reached, never 1024.0 of a smaller one)."""
    if n == 1:
        return "1 byte"
    if n < 1024:
        return "%d bytes" % n
    units = ((1 << 10, "KiB"), (1 << 20, "MiB"), (1 << 30, "GiB"))
    for scale, unit in units:
        tenths = (n * 10 + scale // 2) // scale
        if tenths < 10240 or unit == "GiB":
            return "%d.%d %s" % (tenths // 10, tenths % 10, unit)


def describe_usage(result):
    """The --stats line, without its "pyexec: " prefix, the same as `pyexec --stats`:
    "cpu 1.02s, peak memory 104.3 MiB, output 12 bytes", "?" for what the server did
    not report."""

    def part(value, fmt):
        return "?" if value is None else fmt(value)

    return "cpu %s, peak memory %s, output %s" % (
        part(result.cpu_ms, format_duration),
        part(result.peak_memory_bytes, format_size_approx),
        part(result.output_bytes, format_size_approx),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m pyexec_client",
        description="Run a Python script on a pyexecd server, streaming its I/O live.",
    )
    parser.add_argument("--server", help="HOST:PORT (default: $PYEXEC_SERVER or localhost:12344)")
    parser.add_argument("--ca", help="CA certificate file, or 'system' for the system's CAs "
                        "(default: $PYEXEC_CA, else certs/ca.pem)")
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="T",
                        help="seconds for connecting plus the TLS handshake (default 10)")
    parser.add_argument("--stats", action="store_true",
                        help="after the session, one line on stderr with what the script "
                        "used: CPU time, peak memory, output ('?' where the server did not "
                        "say); not when the script could not run")
    parser.add_argument("script", metavar="SCRIPT", help="the script; - reads it from stdin")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="become sys.argv[1:] (everything after SCRIPT)")
    opts = parser.parse_args(argv)

    if opts.script == "-":
        script, name, stdin = sys.stdin.buffer.read(), None, b""
    else:
        try:
            with open(opts.script, "rb") as f:
                script = f.read()
        except OSError as e:
            _say("cannot read %s: %s" % (opts.script, e.strerror or e))
            return EXIT_COULD_NOT_RUN
        name = os.path.basename(opts.script)
        stdin = _FdReader(0) if sys.stdin is not None else b""

    broken_pipe = []
    session_box = []  # the Session, once it exists (callbacks may run before)
    running = []  # non-empty once STARTED has come (the server sends it before any output)
    out, err = sys.stdout.buffer, sys.stderr.buffer

    def on_stdout(data):
        if broken_pipe:
            return
        try:
            out.write(data)
            out.flush()
        except BrokenPipeError:
            # Our reader went away (`| head -1`): stop the script, exit as SIGPIPE would.
            broken_pipe.append(True)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())  # so the flush at exit does not fail again
            if session_box:
                session_box[0].cancel()

    def on_stderr(data):
        err.write(data)
        err.flush()

    def on_event(event):
        if isinstance(event, Started) and not running:
            running.append(True)
        if isinstance(event, Queued) and sys.stderr.isatty():
            _say("queued: position %d" % event.position)

    interrupts = [0]  # Ctrl-Cs pressed
    delivered = [0]  # ... and acted upon

    def deliver():
        # First Ctrl-C: SIGINT to the script. Second: cancel. Third: give up here.
        while delivered[0] < interrupts[0]:
            delivered[0] += 1
            if delivered[0] == 1:
                session_box[0].interrupt()
            elif delivered[0] == 2:
                session_box[0].cancel()
            else:
                raise SystemExit(EXIT_CANCELLED)

    def on_sigint(signum, frame):
        interrupts[0] += 1
        if session_box:
            deliver()
        elif not running:
            raise KeyboardInterrupt  # still connecting: give up
        # else the script already runs (its output can come before Session() returns):
        # the Ctrl-C is delivered as soon as the Session exists, below.

    # Installed before the session starts, so that a Ctrl-C right after the script's
    # first output reaches the script instead of killing this process.
    signal.signal(signal.SIGINT, on_sigint)
    try:
        session = Session(
            script, opts.args, stdin=stdin, server=opts.server, ca=opts.ca, name=name,
            on_stdout=on_stdout, on_stderr=on_stderr, on_event=on_event,
            connect_timeout=opts.connect_timeout,
        )
    except (PyexecError, ValueError) as e:  # ValueError: a malformed --server
        _say(str(e))
        return EXIT_COULD_NOT_RUN
    except KeyboardInterrupt:
        return EXIT_CANCELLED
    session_box.append(session)
    if broken_pipe:
        session.cancel()
    deliver()
    try:
        while True:
            try:
                result = session.wait(0.25)  # short waits, so that signal handlers run
                break
            except TimeoutExpired:
                continue
    except PyexecError as e:
        _say(str(e))
        return EXIT_COULD_NOT_RUN
    if result.message and result.reason not in ("exited", "signal") and not broken_pipe:
        _say(result.message)
    if opts.stats:
        _say(describe_usage(result))
    if broken_pipe:
        return EXIT_BROKEN_PIPE
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
