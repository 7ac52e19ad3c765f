"""The server's session time limit, against a pyexecd started with --session-timeout 2."""

import unittest

from _support import WAIT, needs_daemon
import pyexec_client as px


@needs_daemon("_SHORT", "a pyexecd started with --session-timeout 2")
class SessionTimeoutTests(unittest.TestCase):
    def test_session_timeout_is_a_result_not_an_exception(self):
        script = "import time\nprint('spinning', flush=True)\ntime.sleep(30)\n"
        r = px.run(script, server=self.server, ca=self.ca, timeout=WAIT)
        self.assertEqual((r.reason, r.exit_code, r.signal), ("timeout", 124, None))
        self.assertEqual(r.stdout, b"spinning\n")
        self.assertEqual(r.message, "session timed out after 2s")
        self.assertGreaterEqual(r.duration_ms, 2000)
        self.assertLess(r.duration_ms, 3000)
        self.assertEqual(r.welcome.limits["timeout_ms"], 2000)

    def test_waiting_for_stdin_times_out_too(self):
        with px.Session("input()", server=self.server, ca=self.ca) as s:
            r = s.wait(WAIT)
        self.assertEqual((r.reason, r.exit_code), ("timeout", 124))


if __name__ == "__main__":
    unittest.main()
