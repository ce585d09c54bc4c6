"""``geostore quarantine list|export|reappend|clear``: what a failback took out of its partitions.

When a region that lost its partitions' home (a failover moved them) comes back, the events
it had committed under the old epoch beyond the fork move to its **quarantine**: kept, never
served as part of the partition. These commands read a region's quarantine from its data
group's leader (``--region R``; omit it when the cluster has one region):

- ``list``: one row per quarantined run (an original append batch, or the part of one past
  the fork): stream, partition, the epoch it was written under, the epoch that superseded
  it, the fork, its seqs and its producer; ``--json`` prints the node's answer as it is.
- ``export``: every quarantined event as one JSON object a line (to stdout or ``--out``),
  with ``ts``, ``key``, ``body`` and where it came from (stream, partition, seq, epoch...).
- ``reappend``: appends the quarantined events on purpose to their partition again, at the
  partition's current home (through the client: the region forwards them there). They get
  NEW seqs at the end of the partition: the old seqs now hold other events. Each run is sent
  with a producer id of its own, ``quarantine:<region>:<stream>:<partition>:<epoch>:<first
  seq>``, and producer seq = the index of the request within the run (``--batch`` events a
  request), so running the command twice (with the same ``--batch``) appends nothing the
  second time while the partition's producer window still remembers it (see
  docs/operations.md). ``--dry-run`` says what would be appended.

- ``clear``: drops quarantined runs for good (``POST /v1/admin/quarantine/clear``, a
  replicated command of the region's data group; needs the admin role): everything, or
  ``--stream S [--partition P]``, optionally only runs superseded at or before
  ``--through-epoch E``. It refuses without ``--yes`` and says how to export first: the
  usual order is export (or reappend), then clear.

``STREAM`` or ``STREAM/P`` narrows any of them to one stream or partition.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geostore.client import GeostoreClient

HELP = "list, export, re-append (NEW seqs) or clear events quarantined by failback"

#: A re-append holds at most this much of the export in memory (the rest spills to disk).
_SPOOL_BYTES_MAX = 8 * 1024 * 1024
#: Below the server's producer id cap (256 bytes, "quarantine:" added).
_PRODUCER_ID_BYTES_MAX = 200

_CLEAR_HELP = (
    "drop quarantined runs of the region for good (admin role; export or reappend them "
    "first; refuses without --yes)"
)
_REAPPEND_HELP = (
    "append the quarantined events again to their partition at its current home: they get "
    "NEW seqs at the partition's end; a rerun with the same --batch appends nothing again "
    "while the producer window holds"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from geostore.client.cli_support import add_client_arguments

    sub = parser.add_subparsers(
        dest="action", required=True, metavar="{list,export,reappend,clear}"
    )
    for name, text in (
        ("list", "one row per quarantined run of the region"),
        ("export", "every quarantined event as a JSON line (stdout or --out)"),
        ("reappend", _REAPPEND_HELP),
        ("clear", _CLEAR_HELP),
    ):
        p = sub.add_parser(name, help=text, description=text)
        add_client_arguments(p, stream=False)
        p.add_argument(
            "target", nargs="?", default=None, metavar="STREAM[/P]", help="one stream or partition"
        )
        if name != "export":
            p.add_argument("--json", action="store_true", help="print the answer as JSON")
        if name == "export":
            p.add_argument("--out", default=None, metavar="FILE", help="write here, not stdout")
        if name == "reappend":
            p.add_argument("--batch", type=int, default=500, metavar="N", help="events per request")
            p.add_argument("--dry-run", action="store_true", help="only say what would go")
        if name == "clear":
            p.add_argument("--stream", default=None, help="only this stream's runs")
            p.add_argument(
                "--partition", type=int, default=None, metavar="P", help="only this partition"
            )
            p.add_argument(
                "--through-epoch",
                type=int,
                default=None,
                metavar="E",
                help="only runs superseded by epoch E or an older one",
            )
            p.add_argument(
                "--yes", action="store_true", help="really drop them (export them first)"
            )


def parse_target(text: str | None) -> tuple[str | None, int | None]:
    """``STREAM`` or ``STREAM/P`` (None: everything)."""
    from geostore.errors import ApiError, ErrorCode

    if not text:
        return None, None
    stream, sep, part = text.rpartition("/")
    if not sep:
        return text, None
    if not stream or not part.isdigit():
        raise ApiError(ErrorCode.MALFORMED, f"{text!r} is not STREAM or STREAM/PARTITION")
    return stream, int(part)


@dataclass(slots=True)
class _Chunk:
    """Up to ``--batch`` consecutive events of one quarantined run: one append request."""

    stream: str
    partition: int
    epoch: int
    superseded_by: int
    run_first_seq: int
    index: int  # the request's index within its run: the producer seq
    origin: tuple[Any, Any]  # the run's original producer (id, seq)
    next_seq: int  # the seq the run's next event has
    events: list[dict[str, Any]] = field(default_factory=list)

    def producer_id(self, region: str) -> str:
        name = f"{region}:{self.stream}:{self.partition}:{self.epoch}:{self.run_first_seq}"
        if len(name.encode()) <= _PRODUCER_ID_BYTES_MAX:
            return "quarantine:" + name
        # long region and stream names: the server caps ids, a digest names the run as well
        return "quarantine:" + hashlib.blake2b(name.encode(), digest_size=20).hexdigest()

    def continues(self, ev: dict[str, Any]) -> bool:
        """Is ``ev`` the next event of this chunk's run (same origin, the next seq)?"""
        return (
            ev["stream"] == self.stream
            and ev["partition"] == self.partition
            and ev["epoch"] == self.epoch
            and ev["superseded_by"] == self.superseded_by
            and (ev.get("producer_id"), ev.get("producer_seq")) == self.origin
            and ev["seq"] == self.next_seq
        )


async def chunks_of(events: AsyncIterator[dict[str, Any]], batch: int) -> AsyncIterator[_Chunk]:
    """Cut the exported events into append requests: a run is a stretch of dense seqs of one
    origin (stream, partition, epoch, superseding epoch, original producer), named by its
    first seq; each run is sent in requests of at most ``batch`` events, numbered from 0.
    The cut depends only on the export and ``batch``, so a rerun names the same requests.
    At most one request's events are held."""
    assert batch >= 1
    chunk: _Chunk | None = None
    async for ev in events:
        if chunk is not None and chunk.continues(ev) and len(chunk.events) < batch:
            chunk.events.append(ev)
            chunk.next_seq += 1
            continue
        if chunk is not None:
            yield chunk
            if chunk.continues(ev):  # the same run goes on in its next request
                chunk = _Chunk(
                    chunk.stream, chunk.partition, chunk.epoch, chunk.superseded_by,
                    chunk.run_first_seq, chunk.index + 1, chunk.origin, ev["seq"] + 1, [ev],
                )  # fmt: skip
                continue
        chunk = _Chunk(
            ev["stream"], ev["partition"], ev["epoch"], ev["superseded_by"], ev["seq"], 0,
            (ev.get("producer_id"), ev.get("producer_seq")), ev["seq"] + 1, [ev],
        )  # fmt: skip
    if chunk is not None:
        yield chunk


async def reappend(
    client: GeostoreClient,
    region: str,
    stream: str | None,
    partition: int | None,
    batch: int,
    *,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Re-append the region's quarantined events (see the module docstring); returns the
    counts: ``events`` read, ``appended`` (newly stored), ``duplicates`` (a rerun: already
    appended by an earlier run), ``requests``, ``failed`` (with ``errors``)."""
    await client.find_leader()  # the region's latest copy of the quarantine
    counts: dict[str, Any] = {
        "region": region, "events": 0, "appended": 0, "duplicates": 0, "requests": 0,
        "failed": 0, "errors": [],
    }  # fmt: skip
    # The export is read to the end first, into a spool file (memory up to a bound, then
    # disk): appending while the node streams it could stall the export past the node's
    # write deadline, which drops a reader that does not read.
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES_MAX, mode="w+b") as spool:
        async for ev in client.quarantine_export(stream, partition):
            spool.write(json.dumps(ev, separators=(",", ":")).encode() + b"\n")
        spool.seek(0)
        await _append_chunks(client, region, spool, batch, counts, dry_run)
    return counts


async def _lines(spool: IO[bytes]) -> AsyncIterator[dict[str, Any]]:
    for line in spool:
        yield json.loads(line)


async def _append_chunks(
    client: GeostoreClient,
    region: str,
    spool: IO[bytes],
    batch: int,
    counts: dict[str, Any],
    dry_run: bool,
) -> None:
    from geostore.client import Producer

    async for chunk in chunks_of(_lines(spool), batch):
        counts["events"] += len(chunk.events)
        if dry_run:
            continue
        body = [
            {"ts": ev["ts"], "key": ev["key"], "partition": chunk.partition, "body": ev["body"]}
            if ev.get("key") is not None
            else {"ts": ev["ts"], "partition": chunk.partition, "body": ev["body"]}
            for ev in chunk.events
        ]
        result = await client.append(
            chunk.stream, body, Producer(chunk.producer_id(region), chunk.index)
        )
        counts["requests"] += 1
        for r in result.results:
            if r.duplicate:
                counts["duplicates"] += r.count
            else:
                counts["appended"] += r.count
        for e in result.errors:
            counts["failed"] += len(chunk.events)
            counts["errors"].append(
                f"{chunk.stream}/{e.partition} run {chunk.run_first_seq} request {chunk.index}: "
                f"{e.error.message} ({e.error.code})"
            )


def clear_target(args: argparse.Namespace) -> tuple[str | None, int | None] | str:
    """``clear``'s filter from STREAM[/P] or --stream/--partition; a string is the error."""
    stream, partition = parse_target(args.target)
    if args.stream is not None or args.partition is not None:
        if args.target:
            return "give STREAM[/P] or --stream/--partition, not both"
        stream, partition = args.stream, args.partition
    if partition is not None and stream is None:
        return "--partition needs --stream"
    if partition is not None and partition < 0:
        return "--partition must be at least 0"
    if args.through_epoch is not None and args.through_epoch < 0:
        return "--through-epoch must be at least 0"
    return stream, partition


def refusal(args: argparse.Namespace, stream: str | None, partition: int | None) -> str:
    """What ``clear`` without ``--yes`` says: what it would drop, and how to export it."""
    target = "" if stream is None else f" {stream}" + ("" if partition is None else f"/{partition}")
    region = f" --region {args.region}" if args.region else ""
    what = "the whole quarantine" if stream is None else f"the quarantine of{target}"
    epoch = ""
    if args.through_epoch is not None:
        epoch = f" (runs superseded through epoch {args.through_epoch})"
    return (
        f"geostore quarantine: refusing to clear {what}{epoch} without --yes: the events are "
        "gone for good afterwards. Export them first:\n"
        f"  geostore quarantine export --cluster {args.cluster}{region}{target} "
        "--out quarantine.jsonl\n"
        "(or re-append them: geostore quarantine reappend ...), then run the clear again "
        "with --yes"
    )


def run(args: argparse.Namespace) -> int:
    from geostore.client.cli_support import run_with_client, table

    if args.action == "clear":
        target = clear_target(args)
        if isinstance(target, str):
            print(f"geostore quarantine: error: {target}", file=sys.stderr)
            return 2
        stream, partition = target
        if not args.yes:
            print(refusal(args, stream, partition), file=sys.stderr)
            return 2
    else:
        stream, partition = parse_target(args.target)
    if args.action == "reappend" and args.batch < 1:
        print("geostore quarantine: error: --batch must be at least 1", file=sys.stderr)
        return 2

    async def body(client: GeostoreClient) -> int:
        region = client.region or "?"
        if args.action == "list":
            await client.find_leader()
            answer = await client.quarantine(stream, partition)
            if args.json:
                print(json.dumps(answer, indent=2))
                return 0
            rows = [
                (
                    r["stream"], r["partition"], r["epoch"], r["superseded_by"], r["fork_seq"],
                    r["first_seq"], r["last_seq"], r["record_count"],
                    f"({r['parts']} batches)" if r.get("parts", 1) > 1
                    else "" if r.get("producer_id") is None
                    else f"{r['producer_id']}#{r.get('producer_seq')}",
                )
                for r in answer["runs"]
            ]  # fmt: skip
            if rows:
                print(
                    table(
                        (
                            "stream",
                            "partition",
                            "epoch",
                            "superseded_by",
                            "fork_seq",
                            "first_seq",
                            "last_seq",
                            "events",
                            "producer",
                        ),
                        rows,
                        right=(1, 2, 3, 4, 5, 6, 7),
                    )
                )
            more = " (list truncated: narrow it with STREAM[/P])" if answer.get("truncated") else ""
            print(
                f"{answer['events_total']:,} events in {answer['runs_total']:,} runs in the "
                f"quarantine of region {answer.get('region', region)}{more}"
            )
            return 0
        if args.action == "clear":
            answer = await client.quarantine_clear(
                stream, partition, through_epoch=args.through_epoch
            )
            if args.json:
                print(json.dumps(answer, indent=2))
            else:
                c, left = answer["cleared"], answer["left"]
                print(
                    f"cleared {c['events']:,} events in {c['runs']:,} runs ({c['bytes']:,} "
                    f"bytes) from the quarantine of region {answer.get('region', region)}; "
                    f"{left['events']:,} events in {left['runs']:,} runs left"
                )
            return 0
        if args.action == "export":
            await client.find_leader()
            out = sys.stdout if args.out is None else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
            n = 0
            try:
                async for ev in client.quarantine_export(stream, partition):
                    out.write(json.dumps(ev, separators=(",", ":"), ensure_ascii=False) + "\n")
                    n += 1
            finally:
                if out is not sys.stdout:
                    out.close()
            if args.out is not None:
                print(f"{n:,} quarantined events of region {region} written to {args.out}")
            return 0
        counts = await reappend(client, region, stream, partition, args.batch, dry_run=args.dry_run)
        if args.json:
            print(json.dumps(counts, indent=2))
        elif args.dry_run:
            print(
                f"{counts['events']:,} quarantined events of region {region} would be re-appended"
            )
        else:
            for line in counts["errors"]:
                print(f"geostore quarantine: {line}", file=sys.stderr)
            print(
                f"{counts['appended']:,} events re-appended with new seqs "
                f"({counts['duplicates']:,} already re-appended before, {counts['failed']:,} "
                f"failed) of {counts['events']:,} quarantined in region {region}"
            )
        return 1 if counts["failed"] else 0

    return run_with_client(args, body)
