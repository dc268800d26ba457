"""The set-up stages: each runs once, in order, and its event says whether it had anything to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiocontain import Container, ContainerSpec, NetworkMode
from aiocontain.plugins import Plugin, PrepareContext
from aiocontain.stages import PIPELINE

pytestmark = [pytest.mark.container, pytest.mark.anyio]


class PrepareOnly(Plugin):
    """A plugin with a prepare hook and no prestart hook."""

    name = "prepare-only"

    async def prepare(self, context: PrepareContext) -> None:
        pass


async def outcomes(spec: ContainerSpec, plugins: list[Plugin]) -> list[tuple[str, str]]:
    """(stage, "finished" or "skipped") of each stage of one run, in the order their events came."""
    async with Container(spec, plugins) as container:
        assert (await container.wait()).code == 0
    ends = ("stage.finished", "stage.skipped")
    return [(str(e.fields["stage"]), e.name.split(".")[1]) async for e in container.events() if e.name in ends]


async def test_without_network_or_plugins_only_the_container_s_own_stages_run(rootfs: Path) -> None:
    got = await outcomes(ContainerSpec(["/bin/true"], rootfs=rootfs, network=NetworkMode.NONE), [])
    assert [stage for stage, _ in got] == [name for name, _ in PIPELINE]
    expected = {"prepare": "skipped", "spawn": "finished", "idmap": "finished", "network": "skipped"}
    expected |= {"tap": "skipped", "prestart": "skipped", "release": "finished"}
    assert {stage: outcome for stage, outcome in got if stage != "cgroup"} == expected


async def test_network_stages_and_a_plugin_s_own_hook_finish(rootfs: Path) -> None:
    got = dict(await outcomes(ContainerSpec(["/bin/true"], rootfs=rootfs), [PrepareOnly()]))
    assert (got["prepare"], got["network"], got["tap"]) == ("finished", "finished", "finished")
    assert got["prestart"] == "skipped"  # the plugin has no prestart hook
