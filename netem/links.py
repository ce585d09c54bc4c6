"""The link matrix: a topology's inter-region links as Toxiproxy proxies, and WAN faults on them.

Theory of operation
-------------------
A Toxiproxy proxy has one upstream, so each directed inter-region link ``src -> dst`` becomes
one proxy per node of ``dst``, named ``"{src}->{node}"``: nodes of region ``src`` reach that
node through it. A proxy carries both directions of the TCP connections ``src`` opens, so its
``upstream`` stream (requests, ``src`` to ``dst``) gets ``link(src, dst)``'s figures and its
``downstream`` stream (answers) gets ``link(dst, src)``'s: a ``latency`` toxic of RTT/2 with
that direction's jitter on each stream, so a round trip through it costs one RTT, plus a
``bandwidth`` toxic per stream when the topology gives one. Toxic latencies are whole
milliseconds (Toxiproxy's attribute type): the two streams of a proxy add up to the RTT
rounded to the nearest millisecond.

:func:`plan_links` is pure (a topology and node addresses in, :class:`LinkProxy` records out);
:func:`apply_links` makes a Toxiproxy server (this package's, or a real ``toxiproxy-server``
at ``TOXIPROXY_URL``) hold exactly that plan, and :class:`NetemControl` injects faults:

- ``cut_link``: a ``timeout`` toxic of 0 on both streams (a black hole: bytes vanish, nothing
  closes, as a WAN partition looks), or with ``refuse=True`` the proxies are disabled
  (connects are refused). ``heal_link`` removes the toxics (which closes the frozen
  connections, as Toxiproxy does) and enables the proxies.
- ``isolate_region`` / ``heal_region``: every link into and out of a region.
- ``slow_link``: an extra ``latency`` toxic of ``extra_rtt_ms / 2`` per stream (updated in
  place when it exists; 0 removes it).
- ``reset_link``: disable then enable the proxies, which closes every connection.

Everything speaks HTTP through :mod:`urllib.request` with a timeout on every call. The
toxiproxy-python client is not used here: it is a test dependency, keeps one host in class
state, has no update call and sets no timeout.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from geostore.errors import ErrorCode, GeostoreError
from geostore.ids import NodeId, RegionId

if TYPE_CHECKING:
    from geostore.config.topology import Topology

__all__ = [
    "DEFAULT_URL",
    "AppliedLink",
    "LinkProxy",
    "NetemControl",
    "NetemError",
    "apply_links",
    "format_table",
    "free_port",
    "link_name",
    "plan_links",
    "toxiproxy_url",
    "wait_ready",
]

DEFAULT_URL = "http://127.0.0.1:8474"
#: Every HTTP call to the Toxiproxy API gives up after this long.
CALL_TIMEOUT_S = 5.0

CUT = "cut"
SLOW = "slow"


class NetemError(GeostoreError):
    """The Toxiproxy API could not be reached or refused a request."""

    code = ErrorCode.UNAVAILABLE


def toxiproxy_url(url: str | None = None) -> str:
    """``url``, else ``$TOXIPROXY_URL``, else Toxiproxy's default address."""
    return (url or os.environ.get("TOXIPROXY_URL") or DEFAULT_URL).rstrip("/")


def link_name(src_region: str, dst_node: str) -> str:
    return f"{src_region}->{dst_node}"


@dataclass(frozen=True, slots=True)
class LinkProxy:
    """One planned proxy: nodes of ``src_region`` reach ``dst_node`` through ``listen``."""

    name: str
    src_region: RegionId
    dst_region: RegionId
    dst_node: NodeId
    listen: str  # "host:port"; port 0 lets the server choose
    upstream: str  # the node's own address, dialled per connection
    latency_up_ms: int
    jitter_up_ms: int
    latency_down_ms: int
    jitter_down_ms: int
    bandwidth_up_kbps: int | None
    bandwidth_down_kbps: int | None

    def toxics(self) -> list[dict[str, Any]]:
        """The toxics of this link, as Toxiproxy create requests."""
        out: list[dict[str, Any]] = []
        for stream, latency, jitter, rate in (
            ("upstream", self.latency_up_ms, self.jitter_up_ms, self.bandwidth_up_kbps),
            ("downstream", self.latency_down_ms, self.jitter_down_ms, self.bandwidth_down_kbps),
        ):
            out.append(
                {
                    "name": f"latency_{stream}",
                    "type": "latency",
                    "stream": stream,
                    "toxicity": 1.0,
                    "attributes": {"latency": latency, "jitter": jitter},
                }
            )
            if rate is not None:
                out.append(
                    {
                        "name": f"bandwidth_{stream}",
                        "type": "bandwidth",
                        "stream": stream,
                        "toxicity": 1.0,
                        "attributes": {"rate": rate},
                    }
                )
        return out


@dataclass(frozen=True, slots=True)
class AppliedLink:
    """A planned proxy as the server holds it (``listen`` with its real port)."""

    plan: LinkProxy
    listen: str

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now (it may be taken again before it is used)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def plan_links(
    topology: Topology,
    node_addrs: Mapping[NodeId, tuple[str, int]] | None = None,
    port_alloc: Callable[[], int] | None = None,
    *,
    listen_host: str = "127.0.0.1",
) -> list[LinkProxy]:
    """One proxy per directed inter-region link and destination node, in topology order.

    ``node_addrs`` gives each node's address (default: the node's host and port in the
    topology); ``port_alloc`` gives each proxy's listen port (default: 0, the server
    chooses).
    """
    plan: list[LinkProxy] = []
    regions = topology.regions
    for src in regions:
        for dst in regions:
            if src.name == dst.name:
                continue
            there = topology.link(src.name, dst.name)
            back = topology.link(dst.name, src.name)
            # Whole milliseconds per stream, summing to the RTT rounded (not twice rounded).
            rtt_ms = round(there.rtt_ms_p50)
            up_ms = rtt_ms // 2
            for node in dst.nodes:
                if node_addrs is not None and node.id in node_addrs:
                    host, port = node_addrs[node.id]
                elif node.port is not None:
                    host, port = node.host or "127.0.0.1", node.port
                else:
                    raise NetemError(
                        f"node {node.id} has no address: give node_addrs, or ports in the "
                        "topology (cluster up assigns loopback ports)"
                    )
                listen_port = port_alloc() if port_alloc is not None else 0
                plan.append(
                    LinkProxy(
                        name=link_name(src.name, node.id),
                        src_region=src.name,
                        dst_region=dst.name,
                        dst_node=node.id,
                        listen=_hostport(listen_host, listen_port),
                        upstream=_hostport(host, port),
                        latency_up_ms=up_ms,
                        jitter_up_ms=round(there.jitter_ms),
                        latency_down_ms=rtt_ms - up_ms,
                        jitter_down_ms=round(back.jitter_ms),
                        bandwidth_up_kbps=there.bandwidth_kbps,
                        bandwidth_down_kbps=back.bandwidth_kbps,
                    )
                )
    return plan


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Api:
    """Plain HTTP to a Toxiproxy server; every call has a timeout."""

    def __init__(self, url: str | None, timeout_s: float) -> None:
        self.url = toxiproxy_url(url)
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: Any = None, *, missing_ok: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + urllib.parse.quote(path, safe="/"),
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "User-Agent": "geostore-netem"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None
            detail = exc.read().decode("utf-8", "replace").strip()
            raise NetemError(
                f"{method} {self.url}{path}: HTTP {exc.code}: {detail}", status=exc.code
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NetemError(f"{method} {self.url}{path}: {reason}") from None
        return json.loads(raw) if raw else None


def wait_ready(url: str | None = None, timeout_s: float = 10.0) -> str:
    """Wait until the Toxiproxy API answers ``GET /version``; returns the version text."""
    api = _Api(url, min(CALL_TIMEOUT_S, timeout_s))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            body = api.call("GET", "/version")
            return str(body.get("version", "")) if isinstance(body, dict) else str(body)
        except NetemError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def apply_links(
    plan: Iterable[LinkProxy], url: str | None = None, *, timeout_s: float = CALL_TIMEOUT_S
) -> list[AppliedLink]:
    """Make the server hold the planned proxies with exactly their link toxics.

    A proxy that exists with the same upstream (and the same listen address, unless the plan
    lets the server choose the port) is kept with its connections; its toxics are replaced.
    Anything else under that name is recreated. Proxies not in the plan are left alone.
    """
    api = _Api(url, timeout_s)
    existing: dict[str, Any] = api.call("GET", "/proxies") or {}
    applied: list[AppliedLink] = []
    for link in plan:
        current = existing.get(link.name)
        keep = (
            current is not None
            and current.get("upstream") == link.upstream
            and (link.listen.endswith(":0") or current.get("listen") == link.listen)
        )
        if current is not None and not keep:
            api.call("DELETE", f"/proxies/{link.name}", missing_ok=True)
            current = None
        if current is None:
            body = {"name": link.name, "listen": link.listen, "upstream": link.upstream}
            current = api.call("POST", "/proxies", {**body, "enabled": True})
        else:
            if not current.get("enabled", True):
                current = api.call("POST", f"/proxies/{link.name}", {"enabled": True})
            for toxic in current.get("toxics") or []:
                api.call("DELETE", f"/proxies/{link.name}/toxics/{toxic['name']}", missing_ok=True)
        for toxic in link.toxics():
            api.call("POST", f"/proxies/{link.name}/toxics", toxic)
        applied.append(AppliedLink(link, str(current["listen"])))
    return applied


def format_table(applied: Iterable[AppliedLink]) -> str:
    """The address map as a text table: who reaches which node through which address."""
    header = ("proxy", "from", "to node", "listen", "upstream", "one-way ms", "jitter", "KB/s")
    rows = [header]
    for a in applied:
        p = a.plan
        rate = "-" if p.bandwidth_up_kbps is None else str(p.bandwidth_up_kbps)
        rows.append(
            (
                p.name,
                p.src_region,
                p.dst_node,
                a.listen,
                p.upstream,
                f"{p.latency_up_ms}/{p.latency_down_ms}",
                f"{p.jitter_up_ms}/{p.jitter_down_ms}",
                rate,
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class NetemControl:
    """WAN faults on a topology's link proxies, through the Toxiproxy API at ``url``."""

    def __init__(
        self, topology: Topology, url: str | None = None, *, timeout_s: float = CALL_TIMEOUT_S
    ) -> None:
        self.topology = topology
        self.api = _Api(url, timeout_s)

    @property
    def url(self) -> str:
        return self.api.url

    def proxies_of(self, src: str, dst: str) -> list[str]:
        """Names of the proxies of the directed link ``src -> dst``."""
        assert src != dst, "a link joins two regions"
        return [link_name(src, node.id) for node in self.topology.region(dst).nodes]

    def _pairs(self, src: str, dst: str, both_ways: bool) -> list[str]:
        names = self.proxies_of(src, dst)
        return names + self.proxies_of(dst, src) if both_ways else names

    def _set_toxic(self, proxy: str, toxic: dict[str, Any]) -> None:
        path = f"/proxies/{proxy}/toxics/{toxic['name']}"
        if self.api.call("GET", path, missing_ok=True) is None:
            self.api.call("POST", f"/proxies/{proxy}/toxics", toxic)
        else:
            update = {"attributes": toxic["attributes"], "toxicity": toxic["toxicity"]}
            self.api.call("POST", path, update)

    def _remove_toxic(self, proxy: str, name: str) -> None:
        self.api.call("DELETE", f"/proxies/{proxy}/toxics/{name}", missing_ok=True)

    def _enable(self, proxy: str, enabled: bool) -> None:
        self.api.call("POST", f"/proxies/{proxy}", {"enabled": enabled})

    # -- faults ------------------------------------------------------------------------

    def cut_link(self, src: str, dst: str, *, both_ways: bool = True, refuse: bool = False) -> None:
        """Partition ``src`` from ``dst`` (and ``dst`` from ``src`` when ``both_ways``)."""
        for proxy in self._pairs(src, dst, both_ways):
            if refuse:
                self._enable(proxy, False)
                continue
            for stream in ("upstream", "downstream"):
                toxic = {
                    "name": f"{CUT}_{stream}",
                    "type": "timeout",
                    "stream": stream,
                    "toxicity": 1.0,
                    "attributes": {"timeout": 0},
                }
                self._set_toxic(proxy, toxic)

    def heal_link(self, src: str, dst: str, *, both_ways: bool = True) -> None:
        """Undo :meth:`cut_link` (either kind); frozen connections are closed."""
        for proxy in self._pairs(src, dst, both_ways):
            for stream in ("upstream", "downstream"):
                self._remove_toxic(proxy, f"{CUT}_{stream}")
            self._enable(proxy, True)

    def _other_regions(self, region: str) -> list[str]:
        self.topology.region(region)  # KeyError for an unknown region
        return [r for r in self.topology.region_names() if r != region]

    def isolate_region(self, region: str, *, refuse: bool = False) -> None:
        """Cut every link into and out of ``region``."""
        for other in self._other_regions(region):
            self.cut_link(region, other, both_ways=True, refuse=refuse)

    def heal_region(self, region: str) -> None:
        for other in self._other_regions(region):
            self.heal_link(region, other, both_ways=True)

    def slow_link(
        self,
        src: str,
        dst: str,
        extra_rtt_ms: float,
        *,
        jitter_ms: float = 0,
        both_ways: bool = True,
    ) -> None:
        """Add ``extra_rtt_ms`` to the round trip of ``src -> dst``; 0 removes the extra."""
        assert extra_rtt_ms >= 0 and jitter_ms >= 0
        for proxy in self._pairs(src, dst, both_ways):
            for stream in ("upstream", "downstream"):
                name = f"{SLOW}_{stream}"
                if extra_rtt_ms == 0:
                    self._remove_toxic(proxy, name)
                    continue
                toxic = {
                    "name": name,
                    "type": "latency",
                    "stream": stream,
                    "toxicity": 1.0,
                    "attributes": {"latency": round(extra_rtt_ms / 2), "jitter": round(jitter_ms)},
                }
                self._set_toxic(proxy, toxic)

    def reset_link(self, src: str, dst: str, *, both_ways: bool = True) -> None:
        """Close every connection on the link (disable, then enable, each proxy)."""
        for proxy in self._pairs(src, dst, both_ways):
            self._enable(proxy, False)
            self._enable(proxy, True)

    def status(self) -> dict[str, Any]:
        """``GET /proxies``: every proxy with its toxics."""
        body: dict[str, Any] = self.api.call("GET", "/proxies") or {}
        return body
