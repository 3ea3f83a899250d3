"""Every command explains itself: a description, an example, counted -v, completion."""

from __future__ import annotations

import pytest

from tests.conftest import cli_env, run_cli

pytestmark = pytest.mark.timeout(60)

COMMANDS = ["bootstrap", "node", "publish", "fetch", "pin", "unpin", "remove", "holders",
            "status", "ls", "peers", "limit", "demo"]
WIDE = cli_env({"COLUMNS": "200"})


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_a_description_and_an_example(command: str) -> None:
    result = run_cli(command, "--help", env=WIDE)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert "Example: dhtshare " + command in result.stdout


def test_verbose_shows_as_a_counted_flag() -> None:
    result = run_cli("node", "--help", env=WIDE)
    line = next(x for x in result.stdout.splitlines() if "--verbose" in x)
    assert "-v for info, -vv for debug" in line
    assert "INTEGER" not in line


def test_shell_completion_is_offered() -> None:
    result = run_cli("--show-completion", "bash", env=WIDE)
    assert result.returncode == 0, result.stderr
    assert "complete" in result.stdout
