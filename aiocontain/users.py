"""``--user`` and ``--group-add``: who the command runs as, resolved in the container's own /etc/passwd and group.

The rules are runc's (github.com/moby/sys/user GetExecUser, which podman uses):
``USER[:GROUP]``, each a name or a number; a number need not be in the files (its
home is then ``/`` and its group 0); names must be. Without an explicit group the
user's passwd group is primary and every group that lists the user's name adds a
supplementary one; the primary group is always among the supplementary groups, as
podman puts it there, and ``--group-add`` adds more.

The files are read from the rootfs on disk by the runtime, before anything starts,
with symlinks resolved inside the rootfs (never out of it) and only regular files
opened. Every id must be mapped in the container: uid 0 alone without subordinate
ids, 0..N with N of them (``forkserver.userns.planned``); anything else is refused
here, in one line, instead of failing in PID 1.

Like podman, a uid or an explicit gid missing from the files gets an entry in the
container's copy of them (``id`` then names them); unlike podman 4.3, which writes
that entry into the rootfs on disk, the copy lives in the runtime directory and is
bind-mounted over /etc/passwd or /etc/group for this container only.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiocontain import elf, syscalls
from aiocontain.errors import AiocontainError
from aiocontain.forkserver.userns import IdMapping

MAX_ID = 2**31 - 1  # runc's range for uids and gids
_MAX_FILE = 16 << 20  # an /etc/passwd larger than this is not one


@dataclass(frozen=True)
class ExecUser:
    """The command's identity: setgroups(groups), setresgid(gid), setresuid(uid); HOME."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    passwd_line: str | None = None  # an entry the container's /etc/passwd lacks, added to its copy
    group_line: str | None = None


@dataclass(frozen=True)
class _Entry:
    name: str
    id: int
    gid: int  # passwd: the primary group; group: unused
    home: str
    members: tuple[str, ...]


def resolve(user: str | None, group_add: Sequence[str], rootfs: Path, mapping: IdMapping) -> ExecUser:
    """Resolve ``--user`` and ``--group-add`` in rootfs; AiocontainError (one line) when it cannot be done.
    user None (``--group-add`` alone): root, with only the added groups, as podman gives it."""
    if user is None:
        groups = tuple(dict.fromkeys(_added_group(_read(rootfs, "/etc/group", 4), item) for item in group_add))
        _check_mapped("--group-add", 0, 0, groups, mapping)
        return ExecUser(0, 0, groups, "/root")
    user_arg, _, group_arg = user.partition(":")
    passwd = _read(rootfs, "/etc/passwd", 7)
    groups_file = _read(rootfs, "/etc/group", 4)
    uid_number = _number(user_arg, user)
    matched: _Entry | None = None
    passwd_line = None
    if user_arg == "":
        matched = next((entry for entry in passwd if entry.id == 0), None)
        uid, gid, home = 0, 0, "/root" if matched is None else matched.home
    else:
        matched = next(
            (e for e in passwd if (e.id == uid_number if uid_number is not None else e.name == user_arg)), None
        )
        if matched is not None:
            uid, gid, home = matched.id, matched.gid, matched.home
        elif uid_number is None:
            raise AiocontainError(
                f"unable to find user {user_arg}: no matching entry in the container's /etc/passwd",
                fix="give a uid, or a user the rootfs's etc/passwd has",
            )
        else:
            uid, gid, home = uid_number, 0, "/"
            passwd_line = f"{uid}:*:{uid}:{gid}:container user:/:/bin/sh\n"  # podman's entry
    group_line = None
    supplementary: list[int] = []
    if group_arg:
        gid_number = _number(group_arg, user)
        found = _find_group(groups_file, group_arg, gid_number)
        if found is not None:
            gid = found
        elif gid_number is None:
            raise AiocontainError(
                f"unable to find group {group_arg}: no matching entry in the container's /etc/group",
                fix="give a gid, or a group the rootfs's etc/group has",
            )
        else:
            gid = gid_number
            group_line = f"{gid}:x:{gid}:{user_arg}\n"
            if passwd_line is not None:
                passwd_line = f"{uid}:*:{uid}:{gid}:container user:/:/bin/sh\n"
    elif ":" not in user and matched is not None:
        supplementary = [entry.id for entry in groups_file if matched.name in entry.members]
    for item in group_add:
        supplementary.append(_added_group(groups_file, item))
    groups = tuple(dict.fromkeys([gid, *supplementary]))  # the primary first, as podman lists it; no repeats
    _check_mapped(f"--user {user}", uid, gid, groups, mapping)
    return ExecUser(uid, gid, groups, home or "/", passwd_line, group_line)


def _number(text: str, whole: str) -> int | None:
    """An id given as a number (range-checked), None for a name."""
    try:
        value = int(text)
    except ValueError:
        return None
    if not text.lstrip("-").isdigit() or not 0 <= value <= MAX_ID:
        raise AiocontainError(f"invalid --user {whole!r}: uids and gids must be in range 0-{MAX_ID}")
    return value


def _find_group(groups: list[_Entry], name: str, number: int | None) -> int | None:
    for entry in groups:
        if (entry.id == number) if number is not None else (entry.name == name):
            return entry.id
    return None


def _added_group(groups: list[_Entry], item: str) -> int:
    if item == "keep-groups":
        raise AiocontainError(
            "--group-add keep-groups is not supported: the host's groups are never passed into a container",
            fix="name the container's groups instead: --group-add GROUP",
        )
    try:
        number = int(item)
    except ValueError:
        number = None
    if number is not None and not 0 <= number <= MAX_ID:
        raise AiocontainError(f"invalid --group-add {item!r}: gids must be in range 0-{MAX_ID}")
    found = _find_group(groups, item, number)
    if found is not None:
        return found
    if number is None:
        raise AiocontainError(
            f"unable to find group {item}: no matching entry in the container's /etc/group",
            fix="give a gid, or a group the rootfs's etc/group has",
        )
    return number


def _check_mapped(what: str, uid: int, gid: int, groups: tuple[int, ...], mapping: IdMapping) -> None:
    """Every id must exist in the container's user namespace: refuse here, not in PID 1's setresuid."""
    unmapped = [f"uid {uid}"] if uid > mapping.highest_uid else []
    unmapped += [f"gid {g}" for g in dict.fromkeys((gid, *groups)) if g > mapping.highest_gid]
    if not unmapped:
        return
    if mapping.mode == "single":
        raise AiocontainError(
            f"{what}: {', '.join(unmapped)} not mapped in the container: without subordinate ids "
            "(newuidmap and a range in /etc/subuid and /etc/subgid) only uid 0, you, exists there",
            fix="sudo apt-get install uidmap && sudo usermod --add-subuids 100000-165535 "
            "--add-subgids 100000-165535 $USER (see aiocontain doctor), or run as root inside",
        )
    raise AiocontainError(
        f"{what}: {', '.join(unmapped)} not mapped in the container: your subordinate ids map "
        f"uids 0-{mapping.highest_uid} and gids 0-{mapping.highest_gid}",
        fix="use ids within that range, or give the user a larger range in /etc/subuid and /etc/subgid",
    )


def _read(rootfs: Path, path: str, fields: int) -> list[_Entry]:
    """The entries of the container's passwd (7 fields) or group (4) file; none when it is missing.

    Read as the container would see it, but safely: symlinks resolved within the rootfs (``read_text``)."""
    text = read_text(rootfs, path)
    entries = []
    for line in (text or "").splitlines():
        parts = line.split(":")
        if len(parts) < fields or line.startswith("#"):
            continue  # malformed lines are skipped, as libc and runc skip them
        try:
            number = int(parts[2])
            gid = int(parts[3]) if fields == 7 else number
        except ValueError:
            continue
        members = tuple(m for m in parts[3].split(",") if m) if fields == 4 else ()
        home = parts[5] if fields == 7 else ""
        entries.append(_Entry(parts[0], number, gid, home, members))
    return entries


def read_text(rootfs: Path, path: str) -> str | None:
    """A small text file of the container's (/etc/passwd, /etc/group), None when it is missing or no file.

    Opened by the kernel within rootfs (openat2's RESOLVE_IN_ROOT): a running container's root
    (/proc/PID/root) is the container's to change while we look, and a path checked first and opened after
    could be turned into a symlink out of it meanwhile. Where openat2 is missing, the path is resolved here.
    """
    try:
        root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = syscalls.open_in_root(root, path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        fd = _open_resolved_here(rootfs, path) if exc.errno == errno.ENOSYS else -1
    finally:
        os.close(root)
    if fd < 0:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None  # a FIFO there would block the runtime
        data = os.read(fd, _MAX_FILE)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data.decode(errors="replace")


def _open_resolved_here(rootfs: Path, path: str) -> int:
    host_path = elf.resolve_in_rootfs(rootfs, path)
    if host_path is None:
        return -1
    try:
        return os.open(host_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return -1


def etc_copies(user: ExecUser, rootfs: Path) -> dict[str, str]:
    """The container's passwd and group with the entries --user needs added (name -> content), for the runtime
    to write and PID 1 to bind-mount; only over a regular file of the rootfs's own etc/ (no symlink on the way,
    which the mount would replace), so that nothing in the rootfs is created or changed."""
    copies = {}
    for name, line in (("passwd", user.passwd_line), ("group", user.group_line)):
        plain = elf.resolve_in_rootfs(rootfs, f"/etc/{name}") == rootfs / "etc" / name
        text = read_text(rootfs, f"/etc/{name}") if line is not None and plain else None
        if text is not None and line is not None:
            copies[name] = text + ("" if text.endswith("\n") or not text else "\n") + line
    return copies
