"""A helper of aiocontain's killed from outside mid-run: one line that names it, exit 125, nothing left."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.conftest import cli_argv, leftovers, slirp4netns_pids, started
from tests.test_cli_run import _children, _start

pytestmark = pytest.mark.container


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_pid_1_killed_from_outside_is_the_commands_end_by_that_signal(rootfs):
    # The command is PID 1: SIGKILLed from the host it ends as podman's does, 128+9, with nothing to say.
    before = leftovers()
    with _start(rootfs, "--", "/bin/sh", "-c", "echo ready; exec sleep 60") as proc:
        (server,) = _children(proc.pid)
        (init,) = _children(server)
        os.kill(init, signal.SIGKILL)
        assert proc.wait(timeout=30) == 137
        stderr = proc.stderr.read()
    assert "Traceback" not in stderr and "aiocontain:" not in stderr, stderr
    assert leftovers() == before


def test_a_killed_slirp4netns_is_one_line_naming_the_signal(rootfs):
    before = leftovers()
    with _start(rootfs, "--net", "slirp4netns", "--", "/bin/sh", "-c", "echo ready; exec sleep 60") as proc:
        (slirp,) = slirp4netns_pids()
        os.kill(slirp, signal.SIGKILL)
        assert proc.wait(timeout=30) == 125
        line = _one_error_line(proc.stderr.read())
    assert "slirp4netns was killed by SIGKILL" in line, line
    assert "tapfd" not in line  # its last progress line is not the cause
    assert leftovers() == before


def test_a_killed_fork_server_takes_its_container_and_says_the_status_is_lost(rootfs):
    # PID 1 is the fork server's child and dies with it; the command's status went with the server, which
    # would have reaped it: one line, exit 125, never a made-up code, and nothing left.
    before = leftovers()
    argv = cli_argv(rootfs, "--net", "none", "--", "/bin/sh", "-c", "echo ready; read line; exit 3")
    with started(argv, stdin=subprocess.PIPE) as proc:
        (server,) = _children(proc.pid)
        os.kill(server, signal.SIGKILL)
        _, stderr = proc.communicate("go\n", timeout=30)
    assert proc.returncode == 125, stderr
    line = _one_error_line(stderr)
    assert line.startswith("aiocontain: the fork server was killed, and the container with it"), line
    assert leftovers() == before
