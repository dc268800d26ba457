"""What a container is to be: the one value the CLI builds and embedders pass in."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from aiocontain.cgroups.limits import Limits
from aiocontain.errors import AiocontainError
from aiocontain.mounts import Mount
from aiocontain.mounts import check as check_mounts

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_MTU = 65520
_MTU_RANGE = (68, 65521)  # slirp4netns accepts at most 65521 (pasta 65520: its driver says so)
_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ENV_KEY = re.compile(r"^[^=\0]+$")


class NetworkMode(StrEnum):
    """How the container reaches the network (podman's --network)."""

    SLIRP4NETNS = "slirp4netns"  # own network namespace, user-mode TCP/IP to the host
    PASTA = "pasta"  # own network namespace, the host's addresses and routes, mapped to host sockets by pasta
    NONE = "none"  # own network namespace with only loopback
    HOST = "host"  # the host's network namespace

    @property
    def has_tap(self) -> bool:
        """A tap0 that a host-side helper serves (so --mtu, --ipv6 and -p mean something)."""
        return self in (NetworkMode.SLIRP4NETNS, NetworkMode.PASTA)


class CgroupsMode(StrEnum):
    """Whether the container gets a cgroup of its own (podman's --cgroups)."""

    ENABLED = "enabled"  # a leaf when limits are asked for or a cgroup v2 subtree is delegated
    DISABLED = "disabled"  # never; limits are then refused


Stdio = int | IO[Any] | None


@dataclass
class ContainerSpec:
    """A container to run. Only ``command`` is required; the rest has podman's defaults.

    Limits take podman's units: ``memory="2m"`` (or bytes), ``memory_swap``
    (memory plus swap, -1 unlimited), ``pids_limit`` (-1 unlimited) and ``cpus``.
    They need a delegated cgroup v2 subtree: the one aiocontain runs in, or
    ``cgroup_parent`` (a directory of a cgroup2 mount the user owns). Where that
    subtree has the pids controller, ``pids_limit`` unset is podman's default, 2048.

    stdin, stdout and stderr are passed to the container's process as for
    ``anyio.open_process`` (None: inherit this process's). ``tty=True`` gives the
    command a pseudo-terminal of its own, in the container's devpts, as its stdio
    and controlling terminal instead: ``Container.tty`` is its master as a byte
    stream, ``tty_size`` its initial (rows, cols). Either way the container runs in
    a session of its own and never gets this process's controlling terminal.

    Hardening follows podman's defaults: ``cap_add``/``cap_drop`` change the
    default capability set (names with or without ``CAP_``, or ``ALL``);
    ``seccomp`` is None for the default profile, ``"unconfined"``, or the path of
    a profile in the JSON format docker and podman use; ``no_new_privileges``
    sets no_new_privs; ``privileged`` keeps every capability and applies no
    seccomp filter and no masked paths, as ``podman run --privileged``.

    ``user`` (``"USER[:GROUP]"``, names from the rootfs's /etc/passwd and group, or
    numbers) and ``group_add`` set who the command runs as; ``ulimits`` are podman's
    ``NAME=SOFT[:HARD]``; ``dns``, ``dns_search``, ``dns_options`` and ``add_hosts``
    (``NAME:IP``) fill the container's resolv.conf and hosts; ``labels`` and
    ``annotations`` are shown in the ``container.created`` event.

    Files in and out: ``mounts`` are ``Mount`` values (``aiocontain.mounts``: a bind of a host path, or a
    tmpfs), as ``-v``, ``--mount`` and ``--tmpfs``; ``read_only`` mounts the root read-only, with tmpfs at
    /tmp, /run and /var/tmp unless ``read_only_tmpfs`` is False. ``rootfs_overlay`` (``--rootfs DIR:O``)
    puts a throwaway overlay over the rootfs, so nothing the container writes reaches it on disk; unset,
    the default rootfs (``rootfs=None``) gets one where the kernel can (Linux 5.11+), as each ``podman run``
    of an image gets a layer of its own, and a rootfs named explicitly is used directly, as podman's --rootfs.
    """

    command: Sequence[str]
    rootfs: Path | None = None
    name: str | None = None
    hostname: str | None = None
    network: NetworkMode = NetworkMode.SLIRP4NETNS
    mtu: int = DEFAULT_MTU
    allow_host_loopback: bool = False
    ipv6: bool = True  # IPv6 on tap0 as well (podman's default: slirp4netns's enable_ipv6=true)
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = "/"
    init: bool = False
    init_path: Path | None = None  # --init's PID 1 (default: the host's catatonit)
    stop_timeout: float = 10.0
    network_timeout: float = 10.0
    memory: int | str | None = None
    memory_swap: int | str | None = None
    pids_limit: int | None = None
    cpus: float | None = None
    cgroups: CgroupsMode = CgroupsMode.ENABLED
    cgroup_parent: Path | None = None
    stdin: Stdio = None
    stdout: Stdio = None
    stderr: Stdio = None
    tty: bool = False
    tty_size: tuple[int, int] | None = None  # the pty's initial (rows, cols); None leaves the kernel's 0 0
    cap_add: Sequence[str] = ()
    cap_drop: Sequence[str] = ()
    privileged: bool = False
    seccomp: str | Path | None = None
    no_new_privileges: bool = False
    # Users and environment (aiocontain.users, ulimits, etcfiles): podman's --user, --group-add, --ulimit, --dns,
    # --dns-search, --dns-option, --add-host; labels and annotations are kept here and shown in container.created.
    user: str | None = None
    group_add: Sequence[str] = ()
    ulimits: Sequence[str] = ()
    dns: Sequence[str] = ()
    dns_search: Sequence[str] = ()
    dns_options: Sequence[str] = ()
    add_hosts: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    mounts: Sequence[Mount] = ()
    read_only: bool = False
    read_only_tmpfs: bool = True
    rootfs_overlay: bool | None = None  # None: for the default rootfs only (see ``overlay``)
    id: str = field(default_factory=lambda: os.urandom(32).hex())  # what secrets.token_hex does, without its imports

    def validate(self) -> None:
        """Refuse bad values before anything is started; the error is one line with the fix."""
        if not self.command or not self.command[0]:
            raise AiocontainError("no command given", fix="aiocontain run [OPTIONS] CMD [ARGS...]")
        try:
            self.network = NetworkMode(self.network)
        except ValueError:
            raise AiocontainError(
                f"invalid network mode {self.network!r}", fix="use one of slirp4netns, pasta, none, host"
            ) from None
        if not _MTU_RANGE[0] <= self.mtu <= _MTU_RANGE[1]:
            raise AiocontainError(f"invalid MTU {self.mtu}", fix=f"use a value from {_MTU_RANGE[0]} to {_MTU_RANGE[1]}")
        if self.mtu != DEFAULT_MTU and not self.network.has_tap:
            raise AiocontainError(
                f"--mtu sets tap0's MTU, which --net {self.network.value} has none of",
                fix="drop --mtu, or use slirp4netns",
            )
        if self.name is not None and not _NAME.match(self.name):
            raise AiocontainError(
                f"invalid container name {self.name!r}", fix="use letters, digits, '_', '.', '-' (at most 128)"
            )
        if not _HOSTNAME.match(self.effective_hostname) or len(self.effective_hostname) > 64:
            raise AiocontainError(
                f"invalid hostname {self.effective_hostname!r}", fix="use DNS labels of letters, digits and '-'"
            )
        for key, setting in self.env.items():
            if not _ENV_KEY.match(key):
                raise AiocontainError(f"invalid environment variable name {key!r}", fix="use -e KEY=VALUE")
            if "\0" in setting:
                raise AiocontainError(f"environment variable {key} holds a NUL byte", fix="remove it from the value")
        for index, arg in enumerate(self.command):
            if "\0" in arg:
                which = "the command" if index == 0 else f"argument {index} of the command"
                raise AiocontainError(f"{which} holds a NUL byte", fix="execve cannot pass one: remove it")
        if not self.workdir.startswith("/"):
            raise AiocontainError(f"invalid working directory {self.workdir!r}", fix="give an absolute path")
        try:
            self.cgroups = CgroupsMode(self.cgroups)
        except ValueError:
            raise AiocontainError(f"invalid --cgroups {self.cgroups!r}", fix="use enabled or disabled") from None
        check_mounts(self.mounts)
        _ = self.limits  # parses, refusing malformed sizes
        self._validate_user_options()
        _ = self.capabilities  # refuses unknown capability names
        if self.tty_size is not None and not all(0 <= n <= 0xFFFF for n in self.tty_size):
            raise AiocontainError(f"invalid terminal size {self.tty_size!r}", fix="give (rows, cols) from 0 to 65535")
        if not self.stop_timeout >= 0:
            raise AiocontainError(f"invalid stop timeout {self.stop_timeout!r}", fix="give a number of seconds >= 0")
        if not self.network_timeout > 0:  # 0 would fail every networked run, then blame slirp4netns
            raise AiocontainError(
                f"invalid network timeout {self.network_timeout!r}", fix="give a number of seconds > 0"
            )

    def _validate_user_options(self) -> None:
        from aiocontain import etcfiles, ulimits

        if self.user is not None and not self.user:
            raise AiocontainError("invalid --user ''", fix="give USER[:GROUP], names or numbers")
        ulimits.parse(self.ulimits)
        etcfiles.check(self.dns, self.dns_search, self.dns_options, self.add_hosts)
        if (self.dns or self.dns_search or self.dns_options) and self.network is NetworkMode.NONE:
            raise AiocontainError(
                "--dns, --dns-search and --dns-option have no network to use with --net none (podman refuses them too)",
                fix="drop them, or use --net slirp4netns",
            )

    @property
    def limits(self) -> Limits:
        """The resource limits, parsed and checked (AiocontainError on a malformed value)."""
        return Limits.parse(self.memory, self.memory_swap, self.pids_limit, self.cpus)

    @property
    def capabilities(self) -> list[int] | None:
        """The capability numbers the command keeps (None: all); AiocontainError on an unknown name."""
        from aiocontain.security import capabilities

        return capabilities.kept(self.cap_add, self.cap_drop, self.privileged)

    @property
    def overlay(self) -> bool:
        """Whether the rootfs gets a throwaway overlay: as asked, else for the default rootfs where possible."""
        if self.rootfs_overlay is not None:
            return self.rootfs_overlay
        from aiocontain.mounts import overlay_supported

        return self.rootfs is None and overlay_supported()

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def effective_name(self) -> str:
        return self.name or self.short_id

    @property
    def effective_hostname(self) -> str:
        """--hostname, else the name made a valid hostname (as podman does), else the short id."""
        if self.hostname:
            return self.hostname
        label = re.sub(r"[^A-Za-z0-9-]+", "-", self.effective_name)[:63].strip("-")
        return label or self.short_id

    def environment(self, term: str | None) -> dict[str, str]:
        """The command's environment: podman's defaults, then the user's -e values."""
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", "HOSTNAME": self.effective_hostname, "container": "aiocontain"}
        env["TERM"] = term or "xterm"
        env.update(self.env)
        return env
