"""The slow tier's Debian root filesystem: built once per machine, unpacked in the containers' id mapping.

``mmdebstrap --mode=unshare`` builds a real Debian bookworm (python3 and CPython's own regression tests) as an
unprivileged user with subordinate ids. Its tarball is the cache: CACHE/debian.tar with CACHE/recipe, the
command that made it; it is rebuilt only when missing or when the recipe changed.

Why a tarball and not mmdebstrap's directory output: mmdebstrap maps the chroot's root to the first
subordinate id, so a directory it leaves behind is owned, on the host, by ids that aiocontain and rootless
podman both map to uid 1, not 0. Unpacking the tarball inside a user namespace mapped as theirs (0 to the
user, 1..N to the subordinate range) gives the ownership both expect: the files of root inside are the
user's own, those of _apt (42) are subordinate id 42 of the range. /dev's nodes are left out: a user
namespace cannot create them, and both runtimes mount a /dev of their own.

As a script, as the unprivileged user: ``python -m tests.slow.debian CACHE_DIR`` builds the cache if needed
and prints the tarball's path.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from aiocontain import subids

# netbase: /etc/services and /etc/protocols, which test_socket's getservbyname and getaddrinfo need.
PACKAGES = ("python3", "libpython3.11-testsuite", "netbase")
RECIPE = [
    *("mmdebstrap", "--mode=unshare", "--variant=minbase", "--format=tar"),
    *("--include=" + ",".join(PACKAGES), "bookworm"),
]
BUILD_TIMEOUT = 900  # seconds: a minute here, more on a slow mirror


def build(cache: Path) -> Path:
    """CACHE/debian.tar, built unless it exists from this very recipe; its path."""
    tar, recipe_file = cache / "debian.tar", cache / "recipe"
    recipe = shlex.join(RECIPE) + "\n"
    if tar.exists() and recipe_file.exists() and recipe_file.read_text() == recipe:
        return tar
    if shutil.which("mmdebstrap") is None:
        raise SystemExit("mmdebstrap is missing: sudo apt-get install mmdebstrap (scripts/host-setup.sh --slow)")
    cache.mkdir(parents=True, exist_ok=True)
    recipe_file.unlink(missing_ok=True)  # a build that fails half-way must not look current
    partial = cache / "debian.tar.partial"
    # mmdebstrap's chroot (some 300 MB) goes next to the cache, not into a possibly small /tmp
    env = {**os.environ, "TMPDIR": str(cache)}
    subprocess.run([*RECIPE, str(partial)], check=True, env=env, stdin=subprocess.DEVNULL, timeout=BUILD_TIMEOUT)
    partial.replace(tar)
    recipe_file.write_text(recipe)
    return tar


def as_container_root(*argv: str) -> list[str]:
    """argv run as root of a user namespace mapped as aiocontain and rootless podman map theirs."""
    uid = os.getuid()
    uid_ranges = subids.ranges(uid, Path("/etc/subuid"))
    gid_ranges = subids.ranges(uid, Path("/etc/subgid"))
    if not uid_ranges or not gid_ranges:
        raise RuntimeError("the Debian rootfs needs subordinate ids: scripts/host-setup.sh gives the test user some")
    (uid_start, uid_count), (gid_start, gid_count) = uid_ranges[0], gid_ranges[0]
    return [
        "unshare",
        "--map-root-user",
        f"--map-users={uid_start},1,{uid_count}",
        f"--map-groups={gid_start},1,{gid_count}",
        "--",
        *argv,
    ]


def unpack(tar: Path, target: Path) -> None:
    """Unpack tar into the new directory target, owned as the containers see it (without /dev's nodes)."""
    target.mkdir()
    untar = ["tar", "--numeric-owner", "--same-owner", "--exclude=./dev/*", "-xpf", str(tar), "-C", str(target)]
    subprocess.run(as_container_root(*untar), check=True, stdin=subprocess.DEVNULL)


def remove(target: Path) -> None:
    """Remove an unpacked rootfs: some of its directories belong to subordinate ids, so from the same mapping."""
    subprocess.run(as_container_root("rm", "-rf", "--", str(target)), check=True, stdin=subprocess.DEVNULL)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} CACHE_DIR")
    print(build(Path(sys.argv[1])))
