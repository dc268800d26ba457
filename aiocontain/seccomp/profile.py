"""Seccomp profiles in the JSON format docker and podman use, resolved for one machine and capability set.

A profile names a default action and rules (syscall names, an action, argument
comparisons), some of them only for certain architectures, kernels or
capabilities (``includes``/``excludes``). ``resolve`` keeps the rules that apply
here, as podman (containers/common) and runc do: ``includes`` needs every listed
capability and the native architecture (Go's name, ``amd64``) and at least
``minKernel``; ``excludes`` drops the rule when any of its capabilities is held,
the architecture is listed or the kernel is at least ``minKernel``. Several
comparisons on one argument index become one rule each (either matches), as in
runc; otherwise a rule's comparisons must all hold. Unknown syscall names are
skipped later, by the compiler, as podman does; an unknown action or operator is
an error.
"""

from __future__ import annotations

import errno
import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from aiocontain.errors import AiocontainError
from aiocontain.seccomp import libseccomp as ls

Comparison = tuple[int, int, int, int]  # (argument index, op, value, valueTwo)

ACTIONS = {
    "SCMP_ACT_KILL": ls.ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": ls.ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": ls.ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": ls.ACT_TRAP,
    "SCMP_ACT_ERRNO": ls.ACT_ERRNO,
    "SCMP_ACT_TRACE": ls.ACT_TRACE,
    "SCMP_ACT_LOG": ls.ACT_LOG,
    "SCMP_ACT_ALLOW": ls.ACT_ALLOW,
}
_WITH_DATA = (ls.ACT_ERRNO, ls.ACT_TRACE)  # the 16-bit data is errnoRet, EPERM when not given (as runc)

OPERATORS = {
    "SCMP_CMP_NE": ls.CMP_NE,
    "SCMP_CMP_LT": ls.CMP_LT,
    "SCMP_CMP_LE": ls.CMP_LE,
    "SCMP_CMP_EQ": ls.CMP_EQ,
    "SCMP_CMP_GE": ls.CMP_GE,
    "SCMP_CMP_GT": ls.CMP_GT,
    "SCMP_CMP_MASKED_EQ": ls.CMP_MASKED_EQ,
}

# os.uname().machine -> (libseccomp's architecture name, Go's GOARCH, which includes/excludes arches use)
MACHINES = {
    "x86_64": ("x86_64", "amd64"),
    "aarch64": ("aarch64", "arm64"),
    "i386": ("x86", "386"),
    "i686": ("x86", "386"),
    "armv7l": ("arm", "arm"),
    "armv6l": ("arm", "arm"),
    "ppc64le": ("ppc64le", "ppc64le"),
    "ppc64": ("ppc64", "ppc64"),
    "s390x": ("s390x", "s390x"),
    "riscv64": ("riscv64", "riscv64"),
    "mips64": ("mips64", "mips64"),
}


class ProfileError(AiocontainError):
    """A profile that cannot be used: unreadable, not JSON, or naming an action or operator that does not exist."""


@dataclass(frozen=True)
class Rule:
    names: tuple[str, ...]
    action: int
    comparisons: tuple[Comparison, ...] = ()


@dataclass(frozen=True)
class Resolved:
    """A profile as it applies here: the default action, the architectures to cover and the rules."""

    default_action: int
    arches: tuple[str, ...]  # libseccomp names; the native one first
    rules: tuple[Rule, ...]


def resolve(data: bytes, source: str, caps: Collection[str], machine: str, kernel: str) -> Resolved:
    """Parse a profile and keep what applies to this machine (``os.uname()``'s machine and release) and these
    capabilities (names like ``CAP_SYS_ADMIN``). ProfileError, one line naming ``source``, if it is unusable."""
    try:
        profile = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProfileError(f"the seccomp profile {source} is not valid JSON: {exc}") from None
    if not isinstance(profile, dict):
        raise ProfileError(f"the seccomp profile {source} is not a JSON object")
    try:
        return _resolve(profile, source, {c.upper() for c in caps}, machine, _kernel_version(kernel))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ProfileError(f"malformed seccomp profile {source}: {exc}") from None


def _resolve(profile: dict[str, Any], source: str, caps: set[str], machine: str, kernel: tuple[int, ...]) -> Resolved:
    if machine not in MACHINES:
        raise ProfileError(f"seccomp profiles are not supported on {machine}", fix="--security-opt seccomp=unconfined")
    native, goarch = MACHINES[machine]
    default = _action(profile.get("defaultAction"), profile.get("defaultErrnoRet"), source)
    arches = [native]
    listed, arch_map = profile.get("architectures") or [], profile.get("archMap") or []
    if listed and arch_map:
        raise ProfileError(f"the seccomp profile {source} has both 'architectures' and 'archMap': use one")
    candidates = [_arch_name(a) for a in listed]
    for entry in arch_map:
        if _arch_name(entry["architecture"]) == native:
            candidates += [_arch_name(sub) for sub in entry.get("subArchitectures") or []]
    arches += [a for a in candidates if a not in arches]
    rules: list[Rule] = []
    for entry in profile.get("syscalls") or []:
        names = entry.get("names") or ([entry["name"]] if entry.get("name") else [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TypeError("'names' must be a list of syscall names")
        action = _action(entry.get("action"), entry.get("errnoRet"), source)
        if not names or action == default or not _applies(entry, caps, goarch, kernel):
            continue  # a rule that repeats the default would only lengthen the filter (libseccomp refuses it)
        comparisons = [_comparison(arg, source) for arg in entry.get("args") or []]
        indexes = [c[0] for c in comparisons]
        if len(set(indexes)) < len(indexes):  # several on one argument: any of them, each a rule (as runc)
            rules += [Rule(tuple(names), action, (c,)) for c in comparisons]
        else:
            rules.append(Rule(tuple(names), action, tuple(comparisons)))
    return Resolved(default, tuple(arches), tuple(rules))


def _action(name: object, errno_ret: object, source: str) -> int:
    if name not in ACTIONS:
        raise ProfileError(f"unknown seccomp action {name!r} in {source}", fix=f"use one of {', '.join(ACTIONS)}")
    action = ACTIONS[str(name)]
    if action in _WITH_DATA:
        data = errno.EPERM if errno_ret is None else errno_ret
        if not isinstance(data, int) or isinstance(data, bool) or not 0 <= data <= 0xFFFF:
            raise ProfileError(f"invalid errnoRet {errno_ret!r} in the seccomp profile {source}")
        action |= data
    return action


def _comparison(arg: dict[str, Any], source: str) -> Comparison:
    op = arg.get("op")
    if op not in OPERATORS:
        raise ProfileError(f"unknown seccomp operator {op!r} in {source}", fix=f"use one of {', '.join(OPERATORS)}")
    index, value, value_two = arg["index"], arg.get("value", 0), arg.get("valueTwo", 0)
    for what, number, top in (("index", index, 5), ("value", value, 2**64 - 1), ("valueTwo", value_two, 2**64 - 1)):
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= top:
            raise ValueError(f"argument {what} {number!r} is not an integer from 0 to {top}")
    return index, OPERATORS[str(op)], value, value_two


def _applies(entry: dict[str, Any], caps: set[str], goarch: str, kernel: tuple[int, ...]) -> bool:
    includes, excludes = entry.get("includes") or {}, entry.get("excludes") or {}
    if not all(_cap(c) in caps for c in includes.get("caps") or []):
        return False
    if includes.get("arches") and goarch not in includes["arches"]:
        return False
    if includes.get("minKernel") and kernel < _kernel_version(includes["minKernel"]):
        return False
    if any(_cap(c) in caps for c in excludes.get("caps") or []):
        return False
    if goarch in (excludes.get("arches") or []):
        return False
    return not (excludes.get("minKernel") and kernel >= _kernel_version(excludes["minKernel"]))


def _arch_name(name: str) -> str:
    """SCMP_ARCH_X86_64 -> x86_64, libseccomp's own spelling."""
    return name.removeprefix("SCMP_ARCH_").lower()


def _cap(name: str) -> str:
    name = name.upper()
    return name if name.startswith("CAP_") else "CAP_" + name


def _kernel_version(release: str) -> tuple[int, ...]:
    """'6.1.0-13-amd64' -> (6, 1, 0): the leading numbers, as podman compares minKernel."""
    match = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", release)
    if match is None:
        raise ValueError(f"invalid kernel version {release!r}")
    return tuple(int(part or 0) for part in match.groups())
