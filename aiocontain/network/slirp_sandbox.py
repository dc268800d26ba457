"""Which of its own sandbox options a slirp4netns build offers (stdlib only: ``doctor`` reports them too).

``--enable-sandbox``: a mount namespace of its own, pivoted into an empty
read-only root with only /etc and /run, every capability dropped.
``--enable-seccomp``: a filter of the system calls it needs. podman turns on both
where the build has them; aiocontain does the same.
"""

from __future__ import annotations

import functools
import subprocess

OPTIONS = ("--enable-sandbox", "--enable-seccomp")


@functools.cache
def options(binary: str) -> tuple[str, ...]:
    """The sandbox options this slirp4netns offers, read from its ``--help`` once a process (a few ms)."""
    try:
        text = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(option for option in OPTIONS if option in text)
