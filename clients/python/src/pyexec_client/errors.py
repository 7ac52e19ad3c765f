"""Exceptions: every way a session can fail to reach a known outcome.

A script that ran and failed (non-zero exit, killed by a signal, the server's session
timeout, ...) is not an exception: that is a normal `Result` with its `reason` and
`exit_code`. An exception means the outcome is unknown or the script could not run at
all, which the CLI reports as exit status 125 (docs/protocol.md §9).
"""


class PyexecError(Exception):
    """Base class. `code` is the server's ERROR code when the server sent one, else None.

    `session` is the server's session id when a WELCOME had arrived (for bug reports).
    """

    #: The ERROR.code a subclass stands for (None: not a server ERROR frame).
    default_code = None

    def __init__(self, message, code=None, session=None):
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.session = session

    def __str__(self):
        return "%s (%s)" % (self.message, self.code) if self.code else self.message


class ConnectionFailed(PyexecError):
    """No session could be set up: name resolution, TCP connect, or a timeout doing so."""


class TlsError(ConnectionFailed):
    """The TLS 1.3 handshake failed: untrusted certificate, wrong host name, no TLS 1.3,
    an alert from the server. Nothing was sent to the server in plaintext."""


class ConnectionLost(PyexecError):
    """The connection ended (EOF, reset, TLS error) before END or ERROR arrived, so the
    script's outcome is unknown (§8.1). The script, if it ran, has been killed."""


class ProtocolError(PyexecError):
    """A protocol violation: either the server's data broke the protocol (detected here,
    `code` None) or the server says we broke it (`ERROR protocol`, `ServerProtocolError`)."""


class FilesRefused(PyexecError):
    """Files could not be exchanged: the server does not take them (it did not grant
    feature `files`; nothing was run), or a result file could not be written here."""


class TimeoutExpired(PyexecError):
    """A client-side time limit passed (`wait(timeout)`, `run(timeout=)`).

    From `run()`, the session has been cancelled and `result` holds what arrived until
    then (`stdout`, `stderr` are shortcuts to it), or None if not even the cancellation
    was confirmed. From `Session.wait()`, nothing was done: the session goes on.
    """

    def __init__(self, message, result=None, session=None):
        super().__init__(message, session=session)
        self.result = result

    @property
    def stdout(self):
        return self.result.stdout if self.result is not None else b""

    @property
    def stderr(self):
        return self.result.stderr if self.result is not None else b""


class ServerError(PyexecError):
    """The server ended the session with an ERROR frame (§4.6); `code` says why."""


class VersionMismatch(ServerError):
    """`version`: the server does not speak protocol version 1."""

    default_code = "version"


class ScriptTooLarge(ServerError):
    """`too_large`: the script is above the server's size limit, or the arguments break
    theirs (more than 4096, more than 64 KiB together, or a NUL inside)."""

    default_code = "too_large"


class ServerProtocolError(ServerError, ProtocolError):
    """`protocol`: the server says this client broke the protocol."""

    default_code = "protocol"


class UploadTimeout(ServerError):
    """`upload_timeout`: the script did not arrive in time (default 10 s)."""

    default_code = "upload_timeout"


class ServerBusy(ServerError):
    """`busy`: every run slot and every queue place is taken; try again later."""

    default_code = "busy"


class ServerShuttingDown(ServerError):
    """`shutdown`: the server is shutting down and did not accept the session."""

    default_code = "shutdown"


class DockerError(ServerError):
    """`docker`: the server's Docker Engine failed, possibly after some output."""

    default_code = "docker"


class InternalServerError(ServerError):
    """`internal`: a bug or an unexpected condition in the server."""

    default_code = "internal"


class Limited(ServerError):
    """`limited`: this client may not start another session now (defined for the future)."""

    default_code = "limited"


_BY_CODE = {
    cls.default_code: cls
    for cls in (
        VersionMismatch,
        ScriptTooLarge,
        ServerProtocolError,
        UploadTimeout,
        ServerBusy,
        ServerShuttingDown,
        DockerError,
        InternalServerError,
        Limited,
    )
}


def error_from_server(code, message, session=None):
    """The exception for an ERROR frame. Unknown codes are tolerated (§4): they give a
    plain ServerError that still carries the code as sent."""
    cls = _BY_CODE.get(code, ServerError)
    return cls(message, code=code, session=session)
