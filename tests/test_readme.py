"""The README's embedding examples run as written (with the test rootfs as the default)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

README = Path(__file__).resolve().parent.parent / "README.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_an_example_per_backend():
    code = examples()
    assert any("asyncio.run(" in c for c in code)
    assert any("trio.run(" in c for c in code)


@pytest.mark.parametrize("index", range(2))
def test_readme_example_runs(rootfs, index):
    code = examples()[index]
    env = {**os.environ, "AIOCONTAIN_ROOTFS": str(rootfs)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    if "asyncio.run(" in code:
        assert {f"job{i} said job{i} on job{i}" for i in range(3)} <= set(lines)
        assert any(line.startswith("job0 network.ready") and "10.0.2.100/24" in line for line in lines)
        assert "codes [0, 0, 0]" in lines and lines[-1] == "stuck job cancelled"
    else:
        assert lines[-1] == "sleep cancelled" and len(lines) == 6
        for i, line in enumerate(lines[:5]):
            index, first, _, last, count, unit = line.split()
            assert (index, first, last, unit) == (str(i), "container.created", "teardown.finished", "events")
            assert int(count) >= 15  # created, every stage's start and end, released, started, exited, teardown
