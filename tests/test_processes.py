"""Short host helpers (processes.run): their exit code and stderr, and nothing left when cancelled."""

from __future__ import annotations

import anyio
import pytest

from aiocontain import processes
from tests.conftest import leftovers, open_fds

pytestmark = pytest.mark.anyio


async def test_exit_code_and_stderr():
    fds = open_fds()
    assert await processes.run(["/bin/sh", "-c", "echo oops >&2; echo out; exit 3"]) == (3, b"oops\n")
    assert await processes.run(["/bin/sh", "-c", "kill -9 $$"]) == (-9, b"")
    assert open_fds() == fds


async def test_cancelled_helper_is_killed_and_reaped():
    before, fds = leftovers(), open_fds()
    with anyio.move_on_after(0.2) as scope:
        await processes.run(["/bin/sleep", "60"])
    assert scope.cancelled_caught
    assert leftovers() == before  # no child left, not even a zombie
    assert open_fds() == fds
