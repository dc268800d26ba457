#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine, as root: host set-up, then nox (lint, types, tests, oci, slow, vm).
# The container tests themselves run as the unprivileged test user that host-setup.sh creates; slow runs
# CPython's regression tests in a Debian rootfs under aiocontain and podman; vm runs tests/vm in a QEMU guest
# with a real cgroup v2 hierarchy; oci runs the OCI conformance suite against aiocontain-oci and runc when
# AIOCONTAIN_OCI_SUITE names its tarball (.ci/run does), and skips otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/host-setup.sh

NOX_VENV=${AIOCONTAIN_NOX_VENV:-/opt/aiocontain-test/nox}
if [ ! -x "$NOX_VENV/bin/nox" ]; then
    /usr/bin/python3 -m venv "$NOX_VENV"
    "$NOX_VENV/bin/pip" install --quiet --disable-pip-version-check nox
fi
exec "$NOX_VENV/bin/nox" --no-color -s lint types tests oci slow vm "$@"
