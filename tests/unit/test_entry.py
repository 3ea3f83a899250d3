"""The quick path's argument grammar: it takes only what it fully understands."""

from __future__ import annotations

import pytest

from dhtshare.cli.entry import _FETCH, _STATUS, _parse, quick

H = "ab" * 32


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([H], ({}, [H])),
        ([H, "-o", "out.bin", "--json"], ({"output": "out.bin", "json": True}, [H])),
        (["--data-dir=/d", H, "--force"], ({"data_dir": "/d", "force": True}, [H])),
        (["--output", "-weird-name", H], ({"output": "-weird-name"}, [H])),
    ],
)
def test_fetch_lines_it_understands(argv: list[str], expected: object) -> None:
    assert _parse(argv, _FETCH) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no hash
        [H, H],  # two hashes
        [H, "--peer", "h:1"],  # a one-shot fetch: the full CLI's job
        [H, "-v"],
        [H, "--help"],
        [H, "-oout.bin"],  # click's glued short option: leave it to click
        [H, "--json", "--json"],  # repeated
        [H, "-o", "a", "--output", "b"],  # repeated under two names
        [H, "-o"],  # missing value
        [H, "--data-dir="],  # empty value
        [H, "--json=yes"],  # a flag with a value
        [H, "--"],
    ],
)
def test_fetch_lines_left_to_the_full_cli(argv: list[str]) -> None:
    assert _parse(argv, _FETCH) is None


def test_status_grammar() -> None:
    assert _parse(["--json"], _STATUS) == ({"json": True}, [])
    assert _parse(["extra"], _STATUS) is None


@pytest.mark.parametrize(
    "argv",
    [[], ["--help"], ["publish", "f"], ["fetch", "not-a-hash"], ["node", "--peer", "x:1"]],
)
def test_other_commands_and_bad_input_go_to_the_full_cli(argv: list[str]) -> None:
    assert quick(argv) is None


def test_no_node_on_the_data_dir_goes_to_the_full_cli(tmp_path: object) -> None:
    assert quick(["status", "--data-dir", str(tmp_path)]) is None
    assert quick(["fetch", H, "--data-dir", str(tmp_path)]) is None
