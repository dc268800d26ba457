"""``aiocontain-oci``: runc's command line. Global options, then a subcommand, its options and the container id.

``aiocontain-oci [--root DIR] [--log FILE] [--log-format text|json] [--debug] [--systemd-cgroup] [--rootless X]
COMMAND [options] ID [args]``. Options are taken as ``--flag value``, ``--flag=value`` and, as runc's
command-line library does, with one dash (``-bundle value``); a boolean flag also as ``--flag=true|false``.

Every error is an ``OciError``: one line on stderr and, with ``--log``, one record in that file (text, or JSON
``{"level","msg","time"}``, from which podman and containerd take the last error), exit code 1. The light
subcommands (start, state, kill, delete, list) import only what they use: no anyio, structlog or pyroute2.
"""

from __future__ import annotations

import os
import sys

from aiocontain import stdfds
from aiocontain.oci.errors import OciError
from aiocontain.oci.options import Options

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

VERSION_TEXT = "aiocontain-oci version {version}\nspec: 1.0.2\n"

# Per subcommand: option name -> whether it takes a value; aliases map to the canonical name.
_GLOBAL_FLAGS = {"root": True, "log": True, "log-format": True, "debug": False, "systemd-cgroup": False}
_GLOBAL_FLAGS |= {"rootless": True, "criu": True, "version": False, "v": False}
_CREATE_FLAGS = {
    "bundle": True,
    "pid-file": True,
    "console-socket": True,
    "no-pivot": False,
    "no-new-keyring": False,
    "preserve-fds": True,
}
_COMMAND_FLAGS: dict[str, dict[str, bool]] = {
    "create": _CREATE_FLAGS,
    "run": {**_CREATE_FLAGS, "detach": False, "keep": False},
    "start": {},
    "state": {},
    "kill": {"all": False},
    "delete": {"force": False},
    "list": {"format": True, "quiet": False},
    "ps": {"format": True},
    "features": {},
}
_ALIASES = {
    "create": {"b": "bundle"},
    "run": {"b": "bundle", "d": "detach"},
    "kill": {"a": "all"},
    "delete": {"f": "force"},
    "list": {"f": "format", "q": "quiet"},
    "ps": {"f": "format"},
}
_BOOLEAN_WORDS = {"true": True, "1": True, "false": False, "0": False}


def parse_flags(
    args: list[str], flags: dict[str, bool], aliases: dict[str, str], stop_at_operand: bool
) -> tuple[dict[str, str | bool], list[str]]:
    """The flags given (name -> value, or True/False for a boolean) and the remaining arguments.

    stop_at_operand: stop at the first operand (the global options end at the subcommand); otherwise flags
    may come until the container id, and everything after it is operands (``kill ID SIGNAL``). ``--`` ends
    the options.
    """
    found: dict[str, str | bool] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            return found, args[index + 1 :]
        if not arg.startswith("-") or arg == "-":
            if stop_at_operand:
                return found, args[index:]
            # The id: what follows belongs to the command (kill's signal), flags after it included (runc's).
            rest_found, rest = parse_flags(args[index + 1 :], flags, aliases, True)
            found |= rest_found
            return found, [arg, *rest]
        name, has_value, value = arg.lstrip("-").partition("=")
        name = aliases.get(name, name)
        if name not in flags:
            raise OciError(f"flag provided but not defined: {arg.partition('=')[0]}")
        if flags[name]:
            if not has_value:
                index += 1
                if index >= len(args):
                    raise OciError(f"flag needs an argument: {arg}")
                value = args[index]
            found[name] = value
        elif has_value:
            if value.lower() not in _BOOLEAN_WORDS:
                raise OciError(f"invalid boolean value {value!r} for flag {arg.partition('=')[0]}")
            found[name] = _BOOLEAN_WORDS[value.lower()]
        else:
            found[name] = True
        index += 1
    return found, []


def _global_options(args: list[str]) -> tuple[Options, list[str]]:
    found, rest = parse_flags(args, _GLOBAL_FLAGS, {}, stop_at_operand=True)
    options = Options()
    options.root = str(found["root"]) if "root" in found else None
    options.log = str(found["log"]) if "log" in found else None
    options.log_format = str(found.get("log-format", "text"))
    if options.log_format not in ("text", "json"):
        raise OciError(f"unknown log format {options.log_format!r} (text or json)")
    options.debug = bool(found.get("debug", False))
    options.systemd_cgroup = bool(found.get("systemd-cgroup", False))
    options.rootless = str(found["rootless"]) if "rootless" in found else None
    options.version = bool(found.get("version") or found.get("v"))
    if options.root:
        options.root = os.path.abspath(options.root)
    return options, rest


def log_error(options: Options | None, message: str) -> None:
    """One line on stderr and, with --log, one record in that file (podman and containerd read the last)."""
    try:
        sys.stderr.write(f"aiocontain-oci: {message}\n")
        sys.stderr.flush()
    except OSError:
        pass  # stderr closed: the log file still says it
    if options is None or not options.log:
        return
    import time

    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"
    import json

    if options.log_format == "json":
        line = json.dumps({"level": "error", "msg": message, "time": stamp})
    else:
        line = f'time="{stamp}" level=error msg={json.dumps(message)}'
    try:
        fd = os.open(options.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError as exc:
        sys.stderr.write(f"aiocontain-oci: cannot write the log {options.log}: {exc.strerror}\n")


def _command(name: str) -> Callable[[Options, dict[str, str | bool], list[str]], int]:
    """The subcommand's implementation, imported only now: each module imports only what it needs."""
    if name in ("create", "run"):
        from aiocontain.oci import create

        return create.run_command if name == "run" else create.main
    if name in ("start", "state", "kill", "delete", "list", "ps"):
        from aiocontain.oci import lifecycle

        return getattr(lifecycle, "list_containers" if name == "list" else name)  # type: ignore[no-any-return]
    from aiocontain.oci import features

    return features.main


def dispatch(argv: list[str]) -> int:
    """Parse argv (without the program name) and run the subcommand; OciError for anything wrong."""
    options, rest = _global_options(argv)
    if options.version:
        rest = ["--version"]
    if not rest:
        raise OciError("no command given (create, start, state, kill, delete, list, ps, features, exec)")
    name, args = rest[0], rest[1:]
    if name in ("--version", "-v", "version"):
        from aiocontain import __version__

        sys.stdout.write(VERSION_TEXT.format(version=__version__))
        return 0
    if name == "exec":
        from aiocontain.oci import exec as oci_exec

        return oci_exec.main(options, args)
    if name not in _COMMAND_FLAGS:
        raise OciError(f"unknown command {name!r}")
    flags, operands = parse_flags(args, _COMMAND_FLAGS[name], _ALIASES.get(name, {}), stop_at_operand=False)
    return _command(name)(options, flags, operands)


def main() -> None:
    """The console script: run, print an OciError as one line (stderr and --log), exit 1."""
    # First of all: no fd of ours may take a closed stdio fd's number, or the container, whose stdio is ours,
    # would be given it (aiocontain.stdfds).
    stdfds.fill_for_command("aiocontain-oci", 1)
    argv = sys.argv[1:]
    options: Options | None = None
    try:
        options, _ = _global_options(argv)
    except OciError:
        options = None
    try:
        code = dispatch(argv)
    except OciError as exc:
        log_error(options, exc.message)
        code = exc.exit_code
    except OSError as exc:  # a state root or entry in a state no path above expected: still one line, as runc
        log_error(options, f"{exc.filename or 'error'}: {exc.strerror or exc}")
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: the interpreter's finalization (modules torn down, a last collection) costs ~1.5 ms of each of
    # the 3-4 calls an engine makes a container, and nothing here is left to it (no atexit, no threads, files
    # closed by their with blocks, output flushed just above).
    os._exit(code)
