"""``--init``'s PID 1: the host's static catatonit (podman's init), found here and bind-mounted read-only.

catatonit rather than an init of our own: PID 1 is then a small static binary
with the container's environment only, not a fork of the runtime's Python (whose
/proc/1/exe and /proc/1/environ would show the host's interpreter and the
caller's whole environment). It reaps through a signalfd, with no timer, and
forwards every signal to the command but the terminal's stop signals (SIGTSTP,
SIGTTIN, SIGTTOU): those it drops, and it starts the command with them blocked,
so that neither a stop sent to the container nor a terminal's ^Z leaves a
command stopped with nothing inside to continue it. (tini passes them on and
unblocks them: the command stops.) The same binary works under ``podman run
--init``, so the container sees what it would see there.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from aiocontain.elf import elf_interpreter
from aiocontain.errors import AiocontainError, HostPrerequisiteError

# podman's own place for it comes first, then PATH.
_PODMAN_PATH = "/usr/libexec/podman/catatonit"
_FIX = "sudo apt-get install catatonit"


def find(init_path: Path | None = None) -> str:
    """The host path of the init to run as PID 1: ``init_path`` (``--init-path``), else catatonit."""
    if init_path is not None:
        path = str(init_path)
        problem = _unusable(path)
        if problem:
            raise AiocontainError(f"--init-path {path} {problem}", fix=f"give a static init such as catatonit ({_FIX})")
        return path
    for candidate in (_PODMAN_PATH, shutil.which("catatonit")):
        if candidate and not _unusable(candidate):
            return candidate
    raise HostPrerequisiteError("--init needs catatonit, a small static init, and it is not installed", fix=_FIX)


def _unusable(path: str) -> str | None:
    """Why path cannot be the container's PID 1, or None. It must be static: after pivot_root nothing of the
    host's is left to load its libraries from."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot be used: {exc.strerror}"
    if not stat.S_ISREG(mode) or not os.access(path, os.X_OK):
        return "is not an executable file"
    if elf_interpreter(Path(path)) is not None:
        return "is dynamically linked: the container cannot load its libraries"
    return None
