"""Typed messages between the runtime (parent), the fork server and the container's child process.

They travel as JSON over one AF_UNIX SOCK_SEQPACKET socket pair: one datagram a
message, so no framing is needed, and file descriptors ride along as SCM_RIGHTS.
Stdlib-only: the child imports this on the start-up hot path.
"""

from __future__ import annotations

import array
import errno
import json
import os
import socket

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the child ~20 ms
if TYPE_CHECKING:
    from typing import Any

MAX_MESSAGE = 1 << 20


class _Message:
    """Fields are the __slots__; equal when of the same kind with equal fields.

    Plain classes, not dataclasses: dataclasses and typing cost the child ~30 ms of imports.
    """

    kind = ""
    __slots__: tuple[str, ...] = ()

    def fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Message) and type(other) is type(self) and self.fields() == other.fields()

    def __hash__(self) -> int:
        return hash((self.kind, json.dumps(self.fields(), sort_keys=True)))

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.fields().items())
        return f"{type(self).__name__}({args})"


class Config(_Message):
    """Parent -> child, first: everything the child needs to build the container."""

    kind = "config"
    __slots__ = (
        "argv",
        "caps",
        "env",
        "etc_files",
        "hostname",
        "init",
        "init_binary",
        "masked_paths",
        "mount_cgroup",
        "mounts",
        "no_new_privs",
        "overlay",
        "read_only",
        "readonly_paths",
        "rootfs",
        "seccomp",
        "tap",
        "tty",
        "unshare_net",
        "want_netlink",
        "workdir",
    )

    def __init__(
        self,
        rootfs: str,
        argv: list[str],
        env: dict[str, str],
        workdir: str,
        hostname: str,
        unshare_net: bool,
        want_netlink: bool,
        etc_files: dict[str, str] | None = None,
        init: bool = False,
        mount_cgroup: bool = False,
        mounts: list[dict[str, Any]] | None = None,
        tap: str | None = None,
        caps: list[int] | None = None,
        seccomp: str | None = None,
        no_new_privs: bool = False,
        masked_paths: list[str] | None = None,
        readonly_paths: list[str] | None = None,
        tty: bool = False,
        init_binary: str | None = None,
        read_only: bool = False,
        overlay: str | None = None,
    ) -> None:
        self.rootfs = rootfs
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.hostname = hostname
        self.unshare_net = unshare_net
        self.want_netlink = want_netlink
        self.etc_files = etc_files or {}
        self.init = init
        self.mount_cgroup = mount_cgroup
        self.mounts = mounts or []  # -v, --mount, --tmpfs and the plugins': mounts.Mount.config() dicts
        self.tap = tap  # a persistent tap device to create in the new network namespace (slirp4netns's)
        self.caps = caps  # capability numbers to keep in the bounding set; None keeps all (--privileged)
        self.seccomp = seccomp  # the compiled seccomp filter (BPF, base64), installed just before exec; None: none
        self.no_new_privs = no_new_privs
        self.masked_paths = masked_paths or []  # hidden under /dev/null or an empty read-only tmpfs
        self.readonly_paths = readonly_paths or []  # bind-remounted read-only
        self.tty = tty  # open a pty in the container's devpts for the command, master sent up as Console
        self.init_binary = init_binary  # --init: the host's static init, bind-mounted read-only and run as PID 1
        self.read_only = read_only  # --read-only: the root is remounted read-only once every mount is in place
        self.overlay = overlay  # --rootfs DIR:O: an empty directory to hold the overlay's upper layer (a tmpfs)


class Unshared(_Message):
    """Child -> parent: the namespaces exist; the id maps may be written while the init is forked.
    Also fork server -> runtime, first on the request socket: its own user namespace exists, map it."""

    kind = "unshared"
    __slots__ = ()


class Ready(_Message):
    """Child -> parent: namespaces exist, the init process is blocked. Carries, in this order, the write end
    of the init's release pipe, the runtime's end of its report socket and, if asked for, the netlink socket."""

    kind = "ready"
    __slots__ = ("init_pid",)

    def __init__(self, init_pid: int) -> None:
        self.init_pid = init_pid


class Release(_Message):
    """Parent -> child, just before the runtime releases the init through its pipe: ``cgroup`` is the
    container's leaf, which the child removes if the runtime dies."""

    kind = "release"
    __slots__ = ("cgroup",)

    def __init__(self, cgroup: str | None = None) -> None:
        self.cgroup = cgroup


class Console(_Message):
    """PID 1 -> runtime, on the report socket, before the release (``tty``): its pty's master rides along."""

    kind = "console"
    __slots__ = ()


class Failed(_Message):
    """Child -> parent: setting up ("namespaces", "setup", "workdir") or executing ("exec") the command failed (the init
    reports it on its report socket, read by the runtime).
    Also fork server -> runtime: its user namespace ("namespaces") or a container's maps ("idmap") failed."""

    kind = "failed"
    __slots__ = ("errno", "message", "step")

    def __init__(self, step: str, message: str, errno: int = 0) -> None:
        self.step = step
        self.message = message
        self.errno = errno


class Exited(_Message):
    """Child -> parent: the container's init process ended (code, or the signal that killed it)."""

    kind = "exited"
    __slots__ = ("code", "signal")

    def __init__(self, code: int | None, signal: int | None) -> None:
        self.code = code
        self.signal = signal


class Fork(_Message):
    """Runtime -> fork server: fork an intermediate. The fds ride along, in this order: the reply
    channel (Forked, then Reaped, come back on it), the intermediate's control socket, its stdin,
    stdout and stderr."""

    kind = "fork"
    __slots__ = ()


class Forked(_Message):
    """Fork server -> runtime, on the reply channel: the intermediate runs. Carries its pidfd."""

    kind = "forked"
    __slots__ = ("pid",)

    def __init__(self, pid: int) -> None:
        self.pid = pid


class MapIds(_Message):
    """Runtime -> fork server, on the reply channel: write the uid/gid maps of the intermediate's new user
    namespace (nested in the fork server's, which the runtime mapped once)."""

    kind = "map_ids"
    __slots__ = ()


class IdsMapped(_Message):
    """Fork server -> runtime, on the reply channel: the maps are written (or Failed says why not)."""

    kind = "ids_mapped"
    __slots__ = ()


class Reaped(_Message):
    """Fork server -> runtime, on the reply channel, last: the intermediate exited (``waitpid`` status)."""

    kind = "reaped"
    __slots__ = ("status",)

    def __init__(self, status: int) -> None:
        self.status = status


Message = Config | Unshared | Ready | Release | Console | Failed | Exited | Fork | Forked | MapIds | IdsMapped | Reaped
_TYPES: dict[str, type[Any]] = {
    t.kind: t
    for t in (Config, Unshared, Ready, Release, Console, Failed, Exited, Fork, Forked, MapIds, IdsMapped, Reaped)
}
MAX_FDS = 8


def encode(message: Message) -> bytes:
    return json.dumps({"kind": message.kind, **message.fields()}).encode()


def decode(data: bytes) -> Message:
    raw = json.loads(data)
    cls = _TYPES[raw.pop("kind")]
    message: Message = cls(**raw)
    return message


def send(sock: socket.socket, message: Message, fds: list[int] | None = None) -> None:
    """Send one message, with fds as SCM_RIGHTS."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([encode(message)], ancillary)


def recv(sock: socket.socket) -> tuple[Message | None, list[int]]:
    """Receive one message and any fds; (None, []) at end of stream."""
    fds = array.array("i")
    data, ancdata, flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if flags & socket.MSG_CTRUNC:
        # The kernel dropped fds it could not install (the receiver is out of them): the message is unusable.
        for fd in fds:
            os.close(fd)
        raise OSError(errno.EMFILE, "file descriptors sent with a message were lost: too many open files")
    if not data:
        return None, list(fds)
    return decode(data), list(fds)
