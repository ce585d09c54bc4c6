"""Proves the error catalogue is complete and that errors render the documented body."""

from __future__ import annotations

from pathlib import Path

from geostore.errors import HTTP_STATUS, ApiError, ConfigError, ErrorCode

ROOT = Path(__file__).resolve().parents[2]


def test_every_code_has_a_status() -> None:
    missing = [c for c in ErrorCode if c not in HTTP_STATUS]
    assert not missing, f"codes without an HTTP status: {missing}"
    assert all(400 <= s <= 599 for s in HTTP_STATUS.values())


def test_body_shape() -> None:
    err = ApiError(ErrorCode.UNKNOWN_STREAM, "no stream 'x'", stream="x")
    assert err.http_status == 404
    assert err.to_body() == {
        "error": {"code": "unknown_stream", "message": "no stream 'x'", "stream": "x"}
    }


def test_config_error_names_file_field_and_reason() -> None:
    err = ConfigError("a.toml", "raft.tick_ms", "must be positive")
    assert str(err) == "a.toml: raft.tick_ms: must be positive"
    assert err.to_body()["error"]["field"] == "raft.tick_ms"


def test_api_docs_list_every_client_facing_code() -> None:
    doc = (ROOT / "docs" / "api.md").read_text()
    internal = {ErrorCode.INTERNAL, ErrorCode.STORAGE, ErrorCode.CONFIG, ErrorCode.CODEC}
    undocumented = [c.value for c in ErrorCode if c not in internal and f"`{c.value}`" not in doc]
    assert not undocumented, f"docs/api.md does not list: {undocumented}"
