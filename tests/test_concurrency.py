"""Many containers in one event loop: the toolkit side, under each backend."""

from __future__ import annotations

import anyio
import pytest

from aiocontain import Container, ContainerSpec
from aiocontain.events import Event
from tests.conftest import leftovers, open_fds

pytestmark = [pytest.mark.anyio, pytest.mark.container]

COUNT = 20
LIFECYCLE = ["container.created", "network.ready", "container.released", "command.started", "container.exited"]


async def test_twenty_networked_containers_at_once(rootfs):
    before, fds = leftovers(), open_fds()
    codes: dict[int, int] = {}
    streams: dict[int, list[Event]] = {}

    async def collect(container: Container, into: list[Event]) -> None:
        async for event in container.events():
            into.append(event)

    async def one(index: int) -> None:
        # each checks its own network: tap0 configured before the command started
        command = ["/bin/sh", "-c", "ip -4 addr show tap0 | grep -q 10.0.2.100"]
        container = Container(ContainerSpec(command, rootfs=rootfs, network_timeout=60))
        streams[index] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, container, streams[index])
            async with container:
                codes[index] = (await container.wait()).code

    async with anyio.create_task_group() as tg:
        for index in range(COUNT):
            tg.start_soon(one, index)

    assert codes == dict.fromkeys(range(COUNT), 0)
    ids = set()
    for events in streams.values():
        names = [event.name for event in events]
        assert [name for name in names if name in LIFECYCLE] == LIFECYCLE
        assert names[-1] == "teardown.finished"
        assert [e.fields["stage"] for e in events if e.name == "stage.started"] == [
            e.fields["stage"] for e in events if e.name in ("stage.finished", "stage.skipped")
        ]
        ids |= {event.container_id for event in events}
    assert len(ids) == COUNT  # each stream is its own container's
    assert leftovers() == before
    assert open_fds() == fds
