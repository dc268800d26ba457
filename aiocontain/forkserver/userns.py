"""The fork server's user namespace, mapped once from outside by its owner.

As podman does for its pause process: where newuidmap/newgidmap exist and the
user has subordinate ids, 0 maps to the user and 1..N to the subordinate range,
so that a container can have more than one user; otherwise a single mapping,
with setgroups denied (the kernel requires that before an unprivileged process
writes gid_map). Each container's own user namespace is nested in this one and
mapped by the fork server (``aiocontain.child.forkserver``), with no helper.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aiocontain import fdlimit, messages, subids
from aiocontain.errors import AiocontainError, HostPrerequisiteError, SetupError

HELPER_TIMEOUT = 10.0


@dataclass(frozen=True)
class IdMapping:
    """How the fork server's namespace, and so every container's, is mapped: "subordinate" or "single"."""

    mode: str
    uid_range: tuple[int, int] | None = None  # the subordinate (start, count) mapped to 1..count
    gid_range: tuple[int, int] | None = None

    @property
    def highest_uid(self) -> int:
        """The highest uid mapped inside (0 alone without subordinate ids)."""
        return self.uid_range[1] if self.uid_range is not None else 0

    @property
    def highest_gid(self) -> int:
        return self.gid_range[1] if self.gid_range is not None else 0


def planned() -> IdMapping:
    """How map_from_outside will map the fork server's namespace, known before anything starts."""
    uid = os.getuid()
    uid_ranges = subids.ranges(uid, Path("/etc/subuid"))
    gid_ranges = subids.ranges(uid, Path("/etc/subgid"))
    if uid != 0 and uid_ranges and gid_ranges and shutil.which("newuidmap") and shutil.which("newgidmap"):
        return IdMapping("subordinate", uid_ranges[0], gid_ranges[0])
    return IdMapping("single")


def map_from_outside(pid: int) -> IdMapping:
    """Write the uid/gid maps of process pid's (new, empty) user namespace as the invoking user."""
    uid, gid = os.getuid(), os.getgid()
    plan = planned()
    if plan.uid_range is not None and plan.gid_range is not None:
        _run_helpers(
            [
                [str(shutil.which("newuidmap")), str(pid), "0", str(uid), "1", "1", *map(str, plan.uid_range)],
                [str(shutil.which("newgidmap")), str(pid), "0", str(gid), "1", "1", *map(str, plan.gid_range)],
            ]
        )
        return plan
    proc = Path(f"/proc/{pid}")
    (proc / "setgroups").write_text("deny")
    (proc / "uid_map").write_text(f"0 {uid} 1\n")
    (proc / "gid_map").write_text(f"0 {gid} 1\n")
    return IdMapping("single")


def namespace_error(failure: messages.Failed) -> AiocontainError:
    """The one line for a Failed from the fork server or a container's PID 1 before Ready: a refused unshare or
    clone (STEP_NAMESPACES) is this host's user namespaces; anything else, the container's set-up."""
    if failure.step == messages.STEP_NAMESPACES:
        return HostPrerequisiteError(
            f"cannot create the container's namespaces: {failure.message}",
            fix="enable unprivileged user namespaces: sudo sysctl -w kernel.unprivileged_userns_clone=1 "
            "user.max_user_namespaces=28633 (and kernel.apparmor_restrict_unprivileged_userns=0 where it exists)",
        )
    if (
        failure.errno in fdlimit.EXHAUSTED
    ):  # the fork server's and PID 1's limit is ours: said as our own running out is
        return fdlimit.exhaustion_error(OSError(failure.errno, failure.message))
    return SetupError(f"container set-up failed: {failure.message}")


def _run_helpers(commands: list[list[str]]) -> None:
    """Run the helpers side by side; raise the first failure with its last line of stderr."""
    # Our own /dev/null, not DEVNULL: Popen leaks the one it opens when its stderr pipe then fails (out of fds).
    with open(os.devnull, "r+b") as null:
        running = [subprocess.Popen(argv, stdin=null, stdout=null, stderr=subprocess.PIPE) for argv in commands]
    failure: AiocontainError | None = None
    for argv, helper in zip(commands, running, strict=True):
        tool = os.path.basename(argv[0])
        try:
            _, stderr = helper.communicate(timeout=HELPER_TIMEOUT)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.communicate()
            failure = failure or AiocontainError(f"{tool} did not finish within {HELPER_TIMEOUT:g}s")
            continue
        if helper.returncode != 0 and failure is None:
            detail = stderr.decode(errors="replace").strip().splitlines()
            failure = HostPrerequisiteError(
                f"{tool} failed: {detail[-1] if detail else f'exit status {helper.returncode}'}",
                fix="check the user's ranges in /etc/subuid and /etc/subgid (aiocontain doctor)",
            )
    if failure is not None:
        raise failure
