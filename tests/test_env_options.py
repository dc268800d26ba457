"""--env-file, --ulimit, --dns, --dns-search, --dns-option, --add-host, host.containers.internal, --label and
--annotation: each with a real container, next to podman's behaviour where podman is installed."""

from __future__ import annotations

import json
import os
import resource
import shutil
from pathlib import Path

import pytest

from aiocontain import envfile
from aiocontain.errors import AiocontainError
from tests.conftest import leftovers

container = pytest.mark.container


@pytest.fixture
def podman_or_none(request: pytest.FixtureRequest):
    if shutil.which("podman") is None:
        return None
    return request.getfixturevalue("podman")


# --env-file's format, as podman reads it


def test_env_file_format(tmp_path: Path) -> None:
    path = tmp_path / "env"
    path.write_text(
        "# a comment\n"
        "\n"
        "   \n"
        "  # an indented comment\n"
        "PLAIN=value\n"
        "SPACES= kept as is \n"
        'QUOTES="not removed"\n'
        "EQUALS=a=b=c\n"
        "EMPTY=\n"
        "  INDENTED=yes\n"
        "PASSED\n"
        "UNSET_ON_HOST\n"
        "DOLLAR=$HOME\n"
        "PRE*\n"
    )
    host = {"PASSED": "from host", "PREFIX_A": "1", "PREFIX_B": "2", "OTHER": "x"}
    assert envfile.read(path, host) == {
        "PLAIN": "value",
        "SPACES": " kept as is ",
        "QUOTES": '"not removed"',
        "EQUALS": "a=b=c",
        "EMPTY": "",
        "INDENTED": "yes",
        "PASSED": "from host",
        "DOLLAR": "$HOME",  # never expanded
        "PREFIX_A": "1",
        "PREFIX_B": "2",
    }


@pytest.mark.parametrize("line", ["=value", "A B=1", "=", "BAD KEY"])
def test_env_file_bad_line_names_file_and_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "env"
    path.write_text(f"GOOD=1\n{line}\n")
    with pytest.raises(AiocontainError, match=f"{path} line 2"):
        envfile.read(path, {})


def test_env_file_missing_or_binary(tmp_path: Path) -> None:
    with pytest.raises(AiocontainError, match="cannot read --env-file"):
        envfile.read(tmp_path / "missing", {})
    (tmp_path / "bin").write_bytes(b"A=\xff\n")
    with pytest.raises(AiocontainError, match="not UTF-8"):
        envfile.read(tmp_path / "bin", {})


@container
def test_env_file_in_a_container(cli, podman_or_none, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("# settings\nA=from-first\nB=from-first\nC=spaces kept \nPASSED\n")
    second.write_text("B=from-second\n")
    options = ["--env-file", str(first), "--env-file", str(second), "-e", "A=from-e"]
    script = 'printf "%s|" "$A" "$B" "$C" "$PASSED"'
    env = {**os.environ, "PASSED": "host value"}
    result = cli("--net", "none", *options, "/bin/sh", "-c", script, env=env)
    assert (result.code, result.stdout) == (0, "from-e|from-second|spaces kept |host value|"), result.stderr
    if podman_or_none is not None:  # the podman fixture's environment has no PASSED: it passes nothing on
        theirs = podman_or_none("--network", "none", *options, "/bin/sh", "-c", script)
        assert theirs.stdout == result.stdout.replace("host value", ""), theirs.stderr


@container
def test_env_file_bad_is_one_line(cli, tmp_path: Path) -> None:
    before = leftovers()
    result = cli("--net", "none", "--env-file", str(tmp_path / "missing"), "/bin/true")
    assert result.code == 125 and result.stderr.count("\n") == 1 and "--env-file" in result.stderr
    assert leftovers() == before


# --ulimit


@container
def test_ulimit_inside(cli, podman_or_none) -> None:
    options = ["--ulimit", "nofile=100:200", "--ulimit", "nproc=50", "--ulimit", "core=0"]
    script = "ulimit -n; ulimit -Hn; ulimit -u; ulimit -Hu; ulimit -c"
    result = cli("--net", "none", *options, "/bin/sh", "-c", script)
    assert (result.code, result.stdout.split()) == (0, ["100", "200", "50", "50", "0"]), result.stderr
    if podman_or_none is not None:
        theirs = podman_or_none("--network", "none", *options, "/bin/sh", "-c", script)
        assert theirs.stdout == result.stdout, theirs.stderr
    # control: without --ulimit the container has the runtime's own limits (nofile raised to its hard limit)
    plain = cli("--net", "none", "/bin/sh", "-c", "ulimit -n")
    assert plain.stdout.split() == [str(resource.getrlimit(resource.RLIMIT_NOFILE)[1])]


@container
def test_ulimit_applies_to_a_non_root_user(cli) -> None:
    from aiocontain.forkserver import userns

    if userns.planned().mode != "subordinate":
        pytest.skip("the user has no subordinate ids")
    result = cli("--net", "none", "--user", "1000", "--ulimit", "nofile=64", "/bin/sh", "-c", "id -u; ulimit -n")
    assert (result.code, result.stdout.split()) == (0, ["1000", "64"]), result.stderr


def _hard(name: int) -> int:
    return resource.getrlimit(name)[1]


@container
@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("nofile=20:10", "above the hard limit"),
        ("bogus=1", "unknown limit 'bogus'"),
        ("nofile", "use NAME=SOFT[:HARD]"),
        ("nofile=abc", "is not a number"),
        ("nofile=-2", "is not a number"),
        ("nofile=1:-1", "only root of the host may raise"),  # unlimited is above this user's hard limit
    ],
)
def test_bad_ulimit_is_one_line(cli, podman_or_none, option: str, message: str) -> None:
    before = leftovers()
    result = cli("--net", "none", "--ulimit", option, "/bin/true")
    assert result.code == 125, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert leftovers() == before
    if podman_or_none is not None and option != "nofile=-2":
        # podman refuses these too: a malformed one with 125, one above the hard limit only at start (126)
        assert podman_or_none("--network", "none", "--ulimit", option, "/bin/true").code in (125, 126)


@container
def test_ulimit_above_the_users_hard_limit(cli) -> None:
    hard = _hard(resource.RLIMIT_NOFILE)
    result = cli("--net", "none", "--ulimit", f"nofile={hard}:{hard + 1}", "/bin/true")
    assert result.code == 125 and f"nofile {hard}" in result.stderr, result.stderr
    ok = cli("--net", "none", "--ulimit", f"nofile={hard}:{hard}", "/bin/sh", "-c", "ulimit -Hn")  # control
    assert (ok.code, ok.stdout) == (0, f"{hard}\n"), ok.stderr


# --dns, --dns-search, --dns-option, --add-host: the container's own resolv.conf and hosts


@container
def test_dns_options_in_resolv_conf(cli, podman_or_none) -> None:
    options = ["--dns", "192.0.2.1", "--dns", "2001:db8::53", "--dns-search", "example.test", "--dns-option", "ndots:2"]
    result = cli("--net", "slirp4netns", *options, "/bin/cat", "/etc/resolv.conf")
    assert result.code == 0, result.stderr
    assert result.stdout == "search example.test\nnameserver 192.0.2.1\nnameserver 2001:db8::53\noptions ndots:2\n"
    if podman_or_none is not None:
        theirs = podman_or_none(*options, "/bin/cat", "/etc/resolv.conf")  # slirp4netns, podman's rootless default
        assert theirs.stdout == result.stdout, theirs.stderr
    # control: without them, slirp4netns's own resolver
    assert cli("/bin/cat", "/etc/resolv.conf").stdout == "nameserver 10.0.2.3\n"


@container
def test_add_host_in_hosts(cli, podman_or_none, rootfs) -> None:
    options = ["--add-host", "db:192.0.2.7", "--add-host", "v6:2001:db8::1", "--add-host", "a;b:192.0.2.8"]
    result = cli("--net", "none", "--hostname", "box", *options, "/bin/cat", "/etc/hosts")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["192.0.2.7\tdb", "2001:db8::1\tv6", "192.0.2.8\ta b"]
    assert "127.0.0.1\tlocalhost" in lines and lines[-1] == "127.0.1.1\tbox"
    assert "host.containers.internal" not in result.stdout  # no host loopback allowed, no name for the host
    if podman_or_none is not None:
        theirs = podman_or_none("--network", "none", *options, "/bin/cat", "/etc/hosts")
        assert theirs.stdout.splitlines()[:2] == lines[:2], theirs.stderr  # "a;b" is podman 5's syntax
    assert (rootfs / "etc" / "hosts").read_text().count("192.0.2.7") == 0  # the rootfs's own file is untouched


@container
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--dns", "notanip"), "invalid --dns"),
        (("--dns-search", "bad domain"), "invalid --dns-search"),
        (("--dns-option", "a b"), "invalid --dns-option"),
        (("--add-host", "bad"), "invalid --add-host"),
        (("--add-host", "name:notanip"), "invalid --add-host"),
        (("--net", "none", "--dns", "192.0.2.1"), "--net none"),
        (("--label", "=v"), "invalid --label"),
        (("--annotation", "=v"), "invalid --annotation"),
    ],
)
def test_bad_network_names_are_one_line(cli, podman_or_none, options: tuple[str, ...], message: str) -> None:
    before = leftovers()
    result = cli(*options, "/bin/true")
    assert result.code == 125, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert leftovers() == before
    if podman_or_none is not None and options[0] in ("--dns", "--add-host", "--net"):
        podman_options = ["--network" if o == "--net" else o for o in options]
        assert podman_or_none(*podman_options, "/bin/true").code == 125


# host.containers.internal


@container
def test_host_containers_internal_reaches_host_loopback_only_when_allowed(cli, loopback_server) -> None:
    port, token = loopback_server
    script = f"grep host.containers.internal /etc/hosts; nc -w 5 host.containers.internal {port} </dev/null"
    allowed = cli("--allow-host-loopback", "/bin/sh", "-c", script)
    assert allowed.code == 0, allowed.stderr
    assert allowed.stdout.splitlines() == ["10.0.2.2\thost.containers.internal", token.decode()]
    # without --allow-host-loopback: no name, and the address it would have named does not reach the host
    denied = cli("/bin/sh", "-c", f"grep -c host.containers.internal /etc/hosts; nc -w 5 10.0.2.2 {port} </dev/null")
    assert denied.stdout.splitlines()[0] == "0"
    assert token.decode() not in denied.stdout


# --label, --annotation


@container
def test_labels_and_annotations_in_container_created(cli) -> None:
    options = ["--label", "app=web", "-l", "tier", "--annotation", "org.example/owner=me=you"]
    result = cli("--net", "none", "--log-format", "json", "--log-level", "info", *options, "/bin/true")
    assert result.code == 0, result.stderr
    created = [event for event in result.events() if event["event"] == "container.created"]
    assert len(created) == 1
    assert created[0]["labels"] == {"app": "web", "tier": ""}
    assert created[0]["annotations"] == {"org.example/owner": "me=you"}


@container
def test_labels_in_the_events_file(cli, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    result = cli("--net", "none", "--events", str(events), "--label", "k=v", "/bin/true")
    assert result.code == 0, result.stderr
    first = json.loads(events.read_text().splitlines()[0])
    assert first["event"] == "container.created" and first["labels"] == {"k": "v"}


# the files' layout, without a container


def test_resolv_conf_layout() -> None:
    from aiocontain import etcfiles

    driver = "nameserver 10.0.2.3\n"
    assert etcfiles.resolv_conf(driver, [], [], []) == driver
    assert etcfiles.resolv_conf(driver, [], ["a.test", "b.test"], []) == "search a.test b.test\n" + driver
    assert etcfiles.resolv_conf(driver, [], ["."], ["ndots:1"]) == driver + "options ndots:1\n"  # "." is none
    assert etcfiles.resolv_conf(driver, ["192.0.2.1"], [], []) == "nameserver 192.0.2.1\n"


def test_add_host_forms() -> None:
    from aiocontain import etcfiles

    assert etcfiles.parse_add_host("db:192.0.2.1") == ("db", "192.0.2.1")
    assert etcfiles.parse_add_host("v6:[2001:db8::1]") == ("v6", "2001:db8::1")
    assert etcfiles.parse_add_host("a;b:192.0.2.1") == ("a b", "192.0.2.1")
    for bad in ("db", "db:", ":192.0.2.1", "d b:192.0.2.1", "db:300.1.1.1"):
        with pytest.raises(AiocontainError):
            etcfiles.parse_add_host(bad)


def test_ulimit_values() -> None:
    from aiocontain import ulimits

    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    assert ulimits.parse(["core=0", "core=0:0"]) == [(resource.RLIMIT_CORE, 0, 0)]  # the last one wins
    if hard == resource.RLIM_INFINITY:
        assert ulimits.parse(["core=-1"]) == [(resource.RLIMIT_CORE, resource.RLIM_INFINITY, resource.RLIM_INFINITY)]
