"""Every Python example in the READMEs (the runtime's and each shipped plugin's) runs as written.

They run with the default root filesystem that the README's set-up builds
(``aiocontain rootfs init``), not a test-only one, so an example that needs more
than the README says fails here. ``nox -s types`` checks them with mypy --strict.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parent.parent
READMES = [ROOT / "README.md", *sorted(ROOT.glob("plugins/*/README.md"))]


def examples(readme: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)


EXAMPLES = [(readme, index) for readme in READMES for index in range(len(examples(readme)))]


@pytest.fixture(scope="module")
def readme_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a user who ran the README's set-up: the default rootfs exists, nothing else is set."""
    data = tmp_path_factory.mktemp("data")
    env = {key: value for key, value in os.environ.items() if key != "AIOCONTAIN_ROOTFS"}
    env["XDG_DATA_HOME"] = str(data)
    aiocontain = shutil.which("aiocontain") or str(Path(sys.executable).parent / "aiocontain")
    subprocess.run([aiocontain, "rootfs", "init"], env=env, check=True, capture_output=True, timeout=60)
    assert (data / "aiocontain" / "rootfs_arm" / "bin" / "busybox").exists()
    return env


def test_every_readme_has_its_examples() -> None:
    code = examples(ROOT / "README.md")
    assert any("asyncio.run(" in c for c in code)
    assert any("trio.run(" in c for c in code)
    for name in ("portforward", "resources", "trace"):
        assert examples(ROOT / "plugins" / name / "README.md"), name


@pytest.mark.parametrize(
    ("readme", "index"), EXAMPLES, ids=[f"{r.parent.name or 'aiocontain'}-{i}" for r, i in EXAMPLES]
)
def test_readme_example_runs(readme_env: dict[str, str], tmp_path: Path, readme: Path, index: int) -> None:
    code = examples(readme)[index]
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=90, env=readme_env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    if "container.exec(" in code:
        pid, rest = lines[0].removeprefix("pid ").split(" ", 1)
        assert int(pid) < 10 and rest == "uid 0 in /tmp", lines  # a pid of the container's namespace
        assert lines[1:] == ["exit code 0", "exec cancelled; the container is running"]
    elif "asyncio.run(" in code:
        assert {f"job{i} said job{i} on job{i}" for i in range(3)} <= set(lines)
        assert any(line.startswith("job0 network.ready") and "10.0.2.100/24" in line for line in lines)
        assert "codes [0, 0, 0]" in lines and lines[-1] == "stuck job cancelled"
    elif "trio.run(" in code:
        assert lines[-1] == "sleep cancelled" and len(lines) == 6
        for i, line in enumerate(lines[:5]):
            number, first, _, last, count, unit = line.split()
            assert (number, first, last, unit) == (str(i), "container.created", "teardown.finished", "events")
            assert int(count) >= 15  # created, every stage's start and end, released, started, exited, teardown
    elif "aiocontain.attach(" in code:
        assert lines[0].startswith("attached to sleeper ") and lines[1:] == ["exit code 137"]
    elif "PortForward(" in code:
        assert lines == ["hi"]  # the page came through the forwarded port
    elif "ResourceReport(" in code:
        assert "aiocontain: resources: " in proc.stderr
        assert len(lines) == 1
    elif "StageTrace(" in code:
        assert (tmp_path / "trace.json").stat().st_size > 0
        assert any(line.split()[:2] == ["stage", "count"] for line in lines)
        assert any(line.split()[:2] == ["release", "10"] for line in lines)  # ten containers' release stage
    else:
        pytest.fail(f"no check for this example of {readme}")
