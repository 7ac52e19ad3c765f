"""The client against a scripted fake server: what a real pyexecd never does on purpose
(unknown fields and values, broken frames, early closes) and exact checks of what the
client sends (HELLO's shape, the STDIN window, SIGNAL and CANCEL while stdin waits).

The fake server borrows the test daemon's certificate (server.pem and server.key beside
PYEXEC_TEST_CA), so the client's TLS settings stay exactly as in real use.
"""

import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from _support import SRC, WAIT, daemon
import pyexec_client as px
from pyexec_client import _wire as w

_CA = daemon()[1]
_CERTDIR = os.path.dirname(_CA) if _CA else None
_HAVE_CERTS = bool(_CERTDIR) and all(
    os.path.exists(os.path.join(_CERTDIR, f)) for f in ("server.pem", "server.key")
)

LIMITS = {"script_size": 1048576, "timeout_ms": 60000, "output_bytes": 1073741824, "stdin_window": 262144}


def welcome(**limits):
    return {"version": 1, "server": "fake", "session": "f1", "limits": dict(LIMITS, **limits)}


class FakeConn:
    """The server's end of one connection, with frame helpers for the test's script."""

    def __init__(self, tls):
        self.tls = tls
        self.reader = w.FrameReader()
        self.pending = []

    def read_frame(self, timeout=WAIT):
        """(type, payload) of the next client frame, None at EOF, raises socket.timeout."""
        self.tls.settimeout(timeout)
        while not self.pending:
            data = self.tls.recv(65536)
            if not data:
                return None
            self.reader.feed(data)
            self.pending.extend(self.reader.frames())
        return self.pending.pop(0)

    def expect(self, ftype):
        frame = self.read_frame()
        assert frame is not None and frame[0] == ftype, "expected 0x%02x, got %r" % (ftype, frame)
        return frame[1]

    def read_hello_and_script(self):
        hello = json.loads(self.expect(w.HELLO))
        script = b""
        while len(script) < hello["script_size"]:
            script += self.expect(w.SCRIPT)
        return hello, script

    def send(self, ftype, payload=b""):
        if isinstance(payload, dict):
            self.tls.sendall(w.encode_json(ftype, payload))
        else:
            self.tls.sendall(w.encode_frame(ftype, payload))

    def send_raw(self, data):
        self.tls.sendall(data)


class FakeServer:
    """Accepts one TLS 1.3 connection and runs `handler(FakeConn)` on it in a thread."""

    def __init__(self, handler):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(os.path.join(_CERTDIR, "server.pem"), os.path.join(_CERTDIR, "server.key"))
        ctx.set_alpn_protocols([w.ALPN])
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.error = None
        self.thread = threading.Thread(target=self._serve, args=(ctx, handler), daemon=True)
        self.thread.start()

    def _serve(self, ctx, handler):
        try:
            self.listener.settimeout(WAIT)
            raw, _ = self.listener.accept()
            with ctx.wrap_socket(raw, server_side=True) as tls:
                handler(FakeConn(tls))
        except BaseException as e:  # reported by finish()
            self.error = e
        finally:
            self.listener.close()

    def finish(self):
        self.thread.join(WAIT)
        error, self.error = self.error, None
        if error is not None:
            raise error


def close_notify(conn):
    """Our close_notify, then wait for the client's (or its EOF)."""
    try:
        conn.tls.settimeout(5)
        conn.tls.unwrap()
    except (OSError, ssl.SSLError):
        pass


@unittest.skipUnless(_HAVE_CERTS, "needs server.pem and server.key beside PYEXEC_TEST_CA")
class FakeServerTests(unittest.TestCase):
    def serve(self, handler):
        server = FakeServer(handler)
        self.addCleanup(server.finish)
        return server

    def session(self, server, script="pass", args=(), **kw):
        return px.Session(script, args, server=server.address, ca=_CA, **kw)

    # --- tolerance (§4: unknown fields and values) ------------------------------------

    def test_unknown_fields_and_values_are_tolerated(self):
        def handler(c):
            c.read_hello_and_script()
            hello = welcome(future_limit=5)
            hello["motd"] = "hi"
            c.send(w.WELCOME, hello)
            c.send(w.QUEUED, {"position": 3, "eta_ms": 10})
            c.send(w.STARTED, {"queued_ms": 1, "start_ms": 2})  # warm left out
            c.send(w.STDOUT, b"out")
            c.send(w.END, {"reason": "meteor", "exit_code": 42, "duration_ms": 5, "x": [1]})
            close_notify(c)

        s = self.session(self.serve(handler), capture=True)
        r = s.wait(WAIT)
        self.assertEqual((r.reason, r.exit_code, r.message, r.signal, r.stdout), ("meteor", 42, "", None, b"out"))
        self.assertEqual(r.started, px.Started(1, 2, False))
        self.assertEqual(r.welcome.limits["future_limit"], 5)

    def test_unknown_error_code(self):
        def handler(c):
            c.read_hello_and_script()
            c.send(w.ERROR, {"code": "overheated", "message": "too hot"})
            close_notify(c)  # reads STDIN_EOF: closing with it unread would reset

        s = self.session(self.serve(handler))
        with self.assertRaises(px.ServerError) as cm:
            s.wait(WAIT)
        self.assertIs(type(cm.exception), px.ServerError)
        self.assertEqual((cm.exception.code, cm.exception.message), ("overheated", "too hot"))

    def test_end_without_welcome(self):
        # §5.4: a session timing out before HELLO gets END timeout with no WELCOME.
        def handler(c):
            # The client has sent HELLO already; it is read (not answered) because closing
            # a socket with unread data sends a TCP reset, which may overtake END.
            c.read_hello_and_script()
            c.send(w.END, {"reason": "timeout", "exit_code": 124, "duration_ms": 2000, "message": "m"})
            close_notify(c)

        r = self.session(self.serve(handler)).wait(WAIT)
        self.assertEqual((r.reason, r.exit_code, r.session, r.welcome), ("timeout", 124, None, None))

    # --- what the script used (§4.5) ------------------------------------------------

    USAGE = {"cpu_ms": 1020, "peak_memory_bytes": 109366477, "output_bytes": 12}

    def ending_with(self, end, stdout=b"", stderr=b""):
        """A handler: WELCOME, STARTED, the output, then `end`."""

        def handler(c):
            c.read_hello_and_script()
            c.send(w.WELCOME, welcome())
            c.send(w.STARTED, {"queued_ms": 0, "start_ms": 1, "warm": True})
            if stdout:
                c.send(w.STDOUT, stdout)
            if stderr:
                c.send(w.STDERR, stderr)
            c.send(w.END, end)
            close_notify(c)

        return handler

    def test_result_carries_the_usage_in_end(self):
        end = dict(reason="exited", exit_code=0, duration_ms=5, message="", **self.USAGE)
        r = self.session(self.serve(self.ending_with(end))).wait(WAIT)
        self.assertEqual((r.cpu_ms, r.peak_memory_bytes, r.output_bytes), (1020, 109366477, 12))
        end = {"reason": "timeout", "exit_code": 124, "duration_ms": 5, "message": "m"}
        r = self.session(self.serve(self.ending_with(end))).wait(WAIT)
        self.assertEqual((r.cpu_ms, r.peak_memory_bytes, r.output_bytes), (None, None, None))

    def cli(self, server, *options):
        """`python -m pyexec_client` on a throwaway script against `server`."""
        with tempfile.TemporaryDirectory() as tmp:
            script = os.path.join(tmp, "job.py")
            with open(script, "w") as f:
                f.write("print('never run: the server is scripted')\n")
            command = [sys.executable, "-m", "pyexec_client", "--server", server.address, "--ca", _CA]
            return subprocess.run(
                command + list(options) + [script],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=dict(os.environ, PYTHONPATH=SRC),
                timeout=WAIT,
            )

    def test_cli_stats_line_and_nothing_else(self):
        stats = b"pyexec: cpu 1.02s, peak memory 104.3 MiB, output 12 bytes\n"
        end = dict(reason="exited", exit_code=3, duration_ms=5, message="", **self.USAGE)
        plain = self.cli(self.serve(self.ending_with(end, b"\0out\r\n", b"err\n")))
        self.assertEqual((plain.returncode, plain.stdout, plain.stderr), (3, b"\0out\r\n", b"err\n"))
        p = self.cli(self.serve(self.ending_with(end, b"\0out\r\n", b"err\n")), "--stats")
        self.assertEqual((p.returncode, p.stdout, p.stderr), (3, plain.stdout, b"err\n" + stats))
        # A server that did not say: the marker, after the note on how the session ended.
        end = {"reason": "timeout", "exit_code": 124, "duration_ms": 5, "message": "session timed out after 1s"}
        p = self.cli(self.serve(self.ending_with(end)), "--stats")
        self.assertEqual(p.returncode, 124, p.stderr)
        self.assertEqual(
            p.stderr, b"pyexec: session timed out after 1s\npyexec: cpu ?, peak memory ?, output ?\n"
        )

    # --- failures: outcome unknown --------------------------------------------------

    def failing(self, frames, exc=px.ProtocolError):
        """Runs a session whose server sends `frames` (raw bytes) after the script, then
        closes; returns the exception wait() raised."""

        def handler(c):
            c.read_hello_and_script()
            c.send_raw(frames)
            close_notify(c)

        s = self.session(self.serve(handler))
        with self.assertRaises(exc) as cm:
            s.wait(WAIT)
        return cm.exception

    def test_close_before_end_is_connection_lost(self):
        e = self.failing(w.encode_json(w.WELCOME, welcome()) + w.encode_frame(w.STDOUT, b"x"), px.ConnectionLost)
        self.assertEqual(e.session, "f1")

    def test_eof_in_the_middle_of_a_frame(self):
        e = self.failing(w.encode_json(w.WELCOME, welcome()) + w.encode_frame(w.STDOUT, b"xyz")[:6], px.ConnectionLost)
        self.assertIn("middle of a frame", str(e))

    def test_tcp_close_without_close_notify(self):
        def handler(c):
            c.read_hello_and_script()
            c.send(w.WELCOME, welcome())
            c.tls.shutdown(socket.SHUT_RDWR)

        with self.assertRaises(px.ConnectionLost):
            self.session(self.serve(handler)).wait(WAIT)

    def test_protocol_violations_by_the_server(self):
        hello = w.encode_json(w.WELCOME, welcome())
        cases = {
            "unknown type": hello + w.encode_frame(0x89, b""),
            "client type": hello + w.encode_frame(w.STDIN, b"x"),
            "oversized length": hello + struct.pack(">IB", w.MAX_FRAME_PAYLOAD + 2, w.STDOUT),
            "empty frame": hello + struct.pack(">I", 0),
            "output before WELCOME": w.encode_frame(w.STDOUT, b"x"),
            "bad JSON": w.encode_frame(w.WELCOME, b"{"),
            "float exit code": hello + w.encode_frame(w.END, b'{"reason":"exited","exit_code":0.0,"duration_ms":1}'),
            "missing limits": w.encode_json(w.WELCOME, {"version": 1, "server": "f", "session": "1"}),
            "second WELCOME": hello + hello,
            "credit never owed": hello + w.encode_frame(w.STDIN_CREDIT, b"\0\0\0\1"),
            "short credit": hello + w.encode_frame(w.STDIN_CREDIT, b"\0\0\1"),
            "queue position 0": hello + w.encode_json(w.QUEUED, {"position": 0}),
            "INPUT_WANTED not granted": hello + w.encode_frame(w.INPUT_WANTED, b""),
            "INPUT_WANTED with a payload": w.encode_json(w.WELCOME, dict(welcome(), features=["input_wanted"]))
            + w.encode_frame(w.INPUT_WANTED, b"x"),
        }
        for what, frames in cases.items():
            with self.subTest(what):
                e = self.failing(frames)
                self.assertIs(type(e), px.ProtocolError)
                self.assertIsNone(e.code)

    # --- feature input_wanted (§10.3) ------------------------------------------------

    def test_input_wanted_is_asked_for_and_yielded_in_place(self):
        seen = {}

        def handler(c):
            seen["hello"] = json.loads(c.expect(w.HELLO))
            c.expect(w.SCRIPT)
            c.send(w.WELCOME, dict(welcome(), features=["input_wanted"]))
            c.send(w.STDOUT, b"Name: ")
            c.send(w.INPUT_WANTED)
            seen["stdin"] = c.expect(w.STDIN)
            c.send(w.STDOUT, b"hi\n")
            c.send(w.END, {"reason": "exited", "exit_code": 0, "duration_ms": 1, "message": ""})
            close_notify(c)

        with self.session(self.serve(handler), "print(input('Name: '))") as s:
            kinds = []
            for event in s.events():
                kinds.append(type(event).__name__)
                if isinstance(event, px.InputWanted):
                    s.send_stdin(b"Ada\n")
            s.wait(WAIT)
        self.assertIn("input_wanted", seen["hello"]["features"])
        self.assertEqual(seen["stdin"], b"Ada\n")
        self.assertEqual(kinds, ["Welcome", "Stdout", "InputWanted", "Stdout"])

    # --- what the client sends -----------------------------------------------------

    def test_hello_script_and_eof(self):
        script = bytes(range(256)) * 1000  # 256000 bytes: four SCRIPT frames
        seen = {}

        def handler(c):
            seen["hello"] = json.loads(c.expect(w.HELLO))
            sizes = []
            while sum(sizes) < len(script):
                sizes.append(len(c.expect(w.SCRIPT)))
            seen["sizes"] = sizes
            c.expect(w.STDIN_EOF)  # right after the script: no input (§5.1 rule 3)
            c.send(w.WELCOME, welcome())
            c.send(w.END, {"reason": "exited", "exit_code": 0, "duration_ms": 1, "message": ""})
            close_notify(c)

        self.session(self.serve(handler), script, ["a", "ü"], name="x.py", stdin=b"").wait(WAIT)
        hello = seen["hello"]
        self.assertEqual(
            {k: hello[k] for k in ("version", "script_size", "args", "name")},
            {"version": 1, "script_size": len(script), "args": ["a", "ü"], "name": "x.py"},
        )
        self.assertIsInstance(hello["client"], str)
        self.assertTrue(all(n <= w.DATA_CHUNK for n in seen["sizes"]), seen["sizes"])

    def test_stdin_window_is_respected_exactly(self):
        data = bytes(range(35))
        got = {"stdin": b"", "before_welcome": None}

        def stdin_until(c, total):
            while len(got["stdin"]) < total:
                got["stdin"] += c.expect(w.STDIN)

        def nothing_more(c, seconds=0.3):
            try:
                frame = c.read_frame(timeout=seconds)
            except socket.timeout:
                return
            raise AssertionError("the client sent %r with no window left" % (frame,))

        def handler(c):
            c.read_hello_and_script()
            try:
                got["before_welcome"] = c.read_frame(timeout=0.3)  # STDIN before WELCOME?
            except socket.timeout:
                pass
            c.send(w.WELCOME, welcome(stdin_window=10))
            stdin_until(c, 10)
            nothing_more(c)
            c.send(w.STDIN_CREDIT, struct.pack(">I", 4))
            stdin_until(c, 14)
            nothing_more(c)
            c.send(w.STDIN_CREDIT, struct.pack(">I", 6))
            c.send(w.STDIN_CREDIT, struct.pack(">I", 4))
            stdin_until(c, 24)
            nothing_more(c)
            c.send(w.STDIN_CREDIT, struct.pack(">I", 10))
            stdin_until(c, 34)
            c.send(w.STDIN_CREDIT, struct.pack(">I", 10))
            stdin_until(c, 35)
            c.expect(w.STDIN_EOF)
            c.send(w.END, {"reason": "exited", "exit_code": 0, "duration_ms": 1, "message": ""})
            close_notify(c)

        self.session(self.serve(handler), stdin=data).wait(WAIT)
        self.assertIsNone(got["before_welcome"])
        self.assertEqual(got["stdin"], data)

    def test_signal_and_cancel_pass_while_stdin_waits_for_window(self):
        seen = []

        def handler(c):
            c.read_hello_and_script()
            c.send(w.WELCOME, welcome(stdin_window=1))
            for _ in range(3):  # STDIN (1 byte), SIGNAL, CANCEL
                seen.append(c.read_frame())
            c.send(w.END, {"reason": "cancelled", "exit_code": 130, "duration_ms": 1, "message": "m"})
            close_notify(c)

        server = self.serve(handler)
        s = self.session(server)
        sent = []
        feeder = threading.Thread(target=lambda: sent.append(s.send_stdin(b"abc")))
        feeder.start()
        time.sleep(0.2)  # the feeder is now waiting for credit
        s.interrupt()
        s.cancel()
        r = s.wait(WAIT)
        feeder.join(WAIT)
        server.finish()
        self.assertEqual(r.reason, "cancelled")
        self.assertEqual(sent, [1])  # it gave up when the session ended
        self.assertEqual(seen, [(w.STDIN, b"a"), (w.SIGNAL, b"\x02"), (w.CANCEL, b"")])

    def test_close_notify_after_end(self):
        # §8.1: after END the client sends its own close_notify, and nothing else.
        outcome = []

        def handler(c):
            c.read_hello_and_script()
            c.expect(w.STDIN_EOF)
            c.send(w.WELCOME, welcome())
            c.send(w.END, {"reason": "exited", "exit_code": 0, "duration_ms": 1, "message": ""})
            c.tls.settimeout(5)
            c.tls.unwrap()  # raises unless the client's close_notify arrives
            outcome.append("clean")

        server = self.serve(handler)
        self.session(server, stdin=b"").wait(WAIT)
        server.finish()
        self.assertEqual(outcome, ["clean"])


if __name__ == "__main__":
    unittest.main()
