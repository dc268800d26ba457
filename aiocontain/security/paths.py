"""The kernel files a container does not see or may not change: runc's and podman's default lists."""

from __future__ import annotations

# Hidden: files under /dev/null, directories under an empty read-only tmpfs; what a kernel lacks is skipped.
MASKED = (
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/dev/block",
    "/proc/interrupts",
)

# Bind-mounted read-only: still readable (the network namespace's sysctls, the container's own interrupts).
READONLY = (
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
