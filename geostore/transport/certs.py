"""The cluster's certificates: a CA, one certificate per node, TLS contexts that use them.

Theory of operation
-------------------
A cluster has its own certificate authority (an EC P-256 key, self-signed). Every node gets
a certificate signed by it whose **identity** is a URI subject alternative name
``geostore://<cluster-id>/node/<node-id>``; operators may get client certificates with
``geostore://<cluster-id>/client/<name>``. DNS and IP SANs (localhost, 127.0.0.1, ::1 and the
node's host from the topology) are added so ordinary HTTPS clients can check the host name of
the client API, but **peer links never verify host names**: a peer link may cross a TCP
proxy (the WAN emulator), so the address dialed is the proxy's, not the node's. The dialer
instead checks that the certificate the server presented names the node it meant to reach,
and the acceptor checks that the certificate of the dialer names the node its hello claims
(:func:`peer_identity`). Trust comes from the CA alone: another cluster's CA, a self-signed
certificate or no certificate at all fail the TLS handshake or the identity check.

EC P-256 rather than Ed25519: both work for TLS 1.3 with the OpenSSL that Python links here,
but P-256 also works with every TLS 1.2 client and common tooling (curl, browsers), which
matters for the HTTPS client API served from the same port.

Files (all owner-only: the directory 0700, every file 0600) in one directory::

    ca.crt  ca.key                       the cluster CA (keep ca.key offline in production)
    node-<id>.crt  node-<id>.key         one pair per node of the topology
    client-<name>.crt  client-<name>.key optional operator client certificates

Handshake failures happen inside the TLS layer, before any HTTP handler runs, so the server
context is built with an :class:`ssl.SSLObject` subclass that reports each failed handshake
to a :class:`TlsRefusals` counter (counted per reason, logged at most once per interval).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import math
import os
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from geostore.config.topology import Topology
from geostore.errors import ConfigError
from geostore.ids import NodeId

log = logging.getLogger("geostore.transport")

IDENTITY_SCHEME = "geostore"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
DEFAULT_DAYS = 825
#: Names that always go into a node certificate, for HTTPS clients on this machine.
_LOCAL_NAMES = ("localhost",)
_LOCAL_IPS = ("127.0.0.1", "::1")


class CertsExistError(ConfigError):
    """``init`` would overwrite an existing CA (pass ``force`` to replace it)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate names: a node (``kind == "node"``) or a client of a cluster."""

    cluster_id: str
    kind: str
    name: str

    @property
    def uri(self) -> str:
        return f"{IDENTITY_SCHEME}://{self.cluster_id}/{self.kind}/{self.name}"


def parse_identity(uri: str) -> Identity | None:
    """The identity in a URI SAN, or None when it is not a geostore identity."""
    prefix = f"{IDENTITY_SCHEME}://"
    if not uri.startswith(prefix):
        return None
    parts = uri[len(prefix) :].split("/")
    if len(parts) != 3 or not all(parts) or parts[1] not in ("node", "client"):
        return None
    return Identity(parts[0], parts[1], parts[2])


def peer_identity(peercert: dict[str, Any] | None) -> Identity | None:
    """The geostore identity of a verified peer certificate (``getpeercert()``'s dict).

    None without a certificate, or when it carries no geostore URI SAN, or more than one
    (an ambiguous certificate is no identity at all).
    """
    if not peercert:
        return None
    found = [
        ident
        for kind, value in peercert.get("subjectAltName", ())
        if kind == "URI" and (ident := parse_identity(str(value))) is not None
    ]
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True, slots=True)
class CertPaths:
    """Where :func:`init_certs` put the files."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    nodes: dict[NodeId, tuple[Path, Path]]  # node id -> (cert, key)
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    created: tuple[Path, ...] = ()  # files written by this call


def node_files(directory: Path | str, node_id: str) -> tuple[Path, Path]:
    d = Path(directory)
    return d / f"node-{node_id}.crt", d / f"node-{node_id}.key"


def client_files(directory: Path | str, name: str) -> tuple[Path, Path]:
    d = Path(directory)
    return d / f"client-{name}.crt", d / f"client-{name}.key"


# --- generation ----------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the start, atomically (tmp + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it, but be explicit
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _new_ca(cluster_id: str, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "geostore"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"geostore cluster CA {cluster_id}"),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        # The cluster id travels in the CA too, so a directory can be checked against it.
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"{IDENTITY_SCHEME}://{cluster_id}/ca")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    identity: Identity,
    hosts: Iterable[str],
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    seen: set[str] = set()
    for host in (*hosts, *_LOCAL_NAMES, *_LOCAL_IPS):
        if host in seen:
            continue
        seen.add(host)
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if identity.kind == "node":
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)  # a node serves and dials
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "geostore"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{identity.kind} {identity.name}"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str]:
    ca_path, key_path = directory / CA_CERT, directory / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(directory), CA_CERT, f"cannot load the CA: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(str(key_path), "key", "the CA key is not an EC key")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    prefix = f"{IDENTITY_SCHEME}://"
    cluster = [
        u[len(prefix) : -len("/ca")] for u in uris if u.startswith(prefix) and u.endswith("/ca")
    ]
    if len(cluster) != 1:
        raise ConfigError(str(ca_path), "subjectAltName", "not a geostore cluster CA")
    return cert, key, cluster[0]


def _node_hosts(topology: Topology, node_id: NodeId) -> list[str]:
    host = topology.node(node_id).host
    return [host] if host else []


def init_certs(
    topology: Topology,
    directory: Path | str,
    cluster_id: str | None = None,
    *,
    days: int = DEFAULT_DAYS,
    force: bool = False,
    clients: Iterable[str] = (),
) -> CertPaths:
    """Create a new cluster CA in ``directory`` and a certificate for every node.

    ``cluster_id`` defaults to the topology's name (what the runtime uses). Raises
    :class:`CertsExistError` when a CA is already there, unless ``force``; see
    :func:`ensure_certs` for the on-the-fly variant that keeps an existing CA.
    """
    assert days >= 1
    cid = cluster_id or topology.name
    d = Path(directory)
    if ((d / CA_CERT).exists() or (d / CA_KEY).exists()) and not force:
        raise CertsExistError(
            str(d), CA_CERT, "a cluster CA exists already (use --force to replace it)"
        )
    _private_dir(d)
    ca_cert, ca_key = _new_ca(cid, days)
    _write_private(d / CA_KEY, _key_pem(ca_key))
    _write_private(d / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
    created = [d / CA_CERT, d / CA_KEY]
    return _issue_missing(topology, d, cid, ca_cert, ca_key, days, clients, created, replace=True)


def ensure_certs(
    topology: Topology,
    directory: Path | str,
    cluster_id: str | None = None,
    *,
    days: int = DEFAULT_DAYS,
    clients: Iterable[str] = (),
) -> CertPaths:
    """Make ``directory`` hold a CA and a certificate for every node, creating what is missing.

    For ``cluster up`` and ``node add``: a fresh directory gets a new CA; an existing one
    keeps its CA (which must belong to the same cluster id) and only nodes (or clients)
    without a certificate get one.
    """
    cid = cluster_id or topology.name
    d = Path(directory)
    if not (d / CA_CERT).exists():
        return init_certs(topology, d, cid, days=days, clients=clients)
    ca_cert, ca_key, ca_cluster = _load_ca(d)
    if ca_cluster != cid:
        raise ConfigError(
            str(d / CA_CERT), "cluster", f"the CA belongs to cluster {ca_cluster!r}, not {cid!r}"
        )
    _private_dir(d)
    return _issue_missing(topology, d, cid, ca_cert, ca_key, days, clients, [], replace=False)


def _issue_missing(
    topology: Topology,
    d: Path,
    cid: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    days: int,
    clients: Iterable[str],
    created: list[Path],
    *,
    replace: bool,
) -> CertPaths:
    nodes: dict[NodeId, tuple[Path, Path]] = {}
    wanted: list[tuple[Identity, list[str], tuple[Path, Path]]] = []
    for node_id in topology.node_ids():
        paths = node_files(d, node_id)
        nodes[node_id] = paths
        wanted.append((Identity(cid, "node", node_id), _node_hosts(topology, node_id), paths))
    client_paths: dict[str, tuple[Path, Path]] = {}
    for name in clients:
        paths = client_files(d, name)
        client_paths[name] = paths
        wanted.append((Identity(cid, "client", name), [], paths))
    for identity, hosts, (cert_path, key_path) in wanted:
        if not replace and cert_path.exists() and key_path.exists():
            continue
        cert, key = _issue(ca_cert, ca_key, identity, hosts, days)
        _write_private(key_path, _key_pem(key))
        _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        created += [cert_path, key_path]
    return CertPaths(
        dir=d,
        ca_cert=d / CA_CERT,
        ca_key=d / CA_KEY,
        nodes=nodes,
        clients=client_paths,
        created=tuple(created),
    )


# --- TLS contexts ----------------------------------------------------------------------------


class TlsRefusals:
    """Failed TLS handshakes on a server context, by reason; logged at most once per interval.

    Mutable and shared: the server context's SSL objects report here from the event loop.
    """

    def __init__(self, log_interval_s: float = 30.0) -> None:
        self.by_reason: dict[str, int] = {}
        self._log_interval_s = log_interval_s
        self._last_log = -math.inf
        self._hidden = 0

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def record(self, exc: ssl.SSLError) -> None:
        reason = str(exc.reason or type(exc).__name__).lower()
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._last_log < self._log_interval_s:
            self._hidden += 1
            return
        self._last_log, hidden, self._hidden = now, self._hidden, 0
        if hidden:
            log.warning(
                "refused a TLS connection: %s (%d similar since the last report)", reason, hidden
            )
        else:
            log.warning("refused a TLS connection: %s", reason)


def _counting_sslobject(refusals: TlsRefusals) -> type[ssl.SSLObject]:
    class CountingSSLObject(ssl.SSLObject):
        """Reports a failed handshake; asyncio drives the handshake through this method."""

        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                refusals.record(exc)
                raise

    return CountingSSLObject


def server_ssl_context(
    ca_file: Path | str,
    cert_file: Path | str,
    key_file: Path | str,
    *,
    require_client_cert: bool = True,
    refusals: TlsRefusals | None = None,
) -> ssl.SSLContext:
    """The context a node serves its port with (``web.TCPSite(..., ssl_context=...)``).

    ``require_client_cert`` (CERT_REQUIRED): a connection without a certificate from the
    cluster CA fails the handshake. With False (CERT_OPTIONAL) a client without any
    certificate gets through (for bearer-token clients of the HTTPS API on the same port),
    a certificate from another CA still fails, and the peer handler refuses a dialer whose
    certificate is missing. Failed handshakes are counted in ``refusals``.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.load_verify_locations(cafile=str(ca_file))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    if refusals is not None:
        ctx.sslobject_class = _counting_sslobject(refusals)
    return ctx


def client_ssl_context(
    ca_file: Path | str, cert_file: Path | str | None = None, key_file: Path | str | None = None
) -> ssl.SSLContext:
    """A context for dialing nodes: trusts only the cluster CA, presents ``cert_file``.

    Host names are not checked (the dialed address may be a proxy's); the caller checks the
    identity SAN of the server certificate instead (:func:`peer_identity`).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca_file))
    if cert_file is not None:
        assert key_file is not None
        ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


@dataclass(frozen=True, slots=True)
class NodeTls:
    """Everything a node needs for TLS: what it serves with, what it dials with, who it is."""

    server_ctx: ssl.SSLContext
    client_ctx: ssl.SSLContext
    identity: Identity
    refusals: TlsRefusals

    @property
    def node_id(self) -> NodeId:
        return NodeId(self.identity.name)

    @property
    def cluster_id(self) -> str:
        return self.identity.cluster_id


def load_node_tls(
    directory: Path | str, node_id: str, *, require_client_cert: bool = True
) -> NodeTls:
    """Load node ``node_id``'s certificate from ``directory`` (as written by :func:`init_certs`).

    ConfigError when a file is missing or unreadable, or the certificate does not name
    ``node_id``.
    """
    d = Path(directory)
    cert_path, key_path = node_files(d, node_id)
    ca_path = d / CA_CERT
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(str(cert_path), "certificate", f"cannot load: {exc}") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    idents = [i for u in uris if (i := parse_identity(u)) is not None]
    if len(idents) != 1 or idents[0].kind != "node" or idents[0].name != node_id:
        raise ConfigError(str(cert_path), "subjectAltName", f"does not name node {node_id!r}")
    refusals = TlsRefusals()
    try:
        server = server_ssl_context(
            ca_path,
            cert_path,
            key_path,
            require_client_cert=require_client_cert,
            refusals=refusals,
        )
        client = client_ssl_context(ca_path, cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(str(d), "tls", f"cannot load node {node_id!r}: {exc}") from None
    return NodeTls(server_ctx=server, client_ctx=client, identity=idents[0], refusals=refusals)
