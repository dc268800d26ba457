"""Root filesystems from container images, without a daemon or a registry: ``aiocontain rootfs import``.

``formats`` tells what a source is (an OCI layout or archive, a docker-archive, a plain tar) and picks its
image; ``tree`` applies layers safely to a directory; ``namespace`` runs that as root of a user namespace
mapped as the containers' is; ``importer`` ties them together, all or nothing.
"""

from __future__ import annotations

from aiocontain.images.importer import Imported, import_rootfs

__all__ = ["Imported", "import_rootfs"]
