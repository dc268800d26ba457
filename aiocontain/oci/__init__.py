"""aiocontain as an OCI runtime: ``aiocontain-oci``, runc's command line, for podman (through conmon) and containerd.

Stdlib-only and import-light throughout: ``start``, ``state``, ``kill``, ``delete`` and ``list`` are run once
per container operation by the engine and must not pay for anyio, structlog or pyroute2. docs/oci.md says what
is supported and how the lifecycle works.
"""
