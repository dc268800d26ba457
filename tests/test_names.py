"""Names are unique among the user's running containers, as podman's are; a dead owner's name is free."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from aiocontain import AiocontainError, names
from tests.conftest import cli_argv, leftovers


def test_a_held_name_is_refused_until_released(tmp_path):
    held = names.claim("web", base=str(tmp_path))
    with pytest.raises(AiocontainError, match="the name 'web' is already in use by a running container"):
        names.claim("web", base=str(tmp_path))
    other = names.claim("db", base=str(tmp_path))  # another name is another lock
    held.release()
    held.release()  # idempotent
    names.claim("web", base=str(tmp_path)).release()
    other.release()


def test_the_name_of_a_dead_runtime_is_free(tmp_path):
    # Claimed by a process that exits without releasing it: the kernel drops its lock with it.
    code = f"from aiocontain import names; names.claim('web', base={str(tmp_path)!r}); import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True)
    names.claim("web", base=str(tmp_path)).release()


@pytest.mark.container
def test_a_second_run_with_a_running_containers_name_is_125(rootfs):
    before = leftovers()
    argv = cli_argv(rootfs, "--net", "none", "--name", "twin", "--", "/bin/sh", "-c", "echo ready; read line")
    first = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None and first.stdout.readline() == "ready\n"
        second = subprocess.run(
            cli_argv(rootfs, "--net", "none", "--name", "twin", "true"), capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 125, second.stderr
        assert second.stderr.strip().splitlines() == [
            "aiocontain: the name 'twin' is already in use by a running container "
            "(fix: choose another --name, or stop that container first)"
        ]
    finally:
        first.communicate("go\n", timeout=30)
    assert first.returncode == 0
    again = subprocess.run(cli_argv(rootfs, "--net", "none", "--name", "twin", "true"), capture_output=True, timeout=60)
    assert again.returncode == 0, again.stderr  # free again once the first is gone
    assert leftovers() == before


@pytest.mark.container
@pytest.mark.anyio
async def test_an_embedded_duplicate_is_refused_before_anything_starts(rootfs):
    from aiocontain import Container, ContainerSpec

    before = leftovers()
    spec = ContainerSpec(["/bin/sleep", "30"], rootfs=rootfs, name="twin", network="none")
    async with Container(spec) as running:
        with pytest.raises(AiocontainError, match="already in use"):
            async with Container(ContainerSpec(["/bin/true"], rootfs=rootfs, name="twin", network="none")):
                pass
        running.kill()
        await running.wait()
    async with Container(ContainerSpec(["/bin/true"], rootfs=rootfs, name="twin", network="none")) as c:
        assert (await c.wait()).code == 0
    assert leftovers() == before


def test_without_a_runtime_dir_each_user_has_names_of_its_own(tmp_path, monkeypatch):
    # In a shared temporary directory another user's directory must never be used (nor block us).
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(names.tempfile, "gettempdir", lambda: str(tmp_path))
    held = names.claim("web")
    assert held.path == str(tmp_path / f"aiocontain.names-{os.getuid()}" / "web.lock")
    held.release()


def test_a_names_directory_that_is_not_ours_is_refused(tmp_path):
    (tmp_path / names.DIRECTORY).symlink_to(tmp_path)  # not a directory of its own: e.g. planted by someone
    with pytest.raises(AiocontainError, match="does not belong to this user"):
        names.claim("web", base=str(tmp_path))


def test_the_shared_directory_is_keyed_by_the_outer_uid():
    """Under `unshare -r` every user is uid 0: the directory in the shared /tmp must still be this user's own,
    not one that another user's `unshare -r` made first."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    env = {key: value for key, value in os.environ.items() if key != "XDG_RUNTIME_DIR"}
    code = "from aiocontain import names; print(names.private_directory('aiocontain.names'))"
    inside = subprocess.run(
        [unshare, "--user", "--map-root-user", sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    outside = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert inside == outside.stdout.strip()
    assert inside.endswith(f"-{os.getuid()}") and os.getuid() != 0
