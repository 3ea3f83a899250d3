"""Logs as a user sets them: levels, JSON lines with stable keys, a rotated file, the activity log.

Two real node processes log JSON at debug to files; a publish on one and a
fetch on the other must leave one parseable object per line, with the
activity events (chunk requested, sent, verified; chunk maps; DHT lookups
and announces) naming their peer, and the info summary of the fetch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dhtshare.cli import logs
from tests.conftest import Cluster, fetch_json, make_file, publish, run_cli, wait_until

pytestmark = pytest.mark.timeout(120)


def lines_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_json_activity_log_of_a_publish_and_a_fetch(cluster: Cluster, tmp_path: Path) -> None:
    holder_log, fetcher_log = tmp_path / "holder.jsonl", tmp_path / "fetcher.jsonl"
    boot = cluster.add("boot", [])
    flags = ["--log-level", "debug", "--log-format", "json", "--log-file"]
    holder = cluster.add("holder", [boot.addr], extra=[*flags, str(holder_log)])
    fetcher = cluster.add("fetcher", [boot.addr], env={"DHTSHARE_LOG_LEVEL": "debug",
                                                       "DHTSHARE_LOG_FORMAT": "json",
                                                       "DHTSHARE_LOG_FILE": str(fetcher_log)})
    src = make_file(tmp_path / "f.bin", 3 * 256 * 1024, seed=5)
    h = publish(holder, src, "--replicas", "0", "--chunk-size", "256K")
    fetch_json(fetcher, h, tmp_path / "got.bin")
    assert wait_until(lambda: "chunk_verified" in fetcher_log.read_text(), 10)
    got = lines_of(fetcher_log)
    sent = lines_of(holder_log)
    for line in got + sent:
        assert {"ts", "level", "logger", "msg"} <= line.keys()
    events = {str(x.get("event")) for x in got}
    assert {"chunk_requested", "chunk_verified", "chunk_map_received", "dht_lookup",
            "fetch_started", "fetch_finished", "peer_connected"} <= events, events
    verified = [x for x in got if x.get("event") == "chunk_verified"]
    assert sorted(int(str(x["chunk"])) for x in verified) == [0, 1, 2]
    assert all(x.get("peer") == holder.addr for x in verified)
    assert all(x.get("manifest") == h for x in verified)
    served = {str(x.get("event")) for x in sent}
    assert {"chunk_sent", "chunk_map_sent", "dht_announce", "publish_finished"} <= served
    assert any(x.get("level") == "info" and x.get("event") == "fetch_finished" for x in got)


def test_a_bad_log_option_is_a_one_line_error(tmp_path: Path) -> None:
    for flags, word in ((["--log-format", "xml"], "log_format"),
                        (["--log-level", "chatty"], "log_level")):
        res = run_cli("bootstrap", "--port", "0", "--host", "127.0.0.1", "--data-dir",
                      str(tmp_path / "d"), *flags, timeout=30)
        assert res.returncode != 0
        assert word in res.stderr
        assert "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_the_log_file_is_rotated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    monkeypatch.setattr(logs, "ROTATE_BYTES", 2000)
    try:
        logs.configure(logging.INFO, "json", tmp_path / "logs" / "node.log")
        for i in range(200):
            logging.getLogger("dhtshare.test").info("line %d of a long run", i)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
            h.close()
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert "node.log" in files
    assert "node.log.1" in files
    assert len(files) <= logs.ROTATE_KEEP + 1
    assert all(json.loads(line)["logger"] == "dhtshare.test"
               for line in (tmp_path / "logs" / "node.log").read_text().splitlines())
