"""``python -m aiocontain.oci``: the same as the ``aiocontain-oci`` console script."""

from aiocontain.oci.command import main

main()
