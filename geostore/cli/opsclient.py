"""Calling a local cluster's nodes for operator commands (move, failover, quarantine).

A :class:`ClusterCall` reads ``cluster.json`` (the folder ``geostore cluster up`` made),
takes its CA and admin token, and sends a request to the nodes of one region in turn until
one answers (a node that does not lead forwards to its leader). Answers come back as
``(status, decoded JSON)``; error bodies are described in one line for the user.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class ClusterCall:
    folder: Path
    cluster: dict[str, Any]

    @staticmethod
    def load(path: str) -> ClusterCall:
        from geostore.cli.cmd_cluster import _use_credentials

        p = Path(path)
        file = p / "cluster.json" if p.is_dir() else p
        try:
            cluster = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(
                f"geostore: error: cannot read {file} ({exc}); pass the folder that "
                "'geostore cluster up' made"
            ) from None
        _use_credentials(cluster, str(file.parent))
        return ClusterCall(file.parent, cluster)

    @property
    def regions(self) -> dict[str, Any]:
        return dict(self.cluster.get("regions", {}))

    def region_list(self) -> str:
        return ", ".join(self.regions)

    def urls(self, region: str) -> list[str]:
        return [str(n["api"]) for n in self.regions.get(region, {}).get("nodes", [])]

    def request(
        self, region: str, method: str, path: str, body: Any = None, timeout_s: float = 30.0
    ) -> tuple[int, Any]:
        """Send to the region's nodes in turn; the first answer (any status) wins."""
        from geostore.cli.cmd_cluster import _urlopen

        data = None if body is None else json.dumps(body).encode()
        last = "no node listed"
        for url in self.urls(region):
            req = urllib.request.Request(
                url + path, data=data, method=method, headers={"Content-Type": "application/json"}
            )
            try:
                with _urlopen(req, timeout_s) as resp:
                    raw = resp.read()
                    return resp.status, _decode(raw, resp.headers.get_content_type())
            except urllib.error.HTTPError as exc:
                return exc.code, _decode(exc.read(), exc.headers.get_content_type())
            except OSError as exc:
                last = f"{url}: {exc}"
        raise SystemExit(
            f"geostore: error: no node of region {region} answered ({last}); is the cluster up?"
        )

    def post(self, region: str, path: str, body: Any, timeout_s: float = 30.0) -> tuple[int, Any]:
        return self.request(region, "POST", path, body, timeout_s)

    def get(self, region: str, path: str, timeout_s: float = 30.0) -> tuple[int, Any]:
        return self.request(region, "GET", path, None, timeout_s)

    @staticmethod
    def describe(status: int, body: Any) -> str:
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            return f"HTTP {status} {err.get('code')}: {err.get('message')}"
        return f"HTTP {status}: {str(body)[:300]}"


def _decode(raw: bytes, ctype: str) -> Any:
    if ctype == "application/json" or raw[:1] in (b"{", b"["):
        try:
            return json.loads(raw)
        except ValueError:
            pass
    return raw.decode("utf-8", "replace")


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    from geostore.cli.cmd_cluster import _table

    print(_table(headers, list(rows)))
