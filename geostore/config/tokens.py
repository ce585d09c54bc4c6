"""Client bearer tokens: the token file, and who a request's ``Authorization`` header is.

Theory of operation
-------------------
A token file (TOML) lists the tokens a cluster accepts::

    [[tokens]]
    name = "ingest"                       # who it is, shown in logs and 403 answers
    sha256 = "3f0c...e1"                  # hex SHA-256 of the secret, never the secret
    roles = ["read", "write"]             # any of read, write, admin

A client sends ``Authorization: Bearer <secret>``. :meth:`TokenTable.authorize` hashes the
presented secret and compares the digest with every entry's in constant time
(:func:`hmac.compare_digest`, all entries, no early exit), so neither the timing nor the file
reveals a secret: a leaked token file lets no one in. Roles are independent (``admin`` does
not imply ``write``): a token lists every role it needs.

Failures are :class:`Unauthorized` (401: no token, not a bearer token, unknown token) and
:class:`Forbidden` (403: a known token without the role). Their messages never contain the
presented secret or its hash, so they can be logged and answered as they are.

Pure: parsing and hashing only; minting a secret (randomness) is the CLI's job.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from geostore.config.topology import decode_toml, read_text
from geostore.errors import ConfigError, ErrorCode, GeostoreError

ROLES = ("read", "write", "admin")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
#: Longest Authorization header value looked at; longer is refused before hashing.
HEADER_BYTES_MAX = 4096


class AuthError(GeostoreError):
    """A request that may not proceed (401 or 403, from the error catalogue)."""

    code = ErrorCode.UNAUTHORIZED


class Unauthorized(AuthError):
    """No valid token (401). Answer with ``WWW-Authenticate: Bearer``."""

    code = ErrorCode.UNAUTHORIZED


class Forbidden(AuthError):
    """A valid token that lacks the role (403)."""

    code = ErrorCode.FORBIDDEN


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: the token's name and its roles."""

    name: str
    roles: frozenset[str]


@dataclass(frozen=True, slots=True)
class TokenEntry:
    name: str
    digest: bytes  # SHA-256 of the secret
    roles: frozenset[str]


def hash_secret(secret: str) -> str:
    """The hex SHA-256 stored in the token file for ``secret``."""
    return hashlib.sha256(secret.encode()).hexdigest()


def valid_token_name(name: str) -> bool:
    return _NAME_RE.fullmatch(name) is not None


def token_toml(name: str, digest_hex: str, roles: Iterable[str]) -> str:
    """One ``[[tokens]]`` table, to append to a token file."""
    roles = list(roles)
    assert _NAME_RE.fullmatch(name) and _HEX64_RE.fullmatch(digest_hex)
    assert roles and all(r in ROLES for r in roles)
    listed = ", ".join(f'"{r}"' for r in roles)
    return f'[[tokens]]\nname = "{name}"\nsha256 = "{digest_hex}"\nroles = [{listed}]\n'


def parse_roles(text: str, file: str = "<args>") -> tuple[str, ...]:
    """``"read,write"`` -> ``("read", "write")``; ConfigError on an unknown or no role."""
    roles = tuple(dict.fromkeys(r.strip() for r in text.split(",") if r.strip()))
    if not roles:
        raise ConfigError(file, "roles", "at least one role is needed")
    for r in roles:
        if r not in ROLES:
            raise ConfigError(file, "roles", f"unknown role {r!r} (one of {', '.join(ROLES)})")
    return roles


class TokenTable:
    """The accepted tokens. Immutable; build it with :func:`parse_tokens` or :func:`load_tokens`."""

    def __init__(self, entries: Iterable[TokenEntry]) -> None:
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self._entries)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header value; :class:`Unauthorized` if none."""
        if authorization is None or not authorization.strip():
            raise Unauthorized("a bearer token is required")
        if len(authorization) > HEADER_BYTES_MAX:
            raise Unauthorized("the Authorization header is too long")
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise Unauthorized("the Authorization header is not a bearer token")
        digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
        found: TokenEntry | None = None
        for entry in self._entries:  # every entry, so the time does not depend on which matched
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        if found is None:
            raise Unauthorized("the bearer token is not valid")
        return Principal(found.name, found.roles)

    def authorize(self, authorization: str | None, needed_role: str) -> Principal:
        """The principal, if its token holds ``needed_role``; else Unauthorized or Forbidden."""
        assert needed_role in ROLES, needed_role
        principal = self.authenticate(authorization)
        if needed_role not in principal.roles:
            raise Forbidden(
                f"token {principal.name!r} lacks the {needed_role!r} role",
                token=principal.name,
                role=needed_role,
            )
        return principal


def parse_tokens(text: str, file: str = "<string>") -> TokenTable:
    """The token table in ``text``; ConfigError naming the entry and field when invalid."""
    data = decode_toml(text, file)
    unknown = set(data) - {"tokens"}
    if unknown:
        raise ConfigError(file, sorted(unknown)[0], "unknown key (expected [[tokens]])")
    raw = data.get("tokens", [])
    if not isinstance(raw, list):
        raise ConfigError(file, "tokens", "must be an array of tables ([[tokens]])")
    entries: list[TokenEntry] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for i, item in enumerate(raw):
        where = f"tokens[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(file, where, "must be a table")
        extra = set(item) - {"name", "sha256", "roles"}
        if extra:
            raise ConfigError(file, f"{where}.{sorted(extra)[0]}", "unknown key")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ConfigError(file, f"{where}.name", "must be a name of letters, digits, _.@-")
        if name in names:
            raise ConfigError(file, f"{where}.name", f"duplicate token name {name!r}")
        digest_hex = item.get("sha256")
        if not isinstance(digest_hex, str) or not _HEX64_RE.fullmatch(digest_hex):
            raise ConfigError(
                file, f"{where}.sha256", "must be 64 lowercase hex digits (SHA-256 of the secret)"
            )
        digest = bytes.fromhex(digest_hex)
        if digest in digests:
            raise ConfigError(file, f"{where}.sha256", "the same secret is listed twice")
        roles = item.get("roles")
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
            raise ConfigError(file, f"{where}.roles", "must be a non-empty list of role names")
        for r in roles:
            if r not in ROLES:
                raise ConfigError(file, f"{where}.roles", f"unknown role {r!r}")
        names.add(name)
        digests.add(digest)
        entries.append(TokenEntry(name, digest, frozenset(roles)))
    return TokenTable(entries)


def load_tokens(path: str | Path) -> TokenTable:
    """Read and parse a token file; ConfigError when it is missing or invalid."""
    return parse_tokens(read_text(path), str(path))
