"""Compiled filters kept between runs, so that a CLI run spares loading libseccomp and compiling (~15 ms).

One file a filter under ``$XDG_CACHE_HOME/aiocontain/seccomp`` (``~/.cache``),
named by a hash of everything the program depends on: the profile's bytes, the
capability set, the machine and kernel release. Written to a temporary name and
renamed, so a reader never sees half a file; any failure to read or write only
costs a compilation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection
from pathlib import Path

FORMAT = b"aiocontain-seccomp-2"  # bump when the compiler's output for the same input changes


def key(profile: bytes, caps: Collection[str], machine: str, kernel: str) -> str:
    digest = hashlib.sha256(FORMAT)
    for part in (profile, ",".join(sorted(caps)).encode(), machine.encode(), kernel.encode()):
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()


def directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aiocontain" / "seccomp"


def load(name: str) -> bytes | None:
    try:
        program = (directory() / f"{name}.bpf").read_bytes()
    except OSError:
        return None
    return program if program and len(program) % 8 == 0 else None


def store(name: str, program: bytes) -> None:
    folder = directory()
    temporary = folder / f".{name}.{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary.write_bytes(program)
        temporary.rename(folder / f"{name}.bpf")
    except OSError:
        temporary.unlink(missing_ok=True)
