"""Each netem toxic does to bytes what Toxiproxy's does, measured through an echo upstream:
bytes in equal bytes out, latency adds at least its delay, bandwidth paces, limit_data
cuts, reset_peer resets, timeout holds, and toxic changes on live connections neither lose
nor reorder a byte."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import threading
import time

import pytest

from tests.integration.test_netem_support import (
    EchoServer,
    NetemProcess,
    add_toxic,
    connect,
    create_proxy,
    echo,
    http,
    netem,
    recv_all,
    recv_exactly,
    round_trip_ms,
)

__all__ = ["echo", "netem"]  # fixtures used by name

pytestmark = pytest.mark.timeout(60)

_names = iter(range(1_000_000))


def fresh_proxy(netem: NetemProcess, echo: EchoServer) -> tuple[str, str]:
    name = f"t{next(_names)}"
    return name, create_proxy(netem, name, echo.address)["listen"]


def echo_bulk(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` from a thread while receiving its echo here."""
    sender = threading.Thread(target=sock.sendall, args=(payload,))
    sender.start()
    got = recv_exactly(sock, len(payload))
    sender.join()
    return got


def test_toxic_free_proxy_passes_bytes_unchanged(netem: NetemProcess, echo: EchoServer) -> None:
    _, listen = fresh_proxy(netem, echo)
    payload = os.urandom(4 << 20)
    with connect(listen) as sock:
        assert echo_bulk(sock, payload) == payload
        sock.shutdown(socket.SHUT_WR)  # half-close passes through: the echo closes, we see EOF
        assert recv_all(sock) == b""


@pytest.mark.parametrize(("stream", "latency_ms"), [("downstream", 40), ("upstream", 25)])
def test_latency_adds_at_least_its_delay(
    netem: NetemProcess, echo: EchoServer, stream: str, latency_ms: int
) -> None:
    name, listen = fresh_proxy(netem, echo)
    add_toxic(netem, name, type="latency", stream=stream, attributes={"latency": latency_ms})
    with connect(listen) as sock:
        samples = [round_trip_ms(sock) for _ in range(8)]
    assert min(samples) >= latency_ms - 1, samples
    assert statistics.median(samples) <= latency_ms + 25, samples


def test_latency_with_jitter_keeps_bytes_in_order(netem: NetemProcess, echo: EchoServer) -> None:
    name, listen = fresh_proxy(netem, echo)
    add_toxic(netem, name, type="latency", attributes={"latency": 10, "jitter": 9})
    add_toxic(
        netem, name, type="latency", stream="upstream", attributes={"latency": 5, "jitter": 5}
    )
    payload = os.urandom(1 << 20)
    with connect(listen) as sock:
        assert echo_bulk(sock, payload) == payload


def test_latency_toxics_do_not_serialize_chunks(netem: NetemProcess, echo: EchoServer) -> None:
    """Twenty messages sent 5 ms apart through a 100 ms latency all arrive ~100 ms after
    they were sent, not 20 x 100 ms: queued chunks do not add delays to one another."""
    name, listen = fresh_proxy(netem, echo)
    add_toxic(netem, name, type="latency", attributes={"latency": 100})
    with connect(listen) as sock:
        start = time.perf_counter()
        for _ in range(20):
            sock.sendall(b"m" * 100)
            time.sleep(0.005)
        got = recv_exactly(sock, 2000)
        elapsed = time.perf_counter() - start
    assert got == b"m" * 2000
    assert elapsed >= 0.1
    assert elapsed < 1.0  # serialized delays would take 2 s


def test_bandwidth_limits_rate(netem: NetemProcess, echo: EchoServer) -> None:
    name, listen = fresh_proxy(netem, echo)
    add_toxic(netem, name, type="bandwidth", attributes={"rate": 200})  # 200 KB/s
    payload = os.urandom(100_000)
    with connect(listen) as sock:
        start = time.perf_counter()
        assert echo_bulk(sock, payload) == payload
        elapsed = time.perf_counter() - start
    assert elapsed >= 0.45  # 100 KB at 200 KB/s is 0.5 s


def test_slicer_preserves_bytes(netem: NetemProcess, echo: EchoServer) -> None:
    name, listen = fresh_proxy(netem, echo)
    attributes = {"average_size": 50, "size_variation": 20, "delay": 10}
    add_toxic(netem, name, type="slicer", attributes=attributes)
    add_toxic(netem, name, type="slicer", stream="upstream", attributes=attributes)
    payload = os.urandom(64_000)
    with connect(listen) as sock:
        assert echo_bulk(sock, payload) == payload


def test_limit_data_closes_after_n_bytes(netem: NetemProcess, echo: EchoServer) -> None:
    name, listen = fresh_proxy(netem, echo)
    add_toxic(netem, name, type="limit_data", attributes={"bytes": 1000})
    payload = os.urandom(3000)
    with connect(listen) as sock:
        sock.sendall(payload)
        assert recv_all(sock) == payload[:1000]


def test_reset_peer_resets(netem: NetemProcess, echo: EchoServer) -> None:
    name, listen = fresh_proxy(netem, echo)
    add_toxic(netem, name, type="reset_peer", attributes={"timeout": 50})
    with connect(listen) as sock:
        sock.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            recv_all(sock)


def test_timeout_zero_holds_until_removed(netem: NetemProcess, echo: EchoServer) -> None:
    name, listen = fresh_proxy(netem, echo)
    add_toxic(netem, name, type="timeout", attributes={"timeout": 0})
    with connect(listen) as sock:
        sock.sendall(b"lost")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(10)  # held: nothing comes back, nothing closes
        sock.settimeout(5)
        assert http(netem, "DELETE", f"/proxies/{name}/toxics/timeout_downstream").status == 204
        with contextlib.suppress(ConnectionResetError):
            assert recv_all(sock) == b""  # removing the toxic closes, as in Toxiproxy


def test_timeout_closes_after_its_delay(netem: NetemProcess, echo: EchoServer) -> None:
    name, listen = fresh_proxy(netem, echo)
    add_toxic(netem, name, type="timeout", stream="upstream", attributes={"timeout": 200})
    with connect(listen) as sock:
        start = time.perf_counter()
        sock.sendall(b"dropped")
        assert recv_all(sock) == b""
        assert time.perf_counter() - start >= 0.19


def test_slow_close_delays_the_close(netem: NetemProcess, echo: EchoServer) -> None:
    name, listen = fresh_proxy(netem, echo)
    add_toxic(netem, name, type="slow_close", attributes={"delay": 300})
    with connect(listen) as sock:
        assert round_trip_ms(sock) >= 0
        start = time.perf_counter()
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""
        assert time.perf_counter() - start >= 0.29


def test_toxicity_zero_never_applies(netem: NetemProcess, echo: EchoServer) -> None:
    name, listen = fresh_proxy(netem, echo)
    add_toxic(netem, name, type="timeout", toxicity=0, attributes={"timeout": 0})
    for _ in range(3):
        with connect(listen) as sock:
            round_trip_ms(sock)  # a timeout toxic that applied would drop this


def test_toxics_added_to_live_connections(netem: NetemProcess, echo: EchoServer) -> None:
    name, listen = fresh_proxy(netem, echo)
    with connect(listen) as sock:
        round_trip_ms(sock)
        add_toxic(netem, name, type="latency", attributes={"latency": 60})
        assert round_trip_ms(sock) >= 59
        http(
            netem,
            "PATCH",
            f"/proxies/{name}/toxics/latency_downstream",
            {"attributes": {"latency": 120}},
        )
        assert round_trip_ms(sock) >= 119


def test_changing_toxics_under_load_loses_and_reorders_nothing(
    netem: NetemProcess, echo: EchoServer
) -> None:
    name, listen = fresh_proxy(netem, echo)
    payload = os.urandom(3 << 20)
    toxics = [
        {"type": "latency", "name": "lat", "attributes": {"latency": 3, "jitter": 2}},
        {
            "type": "slicer",
            "name": "sl",
            "attributes": {"average_size": 4000, "size_variation": 1000},
        },
        {"type": "bandwidth", "name": "bw", "attributes": {"rate": 20_000}},
        {"type": "noop", "name": "up", "stream": "upstream"},
    ]
    result: list[bytes] = []
    with connect(listen, timeout_s=30) as sock:
        receiver = threading.Thread(target=lambda: result.append(recv_exactly(sock, len(payload))))
        receiver.start()
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        for round_ in range(3):
            for toxic in toxics:
                add_toxic(netem, name, **toxic)
                time.sleep(0.01)
            for toxic in toxics[round_ % 2 :: 2]:
                http(netem, "PATCH", f"/proxies/{name}/toxics/{toxic['name']}", {"toxicity": 1})
            for toxic in toxics:
                http(netem, "DELETE", f"/proxies/{name}/toxics/{toxic['name']}")
                time.sleep(0.01)
        sender.join(30)
        receiver.join(30)
    assert result and result[0] == payload


@pytest.mark.parametrize("toxic", [None, "latency"])
def test_buffers_are_bounded_when_the_upstream_stops_reading(
    netem: NetemProcess, toxic: str | None
) -> None:
    """A sender facing an upstream that never reads stalls after the kernel's socket buffers
    and the proxy's bounded queues fill, instead of the proxy buffering everything."""
    stalled_upstream = socket.socket()
    stalled_upstream.bind(("127.0.0.1", 0))
    stalled_upstream.listen()
    name = f"t{next(_names)}"
    listen = create_proxy(netem, name, f"127.0.0.1:{stalled_upstream.getsockname()[1]}")["listen"]
    if toxic is not None:
        add_toxic(netem, name, type=toxic, stream="upstream", attributes={"latency": 1})
    block = os.urandom(256 * 1024)
    sent = 0
    with connect(listen) as sock:
        peer, _ = stalled_upstream.accept()
        sock.setblocking(False)
        idle_since = time.monotonic()
        while sent < (256 << 20) and time.monotonic() - idle_since < 0.5:
            try:
                sent += sock.send(block)
                idle_since = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
        peer.close()
    stalled_upstream.close()
    # kernel buffers (a few MiB per socket on loopback) + 4 MiB per toxic queue, not 256 MiB
    assert sent < (64 << 20), sent


def test_a_client_waiting_for_its_upstream_is_not_read_unbounded(netem: NetemProcess) -> None:
    """While the upstream dial hangs (its accept queue is full, so SYNs are dropped), the
    proxy must not keep reading the client into memory."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    for _ in range(4):  # fill the accept queue; later connects hang in SYN_SENT
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(full.getsockname())
        fillers.append(filler)
    name = f"t{next(_names)}"
    listen = create_proxy(netem, name, f"127.0.0.1:{full.getsockname()[1]}")["listen"]
    block = os.urandom(256 * 1024)
    sent = 0
    try:
        with connect(listen) as sock:
            sock.setblocking(False)
            idle_since = time.monotonic()
            while sent < (256 << 20) and time.monotonic() - idle_since < 0.5:
                try:
                    sent += sock.send(block)
                    idle_since = time.monotonic()
                except BlockingIOError:
                    time.sleep(0.01)
    finally:
        for filler in fillers:
            filler.close()
        full.close()
    assert sent < (64 << 20), sent
