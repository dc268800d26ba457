"""The plugins' tests share the runtime's fixtures (tests/conftest.py): run from the checkout's root, as
``nox -s tests`` does, where ``tests`` is importable and pyproject.toml's testpaths list both trees."""

from __future__ import annotations

from tests.conftest import (  # noqa: F401 - re-exported as fixtures and hooks of this tree
    anyio_backend,
    cli,
    earlier_runtime_dirs_swept_at_first_listing,
    loopback_server,
    pytest_collection_modifyitems,
    rootfs,
)
