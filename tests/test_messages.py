"""The parent <-> child messages: JSON encoding, and datagrams with fds over a SOCK_SEQPACKET pair."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import pytest

from aiocontain import messages
from aiocontain.messages import (
    Config,
    Console,
    Exec,
    Exited,
    Failed,
    Fork,
    Forked,
    Mapped,
    Ready,
    Reaped,
    Release,
    Spare,
    Unshared,
)

ALL_MESSAGES: list[messages.Message] = [
    Config(
        rootfs="/tmp/rootfs",
        argv=["sh", "-c", "echo 'hé'"],
        env={"PATH": "/bin", "EMPTY": ""},
        workdir="/work",
        hostname="box",
        unshare_net=True,
        want_netlink=True,
        etc_files={"/etc/hosts": "127.0.0.1 localhost\n"},
        init=True,
        mount_cgroup=True,
        mounts=[{"type": "bind", "source": "/host/data", "target": "/mnt/data", "flags": 1, "dir": True}],
        tap="tap0",
        caps=[0, 1, 21],
        seccomp="IAAAAAQAAAA=",
        no_new_privs=True,
        masked_paths=["/proc/kcore", "/sys/firmware"],
        readonly_paths=["/proc/sys"],
        tty=True,
        init_binary="/usr/bin/catatonit",
        user=[1000, 1000, 100],
        rlimits=[[7, 1024, 2048]],
        read_only=True,
        overlay="/run/user/1000/aiocontain-x/overlay",
    ),
    Config(
        rootfs="/r",
        argv=["true"],
        env={},
        workdir="/",
        hostname="h",
        unshare_net=False,
        want_netlink=False,
    ),
    Unshared(),
    Mapped(),
    Ready(),
    Release(),
    Release(cgroup="/sys/fs/cgroup/user.slice/aiocontain/0123456789ab"),
    Console(),
    Failed(step="exec", message="no such file", errno=2),
    Failed(step="setup", message="mount failed"),
    Exited(code=3, signal=None),
    Exited(code=None, signal=9),
    Fork(),
    Fork(unshare_net=True),
    Spare(pid=4242, unshare_net=False),
    Forked(pid=4243),
    Reaped(status=9),
    Reaped(status=3 << 8),
    Exec(pid=42, start_time=None, argv=["true"], env={}, workdir="/", hostname="box"),
    Exec(
        pid=42,
        start_time=123456,
        argv=["sh", "-c", "echo 'hé'"],
        env={"A": "b"},
        workdir="/tmp",
        hostname="box",
        caps=[0, 21],
        seccomp="IAAAAAQAAAA=",
        no_new_privs=True,
        rlimits=[[7, 1024, 2048]],
        user=[1000, 1000, 100],
        tty=True,
    ),
]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        yield a, b


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_encode_decode_round_trip(message: messages.Message) -> None:
    data = messages.encode(message)
    assert isinstance(data, bytes)
    assert json.loads(data)["kind"] == type(message).kind
    decoded = messages.decode(data)
    assert type(decoded) is type(message)
    assert decoded == message


def _message_types() -> set[type]:
    """Every message type messages.py defines: the concrete subclasses of its base class, found in the module."""
    return {
        value
        for value in vars(messages).values()
        if isinstance(value, type) and issubclass(value, messages._Message) and value is not messages._Message
    }


def test_every_message_type_is_covered() -> None:
    # Found in the module, not listed by hand: a type added there without a case here fails this test.
    assert len(_message_types()) >= 12
    assert {type(m) for m in ALL_MESSAGES} == _message_types()
    kinds = [t.kind for t in _message_types()]
    assert "" not in kinds and len(set(kinds)) == len(kinds)  # each decodes to itself alone


def test_the_full_config_sets_every_field_to_something_but_its_default() -> None:
    # So that a field the encoding dropped or renamed would come back as its default and fail the round trip.
    full, minimal = ALL_MESSAGES[0], ALL_MESSAGES[1]
    assert isinstance(full, Config) and isinstance(minimal, Config)
    same = [name for name in Config.__slots__ if getattr(full, name) == getattr(minimal, name)]
    assert same == [], same


def test_decode_rejects_unknown_kind() -> None:
    with pytest.raises(KeyError):
        messages.decode(b'{"kind": "bogus"}')


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_send_recv_without_fds(pair: tuple[socket.socket, socket.socket], message: messages.Message) -> None:
    a, b = pair
    messages.send(a, message)
    received, fds = messages.recv(b)
    assert received == message
    assert fds == []


def test_messages_keep_their_boundaries(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    for message in ALL_MESSAGES:
        messages.send(a, message)
    for message in ALL_MESSAGES:
        assert messages.recv(b) == (message, [])


def test_send_recv_passes_a_real_fd(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    read_end, write_end = os.pipe()
    try:
        messages.send(a, Ready(), [write_end])
        received, fds = messages.recv(b)
        assert received == Ready()
        assert len(fds) == 1
        passed = fds[0]
        try:
            assert passed != write_end  # a new descriptor for the same pipe
            assert os.write(passed, b"through scm_rights") == len(b"through scm_rights")
        finally:
            os.close(passed)
        os.close(write_end)
        write_end = -1
        assert os.read(read_end, 100) == b"through scm_rights"
        assert os.read(read_end, 100) == b""  # every write end is closed now
    finally:
        os.close(read_end)
        if write_end != -1:
            os.close(write_end)


def test_received_fds_are_close_on_exec_as_all_of_ours(pair: tuple[socket.socket, socket.socket]) -> None:
    """An fd received inheritable would reach any process started meanwhile (an exec helper, a network
    helper) without being named for it: the kernel marks them close-on-exec as they arrive."""
    a, b = pair
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    try:
        messages.send(a, Ready(), [write_end])
        _, (passed,) = messages.recv(b)
        assert not os.get_inheritable(passed)
        os.close(passed)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_send_recv_passes_several_fds_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    pipes = [os.pipe() for _ in range(3)]
    try:
        messages.send(a, Release(), [w for _, w in pipes])
        received, fds = messages.recv(b)
        try:
            assert received == Release()
            assert len(fds) == 3
            for index, fd in enumerate(fds):
                os.write(fd, str(index).encode())
        finally:
            close_all(fds)
        for index, (r, _) in enumerate(pipes):
            assert os.read(r, 10) == str(index).encode()
    finally:
        close_all([fd for p in pipes for fd in p])


def test_recv_returns_none_at_end_of_stream(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    messages.send(a, Exited(code=0, signal=None))
    a.close()
    assert messages.recv(b) == (Exited(code=0, signal=None), [])
    assert messages.recv(b) == (None, [])
    assert messages.recv(b) == (None, [])  # and stays there


def test_recv_end_of_stream_in_the_other_direction(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.close()
    assert messages.recv(a) == (None, [])


def test_a_large_message_arrives_whole_and_fds_only_once(pair: tuple[socket.socket, socket.socket]) -> None:
    """recv sizes its buffer by the datagram's own length (a peek): a Config far above a page (a seccomp program,
    a large environment) arrives whole after a small one, and the peek installs none of the fds that ride along."""
    a, b = pair
    big = Config(
        rootfs="/r",
        argv=["x"],
        env={f"V{i}": "v" * 100 for i in range(400)},
        workdir="/",
        hostname="h",
        unshare_net=True,
        want_netlink=False,
        seccomp="A" * 65536,
    )
    messages.send(a, Release())
    messages.send(a, big)
    assert messages.recv(b) == (Release(), [])
    assert messages.recv(b) == (big, [])
    read_end, write_end = os.pipe()
    try:
        before = len(os.listdir("/proc/self/fd"))
        messages.send(a, Release(), [write_end])
        received, fds = messages.recv(b)
        assert received == Release() and len(fds) == 1
        assert len(os.listdir("/proc/self/fd")) == before + 1
        close_all(fds)
    finally:
        close_all([read_end, write_end])


def test_a_peer_that_closed_with_ours_unread_still_gives_what_it_sent(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """A peer closing with one of our messages unread makes the kernel report ECONNRESET once, ahead of what the
    peer sent before it closed: the fork server's Reaped after an unread Release, a request after a spare's
    unread Unshared. recv gives that message, then the end of the stream."""
    a, b = pair
    messages.send(a, Unshared())
    messages.send(b, Fork())
    b.close()  # our Unshared unread
    assert messages.recv(a) == (Fork(), [])
    assert messages.recv(a) == (None, [])


def test_a_peer_that_closes_between_the_peek_and_the_read_still_gives_what_it_sent(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The same close, timed between recv's peek at the message's length and its read: the spare had peeked at
    the server's Fork when the server closed with its Unshared unread, and died of the ECONNRESET at the read (a
    container's start then failed, "the container process exited during set-up", or a traceback from sending
    its Config). The kernel's report comes at the read then; the message is still there."""
    a, b = pair

    class ClosesPeerAfterThePeek(socket.socket):
        def recv_into(self, *args: object, **kwargs: object) -> int:
            size = super().recv_into(*args, **kwargs)  # type: ignore[arg-type]
            if not b._closed:  # type: ignore[attr-defined]
                b.close()
            return size

    spare = ClosesPeerAfterThePeek(fileno=a.detach())
    try:
        messages.send(spare, Unshared())
        messages.send(b, Fork())
        assert messages.recv(spare) == (Fork(), [])
        assert messages.recv(spare) == (None, [])
    finally:
        spare.close()
