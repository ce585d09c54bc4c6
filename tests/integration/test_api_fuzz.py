"""Proves the node's HTTP API holds up under generated requests: schemathesis reads the
node's own /v1/openapi.json and, for every operation, sends requests that fit the document
(positive) and requests that break it (negative) to a real in-process node holding a stream
with a schema; no answer is a 500 or an undocumented 5xx, and every status code, content type
and body is the one the document promises. The SSE tail (an endless answer) is probed apart
with malformed requests.

The node runs as ``cluster up`` starts one by default: HTTPS with its node certificate, and a
token table; the fuzzer calls with an admin token (so requests reach the handlers) and trusts
the cluster CA. ``GEOSTORE_FUZZ_POSTURES=tls,plain`` fuzzes a plain-HTTP node without tokens
as well (default ``tls``).

Examples per operation and mode: ``GEOSTORE_FUZZ_EXAMPLES`` (default 50, for ``make test``).
``GEOSTORE_FUZZ_GROUP_REQUESTS=1000`` instead spreads at least that many generated requests
over each endpoint group (the OpenAPI tag: streams, events, operations), each operation and
mode of a group getting an equal share: the full run the security issue asks for, sized to
finish on a small machine. Each operation prints its count (``pytest -s``)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.core.transport import Response
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from geostore.client.tls import client_ssl
from geostore.config import config_from_dict, topology_from_dict
from geostore.config.tokens import ROLES, hash_secret, parse_tokens, token_toml
from geostore.ids import NodeId
from geostore.runtime.api import ROUTES, openapi_document
from geostore.runtime.node import NodeRuntime
from geostore.transport.certs import CA_CERT, init_certs, load_node_tls
from geostore.transport.wire import PEER_PATH, encode_batch, hello_text

EXAMPLES = int(os.environ.get("GEOSTORE_FUZZ_EXAMPLES", "50"))
GROUP_REQUESTS = int(os.environ.get("GEOSTORE_FUZZ_GROUP_REQUESTS", "0"))
POSTURES = [p for p in os.environ.get("GEOSTORE_FUZZ_POSTURES", "tls").split(",") if p]
assert set(POSTURES) <= {"tls", "plain"}, POSTURES
ADMIN_SECRET = "gst_fuzz-admin-0123456789abcdef0123456789"
pytestmark = pytest.mark.timeout(max(120, max(EXAMPLES, GROUP_REQUESTS) * 3 * len(POSTURES)))

STREAM = "fuzzed"
STREAM_DEF: dict[str, Any] = {
    "name": STREAM,
    "partitions": 2,
    "key_field": "k",
    "schema": {
        "attributes": [
            {"name": "k", "type": "str", "required": True},
            {"name": "v", "type": "int", "indexed": True},
            {"name": "x", "type": "float"},
        ]
    },
}
CONFIG = config_from_dict(
    {
        "raft": {"tick_ms": 10, "heartbeat_ticks": 2, "election_ticks": 10},
        "limits": {
            "body_bytes_max": 64 * 1024,
            "event_bytes_max": 16 * 1024,
            "events_per_request_max": 100,
        },
    }
)
#: Operations that change the region's membership or leadership: each gets a node of its own,
#: so what one generated request does to the group does not skew the other operations.
ADMIN = frozenset({"add_peer", "change_members", "leader_transfer"})
#: An endless server-sent stream: not fuzzed by schemathesis, probed below.
SKIPPED = frozenset({"tail"})
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
SCHEMA = schemathesis.openapi.from_dict(openapi_document())
_HANDLERS = {(r.method.lower(), r.path): r.handler for r in ROUTES}


def _operations() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for result in SCHEMA.get_all_operations():
        # an operation schemathesis cannot read is a fault of the document
        assert isinstance(result, Ok), result.err()
        op = result.ok()
        found[_HANDLERS[(op.method.lower(), op.path)]] = op
    return found


OPERATIONS = _operations()
DOCUMENTED = {
    r.handler: {
        int(code) for code in openapi_document()["paths"][r.path][r.method.lower()]["responses"]
    }
    for r in ROUTES
}
#: Cases known to fail, each written up with a reproduction in the runtime's bug notes:
#: (operation, mode) -> reason. xfail(strict=True) flips to a failure once fixed.
KNOWN: dict[tuple[str, str], str] = {}
#: Answers off the document that the fuzzer can only meet by chance (so a whole operation
#: cannot be marked for them): (operation, status) -> reason. The fuzz lets them pass; each has
#: a deterministic xfail(strict=True) test below that flips once the runtime is fixed.
KNOWN_ANSWERS: dict[tuple[str, int], str] = {}
COUNTS: Counter[str] = Counter()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NodeThread:
    """A real one-node region, run on its own event loop in a thread, so the synchronous
    schemathesis calls (requests) never block it."""

    def __init__(self, data_dir: Path, posture: str = "tls") -> None:
        port = _free_port()
        topo = topology_from_dict(
            {
                "name": "fuzz",
                "regions": [
                    {"name": "r1", "nodes": [{"id": "n1", "host": "127.0.0.1", "port": port}]}
                ],
            }
        )
        self.session = requests.Session()
        tls = tokens = None
        self.ca: Path | None = None
        #: what requests checks the server with (schemathesis passes it per call)
        self.verify: str | bool = True
        if posture == "tls":
            certs = data_dir / "certs"
            init_certs(topo, certs)
            tls = load_node_tls(certs, "n1", require_client_cert=False)
            tokens = parse_tokens(token_toml("admin", hash_secret(ADMIN_SECRET), ROLES))
            self.ca = certs / CA_CERT
            self.session.verify = self.verify = str(self.ca)
            # else requests lets $REQUESTS_CA_BUNDLE override the session's CA
            self.session.trust_env = False
            self.session.headers["Authorization"] = f"Bearer {ADMIN_SECRET}"
        # Fsync off: this is about the API's answers, not durability, and it keeps examples fast.
        self.node = NodeRuntime(
            topo, NodeId("n1"), CONFIG, str(data_dir / "data"), unsafe_no_fsync=True, seed=1,
            bootstrap=True, tls=tls, tokens=tokens,
        )  # fmt: skip
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.loop = asyncio.new_event_loop()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        for _ in range(600):
            assert self.thread.is_alive(), self.error
            try:
                ok = self.session.get(self.url + "/v1/health", timeout=1).status_code == 200
            except requests.RequestException:
                ok = False
            if ok and self.node.data_group.is_leader:
                break
            threading.Event().wait(0.05)
        else:
            raise AssertionError("the node did not lead within 30 s")

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self.node.run(handle_signals=False))
        except BaseException as exc:  # reported by the waiting test
            self.error = exc
        finally:
            self.loop.close()

    def stop(self) -> None:
        self.session.close()
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.node.request_stop)
            self.thread.join(30)
        assert not self.thread.is_alive(), "the node did not stop"


def _seed(node: NodeThread) -> None:
    r = node.session.post(node.url + "/v1/streams", json=STREAM_DEF, timeout=10)
    assert r.status_code in (200, 201), r.text
    events: list[Any] = [
        {"key": f"k{i % 3}", "ts": 1_000 + i, "body": {"k": f"k{i % 3}", "v": i}} for i in range(20)
    ]
    r = node.session.post(
        node.url + f"/v1/streams/{STREAM}/events", json={"events": events}, timeout=10
    )
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module", params=POSTURES)
def shared_node(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[NodeThread]:
    node = NodeThread(tmp_path_factory.mktemp("fuzz-node"), request.param)
    try:
        _seed(node)
        yield node
    finally:
        node.stop()
        print(f"\nschemathesis requests per operation/mode: {dict(sorted(COUNTS.items()))}")
        COUNTS.clear()


#: Operations with nothing to negate (no parameters, no body) get positive cases only.
_NEGATABLE = {r.handler for r in ROUTES if r.params or r.body is not None}


def _cases() -> list[Any]:
    params = []
    for op_id in sorted(o for o in OPERATIONS if o not in SKIPPED):
        modes = [GenerationMode.POSITIVE]
        if op_id in _NEGATABLE:
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            marks = []
            reason = KNOWN.get((op_id, mode.value))
            if reason is not None:
                marks.append(pytest.mark.xfail(strict=True, reason=reason))
            params.append(pytest.param(op_id, mode, id=f"{op_id}-{mode.value}", marks=marks))
    return params


def _examples(op_id: str) -> int:
    """Examples per mode of ``op_id``: EXAMPLES, or its share of GROUP_REQUESTS."""
    if not GROUP_REQUESTS:
        return EXAMPLES
    (tag,) = _TAG[op_id]
    shares = sum(2 for o in _NEGATABLE if _TAG[o] == (tag,) and o not in SKIPPED)
    return -(-GROUP_REQUESTS // max(1, shares))


_TAG = {r.handler: r.tags for r in ROUTES}


def _fuzz(node: NodeThread, op_id: str, mode: GenerationMode) -> None:
    operation = OPERATIONS[op_id]
    strategy = operation.as_strategy(generation_mode=mode)

    @settings(
        max_examples=_examples(op_id),
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, known=st.booleans())
    def run(case: Any, known: bool) -> None:
        if known and case.path_parameters and "s" in case.path_parameters:
            case.path_parameters["s"] = STREAM  # reach past the stream lookup half the time
        response = case.call(
            base_url=node.url, session=node.session, timeout=15, verify=node.verify
        )
        COUNTS[f"{op_id}/{mode.value}"] += 1
        status = response.status_code
        assert status != 500, f"500 for {case.method} {case.formatted_path}: {response.text[:300]}"
        assert status < 500 or status in DOCUMENTED[op_id], (
            f"undocumented {status} for {op_id}: {response.text[:300]}"
        )
        if (op_id, status) in KNOWN_ANSWERS:
            return
        case.validate_response(response, checks=CHECKS)

    run()
    # one line per operation and mode, so a long run reports as it goes (pytest -s)
    print(f"\nfuzzed {op_id}/{mode.value}: {COUNTS[f'{op_id}/{mode.value}']} requests", flush=True)


@pytest.mark.parametrize(("op_id", "mode"), [c for c in _cases() if c.values[0] not in ADMIN])
def test_operation_answers_as_documented(
    shared_node: NodeThread, op_id: str, mode: GenerationMode
) -> None:
    _fuzz(shared_node, op_id, mode)
    assert shared_node.thread.is_alive(), "the node survived the fuzzing"
    assert shared_node.session.get(shared_node.url + "/v1/health", timeout=5).status_code == 200


@pytest.mark.parametrize(("op_id", "mode"), [c for c in _cases() if c.values[0] in ADMIN])
def test_admin_operation_answers_as_documented(
    tmp_path: Path, op_id: str, mode: GenerationMode
) -> None:
    node = NodeThread(tmp_path / "n1", POSTURES[0])
    try:
        _fuzz(node, op_id, mode)
        assert node.thread.is_alive()
    finally:
        node.stop()


def test_every_operation_is_fuzzed_or_probed() -> None:
    assert {r.handler for r in ROUTES} == set(OPERATIONS)
    assert set(OPERATIONS) >= SKIPPED | ADMIN


def test_creating_an_identical_stream_answers_as_documented(shared_node: NodeThread) -> None:
    case = OPERATIONS["create_stream"].Case(body=STREAM_DEF, media_type="application/json")
    response = case.call(
        base_url=shared_node.url, session=shared_node.session, timeout=10, verify=shared_node.verify
    )
    assert response.status_code == 200  # the stream exists with this very definition
    case.validate_response(response, checks=CHECKS)


def test_the_checks_catch_an_answer_off_the_document() -> None:
    """The conformance checks are live: an answer that breaks the document is flagged."""
    case = OPERATIONS["aggregate"].Case(
        path_parameters={"s": STREAM}, query={"field": "v", "from_ts": 0, "to_ts": 1}
    )

    def answer(status: int, body: bytes) -> Response:
        url = "http://127.0.0.1:9/v1/streams/fuzzed/aggregate?field=v&from_ts=0&to_ts=1"
        return Response(
            status_code=status,
            headers={"Content-Type": ["application/json"]},
            content=body,
            request=requests.Request("GET", url).prepare(),
            elapsed=0.001,
            verify=False,
        )

    case.validate_response(answer(200, b'{"count": 1, "sum": 2}'), checks=CHECKS)
    with pytest.raises(FailureGroup):
        case.validate_response(answer(200, b'{"count": "one"}'), checks=CHECKS)
    with pytest.raises(FailureGroup):
        case.validate_response(answer(409, b'{"error": {"code": "conflict"}}'), checks=CHECKS)


@pytest.mark.parametrize(
    "query",
    [
        "partition=-1",
        "partition=abc",
        "partition=99",
        "from_seq=-5",
        "from_seq=1e9",
        "from_seq=99999999999999999999999",
        "partition=0&partition=1",
        "partition=%00",
    ],
)
def test_tail_refuses_malformed_requests(shared_node: NodeThread, query: str) -> None:
    r = shared_node.session.get(
        f"{shared_node.url}/v1/streams/{STREAM}/tail?{query}",
        headers={"Accept": "text/event-stream"},
        timeout=5,
        stream=True,
    )
    try:
        assert r.status_code in (200, 400, 404, 413), r.status_code
        if r.status_code != 200:
            body = r.json()
            assert isinstance(body["error"]["code"], str) and body["error"]["message"]
    finally:
        r.close()
    for path in ("/v1/streams/no-such-stream/tail", "/v1/streams/%2e%2e/tail"):
        r = shared_node.session.get(shared_node.url + path, timeout=5, stream=True)
        assert r.status_code == 404
        r.close()


async def _peer_probe(url: str, first: str | bytes, ca: Path | None) -> dict[str, Any]:
    """Open the peer WebSocket, send ``first`` in place of a hello, return the answer."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            url + PEER_PATH,
            timeout=aiohttp.ClientWSTimeout(ws_close=5),
            ssl=client_ssl(ca) if ca is not None else True,
        ) as ws,
    ):
        if isinstance(first, bytes):
            await ws.send_bytes(first)
        else:
            await ws.send_str(first)
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        answer: dict[str, Any] = json.loads(msg.data)
        closing = await ws.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closing
        return answer


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        ("", "malformed"),
        ("{not json", "malformed"),
        ("[1, 2]", "malformed"),
        ('{"type": "hello"}', "malformed"),
        ('{"type": "hello", "protocol": "geostore-peer", "version": true}', "malformed"),
        ("x" * 10_000, "malformed"),
        (encode_batch([b"\x00" * 8]), "malformed"),
        (hello_text("another-cluster", NodeId("n9"), NodeId("n1")), "wrong_cluster"),
        (hello_text("fuzz", NodeId("n9"), NodeId("n2")), "wrong_destination"),
    ],
    ids=["empty", "not-json", "array", "no-fields", "bool-version", "huge", "binary", "cluster",
         "destination"],
)  # fmt: skip
def test_peer_socket_refuses_malformed_hellos(
    shared_node: NodeThread, first: str | bytes, reason: str
) -> None:
    answer = asyncio.run(_peer_probe(shared_node.url, first, shared_node.ca))
    assert answer["type"] == "refused" and answer["reason"] == reason
    r = shared_node.session.get(shared_node.url + PEER_PATH, timeout=5)  # not a WebSocket
    assert 400 <= r.status_code < 500
    assert shared_node.session.get(shared_node.url + "/v1/health", timeout=5).status_code == 200
    assert shared_node.node.data_group.is_leader
