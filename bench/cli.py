"""``python -m bench``: choose the cases, run them interleaved, print the table, write the JSON.

Cases (``--cases``, comma-separated; groups or single names):

- start: ``/bin/true`` without network: cli.none (served by the run server, which the warm-up round starts),
  cli.none_own (no run server: the command imports everything itself), embedded.none, embedded.back_to_back
  (ten in a row, no pause between), bwrap.none, podman.none
- net: with slirp4netns: cli.net, cli.net_own, embedded.net, podman.net, shell.net
- overlay: ``--rootfs DIR:O`` without network: cli.overlay, podman.overlay (against cli.none, podman.none)
- batch: batch.concurrent and batch.sequential (``--batch`` networked containers), and
  batch.shell (as many shell baselines at once: the floor for the concurrent batch); batch.shell_sandboxed, the
  same with its slirp4netns confined as ours is (information); and each one's .cpu, the whole machine's CPU time
  per container (bench/machinecpu.py)
- throughput: throughput.default_mtu and throughput.mtu1500
- pasta: pasta against slirp4netns, each at its default MTU: cli.pasta beside cli.net (and cli.net4, slirp4netns
  without IPv6), throughput.pasta beside throughput.default_mtu (container -> host loopback), and
  published.pasta beside published.slirp4netns (host -> container through -p)
- memory: what each running container costs the runtime
- isolation: what the isolation costs at start-up, each beside cli.none (seccomp filter from the cache):
  cli.unconfined (no filter), cli.privileged, cli.seccomp_cold (the cache empty: compiled each run), cli.tty (-t)
- oci: aiocontain-oci under podman against runc, and its light subcommands against ``python -I -S -c pass``
  (bench/oci.py)
- detach: ``run -d`` then ``rm -f`` of a sleeping container, aiocontain's against podman's (bench/detach.py)

A case whose tool is not installed is skipped and the report says so (as root,
``nox -s bench`` installs them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import detach, embedded, external, machinecpu, oci, podman, report, throughput
from bench.runner import Case, run_interleaved

GROUPS = {
    "start": ["cli.none", "cli.none_own", "embedded.none", "embedded.back_to_back", "bwrap.none", "podman.none"],
    "net": ["cli.net", "cli.net_own", "embedded.net", "podman.net", "shell.net"],
    "overlay": ["cli.overlay", "cli.none", "podman.overlay", "podman.none"],
    "batch": ["batch.concurrent", "batch.sequential", "batch.shell", "batch.shell_sandboxed"],
    "throughput": ["throughput.default_mtu", "throughput.mtu1500"],
    "memory": ["memory"],
    "isolation": ["cli.none", "cli.unconfined", "cli.privileged", "cli.seccomp_cold", "cli.tty"],
    "oci": list(oci.CASES),
    "detach": list(detach.CASES),
    "pasta": [
        "cli.net",
        "cli.net4",
        "cli.pasta",
        "throughput.default_mtu",
        "throughput.pasta",
        "published.slirp4netns",
        "published.pasta",
    ],
}
TOOLS = {
    "bwrap.none": ("bwrap",),
    "podman.none": ("podman", "runc"),
    "podman.net": ("podman", "runc", "slirp4netns"),
    "podman.overlay": ("podman", "runc"),
    "shell.net": ("unshare", "slirp4netns"),
    "batch.shell": ("unshare", "slirp4netns"),
    "batch.shell_sandboxed": ("unshare", "slirp4netns"),
    "cli.pasta": ("pasta",),
    "throughput.pasta": ("pasta",),
    "published.pasta": ("pasta",),
}
DEFAULT_JSON = Path(".bench/results.json")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--rootfs", type=Path, default=Path(__file__).resolve().parent.parent / "rootfs_arm")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"where the results go (default {DEFAULT_JSON})"
    )
    parser.add_argument("--cases", default="all", help=f"comma-separated: all, {', '.join(GROUPS)}, or case names")
    parser.add_argument("--reps", type=int, default=11, help="repetitions of the single-container cases")
    parser.add_argument(
        "--quick-reps",
        type=int,
        default=41,
        help=f"repetitions (at least --reps) of the cases of a few ms ({', '.join(QUICK)}): their ranges need more",
    )
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded rounds first")
    parser.add_argument(
        "--settle",
        type=float,
        default=20.0,
        help="milliseconds, untimed, before each run: one case's background work stays out of the next's time",
    )
    parser.add_argument("--batch", type=int, default=50, help="containers in the batch cases")
    parser.add_argument(
        "--batch-reps", type=int, default=15, help="runs of each batch case (its rounds spread by +-0.25)"
    )
    parser.add_argument("--throughput-mb", type=int, default=128, help="MiB sent per throughput run")
    parser.add_argument("--throughput-reps", type=int, default=3)
    parser.add_argument("--sender", default="wget", choices=throughput.SENDERS, help="busybox tool that sends")
    parser.add_argument("--memory-count", type=int, default=10, help="containers running at once in the memory case")
    parser.add_argument("--memory-reps", type=int, default=3)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"], help="the embedded event loop")
    return parser.parse_args(argv)


def selected(spec: str) -> list[str]:
    names: list[str] = []
    for item in spec.split(","):
        item = item.strip()
        if item == "all":
            wanted = [name for group in GROUPS.values() for name in group]
        elif item in GROUPS:
            wanted = GROUPS[item]
        elif any(item in group for group in GROUPS.values()):
            wanted = [item]
        else:
            raise SystemExit(f"bench: unknown case {item!r}: use all, {', '.join(GROUPS)} or a case name")
        for name in wanted:  # a case in several groups (cli.none, cli.net) runs once a round
            if name not in names:
                names.append(name)
    return names


IN_WORKER = ("embedded", "batch")
# A few ms a run each: with --reps alone, the embedded target's range (1.10-1.75 in one run) said more about
# eleven samples than about the ratio. The extra rounds cost about two seconds.
QUICK = ("embedded.none", "embedded.back_to_back", "bwrap.none")


def build(name: str, args: argparse.Namespace, worker: embedded.Worker | None) -> Case:
    """The case of that name, with its repetitions from the options."""
    rootfs, group = args.rootfs, name.split(".")[0]
    reps = max(args.quick_reps, args.reps) if name in QUICK else args.reps
    if group in ("oci", "python"):
        return oci.build(name, rootfs, reps)
    if group == "detach":
        return detach.build(name, rootfs, reps)
    if name in ("cli.pasta", "cli.net4"):
        return external.cli_network(rootfs, name, reps)
    if name in external.ISOLATION:
        return external.cli_isolation(rootfs, name, reps)
    if group == "cli":
        network, own = name in ("cli.net", "cli.net_own"), name.endswith("_own")
        return external.cli(rootfs, network, reps, overlay=name == "cli.overlay", own=own)
    if group == "bwrap":
        return external.bwrap(rootfs, reps)
    if group == "podman":
        return external.podman_run(rootfs, name == "podman.net", reps, overlay=name == "podman.overlay")
    if name in ("batch.shell", "batch.shell_sandboxed"):
        floor = external.shell_batch(rootfs, args.batch, args.batch_reps, sandboxed=name == "batch.shell_sandboxed")
        return machinecpu.CpuPerContainer(floor, args.batch)
    if group == "shell":
        return external.shell_baseline(rootfs, reps)
    if name == "throughput.pasta":
        return throughput.ThroughputCase(
            name, rootfs, None, args.throughput_mb, args.sender, args.throughput_reps, net="pasta"
        )
    if group == "throughput":
        mtu = None if name == "throughput.default_mtu" else 1500
        return throughput.ThroughputCase(name, rootfs, mtu, args.throughput_mb, args.sender, args.throughput_reps)
    if group == "published":
        net = name.split(".")[1]
        return throughput.PublishedCase(name, rootfs, net, args.throughput_mb, args.throughput_reps)
    if group == "memory":
        return embedded.MemoryCase(rootfs, args.backend, args.memory_count, args.memory_reps)
    assert worker is not None and group in IN_WORKER
    if name == "embedded.back_to_back":
        return embedded.back_to_back(worker, reps)
    if group == "embedded":
        return embedded.start(worker, name == "embedded.net", reps)
    batch = embedded.batch(worker, args.batch, name == "batch.concurrent", args.batch_reps)
    return machinecpu.CpuPerContainer(batch, args.batch) if name == "batch.concurrent" else batch


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if not (args.rootfs / "bin" / "busybox").exists():
        raise SystemExit(f"bench: no rootfs at {args.rootfs}: run `aiocontain rootfs init {args.rootfs}` first")
    names = selected(args.cases)
    skipped = {}
    for name in list(names):
        absent = external.missing(*TOOLS.get(name, ()), *oci.tools(name), *detach.tools(name))
        why = podman.unusable() if name.startswith("podman.") else oci.unusable(name) or detach.unusable(name)
        if absent:
            why = f"{', '.join(absent)} not installed (as root, `nox -s bench` installs it)"
        if why:
            skipped[name] = why
            names.remove(name)
    host = report.machine()
    extra: dict[str, Any] = {"skipped": skipped}
    pause = podman.PauseProcess()
    run_servers = external.RunServers()
    if any(name.startswith("podman.") for name in names):
        try:
            extra["podman"] = podman.probe(args.rootfs)
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            extra["podman"] = {"probe_error": str(exc)}
    needs_worker = any(name.split(".")[0] in IN_WORKER for name in names)
    worker = embedded.Worker(args.rootfs, args.backend) if needs_worker else None
    try:
        cases = [build(name, args, worker) for name in names]
        results = run_interleaved(cases, warmup=args.warmup, settle=args.settle / 1000)
    finally:
        if worker is not None:
            worker.close()
        pause.stop()
        run_servers.stop()
    checks = report.ratios(args.batch)
    print(report.table(results, checks, skipped))
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    report.write_json(args.json, report.document(results, checks, settings, extra, host))
    print(f"\nbench: {results.seconds:.0f} s of measuring; results in {args.json}", file=sys.stderr)
    return 1 if results.errors else 0
