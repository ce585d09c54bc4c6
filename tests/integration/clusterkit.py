"""What the process-level tests share: the CLI in a child process, JSON calls to a node's API
with the cluster's credentials, retries past a 503 under a deadline, a partition's events, and
a cluster brought up for a test module and always brought down, small topologies, and the
waits on a process, a condition or a region's leader.

Every wait is bounded by a generous deadline: the tests share two cores with other work, so a
loaded node is slow, and a wait that gives up early would make the tests flake.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tests.integration import secure

#: The default bound of every wait in the process-level tests, seconds.
DEADLINE_S = 30.0
#: Statuses :func:`ok` takes as success.
SUCCESS = (200, 201, 202)


def topology_toml(
    name: str,
    regions: dict[str, list[str]],
    rtts_ms: dict[tuple[str, str], float],
    streams: dict[str, list[str]] | None = None,
) -> str:
    """A topology file: ``regions`` (name -> node ids, in order) with no intra-region delay,
    one link per ``rtts_ms`` pair (both directions), and the ``streams`` it declares (name ->
    the home region of each partition, in partition order)."""
    lines = [f'name = "{name}"']
    for region, ids in regions.items():
        listed = ", ".join(f'"{n}"' for n in ids)
        lines += ["[[regions]]", f'name = "{region}"', "intra_rtt_ms = 0.0", f"nodes = [{listed}]"]
    for (a, b), rtt in rtts_ms.items():
        lines += ["[[links]]", f'a = "{a}"', f'b = "{b}"', f"rtt_ms_p50 = {rtt}"]
    for stream, homes in (streams or {}).items():
        table = ", ".join(f'{p} = "{home}"' for p, home in enumerate(homes))
        lines += ["[[streams]]", f'name = "{stream}"', f"partitions = {len(homes)}",
                  f"homes = {{ {table} }}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def geostore(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m geostore ARGS`` in a child process (this checkout's code), output captured."""
    return subprocess.run([sys.executable, "-m", "geostore", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def call(url: str, body: Any = None, timeout: float = 20.0) -> tuple[int, Any]:
    """GET ``url`` (no body) or POST ``body`` as JSON, with the registered credentials: the
    status and the decoded answer (an HTTP error is an answer too)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with secure.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def ok(
    url: str,
    body: Any = None,
    *,
    retry: Collection[int] = (503,),
    through_restarts: bool = False,
    deadline_s: float = DEADLINE_S,
) -> Any:
    """The answer of a call that must succeed (:data:`SUCCESS`), made again while its status is
    in ``retry`` (leadership moving, a forward failing under load) and, with
    ``through_restarts``, while the node does not answer at all (being killed or restarted),
    until ``deadline_s``; any other answer fails the test."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            status, answer = call(url, body)
        except OSError as exc:
            if not through_restarts:
                raise
            status, answer = 0, repr(exc)
        if status in SUCCESS:
            return answer
        if (status != 0 and status not in retry) or time.monotonic() > deadline:
            raise AssertionError(f"{url}: {status} {answer}")
        time.sleep(0.2)


def answer_past_503(
    url: str, body: Any, wanted: str | None = None, deadline_s: float = DEADLINE_S
) -> tuple[int, Any]:
    """The first answer that is not a 503 (leadership moving, a forward failing under load),
    or the first 503 whose error code is ``wanted``; bounded by the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        code, answer = call(url, body)
        if code != 503 or answer["error"]["code"] == wanted or time.monotonic() > deadline:
            return code, answer
        time.sleep(0.2)


def alive(pid: int) -> bool:
    """Whether the process ``pid`` still exists (a zombie counts until it is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(what: str, fn: Callable[[], Any], timeout_s: float = 60) -> Any:
    """The first answer of ``fn`` that is not None, asked every 0.2 s; fails the test with
    ``what`` when none came within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = fn()
        if result is not None:
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def status(api: str) -> dict[str, Any]:
    """The ``/v1/status`` document of the node at ``api`` (made again past a 503)."""
    answer: dict[str, Any] = ok(f"{api}/v1/status")
    return answer


def data_leader(cluster: dict[str, Any], region: str) -> dict[str, Any]:
    """The cluster.json entry of the node that says it leads the region's data group, polled
    every 0.2 s until one does, bounded by :data:`DEADLINE_S`."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        for n in cluster["regions"][region]["nodes"]:
            if status(n["api"])["groups"][f"data-{region}"]["role"] == "leader":
                return dict(n)
        assert time.monotonic() < deadline, f"no leader in {region}"
        time.sleep(0.2)


def nodes(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every node of a cluster (its cluster.json) by id."""
    return {n["id"]: n for r in cluster["regions"].values() for n in r["nodes"]}


def apis(cluster: dict[str, Any], region: str) -> list[str]:
    """The API addresses of a region's nodes, in the topology's order."""
    return [n["api"] for n in cluster["regions"][region]["nodes"]]


def events(
    url: str,
    partition: int,
    consistency: str = "local",
    *,
    stream: str = "s",
    read: Callable[[str], Any] = ok,
    **query: Any,
) -> list[tuple[int, Any]]:
    """(seq, body) of a partition's events as the node at ``url`` reads them (up to 10,000),
    with the extra ``query`` parameters (``after``, ``wait_ms``); ``read`` makes the call."""
    extra = "&".join(f"{k}={v}" for k, v in query.items())
    answer = read(f"{url}/v1/streams/{stream}/events?partition={partition}&limit=10000"
                  f"&consistency={consistency}&{extra}")  # fmt: skip
    return [(e["seq"], e["body"]) for e in answer["events"]]


@contextlib.contextmanager
def cluster_up(
    root: Path, topology: str, *args: str, config: str | None = None, timeout_s: int = 90
) -> Iterator[dict[str, Any]]:
    """``cluster up`` of ``topology`` (TOML text) in ``root/c`` with the node ``config`` (TOML
    text) and the extra ``args``; yields its cluster.json with the credentials registered and
    ``folder`` added, and always runs ``cluster down`` afterwards (also when up failed)."""
    topology_file = root / "topology.toml"
    topology_file.write_text(topology)
    folder = root / "c"
    argv = ["cluster", "up", "--topology", str(topology_file), "--dir", str(folder)]
    if config is not None:
        (root / "config.toml").write_text(config)
        argv += ["--config", str(root / "config.toml")]
    up = geostore(*argv, *args, "--timeout", str(timeout_s))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        info = secure.register(folder)
        info["folder"] = str(folder)
        yield info
    finally:
        geostore("cluster", "down", "--dir", str(folder), "--timeout", "20")


class Harness(Protocol):
    """A process harness over a cluster's folder (``bench.failover.Cluster``)."""

    def down(self) -> None: ...


H = TypeVar("H", bound=Harness)


@contextlib.contextmanager
def harness_up(
    folder: Path, topology_file: Path, make: Callable[[Path], H], *args: str, timeout_s: int = 90
) -> Iterator[H]:
    """``cluster up`` of ``topology_file`` in ``folder`` with the extra ``args``; yields
    ``make(folder)``, a harness whose ``down()`` stops every process (those it restarted
    too), called afterwards; without one (up or ``make`` failed), ``cluster down``."""
    up = geostore("cluster", "up", "--topology", str(topology_file), "--dir", str(folder),
                  *args, "--timeout", str(timeout_s))  # fmt: skip
    harness: H | None = None
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        harness = make(folder)
        yield harness
    finally:
        if harness is not None:
            harness.down()
        else:
            geostore("cluster", "down", "--dir", str(folder), "--timeout", "20")
