"""Errors that aiocontain reports to its users, by kind.

Every error a user can cause carries the exit code the CLI ends with, following
podman and docker: 125 for aiocontain's own errors, 126 for a command that
cannot be executed, 127 for a command that does not exist in the container.
The message is one line that names the problem and, where there is one, the fix.

Callers that want to react by kind catch the subclasses: ``SetupError`` (the
container could not be built), ``NetworkError``, ``CgroupError``,
``PluginError`` (naming the plugin), ``HostPrerequisiteError`` (this host
lacks something aiocontain needs; ``aiocontain doctor`` checks them all). Every
error raised by a set-up stage carries that stage's name in ``stage``.
"""

from __future__ import annotations


class AiocontainError(Exception):
    """An error of aiocontain itself (bad input, missing host prerequisite, failed stage)."""

    exit_code: int = 125

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        self.stage: str | None = None  # the set-up stage it stopped, once the pipeline has seen it
        super().__init__(self.line())

    def line(self) -> str:
        """The one line the CLI prints: the problem, then how to fix it."""
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class SetupError(AiocontainError):
    """The container could not be built: its namespaces, root filesystem, terminal or hardening failed."""


class UnexpectedMessage(SetupError):
    """A channel broke the protocol: something other than what this step waits for came (a bug)."""

    def __init__(self, channel: str, expected: str, got: object) -> None:
        super().__init__(f"the {channel} sent {type(got).__name__} where {expected} was expected (this is a bug)")
        self.channel = channel
        self.expected = expected
        self.got = got


class NetworkError(AiocontainError):
    """The container's network failed: its helper (slirp4netns) exited or refused, or it did not come up."""


class CgroupError(AiocontainError):
    """The container's cgroup could not be made, limited or entered, or limits cannot be had here."""


class PluginError(AiocontainError):
    """A plugin failed, vetoed the run, or was configured wrongly; ``plugin`` names it."""

    def __init__(self, message: str, *, plugin: str, fix: str | None = None) -> None:
        self.plugin = plugin
        super().__init__(message, fix=fix)


class HostPrerequisiteError(AiocontainError):
    """This host lacks something aiocontain needs (user namespaces, slirp4netns, /dev/net/tun, a static init,
    libseccomp); the fix says how to get it, and ``aiocontain doctor`` checks them all."""


class CommandNotExecutable(AiocontainError):
    """The command exists in the container but cannot be executed."""

    exit_code = 126


class CommandNotFound(AiocontainError):
    """The command does not exist in the container."""

    exit_code = 127
