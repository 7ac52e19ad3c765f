"""Frames and control messages of pyexec protocol version 1 (docs/protocol.md §2-§4).

Pure functions and small value classes, no I/O: the session layer feeds bytes in and gets
frames out, so every rule about the byte layout lives in this one file.
"""

import json
import struct

from .errors import ProtocolError

PROTOCOL_VERSION = 1
DEFAULT_PORT = 12344
ALPN = "pyexec/1"

#: Largest payload of one frame (§2); the length prefix counts one more, the type byte.
MAX_FRAME_PAYLOAD = 131072
#: Data frames SHOULD carry at most this much, so control frames never wait long behind
#: data (§2).
DATA_CHUNK = 65536

# Client to server (§3). Client types are below 0x80.
HELLO = 0x01
SCRIPT = 0x02
STDIN = 0x03
STDIN_EOF = 0x04
SIGNAL = 0x05
CANCEL = 0x06
# Feature `files` (§10.2), only once granted.
FILE_IN = 0x07
FILE_IN_DATA = 0x08

# Server to client. Server types are 0x80 or above.
WELCOME = 0x81
QUEUED = 0x82
STARTED = 0x83
STDOUT = 0x84
STDERR = 0x85
STDIN_CREDIT = 0x86
END = 0x87
ERROR = 0x88
FILE_OUT = 0x89
FILE_OUT_DATA = 0x8A
FILES_OUT_END = 0x8B
#: Feature `input_wanted` (§10.3): the script is blocked reading an empty stdin.
INPUT_WANTED = 0x8C
INPUT_WANTED_FEATURE = "input_wanted"

#: Server frames of feature `files`: unknown types unless the feature was granted.
FILE_TYPES = {FILE_OUT: "FILE_OUT", FILE_OUT_DATA: "FILE_OUT_DATA", FILES_OUT_END: "FILES_OUT_END"}

SERVER_TYPES = {
    WELCOME: "WELCOME",
    QUEUED: "QUEUED",
    STARTED: "STARTED",
    STDOUT: "STDOUT",
    STDERR: "STDERR",
    STDIN_CREDIT: "STDIN_CREDIT",
    END: "END",
    ERROR: "ERROR",
}

#: The only signal numbers a client may send (§7); anything else ends the session with
#: ERROR protocol, so the client refuses them before they reach the wire.
ALLOWED_SIGNALS = frozenset({1, 2, 3, 9, 10, 12, 15})

_HEADER = struct.Struct(">IB")
_U32 = struct.Struct(">I")


def encode_frame(ftype, payload=b""):
    """One frame: u32 BE length (type byte + payload), the type byte, the payload."""
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError("frame payload of %d bytes exceeds %d" % (len(payload), MAX_FRAME_PAYLOAD))
    return _HEADER.pack(len(payload) + 1, ftype) + bytes(payload)


def encode_json(ftype, obj):
    """A control frame: compact UTF-8 JSON, as the server itself sends (§2)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return encode_frame(ftype, text.encode("utf-8"))


class FrameReader:
    """Incremental frame decoder: feed it TLS plaintext in any pieces, take whole frames.

    Frame boundaries have nothing to do with TLS records (§2), so bytes are buffered until
    a frame is complete. A bad length is refused as soon as its 4 bytes are here, before
    any of the body is buffered, as the server does.
    """

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data):
        self._buf += data

    def has_partial(self):
        """True when part of a frame is buffered: an EOF now is an EOF mid-frame."""
        return bool(self._buf)

    def frames(self):
        """Yields (type, payload bytes) for every complete frame buffered so far."""
        buf = self._buf
        while len(buf) >= 4:
            (length,) = _U32.unpack_from(buf, 0)
            if length == 0:
                raise ProtocolError("the server sent an empty frame (no type byte)")
            if length > MAX_FRAME_PAYLOAD + 1:
                raise ProtocolError(
                    "the server sent a frame of length %d, above the limit of %d"
                    % (length, MAX_FRAME_PAYLOAD + 1)
                )
            if len(buf) < 4 + length:
                return
            ftype = buf[4]
            payload = bytes(buf[5 : 4 + length])
            del buf[: 4 + length]  # bytearray trims its front in O(1)
            yield ftype, payload


def parse_credit(payload):
    """STDIN_CREDIT: exactly 4 bytes, a u32 BE byte count (§3)."""
    if len(payload) != 4:
        raise ProtocolError("STDIN_CREDIT payload of %d bytes (must be 4)" % len(payload))
    return _U32.unpack(payload)[0]


def parse_json(payload, what):
    """A control payload: one UTF-8 JSON object (§2). Anything else is a protocol error."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError("%s is not valid UTF-8 JSON: %s" % (what, e))
    if not isinstance(obj, dict):
        raise ProtocolError("%s is not a JSON object" % what)
    return obj


_MISSING = object()


def field(obj, name, kind, what, default=_MISSING):
    """obj[name], checked against kind ("int", "str", "bool", "object").

    Integers must be JSON integers, never floats, strings or booleans (§4; Python's bool
    is an int, hence the explicit check). Unknown fields are simply never looked at, which
    is how receivers ignore them.
    """
    if name not in obj:
        if default is _MISSING:
            raise ProtocolError("%s has no %r field" % (what, name))
        return default
    value = obj[name]
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "object": isinstance(value, dict),
    }[kind]
    if not ok:
        raise ProtocolError("%s field %r is not a JSON %s: %r" % (what, name, kind, value))
    return value
