"""The embedded interpreter: imports aiocontain once and runs containers on request from one event loop.

This is what a service embedding aiocontain pays per container: the interpreter
is already running, anyio's loop is already up, and the lazy imports (pyroute2
for the tap stage) happened in the warm-up round. Requests come one JSON line at
a time on one pipe, answers go back on another; the container's own stdio is the
worker's (/dev/null), as the CLI cases have it. Times are taken in here, around
``aiocontain.run`` (set-up, the command and teardown), so the pipe and JSON do not
count.

    python -m bench.worker --rootfs DIR --requests FD --responses FD [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

from aiocontain import Container, ContainerSpec, NetworkMode, run
from bench import procfs

Handler = Callable[..., Awaitable[dict[str, float]]]


def _spec(rootfs: Path, command: list[str], network: str = "slirp4netns") -> ContainerSpec:
    return ContainerSpec(command, rootfs=rootfs, network=NetworkMode(network))


async def _run_true(rootfs: Path, network: str) -> None:
    status = await run(_spec(rootfs, ["/bin/true"], network))
    if status.code != 0:
        raise RuntimeError(f"/bin/true exited {status.code}")


async def start(rootfs: Path, network: str) -> dict[str, float]:
    """One container, start to exit (teardown included)."""
    started = time.perf_counter()
    await _run_true(rootfs, network)
    return {"seconds": time.perf_counter() - started}


async def batch(rootfs: Path, count: int, concurrent: bool, network: str = "slirp4netns") -> dict[str, float]:
    """count containers (networked unless said): all started at once in one task group, or one after another
    with no pause between."""
    started = time.perf_counter()
    if concurrent:
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(_run_true, rootfs, network)
    else:
        for _ in range(count):
            await _run_true(rootfs, network)
    return {"seconds": time.perf_counter() - started}


async def memory(rootfs: Path, count: int) -> dict[str, float]:
    """count networked containers running ``sleep``: this process's RSS growth and its helpers' memory, in KiB."""
    gc.collect()
    before = procfs.rss_kib()
    async with AsyncExitStack() as stack:
        containers = [await stack.enter_async_context(Container(_spec(rootfs, ["sleep", "600"]))) for _ in range(count)]
        gc.collect()
        after = procfs.rss_kib()
        slirps = [pid for pid in procfs.children() if procfs.comm(pid) == "slirp4netns"]
        found = {
            "runtime_rss_growth": (after - before) / count,
            "slirp4netns_rss": statistics.median(procfs.rss_kib(pid) for pid in slirps),
            "slirp4netns_pss": statistics.median(procfs.pss_kib(pid) for pid in slirps),
            "runtime_rss": float(after),
            "helpers_seen": float(len(slirps)),
        }
        for container in containers:
            container.kill()
    return found


HANDLERS: dict[str, Handler] = {"start": start, "batch": batch, "memory": memory}


async def _lines(fd: int) -> AsyncIterator[bytes]:
    """The request lines on fd, read without blocking the loop, until end of file."""
    os.set_blocking(fd, False)
    pending = b""
    while True:
        await anyio.wait_readable(fd)
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line


async def serve(rootfs: Path, requests: int, responses: int) -> None:
    async for line in _lines(requests):
        request = json.loads(line)
        try:
            reply: dict[str, Any] = {"ok": True, "result": await HANDLERS[request["op"]](rootfs, **request["args"])}
        except Exception as exc:  # noqa: BLE001 - the runner reports it and drops the case
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        os.write(responses, json.dumps(reply).encode() + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", allow_abbrev=False)
    parser.add_argument("--rootfs", type=Path, required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--responses", type=int, required=True)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    anyio.run(serve, args.rootfs, args.requests, args.responses, backend=args.backend)


if __name__ == "__main__":
    main()
