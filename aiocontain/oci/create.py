"""``aiocontain-oci create`` (and ``run``): build the container from its bundle; filled in next."""

from __future__ import annotations

from aiocontain.oci.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from aiocontain.oci.command import Options


def main(options: Options, flags: dict[str, str | bool], operands: list[str]) -> int:
    raise OciError("create is not implemented yet")


def run_command(options: Options, flags: dict[str, str | bool], operands: list[str]) -> int:
    raise OciError("run is not implemented yet")
