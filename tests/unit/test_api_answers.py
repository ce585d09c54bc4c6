"""The hand-written JSON answer of a one-batch append is byte for byte what the generic
JSON answer path writes, and the metrics' prebuilt label keys count like labels do."""

from __future__ import annotations

from geostore.ids import Epoch, PartitionId, Seq, StreamName
from geostore.runtime.api import append_answer_json
from geostore.runtime.http import _JSON_ENCODER, make_token
from geostore.runtime.metrics import Counter, label_key
from geostore.store import AppendResult


def _generic(result: AppendResult, token: str) -> bytes:
    item = result.to_json()
    if result.duplicate:
        item["duplicate"] = True
    return _JSON_ENCODER.encode({"results": [item], "token": token}).encode()


def test_the_hand_written_append_answer_matches_the_encoder() -> None:
    cases = [
        AppendResult(StreamName("s"), PartitionId(0), Seq(1), Seq(1), Epoch(0)),
        AppendResult(StreamName("x"), PartitionId(7), Seq(10), Seq(12), Epoch(3), duplicate=True),
        AppendResult(
            StreamName('q"uo\\te'), PartitionId(2**31), Seq(2**62), Seq(2**63 - 1), Epoch(2**40)
        ),
    ]
    for res in cases:
        token = make_token(res.stream, [(res.partition, res.epoch, res.last_seq)])
        assert append_answer_json(res, token) == _generic(res, token), res


def test_a_prebuilt_label_key_counts_the_same_series_as_labels() -> None:
    by_labels, by_key = Counter("a_total", "a"), Counter("a_total", "a")
    key = label_key(status="200", route="/v1/x")
    for _ in range(3):
        by_labels.inc(route="/v1/x", status="200")
        by_key.inc_key(key)
    by_labels.inc(5)
    by_key.inc_key((), 5)
    assert by_labels.render() == by_key.render()
    assert 'a_total{route="/v1/x",status="200"} 3' in by_key.render()


def test_a_token_is_the_compact_json_of_its_stream_and_parts() -> None:
    import base64
    import json

    for parts in ([(0, 1, 2)], [(0, 1, 2), (3, 0, 9)]):
        token = make_token('s"x', parts)
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert raw == json.dumps({"s": 's"x', "p": parts}, separators=(",", ":")).encode()
