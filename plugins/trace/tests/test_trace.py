"""The stage trace: a Chrome trace of every stage of every container, and the table of them."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import anyio
import pytest
from aiocontain_trace import StageTrace

from aiocontain import Container, ContainerSpec, NetworkMode
from tests.conftest import cli_argv, leftovers

pytestmark = pytest.mark.container

STAGES = ["prepare", "spawn", "idmap", "cgroup", "network", "tap", "prestart", "release"]


def load(path: Path) -> list[dict[str, object]]:
    """The trace's events, checked against the Trace Event Format that chrome://tracing and Perfetto read."""
    document = json.loads(path.read_text())
    events = document["traceEvents"]
    assert isinstance(events, list) and events
    for event in events:
        assert isinstance(event["name"], str) and event["ph"] in ("X", "i", "M")
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int)
        if event["ph"] != "M":
            assert isinstance(event["ts"], int | float) and event["ts"] > 0
        if event["ph"] == "X":
            assert isinstance(event["dur"], int | float) and event["dur"] >= 0
        if event["ph"] == "i":
            assert event["s"] == "t"
    return events


def rows(events: list[dict[str, object]]) -> dict[str, int]:
    """Container name -> its row; a row is labelled "NAME (SHORT ID)"."""
    labels = {str(e["args"]["name"]): int(e["tid"]) for e in events if e["name"] == "thread_name"}
    return {label.partition(" (")[0]: tid for label, tid in labels.items()}


def on_row(events: list[dict[str, object]], tid: int, ph: str, cat: str | None = None) -> list[dict[str, object]]:
    return [e for e in events if e["tid"] == tid and e["ph"] == ph and (cat is None or e.get("cat") == cat)]


def test_cli_writes_a_complete_event_per_stage_and_prints_the_table(cli, tmp_path):
    trace = tmp_path / "trace.json"
    # --cgroups disabled: the cgroup stage is skipped on any host, and the trace must say so
    result = cli("--net", "none", "--cgroups", "disabled", "--name", "traced", "--trace", str(trace), "--", "true")
    assert result.code == 0, result.stderr
    events = load(trace)
    (tid,) = rows(events).values()
    stages = on_row(events, tid, "X", "stage")
    assert [e["name"] for e in stages] == STAGES
    assert {e["name"]: e["args"]["result"] for e in stages}["cgroup"] == "skipped"
    (container,) = on_row(events, tid, "X", "container")
    start, end = container["ts"], container["ts"] + container["dur"]
    assert all(start <= e["ts"] and e["ts"] + e["dur"] <= end for e in stages)
    assert [e["name"] for e in on_row(events, tid, "i")] == ["command.started", "container.exited"]
    assert "traced" in rows(events)

    table = result.stderr.splitlines()
    assert table[0] == f"aiocontain: trace: 1 container in {trace}"
    assert table[1].split() == ["stage", "count", "median", "ms", "max", "ms"]
    assert [line.split()[:2] for line in table[2:]] == [[stage, "1"] for stage in STAGES]
    by_stage = {line.split()[0]: float(line.split()[2]) for line in table[2:]}
    assert by_stage["spawn"] == pytest.approx(next(e["dur"] for e in stages if e["name"] == "spawn") / 1000, abs=1e-3)


def test_an_unwritable_trace_file_is_one_line_before_anything_starts(rootfs, tmp_path):
    before = leftovers()
    missing = tmp_path / "no" / "trace.json"
    argv = cli_argv(rootfs, "--net", "none", "--trace", str(missing), "--", "true")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 125
    assert proc.stderr.splitlines() == [
        f"aiocontain: plugin trace: cannot write the trace file {missing}: No such file or directory"
    ]
    assert leftovers() == before


@pytest.mark.anyio
async def test_one_trace_for_many_containers_each_on_its_row_written_at_each_exit(rootfs, tmp_path):
    path = tmp_path / "trace.json"
    table = io.StringIO()
    trace = StageTrace(path, table=table)

    async def one(name: str, command: str) -> None:
        spec = ContainerSpec(["/bin/sh", "-c", command], rootfs=rootfs, network=NetworkMode.NONE, name=name)
        async with Container(spec, plugins=[trace]) as container:
            await container.wait()

    await one("first", "true")
    assert list(rows(load(path))) == ["first"]  # written as the first exits, before the next starts
    async with anyio.create_task_group() as tg:
        for name in ("second", "third"):
            tg.start_soon(one, name, "exit 1")
    events = load(path)
    assert sorted(rows(events)) == ["first", "second", "third"]
    for tid in rows(events).values():
        assert [e["name"] for e in on_row(events, tid, "X", "stage")] == STAGES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.json"]  # no temporary file left
    counts = {line.split()[0]: line.split()[1] for line in table.getvalue().splitlines() if line.split()[0] in STAGES}
    assert counts == dict.fromkeys(STAGES, "3")  # the last table: every stage of all three
