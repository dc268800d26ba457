"""Errors that aiocontain reports to its users.

Every error a user can cause carries the exit code the CLI ends with, following
podman and docker: 125 for aiocontain's own errors, 126 for a command that
cannot be executed, 127 for a command that does not exist in the container.
The message is one line that names the problem and, where there is one, the fix.
"""

from __future__ import annotations


class AiocontainError(Exception):
    """An error of aiocontain itself (bad input, missing host prerequisite, failed stage)."""

    exit_code: int = 125

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        """The one line the CLI prints: the problem, then how to fix it."""
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class CommandNotExecutable(AiocontainError):
    """The command exists in the container but cannot be executed."""

    exit_code = 126


class CommandNotFound(AiocontainError):
    """The command does not exist in the container."""

    exit_code = 127
