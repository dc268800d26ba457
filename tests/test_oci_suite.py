"""scripts/oci_suite.py's reading of the conformance suite's TAP: what counts as a program passing.

The suite's programs report in several ways (results with YAML blocks that quote the inner runtimetest's own
TAP; no TAP at all; a `1..0` plan with only a diagnostic block), so the rule is subtle: these pin it down on
streams shaped like the ones the programs print.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "oci_suite.py"


@pytest.fixture(scope="module")
def suite() -> ModuleType:
    spec = importlib.util.spec_from_file_location("oci_suite", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["oci_suite"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# As state.t prints it: a result, a reference line, then the result's own YAML block (with an "error" that is
# the runtime's expected failure, not the program's).
STATE = """TAP version 13
ok 1 - state MUST generate an error if it is not provided the ID of a container
Refer to: https://example.invalid/runtime.md#query-state
  ---
  {
    "error": "exit status 1"
  }
  ...
ok 2 - state MUST return the state of a container as specified in the State section
1..2
"""
# As linux_masked_paths prints it before its abort: one result whose YAML block quotes runtimetest's whole TAP
# (a JSON string, so its lines are escaped), then no plan.
ABORTED = """TAP version 13
ok 1
  ---
  {
    "stdout": "TAP version 13\\nnot ok 1 - has expected hostname\\n1..1\\n"
  }
  ...
"""
# As the hook programs print a failure: no result, a diagnostic block with an error, `1..0`.
HOOK_ERROR = """TAP version 13
  ---
  {
    "error": "Hooks MUST be called in the listed order\\nRefer to: https://example.invalid"
  }
  ...
1..0
"""


def test_clean_stream_passes(suite):
    result = suite.parse_tap("state", STATE, 0, "")
    assert (result.passed, result.verdict, result.cell()) == (True, "pass", "pass 2/0/0")
    assert result.diagnostics == []


def test_failed_check_or_exit_status_fails(suite):
    failed = suite.parse_tap("state", STATE.replace("ok 2", "not ok 2"), 0, "")
    assert (failed.passed, failed.verdict, failed.cell()) == (False, "fail", "fail 1/1/0")
    exited = suite.parse_tap("state", STATE, 1, "")
    assert (exited.passed, exited.verdict) == (False, "exit 1")


def test_quoted_inner_tap_does_not_count_and_an_abort_fails(suite):
    result = suite.parse_tap("linux_masked_paths", ABORTED, 1, "operation not permitted")
    assert (result.ok, result.failed, result.planned) == (1, 0, None)
    assert (result.passed, result.verdict) == (False, "no plan")


def test_short_stream_fails(suite):
    result = suite.parse_tap("kill", STATE.replace("1..2", "1..3"), 0, "")
    assert not result.passed


def test_only_skips_fail_but_skips_beside_checks_pass(suite):
    skipped = "TAP version 13\nok 1 # SKIP linux.sysctl not set\n1..1\n"
    assert not suite.parse_tap("x", skipped, 0, "").passed
    mixed = "TAP version 13\nok 1 - has expected hostname\nok 2 # SKIP linux.sysctl not set\n1..2\n"
    result = suite.parse_tap("x", mixed, 0, "")
    assert (result.passed, result.cell()) == (True, "pass 1/0/1")


def test_no_tap_passes_on_exit_status_alone(suite):
    """process_capabilities_fail: silent and 0 when the runtime refused the config, 1 when it ran it."""
    refused = suite.parse_tap("process_capabilities_fail", "", 0, "failed to create the container")
    assert (refused.passed, refused.verdict) == (True, "pass (exit 0)")
    accepted = suite.parse_tap("process_capabilities_fail", "", 1, "Any value which cannot be mapped ...")
    assert not accepted.passed


def test_hook_programs_pass_by_silence_and_fail_by_their_diagnostic(suite):
    silent = suite.parse_tap("poststop", "TAP version 13\n1..0\n", 0, "")
    assert (silent.passed, silent.verdict) == (True, "pass (silent)")
    errored = suite.parse_tap("hooks", HOOK_ERROR, 0, "")
    assert (errored.passed, errored.verdict) == (False, "error")
    assert errored.diagnostics == ["Hooks MUST be called in the listed order"]
    skip_all = suite.parse_tap("x", "TAP version 13\n1..0 # SKIP linux-specific\n", 0, "")
    assert (skip_all.passed, skip_all.verdict) == (False, "skip")


def test_leftover_processes_fail_a_clean_stream(suite):
    result = suite.parse_tap("state", STATE, 0, "")
    result.leftovers = ["4242: sleep 300"]
    assert (result.passed, result.verdict, result.cell()) == (False, "leftovers", "leftovers 2/0/0 +1 left")


def test_subordinate_range_of_at_least_65536(suite, tmp_path):
    subuid = tmp_path / "subuid"
    subuid.write_text("other:100000:65536\nme:200000:1000\nme:300000:65536\n")
    assert suite.subordinate_start("me", str(subuid)) == 300000
    with pytest.raises(SystemExit, match="no range of 65536"):
        suite.subordinate_start("nobody", str(subuid))


def test_required_programs_exist_in_the_suite(suite):
    """Every REQUIRED name is one of the 58 programs of runtime-tools 260e151 (a typo would never be run)."""
    programs = set(PROGRAMS.split())
    assert len(programs) == 58
    assert set(suite.REQUIRED) <= programs


PROGRAMS = """
config_updates_without_affect create default delete delete_only_create_resources delete_resources hooks
hooks_stdin hostname kill kill_no_effect killsig linux_cgroups_blkio linux_cgroups_cpus linux_cgroups_devices
linux_cgroups_hugetlb linux_cgroups_memory linux_cgroups_network linux_cgroups_pids linux_cgroups_relative_blkio
linux_cgroups_relative_cpus linux_cgroups_relative_devices linux_cgroups_relative_hugetlb
linux_cgroups_relative_memory linux_cgroups_relative_network linux_cgroups_relative_pids linux_devices
linux_masked_paths linux_mount_label linux_ns_itype linux_ns_nopath linux_ns_path linux_ns_path_type
linux_process_apparmor_profile linux_readonly_paths linux_rootfs_propagation linux_seccomp linux_sysctl
linux_uid_mappings misc_props mounts pidfile poststart poststart_fail poststop poststop_fail prestart
prestart_fail process process_capabilities process_capabilities_fail process_oom_score_adj process_rlimits
process_rlimits_fail process_user root_readonly_true start state
"""
