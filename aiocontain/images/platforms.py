"""Which image of a multi-image source to unpack: the one for the requested platform, or for this host's.

Platforms are spelled as in OCI image indexes and podman's ``--platform``: OS/ARCH[/VARIANT], with Go's
architecture names (amd64, arm64, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from aiocontain.errors import AiocontainError

# uname's machine -> (OCI architecture, variant)
_HOST_ARCH: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "aarch64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i686": ("386", None),
    "i386": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)

    def matches(self, other: Platform) -> bool:
        """Whether an image for other satisfies this request (a request without a variant takes any)."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return self.variant is None or self.variant == (other.variant or _default_variant(other.architecture))


def _default_variant(architecture: str) -> str | None:
    return "v8" if architecture == "arm64" else None


def parse(text: str) -> Platform:
    """OS/ARCH[/VARIANT] as podman's --platform takes it."""
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise AiocontainError(
            f"invalid platform {text!r}", fix="spell it OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm/v7"
        )
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def host() -> Platform:
    """This machine's platform, as image indexes name it."""
    machine = os.uname().machine
    architecture, variant = _HOST_ARCH.get(machine, (machine, None))
    return Platform("linux", architecture, variant)


def from_config(config: object) -> Platform | None:
    """The platform an image config (or an index descriptor's "platform") names, when it names one."""
    if not isinstance(config, dict):
        return None
    os_name, architecture, variant = config.get("os"), config.get("architecture"), config.get("variant")
    if not isinstance(os_name, str) or not isinstance(architecture, str):
        return None
    return Platform(os_name, architecture, variant if isinstance(variant, str) and variant else None)
