"""The fork server process (a zygote): clones a container's PID 1 into its new namespaces on request.

The runtime's handle on it, which starts it and sends it requests, is ``aiocontain.forkserver``.

Starting a Python interpreter and importing the child modules costs a container
tens of milliseconds and most of its CPU. This process pays that once: it has
``aiocontain.child.init`` imported, and for each ``Fork`` request it clones a
child straight into new user, mount, PID, UTS, IPC and (unless the container
shares the host's) network namespaces (``syscalls.clone_into_namespaces``):
the container's PID 1, as clean as a fresh process (only its control socket
and stdio open, default signal dispositions, an empty signal mask).
Single-threaded and stdlib-only, so forking it is safe.

It lives in a user namespace of its own, which the owner maps once, the way
podman's pause process holds its user namespace: 0 to the user and, where the
user has subordinate ids, 1..N to them (newuidmap/newgidmap). Each container's
user namespace is created inside this one by the clone, and this server, root
of the parent namespace, writes its maps at once: the identity over the ids
mapped here. So a container costs no setuid helper, and still has a user
namespace of its own (its root holds no capability over the fork server or
other containers).

The request socket (SOCK_SEQPACKET) first carries, from the server, ``Unshared``
(or ``Failed``) once its user namespace exists; then, from the owner, ``Fork``
with five fds: a reply channel, PID 1's control socket, its stdin, stdout and
stderr. On the channel go ``Forked`` (with PID 1's pidfd, its maps written) or
``Failed``; from the owner ``Release``, naming the container's cgroup; and, once
the kernel says PID 1 exited (its pidfd is readable) and it is reaped, ``Reaped``
with its status; then the channel is closed. No PID 1 is ever left a zombie.

When the request socket reaches end of stream, or the owner's process exits
(its pidfd, from ``prepare``), the server takes no more requests, kills every
container (its PID 1: the PID namespace ends with it), reaps them, removes the
cgroups the owner named and exits. Each PID 1 dies with the server (its parent
death signal), so no container outlives both.

Once it has served two requests (an embedding program that runs container after
container, not a CLI run's one), it keeps one PID 1 cloned ahead: a spare that
holds no fd but its own socket, has the namespaces of the kind the last request
asked for and their maps, brings their lo up, builds its /proc, /sys and /dev
once told its maps are written (Mapped; child/prebuilt.py), says Unshared, and
then waits there for a request's fds. So the clone, the child's start, the maps
and most of the root's mounts are off the container's path.

Once ready the spare is offered to the owner (``Spare`` on the request socket,
with its pidfd, a copy of this server's end of its socket and a reply channel):
the owner hands it a request of that kind itself, a bare Fork on that socket,
and the container's start takes no hop through this server (no Forked). The
owner shuts the socket down for a spare it does not take (of another kind,
which this server then lets go once the owner's Fork of the new kind comes).
From its offer the spare is a child like any PID 1, reaped with its Reaped;
whether the owner took it is seen when a child is reaped (it closed its
socket). A request that reaches this server while the spare is not offered yet
goes to it, as before offers; any other gets a fresh clone, and the spare is
let go (while offered, the owner had no use of it for this request; of another
kind, the next one is of the new kind). The replacement is cloned when a
container's PID 1 is reaped, right after its Reaped, when no start competes for
the CPUs.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import select
import signal
import socket

from aiocontain import messages, syscalls
from aiocontain.child import cgroup, init, mounts, netdev, prebuilt
from aiocontain.messages import Failed, Fork, Forked, Mapped, Reaped, Release, Spare, Unshared

TYPE_CHECKING = False  # typing is a heavy import for the child
if TYPE_CHECKING:
    from typing import NoReturn

CONTROL_FD = 3  # where PID 1 finds its control socket
_FDS_PER_FORK = 5  # channel, control, stdin, stdout, stderr
SPARE_AFTER = 2  # requests served before a spare is kept forked ahead
SPARE_NAME = b"aiocontain-spar"  # its comm (15 bytes at most) while it waits: tests tell it from a leftover
# A container's namespaces, made by the clone of its PID 1 (and the network namespace unless it shares the host's).
NAMESPACES = (
    syscalls.CLONE_NEWUSER
    | syscalls.CLONE_NEWNS
    | syscalls.CLONE_NEWPID
    | syscalls.CLONE_NEWUTS
    | syscalls.CLONE_NEWIPC
)


def main(fd: int) -> NoReturn:
    """Entry point of ``python -I -S`` with the request socket at fd."""
    owner = prepare(os.getppid())
    requests = socket.socket(fileno=fd)
    own_user_namespace(requests)
    serve(requests, owner)


def own_user_namespace(requests: socket.socket) -> None:
    """Enter a new user namespace and tell the owner, who maps it before its first Fork request."""
    try:
        syscalls.unshare(syscalls.CLONE_NEWUSER)
        message: messages.Message = Unshared()
    except OSError as exc:
        message = Failed(messages.STEP_NAMESPACES, exc.strerror or str(exc), exc.errno or 0)
    try:
        messages.send(requests, message)
    except OSError:
        os._exit(0)  # the owner is gone


def prepare(owner: int) -> int:
    """Detach from the owner's session, terminal signals and stdio; return a pidfd of the owner, which says
    when it has exited.

    A session of its own: a signal the caller's shell sends to its process group
    (``kill -- -PGID``, ``timeout``, a ^C) is the owner's to handle, and reaches
    neither this server nor a container's PID 1, whose exit statuses would be lost
    with them. SIGINT is ignored too, for a server started in a session of the
    owner's own. Its stdio is /dev/null, so that it never holds the owner's pipes
    open (a caller reading them to end of file).

    The owner's pidfd, not a parent death signal: once the owner is gone this
    server still has work to do (kill its containers and remove their cgroups,
    ``serve``), and a copy of the request socket that a fork of the owner's keeps
    open must not keep it alive.
    """
    try:
        os.setsid()
    except PermissionError:
        pass  # already a process group leader (started as a session's first process): nothing to leave
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # the command holds its stop signals: not ours to hold
    try:
        pidfd = os.pidfd_open(owner)
    except OSError:
        os._exit(0)  # gone already
    if os.getppid() != owner:
        os._exit(0)  # the owner died, and its pid may be another's, before the pidfd was opened
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    os.close(null)
    os.chdir("/")  # never keep a directory of the owner's busy
    return pidfd


def serve(requests: socket.socket, owner: int) -> NoReturn:
    """Clone on request and reap, until end of stream (or the owner's exit, its pidfd) and no child left."""
    # Everything imported so far is shared with every child: frozen, no collection in a child walks
    # (and so copies) those pages. The CLI's command held collection off for its start-up (aiocontain.command):
    # this process and its children live as long as their containers, so they collect again.
    gc.freeze()
    gc.enable()
    state = _State(requests, owner)
    while state.accepting or state.children or state.spare or state.retired:
        # The request last: a fork opens fds, which may take the numbers of ones closed earlier in this round.
        for fd, _event in sorted(state.poller.poll(), key=lambda item: item[0] == requests.fileno()):
            spare = state.spare
            if spare is not None and not spare.offered and fd == spare.sock.fileno():
                _spare_says(state, spare)
            elif spare is not None and not spare.offered and fd == spare.pidfd:
                _let_go(state, spare)  # it died (killed) before any request: the next one forks
            elif fd in state.retired:
                state.poller.unregister(fd)
                os.waitpid(state.retired.pop(fd), 0)
                os.close(fd)
            elif fd in state.channels:
                _answer(state, state.children[state.channels[fd]])
            elif fd in state.children:
                _reap(state, fd)
            elif fd == requests.fileno() and state.accepting:
                _request(state)
            elif fd == owner and state.accepting:
                _owner_gone(state)
    os._exit(0)


class _State:
    """The server's bookkeeping: its poller, children, their reply channels, and the spare."""

    def __init__(self, requests: socket.socket, owner: int) -> None:
        self.requests = requests
        self.owner = owner
        self.server = os.getpid()
        self.poller = select.poll()
        self.poller.register(requests, select.POLLIN)
        self.poller.register(owner, select.POLLIN)
        self.children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, reply channel)
        self.channels: dict[int, int] = {}  # reply channel fd -> pidfd, while the owner may still send on it
        self.cgroups: dict[int, str] = {}  # pid -> its container's cgroup (Release), removed if the owner is gone
        self.maps = _NestedMaps()
        self.accepting = True
        self.served = 0
        self.unshare_net: bool | None = None  # the last request's network namespace: the next spare's
        self.spare: _Spare | None = None
        self.retired: dict[int, int] = {}  # pidfd -> pid of spares let go, reaped once they have exited
        self.let_go: set[int] = set()  # offered spares let go: no replacement at their reap, the next one's


class _Spare:
    """A PID 1 cloned ahead, into the namespaces a request of the kind last served asks for: it brings lo up,
    says it is ready, and then waits for a request's fds on its socket."""

    def __init__(self, pid: int, pidfd: int, sock: socket.socket, unshare_net: bool) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.sock = sock
        self.unshare_net = unshare_net
        self.offered = False  # once offered to the owner: its to hand over, and a child, reaped as any


def _reap(state: _State, pidfd: int) -> None:
    pid, channel = state.children.pop(pidfd)
    state.poller.unregister(pidfd)
    if state.channels.pop(channel.fileno(), None) is not None:
        state.poller.unregister(channel)
    _, status = os.waitpid(pid, 0)
    leaf = state.cgroups.pop(pid, None)
    if leaf is not None and not state.accepting:
        cgroup.remove(leaf)  # the owner, who removes it otherwise, is gone
    spare, replace = state.spare, pid not in state.let_go
    state.let_go.discard(pid)
    if spare is not None and spare.offered and (spare.pidfd == pidfd or _claimed(spare)):
        # The offered spare is no longer one: this is its end (its container's, or it died unclaimed), or the
        # owner handed it a request (it closed its socket on taking it), told only now, off any start's path.
        state.spare = None
        spare.sock.close()
    os.close(pidfd)
    _reply(channel, Reaped(status))  # first: the runtime waits for it, and it ends the container's wait
    channel.close()
    # The spare is cloned here, when a container has ended, not when a request is served: then the runtime,
    # the new PID 1 and this server all want the CPUs, and the spare's clone would slow that container's
    # start. After the Reaped, not before: it would hold up that container's end.
    if replace:
        _keep_spare(state)


def _channels(state: _State) -> list[socket.socket]:
    """Every reply channel this server holds: a forked child detaches them (its closerange closes the fds)."""
    return [channel for _, channel in state.children.values()]


def _keep_spare(state: _State) -> None:
    if state.accepting and state.spare is None and state.served >= SPARE_AFTER and state.unshare_net is not None:
        _fork_spare(state, state.unshare_net)


def _fork_spare(state: _State, unshare_net: bool) -> None:
    try:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError:
        return
    # Named before the clone, so that it is never seen unnamed (the tests tell it from a leftover by its name).
    name = _get_comm()
    syscalls.set_name(SPARE_NAME)
    try:
        pid, pidfd = _clone(state, unshare_net)
    except _CloneFailed:
        pid = -1
    if pid == 0:
        mine.detach()
        _wait_as_spare(theirs, name, unshare_net)
    syscalls.set_name(name)
    theirs.close()
    if pid < 0:
        mine.close()
        return
    try:
        messages.send(mine, Mapped())  # _clone wrote its maps: it may build ahead now
    except OSError:
        pass  # it died: its pidfd says so
    state.poller.register(pidfd, select.POLLIN)
    state.poller.register(mine, select.POLLIN)
    state.spare = _Spare(pid, pidfd, mine, unshare_net)


def _wait_as_spare(sock: socket.socket, name: bytes, unshare_net: bool) -> NoReturn:
    """In the spare, PID 1 of its namespaces: hold nothing of the server's but this socket (no other container's
    channel or pidfd), bring lo up, build what it can of its /proc, /sys and /dev once the server says its maps
    are written (Mapped; child/prebuilt.py), say Unshared (the server offers us), wait for a request's fds, then
    go on as a fresh clone would, with lo up and those trees."""
    try:
        _start_init()
        own = sock.fileno()
        os.closerange(3, own)
        os.closerange(own + 1, os.sysconf("SC_OPEN_MAX"))
        if unshare_net:
            netdev.bring_up("lo")
        message, fds = messages.recv(sock)
        if not isinstance(message, Mapped) or fds:
            os._exit(0)  # end of stream: the server is gone
        # Part by part while nothing comes: a request the server hands us first (a container started back to
        # back) waits for one part at most. Offered only once built, so an offered spare has every part.
        trees = prebuilt.build(unshare_net, lambda: _readable(sock))
        try:
            messages.send(sock, Unshared())  # ready: the server offers us
        except OSError:
            pass  # the server closed its end: it retired us, or handed us a request already (the recv tells)
        message, fds = messages.recv(sock)  # what the server sent, even if it closed with our Unshared unread
        if not isinstance(message, Fork) or len(fds) != _FDS_PER_FORK - 1:
            os._exit(0)  # end of stream: the server retired it
        syscalls.set_name(name)
        sock.close()
    except BaseException:  # noqa: BLE001 - nothing to report to: the server reaps it, the runtime sees no Forked
        os._exit(125)
    control, *stdio = fds
    _become_init(control, stdio, unshare_net, spare=True, trees=trees)


def _readable(sock: socket.socket) -> bool:
    """Whether sock has something to read (or its end) now: no wait."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _get_comm() -> bytes:
    with open("/proc/self/comm", "rb") as file:
        return file.read().rstrip(b"\n")


def _spare_says(state: _State, spare: _Spare) -> None:
    """The spare's Unshared: it is ready (its maps were written at its clone, its lo is up); offer it to the
    owner. Anything else: it is gone."""
    try:
        message, fds = messages.recv(spare.sock)
    except OSError:
        message, fds = None, []
    messages.close_fds(fds)
    if isinstance(message, Unshared):
        _offer(state, spare)
        return
    _let_go(state, spare)


def _offer(state: _State, spare: _Spare) -> None:
    """Give the owner what it needs to hand the spare a request itself (its pidfd, its socket, a reply channel
    for Reaped), so that a container's start takes no hop through this server. Not offered (the owner's queue
    full, or out of fds): it stays ours to hand over, as before."""
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError:
        return
    offer = Spare(spare.pid, spare.unshare_net)
    try:
        # Never blocking: an owner that has stopped forking must not stop this server with a queue of offers.
        messages.send(state.requests, offer, [spare.pidfd, spare.sock.fileno(), theirs.fileno()], socket.MSG_DONTWAIT)
    except OSError:
        ours.close()
        return
    finally:
        theirs.close()
    spare.offered = True
    # A child from now on, reaped as any PID 1 (Reaped on its channel). Its socket says nothing more:
    # whether the owner handed it a request (it closes the socket then) is looked at when a child is reaped.
    state.poller.unregister(spare.sock)
    state.poller.register(ours, select.POLLIN)
    state.children[spare.pidfd] = (spare.pid, ours)
    state.channels[ours.fileno()] = spare.pidfd


def _claimed(spare: _Spare) -> bool:
    """Whether an offered spare has closed its socket: it took the owner's request (or it is dying)."""
    poller = select.poll()
    poller.register(spare.sock, 0)  # POLLHUP is reported whatever the mask
    return any(event & select.POLLHUP for _fd, event in poller.poll(0))


def _kill(spare: _Spare) -> None:
    try:
        signal.pidfd_send_signal(spare.pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass  # dead already: what failed with it


def _let_go(state: _State, spare: _Spare) -> None:
    """Forget the spare: closing its socket ends its wait (it exits), and its exit is reaped when its pidfd
    says so. An offered one is a child already (reaped with its Reaped), and the owner may hold its socket
    too: shut down, which ends the wait whoever holds it; its replacement waits for the next reap."""
    state.spare = None
    if spare.offered:
        try:
            spare.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # it has closed its end: taken by the owner, or gone
        spare.sock.close()
        state.let_go.add(spare.pid)
        return
    state.poller.unregister(spare.sock)
    spare.sock.close()
    state.retired[spare.pidfd] = spare.pid


def _hand_to_spare(state: _State, unshare_net: bool, control: int, stdio: list[int]) -> tuple[int, int] | None:
    """Give a request's fds to the spare if it has the namespaces the request asks for and is not offered to
    the owner: (pid, pidfd) of the PID 1 it becomes; None without one."""
    spare = state.spare
    if spare is None:
        return None
    if spare.unshare_net != unshare_net:
        _let_go(state, spare)  # the next spare makes this request's kind
        return None
    if spare.offered:
        # The owner had no use of it for this request: it took it for another one (its request is queued in
        # the spare already, which a shutdown leaves to be read), its offer crossed this request, or it lost
        # the offer (out of fds). Let go, so that none stays offered for ever; the next reap replaces it.
        _let_go(state, spare)
        return None
    try:
        messages.send(spare.sock, Fork(), [control, *stdio])
    except OSError:
        _kill(spare)  # it cannot take them: a fresh fork will
        _let_go(state, spare)
        return None
    state.spare = None
    state.poller.unregister(spare.sock)
    spare.sock.close()
    state.poller.unregister(spare.pidfd)  # registered again as a child's by the caller
    return spare.pid, spare.pidfd


def _request(state: _State) -> None:
    """Serve one request; at end of stream (the owner closed its end or died) take no more."""
    requests, poller = state.requests, state.poller
    try:
        message, fds = messages.recv(requests)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return  # this request's fds are lost (the owner sees its channel close); later ones may fit
        message, fds = None, []
    if message is None:
        messages.close_fds(fds)
        _owner_gone(state)
        return
    state.served += 1
    if not isinstance(message, Fork) or len(fds) != _FDS_PER_FORK:
        messages.close_fds(fds)
        return
    state.unshare_net = True if message.unshare_net is None else message.unshare_net  # None: a network of its own
    forked = _fork(state, state.unshare_net, fds)
    if forked is not None:
        pidfd, pid, channel = forked
        poller.register(pidfd, select.POLLIN)
        poller.register(channel, select.POLLIN)
        state.children[pidfd] = (pid, channel)
        state.channels[channel.fileno()] = pidfd


def _owner_gone(state: _State) -> None:
    """The owner closed its end of the request socket, or exited: take no more requests, and kill every
    container, which nobody follows any more (its PID 1, and with it its PID namespace). Each is reaped as it
    exits, and its cgroup removed."""
    state.accepting = False
    state.poller.unregister(state.requests)
    state.poller.unregister(state.owner)
    if state.spare is not None:
        _let_go(state, state.spare)  # it exits, and its pidfd says so
    for pidfd in state.children:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass  # exited already: reaped in its turn


def _answer(state: _State, child: tuple[int, socket.socket]) -> None:
    """A message on a child's reply channel: Release (its cgroup), or end of stream (the owner let it go)."""
    pid, channel = child
    try:
        message, fds = messages.recv(channel)
    except OSError:
        message, fds = None, []
    messages.close_fds(fds)
    if message is None:
        del state.channels[channel.fileno()]
        state.poller.unregister(channel)
    elif isinstance(message, Release) and message.cgroup:
        state.cgroups[pid] = message.cgroup


class _NestedMaps:
    """The maps of a container's user namespace: the identity over every range mapped in ours.

    One line per range of ours: the kernel maps a child's range only when it lies
    within a single range of its parent's map.
    """

    def __init__(self) -> None:
        self._uid: bytes | None = None
        self._gid = b""

    def write(self, pid: int) -> None:
        if self._uid is None:
            self._uid, self._gid = _identity("/proc/self/uid_map"), _identity("/proc/self/gid_map")
        for name, content in (("uid_map", self._uid), ("gid_map", self._gid)):
            fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, content)
            finally:
                os.close(fd)


def _identity(path: str) -> bytes:
    with open(path, "rb") as file:
        ranges = [line.split() for line in file.read().splitlines() if line.strip()]
    if not ranges:
        raise OSError(errno.EPERM, "the fork server's user namespace has no id map")
    return b"".join(b"%s %s %s\n" % (inside, inside, count) for inside, _outside, count in ranges)


def _fork(state: _State, unshare_net: bool, fds: list[int]) -> tuple[int, int, socket.socket] | None:
    """Clone one PID 1 into new namespaces and write their id maps (or hand the request to the spare); None
    when the kernel refused (the runtime gets the reason, or sees its channel close)."""
    channel_fd, control, *stdio = fds
    handed = _hand_to_spare(state, unshare_net, control, stdio)
    if handed is not None:
        pid, pidfd = handed
    else:
        try:
            pid, pidfd = _clone(state, unshare_net)
        except _CloneFailed as failed:
            messages.close_fds([control, *stdio])
            with socket.socket(fileno=channel_fd) as channel:
                _reply(channel, failed.failure)
            return None
        if pid == 0:
            _become_init(control, stdio, unshare_net)
    for fd in (control, *stdio):
        os.close(fd)
    channel = socket.socket(fileno=channel_fd)
    _reply(channel, Forked(pid), [pidfd])
    return pidfd, pid, channel


class _CloneFailed(Exception):
    def __init__(self, failure: Failed) -> None:
        self.failure = failure


def _clone(state: _State, unshare_net: bool) -> tuple[int, int]:
    """Clone PID 1 of new namespaces and write their id maps: (pid, pidfd) here, (0, -1) in it, which holds no
    object of ours that owns an fd (its closerange closes them: nothing may ever close a number PID 1 has
    reused). The maps are written before anyone hears of PID 1, so it never waits for them for long."""
    try:
        pid, pidfd = syscalls.clone_into_namespaces(NAMESPACES | (syscalls.CLONE_NEWNET if unshare_net else 0))
    except OSError as exc:
        step = messages.STEP_FORK if exc.errno in (errno.EAGAIN, errno.ENOMEM) else messages.STEP_NAMESPACES
        raise _CloneFailed(Failed(step, exc.strerror or str(exc), exc.errno or 0)) from None
    if pid == 0:
        state.requests.detach()
        for other in _channels(state):
            other.detach()
        if state.spare is not None:
            state.spare.sock.detach()
        return pid, pidfd
    try:
        state.maps.write(pid)
    except OSError as exc:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)  # unreaped, so certainly ours: of no use unmapped
        os.waitpid(pid, 0)
        os.close(pidfd)
        raise _CloneFailed(Failed(messages.STEP_IDMAP, exc.strerror or str(exc), exc.errno or 0)) from None
    return pid, pidfd


def _start_init() -> None:
    """First thing in a PID 1: a session of its own (as runc does), so that nothing inside shares the caller's
    session, process group or controlling terminal (a signal to process group 0, TIOCSTI on an inherited
    terminal); and death with this server, its parent, which is single-threaded, so the signal comes only then.
    A server that died before the signal was set has closed its end of every socket PID 1 waits on: it exits."""
    os.setsid()
    syscalls.set_parent_death_signal(signal.SIGKILL)


def _become_init(
    control: int, stdio: list[int], unshare_net: bool, spare: bool = False, trees: mounts.Trees | None = None
) -> NoReturn:
    """In the cloned child: start as clean as ``python -I -S`` would, with the control socket at CONTROL_FD and
    the container's stdio at 0-2 (a spare's prebuilt trees right after), then run PID 1 (unshare_net: whether it
    has a network namespace of its own; spare: it was one, and brought its lo up already)."""
    try:
        if not spare:
            _start_init()
        # No handler, not the fresh interpreter's KeyboardInterrupt: the kernel drops a signal that the host
        # sends an init without a handler for it, where Python's would unwind PID 1 into this server's code,
        # print its traceback on the container's stderr and end the container (130).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        tree_fds = trees.fds if trees is not None else []
        # Kept fds are first moved above the ones being set up (0 to CONTROL_FD and the trees'), so no dup2
        # clobbers another.
        above = CONTROL_FD + 1 + len(tree_fds)
        kept = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, above) for fd in (*stdio, control, *tree_fds)]
        for target, fd in enumerate(kept[:3]):
            os.dup2(fd, target)  # inheritable: the container's command gets its stdio
        os.dup2(kept[3], CONTROL_FD, inheritable=False)
        for target, fd in enumerate(kept[4:], CONTROL_FD + 1):
            os.dup2(fd, target, inheritable=False)
        os.closerange(above, os.sysconf("SC_OPEN_MAX"))
        if trees is not None:
            trees = trees.moved(list(range(CONTROL_FD + 1, above)))
    except BaseException:  # noqa: BLE001 - nothing to report to: the runtime sees the control socket close
        os._exit(125)
    try:
        init.main(CONTROL_FD, unshare_net, lo_up=spare, trees=trees)
    except BaseException:  # noqa: BLE001 - never back into the server's frames: main reports what it can itself
        os._exit(125)


def _reply(channel: socket.socket, message: messages.Message, fds: list[int] | None = None) -> None:
    try:
        messages.send(channel, message, fds)
    except OSError as exc:
        if fds and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ETOOMANYREFS):
            # The fds could not go (ETOOMANYREFS: more of the user's fds in flight than our limit): say so
            # without them, so that the runtime says it in one line at once instead of waiting.
            _reply(channel, Failed(messages.STEP_FORK, exc.strerror or str(exc), exc.errno or 0))
        # Otherwise the runtime went away: its pidfd, or the request socket's end, says so here too.
