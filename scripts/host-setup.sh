#!/usr/bin/env bash
# Prepare a fresh Debian machine (as root) for aiocontain's test suite. Idempotent.
# - host packages: slirp4netns, passt (pasta, for --net pasta), uidmap (newuidmap/newgidmap), busybox-static, python3-venv,
#   gcc/libc6-dev (the chroot-escape test and the isolation probes build static programs),
#   catatonit (the static init that --init bind-mounts; tini's static build, the tests' contrast to it),
#   keyutils (the keyring probe's host side),
#   golang-github-containers-common (podman's seccomp profile, loaded by a test), and podman with runc:
#   every isolation probe runs under podman too where podman is installed, to compare
#   (crun refuses hybrid cgroups; naming runc makes apt pick it for podman's "crun | runc")
# - with --bench (what `nox -s bench` runs), also bubblewrap, which the benchmark compares against
# - with --slow (what `nox -s slow` runs), also mmdebstrap, which builds the slow tier's Debian rootfs
# - with --oci (what `nox -s oci` runs), also golang-1.19-go, which builds the OCI conformance suite offline
# - for the VM tier (nox -s vm; virtme-ng itself comes from PyPI into nox's venv): qemu-system-x86, Debian's
#   standard kernel linux-image-amd64 (not -cloud-: it lacks 9p, which shares the root with the guest), kmod
#   (modprobe, depmod) and udev, whose rules name the virtio-serial ports that carry the guest's output and
#   exit code (without it virtme-ng loses both); busybox-static above builds virtme-ng's initramfs
# - /dev/net/tun usable by unprivileged users (0666, as desktop distributions ship it)
# - an unprivileged test user with subordinate id ranges in /etc/subuid and /etc/subgid
set -euo pipefail

TEST_USER=${AIOCONTAIN_TEST_USER:-aiotest}
SUBID_START=${AIOCONTAIN_SUBID_START:-300000}
PACKAGES=(slirp4netns passt uidmap busybox-static python3-venv gcc libc6-dev iproute2 procps
    qemu-system-x86 linux-image-amd64 kmod udev catatonit tini keyutils golang-github-containers-common podman runc)
for arg in "$@"; do
    case $arg in
    --bench) PACKAGES+=(bubblewrap) ;;
    --slow) PACKAGES+=(mmdebstrap) ;;
    --oci) PACKAGES+=(golang-1.19-go) ;;
    *)
        echo "host-setup: unknown argument $arg (usage: $0 [--bench] [--slow] [--oci])" >&2
        exit 2
        ;;
    esac
done

if [ "$(id -u)" != 0 ]; then
    echo "host-setup: run as root (sudo $0)" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "host-setup: installing ${missing[*]}"
    # Wait for another apt (a concurrent set-up) instead of failing on its lock.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
    chmod 0666 /dev/net/tun
fi

if ! id -u "$TEST_USER" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$TEST_USER"
fi
for file in /etc/subuid /etc/subgid; do
    touch "$file"
    if ! grep -q "^$TEST_USER:" "$file"; then
        echo "$TEST_USER:$SUBID_START:65536" >>"$file"
    fi
done
echo "host-setup: ready (test user $TEST_USER, uid $(id -u "$TEST_USER"))"
