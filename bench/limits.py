"""Raw limits of this machine, as context for the transfer benchmark.

    python bench/limits.py [--tcp-bytes 2G] [--write-bytes 512M] [--workdir /tmp]

* loopback TCP: a plain Python sender process (``sendall`` of 4 MiB buffers)
  and receiver (``recv_into`` a 4 MiB buffer) on 127.0.0.1;
* SHA-256 (and SHA-1, what a v1 torrent uses) on one core, 1 MiB blocks, and
  SHA-256 on every core (hashlib releases the GIL);
* writing a new file of ``--write-bytes`` in 1 MiB blocks (page-cache
  allocation), then ``fsync`` of it, separately.

``bench/transfer.py`` imports :func:`measure` and puts the result in its report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MIB = 1 << 20
GIB = 1 << 30


def parse_size(text: str, allow_zero: bool = False) -> int:
    """``64M``, ``1G``, ``512K`` or plain bytes (binary units)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": MIB, "G": GIB, "T": 1 << 40}.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in "KMGT" else t
    value = int(float(num) * mult)
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"bad size {text!r}")
    return value


def _mbps(nbytes: int, seconds: float) -> float:
    return round(nbytes / max(seconds, 1e-9) / 1e6, 1)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on ``host`` (a node uses one port for both)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no port is free for both TCP and UDP on {host}")


# -- loopback TCP -------------------------------------------------------------------------
def _tcp_send(port: int, total: int, bufsize: int) -> None:
    """Child side: connect to 127.0.0.1:port and send ``total`` bytes."""
    buf = os.urandom(bufsize)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        left = total
        while left > 0:
            n = min(left, bufsize)
            s.sendall(memoryview(buf)[:n])
            left -= n
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # wait for the receiver to close: all bytes were read


def tcp_loopback(total: int = 2 * GIB, bufsize: int = 4 * MIB, timeout: float = 120.0) -> dict[
        str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(30)
        port = srv.getsockname()[1]
        child = subprocess.Popen(
            [sys.executable, __file__, "--tcp-send", str(port), str(total), str(bufsize)],
            start_new_session=True,
        )
        try:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(timeout)
                buf = bytearray(bufsize)
                view = memoryview(buf)
                got = 0
                t0 = time.perf_counter()
                deadline = time.monotonic() + timeout
                while got < total:
                    n = conn.recv_into(view)
                    if n == 0:
                        break
                    got += n
                    if time.monotonic() > deadline:
                        raise TimeoutError("loopback TCP measurement took too long")
                secs = time.perf_counter() - t0
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, 9)
                child.wait()
    if got != total:
        raise RuntimeError(f"loopback TCP: received {got} of {total} bytes")
    return {"bytes": total, "buffer": bufsize, "seconds": round(secs, 4),
            "mb_per_s": _mbps(total, secs)}


# -- hashing ------------------------------------------------------------------------------
def _hash_loop(name: str, data: bytes, total: int, block: int) -> None:
    view = memoryview(data)
    n = len(data) // block
    for i in range(total // block):
        j = (i % n) * block
        hashlib.new(name, view[j:j + block]).digest()


def hash_rate(name: str = "sha256", total: int = GIB, block: int = MIB,
              threads: int = 1) -> dict[str, Any]:
    """Bytes/s of ``name`` over ``total`` bytes of random data (from a 64 MiB pool)."""
    data = os.urandom(64 * MIB)
    per = total // threads
    workers = [threading.Thread(target=_hash_loop, args=(name, data, per, block))
               for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    secs = time.perf_counter() - t0
    done = per * threads
    return {"algo": name, "threads": threads, "block": block, "bytes": done,
            "seconds": round(secs, 4), "mb_per_s": _mbps(done, secs)}


def hash_file(path: Path, name: str = "sha256", block: int = MIB) -> tuple[str, float]:
    """Hex digest of a file and the seconds it took (one thread, ``block`` reads)."""
    h = hashlib.new(name)
    buf = bytearray(block)
    view = memoryview(buf)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest(), time.perf_counter() - t0


# -- new-file writes ----------------------------------------------------------------------
def file_write(directory: Path, total: int = 512 * MIB, block: int = MIB) -> dict[str, Any]:
    data = os.urandom(block)
    fd, name = tempfile.mkstemp(prefix="limits-write-", dir=directory)
    try:
        t0 = time.perf_counter()
        left = total
        while left > 0:
            n = min(left, block)
            os.write(fd, memoryview(data)[:n])
            left -= n
        t1 = time.perf_counter()
        os.fsync(fd)
        t2 = time.perf_counter()
    finally:
        os.close(fd)
        os.unlink(name)
    return {"bytes": total, "block": block, "write_seconds": round(t1 - t0, 4),
            "mb_per_s": _mbps(total, t1 - t0), "fsync_seconds": round(t2 - t1, 4),
            "mb_per_s_with_fsync": _mbps(total, t2 - t0), "dir": str(directory)}


# -- all of it ----------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "mem_bytes": mem,
            "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_at_start": list(os.getloadavg())}


def measure(workdir: Path, tcp_bytes: int = 2 * GIB, write_bytes: int = 512 * MIB,
            log: Any = print) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": machine()}
    log(f"limits: loopback TCP, {tcp_bytes / MIB:.0f} MiB in 4 MiB buffers ...")
    out["tcp_loopback"] = tcp_loopback(tcp_bytes)
    log("limits: SHA-256 / SHA-1, 1 MiB blocks ...")
    out["sha256_1core"] = hash_rate("sha256")
    out["sha1_1core"] = hash_rate("sha1")
    cpus = os.cpu_count() or 1
    out["sha256_all_cores"] = hash_rate("sha256", total=GIB * cpus, threads=cpus)
    log(f"limits: new-file write of {write_bytes / MIB:.0f} MiB ...")
    out["file_write"] = file_write(workdir, write_bytes)
    return out


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--tcp-send":
        _tcp_send(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tcp-bytes", type=parse_size, default=2 * GIB)
    ap.add_argument("--write-bytes", type=parse_size, default=512 * MIB)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    res = measure(args.workdir, args.tcp_bytes, args.write_bytes,
                  log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
