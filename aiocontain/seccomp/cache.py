"""Compiled filters kept between runs, so that a CLI run spares loading libseccomp and compiling (~15 ms).

One file a filter under ``$XDG_CACHE_HOME/aiocontain/seccomp`` (``~/.cache``),
named by a hash of everything the program depends on: the profile's bytes, the
capability set, the machine and kernel release. Written to a temporary name and
renamed, so a reader never sees half a file; any failure to read or write only
costs a compilation.
"""

from __future__ import annotations

import os

from aiocontain import cachefile

TYPE_CHECKING = False  # neither pathlib nor collections.abc at run time: aiocontain-oci create imports this module
if TYPE_CHECKING:
    from collections.abc import Collection
    from hashlib import sha256
else:
    try:  # the interpreter's own SHA-256: hashlib's would load OpenSSL's libcrypto first (~2-3 ms of each create)
        from _sha256 import sha256  # Python 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # Python 3.12 on
        except ImportError:
            from hashlib import sha256

FORMAT = b"aiocontain-seccomp-2"  # bump when the compiler's output for the same input changes


def key(profile: bytes, caps: Collection[str], machine: str, kernel: str) -> str:
    digest = sha256(FORMAT)
    for part in (profile, ",".join(sorted(caps)).encode(), machine.encode(), kernel.encode()):
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()


def directory() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "aiocontain", "seccomp")


def load(name: str) -> bytes | None:
    program = cachefile.read(os.path.join(directory(), f"{name}.bpf"))  # the user's own only: it is the filter
    return program if program and len(program) % 8 == 0 else None


def store(name: str, program: bytes) -> None:
    cachefile.write(os.path.join(directory(), f"{name}.bpf"), program)
