"""ContainerSpec: validation of every field, and the defaults derived from the container id."""

from __future__ import annotations

import re
from typing import Any

import pytest

from aiocontain.errors import AiocontainError
from aiocontain.spec import DEFAULT_MTU, DEFAULT_PATH, ContainerSpec, NetworkMode


def spec(**kwargs: Any) -> ContainerSpec:
    kwargs.setdefault("command", ["true"])
    return ContainerSpec(**kwargs)


def refused(**kwargs: Any) -> AiocontainError:
    with pytest.raises(AiocontainError) as info:
        spec(**kwargs).validate()
    assert info.value.exit_code == 125
    assert "\n" not in str(info.value)
    assert info.value.fix  # every refusal says how to fix it
    return info.value


def test_defaults_are_valid() -> None:
    s = spec()
    s.validate()
    assert s.network is NetworkMode.SLIRP4NETNS
    assert s.mtu == DEFAULT_MTU
    assert s.workdir == "/"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mtu": 68},
        {"mtu": 65521},
        {"mtu": 1500},
        {"name": "a"},
        {"name": "web-1.prod_x", "hostname": "web"},
        {"name": "a" * 128, "hostname": "web"},
        {"hostname": "a" * 63},
        {"hostname": "a" * 32 + "." + "b" * 31},  # 64 characters in all
        {"hostname": "my-host.example.org"},
        {"hostname": "0host"},
        {"env": {"A": "1", "lower_case": "", "X.Y": "=value=with=equals"}},
        {"workdir": "/srv/app"},
        {"stop_timeout": 0},
        {"network_timeout": 0.001},
        {"stop_timeout": 3600.5},
        {"command": ["sh", "-c", ""]},
        {"tty_size": (0, 0)},  # the size a new pty has: both bounds are inclusive
        {"tty_size": (0xFFFF, 0xFFFF)},
    ],
)
def test_valid_values_are_accepted(kwargs: dict[str, Any]) -> None:
    spec(**kwargs).validate()


@pytest.mark.parametrize("value", ["slirp4netns", "pasta", "none", "host"])
def test_network_string_becomes_a_mode(value: str) -> None:
    s = spec(network=value)
    s.validate()
    assert isinstance(s.network, NetworkMode)
    assert s.network == NetworkMode(value)


@pytest.mark.parametrize("command", [[], [""], ()])
def test_empty_command_is_refused(command: Any) -> None:
    assert "no command given" in str(refused(command=command))


@pytest.mark.parametrize("mtu", [0, 67, 65522, 65536, -1])
def test_mtu_out_of_range_is_refused(mtu: int) -> None:
    err = refused(mtu=mtu)
    assert f"invalid MTU {mtu}" in str(err)
    assert "68" in str(err) and "65521" in str(err)


@pytest.mark.parametrize("name", ["", "-leading-dash", ".dot", "_under", "has space", "slash/name", "é", "a" * 129])
def test_bad_name_is_refused(name: str) -> None:
    # An empty name is treated as "no name" by effective_name, but validate sees name is not None.
    assert "invalid container name" in str(refused(name=name))


@pytest.mark.parametrize(
    "hostname",
    [
        "-start",
        "end-",
        "under_score",
        "two..dots",
        ".lead",
        "trail.",
        "sp ace",
        "a" * 64,  # one label longer than 63
        "a" * 32 + "." + "b" * 32,  # 65 characters: too long although every label is fine
        ".".join(["abcdefgh"] * 8),  # 71 characters
    ],
)
def test_bad_hostname_is_refused(hostname: str) -> None:
    assert "invalid hostname" in str(refused(hostname=hostname))


@pytest.mark.parametrize("key", ["A=B", "=", "", "NUL\0KEY"])
def test_bad_env_key_is_refused(key: str) -> None:
    assert "invalid environment variable name" in str(refused(env={"GOOD": "1", key: "v"}))


def test_a_nul_byte_in_an_environment_value_is_refused() -> None:
    assert "environment variable BAD holds a NUL byte" in str(refused(env={"GOOD": "1", "BAD": "a\0b"}))


@pytest.mark.parametrize(
    "command, which", [(["/bin/e\0cho"], "the command"), (["/bin/echo", "ok", "a\0b"], "argument 2 of the command")]
)
def test_a_nul_byte_in_the_command_is_refused(command: list[str], which: str) -> None:
    assert refused(command=command).message == f"{which} holds a NUL byte"


@pytest.mark.parametrize("workdir", ["", "relative", "./x", "~/x"])
def test_relative_workdir_is_refused(workdir: str) -> None:
    assert "invalid working directory" in str(refused(workdir=workdir))


def test_a_zero_network_timeout_is_refused() -> None:
    # Every networked run would fail with it, and the error would blame slirp4netns.
    assert "invalid network timeout 0" in str(refused(network_timeout=0))


@pytest.mark.parametrize("field", ["stop_timeout", "network_timeout"])
@pytest.mark.parametrize("value", [-1, -0.001, float("nan"), float("-inf")])
def test_negative_or_nan_timeout_is_refused(field: str, value: float) -> None:
    err = refused(**{field: value})
    assert field.replace("_", " ") in str(err)


@pytest.mark.parametrize("size", [(-1, 80), (24, -1), (0x10000, 80), (24, 0x10000)])
def test_terminal_size_out_of_range_is_refused(size: tuple[int, int]) -> None:
    assert "terminal size" in str(refused(tty_size=size))


@pytest.mark.parametrize("network", ["bridge", "", "SLIRP4NETNS", "pasta4"])
def test_unknown_network_is_refused(network: str) -> None:
    assert "invalid network mode" in str(refused(network=network))


def test_command_is_checked_first() -> None:
    # Several bad values: the first check wins, the one that names the most basic mistake.
    assert "no command given" in str(refused(command=[], mtu=1, workdir="x"))


# derived defaults


def test_id_is_random_hex_and_short_id_is_12_chars() -> None:
    a, b = spec(), spec()
    assert re.fullmatch(r"[0-9a-f]{64}", a.id)
    assert a.id != b.id
    assert a.short_id == a.id[:12]
    assert re.fullmatch(r"[0-9a-f]{12}", a.short_id)


def test_name_and_hostname_default_to_the_short_id() -> None:
    s = spec(id="0123456789abcdef" * 4)
    assert s.effective_name == "0123456789ab"
    assert s.effective_hostname == "0123456789ab"
    s.validate()


def test_hostname_defaults_to_the_name() -> None:
    s = spec(name="web", id="f" * 64)
    assert s.effective_name == "web"
    assert s.effective_hostname == "web"


def test_explicit_hostname_wins() -> None:
    s = spec(name="web", hostname="box", id="f" * 64)
    assert s.effective_name == "web"
    assert s.effective_hostname == "box"


@pytest.mark.parametrize(
    "name, hostname", [("my_container", "my-container"), ("a" * 65, "a" * 63), ("web-", "web"), ("x__y", "x-y")]
)
def test_valid_name_without_hostname_is_accepted(name: str, hostname: str) -> None:
    s = spec(name=name, id="f" * 64)
    s.validate()  # the default hostname is the name made a valid hostname, as podman does
    assert s.effective_hostname == hostname


def test_environment_defaults() -> None:
    s = spec(name="web")
    assert s.environment(None) == {
        "PATH": DEFAULT_PATH,
        "HOME": "/root",
        "HOSTNAME": "web",
        "container": "aiocontain",
        "TERM": "xterm",
    }
    assert s.environment("screen-256color")["TERM"] == "screen-256color"
    assert s.environment("")["TERM"] == "xterm"


def test_environment_hostname_follows_the_effective_hostname() -> None:
    assert spec(id="abcdef123456" + "0" * 52).environment(None)["HOSTNAME"] == "abcdef123456"
    assert spec(name="n", hostname="h").environment(None)["HOSTNAME"] == "h"


def test_environment_user_values_override_defaults() -> None:
    s = spec(env={"PATH": "/only", "TERM": "dumb", "HOME": "", "EXTRA": "x=y"})
    env = s.environment("xterm-256color")
    assert env["PATH"] == "/only"
    assert env["TERM"] == "dumb"
    assert env["HOME"] == ""
    assert env["EXTRA"] == "x=y"
    assert env["container"] == "aiocontain"


def test_environment_does_not_change_the_spec() -> None:
    user_env = {"A": "1"}
    s = spec(env=user_env)
    s.environment(None)["A"] = "changed"
    assert user_env == {"A": "1"}
    assert s.env == {"A": "1"}
