"""Proves the client token table: a good token yields its principal and roles, a missing,
malformed or wrong token is 401, a token without the role is 403, the secret never appears
in an error, invalid token files are refused with the entry named, and `certs token` stores
only the hash of the secret it prints once."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from geostore.cli.main import main
from geostore.config.tokens import (
    AuthError,
    Forbidden,
    Unauthorized,
    hash_secret,
    load_tokens,
    parse_roles,
    parse_tokens,
    token_toml,
)
from geostore.errors import ConfigError

SECRET_RW = "gst_reader-writer-secret-0123456789"
SECRET_ADMIN = "gst_admin-secret-abcdefghijklmnop"
TABLE_TEXT = token_toml("ingest", hash_secret(SECRET_RW), ["read", "write"]) + token_toml(
    "ops", hash_secret(SECRET_ADMIN), ["admin"]
)


def _no_secret(err: AuthError, secret: str) -> None:
    texts = [str(err), err.message, repr(err.to_body()), repr(err.details)]
    for text in texts:
        assert secret not in text
        assert hash_secret(secret) not in text


def test_good_token_gives_principal_with_roles() -> None:
    table = parse_tokens(TABLE_TEXT)
    p = table.authorize(f"Bearer {SECRET_RW}", "write")
    assert p.name == "ingest" and p.roles == frozenset({"read", "write"})
    assert table.authorize(f"bearer  {SECRET_ADMIN} ", "admin").name == "ops"


@pytest.mark.parametrize("header", [None, "", "   ", "Bearer", "Bearer   ", "Basic dXNlcjpwdw=="])
def test_missing_or_malformed_header_is_401(header: str | None) -> None:
    table = parse_tokens(TABLE_TEXT)
    with pytest.raises(Unauthorized) as info:
        table.authorize(header, "read")
    assert info.value.http_status == 401
    assert info.value.to_body()["error"]["code"] == "unauthorized"


def test_wrong_token_is_401_and_never_echoed() -> None:
    table = parse_tokens(TABLE_TEXT)
    wrong = SECRET_RW + "x"
    with pytest.raises(Unauthorized) as info:
        table.authorize(f"Bearer {wrong}", "read")
    assert info.value.http_status == 401
    _no_secret(info.value, wrong)
    with pytest.raises(Unauthorized):
        table.authorize("Bearer " + "y" * 10_000, "read")  # over the header bound


def test_token_lacking_role_is_403_naming_token_not_secret() -> None:
    table = parse_tokens(TABLE_TEXT)
    with pytest.raises(Forbidden) as info:
        table.authorize(f"Bearer {SECRET_RW}", "admin")
    err = info.value
    assert err.http_status == 403
    body = err.to_body()["error"]
    assert body["code"] == "forbidden" and body["token"] == "ingest" and body["role"] == "admin"
    _no_secret(err, SECRET_RW)
    # Roles are independent: admin does not imply read.
    with pytest.raises(Forbidden):
        table.authorize(f"Bearer {SECRET_ADMIN}", "read")


def test_empty_table_refuses_everything() -> None:
    with pytest.raises(Unauthorized):
        parse_tokens("").authorize(f"Bearer {SECRET_RW}", "read")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('[[tokens]]\nname = "a"\nsha256 = "abc"\nroles = ["read"]\n', "tokens[0].sha256"),
        (
            '[[tokens]]\nname = "a"\nsha256 = "' + "0" * 64 + '"\nroles = ["root"]\n',
            "tokens[0].roles",
        ),
        ('[[tokens]]\nname = "a"\nsha256 = "' + "0" * 64 + '"\nroles = []\n', "tokens[0].roles"),
        (
            '[[tokens]]\nname = "a b"\nsha256 = "' + "0" * 64 + '"\nroles = ["read"]\n',
            "tokens[0].name",
        ),
        ('[[tokens]]\nname = "a"\nsecret = "x"\n', "tokens[0].secret"),
        (
            token_toml("a", "0" * 64, ["read"]) + token_toml("a", "1" * 64, ["read"]),
            "tokens[1].name",
        ),
        (
            token_toml("a", "0" * 64, ["read"]) + token_toml("b", "0" * 64, ["read"]),
            "tokens[1].sha256",
        ),
        ("users = 1\n", "users"),
    ],
)
def test_invalid_token_files_name_the_field(text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_tokens(text, "t.toml")
    assert info.value.field == field


def test_parse_roles() -> None:
    assert parse_roles("read, write,read") == ("read", "write")
    with pytest.raises(ConfigError):
        parse_roles("read,root")
    with pytest.raises(ConfigError):
        parse_roles(" , ")


def test_certs_token_cli_stores_only_the_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tokens.toml"
    assert (
        main(["certs", "token", "--name", "ingest", "--roles", "read,write", "--file", str(path)])
        == 0
    )
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("gst_") and len(secret) > 30
    assert main(["certs", "token", "--name", "ops", "--roles", "admin", "--file", str(path)]) == 0
    secret_ops = capsys.readouterr().out.strip().splitlines()[-1]
    text = path.read_text()
    assert secret not in text and secret_ops not in text
    assert hash_secret(secret) in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    table = load_tokens(path)
    assert table.authorize(f"Bearer {secret}", "write").name == "ingest"
    assert table.authorize(f"Bearer {secret_ops}", "admin").name == "ops"
    # A duplicate name or an unknown role is refused and leaves the file alone.
    assert main(["certs", "token", "--name", "ops", "--roles", "read", "--file", str(path)]) == 1
    assert main(["certs", "token", "--name", "x", "--roles", "root", "--file", str(path)]) == 1
    assert path.read_text() == text
