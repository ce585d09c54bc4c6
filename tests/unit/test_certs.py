"""Proves certificate generation: `certs init` writes a CA and one certificate per node with
owner-only permissions and the node identity in a URI SAN signed by the CA, refuses to
overwrite a CA without --force, ensure_certs keeps the CA and only fills gaps, and loading a
node's TLS refuses a certificate that names another node."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from geostore.cli.main import main
from geostore.config.topology import make_topology
from geostore.errors import ConfigError
from geostore.transport.certs import (
    CertsExistError,
    ensure_certs,
    init_certs,
    load_node_tls,
    node_files,
    parse_identity,
    peer_identity,
)

TOPOLOGY_TOML = """\
name = "demo"

[[regions]]
name = "eu"
nodes = ["eu-1", "eu-2"]

[[regions]]
name = "us"
nodes = ["us-1"]

[[links]]
a = "eu"
b = "us"
rtt_ms_p50 = 80
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _uris(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def test_cli_init_writes_owner_only_files_and_refuses_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topo = tmp_path / "topo.toml"
    topo.write_text(TOPOLOGY_TOML)
    d = tmp_path / "certs"
    argv = ["certs", "init", "--topology", str(topo), "--dir", str(d), "--client", "op"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    names = sorted(p.name for p in d.iterdir())
    assert names == sorted(
        [
            "ca.crt",
            "ca.key",
            "client-op.crt",
            "client-op.key",
            *(f"node-{n}.{ext}" for n in ("eu-1", "eu-2", "us-1") for ext in ("crt", "key")),
        ]
    )
    for name in names:
        assert f"wrote {d / name}" in out
        assert _mode(d / name) == 0o600
    assert _mode(d) == 0o700
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    for node in ("eu-1", "eu-2", "us-1"):
        cert = x509.load_pem_x509_certificate(node_files(d, node)[0].read_bytes())
        assert _uris(cert) == [f"geostore://demo/node/{node}"]
        cert.verify_directly_issued_by(ca)
    client = x509.load_pem_x509_certificate((d / "client-op.crt").read_bytes())
    assert _uris(client) == ["geostore://demo/client/op"]

    before = (d / "ca.crt").read_bytes()
    assert main(argv) == 1
    assert "exists already" in capsys.readouterr().err
    assert (d / "ca.crt").read_bytes() == before
    assert main([*argv, "--force", "--cluster-id", "other"]) == 0
    assert (d / "ca.crt").read_bytes() != before
    cert = x509.load_pem_x509_certificate(node_files(d, "us-1")[0].read_bytes())
    assert _uris(cert) == ["geostore://other/node/us-1"]


def test_ensure_certs_keeps_the_ca_and_fills_gaps(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    small = make_topology({"r1": ["a", "b"]}, 0.0, name="c1")
    first = ensure_certs(small, d)
    assert {p.name for p in first.created} >= {"ca.crt", "ca.key", "node-a.crt", "node-b.key"}
    ca_before = (d / "ca.crt").read_bytes()
    a_before = node_files(d, "a")[0].read_bytes()
    grown = make_topology({"r1": ["a", "b", "c"]}, 0.0, name="c1")
    second = ensure_certs(grown, d)
    assert sorted(p.name for p in second.created) == ["node-c.crt", "node-c.key"]
    assert (d / "ca.crt").read_bytes() == ca_before
    assert node_files(d, "a")[0].read_bytes() == a_before
    assert load_node_tls(d, "c").identity.uri == "geostore://c1/node/c"
    with pytest.raises(CertsExistError):
        init_certs(grown, d)
    with pytest.raises(ConfigError, match="belongs to cluster 'c1'"):
        ensure_certs(grown, d, "c2")


def test_load_node_tls_checks_the_identity(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    init_certs(make_topology({"r1": ["a", "b"]}, 0.0, name="c1"), d)
    tls = load_node_tls(d, "a")
    assert (tls.cluster_id, tls.node_id) == ("c1", "a")
    # Node b's files put where a's are expected: refused, not served under a's name.
    for src, dst in zip(node_files(d, "b"), node_files(d, "a"), strict=True):
        dst.write_bytes(src.read_bytes())
    with pytest.raises(ConfigError, match="does not name node 'a'"):
        load_node_tls(d, "a")
    with pytest.raises(ConfigError):
        load_node_tls(d, "zzz")


def test_identity_parsing() -> None:
    assert parse_identity("geostore://c1/node/a") is not None
    for bad in ("https://c1/node/a", "geostore://c1/node", "geostore://c1/admin/a", "geostore://"):
        assert parse_identity(bad) is None
    san = (("DNS", "localhost"), ("URI", "geostore://c1/node/a"))
    ident = peer_identity({"subjectAltName": san})
    assert ident is not None and ident.name == "a"
    assert peer_identity(None) is None and peer_identity({}) is None
    two = (("URI", "geostore://c1/node/a"), ("URI", "geostore://c1/node/b"))
    assert peer_identity({"subjectAltName": two}) is None  # ambiguous: no identity
