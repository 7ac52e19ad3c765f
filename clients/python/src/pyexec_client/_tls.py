"""TLS 1.3 over TCP, usable from several threads at once.

Why not `ssl.SSLSocket`: a session reads frames in one thread while other threads write
(the stdin feeder, `interrupt()`, `cancel()`), and an OpenSSL connection object must not be
used by two threads at the same time. So the TLS state lives in an `ssl.SSLObject` over
memory buffers, every call into it is made under one short lock, and the blocking socket
reads and writes happen outside that lock: a reader waiting for data never holds up a
writer, and neither can corrupt the other.
"""

import socket
import ssl
import threading

from ._wire import ALPN
from .errors import ConnectionFailed, TlsError

_RECV_SIZE = 65536


# The `ca` that means the system's trusted CAs (SSL_CERT_FILE, else OpenSSL's default
# bundle), for a server with a certificate from a public CA; as `pyexec --ca system`.
SYSTEM_CA = "system"


def make_context(ca):
    """The same trust settings as the reference client (§1): the chain is verified
    against `ca` only (or the system store, for `SYSTEM_CA`), the host name is checked,
    TLS 1.3 only, and ALPN offers exactly `pyexec/1`."""
    try:
        if ca == SYSTEM_CA:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        else:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (OSError, ssl.SSLError) as e:
        raise TlsError("cannot load the CA certificate %s: %s" % (ca, e))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols([ALPN])
    return ctx


class TlsConnection:
    """One client TLS connection: `send()` from any thread, `recv()` from one thread."""

    def __init__(self, host, port, ca, timeout):
        ctx = make_context(ca)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise ConnectionFailed("cannot connect to %s: %s" % (_hostport(host, port), e))
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # Lock order, everywhere: _send_lock, then _ssl_lock. Whoever takes bytes out of
        # _outgoing must hold _send_lock until they are on the socket, so that TLS records
        # leave in the order OpenSSL made them.
        self._send_lock = threading.Lock()
        self._ssl_lock = threading.Lock()
        try:
            # Frames are small and latency matters (a prompt, a SIGNAL): no Nagle (§1).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Python sends the name as SNI and checks it against the certificate; for an
            # IP literal it sends no SNI and checks the IP SANs instead (§1).
            self._tls = ctx.wrap_bio(self._incoming, self._outgoing, server_hostname=host)
            self._handshake()
        except ssl.SSLError as e:
            sock.close()
            raise TlsError("TLS handshake with %s failed: %s" % (_hostport(host, port), e))
        except OSError as e:
            sock.close()
            raise ConnectionFailed(
                "TLS handshake with %s failed: %s" % (_hostport(host, port), e or "timed out")
            )
        sock.settimeout(None)  # from here on the session's own rules bound the waits

    def _handshake(self):
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = self._sock.recv(_RECV_SIZE)
                if not data:
                    raise ConnectionFailed("the server closed the connection in the TLS handshake")
                self._incoming.write(data)
        self._flush()

    def _flush(self):
        """Puts whatever OpenSSL has produced on the wire, in order."""
        with self._send_lock:
            with self._ssl_lock:
                out = self._outgoing.read()
            if out:
                self._sock.sendall(out)

    def send(self, data):
        """Encrypts and sends `data`. Raises OSError or ssl.SSLError on failure."""
        with self._send_lock:
            with self._ssl_lock:
                self._tls.write(data)
                out = self._outgoing.read()
            self._sock.sendall(out)

    def recv(self):
        """Next decrypted bytes; b"" once the server's close_notify arrived.

        Raises ssl.SSLEOFError when the TCP stream ends without close_notify, and OSError or
        ssl.SSLError on other failures. Only one thread may call this.
        """
        while True:
            with self._ssl_lock:
                try:
                    data = self._tls.read(_RECV_SIZE)
                except ssl.SSLWantReadError:
                    data = None
                except ssl.SSLZeroReturnError:
                    data = b""
                # Reading may make OpenSSL answer something (e.g. a TLS 1.3 KeyUpdate).
                pending = self._outgoing.pending
            if pending:
                self._flush()
            if data is not None:
                return data
            raw = self._sock.recv(_RECV_SIZE)
            with self._ssl_lock:
                if raw:
                    self._incoming.write(raw)
                else:
                    self._incoming.write_eof()

    def close(self, linger=2.0):
        """The client's side of §8.1, after the terminal frame: read and discard until the
        server's close_notify or EOF (at most `linger` seconds), send our close_notify,
        close. Never raises: the session's outcome is already known."""
        try:
            self._sock.settimeout(linger)
            while self.recv():
                pass
        except (OSError, ssl.SSLError, ValueError):
            pass
        try:
            self._sock.settimeout(linger)
            with self._send_lock:
                with self._ssl_lock:
                    try:
                        self._tls.unwrap()  # queues our close_notify
                    except ssl.SSLError:
                        pass  # SSLWantReadError: the server's close_notify never came
                    out = self._outgoing.read()
                if out:
                    self._sock.sendall(out)
        except (OSError, ssl.SSLError, ValueError):
            pass
        self._sock.close()

    def abort(self):
        """Drops the connection at once, waking a blocked `recv()`. The server sees a
        disconnect and kills the script (§5.1 rule 6)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


def _hostport(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def split_server(server, default_port):
    """ "host:port", "[v6]:port", "host" or "v6-literal" -> (host, port)."""
    server = server.strip()
    if server.startswith("["):
        host, sep, rest = server[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("bad server address %r" % server)
        port = rest[1:] if rest else ""
    elif server.count(":") == 1:
        host, _, port = server.partition(":")
    else:
        host, port = server, ""  # a bare name, or a bare IPv6 literal
    if not host:
        raise ValueError("bad server address %r: no host" % server)
    try:
        port = int(port) if port else default_port
    except ValueError:
        raise ValueError("bad server address %r: bad port" % server)
    if not 0 < port < 65536:
        raise ValueError("bad server address %r: bad port" % server)
    return host, port
