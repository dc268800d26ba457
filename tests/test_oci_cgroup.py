"""linux.cgroupsPath and linux.resources: what is written where a cgroup v2 group can be made, and the refusal
where none can. The files are checked in a directory standing in for a delegated cgroup2 tree (this host's
cgroup2 hierarchy is not delegated; the VM tier has a real one), the refusals on this host as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiocontain.oci import cgroup
from aiocontain.oci.errors import OciError


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in cgroup2 mount at tmp_path/cg, its root "/", this process in /user/session."""
    mount = tmp_path / "cg"
    (mount / "user" / "session").mkdir(parents=True)
    monkeypatch.setattr(cgroup, "_v2_mount", lambda: (str(mount), "/"))
    monkeypatch.setattr(cgroup, "_own_group", lambda: "/user/session")
    return mount


def _files(directory: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


def test_limits_as_cgroup_v2_files(tree: Path) -> None:
    resources = {
        "memory": {"limit": 64 << 20, "reservation": 32 << 20, "swap": 96 << 20},
        "pids": {"limit": 100},
        "cpu": {"quota": 50000, "period": 100000, "shares": 1024},
        "unified": {"io.weight": "50"},
        "devices": [{"allow": False, "access": "rwm"}],  # podman always sends it: not a cgroup matter here
    }
    directory = cgroup.prepare("/user/containers/c1", resources, "c1")
    assert directory == str(tree / "user" / "containers" / "c1")
    assert _files(Path(directory)) == {
        "cpu.max": "50000 100000",
        "cpu.weight": "39",  # runc's conversion of 1024 shares
        "io.weight": "50",
        "memory.low": str(32 << 20),
        "memory.max": str(64 << 20),
        "memory.swap.max": str(32 << 20),  # swap counts memory too in the spec, not in cgroup v2
        "pids.max": "100",
    }
    relative = cgroup.prepare("pod/c2", {"pids": {"limit": 5}}, "c2")
    assert relative == str(tree / "user" / "session" / "pod" / "c2")  # below our own group
    assert _files(Path(relative)) == {"pids.max": "5"}


def test_nothing_asked_nothing_made(tree: Path) -> None:
    assert cgroup.prepare(None, {}, "c") == ""
    assert cgroup.prepare(None, {"devices": [{"allow": False}], "memory": {"limit": 0}}, "c") == ""
    assert list((tree / "user" / "session").iterdir()) == []


def test_a_group_that_cannot_be_made(tree: Path) -> None:
    """Read-only tree: a cgroupsPath alone is skipped (podman passes one on any host); a limit is refused."""
    (tree / "user").chmod(0o500)
    try:
        assert cgroup.prepare("/user/containers/c", {}, "c") == ""
        with pytest.raises(OciError, match=r"cannot apply linux.resources.memory: cannot make the group"):
            cgroup.prepare("/user/containers/c", {"memory": {"limit": 1 << 20}}, "c")
    finally:
        (tree / "user").chmod(0o700)


def test_this_host_refuses_limits_clearly() -> None:
    """The real host: cgroup v2 here is not delegated (docs/host.md), so a limit cannot be honoured."""
    with pytest.raises(OciError, match=r"linux.resources.pids.*delegated"):
        cgroup.prepare("/aiocontain-oci-test", {"pids": {"limit": 10}}, "c")
    assert cgroup.prepare("/aiocontain-oci-test", {}, "c") == ""


def test_unsupported_resources_and_systemd() -> None:
    with pytest.raises(OciError, match="blockIO is not supported"):
        cgroup.check({"blockIO": {"weight": 10}}, False, None)
    with pytest.raises(OciError, match="--systemd-cgroup"):
        cgroup.check({}, True, "system.slice:libpod:abc")
    cgroup.check({}, True, None)  # accepted when there is nothing to place
