"""Proves the peer-link wire format round-trips batches, rejects every malformed frame and
handshake with a typed error, refuses mismatched hellos for the right reason, and that the
reconnect backoff grows, stays within its bounds and is fixed by the seed."""

from __future__ import annotations

import json
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geostore.ids import NodeId
from geostore.transport.settings import TransportSettings
from geostore.transport.wire import (
    BATCH_HEADER_BYTES,
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    FrameError,
    HandshakeRefused,
    RefusalReason,
    backoff_delay_s,
    check_answer,
    check_hello,
    decode_batch,
    encode_batch,
    hello_text,
    parse_hello,
    refusal_text,
    welcome_text,
)

A = NodeId("a")
B = NodeId("b")


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=40))
def test_batch_round_trips(messages: list[bytes]) -> None:
    assert decode_batch(encode_batch(messages)) == messages


@given(st.lists(st.binary(max_size=50), min_size=1, max_size=10), st.data())
def test_any_truncation_or_extension_is_refused(messages: list[bytes], data: st.DataObject) -> None:
    frame = encode_batch(messages)
    cut = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    with pytest.raises(FrameError):
        decode_batch(frame[:cut])
    extra = data.draw(st.binary(min_size=1, max_size=8))
    with pytest.raises(FrameError):
        decode_batch(frame + extra)


@given(st.binary(max_size=200))
def test_garbage_gives_messages_or_frame_error(garbage: bytes) -> None:
    try:
        out = decode_batch(garbage)
    except FrameError:
        return
    assert encode_batch(out) == garbage


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x01\x00\x00",
        b"\x02" + struct.pack(">I", 1) + struct.pack(">I", 0),  # unknown kind
        b"\x01" + struct.pack(">I", 0),  # empty batch
        b"\x01" + struct.pack(">I", 0xFFFFFFFF) + b"\x00" * 8,  # absurd count
        b"\x01" + struct.pack(">I", 1) + struct.pack(">I", 10) + b"abc",  # short message
    ],
)
def test_malformed_frames_are_refused(frame: bytes) -> None:
    with pytest.raises(FrameError):
        decode_batch(frame)


def test_hello_round_trips_and_passes_its_checks() -> None:
    hello = parse_hello(hello_text("c1", A, B))
    assert (hello.protocol, hello.version) == (PROTOCOL_NAME, PROTOCOL_VERSION)
    assert (hello.cluster_id, hello.node_id, hello.to) == ("c1", A, B)
    check_hello(hello, "c1", B)


def _hello(**override: object) -> str:
    obj: dict[str, object] = {
        "type": "hello",
        "protocol": PROTOCOL_NAME,
        "version": PROTOCOL_VERSION,
        "cluster_id": "c1",
        "node_id": "a",
        "to": "b",
    }
    obj.update(override)
    return json.dumps(obj)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_hello(cluster_id="c2"), RefusalReason.WRONG_CLUSTER),
        (_hello(to="c"), RefusalReason.WRONG_DESTINATION),
        (_hello(version=PROTOCOL_VERSION + 1), RefusalReason.WRONG_VERSION),
        (_hello(protocol="http"), RefusalReason.WRONG_PROTOCOL),
        (_hello(version=True), RefusalReason.MALFORMED),
        (_hello(node_id=7), RefusalReason.MALFORMED),
        (_hello(type="welcome"), RefusalReason.MALFORMED),
        ("[1, 2]", RefusalReason.MALFORMED),
        ("{not json", RefusalReason.MALFORMED),
        (" " * 5000, RefusalReason.MALFORMED),
    ],
)
def test_bad_hellos_are_refused_with_their_reason(text: str, reason: RefusalReason) -> None:
    with pytest.raises(HandshakeRefused) as info:
        check_hello(parse_hello(text), "c1", B)
    assert info.value.reason is reason


def test_dialer_accepts_only_the_welcome_of_the_node_it_meant() -> None:
    check_answer(welcome_text("c1", B), "c1", B)
    with pytest.raises(HandshakeRefused) as info:
        check_answer(welcome_text("c1", NodeId("c")), "c1", B)
    assert info.value.reason is RefusalReason.WRONG_PEER
    with pytest.raises(HandshakeRefused) as info:
        check_answer(welcome_text("c2", B), "c1", B)
    assert info.value.reason is RefusalReason.WRONG_PEER


def test_dialer_reports_the_refusal_reason() -> None:
    with pytest.raises(HandshakeRefused) as info:
        check_answer(refusal_text(RefusalReason.WRONG_CLUSTER, "nope"), "c1", B)
    assert info.value.reason is RefusalReason.WRONG_CLUSTER
    assert info.value.message == "nope"
    with pytest.raises(HandshakeRefused) as info:
        check_answer('{"type": "refused", "reason": "martian"}', "c1", B)
    assert info.value.reason is RefusalReason.MALFORMED


def test_backoff_grows_to_its_cap_with_jitter_fixed_by_the_seed() -> None:
    delays = [backoff_delay_s(n, 50, 2000, random.Random(7)) for n in range(12)]
    for n, d in enumerate(delays):
        cap_s = min(2000, 50 * 2**n) / 1000
        assert cap_s / 2 <= d <= cap_s
    assert delays[0] < 0.05 < delays[3]
    assert all(d <= 2.0 for d in delays)
    assert backoff_delay_s(1000, 50, 2000, random.Random(7)) <= 2.0
    again = [backoff_delay_s(n, 50, 2000, random.Random(7)) for n in range(12)]
    assert again == delays
    rng = random.Random(1)
    spread = {backoff_delay_s(5, 50, 2000, rng) for _ in range(20)}
    assert len(spread) > 1, "jitter must vary between draws"


def test_settings_refuse_a_batch_that_cannot_fit_a_frame() -> None:
    TransportSettings(batch_bytes_max=1000, frame_bytes_max=1000 + BATCH_HEADER_BYTES + 256 * 4)
    with pytest.raises(AssertionError):
        TransportSettings(batch_bytes_max=1000, frame_bytes_max=1000)
