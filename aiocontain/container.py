"""The public handle: one container, set up by the stage pipeline inside its own task group."""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, ByteStream, TaskGroup

from aiocontain import events, fdlimit, registry, stdfds
from aiocontain.cgroups import Placement
from aiocontain.errors import AiocontainError
from aiocontain.events import Event
from aiocontain.network import NetworkDriver, driver_for
from aiocontain.spec import CgroupsMode, ContainerSpec
from aiocontain.stages import PIPELINE, StageContext
from aiocontain.status import ExitStatus

if TYPE_CHECKING:
    from aiocontain.execprocess import ExecProcess
    from aiocontain.forkserver import ForkServer
    from aiocontain.plugins.api import Plugin
    from aiocontain.users import ExecUser

__all__ = ["Container", "ExitStatus", "State", "run"]  # ExitStatus lives in aiocontain.status

TEARDOWN_TIMEOUT = 15.0

State = Literal["created", "setting-up", "released", "running", "exited"]


class Container:
    """A running container; use as ``async with Container(spec) as c: status = await c.wait()``.

    Entering runs the set-up pipeline (prepare, spawn, idmap, cgroup, network,
    tap, prestart, release; prepare and prestart are the plugins' hooks) in a task
    group of the container's own and returns once the command runs. Leaving, on
    every path including the caller's cancellation, kills what is still running
    and undoes every stage in reverse order.
    """

    def __init__(
        self,
        spec: ContainerSpec,
        plugins: Sequence[Plugin] = (),
        *,
        fork_server: ForkServer | None = None,
        describe_network: bool = True,
    ) -> None:
        spec.validate()
        self.spec = spec
        self.plugins = list(plugins)  # their hooks run in this order (exited hooks in reverse)
        self.fork_server = fork_server  # None: this process's default (aiocontain.forkserver.default())
        self.describe_network = describe_network
        self.id = spec.id
        self.name = spec.effective_name
        self._log = events.EventLog(spec.short_id, self.name)
        self._ctx: StageContext | None = None
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._status: ExitStatus | None = None
        self._started_at = 0.0
        self._registration: registry.Registration | None = None
        self._set_up = False  # set-up done: from then on its record may stay after the exit
        # Set by `aiocontain run -d`'s monitor: the container writes to log_path, and its record stays after
        # its exit, with the exit code, until `aiocontain rm` (unless auto_remove, --rm).
        self.log_path: str | None = None
        self.auto_remove = False

    @property
    def pid(self) -> int | None:
        """Host PID of the container's PID 1."""
        return self._ctx.init_pid if self._ctx else None

    @property
    def state(self) -> State:
        """created -> setting-up -> released (the command is being executed) -> running -> exited."""
        ctx = self._ctx
        if self._status is not None:
            return "exited"
        if ctx is None:
            return "created"
        if self._stack is None:
            return "exited"  # torn down (a cancellation, a failure) without a wait: nothing of it runs
        if ctx.started:
            return "running"
        return "released" if ctx.released else "setting-up"

    def events(self) -> events.EventStream:
        """Every lifecycle event of this container as typed ``Event`` objects, from container.created on
        (however late the iteration starts), ending after teardown.finished::

            container = Container(spec)
            async with anyio.create_task_group() as tg:
                tg.start_soon(show, container.events())
                async with container:
                    await container.wait()
        """
        return self._log.stream()

    def history(self) -> list[Event]:
        """Every event of this container so far, oldest first (``events()`` is the same as a stream)."""
        return list(self._log.history)

    def close_events(self) -> None:
        """End every event stream now, for a container that will not be entered (they end by themselves after
        teardown)."""
        self._log.close()

    def _plugin_event(self, plugin: str, kind: str, data: dict[str, Any]) -> None:
        """``Plugin.emit``: a plugin's own event, on this container's stream."""
        self._log.info(events.PLUGIN_EVENT, plugin=plugin, kind=kind, data=data)

    @property
    def cgroup(self) -> Path | None:
        """The container's own cgroup v2 directory (its limits and usage; its processes are in ``container/`` below),
        None when it has none."""
        leaf = self._ctx.cgroup if self._ctx else None
        return leaf.path if leaf is not None else None

    @property
    def network(self) -> dict[str, Any]:
        """What the network driver reported once ready (interface, address, gateway, mtu)."""
        return dict(self._ctx.network) if self._ctx else {}

    @property
    def stdin(self) -> ByteSendStream | None:
        """The command's stdin, when the spec asked for ``subprocess.PIPE``."""
        process = self._ctx.process if self._ctx else None
        return process.stdin if process is not None else None

    @property
    def stdout(self) -> ByteReceiveStream | None:
        process = self._ctx.process if self._ctx else None
        return process.stdout if process is not None else None

    @property
    def stderr(self) -> ByteReceiveStream | None:
        process = self._ctx.process if self._ctx else None
        return process.stderr if process is not None else None

    @property
    def tty(self) -> ByteStream | None:
        """With ``ContainerSpec(tty=True)``, once running: the master of the container's terminal, as a byte
        stream (what the command writes to it; ``send`` types into it). End of stream once nothing inside
        holds the terminal."""
        return self._ctx.console if self._ctx else None

    def resize(self, rows: int, cols: int) -> None:
        """Set the container's terminal's window size (the command gets SIGWINCH)."""
        console = self._require().console
        if console is None:
            raise RuntimeError("the container has no terminal: use ContainerSpec(tty=True)")
        console.resize(rows, cols)

    async def __aenter__(self) -> Container:
        if self._ctx is not None or self._stack is not None:
            raise RuntimeError("a Container runs once: make a new one for the next run")
        try:
            return await self._enter()
        except OSError as exc:
            # Anywhere in the set-up (a check's read of /proc, a stage, the record): one clear error, the
            # set-up undone by _enter as for any other failure.
            if fdlimit.exhausted(exc):
                raise fdlimit.exhaustion_error(exc) from None
            if isinstance(exc, PermissionError):
                from aiocontain import umask  # only here: a refusal costs nothing on the way in

                if (refusal := umask.refusal()) is not None:
                    raise refusal from None  # our own directory, made under a umask that denies its owner
            raise

    async def _enter(self) -> Container:
        try:
            stdfds.ensure()  # before any fd of ours: none may take a closed stdio fd's number (aiocontain.stdfds)
            rootfs, driver, placement, init_binary = self._check()
            seccomp = self._seccomp()
            user = self._user(rootfs)
            # Last: nothing can fail after it.
            name = registry.claim_name(self.spec.name) if self.spec.name is not None else None
        except BaseException:
            self._log.close()  # nothing was started: event streams end here
            raise
        spec = self.spec
        fdlimit.raise_to_hard_limit()  # before the fork server starts: it and the containers inherit it
        self._started_at = time.perf_counter()
        tg = self._tg = anyio.create_task_group()
        await tg.__aenter__()
        stack = self._stack = AsyncExitStack()
        await stack.__aenter__()
        if name is not None:
            stack.callback(name.release)  # the last to go: the name is the container's until it is all gone
        stack.callback(self._unregister)  # once everything else is undone: `aiocontain stop` waits for this
        try:
            ctx = self._ctx = StageContext(
                spec=spec,
                rootfs=rootfs.resolve(),
                log=self._log,
                tg=tg,
                stack=stack,
                driver=driver,
                placement=placement,
                init_binary=init_binary,
                container=self,
                plugins=self.plugins,
                fork_server=self.fork_server,
                seccomp=seccomp,
                user=user,
            )
            self._log.info(
                events.CREATED,
                command=list(spec.command),
                rootfs=str(rootfs),
                network=driver.name,
                labels=dict(spec.labels),
                annotations=dict(spec.annotations),
            )
            with ctx.setup_scope:
                for stage, body in PIPELINE:
                    try:
                        if stage == "release":
                            self._register(ctx)  # before the command runs: it never runs unrecorded
                        await events.timed_stage(self._log, stage, partial(body, ctx))
                    except AiocontainError as exc:
                        cause = await ctx.root_cause(exc)
                        cause.stage = cause.stage or exc.stage or stage  # callers may catch by kind and see where
                        if cause is exc:
                            raise
                        raise cause from None
            if ctx.failure is not None:
                raise await ctx.root_cause(ctx.failure)
            if ctx.setup_scope.cancelled_caught:
                raise AiocontainError("container set-up was stopped")
            if self.plugins:
                assert ctx.init_pid is not None
                from aiocontain.plugins.api import StartedContext
                from aiocontain.plugins.hooks import run_hooks

                await run_hooks(self.plugins, "started", StartedContext(self, ctx.init_pid), self._log)
            self._set_up = True
        except BaseException as exc:
            await self._teardown(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _register(self, ctx: StageContext) -> None:
        """Record the container for `aiocontain ps` and ``aiocontain.attach`` (aiocontain.registry)."""
        assert ctx.init_pid is not None
        try:
            self._registration = registry.register(
                self.id,
                self.name,
                ctx.init_pid,
                spec=registry.plain(self.spec, skip=("stdin", "stdout", "stderr")),
                network=registry.plain(dict(ctx.network)),
                cgroup=str(self.cgroup) if self.cgroup is not None else None,
                stop_timeout=self.spec.stop_timeout,
                detached=self.log_path is not None,
                auto_remove=self.auto_remove,
                log=self.log_path,
            )
        except OSError as exc:
            # The record is written whole or not at all (registry._write), so there is nothing of it to undo.
            raise _record_error(exc) from None

    def _unregister(self) -> None:
        registration, self._registration = self._registration, None
        if registration is None:
            return
        if not self._set_up:
            registry.remove(registration.record)  # a failed set-up: nothing of it stays, its record neither
            return
        try:
            registration.finish(self._status.code if self._status is not None else None)
        except OSError as exc:
            raise _record_error(exc) from None

    def _check(self) -> tuple[Path, NetworkDriver, Placement | None, str | None]:
        """Everything that can be refused before anything starts: rootfs, architecture, init, network, cgroup."""
        from aiocontain import rootfs as rootfs_module
        from aiocontain.cgroups import place
        from aiocontain.elf import check_arch

        spec = self.spec
        rootfs = Path(spec.rootfs) if spec.rootfs is not None else rootfs_module.default_rootfs()
        rootfs_module.check_rootfs(rootfs, is_default=spec.rootfs is None)
        if spec.rootfs_overlay:  # asked for: refused where the kernel cannot
            from aiocontain.mounts import check_overlay

            check_overlay()
        check_arch(rootfs, spec.command[0], spec.environment(None)["PATH"], workdir=spec.workdir)
        init_binary = None
        if spec.init:
            from aiocontain import init_binary as init_binary_module

            init_binary = init_binary_module.find(spec.init_path)
        driver = driver_for(spec, describe_network=self.describe_network)
        driver.check()
        placement = place(spec.limits, spec.cgroup_parent, enabled=spec.cgroups is CgroupsMode.ENABLED)
        return rootfs, driver, placement, init_binary

    def _seccomp(self) -> str | None:
        """The compiled seccomp filter, before anything starts: a bad profile is refused here."""
        from aiocontain.seccomp import filter_for

        return filter_for(self.spec)

    def _user(self, rootfs: Path) -> ExecUser | None:
        """--user resolved in the rootfs's passwd and group and checked against the id mapping, before anything
        starts: a name that is not there or an id the container does not map is refused here."""
        if self.spec.user is None and not self.spec.group_add:
            return None
        from aiocontain import users
        from aiocontain.forkserver import userns

        return users.resolve(self.spec.user, self.spec.group_add, rootfs, userns.planned())

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._teardown(exc_type, exc, tb)
        except OSError as error:
            if fdlimit.exhausted(error):
                raise fdlimit.exhaustion_error(error) from None
            raise

    async def _teardown(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        tg, self._tg = self._tg, None
        if stack is None or tg is None:
            return
        if self._ctx is not None:
            self._ctx.stopping = True
            # Early, so that the command stops before its stages are undone. spawn._stop_child kills it too, on
            # every path that got as far as a PID 1; the fork server, when this process dies.
            self._ctx.kill()
        error: BaseException | None = None
        # Shielded: a cancelled caller still gets every stage undone, in reverse order.
        with anyio.CancelScope(shield=True), anyio.move_on_after(TEARDOWN_TIMEOUT):
            try:
                await stack.__aexit__(exc_type, exc, tb)
            except BaseException as problem:  # noqa: BLE001 - reported below, never hides the original error
                error = problem
        # The helper tasks (control reader, slirp4netns supervisor) end with their resources; cancel any straggler.
        # None, not the caller's exception: a cancellation of the caller must stay the caller's.
        tg.cancel_scope.cancel()
        await tg.__aexit__(None, None, None)
        if error is not None:
            self._log.warning(events.TEARDOWN_FINISHED, error=repr(error))
            self._log.close()
            if exc is None:
                raise error
            return
        self._log.info(events.TEARDOWN_FINISHED)
        self._log.close()

    async def wait(self) -> ExitStatus:
        """Wait for the command to end and return its status. Raises if a helper (slirp4netns) failed."""
        ctx = self._require()
        if self._status is None:
            code, signum = await _command_status(ctx)
            usage = None
            if ctx.cgroup is not None:
                usage = ctx.cgroup.usage()
                ctx.cgroup.report_oom(self._log, ctx.init_pid)  # a kill the watcher had no time to see
            oom_killed = code == 137 and usage is not None and usage.oom_kills > 0
            self._status = ExitStatus(code=code, signal=signum, usage=usage, oom_killed=oom_killed)
            self._log.info(
                events.EXITED,
                pid=ctx.init_pid,
                exit_code=code,
                signal=signum,
                duration_ms=round((time.perf_counter() - self._started_at) * 1000, 3),
                oom_killed=self._status.oom_killed,
                **(usage.fields() if usage is not None else {}),
            )
            if self.plugins:
                from aiocontain.plugins.api import ExitedContext
                from aiocontain.plugins.hooks import run_hooks

                await run_hooks(self.plugins, "exited", ExitedContext(self, self._status), self._log)
        return self._status

    def send_signal(self, signum: int) -> bool:
        """Send a signal to the container's PID 1; False when it has already exited.

        The kernel drops signals to a PID namespace's init that has no handler for
        them: use ``stop`` for a command that may ignore SIGTERM, or ``--init``.
        """
        sent = self._require().kill(signum)
        if sent:
            self._log.info(events.SIGNAL_FORWARDED, signal=signal.Signals(signum).name)
        return sent

    def kill(self) -> bool:
        """SIGKILL the container's PID 1, which ends every process in it."""
        sent = self._require().kill(signal.SIGKILL)
        if sent:
            self._log.info(events.KILLED)
        return sent

    async def stop(self, timeout: float | None = None, signum: int = signal.SIGTERM) -> ExitStatus:
        """Like ``podman stop``: send signum, and SIGKILL when not exited after timeout seconds."""
        self.send_signal(signum)
        with anyio.move_on_after(self.spec.stop_timeout if timeout is None else timeout):
            return await self.wait()
        self.kill()
        return await self.wait()

    async def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        tty: bool = False,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
    ) -> ExecProcess:
        """Run argv in this running container (``podman exec``) and return once it runs; ``await p.wait()`` gives
        its exit code. It gets the container's namespaces, cgroup, capabilities, seccomp filter and environment
        (env on top), the working directory (cwd) and user (``user``, resolved in the container's /etc/passwd) of
        the container unless given, and a session of its own; stdio as for ``run``, or with ``tty`` a terminal of
        its own in the container (``p.tty``). It belongs to the container: killed and reaped when the container
        is torn down, or when a ``wait`` on it is cancelled. CommandNotFound (127), CommandNotExecutable (126)
        or AiocontainError when it cannot run."""
        from aiocontain.execprocess import ExecProcess, request
        from aiocontain.stages.spawn import environment

        ctx = self._require()
        if ctx.init_pid is None or not ctx.started:
            raise RuntimeError("the container is not running yet")
        if self._status is not None:
            raise AiocontainError("the container is not running: its command has exited")
        message = request(
            self.spec,
            ctx.init_pid,
            argv,
            base_env=environment(ctx),
            seccomp=ctx.seccomp,
            env=env,
            cwd=cwd,
            user=user,
            container_user=ctx.user,
            tty=tty,
        )
        process = await ExecProcess.start(message, stdin, stdout, stderr)
        ctx.stack.push_async_callback(process.aclose)
        return process

    def _require(self) -> StageContext:
        if self._ctx is None or (self._stack is None and self._status is None):
            raise RuntimeError("the container is not running: use 'async with Container(spec) as c'")
        return self._ctx


async def _command_status(ctx: StageContext) -> tuple[int, int | None]:
    """(code, signal) of the container's command, code 128+N when signal N killed it: PID 1's exit status, from
    the fork server, which reaped it. A helper's failure (slirp4netns exiting early) fails the wait instead."""
    assert ctx.process is not None
    returncode = await ctx.process.wait()
    if ctx.failure is not None:
        raise ctx.failure
    if returncode is None:
        raise AiocontainError(
            "the fork server was killed, and the container with it: the command's exit status is lost",
            fix="do not signal aiocontain's own processes; stop the container through aiocontain",
        )
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


async def run(spec: ContainerSpec) -> ExitStatus:
    """Run a container to its end and return how it exited."""
    async with Container(spec) as container:
        return await container.wait()


def _record_error(exc: OSError) -> AiocontainError:
    """A container's record could not be written: out of fds (said as such), or the directory refused it."""
    if fdlimit.exhausted(exc):
        return fdlimit.exhaustion_error(exc)
    return AiocontainError(
        f"cannot record the container in {registry.directory(create=False)}: {exc.strerror}",
        fix="check that this user can write there (or set XDG_RUNTIME_DIR to a directory of your own)",
    )
