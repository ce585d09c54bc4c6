"""Proves, between real node processes of two regions (TLS and tokens on), that a node keeps
its region for every admin route: ``/v1/admin/peers`` refuses (409) to record a known node
under another region, and ``/v1/admin/members`` refuses (409) to add a node of another region
to this region's group (its messages would be refused there, so as a voter it would only
raise the quorum: a one-node region would stop committing); the metadata membership route
needs a credential like every admin route; the region still takes appends afterwards."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from geostore.client.tls import client_ssl
from tests.integration.clusterkit import call, cluster_up, nodes, ok, topology_toml

pytestmark = pytest.mark.timeout(120)

TOPOLOGY = topology_toml("member-regions", {"a": ["a1"], "b": ["b1"]}, {("a", "b"): 5.0})


def test_nodes_keep_their_regions(tmp_path: Path) -> None:
    with cluster_up(tmp_path, TOPOLOGY, "--no-netem", timeout_s=60) as info:
        a1 = nodes(info)["a1"]["api"]
        b1 = nodes(info)["b1"]["api"]
        ok(a1 + "/v1/admin/peers", {"node": "b9", "url": "http://127.0.0.1:9", "region": "b"})
        status, answer = call(a1 + "/v1/admin/members", {"op": "add_voter", "node": "b9"})
        assert status == 409 and answer["error"]["code"] == "conflict", (status, answer)
        for node, region in (("b1", "a"), ("b9", "a"), ("a1", "b")):
            status, answer = call(
                a1 + "/v1/admin/peers", {"node": node, "url": b1, "region": region}
            )
            assert status == 409 and answer["error"]["code"] == "conflict", (node, answer)
        _, st = call(a1 + "/v1/status")
        assert st["groups"]["data-a"]["voters"] == ["a1"], st["groups"]
        # no credential, no membership change
        ca = client_ssl(Path(info["folder"]) / json.loads(
            (Path(info["folder"]) / "cluster.json").read_text())["ca"])  # fmt: skip
        req = urllib.request.Request(
            a1 + "/v1/admin/meta/members",
            data=json.dumps({"op": "remove", "node": "a1"}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10, context=ca)
        assert err.value.code == 401
        assert isinstance(ca, ssl.SSLContext)
        ok(a1 + "/v1/streams", {"name": "s"}, retry=(503, 504))
        ok(a1 + "/v1/streams/s/events", {"events": [{"body": 1}]}, retry=(503, 504))
