"""``aiocontain-oci exec``: a stub until the exec branch supplies the real one (same signature)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from aiocontain.oci.options import Options


def main(options: Options, args: list[str]) -> int:
    """Run a process in a running container; args are exec's own options and operands."""
    from aiocontain.oci.errors import OciError

    raise OciError("exec is not implemented yet")
