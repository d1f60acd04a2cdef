"""What to do when a test needs a tool, an interpreter or a server this machine lacks.

A developer's machine may lack Debian's redis-server, Java, Chromium or a CPython 3.13: those
tests skip there. CI sets CACHESYNC_REQUIRE_ALL_SERVERS=1 (.ci/run), and there the same test
fails instead, so a missing install can never pass as a green run. tests/conftest.py also turns
any other skip into a failure under that variable.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ALL_VARIABLE = "CACHESYNC_REQUIRE_ALL_SERVERS"


def require_all() -> bool:
    return os.environ.get(REQUIRE_ALL_VARIABLE) == "1"


def unavailable(why: str) -> NoReturn:
    """Skip the test for want of `why`, or fail it when CI requires everything."""
    if require_all():
        pytest.fail(f"{why} ({REQUIRE_ALL_VARIABLE}=1: every tool the suites use must be installed)", pytrace=False)
    pytest.skip(why)
