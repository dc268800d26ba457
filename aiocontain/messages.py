"""Typed messages between the runtime (parent) and the container's child process.

They travel as JSON over one AF_UNIX SOCK_SEQPACKET socket pair: one datagram a
message, so no framing is needed, and file descriptors ride along as SCM_RIGHTS.
Stdlib-only: the child imports this on the start-up hot path.
"""

from __future__ import annotations

import array
import json
import socket
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

MAX_MESSAGE = 1 << 20


@dataclass(frozen=True)
class Config:
    """Parent -> child, first: everything the child needs to build the container."""

    kind: ClassVar[str] = "config"
    rootfs: str
    argv: list[str]
    env: dict[str, str]
    workdir: str
    hostname: str
    unshare_net: bool
    want_netlink: bool
    etc_files: dict[str, str] = field(default_factory=dict)
    init: bool = False
    own_process_group: bool = False


@dataclass(frozen=True)
class Ready:
    """Child -> parent: namespaces exist, the init process is blocked. Carries the netlink fd."""

    kind: ClassVar[str] = "ready"
    init_pid: int


@dataclass(frozen=True)
class Release:
    """Parent -> child: the host side is set up; build the root filesystem and exec."""

    kind: ClassVar[str] = "release"


@dataclass(frozen=True)
class Started:
    """Child -> parent: the command was executed."""

    kind: ClassVar[str] = "started"


@dataclass(frozen=True)
class Failed:
    """Child -> parent: setting up or executing the command failed."""

    kind: ClassVar[str] = "failed"
    step: str  # "setup" or "exec"
    message: str
    errno: int = 0


@dataclass(frozen=True)
class Exited:
    """Child -> parent: the container's init process ended."""

    kind: ClassVar[str] = "exited"
    code: int | None
    signal: int | None


Message = Config | Ready | Release | Started | Failed | Exited
_TYPES: dict[str, type[Any]] = {t.kind: t for t in (Config, Ready, Release, Started, Failed, Exited)}


def encode(message: Message) -> bytes:
    return json.dumps({"kind": message.kind, **asdict(message)}).encode()


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
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if not data:
        return None, list(fds)
    return decode(data), list(fds)
