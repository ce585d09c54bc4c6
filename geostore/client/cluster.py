"""Where a client finds its nodes: ``cluster.json`` (what ``geostore cluster up`` writes).

Shape relied upon (the cluster.json contract of docs/api.md): ``{"regions": {REGION: {"nodes": [{"id", "api", ...}]}}}``.
A node's ``api`` is its direct address, for clients in its own region.

Optional TLS fields, for the runtime to write when the cluster serves HTTPS:

- ``"tls": true`` - the API is served over TLS: ``http://`` addresses are called as ``https://``
  (a runtime may as well write ``https://`` addresses directly).
- ``"ca": "certs/ca.pem"`` - the cluster CA to trust, absolute or relative to the folder of
  ``cluster.json``. Without it an https cluster is checked against the system CA store.
- ``"token_file": "admin.token"`` - a file holding a bearer token's secret (what ``cluster up``
  writes for the folder's owner, mode 0600), read by clients that are given no token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geostore.errors import ApiError, ErrorCode


@dataclass(frozen=True, slots=True)
class NodeAddress:
    id: str
    region: str
    api: str


@dataclass(frozen=True, slots=True)
class ClusterMap:
    """Every node's API address, by region, as one ``cluster.json`` lists them."""

    path: str
    regions: dict[str, tuple[NodeAddress, ...]]
    mode: str | None = None
    #: the API is served over TLS (``"tls": true`` or https addresses)
    tls: bool = False
    #: the cluster CA file to trust (resolved against the folder of cluster.json)
    ca: str | None = None
    #: a file holding a bearer token's secret (resolved likewise)
    token_file: str | None = None

    def read_token(self) -> str | None:
        """The secret in :attr:`token_file`; None without one. ApiError(config) if unreadable."""
        if self.token_file is None:
            return None
        try:
            secret = Path(self.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ApiError(ErrorCode.CONFIG, f"cannot read the token file: {exc}") from None
        return secret or None

    def urls(self, region: str) -> list[str]:
        if region not in self.regions:
            raise ApiError(
                ErrorCode.WRONG_REGION,
                f"{self.path} has no region {region!r}; regions: {', '.join(sorted(self.regions))}",
            )
        return [n.api for n in self.regions[region]]

    def default_region(self) -> str:
        """The only region, when there is one; else the caller must name one."""
        if len(self.regions) == 1:
            return next(iter(self.regions))
        raise ApiError(
            ErrorCode.WRONG_REGION,
            f"{self.path} has regions {', '.join(sorted(self.regions))}: name one with --region",
        )


def cluster_file(path: str | Path) -> Path:
    """``path`` itself, or ``path/cluster.json`` when it is a directory."""
    p = Path(path)
    return p / "cluster.json" if p.is_dir() else p


def load_cluster(path: str | Path) -> ClusterMap:
    """Read ``cluster.json`` (or the one in directory ``path``). Raises ApiError(config)."""
    file = cluster_file(path)
    try:
        doc: Any = json.loads(file.read_text())
    except FileNotFoundError:
        raise ApiError(
            ErrorCode.CONFIG,
            f"no cluster file at {file}: start one with 'geostore cluster up --dir DIR'",
        ) from None
    except (OSError, ValueError) as exc:
        raise ApiError(ErrorCode.CONFIG, f"cannot read {file}: {exc}") from None
    return parse_cluster(doc, str(file))


def parse_cluster(doc: Any, where: str = "cluster.json") -> ClusterMap:
    regions_raw = doc.get("regions") if isinstance(doc, dict) else None
    if not isinstance(regions_raw, dict) or not regions_raw:
        raise ApiError(ErrorCode.CONFIG, f"{where}: 'regions' must be a non-empty object")
    regions: dict[str, tuple[NodeAddress, ...]] = {}
    for name, spec in regions_raw.items():
        nodes_raw = spec.get("nodes") if isinstance(spec, dict) else None
        if not isinstance(nodes_raw, list) or not nodes_raw:
            raise ApiError(ErrorCode.CONFIG, f"{where}: region {name!r} lists no nodes")
        nodes = []
        for i, n in enumerate(nodes_raw):
            api = n.get("api") if isinstance(n, dict) else None
            if not isinstance(api, str) or not api.startswith(("http://", "https://")):
                raise ApiError(
                    ErrorCode.CONFIG, f"{where}: regions.{name}.nodes[{i}].api must be a URL"
                )
            node_id = n.get("id", f"{name}-{i}")
            nodes.append(NodeAddress(str(node_id), str(name), api.rstrip("/")))
        regions[str(name)] = tuple(nodes)
    mode = doc.get("mode")
    tls = doc.get("tls", False)
    if not isinstance(tls, bool):
        raise ApiError(ErrorCode.CONFIG, f"{where}: 'tls' must be true or false")
    ca_raw = doc.get("ca")
    if ca_raw is not None and (not isinstance(ca_raw, str) or not ca_raw):
        raise ApiError(ErrorCode.CONFIG, f"{where}: 'ca' must be the path of a CA file")
    ca = str(Path(where).parent / ca_raw) if ca_raw is not None else None
    token_raw = doc.get("token_file")
    if token_raw is not None and (not isinstance(token_raw, str) or not token_raw):
        raise ApiError(ErrorCode.CONFIG, f"{where}: 'token_file' must be the path of a file")
    token_file = str(Path(where).parent / token_raw) if token_raw is not None else None
    if tls:
        regions = {
            name: tuple(NodeAddress(n.id, n.region, _https(n.api)) for n in nodes)
            for name, nodes in regions.items()
        }
    tls = tls or any(n.api.startswith("https://") for ns in regions.values() for n in ns)
    return ClusterMap(where, regions, mode if isinstance(mode, str) else None, tls, ca, token_file)


def _https(url: str) -> str:
    return "https://" + url.removeprefix("http://") if url.startswith("http://") else url
