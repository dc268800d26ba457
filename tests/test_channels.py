"""The runtime's protocol wrappers (aiocontain.channels) against a peer that breaks the protocol.

In-process, over real socket pairs and pipes: each step takes only what the
protocol allows there, names what it expected and what came otherwise, and
closes the fds that rode along with a message it refuses.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import socket
from collections.abc import Iterator

import anyio
import pytest

from aiocontain import messages
from aiocontain.channels import ChildChannel, InitChannel, UnexpectedMessage
from aiocontain.errors import (
    AiocontainError,
    CommandNotExecutable,
    CommandNotFound,
    SetupError,
)
from aiocontain.messages import STEP_EXEC, STEP_SETUP, Console, Failed, Ready, Unshared
from tests.conftest import open_fds

pytestmark = pytest.mark.anyio


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        yield ours, theirs


async def child_steps(ours: socket.socket, lost: list[AiocontainError] | None = None) -> ChildChannel:
    return ChildChannel(ours, "/bin/true", (lost if lost is not None else []).append)


async def test_the_child_channel_takes_each_step_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    release_r, release_w = os.pipe()
    report_ours, report_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    channel = await child_steps(ours)
    async with anyio.create_task_group() as tg:
        tg.start_soon(channel.read)
        messages.send(theirs, Ready(), [release_w, report_ours.fileno()])
        os.close(release_w)  # as PID 1 does: the runtime holds the only write end now
        report_ours.close()
        theirs.shutdown(socket.SHUT_WR)  # PID 1 closes the control socket after Ready
        ready = await channel.wait_ready()
        assert ready.netlink is None
        with anyio.fail_after(10):
            await channel.wait_closed()
    ready.init.release()
    assert os.read(release_r, 2) == messages.RELEASE
    assert os.read(release_r, 1) == b""  # the release closes the pipe: PID 1 sees end of file after it
    report_theirs.close()
    assert await ready.init.read_report() is None  # end of stream: the command was executed
    ready.init.close()
    os.close(release_r)


@pytest.mark.parametrize("wrong", [Console(), Unshared()])
async def test_an_unexpected_message_names_what_came_and_what_was_expected(
    pair: tuple[socket.socket, socket.socket], wrong: messages.Message
) -> None:
    ours, theirs = pair
    stray_r, stray_w = os.pipe()
    channel = await child_steps(ours)
    async with anyio.create_task_group() as tg:
        tg.start_soon(channel.read)
        before = open_fds()
        messages.send(theirs, wrong, [stray_w])
        with pytest.raises(UnexpectedMessage) as info:
            await channel.wait_ready()
        assert open_fds() == before  # the fd that came with it was closed, not leaked
        tg.cancel_scope.cancel()
    assert info.value.line() == (
        f"the container process sent {type(wrong).__name__} where Ready was expected (this is a bug)"
    )
    assert isinstance(info.value, SetupError) and info.value.expected == "Ready" and info.value.got == wrong
    os.close(stray_r)
    os.close(stray_w)


@pytest.mark.parametrize(
    ("failure", "kind", "line"),
    [
        (Failed(STEP_SETUP, "tap0: No such device", 19), SetupError, "container set-up failed: tap0: No such device"),
    ],
)
async def test_a_pid_1_that_fails_its_namespaces_set_up_is_the_error_of_its_step(
    pair: tuple[socket.socket, socket.socket], failure: Failed, kind: type[AiocontainError], line: str
) -> None:
    ours, theirs = pair
    channel = await child_steps(ours)
    async with anyio.create_task_group() as tg:
        tg.start_soon(channel.read)
        messages.send(theirs, failure)
        with pytest.raises(kind) as info:
            await channel.wait_ready()
        tg.cancel_scope.cancel()
    assert info.value.message == line


async def test_a_pid_1_gone_before_ready_is_one_line(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    channel = await child_steps(ours)
    async with anyio.create_task_group() as tg:
        tg.start_soon(channel.read)
        theirs.shutdown(socket.SHUT_WR)
        with pytest.raises(SetupError, match=r"^the container process exited during set-up$"):
            await channel.wait_ready()


async def test_a_pid_1_gone_before_its_config_is_the_same_line_not_a_broken_pipe(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    channel = await child_steps(ours)
    async with anyio.create_task_group() as tg:
        tg.start_soon(channel.read)
        theirs.shutdown(socket.SHUT_RDWR)  # a spare that died on its way to the request: sending finds no reader
        config = messages.Config(
            rootfs="/", argv=["true"], env={}, workdir="/", hostname="h", unshare_net=False, want_netlink=False
        )
        channel.send_config(config)
        with pytest.raises(SetupError, match=r"^the container process exited during set-up$"):
            await channel.wait_ready()


@pytest.fixture
def init_channel() -> Iterator[tuple[InitChannel, int, socket.socket]]:
    release_r, release_w = os.pipe()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    channel = InitChannel(release_w, ours.detach(), "frob")
    try:
        yield channel, release_r, theirs
    finally:
        channel.close()
        os.close(release_r)
        theirs.close()


@pytest.mark.parametrize(
    ("failure", "kind", "line", "code"),
    [
        (
            Failed(STEP_EXEC, "frob: No such file or directory", errno.ENOENT),
            CommandNotFound,
            "frob: command not found in the container",
            127,
        ),
        (
            Failed(STEP_EXEC, "frob: Permission denied", errno.EACCES),
            CommandNotExecutable,
            "cannot execute frob: Permission denied",
            126,
        ),
        (
            Failed(STEP_SETUP, "mount proc: Permission denied", errno.EACCES),
            SetupError,
            "container set-up failed: mount proc: Permission denied",
            125,
        ),
    ],
)
async def test_pid1s_report_is_the_error_with_podmans_exit_code(
    init_channel: tuple[InitChannel, int, socket.socket],
    failure: Failed,
    kind: type[AiocontainError],
    line: str,
    code: int,
) -> None:
    channel, _release_r, theirs = init_channel
    messages.send(theirs, failure)
    theirs.shutdown(socket.SHUT_WR)
    report = await channel.read_report()
    assert report == failure
    error = channel.error(report)
    assert type(error) is kind and error.message == line and error.exit_code == code


async def test_pid1s_report_refuses_what_it_never_sends(init_channel: tuple[InitChannel, int, socket.socket]) -> None:
    channel, _release_r, theirs = init_channel
    messages.send(theirs, Ready())
    with pytest.raises(UnexpectedMessage, match="sent Ready where Failed or the end of its report was expected"):
        await channel.read_report()


async def test_the_console_comes_before_the_release(init_channel: tuple[InitChannel, int, socket.socket]) -> None:
    channel, _release_r, theirs = init_channel
    master, slave = os.openpty()
    messages.send(theirs, Console(), [master])
    os.close(master)
    console = await channel.take_console()
    console.resize(30, 100)
    os.write(slave, b"hi")
    assert await console.receive() == b"hi"
    console.close_fd()
    os.close(slave)
    messages.send(theirs, Failed(STEP_SETUP, "no pty", 0))
    with pytest.raises(SetupError, match="container set-up failed: no pty"):
        await channel.take_console()  # a second one: PID 1 says why it has none


@contextlib.contextmanager
def no_free_descriptor() -> Iterator[None]:
    """This process at its open-file limit, with every number below it taken: the next fd it gets is EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_fds()) + 1, hard))
    fillers = []
    try:
        while True:
            try:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_running_out_of_descriptors_mid_message_is_said_and_the_reader_goes_on(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The kernel drops the fds of a message it cannot install (MSG_CTRUNC): that message is lost, so the
    container cannot go on, which the reader says (on_lost) before it reads on."""
    ours, theirs = pair
    lost: list[AiocontainError] = []
    said = anyio.Event()

    def on_lost(error: AiocontainError) -> None:
        lost.append(error)
        said.set()

    channel = ChildChannel(ours, "/bin/true", on_lost)
    stray_r, stray_w = os.pipe()
    before = open_fds()
    async with anyio.create_task_group() as tg:
        tg.start_soon(channel.read)
        with no_free_descriptor():
            messages.send(theirs, Ready(), [stray_w])
            with anyio.fail_after(10):
                await said.wait()
        assert [error.message.split(" (")[0] for error in lost] == ["too many open files"], lost
        messages.send(theirs, Failed(STEP_SETUP, "tap0: No such device", 19))
        with anyio.fail_after(10), pytest.raises(SetupError, match="tap0: No such device"):
            await channel.wait_ready()  # the next message still comes through
        tg.cancel_scope.cancel()
    assert open_fds() == before  # nothing of the lost message was left open
    os.close(stray_r)
    os.close(stray_w)


async def test_the_reader_stops_at_end_of_stream(pair: tuple[socket.socket, socket.socket]) -> None:
    """PID 1's end of stream ends the reader (and closes the inbox) without teardown's help."""
    ours, theirs = pair
    channel = await child_steps(ours)
    theirs.shutdown(socket.SHUT_WR)
    with anyio.fail_after(10):
        await channel.read()  # returns by itself
    with pytest.raises(SetupError, match=r"^the container process exited during set-up$"):
        await channel.wait_ready()


async def test_the_fds_of_a_message_after_teardown_are_closed(pair: tuple[socket.socket, socket.socket]) -> None:
    """Once teardown drained the inbox nobody receives: the fds of a message that comes later (a Ready whose
    set-up was cancelled) are closed as it arrives, not left in the inbox."""
    ours, theirs = pair
    channel = await child_steps(ours)
    release_r, release_w = os.pipe()
    before = open_fds()
    channel.drain()
    messages.send(theirs, Ready(), [release_r, release_w])
    theirs.shutdown(socket.SHUT_WR)
    with anyio.fail_after(10):
        await channel.read()
    assert open_fds() == before
    os.close(release_r)
    os.close(release_w)
