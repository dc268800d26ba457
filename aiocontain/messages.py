"""Every message between the three processes: runtime, fork server and PID 1.

Grouped below by the channel they travel on, in the order they come (the whole
sequence, and who holds which end: docs/architecture.md). Each channel is an
AF_UNIX SOCK_SEQPACKET socket pair carrying JSON, one datagram a message, so no
framing is needed, and file descriptors ride along as SCM_RIGHTS; PID 1's
release pipe carries one byte (RELEASE). Stdlib-only: the child
imports this on the start-up hot path.
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


# --- Failed.step: which step failed
STEP_NAMESPACES = "namespaces"  # unshare: the fork server's user namespace, or a container's namespaces
STEP_IDMAP = "idmap"  # the fork server writing a container's uid/gid maps
STEP_FORK = "fork"  # the fork server cloning a container's PID 1 (no process or memory left), or handing back its pidfd
STEP_SETUP = "setup"  # PID 1 building the root, its terminal, or hardening itself
STEP_WORKDIR = "workdir"  # PID 1 entering the working directory, which is not a directory (podman's 126)
STEP_EXEC = "exec"  # PID 1 executing the command (errno: ENOENT/ENOTDIR not found, else not executable)

# --- PID 1's release pipe (runtime -> PID 1): one byte, no messages
RELEASE = b"R"  # the host side is ready (cgroup, network, hooks): harden and exec the command
# End of file instead: the runtime went away, and PID 1 exits quietly.


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


# --- The request socket: runtime <-> fork server (one for the fork server's life)
# From the fork server, once, first: Unshared (or Failed); then a Spare for each spare it offers. From the
# runtime: Fork, one a container that no offered spare takes.


class Fork(_Message):
    """Runtime -> fork server: clone a container's PID 1 into new namespaces. The fds ride along, in this order:
    the reply channel (Forked, then Reaped, come back on it), PID 1's control socket, its stdin, stdout and
    stderr. ``unshare_net`` is the Config's (None: a network namespace of its own): the fork server's spare, a
    PID 1 cloned ahead, takes the request if it has these namespaces and has not been offered to the runtime
    yet. A spare gets a bare Fork with the last four fds, from the runtime (one offered to it) or from the fork
    server."""

    kind = "fork"
    __slots__ = ("unshare_net",)

    def __init__(self, unshare_net: bool | None = None) -> None:
        self.unshare_net = unshare_net


class Spare(_Message):
    """Fork server -> runtime, on the request socket: a spare is ready (its namespaces made, their maps
    written), and from now on only the runtime hands it a request. Carries, in this order, its pidfd, the
    socket it waits on for a bare Fork, and its reply channel (Reaped comes on it; no Forked). ``unshare_net``
    is the kind of namespaces it has. The runtime takes it for
    a request of that kind, or shuts its socket down (it exits)."""

    kind = "spare"
    __slots__ = ("pid", "unshare_net")

    def __init__(self, pid: int, unshare_net: bool) -> None:
        self.pid = pid
        self.unshare_net = unshare_net


# --- A reply channel: runtime <-> fork server (one a container, passed with its Fork)
# Forked (or Failed) first; Release from the runtime; Reaped last, then the fork server closes it.


class Forked(_Message):
    """Fork server -> runtime, on the reply channel: PID 1 runs, in its namespaces, their maps written. Carries
    its pidfd."""

    kind = "forked"
    __slots__ = ("pid",)

    def __init__(self, pid: int) -> None:
        self.pid = pid


class Reaped(_Message):
    """Fork server -> runtime, on the reply channel, last: PID 1 exited, and with it the whole container
    (``waitpid`` status)."""

    kind = "reaped"
    __slots__ = ("status",)

    def __init__(self, status: int) -> None:
        self.status = status


# --- The control socket: runtime <-> PID 1, until its Ready
# Config; then Ready (or Failed). PID 1 closes it after Ready.


class Config(_Message):
    """Runtime -> PID 1, first: everything it needs to build the container."""

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
        "rlimits",
        "rootfs",
        "seccomp",
        "tap",
        "tty",
        "unshare_net",
        "user",
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
        user: list[int] | None = None,
        rlimits: list[list[int]] | None = None,
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
        self.user = user  # --user: [uid, gid, *groups] the command runs as (child/ids.py); None: root, as set up
        self.rlimits = rlimits or []  # --ulimit: [resource, soft, hard], set just before exec
        self.read_only = read_only  # --read-only: the root is remounted read-only once every mount is in place
        self.overlay = overlay  # --rootfs DIR:O: an empty directory to hold the overlay's upper layer (a tmpfs)


class Unshared(_Message):
    """The namespaces exist. Fork server -> runtime on the request socket: its own user namespace, to be mapped
    once from outside. A spare -> the fork server on the spare's socket: it is ready to be offered."""

    kind = "unshared"
    __slots__ = ()


class Mapped(_Message):
    """Fork server -> a spare, first on the spare's socket: its id maps are written, so it may build what it
    can ahead (child/prebuilt.py)."""

    kind = "mapped"
    __slots__ = ()


class Ready(_Message):
    """PID 1 -> runtime, last on the control socket: its hostname, lo and (for slirp4netns) tap0 are set up, and
    it builds its root from now on. Carries, in this order, the write end of its release pipe, the runtime's end
    of its report socket and, if asked for, the netlink socket it opened in its network namespace."""

    kind = "ready"
    __slots__ = ()


class Release(_Message):
    """Runtime -> fork server, on the reply channel, just before the runtime releases PID 1 through its pipe:
    ``cgroup`` is the container's leaf, which the fork server removes if the runtime dies."""

    kind = "release"
    __slots__ = ("cgroup",)

    def __init__(self, cgroup: str | None = None) -> None:
        self.cgroup = cgroup


class Exited(_Message):
    """An exec'd process's helper -> runtime, last: the command ended (code, or the signal that killed it)."""

    kind = "exited"
    __slots__ = ("code", "signal")

    def __init__(self, code: int | None, signal: int | None) -> None:
        self.code = code
        self.signal = signal


# --- An exec helper's control socket: runtime <-> exec helper (child/join.py), one an exec'd process
# Exec from the runtime; then Console (with tty), Failed, or Forked (the command runs, with its pidfd); Exited last.


class Exec(_Message):
    """Runtime -> exec helper: run argv in the running container whose PID 1 is ``pid`` (host pid, started at
    ``start_time``), hardened as PID 1 was: the capability, seccomp, no_new_privs, rlimits and user fields
    mean what Config's do."""

    kind = "exec"
    __slots__ = (
        "argv",
        "caps",
        "env",
        "hostname",
        "no_new_privs",
        "pid",
        "rlimits",
        "seccomp",
        "start_time",
        "tty",
        "user",
        "workdir",
    )

    def __init__(
        self,
        pid: int,
        start_time: int | None,
        argv: list[str],
        env: dict[str, str],
        workdir: str,
        hostname: str,
        caps: list[int] | None = None,
        seccomp: str | None = None,
        no_new_privs: bool = False,
        rlimits: list[list[int]] | None = None,
        user: list[int] | None = None,
        tty: bool = False,
    ) -> None:
        self.pid = pid
        self.start_time = start_time  # aiocontain.proc.start_time of pid when recorded: a reused pid is refused
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.hostname = hostname  # names the container's session keyring, which the process joins
        self.caps = caps
        self.seccomp = seccomp
        self.no_new_privs = no_new_privs
        self.rlimits = rlimits or []
        self.user = user
        self.tty = tty


# --- The report socket: PID 1 -> runtime
# Console (with -t), or a Failed; end of stream once the command is executed (close-on-exec).


class Console(_Message):
    """PID 1 -> runtime, on the report socket, before the release (``tty``): its pty's master rides along."""

    kind = "console"
    __slots__ = ()


# --- On more than one channel


class Failed(_Message):
    """A step failed; ``step`` says which (the STEP_* constants), ``errno`` the kernel's reason where it gave one.

    On the request socket: the fork server's user namespace (STEP_NAMESPACES). On a reply channel: a container's
    id maps (STEP_IDMAP), or the clone of PID 1 into its namespaces (STEP_NAMESPACES; STEP_FORK: out of processes
    or memory). On the control socket: PID 1 setting up its namespaces (STEP_SETUP). On the report
    socket: PID 1 building the root or hardening itself (STEP_SETUP), entering the working directory
    (STEP_WORKDIR), or executing the command (STEP_EXEC)."""

    kind = "failed"
    __slots__ = ("errno", "message", "step")

    def __init__(self, step: str, message: str, errno: int = 0) -> None:
        self.step = step
        self.message = message
        self.errno = errno


Message = (
    Config | Unshared | Mapped | Ready | Release | Console | Failed | Exited | Fork | Spare | Forked | Reaped | Exec
)
_TYPES: dict[str, type[Any]] = {t.kind: t for t in _Message.__subclasses__()}  # every message class above
MAX_FDS = 8


def encode(message: Message) -> bytes:
    return json.dumps({"kind": message.kind, **message.fields()}).encode()


def decode(data: bytes) -> Message:
    raw = json.loads(data)
    cls = _TYPES[raw.pop("kind")]
    message: Message = cls(**raw)
    return message


def close_fds(fds: list[int]) -> None:
    """Close the fds that came with a message nobody will use (each end of the protocol has such messages)."""
    for fd in fds:
        os.close(fd)


def send(sock: socket.socket, message: Message, fds: list[int] | None = None, flags: int = 0) -> None:
    """Send one message, with fds as SCM_RIGHTS."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([encode(message)], ancillary, flags)


_PEEKED = bytearray(1)  # what the length probe reads into: never looked at


def recv(sock: socket.socket) -> tuple[Message | None, list[int]]:
    """Receive one message and any fds; (None, []) at end of stream."""
    data, fds = recv_raw(sock)
    return (decode(data) if data else None), fds


def recv_raw(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Receive one message as it was encoded, and any fds; (b"", []) at end of stream."""
    try:
        return _recv_raw_once(sock)
    except ConnectionResetError:
        # The peer closed its end with a message of ours unread (the fork server reaping a PID 1 before it read
        # the runtime's Release; a spare's Unshared when the server handed it a request first). The kernel says
        # so once, ahead of what the peer sent before closing, which is still queued; its end of stream follows.
        # Once: at the peek, or at the read when the close came between the two (the peek saw the message).
        return _recv_raw_once(sock)


def _recv_raw_once(sock: socket.socket) -> tuple[bytes, list[int]]:
    # Its length first (MSG_PEEK|MSG_TRUNC gives the whole datagram's), then a buffer of that size: one of
    # MAX_MESSAGE was mapped and unmapped again for every message (~20 us each, ~4 for the peek and the read).
    size = sock.recv_into(_PEEKED, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
    fds = array.array("i")
    # Close-on-exec, as every fd of ours: one received inheritable would reach any helper started meanwhile.
    data, ancdata, flags, _addr = sock.recvmsg(
        min(max(size, 1), MAX_MESSAGE), socket.CMSG_SPACE(MAX_FDS * fds.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if flags & socket.MSG_CTRUNC:
        # The kernel dropped fds it could not install (the receiver is out of them): the message is unusable.
        close_fds(list(fds))
        raise OSError(errno.EMFILE, "file descriptors sent with a message were lost: too many open files")
    return data, list(fds)
