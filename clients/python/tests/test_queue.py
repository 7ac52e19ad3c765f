"""Queueing, busy and early signals against a pyexecd with one run slot and five queue
places (--max-sessions 1 --max-queue 5)."""

import unittest

from _support import WAIT, needs_daemon
import pyexec_client as px
from test_streaming import read_until

HOLD = "import sys\nprint('holding', flush=True)\nsys.stdin.read()\nprint('released')\n"


def next_of(session, kind):
    """Skips events until one of `kind` arrives; fails if the session ends first."""
    while True:
        event = session.next_event(timeout=WAIT)
        if event is None:
            raise AssertionError("session ended while waiting for %s" % kind.__name__)
        if isinstance(event, kind):
            return event


@needs_daemon("_SMALL", "a pyexecd started with --max-sessions 1 --max-queue 5")
class QueueTests(unittest.TestCase):
    def setUp(self):
        self.sessions = []

    def tearDown(self):
        for s in self.sessions:
            s.close()

    def session(self, script, **kw):
        s = px.Session(script, server=self.server, ca=self.ca, **kw)
        self.sessions.append(s)
        return s

    def hold_the_slot(self):
        """A running session that keeps the only run slot until its stdin is closed."""
        s = self.session(HOLD, capture=True)
        read_until(s, b"holding\n")
        return s

    def test_queue_positions(self):
        holder = self.hold_the_slot()
        b = self.session("print('b')", stdin=b"")
        self.assertIsInstance(b.next_event(WAIT), px.Welcome)
        self.assertEqual(b.next_event(WAIT), px.Queued(1))  # right after WELCOME (§5.2)
        c = self.session("print('c')", stdin=b"", capture=True)
        self.assertIsInstance(c.next_event(WAIT), px.Welcome)
        self.assertEqual(c.next_event(WAIT), px.Queued(2))
        self.assertEqual(c.queue_position, 2)

        b.cancel()  # a queued session leaves the queue at once (§7)
        rb = b.wait(WAIT)
        self.assertEqual((rb.reason, rb.exit_code), ("cancelled", 130))
        self.assertIsNone(rb.started)
        self.assertEqual(c.next_event(WAIT), px.Queued(1))  # its position changed

        holder.close_stdin()
        self.assertEqual(holder.wait(WAIT).stdout, b"holding\nreleased\n")
        started = next_of(c, px.Started)
        self.assertGreater(started.queued_ms, 0)
        rc = c.wait(WAIT)
        self.assertEqual((rc.stdout, rc.exit_code), (b"c\n", 0))
        self.assertIsNone(c.queue_position)

    def test_server_busy(self):
        holder = self.hold_the_slot()
        for position in range(1, 6):
            s = self.session("pass", stdin=b"")
            self.assertEqual(next_of(s, px.Queued), px.Queued(position))
        extra = self.session("pass", stdin=b"")
        with self.assertRaises(px.ServerBusy) as cm:
            extra.wait(WAIT)
        self.assertEqual(cm.exception.code, "busy")
        self.assertIsNotNone(cm.exception.session)  # busy comes after WELCOME
        self.assertIsNotNone(extra.welcome)
        holder.close_stdin()
        holder.wait(WAIT)

    def test_busy_through_run(self):
        holder = self.hold_the_slot()
        for position in range(1, 6):
            next_of(self.session("pass", stdin=b""), px.Queued)
        with self.assertRaises(px.ServerBusy):
            px.run("print(1)", server=self.server, ca=self.ca, timeout=WAIT)
        holder.cancel()

    def test_a_signal_before_start_cancels(self):
        holder = self.hold_the_slot()
        b = self.session("print('never')")
        next_of(b, px.Queued)
        b.interrupt()
        r = b.wait(WAIT)
        self.assertEqual((r.reason, r.exit_code), ("cancelled", 130))
        self.assertIsNone(r.started)
        holder.close_stdin()
        holder.wait(WAIT)

    def test_stdin_sent_while_queued_is_delivered(self):
        holder = self.hold_the_slot()
        b = self.session("import sys; print(sys.stdin.read().upper())", capture=True)
        next_of(b, px.Queued)
        self.assertEqual(b.send_stdin(b"sent while queued"), 17)  # within the window
        b.close_stdin()
        holder.close_stdin()
        r = b.wait(WAIT)
        self.assertEqual(r.stdout, b"SENT WHILE QUEUED\n")


if __name__ == "__main__":
    unittest.main()
