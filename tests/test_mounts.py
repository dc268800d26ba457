"""-v, --mount, --tmpfs and --rootfs DIR:O as podman spells them: parsing and checks, no container."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from aiocontain import mounts
from aiocontain import syscalls as sc
from aiocontain.errors import AiocontainError
from aiocontain.mounts import Mount
from aiocontain.plugins import BindMount
from aiocontain.spec import ContainerSpec


def test_volume_options_become_flags_and_propagation(tmp_path):
    parsed = mounts.volume(f"{tmp_path}:/data:ro,nosuid,nodev,noexec,rshared,z")
    assert parsed == Mount(str(tmp_path), "/data", True, "bind", ("nosuid", "nodev", "noexec", "rshared", "z"))
    config = parsed.config()
    assert config["flags"] == sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    assert config["propagation"] == sc.MS_SHARED | sc.MS_REC
    assert config["dir"] is True
    assert mounts.volume(f"{tmp_path}:/data:ro,rw").readonly is False  # the last one wins, as in podman


def test_a_relative_host_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert mounts.volume("./sub:/x").source == str(tmp_path / "sub")


def test_mount_keys_as_podman_has_them(tmp_path):
    bind = mounts.mount(f"type=bind,src={tmp_path},dst=/d,readonly,bind-propagation=rslave,relabel=shared")
    assert (bind.source, bind.target, bind.readonly, bind.options) == (str(tmp_path), "/d", True, ("rslave",))
    tmp = mounts.mount("type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=700,readonly=false")
    assert (tmp.type, tmp.readonly, tmp.config()["data"]) == ("tmpfs", False, "size=1m,mode=700")
    # a bare option after readonly keeps it read-only, and is kept itself
    kept = mounts.mount(f"type=bind,src={tmp_path},dst=/d,readonly,nosuid,nodev")
    assert (kept.readonly, kept.options) == (True, ("nosuid", "nodev"))
    assert mounts.mount(f"type=bind,src={tmp_path},dst=/d,readonly,rw").readonly is False


def test_tmpfs_defaults_are_podmans():
    config = mounts.tmpfs("/t").config()
    assert config["flags"] == sc.MS_NOSUID | sc.MS_NODEV and config["data"] is None
    config = mounts.tmpfs("/t:size=64k,mode=1777,noexec,suid").config()
    assert config["flags"] == sc.MS_NODEV | sc.MS_NOEXEC and config["data"] == "size=64k,mode=1777"


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (mounts.volume, "/nonexistent-aiocontain:/x", "cannot bind /nonexistent-aiocontain at /x"),
        (mounts.volume, "{tmp}:x", "mount target 'x' is not an absolute path"),
        (mounts.volume, "{tmp}:/x:bogus", "unknown option 'bogus' of the mount at /x"),
        (mounts.volume, "{tmp}:/x:size=1m", "unknown option 'size=1m' of the mount at /x"),  # tmpfs's only
        (mounts.volume, "named:/x", "named volumes are not supported"),
        (mounts.volume, "/only-one-part", "invalid volume"),
        (mounts.volume, "{tmp}:/", "cannot mount over '/'"),
        (mounts.mount, "type=volume,source=v,target=/x", "unsupported mount type 'volume'"),
        (mounts.mount, "type=bind,target=/x", "has no source"),
        (mounts.mount, "type=bind,source={tmp}", "has no target"),
        (mounts.mount, "source={tmp},target=/x", "has no type"),
        (mounts.mount, "type=bind,source={tmp},target=/x,colour=red", "unknown --mount key 'colour'"),
        (mounts.mount, "type=bind,source=/nonexistent-aiocontain,target=/x", "No such file or directory"),
        (mounts.tmpfs, "/t:size", "unknown option 'size'"),
        (mounts.tmpfs, "t", "is not an absolute path"),
    ],
)
def test_bad_mounts_are_one_line(tmp_path, parse, text, message):
    with pytest.raises(AiocontainError) as caught:
        mounts.check([parse(text.format(tmp=tmp_path))])
    assert message in caught.value.message and "\n" not in caught.value.line()


def test_two_mounts_at_one_place_are_refused(tmp_path):
    with pytest.raises(AiocontainError, match="two mounts at /x"):
        ContainerSpec(["true"], mounts=[mounts.volume(f"{tmp_path}:/x"), mounts.tmpfs("/x/")]).validate()


def test_the_plugins_bind_mount_is_a_mount_read_only_by_default(tmp_path):
    mount = BindMount(str(tmp_path), "/x")
    assert isinstance(mount, Mount) and mount.readonly and mount.config()["flags"] == sc.MS_RDONLY


def test_rootfs_overlay_suffix():
    assert mounts.split_rootfs(Path("/r:O")) == (Path("/r"), True)
    assert mounts.split_rootfs(Path("/r")) == (Path("/r"), False)


@pytest.mark.parametrize(
    ("release", "supported"), [("5.10.0-21-amd64", False), ("5.11.0", True), ("6.1.0-18-amd64", True), ("4.19", False)]
)
def test_overlay_needs_linux_5_11(release, supported):
    assert mounts.overlay_supported(release) is supported


def test_read_only_tmpfs_leaves_out_what_the_user_mounts(tmp_path):
    spec = ContainerSpec(["true"], read_only=True, mounts=[mounts.volume(f"{tmp_path}:/run")])
    assert [m.target for m in mounts.read_only_tmpfs(spec)] == ["/tmp", "/var/tmp"]
    assert mounts.read_only_tmpfs(ContainerSpec(["true"], read_only=True, read_only_tmpfs=False)) == []
    assert mounts.read_only_tmpfs(ContainerSpec(["true"])) == []


def test_mounts_are_ordered_parents_first(tmp_path):
    ordered = mounts.ordered([mounts.tmpfs("/a/b/c"), mounts.tmpfs("/a"), mounts.tmpfs("/a/b")])
    assert [c["target"] for c in ordered] == ["/a", "/a/b", "/a/b/c"]


def test_cli_fields(tmp_path):
    args = argparse.Namespace(
        rootfs=Path(f"{tmp_path}:O"),
        volume=[f"{tmp_path}:/v"],
        mount=["type=tmpfs,target=/m"],
        tmpfs=["/t"],
        read_only=True,
        read_only_tmpfs=False,
    )
    fields = mounts.spec_fields(args)
    assert fields["rootfs"] == tmp_path and fields["rootfs_overlay"] is True
    assert [m.target for m in fields["mounts"]] == ["/v", "/m", "/t"]
    assert (fields["read_only"], fields["read_only_tmpfs"]) == (True, False)


def test_the_default_rootfs_gets_an_overlay_where_the_kernel_can(monkeypatch):
    assert ContainerSpec(["true"]).overlay is mounts.overlay_supported()
    assert ContainerSpec(["true"], rootfs=Path("/r")).overlay is False  # named: used directly, as podman's --rootfs
    assert ContainerSpec(["true"], rootfs_overlay=False).overlay is False
    monkeypatch.setattr(mounts.os, "uname", lambda: os.uname_result(("Linux", "h", "5.10.0", "#1", "x86_64")))
    assert ContainerSpec(["true"]).overlay is False
    with pytest.raises(AiocontainError, match=r"5\.11"):
        mounts.check_overlay()
