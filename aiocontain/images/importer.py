"""``aiocontain rootfs import``: a root filesystem from an image, owned as the containers will see it.

The layers are unpacked into a hidden sibling of the target, inside a user namespace mapped as every
container's is (``aiocontain.images.namespace``), and the sibling is renamed to the target at the very end:
an import that fails, for whatever reason, leaves neither a half-written target nor the sibling behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from aiocontain.errors import AiocontainError
from aiocontain.images import formats, namespace, platforms
from aiocontain.images.formats import Layer, Plan
from aiocontain.images.tree import Refused, Tree, Unreadable

_READ_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, zlib.error, Unreadable)
try:
    import lzma

    _READ_ERRORS += (lzma.LZMAError,)
except ImportError:  # a Python built without it reads no xz layers anyway
    pass
_MAGIC_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x5d\x00\x00")
_MAGIC_ZSTD = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Imported:
    """What was imported, and the warnings the user is shown (one line each)."""

    description: str
    layers: int
    warnings: list[str]


def import_rootfs(source: Path, dest: Path, platform: str | None = None) -> Imported:
    """Unpack the image in source (see aiocontain.images.formats) into the new or empty directory dest."""
    want = platforms.parse(platform) if platform else None
    plan = formats.read(source, want)
    _check_dest(dest)
    work = dest.parent / f".{dest.name}.import-{os.urandom(4).hex()}"
    try:
        work.mkdir(mode=0o700)
    except OSError as err:
        raise AiocontainError(f"cannot write in {dest.parent}: {err.strerror}") from err
    try:
        mode, result = namespace.run(lambda mode: _unpack(plan, work, dest, mode))
    except BaseException:
        if os.path.lexists(work):  # the helper died before its own clean-up: remove the partial tree as it would
            try:
                namespace.run(lambda _mode: _remove(work))
            except AiocontainError:
                pass
        raise
    warnings = []
    if mode == "single":
        warnings.append(
            "no subordinate ids (newuidmap/newgidmap and a range in /etc/subuid and /etc/subgid): "
            "every file belongs to you, and to root in the container"
        )
    devices = result.get("devices", [])
    if devices:
        shown = ", ".join("/" + name for name in devices[:3]) + (", ..." if len(devices) > 3 else "")
        warnings.append(f"skipped {len(devices)} device nodes ({shown}): a rootless user cannot create them")
    xattrs = result.get("xattrs", [])
    if xattrs:
        warnings.append(f"skipped {len(xattrs)} extended attributes this user may not set ({xattrs[0]}, ...)")
    return Imported(plan.description, len(plan.layers), warnings)


def _check_dest(dest: Path) -> None:
    fix = "choose a new or empty directory"
    if dest.is_symlink():
        raise AiocontainError(f"{dest} is a symlink; refusing to import into it", fix=fix)
    if dest.exists():
        if not dest.is_dir():
            raise AiocontainError(f"{dest} exists and is not a directory", fix=fix)
        try:
            entries = os.listdir(dest)
        except OSError as err:
            raise AiocontainError(f"cannot read {dest}: {err.strerror}", fix=fix) from err
        if entries:
            raise AiocontainError(f"{dest} is not empty; refusing to import into it", fix=fix)
    elif not dest.parent.is_dir():
        raise AiocontainError(f"{dest.parent} does not exist", fix=f"create it: mkdir -p {dest.parent}")


def _unpack(plan: Plan, work: Path, dest: Path, mode: str) -> dict[str, Any]:
    """In the mapped child: every layer into work, then work renamed to dest; on any failure, work removed."""
    try:
        root_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        tree = Tree(root_fd, chown=mode != "single")
        try:
            for layer in plan.layers:
                _apply(tree, layer, dest)
            tree.finish()
        finally:
            tree.close()
            os.close(root_fd)
        try:
            os.rename(work, dest)
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise AiocontainError(f"{dest} is not empty; refusing to import into it") from err
            raise AiocontainError(f"cannot rename the import to {dest}: {err.strerror}") from err
    except BaseException:
        _remove(work)
        raise
    return {"devices": tree.devices_skipped, "xattrs": tree.xattrs_skipped}


def _remove(work: Path) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    return {}


def _apply(tree: Tree, layer: Layer, dest: Path) -> None:
    """One layer, its digest checked as it is read; every failure is one line naming the layer."""
    source = layer.path
    try:
        with layer.open() as raw:
            expected = layer.digest or layer.diff_id
            reader = _Digesting(raw, expected.partition(":")[0] if expected else None)
            head = reader.peek(4)
            if head == _MAGIC_ZSTD and not formats.ZSTD_READABLE:
                raise formats.zstd_error(f"{source}: {layer.label} is zstd-compressed")
            tree.start_layer()
            with tarfile.open(fileobj=reader, mode="r|*") as tar:  # type: ignore[call-overload]
                _entries(tar, tree, layer, dest)
            reader.drain()
    except AiocontainError:
        raise
    except _READ_ERRORS as err:
        raise formats.corrupt(source, f"{layer.label}: {err}") from err
    except OSError as err:  # reading the source itself failed
        raise formats.corrupt(source, f"{layer.label}: {err}") from err
    _verify(reader, layer, source)


def _entries(tar: tarfile.TarFile, tree: Tree, layer: Layer, dest: Path) -> None:
    for member in _members(tar):
        try:
            tree.add(member, tar)
        except Refused as err:
            raise AiocontainError(f"refusing {layer.label} of {layer.path}: {err.message}") from err
        except OSError as err:
            raise _write_error(err, member.name, dest) from err


def _members(tar: tarfile.TarFile) -> Any:
    iterator = iter(tar)
    while True:
        try:
            member = next(iterator)
        except StopIteration:
            return
        except OSError as err:  # bz2 and friends report bad data as OSError: it is the archive, not a write
            raise Unreadable(str(err)) from err
        yield member


def _write_error(err: OSError, name: str, dest: Path) -> AiocontainError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return AiocontainError(
            f"no space left for {dest} (writing {name}); nothing was imported",
            fix="free some space, or import somewhere else",
        )
    return AiocontainError(f"cannot write {name} in {dest}: {err.strerror}")


def _verify(reader: _Digesting, layer: Layer, source: Path) -> None:
    expected = layer.digest
    if expected is None and layer.diff_id is not None and not reader.head.startswith(_MAGIC_COMPRESSED):
        expected = layer.diff_id  # stored uncompressed: the bytes are the tar its diff_id names
    if expected is None:
        return
    algorithm, _, hexdigest = expected.partition(":")
    actual = reader.hexdigest(algorithm)
    if actual is not None and actual != hexdigest:
        raise formats.corrupt(source, f"{layer.label} does not match its digest {expected}")


class _Digesting:
    """A layer's bytes as tarfile reads them, hashed on the way with the algorithm of its digest."""

    def __init__(self, raw: IO[bytes], algorithm: str | None) -> None:
        self._raw = raw
        self._hashes = {algorithm: hashlib.new(algorithm)} if algorithm else {}
        self._pending = b""
        self.head = b""

    def peek(self, size: int) -> bytes:
        self._pending = self._read(size)
        self.head = self._pending
        return self.head

    def _read(self, size: int) -> bytes:
        data = self._raw.read(size)
        for digest in self._hashes.values():
            digest.update(data)
        return data

    def read(self, size: int = -1) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            if size < 0 or size > len(data):
                data += self._read(-1 if size < 0 else size - len(data))
            return data
        return self._read(size)

    def drain(self) -> None:
        """Read what tarfile left (the end-of-archive blocks, padding), so the digest covers every byte."""
        while self.read(1 << 20):
            pass

    def hexdigest(self, algorithm: str) -> str | None:
        digest = self._hashes.get(algorithm)
        return digest.hexdigest() if digest is not None else None
