"""``aiocontain doctor``: check every host prerequisite for rootless containers.

Each check says what it found and, when it fails, the one command that fixes it,
so a user learns everything missing at once instead of one failed stage at a time.
Stdlib-only: the CLI imports it lazily.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiocontain import elf, hostuser, init_binary, subids, syscalls
from aiocontain.cgroups import hierarchy
from aiocontain.errors import AiocontainError
from aiocontain.network import slirp_sandbox
from aiocontain.rootfs import check_rootfs, default_rootfs

# Module-level so tests can point the checks at fakes.
TUN_PATH = Path("/dev/net/tun")
SUBUID_PATH = Path("/etc/subuid")
SUBGID_PATH = Path("/etc/subgid")

_SLIRP_MIN = (1, 0)


@dataclass(frozen=True)
class Check:
    """The outcome of one check; only failures of required checks make doctor fail."""

    name: str
    ok: bool
    detail: str
    fix: str | None
    required: bool = True  # False: a failure only narrows what containers can do


def _sysctl(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def check_userns() -> Check:
    """Really create a user namespace in a forked child: sysctls, AppArmor and seccomp can all forbid it."""
    pid = os.fork()
    if pid == 0:  # the child: only unshare and _exit, nothing that could touch the parent's state
        code = 255  # kept if anything unexpected happens
        try:
            syscalls.unshare(syscalls.CLONE_NEWUSER)
            code = 0
        except OSError as err:
            code = (err.errno or 1) & 0xFF
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    settings = [
        f"{name}={value}"
        for name, path in (
            ("kernel.unprivileged_userns_clone", "/proc/sys/kernel/unprivileged_userns_clone"),
            ("user.max_user_namespaces", "/proc/sys/user/max_user_namespaces"),
            ("kernel.apparmor_restrict_unprivileged_userns", "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
        )
        if (value := _sysctl(path)) is not None
    ]
    shown = f" ({', '.join(settings)})" if settings else ""
    if code == 0:
        return Check("user namespaces", True, f"unshare(CLONE_NEWUSER) works{shown}", None)
    reason = f"{errno.errorcode.get(code, code)} ({os.strerror(code)})" if 0 < code < 255 else f"exit {code}"
    fix = "sudo sysctl -w user.max_user_namespaces=28633"
    if _sysctl("/proc/sys/kernel/unprivileged_userns_clone") is not None:
        fix = "sudo sysctl -w kernel.unprivileged_userns_clone=1 && " + fix
    if _sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") not in (None, "0"):
        fix += " && sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"
    return Check("user namespaces", False, f"unshare(CLONE_NEWUSER) failed: {reason}{shown}", fix)


def check_id_map_tool(name: str) -> Check:
    """newuidmap/newgidmap must be setuid root (or carry file capabilities) to map subordinate ids."""
    found = shutil.which(name)  # on PATH, as the idmap stage looks for it
    if found is None:
        return Check(name, False, f"{name} not found on PATH", "sudo apt-get install uidmap")
    path = Path(found)
    info = path.stat()
    if info.st_mode & stat.S_ISUID and info.st_uid == 0:
        return Check(name, True, f"{path} (setuid root)", None)
    try:
        has_caps = bool(os.getxattr(path, "security.capability"))
    except OSError:
        has_caps = False
    if has_caps:
        return Check(name, True, f"{path} (file capabilities)", None)
    return Check(name, False, f"{path} is neither setuid root nor has file capabilities", f"sudo chmod u+s {path}")


def check_subids(name: str, path: Path) -> Check:
    """The current user needs a subordinate id range (by name or uid) to map more than one id."""
    user = hostuser.name()
    fix = f"sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}"
    if not path.exists():
        return Check(name, False, f"{path} does not exist", fix)
    if not os.access(path, os.R_OK):
        return Check(name, False, f"cannot read {path}", f"sudo chmod 0644 {path}")
    found = subids.ranges(os.getuid(), path)  # the same parser the idmap stage uses
    if not found:
        return Check(name, False, f"no range for {user} in {path}", fix)
    start, count = found[0]  # the idmap stage maps the first range
    return Check(name, True, f"{user} has {count} ids from {start} in {path}", None)


def check_slirp4netns() -> Check:
    """slirp4netns gives rootless containers network access; aiocontain needs >= 1.0 (--exit-fd, --ready-fd)."""
    minimum = ".".join(map(str, _SLIRP_MIN))
    fix = "sudo apt-get install slirp4netns"
    path = shutil.which("slirp4netns")
    if path is None:
        return Check("slirp4netns", False, "slirp4netns not found", fix)
    try:
        output = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return Check("slirp4netns", False, f"`{path} --version` failed: {err}", fix)
    match = re.search(r"version\s+(\d+)\.(\d+)(?:\.(\d+))?", output)
    if match is None:
        return Check("slirp4netns", False, f"cannot parse the version of {path}", fix)
    version = match.group(0).split()[-1]
    if (int(match.group(1)), int(match.group(2))) < _SLIRP_MIN:
        return Check("slirp4netns", False, f"{path} is version {version}, needs >= {minimum}", f"upgrade it: {fix}")
    sandbox = slirp_sandbox.options(path)
    on = " and ".join(sandbox) + " on" if sandbox else "no sandbox options in this build: it runs unsandboxed"
    return Check("slirp4netns", True, f"{path} version {version}, {on}", None)


def check_pasta() -> Check:
    """pasta (Debian's passt) for --net pasta; optional: slirp4netns is the default network."""
    fix = "sudo apt-get install passt"
    path = shutil.which("pasta")
    if path is None:
        return Check("pasta", False, "pasta not found: --net pasta is refused", fix, required=False)
    try:
        helped = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10, check=False)
        text = helped.stdout + helped.stderr  # Debian 12's prints it on stderr
    except (OSError, subprocess.SubprocessError) as err:
        return Check("pasta", False, f"`{path} --help` failed: {err}", fix, required=False)
    if "--config-net" not in text:
        return Check("pasta", False, f"{path} has no --config-net: too old", f"upgrade it: {fix}", required=False)
    if shutil.which("setpriv") is None:  # how pasta gets a parent-death signal
        return Check("pasta", False, "setpriv not found", "sudo apt-get install util-linux", required=False)
    return Check("pasta", True, f"{path} for --net pasta", None, required=False)


def check_init() -> Check:
    """--init runs a static init (catatonit) as the container's PID 1; without it, --init is refused."""
    try:
        path = init_binary.find()
    except AiocontainError as err:
        return Check("init", False, err.message, err.fix, required=False)
    return Check("init", True, f"{path} for --init", None, required=False)


def check_overlay() -> Check:
    """--rootfs DIR:O mounts overlayfs in the container's user namespace, which Linux allows from 5.11 on."""
    from aiocontain.mounts import overlay_supported

    release = os.uname().release
    if overlay_supported(release):
        return Check(
            "overlay", True, f"Linux {release} mounts overlayfs in a user namespace (--rootfs DIR:O)", None, False
        )
    detail = f"Linux {release} cannot mount overlayfs in a user namespace (5.11+): --rootfs DIR:O is refused"
    return Check("overlay", False, detail, "a kernel 5.11 or newer (Debian 12 has 6.1)", False)


def check_tun() -> Check:
    """slirp4netns opens the tun device as the current user."""
    try:
        fd = os.open(TUN_PATH, os.O_RDWR)
    except FileNotFoundError:
        return Check("tun", False, f"{TUN_PATH} does not exist", f"sudo modprobe tun && sudo chmod 0666 {TUN_PATH}")
    except OSError as err:
        return Check("tun", False, f"cannot open {TUN_PATH}: {err.strerror}", f"sudo chmod 0666 {TUN_PATH}")
    os.close(fd)
    return Check("tun", True, f"{TUN_PATH} opens read-write", None)


def check_cgroup() -> Check:
    """Resource limits need a delegated cgroup v2 with the memory, pids and cpu controllers; containers run without.

    The same discovery the cgroup stage uses (``aiocontain.cgroups.hierarchy``), so doctor says what run will do.
    """
    name = "cgroup v2"
    found = hierarchy.mounts()
    if not found:
        return Check(
            name, False, "no cgroup2 mount (cgroup v1 host): resource limits unavailable", hierarchy.FIX_V2, False
        )
    if hierarchy.is_hybrid(found):
        points = ", ".join(str(mount.point) for mount in found)
        detail = f"cgroup v2 at {points} (hybrid host: memory, pids and cpu are on cgroup v1); limits unavailable"
        return Check(name, False, detail, hierarchy.FIX_V2, False)
    own = hierarchy.own_directory(found)
    mount = hierarchy.mount_of(own, found) if own is not None else None
    if own is None or mount is None:
        return Check(name, False, "this process is in no cgroup v2 group; limits unavailable", hierarchy.FIX_V2, False)
    top = hierarchy.delegation_root(own, mount)
    where = f"cgroup v2 at {mount.point}"
    if top is None:
        detail = f"{where}: own cgroup {own} is not delegated to {hostuser.name()}; limits unavailable"
        return Check(name, False, detail, hierarchy.FIX_SCOPE, False)
    controllers = hierarchy.controllers_of(top)
    detail = f"{where}: delegated subtree {top}, controllers {' '.join(controllers) or '(none)'}"
    missing = [c for c in hierarchy.REPORTED if c not in controllers]
    if missing:
        detail += f"; {'/'.join(missing)} limits unavailable"
        return Check(name, False, detail, hierarchy.fix_delegate("cpu cpuset io memory pids"), False)
    return Check(name, True, detail, None, False)


def check_libseccomp() -> Check:
    """The default seccomp filter is compiled with libseccomp (only a --security-opt seccomp=unconfined run
    does without)."""
    from aiocontain.seccomp import libseccomp

    try:
        major, minor, micro = libseccomp.version()
    except AiocontainError as err:
        return Check("libseccomp", False, err.message, "sudo apt-get install libseccomp2")
    return Check("libseccomp", True, f"{libseccomp.SONAME} version {major}.{minor}.{micro}", None)


def check_rootfs_arch(rootfs: Path, *, is_default: bool) -> Check:
    """The rootfs must exist, hold files, and be built for a machine this host runs (judged by its /bin/sh)."""
    try:
        check_rootfs(rootfs, is_default=is_default)
        elf.check_arch(rootfs, "/bin/sh", "")
    except AiocontainError as err:
        return Check("rootfs", False, err.message, err.fix)
    shell = elf.resolve_in_rootfs(rootfs, "/bin/sh")
    machine = elf.elf_machine(shell) if shell is not None else None
    if machine is None:
        return Check("rootfs", True, f"{rootfs} (no ELF /bin/sh to tell its architecture)", None)
    if machine == elf.host_machine():
        return Check("rootfs", True, f"{rootfs} ({machine}, like the host)", None)
    handler = elf.binfmt_handler(machine)
    how = f"via binfmt_misc {handler}" if handler else f"natively on {elf.host_machine()}"
    return Check("rootfs", True, f"{rootfs} ({machine}, runs {how})", None)


def _safely(name: str, check: Callable[[], Check]) -> Check:
    """A check that crashes is reported as failing rather than hiding the others."""
    try:
        return check()
    except Exception as err:  # noqa: BLE001 - doctor must report every check
        return Check(name, False, f"could not check: {err}", "report this as an aiocontain bug")


def check_run_server() -> Check:
    """Informational: whether `aiocontain run` is served by a warm process (aiocontain.runserver)."""
    from aiocontain import runserver

    return Check("run server", True, runserver.status(), None, required=False)


def run_checks(rootfs: Path, *, is_default: bool | None = None) -> list[Check]:
    """Run every host check, in the order a user should fix them."""
    if is_default is None:
        is_default = rootfs == default_rootfs()
    # Without the id-map tools or subordinate ids, the idmap stage falls back to mapping uid 0 alone.
    id_maps = [
        _safely("newuidmap", lambda: check_id_map_tool("newuidmap")),
        _safely("newgidmap", lambda: check_id_map_tool("newgidmap")),
        _safely("subuid", lambda: check_subids("subuid", SUBUID_PATH)),
        _safely("subgid", lambda: check_subids("subgid", SUBGID_PATH)),
    ]
    return [
        _safely("user namespaces", check_userns),
        *(dataclasses.replace(check, required=False) for check in id_maps),
        _safely("slirp4netns", check_slirp4netns),
        _safely("tun", check_tun),
        dataclasses.replace(_safely("pasta", check_pasta), required=False),
        _safely("init", check_init),
        _safely("overlay", check_overlay),
        _safely("cgroup v2", check_cgroup),
        _safely("libseccomp", check_libseccomp),
        _safely("rootfs", lambda: check_rootfs_arch(rootfs, is_default=is_default)),
        _safely("run server", check_run_server),
    ]


def format_check(check: Check) -> list[str]:
    """The printed lines of one check: the verdict, then the fix when it failed.

    FAIL is kept for what stops ``run``; a missing optional part (cgroup v2 limits on a hybrid host, the
    subordinate ids, catatonit) is MISSING: it narrows what containers can do, and doctor still exits 0.
    """
    verdict = "OK" if check.ok else "FAIL" if check.required else "MISSING"
    line = f"{verdict:<8}{check.name}: {check.detail}"
    if not check.ok and not check.required:
        line += " (optional: containers still run)"
    lines = [line]
    if not check.ok and check.fix:
        lines.append(f"        fix: {check.fix}")
    return lines


def main(rootfs: Path | None = None) -> int:
    """Print one line per check; 0 when every required check passes, else 1."""
    checks = run_checks(default_rootfs(), is_default=True) if rootfs is None else run_checks(rootfs)
    for check in checks:
        print("\n".join(format_check(check)))
    return 0 if all(check.ok or not check.required for check in checks) else 1
