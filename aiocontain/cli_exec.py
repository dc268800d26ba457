"""``aiocontain exec [-i] [-t] [-e K=V] [-w DIR] [-u USER] NAME CMD...``: a command in a running container.

The container is found by name or id in this user's records (aiocontain.registry) and joined as
``Container.exec`` joins its own (aiocontain.execprocess, child/join.py): its namespaces, cgroup, capabilities,
seccomp filter, environment, working directory and user, all from its record's spec, with -e, -w and -u on top.
Exit code: the command's; 125 for our own errors (an unknown or exited container), 126 and 127 as ``run``'s.
SIGINT, SIGTERM and SIGHUP are passed on to the command (podman exec's --sig-proxy); with -t the caller's
terminal is relayed to a terminal of the command's own in the container, as ``run -t`` does.
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

from aiocontain import registry
from aiocontain.errors import AiocontainError


def add_parser(commands: Any) -> None:
    run = commands.add_parser("exec", help="run a command in a running container")
    run.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached (default: /dev/null)")
    run.add_argument("-t", "--tty", action="store_true", help="a terminal of its own in the container (default: off)")
    run.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="set an environment variable")
    run.add_argument("-w", "--workdir", metavar="DIR", help="working directory inside (default: the container's)")
    run.add_argument("-u", "--user", metavar="USER[:GROUP]", help="run as this user (default: the container's)")
    run.add_argument("name", metavar="NAME")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD", help="the command and its arguments")


def main(args: argparse.Namespace) -> int:
    from aiocontain.envfile import from_options

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise AiocontainError("no command given", fix="aiocontain exec [OPTIONS] NAME CMD [ARGS...]")
    if args.workdir is not None and not args.workdir.startswith("/"):
        raise AiocontainError(f"invalid working directory {args.workdir!r}", fix="give an absolute path")
    record = registry.lookup(args.name)
    if record.state() != "running":
        raise AiocontainError(f"container {args.name} is not running", fix="aiocontain ps -a shows its state")
    from aiocontain.execprocess import for_record

    env = from_options(args.env)
    if args.tty:
        env.setdefault("TERM", "xterm")
    message = for_record(record, command, env=env, cwd=args.workdir, user=args.user, tty=args.tty)
    import anyio

    result: dict[str, Any] = {}
    anyio.run(_run, message, args.interactive, result)
    if "error" in result:
        raise result["error"]
    return int(result["code"])


async def _run(message: Any, interactive: bool, result: dict[str, Any]) -> None:
    import contextlib

    import anyio

    from aiocontain import terminal
    from aiocontain.execprocess import ExecProcess

    # The caller's terminal is never handed to the command: what it leaves running in the container would keep
    # it after exec returns, to write to and (with -i) read what the user types next. A terminal on stdio is
    # relayed through pipes instead, as podman's conmon does; other stdio (files, pipes) is handed over as is.
    relayed = [] if message.tty else terminal.terminals(interactive)
    stdio = terminal.piped_stdio(relayed, interactive)
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    with anyio.open_signal_receiver(*forwarded) as signals:
        try:
            process = await ExecProcess.start(message, *stdio)
        except AiocontainError as exc:
            result["error"] = exc
            return
        async with process, anyio.create_task_group() as tg:

            async def relay_signals() -> None:
                async for signum in signals:
                    process.send_signal(signum)

            tg.start_soon(relay_signals)
            piped = terminal.Piped()
            piped.start(process, tg)
            with contextlib.ExitStack() as stack:
                attached = stack.enter_context(terminal.relayed(process, interactive, tg)) if message.tty else None
                result["code"] = await process.wait()
                if attached is not None:
                    await attached.finish()
                await piped.finish()
            tg.cancel_scope.cancel()
