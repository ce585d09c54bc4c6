"""netem's HTTP API matches Toxiproxy 2.x: the real toxiproxy-python client drives it (CRUD,
errors as the client's own exceptions, enable/disable, reset), and raw requests see
Toxiproxy's statuses, bodies, key order and errors, with other proxies unharmed by bad input."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

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
    refused,
    round_trip_ms,
    start_netem,
    stop_netem,
)

__all__ = ["echo", "netem"]  # fixtures used by name

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def client(netem: NetemProcess) -> Iterator[Toxiproxy]:
    toxiproxy = Toxiproxy()
    toxiproxy.update_api_consumer(netem.host, netem.port)
    yield toxiproxy
    toxiproxy.destroy_all()


# -- the toxiproxy-python client -------------------------------------------------------


def test_client_creates_lists_and_destroys(client: Toxiproxy, echo: EchoServer) -> None:
    assert client.running()
    assert client.version() == b'{"version": "2.12.0"}\n'
    proxy = client.create(upstream=echo.address, name="crud")
    assert proxy.upstream == echo.address and proxy.enabled is True
    assert proxy.listen.startswith("127.0.0.1:") and not proxy.listen.endswith(":0")
    assert set(client.proxies()) == {"crud"}
    proxy.add_toxic(type="latency", attributes={"latency": 5, "jitter": 1})
    proxy.add_toxic(type="bandwidth", stream="upstream", name="bw", attributes={"rate": 10_000})
    toxics = proxy.toxics()
    assert set(toxics) == {"latency_downstream", "bw"}
    assert toxics["latency_downstream"].attributes == {"latency": 5, "jitter": 1}
    assert toxics["bw"].stream == "upstream" and toxics["bw"].toxicity == 1
    with connect(proxy.listen) as sock:
        round_trip_ms(sock)
    assert proxy.destroy_toxic("bw") is True
    assert set(proxy.toxics()) == {"latency_downstream"}
    assert client.destroy(proxy) is True
    assert client.get_proxy("crud") is None
    assert refused(proxy.listen)


def test_client_sees_errors_as_its_exceptions(client: Toxiproxy, echo: EchoServer) -> None:
    proxy = client.create(upstream=echo.address, name="errs")
    body = {"name": "errs", "listen": "127.0.0.1:0", "upstream": echo.address}
    with pytest.raises(ProxyExists, match="proxy already exists"):
        APIConsumer.post("/proxies", json=body)
    with pytest.raises(NotFound, match="proxy not found"):
        APIConsumer.get("/proxies/nope")
    with pytest.raises(InvalidToxic, match="invalid toxic type"):
        proxy.add_toxic(type="bogus")
    proxy.add_toxic(type="noop")
    with pytest.raises(ProxyExists, match="toxic already exists"):
        proxy.add_toxic(type="noop")
    with pytest.raises(NotFound, match="toxic not found"):
        proxy.destroy_toxic("nope")


def test_client_disable_enable_and_down(client: Toxiproxy, echo: EchoServer) -> None:
    proxy = client.create(upstream=echo.address, name="updown")
    with connect(proxy.listen) as sock:
        round_trip_ms(sock)
        proxy.disable()
        assert client.get_proxy("updown").enabled is False
        with contextlib.suppress(ConnectionResetError):
            assert recv_all(sock) == b""  # the live connection was closed
    assert refused(proxy.listen)
    proxy.enable()
    with connect(proxy.listen) as sock:
        round_trip_ms(sock)
    with proxy.down():
        assert refused(proxy.listen)
    with connect(proxy.listen) as sock:
        round_trip_ms(sock)


def test_client_reset_enables_all_and_removes_toxics(client: Toxiproxy, echo: EchoServer) -> None:
    a = client.create(upstream=echo.address, name="reset_a")
    b = client.create(upstream=echo.address, name="reset_b")
    a.add_toxic(type="latency", attributes={"latency": 1000})
    b.disable()
    assert client.reset() is True
    proxies = client.proxies()
    assert proxies["reset_a"].enabled and proxies["reset_b"].enabled
    assert a.toxics() == {} and b.toxics() == {}
    with connect(proxies["reset_b"].listen) as sock:
        round_trip_ms(sock)


# -- raw HTTP: what the client never sends ---------------------------------------------


@pytest.fixture
def clean(netem: NetemProcess) -> Iterator[NetemProcess]:
    yield netem
    for name in http(netem, "GET", "/proxies").json():
        http(netem, "DELETE", f"/proxies/{name}")


def test_version_and_key_order(clean: NetemProcess, echo: EchoServer) -> None:
    reply = http(clean, "GET", "/version")
    assert reply.status == 200 and reply.raw == b'{"version": "2.12.0"}\n'
    assert reply.headers["content-type"].startswith("application/json")
    proxy = create_proxy(clean, "order", echo.address)
    assert list(proxy) == ["name", "listen", "upstream", "enabled", "toxics"]
    assert proxy["toxics"] == []
    toxic = add_toxic(clean, "order", type="slicer", attributes={"average_size": 10})
    assert list(toxic) == ["attributes", "name", "type", "stream", "toxicity"]
    assert toxic == {
        "attributes": {"average_size": 10, "size_variation": 0, "delay": 0},
        "name": "slicer_downstream",
        "type": "slicer",
        "stream": "downstream",
        "toxicity": 1,
    }
    add_toxic(clean, "order", type="latency", stream="upstream", toxicity=0.5)
    names = [t["name"] for t in http(clean, "GET", "/proxies/order/toxics").json()]
    assert names == ["latency_upstream", "slicer_downstream"]  # upstream chain first
    shown = http(clean, "GET", "/proxies/order").json()
    assert [t["name"] for t in shown["toxics"]] == names
    assert http(clean, "GET", "/proxies/order/toxics/latency_upstream").json()["toxicity"] == 0.5
    create_proxy(clean, "alpha", echo.address)
    assert list(http(clean, "GET", "/proxies").json()) == ["alpha", "order"]  # sorted, as Go


def test_statuses_of_every_endpoint(clean: NetemProcess, echo: EchoServer) -> None:
    assert http(clean, "POST", "/proxies", {"name": "s", "upstream": echo.address}).status == 201
    assert http(clean, "POST", "/proxies/s/toxics", {"type": "noop"}).status == 200
    assert (
        http(clean, "PATCH", "/proxies/s/toxics/noop_downstream", {"toxicity": 0.25}).status == 200
    )
    assert http(clean, "POST", "/proxies/s/toxics/noop_downstream", {}).status == 200
    assert http(clean, "DELETE", "/proxies/s/toxics/noop_downstream").status == 204
    assert http(clean, "PATCH", "/proxies/s", {"enabled": False}).status == 200
    assert http(clean, "POST", "/reset").status == 204
    assert http(clean, "GET", "/proxies/s").json()["enabled"] is True
    reply = http(clean, "DELETE", "/proxies/s")
    assert reply.status == 204 and reply.raw == b""
    assert http(clean, "GET", "/metrics").status == 200


def test_patch_updates_proxy_and_toxic(clean: NetemProcess, echo: EchoServer) -> None:
    proxy = create_proxy(clean, "p", echo.address)
    reply = http(clean, "PATCH", "/proxies/p", {"enabled": False})
    assert reply.json()["enabled"] is False and refused(proxy["listen"])
    reply = http(clean, "PATCH", "/proxies/p", {"enabled": True, "listen": "127.0.0.1:0"})
    moved = reply.json()["listen"]
    assert reply.json()["enabled"] is True and not moved.endswith(":0")
    with connect(moved) as sock:
        round_trip_ms(sock)
    add_toxic(clean, "p", type="latency", name="lat", attributes={"latency": 7, "jitter": 3})
    reply = http(
        clean, "PATCH", "/proxies/p/toxics/lat", {"attributes": {"jitter": 1}, "toxicity": 0.5}
    )
    assert reply.json() == {
        "attributes": {"latency": 7, "jitter": 1},
        "name": "lat",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 0.5,
    }
    # name, type and stream cannot change through an update (ignored, as in Toxiproxy)
    reply = http(clean, "PATCH", "/proxies/p/toxics/lat", {"name": "x", "stream": "upstream"})
    assert reply.json()["name"] == "lat" and reply.json()["stream"] == "downstream"


def test_populate_creates_keeps_and_replaces(clean: NetemProcess, echo: EchoServer) -> None:
    other = EchoServer()
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        listen = f"127.0.0.1:{port}"
        body = [{"name": "pop", "listen": listen, "upstream": echo.address}]
        reply = http(clean, "POST", "/populate", body)
        assert reply.status == 201
        assert list(reply.json()) == ["proxies"]
        assert [p["name"] for p in reply.json()["proxies"]] == ["pop"]
        with connect(listen) as sock:
            round_trip_ms(sock)
            again = http(clean, "POST", "/populate", body)  # same fields: untouched
            assert again.status == 201
            round_trip_ms(sock)  # the live connection survived
        body[0]["upstream"] = other.address
        assert http(clean, "POST", "/populate", body).status == 201
        assert http(clean, "GET", "/proxies/pop").json()["upstream"] == other.address
        with connect(listen) as sock:
            round_trip_ms(sock)
        assert other.accepted == 1
    finally:
        other.close()


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ([{"upstream": "127.0.0.1:1"}], 400, "missing required field: name at proxy 1"),
        ([{"name": "x"}], 400, "missing required field: upstream at proxy 1"),
        ({"name": "x"}, 400, "bad request body"),
        (
            [{"name": "d", "upstream": "127.0.0.1:1"}, {"name": "d", "upstream": "127.0.0.1:2"}],
            400,
            "duplicate proxy name",
        ),
    ],
)
def test_populate_errors_change_nothing(
    clean: NetemProcess, body: Any, status: int, error: str
) -> None:
    reply = http(clean, "POST", "/populate", body)
    assert reply.status == status
    assert list(reply.json()) == ["error", "status", "proxies"]
    assert error in reply.json()["error"] and reply.json()["status"] == status
    assert http(clean, "GET", "/proxies").json() == {}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("GET", "/nope", None, 404, None),
        ("GET", "/proxies/nope", None, 404, "proxy not found"),
        ("GET", "/proxies/keep/toxics/nope", None, 404, "toxic not found"),
        ("DELETE", "/proxies/nope", None, 404, "proxy not found"),
        ("DELETE", "/proxies", None, 405, None),
        ("PUT", "/proxies/keep", None, 405, None),
        ("GET", "/reset", None, 405, None),
        ("POST", "/proxies", b"{not json", 400, "bad request body"),
        ("POST", "/proxies", b"", 400, "bad request body: EOF"),
        ("POST", "/proxies", {"name": 5, "upstream": "x:1"}, 400, "bad request body"),
        ("POST", "/proxies", {"upstream": "x:1"}, 400, "missing required field: name"),
        ("POST", "/proxies", {"name": "n"}, 400, "missing required field: upstream"),
        ("POST", "/proxies", {"name": "keep", "upstream": "x:1"}, 409, "proxy already exists"),
        ("POST", "/proxies", {"name": "e", "enabled": "yes", "upstream": "x:1"}, 400, None),
        ("PATCH", "/proxies/keep", [1], 400, "bad request body"),
        ("POST", "/proxies/keep/toxics", {"type": "bogus"}, 400, "invalid toxic type"),
        (
            "POST",
            "/proxies/keep/toxics",
            {"type": "noop", "stream": "sideways"},
            400,
            "stream was invalid",
        ),
        ("POST", "/proxies/keep/toxics", {"type": "noop", "toxicity": 2}, 400, None),
        ("POST", "/proxies/keep/toxics", {"type": "noop", "toxicity": "1"}, 400, None),
        (
            "POST",
            "/proxies/keep/toxics",
            {"type": "latency", "attributes": {"latency": -1}},
            400,
            None,
        ),
        (
            "POST",
            "/proxies/keep/toxics",
            {"type": "latency", "attributes": {"latency": "5"}},
            400,
            None,
        ),
        (
            "POST",
            "/proxies/keep/toxics",
            {"type": "latency", "attributes": {"latency": 1.5}},
            400,
            None,
        ),
        ("POST", "/proxies/keep/toxics", {"type": "latency", "attributes": [1]}, 400, None),
        (
            "POST",
            "/proxies/keep/toxics",
            {"type": "latency", "attributes": {"latency": 10**12}},
            400,
            None,
        ),
        ("POST", "/proxies/keep/toxics", {"type": "slicer"}, 400, None),
        (
            "POST",
            "/proxies/keep/toxics",
            {"type": "slicer", "attributes": {"average_size": 5, "size_variation": 5}},
            400,
            None,
        ),
        (
            "POST",
            "/proxies/keep/toxics",
            {"name": "dup", "type": "noop"},
            409,
            "toxic already exists",
        ),
        (
            "PATCH",
            "/proxies/keep/toxics/dup",
            {"attributes": {"x": 1}, "toxicity": -0.5},
            400,
            None,
        ),
        ("POST", "/proxies", {"name": "l", "listen": "nonsense", "upstream": "x:1"}, 500, None),
    ],
)
def test_bad_requests_get_toxiproxy_errors_and_harm_nothing(
    clean: NetemProcess,
    echo: EchoServer,
    method: str,
    path: str,
    body: Any,
    status: int,
    error: str | None,
) -> None:
    keep = create_proxy(clean, "keep", echo.address)
    add_toxic(clean, "keep", type="noop", name="dup")
    with connect(keep["listen"]) as sock:
        if isinstance(body, bytes):
            reply = http(clean, method, path, raw=body)
        else:
            reply = http(clean, method, path, body)
        assert reply.status == status, reply.raw
        payload = reply.json()
        assert list(payload) == ["error", "status"] and payload["status"] == status
        if error is not None:
            assert error in payload["error"]
        round_trip_ms(sock)  # the other proxy keeps serving its live connection
    with connect(keep["listen"]) as sock:
        round_trip_ms(sock)
    assert http(clean, "GET", "/proxies/keep/toxics").json()[0]["toxicity"] == 1


def test_listen_address_in_use_is_500(clean: NetemProcess, echo: EchoServer) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        reply = http(
            clean, "POST", "/proxies", {"name": "busy", "listen": taken, "upstream": echo.address}
        )
        assert reply.status == 500 and reply.json()["status"] == 500
        assert "busy" not in http(clean, "GET", "/proxies").json()


def test_upstream_is_dialled_per_connection(clean: NetemProcess) -> None:
    with socket.socket() as s:  # a port with nothing behind it, for now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = create_proxy(clean, "late", f"127.0.0.1:{port}")
    with connect(proxy["listen"]) as sock:
        assert recv_all(sock) == b""  # no upstream: the client is closed
    late = socket.socket()
    late.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    late.bind(("127.0.0.1", port))
    late.listen()
    try:
        with connect(proxy["listen"]) as sock:
            conn, _ = late.accept()
            sock.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.close()
    finally:
        late.close()


def test_browsers_are_refused(clean: NetemProcess) -> None:
    reply = http(clean, "GET", "/proxies", headers={"User-Agent": "Mozilla/5.0"})
    assert reply.status == 403


def test_metrics_count_bytes_and_connections(clean: NetemProcess, echo: EchoServer) -> None:
    proxy = create_proxy(clean, "metered", echo.address)
    with connect(proxy["listen"]) as sock:
        round_trip_ms(sock, 1000)
        text = http(clean, "GET", "/metrics").raw.decode()
    assert 'netem_proxy_connections_active{proxy="metered"} 1' in text
    assert 'netem_proxy_connections_total{proxy="metered"} 1' in text
    for metric in ("received", "sent"):
        for direction in ("upstream", "downstream"):
            line = next(
                ln
                for ln in text.splitlines()
                if ln.startswith(f"toxiproxy_proxy_{metric}_bytes_total")
                and f'direction="{direction}"' in ln
            )
            assert line.endswith(" 1000"), line


def test_serve_stops_cleanly_on_sigterm(echo: EchoServer) -> None:
    server = start_netem()
    proxy = create_proxy(server, "x", echo.address)
    sock = connect(proxy["listen"])
    try:
        assert stop_netem(server) == 0
    finally:
        sock.close()
