#!/bin/sh
# The VM tier's guest side (`nox -s vm`): run as root inside the QEMU guest right after boot.
# Usage: guest.sh USER COMMAND_FILE
# Makes what rootless containers need usable, delegates a cgroup v2 subtree to USER the way systemd's
# Delegate=yes does for user@UID.service (the user never gets the cgroup root), then runs the command in
# COMMAND_FILE (one shell-quoted line: pytest as USER) from a leaf of that subtree; its exit code is the guest's.
# The command comes in a file because virtme-ng passes --exec on the kernel command line (2 KiB at most).
set -eu
user=$1
command_file=$2
uid=$(id -u "$user")
echo "guest: kernel $(uname -r), script started $(cut -d' ' -f1 /proc/uptime) s after boot"

# virtme-ng lays an overlay of the host's /tmp over the guest's: a fresh tmpfs hides what the host left there
mount -t tmpfs -o mode=1777 tmpfs /tmp

# slirp4netns opens /dev/net/tun as the user; the node appears with the module (host-setup.sh: the same 0666)
modprobe tun
chmod 0666 /dev/net/tun

# cgroup v2 as systemd lays it out for a logged-in user: every controller the tests need enabled from the root
# down to and including the delegated user@UID.service, which (with exactly the files Delegate=yes hands over)
# belongs to the user; the ancestors and the root stay root's.
cg=/sys/fs/cgroup
delegated=$cg/user.slice/user-$uid.slice/user@$uid.service
mkdir -p "$delegated"
controllers=
for controller in cpu memory pids io; do
    if grep -qw "$controller" "$cg/cgroup.controllers"; then
        controllers="$controllers +$controller"
    fi
done
for dir in "$cg" "$cg/user.slice" "$cg/user.slice/user-$uid.slice" "$delegated"; do
    echo "$controllers" >"$dir/cgroup.subtree_control"
done
chown "$user:" "$delegated" "$delegated/cgroup.procs" "$delegated/cgroup.threads" "$delegated/cgroup.subtree_control"

# The user's processes start in a leaf that the user makes itself (as systemd --user does), so that the tests
# can move processes anywhere in the subtree: that needs write access to their common ancestor's cgroup.procs.
runuser -u "$user" -- mkdir "$delegated/session.scope"
echo $$ >"$delegated/session.scope/cgroup.procs"

eval "exec $(cat "$command_file")"
