#!/bin/sh
# The floor for a networked rootless container, in shell: util-linux `unshare` makes the same
# namespaces as aiocontain (user, mount, pid, uts, ipc, net) and chroots into the rootfs, and
# slirp4netns configures tap0 (MTU 65520, no host loopback: aiocontain's defaults). The command
# starts only once slirp4netns has reported tap0 configured (--ready-fd).
#
# With --sandbox, slirp4netns also confines itself (--enable-sandbox --enable-seccomp), as it does under
# aiocontain and podman: the same floor with the isolation slirp4netns adds (information beside the target).
#
# usage: slirp_baseline.sh [--sandbox] ROOTFS CMD [ARGS...]    exit status: the command's
set -eu
sandbox=
if [ "$1" = --sandbox ]; then
    sandbox="--enable-sandbox --enable-seccomp"
    shift
fi
rootfs=$1
shift
dir=$(mktemp -d "${XDG_RUNTIME_DIR:-${TMPDIR:-/tmp}}/bench-slirp.XXXXXX")
container=
slirp=
cleanup() {
    if [ -n "$slirp" ]; then
        kill "$slirp" 2>/dev/null || true
        wait "$slirp" 2>/dev/null || true # gone before we return, as a runtime's teardown
    fi
    if [ -n "$container" ]; then kill -KILL "$container" 2>/dev/null || true; fi # --kill-child takes PID 1 along
    rm -rf "$dir"
}
trap cleanup EXIT
mkfifo "$dir/unshared" "$dir/go" "$dir/ready"

# Inside: a line on fd 4 once the namespaces exist, then wait for a line on fd 5 and exec the command.
# fd 5 is opened read-write so that opening it does not wait for a writer.
unshare --user --map-root-user --mount --pid --uts --ipc --net --fork --kill-child --mount-proc --root="$rootfs" \
    /bin/sh -c 'echo >&4; exec 4>&-; read -r _ <&5; exec 5<&-; exec "$@"' sh "$@" \
    4>"$dir/unshared" 5<>"$dir/go" &
container=$!
read -r _ <"$dir/unshared"

# shellcheck disable=SC2086 # $sandbox: none, or two options
slirp4netns --configure --mtu 65520 --disable-host-loopback $sandbox --ready-fd 3 "$container" tap0 \
    3>"$dir/ready" >/dev/null 2>"$dir/slirp.err" &
slirp=$!
ready=
read -r ready <"$dir/ready" || true # slirp4netns writes "1" without a newline, then closes the fd
if [ "$ready" != 1 ]; then
    echo "slirp_baseline: slirp4netns did not get ready: $(cat "$dir/slirp.err")" >&2
    exit 125
fi

echo go >"$dir/go"
status=0
wait "$container" || status=$?
container=
exit "$status"
