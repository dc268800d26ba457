"""Mounts the user asks for: ``-v``, ``--mount`` and ``--tmpfs`` in podman's syntax, and ``--rootfs DIR:O``.

Parsed and checked on the runtime side, before anything starts (a bad one is one
line, exit 125); the child gets each as a plain dict of the mount(2) arguments
it needs (``Mount.config``), so it imports nothing but the standard library.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiocontain import syscalls as sc
from aiocontain.errors import AiocontainError

if TYPE_CHECKING:
    import argparse

BIND = "bind"
TMPFS = "tmpfs"
OVERLAY_KERNEL = (5, 11)  # overlayfs mountable in a user namespace

_PROPAGATION = sc.PROPAGATION
# option -> (flag, set it): a later option wins over an earlier one, as in mount(8)
_FLAGS = {
    "nosuid": (sc.MS_NOSUID, True),
    "suid": (sc.MS_NOSUID, False),
    "nodev": (sc.MS_NODEV, True),
    "dev": (sc.MS_NODEV, False),
    "noexec": (sc.MS_NOEXEC, True),
    "exec": (sc.MS_NOEXEC, False),
}
_IGNORED = {"z", "Z", "bind", "rbind", "tmpcopyup", "notmpcopyup", "copy", "nocopy"}  # no SELinux, no images
_TMPFS_DATA = ("size", "mode", "nr_inodes", "uid", "gid")
VOLUME_OPTIONS = "ro, rw, z, Z, nosuid, nodev, noexec (suid, dev, exec), rprivate, rshared, rslave (and unrecursive)"


@dataclass
class Mount:
    """A mount in the container: a host file or directory bound at ``target`` (``type="bind"``), or a fresh
    tmpfs there (``type="tmpfs"``, no source). ``options`` are podman's: nosuid, nodev, noexec, a propagation
    (rprivate, rshared, ...), and for a tmpfs size=, mode=, nr_inodes=, uid=, gid=."""

    source: str
    target: str
    readonly: bool = False
    type: str = BIND
    options: tuple[str, ...] = ()

    def check(self) -> None:
        """Refuse what cannot be mounted, in one line naming it."""
        if self.type not in (BIND, TMPFS):
            raise AiocontainError(f"unsupported mount type {self.type!r}", fix="use type=bind or type=tmpfs")
        if not self.target.startswith("/"):
            raise AiocontainError(f"mount target {self.target!r} is not an absolute path", fix="give a path from /")
        if posixpath.normpath(self.target) == "/" or "\0" in self.target:
            raise AiocontainError(f"cannot mount over {self.target!r}", fix="choose a path below /")
        for option in self.options:
            key = option.partition("=")[0]
            known = key in _FLAGS or key in _PROPAGATION or key in _IGNORED
            if not (known or (self.type == TMPFS and key in _TMPFS_DATA and "=" in option)):
                raise AiocontainError(f"unknown option {option!r} of the mount at {self.target}", fix=_fix(self.type))
        if self.type == BIND:
            try:
                os.stat(self.source)
            except OSError as exc:
                raise AiocontainError(
                    f"cannot bind {self.source} at {self.target}: {exc.strerror}",
                    fix="create it first, or give an existing host path",
                ) from None

    def config(self) -> dict[str, object]:
        """What the container's PID 1 needs: mount(2)'s flags and data, the propagation, whether it is a dir."""
        flags = sc.MS_RDONLY if self.readonly else 0
        if self.type == TMPFS:
            flags |= sc.MS_NOSUID | sc.MS_NODEV  # podman 4's rw,nosuid,nodev; noexec, suid, dev change them
        propagation = 0
        data: list[str] = []
        for option in self.options:
            key = option.partition("=")[0]
            if key in _FLAGS:
                flag, on = _FLAGS[key]
                flags = flags | flag if on else flags & ~flag
            elif key in _PROPAGATION:
                propagation = _PROPAGATION[key]
            elif key in _TMPFS_DATA:
                data.append(option)
        return {
            "type": self.type,
            "source": self.source,
            "target": posixpath.normpath(self.target),
            "flags": flags,
            "data": ",".join(data) or None,
            "propagation": propagation,
            "dir": self.type == TMPFS or os.path.isdir(self.source),
        }


def _fix(kind: str) -> str:
    if kind == TMPFS:
        return "use size=, mode=, nr_inodes=, uid=, gid=, ro, rw, nosuid, nodev, noexec (suid, dev, exec)"
    return f"use {VOLUME_OPTIONS}"


def _split_options(text: str) -> tuple[bool, tuple[str, ...]]:
    """ro/rw out of a comma-separated option list (the last wins), the others kept in order."""
    readonly = False
    kept: list[str] = []
    for option in filter(None, text.split(",")):
        if option in ("ro", "rw"):
            readonly = option == "ro"
        else:
            kept.append(option)
    return readonly, tuple(kept)


def volume(text: str) -> Mount:
    """``-v HOST:CONTAINER[:OPTIONS]``. podman's named and anonymous volumes need its volume store: refused."""
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 3 or not parts[0] or not parts[1]:
        raise AiocontainError(
            f"invalid volume {text!r}",
            fix="use -v HOST-PATH:CONTAINER-PATH[:OPTIONS] (named volumes are not supported)",
        )
    host, target = parts[0], parts[1]
    if not host.startswith(("/", ".")):
        raise AiocontainError(
            f"invalid volume {text!r}: {host!r} is not a host path and named volumes are not supported",
            fix=f"give an absolute or ./relative host path, e.g. -v ./{host}:{target}",
        )
    readonly, options = _split_options(parts[2] if len(parts) == 3 else "")
    return Mount(os.path.abspath(host), target, readonly, BIND, options)


def mount(text: str) -> Mount:
    """``--mount type=bind|tmpfs,source=...,target=...[,readonly][,...]``, podman's keys."""
    fields: dict[str, str] = {}
    options: list[str] = []
    readonly = False
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if key in ("type", "source", "src", "target", "destination", "dst"):
            fields[{"src": "source", "destination": "target", "dst": "target"}.get(key, key)] = value
        elif key in ("readonly", "ro"):
            if value not in ("", "true", "false", "1", "0"):
                raise AiocontainError(f"invalid --mount {key}={value!r}", fix=f"use {key}, {key}=true or {key}=false")
            readonly = value in ("", "true", "1")
        elif key == "rw" and not sep:
            readonly = False
        elif key in ("bind-propagation", "tmpfs-size", "tmpfs-mode") and sep:
            options.append({"bind-propagation": "", "tmpfs-size": "size=", "tmpfs-mode": "mode="}[key] + value)
        elif key in ("relabel", "bind-nonrecursive", "notmpcopyup", "tmpcopyup") or (not sep and key):
            options.append(key)  # a bare option (nosuid, z, ...) is checked with the mount
        else:
            raise AiocontainError(
                f"unknown --mount key {key!r}",
                fix="use type=bind|tmpfs, source=, target=, readonly, bind-propagation=, tmpfs-size=, tmpfs-mode=",
            )
    kind = fields.get("type")
    if kind is None:
        raise AiocontainError(f"--mount {text!r} has no type", fix="add type=bind or type=tmpfs")
    if "target" not in fields or not fields["target"]:
        raise AiocontainError(f"--mount {text!r} has no target", fix="add target=CONTAINER-PATH")
    source = fields.get("source", "")
    if kind == BIND:
        if not source:
            raise AiocontainError(f"--mount {text!r} has no source", fix="add source=HOST-PATH")
        source = os.path.abspath(source)
    options = [o for o in options if o not in ("relabel", "bind-nonrecursive")]  # no SELinux; binds recurse
    return Mount(source, fields["target"], readonly, kind, tuple(options))


def tmpfs(text: str) -> Mount:
    """``--tmpfs PATH[:OPTIONS]``: by default rw,nosuid,nodev, as podman 4 mounts it."""
    target, _, rest = text.partition(":")
    readonly, options = _split_options(rest)
    return Mount("tmpfs", target, readonly, TMPFS, options)


def check(mounts: Sequence[Mount]) -> None:
    """Every mount, and no two at one place (podman refuses that too)."""
    seen: set[str] = set()
    for item in mounts:
        item.check()
        target = posixpath.normpath(item.target)
        if target in seen:
            raise AiocontainError(f"two mounts at {target}", fix="give each mount a target of its own")
        seen.add(target)


def split_rootfs(path: Path | str) -> tuple[Path, bool]:
    """``--rootfs DIR:O``: the directory and whether it is the lower layer of a throwaway overlay."""
    text = str(path)
    if text.endswith(":O"):
        return Path(text[:-2]), True
    return Path(text), False


def overlay_supported(release: str | None = None) -> bool:
    """Whether this kernel lets an unprivileged user namespace mount overlayfs (Linux 5.11 and later)."""
    release = release or os.uname().release
    numbers = []
    for part in release.split("-")[0].split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit()) or "0"
        numbers.append(int(digits))
    return tuple(numbers) >= OVERLAY_KERNEL


def check_overlay() -> None:
    if not overlay_supported():
        raise AiocontainError(
            f"--rootfs DIR:O needs overlayfs in a user namespace, which Linux {os.uname().release} lacks (5.11+)",
            fix="use --rootfs DIR without :O, or --read-only, or a kernel 5.11 or newer",
        )


class _ReadOnlyRoot(Protocol):
    """What read_only_tmpfs reads of a ContainerSpec (not imported: the spec imports this module)."""

    read_only: bool
    read_only_tmpfs: bool
    mounts: Sequence[Mount]


def read_only_tmpfs(spec: _ReadOnlyRoot) -> list[Mount]:
    """``--read-only``'s tmpfs at /tmp, /run and /var/tmp (podman's), where the spec mounts nothing itself."""
    if not (spec.read_only and spec.read_only_tmpfs):
        return []
    taken = {posixpath.normpath(m.target) for m in spec.mounts}
    wanted = {"/tmp": "mode=1777", "/run": "mode=1777", "/var/tmp": "mode=1777"}  # podman's, all three
    return [
        Mount("tmpfs", path, False, TMPFS, ("nosuid", "nodev", "exec", mode))
        for path, mode in wanted.items()
        if path not in taken
    ]


def ordered(mounts: Sequence[Mount]) -> list[dict[str, object]]:
    """The child's mount list: parents before what is mounted inside them (podman sorts by depth too)."""
    configs = [m.config() for m in mounts]
    return sorted(configs, key=lambda c: str(c["target"]).count("/"))


def overlay_dir(runtime_dir: Path) -> str:
    """Where PID 1 mounts the tmpfs that holds the overlay's upper and work directories. Only the mount point
    is on the host, in the runtime directory: the tmpfs lives in the container's mount namespace and goes
    with it, even when the runtime is SIGKILLed."""
    path = runtime_dir / "overlay"
    path.mkdir(mode=0o700)
    return str(path)


def spec_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The CLI's --rootfs, -v, --mount, --tmpfs, --read-only and --read-only-tmpfs as ContainerSpec fields."""
    rootfs, overlay = split_rootfs(args.rootfs) if args.rootfs is not None else (None, False)
    wanted = [volume(v) for v in args.volume] + [mount(m) for m in args.mount] + [tmpfs(t) for t in args.tmpfs]
    return {
        "rootfs": rootfs,
        "rootfs_overlay": True if overlay else None if rootfs is None else False,
        "mounts": wanted,
        "read_only": args.read_only,
        "read_only_tmpfs": args.read_only_tmpfs,
    }
