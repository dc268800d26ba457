"""The event catalogue is the contract: every emitted event and field is listed, and the docs say the same."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from aiocontain import Container, ContainerSpec, NetworkMode
from aiocontain.errors import CommandNotFound
from aiocontain.events import CATALOGUE, COMMON_FIELDS, Event
from tests.conftest import cli_argv

DOCS = Path(__file__).resolve().parent.parent / "docs" / "events.md"


def check(name: str, level: str, fields: dict[str, object]) -> None:
    spec = CATALOGUE.get(name)
    assert spec is not None, f"{name} is emitted but not in the catalogue (aiocontain/events.py, docs/events.md)"
    assert level in spec.level.split("/"), f"{name} emitted at {level}, catalogue says {spec.level}"
    extra = set(fields) - set(spec.fields) - set(COMMON_FIELDS)
    assert not extra, f"{name} has fields the catalogue does not list: {sorted(extra)}"


def test_docs_table_is_the_catalogue() -> None:
    rows = re.findall(r"^\| `([a-z0-9_.]+)` \| ([a-z/]+) \| (.*?) \| .* \|$", DOCS.read_text(), flags=re.M)
    documented = {name: (level, tuple(re.findall(r"`(\w+)`", fields))) for name, level, fields in rows}
    assert documented == {name: (spec.level, spec.fields) for name, spec in CATALOGUE.items()}


@pytest.mark.container
@pytest.mark.anyio
async def test_every_event_embedders_receive_is_catalogued_and_the_stream_is_complete(rootfs):
    seen: list[Event] = []

    async def collect(container: Container, into: list[Event]) -> None:
        async for event in container.events():
            into.append(event)

    async def one(spec: ContainerSpec, late: bool = False) -> list[Event]:
        container = Container(spec)
        early: list[Event] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, container, early)
            try:
                async with container:
                    if spec.init:
                        container.send_signal(signal.SIGTERM)
                    await container.wait()
            except CommandNotFound:
                pass
        late_events = [event async for event in container.events()] if late else early
        assert late_events == early  # a stream started after the end still gets the whole history
        return early

    runs = [
        await one(ContainerSpec(["/bin/true"], rootfs=rootfs), late=True),
        await one(ContainerSpec(["no-such-command"], rootfs=rootfs, network=NetworkMode.NONE)),
        await one(ContainerSpec(["sleep", "30"], rootfs=rootfs, network=NetworkMode.NONE, init=True)),
    ]
    for events in runs:
        assert events[0].name == "container.created" and events[-1].name == "teardown.finished"
        assert len({event.container_id for event in events}) == 1
        seen += events
    for event in seen:
        check(event.name, event.level, dict(event.fields))
    names = {event.name for event in seen}
    assert {"network.ready", "signal.forwarded", "container.exited", "stage.failed", "idmap.mapped"} <= names


@pytest.mark.container
def test_cli_json_log_and_events_file_say_the_same(rootfs, tmp_path):
    events_file = tmp_path / "events.jsonl"
    argv = cli_argv(rootfs, "--log-format", "json", "--log-level", "debug", "--events", str(events_file))
    proc = subprocess.run([*argv, "--", "/bin/sh", "-c", "echo out"], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "out\n"), proc.stderr
    logged = [json.loads(line) for line in proc.stderr.splitlines()]
    written = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert [e["event"] for e in logged] == [e["event"] for e in written]
    for line in written:
        fields = {k: v for k, v in line.items() if k not in ("event", "level", "timestamp")}
        check(line["event"], line["level"], fields)
    assert written[-1]["event"] == "teardown.finished"


@pytest.mark.container
def test_unwritable_events_file_is_one_line(rootfs, tmp_path):
    target = tmp_path / "missing-dir" / "events.jsonl"
    proc = subprocess.run(
        [*cli_argv(rootfs, "--events", str(target)), "true"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 125
    assert proc.stderr.splitlines() == [f"aiocontain: cannot write the events file {target}: No such file or directory"]


def test_events_dash_is_stdout(rootfs):
    proc = subprocess.run(
        [*cli_argv(rootfs, "--net", "none", "--events", "-"), "true"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    names = [json.loads(line)["event"] for line in proc.stdout.splitlines()]
    assert names[0] == "container.created" and names[-1] == "teardown.finished"
    assert not os.path.exists("-")


def test_a_closed_events_reader_never_stops_the_container(rootfs):
    # `--events /dev/stdout | head -1`: the reader goes after one line; the command still runs to its end,
    # and the events after it (command.exited, teardown.finished) find no reader.
    argv = [*cli_argv(rootfs, "--net", "none", "--events", "/dev/stdout"), "/bin/sh", "-c", "read line; exit 3"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    assert json.loads(proc.stdout.readline())["event"] == "container.created"
    proc.stdout.close()  # the reader is gone
    _, stderr = proc.communicate("go\n", timeout=60)  # only now may the command end
    assert proc.returncode == 3, stderr
    assert stderr == ""


def test_an_error_is_one_json_line_with_log_format_json(rootfs, tmp_path):
    missing = tmp_path / "nope"
    proc = subprocess.run(
        [sys.executable, "-m", "aiocontain", "run", "--log-format", "json", "--rootfs", str(missing), "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 125
    (line,) = proc.stderr.splitlines()
    record = json.loads(line)
    assert record["event"] == "aiocontain.error" and record["level"] == "error"
    assert record["message"] == f"rootfs {missing} does not exist" and "rootfs init" in record["fix"]
