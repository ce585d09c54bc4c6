"""GeostoreClient: the async Python client of the HTTP API (docs/api.md).

Theory of operation:

- The client knows the API URLs of its region's nodes (from ``cluster.json`` or a list).
  Any node accepts any request (writes are forwarded to the leader inside the region), so it
  sticks to the last node that answered and moves to the next one when a node refuses the
  connection, drops it, times out or answers a retryable 503.
- A node that forwarded a call to its region group's leader (or refused it with
  ``not_leader``) names that leader in the ``X-Geostore-Leader`` answer header. When the
  client knows its nodes' ids (``node_ids``, as :meth:`GeostoreClient.from_cluster` passes)
  and the named node is one of them, it sends its later calls there, so a leader change
  costs one forwarded call, not a hop on every call. A value it does not know (another
  region's node, garbage) is ignored, and a call pinned to a node (``node=``) never moves.
- Every call has a deadline (``timeout_s``); one attempt gets at most ``attempt_timeout_s``
  of it, so a hung node leaves time to try another. A 503's ``Retry-After`` is honoured
  within the deadline.
- Retrying is safe because each request is either read-only, idempotent by definition
  (creating a stream with an identical definition), or an append tagged with an *idempotent
  producer*: a client-generated id plus a per-client sequence number. A retry carries the
  same pair, so the server applies it at most once and answers with the original result.
  An append sent without a producer is retried only when it certainly never reached a
  server (the connection could not be made); otherwise its unknown outcome is surfaced.
- Appends return a token; the client keeps the latest per stream and, when asked
  (``read_your_writes``), passes it as ``after`` so a read sees the client's own writes.
- Errors are typed (:mod:`geostore.client.errors`): the server's error code, HTTP status,
  ``Retry-After`` and the node that answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl as _ssl
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import aiohttp

from geostore.client.cluster import load_cluster
from geostore.client.errors import (
    CallTimeout,
    RequestFailed,
    TlsFailed,
    Unreachable,
    error_from_body,
)
from geostore.client.results import (
    AggregateResult,
    AppendResult,
    Event,
    Health,
    Producer,
    ReadResult,
    StreamInfo,
)
from geostore.client.sse import SseParser
from geostore.client.tls import client_ssl
from geostore.codec import CodecLimits, dumps_plain, loads_plain
from geostore.errors import ApiError, CodecError, ErrorCode

ContentType = Literal["json", "cbor"]
Consistency = Literal["local", "regional", "strong"]

_MIME = {"json": "application/json", "cbor": "application/cbor"}
#: Answers come from our own servers; the limits only stop a runaway answer.
_ANSWER_LIMITS = CodecLimits(items_max=20_000_000, depth_max=64)
#: Longest server-sent line the tail accepts (an event of the largest allowed size, as JSON).
_TAIL_LINE_BYTES_MAX = 8 * 1024 * 1024
#: Longest single sleep between attempts (Retry-After is honoured up to this).
_BACKOFF_MAX_S = 1.0
#: The answer header that names the region group's leader (the server's ``LEADER_HEADER``).
LEADER_HEADER = "X-Geostore-Leader"


class GeostoreClient:
    """Async client of one region's nodes. Use ``async with`` or call :meth:`close`."""

    def __init__(
        self,
        urls: Sequence[str],
        region: str | None = None,
        *,
        content_type: ContentType = "json",
        timeout_s: float = 10.0,
        attempt_timeout_s: float | None = None,
        attempts_max: int = 8,
        producer_id: str | None = None,
        producer_span: int = 256,
        idempotent: bool = True,
        read_your_writes: bool = False,
        token_wait_ms: int = 2_000,
        backoff_s: float = 0.05,
        connections_max: int = 256,
        session: aiohttp.ClientSession | None = None,
        node_ids: Sequence[str] | None = None,
        ssl: _ssl.SSLContext | None = None,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        token: str | None = None,
    ) -> None:
        assert urls, "a client needs at least one node URL"
        assert node_ids is None or len(node_ids) == len(urls)
        assert content_type in _MIME, content_type
        assert timeout_s > 0 and attempts_max >= 1
        self.urls = [u.rstrip("/") for u in urls]
        self.node_ids = list(node_ids) if node_ids is not None else None
        self.region = region
        self.content_type: ContentType = content_type
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s or max(timeout_s / 2, min(timeout_s, 1.0))
        self.attempts_max = attempts_max
        assert producer_span >= 1
        self.producer_id = producer_id or f"c-{uuid.uuid4().hex}"
        self.producer_span = producer_span
        self.idempotent = idempotent
        self.read_your_writes = read_your_writes
        self.token_wait_ms = token_wait_ms
        self.backoff_s = backoff_s
        self._connections_max = connections_max
        self._session = session
        self._own_session = session is None
        self._current = 0
        self._producer_seq = 0
        self._tokens: dict[str, str] = {}
        self._partition_tokens: dict[tuple[str, int], str] = {}
        #: requests retried (for benchmarks and tests)
        self.retries = 0
        # TLS: a ready context, or one built from the cluster CA (and a client certificate).
        if ssl is None and (ca is not None or cert is not None):
            ssl = client_ssl(ca, cert, key)
        self._ssl: _ssl.SSLContext | None = ssl
        # The bearer token lives only in this header dict: never in repr, logs or errors.
        self._auth: dict[str, str] = {"Authorization": f"Bearer {token}"} if token else {}

    def __repr__(self) -> str:
        auth = ", token=<set>" if self._auth else ""
        tls = ", tls" if self._ssl is not None else ""
        return f"GeostoreClient({self.urls!r}, region={self.region!r}{tls}{auth})"

    @classmethod
    def from_cluster(
        cls, dir_or_file: str | Path, region: str | None = None, **kwargs: Any
    ) -> GeostoreClient:
        """A client of ``region``'s nodes as ``cluster.json`` (or the one in a dir) lists them;
        ``region`` may be omitted when the cluster has only one.

        When the file says ``"tls": true`` the nodes are called over https; when it names a
        ``ca`` file (relative to the file's folder) that CA is trusted unless the caller
        passes ``ssl`` or ``ca`` itself; when it names a ``token_file`` its secret is sent
        as the bearer token unless the caller passes ``token``."""
        cluster = load_cluster(dir_or_file)
        region = region or cluster.default_region()
        urls = cluster.urls(region)
        ids = [n.id for n in cluster.regions[region]]
        if cluster.ca is not None and kwargs.get("ssl") is None and kwargs.get("ca") is None:
            kwargs["ca"] = cluster.ca
        if kwargs.get("token") is None and cluster.token_file is not None:
            kwargs["token"] = cluster.read_token()
        return cls(urls, region, node_ids=ids, **kwargs)

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> GeostoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections_max),
            )
            self._own_session = True
        return self._session

    # --- tokens and producers ----------------------------------------------------------

    def token(self, stream: str, partition: int | None = None) -> str | None:
        """The token of the latest answered append to ``stream`` (that wrote ``partition``,
        when given): what a read-your-writes read passes as ``after``."""
        if partition is not None:
            return self._partition_tokens.get((stream, partition))
        return self._tokens.get(stream)

    def next_producer(self) -> Producer:
        """A fresh ``(id, seq)`` pair of this client's idempotent producer.

        The id changes every ``producer_span`` seqs (``ID.0``, ``ID.1``, ...). The server
        remembers a window of recent seqs per producer id and refuses a seq that fell below
        it; a retry comes late (after an attempt timeout) while later requests keep
        advancing the seqs, so at a high request rate a single id would push its own retry
        out of the window. Each id stops advancing after ``producer_span`` (below the
        server's window), so its late retries are still recognised."""
        seq = self._producer_seq
        self._producer_seq += 1
        return Producer(f"{self.producer_id}.{seq // self.producer_span}", seq)

    async def find_leader(self, *, timeout_s: float | None = None) -> str | None:
        """Ask a node who leads the region's data group and send to that node from now on,
        saving the forwarding hop a follower adds to every write. Returns the leader's URL
        (None when unknown or when node ids are not known). Only a hint: when the leader
        changes, the client fails over as usual."""
        if self.node_ids is None:
            return None
        status = await self.status(timeout_s=timeout_s)
        groups = status.get("groups") if isinstance(status, dict) else None
        if not isinstance(groups, dict):
            return None
        for group in groups.values():
            if not isinstance(group, dict):
                continue
            if self.region is not None and group.get("region") not in (None, self.region):
                continue
            leader = group.get("leader")
            if isinstance(leader, str) and leader in self.node_ids:
                self._current = self.node_ids.index(leader)
                return self.urls[self._current]
        return None

    # --- the API -----------------------------------------------------------------------

    async def create_stream(
        self,
        name: str,
        partitions: int = 1,
        key_field: str | None = None,
        schema: Mapping[str, Any] | None = None,
        homes: Mapping[int, str] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> StreamInfo:
        """Create ``name`` (idempotent when the definition is identical; 409 otherwise)."""
        body: dict[str, Any] = {
            "name": name,
            "partitions": partitions,
            **_given(
                key_field=key_field,
                schema=None if schema is None else dict(schema),
                homes=None if homes is None else {str(p): r for p, r in homes.items()},
            ),
        }
        answer = await self._call("POST", "/v1/streams", body=body, timeout_s=timeout_s)
        return StreamInfo.from_body(answer)

    async def append(
        self,
        stream: str,
        events: Sequence[Mapping[str, Any]],
        producer: Producer | Literal[False] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> AppendResult:
        """Append ``events`` (each ``{"body", "ts"?, "key"?, "partition"?}``).

        ``producer``: None takes the next pair of this client's idempotent producer (when the
        client is ``idempotent``), a :class:`Producer` is sent as given, False sends none.
        Partitions that failed with a retryable error are retried within the deadline (safe
        with a producer: the partitions that succeeded answer their original result)."""
        if producer is None and self.idempotent:
            producer = self.next_producer()
        prod = producer if isinstance(producer, Producer) else None
        body: dict[str, Any] = {"events": list(events)}
        if prod is not None:
            body["producer"] = prod.to_body()
        path = f"/v1/streams/{_quote(stream)}/events"
        deadline = self._deadline(timeout_s)
        while True:
            # With a producer a 504 (not committed in time, outcome unknown) is retried too:
            # the retry is deduplicated by the server and answers the original result.
            answer = await self._call(
                "POST",
                path,
                body=body,
                deadline=deadline,
                safe=prod is not None,
                retry_wait_timeout=prod is not None,
            )
            result = AppendResult.from_body(answer, prod)
            if result.token is not None:
                self._tokens[stream] = result.token
                for r in result.results:
                    self._partition_tokens[(stream, r.partition)] = result.token
            retryable = [e for e in result.errors if e.error.code in _RETRY_PARTITION]
            if prod is None or not retryable or _now() + self.backoff_s >= deadline:
                return result
            self.retries += 1
            await asyncio.sleep(self.backoff_s)

    async def read(
        self,
        stream: str,
        partition: int = 0,
        from_seq: int = 0,
        limit: int | None = None,
        consistency: Consistency | None = None,
        after: str | None = None,
        wait_ms: int | None = None,
        *,
        read_your_writes: bool | None = None,
        timeout_s: float | None = None,
    ) -> ReadResult:
        """Events of one partition from ``from_seq`` on, in seq order."""
        params: dict[str, Any] = {"partition": partition, "from_seq": from_seq}
        return await self._read(
            stream, params, limit, consistency, after, wait_ms, read_your_writes, timeout_s
        )

    async def read_time(
        self,
        stream: str,
        partition: int,
        from_ts: int,
        to_ts: int,
        *,
        from_seq: int | None = None,
        limit: int | None = None,
        consistency: Consistency | None = None,
        after: str | None = None,
        wait_ms: int | None = None,
        read_your_writes: bool | None = None,
        timeout_s: float | None = None,
    ) -> ReadResult:
        """Events with ``from_ts <= ts < to_ts``, in seq order; page on with ``from_seq``."""
        params: dict[str, Any] = {
            "partition": partition, "from_ts": from_ts, "to_ts": to_ts, **_given(from_seq=from_seq)
        }  # fmt: skip
        return await self._read(
            stream, params, limit, consistency, after, wait_ms, read_your_writes, timeout_s
        )

    async def _read(
        self,
        stream: str,
        params: dict[str, Any],
        limit: int | None,
        consistency: Consistency | None,
        after: str | None,
        wait_ms: int | None,
        read_your_writes: bool | None,
        timeout_s: float | None,
    ) -> ReadResult:
        params.update(_given(limit=limit, consistency=consistency))
        ryw = self.read_your_writes if read_your_writes is None else read_your_writes
        if after is None and ryw:
            after = self._partition_tokens.get((stream, params["partition"]))
        if after is not None:
            params["after"] = after
            if wait_ms is None:
                wait_ms = self.token_wait_ms
        if wait_ms is not None:
            params["wait_ms"] = wait_ms
        path = f"/v1/streams/{_quote(stream)}/events"
        answer = await self._call("GET", path, params=params, timeout_s=timeout_s)
        return ReadResult.from_body(answer)

    async def aggregate(
        self,
        stream: str,
        field: str,
        from_ts: int,
        to_ts: int,
        partition: int | None = None,
        window_us: int | None = None,
        *,
        scan_limit: int | None = None,
        consistency: Consistency | None = None,
        timeout_s: float | None = None,
    ) -> AggregateResult:
        """count/min/max/sum/avg of numeric ``field`` over ``[from_ts, to_ts)``."""
        params: dict[str, Any] = {
            "field": field,
            "from_ts": from_ts,
            "to_ts": to_ts,
            **_given(
                partition=partition,
                window_us=window_us,
                scan_limit=scan_limit,
                consistency=consistency,
            ),
        }
        path = f"/v1/streams/{_quote(stream)}/aggregate"
        answer = await self._call("GET", path, params=params, timeout_s=timeout_s)
        return AggregateResult.from_body(answer)

    async def tail(
        self,
        stream: str,
        partition: int = 0,
        from_seq: int | None = None,
        *,
        reconnect: bool = True,
        connect_timeout_s: float | None = None,
    ) -> AsyncIterator[Event]:
        """Committed events from ``from_seq`` (default: the next one) on, as they commit.

        When a node drops the stream the client reconnects (to the next node if needed) from
        the seq after the last event it yielded, so nothing is skipped or repeated."""
        next_seq = from_seq
        path = f"/v1/streams/{_quote(stream)}/tail"
        failures = 0
        while True:
            node = self.urls[self._current]
            params = _tail_params(partition, next_seq)
            try:
                async with self._stream(
                    node, path, params, "text/event-stream", connect_timeout_s
                ) as resp:
                    failures = 0
                    parser = SseParser()
                    async for raw in resp.content:
                        msg = parser.feed_line(raw.decode("utf-8").rstrip("\r\n"))
                        if msg is None or msg.event not in ("message", "event"):
                            continue
                        try:
                            event = Event.from_body(json.loads(msg.data))
                        except ValueError as exc:
                            raise CodecError(f"tail: bad event data {msg.data[:200]!r}") from exc
                        if next_seq is not None and event.seq < next_seq:
                            continue  # already yielded before a reconnect
                        next_seq = event.seq + 1
                        yield event
            except RequestFailed as err:
                if not (reconnect and err.retryable):
                    raise
            except aiohttp.ClientSSLError as exc:  # every node shares the CA: do not spin
                raise TlsFailed(
                    f"{node}: TLS handshake failed ({_tls_reason(exc)})", node=node
                ) from None
            except (aiohttp.ClientError, OSError, TimeoutError):
                if not reconnect:
                    raise
            failures += 1
            if failures > self.attempts_max:
                raise Unreachable(f"tail of {stream}/{partition}: no node kept the stream open")
            self._rotate()
            await asyncio.sleep(min(self.backoff_s * failures, _BACKOFF_MAX_S))

    async def status(self, node: str | None = None, *, timeout_s: float | None = None) -> Any:
        """``/v1/status`` of ``node`` (a URL), or of whichever node of the region answers."""
        return await self._call("GET", "/v1/status", node=node, timeout_s=timeout_s)

    async def health(self, node: str | None = None, *, timeout_s: float | None = None) -> Health:
        """``/v1/health`` of one node: a 503 answer is a result (not ready), not an error."""
        url = (node or self.urls[self._current]).rstrip("/")
        t = timeout_s or self.attempt_timeout_s
        try:
            async with self._http().get(
                url + "/v1/health",
                headers={"Accept": _MIME[self.content_type], **self._auth},
                ssl=self._ssl_arg(),
                timeout=aiohttp.ClientTimeout(total=t),
            ) as resp:
                raw = await resp.read()
                return Health(url, resp.status == 200, resp.status, _decode(resp, raw))
        except TimeoutError:
            raise CallTimeout(f"{url} did not answer /v1/health within {t:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(f"{url}: {exc}", node=url) from None

    async def health_all(self, *, timeout_s: float | None = None) -> list[Health]:
        """Every node's health; an unreachable node is reported as not ok (status 0)."""

        async def one(url: str) -> Health:
            try:
                return await self.health(url, timeout_s=timeout_s)
            except ApiError as exc:
                return Health(url, False, 0, {"error": str(exc)})

        return list(await asyncio.gather(*(one(u) for u in self.urls)))

    # --- quarantine (failback) ----------------------------------------------------------

    async def quarantine(
        self,
        stream: str | None = None,
        partition: int | None = None,
        *,
        limit: int | None = None,
        consistency: Consistency | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """This region's quarantine (``GET /v1/quarantine``): runs of events a failback moved
        out of their partition, with ``region``, ``runs_total`` and ``events_total``."""
        params = _given(stream=stream, partition=partition, limit=limit, consistency=consistency)
        return await self._call("GET", "/v1/quarantine", params=params, timeout_s=timeout_s)

    async def quarantine_clear(
        self,
        stream: str | None = None,
        partition: int | None = None,
        *,
        through_epoch: int | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Drop quarantined runs of the region (``POST /v1/admin/quarantine/clear``, needs the
        admin role): all of them, a stream's, or a partition's, optionally only those
        superseded at or before ``through_epoch``. Export them first: they are gone after.
        Answers ``{"region", "cleared": {runs, events, bytes}, "left": {...}}``. Not retried
        once sent (a retry could drop runs a failback added meanwhile)."""
        body = _given(stream=stream, partition=partition, through_epoch=through_epoch)
        return await self._call(
            "POST", "/v1/admin/quarantine/clear", body=body, timeout_s=timeout_s, safe=False
        )

    async def quarantine_export(
        self, stream: str | None = None, partition: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The quarantined events of the node the client talks to (call :meth:`find_leader`
        first for the region's latest copy), one dict per event, read line by line as the
        node streams them (``GET /v1/quarantine/export``). The connection is tried on the
        next node when it cannot be made; a stream cut midway raises Unreachable."""
        params = _given(stream=stream, partition=None if partition is None else str(partition))
        for attempt in range(len(self.urls)):
            node = self.urls[self._current]
            try:
                async with self._stream(
                    node, "/v1/quarantine/export", params, "application/x-ndjson"
                ) as resp:
                    async for raw in resp.content:
                        if raw.strip():
                            try:
                                yield json.loads(raw)
                            except ValueError as exc:
                                raise CodecError(f"export: bad line {raw[:200]!r}") from exc
                    return
            except aiohttp.ClientSSLError as exc:
                raise TlsFailed(f"{node}: TLS handshake failed ({_tls_reason(exc)})") from None
            except aiohttp.ClientConnectorError as exc:
                if attempt + 1 == len(self.urls):
                    raise Unreachable(f"{node}: {exc.os_error or exc}", node=node) from None
                self._rotate()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise Unreachable(f"quarantine export from {node} cut: {exc}", node=node) from None

    # --- transport ---------------------------------------------------------------------

    def _ssl_arg(self) -> _ssl.SSLContext | bool:
        # True: aiohttp's default verification (https URLs without a cluster CA given).
        return self._ssl if self._ssl is not None else True

    def _deadline(self, timeout_s: float | None) -> float:
        return _now() + (timeout_s if timeout_s is not None else self.timeout_s)

    def _rotate(self) -> None:
        self._current = (self._current + 1) % len(self.urls)

    def _follow_leader(self, named: str | None) -> bool:
        """Send later calls to the leader an answer named, when it is one of this client's
        own nodes (see the module docstring); True when the client moved."""
        if named is None or self.node_ids is None or named not in self.node_ids:
            return False
        index = self.node_ids.index(named)
        if index == self._current:
            return False
        self._current = index
        return True

    def _encode(self, body: Any) -> bytes:
        if self.content_type == "cbor":
            return dumps_plain(body)
        return json.dumps(body, separators=(",", ":")).encode()

    @contextlib.asynccontextmanager
    async def _stream(
        self,
        node: str,
        path: str,
        params: Mapping[str, Any],
        accept: str,
        connect_timeout_s: float | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A streamed GET of ``path`` on ``node`` (the tail, the quarantine export): no total
        deadline, only the connection's (``attempt_timeout_s`` unless given); a line may
        carry a whole event. An error status is raised as the typed error of its body; the
        caller decides what a failure means (reconnect, next node, or surface it)."""
        timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s or self.attempt_timeout_s
        )
        async with self._http().get(
            node + path,
            params=params,
            headers={"Accept": accept, **self._auth},
            ssl=self._ssl_arg(),
            timeout=timeout,
            read_bufsize=_TAIL_LINE_BYTES_MAX,  # one line carries a whole event
        ) as resp:
            if resp.status >= 400:
                raise await self._error(resp, node)
            yield resp

    async def _error(self, resp: aiohttp.ClientResponse, node: str) -> RequestFailed:
        raw = await resp.read()
        try:
            body = _decode(resp, raw)
        except CodecError:
            body = raw.decode("utf-8", "replace")
        return error_from_body(resp.status, body, retry_after_s=_retry_after(resp), node=node)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout_s: float | None = None,
        deadline: float | None = None,
        safe: bool = True,
        retry_wait_timeout: bool = False,
        node: str | None = None,
    ) -> Any:
        """One API call with retries on other nodes, within the deadline.

        ``safe``: the request may be repeated (read-only, idempotent, or carrying a producer).
        When False it is repeated only when the connection was never made."""
        if deadline is None:
            deadline = self._deadline(timeout_s)
        data = self._encode(body) if body is not None else None
        mime = _MIME[self.content_type]
        headers = {"Accept": mime, **self._auth}
        if data is not None:
            headers["Content-Type"] = mime
        query = {k: _param(v) for k, v in (params or {}).items()}
        last: ApiError | None = None
        for attempt in range(self.attempts_max):
            remaining = deadline - _now()
            if remaining <= 0:
                break
            url = (node or self.urls[self._current]).rstrip("/")
            moved = False
            try:
                async with self._http().request(
                    method,
                    url + path,
                    params=query,
                    data=data,
                    headers=headers,
                    ssl=self._ssl_arg(),
                    timeout=aiohttp.ClientTimeout(total=min(remaining, self.attempt_timeout_s)),
                ) as resp:
                    if node is None:
                        moved = self._follow_leader(resp.headers.get(LEADER_HEADER))
                    if resp.status < 400:
                        return _decode(resp, await resp.read())
                    err = await self._error(resp, url)
                wait_timeout = retry_wait_timeout and err.code is ErrorCode.WAIT_TIMEOUT
                if not (safe and (err.retryable or wait_timeout)):
                    raise err
                last = err
                pause = err.retry_after_s if err.retry_after_s is not None else self.backoff_s
            except aiohttp.ClientSSLError as exc:
                raise TlsFailed(
                    f"{url}: TLS handshake failed ({_tls_reason(exc)})", node=url
                ) from None
            except aiohttp.ClientConnectorError as exc:
                # never connected: nothing was sent, any request may go elsewhere
                last = Unreachable(f"{url}: {exc.os_error or exc}", node=url)
                pause = self.backoff_s if (attempt + 1) % len(self.urls) == 0 else 0.0
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                what = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
                if not safe:
                    raise CallTimeout(
                        f"{method} {path} to {url}: {what}; the outcome is unknown "
                        "(send appends with a producer to retry them safely)",
                        node=url,
                    ) from None
                last = (
                    CallTimeout(f"{url}: {what}", node=url)
                    if isinstance(exc, TimeoutError)
                    else Unreachable(f"{url}: {what}", node=url)
                )
                pause = self.backoff_s if (attempt + 1) % len(self.urls) == 0 else 0.0
            if moved:  # the named leader is the better next try: no Retry-After wait
                pause = min(pause, self.backoff_s)
            elif node is None:
                self._rotate()
            self.retries += 1
            pause = min(pause, _BACKOFF_MAX_S, max(0.0, deadline - _now()))
            if pause > 0:
                await asyncio.sleep(pause)
        if last is None:
            last = CallTimeout(f"{method} {path}: no answer within the deadline")
        elif isinstance(last, RequestFailed):
            raise last
        where = f" of region {self.region}" if self.region else ""
        tried = ", ".join(self.urls) if node is None else node
        message = f"{method} {path}: no node{where} answered ({last.message}); tried {tried}"
        if isinstance(last, CallTimeout):
            raise CallTimeout(message, **last.details)
        raise Unreachable(message, **last.details)


#: Partition errors of a multi-partition append that a producer retry may fix.
_RETRY_PARTITION = frozenset(
    {
        ErrorCode.NOT_LEADER,
        ErrorCode.NO_QUORUM,
        ErrorCode.MOVING,
        ErrorCode.REPLICATION_LAG,
        ErrorCode.LEASE_LAPSED,
        ErrorCode.UNAVAILABLE,
    }
)


def _tls_reason(exc: aiohttp.ClientSSLError) -> str:
    os_error = getattr(exc, "os_error", None)
    reason = getattr(os_error, "reason", None) or getattr(os_error, "strerror", None)
    return str(reason or os_error or exc)


def _now() -> float:
    return asyncio.get_running_loop().time()


@functools.lru_cache(maxsize=1024)
def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _tail_params(partition: int, from_seq: int | None) -> dict[str, int]:
    if from_seq is None:
        return {"partition": partition}
    return {"partition": partition, "from_seq": from_seq}


def _given(**values: Any) -> dict[str, Any]:
    """The named values that were given (not None), in order: a request's optional fields."""
    return {name: value for name, value in values.items() if value is not None}


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    raw = resp.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def _decode(resp: aiohttp.ClientResponse, raw: bytes) -> Any:
    if not raw:
        return None
    if resp.content_type == "application/cbor":
        return loads_plain(raw, _ANSWER_LIMITS)
    if resp.content_type in ("application/json", "application/problem+json") or raw[:1] in (
        b"{",
        b"[",
    ):
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise CodecError(f"answer is not valid JSON: {exc}") from None
    return raw.decode("utf-8", "replace")
