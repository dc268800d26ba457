"""The container's IPC namespace: System V objects and POSIX message queues of the host are out of sight.

A probe makes a System V shared memory segment and a POSIX message queue on the host, then looks for both
from inside, under aiocontain and under podman; inside, its own queue appears in its own /dev/mqueue.
"""

from __future__ import annotations

import os
import subprocess

import pytest

pytestmark = pytest.mark.container

# ipc make|find|remove KEY QUEUE: a System V shm segment of key KEY and the POSIX queue QUEUE ("/name").
IPC_PROBE = r"""
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    key_t key = (key_t)strtol(argv[2], 0, 0);
    const char *queue = argv[3];
    if (!strcmp(argv[1], "make")) {
        int shm = shmget(key, 4096, IPC_CREAT | IPC_EXCL | 0600);
        printf("shm=%s ", shm >= 0 ? "made" : strerror(errno));
        mqd_t mq = mq_open(queue, O_CREAT | O_EXCL | O_RDWR, 0600, NULL);
        printf("mq=%s\n", mq != (mqd_t)-1 ? "made" : strerror(errno));
    } else if (!strcmp(argv[1], "find")) {
        int shm = shmget(key, 0, 0);
        printf("shm=%s ", shm >= 0 ? "found" : strerror(errno));
        mqd_t mq = mq_open(queue, O_RDONLY);
        printf("mq=%s\n", mq != (mqd_t)-1 ? "found" : strerror(errno));
    } else {
        int shm = shmget(key, 0, 0);
        if (shm >= 0) shmctl(shm, IPC_RMID, NULL);
        mq_unlink(queue);
    }
    return 0;
}
"""
ABSENT = "shm=No such file or directory mq=No such file or directory"


@pytest.fixture
def host_objects(probes):
    """(probe path inside, key, queue): the host's shm segment and queue exist while the test runs."""
    inside = probes.build("ipc", IPC_PROBE)
    on_host = str(probes.rootfs / inside.lstrip("/"))
    key, queue = str(0x41430000 + os.getpid() % 0xFFFF), f"/aiocontain-test-{os.getpid()}"
    made = subprocess.run([on_host, "make", key, queue], capture_output=True, text=True, check=True)
    try:
        assert made.stdout.strip() == "shm=made mq=made", made.stdout
        # The control: the probe does find them where they are.
        found = subprocess.run([on_host, "find", key, queue], capture_output=True, text=True, check=True)
        assert found.stdout.strip() == "shm=found mq=found", found.stdout
        yield inside, key, queue
    finally:
        subprocess.run([on_host, "remove", key, queue], check=True)


def test_the_hosts_ipc_objects_are_out_of_sight(cli, probes, host_objects, podman):
    probe, key, queue = host_objects
    result = cli("--net", "none", "--", probe, "find", key, queue, rootfs_dir=probes.rootfs)
    assert (result.code, result.stdout.strip()) == (0, ABSENT), result.stderr
    under_podman = podman("--network", "none", probe, "find", key, queue, rootfs_dir=probes.rootfs)
    assert (under_podman.code, under_podman.stdout.strip()) == (0, ABSENT), under_podman.stderr


def test_dev_mqueue_is_the_containers_own(cli, probes, host_objects):
    probe, key, queue = host_objects
    script = f"grep ' /dev/mqueue ' /proc/self/mounts | cut -d' ' -f3; {probe} make {key} {queue}; ls /dev/mqueue"
    result = cli("--net", "none", "--", "/bin/sh", "-c", script, rootfs_dir=probes.rootfs)
    assert result.code == 0, result.stderr
    # A queue and a segment of the same names as the host's are new ones here, seen in its own mqueue mount.
    assert result.stdout.splitlines() == ["mqueue", "shm=made mq=made", queue.lstrip("/")]
