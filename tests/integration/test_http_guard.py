"""Proves the node's port holds against slow and greedy clients, on a real node and raw sockets:
an over-long header is refused, a connection that trickles its request head (new or kept
alive) or its body is dropped at the deadline, a client that does not read its answer is
dropped at the write deadline, connections over the cap get a clear 503 and are closed, a
gzip bomb is refused at the body limit; each is counted, and the node keeps serving."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from geostore.config import config_from_dict, topology_from_dict
from geostore.ids import NodeId
from geostore.runtime.node import NodeRuntime

pytestmark = pytest.mark.timeout(90)

LIMITS = {
    "body_bytes_max": 1024 * 1024,
    "event_bytes_max": 16 * 1024,
    "header_bytes_max": 1024,
    "connections_max": 6,
    "header_timeout_s": 1.0,
    "body_timeout_s": 1.0,
    "write_timeout_s": 1.0,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Node:
    """A one-node region on its own loop in a thread, with tight guard limits."""

    def __init__(self, data_dir: Path) -> None:
        self.port = _free_port()
        topo = topology_from_dict(
            {"name": "guard", "regions": [{"name": "r1", "nodes": [
                {"id": "n1", "host": "127.0.0.1", "port": self.port}]}]}
        )  # fmt: skip
        config = config_from_dict(
            {"raft": {"tick_ms": 10, "heartbeat_ticks": 2, "election_ticks": 10},
             "limits": LIMITS}
        )  # fmt: skip
        self.node = NodeRuntime(topo, NodeId("n1"), config, str(data_dir), unsafe_no_fsync=True,
                                seed=1, bootstrap=True)  # fmt: skip
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=lambda: self.loop.run_until_complete(self.node.run(handle_signals=False)),
            daemon=True,
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not (self.node.data_group.is_leader and self.request("GET", "/v1/health")[0]):
            assert time.monotonic() < deadline, "the node did not lead in time"
            time.sleep(0.05)

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
        """One request on a fresh connection; (status, body), (0, b"") when refused."""
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            head += f"{k}: {v}\r\n"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(head.encode() + b"\r\n" + body)
                data = recv_all(s)
        except OSError:
            return 0, b""
        if not data:
            return 0, b""
        status = int(data.split(b" ", 2)[1])
        return status, data.split(b"\r\n\r\n", 1)[1]

    def guard(self) -> dict[str, int]:
        return self.node.security.guard.to_json()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.node.request_stop)
        self.thread.join(30)
        assert not self.thread.is_alive()


def recv_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def closed_by_server(s: socket.socket, within_s: float) -> bool:
    """Wait for the server to close ``s`` (EOF or reset), reading whatever it sent."""
    s.settimeout(within_s)
    try:
        while s.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(tmp_path_factory.mktemp("guard"))
    try:
        yield n
    finally:
        n.stop()


def test_an_over_long_header_is_refused(node: Node) -> None:
    status, _ = node.request("GET", "/v1/health", headers={"X-Big": "y" * 2000})
    assert status in (400, 431)
    status, _ = node.request("GET", "/v1/health?" + "q" * 2000)
    assert status in (400, 414, 431)
    # a keep-alive append (the append lane's request) with a header over the limit too
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        status, _, _ = _exchange(
            s, "/v1/streams/x/events", b"{}", "User-Agent: " + "u" * 2000 + "\r\n"
        )
    assert status in (400, 431)
    assert node.request("GET", "/v1/health")[0] == 200


def test_a_trickled_request_head_is_dropped(node: Node) -> None:
    before = node.guard()["header_timeouts"]
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        t0 = time.monotonic()
        assert closed_by_server(s, 10.0)
        assert time.monotonic() - t0 < 8.0
    assert node.guard()["header_timeouts"] == before + 1
    assert node.request("GET", "/v1/health")[0] == 200


def test_a_trickled_head_on_a_kept_alive_connection_is_dropped(node: Node) -> None:
    before = node.guard()["header_timeouts"]
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(1.5)  # idle past the head deadline: left to the keep-alive timeout
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /v1/health HTTP/1.1\r\n")  # then a head that never ends
        assert closed_by_server(s, 10.0)
    assert node.guard()["header_timeouts"] == before + 1


def test_a_trickled_body_is_dropped_before_the_handler(node: Node) -> None:
    before = node.guard()["body_timeouts"]
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        s.sendall(b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"name\":")  # fmt: skip
        s.settimeout(10)
        answer = recv_all(s)  # the answer, then the server closes the connection
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"did not arrive" in answer
    assert node.guard()["body_timeouts"] == before + 1
    assert node.request("GET", "/v1/streams/x/events")[0] == 404  # no stream was created


def test_a_client_that_does_not_read_is_dropped_at_the_write_deadline(node: Node) -> None:
    body = json.dumps({"name": "big"}).encode()
    assert node.request("POST", "/v1/streams", body, {"Content-Type": "application/json"})[0] in (
        200, 201)  # fmt: skip
    event = {"body": {"pad": "p" * 8000}}
    batch = json.dumps({"events": [event] * 100}).encode()  # ~800 KB a request
    for _ in range(12):
        status, answer = node.request("POST", "/v1/streams/big/events", batch,
                                      {"Content-Type": "application/json"})  # fmt: skip
        assert status == 200, answer[:200]
    before = node.guard()["write_timeouts"]
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", node.port))
    try:
        # ~10 MB of answer; this client reads none of it
        s.sendall(b"GET /v1/streams/big/events?limit=10000 HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 30
        while node.guard()["write_timeouts"] == before:
            assert time.monotonic() < deadline, node.guard()
            time.sleep(0.1)
    finally:
        s.close()
    assert node.request("GET", "/v1/health")[0] == 200


def test_connections_over_the_cap_get_a_clear_503(node: Node) -> None:
    held: list[socket.socket] = []
    before = node.guard()["connections_refused"]
    try:
        # keep-alive connections that finished a request: past the head deadline, still open
        while node.guard()["connections"] < LIMITS["connections_max"]:
            s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            held.append(s)
            assert len(held) <= LIMITS["connections_max"]
        status, answer = node.request("GET", "/v1/health")
        assert status == 503, answer
        assert json.loads(answer)["error"]["code"] == "unavailable"
        assert node.guard()["connections_refused"] == before + 1
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while node.request("GET", "/v1/health")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_gzip_bomb_is_refused_at_the_body_limit(node: Node) -> None:
    inner = b'{"events": [' + b" " * (64 * 1024 * 1024) + b"]}"
    bomb = gzip.compress(inner, compresslevel=9)
    assert len(bomb) < LIMITS["body_bytes_max"]
    status, answer = node.request("POST", "/v1/streams/big/events", bomb,
                                  {"Content-Type": "application/json",
                                   "Content-Encoding": "gzip"})  # fmt: skip
    assert status == 413, answer[:200]
    assert node.request("GET", "/v1/health")[0] == 200


def _exchange(s: socket.socket, path: str, body: bytes, extra: str = "") -> tuple[int, str, bytes]:
    """One keep-alive POST on ``s``: (status, Content-Type, body)."""
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    while len(rest) < int(headers["content-length"]):
        rest += s.recv(65536)
    return int(lines[0].split()[1]), headers["content-type"], rest


def test_appends_through_the_lane_are_answered_as_the_general_path_answers_them(
    node: Node,
) -> None:
    """The same requests, once as the lane takes them and once with a header the lane leaves
    to aiohttp: the same status, type and body (the success answers differ in seq only)."""
    body = json.dumps({"name": "lane"}).encode()
    assert node.request("POST", "/v1/streams", body, {"Content-Type": "application/json"})[0] in (
        200, 201)  # fmt: skip
    cases = [
        b'{"events": [{"body": {"x": 1}}], "producer": {"id": "lp", "seq": 1}}',
        b'{"events": [{"body": {"x": 1}}], "extra": 1}',
        b'{"events": [{"body": {"x": 1}, "ts": "soon"}]}',
        b'{"events": {"body": 1}}',
        b'{"nothing": []}',
        b"[1, 2]",
    ]
    g0 = node.guard()
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as lane:
        answers = [_exchange(lane, "/v1/streams/lane/events", c) for c in cases]
        answers.append(_exchange(lane, "/v1/streams/nope/events", cases[0]))
    g1 = node.guard()
    assert g1["lane_requests"] - g0["lane_requests"] == len(cases) + 1
    assert g1["lane_handovers"] == g0["lane_handovers"]
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as general:
        via = "X-Via: general\r\n"
        generals = [_exchange(general, "/v1/streams/lane/events", c, via) for c in cases]
        generals.append(_exchange(general, "/v1/streams/nope/events", cases[0], via))
    assert node.guard()["lane_handovers"] == g1["lane_handovers"] + 1
    ok_lane, ok_general = answers[0], generals[0]
    assert ok_lane[:2] == ok_general[:2] == (200, "application/json; charset=utf-8")
    first, again = json.loads(ok_lane[2]), json.loads(ok_general[2])
    assert first["results"][0]["first_seq"] == 0 and "duplicate" not in first["results"][0]
    assert again["results"][0]["duplicate"] is True  # the same producer pair: stored once
    assert first["results"] == [{k: v for k, v in r.items() if k != "duplicate"}
                                for r in again["results"]]  # fmt: skip
    for got, want in zip(answers[1:], generals[1:], strict=True):
        assert got == want
        assert got[0] in (400, 404), got
    assert node.request("GET", "/v1/health")[0] == 200
