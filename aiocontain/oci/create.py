"""``aiocontain-oci create``: build the container from its bundle, leave its process waiting for ``start``.

The runtime's side of oci/init.py: check the whole config first (oci/config.py), claim the id (making
ROOT/ID is atomic: of two creates of one id exactly one wins), make the exec fifo, fork, write the id maps,
place the process in its cgroup, run prestart and createRuntime hooks, and once the container's process
reports ``ready`` record it and write --pid-file. Any failure kills what was started and removes the
record: nothing is left behind. ``run`` is create and start, then (without --detach) waiting for the
container's process as its subreaper and deleting it, runc's exit status rule.
"""

from __future__ import annotations

import os
import signal
import socket
import time

from aiocontain import proc
from aiocontain.oci import cgroup, hooks, init
from aiocontain.oci import config as oci_config
from aiocontain.oci import state as oci_state
from aiocontain.oci.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from aiocontain.oci.options import Options

PR_SET_CHILD_SUBREAPER = 36


def _rfc3339(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"


def _owner() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


class Creation:
    """One create: what it has made so far, so that a failure undoes exactly that."""

    def __init__(self, options: Options, container_id: str, plan: oci_config.Plan) -> None:
        self.options = options
        self.plan = plan
        self.state = oci_state.ContainerState(
            options.state_root(),
            container_id,
            bundle=plan.bundle,
            rootfs=plan.rootfs,
            created=_rfc3339(time.time()),
            owner=_owner(),
            annotations=plan.annotations,
            config_path=plan.config_path,
            creating=True,
            creator=os.getpid(),
            creator_start_time=proc.start_time(os.getpid()) or 0,
            hooks={kind: plan.hooks[kind] for kind in ("poststart", "poststop") if plan.hooks.get(kind)},
        )
        self.claimed = False
        self.first = 0  # pid of init.namespaces, our child
        self.pidfd = -1  # the container's process, once known
        self.console: socket.socket | None = None

    def claim(self) -> None:
        """Make ROOT/ID (the claim on the id) and the first record."""
        root = self.state.root
        oci_state.private_root(root)
        try:
            os.mkdir(self.state.directory, 0o700)
        except FileExistsError:
            raise OciError(f'container "{self.state.id}" already exists') from None
        except OSError as exc:
            raise OciError(f"cannot make the state directory {self.state.directory}: {exc.strerror}") from None
        self.claimed = True
        try:
            self.state.save()
            os.mkfifo(self.state.exec_fifo, 0o600)
        except OSError as exc:
            raise OciError(f"cannot write the state of {self.state.id} in {root}: {exc.strerror}") from None

    def connect_console(self, path: str) -> None:
        self.console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.console.connect(path)
        except OSError as exc:
            raise OciError(f"cannot connect to the console socket {path}: {exc.strerror}") from None

    def build(self, preserve_fds: int, no_pivot: bool, new_keyring: bool) -> None:
        """Fork and follow the container's set-up to ``ready``."""
        plan = self.plan
        self.state.cgroup = cgroup.prepare(plan.cgroups_path, plan.resources, self.state.id)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Opened here, before any user namespace of the container's exists: inside one it would no longer own
        # the state directory. Without a writer yet, so not blocking; ours is closed once forked, leaving the
        # container's process the only reader (start's ENXIO when it is gone).
        fifo = os.open(self.state.exec_fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        launch = init.Launch(plan, theirs, fifo, self.console)
        launch.preserve_fds = preserve_fds
        launch.no_pivot = no_pivot
        launch.container_id = self.state.id
        launch.new_keyring = new_keyring
        pid = os.fork()
        if pid == 0:
            ours.close()
            init.run(launch)
        self.first = pid
        theirs.close()
        os.close(fifo)
        if self.console is not None:
            self.console.close()
        with ours:
            self._follow(ours)

    def _follow(self, sync: socket.socket) -> None:
        if (reply := init.receive(sync)) != b"ns":
            raise OciError(f"the container's set-up broke its protocol: {reply!r}")
        if self.plan.new_namespaces & oci_config.NAMESPACE_FLAGS["user"]:
            _write_maps(self.first, self.plan)
        cgroup.enter(self.state.cgroup, self.first)
        sync.send(b"go")
        reply = init.receive(sync)
        if not reply.startswith(b"pid "):
            raise OciError(f"the container's set-up broke its protocol: {reply!r}")
        pid = int(reply[4:])
        self.pidfd = os.pidfd_open(pid)
        os.waitpid(self.first, 0)
        self.first = 0
        self.state.pid = pid
        self.state.start_time = proc.start_time(pid) or 0
        self.state.save()
        sync.send(b"go")  # only now may the container's process speak: its messages come after the pid
        if (reply := init.receive(sync)) != b"hooks":
            raise OciError(f"the container's set-up broke its protocol: {reply!r}")
        hook_state = self.state.hook_state("creating")
        hooks.run(self.plan.hooks, "prestart", hook_state, self._hook_running)
        hooks.run(self.plan.hooks, "createRuntime", hook_state, self._hook_running)
        sync.send(b"go " + hook_state)
        if (reply := init.receive(sync)) != b"ready":
            raise OciError(f"the container's set-up broke its protocol: {reply!r}")

    def _hook_running(self, pid: int) -> None:
        self.state.hook = pid
        self.state.hook_start_time = (proc.start_time(pid) or 0) if pid else 0
        self.state.save()

    def finish(self, pid_file: str | None) -> None:
        """Record the container as created and write --pid-file (atomically, as runc)."""
        self.state.creating = False
        self.state.save()
        if pid_file:
            directory = os.path.dirname(os.path.abspath(pid_file))
            temporary = os.path.join(directory, f".{os.path.basename(pid_file)}.{os.getpid()}")
            try:
                # O_EXCL and O_NOFOLLOW: a name planted beside the pid file (a symlink) is never written through
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
                try:
                    os.write(fd, str(self.state.pid).encode())
                finally:
                    os.close(fd)
                os.replace(temporary, pid_file)
            except OSError as exc:
                raise OciError(f"cannot write the pid file {pid_file}: {exc.strerror}") from None
        os.close(self.pidfd)
        self.pidfd = -1

    def undo(self) -> None:
        """Kill what was started and remove what was made; the error itself is the caller's to report."""
        if self.console is not None:
            self.console.close()
        if self.first:
            try:
                os.kill(self.first, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.first, 0)
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                import select

                select.select([self.pidfd], [], [], 10)  # readable once it has exited
            except ProcessLookupError:
                pass
            os.close(self.pidfd)
        try:
            cgroup.remove_directory(self.state.cgroup)
        except OciError:
            pass
        if self.claimed:
            for name in os.listdir(self.state.directory):
                os.unlink(os.path.join(self.state.directory, name))
            os.rmdir(self.state.directory)


def _write_maps(pid: int, plan: oci_config.Plan) -> None:
    """The new user namespace's id maps, written by us from outside it, as the spec's mappings say."""
    for name, mappings in (("uid_map", plan.uid_mappings), ("gid_map", plan.gid_mappings)):
        text = "".join(f"{inside} {outside} {size}\n" for inside, outside, size in mappings)
        path = f"/proc/{pid}/{name}"
        try:
            init.write_file(path, text)
        except PermissionError:
            if name != "gid_map":
                raise OciError(f"cannot write {name} of the container's user namespace: permission denied") from None
            init.write_file(f"/proc/{pid}/setgroups", "deny")  # an unprivileged map of one's own gid needs this first
            try:
                init.write_file(path, text)
            except OSError as exc:
                raise OciError(f"cannot write gid_map of the container's user namespace: {exc.strerror}") from None
        except OSError as exc:
            raise OciError(f"cannot write {name} of the container's user namespace: {exc.strerror}") from None


def _options(flags: dict[str, str | bool], operands: list[str], command: str) -> tuple[str, str, int]:
    if len(operands) != 1:
        raise OciError(f"{command}: exactly one container id is required")
    container_id = operands[0]
    oci_state.check_id(container_id)
    bundle = str(flags.get("bundle") or os.getcwd())
    try:
        preserve_fds = int(flags.get("preserve-fds") or 0)
    except ValueError:
        raise OciError(f"--preserve-fds {flags['preserve-fds']!r} is not a number") from None
    if preserve_fds < 0:
        raise OciError("--preserve-fds must not be negative")
    return container_id, bundle, preserve_fds


def create(options: Options, flags: dict[str, str | bool], operands: list[str], command: str = "create") -> int:
    """Create the container; its host pid, once it waits for start."""
    container_id, bundle, preserve_fds = _options(flags, operands, command)
    plan = oci_config.load(bundle)
    cgroup.check(plan.resources, options.systemd_cgroup, plan.cgroups_path)
    console_socket = flags.get("console-socket")
    if plan.process.terminal and not console_socket:
        raise OciError("process.terminal needs --console-socket: the engine holds the terminal's master")
    if console_socket and not plan.process.terminal:
        raise OciError("--console-socket is given but process.terminal is false")
    creation = Creation(options, container_id, plan)
    try:
        creation.claim()
        if console_socket:
            creation.connect_console(str(console_socket))
        creation.build(preserve_fds, bool(flags.get("no-pivot")), not flags.get("no-new-keyring"))
        creation.finish(str(flags["pid-file"]) if flags.get("pid-file") else None)
    except BaseException as exc:
        creation.undo()
        if isinstance(exc, OSError):
            raise OciError(f"create {container_id}: {exc.strerror or exc}") from None
        raise
    return creation.state.pid


def main(options: Options, flags: dict[str, str | bool], operands: list[str]) -> int:
    create(options, flags, operands)
    return 0


def run_command(options: Options, flags: dict[str, str | bool], operands: list[str]) -> int:
    """runc run: create and start; without --detach wait for the process (as its subreaper) and delete it,
    exiting with its status (128+N for a signal).

    In the foreground, as runc does, every signal this process gets is passed on to the container's process
    (by a pidfd) rather than ending this one: a ^C or the engine's SIGTERM stops the container, whose status
    this process then exits with, having deleted it. A SIGTERM or SIGHUP during create undoes it as a ^C does.
    """
    from aiocontain.oci import lifecycle

    if flags.get("detach"):
        create(options, flags, operands, command="run")
        lifecycle.start(options, {}, operands)
        return 0
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        pid = create(options, flags, operands, command="run")
        pidfd = os.pidfd_open(pid)
        _forward_signals(pidfd)
    except KeyboardInterrupt as stop:
        # create undid itself if the signal came while it ran; if it came just after, the container is deleted here
        try:
            lifecycle.delete(options, {"force": True}, operands)
        except OciError:
            pass  # undone already: it does not exist
        return 128 + (stop.args[0] if stop.args else signal.SIGINT)
    try:
        lifecycle.start(options, {}, operands)
    except OciError:
        if not flags.get("keep"):
            lifecycle.delete(options, {"force": True}, operands)  # a signal killed it before its exec
        raise
    while True:
        try:
            waited, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        if waited == pid:
            break
    if not flags.get("keep"):
        lifecycle.delete(options, {"force": True}, operands)
    os.close(pidfd)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signum)


# Forwarded: what is sent to stop, pause, wake or notify a process, and the real-time signals. Not: SIGCHLD (ours:
# the container's process is our child), SIGWINCH and SIGURG (this process's terminal and sockets), and the
# signals of this process's own faults and writes (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGPIPE,
# SIGXFSZ...): caught, a fault would only be raised again at the same instruction, for ever.
_FORWARDED = (
    signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM,
    signal.SIGVTALRM, signal.SIGPROF, signal.SIGCONT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGPWR,
    *range(signal.SIGRTMIN, signal.SIGRTMAX + 1),
)  # fmt: skip


def _forward_signals(pidfd: int) -> None:
    def forward(signum: int, _frame: object) -> None:
        try:
            signal.pidfd_send_signal(pidfd, signum)
        except OSError:
            pass  # exited: waitpid is about to say so

    for signum in _FORWARDED:
        try:
            signal.signal(signum, forward)
        except (OSError, ValueError):
            pass  # the real-time signals glibc keeps for itself
