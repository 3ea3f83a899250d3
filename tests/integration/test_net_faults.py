"""Network faults across hosts: delay and loss, partitions, a dead bootstrap, skewed clocks.

Each scenario runs real ``dhtshare`` nodes, one per network namespace (see
:mod:`tests.integration.netlab`), drives them with the CLI as a user would,
injects a fault and asserts on what the user sees: the fetch completes and
verifies, in bounded time, from the peers that can serve.  Each prints what
it measured on lines starting ``NETFAULT:`` (``pytest -s`` shows them; a junit
report keeps them with ``-o junit_logging=system-out``).

Needs root, ``ip netns``, and per scenario ``/dev/net/tun`` (delay through the
user-space switch), ``nft`` (loss rules) or ``faketime`` (a skewed clock); the
last two are installed with apt-get once per session when missing.  A
scenario the machine cannot run is skipped saying why.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_file, sha256_file, wait_until
from tests.integration.netlab import Host, Lab, unavailable

MIB = 1024 * 1024
#: ``peer_stall_timeout`` in dhtshare/config.py: a peer silent this long is dropped.
PEER_STALL_TIMEOUT = 10.0
APT_TIMEOUT = 300.0

pytestmark = pytest.mark.slow

_tools_tried: list[bool] = []


def _ensure_tools() -> None:
    """Install nftables and faketime if missing (root with apt-get only; once per session).

    A lock file keeps two test processes from running apt-get at once; a
    failure only means the scenarios that need the tool are skipped.
    """
    if _tools_tried:
        return
    _tools_tried.append(True)
    missing = [pkg for tool, pkg in (("nft", "nftables"), ("faketime", "faketime"))
               if shutil.which(tool) is None]
    if not missing or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    with open("/tmp/dhtshare-netfaults-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [p for p in missing if shutil.which("nft" if p == "nftables" else p) is None]
        if not missing:
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            res = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends",
                                  *missing], capture_output=True, text=True,
                                 timeout=APT_TIMEOUT, env=env, check=False)
            if res.returncode != 0:  # the package lists may be missing: fetch them once
                subprocess.run(["apt-get", "update"], capture_output=True,
                               timeout=APT_TIMEOUT, env=env, check=False)
                subprocess.run(["apt-get", "install", "-y", "--no-install-recommends",
                                *missing], capture_output=True, timeout=APT_TIMEOUT,
                               env=env, check=False)


def _need(tun: bool = False, nft: bool = False, faketime: bool = False) -> None:
    """Skip (saying why) unless this machine can run the scenario."""
    if nft or faketime:
        _ensure_tools()
    reason = unavailable(tun=tun, nft=nft, faketime=faketime)
    if reason is not None:
        print(f"NETFAULT: skipped: {reason}")
        pytest.skip(reason)


def report(scenario: str, **numbers: Any) -> None:
    """One ``NETFAULT:`` line of measured numbers (stdout: ``-s``, or junit's system-out)."""
    print(f"NETFAULT: {scenario} " + " ".join(f"{k}={v}" for k, v in numbers.items()),
          flush=True)


def start_network(lab: Lab, n: int | None = None) -> list[Host]:
    """Bootstrap on the first host, the others joined through it; returns the started hosts."""
    hosts = lab.hosts[: n or len(lab.hosts)]
    hosts[0].start()
    for h in hosts[1:]:
        h.start([hosts[0]])
    return hosts


def holdings(hosts: list[Host], h: str) -> dict[str, int]:
    """Chunks of ``h`` each host's node holds now (from its own ``ls``)."""
    out: dict[str, int] = {}
    for host in hosts:
        files = host.cli_json("ls")["files"]
        out[host.name] = sum(f["chunks_held"] for f in files if f["hash"] == h)
    return out


def least_holding(hosts: list[Host], held: dict[str, int], but: tuple[Host, ...] = ()) -> Host:
    """The host holding the fewest chunks of a file (replicas may spread over every host)."""
    return min((x for x in hosts if x not in but), key=lambda x: held[x.name])


@contextlib.contextmanager
def background_fetch(host: Host, h: str, out: Path) -> Iterator[subprocess.Popen[str]]:
    """``dhtshare fetch --json`` through ``host``'s node, running while the block injects a fault.

    The block waits for it (``communicate``); if the block fails first, the fetch is killed.
    """
    cmd = [sys.executable, "-m", "dhtshare", "fetch", h, "-o", str(out), "--json",
           "--data-dir", str(host.data_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def received_from(fetcher: Host, peer: Host) -> int:
    """Bytes ``fetcher``'s node has received so far on its open links to ``peer``."""
    links = fetcher.cli_json("peers")["peers"]
    return sum(p["bytes_received"] for p in links if p["address"].split(":")[0] == peer.ip)


def fetch_timed(host: Host, h: str, out: Path, timeout: float) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    result = host.fetch(h, out, timeout=timeout)
    return result, time.monotonic() - t0


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    return tmp_path / "lab"


@contextlib.contextmanager
def lab_of(root: Path, n: int, mode: str) -> Iterator[Lab]:
    """A lab that is torn down whatever happens; its logs are printed when the test fails."""
    lab = Lab(root, n, mode)
    with lab:
        try:
            yield lab
        except BaseException:
            for h in lab.hosts:
                if h.node is not None:
                    print(f"--- log of {h}:\n{h.log()[-2500:]}")
            print(f"--- switch: {lab.switch_stats()}")
            raise


# -- 1 ---------------------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_64mib_fetch_with_delay_and_loss_on_every_link(lab_dir: Path, tmp_path: Path) -> None:
    """64 MiB crosses 20 ms (each way) links that lose 1 % of packets, from several holders.

    The delay is the switch's (every host pair, each way); the loss is an
    nftables rule inside every host (1 % of the TCP and UDP packets it
    receives).  The file is published on four hosts with two replicas
    before the links are impaired (the fetch is what is measured), so all
    four hold chunks; the fifth host, joined after, fetches it from them,
    and the SHA-256 matches.
    """
    _need(tun=True, nft=True)
    with lab_of(lab_dir, 5, "switch") as lab:
        hosts = start_network(lab, 4)
        src = make_file(tmp_path / "big.bin", 64 * MIB, seed=11)
        t0 = time.monotonic()
        h = hosts[1].publish(src, "--replicas", "2", timeout=60)
        t_publish = time.monotonic() - t0
        held = holdings(hosts, h)
        # The fifth host joins after the publish: it holds nothing, all comes over the links.
        fetcher = lab.hosts[4].start([hosts[0]])
        hosts.append(fetcher)
        lab.impair({"default": {"delay_ms": 20}})
        for x in hosts:
            x.set_loss(1.0)
        rtt = fetcher.rtt_ms(hosts[1])
        assert rtt >= 39, rtt  # 20 ms each way
        result, wall = fetch_timed(fetcher, h, tmp_path / "got.bin", timeout=90)
        assert sha256_file(tmp_path / "got.bin") == sha256_file(src)
        elapsed = float(result["elapsed"])
        used = {a: b for a, b in result["peers"].items() if b}
        seen, dropped = (sum(c) for c in zip(*(x.loss_counters() for x in hosts), strict=True))
        frames = lab.switch_counters()
        report("delay_loss_64mib", publish_s=round(t_publish, 1), holders=json.dumps(held),
               fetcher=fetcher.name, fetch_s=round(elapsed, 2), wall_s=round(wall, 2),
               mib_per_s=round(64 / elapsed, 2), peers=len(used),
               peer_mib=json.dumps({a: round(b / MIB, 1) for a, b in sorted(used.items())}),
               packets_in=seen, packets_dropped=dropped,
               loss_pct=round(100 * dropped / max(seen, 1), 2),
               rtt_ms=round(rtt, 1), switch_frames_delayed=frames["delayed"])
        assert 0.5 < 100 * dropped / max(seen, 1) < 2  # the loss really was there
        assert frames["delayed"] > 64 * MIB // 1500  # and the delay: every frame of it
        assert result["bytes_downloaded"] >= 64 * MIB  # (endgame duplicates count too)
        assert len(used) >= 3, result  # several holders served it
        assert all(a.split(":")[0].startswith("10.81.0.") for a in used)


# -- 2 ---------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_holder_partitioned_mid_fetch(lab_dir: Path, tmp_path: Path) -> None:
    """A holder cut off mid-fetch costs at most the stall timeout; healed, it serves again.

    Fetchers are held to 3 MiB/s (``dhtshare limit``) so a fetch lasts long
    enough to cut the publisher's link while it sends.  The same fetch
    without the fault, on another host, is the baseline.
    """
    _need()
    with lab_of(lab_dir, 5, "bridge") as lab:
        hosts = start_network(lab, 3)
        size = 24 * MIB
        src = make_file(tmp_path / "part.bin", size, seed=22)
        publisher = hosts[1]
        h = publisher.publish(src, "--replicas", "1", timeout=60)
        held = holdings(hosts, h)
        # Two more hosts join after the publish: they hold nothing.
        base_host, victim_fetcher = (x.start([hosts[0]]) for x in lab.hosts[3:5])
        hosts += [base_host, victim_fetcher]
        for x in (base_host, victim_fetcher):
            x.cli("limit", "--download", "3M")
        base, _ = fetch_timed(base_host, h, tmp_path / "base.bin", timeout=60)
        assert sha256_file(tmp_path / "base.bin") == sha256_file(src)

        out = tmp_path / "cut.bin"
        t0 = time.monotonic()
        with background_fetch(victim_fetcher, h, out) as proc:
            assert wait_until(lambda: received_from(victim_fetcher, publisher) > 2 * MIB, 20,
                              0.2), "the publisher never sent to the fetcher"
            t_cut = time.monotonic() - t0
            publisher.link_down()
            stdout, stderr = proc.communicate(timeout=90)
        wall = time.monotonic() - t0
        assert proc.returncode == 0, stderr
        result = json.loads(stdout.strip().splitlines()[-1])
        assert sha256_file(out) == sha256_file(src)
        from_victim = result["peers"].get(publisher.addr, 0)
        report("partition_mid_fetch", holders=json.dumps(held),
               baseline_s=round(float(base["elapsed"]), 2),
               cut_at_s=round(t_cut, 2), fetch_s=round(float(result["elapsed"]), 2),
               wall_s=round(wall, 2), stall_timeout_s=PEER_STALL_TIMEOUT,
               mib_from_cut_holder=round(from_victim / MIB, 1),
               peers=json.dumps({a: round(b / MIB, 1) for a, b in result["peers"].items()}))
        assert from_victim > 0, result  # it was serving when it was cut off
        assert float(result["elapsed"]) <= float(base["elapsed"]) + PEER_STALL_TIMEOUT + 5

        # Healed: its records are found again and it serves again.
        t_heal = time.monotonic()
        publisher.link_up()
        others = [x for x in hosts if x is not publisher]

        def listed() -> bool:
            found = others[-1].holders(h)["holders"]
            return any(x["address"] == publisher.addr and x["chunks_held"] > 0 for x in found)

        assert wait_until(listed, 30, 1.0), "the healed holder is not listed again"
        t_listed = time.monotonic() - t_heal
        only = make_file(tmp_path / "only.bin", 2 * MIB + 5, seed=23)
        h2 = publisher.publish(only, "--replicas", "0", timeout=60)
        got, t_only = fetch_timed(base_host, h2, tmp_path / "only-got.bin", timeout=60)
        assert sha256_file(tmp_path / "only-got.bin") == sha256_file(only)
        report("partition_healed", listed_again_s=round(t_listed, 2),
               sole_holder_fetch_s=round(t_only, 2), peers=json.dumps(got["peers"]))
        assert set(got["peers"]) == {publisher.addr}


@pytest.mark.timeout(120)
def test_sole_holder_cut_briefly_mid_fetch(lab_dir: Path, tmp_path: Path) -> None:
    """The only holder's link goes down mid-fetch and comes back: the fetch resumes.

    The fetch drops the silent peer after the stall timeout; it must then
    dial it again once a lookup names it, not give up at once because no
    chunk came for as long as the stall lasted.
    """
    _need()
    with lab_of(lab_dir, 3, "bridge") as lab:
        hosts = start_network(lab)
        holder, fetcher = hosts[1], hosts[2]
        size = 16 * MIB
        src = make_file(tmp_path / "sole.bin", size, seed=24)
        h = holder.publish(src, "--replicas", "0", timeout=60)
        fetcher.cli("limit", "--download", "2M")
        out = tmp_path / "sole-got.bin"
        t0 = time.monotonic()
        with background_fetch(fetcher, h, out) as proc:
            assert wait_until(lambda: received_from(fetcher, holder) > 3 * MIB, 20, 0.2)
            holder.link_down()
            t_cut = time.monotonic() - t0
            # Down past the stall timeout: the fetch drops the peer in the meantime.
            assert wait_until(lambda: "sent nothing" in fetcher.log(), 30, 0.5), fetcher.log()
            holder.link_up()
            t_up = time.monotonic() - t0
            stdout, stderr = proc.communicate(timeout=90)
        wall = time.monotonic() - t0
        assert proc.returncode == 0, f"{stderr}\n{fetcher.log()[-3000:]}"
        result = json.loads(stdout.strip().splitlines()[-1])
        assert sha256_file(out) == sha256_file(src)
        report("sole_holder_cut_briefly", cut_at_s=round(t_cut, 2), up_at_s=round(t_up, 2),
               fetch_s=round(float(result["elapsed"]), 2), wall_s=round(wall, 2),
               peers=json.dumps(result["peers"]))
        assert set(result["peers"]) == {holder.addr}


# -- 3 ---------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_bootstrap_gone_for_good(lab_dir: Path, tmp_path: Path) -> None:
    """With the bootstrap's link down for good the others publish and fetch, and a sixth joins."""
    _need()
    with lab_of(lab_dir, 5, "bridge") as lab:
        hosts = start_network(lab)
        boot, rest = hosts[0], hosts[1:]
        old = make_file(tmp_path / "old.bin", 4 * MIB + 1, seed=31)
        h_old = rest[0].publish(old, "--replicas", "1", timeout=60)
        boot.link_down()
        t0 = time.monotonic()
        new = make_file(tmp_path / "new.bin", 8 * MIB + 7, seed=32)
        h_new = rest[1].publish(new, "--replicas", "2", timeout=90)
        t_publish = time.monotonic() - t0
        held_new, held_old = holdings(rest, h_new), holdings(rest, h_old)
        a = least_holding(rest, held_new)
        r_new, t_new = fetch_timed(a, h_new, tmp_path / "new-got.bin", timeout=90)
        assert sha256_file(tmp_path / "new-got.bin") == sha256_file(new)
        b = least_holding(rest, held_old, but=(a,))
        r_old, t_old = fetch_timed(b, h_old, tmp_path / "old-got.bin", timeout=90)
        assert sha256_file(tmp_path / "old-got.bin") == sha256_file(old)
        # A sixth host joins; like a user keeping the old bootstrap in its list, it names
        # the dead one first: the join must not hang on it.
        sixth = lab.add_host()
        t0 = time.monotonic()
        sixth.start([boot, rest[1]])
        t_join = time.monotonic() - t0  # it says it listens once it has joined
        assert t_join < 10, t_join
        # Nodes restarted with only the dead bootstrap named rejoin through the contacts
        # they saved: one stopped politely, one that crashed (killed, nothing saved on exit).
        only = make_file(tmp_path / "after-restart.bin", 2 * MIB, seed=34)
        h_only = sixth.publish(only, "--replicas", "0", timeout=60)
        restarts: dict[str, float] = {}
        for restarted, how in ((rest[2], "stopped"), (rest[3], "crashed")):
            t0 = time.monotonic()
            restarted.stop() if how == "stopped" else restarted.crash()
            restarted.start([boot])
            r_re, _ = fetch_timed(restarted, h_only, tmp_path / f"{how}-got.bin", timeout=60)
            assert sha256_file(tmp_path / f"{how}-got.bin") == sha256_file(only)
            assert sixth.addr in r_re["peers"], r_re
            assert boot.addr not in r_re["peers"], r_re
            restarts[how] = round(time.monotonic() - t0, 2)
        r6, t6 = fetch_timed(sixth, h_new, tmp_path / "six-got.bin", timeout=90)
        assert sha256_file(tmp_path / "six-got.bin") == sha256_file(new)
        mine = make_file(tmp_path / "sixth.bin", 3 * MIB, seed=33)
        h6 = sixth.publish(mine, "--replicas", "1", timeout=60)
        held6 = holdings(rest, h6)
        c = least_holding(rest, held6)
        r6b, t6b = fetch_timed(c, h6, tmp_path / "sixth-got.bin", timeout=60)
        assert sha256_file(tmp_path / "sixth-got.bin") == sha256_file(mine)
        report("bootstrap_gone", held_new=json.dumps(held_new), held_old=json.dumps(held_old),
               mib_downloaded=",".join(str(round(r["bytes_downloaded"] / MIB, 1))
                                       for r in (r_new, r_old, r6, r6b)),
               fetchers=f"{a.name},{b.name},{sixth.name},{c.name}",
               publish_s=round(t_publish, 2), fetch_new_s=round(t_new, 2),
               fetch_old_s=round(t_old, 2), join6_s=round(t_join, 2),
               fetch6_s=round(t6, 2), publish6_then_fetch_s=round(t6b, 2),
               restart_with_dead_bootstrap_then_fetch_s=json.dumps(restarts))
        for r in (r_new, r_old, r6, r6b):
            assert boot.addr not in r["peers"], r
            assert r["bytes_downloaded"] > 0, r  # over the network, not only a local copy


# -- 4 ---------------------------------------------------------------------------------
SKEWS = {"+10m": 600.0, "-10m": -600.0}


def _faketime(offset: str) -> list[str]:
    """The wrapper that runs a program with its wall clock ``offset`` off (monotonic untouched)."""
    return ["faketime", "-m", "--exclude-monotonic", "-f", offset]


def _log_clock_offset(host: Host) -> float:
    """How far the node's wall clock is from ours: its newest JSON log line's stamp vs now."""
    assert host.node is not None
    now = time.time()
    stamps = []
    for line in host.node.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            ts = json.loads(line)["ts"]
            stamps.append(datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")
                          .replace(tzinfo=datetime.UTC).timestamp())
    assert stamps, f"no JSON log line from {host}: {host.log()}"
    return max(stamps) - now


@pytest.mark.timeout(120)
def test_nodes_with_skewed_clocks(lab_dir: Path, tmp_path: Path) -> None:
    """Nodes 10 minutes ahead and behind publish records the others find, and fetch."""
    _need(faketime=True)
    with lab_of(lab_dir, 5, "bridge") as lab:
        hosts = lab.hosts
        ahead, behind, plain = hosts[2], hosts[3], hosts[4]
        for host, skew in ((ahead, "+10m"), (behind, "-10m")):
            probe = host.run(*_faketime(skew), sys.executable, "-c",
                             "import time; print(time.time(), time.monotonic())")
            wall, mono = (float(x) for x in probe.stdout.split())
            seen = wall - time.time()
            report("clock_probe", host=host.name, skew=skew, seen_offset_s=round(seen, 1),
                   monotonic_offset_s=round(mono - time.monotonic(), 1))
            assert abs(seen - SKEWS[skew]) < 30, probe.stdout
        hosts[0].start()
        hosts[1].start([hosts[0]])
        for host, skew in ((ahead, "+10m"), (behind, "-10m")):
            host.start([hosts[0]], wrapper=_faketime(skew), extra=["--log-format", "json"])
            # The node's own clock is off: its log stamps (time.time()) say so.
            offset = _log_clock_offset(host)
            report("clock_in_node", host=host.name, skew=skew, log_offset_s=round(offset, 1))
            assert abs(offset - SKEWS[skew]) < 30, host.log()
        plain.start([hosts[0]])

        common = make_file(tmp_path / "common.bin", 4 * MIB, seed=41)
        h_common = hosts[1].publish(common, "--replicas", "1", timeout=60)
        for host, skew in ((ahead, "+10m"), (behind, "-10m")):
            mine = make_file(tmp_path / f"skew{skew}.bin", 3 * MIB + 3, seed=42)
            t0 = time.monotonic()
            h_mine = host.publish(mine, "--replicas", "0", timeout=60)
            t_pub = time.monotonic() - t0
            # Only this node holds it: a fetch elsewhere needs its signed record.
            found = plain.holders(h_mine)["holders"]
            assert [x["address"] for x in found] == [host.addr], found
            got, t_got = fetch_timed(plain, h_mine, tmp_path / f"got{skew}.bin", timeout=60)
            assert sha256_file(tmp_path / f"got{skew}.bin") == sha256_file(mine)
            assert set(got["peers"]) == {host.addr}
            mine_fetch, t_mine = fetch_timed(host, h_common, tmp_path / f"common{skew}.bin",
                                             timeout=60)
            assert sha256_file(tmp_path / f"common{skew}.bin") == sha256_file(common)
            report("skewed_clock", host=host.name, skew=skew, publish_s=round(t_pub, 2),
                   others_fetch_its_file_s=round(t_got, 2), it_fetches_s=round(t_mine, 2),
                   its_peers=len(mine_fetch["peers"]))


# -- 5 ---------------------------------------------------------------------------------
def activity_events(host: Host, manifest: str) -> list[dict[str, Any]]:
    """The activity-log events (``--log-format json``, debug) of ``host`` about ``manifest``."""
    assert host.node is not None
    out = []
    for line in host.node.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict) and "event" in obj and obj.get("manifest") == manifest:
                out.append(obj)
    return out


@pytest.mark.timeout(120)
def test_lossy_link_peer_is_routed_around(lab_dir: Path, tmp_path: Path) -> None:
    """A holder behind a link losing 30 % of frames is slow; the fetch takes its chunks elsewhere.

    Every link has 10 ms of delay each way; the loss is the switch's, on every
    frame to or from that host (about half of all round trips fail).  How slow
    that peer is alone is measured on a file only it holds; the main fetch,
    from it and three others, must finish far sooner than that peer alone
    would, with most chunks from the others.
    """
    _need(tun=True)
    with lab_of(lab_dir, 5, "switch") as lab:
        hosts = start_network(lab, 4)
        slow = hosts[1]
        size = 48 * MIB
        src = make_file(tmp_path / "spread.bin", size, seed=51)
        h = slow.publish(src, "--replicas", "2", timeout=90)
        alone = make_file(tmp_path / "alone.bin", 1 * MIB, seed=52)
        h_alone = slow.publish(alone, "--replicas", "0", "--chunk-size", "128K", timeout=30)
        held = holdings(hosts, h)
        # Joins after: it holds nothing.  Its activity log tells whom it asked for what.
        fetcher = lab.hosts[4].start([hosts[0]], extra=["--log-level", "debug",
                                                        "--log-format", "json"])
        lab.impair({"default": {"delay_ms": 10}, "ports": {str(slow.index): {"loss": 0.3}}})

        # Alone, over that link: a user retries when the one provider's handshake times out
        # (at 30 % loss each way a TCP connect alone may need several SYNs).
        r_alone: dict[str, Any] = {}
        for attempt in range(1, 4):
            res = fetcher.cli("fetch", h_alone, "-o", str(tmp_path / "alone-got.bin"),
                              "--force", "--json", timeout=120, check=False)
            if res.returncode == 0:
                r_alone = json.loads(res.stdout.strip().splitlines()[-1])
                break
            report("lossy_peer_alone_retry", attempt=attempt, error=res.stderr.strip()[-160:])
        assert r_alone, "the lossy peer never served its own file"
        assert sha256_file(tmp_path / "alone-got.bin") == sha256_file(alone)
        slow_rate = MIB / float(r_alone["elapsed"])
        slow_alone_s = size / slow_rate

        before = len(activity_events(fetcher, h))
        result, wall = fetch_timed(fetcher, h, tmp_path / "got.bin", timeout=120)
        assert sha256_file(tmp_path / "got.bin") == sha256_file(src)
        events = activity_events(fetcher, h)[before:]
        asked = sum(1 for e in events
                    if e["event"] == "chunk_requested" and e.get("peer") == slow.addr)
        elapsed = float(result["elapsed"])
        peers = result["peers"]
        total = sum(peers.values())
        from_slow = peers.get(slow.addr, 0)
        report("lossy_peer", holders=json.dumps(held), slow_peer=slow.name, alone_tries=attempt,
               slow_alone_kib_per_s=round(slow_rate / 1024, 1),
               slow_alone_est_s=round(slow_alone_s, 1), fetch_s=round(elapsed, 2),
               wall_s=round(wall, 2), slow_share=round(from_slow / max(total, 1), 3),
               unreachable=",".join(result["unreachable"]) or "-",
               chunks_asked_of_slow=asked, chunks_from_slow=from_slow // MIB,
               chunks_total=total // MIB,
               peers=json.dumps({a: round(b / MIB, 1) for a, b in sorted(peers.items())}),
               switch=json.dumps(lab.switch_counters()))
        assert total >= size  # every chunk came over the network (endgame duplicates count)
        assert elapsed < slow_alone_s / 4, (elapsed, slow_alone_s)
        assert from_slow <= 0.25 * size, peers  # most chunks came from the others
        assert len([b for a, b in peers.items() if a != slow.addr and b]) >= 2
