"""``aiocontain-oci exec``: run a process in a created or running container, as ``runc exec`` does.

``exec [--process FILE] [--detach] [--pid-file F] [--tty] [--console-socket PATH] [--cwd DIR] [-e K=V]...
[--user UID[:GID]] [--additional-gids GID]... [--cap CAP]... [--no-new-privs] ID [COMMAND [ARGS...]]``. The
process object is --process's file, else the container's own (config.json) with COMMAND as its args and the
flags on top; it gets the container's seccomp profile (linux.seccomp) as runc gives it.

This process stays on the host. It forks a joiner, which joins the container (aiocontain.child.join: the
namespaces from the container's process, its cgroup) and forks the process into its PID namespace; that one
leads a session of its own, applies the process object (oci/process.py) and execs. Its report (the pty's
master with --tty, a failure) comes back here on a socket that ends at exec; the joiner says the process's
pid (``Forked``) and, without --detach, its exit (``Exited``), and kills it should this process die. With
--detach the joiner exits at once, so the process is reparented as runc's is (to the engine when it is a
subreaper, as conmon is, else the container's PID 1), and this process returns once it runs, its pid in
--pid-file. Without, it waits and returns the process's exit code.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import termios

from aiocontain import messages, syscalls
from aiocontain.oci.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from aiocontain.oci.options import Options
    from aiocontain.oci.process import Prepared

_VALUED = {"process", "pid-file", "console-socket", "cwd", "env", "user", "additional-gids", "cap"}
_VALUED |= {"preserve-fds", "process-label", "apparmor", "cgroup"}
_BOOLEAN = {"detach", "tty", "no-new-privs", "ignore-paused"}
_REPEATED = {"env", "additional-gids", "cap"}
_ALIASES = {"p": "process", "d": "detach", "t": "tty", "e": "env", "u": "user", "g": "additional-gids", "c": "cap"}
_TIOCGPTN = 0x80045430  # the number of a pty master's slave (asm-generic)


def parse(args: list[str]) -> tuple[dict[str, object], list[str]]:
    """exec's flags (repeated ones as lists) and its operands: the id, then the command, which keeps its own
    flags (``exec ID sh -c ...``)."""
    found: dict[str, object] = {name: [] for name in _REPEATED}
    index = 0
    while index < len(args) and args[index].startswith("-") and args[index] != "-":
        arg = args[index]
        if arg == "--":
            index += 1
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        name = _ALIASES.get(name, name)
        if name in _VALUED:
            if not has_value:
                index += 1
                if index >= len(args):
                    raise OciError(f"flag needs an argument: {arg}")
                value = args[index]
            if name in _REPEATED:
                found[name].append(value)  # type: ignore[attr-defined]
            else:
                found[name] = value
        elif name in _BOOLEAN:
            if has_value and value.lower() not in ("true", "false", "1", "0"):
                raise OciError(f"invalid boolean value {value!r} for flag {arg.partition('=')[0]}")
            found[name] = not has_value or value.lower() in ("true", "1")
        else:
            raise OciError(f"flag provided but not defined: {arg.partition('=')[0]}")
        index += 1
    return found, args[index:]


def main(options: Options, args: list[str]) -> int:
    """Run a process in a running container; args are exec's own options and operands."""
    from aiocontain.oci import process, state

    flags, operands = parse(args)
    for name in ("preserve-fds", "process-label", "apparmor", "cgroup"):
        if flags.get(name) not in (None, "", "0"):  # taken as runc spells them, refused rather than ignored
            raise OciError(f"exec --{name} is not supported")
    if not operands:
        raise OciError('"exec" requires a minimum of 1 argument (the container id)')
    container_id, command = operands[0], operands[1:]
    found = state.load(options.state_root(), container_id)
    status = found.status()
    if status not in ("created", "running"):
        raise OciError(f"cannot exec in a {status} container")
    config = _json_object(found.config_path, "the container's config")
    process_object = _process_object(flags, config, command)
    linux = config.get("linux")
    seccomp = linux.get("seccomp") if isinstance(linux, dict) else None
    prepared = process.prepare(process_object, seccomp, where="exec process")
    if prepared.terminal and not flags.get("console-socket"):
        raise OciError("--tty needs --console-socket to hand the terminal's master to")
    console = _connect(str(flags["console-socket"])) if prepared.terminal else None
    try:
        return _run(found.pid, found.start_time, prepared, flags, console, container_id)
    finally:
        if console is not None:
            console.close()


def _json_object(path: str, what: str) -> dict[str, object]:
    """The JSON object in path; OciError naming what it is (the container's config, the process file)."""
    try:
        with open(path, "rb") as f:
            loaded = json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise OciError(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise OciError(f"{what} {path} is not an object")
    return loaded


def _process_object(flags: dict[str, object], config: dict[str, object], command: list[str]) -> dict[str, object]:
    """--process's file as it is (runc takes no other flag then), else the container's process with command
    as args and --tty, --cwd, -e, --user, --additional-gids, --cap, --no-new-privs on top."""
    if flags.get("process"):
        return _json_object(str(flags["process"]), "the process file")
    if not command:
        raise OciError("exec needs a command, or --process FILE")
    base = config.get("process")
    result: dict[str, object] = json.loads(json.dumps(base)) if isinstance(base, dict) else {}
    result["args"] = command
    result["terminal"] = bool(flags.get("tty"))
    if flags.get("cwd"):
        result["cwd"] = flags["cwd"]
    env = [item for item in result.get("env") or [] if isinstance(item, str)]  # type: ignore[attr-defined]
    for item in _values(flags, "env"):
        name = str(item).partition("=")[0]
        env = [old for old in env if old.partition("=")[0] != name] + [str(item)]
    result["env"] = env
    user = dict(result.get("user") or {})  # type: ignore[call-overload]
    if flags.get("user"):
        uid, _, gid = str(flags["user"]).partition(":")
        try:
            user["uid"] = int(uid)
            user["gid"] = int(gid) if gid else 0
        except ValueError:
            raise OciError(f"--user {flags['user']!r}: give UID[:GID] as numbers") from None
    if _values(flags, "additional-gids"):
        try:
            user["additionalGids"] = [int(gid) for gid in _values(flags, "additional-gids")]
        except ValueError:
            raise OciError("--additional-gids takes group ids") from None
    result["user"] = user
    if _values(flags, "cap"):
        sets = dict(result.get("capabilities") or {})  # type: ignore[call-overload]
        for name in ("bounding", "effective", "permitted"):  # runc adds --cap to these three
            sets[name] = list(dict.fromkeys([*(sets.get(name) or []), *_values(flags, "cap")]))
        result["capabilities"] = sets
    if flags.get("no-new-privs"):
        result["noNewPrivileges"] = True
    return result


def _values(flags: dict[str, object], name: str) -> list[str]:
    """A repeated flag's values."""
    values = flags.get(name)
    return [str(value) for value in values] if isinstance(values, list) else []


def _connect(path: str) -> socket.socket:
    console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        console.connect(path)
    except OSError as exc:
        console.close()
        raise OciError(f"cannot connect to the console socket {path}: {exc.strerror}") from None
    return console


def _run(
    pid: int,
    start_time: int,
    prepared: Prepared,
    flags: dict[str, object],
    console: socket.socket | None,
    container_id: str,
) -> int:
    """Fork the joiner, read the report and its word; the exit code (0 once running with --detach)."""
    detach = bool(flags.get("detach"))
    channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    report_r, report_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    joiner = os.fork()
    if joiner == 0:
        channel.close()  # the parent's ends: held here, the joiner would never see the parent die
        report_r.close()
        _joiner(pid, start_time, prepared, theirs, report_w.detach(), detach, container_id)
    theirs.close()
    report_w.close()
    try:
        failure = _read_report(report_r, prepared, console)
        word, _ = messages.recv(channel)
        if failure is not None or not isinstance(word, messages.Forked):
            failure = failure or (word.message if isinstance(word, messages.Failed) else "the joiner exited")
            raise OciError(f"exec failed: {failure}")
        if flags.get("pid-file"):
            _write_pid_file(str(flags["pid-file"]), word.pid)
        if detach:
            return 0
        exited, _ = messages.recv(channel)
        if not isinstance(exited, messages.Exited):
            raise OciError("exec failed: the joiner exited before the process (its exit status is lost)")
        return 128 + exited.signal if exited.signal is not None else int(exited.code or 0)
    finally:
        channel.close()
        os.waitpid(joiner, 0)


def _read_report(report: socket.socket, prepared: Prepared, console: socket.socket | None) -> str | None:
    """The process's report to its end (its exec): the pty's master goes to the console socket as runc sends
    it (one message: the pty's name, the fd); a failure's text is returned."""
    from aiocontain.child import join

    failures: list[str] = []

    def forward(message: messages.Message, fds: list[int]) -> None:
        if isinstance(message, messages.Console) and len(fds) == 1 and console is not None:
            master = fds[0]
            if prepared.console_size:
                rows, columns = prepared.console_size
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
            number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0\0\0\0"))[0]
            socket.send_fds(console, [f"/dev/pts/{number}".encode()], [master])
        elif isinstance(message, messages.Failed):
            failures.append(message.message)

    join.relay(report, forward)
    return failures[0] if failures else None


def _write_pid_file(path: str, pid: int) -> None:
    """Written whole or not at all (a temporary file renamed), as runc does: an engine may read it at once."""
    temporary = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, str(pid).encode())
    finally:
        os.close(fd)
    os.rename(temporary, path)


def _joiner(
    pid: int,
    start_time: int,
    prepared: Prepared,
    channel: socket.socket,
    report_w: int,
    detach: bool,
    container_id: str,
) -> NoReturn:
    """The forked joiner: join, fork the process, say its pid; follow it unless detached."""
    from aiocontain.child import init, join
    from aiocontain.messages import Exec, Failed, Forked

    try:
        syscalls.set_dumpable(False)  # nothing in the container may ptrace us or open our fds
        namespaces = join.open_namespaces(pid, start_time)
        join.join_cgroup(pid)
        me = os.getpid()
        child = join.enter(namespaces)
    except BaseException as exc:  # noqa: BLE001 - a forked copy of the command: nothing may unwind into its code
        _say(channel, Failed(messages.STEP_SETUP, init.describe(exc), getattr(exc, "errno", 0) or 0))
        os._exit(1)
    if child == 0:
        from aiocontain.oci import process

        request = Exec(
            pid=pid,
            start_time=start_time,
            argv=prepared.args,
            env=prepared.env,
            workdir=prepared.cwd,
            hostname="",
            user=[prepared.uid, prepared.gid, *prepared.groups],
            tty=prepared.terminal,
        )

        def lock_down() -> None:
            from aiocontain.child import harden

            # The container's session keyring, as runc's exec joins it (create made it, or --no-new-keyring
            # left the engine's, which a keyring named after the container does not reach either).
            harden.join_session_keyring(container_id)
            process.apply(prepared)

        join.become(request, report_w, die_with_parent=not detach, parent=me, lock_down=lock_down)
    os.close(report_w)
    pidfd = os.pidfd_open(child)
    _say(channel, Forked(child))
    if detach:
        os._exit(0)  # the process is reparented, as runc's is
    join.follow(channel, child, pidfd)


def _say(channel: socket.socket, message: messages.Message) -> None:
    try:
        messages.send(channel, message)
    except OSError:
        pass  # exec's process is gone: follow() sees the end of the channel
