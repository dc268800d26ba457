"""The slirp4netns driver's own failure paths: a start that cannot finish leaves no fd of it open.

Its working paths run in real containers (test_cli_run, test_init, test_ipv6, test_helpers_killed); these
fail at the syscall boundary (os.pipe, the spawn), where a real container cannot be made to fail on cue.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import anyio
import pytest

from aiocontain.network import slirp4netns as slirp4netns_module
from aiocontain.network.driver import NetworkHost
from aiocontain.network.slirp4netns import Slirp4netns
from tests.conftest import open_fds

pytestmark = pytest.mark.anyio


def _host(tg: anyio.abc.TaskGroup, failures: list[object]) -> NetworkHost:
    return NetworkHost(pid=os.getpid(), runtime_dir=Path("/nonexistent"), tg=tg, failed=failures.append, log=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("failing", ["the second pipe", "the spawn"])
async def test_a_start_that_fails_leaves_no_fd(monkeypatch, failing):
    driver = Slirp4netns(mtu=65520, allow_host_loopback=False, timeout=1)
    driver.binary = "/nonexistent/slirp4netns"  # the spawn fails with ENOENT
    if failing == "the second pipe":
        real_pipe, calls = os.pipe, []

        def pipe() -> tuple[int, int]:
            calls.append(1)
            if len(calls) == 2:
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return real_pipe()

        monkeypatch.setattr(slirp4netns_module.os, "pipe", pipe)
    before, failures = open_fds(), []
    async with anyio.create_task_group() as tg:
        with pytest.raises(OSError) as raised:
            await driver.start(_host(tg, failures))
    assert raised.value.errno == (errno.EMFILE if failing == "the second pipe" else errno.ENOENT)
    assert open_fds() == before
    assert failures == []  # the start's own error, raised: no helper ran to report a failure
