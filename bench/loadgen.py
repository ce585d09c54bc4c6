"""The load generator: a separate async process driving a cluster with appends.

Theory of operation:

- A *phase* is one measured run: closed loop (``concurrency`` workers, each with one request
  outstanding, as real clients behave) or open loop (requests *scheduled* at a fixed offered
  rate, whatever the answers do, to find the knee), each request carrying ``batch`` events.
- Every phase starts with a warm-up that is not measured. Latency is recorded in an HDR
  histogram (microseconds). In the open loop a request's latency runs from its *intended*
  send time, so a server that falls behind shows its queueing delay instead of hiding it
  (no coordinated omission); at most ``outstanding_max`` requests are in flight and a send
  that had to wait for a slot counts as ``late``.
- Throughput counts requests *completed* inside the measured window (after the warm-up, up
  to its end) divided by the window's length.
- Time comes from a :class:`Clock`. The real one is the event loop's; tests use
  :class:`VirtualClock`, which jumps to the next timer whenever every task is blocked, so
  the scheduling can be checked exactly (an open loop at R/s for D s issues R*D requests).
- Targets: ``geostore`` (the async client over one aiohttp session, idempotent producer) or
  ``http-list`` (a plain ``POST {url}/append`` with ``{"events": [...]}``, which the
  PySyncObj comparison nodes of bench/region.py serve).
- CPU: given ``--cpu-pids``, the process samples those processes' user+system CPU time
  (from /proc) at the window's edges and reports CPU microseconds per acknowledged event
  per process, its own included.

Usage::

    python -m bench.loadgen --cluster DIR --region r1 --stream bench \\
        --phase closed:16:1 --phase open:2000:1 --phase closed:4:100 --duration 10 --warmup 2
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import os
import ssl as _ssl
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import orjson
from hdrh.histogram import HdrHistogram

from bench.results import Metric, Result, emit, percentiles

if TYPE_CHECKING:
    from geostore.client import GeostoreClient

#: A closed-loop worker whose request failed waits this long before the next one.
FAILURE_PAUSE_S = 0.01
#: Latencies from 1 us to 10 minutes, 3 significant digits.
_HIST_MAX_US = 600_000_000


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, _HIST_MAX_US, 3)


# --- clocks ------------------------------------------------------------------------------


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep_until(self, when: float) -> None: ...


class LoopClock:
    """The monotonic clock, read fresh at every call; sleeps are the event loop's.

    Not ``loop.time()``: uvloop's is libuv's cached loop time, in whole milliseconds and
    frozen for a loop iteration, which rounded every few-ms latency to 1 ms steps."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, when: float) -> None:
        delay = when - self.now()
        await asyncio.sleep(delay if delay > 0 else 0)


class VirtualClock:
    """Virtual time for tests: :meth:`run` lets every runnable task run, then advances time
    to the earliest pending ``sleep_until`` and wakes it; nothing ever waits for real."""

    def __init__(self) -> None:
        self._now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, when: float) -> None:
        if when <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (when, next(self._ids), fut))
        await fut

    async def sleep(self, delay: float) -> None:
        await self.sleep_until(self._now + delay)

    async def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        task = asyncio.ensure_future(coro)
        while not task.done():
            for _ in range(50):  # let everything runnable run to its next wait
                await asyncio.sleep(0)
                if task.done():
                    break
            if task.done():
                break
            if not self._timers:
                raise RuntimeError("every task waits on something other than the clock")
            when, _, fut = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            if not fut.cancelled():
                fut.set_result(None)
        return task.result()


# --- phases ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Phase:
    """``closed:CONCURRENCY:BATCH`` or ``open:RATE_PER_S:BATCH``."""

    mode: str
    level: float  # concurrency (closed) or offered requests/s (open)
    batch: int = 1

    @staticmethod
    def parse(text: str) -> Phase:
        parts = text.split(":")
        if len(parts) not in (2, 3) or parts[0] not in ("closed", "open"):
            raise argparse.ArgumentTypeError(
                f"{text!r}: use closed:CONCURRENCY[:BATCH] or open:RATE[:BATCH]"
            )
        try:
            level = float(parts[1])
            batch = int(parts[2]) if len(parts) == 3 else 1
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: numbers expected") from None
        if level <= 0 or batch < 1 or (parts[0] == "closed" and level != int(level)):
            raise argparse.ArgumentTypeError(f"{text!r}: level > 0 (whole for closed), batch >= 1")
        return Phase(parts[0], level, batch)

    @property
    def name(self) -> str:
        level = f"{int(self.level)}" if self.level == int(self.level) else f"{self.level:g}"
        what = "c" if self.mode == "closed" else "rate"
        return f"{self.mode}-{what}{level}-b{self.batch}"


@dataclass(slots=True)
class PhaseStats:
    """What one phase measured (inside its window; the warm-up is excluded)."""

    phase: Phase
    window_s: float
    requests_ok: int = 0
    events_ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    late: int = 0
    histogram: HdrHistogram = field(default_factory=new_histogram)
    cpu_us_per_event: dict[str, float] = field(default_factory=dict)
    rss_bytes: dict[str, dict[str, int]] = field(default_factory=dict)
    rss_series: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return self.requests_ok / self.window_s if self.window_s > 0 else 0.0

    @property
    def events_per_s(self) -> float:
        return self.events_ok / self.window_s if self.window_s > 0 else 0.0

    def latency_ms(self) -> dict[str, float]:
        if self.histogram.get_total_count() == 0:
            return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
        return {k: v / 1000 for k, v in percentiles(self.histogram).items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase.name,
            "mode": self.phase.mode,
            "level": self.phase.level,
            "batch": self.phase.batch,
            "window_s": self.window_s,
            "requests_ok": self.requests_ok,
            "events_ok": self.events_ok,
            "requests_per_s": self.requests_per_s,
            "events_per_s": self.events_per_s,
            "latency_ms": self.latency_ms(),
            "failed": dict(self.failed),
            "late": self.late,
            "cpu_us_per_event": dict(self.cpu_us_per_event),
            "rss_bytes": dict(self.rss_bytes),
            "rss_series": [{"t_s": t, "rss_bytes": rss} for t, rss in self.rss_series],
        }


#: One request: sends ``batch`` events, returns how many were acknowledged.
Operation = Callable[[int], Awaitable[int]]


class _Window:
    """Records completions inside ``(start, end]`` and latencies of requests begun in it."""

    def __init__(self, stats: PhaseStats, start: float, end: float) -> None:
        self.stats, self.start, self.end = stats, start, end

    def done(self, began: float, finished: float, events: int) -> None:
        if self.start < finished <= self.end:
            self.stats.requests_ok += 1
            self.stats.events_ok += events
        if began >= self.start and finished <= self.end:
            latency_us = max(1, min(_HIST_MAX_US, round((finished - began) * 1e6)))
            self.stats.histogram.record_value(latency_us)

    def failed(self, finished: float, code: str) -> None:
        if self.start < finished <= self.end:
            self.stats.failed[code] = self.stats.failed.get(code, 0) + 1


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "code", None) or type(exc).__name__)


async def closed_loop(
    op: Operation, phase: Phase, duration_s: float, warmup_s: float, clock: Clock
) -> PhaseStats:
    """``phase.level`` workers, each sending its next request when the last one answered."""
    stats = PhaseStats(phase, duration_s)
    t0 = clock.now()
    window = _Window(stats, t0 + warmup_s, t0 + warmup_s + duration_s)

    async def worker() -> None:
        while clock.now() < window.end:
            began = clock.now()
            try:
                events = await op(phase.batch)
            except Exception as exc:  # a failed request is counted, the load goes on
                window.failed(clock.now(), _code(exc))
                await clock.sleep_until(clock.now() + FAILURE_PAUSE_S)  # no hot loop
                continue
            window.done(began, clock.now(), events)

    await asyncio.gather(*(worker() for _ in range(int(phase.level))))
    return stats


async def open_loop(
    op: Operation,
    phase: Phase,
    duration_s: float,
    warmup_s: float,
    clock: Clock,
    outstanding_max: int = 1024,
) -> PhaseStats:
    """Requests at ``phase.level``/s on a fixed schedule; latency from the intended time."""
    stats = PhaseStats(phase, duration_s)
    t0 = clock.now()
    window = _Window(stats, t0 + warmup_s, t0 + warmup_s + duration_s)
    interval = 1.0 / phase.level
    slots = asyncio.Semaphore(outstanding_max)
    tasks: set[asyncio.Task[None]] = set()

    async def one(intended: float) -> None:
        try:
            events = await op(phase.batch)
        except Exception as exc:
            window.failed(clock.now(), _code(exc))
        else:
            window.done(intended, clock.now(), events)
        finally:
            slots.release()

    for i in itertools.count():
        # multiplying (not accumulating) keeps the schedule exact over long runs
        intended = t0 + i * interval
        if intended >= window.end:
            break
        await clock.sleep_until(intended)
        if slots.locked():
            stats.late += 1 if intended >= window.start else 0
        await slots.acquire()
        task = asyncio.ensure_future(one(intended))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return stats


async def run_phase(
    op: Operation,
    phase: Phase,
    duration_s: float,
    warmup_s: float,
    clock: Clock,
    outstanding_max: int = 1024,
) -> PhaseStats:
    if phase.mode == "closed":
        return await closed_loop(op, phase, duration_s, warmup_s, clock)
    return await open_loop(op, phase, duration_s, warmup_s, clock, outstanding_max)


# --- CPU sampling ------------------------------------------------------------------------


T = TypeVar("T")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read().decode()
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS from /proc), bytes."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for {pid}")


class CpuSampler:
    """CPU time and RSS of named processes at the window's edges (taken by a timer task),
    and with ``rss_every_s`` the RSS every so often in between (soak runs)."""

    def __init__(self, pids: dict[str, int], rss_every_s: float | None = None) -> None:
        self.pids = pids
        self.rss_every_s = rss_every_s
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}
        self.rss_start: dict[str, int] = {}
        self.rss_end: dict[str, int] = {}
        #: (seconds into the window, RSS per process), from the window's start to its end
        self.rss_series: list[tuple[float, dict[str, int]]] = []

    def _per_process(self, read: Callable[[int], T]) -> dict[str, T]:
        """``read(pid)`` of every process that still answers it (a gone one is left out)."""
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = read(pid)
            except (OSError, ValueError, IndexError):
                continue
        return out

    def _rss(self) -> dict[str, int]:
        return self._per_process(rss_bytes)

    def _sample(self) -> dict[str, float]:
        return self._per_process(cpu_seconds)

    async def around(self, clock: Clock, start: float, end: float) -> None:
        await clock.sleep_until(start)
        self.start, self.rss_start = self._sample(), self._rss()
        self.rss_series.append((0.0, self.rss_start))
        if self.rss_every_s:
            at = start + self.rss_every_s
            while at < end:
                await clock.sleep_until(at)
                self.rss_series.append((at - start, self._rss()))
                at += self.rss_every_s
        await clock.sleep_until(end)
        self.end, self.rss_end = self._sample(), self._rss()
        self.rss_series.append((end - start, self.rss_end))

    def rss(self) -> dict[str, dict[str, int]]:
        """Per process: RSS at the window's start and end, bytes."""
        return {
            name: {"start": self.rss_start[name], "end": self.rss_end[name]}
            for name in self.pids
            if name in self.rss_start and name in self.rss_end
        }

    def per_event_us(self, events: int) -> dict[str, float]:
        if events <= 0:
            return {}
        return {
            name: (self.end[name] - self.start[name]) * 1e6 / events
            for name in self.pids
            if name in self.start and name in self.end
        }


# --- targets -----------------------------------------------------------------------------


#: Events made before the first phase and then sent round and round (see _event_source).
EVENT_POOL = 20_000


def _event_source(workload: str, seed: int) -> Iterator[dict[str, Any]]:
    """The workload's events, made before any phase starts and then cycled.

    Making an event (random numbers, a dict) costs the load generator about as much CPU as
    the leader spends storing it; on a 2-core machine that CPU is taken from the nodes under
    test. So the first ``EVENT_POOL`` events are made up front (loading a data set never runs
    inside a measured window either) and sent again in the same order; the store does not
    care that bodies repeat.
    """
    from bench.workloads import endless

    pool = list(itertools.islice(endless(workload, seed), EVENT_POOL))
    return itertools.cycle(pool)


class RawFailure(Exception):
    """A request the raw client got a refusal for; ``code`` is the API's error code."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class _RawConnection(asyncio.Protocol):
    """One keep-alive connection of :class:`RawHttp`: bytes in, one answer at a time out."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    @property
    def unsolicited(self) -> bool:
        """Bytes arrived while no request was waiting."""
        return self._waiter is None and bool(self._buf)

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self._waiter is None
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return waiter

    def data_received(self, data: bytes) -> None:
        self._buf += data
        waiter = self._waiter
        if waiter is None:
            return
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        length = 0
        for line in bytes(buf[:end]).split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        total = end + 4 + length
        if len(buf) < total:
            return
        status = int(buf[9:12])
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        self._waiter = None
        if not waiter.done():
            waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ConnectionResetError("the server closed the connection"))


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class RawHttp:
    """A lean HTTP/1.1 keep-alive client: one connection per outstanding request, reused.

    The load generator shares the machine with the nodes it measures, so every microsecond
    it spends per request is taken from them; an aiohttp client request costs a few hundred,
    a stream reader and writer with a cancellation scope around each request about 90. This
    one is a plain protocol per connection and a timer handle per request: it writes the
    request bytes and reads a ``Content-Length`` answer (what aiohttp servers send), nothing
    else: no redirects, no chunked answers. ``https`` URLs are spoken over TLS with ``ssl``
    (the cluster's CA), ``headers`` (a bearer token) go with every request.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float,
        *,
        ssl: _ssl.SSLContext | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or parsed.hostname is None:
            raise ValueError(f"the raw client speaks http and https only, not {url!r}")
        self.host = parsed.hostname
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.ssl: _ssl.SSLContext | None = None
        if parsed.scheme == "https":
            self.ssl = ssl if ssl is not None else _ssl.create_default_context()
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.timeout_s = timeout_s
        self._idle: list[_RawConnection] = []
        self._open: set[_RawConnection] = set()
        self._heads: dict[tuple[str, str, int], bytes] = {}

    def _head(self, path: str, content_type: str, length: int) -> bytes:
        key = (path, content_type, length)
        head = self._heads.get(key)
        if head is None:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: {content_type}\r\nAccept: {content_type}\r\n"
                f"{self.extra}Content-Length: {length}\r\n\r\n"
            ).encode()
            if len(self._heads) >= 4096:
                self._heads.clear()
            self._heads[key] = head
        return head

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        """POST ``body``; the answer's status and body. Raises on a broken connection."""
        loop = asyncio.get_running_loop()
        conn = self._idle.pop() if self._idle else None
        while conn is not None and (conn.lost or conn.unsolicited):
            # closed, or the server sent bytes nobody asked for (an answer to no request
            # can only be a refusal before a close): never read them as the next answer
            self._open.discard(conn)
            if conn.transport is not None:
                conn.transport.close()
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            _, fresh = await asyncio.wait_for(
                loop.create_connection(_RawConnection, self.host, self.port, ssl=self.ssl),
                self.timeout_s,
            )
            self._open.add(fresh)
            conn = fresh
        waiter = conn.request(self._head(path, content_type, len(body)) + body)
        timer = loop.call_later(self.timeout_s, _expire, waiter)
        try:
            answer = await waiter
        except BaseException:
            self._open.discard(conn)
            if conn.transport is not None:
                conn.transport.close()
            raise
        finally:
            timer.cancel()
        self._idle.append(conn)
        return answer

    def close_now(self) -> None:
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.close()
        self._open.clear()
        self._idle.clear()

    async def close(self) -> None:
        self.close_now()


class LeanAppender:
    """Appends of one stream over :class:`RawHttp` to the node ``client`` picked, each with the
    client's idempotent producer pair; anything but a clean answer (a refusal, a partition
    error, a broken or silent connection) is retried through ``client`` itself with the same
    pair, which the server deduplicates and which follows the leader and retries like any
    user's client, after which the lean path aims at the node the client uses now.

    The load generators share the machine with the nodes they measure: an aiohttp request
    costs the loop a few hundred microseconds more than this path (docs/benchmarks.md).
    ``lean`` and ``fallbacks`` count the requests each way went."""

    def __init__(self, client: GeostoreClient, stream: str) -> None:
        self.client = client
        self.path = f"/v1/streams/{urllib.parse.quote(stream, safe='')}/events"
        self.stream = stream
        self.lean = 0
        self.fallbacks = 0
        self._url = ""
        self._raw: RawHttp | None = None
        self._aim()

    def _aim(self) -> None:
        url = self.client.urls[self.client._current]
        if url != self._url:
            old = self._raw
            self._url = url
            # an attempt that outlives the client's own attempt timeout falls back (safely)
            self._raw = RawHttp(
                url,
                self.client.attempt_timeout_s,
                ssl=self.client._ssl,
                headers=self.client._auth,
            )
            if old is not None:
                old.close_now()

    async def append(self, events: list[dict[str, Any]]) -> int:
        """Append ``events``; the number stored, or the typed error of the client's retry."""
        producer = self.client.next_producer()
        body = _dumps({"events": events, "producer": producer.to_body()})
        assert self._raw is not None
        try:
            status, data = await self._raw.post(self.path, body, "application/json")
            if status == 200:
                results = orjson.loads(data)["results"]
                if not any("error" in r for r in results):
                    self.lean += 1
                    return sum(r["last_seq"] - r["first_seq"] + 1 for r in results)
        except (
            OSError,
            EOFError,  # asyncio.IncompleteReadError
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,  # not JSON
            KeyError,
            TypeError,
        ):
            pass
        self.fallbacks += 1
        result = await self.client.append(self.stream, events, producer)
        self._aim()
        if result.errors:
            raise result.errors[0].error
        return result.count

    async def close(self) -> None:
        if self._raw is not None:
            await self._raw.close()


async def geostore_target(
    args: argparse.Namespace, events: Iterator[dict[str, Any]]
) -> tuple[Operation, Callable[[], Awaitable[None]]]:
    """Appends through GeostoreClient (idempotent producer, one aiohttp session), or with
    ``--client raw`` through :class:`RawHttp` to the node the client picked (the leader
    with ``--to-leader``), JSON bodies with an idempotent producer as the client sends them."""
    from geostore.client import GeostoreClient

    if args.cluster:
        client = GeostoreClient.from_cluster(
            args.cluster, args.region, timeout_s=args.timeout, content_type=args.content_type
        )
    else:
        client = GeostoreClient(
            args.url, args.region, timeout_s=args.timeout, content_type=args.content_type
        )
    if args.create:
        await client.create_stream(args.stream, args.partitions)
    if args.to_leader:
        leader = await client.find_leader()
        print(f"loadgen: sending to the leader at {leader}", file=sys.stderr)

    if args.client == "raw":
        url = client.urls[client._current]
        ssl_ctx, auth = client._ssl, dict(client._auth)  # the cluster's CA and token
        await client.close()
        return _raw_append(args, events, url, ssl_ctx, auth)

    async def op(batch: int) -> int:
        chunk = list(itertools.islice(events, batch))
        result = await client.append(args.stream, chunk)
        if result.errors:
            raise result.errors[0].error
        return result.count

    return op, client.close


def _dumps(body: Any) -> bytes:
    """A request body as JSON: orjson (a fraction of ``json.dumps``'s CPU, which the load
    generator would otherwise take from the nodes on a small machine), ``json`` for what
    orjson cannot encode. The workloads carry no NaN (missing values are None)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()


def _raw_append(
    args: argparse.Namespace,
    events: Iterator[dict[str, Any]],
    url: str,
    ssl_ctx: _ssl.SSLContext | None = None,
    auth: Mapping[str, str] | None = None,
) -> tuple[Operation, Callable[[], Awaitable[None]]]:
    raw = RawHttp(url, args.timeout, ssl=ssl_ctx, headers=auth)
    path = f"/v1/streams/{urllib.parse.quote(args.stream, safe='')}/events"
    producer = f"loadgen-{os.getpid()}"
    seqs = itertools.count()

    async def op(batch: int) -> int:
        body = {
            "events": list(itertools.islice(events, batch)),
            "producer": {"id": producer, "seq": next(seqs)},
        }
        status, data = await raw.post(path, _dumps(body), "application/json")
        answer = orjson.loads(data)
        if status != 200:
            raise RawFailure(str(answer.get("error", {}).get("code", f"http_{status}")))
        count = 0
        for item in answer["results"]:
            if "error" in item:
                raise RawFailure(str(item["error"].get("code", "error")))
            count += item["last_seq"] - item["first_seq"] + 1
        return count

    return op, raw.close


async def http_list_target(
    args: argparse.Namespace, events: Iterator[dict[str, Any]]
) -> tuple[Operation, Callable[[], Awaitable[None]]]:
    """``POST {url}/append`` ``{"events": [...]}`` round-robin over ``--url``s (PySyncObj)."""
    if args.client == "raw":
        clients = itertools.cycle([RawHttp(u, args.timeout) for u in args.url])

        async def raw_op(batch: int) -> int:
            body = _dumps({"events": list(itertools.islice(events, batch))})
            status, data = await next(clients).post("/append", body, "application/json")
            if status != 200:
                raise RuntimeError(f"http {status}: {data[:200]!r}")
            return int(orjson.loads(data)["count"])

        async def close_all() -> None:
            for _ in args.url:
                await next(clients).close()

        return raw_op, close_all

    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024))
    urls = itertools.cycle(args.url)
    timeout = aiohttp.ClientTimeout(total=args.timeout)

    async def op(batch: int) -> int:
        chunk = list(itertools.islice(events, batch))
        async with session.post(
            next(urls) + "/append", json={"events": chunk}, timeout=timeout
        ) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"http {resp.status}: {body}")
            return int(body["count"])

    return op, session.close


async def run(args: argparse.Namespace) -> list[PhaseStats]:
    events = _event_source(args.workload, args.seed)
    maker = geostore_target if args.target == "geostore" else http_list_target
    op, close = await maker(args, events)
    clock = LoopClock()
    pids = {f"pid{p}": p for p in args.cpu_pids}
    names = dict(zip(pids, args.cpu_names or [], strict=False))
    pids = {names.get(k, k): v for k, v in pids.items()}
    pids["loadgen"] = os.getpid()
    out: list[PhaseStats] = []
    try:
        for phase in args.phase:
            sampler = CpuSampler(pids, args.rss_every)
            start = clock.now() + args.warmup
            sampling = asyncio.ensure_future(sampler.around(clock, start, start + args.duration))
            stats = await run_phase(
                op, phase, args.duration, args.warmup, clock, args.outstanding_max
            )
            await sampling
            stats.cpu_us_per_event = sampler.per_event_us(stats.events_ok)
            stats.rss_bytes = sampler.rss()
            stats.rss_series = sampler.rss_series
            out.append(stats)
            print(_line(stats), file=sys.stderr, flush=True)
    finally:
        await close()
    return out


def _line(s: PhaseStats) -> str:
    lat = s.latency_ms()
    fails = sum(s.failed.values())
    return (
        f"{s.phase.name}: {s.requests_per_s:,.0f} req/s, {s.events_per_s:,.0f} events/s, "
        f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms"
        + (f", {fails} failed {s.failed}" if fails else "")
        + (f", {s.late} late" if s.late else "")
    )


def to_result(name: str, config: dict[str, Any], phases: Sequence[PhaseStats]) -> Result:
    metrics: list[Metric] = []
    for s in phases:
        lat = s.latency_ms()
        p = s.phase.name
        metrics += [
            Metric(f"{p}.requests_per_s", s.requests_per_s, "1/s"),
            Metric(f"{p}.events_per_s", s.events_per_s, "1/s"),
            Metric(f"{p}.p50", lat["p50"], "ms", better="lower"),
            Metric(f"{p}.p99", lat["p99"], "ms", better="lower"),
            Metric(f"{p}.failed", sum(s.failed.values()), "requests", better="lower"),
        ]
        metrics += [
            Metric(f"{p}.cpu_us_per_event.{proc}", v, "us", better="lower")
            for proc, v in sorted(s.cpu_us_per_event.items())
        ]
    return Result(name, {**config, "phases": [s.to_dict() for s in phases]}, metrics)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    p.add_argument("--target", choices=("geostore", "http-list"), default="geostore")
    p.add_argument("--cluster", default=None, help="cluster dir (geostore target)")
    p.add_argument("--url", action="append", default=[], help="node URL (repeatable)")
    p.add_argument("--region", default=None)
    p.add_argument("--stream", default="bench")
    p.add_argument("--create", action="store_true", help="create the stream first")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument(
        "--to-leader", action="store_true", help="send to the region's leader (no forwarding)"
    )
    p.add_argument("--content-type", choices=("json", "cbor"), default="json")
    p.add_argument(
        "--client",
        choices=("client", "raw"),
        default="client",
        help="client: GeostoreClient / aiohttp; raw: the lean keep-alive HTTP client (JSON)",
    )
    p.add_argument("--workload", choices=("synthetic", "flights", "weather"), default="synthetic")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--phase", type=Phase.parse, action="append", required=True)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per phase")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per request (s)")
    p.add_argument("--outstanding-max", type=int, default=1024, help="open-loop in-flight cap")
    p.add_argument("--cpu-pids", type=int, nargs="*", default=[], help="processes to sample")
    p.add_argument("--rss-every", type=float, default=None,
                   help="also sample the processes' RSS every so many seconds of the window")  # fmt: skip
    p.add_argument("--cpu-names", nargs="*", default=[], help="names for --cpu-pids")
    p.add_argument("--name", default="loadgen", help="result name")
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--quiet", action="store_true", help="only the JSON line on stdout")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.target == "http-list" and not args.url:
        print("loadgen: --target http-list needs --url", file=sys.stderr)
        return 2
    if args.target == "geostore" and not (args.cluster or args.url):
        print("loadgen: give --cluster DIR or --url", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    started = time.time()
    phases = asyncio.run(run(args))
    config = {
        "target": args.target,
        "workload": args.workload,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "content_type": args.content_type,
        "client": args.client,
        "stream": args.stream,
        "wall_s": round(time.time() - started, 2),
    }
    result = to_result(args.name, config, phases)
    if args.quiet:
        doc = result.to_dict()
        print(json.dumps(doc, sort_keys=True))
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        emit(result, json_out=args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
