"""`python -m pyexec_client` against a real pyexecd: pass-through and exit statuses."""

import os
import signal
import subprocess
import sys
import tempfile
import unittest

from _support import SRC, WAIT, needs_daemon


@needs_daemon()
class CliTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.env = dict(os.environ, PYTHONPATH=SRC)

    def script(self, text, name="script.py"):
        path = os.path.join(self.tmp.name, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def cli(self, *args, **kw):
        return [sys.executable, "-m", "pyexec_client", "--server", self.server, "--ca", self.ca] + list(args)

    def run_cli(self, *args, stdin=b""):
        return subprocess.run(self.cli(*args), input=stdin, capture_output=True, env=self.env, timeout=WAIT)

    def test_passes_io_through_and_exits_with_the_scripts_status(self):
        path = self.script(
            "import sys\n"
            "name = input('Name: ')\n"
            "print(f'Hello, {name}! argv={sys.argv[1:]}')\n"
            "print('to stderr', file=sys.stderr)\n"
            "sys.exit(3)\n",
            name="hello.py",
        )
        p = self.run_cli(path, "one", "two words", "--three", stdin=b"Ada\n")
        self.assertEqual(p.stdout, b"Name: Hello, Ada! argv=['one', 'two words', '--three']\n")
        self.assertEqual(p.stderr, b"to stderr\n")
        self.assertEqual(p.returncode, 3)

    def test_script_from_stdin(self):
        p = self.run_cli("-", stdin=b"print(6 * 7)\n")
        self.assertEqual((p.stdout, p.returncode), (b"42\n", 0), p.stderr)

    def test_signal_status(self):
        p = self.run_cli(self.script("import os; os.kill(os.getpid(), 9)"))
        self.assertEqual(p.returncode, 137)

    def test_could_not_run_is_125(self):
        p = self.run_cli(self.script("#" * (1048576 + 1)))
        self.assertEqual(p.returncode, 125)
        self.assertTrue(p.stderr.startswith(b"pyexec: "), p.stderr)
        self.assertIn(b"too_large", p.stderr)
        p = subprocess.run(
            [sys.executable, "-m", "pyexec_client", "--server", "127.0.0.1:1", "--ca", self.ca, "x.py"],
            capture_output=True, env=self.env, timeout=WAIT,
        )
        self.assertEqual(p.returncode, 125)

    def test_ctrl_c_interrupts_the_script(self):
        path = self.script(
            "import sys, time\n"
            "try:\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(30)\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted')\n"
            "    sys.exit(7)\n"
        )
        with subprocess.Popen(self.cli(path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env) as p:
            try:
                self.assertEqual(p.stdout.readline(), b"ready\n")
                p.send_signal(signal.SIGINT)
                self.assertEqual(p.stdout.read(), b"interrupted\n")
                self.assertEqual(p.wait(WAIT), 7)
            finally:
                if p.poll() is None:
                    p.kill()

    def test_closed_stdout_gives_141(self):
        path = self.script("import time\nwhile True:\n    print('y' * 100, flush=True)\n    time.sleep(0.01)\n")
        with subprocess.Popen(self.cli(path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env) as p:
            try:
                self.assertEqual(len(p.stdout.readline()), 101)
                p.stdout.close()
                self.assertEqual(p.wait(WAIT), 141)
            finally:
                if p.poll() is None:
                    p.kill()


if __name__ == "__main__":
    unittest.main()
