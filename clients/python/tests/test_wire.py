"""Offline tests of the frame layer, END's parsing, address parsing and the CLI's
--stats line: no server needed."""

import struct
import unittest

import _support  # noqa: F401  (puts src/ on sys.path)
from pyexec_client import _wire as w
from pyexec_client import errors
from pyexec_client.__main__ import describe_usage, format_size_approx
from pyexec_client.session import Result, _parse_end
from pyexec_client._tls import split_server


class FrameTests(unittest.TestCase):
    def test_encode_matches_the_documents_example(self):
        # §11, frame 5 and the empty STDIN_EOF frame.
        self.assertEqual(w.encode_frame(w.STDOUT, b"Name: "), bytes.fromhex("00000007844e616d653a20"))
        self.assertEqual(w.encode_frame(w.STDIN_EOF), bytes.fromhex("0000000104"))

    def test_hello_is_compact_json(self):
        frame = w.encode_json(w.HELLO, {"version": 1, "script_size": 48})
        self.assertEqual(frame[5:], b'{"version":1,"script_size":48}')
        self.assertEqual(struct.unpack(">I", frame[:4])[0], len(frame) - 4)

    def test_reader_reassembles_frames_split_anywhere(self):
        wire = w.encode_frame(w.STDOUT, b"abc") + w.encode_frame(w.STDIN_CREDIT, b"\0\0\0\4")
        for cut in range(len(wire) + 1):
            r = w.FrameReader()
            r.feed(wire[:cut])
            got = list(r.frames())
            r.feed(wire[cut:])
            got += list(r.frames())
            self.assertEqual(got, [(w.STDOUT, b"abc"), (w.STDIN_CREDIT, b"\0\0\0\4")], cut)
            self.assertFalse(r.has_partial())

    def test_reader_refuses_bad_lengths_from_the_prefix_alone(self):
        for length in (0, w.MAX_FRAME_PAYLOAD + 2):
            r = w.FrameReader()
            r.feed(struct.pack(">I", length))
            with self.assertRaises(errors.ProtocolError):
                list(r.frames())

    def test_largest_frame_is_accepted(self):
        r = w.FrameReader()
        r.feed(w.encode_frame(w.STDOUT, b"x" * w.MAX_FRAME_PAYLOAD))
        self.assertEqual(len(list(r.frames())[0][1]), w.MAX_FRAME_PAYLOAD)
        with self.assertRaises(ValueError):
            w.encode_frame(w.STDIN, b"x" * (w.MAX_FRAME_PAYLOAD + 1))

    def test_json_fields_are_type_checked(self):
        obj = w.parse_json(b'{"a":1,"b":1.0,"c":true,"d":"x","extra":[1]}', "T")
        self.assertEqual(w.field(obj, "a", "int", "T"), 1)
        for name in ("b", "c", "d"):
            with self.assertRaises(errors.ProtocolError):
                w.field(obj, name, "int", "T")
        self.assertEqual(w.field(obj, "missing", "str", "T", default=""), "")
        with self.assertRaises(errors.ProtocolError):
            w.field(obj, "missing", "str", "T")
        for bad in (b"[1]", b"{", b"\xff"):
            with self.assertRaises(errors.ProtocolError):
                w.parse_json(bad, "T")

    def test_credit(self):
        self.assertEqual(w.parse_credit(b"\0\0\1\0"), 256)
        with self.assertRaises(errors.ProtocolError):
            w.parse_credit(b"\0\0\1")


class EndTests(unittest.TestCase):
    OLD = b'{"reason":"exited","exit_code":0,"duration_ms":5,"message":""}'

    def test_without_usage_the_fields_are_none(self):
        # An older server's END, or one that could not tell.
        r = _parse_end(self.OLD, session="7")
        self.assertEqual((r.reason, r.exit_code, r.duration_ms, r.session), ("exited", 0, 5, "7"))
        self.assertEqual((r.cpu_ms, r.peak_memory_bytes, r.output_bytes), (None, None, None))

    def test_usage_fields(self):
        r = _parse_end(
            b'{"reason":"signal","exit_code":137,"signal":9,"duration_ms":1234,'
            b'"message":"killed by signal 9 (SIGKILL)",'
            b'"cpu_ms":1020,"peak_memory_bytes":115343360,"output_bytes":6}'
        )
        self.assertEqual((r.reason, r.exit_code, r.signal), ("signal", 137, 9))
        self.assertEqual((r.cpu_ms, r.peak_memory_bytes, r.output_bytes), (1020, 115343360, 6))
        # Each one on its own; null reads as left out, as the Rust client reads it.
        r = _parse_end(self.OLD[:-1] + b',"output_bytes":0,"cpu_ms":null}')
        self.assertEqual((r.cpu_ms, r.peak_memory_bytes, r.output_bytes), (None, None, 0))

    def test_a_null_signal_is_left_out(self):
        # §4 lists END.signal among the fields where null is accepted.
        r = _parse_end(b'{"reason":"exited","exit_code":0,"signal":null,"duration_ms":5}')
        self.assertIsNone(r.signal)
        with self.assertRaises(errors.ProtocolError):
            _parse_end(b'{"reason":"signal","exit_code":137,"signal":"9","duration_ms":5}')

    def test_bad_usage_values_are_protocol_errors(self):
        for bad in ('"1"', "1.5", "true", "-1", str(1 << 64)):
            with self.subTest(bad), self.assertRaises(errors.ProtocolError):
                _parse_end(self.OLD[:-1] + b',"cpu_ms":' + bad.encode() + b"}")

    def test_stats_line(self):
        r = Result("exited", 0, 5, cpu_ms=1020, peak_memory_bytes=109366477, output_bytes=12)
        self.assertEqual(describe_usage(r), "cpu 1.02s, peak memory 104.3 MiB, output 12 bytes")
        self.assertEqual(describe_usage(Result("timeout", 124, 5)), "cpu ?, peak memory ?, output ?")
        r = Result("exited", 0, 5, cpu_ms=7, output_bytes=0)
        self.assertEqual(describe_usage(r), "cpu 7ms, peak memory ?, output 0 bytes")
        self.assertEqual(describe_usage(Result("exited", 0, 5, cpu_ms=60000)).split(",")[0], "cpu 60s")

    def test_sizes_as_pyexec_writes_them(self):
        # The same table as crates/pyexec-client/src/units.rs, measured_sizes.
        for n, text in [
            (0, "0 bytes"),
            (1, "1 byte"),
            (12, "12 bytes"),
            (1023, "1023 bytes"),
            (1024, "1.0 KiB"),
            (3584, "3.5 KiB"),
            ((1 << 20) - 1, "1.0 MiB"),
            (109366477, "104.3 MiB"),
            (256 << 20, "256.0 MiB"),
            (1 << 30, "1.0 GiB"),
            (5 << 40, "5120.0 GiB"),
            ((1 << 64) - 1, "17179869184.0 GiB"),
        ]:
            self.assertEqual(format_size_approx(n), text, n)


class ErrorMappingTests(unittest.TestCase):
    def test_known_codes_get_their_class(self):
        cases = {
            "busy": errors.ServerBusy,
            "too_large": errors.ScriptTooLarge,
            "version": errors.VersionMismatch,
            "protocol": errors.ServerProtocolError,
            "upload_timeout": errors.UploadTimeout,
            "shutdown": errors.ServerShuttingDown,
            "docker": errors.DockerError,
            "internal": errors.InternalServerError,
            "limited": errors.Limited,
        }
        for code, cls in cases.items():
            e = errors.error_from_server(code, "msg", session="3")
            self.assertIs(type(e), cls)
            self.assertIsInstance(e, errors.ServerError)
            self.assertIsInstance(e, errors.PyexecError)
            self.assertEqual((e.code, e.message, e.session), (code, "msg", "3"))
        self.assertIsInstance(errors.error_from_server("protocol", "m"), errors.ProtocolError)

    def test_unknown_code_is_tolerated(self):
        e = errors.error_from_server("overheated", "too hot")
        self.assertIs(type(e), errors.ServerError)
        self.assertEqual(e.code, "overheated")
        self.assertEqual(str(e), "too hot (overheated)")


class AddressTests(unittest.TestCase):
    def test_forms(self):
        self.assertEqual(split_server("localhost:12344", 1), ("localhost", 12344))
        self.assertEqual(split_server("example.org", 12344), ("example.org", 12344))
        self.assertEqual(split_server("127.0.0.1:5", 1), ("127.0.0.1", 5))
        self.assertEqual(split_server("[::1]:5", 1), ("::1", 5))
        self.assertEqual(split_server("[::1]", 7), ("::1", 7))
        self.assertEqual(split_server("::1", 7), ("::1", 7))
        for bad in ("", ":5", "host:x", "host:0", "host:70000", "[::1"):
            with self.assertRaises(ValueError, msg=bad):
                split_server(bad, 1)


if __name__ == "__main__":
    unittest.main()
