"""geostore.codec: the wire and disk encoding layer.

- messages: frozen dataclasses with a type tag and schema version, as canonical CBOR;
- framing: length prefix + checksums for streams and files;
- blocks: opaque, checksummed event blocks that no node re-encodes;
- compression: zstandard with optional trained dictionaries, bomb-proof;
- columnar: batches of rows laid out by column for better compression;
- cbor: plain CBOR values (``dumps_plain``, ``dumps_canonical``, ``loads_plain``) with the
  same limits and totality, for bodies and documents that are not wire messages.

Every decoder is total: any byte string gives a value or exactly one ``CodecError``, within
the bounds of a :class:`CodecLimits`.
"""

from geostore.codec.blocks import decode_events, encode_events, open_block, seal_block
from geostore.codec.cbor import dumps_canonical, dumps_plain, loads_plain
from geostore.codec.columnar import decode_columnar, encode_columnar
from geostore.codec.compression import (
    CompressionDictionary,
    compress,
    decompress,
    dictionary_id_of,
    train_dictionary,
)
from geostore.codec.framing import FrameDecoder, decode_frame, encode_frame
from geostore.codec.limits import (
    DEFAULT_LIMITS,
    CodecLimits,
    IncompleteFrame,
    UnknownDictionaryError,
)
from geostore.codec.messages import (
    decode_message,
    encode_message,
    registered_messages,
    wire_message,
)
from geostore.errors import CodecError

__all__ = [
    "DEFAULT_LIMITS",
    "CodecError",
    "CodecLimits",
    "CompressionDictionary",
    "FrameDecoder",
    "IncompleteFrame",
    "UnknownDictionaryError",
    "compress",
    "decode_columnar",
    "decode_events",
    "decode_frame",
    "decode_message",
    "decompress",
    "dictionary_id_of",
    "dumps_canonical",
    "dumps_plain",
    "encode_columnar",
    "encode_events",
    "encode_frame",
    "encode_message",
    "loads_plain",
    "open_block",
    "registered_messages",
    "seal_block",
    "train_dictionary",
    "wire_message",
]
