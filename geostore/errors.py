"""Typed errors of geostore and the fixed catalogue of API error codes.

Programmer errors are assertions. Operating errors (bad input, disk full, timeouts,
bad peer input) are the exceptions below, handled at the boundary that can answer them.
Every error carries a stable ``code`` from :class:`ErrorCode` and, where it reaches an
HTTP client, the status to answer with.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(enum.StrEnum):
    """The documented catalogue of error codes (docs/api.md lists each with its status)."""

    MALFORMED = "malformed"
    UNAUTHORIZED = "unauthorized"  #: no valid credentials
    FORBIDDEN = "forbidden"  #: valid credentials without the needed role
    NOT_FOUND = "not_found"  #: no such route
    METHOD_NOT_ALLOWED = "method_not_allowed"
    SCHEMA_VIOLATION = "schema_violation"
    TOO_LARGE = "too_large"
    UNKNOWN_STREAM = "unknown_stream"
    UNKNOWN_PARTITION = "unknown_partition"
    FIELD_NOT_INDEXED = "field_not_indexed"
    CONFLICT = "conflict"
    NOT_LEADER = "not_leader"
    NO_QUORUM = "no_quorum"
    WRONG_REGION = "wrong_region"
    FENCED = "fenced"
    MOVING = "moving"
    SUPERSEDED_EPOCH = "superseded_epoch"
    REPLICATION_LAG = "replication_lag"  #: the stream's RPO bound would be exceeded
    WAIT_TIMEOUT = "wait_timeout"
    LEASE_LAPSED = "lease_lapsed"
    LEASE_HELD = "lease_held"  #: a failover must wait: the lost region may still hold its lease
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    CODEC = "codec_error"
    STORAGE = "storage_error"
    CONFIG = "config_error"


#: HTTP status for each code, used by the API layer.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.MALFORMED: 400,
    ErrorCode.SCHEMA_VIOLATION: 400,
    ErrorCode.FIELD_NOT_INDEXED: 400,
    ErrorCode.CODEC: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNKNOWN_STREAM: 404,
    ErrorCode.UNKNOWN_PARTITION: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.SUPERSEDED_EPOCH: 409,
    ErrorCode.WRONG_REGION: 421,
    ErrorCode.NOT_LEADER: 503,
    ErrorCode.NO_QUORUM: 503,
    ErrorCode.FENCED: 503,
    ErrorCode.MOVING: 503,
    ErrorCode.REPLICATION_LAG: 503,
    ErrorCode.LEASE_LAPSED: 503,
    ErrorCode.LEASE_HELD: 409,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.WAIT_TIMEOUT: 504,
    ErrorCode.INTERNAL: 500,
    ErrorCode.STORAGE: 500,
    ErrorCode.CONFIG: 500,
}


class GeostoreError(Exception):
    """Base of every operating error. ``details`` end up in the API error body."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def to_body(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` body of the HTTP API."""
        return {"error": {"code": str(self.code), "message": self.message, **self.details}}


class ApiError(GeostoreError):
    """An error answered to a client with an explicit code."""

    def __init__(self, code: ErrorCode, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.code = code


class CodecError(GeostoreError):
    """Bytes that do not decode: bad frame, checksum, type tag, version, size or nesting."""

    code = ErrorCode.CODEC


class ConfigError(GeostoreError):
    """A topology or config file that does not validate. Names the file, field and reason."""

    code = ErrorCode.CONFIG

    def __init__(self, file: str, field: str, reason: str) -> None:
        super().__init__(f"{file}: {field}: {reason}", file=file, field=field, reason=reason)
        self.file = file
        self.field = field
        self.reason = reason


class StorageError(GeostoreError):
    """Base of storage failures."""

    code = ErrorCode.STORAGE


class CorruptLogError(StorageError):
    """A record before the tail fails its checksum: the node must not start on it silently."""


class FormatVersionError(StorageError):
    """The data dir was written by another, incompatible format version."""


class DiskFullError(StorageError):
    """ENOSPC: writes are refused, reads keep working."""


class FsyncFailedError(StorageError):
    """An fsync failed. The log refuses every later write: retrying could lose data silently."""
