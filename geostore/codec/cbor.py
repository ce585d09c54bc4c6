"""Bounded, total CBOR decoding and the two encodings geostore uses.

Theory of operation:

- ``dumps_canonical`` (sorted map keys, shortest ints and floats, definite lengths) is for
  headers and control messages, where equal values must give equal bytes. ``dumps_plain`` skips
  the key sort: it is for event payloads, which are encoded once and then only carried.
- ``loads_plain`` turns untrusted bytes into plain values (int, float, str, bytes, bool, None,
  list, dict, plus CBOR's undefined and simple values) or raises exactly one ``CodecError``.
  Semantic tags are refused, except the bignums (tags 2 and 3, plain ints): cbor2 would
  otherwise build datetimes, regexes, MIME messages, shared (possibly cyclic) references or
  bigfloats whose exponent costs unbounded CPU. Indefinite lengths and duplicate map keys are
  refused too: our encoders never write them.
- Limits: cbor2 (6.x) enforces ``max_depth`` natively and reads declared lengths
  incrementally (a header declaring 2**40 items does not preallocate). The total item count
  needs no check when the input is at most ``items_max`` bytes, since every CBOR data item
  takes at least one byte; longer inputs get an iterative pre-scan of the item headers that
  stops at the first count or depth over the limit, before cbor2 builds any object.
- Trailing bytes after the first data item are an error (a value followed by garbage is
  corruption, not a value).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import cbor2

from geostore.codec.limits import CodecLimits
from geostore.errors import CodecError

#: Tags cbor2 6.x decodes natively (probed over tags 0..70000 and the registered large ones).
_BUILTIN_TAGS = (0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261)
_BUILTIN_TAGS_LARGE = (1004, 43000, 55799)


class _RefusedTag(Exception):
    pass


def _refuse_semantic(value: object, immutable: bool) -> object:
    raise _RefusedTag("semantic tags are not accepted")


def _refuse_tag(tag: cbor2.CBORTag, immutable: bool) -> object:
    raise _RefusedTag(f"CBOR tag {tag.tag} is not accepted")


_SEMANTIC_OVERRIDES: dict[int, Callable[[Any, bool], Any]] = {
    tag: _refuse_semantic for tag in _BUILTIN_TAGS + _BUILTIN_TAGS_LARGE
}


def dumps_canonical(value: object) -> bytes:
    """Canonical CBOR (RFC 8949 section 4.2 as cbor2 implements it). Raises CodecError."""
    try:
        return cbor2.dumps(value, canonical=True)
    except Exception as exc:  # cbor2 raises encode, type, value and overflow errors
        raise CodecError(f"cannot encode value: {exc}") from exc


def dumps_plain(value: object) -> bytes:
    """CBOR without the canonical key sort: cheaper, for payloads encoded once. Raises CodecError."""
    try:
        return cbor2.dumps(value)
    except Exception as exc:
        raise CodecError(f"cannot encode value: {exc}") from exc


def loads_plain(data: bytes | bytearray | memoryview, limits: CodecLimits) -> Any:
    """Decode exactly one CBOR data item from ``data`` within ``limits``, or raise CodecError."""
    try:
        if len(data) > limits.items_max:
            _prescan(data, limits)
        stream = io.BytesIO(data)
        decoder = _decoders.pop(limits.depth_max, None) or _new_decoder(limits.depth_max)
        decoder.fp = stream
        value = decoder.decode()
        decoder.fp = _EMPTY  # do not keep the input alive
        # Returned to the cache only after a clean decode: a decoder that raised is dropped.
        _decoders[limits.depth_max] = decoder
        # cbor2 seeks the stream back over its read-ahead, so tell() is the end of the item.
        if stream.tell() != len(data):
            raise CodecError(f"{len(data) - stream.tell()} trailing bytes after the CBOR value")
        return value
    except CodecError:
        raise
    except Exception as exc:  # totality: whatever cbor2 or a hook raised becomes one CodecError
        raise CodecError(f"malformed CBOR: {exc}") from exc


# Building a CBORDecoder (with its tag overrides) costs more than decoding a small message, so
# one per depth limit is kept and pointed at each input in turn. Like the zstd contexts, they
# are not thread-safe: the codec is used from one thread at a time.
_decoders: dict[int, cbor2.CBORDecoder] = {}
_EMPTY = io.BytesIO(b"")


def _new_decoder(depth_max: int) -> cbor2.CBORDecoder:
    return cbor2.CBORDecoder(
        _EMPTY,
        tag_hook=_refuse_tag,
        semantic_decoders=_SEMANTIC_OVERRIDES,
        max_depth=depth_max,
        allow_indefinite=False,
        allow_duplicate_keys=False,
    )


_ARG_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}


def _leaf_sizes() -> bytes:
    """For each initial byte, the whole size of an item with no children whose size the
    initial byte alone fixes (ints, simple values, floats, short strings); 0 otherwise."""
    table = bytearray(256)
    for initial in range(256):
        major, info = initial >> 5, initial & 31
        if major in (0, 1, 7):
            if info < 24:
                table[initial] = 1
            elif info in _ARG_BYTES:
                table[initial] = 1 + _ARG_BYTES[info]
        elif major in (2, 3) and info < 24:
            table[initial] = 1 + info
    return bytes(table)


_LEAF_SIZES = _leaf_sizes()


def _prescan(data: bytes | bytearray | memoryview, limits: CodecLimits) -> None:
    """Walk the item headers iteratively, refusing too many items or too deep nesting.

    Every item but the root is counted in its container's declared size, so the total is
    1 + the sum of declared sizes: each is checked against the limit as soon as it is read,
    so a header declaring a billion elements is refused in O(1). Leaves whose size the
    initial byte fixes cost one table lookup. Raises CodecError.
    """
    view = data if isinstance(data, bytes) else memoryview(data).cast("B")
    size = len(view)
    leaf_sizes = _LEAF_SIZES
    pos = 0
    total = 1
    remaining = 1  # items still expected at the current nesting level
    stack: list[int] = []  # what remains at each enclosing level
    while True:
        while remaining == 0:
            if not stack:
                if pos != size:
                    raise CodecError(f"{size - pos} trailing bytes after the CBOR value")
                return
            remaining = stack.pop()
        if pos >= size:
            raise CodecError("malformed CBOR: truncated")
        initial = view[pos]
        remaining -= 1
        leaf = leaf_sizes[initial]
        if leaf:
            pos += leaf
            continue
        major, info = initial >> 5, initial & 31
        if info < 24:
            arg = info
            pos += 1
        else:
            width = _ARG_BYTES.get(info)
            if width is None:
                raise CodecError("malformed CBOR: indefinite length or reserved header")
            if pos + 1 + width > size:
                raise CodecError("malformed CBOR: truncated")
            arg = int.from_bytes(view[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width
        if major == 2 or major == 3:
            pos += arg
        elif major >= 4:  # array, map, tag (a tag's argument is its number: it wraps one item)
            count = arg if major == 4 else (arg * 2 if major == 5 else 1)
            total += count
            if total > limits.items_max:
                raise CodecError(f"CBOR document has more than {limits.items_max} items")
            if count:
                stack.append(remaining)
                if len(stack) > limits.depth_max:
                    raise CodecError(f"CBOR nesting deeper than {limits.depth_max}")
                remaining = count
