"""How the client trusts a node's HTTPS port: an :class:`ssl.SSLContext` from the cluster CA.

The cluster CA (``geostore certs init``) signs every node certificate; a client trusts that CA
only, not the system store, and optionally presents a client certificate of the cluster (an
operator identity, which the node's API guard grants every role). Host names are not checked:
nodes are dialled by address, possibly through a proxy, and their certificates name node
identities rather than host names; the CA alone decides. Built with the standard library so the
client depends on nothing below it (the CLI may equally pass a context it built elsewhere).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from geostore.errors import ApiError, ErrorCode


def client_ssl(
    ca: str | Path | None,
    cert: str | Path | None = None,
    key: str | Path | None = None,
) -> ssl.SSLContext:
    """A context trusting ``ca`` (the system store when None) and presenting ``cert``/``key``.

    Raises ApiError(config) naming the file when one cannot be loaded."""
    if (cert is None) != (key is None):
        raise ApiError(
            ErrorCode.CONFIG,
            "a client certificate needs both its certificate and its key (--cert, --cert-key)",
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if ca is None:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            # The CA is the cluster's own: node certificates carry identities, not host names.
            ctx.check_hostname = False
            ctx.load_verify_locations(cafile=str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
        if cert is not None and key is not None:
            ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        which = str(ca) if ca is not None else "the system CA store"
        raise ApiError(
            ErrorCode.CONFIG, f"cannot load TLS files ({which}, {cert}, {key}): {exc}"
        ) from None
    return ctx
