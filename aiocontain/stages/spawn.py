"""Stage 1, spawn: start the container's PID 1, blocked until the release.

PID 1 is cloned into its new namespaces by this process's fork server
(``aiocontain.forkserver``), which has the child modules imported already (only
the first container pays for starting an interpreter) and writes the id maps
before it answers; or it is the fork server's spare, cloned ahead. The request
goes first and the Config after it, so that PID 1 starts while the Config is
made. It reads the Config, sets its hostname, lo and tap0 up, and answers Ready
with its release pipe, its report socket and the netlink socket it opened
inside its network namespace; then it builds its root.

Reads the spec, the driver, the prepare hooks' env, mounts and files; sets
``runtime_dir``, ``child``, ``process`` (PID 1, whose pidfd signals it), ``init_pid``, ``init``, ``netlink``.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import anyio

from aiocontain import etcfiles, forkserver, mounts, runtimedir, ulimits, users
from aiocontain.channels import ChildChannel
from aiocontain.errors import AiocontainError
from aiocontain.messages import Config
from aiocontain.security import paths
from aiocontain.stages.context import StageContext

READY_TIMEOUT = 10.0


async def run(ctx: StageContext) -> None:
    spec = ctx.spec
    base = _runtime_base()  # refused before anything starts, as any bad input
    # Undone last, with every fd of this container's closed: runtime directories whose removal ran out of fds
    # (this one's, or another container's) are removed then.
    ctx.stack.callback(runtimedir.retry_unremoved)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ctx.stack.callback(parent.close)
    channel = ctx.child = ChildChannel(parent, spec.command[0], ctx.fail)
    # The request first, the Config after: PID 1 (a spare, woken) starts while the Config is made.
    try:
        server = ctx.fork_server or forkserver.default()
        ctx.process = await server.fork(child, spec.stdin, spec.stdout, spec.stderr, ctx.driver.unshare_netns)
    finally:
        child.close()
    ctx.stack.callback(channel.drain)  # runs after _stop_child, once the reader has seen end of stream
    ctx.stack.push_async_callback(_stop_child, ctx)
    ctx.tg.start_soon(channel.read)

    ctx.runtime_dir = _make_runtime_dir(ctx, base)
    etc_files = _etc_files(ctx, ctx.runtime_dir.path)
    wanted = [*mounts.read_only_tmpfs(spec), *spec.mounts, *ctx.mounts, *_write_plugin_files(ctx, ctx.runtime_dir.path)]
    overlay = mounts.overlay_dir(ctx.runtime_dir.path) if spec.overlay else None
    config = Config(
        rootfs=str(ctx.rootfs),
        argv=list(spec.command),
        env=environment(ctx),
        workdir=spec.workdir,
        hostname=spec.effective_hostname,
        unshare_net=ctx.driver.unshare_netns,
        want_netlink=ctx.driver.wants_netlink,  # the facts, or IPv6's readiness, come from it
        tap=ctx.driver.tap,
        etc_files={name: path for name, (path, _) in etc_files.items()},
        init=spec.init,
        tty=spec.tty,
        init_binary=ctx.init_binary,
        mount_cgroup=ctx.placement is not None,
        mounts=mounts.ordered(wanted),
        read_only=spec.read_only,
        overlay=overlay,
        caps=spec.capabilities,
        no_new_privs=spec.no_new_privileges,
        masked_paths=[] if spec.privileged else list(paths.MASKED),
        readonly_paths=[] if spec.privileged else list(paths.READONLY),
        seccomp=ctx.seccomp,
        user=None if ctx.user is None else [ctx.user.uid, ctx.user.gid, *ctx.user.groups],
        rlimits=[list(limit) for limit in ulimits.parse(spec.ulimits)],
    )
    _write(etc_files)  # before the Config: a spare's PID 1, its maps written already, builds the root at once
    channel.send_config(config)

    ctx.init_pid = ctx.process.pid
    with anyio.fail_after(READY_TIMEOUT):
        ready = await channel.wait_ready()
    ctx.init, ctx.netlink = ready
    ctx.stack.callback(ready.init.close)
    if ready.netlink is not None:
        ctx.stack.callback(ready.netlink.close)


def _runtime_base() -> str | None:
    """Where the runtime directory goes: XDG_RUNTIME_DIR, or None (unset or empty) for the temporary directory."""
    base = os.environ.get("XDG_RUNTIME_DIR") or None
    if base is not None and not (os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK)):
        # podman refuses it too: falling back quietly would put the container's files where the user did not say.
        raise AiocontainError(
            f"XDG_RUNTIME_DIR {base} is not a directory this user can write",
            fix=f"fix its owner and mode (0700, the user's), or unset XDG_RUNTIME_DIR to use {tempfile.gettempdir()}",
        )
    return base


def _make_runtime_dir(ctx: StageContext, base: str | None) -> runtimedir.RuntimeDir:
    directory = runtimedir.RuntimeDir.create(base, ctx.spec.short_id)
    ctx.stack.callback(directory.remove)
    return directory


def environment(ctx: StageContext) -> dict[str, str]:
    """podman's defaults (TERM=xterm: not the caller's terminal), the plugins' and the user's; HOME from --user's
    passwd entry unless given."""
    env = {**ctx.spec.environment(None), **ctx.extra_env}
    if ctx.user is not None and "HOME" not in ctx.spec.env and "HOME" not in ctx.extra_env:
        env["HOME"] = ctx.user.home
    return env


def _etc_files(ctx: StageContext, directory: Path) -> dict[str, tuple[str, str]]:
    """The container's /etc/hostname, hosts and resolv.conf (and passwd or group with --user's added entry):
    name -> (host path, content)."""
    spec = ctx.spec
    hostname = spec.effective_hostname
    host_loopback = spec.allow_host_loopback and ctx.driver.name == "slirp4netns"
    files = {
        "hostname": hostname + "\n",
        "hosts": etcfiles.hosts(ctx.driver.hosts_line(hostname), spec.add_hosts, host_loopback),
        "resolv.conf": etcfiles.resolv_conf(ctx.driver.resolv_conf(), spec.dns, spec.dns_search, spec.dns_options),
    }
    files.update(users.etc_copies(ctx.user, ctx.rootfs) if ctx.user is not None else {})
    return {name: (str(directory / name), content) for name, content in files.items()}


def _write(files: dict[str, tuple[str, str]]) -> None:
    for path, content in files.values():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: every user in the container reads them
            os.write(fd, content.encode())
        finally:
            os.close(fd)


def _write_plugin_files(ctx: StageContext, directory: Path) -> list[mounts.Mount]:
    """Files the prepare hooks asked for: written here, bind-mounted writable at their place in the container."""
    files: list[mounts.Mount] = []
    for index, (target, (content, mode)) in enumerate(ctx.files.items()):
        path = directory / f"file-{index}"
        path.write_bytes(content)
        path.chmod(mode)
        files.append(mounts.Mount(str(path), target))
    return files


async def _stop_child(ctx: StageContext) -> None:
    """Kill PID 1, and with it the whole container, if it still runs, and wait for its exit: the kill every path
    that cloned a PID 1 ends with (teardown's early ``StageContext.kill`` only stops the command sooner). Were
    this process to die instead, the fork server would kill it."""
    process, channel = ctx.process, ctx.child
    assert process is not None and channel is not None
    channel.shutdown()
    with anyio.move_on_after(5):
        await channel.wait_closed()  # our own shutdown: the reader is done with the socket before it closes
    await process.aclose()  # kills it if it still runs
