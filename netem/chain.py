"""The data path: one direction of a proxied TCP connection, through a chain of toxics.

Theory of operation
-------------------
A proxied connection has two :class:`Pipe` objects: ``upstream`` (client to server) and
``downstream`` (server to client). Bytes enter a pipe in the source socket's
``data_received`` callback and leave through the destination socket's transport.

*No toxics* (the fast path): bytes are written to the destination as they arrive. When the
destination's buffer passes its high-water mark, reading from the source pauses until it
drains, so memory stays bounded and nothing is reordered or dropped.

*With toxics*: arriving bytes become :class:`Chunk` objects stamped with their arrival time
and queue in the first stage's :class:`Channel` (bounded in chunks and bytes). Each toxic is a :class:`Stage` with
its own task; stage ``i`` hands chunks to stage ``i+1``'s channel, the last stage to the
destination. A full channel makes the stage before it wait; a full first channel pauses
reading from the source socket (backpressure all the way to the sender).

Invariants that keep bytes whole and in order:

- a chunk a stage has taken but not yet handed on sits in ``stage.held`` (oldest first), and a
  stage's awaits never have side effects (waiting for input, for room, for time), so a stage
  task can be cancelled at any await without losing or duplicating a byte;
- handing a chunk on is synchronous: pop it from ``held``, push it to the next channel or
  write it to the transport;
- stream order is: bytes already written, then stage ``n-1`` (held, channel), ..., then stage
  ``0``; a rebuild (:meth:`Pipe.apply`) keeps that order.

Changing a proxy's toxics rebuilds the chain of every live pipe in that direction in place, as
Toxiproxy does: all stage tasks are cancelled, each stage's held chunks go back to the front of
its channel, a removed stage's chunks move to the back of the next surviving stage (or are
written out when none follows), new toxics are appended at the end, and surviving stages keep
their state (bytes counted by ``limit_data``, the bandwidth clock, the per-connection toxicity
roll) and restart. Chunks keep their timestamps, so a chunk waiting in a ``latency`` stage
keeps its remaining delay across an unrelated change; when its latency toxic is removed it
is released at once, as in Toxiproxy.

Timing: a ``latency`` stage releases a chunk at ``arrival + delay`` (never earlier; the
monotonic clock is re-read after each sleep) and stamps it with that release time, so a
later latency toxic adds its own delay while chunks queued behind one another never add
delays to each other.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from netem.toxics import ToxicSpec

__all__ = ["CHANNEL_BYTES_MAX", "CHANNEL_CHUNKS_MAX", "Chunk", "Counters", "Kind", "Pipe", "Sink"]

log = logging.getLogger("netem")

#: A stage channel is full at this many chunks or bytes; its producer then waits (reading
#: from the socket pauses for the first stage). A latency stage holds rate x delay of data
#: (1,000 messages/s for 50 ms is 50 chunks), so the bound must leave room for the
#: bandwidth-delay product of a WAN link: Toxiproxy buffers 1,024 chunks per latency toxic.
CHANNEL_CHUNKS_MAX = 1024
CHANNEL_BYTES_MAX = 4 << 20
_now = time.monotonic


class Kind(enum.IntEnum):
    DATA = 0
    EOF = 1  # the source half-closed: half-close the destination
    CLOSE = 2  # a toxic ends the connection (limit_data, timeout, removing timeout)
    RESET = 3  # a toxic resets the connection (reset_peer): RST to both peers


class Chunk:
    """Bytes (or an end marker) with the time they became available to the current stage."""

    __slots__ = ("data", "kind", "ts")

    def __init__(self, data: bytes, ts: float, kind: Kind = Kind.DATA) -> None:
        self.data = data
        self.ts = ts
        self.kind = kind


class Channel:
    """A FIFO of chunks between two stages: one consumer, one producer, soft bound."""

    __slots__ = ("_getter", "_items", "_on_pop", "_space", "nbytes")

    def __init__(self, on_pop: Callable[[], None]) -> None:
        self._items: deque[Chunk] = deque()
        self.nbytes = 0
        self._getter: asyncio.Future[None] | None = None
        self._space: asyncio.Future[None] | None = None
        self._on_pop = on_pop

    def __len__(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return len(self._items) >= CHANNEL_CHUNKS_MAX or self.nbytes >= CHANNEL_BYTES_MAX

    def below_half(self) -> bool:
        return len(self._items) < CHANNEL_CHUNKS_MAX // 2 and self.nbytes < CHANNEL_BYTES_MAX // 2

    def push(self, chunk: Chunk) -> None:
        self._items.append(chunk)
        self.nbytes += len(chunk.data)
        _wake(self._getter)

    def extend(self, chunks: Iterable[Chunk]) -> None:
        for chunk in chunks:
            self._items.append(chunk)
            self.nbytes += len(chunk.data)
        if self._items:
            _wake(self._getter)

    def push_front(self, chunks: list[Chunk]) -> None:
        self._items.extendleft(reversed(chunks))
        self.nbytes += sum(len(c.data) for c in chunks)
        if self._items:
            _wake(self._getter)

    def take_all(self) -> list[Chunk]:
        items = list(self._items)
        self._items.clear()
        self.nbytes = 0
        _wake(self._space)
        return items

    def pop(self) -> Chunk:
        chunk = self._items.popleft()
        self.nbytes -= len(chunk.data)
        if not self.full():
            _wake(self._space)
        self._on_pop()
        return chunk

    async def wait_nonempty(self) -> None:
        while not self._items:
            fut = asyncio.get_running_loop().create_future()
            self._getter = fut
            try:
                await fut
            finally:
                if self._getter is fut:
                    self._getter = None

    async def wait_space(self) -> None:
        while self.full():
            fut = asyncio.get_running_loop().create_future()
            self._space = fut
            try:
                await fut
            finally:
                if self._space is fut:
                    self._space = None


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


async def _sleep_until(deadline: float) -> None:
    """Sleep until the monotonic clock reads ``deadline`` (never wake early: the loop's
    timers may round to the millisecond, so re-read the clock and sleep the rest)."""
    while (rest := deadline - _now()) > 0:
        await asyncio.sleep(rest)


class Counters:
    """Bytes read from the source and written to the destination (one proxy, one direction)."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0


class Sink(Protocol):
    """The destination side of a pipe, as the pipe needs it."""

    def write(self, data: bytes) -> None: ...
    def write_eof(self) -> None: ...
    def writable(self) -> bool: ...
    async def wait_writable(self) -> None: ...


class Source(Protocol):
    def pause(self, reason: int) -> None: ...
    def resume(self, reason: int) -> None: ...


#: Reasons a source socket's reading is paused (a bit mask on the source).
PAUSE_BACKLOG = 1
PAUSE_DEST = 2


class Stage:
    """One toxic on one pipe: its task, its input channel and what it holds."""

    def __init__(self, pipe: Pipe, spec: ToxicSpec) -> None:
        self.pipe = pipe
        self.spec = spec
        self.input = Channel(pipe.on_pop)
        self.held: deque[Chunk] = deque()
        self.next: Stage | None = None  # None: the destination
        self.task: asyncio.Task[None] | None = None
        self.dropping = False  # after a CLOSE/RESET it emitted: discard everything
        self.active = True
        self.started_at = _now()
        self.bytes_sent = 0  # limit_data
        self.clock = 0.0  # bandwidth: when the simulated link is free again
        self.roll()

    def roll(self) -> None:
        """Toxicity: whether this toxic applies to this connection (re-rolled on update)."""
        self.active = self.pipe.rng.random() < self.spec.toxicity
        self.started_at = _now()

    # -- moving chunks ---------------------------------------------------------------

    async def take(self) -> Chunk:
        if not self.held:
            await self.input.wait_nonempty()
            self.held.append(self.input.pop())
        return self.held[0]

    async def _room(self) -> None:
        if self.next is None:
            await self.pipe.sink.wait_writable()
        else:
            await self.next.input.wait_space()

    def _hand_on(self, chunk: Chunk) -> None:
        if self.next is None:
            self.pipe.deliver(chunk)
        else:
            self.next.input.push(chunk)

    async def forward(self) -> None:
        """Hand ``held[0]`` to the next stage or the destination."""
        await self._room()
        self._hand_on(self.held.popleft())

    async def forward_part(self, size: int) -> None:
        """Hand on the first ``size`` bytes of ``held[0]``, keeping the rest held."""
        head = self.held[0]
        if size >= len(head.data):
            await self.forward()
            return
        await self._room()
        part = Chunk(head.data[:size], head.ts)
        head.data = head.data[size:]
        self._hand_on(part)

    def drop(self) -> None:
        self.held.popleft()

    def end(self, kind: Kind) -> None:
        """Emit a CLOSE or RESET after what was handed on, then discard all input."""
        self.held.clear()
        self.dropping = True
        self._hand_on(Chunk(b"", _now(), kind))

    # -- the task --------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            if self.dropping:
                await self._discard()
            elif not self.active:
                await self._noop()
            else:
                await getattr(self, "_" + self.spec.type)()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not take the server down: end this connection
            log.exception("netem: toxic %s failed", self.spec.name)
            self.pipe.fail()

    async def _discard(self) -> None:
        while True:
            await self.input.wait_nonempty()
            self.input.pop()

    async def _noop(self) -> None:
        while True:
            await self.take()
            await self.forward()

    async def _latency(self) -> None:
        while True:
            chunk = await self.take()
            if chunk.kind is Kind.DATA:
                delay_ms = float(self.spec.attr("latency"))
                jitter_ms = self.spec.attr("jitter")
                if jitter_ms > 0:
                    delay_ms += self.pipe.rng.uniform(-jitter_ms, jitter_ms)
                release = chunk.ts + max(0.0, delay_ms) / 1000.0
                await _sleep_until(release)
                await self._room()
                # Re-stamp only when handing on: a chunk put back by a rebuild must keep
                # its arrival time here, or it would be delayed twice.
                chunk.ts = release
                self._hand_on(self.held.popleft())
                continue
            await self.forward()

    async def _bandwidth(self) -> None:
        while True:
            chunk = await self.take()
            rate_kbps = self.spec.attr("rate")
            if chunk.kind is not Kind.DATA or rate_kbps <= 0:
                await self.forward()
                continue
            bytes_per_s = rate_kbps * 1000.0
            # Large chunks go out in pieces of 100 ms worth of bytes, as in Toxiproxy.
            piece_max = max(1, rate_kbps * 100)
            while self.held and self.held[0] is chunk:
                size = min(len(chunk.data), piece_max)
                done_at = max(self.clock, _now()) + size / bytes_per_s
                await _sleep_until(done_at)
                self.clock = done_at
                await self.forward_part(size)

    async def _slow_close(self) -> None:
        while True:
            chunk = await self.take()
            if chunk.kind is not Kind.DATA:
                await asyncio.sleep(self.spec.attr("delay") / 1000.0)
            await self.forward()

    async def _timeout(self) -> None:
        timeout_ms = self.spec.attr("timeout")
        while True:
            if timeout_ms > 0 and not self.held:
                rest = self.started_at + timeout_ms / 1000.0 - _now()
                try:
                    await asyncio.wait_for(self.input.wait_nonempty(), max(0.0, rest))
                except TimeoutError:
                    self.end(Kind.CLOSE)
                    await self._discard()
            chunk = await self.take()
            if chunk.kind is Kind.DATA:
                self.drop()  # data is dropped on the floor while the toxic is active
            else:
                await self.forward()

    async def _reset_peer(self) -> None:
        await self.take()
        self.drop()  # the chunk that triggers the reset is consumed, as in Toxiproxy
        await asyncio.sleep(self.spec.attr("timeout") / 1000.0)
        self.end(Kind.RESET)
        await self._discard()

    async def _slicer(self) -> None:
        while True:
            chunk = await self.take()
            if chunk.kind is not Kind.DATA:
                await self.forward()
                continue
            sizes = slice_sizes(
                len(chunk.data),
                self.spec.attr("average_size"),
                self.spec.attr("size_variation"),
                self.pipe.rng,
            )
            delay_s = self.spec.attr("delay") / 1_000_000.0
            for size in sizes:
                await self.forward_part(size)
                if delay_s > 0:
                    await asyncio.sleep(delay_s)

    async def _limit_data(self) -> None:
        limit = self.spec.attr("bytes")
        while True:
            chunk = await self.take()
            if chunk.kind is Kind.DATA:
                allowed = max(0, limit - self.bytes_sent)
                if allowed < len(chunk.data):
                    chunk.data = chunk.data[:allowed]
                if chunk.data:
                    self.bytes_sent += len(chunk.data)
                    await self.forward()
                else:
                    self.drop()
                if self.bytes_sent >= limit:
                    self.end(Kind.CLOSE)
                    await self._discard()
            else:
                await self.forward()


def slice_sizes(total: int, average: int, variation: int, rng: random.Random) -> list[int]:
    """Sizes of the slices of ``total`` bytes: halve until a part is within ``variation`` of
    ``average`` (Toxiproxy's slicer), each cut moved by up to ``variation`` bytes."""
    assert average >= 1 and 0 <= variation < average
    sizes: list[int] = []
    stack = [(0, total)]
    while stack:
        start, end = stack.pop()
        size = end - start
        if size <= 0:
            continue
        if size - average <= variation:
            sizes.append(size)
            continue
        shift = rng.randrange(-variation, variation + 1) if variation else 0
        mid = min(end - 1, max(start + 1, start + size // 2 + shift))
        stack.append((mid, end))  # right half after the left one (LIFO)
        stack.append((start, mid))
    return sizes


class Pipe:
    """One direction of a connection: source bytes through the toxic chain to the sink."""

    def __init__(
        self,
        direction: str,
        source: Source,
        sink: Sink,
        rng: random.Random,
        on_end: Callable[[Kind], None],
        counters: Counters,
    ) -> None:
        self.direction = direction
        self.source = source
        self.sink = sink
        self.rng = rng
        self.stages: list[Stage] = []
        self.eof_delivered = False
        self._on_end = on_end
        self.counters = counters
        self._backlog_paused = False
        self._closed = False

    # -- input (from the source socket's callbacks) ------------------------------------

    def feed(self, data: bytes) -> None:
        if self._closed:
            return
        self.counters.received += len(data)
        if not self.stages:
            self._write(data)
            return
        head = self.stages[0].input
        head.push(Chunk(data, _now()))
        if head.full() and not self._backlog_paused:
            self._backlog_paused = True
            self.source.pause(PAUSE_BACKLOG)

    def feed_eof(self) -> None:
        if self._closed:
            return
        if not self.stages:
            self.deliver(Chunk(b"", _now(), Kind.EOF))
        else:
            self.stages[0].input.push(Chunk(b"", _now(), Kind.EOF))

    def on_pop(self) -> None:
        if self._backlog_paused and (not self.stages or self.stages[0].input.below_half()):
            self._backlog_paused = False
            self.source.resume(PAUSE_BACKLOG)

    # -- output ------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self.sink.write(data)
        self.counters.sent += len(data)

    def deliver(self, chunk: Chunk) -> None:
        """Write a chunk that left the chain (synchronous: order is fixed here)."""
        if self._closed:
            return
        if chunk.kind is Kind.DATA:
            if chunk.data:
                self._write(chunk.data)
        elif chunk.kind is Kind.EOF:
            if not self.eof_delivered:
                self.eof_delivered = True
                self.sink.write_eof()
                self._on_end(Kind.EOF)
        else:
            self._on_end(chunk.kind)

    def fail(self) -> None:
        self._on_end(Kind.CLOSE)

    # -- the chain ---------------------------------------------------------------------

    def apply(self, specs: list[ToxicSpec]) -> None:
        """Make the chain match ``specs`` (this direction's toxics, in order), in place."""
        if self._closed:
            return
        old = self.stages
        for stage in old:
            if stage.task is not None:
                stage.task.cancel()
            stage.input.push_front(list(stage.held))
            stage.held.clear()
        by_uid = {stage.spec.uid: stage for stage in old}
        wanted = {spec.uid for spec in specs}
        # Walk from the end of the old chain: a removed stage's chunks are later in the stream
        # than those of the stage after it, so they go to the back of the next survivor.
        target: Stage | None = None
        for stage in reversed(old):
            if stage.spec.uid in wanted:
                target = stage
                continue
            leftovers = stage.input.take_all()
            if stage.spec.type == "timeout" and stage.active and not stage.dropping:
                # Toxiproxy closes the connections of a timeout toxic when it is removed.
                leftovers = [Chunk(b"", _now(), Kind.CLOSE)]
            if target is None:
                for chunk in leftovers:
                    self.deliver(chunk)
            else:
                target.input.extend(leftovers)
        stages: list[Stage] = []
        for spec in specs:
            kept = by_uid.get(spec.uid)
            if kept is None:
                kept = Stage(self, spec)
            elif kept.spec != spec:
                kept.spec = spec
                kept.roll()
            stages.append(kept)
        for i, stage in enumerate(stages):
            stage.next = stages[i + 1] if i + 1 < len(stages) else None
        self.stages = stages
        if not self._closed:
            for stage in stages:
                stage.start()
        self.on_pop()

    def close(self) -> None:
        """Stop every stage task; nothing more is written."""
        self._closed = True
        for stage in self.stages:
            if stage.task is not None:
                stage.task.cancel()
        self.stages = []
