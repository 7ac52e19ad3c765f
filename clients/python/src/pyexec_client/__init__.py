"""pyexec-client: run Python scripts on a pyexecd server, over TLS 1.3.

    >>> import pyexec_client
    >>> r = pyexec_client.run("print(6 * 7)", server="localhost:12344", ca="certs/ca.pem")
    >>> r.stdout, r.exit_code
    (b'42\\n', 0)

`run()` for one-shot use, `Session` for live streaming (prompts, interactive input,
signals). Written from docs/protocol.md (protocol version 1), standard library only.
"""

from .errors import (
    ConnectionFailed,
    ConnectionLost,
    DockerError,
    FilesRefused,
    InternalServerError,
    Limited,
    ProtocolError,
    PyexecError,
    ScriptTooLarge,
    ServerBusy,
    ServerError,
    ServerProtocolError,
    ServerShuttingDown,
    TimeoutExpired,
    TlsError,
    UploadTimeout,
    VersionMismatch,
)
from .session import (
    DEFAULT_CA,
    DEFAULT_SERVER,
    InputWanted,
    Queued,
    Result,
    Session,
    Started,
    Stderr,
    Stdout,
    Welcome,
    run,
)

__version__ = "0.1.0"

__all__ = [
    "run",
    "Session",
    "Result",
    "Welcome",
    "Queued",
    "Started",
    "Stdout",
    "Stderr",
    "InputWanted",
    "DEFAULT_SERVER",
    "DEFAULT_CA",
    "PyexecError",
    "ConnectionFailed",
    "TlsError",
    "ConnectionLost",
    "ProtocolError",
    "TimeoutExpired",
    "FilesRefused",
    "ServerError",
    "VersionMismatch",
    "ScriptTooLarge",
    "ServerProtocolError",
    "UploadTimeout",
    "ServerBusy",
    "ServerShuttingDown",
    "DockerError",
    "InternalServerError",
    "Limited",
]
