"""The fork server's user namespace, mapped once from outside by its owner.

As podman does for its pause process: where newuidmap/newgidmap exist and the
user has subordinate ids, 0 maps to the user and 1..N to the subordinate range,
so that a container can have more than one user; otherwise a single mapping,
with setgroups denied (the kernel requires that before an unprivileged process
writes gid_map). Each container's own user namespace is nested in this one and
mapped by the fork server (``aiocontain.child.zygote``), with no helper.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aiocontain import subids
from aiocontain.errors import AiocontainError

HELPER_TIMEOUT = 10.0


@dataclass(frozen=True)
class IdMapping:
    """How the fork server's namespace, and so every container's, is mapped: "subordinate" or "single"."""

    mode: str
    uid_range: tuple[int, int] | None = None  # the subordinate (start, count) mapped to 1..count
    gid_range: tuple[int, int] | None = None


def map_from_outside(pid: int) -> IdMapping:
    """Write the uid/gid maps of process pid's (new, empty) user namespace as the invoking user."""
    uid, gid = os.getuid(), os.getgid()
    uid_ranges = subids.ranges(uid, Path("/etc/subuid"))
    gid_ranges = subids.ranges(uid, Path("/etc/subgid"))
    helpers = shutil.which("newuidmap"), shutil.which("newgidmap")
    if uid != 0 and uid_ranges and gid_ranges and helpers[0] and helpers[1]:
        _helper(helpers[0], pid, uid, uid_ranges[0])
        _helper(helpers[1], pid, gid, gid_ranges[0])
        return IdMapping("subordinate", uid_ranges[0], gid_ranges[0])
    proc = Path(f"/proc/{pid}")
    (proc / "setgroups").write_text("deny")
    (proc / "uid_map").write_text(f"0 {uid} 1\n")
    (proc / "gid_map").write_text(f"0 {gid} 1\n")
    return IdMapping("single")


def namespace_error(message: str) -> AiocontainError:
    """The one line for a failed unshare of the namespaces (by the fork server or a container's child)."""
    if "unshare" in message:
        return AiocontainError(
            f"cannot create the container's namespaces: {message}",
            fix="enable unprivileged user namespaces: sudo sysctl -w kernel.unprivileged_userns_clone=1 "
            "user.max_user_namespaces=28633 (and kernel.apparmor_restrict_unprivileged_userns=0 where it exists)",
        )
    return AiocontainError(f"container set-up failed: {message}")


def _helper(tool: str, pid: int, outside: int, extra: tuple[int, int]) -> None:
    argv = [tool, str(pid), "0", str(outside), "1", "1", str(extra[0]), str(extra[1])]
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=HELPER_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise AiocontainError(f"{os.path.basename(tool)} did not finish within {HELPER_TIMEOUT:g}s") from None
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise AiocontainError(
            f"{os.path.basename(tool)} failed: {detail[-1] if detail else f'exit status {done.returncode}'}",
            fix="check the user's ranges in /etc/subuid and /etc/subgid (aiocontain doctor)",
        )
