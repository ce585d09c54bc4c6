"""The geo host's linger timer sends a lingering batch when its ``geo.linger_ms`` expires,
not at the node's next (coarser) clock tick, also when the batch began to linger while the
host handled an envelope (an ack that freed the window, a probe answer), not only in a tick.

The host runs over a stand-in node (topology, config, a transport that records what it is
given, a data group that says this node leads) on a real event loop and real clock; the
node's own clock task does not run, so only the host's timer can send the batch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from geostore.config import Config, GeoSettings, topology_from_dict
from geostore.geo import (
    GeoAck,
    GeoBatch,
    GeoEnvelope,
    GeoHeartbeat,
    GeoPosition,
    Receiver,
    Shipper,
)
from geostore.ids import NodeId, Seq
from geostore.runtime.geo import GeoHost
from geostore.runtime.metrics import NodeMetrics

from .test_geo_shipper import EU, HOME, ListLog, P, S, wm

#: the node's clock period the host is told: far above the linger, so a batch sent before
#: it passes was sent by the host's own timer
NODE_TICK_MS = 5_000
LINGER_MS = 300


class RecordingTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[str, GeoEnvelope]] = []

    def send_sized(self, node: str, env: GeoEnvelope) -> int:
        self.sent.append((node, env))
        return 100


def _host(tmp_path: Path) -> tuple[GeoHost, RecordingTransport]:
    topo = topology_from_dict(
        {
            "name": "two",
            "regions": [
                {"name": HOME, "nodes": [{"id": "h1", "host": "127.0.0.1", "port": 1}]},
                {"name": EU, "nodes": [{"id": "e1", "host": "127.0.0.1", "port": 2}]},
            ],
            "links": [{"a": HOME, "b": EU, "rtt_ms_p50": 20.0}],
        }
    )
    transport = RecordingTransport()
    group = SimpleNamespace(
        is_leader=True,
        failed=None,
        host=SimpleNamespace(core=SimpleNamespace(term=1)),
        store=SimpleNamespace(placement_version=0, applied_index=0),
    )
    node = SimpleNamespace(
        node_id=NodeId("h1"),
        region=HOME,
        topology=topo,
        config=Config(),
        data_dir=str(tmp_path),
        data_group=group,
        transport=transport,
        stopping=False,
        tick_ms=NODE_TICK_MS,
        metrics=NodeMetrics(),
    )
    host = GeoHost(node, {}, active=False)  # type: ignore[arg-type]
    host.active = True  # not wired to a real group: the test hands it its cores
    return host, transport


def _sent_ranges(transport: RecordingTransport) -> list[tuple[int, int]]:
    return [
        (i.src_start, i.src_end)
        for _, env in transport.sent
        for i in env.items
        if isinstance(i, GeoBatch)
    ]


async def test_a_batch_that_lingers_after_an_ack_leaves_at_its_linger(tmp_path: Path) -> None:
    host, transport = _host(tmp_path)
    log = ListLog()
    settings = GeoSettings(batch_events_max=4, linger_ms=LINGER_MS, inflight_batches_max=1)
    shipper = Shipper(HOME, {EU: 20.0}, settings, log, windows={EU: 1})
    # the host's cores as _sync_role would have built them for term 1
    host.shipper, host.receiver = shipper, Receiver(HOME)
    host._term, host._placement = 1, 0
    host._scanned = (0, shipper)  # nothing new applied: tick does not scan the stand-in store
    try:
        now = host._now_ms()
        shipper.on_committed(S, P, wm(0).epoch, log.commit(P, 4), now)
        probe_reply = GeoHeartbeat((GeoPosition(S, P, wm(0).epoch, Seq(-1)),), reply=True)
        shipper.on_envelope(GeoEnvelope(EU, HOME, (probe_reply,)), now)
        host.tick()
        assert _sent_ranges(transport) == [(0, 3)]  # a full batch: the window (1) is full
        # one more event: it lingers, and no timer waits for it (the window is full)
        shipper.on_committed(S, P, wm(0).epoch, log.commit(P, 1), host._now_ms())
        host.tick()
        assert _sent_ranges(transport) == [(0, 3)]
        # the ack frees the window while the new event still lingers
        ack = GeoAck(S, P, wm(0).epoch, Seq(0), Seq(3), wm(3))
        host.on_envelope(NodeId("e1"), GeoEnvelope(EU, HOME, (ack,)))
        await asyncio.sleep(3 * LINGER_MS / 1000)  # past the linger, long before a node tick
        assert _sent_ranges(transport) == [(0, 3), (4, 4)]
    finally:
        if host._linger_timer is not None:
            host._linger_timer.cancel()
