"""Errors by kind: each failure is an AiocontainError subclass a caller can catch, with its fields, and the
same one line as before (the CLI's output does not depend on the kind)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from aiocontain import Container, ContainerSpec, NetworkMode
from aiocontain.channels import failure_error
from aiocontain.errors import (
    AiocontainError,
    CgroupError,
    CommandNotFound,
    HostPrerequisiteError,
    NetworkError,
    PluginError,
    SetupError,
)
from aiocontain.forkserver.userns import namespace_error
from aiocontain.messages import STEP_NAMESPACES, STEP_SETUP, Failed
from aiocontain.plugins import Plugin, PrestartContext


def test_every_kind_is_an_aiocontain_error_with_exit_code_125() -> None:
    for kind in (SetupError, NetworkError, CgroupError, HostPrerequisiteError):
        error = kind("what went wrong", fix="how to fix it")
        assert isinstance(error, AiocontainError) and error.exit_code == 125
        assert error.line() == "what went wrong (fix: how to fix it)" and error.stage is None
    plugin = PluginError("plugin p: no", plugin="p")
    assert (plugin.plugin, plugin.line(), plugin.exit_code) == ("p", "plugin p: no", 125)


def test_a_refused_unshare_is_the_hosts_and_a_later_failure_the_containers() -> None:
    """By the Failed's step, not by the words of its message."""
    refused = namespace_error(Failed(STEP_NAMESPACES, "unshare: Operation not permitted", 1))
    assert isinstance(refused, HostPrerequisiteError)
    assert refused.message == "cannot create the container's namespaces: unshare: Operation not permitted"
    assert refused.fix is not None and "user.max_user_namespaces" in refused.fix
    later = namespace_error(Failed(STEP_SETUP, "Operation not permitted: unshare mentioned", 1))
    assert type(later) is SetupError
    assert later.line() == "container set-up failed: Operation not permitted: unshare mentioned"


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ETOOMANYREFS])
def test_a_child_out_of_fds_says_so_as_the_runtime_would(code: int) -> None:
    """The fork server and PID 1 share the runtime's fd limit: their running out of fds (or of fds in flight
    between the user's processes) is the runtime's one line about the limit, not a kernel message."""
    for error in (
        namespace_error(Failed(STEP_SETUP, os.strerror(code), code)),
        failure_error("/bin/true", Failed(STEP_SETUP, os.strerror(code), code)),
    ):
        assert type(error) is AiocontainError
        assert error.line().startswith("too many open files (this process's limit is "), error.line()
    # Control: any other errno of the set-up stays the container's.
    other = failure_error("/bin/true", Failed(STEP_SETUP, os.strerror(errno.EPERM), errno.EPERM))
    assert other.line() == "container set-up failed: Operation not permitted"


class Refuses(Plugin):
    name = "refuses"

    async def prestart(self, context: PrestartContext) -> None:
        context.veto("not today")


@pytest.mark.container
@pytest.mark.anyio
async def test_a_plugin_error_names_the_plugin_and_the_stage(rootfs: Path) -> None:
    spec = ContainerSpec(["true"], rootfs=rootfs, network=NetworkMode.NONE)
    with pytest.raises(PluginError) as info:
        async with Container(spec, plugins=[Refuses()]):
            pass
    assert (info.value.plugin, info.value.stage) == ("refuses", "prestart")
    assert info.value.line() == "plugin refuses stopped the run: not today"


@pytest.mark.container
@pytest.mark.anyio
async def test_a_missing_command_is_found_missing_in_the_release_stage(rootfs: Path) -> None:
    spec = ContainerSpec(["/no/such/command"], rootfs=rootfs, network=NetworkMode.NONE)
    with pytest.raises(CommandNotFound) as info:
        async with Container(spec):
            pass
    assert info.value.stage == "release" and info.value.exit_code == 127


@pytest.mark.anyio
async def test_limits_without_a_cgroup_are_a_cgroup_error(rootfs: Path) -> None:
    spec = ContainerSpec(["true"], rootfs=rootfs, memory="2m", cgroups="disabled")  # type: ignore[arg-type]
    with pytest.raises(CgroupError, match="resource limits need a cgroup"):
        async with Container(spec):
            pass  # refused before anything starts


@pytest.mark.container
@pytest.mark.anyio
async def test_a_root_that_cannot_be_built_is_the_error_even_when_slirp4netns_fails_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PID 1 builds its root before its release, while the runtime sets up the host side. One that fails takes
    # its namespaces with it (the fork server reaps it), so slirp4netns, started after that, cannot join them
    # and fails too. The network stage here starts only once PID 1 is gone: the error is still PID 1's own
    # line, not slirp4netns's "exited early".
    import anyio

    from aiocontain import container as container_module
    from aiocontain.stages import StageContext
    from tests.conftest import rootfs_with_symlinked_tmp

    def after_pid_1(body):  # type: ignore[no-untyped-def]
        async def run(ctx: StageContext) -> bool | None:
            assert ctx.process is not None
            with anyio.fail_after(10):
                await ctx.process.wait_exit()
            return await body(ctx)

        return run

    pipeline = tuple(
        (name, after_pid_1(body) if name == "network" else body) for name, body in container_module.PIPELINE
    )
    monkeypatch.setattr(container_module, "PIPELINE", pipeline)
    spec = ContainerSpec(["true"], rootfs=rootfs_with_symlinked_tmp(tmp_path), network=NetworkMode.SLIRP4NETNS)
    with pytest.raises(SetupError, match="tmp in the root filesystem is a symlink") as info:
        async with Container(spec):
            pass
    assert "slirp4netns" not in info.value.line()
