"""Feature `files` (docs/protocol.md §10.2): files= and get= against the real daemon, and
a hostile server's file names against a fake one; plus the name checks alone."""

import json
import os
import tempfile
import unittest

from _support import WAIT, needs_daemon
import pyexec_client as px
from pyexec_client import _files
from pyexec_client import _wire as w
from test_fake_server import _HAVE_CERTS, FakeServer, _CA, close_notify, welcome

FILES_LIMITS = {
    "files_in_bytes": 1 << 20,
    "files_in_count": 10,
    "file_path_len": 1024,
    "files_out_bytes": 100,
    "files_out_count": 10,
}


def tree(root):
    """Every file under root, relative, sorted."""
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root) for n in names]
    return sorted(out)


class NameTests(unittest.TestCase):
    def test_the_protocols_name_rules(self):
        for bad in ["", "/etc/x", "../x", "a/../../x", "a//b", "./a", "a\0b", "a\nb", "x" * 256]:
            self.assertIsNotNone(_files.name_error(bad), repr(bad))
        for ok in ["data.csv", "results/out.csv", "ünï côdé.txt", ".hidden"]:
            self.assertIsNone(_files.name_error(ok), ok)

    def test_bad_sets_are_refused_before_connecting(self):
        for files in [{"../x": b""}, {"/abs": b""}, {"a": b"", "a/b": b""}]:
            with self.assertRaises(ValueError):
                px.run("pass", files=files, server="127.0.0.1:1", ca=__file__)
        with self.assertRaises(ValueError):
            px.run("pass", get=["../*"], server="127.0.0.1:1", ca=__file__)


@needs_daemon()
class FilesTests(unittest.TestCase):
    def test_files_in_beside_the_script_and_results_out(self):
        with tempfile.TemporaryDirectory() as tmp:
            helper = os.path.join(tmp, "helper.py")
            with open(helper, "w") as f:
                f.write("def twice(x):\n    return 2 * x\n")
            script = (
                "import helper, os\n"
                "print(helper.twice(int(open('data/n.txt').read())))\n"
                "os.makedirs('results')\n"
                "open('results/a.csv', 'w').write('1\\n')\n"
                "open('plot.png', 'wb').write(b'PNG' * 1000)\n"
                "os.symlink('/etc/passwd', 'link.png')\n"
            )
            out = os.path.join(tmp, "out")
            os.mkdir(out)
            r = px.run(
                script,
                files={"helper.py": helper, "data/n.txt": b"21"},
                get=["plot.png", "results/*.csv", "link.png", "*.svg"],
                out_dir=out,
                server=self.server,
                ca=self.ca,
                timeout=WAIT,
            )
            self.assertEqual((r.exit_code, r.stdout), (0, b"42\n"), r.stderr)
            self.assertEqual(tree(out), ["plot.png", "results/a.csv"])
            with open(os.path.join(out, "plot.png"), "rb") as f:
                self.assertEqual(f.read(), b"PNG" * 1000)
            self.assertEqual(set(r.files), {"plot.png", "results/a.csv"})
            self.assertEqual(r.unmatched, ["*.svg"])
            self.assertEqual([n for n, _ in r.skipped], ["link.png"])
            self.assertIn("symbolic link", r.skipped[0][1])

    def test_too_many_files_are_refused_before_anything_runs(self):
        files = {"f%d" % i: b"" for i in range(1001)}
        with self.assertRaises(px.ScriptTooLarge) as cm:
            px.run("print('ran')", files=files, server=self.server, ca=self.ca, timeout=WAIT)
        self.assertIn("too many files", str(cm.exception))


@unittest.skipUnless(_HAVE_CERTS, "needs server.pem and server.key beside PYEXEC_TEST_CA")
class HostileServerTests(unittest.TestCase):
    def serve_files(self, frames):
        def handler(c):
            json.loads(c.expect(w.HELLO))
            c.send(w.WELCOME, dict(welcome(**FILES_LIMITS), features=["files"]))
            for ftype, payload in frames:
                c.send(ftype, payload)
            c.send(w.END, {"reason": "exited", "exit_code": 0, "duration_ms": 1})
            close_notify(c)

        server = FakeServer(handler)
        self.addCleanup(server.finish)
        return server

    def test_traversal_names_are_refused_and_nothing_is_written(self):
        for name in ["../x", "/etc/x", "a/../../x"]:
            with self.subTest(name), tempfile.TemporaryDirectory() as base:
                out = os.path.join(base, "out")
                os.mkdir(out)
                server = self.serve_files(
                    [(w.FILE_OUT, {"name": name, "size": 2}), (w.FILE_OUT_DATA, b"hi")]
                )
                with self.assertRaises(px.ProtocolError) as cm:
                    px.run("pass", get=["x"], out_dir=out, server=server.address, ca=_CA, timeout=WAIT)
                self.assertIn("refused", str(cm.exception))
                self.assertEqual(tree(base), [])

    def test_a_result_with_a_name_near_name_max_is_saved(self):
        name = "r/" + "é" * 100 + "x" * 50 + ".csv"  # 254 bytes in its last component
        with tempfile.TemporaryDirectory() as base:
            server = self.serve_files(
                [(w.FILE_OUT, {"name": name, "size": 2}), (w.FILE_OUT_DATA, b"ok"),
                 (w.FILES_OUT_END, {"unmatched": [], "skipped": []})]
            )
            r = px.run("pass", get=["r/*"], out_dir=base, server=server.address, ca=_CA, timeout=WAIT)
            self.assertEqual(r.exit_code, 0)
            with open(os.path.join(base, name), "rb") as f:
                self.assertEqual(f.read(), b"ok")
            self.assertEqual(tree(base), [name], "no temporary file left")

    def test_an_existing_symlink_is_replaced_not_written_through(self):
        with tempfile.TemporaryDirectory() as base:
            victim = os.path.join(base, "victim")
            with open(victim, "w") as f:
                f.write("keep")
            os.symlink(victim, os.path.join(base, "plot.png"))
            server = self.serve_files(
                [(w.FILE_OUT, {"name": "plot.png", "size": 3}), (w.FILE_OUT_DATA, b"PNG"),
                 (w.FILES_OUT_END, {"unmatched": [], "skipped": []})]
            )
            r = px.run("pass", get=["plot.png"], out_dir=base, server=server.address, ca=_CA, timeout=WAIT)
            self.assertEqual(r.exit_code, 0)
            with open(victim) as f:
                self.assertEqual(f.read(), "keep")
            self.assertFalse(os.path.islink(os.path.join(base, "plot.png")))

    def test_a_server_without_the_feature_gets_cancel_and_nothing_runs(self):
        def handler(c):
            json.loads(c.expect(w.HELLO))
            c.send(w.WELCOME, welcome())
            # The client must cancel without a single SCRIPT byte.
            assert c.read_frame()[0] == w.CANCEL
            c.send(w.END, {"reason": "cancelled", "exit_code": 130, "duration_ms": 1})
            close_notify(c)

        server = FakeServer(handler)
        self.addCleanup(server.finish)
        with self.assertRaises(px.FilesRefused) as cm:
            px.run("pass", files={"a.txt": b"x"}, server=server.address, ca=_CA, timeout=WAIT)
        self.assertIn("does not take files", str(cm.exception))
