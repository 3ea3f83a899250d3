"""Settings layered as documented: flags > environment > DATA_DIR/config.toml > defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import LOOPBACK, cli_env, free_port, run_cli, start_node

pytestmark = pytest.mark.timeout(60)


def show(data_dir: Path, env: dict[str, str] | None = None) -> dict[str, dict[str, object]]:
    res = run_cli("config", "show", "--data-dir", str(data_dir), "--json", env=cli_env(env))
    assert res.returncode == 0, res.stderr
    out: dict[str, dict[str, object]] = json.loads(res.stdout)["settings"]
    return out


def test_environment_beats_the_file_which_beats_the_defaults(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "config.toml").write_text('# my node\nport = 7100\nmax_upload_rate = "5M"\n'
                                   'peers = ["10.0.0.1:7000"]\n')
    got = show(d, {"DHTSHARE_PORT": "7200"})
    assert got["port"] == {"value": 7200, "source": "environment $DHTSHARE_PORT"}
    assert got["max_upload_rate"] == {"value": 5 * 1024 * 1024, "source": f"{d}/config.toml:3"}
    assert got["peers"] == {"value": ["10.0.0.1:7000"], "source": f"{d}/config.toml:4"}
    assert got["host"] == {"value": "0.0.0.0", "source": "default"}


@pytest.mark.parametrize(("text", "words"), [
    ('port = "fast"\n', ["config.toml line 1", "port"]),
    ("colour = 1\n", ["config.toml line 1", "unknown key 'colour'"]),
    ("port = \n", ["config.toml", "line 1"]),
    ('max_download_rate = "lots"\n', ["config.toml line 1", "max_download_rate"]),
])
def test_a_bad_value_in_the_file_is_one_line_naming_file_key_and_line(
    tmp_path: Path, text: str, words: list[str]
) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "config.toml").write_text(text)
    for args in (["config", "show"], ["node", "--port", "0", "--host", LOOPBACK]):
        res = run_cli(*args, "--data-dir", str(d), timeout=30)
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "Traceback" not in res.stderr
        for w in words:
            assert w in res.stderr


def test_a_flag_beats_the_environment_and_the_file(tmp_path: Path) -> None:
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    name = "n"
    d = tmp_path / name
    d.mkdir()
    (d / "config.toml").write_text(f"port = {file_port}\nmetrics_host = \"127.0.0.1\"\n")
    # start_node passes --port itself: that is the flag.
    node = start_node(tmp_path, name, port=flag_port, env={"DHTSHARE_PORT": str(env_port)})
    try:
        assert node.port == flag_port
        status = run_cli("status", "--data-dir", str(d), "--json")
        assert json.loads(status.stdout)["port"] == flag_port
        # config show asks the running node, which knows its flags and their sources
        res = run_cli("config", "show", "--data-dir", str(d), "--json")
        shown = json.loads(res.stdout)
        assert shown["running"] is True
        assert shown["settings"]["port"] == {"value": flag_port, "source": "flag --port"}
        assert shown["settings"]["metrics_host"]["source"] == f"{d}/config.toml:2"
    finally:
        node.stop()
