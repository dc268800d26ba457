"""The resource reporter: one usage event per container, and a summary line when asked. Here containers run
with --cgroups disabled, so that the no-cgroup report is the same on any host; real numbers need a cgroup v2
leaf and are checked in the VM tier (tests/vm/test_resources_plugin.py)."""

from __future__ import annotations

import io
import json

import pytest
from aiocontain_resources import ResourceReport, summary

from aiocontain import CgroupsMode, Container, ContainerSpec, NetworkMode, ResourceUsage


@pytest.mark.parametrize(
    "usage, line",
    [
        (None, "no cgroup, usage unknown"),
        (ResourceUsage(1258291, 3400, 0, 2), "peak memory 1.2 MiB, CPU 3.4 ms, OOM kills 0, peak processes 2"),
        (ResourceUsage(3 << 30, 2_500_000, 1), "peak memory 3.0 GiB, CPU 2.50 s, OOM kills 1"),
        (ResourceUsage(None, None, 0, None), "peak memory unknown, CPU unknown, OOM kills 0"),
        (ResourceUsage(900, 0, 0, 1), "peak memory 900 B, CPU 0.0 ms, OOM kills 0, peak processes 1"),
    ],
)
def test_the_summary_says_what_the_kernel_said(usage, line):
    assert summary(usage) == line


@pytest.mark.container
def test_cli_without_a_cgroup_reports_no_usage_as_an_event_and_one_line_when_asked(cli, tmp_path):
    events_file = tmp_path / "events.jsonl"
    argv = ["--net", "none", "--cgroups", "disabled", "--resources-summary", "--events", str(events_file)]
    result = cli(*argv, "--", "true")
    assert (result.code, result.stdout) == (0, "")
    assert result.stderr == "aiocontain: resources: no cgroup, usage unknown\n"
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    usage = [e for e in events if e["event"] == "plugin.event" and e["plugin"] == "resources"]
    assert [(e["kind"], e["data"]) for e in usage] == [
        ("usage", {"cgroup": False, "memory_peak": None, "cpu_usec": None, "oom_kills": None, "pids_peak": None})
    ]
    # after the command's exit, before teardown
    names = [e["event"] for e in events]
    assert names.index("container.exited") < names.index("plugin.event") < names.index("teardown.finished")


@pytest.mark.container
def test_cli_prints_nothing_unless_asked(cli):
    result = cli("--net", "none", "--", "true")
    assert (result.code, result.stderr) == (0, "")


@pytest.mark.container
@pytest.mark.anyio
async def test_embedded_report_goes_to_the_given_stream(rootfs):
    stream = io.StringIO()
    spec = ContainerSpec(
        ["/bin/sh", "-c", "exit 3"], rootfs=rootfs, network=NetworkMode.NONE, cgroups=CgroupsMode.DISABLED
    )
    async with Container(spec, plugins=[ResourceReport(summary=True, stream=stream)]) as container:
        status = await container.wait()
    assert (status.code, status.usage) == (3, None)
    assert stream.getvalue() == "aiocontain: resources: no cgroup, usage unknown\n"
    reports = [e.fields async for e in container.events() if e.name == "plugin.event"]
    assert [(r["plugin"], r["kind"], r["data"]["cgroup"]) for r in reports] == [("resources", "usage", False)]
