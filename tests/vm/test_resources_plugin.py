"""The resource reporter with a real cgroup v2 leaf: the numbers the kernel gave, in the event and the line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.container  # and tests/vm/conftest.py runs it only in the VM tier's cgroup v2 guest

MiB = 1 << 20


def usage_event(events_file: Path) -> dict[str, int | bool | None]:
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    (data,) = [e["data"] for e in events if e["event"] == "plugin.event" and e["plugin"] == "resources"]
    return dict(data)


def test_peak_memory_cpu_time_and_processes_are_reported(cli, tmp_path):
    events_file = tmp_path / "events.jsonl"
    # the shell holds 8 MiB in a variable and spins a little: memory and CPU time the cgroup must have seen
    script = "x=$(head -c 8388608 /dev/zero | tr '\\0' a); i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo ${#x}"
    argv = ["--net", "none", "--memory", "64m", "--resources-summary", "--events", str(events_file)]
    result = cli(*argv, "--", "/bin/sh", "-c", script)
    assert (result.code, result.stdout) == (0, "8388608\n"), result.stderr
    data = usage_event(events_file)
    assert data["cgroup"] is True
    assert 8 * MiB <= int(data["memory_peak"]) < 64 * MiB
    assert int(data["cpu_usec"]) > 0
    assert data["oom_kills"] == 0
    assert int(data["pids_peak"]) >= 2  # the shell and its pipeline
    line = r"aiocontain: resources: peak memory [\d.]+ MiB, CPU [\d.]+ m?s, OOM kills 0, peak processes \d+"
    assert re.fullmatch(line, result.stderr.strip()), result.stderr


def test_oom_kills_are_reported(cli, tmp_path):
    events_file = tmp_path / "events.jsonl"
    script = "x=$(head -c 67108864 /dev/zero | tr '\\0' a)"  # 64 MiB against a limit of 16
    argv = ["--net", "none", "--memory", "16m", "--memory-swap", "16m", "--resources-summary"]
    result = cli(*argv, "--events", str(events_file), "--", "/bin/sh", "-c", script)
    data = usage_event(events_file)
    assert int(data["oom_kills"]) >= 1
    assert int(data["memory_peak"]) <= 16 * MiB
    assert f"OOM kills {data['oom_kills']}" in result.stderr
