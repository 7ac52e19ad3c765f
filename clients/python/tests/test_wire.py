"""Offline tests of the frame layer and address parsing: no server needed."""

import struct
import unittest

import _support  # noqa: F401  (puts src/ on sys.path)
from pyexec_client import _wire as w
from pyexec_client import errors
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
