"""Stage 1, spawn: start the container's first process, blocked until the release.

The child (the intermediate) is forked by this process's fork server
(``aiocontain.forkserver``), which has the child modules imported already: only
the first container pays for starting an interpreter. It unshares the
namespaces, forks PID 1 and answers Ready with the init's release pipe, its
report socket and the netlink socket it opened inside the new network namespace.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import tempfile
from pathlib import Path

import anyio

from aiocontain import events, forkserver, messages
from aiocontain.errors import AiocontainError
from aiocontain.forkserver import userns
from aiocontain.messages import Config, Failed, Ready, Unshared
from aiocontain.runtimedir import RuntimeDir
from aiocontain.security import paths
from aiocontain.stages import idmap
from aiocontain.stages.context import StageContext

READY_TIMEOUT = 10.0


async def run(ctx: StageContext) -> None:
    ctx.runtime_dir = _make_runtime_dir(ctx)
    etc_files = _etc_files(ctx, ctx.runtime_dir.path)
    mounts: list[list[str | bool]] = [[m.source, m.target, m.readonly] for m in ctx.mounts]
    mounts += _write_plugin_files(ctx, ctx.runtime_dir.path)

    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ctx.control = parent
    ctx.stack.callback(parent.close)
    spec = ctx.spec
    config = Config(
        rootfs=str(ctx.rootfs),
        argv=list(spec.command),
        env={**spec.environment(None), **ctx.extra_env},  # TERM=xterm, as podman: not the caller's terminal
        workdir=spec.workdir,
        hostname=spec.effective_hostname,
        unshare_net=ctx.driver.unshare_netns,
        want_netlink=ctx.driver.wants_netlink,
        tap=ctx.driver.tap,
        etc_files={name: path for name, (path, _) in etc_files.items()},
        init=spec.init,
        tty=spec.tty,
        init_binary=ctx.init_binary,
        mount_cgroup=ctx.placement is not None,
        mounts=mounts,
        caps=spec.capabilities,
        no_new_privs=spec.no_new_privileges,
        masked_paths=[] if spec.privileged else list(paths.MASKED),
        readonly_paths=[] if spec.privileged else list(paths.READONLY),
        seccomp=ctx.seccomp,
    )
    try:
        messages.send(parent, config)  # waits in the socket buffer until the child reads it
    except OSError as exc:
        child.close()
        if exc.errno != errno.EMSGSIZE:
            raise
        size = len(messages.encode(config))
        raise AiocontainError(
            f"the command, environment and options are too large ({size} bytes)",
            fix="pass large data through a file in the rootfs instead of -e or arguments",
        ) from None
    try:
        server = ctx.fork_server or forkserver.default()
        ctx.process = await server.fork(child, spec.stdin, spec.stdout, spec.stderr)
    finally:
        child.close()
    _write(etc_files)  # while the child unshares: the init reads them only once released
    ctx.stack.callback(ctx.drain)  # runs after _stop_child, once the reader has seen end of stream
    ctx.stack.push_async_callback(_stop_child, ctx)
    parent.setblocking(False)
    ctx.tg.start_soon(ctx.read_control)

    with anyio.fail_after(READY_TIMEOUT):
        message, fds = await ctx.receive()
        if isinstance(message, Unshared):
            idmap.begin(ctx)  # the user namespace exists: map it while the child forks the init
            message, fds = await ctx.receive()
    if isinstance(message, Failed):
        raise namespace_error(message)
    if not isinstance(message, Ready):
        raise AiocontainError("the container process exited during set-up")
    if len(fds) < 2:
        for fd in fds:
            os.close(fd)
        raise AiocontainError("the container process answered Ready without PID 1's pipes")
    ctx.init_pid = message.init_pid
    ctx.release_w, ctx.report_r = fds[0], fds[1]
    ctx.stack.callback(ctx.close_init_pipes)
    if len(fds) > 2:
        ctx.netlink = socket.socket(fileno=fds[2])
        ctx.stack.callback(ctx.netlink.close)
    # The init is blocked on its release pipe, so this pid is certainly still ours.
    ctx.pidfd = os.pidfd_open(message.init_pid)
    ctx.stack.callback(_close_pidfd, ctx)


def namespace_error(failure: Failed) -> AiocontainError:
    return userns.namespace_error(failure.message)


def _make_runtime_dir(ctx: StageContext) -> RuntimeDir:
    base = os.environ.get("XDG_RUNTIME_DIR") or None  # unset or empty: the temporary directory, /tmp
    if base is not None and not (os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK)):
        # podman refuses it too: falling back quietly would put the container's files where the user did not say.
        raise AiocontainError(
            f"XDG_RUNTIME_DIR {base} is not a directory this user can write",
            fix=f"fix its owner and mode (0700, the user's), or unset XDG_RUNTIME_DIR to use {tempfile.gettempdir()}",
        )
    directory = RuntimeDir.create(base, ctx.spec.short_id)
    ctx.stack.callback(directory.remove)
    return directory


def _etc_files(ctx: StageContext, directory: Path) -> dict[str, tuple[str, str]]:
    """The container's /etc/hostname, hosts and resolv.conf: name -> (host path, content)."""
    hostname = ctx.spec.effective_hostname
    files = {
        "hostname": hostname + "\n",
        "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ctx.driver.hosts_line(hostname)}",
        "resolv.conf": ctx.driver.resolv_conf(),
    }
    return {name: (str(directory / name), content) for name, content in files.items()}


def _write(files: dict[str, tuple[str, str]]) -> None:
    for path, content in files.values():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: every user in the container reads them
            os.write(fd, content.encode())
        finally:
            os.close(fd)


def _write_plugin_files(ctx: StageContext, directory: Path) -> list[list[str | bool]]:
    """Files the prepare hooks asked for: written here, bind-mounted writable at their place in the container."""
    mounts: list[list[str | bool]] = []
    for index, (target, (content, mode)) in enumerate(ctx.files.items()):
        path = directory / f"file-{index}"
        path.write_bytes(content)
        path.chmod(mode)
        mounts.append([str(path), target, False])
    return mounts


async def _stop_child(ctx: StageContext) -> None:
    """Closing the control socket makes the child kill the container and reap it before it exits: the one kill
    that every path has (the kernel closes the socket when the runtime dies). Kill the child if it lingers;
    PID 1's parent-death signal then ends the container."""
    process, control = ctx.process, ctx.control
    assert process is not None and control is not None
    with contextlib.suppress(OSError):
        control.shutdown(socket.SHUT_RDWR)
    with anyio.move_on_after(5):
        await process.wait_exit()
    if not process.exited:
        ctx.log.warning(events.CHILD_KILLED, pid=process.pid)
    await process.aclose()  # kills it if it still runs


def _close_pidfd(ctx: StageContext) -> None:
    if ctx.pidfd is not None:
        os.close(ctx.pidfd)
        ctx.pidfd = None
