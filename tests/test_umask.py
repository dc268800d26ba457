"""A caller's umask against the runtime's own files: one that denies the owner (`umask 777`) broke every run with
"unexpected error: PermissionError ... (this is a bug)", the runtime unable to open the directory it had just
made. The command now keeps that umask's group and other bits only; an embedding program is refused in one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from aiocontain import umask
from tests.conftest import cli_argv, leftovers

pytestmark = pytest.mark.container


def _under_umask(mask: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    shell = ["/bin/sh", "-c", f'umask {mask}; exec "$@"', "sh", *argv]
    return subprocess.run(shell, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("served", ["1", "0"], ids=["run server", "own run"])
@pytest.mark.parametrize(("mask", "inside"), [("777", "0077"), ("0277", "0077"), ("027", "0027")])
def test_the_command_runs_under_any_umask_and_passes_on_what_leaves_the_owner_alone(
    rootfs, mask, inside, served, monkeypatch
):
    """Networked (slirp4netns binds its API socket in the runtime directory too). The container gets the
    caller's umask as before, less the bits that denied the owner."""
    before = leftovers()
    monkeypatch.setenv("AIOCONTAIN_RUN_SERVER", served)
    result = _under_umask(mask, cli_argv(rootfs, "--", "/bin/sh", "-c", "umask"))
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, inside, "")
    assert leftovers() == before


@pytest.mark.parametrize("name", [None, "umask-named"])
def test_an_embedding_program_under_an_owner_denying_umask_is_refused_in_one_line(rootfs, name):
    """Whichever directory of ours comes first: the runtime directory, or with a name the names' locks."""
    before = leftovers()
    script = textwrap.dedent(
        f"""
        import os
        import anyio
        from aiocontain import AiocontainError, ContainerSpec, NetworkMode, run

        os.umask(0o777)
        try:
            anyio.run(run, ContainerSpec(["true"], rootfs={str(rootfs)!r}, network=NetworkMode.NONE, name={name!r}))
        except AiocontainError as exc:
            print(exc)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout
        == "this process's umask 0777 denies its owner the runtime's own files (fix: use umask 077 or less)\n"
    )
    assert leftovers() == before


def test_current_reads_the_umask_without_changing_it():
    old = os.umask(0o027)
    try:
        assert umask.current() == 0o027
        assert umask.denies_owner() is None
        os.umask(0o307)
        assert umask.denies_owner() == 0o307
        assert os.umask(0o027) == 0o307  # unchanged by the reads
    finally:
        os.umask(old)
