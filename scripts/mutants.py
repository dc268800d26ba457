"""The mutation check (`nox -s mutants`): small breaking changes to the source, each run against its own tests.

Cosmic Ray makes the mutants (one operator at one place each) and applies them; this script chooses which to
run and with which tests. The mutants are applied to the *staged* copy of the package (the one the test user's
containers import, fork server and child side included), never to the checkout, and Cosmic Ray puts the
original back after each run. Each module is tested by the test files in TESTS only, stopping at the first
failure (`-x`): containers are slow, so running the whole suite per mutant would take days here.

A mutant counts as killed when its tests fail (or hang past the timeout) and the first failing test fails
again when run alone (the machine may be shared, and a leftovers check can fail for another user's doing),
survived otherwise. Mutants in annotations are never run: `from __future__ import annotations` leaves them
unevaluated, so they are equivalent by construction. The results stay in a Cosmic Ray session database, so
a later run (same sources) goes on where the last one stopped; each run prints the kill rate per module and
writes the survivors' diffs.
--survivors runs the survivors again after a fix, --whole with every host test instead of the module's.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import pwd
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from cosmic_ray.commands.init import init
from cosmic_ray.mutating import mutate_and_test
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkItem, WorkResult

ROOT = Path(__file__).resolve().parent.parent
SURVIVED = TestOutcome.SURVIVED

# Which tests (tests/test_NAME.py; a name with a slash is a path, a plugin's tests) can tell a change in each
# module, fastest first: `-x` stops at the first failure, so a killed mutant rarely pays for the rest. Keep this
# up to date when tests move: a module whose tests are missing here shows a low kill rate, never a wrong one.
# No test_faults: its random moments make it fail now and then on its own, which would count a mutant as killed.
TESTS: dict[str, list[str]] = {
    "cli.py": ["cli_parse", "bad_input", "cli_run", "terminal", "plugins", "seccomp", "events"],
    "spec.py": ["spec", "cli_parse", "bad_input", "embedding"],
    "stages/__init__.py": ["stages", "embedding", "plugins", "events"],
    "stages/cgroup.py": ["cgroup_hierarchy", "cgroup_limits", "embedding", "cli_run"],
    "stages/context.py": ["stages", "embedding", "plugins", "cli_run", "events"],
    "stages/idmap.py": ["stages", "embedding", "cli_run", "init", "events"],
    "stages/prepare.py": ["stages", "embedding", "plugins", "cli_run", "plugins/portforward/tests/test_portforward.py"],
    "stages/prestart.py": ["stages", "embedding", "plugins", "cli_run"],
    "stages/release.py": ["embedding", "plugins", "terminal", "cli_run", "bad_input", "helpers_killed", "runtimedir"],
    "stages/spawn.py": ["embedding", "plugins", "cli_run", "bad_input", "helpers_killed", "forkserver", "events"],
    "stages/tap.py": ["stages", "cli_run", "embedding"],
    "child/console.py": ["terminal"],
    "child/harden.py": ["hardening", "seccomp", "init", "exec"],
    "child/init.py": ["cli_run", "init", "session", "terminal", "embedding", "bad_input", "forkserver"],
    "child/netdev.py": ["cli_run", "embedding"],
    "child/mounts.py": ["child_rootfs", "inroot", "hardening", "volumes", "cli_run", "bad_input"],
    "child/inroot.py": ["inroot", "child_rootfs", "volumes", "oci_config"],
    "child/forkserver.py": ["forkserver", "helpers_killed", "cli_run", "concurrency"],
    "child/join.py": ["exec", "cli_exec", "oci_exec"],
    "channels.py": ["channels", "embedding", "cli_run", "bad_input", "helpers_killed", "terminal"],
    "processes.py": ["helper_fds", "helpers_killed", "pasta"],
    "network/slirp4netns.py": [
        "slirp4netns",
        "init",
        "cli_run",
        "embedding",
        "helpers_killed",
        "ipv6",
        "env_options",
        "bad_input",
    ],
    "network/pasta.py": ["pasta"],
    "seccomp/profile.py": ["seccomp", "hardening"],
    "security/capabilities.py": ["hardening", "seccomp", "users", "exec"],
    "terminal.py": ["terminal", "session", "cli_exec"],
    "forkserver/userns.py": ["subids", "users", "forkserver", "errors", "cli_run"],
    "stdfds.py": ["stdfds"],
    "runtimedir.py": ["runtimedir", "cli_run", "helpers_killed"],
    "cgroups/hierarchy.py": ["cgroup_hierarchy", "cgroup_limits", "doctor"],
    "mounts.py": ["mounts", "volumes", "cli_parse"],
    "execprocess.py": ["exec", "cli_exec"],
    "oci/config.py": ["oci_plan", "oci_config", "oci_bad_input"],
}


# --whole: every host test (tests/slow and tests/vm skip themselves here), to confirm the survivors.
WHOLE = ["tests", "plugins", "--ignore=tests/test_faults.py"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, required=True, help="the staged aiocontain package to mutate")
    parser.add_argument("--db", type=Path, required=True, help="the session database (kept between runs)")
    parser.add_argument("--pytest", required=True, help="the command that runs pytest as the test user")
    parser.add_argument("--user", required=True, help="the test user: its strays are ended after a timeout")
    parser.add_argument("--per-module", type=int, default=10, help="new mutants to run per module (default 10)")
    parser.add_argument("--budget", type=float, default=60, help="start no mutant after this many minutes")
    parser.add_argument("--module", action="append", default=[], help="only this module (e.g. child/init.py)")
    parser.add_argument("--seed", type=int, default=12, help="which random sample")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results")
    parser.add_argument("--survivors", action="store_true", help="run the survivors again instead (after a fix)")
    parser.add_argument(
        "--at",
        action="append",
        default=[],
        metavar="MODULE:LINE[:OP]",
        help="also the new mutants at this line (of this operator)",
    )
    parser.add_argument("--rerun", metavar="TEXT", help="run again the mutants whose test output has TEXT")
    parser.add_argument("--whole", action="store_true", help="with the whole host suite, not the module's tests")
    args = parser.parse_args()

    modules = args.module or list(TESTS)
    unknown = [module for module in [*modules, *(place.split(":")[0] for place in args.at)] if module not in TESTS]
    if unknown:
        parser.error(f"no tests mapped for {', '.join(unknown)}: add them to TESTS in {__file__}")
    for module in TESTS:
        if (ROOT / "aiocontain" / module).read_bytes() != (args.package / module).read_bytes():
            sys.exit(f"mutants: the staged {module} differs from the checkout's (a run that was killed?): restage")

    deadline = time.monotonic() + args.budget * 60
    uid = pwd.getpwnam(args.user).pw_uid
    with use_db(str(_fresh_db(args.db, args.package, args.fresh)), WorkDB.Mode.create) as db:
        if db.num_work_items == 0:
            init([args.package / module for module in TESTS], db, {})
            _skip_annotations(db, args.package)
        if args.survivors or args.rerun:
            chosen = _again(db, args.package, modules, args.rerun)
        else:
            chosen = _sample(db, args.package, modules, args.per_module, args.seed)
            _add_lines(chosen, db, args.package, args.at)
        commands = {module: _command(args.pytest, module, args.whole) for module, items in chosen.items() if items}
        baselines: dict[str, float] = {}  # by command: --whole runs one baseline for all
        for module, command in commands.items():
            baselines.setdefault(command, _baseline(command, "the whole suite" if args.whole else module))
        for module, item in _round_robin(chosen):
            if time.monotonic() > deadline:
                print(f"mutants: the {args.budget:g} min budget is spent; the rest waits for the next run")
                break
            result = mutate_and_test(item.mutations, commands[module], baselines[commands[module]])
            if result.output == "timeout":
                _end_strays(uid)
            elif result.test_outcome == TestOutcome.KILLED:
                result = _confirmed(result, item, args.pytest, baselines[commands[module]])
            db.set_result(item.job_id, result)
            spec = item.mutations[0]
            print(
                f"mutants: {(result.test_outcome or result.worker_outcome).value} {module}:{spec.start_pos[0]} "
                f"{spec.operator_name.split('/')[-1]}",
                flush=True,
            )
        _report(db, args.package, args.db.with_suffix(".survivors.txt"))


def _fresh_db(path: Path, package: Path, fresh: bool) -> Path:
    """The session database, cleared when asked or when the sources it was made from changed."""
    digest = hashlib.sha256()
    for module in sorted(TESTS):
        digest.update(module.encode() + (package / module).read_bytes())
    stamp = path.with_suffix(".sources")
    if fresh or not stamp.exists() or stamp.read_text() != digest.hexdigest():
        path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest.hexdigest())
    return path


def _relative(item: WorkItem, package: Path) -> str:
    return str(Path(item.mutations[0].module_path).relative_to(package))


def _skip_annotations(db: WorkDB, package: Path) -> None:
    """Mark mutants inside annotations skipped: never evaluated, they cannot change behaviour."""
    spans: dict[str, list[tuple[tuple[int, int], tuple[int, int]]]] = {}
    for module in TESTS:
        tree = ast.parse((package / module).read_text())
        nodes = [
            node
            for node in ast.walk(tree)
            if isinstance(node, (ast.arg, ast.AnnAssign, ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        functions = (ast.FunctionDef, ast.AsyncFunctionDef)
        annotations = [node.returns if isinstance(node, functions) else node.annotation for node in nodes]
        spans[module] = [
            ((a.lineno, a.col_offset), (a.end_lineno or a.lineno, a.end_col_offset or 0)) for a in annotations if a
        ]
    skipped = []
    for item in db.pending_work_items:
        start = tuple(item.mutations[0].start_pos)
        if any(low <= start < high for low, high in spans[_relative(item, package)]):
            skipped.append(item.job_id)
    db.set_multiple_results(skipped, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))


def _again(db: WorkDB, package: Path, modules: list[str], text: str | None) -> dict[str, list[WorkItem]]:
    """The survivors of these modules (or the mutants whose output has `text`): their new results replace the old."""
    found: dict[str, list[WorkItem]] = {module: [] for module in modules}
    for item, result in db.completed_work_items:
        module = _relative(item, package)
        if module not in found or result.worker_outcome != WorkerOutcome.NORMAL:
            continue
        if (text is not None and text in (result.output or "")) or (text is None and result.test_outcome == SURVIVED):
            found[module].append(item)
    return found


def _confirmed(result: WorkResult, item: WorkItem, pytest: str, timeout: float) -> WorkResult:
    """A kill stands when the first failing test fails again on its own: the machine is shared, and a test that
    compares the host's mount table or the user's processes can fail for another user's doing."""
    failed = re.search(r"^(?:FAILED|ERROR) (\S+?)(?: - |$)", result.output or "", re.M)
    if failed is None:
        return result  # no test failed: collection or start-up did, which no other user causes
    again = mutate_and_test(item.mutations, f"{pytest} -q {shlex.quote(failed[1])}", timeout)
    if again.test_outcome == TestOutcome.KILLED:
        return result
    note = f"unconfirmed: {failed[1]} passed when run again alone\n"
    return WorkResult(
        output=note + (result.output or ""),
        diff=result.diff,
        test_outcome=SURVIVED,
        worker_outcome=result.worker_outcome,
    )


def _sample(db: WorkDB, package: Path, modules: list[str], count: int, seed: int) -> dict[str, list[WorkItem]]:
    """Up to `count` pending mutants per module, the same ones for the same seed."""
    pending: dict[str, list[WorkItem]] = {module: [] for module in modules}
    for item in db.pending_work_items:
        module = _relative(item, package)
        if module in pending:
            pending[module].append(item)
    rng = random.Random(seed)
    return {module: rng.sample(sorted(items, key=_where), min(count, len(items))) for module, items in pending.items()}


def _add_lines(chosen: dict[str, list[WorkItem]], db: WorkDB, package: Path, places: list[str]) -> None:
    """Add the pending mutants at these places (MODULE:LINE or MODULE:LINE:OPERATOR, part of an operator's name
    such as BitOr_Mod): an earlier run's survivors, found again after the code moved."""
    wanted = [(*place.split(":")[:2], (place.split(":")[2:] or [""])[0]) for place in places]
    taken = {item.job_id for items in chosen.values() for item in items}
    for item in sorted(db.pending_work_items, key=_where):
        module, spec = _relative(item, package), item.mutations[0]
        place = (module, str(spec.start_pos[0]))
        if any(place == (m, line) and op in spec.operator_name for m, line, op in wanted) and item.job_id not in taken:
            chosen.setdefault(module, []).append(item)


def _where(item: WorkItem) -> tuple[str, int]:
    """A mutant's place among its module's, the same whenever the database is made (job ids are random)."""
    spec = item.mutations[0]
    return spec.operator_name, spec.occurrence


def _round_robin(chosen: dict[str, list[WorkItem]]) -> Iterator[tuple[str, WorkItem]]:
    """One mutant of each module in turn, so a spent budget still leaves every module sampled."""
    for index in range(max((len(items) for items in chosen.values()), default=0)):
        for module, items in chosen.items():
            if index < len(items):
                yield module, items[index]


def _command(pytest: str, module: str, whole: bool) -> str:
    tests = WHOLE if whole else [name if "/" in name else f"tests/test_{name}.py" for name in TESTS[module]]
    return f"{pytest} -x -q {' '.join(tests)}"


def _baseline(command: str, what: str) -> float:
    """Run the tests unmutated (they must pass, or every mutant would look killed); the mutants' timeout."""
    for _ in range(2):  # once more after a failure: one flaky test must not stop the whole check
        started = time.monotonic()
        proc = subprocess.run(shlex.split(command), capture_output=True, text=True)
        if proc.returncode == 0:
            took = time.monotonic() - started
            print(f"mutants: the tests of {what} pass unmutated in {took:.0f} s", flush=True)
            return 2 * took + 120  # a mutant that hangs one test costs pytest-timeout's 120 s at most
    sys.exit(f"mutants: the tests of {what} fail without a mutant:\n{proc.stdout[-3000:]}")


def _end_strays(uid: int) -> None:
    """After a timeout, end what the killed test run left of the test user's (its containers), by pid."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue


def _report(db: WorkDB, package: Path, survivors_file: Path) -> None:
    """Print the kill rate per module of all mutants run so far; write the survivors' diffs."""
    counts: dict[str, list[int]] = {module: [0, 0] for module in TESTS}  # killed, run
    survivors = []
    for item, result in db.completed_work_items:
        if result.worker_outcome != WorkerOutcome.NORMAL:
            continue  # skipped (annotations) or no mutation possible
        module = _relative(item, package)
        counts[module][1] += 1
        if result.test_outcome == TestOutcome.KILLED:
            counts[module][0] += 1
        else:
            spec = item.mutations[0]
            survivors.append(f"=== {module}:{spec.start_pos[0]} {spec.operator_name}\n{result.diff}\n")
    survivors_file.write_text("".join(sorted(survivors)))
    print(f"\n{'module':<24}{'killed':>8}{'run':>6}{'rate':>7}")
    for module, (killed, run) in counts.items():
        rate = f"{100 * killed / run:.0f}%" if run else "-"
        print(f"{module:<24}{killed:>8}{run:>6}{rate:>7}")
    killed, run = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
    print(f"{'all':<24}{killed:>8}{run:>6}{f'{100 * killed / run:.0f}%' if run else '-':>7}")
    print(f"survivors' diffs: {survivors_file}")


if __name__ == "__main__":
    main()
