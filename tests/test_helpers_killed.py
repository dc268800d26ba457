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


def test_a_killed_monitor_process_is_named_not_taken_for_the_commands_end(rootfs):
    before = leftovers()
    with _start(rootfs, "--", "/bin/sh", "-c", "echo ready; exec sleep 60") as proc:
        (server,) = _children(proc.pid)
        (intermediate,) = _children(server)
        os.kill(intermediate, signal.SIGKILL)
        assert proc.wait(timeout=30) == 125
        line = _one_error_line(proc.stderr.read())
    assert line.startswith("aiocontain: the container's monitor process") and "killed by SIGKILL" in line
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


def test_a_killed_fork_server_leaves_the_running_container_and_its_status_alone(rootfs):
    # The intermediate reports the command's status on its own control socket, not through the fork server.
    before = leftovers()
    argv = cli_argv(rootfs, "--net", "none", "--", "/bin/sh", "-c", "echo ready; read line; exit 3")
    with started(argv, stdin=subprocess.PIPE) as proc:
        (server,) = _children(proc.pid)
        os.kill(server, signal.SIGKILL)
        _, stderr = proc.communicate("go\n", timeout=30)  # only now may the command end
    assert proc.returncode == 3, stderr
    assert "Traceback" not in stderr
    assert leftovers() == before
