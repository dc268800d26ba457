"""Resource limits: podman's units and semantics, and the cgroup v2 files they become."""

from __future__ import annotations

import os

import pytest

from aiocontain.cgroups import Limits, format_size, parse_size
from aiocontain.cgroups.limits import DEFAULT_PIDS
from aiocontain.errors import AiocontainError


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2m", 2 << 20),
        ("2M", 2 << 20),
        ("2mb", 2 << 20),
        ("2MiB", 2 << 20),
        ("512k", 512 << 10),
        ("1g", 1 << 30),
        ("1.5g", 3 << 29),
        ("4096", 4096),
        ("4096b", 4096),
        (" 64m ", 64 << 20),
        (1048576, 1 << 20),
    ],
)
def test_sizes_follow_podman(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "m", "2x", "2 mm", "-1m", "0", "0k", "1e6", "two", "99999999999999999999999p"])
def test_malformed_sizes_are_refused(text: str) -> None:
    with pytest.raises(AiocontainError) as caught:
        parse_size(text)
    assert "--memory" in caught.value.line() and "\n" not in caught.value.line()


@pytest.mark.parametrize(
    "size, shown", [(2 << 20, "2 MiB"), (512 << 10, "512 KiB"), (3 << 29, "1.5 GiB"), (100, "100 B")]
)
def test_format_size(size: int, shown: str) -> None:
    assert format_size(size) == shown


def test_memory_limit_lets_swap_as_much_again_as_podman_does() -> None:
    limits = Limits.parse(memory="2m")
    assert limits.files() == {"memory.max": str(2 << 20), "memory.swap.max": str(2 << 20)}
    assert limits.controllers() == ("memory",)
    assert limits.optional_files() == {"memory.swap.max"}  # implied, so skipped where swap is not accounted


def test_memory_swap_is_memory_plus_swap() -> None:
    assert Limits.parse(memory="2m", memory_swap="2m").files()["memory.swap.max"] == "0"
    assert Limits.parse(memory="2m", memory_swap="6m").files()["memory.swap.max"] == str(4 << 20)
    assert Limits.parse(memory="2m", memory_swap="-1").files()["memory.swap.max"] == "max"
    assert Limits.parse(memory="2m", memory_swap="4m").optional_files() == frozenset()


def test_pids_and_cpus() -> None:
    limits = Limits.parse(pids=10, cpus=0.5)
    assert limits.files() == {"pids.max": "10", "cpu.max": "50000 100000"}
    assert limits.controllers() == ("cpu", "pids")
    assert Limits.parse(cpus=0.01).files() == {"cpu.max": "1000 100000"}  # the kernel's smallest quota


@pytest.mark.parametrize("unlimited", [-1, 0])
def test_no_pids_limit_needs_no_cgroup(unlimited: int) -> None:
    # A new group's pids.max is "max" already: nothing to write, and nothing to refuse where no cgroup can be had.
    limits = Limits.parse(pids=unlimited)
    assert not limits and limits.files() == {} and limits.controllers() == ()
    assert limits.with_defaults(("cpu", "memory", "pids")).files() == {}


def test_pids_default_is_podmans_where_the_controller_is_there() -> None:
    assert DEFAULT_PIDS == 2048
    assert Limits.parse().with_defaults(("memory", "pids")).files() == {"pids.max": "2048"}
    assert Limits.parse(memory="2m").with_defaults(("memory", "pids")).files()["pids.max"] == "2048"
    assert Limits.parse(pids=10).with_defaults(("pids",)).files() == {"pids.max": "10"}
    assert Limits.parse().with_defaults(("cpu", "memory")).files() == {}  # no pids controller: no default
    assert not Limits.parse()  # the default is never a reason to need a cgroup


def test_no_limits_is_falsy() -> None:
    assert not Limits.parse()
    assert Limits.parse().files() == {} and Limits.parse().controllers() == ()
    assert Limits.parse(pids=1)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"memory_swap": "4m"}, "--memory-swap needs --memory"),
        ({"memory": "4m", "memory_swap": "2m"}, "less than --memory"),
        ({"pids": -2}, "invalid --pids-limit"),
        ({"pids": True}, "invalid --pids-limit"),
        ({"pids": 99999999999999999999}, "invalid --pids-limit"),
        ({"cpus": 0}, "invalid --cpus"),
        ({"cpus": (os.cpu_count() or 1) + 1}, "invalid --cpus"),
    ],
)
def test_bad_limits_are_one_line(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(AiocontainError) as caught:
        Limits.parse(**kwargs)  # type: ignore[arg-type]
    assert needle in caught.value.line()
