"""The container's seccomp filter: podman's default profile, a profile file of the user's, or none.

The runtime compiles the profile (``libseccomp``, through ``compile``) for the
container's capability set and sends the BPF program, base64, in
``Config.seccomp``; PID 1 installs it as its last step before exec, so it
covers the command and ``--init``'s PID 1 alike. The shipped default
(``default.json``) is containers-common's profile (see ``NOTICE``): unlisted
calls fail with ENOSYS, the listed denials with EPERM. Compiled programs are
kept in memory and on disk (``cache``), keyed by profile content and
capabilities.
"""

from __future__ import annotations

import binascii
import os
import time

from aiocontain.seccomp import cache
from aiocontain.security import capabilities

TYPE_CHECKING = False  # the spec module (dataclasses, cgroups) costs aiocontain-oci's create ~20 ms
if TYPE_CHECKING:
    from aiocontain.spec import ContainerSpec

DEFAULT_PROFILE = os.path.join(os.path.dirname(__file__), "default.json")  # no pathlib: see cache
UNCONFINED = "unconfined"

_compiled: dict[str, bytes] = {}  # cache key -> program, for this process's containers
# (path, the file's identity and times, caps) -> the program as sent: a process's next container with the same,
# unchanged profile pays one stat, not reading, hashing and encoding it again. Any write changes st_ctime; a file
# changed in the last 2 s is not kept (its times are a clock tick coarse: a rewrite then could keep them).
_encoded: dict[tuple[object, ...], str] = {}
_SETTLED_NS = 2_000_000_000


def filter_for(spec: ContainerSpec) -> str | None:
    """The BPF program for this container, base64, or None for no filter (``privileged``, ``unconfined``).

    ProfileError (one line, exit code 125) for a profile that cannot be read or used.
    """
    if spec.privileged or spec.seccomp == UNCONFINED:
        return None
    path = DEFAULT_PROFILE if spec.seccomp is None else spec.seccomp
    caps = capabilities.names(spec.capabilities)
    try:
        info = os.stat(path)
    except OSError:
        known = None  # reading it says why
    else:
        known = (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, caps)
        if (encoded := _encoded.get(known)) is not None:
            return encoded
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        from aiocontain.seccomp.profile import ProfileError

        raise ProfileError(
            f"cannot read the seccomp profile {path}: {exc.strerror}",
            fix="--security-opt seccomp=FILE names a JSON profile, or seccomp=unconfined for none",
        ) from None
    encoded = binascii.b2a_base64(program(data, str(path), caps), newline=False).decode()
    if known is not None and time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) > _SETTLED_NS:
        _encoded[known] = encoded
    return encoded


def program(data: bytes, source: str, caps: frozenset[str]) -> bytes:
    """The compiled profile (raw sock_filter bytes): from memory, the cache directory, or libseccomp."""
    machine, kernel = os.uname().machine, os.uname().release
    name = cache.key(data, caps, machine, kernel)
    found = _compiled.get(name) or cache.load(name)
    if found is None:  # only now the parser and libseccomp: a cache hit costs neither import
        from aiocontain.seccomp.compile import compile_bpf
        from aiocontain.seccomp.profile import resolve

        found = compile_bpf(resolve(data, source, caps, machine, kernel), source)
        cache.store(name, found)
    _compiled[name] = found
    return found
