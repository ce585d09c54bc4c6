"""Decoding limits and the codec's own error types.

Every decoder in this package takes a :class:`CodecLimits` so that bytes from a peer, a
client or a damaged disk can never make a node allocate, recurse or inflate without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from geostore.errors import CodecError

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class CodecLimits:
    """Bounds applied while decoding untrusted bytes.

    ``frame_bytes_max`` bounds one frame's payload and one sealed block; ``decompressed_bytes_max``
    bounds what one compressed batch may inflate to; ``depth_max`` bounds CBOR container and tag
    nesting; ``items_max`` bounds the total number of CBOR data items in one decoded document
    (every array element, map key, map value and tag counts one).
    """

    frame_bytes_max: int = 16 * MIB
    decompressed_bytes_max: int = 64 * MIB
    depth_max: int = 32
    items_max: int = 1_000_000

    def __post_init__(self) -> None:
        assert 0 <= self.frame_bytes_max <= 0xFFFF_FFFF, "frame lengths are u32 on the wire"
        assert 0 <= self.decompressed_bytes_max <= 0xFFFF_FFFF, "raw lengths are u32 on the wire"
        assert self.depth_max >= 1
        assert self.items_max >= 1


DEFAULT_LIMITS = CodecLimits()


class IncompleteFrame(CodecError):
    """The buffer holds a valid prefix of a frame: read at least ``needed_bytes`` more."""

    def __init__(self, needed_bytes: int) -> None:
        super().__init__(f"incomplete frame: {needed_bytes} more bytes needed", needed=needed_bytes)
        self.needed_bytes = needed_bytes


class UnknownDictionaryError(CodecError):
    """Compressed data names a dictionary id the caller did not supply."""

    def __init__(self, dict_id: int) -> None:
        super().__init__(f"unknown compression dictionary id {dict_id}", dict_id=dict_id)
        self.dict_id = dict_id
