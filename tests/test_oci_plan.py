"""aiocontain-oci's reading of config.json (``oci.config.load``), checked without starting anything: the rules a
container never reaches because the config is refused, or because a mount's options add up to its flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiocontain import syscalls as sc
from aiocontain.oci import config as oci_config
from aiocontain.oci.errors import OciError
from tests.oci_support import make_bundle


def _plan(tmp_path: Path, **changes: object) -> oci_config.Plan:
    return oci_config.load(str(make_bundle(tmp_path / "bundle", tmp_path, ["/bin/true"], **changes)))


@pytest.mark.parametrize("option", sorted(set(oci_config.MOUNT_FLAGS) - {"rw"}))
def test_read_only_survives_every_option_but_rw(tmp_path, option):
    # Each option sets and clears its own flags only (runc's table): none but rw makes a read-only mount writable.
    def flags(options: list[str]) -> int:
        mount = {"destination": "/m", "type": "tmpfs", "source": str(tmp_path), "options": options}
        return _plan(tmp_path, mounts=[mount]).mounts[0].flags

    assert flags(["ro", option]) & sc.MS_RDONLY and flags([option, "ro"]) & sc.MS_RDONLY
    assert not flags(["ro", option, "rw"]) & sc.MS_RDONLY


def test_a_hostname_needs_a_uts_namespace_of_the_containers_own(tmp_path):
    namespaces = [{"type": kind} for kind in ("pid", "ipc", "mount")]
    with pytest.raises(OciError, match="a hostname needs a uts namespace"):
        _plan(tmp_path, linux={"namespaces": namespaces})
    # joining other namespaces does not count
    joined = [*namespaces, {"type": "network", "path": "/proc/self/ns/net"}]
    with pytest.raises(OciError, match="a hostname needs a uts namespace"):
        _plan(tmp_path, linux={"namespaces": joined})
    assert _plan(tmp_path, linux={"namespaces": [*namespaces, {"type": "uts"}]}).hostname == "ocitest"
    assert _plan(tmp_path, hostname="", linux={"namespaces": namespaces}).hostname is None  # none asked for
