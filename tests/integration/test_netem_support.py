"""Shared helpers for the netem integration tests (a server process, an echo upstream, HTTP);
it holds no tests of its own."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection
from typing import Any

import pytest

from netem.server import spawn

STARTUP_TIMEOUT_S = 30.0


@dataclass
class NetemProcess:
    proc: subprocess.Popen[str]
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def start_netem() -> NetemProcess:
    """``python -m netem --port 0`` in a subprocess (netem.server.spawn), once it serves."""
    proc, url = spawn(timeout_s=STARTUP_TIMEOUT_S)
    match = re.fullmatch(r"http://([\d.]+):(\d+)", url)
    assert match, url
    return NetemProcess(proc, match.group(1), int(match.group(2)))


def stop_netem(server: NetemProcess) -> int:
    server.proc.terminate()
    try:
        return server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        raise


@pytest.fixture(scope="module")
def netem() -> Iterator[NetemProcess]:
    server = start_netem()
    try:
        yield server
    finally:
        stop_netem(server)


class EchoServer:
    """A threaded TCP echo server: every byte received is sent back; EOF closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.raw)


def http(
    server: NetemProcess,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    conn = HTTPConnection(server.host, server.port, timeout=10)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def create_proxy(server: NetemProcess, name: str, upstream: str, **fields: Any) -> dict[str, Any]:
    reply = http(
        server,
        "POST",
        "/proxies",
        {"name": name, "listen": "127.0.0.1:0", "upstream": upstream, **fields},
    )
    assert reply.status == 201, reply.raw
    body: dict[str, Any] = reply.json()
    return body


def add_toxic(server: NetemProcess, proxy: str, **toxic: Any) -> dict[str, Any]:
    reply = http(server, "POST", f"/proxies/{proxy}/toxics", toxic)
    assert reply.status == 200, reply.raw
    body: dict[str, Any] = reply.json()
    return body


def connect(listen: str, timeout_s: float = 10.0) -> socket.socket:
    host, port = listen.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        data = sock.recv(min(65536, size - len(out)))
        if not data:
            break
        out += data
    return bytes(out)


def recv_all(sock: socket.socket) -> bytes:
    """Everything until EOF."""
    out = bytearray()
    while data := sock.recv(65536):
        out += data
    return bytes(out)


def round_trip_ms(sock: socket.socket, size: int = 1024) -> float:
    payload = os.urandom(size)
    start = time.perf_counter()
    sock.sendall(payload)
    got = recv_exactly(sock, size)
    elapsed = (time.perf_counter() - start) * 1000.0
    assert got == payload
    return elapsed


def refused(listen: str) -> bool:
    host, port = listen.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False
