"""The link matrix drives a netem server through the Toxiproxy API: applied links cost one
RTT per round trip, and cut/heal, isolate/heal, slow and reset act on live traffic; the
``geostore netem`` commands serve the API and print the address map."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from geostore.config.topology import make_topology
from geostore.ids import NodeId
from netem.links import AppliedLink, NetemControl, NetemError, apply_links, plan_links, wait_ready
from tests.integration.test_netem_support import (
    EchoServer,
    NetemProcess,
    connect,
    netem,
    recv_all,
    refused,
    round_trip_ms,
    stop_netem,
)

__all__ = ["netem"]

pytestmark = pytest.mark.timeout(90)

RTT_MS = 20


@pytest.fixture(scope="module")
def nodes() -> Iterator[dict[str, EchoServer]]:
    servers = {"a1": EchoServer(), "b1": EchoServer(), "c1": EchoServer()}
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture
def matrix(
    netem: NetemProcess, nodes: dict[str, EchoServer]
) -> tuple[NetemControl, dict[str, AppliedLink]]:
    topology = make_topology({"a": ["a1"], "b": ["b1"], "c": ["c1"]}, float(RTT_MS))
    addrs = {NodeId(n): ("127.0.0.1", s.port) for n, s in nodes.items()}
    applied = apply_links(plan_links(topology, addrs), netem.url)
    return NetemControl(topology, netem.url), {a.plan.name: a for a in applied}


def test_applied_links_cost_one_rtt_and_apply_is_idempotent(
    netem: NetemProcess, matrix: tuple[NetemControl, dict[str, AppliedLink]]
) -> None:
    control, links = matrix
    assert set(links) == {"a->b1", "a->c1", "b->a1", "b->c1", "c->a1", "c->b1"}
    assert wait_ready(netem.url) == "2.12.0"
    with connect(links["a->b1"].listen) as sock:
        samples = [round_trip_ms(sock) for _ in range(3)]
        assert min(samples) >= RTT_MS - 1
        again = apply_links([a.plan for a in links.values()], netem.url)
        assert {a.plan.name: a.listen for a in again} == {n: a.listen for n, a in links.items()}
        round_trip_ms(sock)  # re-applying kept the proxy and its connection
    toxics = control.status()["a->b1"]["toxics"]
    assert sorted(t["name"] for t in toxics) == ["latency_downstream", "latency_upstream"]


def test_cut_and_heal_a_link(matrix: tuple[NetemControl, dict[str, AppliedLink]]) -> None:
    control, links = matrix
    sock = connect(links["a->b1"].listen)
    try:
        round_trip_ms(sock)
        control.cut_link("a", "b")
        sock.settimeout(0.3)
        sock.sendall(b"into the void")
        with pytest.raises(TimeoutError):
            sock.recv(100)
        with connect(links["b->a1"].listen) as back:  # both ways by default
            back.settimeout(0.3)
            back.sendall(b"x")
            with pytest.raises(TimeoutError):
                back.recv(1)
        with connect(links["a->c1"].listen) as other:  # other links unaffected
            round_trip_ms(other)
        control.heal_link("a", "b")
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert recv_all(sock) == b""  # frozen connections are closed on heal
    finally:
        sock.close()
    with connect(links["a->b1"].listen) as sock:
        round_trip_ms(sock)


def test_cut_one_way_and_refuse(matrix: tuple[NetemControl, dict[str, AppliedLink]]) -> None:
    control, links = matrix
    control.cut_link("a", "c", both_ways=False, refuse=True)
    assert refused(links["a->c1"].listen)
    with connect(links["c->a1"].listen) as sock:
        round_trip_ms(sock)
    control.heal_link("a", "c", both_ways=False)
    with connect(links["a->c1"].listen) as sock:
        round_trip_ms(sock)


def test_isolate_and_heal_a_region(matrix: tuple[NetemControl, dict[str, AppliedLink]]) -> None:
    control, links = matrix
    control.isolate_region("c", refuse=True)
    for name in ("a->c1", "b->c1", "c->a1", "c->b1"):
        assert refused(links[name].listen)
    with connect(links["a->b1"].listen) as sock:
        round_trip_ms(sock)
    control.heal_region("c")
    for name in ("a->c1", "c->b1"):
        with connect(links[name].listen) as sock:
            round_trip_ms(sock)
    with pytest.raises(KeyError):
        control.isolate_region("nowhere")


def test_slow_and_reset_a_link(matrix: tuple[NetemControl, dict[str, AppliedLink]]) -> None:
    control, links = matrix
    with connect(links["b->c1"].listen) as sock:
        control.slow_link("b", "c", extra_rtt_ms=40)
        assert round_trip_ms(sock) >= RTT_MS + 40 - 1
        control.slow_link("b", "c", extra_rtt_ms=60)  # updated in place
        assert round_trip_ms(sock) >= RTT_MS + 60 - 1
        control.slow_link("b", "c", extra_rtt_ms=0)
        names = [t["name"] for t in control.status()["b->c1"]["toxics"]]
        assert not any(n.startswith("slow") for n in names)
        control.reset_link("b", "c")
        with contextlib.suppress(ConnectionResetError):
            assert recv_all(sock) == b""
    with connect(links["b->c1"].listen) as sock:
        round_trip_ms(sock)


def test_unreachable_api_is_a_typed_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(NetemError):
        wait_ready(url, timeout_s=0.2)
    control = NetemControl(make_topology({"x": ["x1"], "y": ["y1"]}, 1.0), url, timeout_s=0.5)
    with pytest.raises(NetemError):
        control.cut_link("x", "y")


def test_cli_serve_and_apply(tmp_path: Path) -> None:
    server = start_netem_cli()
    try:
        topology = tmp_path / "t.toml"
        topology.write_text(
            make_topology({"p": ["p1", "p2"], "q": ["q1"]}, 30.0, bandwidth_kbps=1000).to_toml()
        )
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "geostore",
                "netem",
                "apply",
                "--topology",
                str(topology),
                "--url",
                server.url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        lines = out.splitlines()
        assert lines[0] == f"3 link proxies on {server.url}"
        assert lines[1].split()[:4] == ["proxy", "from", "to", "node"]
        rows = {ln.split()[0]: ln.split() for ln in lines[3:]}
        assert set(rows) == {"p->q1", "q->p1", "q->p2"}
        assert rows["p->q1"][5:] == ["15/15", "0/0", "1000"]
        assert re.fullmatch(r"127\.0\.0\.1:\d+", rows["q->p2"][3])
    finally:
        assert stop_netem(server) == 0


def start_netem_cli() -> NetemProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "geostore", "netem", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"http://([\d.]+):(\d+)", line)
    assert match, line
    return NetemProcess(proc, match.group(1), int(match.group(2)))
