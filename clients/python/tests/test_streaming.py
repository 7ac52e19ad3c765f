"""The streaming API against a real pyexecd: prompts, live input, signals, cancel."""

import threading
import time
import unittest

from _support import WAIT, needs_daemon
import pyexec_client as px


def read_until(session, needle, timeout=WAIT):
    """Collects events until stdout contains `needle`; returns (stdout so far, events)."""
    out, events = b"", []
    deadline = time.monotonic() + timeout
    while needle not in out:
        event = session.next_event(timeout=max(0.0, deadline - time.monotonic()))
        if event is None:
            raise AssertionError("session ended before %r; stdout %r" % (needle, out))
        events.append(event)
        if isinstance(event, px.Stdout):
            out += event.data
    return out, events


def drain(session):
    """The rest of the events, until the end."""
    return list(session.events())


@needs_daemon()
class StreamingTests(unittest.TestCase):
    def session(self, script, *args, **kw):
        return px.Session(script, list(args), server=self.server, ca=self.ca, **kw)

    def test_prompt_is_seen_before_any_input_is_sent(self):
        script = 'name = input("Name: ")\nprint(f"Hello, {name}!")\n'
        with self.session(script) as s:
            out, events = read_until(s, b"Name: ")
            # Nothing has been sent on stdin yet, and the prompt has no newline.
            self.assertEqual(out, b"Name: ")
            self.assertIsInstance(events[0], px.Welcome)
            self.assertIn(px.Started, [type(e) for e in events])
            self.assertEqual(s.send_stdin(b"Ada\n"), 4)
            rest = b"".join(e.data for e in drain(s) if isinstance(e, px.Stdout))
            r = s.wait(WAIT)
        self.assertEqual(rest, b"Hello, Ada!\n")
        self.assertEqual((r.reason, r.exit_code), ("exited", 0))

    def test_callbacks_see_the_prompt_live(self):
        seen, prompt = bytearray(), threading.Event()

        def on_stdout(data):
            seen.extend(data)
            if seen.endswith(b"? "):
                prompt.set()

        errs = []
        script = "import sys\na = input('a? ')\nb = input('b? ')\nprint(a + b, file=sys.stderr)\n"
        with self.session(script, on_stdout=on_stdout, on_stderr=errs.append) as s:
            for answer in (b"x\n", b"y\n"):
                self.assertTrue(prompt.wait(WAIT), seen)
                prompt.clear()
                s.send_stdin(answer)
            r = s.wait(WAIT)
        self.assertEqual(bytes(seen), b"a? b? ")
        self.assertEqual(b"".join(errs), b"xy\n")
        self.assertEqual(r.exit_code, 0)
        self.assertEqual(r.stdout, b"")  # not captured unless asked

    def test_interactive_lines_then_eof(self):
        script = (
            "import sys\n"
            "for line in sys.stdin:\n"
            "    print(line.strip()[::-1], flush=True)\n"
            "print('eof')\n"
        )
        with self.session(script, capture=True) as s:
            for word in ("abc", "hello", "ünï"):
                s.send_stdin(word + "\n")
                read_until(s, word[::-1].encode())
            s.close_stdin()
            s.close_stdin()  # idempotent
            with self.assertRaises(ValueError):
                s.send_stdin(b"late")
            r = s.wait(WAIT)
        self.assertEqual(r.stdout, "cba\nolleh\nïnü\neof\n".encode())

    def test_interrupt_raises_keyboard_interrupt_in_the_script(self):
        script = (
            "import sys, time\n"
            "try:\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(30)\n"
            "except KeyboardInterrupt:\n"
            "    print('caught KeyboardInterrupt', flush=True)\n"
            "    sys.exit(7)\n"
        )
        with self.session(script, capture=True) as s:
            read_until(s, b"ready\n")
            self.assertTrue(s.interrupt())
            r = s.wait(WAIT)
        self.assertEqual(r.stdout, b"ready\ncaught KeyboardInterrupt\n")
        self.assertEqual((r.reason, r.exit_code), ("exited", 7))

    def test_uncaught_interrupt_ends_with_signal_2(self):
        script = "import time\nprint('ready', flush=True)\ntime.sleep(30)\n"
        with self.session(script, capture=True) as s:
            read_until(s, b"ready\n")
            s.interrupt()
            r = s.wait(WAIT)
        self.assertEqual((r.reason, r.exit_code, r.signal), ("signal", 130, 2))
        self.assertIn(b"KeyboardInterrupt", r.stderr)
        self.assertEqual(r.message, "killed by signal 2 (SIGINT)")

    def test_other_signals(self):
        script = (
            "import signal, sys, time\n"
            "signal.signal(signal.SIGUSR1, lambda *a: print('usr1', flush=True))\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n"
        )
        with self.session(script, capture=True) as s:
            read_until(s, b"ready\n")
            s.signal(10)
            read_until(s, b"usr1\n")
            s.signal(15)
            r = s.wait(WAIT)
        self.assertEqual((r.reason, r.exit_code, r.signal), ("signal", 143, 15))
        with self.assertRaises(ValueError):
            s.signal(19)  # refused locally: the server would end the session

    def test_cancel(self):
        with self.session("import time\nprint('ready', flush=True)\ntime.sleep(30)\n", capture=True) as s:
            read_until(s, b"ready\n")
            s.cancel()
            s.cancel()
            r = s.wait(WAIT)
        self.assertEqual((r.reason, r.exit_code, r.signal), ("cancelled", 130, None))
        self.assertEqual(r.stdout, b"ready\n")
        self.assertTrue(r.message)

    def test_leaving_the_block_cancels(self):
        with self.session("import time\ntime.sleep(30)\n") as s:
            read_until_started(s)
        self.assertTrue(s.done)
        self.assertEqual(s.wait(0).reason, "cancelled")

    def test_events_in_order(self):
        with self.session("import sys\nprint('a')\nprint('b', file=sys.stderr)\n", stdin=b"") as s:
            events = drain(s)
            r = s.wait(WAIT)
        kinds = [type(e) for e in events]
        self.assertEqual(kinds[:2], [px.Welcome, px.Started])
        self.assertEqual(b"".join(e.data for e in events if isinstance(e, px.Stdout)), b"a\n")
        self.assertEqual(b"".join(e.data for e in events if isinstance(e, px.Stderr)), b"b\n")
        self.assertEqual(events[0].session, r.session)
        self.assertEqual(s.next_event(), None)  # stays ended

    def test_errors_come_out_of_wait(self):
        with self.session(b"#" * (1048576 + 1)) as s:
            self.assertEqual(drain(s), [])
            with self.assertRaises(px.ScriptTooLarge):
                s.wait(WAIT)

    def test_send_stdin_before_welcome_waits_for_the_window(self):
        # send_stdin right after construction: WELCOME may not be here yet, and STDIN must
        # not go out before it (§5.1 rule 3). A violation would end in ERROR protocol.
        for _ in range(5):
            with self.session("import sys; print(sys.stdin.read())", capture=True) as s:
                s.send_stdin(b"early")
                s.close_stdin()
                self.assertEqual(s.wait(WAIT).stdout, b"early\n")

    def test_callback_error_stops_the_session(self):
        def boom(data):
            raise RuntimeError("callback failed")

        with self.session("import time\nprint('x', flush=True)\ntime.sleep(30)\n", on_stdout=boom) as s:
            with self.assertRaises(RuntimeError):
                s.wait(WAIT)


def read_until_started(session):
    while True:
        event = session.next_event(timeout=WAIT)
        if event is None or isinstance(event, px.Started):
            return


if __name__ == "__main__":
    unittest.main()
