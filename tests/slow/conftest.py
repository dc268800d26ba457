"""The slow tier: real programs in a real Debian rootfs, under aiocontain and under rootless podman alike.

`nox -s slow` builds the Debian rootfs (tests/slow/debian.py) and runs pytest on tests/slow with
AIOCONTAIN_DEBIAN_TAR naming its tarball. Anywhere else every test here is collected, marked `slow` and
skipped. Each session unpacks a fresh copy of the rootfs (a few seconds), so that what one run's tests leave
behind never reaches the next run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slow import debian

DEBIAN_TAR = os.environ.get("AIOCONTAIN_DEBIAN_TAR")
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="slow tier: runs in `nox -s slow`, which builds its Debian rootfs")
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.slow)
            if not DEBIAN_TAR and "debian_rootfs" in getattr(item, "fixturenames", ()):
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The counts of outcomes per module and runtime that the tests recorded (record_property "counts")."""
    rows = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) == "call":
                rows += [value for name, value in report.user_properties if name == "counts"]
    if not rows:
        return
    terminalreporter.section("CPython's regression tests per runtime")
    for module, runtime, counts in sorted(rows):
        shown = ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))
        terminalreporter.write_line(f"{module:<16} {runtime:<11} {shown}")


@pytest.fixture(scope="session")
def debian_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh Debian root filesystem for this session, owned as the containers see it."""
    assert DEBIAN_TAR is not None
    target = tmp_path_factory.mktemp("debian") / "root"
    debian.unpack(Path(DEBIAN_TAR), target)
    yield target
    debian.remove(target)
