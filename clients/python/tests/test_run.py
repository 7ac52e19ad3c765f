"""`run()` against a real pyexecd: outputs, exit statuses, stdin, arguments, limits, TLS."""

import hashlib
import json
import os
import unittest

from _support import WAIT, daemon, needs_daemon
import pyexec_client as px


@needs_daemon()
class RunTests(unittest.TestCase):
    def run_script(self, script, *args, **kw):
        kw.setdefault("timeout", WAIT)
        return px.run(script, list(args), server=self.server, ca=self.ca, **kw)

    def test_hello_world(self):
        r = self.run_script('print("hello, world")')
        self.assertEqual(r.stdout, b"hello, world\n")
        self.assertEqual(r.stderr, b"")
        self.assertEqual((r.reason, r.exit_code, r.signal, r.message), ("exited", 0, None, ""))
        self.assertTrue(r.ok)
        self.assertIsInstance(r.session, str)
        self.assertGreater(r.duration_ms, 0)
        self.assertIsNotNone(r.started)
        self.assertEqual(r.welcome.limits["stdin_window"], 262144)

    def test_an_image_by_name_and_an_unknown_one_listing_the_names(self):
        # The default image by its name runs as without one (HELLO.image, §4.1).
        self.assertEqual(self.run_script("print(1)", image="default").stdout, b"1\n")
        with self.assertRaises(px.ServerError) as caught:
            self.run_script("print(1)", image="nope")
        self.assertEqual(caught.exception.code, "image")
        self.assertIn('unknown image "nope"', caught.exception.message)
        self.assertIn("default", caught.exception.message)

    def test_script_as_bytes(self):
        self.assertEqual(self.run_script(b"print(40 + 2)").stdout, b"42\n")

    def test_exit_statuses(self):
        # (script, reason, exit_code, signal): docs/protocol.md §4.5 and §9.
        cases = [
            ("import sys; sys.exit(0)", "exited", 0, None),
            ("import sys; sys.exit(3)", "exited", 3, None),
            ("raise ValueError('boom')", "exited", 1, None),
            ("import sys; sys.exit(128)", "exited", 128, None),
            # docs/protocol.md §9 says statuses 129-192 read as signals, as a shell reads
            # $? (sys.exit(137) as SIGKILL); since the warm pool (a2b18e8) the server
            # reports the script's exact end, and only a real signal is "signal".
            ("import sys; sys.exit(137)", "exited", 137, None),
            ("import sys; sys.exit(192)", "exited", 192, None),
            ("import sys; sys.exit(193)", "exited", 193, None),
            ("import sys; sys.exit(256)", "exited", 0, None),  # modulo 256
            ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", "signal", 143, 15),
            ("import os; os.kill(os.getpid(), 9)", "signal", 137, 9),
        ]
        for script, reason, code, signum in cases:
            with self.subTest(script=script):
                r = self.run_script(script)
                self.assertEqual((r.reason, r.exit_code, r.signal), (reason, code, signum), r)

    def test_uncaught_exception_traceback_names_the_script(self):
        r = self.run_script("def f():\n    raise ValueError('boom')\nf()\n", name="job.py")
        self.assertEqual(r.exit_code, 1)
        self.assertIn(b'File "/tmp/job.py", line 2, in f', r.stderr)
        self.assertIn(b"ValueError: boom", r.stderr)

    def test_stdout_and_stderr_are_kept_apart(self):
        script = (
            "import sys\n"
            "for i in range(200):\n"
            "    print('out', i, flush=True)\n"
            "    print('err', i, file=sys.stderr, flush=True)\n"
        )
        r = self.run_script(script)
        self.assertEqual(r.stdout, "".join("out %d\n" % i for i in range(200)).encode())
        self.assertEqual(r.stderr, "".join("err %d\n" % i for i in range(200)).encode())

    def test_output_just_before_a_quick_exit_is_delivered(self):
        # §5.2: all output comes before END. Checked repeatedly: a build of the server
        # in progress lost the stderr of short scripts in about 2% of sessions.
        script = "import sys\nprint('a')\nprint('b', file=sys.stderr)\n"
        for _ in range(25):
            r = self.run_script(script)
            self.assertEqual((r.stdout, r.stderr), (b"a\n", b"b\n"), r)

    def test_binary_output_is_byte_exact(self):
        script = (
            "import sys\n"
            "sys.stdout.buffer.write(bytes(range(256)) * 4 + b'\\r\\n\\x00\\xff')\n"
            "sys.stderr.buffer.write(bytes(reversed(range(256))))\n"
        )
        r = self.run_script(script)
        self.assertEqual(r.stdout, bytes(range(256)) * 4 + b"\r\n\x00\xff")
        self.assertEqual(r.stderr, bytes(reversed(range(256))))

    def test_stdin_and_eof(self):
        script = (
            "import sys\n"
            "data = sys.stdin.buffer.read()\n"
            "print(len(data), data == bytes(range(256)) * 3, sys.stdin.buffer.read() == b'')\n"
        )
        self.assertEqual(self.run_script(script, stdin=bytes(range(256)) * 3).stdout, b"768 True True\n")

    def test_no_stdin_is_immediate_eof(self):
        r = self.run_script("import sys; print(repr(sys.stdin.read()))")
        self.assertEqual(r.stdout, b"''\n")

    def test_stdin_as_text_and_from_a_file(self):
        script = "import sys; sys.stdout.write(sys.stdin.read().upper())"
        self.assertEqual(self.run_script(script, stdin="héllo\n").stdout, "HÉLLO\n".encode())
        with open(__file__, "rb") as f:
            expected = f.read().decode().upper().encode()
            f.seek(0)
            self.assertEqual(self.run_script(script, stdin=f).stdout, expected)

    def test_argv_and_unicode(self):
        args = ["one", "two words", "", "--flag", "ünïcödé ✓ 😀", "-"]
        script = 'import json, sys\nprint(json.dumps(sys.argv))\nprint("grüße ✓")\n'
        r = self.run_script(script, *args, name="greet.py")
        argv = json.loads(r.stdout.decode().splitlines()[0])
        self.assertEqual(argv[1:], args)
        self.assertEqual(argv[0], "greet.py")
        self.assertEqual(r.stdout.splitlines()[1], "grüße ✓".encode())

    def test_invalid_name_falls_back_to_main_py(self):
        for name in (".hidden", "a/b.py", "x" * 65, "ü.py"):
            with self.subTest(name=name):
                r = self.run_script("import sys; print(sys.argv[0])", name=name)
                self.assertEqual(r.stdout, b"main.py\n")

    def test_five_megabytes_of_output_arrive_exactly(self):
        script = (
            "import sys\n"
            "block = bytes(range(256)) * 4096\n"  # 1 MiB
            "for i in range(5):\n"
            "    sys.stdout.buffer.write(bytes([i]) + block)\n"
            "sys.stdout.buffer.write(b'tail')\n"
        )
        block = bytes(range(256)) * 4096
        r = self.run_script(script)
        self.assertEqual(len(r.stdout), 5 * (1 + len(block)) + 4)
        self.assertEqual(r.stdout, b"".join(bytes([i]) + block for i in range(5)) + b"tail")

    def test_stdin_larger_than_the_window_round_trips(self):
        data = os.urandom(3 * 1024 * 1024)  # 12 times the 256 KiB window
        script = (
            "import sys\n"
            "while True:\n"
            "    b = sys.stdin.buffer.read1(65536)\n"
            "    if not b:\n"
            "        break\n"
            "    sys.stdout.buffer.write(b)\n"
        )
        r = self.run_script(script, stdin=data)
        self.assertEqual((r.reason, r.exit_code), ("exited", 0), r.stderr)
        self.assertEqual(len(r.stdout), len(data))
        self.assertTrue(r.stdout == data)

    def test_stdin_to_a_script_that_reads_late(self):
        # The script reads nothing for a while: the client must stop at the window and
        # wait for credit (the server ends the session with ERROR protocol otherwise).
        data = os.urandom(3 * 1024 * 1024 + 7)
        script = (
            "import hashlib, sys, time\n"
            "time.sleep(1.5)\n"
            "d = sys.stdin.buffer.read()\n"
            "print(len(d), hashlib.sha256(d).hexdigest())\n"
        )
        r = self.run_script(script, stdin=data)
        self.assertEqual(r.stdout.decode().split(), [str(len(data)), hashlib.sha256(data).hexdigest()])

    def test_stdin_to_a_script_that_never_reads(self):
        # Credit stops for good when the script exits: sending must not hang.
        r = self.run_script("print('bye')", stdin=os.urandom(2 * 1024 * 1024))
        self.assertEqual((r.stdout, r.exit_code), (b"bye\n", 0))

    def test_script_too_large(self):
        limit = 1048576
        with self.assertRaises(px.ScriptTooLarge) as cm:
            self.run_script(b"#" * (limit + 1))
        self.assertEqual(cm.exception.code, "too_large")
        self.assertIsNone(cm.exception.session)  # refused before WELCOME
        # Exactly the limit is fine.
        script = b"print('ok')\n" + b"#" * (limit - 12)
        self.assertEqual(len(script), limit)
        self.assertEqual(self.run_script(script).stdout, b"ok\n")

    def test_arguments_too_large(self):
        with self.assertRaises(px.ScriptTooLarge):
            self.run_script("pass", *(["x"] * 4097))
        with self.assertRaises(px.ScriptTooLarge):
            self.run_script("pass", "a" * 65536)  # 65536 + 1 > 65536
        with self.assertRaises(px.ScriptTooLarge):
            self.run_script("pass", "nul\0inside")
        r = self.run_script("import sys; print(len(sys.argv) - 1)", *(["x"] * 4096))
        self.assertEqual(r.stdout, b"4096\n")
        r = self.run_script("import sys; print(len(sys.argv[1]))", "a" * 65535)
        self.assertEqual(r.stdout, b"65535\n")

    def test_client_side_timeout_cancels(self):
        with self.assertRaises(px.TimeoutExpired) as cm:
            self.run_script("import time\nprint('started', flush=True)\ntime.sleep(30)\n", timeout=3)
        e = cm.exception
        self.assertIsNotNone(e.result)
        self.assertEqual((e.result.reason, e.result.exit_code), ("cancelled", 130))
        self.assertEqual(e.stdout, b"started\n")

    def test_defaults_come_from_the_environment(self):
        saved = {k: os.environ.get(k) for k in ("PYEXEC_SERVER", "PYEXEC_CA")}
        os.environ["PYEXEC_SERVER"], os.environ["PYEXEC_CA"] = self.server, self.ca
        try:
            self.assertEqual(px.run("print('env')", timeout=WAIT).stdout, b"env\n")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def test_host_name_localhost_is_verified_too(self):
        port = self.server.rsplit(":", 1)[1]
        r = px.run("print(1)", server="localhost:" + port, ca=self.ca, timeout=WAIT)
        self.assertEqual(r.stdout, b"1\n")

    def test_untrusted_server_is_refused(self):
        other_ca = daemon("_SMALL")[1]
        if not other_ca or _read(other_ca) == _read(self.ca):
            self.skipTest("needs a second daemon with its own CA (PYEXEC_TEST_CA_SMALL)")
        with self.assertRaises(px.TlsError) as cm:
            px.run("print(1)", server=self.server, ca=other_ca)
        self.assertIn("certificate verify failed", str(cm.exception))

    def test_ca_system_trusts_the_system_bundle(self):
        saved = os.environ.get("SSL_CERT_FILE")
        try:
            # A "system" bundle holding our CA: trusted.
            os.environ["SSL_CERT_FILE"] = self.ca
            r = px.run("print('system')", server=self.server, ca="system", timeout=WAIT)
            self.assertEqual(r.stdout, b"system\n")
            # One without it: refused, as with any CA that did not sign the server's.
            other_ca = daemon("_SMALL")[1]
            if other_ca and _read(other_ca) != _read(self.ca):
                os.environ["SSL_CERT_FILE"] = other_ca
                with self.assertRaises(px.TlsError) as cm:
                    px.run("print(1)", server=self.server, ca="system")
                self.assertIn("certificate verify failed", str(cm.exception))
        finally:
            if saved is None:
                os.environ.pop("SSL_CERT_FILE", None)
            else:
                os.environ["SSL_CERT_FILE"] = saved

    def test_missing_ca_file(self):
        with self.assertRaises(px.TlsError):
            px.run("print(1)", server=self.server, ca="/nonexistent/ca.pem")

    def test_connection_refused(self):
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        with self.assertRaises(px.ConnectionFailed):
            px.run("print(1)", server="127.0.0.1:%d" % port, ca=self.ca)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


if __name__ == "__main__":
    unittest.main()
