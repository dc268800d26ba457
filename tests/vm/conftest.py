"""The VM tier: tests that need a real cgroup v2 kernel run only inside the guest that `nox -s vm` boots.

The guest (see guest.sh) runs them as the unprivileged test user from a leaf of a cgroup subtree delegated to
that user as systemd does it, and sets AIOCONTAIN_VM=1. Anywhere else (the normal `nox -s tests` run, a hybrid
cgroup host) every test here is collected, marked `vm` and skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

IN_VM = os.environ.get("AIOCONTAIN_VM") == "1"
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="VM tier: runs only in the cgroup v2 guest of `nox -s vm` (AIOCONTAIN_VM=1)")
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.vm)
            if not IN_VM:
                item.add_marker(skip)
