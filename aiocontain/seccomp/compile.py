"""A resolved profile to a BPF program, through libseccomp, in the runtime (never in the container's child)."""

from __future__ import annotations

from aiocontain.seccomp import libseccomp as ls
from aiocontain.seccomp.profile import ProfileError, Resolved

BPF_MAXINSNS = 4096  # the kernel's limit on one filter's length
SOCK_FILTER_SIZE = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k


def compile_bpf(resolved: Resolved, source: str) -> bytes:
    """The program as raw ``struct sock_filter`` bytes, ready for PR_SET_SECCOMP.

    Syscall names that libseccomp does not know on any of the filter's
    architectures are skipped, as podman does (profiles list calls of newer
    kernels and other architectures). Calls of an architecture that the filter
    does not cover are killed (libseccomp's default for a bad architecture).
    """
    with ls.Filter(resolved.default_action) as bpf:
        bpf.optimize_as_tree()  # an older libseccomp's list is as correct, only slower to install
        for arch in resolved.arches[1:]:
            token = ls.resolve_arch(arch)
            if token:  # an architecture this libseccomp does not know cannot be this machine's
                bpf.add_arch(token)
        numbers: dict[str, int] = {}
        for rule in resolved.rules:
            for name in rule.names:
                number = numbers.setdefault(name, ls.resolve_syscall(name))
                if number == ls.NR_SCMP_ERROR:
                    continue
                try:
                    bpf.add_rule(rule.action, number, list(rule.comparisons))
                except OSError as exc:
                    raise ProfileError(f"the seccomp profile {source}: rule for {name}: {exc.strerror}") from None
        program = bpf.export()
    if len(program) // SOCK_FILTER_SIZE > BPF_MAXINSNS:
        raise ProfileError(
            f"the seccomp profile {source} compiles to {len(program) // SOCK_FILTER_SIZE} BPF instructions, "
            f"more than the kernel's {BPF_MAXINSNS}"
        )
    return program
