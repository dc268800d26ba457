"""The commands around containers that run on their own: ``ps``, ``stop``, ``kill``, ``rm``, ``logs``, ``inspect``,
and ``run``'s ``-d`` and ``--rm``.

They work from the records of aiocontain.registry and the kernel's word on the processes (pidfds: signals go
to the recorded process and no other, exits are waited for without polling). All of them are stdlib-only:
no anyio, structlog, pyroute2 or plugins are imported, and no fork server is started.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiocontain import registry
from aiocontain.errors import AiocontainError

COMMANDS = frozenset({"ps", "stop", "kill", "rm", "logs", "inspect", "exec"})
TEARDOWN_WAIT = 20.0  # a monitor's teardown (Container.TEARDOWN_TIMEOUT) and its exit


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "-d",
        "--detach",
        action="store_true",
        help="run in the background, print the container id; output: aiocontain logs (default: off)",
    )
    run.add_argument(
        "--rm",
        action="store_true",
        help="with -d, remove the container once it exits (a foreground run always is) (default: off)",
    )


def add_parsers(commands: Any) -> None:
    """The subcommands, on the ``aiocontain`` parser's subparsers."""
    ps = commands.add_parser("ps", help="list containers (running ones; -a: exited ones too)")
    ps.add_argument("-a", "--all", action="store_true", help="exited containers too (default: running ones)")
    ps.add_argument("-q", "--quiet", action="store_true", help="the ids alone")
    ps.add_argument("--format", choices=["table", "json"], default="table", help="(default: table)")
    stop = commands.add_parser("stop", help="stop containers: SIGTERM, then SIGKILL after the timeout")
    stop.add_argument(
        "-t",
        "--time",
        type=float,
        metavar="S",
        help="seconds from SIGTERM to SIGKILL (default: the container's --stop-timeout, 10)",
    )
    stop.add_argument("names", nargs="+", metavar="NAME")
    kill = commands.add_parser("kill", help="send a signal to containers' PID 1")
    kill.add_argument("-s", "--signal", default="KILL", metavar="SIG", help="name or number (default: KILL)")
    kill.add_argument("names", nargs="+", metavar="NAME")
    rm = commands.add_parser("rm", help="remove exited containers (-f: kill running ones first)")
    rm.add_argument("-f", "--force", action="store_true", help="kill a running container, then remove it")
    rm.add_argument("names", nargs="+", metavar="NAME")
    logs = commands.add_parser("logs", help="what a detached container wrote on stdout and stderr")
    logs.add_argument("-f", "--follow", action="store_true", help="follow the output until the container exits")
    logs.add_argument(
        "-n", "--tail", type=_line_count, default=-1, metavar="N", help="only the last N lines (default: all)"
    )
    logs.add_argument("name", metavar="NAME")
    inspect = commands.add_parser("inspect", help="containers' spec, state, pid, exit code, network, cgroup (JSON)")
    inspect.add_argument("names", nargs="+", metavar="NAME")
    from aiocontain import cli_exec

    cli_exec.add_parser(commands)


def main(argv: Sequence[str], parser_class: type[argparse.ArgumentParser]) -> int:
    """Run one of COMMANDS; errors are one line each and exit 125, as ``aiocontain run``'s. parser_class: the
    CLI's (usage errors as one line and 125)."""
    parser = parser_class(prog="aiocontain")
    add_parsers(parser.add_subparsers(dest="subcommand", required=True, parser_class=parser_class))
    args = parser.parse_args(argv)
    command = {"ps": _ps, "stop": _stop, "kill": _kill, "rm": _rm, "logs": _logs, "inspect": _inspect, "exec": _exec}
    try:
        return command[args.subcommand](args)
    except AiocontainError as exc:
        print(f"aiocontain: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 0  # `aiocontain logs NAME | head`: the reader has what it wanted


def _each(names: Iterable[str], act: Callable[[str, registry.Record], None]) -> int:
    """act on each named container; an error is one line and the others go on (as podman): 125 if any failed."""
    code = 0
    for name in names:
        try:
            act(name, registry.lookup(name))
        except AiocontainError as exc:
            print(f"aiocontain: {exc.line()}", file=sys.stderr)
            code = exc.exit_code
    return code


def _exec(args: argparse.Namespace) -> int:
    from aiocontain import cli_exec  # anyio and the exec machinery: only for exec

    return cli_exec.main(args)


def _ps(args: argparse.Namespace) -> int:
    shown = [(record, record.state()) for record in registry.records()]
    shown = [(record, state) for record, state in shown if args.all or state == "running"]
    if args.quiet:
        for record, _ in shown:
            print(record.short_id)
        return 0
    if args.format == "json":
        print(json.dumps([_summary(record, state) for record, state in shown], indent=4))
        return 0
    rows = [("CONTAINER ID", "NAME", "COMMAND", "CREATED", "STATUS")]
    for record, state in shown:
        command = " ".join(record.spec.get("command") or [])
        if len(command) > 30:
            command = command[:27] + "..."
        created = f"{_ago(registry.seconds_since(record.created))} ago"
        rows.append((record.short_id, record.name, command, created, _status(record, state)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return 0


def _summary(record: registry.Record, state: str) -> dict[str, Any]:
    """One container as ``ps --format json`` shows it (podman's keys)."""
    return {
        "Id": record.id,
        "Names": [record.name],
        "Command": record.spec.get("command") or [],
        "Created": record.created,
        "State": state,
        "Status": _status(record, state),
        "ExitCode": record.exit_code,
        "Pid": record.pid if state == "running" else 0,
        "Detached": record.detached,
    }


def _status(record: registry.Record, state: str) -> str:
    if state == "running":
        return f"Up {_ago(registry.seconds_since(record.created))}"
    if record.exit_code is None:
        return "Exited (unknown)"  # its monitor died with it: nobody saw its status
    ago = f" {_ago(registry.seconds_since(record.finished))} ago" if record.finished else ""
    return f"Exited ({record.exit_code}){ago}"


def _ago(seconds: float) -> str:
    """A duration as podman says it: '5 seconds', 'About a minute', '3 hours'."""
    if seconds < 1:
        return "Less than a second"
    for limit, unit, about in ((60, 1, None), (3600, 60, "About a minute"), (86400, 3600, "About an hour")):
        if seconds < limit:
            count = int(seconds // unit)
            if count == 1 and about:
                return about
            names = {1: "second", 60: "minute", 3600: "hour"}
            return f"{count} {names[unit]}{'s' if count != 1 else ''}"
    days = int(seconds // 86400)
    return f"{days} day{'s' if days != 1 else ''}"


def _stop(args: argparse.Namespace) -> int:
    found: list[tuple[str, registry.Record]] = []
    code = _each(args.names, lambda name, record: found.append((name, record)))
    stop_records([record for _, record in found], args.time)  # all at once, as podman: one grace period
    for name, _ in found:
        print(name)
    return code


def stop_records(records: Sequence[registry.Record], timeout: float | None) -> None:
    """SIGTERM, SIGKILL after timeout seconds (None: each one's --stop-timeout), then wait until their monitors
    have torn everything down."""
    pidfds = {fd: record for record in records if (fd := record.pidfd()) is not None}
    try:
        for fd in pidfds:
            _signal(fd, signal.SIGTERM)
        started = time.monotonic()
        for fd, record in pidfds.items():
            grace = record.stop_timeout if timeout is None else timeout
            if not _exited(fd, grace - (time.monotonic() - started)):
                _signal(fd, signal.SIGKILL)  # PID 1 ignores a signal it has no handler for: podman's way too
                _exited(fd, TEARDOWN_WAIT)
    finally:
        for fd in pidfds:
            os.close(fd)
    for record in records:
        _wait_monitor(record)


def _kill(args: argparse.Namespace) -> int:
    signum = _parse_signal(args.signal)

    def kill(name: str, record: registry.Record) -> None:
        if not record.send_signal(signum):
            raise AiocontainError(f"container {name} is not running", fix="aiocontain ps lists the running ones")
        print(name)

    return _each(args.names, kill)


def _parse_signal(text: str) -> int:
    name = text.upper()
    if name.isdigit():
        number = int(name)
        if 0 < number < signal.NSIG:
            return number
    else:
        try:
            return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
        except KeyError:
            pass
    raise AiocontainError(f"invalid signal {text!r}", fix="give a name (TERM, SIGKILL) or a number")


def _rm(args: argparse.Namespace) -> int:
    def rm(name: str, record: registry.Record) -> None:
        if record.state() == "running":
            if not args.force:
                raise AiocontainError(
                    f"container {name} is running: it cannot be removed",
                    fix=f"stop it first (aiocontain stop {name}), or use rm -f",
                )
            stop_records([record], 0)
        else:
            _wait_monitor(record)  # still tearing down: it would write the record again
        registry.remove(record)
        print(name)

    return _each(args.names, rm)


def _logs(args: argparse.Namespace) -> int:
    record = registry.lookup(args.name)
    if record.log_path is None:
        raise AiocontainError(
            f"container {args.name} was not started with -d: its output went to the process that ran it",
            fix="run it with aiocontain run -d to keep its output",
        )
    try:
        log = open(record.log_path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise AiocontainError(f"the log of container {args.name} is gone", fix="aiocontain rm it") from None
    with log:
        if args.tail >= 0:
            log.seek(_start_of_last_lines(log, args.tail))
        out = sys.stdout.buffer
        # Until its monitor exits, which is after the container and after the last line it logs itself.
        pidfd = (record.monitor_pidfd() or record.pidfd()) if args.follow and record.state() == "running" else None
        if pidfd is None:
            _copy(log, out)
            return 0
        try:
            _follow(log, out, record.log_path, pidfd)
        finally:
            os.close(pidfd)
    return 0


def _line_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of lines") from None
    if count < -1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of lines, 0 or more (-1: all)")
    return count


def _start_of_last_lines(log: Any, count: int) -> int:
    """The offset where the last count lines of log begin (a last line without its newline counts), read
    backwards a block at a time: a long log is not read whole for its tail."""
    end: int = log.seek(0, os.SEEK_END)
    if count == 0:
        return end
    position, newlines, last_block = end, 0, True
    while position > 0:
        size = min(65536, position)
        position -= size
        log.seek(position)
        block: bytes = log.read(size)
        index = len(block)
        if last_block:
            last_block = False
            if block.endswith(b"\n"):
                index -= 1  # the last line's own newline starts no line after it
        while (index := block.rfind(b"\n", 0, index)) >= 0:
            newlines += 1
            if newlines == count:
                return position + index + 1
    return 0


def _follow(log: Any, out: Any, path: str, pidfd: int) -> None:
    """Copy log to out as it grows (inotify), until the process of pidfd exits; then what is left."""
    from aiocontain import syscalls

    notify = syscalls.inotify_init1()
    try:
        syscalls.inotify_add_watch(notify, path, syscalls.IN_MODIFY)
        poller = select.poll()
        poller.register(notify, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        while True:
            _copy(log, out)  # after the watch is set: nothing written in between is missed
            ready = {fd for fd, _ in poller.poll()}
            if pidfd in ready:
                break
            try:
                os.read(notify, 4096)  # the events only say "more": drained, then read
            except BlockingIOError:
                pass
    finally:
        os.close(notify)
    _copy(log, out)


def _copy(log: Any, out: Any) -> None:
    while chunk := log.read(65536):
        out.write(chunk)
    out.flush()


def _inspect(args: argparse.Namespace) -> int:
    found: list[dict[str, Any]] = []
    code = _each(args.names, lambda _, record: found.append(_details(record)))
    if found or code == 0:
        print(json.dumps(found, indent=4))
    return code


def _details(record: registry.Record) -> dict[str, Any]:
    """One container as ``inspect`` shows it: podman's main keys."""
    state = record.state()
    return {
        "Id": record.id,
        "Name": record.name,
        "Created": record.created,
        "State": {
            "Status": state,
            "Running": state == "running",
            "Pid": record.pid if state == "running" else 0,
            "ExitCode": record.exit_code,
            "FinishedAt": record.finished,
            "MonitorPid": record.monitor_pid if record.monitor_alive() else 0,
        },
        "Config": record.spec,
        "NetworkSettings": record.network,
        "Cgroup": record.cgroup,
        "LogPath": record.log_path,
        "Detached": record.detached,
        "AutoRemove": record.auto_remove,
        "StopTimeout": record.stop_timeout,
    }


def _signal(pidfd: int, signum: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        pass  # exited meanwhile


def _exited(pidfd: int, timeout: float) -> bool:
    """Whether the process exits within timeout seconds: its pidfd becomes readable."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


def _wait_monitor(record: registry.Record) -> None:
    """Until a detached container's monitor has exited: then its teardown (network, cgroup, name) is done.
    Another's monitor (a foreground run, an embedding program) may well outlive the container: not waited for."""
    fd = record.monitor_pidfd() if record.detached else None
    if fd is None:
        return
    try:
        _exited(fd, TEARDOWN_WAIT)
    finally:
        os.close(fd)
