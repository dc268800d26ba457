"""The light subcommands: ``start``, ``state``, ``kill``, ``delete``, ``list`` and ``ps``.

The engine runs one of these per container operation, so they import nothing beyond the standard library and
``aiocontain.oci.state``. ``start`` wakes the created container through its exec fifo (docs/oci.md, the
lifecycle): the init blocks reading it; writing one byte can neither be lost (it waits in the pipe for as long
as the init holds the reading end) nor go unnoticed when the init is dead (opening a fifo without a reader for
writing fails at once with ENXIO). start then waits until the reading end closes, which the exec does.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys

from aiocontain.oci import state as oci_state
from aiocontain.oci.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from aiocontain.oci.options import Options


def _one_id(operands: list[str], command: str, extra: int = 0) -> str:
    if not operands:
        raise OciError(f"{command}: a container id is required")
    if len(operands) > 1 + extra:
        raise OciError(f"{command}: unexpected arguments {' '.join(operands[1 + extra :])!r}")
    return operands[0]


class Locked:
    """An exclusive flock on the container's directory while start or delete changes it, so that the two never
    act on the same container at once (kill needs none: it signals through a pidfd checked afterwards)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.fd = -1

    def __enter__(self) -> Locked:
        try:
            self.fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise OciError(f'container "{os.path.basename(self.directory)}" does not exist') from None
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def start(options: Options, flags: dict[str, str | bool], operands: list[str]) -> int:
    """Let the created container's init exec its process; fails unless the container is ``created``."""
    container_id = _one_id(operands, "start")
    container = oci_state.load(options.state_root(), container_id)
    with Locked(container.directory):
        status = container.status()
        if status != "created":
            raise OciError(f'cannot start container "{container_id}": it is {status}, not created')
        try:
            fifo = os.open(container.exec_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nobody holds the reading end: the init is gone
                raise OciError(f'cannot start container "{container_id}": its init process has exited') from None
            raise OciError(f'cannot start container "{container_id}": {exc.strerror}') from None
        try:
            os.write(fifo, b"0")
            _wait_for_exec(fifo)
        except BrokenPipeError:
            raise OciError(f'cannot start container "{container_id}": its init process has exited') from None
        finally:
            os.close(fifo)
        os.unlink(container.exec_fifo)  # from now on the container is running
    if container.hooks.get("poststart"):  # hooks imports subprocess: only when there is one to run
        from aiocontain.oci import hooks

        hooks.run_recorded(container, "poststart", "running")
    return 0


def _wait_for_exec(fifo: int) -> None:
    """Return once the init has executed the process (or died): it holds the fifo's reading end, close-on-exec,
    until then, and a pipe's writer sees POLLERR when the last reader is gone. So poststart runs after the
    exec, as the runtime spec wants, and after the startContainer hooks."""
    import select

    poller = select.poll()
    poller.register(fifo, 0)  # nothing asked for: only POLLERR and POLLHUP, which are always reported
    while not poller.poll():
        pass  # poll without a timeout returns only with an event


def state(options: Options, flags: dict[str, str | bool], operands: list[str]) -> int:
    """runc's state JSON on stdout."""
    container = oci_state.load(options.state_root(), _one_id(operands, "state"))
    sys.stdout.write(json.dumps(container.to_oci(), indent=2) + "\n")
    return 0


def parse_signal(text: str) -> int:
    """A signal by number, or by name with or without SIG, in any case (runc's rule)."""
    import signal  # here and below, not at the top: start, state and delete of a stopped one need none of it

    if text.isdigit():
        number = int(text)
        if not 0 < number < signal.NSIG:
            raise OciError(f"invalid signal {text!r}")
        return number
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    found: object = getattr(signal, name, None)
    if not isinstance(found, int) or name.startswith("SIG_"):
        raise OciError(f"unknown signal {text!r}")
    return int(found)


def kill(options: Options, flags: dict[str, str | bool], operands: list[str]) -> int:
    """Signal the container's process (SIGTERM by default); only while it is created or running."""
    import signal

    container_id = _one_id(operands, "kill", extra=1)
    number = parse_signal(operands[1]) if len(operands) > 1 else signal.SIGTERM
    container = oci_state.load(options.state_root(), container_id)
    status = container.status()
    if status not in ("created", "running"):
        raise OciError(f'cannot kill container "{container_id}": it is {status}')
    _signal(container, number, bool(flags.get("all")))
    return 0


def _signal(container: oci_state.ContainerState, number: int, all_processes: bool) -> None:
    """Signal through a pidfd checked against the recorded start time, so a reused pid is never hit. With
    --all, every process of the container's own pid namespace too (runc walks the cgroup; a rootless
    container may have none, but has its pid namespace)."""
    import signal

    try:
        pidfd = os.pidfd_open(container.pid)
    except ProcessLookupError:
        return
    try:
        if container.status() not in ("created", "running"):
            return  # the pid was reused between the load and the pidfd: the pidfd names the wrong process
        members = _namespace_members(container.pid) if all_processes else []
        signal.pidfd_send_signal(pidfd, number)
    except ProcessLookupError:
        return
    finally:
        os.close(pidfd)
    for pid in members:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass


def _namespace_members(pid: int) -> list[int]:
    """The container's other processes: every process of its pid namespace where it is that namespace's
    PID 1 (the namespace is the container's); else (a pid namespace joined, as a pod's) only its descendants,
    never the rest of a namespace shared with others."""
    try:
        with open(f"/proc/{pid}/status") as f:
            own = next(line for line in f if line.startswith("NSpid:")).split()[-1] == "1"
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
    except (OSError, StopIteration):
        return []
    parents: dict[int, int] = {}
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == pid:
            continue
        try:
            if own:
                if os.readlink(f"/proc/{name}/ns/pid") == namespace:
                    members.append(int(name))
            else:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
                parents[int(name)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except OSError:
            continue  # gone, or not ours to look at
    if own:
        return members
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def delete(options: Options, flags: dict[str, str | bool], operands: list[str]) -> int:
    """Remove a stopped container's record (with --force, kill a live one first), then run poststop hooks."""
    container_id = _one_id(operands, "delete")
    container = oci_state.load(options.state_root(), container_id)
    with Locked(container.directory):
        status = container.status()
        if status in ("created", "running", "creating"):
            if not flags.get("force"):
                raise OciError(f'cannot delete container "{container_id}": it is {status} (stop it or use --force)')
            _kill_and_wait(container)
        elif container.creating:
            _kill_and_wait(container)  # create died half-way: what it had started may live on (a hook, the process)
        from aiocontain.oci import cgroup

        cgroup.remove(container)
        _remove_directory(container.directory)
    if container.hooks.get("poststop"):
        from aiocontain.oci import hooks

        hooks.run_recorded(container, "poststop", "stopped")
    return 0


def _kill_and_wait(container: oci_state.ContainerState) -> None:
    """SIGKILL the container's process and wait until it is gone. While create still builds it: create itself,
    the container's process if create recorded it already, and the process group of the hook create runs."""
    import signal

    from aiocontain import proc

    if container.creating and container.hook and proc.is_alive(container.hook, container.hook_start_time):
        try:
            os.killpg(container.hook, signal.SIGKILL)  # its leader lives: the group id is still that hook's
        except ProcessLookupError:
            pass
    targets = [(container.creator, container.creator_start_time)] if container.creating else []
    if container.pid:
        targets.append((container.pid, container.start_time))
    for pid, start_time in targets:
        _kill_one(container, pid, start_time)


def _kill_one(container: oci_state.ContainerState, pid: int, start_time: int) -> None:
    import signal

    from aiocontain import proc

    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not proc.is_alive(pid, start_time):
            return
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        import select

        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(10_000):  # a pidfd is readable once the process has exited
            raise OciError(f'container "{container.id}": its process {pid} did not die of SIGKILL in 10 s')
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def _remove_directory(directory: str) -> None:
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


def list_containers(options: Options, flags: dict[str, str | bool], operands: list[str]) -> int:
    """runc's list: a table, ``--format json`` (a list of state objects) or ``-q`` (ids only)."""
    if operands:
        raise OciError(f"list: unexpected arguments {' '.join(operands)!r}")
    output = str(flags.get("format", "table"))
    if output not in ("table", "json"):
        raise OciError(f"list: unknown format {output!r} (table or json)")
    root = options.state_root()
    containers = []
    for container_id in oci_state.all_ids(root):
        try:
            containers.append(oci_state.load(root, container_id))
        except OciError:
            continue  # deleted meanwhile
    if flags.get("quiet"):
        sys.stdout.write("".join(container.id + "\n" for container in containers))
    elif output == "json":
        sys.stdout.write(json.dumps([_list_entry(container) for container in containers]) + "\n")
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        for container in containers:
            entry = _list_entry(container)
            rows.append(
                (
                    container.id,
                    str(entry["pid"]),
                    str(entry["status"]),
                    container.bundle,
                    container.created,
                    container.owner,
                )
            )
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        for row in rows:
            sys.stdout.write("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
            sys.stdout.write("\n")
    return 0


def ps(options: Options, flags: dict[str, str | bool], operands: list[str]) -> int:
    """The host pids of the container's processes (its own and its pid namespace's): ``--format json`` as
    containerd's shim reads it, or one per line."""
    container_id = _one_id(operands, "ps")
    output = str(flags.get("format", "table"))
    if output not in ("table", "json"):
        raise OciError(f"ps: unknown format {output!r} (table or json)")
    container = oci_state.load(options.state_root(), container_id)
    status = container.status()
    if status not in ("created", "running"):
        raise OciError(f'cannot list the processes of container "{container_id}": it is {status}')
    pids = sorted([container.pid, *_namespace_members(container.pid)])
    if output == "json":
        sys.stdout.write(json.dumps(pids) + "\n")
    else:
        sys.stdout.write("PID\n" + "".join(f"{pid}\n" for pid in pids))
    return 0


def _list_entry(container: oci_state.ContainerState) -> dict[str, object]:
    entry = container.to_oci()
    del entry["ociVersion"]
    return entry
