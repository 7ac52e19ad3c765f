"""Where the real daemons are: environment variables set by tests/python_client.rs.

PYEXEC_TEST_SERVER / PYEXEC_TEST_CA         a daemon with default settings
PYEXEC_TEST_SERVER_SMALL / ..._CA_SMALL     --max-sessions 1 --max-queue 5
PYEXEC_TEST_SERVER_SHORT / ..._CA_SHORT     --session-timeout 2

Tests that need a daemon that is not configured are skipped with a message saying which
variables to set, so `python3 -m unittest discover -s clients/python/tests` works anywhere.
"""

import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
if SRC not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, SRC)

WAIT = 60  # seconds: the longest any single wait in these tests may take


def daemon(suffix=""):
    """(server, ca) of the daemon configured under this suffix, or (None, None)."""
    return (
        os.environ.get("PYEXEC_TEST_SERVER" + suffix),
        os.environ.get("PYEXEC_TEST_CA" + suffix),
    )


def needs_daemon(suffix="", what="a pyexecd with default settings"):
    """Class decorator: skip unless the daemon is configured; sets cls.server, cls.ca."""
    server, ca = daemon(suffix)

    def wrap(cls):
        cls.server, cls.ca = server, ca
        return unittest.skipUnless(
            server and ca,
            "no daemon: set PYEXEC_TEST_SERVER%s and PYEXEC_TEST_CA%s to %s's address and CA "
            "file (cargo nextest run --test python_client does)" % (suffix, suffix, what),
        )(cls)

    return wrap

