"""The HTTP control API: Toxiproxy 2.x's endpoints, JSON shapes, statuses and errors.

Theory of operation
-------------------
:class:`Netem` owns the proxies by name; the aiohttp application built by :func:`make_app`
maps Toxiproxy's routes onto it. Every mutation runs under one asyncio lock, so requests
apply one at a time, as Toxiproxy's collection mutex makes them. A request that fails
(bad body, unknown name, duplicate, a listen address that cannot be bound) answers
``{"error": message, "status": status}`` with that status and changes nothing; the other
proxies keep serving.

Bodies are written compactly with Toxiproxy's key order (proxy: name, listen, upstream,
enabled, toxics; toxic: attributes, name, type, stream, toxicity); ``GET /proxies`` maps
names in sorted order, as Go's encoder does. ``GET /metrics`` (Prometheus text) is an
extension: bytes read and written per proxy and direction (Toxiproxy's metric names),
connections joined and open.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from netem.proxy import Proxy
from netem.toxics import (
    STREAMS,
    ApiProblem,
    ToxicSpec,
    decode_body,
    expect_bool,
    expect_object,
    expect_str,
    parse_toxic,
    update_toxic,
)

__all__ = ["TOXIPROXY_VERSION", "Netem", "make_app"]

#: The Toxiproxy API version this server implements (answered by GET /version).
TOXIPROXY_VERSION = "2.12.0"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200) -> web.Response:
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return web.Response(text=text, status=status, content_type="application/json")


def _problem(problem: ApiProblem) -> web.Response:
    return _json(problem.body(), problem.status)


class Netem:
    """The proxies and the operations of the API on them."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.proxies: dict[str, Proxy] = {}
        self.rng = rng if rng is not None else random.Random()
        self.lock = asyncio.Lock()

    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise ApiProblem("proxy not found", 404)
        return proxy

    async def create(self, body: Any) -> Proxy:
        body = expect_object(body, "Proxy")
        name = expect_str(body, "name", "Proxy", "")
        listen = expect_str(body, "listen", "Proxy", "")
        upstream = expect_str(body, "upstream", "Proxy", "")
        enabled = expect_bool(body, "enabled", "Proxy", True)
        if not name:
            raise ApiProblem("missing required field: name", 400)
        if not upstream:
            raise ApiProblem("missing required field: upstream", 400)
        if name in self.proxies:
            raise ApiProblem("proxy already exists", 409)
        proxy = Proxy(name, listen, upstream, self.rng)
        if enabled:
            await proxy.start()
        self.proxies[name] = proxy
        return proxy

    async def update(self, proxy: Proxy, body: Any) -> None:
        if body is None:
            body = {}
        body = expect_object(body, "Proxy")
        listen = expect_str(body, "listen", "Proxy", proxy.listen)
        upstream = expect_str(body, "upstream", "Proxy", proxy.upstream)
        enabled = expect_bool(body, "enabled", "Proxy", proxy.enabled)
        if listen != proxy.listen or upstream != proxy.upstream:
            # Re-addressing restarts the proxy and drops its connections (Toxiproxy README).
            await proxy.stop()
            proxy.listen, proxy.upstream = listen, upstream
        if enabled and not proxy.enabled:
            await proxy.start()
        elif not enabled and proxy.enabled:
            await proxy.stop()

    async def delete(self, name: str) -> None:
        proxy = self.get(name)
        await proxy.stop()
        del self.proxies[name]

    async def populate(self, body: Any) -> list[Proxy]:
        """Create or replace a list of proxies; everything is checked before anything
        changes (Toxiproxy 2.12's two phases)."""
        if not isinstance(body, list):
            raise ApiProblem("bad request body: cannot unmarshal into a list of proxies", 400)
        wanted: list[tuple[str, str, str, bool]] = []
        seen: set[str] = set()
        for i, item in enumerate(body, start=1):
            item = expect_object(item, "Proxy")
            name = expect_str(item, "name", "Proxy", "")
            listen = expect_str(item, "listen", "Proxy", "")
            upstream = expect_str(item, "upstream", "Proxy", "")
            enabled = expect_bool(item, "enabled", "Proxy", True)
            if not name:
                raise ApiProblem(f"missing required field: name at proxy {i}", 400)
            if not upstream:
                raise ApiProblem(f"missing required field: upstream at proxy {i}", 400)
            if name in seen:
                raise ApiProblem(f"duplicate proxy name {name!r}", 400)
            seen.add(name)
            wanted.append((name, listen, upstream, enabled))
        result: list[Proxy] = []
        for name, listen, upstream, enabled in wanted:
            existing = self.proxies.get(name)
            if existing is not None:
                if existing.listen == listen and existing.upstream == upstream:
                    result.append(existing)
                    continue
                await existing.stop()
                del self.proxies[name]
            proxy = Proxy(name, listen, upstream, self.rng)
            if enabled:
                await proxy.start()
            self.proxies[name] = proxy
            result.append(proxy)
        return result

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        for proxy in self.proxies.values():
            await proxy.start()
            for stream in STREAMS:
                proxy.set_toxics(stream, [])

    def add_toxic(self, proxy: Proxy, body: Any) -> ToxicSpec:
        names = {t.name for t in proxy.toxic_list()}
        spec = parse_toxic(body, names)
        proxy.set_toxics(spec.stream, [*proxy.toxics[spec.stream], spec])
        return spec

    def find_toxic(self, proxy: Proxy, name: str) -> ToxicSpec:
        for spec in proxy.toxic_list():
            if spec.name == name:
                return spec
        raise ApiProblem("toxic not found", 404)

    def update_toxic(self, proxy: Proxy, name: str, body: Any) -> ToxicSpec:
        current = self.find_toxic(proxy, name)
        updated = update_toxic(current, body)
        chain = [updated if t.uid == current.uid else t for t in proxy.toxics[current.stream]]
        proxy.set_toxics(current.stream, chain)
        return updated

    def remove_toxic(self, proxy: Proxy, name: str) -> None:
        current = self.find_toxic(proxy, name)
        chain = [t for t in proxy.toxics[current.stream] if t.uid != current.uid]
        proxy.set_toxics(current.stream, chain)

    async def close(self) -> None:
        for proxy in self.proxies.values():
            await proxy.stop()

    def metrics_text(self) -> str:
        lines: list[str] = []
        for metric, what in (("received", "read from"), ("sent", "written to")):
            lines += [
                f"# HELP toxiproxy_proxy_{metric}_bytes_total Bytes {what} a proxy's sockets, "
                "per direction.",
                f"# TYPE toxiproxy_proxy_{metric}_bytes_total counter",
            ]
            for name in sorted(self.proxies):
                p = self.proxies[name]
                for direction in STREAMS:
                    value = getattr(p.counters[direction], metric)
                    labels = _labels(
                        direction=direction, proxy=name, listener=p.listen, upstream=p.upstream
                    )
                    lines.append(f"toxiproxy_proxy_{metric}_bytes_total{{{labels}}} {value}")
        lines += [
            "# HELP netem_proxy_connections_total Client connections joined to their upstream.",
            "# TYPE netem_proxy_connections_total counter",
        ]
        for name in sorted(self.proxies):
            labels = _labels(proxy=name)
            lines.append(
                f"netem_proxy_connections_total{{{labels}}} {self.proxies[name].connections_total}"
            )
        lines += [
            "# HELP netem_proxy_connections_active Connections open now.",
            "# TYPE netem_proxy_connections_active gauge",
        ]
        for name in sorted(self.proxies):
            labels = _labels(proxy=name)
            active = len(self.proxies[name].connections)
            lines.append(f"netem_proxy_connections_active{{{labels}}} {active}")
        lines += [
            "# HELP netem_proxy_enabled 1 when the proxy listens.",
            "# TYPE netem_proxy_enabled gauge",
        ]
        for name in sorted(self.proxies):
            enabled = int(self.proxies[name].enabled)
            lines.append(f"netem_proxy_enabled{{{_labels(proxy=name)}}} {enabled}")
        return "\n".join(lines) + "\n"


def _labels(**labels: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return ",".join(f'{k}="{esc(v)}"' for k, v in labels.items())


async def _body(request: web.Request) -> Any:
    return decode_body(await request.read())


def make_app(netem: Netem) -> web.Application:
    """The aiohttp application serving Toxiproxy's API for ``netem``."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Toxiproxy refuses browsers, so a web page cannot drive a local proxy (CSRF).
        if request.headers.get("User-Agent", "").startswith("Mozilla/"):
            return web.Response(text="User agent not allowed\n", status=403)
        try:
            return await handler(request)
        except ApiProblem as problem:
            return _problem(problem)
        except web.HTTPMethodNotAllowed:
            return _problem(ApiProblem("method not allowed", 405))
        except web.HTTPNotFound:
            return _problem(ApiProblem("not found", 404))

    async def version(request: web.Request) -> web.Response:
        return web.Response(
            body=f'{{"version": "{TOXIPROXY_VERSION}"}}\n'.encode(),
            headers={"Content-Type": "application/json;charset=utf-8"},
        )

    async def proxy_index(request: web.Request) -> web.Response:
        return _json({name: netem.proxies[name].to_json() for name in sorted(netem.proxies)})

    async def proxy_create(request: web.Request) -> web.Response:
        body = await _body(request)
        async with netem.lock:
            proxy = await netem.create(body)
        return _json(proxy.to_json(), 201)

    async def populate(request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            async with netem.lock:
                proxies = await netem.populate(body)
        except ApiProblem as problem:
            return _json({**problem.body(), "proxies": None}, problem.status)
        return _json({"proxies": [p.to_json() for p in proxies]}, 201)

    async def proxy_show(request: web.Request) -> web.Response:
        return _json(netem.get(request.match_info["proxy"]).to_json())

    async def proxy_update(request: web.Request) -> web.Response:
        async with netem.lock:
            proxy = netem.get(request.match_info["proxy"])
            body = await _body(request)
            await netem.update(proxy, body)
        return _json(proxy.to_json())

    async def proxy_delete(request: web.Request) -> web.Response:
        async with netem.lock:
            await netem.delete(request.match_info["proxy"])
        return web.Response(status=204)

    async def toxic_index(request: web.Request) -> web.Response:
        proxy = netem.get(request.match_info["proxy"])
        return _json([t.to_json() for t in proxy.toxic_list()])

    async def toxic_create(request: web.Request) -> web.Response:
        async with netem.lock:
            proxy = netem.get(request.match_info["proxy"])
            spec = netem.add_toxic(proxy, await _body(request))
        return _json(spec.to_json())

    async def toxic_show(request: web.Request) -> web.Response:
        proxy = netem.get(request.match_info["proxy"])
        return _json(netem.find_toxic(proxy, request.match_info["toxic"]).to_json())

    async def toxic_update(request: web.Request) -> web.Response:
        async with netem.lock:
            proxy = netem.get(request.match_info["proxy"])
            netem.find_toxic(proxy, request.match_info["toxic"])
            spec = netem.update_toxic(proxy, request.match_info["toxic"], await _body(request))
        return _json(spec.to_json())

    async def toxic_delete(request: web.Request) -> web.Response:
        async with netem.lock:
            proxy = netem.get(request.match_info["proxy"])
            netem.remove_toxic(proxy, request.match_info["toxic"])
        return web.Response(status=204)

    async def reset(request: web.Request) -> web.Response:
        async with netem.lock:
            await netem.reset()
        return web.Response(status=204)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=netem.metrics_text(), content_type="text/plain", charset="utf-8")

    app = web.Application(middlewares=[errors])
    r = app.router
    r.add_post("/reset", reset)
    r.add_get("/proxies", proxy_index, allow_head=False)
    r.add_post("/proxies", proxy_create)
    r.add_post("/populate", populate)
    r.add_get("/proxies/{proxy}", proxy_show, allow_head=False)
    r.add_post("/proxies/{proxy}", proxy_update)
    r.add_patch("/proxies/{proxy}", proxy_update)
    r.add_delete("/proxies/{proxy}", proxy_delete)
    r.add_get("/proxies/{proxy}/toxics", toxic_index, allow_head=False)
    r.add_post("/proxies/{proxy}/toxics", toxic_create)
    r.add_get("/proxies/{proxy}/toxics/{toxic}", toxic_show, allow_head=False)
    r.add_post("/proxies/{proxy}/toxics/{toxic}", toxic_update)
    r.add_patch("/proxies/{proxy}/toxics/{toxic}", toxic_update)
    r.add_delete("/proxies/{proxy}/toxics/{toxic}", toxic_delete)
    r.add_get("/version", version, allow_head=False)
    r.add_get("/metrics", metrics, allow_head=False)
    return app
