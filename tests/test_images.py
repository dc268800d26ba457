"""`aiocontain rootfs import`: images podman made on this machine, unpacked and run; malicious archives refused.

The images are built without a registry: `podman import` of a tar of the busybox rootfs (with files of uid
1000, a set-uid file, a hard link, files to be whited out), then a second layer made by hand (a whiteout and
an opaque directory) added to podman's own OCI layout of it and pulled back into podman (`oci:` transport),
then `podman save` in each format. The same probe runs in a container on the imported rootfs and under
podman on the image, and the two must agree.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aiocontain import subids
from tests.conftest import PODMAN_FLAGS, Result

pytestmark = pytest.mark.container

IMAGE = "localhost/aic-images-two:latest"
OWNED_MTIME = 1_000_000_000


# -- helpers: tars, layouts and archives made by hand ---------------------------------------------------------


@dataclass
class Entry:
    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    link: str = ""
    mtime: int = OWNED_MTIME
    dev: tuple[int, int] = (0, 0)


def tar_bytes(entries: list[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type, info.mode, info.uid, info.gid, info.mtime = (
                entry.kind,
                entry.mode,
                entry.uid,
                entry.gid,
                entry.mtime,
            )
            info.linkname = entry.link
            info.devmajor, info.devminor = entry.dev
            info.size = len(entry.data) if entry.kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(entry.data) if info.size else None)
    return buffer.getvalue()


def tree_entries(root: Path) -> list[Entry]:
    """Every file of a directory as root-owned entries (the busybox rootfs, whoever owns it on disk)."""
    entries = [Entry(".", tarfile.DIRTYPE, mode=0o755)]
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        info = path.lstat()
        if path.is_symlink():
            entries.append(Entry(name, tarfile.SYMTYPE, link=os.readlink(path), mode=0o777))
        elif path.is_dir():
            entries.append(Entry(name, tarfile.DIRTYPE, mode=stat.S_IMODE(info.st_mode)))
        else:
            entries.append(Entry(name, data=path.read_bytes(), mode=stat.S_IMODE(info.st_mode)))
    return entries


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_layout(
    directory: Path,
    layers: list[bytes],
    *,
    media_type: str = "application/vnd.oci.image.layer.v1.tar",
    platform: tuple[str, str] = ("linux", "amd64"),
    ref: str = "test",
) -> None:
    """An OCI image layout with one image of these (already compressed as media_type says) layers."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data: bytes) -> str:
        (blobs / digest(data)[7:]).write_bytes(data)
        return digest(data)

    config = json.dumps(
        {"os": platform[0], "architecture": platform[1], "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config)},
            "layers": [{"mediaType": media_type, "digest": blob(layer), "size": len(layer)} for layer in layers],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": blob(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def docker_archive(path: Path, images: list[tuple[str, str, list[bytes]]]) -> None:
    """A docker-archive with these (tag, architecture, layers) images."""
    with tarfile.open(path, "w") as tar:
        manifest = []

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for tag, architecture, layers in images:
            names = []
            for layer in layers:
                names.append(digest(layer)[7:] + ".tar")
                add(names[-1], layer)
            config = json.dumps(
                {
                    "os": "linux",
                    "architecture": architecture,
                    "rootfs": {"type": "layers", "diff_ids": [digest(layer) for layer in layers]},
                }
            ).encode()
            add(digest(config)[7:] + ".json", config)
            repo_tag = f"{tag}:latest"  # podman load wants the tag spelled out
            manifest.append({"Config": digest(config)[7:] + ".json", "RepoTags": [repo_tag], "Layers": names})
        add("manifest.json", json.dumps(manifest).encode())


# -- running things -------------------------------------------------------------------------------------------


def import_cmd(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    argv = [sys.executable, "-m", "aiocontain", "rootfs", "import", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def remove_tree(path: Path) -> None:
    """Remove what an import made: files of subordinate ids go only from inside the same mapping."""
    from aiocontain.images import namespace

    if os.path.lexists(path):
        namespace.run(lambda _mode: (shutil.rmtree(path, ignore_errors=True), {})[1])


@pytest.fixture
def space() -> Iterator[Path]:
    """A scratch directory of the test's own, removed from inside the mapping at the end."""
    base = Path(tempfile.mkdtemp(prefix="aic-img-"))
    yield base
    remove_tree(base)


def leftovers_in(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if ".import-" in name)


def subordinate(inside: int) -> int:
    """The host uid of uid inside (> 0) of a container: the subordinate range starts at inside 1."""
    uid_ranges = subids.ranges(os.getuid(), Path("/etc/subuid"))
    return uid_ranges[0][0] + inside - 1


needs_subids = pytest.mark.skipif(
    not (subids.ranges(os.getuid(), Path("/etc/subuid")) and shutil.which("newuidmap")),
    reason="needs subordinate ids and newuidmap (scripts/host-setup.sh)",
)


@pytest.fixture(scope="module")
def podman_env() -> Iterator[dict[str, str]]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: the images are built with it")
    base = Path(tempfile.mkdtemp(prefix="pi-", dir="/tmp"))
    (base / "home").mkdir()
    (base / "run").mkdir(mode=0o700)
    env = {**os.environ, "HOME": str(base / "home"), "XDG_RUNTIME_DIR": str(base / "run")}
    yield env
    subprocess.run(["podman", "system", "reset", "--force"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(base, ignore_errors=True)


def podman_cmd(env: dict[str, str], *args: str, timeout: float = 120) -> Result:
    proc = subprocess.run(
        ["podman", *PODMAN_FLAGS, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


# -- the images -----------------------------------------------------------------------------------------------

BASE_EXTRA = [
    Entry("home/user", tarfile.DIRTYPE, mode=0o750, uid=1000, gid=1000),
    Entry("home/user/owned", data=b"mine\n", mode=0o640, uid=1000, gid=1000),
    Entry("home/user/link", tarfile.LNKTYPE, link="home/user/owned", mode=0o640, uid=1000, gid=1000),
    Entry("bin/suid", data=b"#!/bin/sh\n", mode=0o4755, uid=1000, gid=1000),
    Entry("etc/remove-me", data=b"gone soon\n"),
    Entry("opaque", tarfile.DIRTYPE, mode=0o755),
    Entry("opaque/old", data=b"old\n"),
    Entry("opaque/sub", tarfile.DIRTYPE, mode=0o755),
    Entry("opaque/sub/deep", data=b"deep\n"),
]
TOP_LAYER = [  # parents listed as in the layer below, as image builders list them
    Entry("etc", tarfile.DIRTYPE, mode=0o755),
    Entry("home", tarfile.DIRTYPE, mode=0o755),
    Entry("home/user", tarfile.DIRTYPE, mode=0o750, uid=1000, gid=1000),
    Entry("etc/.wh.remove-me"),
    Entry("opaque", tarfile.DIRTYPE, mode=0o755),
    Entry("opaque/.wh..wh..opq"),
    Entry("opaque/new", data=b"new\n"),
    Entry("home/user/added", data=b"added\n", uid=1000, gid=1000),
]
# What each container prints: ownership, modes, times, hard links, the whiteouts' effect.
PROBE = (
    "stat -c '%u:%g %a %Y %h %n' /home/user /home/user/owned /home/user/link /home/user/added /bin/suid; "
    "ls -A /opaque /etc/remove-me 2>&1 | sed 's/^ls: //'; "
    "[ $(stat -c %i /home/user/owned) = $(stat -c %i /home/user/link) ] && echo hard link kept; "
    "ls -ln /home/user | tail -n +2 | awk '{print $3, $4, $9}'"
)


@dataclass
class Images:
    sources: dict[str, Path]
    base: Path  # the single-layer tar podman imported


@pytest.fixture(scope="module")
def images(podman_env: dict[str, str], rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Images:
    work = tmp_path_factory.mktemp("images")
    base = work / "base.tar"
    base.write_bytes(tar_bytes(tree_entries(rootfs) + BASE_EXTRA))
    steps = [
        ("import", str(base), "localhost/aic-images-base"),
        ("save", "--format", "oci-dir", "-o", str(work / "base-layout"), "localhost/aic-images-base"),
    ]
    for step in steps:
        result = podman_cmd(podman_env, *step)
        assert result.code == 0, result.stderr
    # The hand-made second layer, gzip-compressed, on top of podman's own layout of the imported base.
    layout = work / "base-layout"
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
    top = tar_bytes(TOP_LAYER)
    top_gz = gzip.compress(top, mtime=0)
    (blobs / digest(top_gz)[7:]).write_bytes(top_gz)
    config["rootfs"]["diff_ids"].append(digest(top))
    config.setdefault("history", []).append({"created_by": "a hand-made layer: a whiteout and an opaque dir"})
    config_data = json.dumps(config).encode()
    (blobs / digest(config_data)[7:]).write_bytes(config_data)
    manifest["config"] = {**manifest["config"], "digest": digest(config_data), "size": len(config_data)}
    manifest["layers"].append(
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(top_gz), "size": len(top_gz)}
    )
    manifest_data = json.dumps(manifest).encode()
    (blobs / digest(manifest_data)[7:]).write_bytes(manifest_data)
    index["manifests"] = [
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(manifest_data),
            "size": len(manifest_data),
            "annotations": {"org.opencontainers.image.ref.name": "two"},
        }
    ]
    (layout / "index.json").write_text(json.dumps(index))
    sources = {"handmade-layout": layout}
    result = podman_cmd(podman_env, "pull", f"oci:{layout}:two")
    assert result.code == 0, result.stderr
    image_id = result.stdout.strip().splitlines()[-1]
    assert podman_cmd(podman_env, "tag", image_id, IMAGE).code == 0
    for fmt, name in (("oci-archive", "two-oci.tar"), ("docker-archive", "two-docker.tar"), ("oci-dir", "two-dir")):
        result = podman_cmd(podman_env, "save", "--format", fmt, "-o", str(work / name), IMAGE)
        assert result.code == 0, result.stderr
        sources[fmt] = work / name
    return Images(sources, base)


# -- images podman made, run ----------------------------------------------------------------------------------


@needs_subids
@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive", "oci-dir", "handmade-layout"])
def test_import_runs_as_podman_runs_the_image(
    fmt: str, images: Images, space: Path, cli: Callable[..., Result], podman_env: dict[str, str]
) -> None:
    dest = space / "root"
    result = import_cmd(str(images.sources[fmt]), str(dest))
    assert result.code == 0, result.stderr
    assert result.stderr.startswith("imported ") and "(2 layers)" in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr

    ours = cli("--net", "none", "/bin/sh", "-c", PROBE, rootfs_dir=dest)
    assert ours.code == 0, ours.stderr
    theirs = podman_cmd(podman_env, "run", "--rm", "--network", "none", IMAGE, "/bin/sh", "-c", PROBE)
    assert theirs.code == 0, theirs.stderr
    assert ours.stdout == theirs.stdout
    lines = ours.stdout.splitlines()
    assert f"1000:1000 640 {OWNED_MTIME} 2 /home/user/owned" in lines
    assert "1000:1000 4755 " in ours.stdout  # set-uid kept after the chown
    assert "new" in lines and "old" not in lines and "sub" not in lines  # the opaque dir hides the layer below
    assert any("remove-me" in line and "No such file" in line for line in lines)  # whited out
    assert "hard link kept" in lines
    assert "1000 1000 owned" in lines  # `ls -ln` inside shows uid 1000
    # On the host, uid 1000 inside is a subordinate id; root inside is the user.
    assert os.stat(dest / "home/user").st_uid == subordinate(1000)  # (0750: the user may not look inside)
    assert os.stat(dest / "bin/busybox").st_uid == os.getuid()
    assert leftovers_in(space) == []


def test_without_subordinate_ids_everything_is_the_users(images: Images, space: Path, cli: Callable[..., Result]):
    dest = space / "root"
    env = {**os.environ, "PATH": "/nonexistent"}  # no newuidmap: the one-id mapping, as the fork server's
    result = import_cmd(str(images.sources["docker-archive"]), str(dest), env=env)
    assert result.code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "no subordinate ids" in warnings[0], result.stderr
    assert os.stat(dest / "home/user/owned").st_uid == os.getuid()
    assert cli("--net", "none", "/bin/stat", "-c", "%u", "/home/user/owned", rootfs_dir=dest).stdout == "0\n"
    assert stat.S_IMODE(os.stat(dest / "bin/suid").st_mode) == 0o4755


# -- every kind of source, compression and entry --------------------------------------------------------------


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_plain_tar_any_compression(compression: str, space: Path, cli: Callable[..., Result], rootfs: Path):
    source = space / "rootfs.tar"
    entries = [*tree_entries(rootfs), Entry("etc/.wh.hostname"), Entry("fifo", tarfile.FIFOTYPE, mode=0o600)]
    with tarfile.open(source, f"w:{compression}") as tar, tarfile.open(fileobj=io.BytesIO(tar_bytes(entries))) as src:
        for member in src:
            tar.addfile(member, src.extractfile(member) if member.isreg() else None)
    dest = space / "root"
    result = import_cmd(str(source), str(dest))
    assert result.code == 0, result.stderr
    assert "the root filesystem in" in result.stderr
    assert stat.S_ISFIFO(os.lstat(dest / "fifo").st_mode)
    assert (dest / "etc" / "hostname").is_file()  # a whiteout spares what its own layer adds
    ran = cli("--net", "none", "/bin/sh", "-c", "echo hello", rootfs_dir=dest)
    assert (ran.code, ran.stdout) == (0, "hello\n"), ran.stderr


def test_device_nodes_are_skipped_with_one_warning(space: Path) -> None:
    entries = [
        Entry("dev", tarfile.DIRTYPE, mode=0o755),
        Entry("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
        Entry("dev/zero", tarfile.CHRTYPE, mode=0o666, dev=(1, 5)),
        Entry("dev/sda", tarfile.BLKTYPE, mode=0o660, dev=(8, 0)),
        Entry("etc/file", data=b"x"),
    ]
    (space / "devs.tar").write_bytes(tar_bytes(entries))
    result = import_cmd(str(space / "devs.tar"), str(space / "root"))
    assert result.code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "aiocontain: warning: skipped 3 device nodes (/dev/null, /dev/zero, /dev/sda): "
        "a rootless user cannot create them"
    ]
    assert os.listdir(space / "root" / "dev") == []
    assert (space / "root" / "etc" / "file").read_bytes() == b"x"


@needs_subids
def test_an_id_beyond_the_range_is_refused(space: Path) -> None:
    uid_ranges = subids.ranges(os.getuid(), Path("/etc/subuid"))
    beyond = uid_ranges[0][1] + 1  # 0 is the user, 1..count the range
    (space / "far.tar").write_bytes(tar_bytes([Entry("far", data=b"x", uid=beyond, gid=0)]))
    assert_failed(import_cmd(str(space / "far.tar"), str(space / "root")), f"belongs to uid {beyond}", space)


def images_for(arches: list[tuple[str, str]]) -> list[tuple[str, str, list[bytes]]]:
    return [(tag, arch, [tar_bytes([Entry("which", data=tag.encode())])]) for tag, arch in arches]


def test_the_image_for_this_host_or_platform(space: Path) -> None:
    from aiocontain.images import platforms

    here = platforms.host().architecture
    other = "s390x" if here != "s390x" else "amd64"
    archive = space / "multi.tar"
    docker_archive(archive, images_for([("localhost/other", other), ("localhost/here", here)]))
    result = import_cmd(str(archive), str(space / "a"))
    assert result.code == 0, result.stderr
    assert (space / "a" / "which").read_text() == "localhost/here"
    result = import_cmd("--platform", f"linux/{other}", str(archive), str(space / "b"))
    assert result.code == 0, result.stderr
    assert (space / "b" / "which").read_text() == "localhost/other"

    result = import_cmd("--platform", "linux/mips64le", str(archive), str(space / "c"))
    assert result.code == 125
    assert result.stderr.startswith(f"aiocontain: {archive} has no image for linux/mips64le; it holds ")
    assert "localhost/other" in result.stderr and "localhost/here" in result.stderr
    assert_failed(import_cmd("--platform", "amd64", str(archive), str(space / "root")), "invalid platform", space)
    twins = space / "twins.tar"
    docker_archive(twins, images_for([("localhost/one", here), ("localhost/two", here)]))
    result = import_cmd(str(twins), str(space / "d"))
    assert result.code == 125
    assert "holds 2 images for linux/" in result.stderr
    assert "(localhost/one:latest, localhost/two:latest)" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not (space / "c").exists() and not (space / "d").exists() and leftovers_in(space) == []


def test_a_nested_oci_index_picks_by_platform(space: Path) -> None:
    """An OCI layout whose index names an image index (a manifest list) of two platforms, told in descriptors."""
    from aiocontain.images import platforms

    here = platforms.host().architecture
    other = "s390x" if here != "s390x" else "amd64"
    layout = space / "layout"
    descriptors = []
    for arch in (other, here):
        write_layout(layout, [tar_bytes([Entry("which", data=arch.encode())])], platform=("linux", arch))
        descriptor = json.loads((layout / "index.json").read_text())["manifests"][0]
        descriptors.append({**descriptor, "platform": {"os": "linux", "architecture": arch}})
    nested = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": descriptors}
    ).encode()
    (layout / "blobs" / "sha256" / digest(nested)[7:]).write_bytes(nested)
    index = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest(nested), "size": len(nested)}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [index]}))
    result = import_cmd(str(layout), str(space / "a"))
    assert result.code == 0, result.stderr
    assert (space / "a" / "which").read_text() == here
    result = import_cmd("--platform", f"linux/{other}", str(layout), str(space / "b"))
    assert result.code == 0, result.stderr
    assert (space / "b" / "which").read_text() == other


# -- malicious archives ---------------------------------------------------------------------------------------


@pytest.fixture
def sentinel(space: Path) -> Path:
    """A host directory a malicious image aims at: it must stay exactly as it is."""
    path = space / "sentinel"
    path.mkdir()
    (path / "secret").write_text("host data\n")
    return path


def sentinel_state(path: Path) -> dict[str, str]:
    return {name: (path / name).read_text() for name in sorted(os.listdir(path))}


def escapes(sentinel: Path, dest: Path) -> dict[str, list[list[Entry]]]:
    """Each attack: its layers, bottom first."""
    relative = os.path.relpath(sentinel, dest)  # from the target's root (the temporary sibling is as deep)
    return {
        "dotdot": [[Entry(f"{'../' * 12}{str(sentinel)[1:]}/pwned", data=b"x")]],
        "absolute": [[Entry(f"{sentinel}/pwned", data=b"x")]],
        "absolute-symlink": [[Entry("etc", tarfile.SYMTYPE, link=str(sentinel)), Entry("etc/pwned", data=b"x")]],
        "relative-symlink": [[Entry("up", tarfile.SYMTYPE, link=relative), Entry("up/pwned", data=b"x")]],
        "symlink-then-dir": [
            [Entry("etc", tarfile.SYMTYPE, link=str(sentinel)), Entry("etc/sub/pwned", data=b"x")],
        ],
        "symlink-in-lower-layer": [
            [Entry("etc", tarfile.SYMTYPE, link=str(sentinel))],
            [Entry("etc/pwned", data=b"x")],
        ],
        "hard-link-absolute": [[Entry("stolen", tarfile.LNKTYPE, link=f"{sentinel}/secret")]],
        "hard-link-dotdot": [[Entry("stolen", tarfile.LNKTYPE, link="../sentinel/secret")]],
        "hard-link-through-symlink": [
            [Entry("lnk", tarfile.SYMTYPE, link=str(sentinel)), Entry("stolen", tarfile.LNKTYPE, link="lnk/secret")]
        ],
        "whiteout-through-symlink": [
            [Entry("lnk", tarfile.SYMTYPE, link=str(sentinel))],
            [Entry("lnk/.wh.secret")],
        ],
        "opaque-through-symlink": [
            [Entry("lnk", tarfile.SYMTYPE, link=str(sentinel))],
            [Entry("lnk/.wh..wh..opq")],
        ],
    }


ATTACKS = list(escapes(Path("/s"), Path("/d")))


@pytest.mark.parametrize("attack", ATTACKS)
def test_escapes_are_refused(attack: str, space: Path, sentinel: Path) -> None:
    dest = space / "root"
    layers = escapes(sentinel, dest)[attack]
    source = space / "evil.tar"
    if len(layers) == 1:
        source.write_bytes(tar_bytes(layers[0]))
    else:
        docker_archive(source, [("localhost/evil", "amd64", [tar_bytes(layer) for layer in layers])])
    before = sentinel_state(sentinel)
    result = import_cmd(str(source), str(dest))
    assert result.code == 125, result.stderr
    assert result.stderr.startswith("aiocontain: refusing "), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert sentinel_state(sentinel) == before
    assert not dest.exists() and leftovers_in(space) == []


@pytest.mark.parametrize("attack", ["absolute-symlink", "relative-symlink", "symlink-in-lower-layer"])
def test_control_a_naive_extraction_escapes(attack: str, space: Path, sentinel: Path) -> None:
    """The attacks are real: tarfile without a filter, layer after layer, writes into the sentinel."""
    dest = space / "naive"
    dest.mkdir()
    for layer in escapes(sentinel, dest)[attack]:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes(layer))) as tar:
            # no filter, as before Python 3.14 (whose default filter refuses these)
            options = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
            tar.extractall(dest, **options)  # type: ignore[arg-type]
    assert "pwned" in sentinel_state(sentinel)


@pytest.mark.parametrize(
    "attack", ["symlink-in-lower-layer", "whiteout-through-symlink", "opaque-through-symlink", "relative-symlink"]
)
def test_podman_contains_them_too(attack: str, space: Path, sentinel: Path, podman_env: dict[str, str]) -> None:
    """podman applies layers in a chroot of the image: it fails on some, loads others, and the host stays."""
    source = space / "evil.tar"
    layers = escapes(sentinel, space / "root")[attack]
    docker_archive(source, [("localhost/evil", "amd64", [tar_bytes(layer) for layer in layers])])
    result = podman_cmd(podman_env, "load", "-i", str(source))
    assert result.code == 0 or "ApplyLayer" in result.stderr, result.stderr  # it did unpack the layers
    podman_cmd(podman_env, "rmi", "-f", "localhost/evil:latest")
    assert sentinel_state(sentinel) == {"secret": "host data\n"}


# -- errors: one line, 125, nothing left ----------------------------------------------------------------------


def assert_failed(result: Result, text: str, space: Path) -> None:
    assert result.code == 125, result.stderr
    assert result.stderr.startswith("aiocontain: ") and text in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (space / "root").exists() and leftovers_in(space) == []


def test_missing_source(space: Path) -> None:
    assert_failed(import_cmd(str(space / "nothing.tar"), str(space / "root")), "does not exist", space)


def test_unknown_format(space: Path) -> None:
    (space / "noise").write_bytes(os.urandom(4096))
    assert_failed(import_cmd(str(space / "noise"), str(space / "root")), "is not an image", space)
    (space / "dir").mkdir()
    assert_failed(import_cmd(str(space / "dir"), str(space / "root")), "not an OCI image layout", space)


def test_corrupt_archives(images: Images, space: Path) -> None:
    data = images.sources["oci-archive"].read_bytes()
    cut = space / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    assert_failed(import_cmd(str(cut), str(space / "root")), "is corrupt", space)
    # One byte changed in a layer blob of a layout: its digest no longer matches.
    layout = space / "layout"
    shutil.copytree(images.sources["handmade-layout"], layout)
    blob = max((layout / "blobs" / "sha256").iterdir(), key=lambda path: path.stat().st_size)
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    blob.write_bytes(bytes(raw))
    assert_failed(import_cmd(str(layout), str(space / "root")), "is corrupt", space)


def test_target_not_empty(images: Images, space: Path) -> None:
    dest = space / "root"
    dest.mkdir()
    (dest / "mine").write_text("keep\n")
    result = import_cmd(str(images.base), str(dest))
    assert result.code == 125 and "is not empty" in result.stderr and len(result.stderr.splitlines()) == 1
    assert os.listdir(dest) == ["mine"] and leftovers_in(space) == []


def test_empty_target_directory_is_filled(images: Images, space: Path) -> None:
    dest = space / "root"
    dest.mkdir()
    result = import_cmd(str(images.base), str(dest))
    assert result.code == 0, result.stderr
    assert (dest / "bin" / "busybox").is_file()


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")
def test_zstd_is_one_line(space: Path, rootfs: Path) -> None:
    if sys.version_info >= (3, 14):
        pytest.skip("Python 3.14's tarfile reads zstd")
    layer = subprocess.run(["zstd", "-q", "-c"], input=tar_bytes([Entry("a", data=b"a")]), capture_output=True)
    (space / "plain.tar.zst").write_bytes(layer.stdout)
    assert_failed(import_cmd(str(space / "plain.tar.zst"), str(space / "root")), "zstd", space)
    write_layout(space / "layout", [layer.stdout], media_type="application/vnd.oci.image.layer.v1.tar+zstd")
    assert_failed(import_cmd(str(space / "layout"), str(space / "root")), "zstd-compressed", space)
    write_layout(space / "liar", [layer.stdout])  # says plain tar; the bytes say zstd
    assert_failed(import_cmd(str(space / "liar"), str(space / "root")), "zstd-compressed", space)


def test_no_space(space: Path) -> None:
    """A tmpfs of 1 MiB (in a mount namespace of the test's own) and an image of 4 MiB."""
    (space / "big.tar").write_bytes(tar_bytes([Entry("big", data=os.urandom(4 << 20))]))
    small = space / "small"
    small.mkdir()
    script = (
        f"mount -t tmpfs -o size=1m none {small} && "
        f"{sys.executable} -m aiocontain rootfs import {space / 'big.tar'} {small / 'root'}; "
        f"echo code=$?; ls -A {small}"
    )
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout == "code=125\n", proc.stdout + proc.stderr  # and the tmpfs is empty again
    assert proc.stderr.startswith("aiocontain: no space left for") and len(proc.stderr.splitlines()) == 1


# -- signals: the partial tree goes too -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_interrupted_import_leaves_nothing(how: str, space: Path) -> None:
    """A layer that is a FIFO: the import blocks reading it, mid-layer, until the test stops it.

    SIGTERM: passed to the helper, which removes its partial tree; exit 143. SIGKILL: the helper gets its
    parent-death signal and cleans up alike; the FIFO's reader closing (EPIPE for the writer) shows it is gone.
    """
    layout = space / "layout"
    write_layout(layout, [b"placeholder"])
    blob = next(path for path in (layout / "blobs" / "sha256").iterdir() if path.read_bytes() == b"placeholder")
    blob.unlink()
    os.mkfifo(blob)
    head = tar_bytes([Entry("early", data=b"e" * 4096), Entry("later", data=b"l" * (1 << 20))])[: 1 << 19]
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiocontain", "rootfs", "import", str(layout), str(space / "root")],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def unblock() -> None:  # should the import end before it reads the layer, the open below must not hang
        proc.wait()
        os.close(os.open(blob, os.O_RDONLY | os.O_NONBLOCK))

    watchdog = threading.Thread(target=unblock, daemon=True)
    watchdog.start()
    with open(blob, "wb") as writer:  # opens once the helper opens the layer to read it
        writer.write(head)
        writer.flush()
        proc.send_signal(getattr(signal, how))
        _, stderr = proc.communicate(timeout=60)
        if how == "SIGTERM":
            assert proc.returncode == 143
            assert stderr == "aiocontain: interrupted by SIGTERM; nothing was imported\n"
        else:
            assert proc.returncode == -signal.SIGKILL
            with pytest.raises(BrokenPipeError):
                while True:
                    writer.write(b"\0" * 65536)
                    writer.flush()
    watchdog.join()
    assert not (space / "root").exists() and leftovers_in(space) == []
