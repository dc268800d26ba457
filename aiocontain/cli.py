"""The ``aiocontain`` command: run, doctor, rootfs init and import.

Errors of aiocontain itself are one line on stderr and exit 125; 126 and 127
are a command that cannot be executed or is not found, as in podman. Heavy
imports (anyio, structlog, pyroute2) happen only on the path that needs them.

The command (``entry``) forks its fork server first thing, while only the
standard library is loaded, so that it never starts a second interpreter and
the server's imports run alongside its own; and it ends with ``os._exit`` once
everything is torn down and stdout and stderr are flushed, instead of paying
for the interpreter's finalization (36-70 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from aiocontain import stdfds

if TYPE_CHECKING:
    from aiocontain.plugins import Installed, Plugin

EXIT_ERROR = 125


_ROOTFS_DEFAULT = "{rootfs default}"  # filled in only when help is shown: finding it costs an import

RUN_EPILOG = """\
CMD is looked up in the container's PATH; put -- before it when it starts with -.

exit codes (as podman's):
  N       the command's own exit code
  128+N   the command was killed by signal N (137, with one line, when the OOM killer did it)
  125     an error of aiocontain itself: one line on stderr saying what and how to fix it
  126     the command cannot be executed
  127     the command does not exist in the container
  141     what aiocontain printed found no reader (a closed pipe), as SIGPIPE ends any tool

example:
  aiocontain run --net none -m 64m -e GREETING=hi -- /bin/sh -c 'echo $GREETING from $(hostname)'
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's lines, and fills in the default rootfs where this copy of aiocontain finds it."""

    def _expand_help(self, action: argparse.Action) -> str:
        text = super()._expand_help(action)
        if _ROOTFS_DEFAULT in text:
            from aiocontain.rootfs import default_rootfs

            text = text.replace(_ROOTFS_DEFAULT, str(default_rootfs()))
        return text


class _Parser(argparse.ArgumentParser):
    """One line and exit 125 on a usage error; never a guessed abbreviation (``--pid`` is not ``--pids-limit``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"aiocontain: {message} (see '{self.prog} --help')\n")


_PREBUILT: list[argparse.ArgumentParser] = []  # the parser without plugins, built ahead by the run server


def prebuild() -> None:
    """Build the parser without plugins now: the run server does, once, before it forks its runs."""
    _PREBUILT[:] = [_parser()]


def _parser(installed: Sequence[Installed] = ()) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aiocontain",
        description="Rootless Linux containers, as an async Python toolkit.",
        epilog="run's options, exit codes and an example: aiocontain run --help",
    )
    from aiocontain import __version__

    parser.add_argument("--version", action="version", version=f"aiocontain {__version__}")
    commands = parser.add_subparsers(dest="subcommand", required=True, parser_class=_Parser)

    run = commands.add_parser(
        "run",
        help="run a command in a new container (its options: aiocontain run --help)",
        description="Run CMD in a new rootless container and exit with its exit code.",
        epilog=RUN_EPILOG,
    )
    run.add_argument(
        "--rootfs",
        type=Path,
        metavar="DIR",
        help=f"root filesystem (default: {_ROOTFS_DEFAULT}); DIR:O puts a throwaway overlay on it, as the default gets",
    )
    run.add_argument("--name", help="container name (default: the short container id)")
    run.add_argument("--hostname", help="hostname inside (default: the container name)")
    run.add_argument(
        "--net",
        "--network",
        dest="net",
        default="slirp4netns",
        choices=["slirp4netns", "pasta", "none", "host"],
        help="slirp4netns: own namespace, user-mode TCP/IP (tap0 10.0.2.100/24); pasta: the same through passt's "
        "pasta (podman 5's default); none: loopback only; host: the host's (default: slirp4netns)",
    )
    run.add_argument("--mtu", type=int, metavar="N", help="MTU of tap0; slirp4netns and pasta (default: 65520)")
    run.add_argument(
        "--allow-host-loopback",
        action="store_true",
        help="let 10.0.2.2 reach the host's 127.0.0.1 (default: off)",
    )
    _bool_option(run, None, "--ipv6", "IPv6 on tap0 too; --ipv6=false turns it off (default: on, as podman's)")
    run.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="set an environment variable; -e K passes the host's value, nothing when it is unset (default: none)",
    )
    run.add_argument("-w", "--workdir", default="/", help="working directory inside, made if missing (default: /)")
    run.add_argument(
        "--init",
        action="store_true",
        help="run a small init (catatonit) as PID 1 that reaps and forwards signals (default: off)",
    )
    _bool_option(
        run,
        "-t",
        "--tty",
        "a terminal of the container's own; -t=false turns it off (default: when stdin and stdout are terminals)",
    )
    _bool_option(
        run,
        "-i",
        "--interactive",
        "keep stdin attached, else /dev/null; -i=false turns it off (default: on, unless stdin alone is a terminal)",
    )
    run.add_argument(
        "--init-path", type=Path, metavar="PATH", help="the static init for --init (default: the host's catatonit)"
    )
    run.add_argument(
        "--cap-add",
        action="append",
        default=[],
        metavar="CAP",
        help="add a capability, a comma-separated list, or ALL (default: podman's 11)",
    )
    run.add_argument(
        "--cap-drop",
        action="append",
        default=[],
        metavar="CAP",
        help="drop a capability, a comma-separated list, or ALL (default: none dropped)",
    )
    run.add_argument(
        "--privileged",
        action="store_true",
        help="all capabilities, no seccomp filter, no masked paths, as podman's; still rootless (default: off)",
    )
    run.add_argument(
        "--security-opt",
        action="append",
        default=[],
        metavar="OPT",
        help="seccomp=FILE, seccomp=unconfined or no-new-privileges (default: podman's seccomp profile)",
    )
    run.add_argument(
        "-m", "--memory", metavar="SIZE", help="memory limit (memory.max), e.g. 2m, 512k, 1g or bytes (default: none)"
    )
    run.add_argument(
        "--memory-swap",
        metavar="SIZE",
        help="memory plus swap (memory.swap.max); -1 for unlimited swap (default: twice --memory)",
    )
    run.add_argument(
        "--pids-limit",
        type=int,
        metavar="N",
        help="most processes at once (pids.max); -1 for no limit (default: 2048 where the pids controller is there)",
    )
    run.add_argument("--cpus", type=float, metavar="N", help="CPUs it may use (cpu.max), e.g. 0.5 (default: no limit)")
    run.add_argument(
        "--cgroups",
        default="enabled",
        choices=["enabled", "disabled"],
        help="disabled: no cgroup of its own, and limits are refused (default: enabled)",
    )
    run.add_argument(
        "--cgroup-parent",
        type=Path,
        metavar="DIR",
        help="a cgroup2 directory you own to make the container's cgroup in (default: the subtree delegated to you)",
    )
    run.add_argument(
        "--network-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds tap0 may take to come up before the run fails (default: 10)",
    )
    run.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="after a forwarded SIGINT, SIGTERM or SIGHUP, seconds until SIGKILL (default: 10)",
    )
    run.add_argument(
        "--backend", default="asyncio", choices=["asyncio", "trio"], help="event loop to run on (default: asyncio)"
    )
    run.add_argument(
        "--log-format", default="console", choices=["console", "json"], help="events on stderr as (default: console)"
    )
    run.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="the least level of events shown on stderr (default: warning)",
    )
    run.add_argument(
        "--events", type=Path, metavar="FILE", help="write every event as a JSON line to FILE (default: none)"
    )
    run.add_argument(
        "--enable-plugin",
        action="append",
        default=[],
        metavar="NAME",
        help="use a plugin that is off by default, for this run (default: the plugins enabled by default)",
    )
    run.add_argument(
        "--disable-plugin", action="append", default=[], metavar="NAME", help="leave a plugin out (default: none)"
    )
    from aiocontain import cli_users

    cli_users.add_arguments(run)  # --user, --env-file, --ulimit, --dns, --add-host, --label, ...
    from aiocontain import cli_containers

    cli_containers.add_run_arguments(run)  # -d, --rm
    run.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="CMD [ARGS...]",
        help="the command to run in the container, and its arguments",
    )
    run.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        metavar="HOST:CTR[:OPTS]",
        help="bind a host path; z, Z are ignored (default: none)",
    )
    run.add_argument(
        "--mount",
        action="append",
        default=[],
        metavar="type=bind|tmpfs,...",
        help="add a bind or tmpfs mount (default: none)",
    )
    run.add_argument(
        "--tmpfs", action="append", default=[], metavar="PATH[:OPTS]", help="mount a tmpfs at PATH (default: none)"
    )
    _flag(run, "--read-only", False, "mount the root read-only, tmpfs at /tmp, /run, /var/tmp (default: false)")
    _flag(run, "--read-only-tmpfs", True, "with --read-only, tmpfs at /tmp, /run and /var/tmp (default: true)")

    for item in installed:
        if item.plugin is not None:
            known = len(run._actions)
            try:
                item.plugin.add_arguments(run)
            except Exception as exc:  # noqa: BLE001 - a broken plugin is skipped, not fatal
                item.plugin, item.error = None, f"cannot add its options: {type(exc).__name__}: {exc}"
            # (dest, how the user spells it, its default): given while the plugin does not run, it is refused
            item.options = [(a.dest, (a.option_strings or [a.dest])[0], a.default) for a in run._actions[known:]]

    cli_containers.add_parsers(commands)  # ps, stop, kill, rm, logs, inspect, exec
    commands.add_parser("plugins", help="list the installed plugins")

    doctor = commands.add_parser("doctor", help="check this host's prerequisites and print fixes")
    doctor.add_argument(
        "--rootfs", type=Path, metavar="DIR", help=f"root filesystem to check (default: {_ROOTFS_DEFAULT})"
    )

    rootfs = commands.add_parser("rootfs", help="manage root filesystems")
    rootfs_commands = rootfs.add_subparsers(dest="rootfs_command", required=True, parser_class=_Parser)
    init = rootfs_commands.add_parser("init", help="build a minimal root filesystem from a static busybox")
    init.add_argument("dir", nargs="?", type=Path, help=f"where (default: {_ROOTFS_DEFAULT})")
    init.add_argument("--busybox", type=Path, help="static busybox binary (default: the host's /bin/busybox)")
    imp = rootfs_commands.add_parser("import", help="unpack an image (OCI layout or archive, docker-archive, tar)")
    imp.add_argument("source", type=Path, help="OCI layout directory or archive, docker-archive, or a rootfs tar")
    imp.add_argument("dir", type=Path, help="the new (or empty) directory to unpack it into")
    imp.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="the image to take (default: this host's)")
    return parser


def _bool_option(parser: argparse.ArgumentParser, short: str | None, long: str, text: str) -> None:
    """A flag spelled as podman's: -t, -t=true, --tty=false; combined as -it. Unset it stays None (the default
    depends on the terminal)."""
    dest = long.lstrip("-")
    spellings = [name for name in (short, long) if name]
    parser.add_argument(*spellings, dest=dest, action="store_const", const=True, default=None, help=text)
    for value in ("true", "false"):
        names = [f"{name}={value}" for name in spellings]
        parser.add_argument(*names, dest=dest, action="store_const", const=value == "true", help=argparse.SUPPRESS)


def _flag(parser: argparse.ArgumentParser, name: str, default: bool, text: str) -> None:
    """A boolean option spelled as podman's: --name, --name=true, --name=false."""
    dest = name.lstrip("-").replace("-", "_")
    parser.add_argument(name, dest=dest, action="store_const", const=True, default=default, help=text)
    for value in ("true", "false"):
        parser.add_argument(
            f"{name}={value}", dest=dest, action="store_const", const=value == "true", help=argparse.SUPPRESS
        )


def entry(after: Callable[[], None] | None = None) -> NoReturn:
    """The ``aiocontain`` command: ``main`` with a fork server forked early, then out without finalization;
    after: called once the output is flushed (the command starts a run server there)."""
    code = main(fork_server=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe or stream: nothing more can reach it anyway
    if after is not None:
        after()
    os._exit(code)


def main(argv: Sequence[str] | None = None, *, fork_server: bool = False) -> int:
    """Run the command line; fork_server: for ``run``, fork the fork server first (only a fresh process may)."""
    try:
        return _dispatch(argv, fork_server)
    except BrokenPipeError:
        # Printing (--help, ps, inspect) into a pipe whose reader has gone: quiet, as SIGPIPE would end a tool.
        if not stdfds.output_broken():
            raise
        return stdfds.silence_output()


def _dispatch(argv: Sequence[str] | None, fork_server: bool) -> int:
    args_list = sys.argv[1:] if argv is None else list(argv)
    from aiocontain import cli_containers

    if args_list[:1] and args_list[0] in cli_containers.COMMANDS:
        _release_stop_signals()  # nothing to tear down: a signal ends these at once
        return cli_containers.main(args_list, _Parser)  # light: stdlib only, no plugins, no fork server
    if not (fork_server and args_list[:1] == ["run"]):
        return _main(args_list)
    from aiocontain import fdlimit, forkserver

    fdlimit.raise_to_hard_limit()  # before the fork server is forked, so that it and its containers inherit it
    # First thing, before plugins or anything heavy is imported: the fork copies little more than the stdlib.
    forkserver.install(forkserver.ForkServer.fork_here())
    try:
        return _main(args_list)
    finally:
        forkserver.close_default()  # every container is torn down by now: it exits at once, and is reaped


def _main(argv: Sequence[str]) -> int:
    from aiocontain import entrypoints

    installed: list[Installed] = []
    entries = entrypoints.entry_points()  # cached: without a plugin installed the plugins are never imported
    if entries:
        from aiocontain.plugins.loading import discover

        installed = discover(entries)
    args = (_PREBUILT[0] if _PREBUILT and not installed else _parser(installed)).parse_args(argv)
    args.argv = list(argv)  # run -d executes the same arguments again as the detached monitor
    from aiocontain.errors import AiocontainError

    if args.subcommand != "run":
        _release_stop_signals()
        _collect_again()

    try:
        if args.subcommand == "run":
            return _run(args, installed)
        if args.subcommand == "plugins":
            return _list_plugins(installed)
        if args.subcommand == "doctor":
            from aiocontain import doctor

            return doctor.main(args.rootfs)
        if args.rootfs_command == "import":
            return _import(args.source, args.dir, args.platform)
        from aiocontain import rootfs

        target = args.dir or rootfs.default_rootfs()
        rootfs.init_rootfs(target, args.busybox)
        print(f"root filesystem ready in {target}", file=sys.stderr)
        return 0
    except AiocontainError as exc:
        _error_line(args, exc.line(), exc.message, exc.fix)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug still ends in one line (the traceback with --log-level debug)
        if getattr(args, "log_level", None) == "debug":
            import traceback

            traceback.print_exc()
        while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]  # task groups wrap what they raise
        if isinstance(exc, BrokenPipeError) and stdfds.output_broken():
            return stdfds.silence_output()  # what we print had no reader left (doctor | head -1): not a bug
        from aiocontain import fdlimit

        if isinstance(exc, OSError) and fdlimit.exhausted(exc):
            error = fdlimit.exhaustion_error(exc)
            _error_line(args, error.line(), error.message, error.fix)
            return 125
        message = f"unexpected error: {type(exc).__name__}: {exc}"
        fix = "this is a bug; --log-level debug shows where"
        _error_line(args, f"{message} ({fix})", message, fix)
        return EXIT_ERROR


def _error_line(args: argparse.Namespace, line: str, message: str, fix: str | None) -> None:
    """aiocontain's own error: one line on stderr; with --log-format json, one JSON object like the events'."""
    if getattr(args, "log_format", None) == "json":
        import json
        import time

        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = {"event": "aiocontain.error", "level": "error", "timestamp": stamp, "message": message, "fix": fix}
        text = json.dumps(record)
    else:
        text = f"aiocontain: {line}"
    with contextlib.suppress(BrokenPipeError):  # no reader left: the exit code still says it
        print(text, file=sys.stderr)


def _import(source: Path, dest: Path, platform: str | None) -> int:
    from aiocontain.images import import_rootfs

    imported = import_rootfs(source, dest, platform)
    for line in imported.warnings:
        print(f"aiocontain: warning: {line}", file=sys.stderr)
    layers = f"{imported.layers} layer{'s' if imported.layers != 1 else ''}"
    print(f"imported {imported.description} ({layers}) into {dest}", file=sys.stderr)
    return 0


def _release_stop_signals() -> None:
    """The command held SIGINT, SIGTERM and SIGHUP from its first instruction (aiocontain.command): a
    subcommand other than run has nothing to tear down, so they take their default action (end the process,
    quietly) from here on, a pending one at once."""
    import signal

    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}  # aiocontain.command.STOP_SIGNALS, without importing it
    if not held & signal.pthread_sigmask(signal.SIG_BLOCK, ()):
        return  # not held: main() called from Python, whose signals are not ours
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _collect_again() -> None:
    """Collection back on, frozen past what start-up made, where the command turned it off (aiocontain.command)."""
    if "aiocontain.command" in sys.modules and not gc.isenabled():
        gc.freeze()
        gc.enable()


def _list_plugins(installed: Sequence[Installed]) -> int:
    """`aiocontain plugins`: what is installed, whether each runs by default, and why one cannot run."""
    if not installed:
        from aiocontain.entrypoints import PLUGINS

        print(f"no plugins installed (entry-point group {PLUGINS})")
        return 0
    rows = [("NAME", "PACKAGE", "API", "DEFAULT", "DESCRIPTION")]
    for item in installed:
        if item.plugin is None:
            rows.append((item.name, item.distribution, "-", "skipped", str(item.error)))
        else:
            default = "enabled" if item.plugin.enabled_by_default else "disabled"
            rows.append((item.name, item.distribution, str(item.plugin.api_version), default, item.plugin.description))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return 0


def _run(args: argparse.Namespace, installed: Sequence[Installed] = ()) -> int:
    from aiocontain import cli_users
    from aiocontain.errors import AiocontainError
    from aiocontain.spec import ContainerSpec

    monitor = None
    if args.detach:
        from aiocontain import detached

        if args.tty:
            raise AiocontainError("-t gives a terminal to relay, and run -d relays nothing", fix="drop -t with -d")
        monitor = detached.Monitor.from_environment()
        if monitor is None:
            return detached.start(args.argv)  # this process waits for set-up; the monitor runs the container
        args.tty, args.interactive = False, False
    if args.mtu is not None and args.net not in ("slirp4netns", "pasta"):
        raise AiocontainError(f"--mtu sets tap0's MTU, which --net {args.net} has none of", fix="drop --mtu")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    from aiocontain.envfile import from_options

    env = from_options(args.env)
    tty, interactive = _terminal_defaults(args.tty, args.interactive)
    relayed = [] if tty else _terminals(interactive)
    from aiocontain import mounts

    spec = ContainerSpec(
        command=command,
        **mounts.spec_fields(args),
        name=args.name,
        hostname=args.hostname,
        network=args.net,
        **({"mtu": args.mtu} if args.mtu is not None else {}),
        allow_host_loopback=args.allow_host_loopback,
        ipv6=args.ipv6 is not False,
        workdir=args.workdir,
        init=args.init,
        init_path=args.init_path,
        stop_timeout=args.stop_timeout,
        network_timeout=args.network_timeout,
        memory=args.memory,
        memory_swap=args.memory_swap,
        pids_limit=args.pids_limit,
        cpus=args.cpus,
        cgroups=args.cgroups,
        cgroup_parent=args.cgroup_parent,
        **_stdio_options(tty, interactive, relayed),
        cap_add=args.cap_add,
        cap_drop=args.cap_drop,
        privileged=args.privileged,
        **_security_options(args.security_opt),
        **cli_users.spec_fields(args, env),
        **_monitor_fields(monitor),
    )
    spec.validate()

    import anyio

    from aiocontain import events

    events.configure(args.log_format, args.log_level)
    plugins = _plugins(args, installed)
    events_file = None
    if args.events == Path("-"):
        events_file = sys.stdout  # podman's "-": the container's own stdout is then shared with the events
    elif args.events is not None:
        try:
            events_file = open(args.events, "w", encoding="utf-8")  # noqa: SIM115 - closed below, on every path
        except OSError as exc:
            raise AiocontainError(f"cannot write the events file {args.events}: {exc.strerror}") from None
    result: dict[str, Any] = {}
    # network.ready's facts cost pyroute2's import: decode them only where something shows or uses them
    shown = args.log_level in ("debug", "info") or events_file is not None
    describe_network = shown or any(plugin.uses_network_facts for plugin in plugins)
    try:
        anyio.run(
            _run_container,
            spec,
            result,
            events_file,
            plugins,
            describe_network,
            interactive,
            monitor,
            args.rm,
            relayed,
            backend=args.backend,
        )
    finally:
        if events_file is not None and events_file is not sys.stdout:
            with contextlib.suppress(OSError):  # a reader that went away: what it missed is lost, nothing more
                events_file.close()
    if "error" in result:
        raise result["error"]
    if result.get("oom_killed"):
        from aiocontain.cgroups import format_size

        limit = f" of {format_size(spec.limits.memory)}" if spec.limits.memory else ""
        print(f"aiocontain: the container was killed by the OOM killer at its memory limit{limit}", file=sys.stderr)
    return int(result["code"])


def _monitor_fields(monitor: Any) -> dict[str, Any]:
    """run -d's monitor runs the container whose id run -d chose (and named its log after)."""
    return {"id": monitor.container_id} if monitor is not None else {}


def _security_options(options: Sequence[str]) -> dict[str, Any]:
    """--security-opt values, as podman spells them, into ContainerSpec fields."""
    from aiocontain.errors import AiocontainError

    fields: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if key == "seccomp" and sep and value:
            fields["seccomp"] = value if value == "unconfined" else Path(value)
        elif key in ("no-new-privileges", "no_new_privileges") and value in ("", "true", "false"):
            fields["no_new_privileges"] = value != "false"
        else:
            raise AiocontainError(
                f"unsupported --security-opt {option!r}",
                fix="use seccomp=FILE, seccomp=unconfined or no-new-privileges",
            )
    return fields


@contextlib.contextmanager
def _taking(signals: Sequence[int]) -> Iterator[None]:
    """Unblock signals the command held since its start (aiocontain.command) while our handlers are in place:
    one that came meanwhile is delivered now, to them; after, they are held again until the process exits."""
    import signal

    previous = signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _terminal_defaults(tty: bool | None, interactive: bool | None) -> tuple[bool, bool]:
    """-t and -i where not given: both when stdin and stdout are terminals; -i alone when stdin is not a
    terminal (a pipe or file: ``echo cmd | aiocontain run /bin/sh``); neither for a terminal stdin alone."""
    stdin_tty, stdout_tty = os.isatty(0), os.isatty(1)
    return (
        stdin_tty and stdout_tty if tty is None else tty,
        (stdout_tty or not stdin_tty) if interactive is None else interactive,
    )


def _terminals(interactive: bool) -> list[int]:
    """The caller's terminals among the stdio a command without -t would get (terminal.terminals, without its
    imports on the common path: no terminal at all)."""
    if not any(os.isatty(fd) for fd in (0, 1, 2)):
        return []
    from aiocontain import terminal

    return terminal.terminals(interactive)


def _stdio_options(tty: bool, interactive: bool, relayed: Sequence[int] = ()) -> dict[str, Any]:
    """-t and -i into ContainerSpec fields. Without -i the command's stdin is /dev/null; with -t its stdio is
    its terminal, which the CLI relays (and with -i, types into). Without -t, a terminal on the caller's stdio
    (relayed) is never handed over: the command gets a pipe in its place, which the CLI relays."""
    import subprocess

    if tty:
        from aiocontain import terminal

        null = subprocess.DEVNULL
        return {"tty": True, "tty_size": terminal.size(), "stdin": null, "stdout": null, "stderr": null}
    if relayed:
        from aiocontain import terminal

        stdin, stdout, stderr = terminal.piped_stdio(relayed, interactive)
        return {"stdin": stdin, "stdout": stdout, "stderr": stderr}
    return {"stdin": None if interactive else subprocess.DEVNULL}


async def _write_events(stream: Any, file: TextIO) -> None:
    """--events FILE: one JSON object a line, every event of the container, flushed as it happens."""
    import json

    from aiocontain.events import as_json

    writing = True
    async for event in stream:  # read to the end either way: the stream's producer never waits on us
        if writing:
            try:
                file.write(json.dumps(as_json(event), default=str) + "\n")
                file.flush()
            except (OSError, ValueError):
                writing = False  # its reader went away (`--events /dev/stdout | head`): the container carries on


def _plugins(args: argparse.Namespace, installed: Sequence[Installed]) -> list[Plugin]:
    """The plugins of this run, configured; each one that cannot run is one warning line, and the run goes on."""
    if not installed and not args.enable_plugin and not args.disable_plugin:
        return []  # nothing to choose from or to refuse: the plugins' modules stay unimported
    from aiocontain import events
    from aiocontain.errors import AiocontainError, PluginError
    from aiocontain.plugins.loading import select

    chosen = select(list(installed), args.enable_plugin, args.disable_plugin)
    for item in installed:
        if item.plugin is None or item.plugin not in chosen:
            for dest, spelling, default in item.options:
                if getattr(args, dest, default) != default:
                    raise AiocontainError(
                        f"plugin {item.name} does not run in this container, but its option {spelling} was given",
                        fix=f"drop {spelling}, or let the plugin run (without --disable-plugin {item.name})",
                    )
    log = events.logger()
    for item in installed:
        if item.plugin is None and item.name not in args.disable_plugin:
            log.warning(events.PLUGIN_SKIPPED, plugin=item.name, error=item.error)
    for plugin in chosen:
        try:
            plugin.configure(args)
        except AiocontainError as exc:
            name = plugin.display_name()
            raise PluginError(f"plugin {name}: {exc.message}", plugin=name, fix=exc.fix) from None
        except Exception as exc:  # noqa: BLE001 - a plugin's bug is named after the plugin, in one line
            name = plugin.display_name()
            raise PluginError(f"plugin {name}: {type(exc).__name__}: {exc}", plugin=name) from None
    return chosen


async def _run_container(
    spec: Any,
    result: dict[str, Any],
    events_file: TextIO | None = None,
    plugins: Sequence[Plugin] = (),
    describe_network: bool = True,
    interactive: bool = False,
    monitor: Any = None,
    auto_remove: bool = False,
    relayed: Sequence[int] = (),
) -> None:
    import anyio

    from aiocontain.container import Container

    container = Container(spec, plugins, describe_network=describe_network)
    if monitor is not None:  # run -d: the record stays after the exit (unless --rm), naming the log
        from aiocontain import registry

        container.log_path, container.auto_remove = registry.log_path(spec.id), auto_remove
    # Outside the signal-handling group: its cancellation must not cut the file short.
    async with anyio.create_task_group() as outer:
        if events_file is not None:
            outer.start_soon(_write_events, container.events(), events_file)
        try:
            await _supervise(container, spec, result, interactive, monitor, relayed)
        finally:
            container.close_events()  # already ended after teardown; this covers a run cut short before set-up


async def _supervise(
    container: Any,
    spec: Any,
    result: dict[str, Any],
    interactive: bool = False,
    monitor: Any = None,
    relayed: Sequence[int] = (),
) -> None:
    import contextlib
    import signal

    import anyio

    from aiocontain.errors import AiocontainError

    # SIGHUP too: the terminal or session that ran us is gone, and a command that ignores it must not outlive us.
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    pending: list[int] = []

    def forward(signum: int, tg: Any) -> None:
        container.send_signal(signum)
        tg.start_soon(grace_kill)

    async def grace_kill() -> None:
        await anyio.sleep(spec.stop_timeout)  # podman stop's grace period, then SIGKILL
        container.kill()

    with anyio.open_signal_receiver(*forwarded) as signals, _taking(forwarded):
        async with anyio.create_task_group() as tg:

            async def relay() -> None:
                async for signum in signals:
                    state = container.state
                    if state == "running":
                        forward(signum, tg)
                    elif state == "released":
                        pending.append(signum)  # the command is being executed: deliver once it runs
                    elif state != "exited":  # once exited, its status stands: what is left is teardown
                        result["code"] = 128 + signum  # interrupted before anything ran: stop set-up
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(relay)
            try:
                async with container:
                    _collect_again()  # the command runs: what set-up made stays for good
                    if monitor is not None:
                        monitor.ready()  # run -d prints the id and exits; this process stays as the monitor
                    for signum in pending:
                        forward(signum, tg)
                    with contextlib.ExitStack() as stack:
                        attached: Any = None
                        if spec.tty:
                            from aiocontain import terminal

                            attached = stack.enter_context(terminal.relayed(container, interactive, tg))
                        elif relayed:
                            from aiocontain import terminal

                            attached = terminal.Piped()
                            attached.start(container, tg)
                        status = await container.wait()
                        if attached is not None:
                            await attached.finish()
                result["code"] = status.code
                result["oom_killed"] = status.oom_killed
            except AiocontainError as exc:
                result["error"] = exc
            tg.cancel_scope.cancel()
