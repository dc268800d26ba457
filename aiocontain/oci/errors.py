"""The one kind of error ``aiocontain-oci`` reports: a line on stderr and in ``--log``, exit code 1 (runc's)."""

from __future__ import annotations


class OciError(Exception):
    """Bad input, an unknown or existing id, a container in the wrong state, a failed set-up step.

    The message is the whole line the engine shows its user (podman and containerd read the last error line
    of ``--log``), so it names the container or file concerned.
    """

    exit_code = 1

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)
