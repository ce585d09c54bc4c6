"""netem benchmark: what the WAN emulator costs, how fast it moves bytes, how exact its delay is.

Three processes, as in real use: the emulator (``python -m netem``), an upstream process
(uvloop echo and discard servers) and this client. Reported:

- overhead of a toxic-free proxy on a 1 KiB request/response round trip: p50/p99 of the
  round trip through the proxy minus the same percentile measured directly (target: p50 under
  0.3 ms);
- throughput through one toxic-free proxy: bulk MB/s (one connection, into a discard server
  that answers the byte count at EOF; target at least 200 MB/s) and small messages/s (64-byte
  messages, each its own send, echoed back, counted as they return);
- accuracy of a ``latency`` toxic of 50 ms (jitter 0 and 5) at 1, 100 and 1,000 messages/s,
  open loop: each 16-byte message carries its send time; the error is the echoed round trip
  minus 50 ms (it includes the proxy's and the echo's own cost); target: p99 error under 2 ms
  at 100 messages/s with jitter 0. With jitter 5 the delay is uniform in 45..55 ms, so the
  figures are the distribution of the added delay. A control runs the same paced round trips
  through the toxic-free proxy: what the machine, the client and the echo add by themselves.

    .venv/bin/python bench/netem.py [--quick] [--json-out PATH]

``--quick`` takes about 30 s; the full run about 2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `netem` importable
    sys.path.insert(0, str(ROOT))

from bench.results import Metric, Result, emit, percentiles  # noqa: E402

OVERHEAD_P50_TARGET_MS = 0.3
BULK_TARGET_MB_S = 200.0
ACCURACY_P99_TARGET_MS = 2.0
LATENCY_MS = 50
_RECORD = struct.Struct("!QQ")  # sequence number, send time (perf_counter_ns)


# -- the upstream process --------------------------------------------------------------


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _Discard(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.count = 0

    def data_received(self, data: bytes) -> None:
        self.count += len(data)

    def eof_received(self) -> bool:
        self.transport.write(struct.pack("!Q", self.count))
        self.transport.close()
        return True


async def _upstreams() -> None:
    loop = asyncio.get_running_loop()
    echo = await loop.create_server(_Echo, "127.0.0.1", 0)
    sink = await loop.create_server(_Discard, "127.0.0.1", 0)
    ports = (echo.sockets[0].getsockname()[1], sink.sockets[0].getsockname()[1])
    print(json.dumps({"echo": ports[0], "discard": ports[1]}), flush=True)
    await asyncio.Event().wait()


def upstream_main() -> None:
    import uvloop

    uvloop.run(_upstreams())


# -- helpers ---------------------------------------------------------------------------


class Api:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def proxy(
        self, name: str, upstream: int, toxics: Sequence[dict[str, Any]] = ()
    ) -> tuple[str, int]:
        body = self.call(
            "POST",
            "/proxies",
            {"name": name, "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{upstream}"},
        )
        for toxic in toxics:
            self.call("POST", f"/proxies/{name}/toxics", toxic)
        host, port = body["listen"].rsplit(":", 1)
        return host, int(port)


def dial(addr: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(addr, timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        data = sock.recv(size - len(buf))
        if not data:
            raise ConnectionError("closed early")
        buf += data
    return bytes(buf)


def round_trips_ms(addr: tuple[str, int], count: int, size: int = 1024) -> list[float]:
    payload = os.urandom(size)
    out = []
    with dial(addr) as sock:
        for _ in range(50):  # warm up
            sock.sendall(payload)
            recv_exactly(sock, size)
        for _ in range(count):
            start = time.perf_counter_ns()
            sock.sendall(payload)
            recv_exactly(sock, size)
            out.append((time.perf_counter_ns() - start) / 1e6)
    return out


def bulk_mb_s(addr: tuple[str, int], total_bytes: int) -> float:
    block = os.urandom(256 * 1024)
    with dial(addr) as sock:
        start = time.perf_counter()
        sent = 0
        while sent < total_bytes:
            sock.sendall(block)
            sent += len(block)
        sock.shutdown(socket.SHUT_WR)
        (count,) = struct.unpack("!Q", recv_exactly(sock, 8))
        elapsed = time.perf_counter() - start
    assert count == sent, (count, sent)
    return sent / elapsed / 1e6


def small_msgs_per_s(addr: tuple[str, int], count: int, size: int = 64) -> float:
    message = os.urandom(size)
    with dial(addr) as sock:
        start = time.perf_counter()

        def send() -> None:
            for _ in range(count):
                sock.sendall(message)

        sender = threading.Thread(target=send)
        sender.start()
        recv_exactly(sock, count * size)
        elapsed = time.perf_counter() - start
        sender.join()
    return count / elapsed


def paced_delays_ms(addr: tuple[str, int], rate_per_s: float, duration_s: float) -> list[float]:
    """Open loop: ``rate_per_s`` 16-byte messages for ``duration_s``; each one's round trip."""
    count = max(1, int(rate_per_s * duration_s))
    delays: list[float] = []
    with dial(addr) as sock:

        def send() -> None:
            start = time.perf_counter()
            for seq in range(count):
                due = start + seq / rate_per_s
                while (rest := due - time.perf_counter()) > 0:
                    time.sleep(rest)
                sock.sendall(_RECORD.pack(seq, time.perf_counter_ns()))

        sender = threading.Thread(target=send)
        sender.start()
        for _ in range(count):
            record = recv_exactly(sock, _RECORD.size)
            now = time.perf_counter_ns()
            _, sent_ns = _RECORD.unpack(record)
            delays.append((now - sent_ns) / 1e6)
        sender.join()
    return delays


def start_process(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline()


# -- the run ---------------------------------------------------------------------------


def run(quick: bool) -> Result:
    rtt_count = 1000 if quick else 5000
    bulk_bytes = (256 if quick else 1024) << 20
    small_count = 50_000 if quick else 200_000
    durations = {1: 4.0, 100: 3.0, 1000: 3.0} if quick else {1: 20.0, 100: 10.0, 1000: 10.0}

    netem, line = start_process(["-m", "netem", "--port", "0"])
    upstream, ports_line = start_process([__file__, "--upstream"])
    try:
        match = re.search(r"http://[\d.:]+", line)
        assert match, line
        api = Api(match.group(0))
        ports = json.loads(ports_line)
        echo_direct = ("127.0.0.1", ports["echo"])
        echo_proxy = api.proxy("echo", ports["echo"])
        sink_direct = ("127.0.0.1", ports["discard"])
        sink_proxy = api.proxy("sink", ports["discard"])

        # Overhead: alternate direct and proxied blocks so drift in machine load hits both.
        direct: list[float] = []
        proxied: list[float] = []
        for _ in range(4):
            direct += round_trips_ms(echo_direct, rtt_count // 4)
            proxied += round_trips_ms(echo_proxy, rtt_count // 4)
        d, p = percentiles(direct), percentiles(proxied)
        metrics = [
            Metric(
                "overhead_1k_rtt_p50", p["p50"] - d["p50"], "ms", OVERHEAD_P50_TARGET_MS, "lower"
            ),
            Metric("overhead_1k_rtt_p99", p["p99"] - d["p99"], "ms", better="lower"),
            Metric("direct_1k_rtt_p50", d["p50"], "ms", better="lower"),
            Metric("proxied_1k_rtt_p50", p["p50"], "ms", better="lower"),
        ]

        metrics.append(Metric("bulk_direct", bulk_mb_s(sink_direct, bulk_bytes), "MB/s"))
        metrics.append(
            Metric("bulk_proxied", bulk_mb_s(sink_proxy, bulk_bytes), "MB/s", BULK_TARGET_MB_S)
        )
        metrics.append(
            Metric("small_msgs_64b_proxied", small_msgs_per_s(echo_proxy, small_count), "msgs/s")
        )

        accuracy: dict[str, Any] = {}
        # Control: the same paced round trips through the toxic-free proxy. What the machine,
        # the client and the echo add on their own; the toxic's error is on top of this.
        for rate in (100, 1000):
            base = percentiles(paced_delays_ms(echo_proxy, rate, durations[rate] / 2))
            metrics.append(Metric(f"control_no_toxic_{rate}per_s_p50", base["p50"], "ms"))
            metrics.append(Metric(f"control_no_toxic_{rate}per_s_p99", base["p99"], "ms"))
        for jitter in (0, 5):
            toxic = {
                "type": "latency",
                "name": "lat",
                "attributes": {"latency": LATENCY_MS, "jitter": jitter},
            }
            addr = api.proxy(f"lat{jitter}", ports["echo"], [toxic])
            for rate, duration in durations.items():
                delays = paced_delays_ms(addr, rate, duration)
                errors = [x - LATENCY_MS for x in delays]
                q = percentiles(errors)
                key = f"latency50_j{jitter}_{rate}per_s"
                accuracy[key] = {
                    "samples": len(delays),
                    "min_ms": min(delays),
                    "p50_ms": percentiles(delays)["p50"],
                    "p99_ms": percentiles(delays)["p99"],
                    "max_ms": max(delays),
                }
                if jitter == 0:
                    target = ACCURACY_P99_TARGET_MS if rate == 100 else None
                    metrics.append(Metric(f"{key}_err_p50", q["p50"], "ms", better="lower"))
                    metrics.append(Metric(f"{key}_err_p99", q["p99"], "ms", target, "lower"))
                    metrics.append(Metric(f"{key}_err_min", min(errors), "ms", 0.0, "higher"))
                else:
                    metrics.append(
                        Metric(f"{key}_min", min(delays), "ms", LATENCY_MS - jitter, "higher")
                    )
                    metrics.append(Metric(f"{key}_p50", percentiles(delays)["p50"], "ms"))
                    metrics.append(Metric(f"{key}_max", max(delays), "ms", better="lower"))
        config = {
            "quick": quick,
            "rtt_samples": rtt_count,
            "bulk_bytes": bulk_bytes,
            "small_messages": small_count,
            "latency_ms": LATENCY_MS,
            "accuracy_durations_s": durations,
            "accuracy": accuracy,
            "loop": "uvloop",
        }
        return Result("netem", config, metrics)
    finally:
        for proc in (netem, upstream):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 30 s instead of 2 minutes")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        upstream_main()
        return 0
    emit(run(args.quick), json_out=args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
