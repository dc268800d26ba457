"""Paths inside a container's root, opened one component at a time from the root's fd.

Before pivot_root, PID 1 mounts onto places in the root while the host's paths are still in view. A path
resolved first and mounted on afterwards leaves a window: a container that runs already and shares a
volume (or the rootfs) with this one can swap a directory on the way for a symlink to a host path, and the
mount, or a directory or file made for it, lands outside the root. A later mount whose source lies under
where that one landed would then take an attacker's symlink as its source: the host's / bound into the
container (a flaw runc once had). So nothing here is resolved twice. Each component is opened with
O_NOFOLLOW relative to the fd of the directory before it; a symlink is read and its target walked the same
way, from the root's fd when absolute, and '..' never climbs above the root, so symlinks mean what they
will mean inside the container. The result is an fd (``Target``), and a mount goes onto its
``/proc/self/fd`` path: the very directory or file that was opened, wherever it has been renamed to since.
"""

from __future__ import annotations

import errno
import os
import stat

_OPEN = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # the kernel's own limit


def at(fd: int) -> str:
    """The path that names fd's file itself (a magic link: no name on the way is looked up again)."""
    return f"/proc/self/fd/{fd}"


class Target:
    """A file or directory opened inside the root: ``fd`` (O_PATH), and ``parent`` and ``name``, where it was
    found (the directory's fd and the entry's name); ``close`` closes both."""

    def __init__(self, fd: int, parent: int, name: str) -> None:
        self.fd, self.parent, self.name = fd, parent, name

    @property
    def path(self) -> str:
        return at(self.fd)

    @property
    def mode(self) -> int:
        return os.fstat(self.fd).st_mode

    def mounted(self) -> int:
        """An fd (O_PATH) of the file system just mounted on this target, for what must reach that mount and
        not the one below it (a magic link names the file mounted over). Opened again by name from its
        directory: OSError if the name no longer leads to a mount on a file system of its own (something was
        swapped in meanwhile)."""
        fd = os.open(self.name, _OPEN, dir_fd=self.parent)
        if os.fstat(fd).st_dev == os.fstat(self.fd).st_dev:
            os.close(fd)
            raise OSError(errno.EBUSY, "the mount point was replaced while it was being mounted on", self.name)
        return fd

    def close(self) -> None:
        for fd in (self.fd, self.parent):
            os.close(fd)

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def open_root(root: str) -> int:
    """The root's fd, to walk from: the host path the runtime resolved (no symlink in it)."""
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def open_path(root: int, path: str, make: str | None = None) -> Target:
    """path inside the root (root: its fd), every symlink followed as the container will follow it. make:
    None (missing: FileNotFoundError), "dir" (missing directories are made, the last one too) or "file" (the
    last one an empty file); with "dir", what is found at the end must be a directory."""
    parts = [part for part in path.split("/") if part]
    # The directories walked and their names, the root first: '..' pops one, never the root.
    stack, names = [os.dup(root)], ["."]
    links = 0
    try:
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                    names.pop()
                continue
            try:
                fd = _open_or_make(stack[-1], part, None if make is None else make if not parts else "dir")
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                link = os.readlink("", dir_fd=fd)
                os.close(fd)
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                if link.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                        names.pop()
                parts = [p for p in link.split("/") if p] + parts
                continue
            stack.append(fd)
            names.append(part)
            if not stat.S_ISDIR(mode) and (parts or make == "dir"):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        # The last one opened is the target, in the one before it (the root itself: its own parent).
        found = stack.pop()
        try:
            parent = os.dup(stack[-1] if stack else found)
        except BaseException:
            os.close(found)
            raise
        return Target(found, parent, names[-1])
    finally:
        for fd in stack:
            os.close(fd)


def _open_or_make(parent: int, name: str, make: str | None) -> int:
    """name in parent, not followed if a symlink; made first if missing and make says what as. Bounded: a
    co-tenant that keeps removing what is made fails the set-up rather than holding PID 1 in a loop."""
    for _ in range(_MAKE_TRIES):
        try:
            return os.open(name, _OPEN, dir_fd=parent)
        except FileNotFoundError:
            if make is None:
                raise
        try:
            if make == "file":
                flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                os.close(os.open(name, flags, 0o644, dir_fd=parent))
            else:
                os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass  # made meanwhile: open what is there now
    raise OSError(errno.EAGAIN, "it was removed each time it was made", name)


_MAKE_TRIES = 10
