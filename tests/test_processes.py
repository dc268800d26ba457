"""Host helpers (processes.Helper, slirp4netns's): exit status, stderr, passed fds, nothing left on any path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from aiocontain import processes
from tests.conftest import leftovers, open_fds

pytestmark = pytest.mark.anyio


async def _stderr(helper: processes.Helper) -> bytes:
    return b"".join([chunk async for chunk in helper.stderr])


async def test_exit_status_and_stderr():
    fds = open_fds()
    helper = processes.Helper.spawn(["/bin/sh", "-c", "echo oops >&2; echo out; exit 3"])
    try:
        assert await _stderr(helper) == b"oops\n"  # stdout goes to /dev/null
        assert await helper.wait() == 3
    finally:
        await helper.aclose()
    killed = processes.Helper.spawn(["/bin/sh", "-c", "kill -9 $$"])
    try:
        assert await killed.wait() == -9
    finally:
        await killed.aclose()
    assert open_fds() == fds


_COLLIDING = """
import os, sys
import anyio
from aiocontain import processes

ra, wa = os.pipe()  # a fresh interpreter: 3, 4
rb, wb = os.pipe()  # 5, 6
os.dup2(wa, 20)
os.dup2(ra, 21)
os.dup2(wb, 3)  # the second source now sits on the first target: a plain dup2 would clobber it
os.close(4)
os.close(6)

async def main():
    helper = processes.Helper.spawn(["/bin/sh", "-c", "echo one >&3; echo two >&4"], [20, 3])
    os.close(20)
    os.close(3)
    try:
        assert await helper.wait() == 0
    finally:
        await helper.aclose()
    print(repr(os.read(21, 100)), repr(os.read(5, 100)))

anyio.run(main)
"""


def test_passed_fds_arrive_as_3_4_in_order_even_when_a_source_sits_on_a_target():
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", _COLLIDING],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["b'one\\n'", "b'two\\n'"]


async def test_cancelled_helper_is_killed_and_reaped():
    before, fds = leftovers(), open_fds()
    helper = processes.Helper.spawn(["/bin/sleep", "60"])
    try:
        with anyio.move_on_after(0.2) as scope:
            await helper.wait()
        assert scope.cancelled_caught
    finally:
        await helper.aclose()
    assert helper.returncode == -9
    assert leftovers() == before  # no child left, not even a zombie
    assert open_fds() == fds


async def test_a_helper_gets_this_processs_environment_as_it_is_now(monkeypatch):
    """As os.environ says at the spawn, changes made through it included (posix_spawn gets the bytes dict it keeps
    in step with putenv, not a copy taken earlier)."""
    monkeypatch.setenv("AIOCONTAIN_PROBE", "set now")
    monkeypatch.setenv("AIOCONTAIN_GONE", "set, then unset")
    monkeypatch.delenv("AIOCONTAIN_GONE")
    script = 'echo "$AIOCONTAIN_PROBE ${AIOCONTAIN_GONE-unset} $HOME" >&2'
    helper = processes.Helper.spawn(["/bin/sh", "-c", script])
    try:
        assert await _stderr(helper) == f"set now unset {os.environ['HOME']}\n".encode()
        assert await helper.wait() == 0
    finally:
        await helper.aclose()
