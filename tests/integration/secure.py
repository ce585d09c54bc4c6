"""Calls to the nodes of a cluster that ``cluster up`` started with its default TLS and token.

``register(folder)`` reads the folder's cluster.json; afterwards :func:`urlopen` (a drop-in for
``urllib.request.urlopen``) and :func:`aiohttp_kwargs` call every https address of that cluster
(node APIs and WAN proxies) trusting its CA and sending its admin token. Plain http addresses
(an ``--insecure`` cluster, the netem API) are called as they are.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from geostore.client.tls import client_ssl

#: host:port -> (context, bearer token)
_BY_NETLOC: dict[str, tuple[ssl.SSLContext, str | None]] = {}


def credentials(folder: str | Path) -> tuple[ssl.SSLContext | None, str | None]:
    """The CA context and admin token of the cluster in ``folder`` (None, None if insecure)."""
    root = Path(folder)
    doc = json.loads((root / "cluster.json").read_text())
    if not doc.get("tls"):
        return None, None
    ctx = client_ssl(root / doc["ca"])
    token = (root / doc["token_file"]).read_text().strip() if doc.get("token_file") else None
    return ctx, token


def register(folder: str | Path) -> dict[str, Any]:
    """Remember the credentials of every address of the cluster in ``folder``; its json."""
    root = Path(folder)
    doc: dict[str, Any] = json.loads((root / "cluster.json").read_text())
    ctx, token = credentials(root)
    if ctx is None:
        return doc
    for info in doc["regions"].values():
        for node in info["nodes"]:
            for url in (node["api"], *node.get("proxies", {}).values()):
                _BY_NETLOC[urlsplit(url).netloc] = (ctx, token)
    return doc


def urlopen(req: urllib.request.Request | str, timeout: float) -> Any:
    """``urllib.request.urlopen`` with the registered credentials of an https address."""
    if isinstance(req, str):
        req = urllib.request.Request(req)
    ctx: ssl.SSLContext | None = None
    if req.full_url.startswith("https://"):
        found = _BY_NETLOC.get(urlsplit(req.full_url).netloc)
        assert found is not None, f"no cluster registered for {req.full_url}"
        ctx, token = found
        if token is not None:
            req.add_unredirected_header("Authorization", f"Bearer {token}")
    return urllib.request.urlopen(req, timeout=timeout, context=ctx)


def aiohttp_kwargs(folder: str | Path) -> dict[str, Any]:
    """``connector`` and ``headers`` for an ``aiohttp.ClientSession`` calling the cluster."""
    import aiohttp

    ctx, token = credentials(folder)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return {"connector": aiohttp.TCPConnector(ssl=ctx if ctx else True), "headers": headers}
