"""Layers applied to a directory through file descriptors, so that no entry can write outside it.

Every path is walked one component at a time from the root's fd with ``O_NOFOLLOW``: an entry whose name is
absolute or has a ``..`` component, or whose parent is a symlink (absolute or relative, made by this layer or
an earlier one), is refused, as is a hard link to such a path. New files are created with ``O_EXCL`` after
what was there is removed, never opened through it.

Layers follow the OCI image spec: ``.wh.NAME`` removes NAME of the layers below, ``.wh..wh..opq`` empties its
directory of what the layers below put there; what the same layer adds stays. Ownership is applied as the tar
says (the caller runs this inside a user namespace mapped as the containers' is), modes after it (chown
clears set-id bits), file capabilities and other extended attributes last; directory times at the very end,
since every entry added below a directory changes its mtime. Device nodes a user namespace cannot make are
skipped and counted, as rootless podman skips them.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from typing import IO, Any

from aiocontain.errors import AiocontainError

OPAQUE = ".wh..wh..opq"
WHITEOUT = ".wh."
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_CACHE_SIZE = 64


class Refused(AiocontainError):
    """An entry that would write outside the target, or through a symlink."""


class Unreadable(Exception):
    """The layer's data could not be read: a corrupt or truncated archive (never a write error)."""


def parts_of(name: str, what: str) -> tuple[str, ...]:
    """A tar name as path components under the root, refusing absolute names and '..'."""
    if name.startswith("/"):
        raise Refused(f"{what} {name!r} is an absolute path")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise Refused(f"{what} {name!r} has a '..' component")
    return parts


def _ns(mtime: float) -> int:
    return int(mtime) * 1_000_000_000 if float(mtime).is_integer() else int(mtime * 1_000_000_000)


class Tree:
    """A directory being filled, layer after layer, reached only through fds relative to root_fd."""

    def __init__(self, root_fd: int, *, chown: bool) -> None:
        self.root_fd = root_fd
        self.chown = chown
        self.devices_skipped: list[str] = []
        self.xattrs_skipped: list[str] = []
        self._dir_times: dict[tuple[str, ...], int] = {}
        self._root_mode = 0o755
        self._created: set[tuple[str, ...]] = set()  # paths this layer made: its whiteouts must spare them
        self._fds: dict[tuple[str, ...], int] = {}

    def close(self) -> None:
        self._forget()

    def start_layer(self) -> None:
        self._created = set()

    # -- walking ------------------------------------------------------------------------------------

    def _forget(self) -> None:
        """Drop the cached directory fds (after anything is removed, a cached path may name nothing)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _dir(self, parts: tuple[str, ...], *, create: bool) -> int:
        """An fd of the directory at parts (owned by the cache), walked without following any symlink."""
        if not parts:
            return self.root_fd
        cached = self._fds.get(parts)
        if cached is not None:
            return cached
        parent = self._dir(parts[:-1], create=create)
        name = parts[-1]
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(name, 0o755, dir_fd=parent)  # a parent the tar does not list, as tar makes it
            self._created.add(parts)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            if stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                raise Refused(f"{'/'.join(parts)} is a symlink, and writing through it is refused") from None
            raise Refused(f"{'/'.join(parts)} is not a directory") from None
        self._fds[parts] = fd
        return fd

    def _remove(self, parent_parts: tuple[str, ...], name: str) -> int:
        """Remove whatever is at name (a whole tree for a directory, never following a symlink); returns the
        parent's fd, valid again (removing a directory empties the cache, whose fds may name nothing now)."""
        parent = self._dir(parent_parts, create=True)
        try:
            mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return parent
        if not stat.S_ISDIR(mode):
            os.unlink(name, dir_fd=parent)
            return parent
        self._forget()
        parent = self._dir(parent_parts, create=True)
        shutil.rmtree(name, dir_fd=parent)
        return parent

    # -- entries ------------------------------------------------------------------------------------

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        """Apply one tar entry of the current layer."""
        if len(self._fds) > _CACHE_SIZE:
            self._forget()  # only here, between entries: no fd an entry holds is closed under it
        parts = parts_of(member.name, "the entry")
        if not parts:
            if member.isdir():  # the root itself: its mode and time
                self._root_mode = member.mode & 0o7777
                self._dir_times[()] = _ns(member.mtime)
                self._own(os.fchown, self.root_fd, member)
            return
        parent_parts, name = parts[:-1], parts[-1]
        if any(part.startswith(".wh..wh.") for part in parent_parts):
            return  # aufs's own bookkeeping (.wh..wh.plnk ...), never part of the image
        if name == OPAQUE:
            self._opaque(parent_parts)
            return
        if name.startswith(".wh..wh."):
            return
        if name.startswith(WHITEOUT):
            self._whiteout(parent_parts, name[len(WHITEOUT) :])
            return
        self._dir(parent_parts, create=True)
        self._created.add(parts)
        if member.isdir():
            self._add_dir(parent_parts, name, member)
        elif member.islnk():
            self._add_hard_link(parent_parts, name, member)
        elif member.issym():
            parent = self._remove(parent_parts, name)
            os.symlink(member.linkname, name, dir_fd=parent)
            self._own(os.chown, name, member, dir_fd=parent, follow_symlinks=False)
            os.utime(name, ns=(_ns(member.mtime),) * 2, dir_fd=parent, follow_symlinks=False)
        elif member.ischr() or member.isblk():
            parent = self._remove(parent_parts, name)
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            try:
                os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=parent)
            except PermissionError:
                self.devices_skipped.append("/".join(parts))
                return
            self._finish_node(parent, name, member)
        elif member.isfifo():
            parent = self._remove(parent_parts, name)
            os.mkfifo(name, 0o600, dir_fd=parent)
            self._finish_node(parent, name, member)
        else:  # regular files, and types tar does not know, which POSIX says to read as regular files
            self._add_file(parent_parts, name, member, tar)

    def _add_dir(self, parent_parts: tuple[str, ...], name: str, member: tarfile.TarInfo) -> None:
        parent = self._dir(parent_parts, create=True)
        try:
            is_dir = stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            is_dir = False
        if not is_dir:
            parent = self._remove(parent_parts, name)
            os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            self._metadata(fd, member)
        finally:
            os.close(fd)
        self._dir_times[(*parent_parts, name)] = _ns(member.mtime)

    def _add_file(
        self, parent_parts: tuple[str, ...], name: str, member: tarfile.TarInfo, tar: tarfile.TarFile
    ) -> None:
        parent = self._remove(parent_parts, name)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            source = tar.extractfile(member) if member.size else None
            if source is not None:
                _copy(source, fd)
            self._metadata(fd, member)
            os.utime(fd, ns=(_ns(member.mtime),) * 2)
        finally:
            os.close(fd)

    def _add_hard_link(self, parent_parts: tuple[str, ...], name: str, member: tarfile.TarInfo) -> None:
        target = parts_of(member.linkname, f"the hard link {member.name!r} to")
        if not target or target == (*parent_parts, name):
            raise Refused(f"the hard link {member.name!r} points at {member.linkname!r}")
        try:
            os.stat(target[-1], dir_fd=self._dir(target[:-1], create=False), follow_symlinks=False)
        except FileNotFoundError:
            raise Refused(
                f"the hard link {member.name!r} points at {member.linkname!r}, which the image does not have"
            ) from None
        parent = self._remove(parent_parts, name)
        target_parent = self._dir(target[:-1], create=False)
        os.link(target[-1], name, src_dir_fd=target_parent, dst_dir_fd=parent, follow_symlinks=False)

    def _finish_node(self, parent: int, name: str, member: tarfile.TarInfo) -> None:
        """Owner, mode and time of a node just made at name (a device or fifo: nothing to open and write)."""
        self._own(os.chown, name, member, dir_fd=parent, follow_symlinks=False)
        os.chmod(name, member.mode & 0o7777, dir_fd=parent)  # follows name, which is the node just made
        os.utime(name, ns=(_ns(member.mtime),) * 2, dir_fd=parent, follow_symlinks=False)

    def _own(self, chown: Any, target: int | str, member: tarfile.TarInfo, **kwargs: Any) -> None:
        """chown as the tar says; an id the namespace does not map is one line naming it."""
        if not self.chown:
            return
        try:
            chown(target, member.uid, member.gid, **kwargs)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            raise Refused(
                f"{member.name} belongs to uid {member.uid}, gid {member.gid}, beyond the ids mapped for you "
                "(0 and your subordinate ids)"
            ) from None

    def _metadata(self, fd: int, member: tarfile.TarInfo) -> None:
        self._own(os.fchown, fd, member)
        os.fchmod(fd, member.mode & 0o7777)
        for key, value in member.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                attribute = key[len("SCHILY.xattr.") :]
                try:
                    os.setxattr(fd, attribute, value.encode("utf-8", "surrogateescape"))
                except OSError as err:
                    if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    self.xattrs_skipped.append(f"{member.name} {attribute}")

    # -- whiteouts ----------------------------------------------------------------------------------

    def _whiteout(self, parent_parts: tuple[str, ...], name: str) -> None:
        if name in ("", ".", ".."):
            raise Refused(f"the whiteout {'/'.join((*parent_parts, WHITEOUT + name))!r} names no file")
        if (*parent_parts, name) in self._created:
            return  # a whiteout hides only what the layers below have
        try:
            self._dir(parent_parts, create=False)
        except FileNotFoundError:
            return
        self._remove(parent_parts, name)

    def _opaque(self, parts: tuple[str, ...]) -> None:
        for name in os.listdir(self._dir(parts, create=True)):
            if (*parts, name) not in self._created:
                self._remove(parts, name)

    # -- the end ------------------------------------------------------------------------------------

    def finish(self) -> None:
        """Directory times (deepest first, so setting one does not change its parent's) and the root's mode."""
        for parts in sorted(self._dir_times, key=len, reverse=True):
            if len(self._fds) > _CACHE_SIZE:
                self._forget()
            try:
                fd = self._dir(parts, create=False)
            except (FileNotFoundError, Refused):
                continue  # removed or replaced by a later layer
            os.utime(fd, ns=(self._dir_times[parts],) * 2)
        os.fchmod(self.root_fd, self._root_mode)
        self._forget()


def _copy(source: IO[bytes], fd: int) -> None:
    while True:
        try:
            chunk = source.read(_CHUNK)
        except (tarfile.TarError, OSError, EOFError, ValueError) as err:
            raise Unreadable(str(err)) from err
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
