"""An OCI ``process`` object, checked in the runtime (``prepare``) and applied just before execve (``apply``).

``prepare`` runs in the runtime before anything is built: it validates every field and compiles the seccomp
profile (the OCI format is docker's, which ``aiocontain.seccomp`` reads), so a bad config fails ``create``
with one line and nothing is left. ``apply`` runs in the process that will exec (the container's init, or
``exec``'s process once it joined the container): rlimits, oomScoreAdj, the bounding set, the user and groups,
the capability sets, umask, cwd, no_new_privs and seccomp, in runc's order. It is stdlib-only and imports
nothing lazily: after pivot_root the host's standard library is out of reach.
"""

from __future__ import annotations

import errno
import os
import resource
import signal

from aiocontain import syscalls
from aiocontain.oci.errors import OciError
from aiocontain.security.capabilities import NUMBERS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CAPABILITY_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")
UNSUPPORTED_SECCOMP_ACTIONS = ("SCMP_ACT_NOTIFY",)
_RLIMIT_NAMES: dict[int, str] = {}
for _name in sorted(name for name in dir(resource) if name.startswith("RLIMIT_")):
    _RLIMIT_NAMES.setdefault(getattr(resource, _name), _name)  # RLIMIT_NOFILE before its alias RLIMIT_OFILE


class Prepared:
    """A checked process object: plain values, ready for ``apply`` and ``execute`` in a forked child."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self.env: dict[str, str] = {}
        self.cwd = "/"
        self.terminal = False
        self.console_size: tuple[int, int] | None = None  # (rows, columns)
        self.uid = 0
        self.gid = 0
        self.groups: list[int] = []
        self.umask: int | None = None
        self.capabilities: dict[str, int] | None = None  # set name -> bit mask; None: leave them as they are
        self.no_new_privileges = False
        self.rlimits: list[tuple[int, int, int]] = []  # (resource, soft, hard)
        self.oom_score_adj: int | None = None
        self.seccomp: bytes | None = None  # the compiled BPF program


def _field(container: dict[str, object], name: str, kind: type, where: str) -> object:
    value = container.get(name)
    if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise OciError(f"config.json: {where}.{name} must be {kind.__name__}, not {type(value).__name__}")
    return value


def prepare(process: object, seccomp: object = None, where: str = "process") -> Prepared:
    """Check a process object (and the container's linux.seccomp); OciError naming the first bad field."""
    if not isinstance(process, dict):
        raise OciError(f"config.json: {where} is missing or not an object")
    prepared = Prepared()
    args = process.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(arg, str) for arg in args):
        raise OciError(f"config.json: {where}.args must be a non-empty list of strings")
    prepared.args = list(args)
    env = _field(process, "env", list, where) or []
    for item in env:  # type: ignore[attr-defined]
        if not isinstance(item, str) or "=" not in item:
            raise OciError(f"config.json: {where}.env entry {item!r} is not NAME=VALUE")
        name, _, value = item.partition("=")
        prepared.env[name] = value
    cwd = _field(process, "cwd", str, where) or "/"
    if not str(cwd).startswith("/"):
        raise OciError(f"config.json: {where}.cwd {cwd!r} is not an absolute path")
    prepared.cwd = str(cwd)
    prepared.terminal = bool(_field(process, "terminal", bool, where))
    size = _field(process, "consoleSize", dict, where)
    if size:
        height, width = size.get("height", 0), size.get("width", 0)  # type: ignore[attr-defined]
        if not isinstance(height, int) or not isinstance(width, int):
            raise OciError(f"config.json: {where}.consoleSize needs integer height and width")
        prepared.console_size = (height, width)
    _prepare_user(prepared, _field(process, "user", dict, where) or {}, where)  # type: ignore[arg-type]
    capabilities = _field(process, "capabilities", dict, where)
    if capabilities is not None:
        prepared.capabilities = _capability_masks(capabilities, where)  # type: ignore[arg-type]
    prepared.no_new_privileges = bool(_field(process, "noNewPrivileges", bool, where))
    for limit in _field(process, "rlimits", list, where) or []:  # type: ignore[attr-defined]
        prepared.rlimits.append(_rlimit(limit, where))
    prepared.oom_score_adj = _field(process, "oomScoreAdj", int, where)  # type: ignore[assignment]
    for ignored in ("apparmorProfile", "selinuxLabel"):
        if process.get(ignored):
            raise OciError(f"config.json: {where}.{ignored} is not supported (no AppArmor or SELinux here)")
    if seccomp is not None:
        prepared.seccomp = _compile_seccomp(seccomp, prepared)
    return prepared


def _prepare_user(prepared: Prepared, user: dict[str, object], where: str) -> None:
    for name in ("uid", "gid", "umask"):
        value = _field(user, name, int, where + ".user")
        if value is not None and value < 0:  # type: ignore[operator]
            raise OciError(f"config.json: {where}.user.{name} must not be negative")
    prepared.uid = int(user.get("uid") or 0)  # type: ignore[call-overload]
    prepared.gid = int(user.get("gid") or 0)  # type: ignore[call-overload]
    umask = user.get("umask")
    prepared.umask = None if umask is None else int(umask)  # type: ignore[call-overload]
    groups = _field(user, "additionalGids", list, where + ".user") or []
    if not all(isinstance(gid, int) and gid >= 0 for gid in groups):  # type: ignore[attr-defined]
        raise OciError(f"config.json: {where}.user.additionalGids must be a list of group ids")
    prepared.groups = list(groups)  # type: ignore[call-overload]
    if user.get("username"):
        raise OciError(f"config.json: {where}.user.username is for Windows; give uid and gid")


def _capability_masks(capabilities: dict[str, object], where: str) -> dict[str, int]:
    """Each set as a bit mask. A name this table lacks is an error; one this kernel lacks is left out (a
    newer engine lists capabilities of newer kernels, as runc tolerates)."""
    masks = {}
    for set_name in CAPABILITY_SETS:
        names = capabilities.get(set_name) or []
        if not isinstance(names, list):
            raise OciError(f"config.json: {where}.capabilities.{set_name} must be a list")
        mask = 0
        for name in names:
            short = str(name).upper().removeprefix("CAP_")
            if short not in NUMBERS:
                raise OciError(f"config.json: unknown capability {name!r} in {where}.capabilities.{set_name}")
            if syscalls.capability_in_bounding_set(NUMBERS[short]) is not None:
                mask |= 1 << NUMBERS[short]
        masks[set_name] = mask
    return masks


def _rlimit(limit: object, where: str) -> tuple[int, int, int]:
    if not isinstance(limit, dict):
        raise OciError(f"config.json: {where}.rlimits entries must be objects")
    kind, soft, hard = limit.get("type"), limit.get("soft"), limit.get("hard")
    number = getattr(resource, str(kind), None) if str(kind).startswith("RLIMIT_") else None
    if not isinstance(number, int):
        raise OciError(f"config.json: unknown rlimit type {kind!r} in {where}.rlimits")
    for value in (soft, hard):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise OciError(f"config.json: {where}.rlimits {kind}: soft and hard must be non-negative integers")
    # 2**64-1 is RLIM_INFINITY as Go writes it; Python's resource module wants -1 for it.
    return number, _limit_value(soft), _limit_value(hard)  # type: ignore[arg-type]


def _limit_value(value: int) -> int:
    return resource.RLIM_INFINITY if value >= 2**63 - 1 else value


def _compile_seccomp(seccomp: object, prepared: Prepared) -> bytes | None:
    """linux.seccomp, compiled for this machine with aiocontain.seccomp (libseccomp); OciError when it names
    something this runtime cannot do (a notify listener, filter flags, an unknown action or operator)."""
    if not isinstance(seccomp, dict):
        raise OciError("config.json: linux.seccomp must be an object")
    if seccomp.get("listenerPath") or seccomp.get("listenerMetadata"):
        raise OciError("config.json: linux.seccomp.listenerPath is not supported (no seccomp notify)")
    if seccomp.get("flags"):
        raise OciError(f"config.json: linux.seccomp.flags {seccomp['flags']!r} are not supported")
    actions = [seccomp.get("defaultAction")]
    actions += [rule.get("action") for rule in seccomp.get("syscalls") or [] if isinstance(rule, dict)]
    for action in actions:
        if action in UNSUPPORTED_SECCOMP_ACTIONS:
            raise OciError(f"config.json: seccomp action {action} is not supported")
    import json

    from aiocontain.errors import AiocontainError
    from aiocontain.seccomp import program
    from aiocontain.security.capabilities import names

    effective = (prepared.capabilities or {}).get("effective", 0)
    caps = names([number for number in NUMBERS.values() if effective >> number & 1])
    try:
        return program(json.dumps(seccomp).encode(), "linux.seccomp", caps)
    except AiocontainError as exc:
        raise OciError(f"config.json: {exc.message}") from None


def apply(prepared: Prepared, close_from: int | None = None, keep: int = -1) -> None:
    """Everything of the process object except the exec itself, in the calling process (runc's order).

    close_from: close every fd from this one on first (3 + --preserve-fds), so nothing of the runtime's
    reaches the container, except keep (close-on-exec: the exec itself closes it). OSError from the step
    that failed.
    """
    for ignored in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(ignored, signal.SIG_DFL)  # Python ignores them, and an ignored signal stays so across exec
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    if close_from is not None:
        close_fds(close_from, keep)
    for number, soft, hard in prepared.rlimits:
        try:
            resource.setrlimit(number, (soft, hard))
        except (ValueError, OSError) as exc:  # ValueError is how Python reports EPERM for a raised hard limit
            raise OciError(f"cannot set {_RLIMIT_NAMES.get(number, number)} to {soft}:{hard}: {exc}") from None
    if prepared.oom_score_adj is not None:
        _set_oom_score_adj(prepared.oom_score_adj)
    if prepared.seccomp is not None and not prepared.no_new_privileges:
        syscalls.set_seccomp_filter(prepared.seccomp)  # needs CAP_SYS_ADMIN, which the steps below may drop
    caps = prepared.capabilities
    if caps is not None:
        cap = 0
        while (present := syscalls.capability_in_bounding_set(cap)) is not None:
            if present and not caps["bounding"] >> cap & 1:
                syscalls.drop_bounding_capability(cap)
            cap += 1
        syscalls.set_keep_capabilities(True)  # the permitted set survives the change of uid below
    _set_user(prepared)
    if caps is not None:
        syscalls.set_keep_capabilities(False)
        syscalls.set_capabilities(caps["effective"], caps["permitted"], caps["inheritable"])
        syscalls.clear_ambient_capabilities()
        for number in range(64):
            if caps["ambient"] >> number & 1:
                syscalls.raise_ambient_capability(number)
    if prepared.umask is not None:
        os.umask(prepared.umask)
    try:
        os.chdir(prepared.cwd)
    except OSError as exc:
        raise OciError(f"cannot enter the working directory {prepared.cwd}: {exc.strerror}") from None
    if prepared.no_new_privileges:
        syscalls.set_no_new_privs()
        if prepared.seccomp is not None:
            syscalls.set_seccomp_filter(prepared.seccomp)  # last: the filter may forbid what came before


def close_fds(close_from: int, keep: int = -1) -> None:
    """Close every fd from close_from on but keep. To the top of the fd range, not the soft limit: an fd
    inherited above a lowered soft limit is still open (CPython closes a range with one close_range call)."""
    if close_from <= keep:
        os.closerange(close_from, keep)
        os.closerange(keep + 1, _FD_TOP)
    else:
        os.closerange(close_from, _FD_TOP)


_FD_TOP = 2**31 - 1


def _set_oom_score_adj(value: int) -> None:
    fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _set_user(prepared: Prepared) -> None:
    try:
        os.setgroups(prepared.groups)
    except PermissionError:
        # setgroups is denied in a user namespace mapped without privilege: only "no extra groups" can hold.
        if prepared.groups:
            raise
    os.setresgid(prepared.gid, prepared.gid, prepared.gid)
    os.setresuid(prepared.uid, prepared.uid, prepared.uid)


def check_executable(prepared: Prepared) -> None:
    """OciError when process.args[0] cannot be found in the container (runc's message, which podman turns
    into exit status 127), so create fails instead of a container that starts only to exit. Called inside
    the container's root; whether it may be executed is left to the exec itself."""
    program = prepared.args[0]
    if "/" in program:
        path = program if program.startswith("/") else os.path.join(prepared.cwd, program)
        if not os.path.exists(path):
            raise OciError(f'exec: "{program}": stat {program}: no such file or directory')
        return
    for directory in prepared.env.get("PATH", DEFAULT_PATH).split(":"):
        path = os.path.join(directory or prepared.cwd, program)
        if os.path.isfile(path):
            return
    raise OciError(f'exec: "{program}": executable file not found in $PATH')


def execute(prepared: Prepared) -> NoReturn:
    """execve process.args with process.env, args[0] searched in the env's PATH (the container's, not
    ours) when it has no slash. Raises OSError as execvp would when nothing can be executed."""
    program = prepared.args[0]
    if "/" in program:
        os.execve(program, prepared.args, prepared.env)
    first_error: OSError | None = None
    for directory in prepared.env.get("PATH", DEFAULT_PATH).split(":"):
        path = os.path.join(directory or ".", program)
        try:
            os.execve(path, prepared.args, prepared.env)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                first_error = first_error or exc  # EACCES: keep looking, as execvp does, but remember it
    raise first_error or FileNotFoundError(errno.ENOENT, f"{program}: executable file not found in $PATH")
