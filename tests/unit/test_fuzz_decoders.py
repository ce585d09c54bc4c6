"""Proves the decoders of what peers send hold against arbitrary and mutated input: the peer
frame decoder, the hello parser, the message codec (Raft messages and geo envelopes) and the
geo batch opener either return a value (which re-encodes to the same bytes where the format is
canonical) or raise their documented typed error, never anything else; they leave their input
as it was; and a geo Receiver fed damaged batches proposes nothing and keeps its watermark."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from geostore.codec import (
    CodecLimits,
    UnknownDictionaryError,
    decode_message,
    encode_message,
)
from geostore.errors import CodecError
from geostore.geo import (
    GeoBatch,
    GeoEntry,
    GeoEnvelope,
    LearnDictionary,
    ProposeBatch,
    Receiver,
    Watermark,
    make_batch,
)
from geostore.geo.batch import BatchError, open_batch
from geostore.geo.messages import CODEC_NONE, CODEC_ZSTD
from geostore.ids import Epoch, PartitionId, RegionId, Seq, StreamName
from geostore.transport.wire import (
    FrameError,
    HandshakeRefused,
    RefusalReason,
    check_answer,
    decode_batch,
    encode_batch,
    hello_text,
    parse_hello,
)

try:  # the runtime registers the Raft messages with the codec under their fixed tags
    from geostore.runtime.wire import PeerDecoder, register_raft_messages
except ImportError:  # pragma: no cover - the runtime is not importable in this checkout
    PeerDecoder = None  # type: ignore[assignment,misc]
    register_raft_messages = None  # type: ignore[assignment]

from geostore.ids import NodeId
from geostore.raft.messages import MESSAGE_TYPES

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = CodecLimits(items_max=10_000, depth_max=32, decompressed_bytes_max=1 << 20)
S, P, E = StreamName("s"), PartitionId(0), Epoch(3)
HOME, HERE = RegionId("home"), RegionId("here")


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few bytes flipped, inserted, deleted, or cut short."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x9F, 0xBF, 0xFB]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


def frames() -> st.SearchStrategy[bytes]:
    valid = st.lists(st.binary(max_size=40), min_size=1, max_size=6).map(encode_batch)
    return st.one_of(st.binary(max_size=200), valid, valid.flatmap(mutated))


# --- peer frames and the handshake ---------------------------------------------------------


@FUZZ
@given(frames())
def test_decode_batch_returns_messages_or_frame_error(frame: bytes) -> None:
    before = bytes(frame)
    try:
        messages = decode_batch(frame)
    except FrameError as err:
        assert err.message
        return
    finally:
        assert frame == before
    assert messages and encode_batch(messages) == frame  # the format is exact: no slack


def hellos() -> st.SearchStrategy[str]:
    valid = st.builds(
        hello_text, st.text(max_size=12), st.text(max_size=12).map(NodeId), st.just(NodeId("b"))
    )
    fields = st.dictionaries(
        st.sampled_from(["type", "protocol", "version", "cluster_id", "node_id", "to", "x"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    )
    as_json = fields.map(json.dumps)
    mangled = valid.flatmap(lambda t: mutated(t.encode())).map(
        lambda b: b.decode("utf-8", "replace")
    )
    return st.one_of(st.text(max_size=300), valid, as_json, mangled, st.just("x" * 5000))


@FUZZ
@given(hellos())
def test_parse_hello_returns_a_hello_or_refuses_as_malformed(text: str) -> None:
    try:
        hello = parse_hello(text)
    except HandshakeRefused as err:
        assert err.reason is RefusalReason.MALFORMED and err.message
        return
    assert all(isinstance(v, str) for v in (hello.protocol, hello.cluster_id, hello.node_id))
    assert type(hello.version) is int


@FUZZ
@given(hellos())
def test_check_answer_accepts_only_the_expected_welcome(text: str) -> None:
    with pytest.raises(HandshakeRefused):  # no hello, mangled or not, is a welcome
        check_answer(text, "c1", NodeId("b"))


# --- the message codec: Raft messages and geo envelopes ------------------------------------


def _entries(start: int, n: int) -> list[GeoEntry]:
    return [GeoEntry(Seq(start + i), 1, f"event-{start + i}".encode() * 3) for i in range(n)]


def _batch(start: int = 0, n: int = 3, codec: int = CODEC_ZSTD) -> GeoBatch:
    return make_batch(S, P, E, _entries(start, n), codec=codec)


def messages() -> st.SearchStrategy[Any]:
    geo = st.builds(
        lambda start, n, codec: GeoEnvelope(HOME, HERE, (_batch(start, n, codec),)),
        st.integers(0, 1000),
        st.integers(1, 5),
        st.sampled_from([CODEC_ZSTD, CODEC_NONE]),
    )
    kinds: list[st.SearchStrategy[Any]] = [geo]
    if register_raft_messages is not None:
        register_raft_messages()
        kinds += [st.from_type(cls) for cls in MESSAGE_TYPES]
    return st.one_of(*kinds)


def encoded() -> st.SearchStrategy[bytes]:
    valid = messages().map(encode_message)
    return st.one_of(st.binary(max_size=200), valid.flatmap(mutated))


@FUZZ
@given(encoded())
def test_decode_message_returns_a_message_or_codec_error(data: bytes) -> None:
    buf = bytearray(data)
    try:
        msg = decode_message(buf, LIMITS)
    except CodecError as err:
        assert err.message
        return
    finally:
        assert buf == data  # decoding never writes to its input
    assert dataclasses.is_dataclass(msg)
    assert decode_message(encode_message(msg), LIMITS) == msg


@pytest.mark.skipif(PeerDecoder is None, reason="geostore.runtime.wire is not importable")
@FUZZ
@given(encoded())
def test_peer_decoder_refuses_anything_but_peer_messages(data: bytes) -> None:
    assert PeerDecoder is not None
    decode = PeerDecoder(LIMITS)
    try:
        msg = decode(data)
    except CodecError:
        return
    assert type(msg) in (*MESSAGE_TYPES, GeoEnvelope)


# --- geo batches and the receiver ----------------------------------------------------------


_FIELDS = [f.name for f in dataclasses.fields(GeoBatch)]


@st.composite
def damaged_batches(draw: st.DrawFn) -> GeoBatch:
    """A valid batch with its payload mutated or one header field replaced."""
    batch = _batch(
        draw(st.integers(1, 50)),
        draw(st.integers(1, 4)),
        draw(st.sampled_from([CODEC_ZSTD, CODEC_NONE])),
    )
    if draw(st.booleans()):
        return dataclasses.replace(batch, payload=draw(mutated(batch.payload)))
    name = draw(st.sampled_from([n for n in _FIELDS if n not in ("stream", "payload")]))
    value = draw(st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-3, 70)))
    changed: dict[str, Any] = {name: value}
    return dataclasses.replace(batch, **changed)


def resealed(batch: GeoBatch) -> GeoBatch:
    """The same batch with a CRC that matches, so the checks past the CRC are reached."""
    from geostore.geo.batch import resealed

    try:
        return resealed(batch)
    except BatchError:
        return batch


@FUZZ
@given(damaged_batches(), st.booleans())
def test_open_batch_returns_entries_or_batch_error(batch: GeoBatch, reseal: bool) -> None:
    if reseal:
        batch = resealed(batch)
    try:
        entries = open_batch(batch, LIMITS)
    except (BatchError, UnknownDictionaryError) as err:
        assert err.message
        return
    total = sum(e.record_count for e in entries)
    assert total == batch.record_count and entries[0].seq == batch.src_start


@FUZZ
@given(st.lists(st.tuples(damaged_batches(), st.booleans()), min_size=1, max_size=4))
def test_receiver_ignores_damaged_batches(items: list[tuple[GeoBatch, bool]]) -> None:
    batches = [resealed(b) if reseal else b for b, reseal in items]
    for b in batches:
        try:
            open_batch(b, LIMITS)
        except (BatchError, UnknownDictionaryError):
            continue
        assume(False)  # the damage left a batch that opens: not garbage
    start = Watermark(E, Seq(0))
    receiver = Receiver(HERE, {(S, P): start}, limits=LIMITS)
    effects = receiver.on_envelope(GeoEnvelope(HOME, HERE, tuple(batches)), now_ms=0)
    assert not [e for e in effects if isinstance(e, ProposeBatch | LearnDictionary)]
    assert receiver.watermark(S, P) == start and receiver.pending(S, P) == 0
    # and a later intact batch is still taken from where the watermark stands
    effects = receiver.on_envelope(GeoEnvelope(HOME, HERE, (_batch(1, 2),)), now_ms=1)
    assert [e for e in effects if isinstance(e, ProposeBatch)]


def test_mutations_reach_every_outcome() -> None:
    """The generators are not vacuous: damaged input meets each kind of refusal."""
    with pytest.raises(FrameError):
        decode_batch(encode_batch([b"a"])[:-1])
    with pytest.raises(BatchError, match="checksum"):
        open_batch(dataclasses.replace(_batch(), payload=_batch().payload + b"x"), LIMITS)
    with pytest.raises(BatchError):
        open_batch(resealed(dataclasses.replace(_batch(), record_count=7)), LIMITS)
    with pytest.raises(CodecError):
        decode_message(encode_message(GeoEnvelope(HOME, HERE, (_batch(),)))[:-3], LIMITS)
